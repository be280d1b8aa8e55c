//! What every request is checked against once its token is verified: revoked token and session
//! ids and per-user session cuts, mirrored in memory from the store and kept current by
//! following the store's change feed, so a logout, a disable or a password change made by the
//! CLI or another gateway on the same store is enforced here within [`FOLLOW_EVERY`], and at
//! once where the store announces its changes ([`FollowSchedule`]).
//!
//! The check never touches the store: one map lookup per id the token carries (`jti`, `sid`),
//! and for the gateway's own tokens one lookup of the user's cut, skipped while no user has one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use tokio::sync::watch;

use crate::auth::claims::Identity;
use crate::auth::settings::AuthConfig;
use crate::auth::username::Username;
use crate::store::{Change, Store, StoreError};

/// How often a gateway polls the change feed: a change is enforced everywhere within this
/// (plus one store query), well inside the 1 s the session model promises.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// When to follow the store's feed next: every poll period, and at once when the store
/// announces a change ([`crate::store::Revocations::change_signal`]). A wake-up restarts the
/// period, so the poll after it comes one period later.
pub struct FollowSchedule {
    poll: tokio::time::Interval,
    /// `None` when the store announces nothing (or stopped announcing).
    signal: Option<watch::Receiver<()>>,
}

/// Why [`FollowSchedule::next`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowCause {
    /// The poll period passed.
    Poll,
    /// The store announced a change.
    Signal,
}

impl FollowSchedule {
    /// Every [`FOLLOW_EVERY`], and on `store`'s signal.
    pub fn new(store: &dyn Store) -> Self {
        Self::every(store, FOLLOW_EVERY)
    }

    /// Every `period` (the first poll one period from now), and on `store`'s signal.
    pub fn every(store: &dyn Store, period: Duration) -> Self {
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut signal = store.change_signal();
        if let Some(signal) = &mut signal {
            // What happened before this point the caller has just read, or reads next.
            signal.mark_unchanged();
        }
        Self { poll, signal }
    }

    /// Waits for the next time to follow the feed.
    pub async fn next(&mut self) -> FollowCause {
        loop {
            let signalled = async {
                match &mut self.signal {
                    Some(signal) => signal.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                live = signalled => {
                    if live {
                        self.poll.reset();
                        return FollowCause::Signal;
                    }
                    // The store dropped its sender: polling alone from now on.
                    self.signal = None;
                }
                _ = self.poll.tick() => return FollowCause::Poll,
            }
        }
    }
}

/// Seconds after a cut or a session's revocation until no access token it reaches can still be
/// valid: the longest lifetime plus the skew allowed on both ends, plus a margin.
pub fn token_horizon(config: &AuthConfig) -> i64 {
    let horizon = config.longest_access_lifetime() + 2 * config.leeway;
    i64::try_from(horizon.as_secs()).unwrap_or(i64::MAX / 2) + EXPIRY_MARGIN
}

/// Most changes read per query while catching up.
const PAGE: usize = 1000;

/// Seconds a revoked id is still refused after the expiry it was recorded with: the clock skew
/// the verifier allows (at most this much) must not let a revoked token back in at its edge.
const EXPIRY_MARGIN: i64 = 60;

/// The maps' hasher: these lookups run on every request, and SipHash (the default) was most of
/// their cost (`verify/revocation_check`). Seeded per process; the keys are ids and names that
/// only reach a lookup from a token whose signature was verified.
type Hasher = RandomState;

pub struct Revocation {
    /// Revoked `jti`s and `sid`s with the expiry they are refused until.
    ids: DashMap<String, i64, Hasher>,
    /// Whether `ids` may hold anything: most of the time nothing is revoked, and then a request
    /// pays one load instead of two lookups. Set on insert, recomputed by `prune`.
    any_ids: AtomicBool,
    /// Per user, the `not_before` of the last cut: the gateway's own tokens with an earlier
    /// `iat` are refused. Read on every request, written on a change: copied on write.
    cuts: ArcSwap<HashMap<String, i64, Hasher>>,
    /// The last change applied; held across a catch-up so two never interleave.
    seq: tokio::sync::Mutex<u64>,
    /// Unix second at which the mirror was last known current: the store answered a catch-up
    /// (or the load) that started then. Requests compare it with their bound on staleness.
    current_at: AtomicI64,
    /// Set when the feed announced new signing keys (or was read from a reload, which may have
    /// skipped such an announcement); taken by whoever rebuilds the key ring.
    keys_changed: AtomicBool,
}

impl Revocation {
    /// Loads the whole state: the sequence number first, so a change committed while the state
    /// is read is applied again by the next catch-up, never missed.
    pub async fn load(store: &dyn Store, now: i64) -> Result<Self, StoreError> {
        let this = Self {
            ids: DashMap::default(),
            any_ids: AtomicBool::new(false),
            cuts: ArcSwap::default(),
            seq: tokio::sync::Mutex::new(0),
            current_at: AtomicI64::new(now),
            keys_changed: AtomicBool::new(false),
        };
        let mut seq = this.seq.lock().await;
        *seq = this.reload(store, now).await?;
        drop(seq);
        Ok(this)
    }

    /// Merges the store's whole state into the mirror; returns the sequence it is current to.
    /// Nothing is taken out first: a request checked meanwhile must not find a revoked id
    /// missing, and an id or cut leaves only by expiring, which `prune` sees to.
    async fn reload(&self, store: &dyn Store, now: i64) -> Result<u64, StoreError> {
        let seq = store.change_seq().await?;
        let ids = store.revoked_ids(now).await?;
        let cuts = store.session_cuts().await?;
        for (id, expires_at) in ids {
            self.revoke(id, expires_at);
        }
        if !cuts.is_empty() {
            self.cuts.rcu(|known| {
                let mut merged = HashMap::clone(known);
                for (name, not_before) in &cuts {
                    let mark = merged
                        .entry(name.as_str().to_owned())
                        .or_insert(*not_before);
                    *mark = (*mark).max(*not_before);
                }
                merged
            });
        }
        Ok(seq)
    }

    /// Applies what the feed holds after the last change seen; a feed purged past it means a
    /// full reload. Returns how many changes were applied.
    pub async fn catch_up(&self, store: &dyn Store, now: i64) -> Result<usize, StoreError> {
        let mut seq = self.seq.lock().await;
        let mut applied = 0;
        loop {
            let batch = store.changes_since(*seq, PAGE).await?;
            if !batch.complete {
                tracing::warn!(
                    seen = *seq,
                    "fell behind the store's change feed: reloading revocations and cuts"
                );
                *seq = self.reload(store, now).await?;
                self.current_at.fetch_max(now, Ordering::Release);
                self.keys_changed.store(true, Ordering::Release);
                return Ok(applied);
            }
            let full = batch.changes.len() == PAGE;
            applied += batch.changes.len();
            for change in batch.changes {
                match change {
                    Change::Revoked { id, expires_at } => self.revoke(id, expires_at),
                    Change::SessionsCut {
                        username,
                        not_before,
                    } => self.cut(&username, not_before),
                    Change::KeysChanged => self.keys_changed.store(true, Ordering::Release),
                }
            }
            *seq = batch.last;
            if !full {
                self.current_at.fetch_max(now, Ordering::Release);
                return Ok(applied);
            }
        }
    }

    /// Unix second at which the mirror was last known to hold every change in the store: a
    /// catch-up that started then found nothing more.
    pub fn current_at(&self) -> i64 {
        self.current_at.load(Ordering::Acquire)
    }

    /// Tests: the mirror as if its last complete catch-up was `secs` earlier.
    #[cfg(test)]
    pub fn age(&self, secs: i64) {
        self.current_at.fetch_sub(secs, Ordering::AcqRel);
    }

    /// Whether the feed announced a change of the signing keys since the last call.
    pub fn take_keys_changed(&self) -> bool {
        self.keys_changed.swap(false, Ordering::AcqRel)
    }

    /// Whether `identity` is refused: its `jti` or its session revoked, or (for the gateway's
    /// own tokens, `own`) issued before its user's sessions were cut. External issuers' `sub`s
    /// name other accounts, so cuts never apply to them.
    pub fn refuses(&self, identity: &Identity, own: bool, now: i64) -> bool {
        let revoked = |id: &Option<String>| {
            id.as_deref()
                .and_then(|id| self.ids.get(id))
                .is_some_and(|until| *until + EXPIRY_MARGIN > now)
        };
        if self.any_ids.load(Ordering::Acquire)
            && (revoked(&identity.jti) || revoked(&identity.sid))
        {
            return true;
        }
        own && self.cut_before(&identity.sub, identity.iat)
    }

    fn cut_before(&self, user: &str, iat: i64) -> bool {
        let cuts = self.cuts.load();
        !cuts.is_empty() && cuts.get(user).is_some_and(|not_before| iat < *not_before)
    }

    /// The `not_before` of `user`'s last cut, if any: a token minted earlier would be refused.
    pub fn not_before(&self, user: &Username) -> Option<i64> {
        self.cuts.load().get(user.as_str()).copied()
    }

    /// Refuses `id` until `expires_at` here at once (the store is written by the caller).
    pub fn revoke(&self, id: String, expires_at: i64) {
        self.ids
            .entry(id)
            .and_modify(|until| *until = (*until).max(expires_at))
            .or_insert(expires_at);
        // After the insert, so a `prune` that found the map empty and cleared the flag before
        // the insert cannot leave it cleared (see there).
        self.any_ids.store(true, Ordering::Release);
    }

    /// Refuses `user`'s tokens issued before `not_before` here at once (the store is written by the
    /// caller); a mark only moves forward.
    pub fn cut(&self, user: &Username, not_before: i64) {
        if self
            .not_before(user)
            .is_some_and(|known| known >= not_before)
        {
            return;
        }
        self.cuts.rcu(|cuts| {
            let mut cuts = HashMap::clone(cuts);
            let mark = cuts.entry(user.as_str().to_owned()).or_insert(not_before);
            *mark = (*mark).max(not_before);
            cuts
        });
    }

    /// Forgets ids past their expiry and cuts older than `horizon` (every token issued before
    /// a cut that old has expired). Called on a timer.
    pub fn prune(&self, now: i64, horizon: i64) {
        self.ids.retain(|_, until| *until + EXPIRY_MARGIN > now);
        if self.ids.is_empty() {
            // A concurrent `revoke` inserts, then sets the flag: if its insert came before the
            // second look, the look restores the flag; if after, its own store comes after ours.
            self.any_ids.store(false, Ordering::Release);
            if !self.ids.is_empty() {
                self.any_ids.store(true, Ordering::Release);
            }
        }
        let cuts = self.cuts.load();
        if cuts.values().any(|not_before| *not_before < horizon) {
            self.cuts.rcu(|cuts| {
                let mut cuts = HashMap::clone(cuts);
                cuts.retain(|_, not_before| *not_before >= horizon);
                cuts
            });
        }
    }

    /// Ids and cuts held, for diagnostics.
    pub fn held(&self) -> usize {
        self.ids.len() + self.cuts.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::IdentityValues;
    use crate::store::Revocations as _;

    fn empty() -> Revocation {
        Revocation {
            ids: DashMap::default(),
            any_ids: AtomicBool::new(false),
            cuts: ArcSwap::default(),
            seq: tokio::sync::Mutex::new(0),
            current_at: AtomicI64::new(0),
            keys_changed: AtomicBool::new(false),
        }
    }

    fn alice(iat: i64, jti: &str, sid: &str) -> Identity {
        Identity {
            values: IdentityValues::render("alice", &[], &[]),
            sub: "alice".into(),
            roles: vec![],
            scopes: vec![],
            issuer: "gatehouse".into(),
            exp: iat + 900,
            iat,
            jti: Some(jti.into()),
            sid: Some(sid.into()),
            client_id: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn a_revoked_jti_or_session_is_refused_until_it_expires_and_pruning_keeps_it() {
        let r = empty();
        let token = alice(1000, "jti-1", "sid-1");
        assert!(!r.refuses(&token, true, 1000));
        r.revoke("sid-1".into(), 2000);
        assert!(r.refuses(&token, true, 1000), "its session was revoked");
        assert!(r.refuses(&alice(1000, "jti-2", "sid-1"), false, 1000));
        assert!(!r.refuses(&alice(1000, "jti-2", "sid-2"), true, 1000));
        // Pruning before the expiry keeps it; after, the flag goes down and comes back up.
        r.prune(1500, 0);
        assert!(r.refuses(&token, true, 1500));
        r.prune(2000 + EXPIRY_MARGIN, 0);
        assert!(!r.any_ids.load(Ordering::Acquire));
        r.revoke("jti-1".into(), 3000);
        assert!(
            r.refuses(&token, true, 2100),
            "a revoke after a prune counts"
        );
    }

    #[tokio::test]
    async fn a_full_reload_merges_and_never_lets_a_revoked_token_through_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        store.revoke_id("in-store", 5000).await.unwrap();
        let r = Revocation::load(&store, 1000).await.unwrap();
        // Known here only (the feed will bring it, or it was applied locally first).
        r.revoke("sid-1".into(), 5000);
        r.reload(&store, 1000).await.unwrap();
        assert!(r.refuses(&alice(1000, "in-store", "x"), true, 1000));
        assert!(r.refuses(&alice(1000, "y", "sid-1"), true, 1000));
    }

    /// A store that announces nothing (SQLite) is followed by polling alone.
    #[tokio::test]
    async fn a_store_without_a_signal_is_polled_every_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let period = Duration::from_millis(40);
        let started = tokio::time::Instant::now();
        let mut schedule = FollowSchedule::every(&store, period);
        assert_eq!(schedule.next().await, FollowCause::Poll);
        assert!(
            started.elapsed() >= period,
            "the first poll one period after loading"
        );
        assert_eq!(schedule.next().await, FollowCause::Poll);
        assert!(started.elapsed() >= 2 * period);
    }

    /// Another gateway's revocation wakes this gateway's follower at its commit, long before a
    /// poll: the schedule here polls once an hour, so only the store's signal can end the wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_gateways_revocation_wakes_the_follower_before_any_poll() {
        use crate::store::postgres::{PgHost, PgStore, testing};
        let Some(server) = testing::server() else {
            return;
        };
        let db = server.create_database().await;
        let config = crate::store::postgres::PgConfig {
            port: server.port,
            password: Some(server.password.clone()),
            ..crate::store::postgres::PgConfig::new(
                PgHost::Tcp("127.0.0.1".into()),
                testing::SUPERUSER,
                db,
            )
        };
        let other = PgStore::open(&config).await.unwrap();
        let ours = PgStore::open(&config).await.unwrap();
        let mirror = Revocation::load(&ours, 1000).await.unwrap();
        let mut schedule = FollowSchedule::every(&ours, Duration::from_secs(3600));
        let token = alice(1000, "jti-elsewhere", "sid-x");
        assert!(!mirror.refuses(&token, true, 1000));

        other.revoke_id("jti-elsewhere", 5000).await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), schedule.next()).await;
        assert_eq!(woken, Ok(FollowCause::Signal));
        assert_eq!(mirror.catch_up(&ours, 1000).await.unwrap(), 1);
        assert!(mirror.refuses(&token, true, 1000));
    }

    #[test]
    fn a_cut_refuses_the_users_earlier_tokens_of_this_issuer_only() {
        let r = empty();
        let alice_name = Username::parse("alice").unwrap();
        r.cut(&alice_name, 1001);
        assert!(r.refuses(&alice(1000, "a", "s"), true, 1000));
        assert!(!r.refuses(&alice(1001, "b", "s"), true, 1001));
        // Another issuer's alice is another account.
        assert!(!r.refuses(&alice(1000, "c", "s"), false, 1000));
        // A mark never moves back.
        r.cut(&alice_name, 500);
        assert_eq!(r.not_before(&alice_name), Some(1001));
        // Pruned once every token it could refuse has expired.
        r.prune(5000, 2000);
        assert_eq!(r.not_before(&alice_name), None);
    }
}
