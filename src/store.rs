//! The state interface: users, refresh-token families, revoked access-token ids.
//!
//! Backends implement [`Store`]; `sqlite` is the embedded one, PostgreSQL will implement the same
//! trait. Everything a backend must guarantee is written on the trait methods, so a second
//! backend can be checked against this text alone.
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
//! Room left for later (not built): failed-login counters and lockout will arrive as a schema
//! migration plus new trait methods; nothing here assumes their absence.

pub mod sqlite;

use std::fmt;

use async_trait::async_trait;

use crate::auth::username::Username;

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

/// What [`Store::create_user`] needs; the store adds the times and `disabled = false`.
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

/// Why [`Store::rotate_refresh`] refused; every variant but `Store` is an invalid grant.
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

/// The consecutive-failure lockout rule, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub find_time: i64,
    pub ban_time: i64,
}

/// Persistent state. Implementations are shared as `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds a user, enabled. `Conflict` if the name is taken.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;

    async fn user(&self, name: &Username) -> Result<Option<User>, StoreError>;

    /// All users, ordered by name.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;

    /// Replaces the password hash (also used for rehash-on-login, so it does not end sessions;
    /// call [`Store::revoke_user_refresh`] for that). `NotFound` if absent.
    async fn set_password(&self, name: &Username, hash: &str) -> Result<(), StoreError>;

    /// Disabling also revokes every refresh family of the user, in the same transaction;
    /// enabling does not bring them back. `NotFound` if absent.
    async fn set_disabled(&self, name: &Username, disabled: bool) -> Result<(), StoreError>;

    /// Replaces roles and scopes. `NotFound` if absent.
    async fn set_roles_scopes(
        &self,
        name: &Username,
        roles: Vec<String>,
        scopes: Vec<String>,
    ) -> Result<(), StoreError>;

    /// Removes the user and, with it, every refresh token of the user (later lookups of those
    /// tokens find nothing). `NotFound` if absent.
    async fn remove_user(&self, name: &Username) -> Result<(), StoreError>;

    /// Stores the first token of a new family at login. `NotFound` if the user does not exist,
    /// `Disabled` if disabled (checked atomically with the insert), `DuplicateRefresh` if the
    /// digest is already stored.
    async fn insert_refresh(&self, record: RefreshRecord) -> Result<(), StoreError>;

    /// Atomically: the token with digest `old` must exist, be unused, unrevoked and unexpired at
    /// `now` (`now < expires_at`); it is marked used and `next` is stored in its family, for its
    /// user, with its scopes. Returns the old record (user and scopes to mint from).
    ///
    /// Checks in order: missing -> `Unknown`; already used -> its family is revoked (committed)
    /// and `Reused`; revoked -> `Revoked`; expired -> `Expired`. Of N concurrent calls with one
    /// `old`, across processes sharing the store, exactly one succeeds and the rest get
    /// `Reused` (and so revoke the winner's successor too). If `next` cannot be stored
    /// (`DuplicateRefresh`) nothing changes.
    async fn rotate_refresh(
        &self,
        old: &[u8; 32],
        next: RefreshSuccessor,
        now: i64,
    ) -> Result<RefreshRecord, RotateError>;

    /// Looks a token up without changing it (logout, revocation, diagnostics).
    async fn refresh(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<(RefreshRecord, RefreshState)>, StoreError>;

    /// Revokes every token of `family`. Idempotent; an unknown family is not an error.
    async fn revoke_family(&self, family: &str) -> Result<(), StoreError>;

    /// Revokes every refresh family of the user ("log out everywhere"). Idempotent; a user
    /// without tokens or an unknown user is not an error.
    async fn revoke_user_refresh(&self, name: &Username) -> Result<(), StoreError>;

    /// Denylists an access token id until `expires_at` (the token's own `exp`). Revoking one
    /// id twice keeps the later expiry.
    async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<(), StoreError>;

    /// Denylisted ids with `expires_at > now`, ordered by expiry; rows already expired at `now`
    /// are deleted on the way.
    async fn revoked_jtis(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError>;

    /// Deletes refresh tokens and denylisted ids expired at `now` (a used token past its expiry
    /// can no longer be presented, so reuse detection loses nothing). Returns rows deleted.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;

    /// Readiness: the backend answers a trivial query.
    /// When `name` is locked out, the unix time the lockout ends.
    async fn lockout(&self, name: &Username, now: i64) -> Result<Option<i64>, StoreError>;

    /// Counts a failed login for `name` (whether or not such a user exists). Failures older than
    /// `policy.find_time` start a new count; reaching `policy.max_failures` locks the name for
    /// `policy.ban_time`, returned as the unix time the lockout ends.
    async fn record_login_failure(
        &self,
        name: &Username,
        now: i64,
        policy: LockoutPolicy,
    ) -> Result<Option<i64>, StoreError>;

    /// Forgets failures after a successful login (a running lockout is not lifted: a locked
    /// name cannot log in to lift it).
    async fn clear_login_failures(&self, name: &Username) -> Result<(), StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
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
        for shown in [
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
