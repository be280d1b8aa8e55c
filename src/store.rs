//! The state interface: users, refresh-token families, revoked access-token ids, login failures,
//! the gateways' signing keys.
//!
//! One trait per kind of state ([`Users`], [`RefreshFamilies`], [`Revocations`],
//! [`LoginFailures`], [`SigningKeys`], [`Clients`]); [`Store`] is all six plus what spans them,
//! and is what the gateway holds.
//! `sqlite` is the embedded backend, `postgres` the shared one that several gateways use at
//! once. Everything a backend must guarantee is written on the traits and their methods, so a
//! second backend can be checked against this text alone (and `contract` checks it).
//!
//! Times are unix seconds. Token times (`issued_at`, `expires_at`, `now`) come from the caller so
//! expiry follows one clock; bookkeeping times (`created_at`, `updated_at`, `used_at`,
//! `revoked_at`) are taken from the backend's clock when the caller does not pass one.
//!
//! Refresh tokens are stored only as a 32-byte digest of the token (the caller hashes; the store
//! never sees a token). Each login starts a *family*; every refresh marks the presented token
//! used and adds its successor to the same family. Presenting a used token again means it was
//! copied: the whole family is revoked.
//!
//! Ending sessions: a user's sessions are *cut* (disable, remove, password change, an operator's
//! `sessions revoke`): every refresh family is revoked and the name gets a mark, "access tokens
//! issued before T are refused", that outlives the account. Revoked access-token ids (and
//! revoked session ids, the `sid` an access token carries) and these marks are mirrored in each
//! gateway's memory, which follows the store's *change feed* ([`Revocations::changes_since`]):
//! a change made by the CLI or another gateway is seen at the next poll.
//!
//! Failed logins lock a name out (per canonical username, existing or not) in two scopes: per
//! (name, client network), so an attacker's failures shut out only the attacker's network, and
//! for the name as a whole at a much higher ceiling, so guessing from many networks still ends.
//! A login attempt is admitted before any hashing starts and reserves one place in both of its
//! failure budgets, so parallel guesses cannot outrun either count
//! ([`LoginFailures::admit_login`], [`LoginAttempt`]).

#[cfg(test)]
mod contract;
pub mod postgres;
pub mod sqlite;

use std::fmt;

use async_trait::async_trait;

use crate::auth::keys::KeyAlg;
use crate::auth::username::Username;
use crate::limits::ClientNetwork;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user {0} already exists")]
    Conflict(Username),
    #[error("user {0} not found")]
    NotFound(Username),
    #[error("user {0} is disabled")]
    Disabled(Username),
    /// A refresh digest was stored twice: the caller reused token bytes, which is a bug.
    #[error("refresh token digest is already stored")]
    DuplicateRefresh,
    /// A signing key's kid was stored twice: a generated key collided, which is a bug.
    #[error("signing key {0} is already stored")]
    DuplicateKey(String),
    #[error("client {0} already exists")]
    ClientConflict(String),
    #[error("client {0} not found")]
    ClientNotFound(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// A stored account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub username: Username,
    /// PHC string (argon2) or bcrypt hash. Never log it: `Debug` leaves it out.
    pub password_hash: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("roles", &self.roles)
            .field("scopes", &self.scopes)
            .field("disabled", &self.disabled)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// What [`Users::create_user`] needs; the store adds the times and `disabled = false`.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: Username,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("roles", &self.roles)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// One refresh token, by digest.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// Digest of the token (e.g. SHA-256); the token itself is never stored.
    pub digest: [u8; 32],
    /// Shared by every token descended from one login.
    pub family: String,
    pub username: Username,
    /// Scopes granted at login; intersect with the user's current scopes when minting.
    pub scopes: Vec<String>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl fmt::Debug for RefreshRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is a lookup key for a live credential: keep it out of logs.
        f.debug_struct("RefreshRecord")
            .field("digest", &"<redacted>")
            .field("family", &self.family)
            .field("username", &self.username)
            .field("scopes", &self.scopes)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The token that replaces a rotated one. Family, user and scopes are inherited from the
/// rotated token inside the store, so a caller cannot move a token to another family or user.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshSuccessor {
    pub digest: [u8; 32],
    pub issued_at: i64,
    pub expires_at: i64,
}

impl fmt::Debug for RefreshSuccessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshSuccessor")
            .field("digest", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Life-cycle marks of a refresh token (expiry is on the record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshState {
    /// When it was rotated away; a used token presented again is a reuse.
    pub used_at: Option<i64>,
    /// When its family was revoked (logout, reuse, user disabled or revoked by an operator).
    pub revoked_at: Option<i64>,
}

impl RefreshState {
    /// Whether the token would be accepted for rotation at `now`.
    pub fn is_live(&self, record: &RefreshRecord, now: i64) -> bool {
        self.used_at.is_none() && self.revoked_at.is_none() && now < record.expires_at
    }
}

/// Why [`RefreshFamilies::rotate_refresh`] refused; every variant but `Store` is an invalid grant.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("refresh token is unknown")]
    Unknown,
    #[error("refresh token has expired")]
    Expired,
    #[error("refresh token has been revoked")]
    Revoked,
    /// The token had already been used: it was copied. Its whole family is now revoked.
    #[error("refresh token reused: family {family} of user {username} revoked")]
    Reused { family: String, username: Username },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a session started, as the client said: shown to operators, never trusted for anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionOrigin {
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
}

/// A live login session (refresh family): one with a token that can still be rotated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub family: String,
    pub username: Username,
    pub created_at: i64,
    /// The last rotation (`created_at` until the first).
    pub last_used_at: i64,
    /// When its live token expires.
    pub expires_at: i64,
    pub origin: SessionOrigin,
}

/// One entry of the change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An access token's `jti`, or a session's id (its `sid`), refused until `expires_at`.
    Revoked { id: String, expires_at: i64 },
    /// Access tokens of `username` issued before `not_before` are refused.
    SessionsCut { username: Username, not_before: i64 },
    /// The signing keys changed ([`SigningKeys`]): every gateway rebuilds its key ring.
    KeysChanged,
}

/// What [`Revocations::changes_since`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeBatch {
    /// In sequence order.
    pub changes: Vec<Change>,
    /// The sequence number of the last change returned (or the one asked from, when none).
    pub last: u64,
    /// False when changes after the asked sequence were already purged: the caller must reload
    /// the whole state ([`Revocations::revoked_ids`], [`Revocations::session_cuts`]).
    pub complete: bool,
}

/// The lockout rule, in seconds: `max_failures` failures of one name from one client network
/// within `find_time` lock that (name, network) pair for `ban_time`; `max_failures_per_user`
/// failures of the name from anywhere within `find_time` lock the name for every network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub max_failures_per_user: u32,
    pub find_time: i64,
    pub ban_time: i64,
}

/// What a lockout shuts out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockScope {
    /// The name, from the one client network whose failures reached `max_failures`.
    Network,
    /// The name, from every network: its failures reached `max_failures_per_user`.
    Everywhere,
}

/// A running lockout: until when (unix seconds), and of what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lockout {
    pub until: i64,
    pub scope: LockScope,
}

/// The running lockouts of one name (for operators: `user list`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lockouts {
    /// The end of a lockout of the name from every network.
    pub everywhere: Option<i64>,
    /// Client networks (as [`ClientNetwork`] shows them) locked out for the name, with the end of
    /// each lockout, ordered by network.
    pub networks: Vec<(String, i64)>,
}

impl Lockouts {
    pub fn is_locked(&self) -> bool {
        self.everywhere.is_some() || !self.networks.is_empty()
    }
}

/// How long an admitted login attempt holds its place in the failure budget when it is never
/// finished (the process died mid-hash): longer than any attempt can take (the hashing wait is
/// bounded at 10 s, each store call at its busy timeout), short enough not to lock a name out
/// for long by accident.
pub const LOGIN_ATTEMPT_TTL: i64 = 60;

/// How long the change feed keeps a change: a gateway that falls further behind (a pause, a long
/// store outage) reloads the whole state instead.
pub const CHANGE_RETENTION: i64 = 3600;

/// What [`LoginFailures::admit_login`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginAdmission {
    /// Go ahead: the attempt holds reservation `id` until it is finished.
    Admitted(i64),
    /// The name is locked out, from this network or from everywhere.
    Locked(Lockout),
    /// Failures in the window plus attempts in flight already reach `max_failures` for this
    /// network or `max_failures_per_user` for the name: one more could be the guess past the
    /// limit. The attempts in flight finish within seconds.
    Exhausted,
}

/// How an admitted login attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginVerdict {
    /// Wrong password, unknown or disabled user: one more failure, in both scopes.
    Failed,
    /// The password was right: the failures from this network are forgotten (a running lockout
    /// stays). The name's count across networks is not: it ends only with `find_time`, or a
    /// guesser spread over many networks would get a fresh ceiling at every login of the owner.
    Succeeded,
    /// No verdict (the hashing pool was busy, the store failed, the request was dropped): the
    /// reservation is given back and nothing is counted.
    Abandoned,
}

/// Accounts.
///
/// A backend implements this together with [`RefreshFamilies`] and [`Revocations`] over one
/// transactional state: disabling or removing a user cuts its sessions in the same transaction
/// (see [`RefreshFamilies::end_sessions`]), and [`RefreshFamilies::insert_refresh`] checks the user atomically with
/// the insert. With the two kinds apart, a session could start or survive after the account was
/// disabled.
#[async_trait]
pub trait Users: Send + Sync + 'static {
    /// Adds a user, enabled. `Conflict` if the name is taken.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;

    async fn user(&self, name: &Username) -> Result<Option<User>, StoreError>;

    /// All users, ordered by name.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;

    /// Replaces the password hash (also used for rehash-on-login, so it does not end sessions;
    /// call [`RefreshFamilies::end_sessions`] for that). `NotFound` if absent.
    async fn set_password(&self, name: &Username, hash: &str) -> Result<(), StoreError>;

    /// Disabling also cuts the user's sessions at `now` as [`RefreshFamilies::end_sessions`]
    /// does, in the same transaction; enabling does not bring them back. `NotFound` if absent.
    async fn set_disabled(
        &self,
        name: &Username,
        disabled: bool,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Replaces roles and scopes. `NotFound` if absent.
    async fn set_roles_scopes(
        &self,
        name: &Username,
        roles: Vec<String>,
        scopes: Vec<String>,
    ) -> Result<(), StoreError>;

    /// Removes the user and, with it, every refresh token of the user (later lookups of those
    /// tokens find nothing), and cuts its sessions at `now`: the mark stays, so a new account
    /// under the same name is not reached by the old one's access tokens. `NotFound` if absent.
    async fn remove_user(&self, name: &Username, now: i64) -> Result<(), StoreError>;

    /// Adds `users`, enabled, in one transaction: all of them or none (an error part-way rolls
    /// back those added before it). A name already taken (by a stored user, or by an earlier
    /// entry of `users`) is left as it is and listed in [`Imported::existing`], in input order.
    /// Without `skip_existing`, one taken name means nothing is added (`added` is 0): the
    /// caller reports every conflict at once and the operator decides.
    async fn import_users(
        &self,
        users: Vec<NewUser>,
        skip_existing: bool,
    ) -> Result<Imported, StoreError>;
}

/// What [`Users::import_users`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Users added (0 when the import was refused for a taken name).
    pub added: u64,
    /// Names already taken, left untouched: skipped, or the reason nothing was added.
    pub existing: Vec<Username>,
}

/// Refresh-token families, by digest.
///
/// Tokens belong to users: the backend that holds [`Users`] holds these too (see there).
#[async_trait]
pub trait RefreshFamilies: Send + Sync + 'static {
    /// Stores the first token of a new family at login, and where the session started.
    /// `NotFound` if the user does not exist, `Disabled` if disabled (checked atomically with
    /// the insert), `DuplicateRefresh` if the digest is already stored.
    async fn insert_refresh(
        &self,
        record: RefreshRecord,
        origin: SessionOrigin,
    ) -> Result<(), StoreError>;

    /// Atomically: the token with digest `old` must exist, be unused, unrevoked and unexpired at
    /// `now` (`now < expires_at`); it is marked used and `next` is stored in its family, for its
    /// user, with its scopes, and the family's last use is `now`. Returns the old record (user
    /// and scopes to mint from).
    ///
    /// Checks in order: missing -> `Unknown`; already used -> if unrevoked, unexpired and within
    /// `grace` seconds of its use (`now < used_at + grace`, never with `grace = 0`), `next` is
    /// stored beside the token that replaced it (a concurrent or retried refresh, not a theft),
    /// otherwise its family is revoked (committed) and `Reused`; revoked -> `Revoked`; expired
    /// -> `Expired`. Of N concurrent calls with one `old`, across processes sharing the
    /// store, exactly one marks it used; with no grace the rest get `Reused` (and so revoke the
    /// winner's successor too). If `next` cannot be stored (`DuplicateRefresh`) nothing changes.
    async fn rotate_refresh(
        &self,
        old: &[u8; 32],
        next: RefreshSuccessor,
        now: i64,
        grace: i64,
    ) -> Result<RefreshRecord, RotateError>;

    /// Looks a token up without changing it (logout, revocation, diagnostics).
    async fn refresh(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<(RefreshRecord, RefreshState)>, StoreError>;

    /// Revokes every token of `family`. Idempotent; an unknown family is not an error.
    async fn revoke_family(&self, family: &str) -> Result<(), StoreError>;

    /// Revokes `family` if it belongs to `name`; returns whether it had a token not yet revoked
    /// (an operator's or a logout's answer: something was ended). Another user's family or an
    /// unknown one is `false` and changes nothing.
    async fn revoke_session(
        &self,
        name: &Username,
        family: &str,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Cuts every session of `name` ("log out everywhere", also done by disable and remove):
    /// revokes every refresh family, and records that access tokens of `name` issued before
    /// `now + 1` are refused (the next whole second, so a token issued in the same second as
    /// the cut, whose `iat` cannot tell before from after, is refused too), as one change in
    /// the feed. A mark only moves forward. Returns the families that had a token not yet
    /// revoked. An unknown user is not an error: the mark is recorded all the same.
    async fn end_sessions(&self, name: &Username, now: i64) -> Result<u64, StoreError>;

    /// Live sessions (see [`Session`]) at `now`, of `name` or of everyone, ordered by user and
    /// start.
    async fn sessions(&self, name: Option<&Username>, now: i64)
    -> Result<Vec<Session>, StoreError>;
}

/// What gateways refuse on every request: revoked ids (access tokens' `jti`s and sessions'
/// `sid`s: both 128 random bits, they never collide), each kept until the last token it can
/// name has expired, and per-user session cuts; and the change feed over both, which every
/// write here appends to in the same transaction.
///
/// The feed's sequence numbers increase in commit order, so a reader that has seen up to `n`
/// and asks for what follows misses nothing that committed before its query (SQLite's single
/// writer gives that; a backend with concurrent writers must assign them at commit).
///
/// PostgreSQL backend: writers run concurrently there, so the guarantees SQLite's single writer
/// gives for free are taken with locks held to commit. Sequence numbers come from a one-row
/// counter incremented as the last statement of each feed write: its row lock makes the next
/// writer wait until this one's commit is visible, so numbers are assigned in commit order (a
/// sequence's `nextval` is not: 11 could commit before 10, and a reader past 11 would never see
/// 10). A user's token and session writes lock the user's row first, and a name's login
/// admissions and verdicts take an advisory lock on the name, so races that SQLite serializes
/// are serialized there too; each feed write `NOTIFY`s, and [`Revocations::change_signal`]
/// wakes followers on every gateway at its commit.
#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    /// Denylists `id` until `expires_at` (a `jti` until its token's `exp`; a `sid` until the
    /// last access token of the session has expired). Revoking one id twice keeps the later
    /// expiry.
    async fn revoke_id(&self, id: &str, expires_at: i64) -> Result<(), StoreError>;

    /// Denylisted ids with `expires_at > now`, ordered by expiry; rows already expired at `now`
    /// are deleted on the way.
    async fn revoked_ids(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError>;

    /// Every user's session cut (`not_before`), ordered by name.
    async fn session_cuts(&self) -> Result<Vec<(Username, i64)>, StoreError>;

    /// The last sequence number of the change feed (0 for none yet). Read it before the full
    /// state, then follow from it: a change in between is seen twice, never missed.
    async fn change_seq(&self) -> Result<u64, StoreError>;

    /// At most `max` changes after sequence number `seq`, in order.
    async fn changes_since(&self, seq: u64, max: usize) -> Result<ChangeBatch, StoreError>;

    /// A wake-up for followers of the feed, where the backend hears of commits made by other
    /// processes (PostgreSQL's `LISTEN`): the receiver is marked changed each time the feed may
    /// have grown, so a follower can ask [`changes_since`](Revocations::changes_since) at once
    /// instead of at its next poll. A signal can be late or lost (a dropped connection), and
    /// many changes make one signal, so followers still poll. `None` (the default): poll only.
    fn change_signal(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }
}

/// Login failures and lockouts per canonical username, in two scopes (per client network, and
/// for the name from everywhere), and the attempts in flight that hold places in a name's
/// failure budgets. Keyed by name, not by user: a name that belongs to no account locks out
/// too, so this kind never reads [`Users`].
#[async_trait]
pub trait LoginFailures: Send + Sync + 'static {
    /// Admits one login attempt for `name` (whether or not such a user exists) from `network`,
    /// atomically with every other admission and verdict for that name, in this process and in
    /// every other gateway sharing the store. Refused while the name is locked everywhere or
    /// for `network` (`Locked`, the lock everywhere reported first), or while failures within
    /// `policy.find_time` plus admitted, unfinished attempts reach `policy.max_failures` for
    /// (`name`, `network`) or `policy.max_failures_per_user` for `name` from all networks
    /// (`Exhausted`). Otherwise a reservation is stored that counts as an attempt in flight in
    /// both scopes until [`finish_login`](LoginFailures::finish_login) removes it or
    /// [`LOGIN_ATTEMPT_TTL`] passes.
    async fn admit_login(
        &self,
        name: &Username,
        network: ClientNetwork,
        now: i64,
        policy: LockoutPolicy,
    ) -> Result<LoginAdmission, StoreError>;

    /// Ends reservation `id` of an attempt on `name` from `network` with its verdict,
    /// atomically. `Failed` counts one failure in each scope: failures older than
    /// `policy.find_time` start a new count; reaching `policy.max_failures` locks (`name`,
    /// `network`) and reaching `policy.max_failures_per_user` locks `name` everywhere, each for
    /// `policy.ban_time`. The lockout it started is returned (the one everywhere when both
    /// started). `Succeeded` forgets the failures of (`name`, `network`) but never lifts a
    /// running lockout nor the name's count across networks. Finishing an expired or unknown
    /// reservation still records the verdict.
    async fn finish_login(
        &self,
        name: &Username,
        network: ClientNetwork,
        id: i64,
        now: i64,
        policy: LockoutPolicy,
        verdict: LoginVerdict,
    ) -> Result<Option<Lockout>, StoreError>;

    /// The lockouts of `name` running at `now`, everywhere and per network.
    async fn lockouts(&self, name: &Username, now: i64) -> Result<Lockouts, StoreError>;

    /// Lifts every lockout of `name` (everywhere and for every network) and forgets its failures
    /// in every scope (an operator's way out). Attempts in flight keep their reservations.
    /// Returns whether the name was locked in any scope at `now`; unlocking a name that is not
    /// locked is not an error.
    async fn unlock(&self, name: &Username, now: i64) -> Result<bool, StoreError>;
}

/// One signing key as the store keeps it. The private key is sealed by the caller (under a
/// key-encryption key the store never sees); the store only keeps the bytes and the times.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Unique among stored keys; at most [`crate::auth::keys::MAX_KID_BYTES`] bytes.
    pub kid: String,
    pub alg: KeyAlg,
    /// The sealed private key, opaque to the store.
    pub sealed: Vec<u8>,
    pub created_at: i64,
    /// From when the key signs; it is published (verifies, is in the JWKS) from the moment it is
    /// stored, so a key stored with a future `active_from` is known everywhere before it signs.
    pub active_from: i64,
    /// From when the key no longer signs; it still verifies for the retention the caller
    /// chooses. `None`: not retired.
    pub retired_at: Option<i64>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("created_at", &self.created_at)
            .field("active_from", &self.active_from)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// The signing keys every gateway sharing the store signs and verifies with.
///
/// Rotation is publish-then-activate: a new key is stored with an `active_from` in the future
/// and the keys signing so far are retired at that same instant, in one transaction, so every
/// gateway (told by the feed) verifies and publishes the new key before any gateway signs with
/// it. Both writes append [`Change::KeysChanged`] to the change feed in their transaction (and
/// so `NOTIFY` on PostgreSQL, as every feed write does).
#[async_trait]
pub trait SigningKeys: Send + Sync + 'static {
    /// Every key not retired at or before `retired_after` (keys never retired, keys retired
    /// later, keys that do not sign yet), ordered by `active_from`, then kid.
    async fn signing_keys(&self, retired_after: i64) -> Result<Vec<StoredKey>, StoreError>;

    /// Stores `key` if the store holds no signing key at all (retired ones count), atomically
    /// with every other write here, in this process and in every other sharing the store: of N
    /// gateways starting at once against an empty store, exactly one key is stored and the
    /// others find it. Returns whether `key` was stored.
    async fn insert_first_if_empty(&self, key: StoredKey) -> Result<bool, StoreError>;

    /// Atomically: stores `key` (`DuplicateKey` if its kid is taken, and nothing changes), sets
    /// `retired_at = key.active_from` on every key not yet retired (they sign until the new one
    /// does), and deletes keys retired at or before `forget_before` (past their retention).
    async fn add_and_retire(&self, key: StoredKey, forget_before: i64) -> Result<(), StoreError>;
}

/// A registered machine client (OAuth2 client): who it is, what it may ask for, and the digest of
/// its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    /// The `client_id`; as canonical as a [`Username`] (the same syntax).
    pub name: Username,
    /// A keyed digest of the secret (the caller computes it; the store never sees a secret).
    pub secret_digest: [u8; 32],
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    /// Grant types it may use (`client_credentials`, `password`), and `introspection`.
    pub grants: Vec<String>,
    /// How it authenticates: a secret, or assertions signed with its keys (`private_key_jwt`).
    pub auth_method: ClientAuthMethod,
    /// A `private_key_jwt` client's public keys, as a JWKS document (JSON text).
    pub jwks: Option<String>,
    /// Where a `private_key_jwt` client's keys are published, when not given inline.
    pub jwks_url: Option<String>,
    pub disabled: bool,
    /// The id its access tokens carry as `sid`: disabling or removing the client revokes it (one
    /// change in the feed, so every gateway refuses those tokens at its next poll); enabling
    /// gives the client a new one (rotating the secret does not).
    pub epoch: String,
    pub created_at: i64,
    pub rotated_at: i64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("secret_digest", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("audiences", &self.audiences)
            .field("grants", &self.grants)
            .field("auth_method", &self.auth_method)
            .field("jwks", &self.jwks)
            .field("jwks_url", &self.jwks_url)
            .field("disabled", &self.disabled)
            .field("epoch", &self.epoch)
            .field("created_at", &self.created_at)
            .field("rotated_at", &self.rotated_at)
            .finish()
    }
}

/// How a client authenticates at the token endpoint: one method per client, fixed at
/// registration (RFC 7591's `token_endpoint_auth_method`), so a key client's stolen database row
/// or a secret client's leaked secret never opens the other door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// A generated secret, by `client_secret_basic` or `client_secret_post`.
    Secret,
    /// An assertion signed with one of its registered keys (RFC 7523 `private_key_jwt`). Its
    /// secret digest is of a secret nobody was shown, and is never checked.
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::Secret => "client_secret",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }

    /// The stored name back; `Corrupt` for anything else.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "client_secret" => Ok(ClientAuthMethod::Secret),
            "private_key_jwt" => Ok(ClientAuthMethod::PrivateKeyJwt),
            other => Err(StoreError::Corrupt(format!(
                "unknown client auth method {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// The RFC 7591 `token_endpoint_auth_method` names it stands for.
    pub fn rfc7591_names(self) -> &'static [&'static str] {
        match self {
            ClientAuthMethod::Secret => &["client_secret_basic", "client_secret_post"],
            ClientAuthMethod::PrivateKeyJwt => &["private_key_jwt"],
        }
    }
}

/// What [`Clients::create_client`] needs; the store adds the times and `disabled = false`.
#[derive(Clone, PartialEq, Eq)]
pub struct NewClient {
    pub name: Username,
    pub secret_digest: [u8; 32],
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub grants: Vec<String>,
    pub auth_method: ClientAuthMethod,
    pub jwks: Option<String>,
    pub jwks_url: Option<String>,
    pub epoch: String,
}

impl fmt::Debug for NewClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewClient")
            .field("name", &self.name)
            .field("secret_digest", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("audiences", &self.audiences)
            .field("grants", &self.grants)
            .field("auth_method", &self.auth_method)
            .field("jwks", &self.jwks)
            .field("jwks_url", &self.jwks_url)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// The client registry. A client's name space is its own: a client and a user may share a name.
///
/// Disabling and removing revoke the client's current epoch (see [`Client::epoch`]) as
/// [`Revocations::revoke_id`] does, in the same transaction, so the refusal of its tokens
/// reaches every gateway through the change feed.
#[async_trait]
pub trait Clients: Send + Sync + 'static {
    /// Adds a client, enabled, with `created_at = rotated_at = now`. `ClientConflict` if the
    /// name is taken.
    async fn create_client(&self, client: NewClient, now: i64) -> Result<Client, StoreError>;

    async fn client(&self, name: &Username) -> Result<Option<Client>, StoreError>;

    /// All clients, ordered by name.
    async fn list_clients(&self) -> Result<Vec<Client>, StoreError>;

    /// Replaces the secret digest, `rotated_at = now`. The old secret stops working at once;
    /// tokens already issued live on, under the same epoch, so a later disable still ends them.
    /// `ClientNotFound` if absent.
    async fn rotate_client_secret(
        &self,
        name: &Username,
        secret_digest: [u8; 32],
        now: i64,
    ) -> Result<(), StoreError>;

    /// Disabling revokes the current epoch until `revoke_until` (and appends it to the feed);
    /// enabling sets `epoch` (a fresh one, so tokens refused at the disable stay refused).
    /// `ClientNotFound` if absent.
    async fn set_client_disabled(
        &self,
        name: &Username,
        disabled: bool,
        epoch: &str,
        revoke_until: i64,
    ) -> Result<(), StoreError>;

    /// Removes the client and revokes its epoch until `revoke_until`. `ClientNotFound` if absent.
    async fn remove_client(&self, name: &Username, revoke_until: i64) -> Result<(), StoreError>;

    /// Spends the `jti` of an assertion of `client` (`private_key_jwt`), remembered until
    /// `expires_at`: `true` the first time, `false` while an earlier use has not expired at
    /// `now` (a replay). One atomic insert, so of two gateways sharing the store that see the
    /// same assertion at once exactly one gets `true`. Expired uses are purged by
    /// [`Store::purge_expired`]; until then an expired one is taken over by the new use.
    async fn spend_assertion(
        &self,
        client: &Username,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
}

/// Persistent state: every kind, plus what spans them. Implementations are shared as
/// `Arc<dyn Store>`; callers bring the kind's trait into scope to call its methods.
#[async_trait]
pub trait Store:
    Users + RefreshFamilies + Revocations + LoginFailures + SigningKeys + Clients
{
    /// Deletes refresh tokens, denylisted ids and spent assertion ids expired at `now` (a used token past its expiry
    /// can no longer be presented, so reuse detection loses nothing), sessions without tokens,
    /// changes older than [`CHANGE_RETENTION`] and login bookkeeping that no longer counts
    /// (reservations past their TTL, failure records long idle and unlocked).
    /// Returns rows deleted. On `Store` because one sweep covers every kind.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;

    /// Readiness: the backend answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// An admitted login attempt: finish it with its verdict; dropped unfinished (an early return,
/// a cancelled request), it gives its reservation back from a task of its own.
pub struct LoginAttempt {
    store: std::sync::Arc<dyn Store>,
    name: Username,
    network: ClientNetwork,
    id: i64,
    policy: LockoutPolicy,
    finished: bool,
}

impl LoginAttempt {
    /// Admits an attempt on `name` from `network`; `Err` carries the refusal
    /// ([`LoginAdmission::Locked`] or [`LoginAdmission::Exhausted`]).
    pub async fn admit(
        store: &std::sync::Arc<dyn Store>,
        name: &Username,
        network: ClientNetwork,
        now: i64,
        policy: LockoutPolicy,
    ) -> Result<Result<Self, LoginAdmission>, StoreError> {
        Ok(match store.admit_login(name, network, now, policy).await? {
            LoginAdmission::Admitted(id) => Ok(Self {
                store: store.clone(),
                name: name.clone(),
                network,
                id,
                policy,
                finished: false,
            }),
            refused => Err(refused),
        })
    }

    /// Records the verdict; for `Failed`, the lockout it started.
    pub async fn finish(
        mut self,
        now: i64,
        verdict: LoginVerdict,
    ) -> Result<Option<Lockout>, StoreError> {
        self.finished = true;
        self.store
            .finish_login(&self.name, self.network, self.id, now, self.policy, verdict)
            .await
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime left: the reservation expires after LOGIN_ATTEMPT_TTL.
        };
        let (store, name, network, id, policy) = (
            self.store.clone(),
            self.name.clone(),
            self.network,
            self.id,
            self.policy,
        );
        runtime.spawn(async move {
            // An abandoned attempt reads no time: it only gives its reservation back.
            if let Err(e) = store
                .finish_login(&name, network, id, 0, policy, LoginVerdict::Abandoned)
                .await
            {
                tracing::warn!(error = %e, "giving back a login reservation failed; it expires");
            }
        });
    }
}

/// Default path of the embedded SQLite store.
pub const DEFAULT_STORE_PATH: &str = "data/gatehouse.db";

/// Which backend holds the state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded SQLite file: one gateway (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database that several gateways share.
    Postgres,
}

/// The `[store]` section as written.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub backend: Backend,
    /// The SQLite file (`backend = "sqlite"`).
    pub path: std::path::PathBuf,
    /// `[store.postgres]` (`backend = "postgres"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<postgres::settings::RawPostgres>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            path: DEFAULT_STORE_PATH.into(),
            postgres: None,
        }
    }
}

/// The validated `[store]` section: the backend and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    Sqlite { path: std::path::PathBuf },
    Postgres(Box<postgres::PgConfig>),
}

impl StoreConfig {
    /// Whether several gateways may share this store (a revocation made on one must then reach
    /// the others through the change feed).
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreConfig::Postgres(_))
    }
}

/// Where the store is, for messages: the SQLite path, or PostgreSQL's host, port and database
/// (never the password).
impl std::fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => write!(f, "sqlite {}", path.display()),
            StoreConfig::Postgres(pg) => write!(f, "postgres {}", pg.target()),
        }
    }
}

impl RawStore {
    pub fn validate(self) -> Result<StoreConfig, crate::config::value::ConfigError> {
        use crate::config::value::invalid;
        match (self.backend, self.postgres) {
            (Backend::Sqlite, None) => {
                if self.path.as_os_str().is_empty() {
                    return Err(invalid("store.path", "must not be empty"));
                }
                Ok(StoreConfig::Sqlite { path: self.path })
            }
            (Backend::Sqlite, Some(_)) => Err(invalid(
                "store.postgres",
                "is set but store.backend is \"sqlite\": set backend = \"postgres\" or remove \
                 the section",
            )),
            (Backend::Postgres, None) => Err(invalid(
                "store.backend",
                "\"postgres\" needs a [store.postgres] section with at least url",
            )),
            (Backend::Postgres, Some(pg)) => Ok(StoreConfig::Postgres(Box::new(pg.validate()?))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Username {
        Username::parse("alice").unwrap()
    }

    #[test]
    fn debug_never_shows_password_hash_or_digest() {
        let user = User {
            username: alice(),
            password_hash: "$argon2id$v=19$SECRETHASH".into(),
            roles: vec!["admin".into()],
            scopes: vec![],
            disabled: false,
            created_at: 1,
            updated_at: 2,
        };
        let new = NewUser {
            username: alice(),
            password_hash: "$2b$04$SECRETHASH".into(),
            roles: vec![],
            scopes: vec![],
        };
        let record = RefreshRecord {
            digest: [0xAB; 32],
            family: "fam".into(),
            username: alice(),
            scopes: vec!["read".into()],
            issued_at: 1,
            expires_at: 2,
        };
        let next = RefreshSuccessor {
            digest: [0xAB; 32],
            issued_at: 1,
            expires_at: 2,
        };
        let client = Client {
            name: alice(),
            secret_digest: [0xAB; 32],
            scopes: vec![],
            audiences: vec![],
            grants: vec![],
            auth_method: ClientAuthMethod::Secret,
            jwks: None,
            jwks_url: None,
            disabled: false,
            epoch: "c.e".into(),
            created_at: 1,
            rotated_at: 1,
        };
        let new_client = NewClient {
            name: alice(),
            secret_digest: [0xAB; 32],
            scopes: vec![],
            audiences: vec![],
            grants: vec![],
            auth_method: ClientAuthMethod::Secret,
            jwks: None,
            jwks_url: None,
            epoch: "c.e".into(),
        };
        for shown in [
            format!("{client:?}"),
            format!("{new_client:?}"),
            format!("{user:?}"),
            format!("{new:?}"),
            format!("{record:?}"),
            format!("{next:?}"),
        ] {
            assert!(!shown.contains("SECRETHASH"), "{shown}");
            assert!(!shown.contains("171, 171"), "{shown}");
            assert!(!shown.to_lowercase().contains("abab"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn refresh_state_is_live_only_when_unused_unrevoked_unexpired() {
        let record = RefreshRecord {
            digest: [1; 32],
            family: "f".into(),
            username: alice(),
            scopes: vec![],
            issued_at: 0,
            expires_at: 100,
        };
        let fresh = RefreshState::default();
        assert!(fresh.is_live(&record, 99));
        assert!(!fresh.is_live(&record, 100));
        let used = RefreshState {
            used_at: Some(5),
            ..fresh
        };
        assert!(!used.is_live(&record, 10));
        let revoked = RefreshState {
            revoked_at: Some(5),
            ..fresh
        };
        assert!(!revoked.is_live(&record, 10));
    }
}
