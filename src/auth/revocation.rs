//! What every request is checked against once its token is verified: revoked token and session
//! ids and per-user session cuts, mirrored in memory from the store and kept current by
//! following the store's change feed, so a logout, a disable or a password change made by the
//! CLI or another gateway on the same store is enforced here within [`FOLLOW_EVERY`].
//!
//! The check never touches the store: one map lookup per id the token carries (`jti`, `sid`),
//! and for the gateway's own tokens one lookup of the user's cut, skipped while no user has one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::auth::claims::Identity;
use crate::auth::username::Username;
use crate::config::AuthConfig;
use crate::store::{Change, Store, StoreError};

/// How often a gateway polls the change feed: a change is enforced everywhere within this
/// (plus one store query), well inside the 1 s the session model promises.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Seconds after a cut or a session's revocation until no access token it reaches can still be
/// valid: the longest lifetime plus the skew allowed on both ends, plus a margin.
pub fn token_horizon(config: &AuthConfig) -> i64 {
    let horizon = config.access_token_lifetime + 2 * config.leeway;
    i64::try_from(horizon.as_secs()).unwrap_or(i64::MAX / 2) + EXPIRY_MARGIN
}

/// Most changes read per query while catching up.
const PAGE: usize = 1000;

/// Seconds a revoked id is still refused after the expiry it was recorded with: the clock skew
/// the verifier allows (at most this much) must not let a revoked token back in at its edge.
const EXPIRY_MARGIN: i64 = 60;

pub struct Revocation {
    /// Revoked `jti`s and `sid`s with the expiry they are refused until.
    ids: DashMap<String, i64>,
    /// Per user, the `not_before` of the last cut: the gateway's own tokens with an earlier
    /// `iat` are refused. Read on every request, written on a change: copied on write.
    cuts: ArcSwap<HashMap<String, i64>>,
    /// The last change applied; held across a catch-up so two never interleave.
    seq: tokio::sync::Mutex<u64>,
}

impl Revocation {
    /// Loads the whole state: the sequence number first, so a change committed while the state
    /// is read is applied again by the next catch-up, never missed.
    pub async fn load(store: &dyn Store, now: i64) -> Result<Self, StoreError> {
        let this = Self {
            ids: DashMap::new(),
            cuts: ArcSwap::default(),
            seq: tokio::sync::Mutex::new(0),
        };
        let mut seq = this.seq.lock().await;
        *seq = this.reload(store, now).await?;
        drop(seq);
        Ok(this)
    }

    /// Replaces the mirror with the store's state; returns the sequence it is current to.
    async fn reload(&self, store: &dyn Store, now: i64) -> Result<u64, StoreError> {
        let seq = store.change_seq().await?;
        let ids = store.revoked_ids(now).await?;
        let cuts = store.session_cuts().await?;
        self.ids.retain(|_, _| false);
        for (id, expires_at) in ids {
            self.ids.insert(id, expires_at);
        }
        let cuts = cuts
            .into_iter()
            .map(|(name, not_before)| (name.as_str().to_owned(), not_before))
            .collect();
        self.cuts.store(Arc::new(cuts));
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
                }
            }
            *seq = batch.last;
            if !full {
                return Ok(applied);
            }
        }
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
        if revoked(&identity.jti) || revoked(&identity.sid) {
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
