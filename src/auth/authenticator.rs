//! The proxy path's authentication: the one token a request presents, its verification (cached
//! per token until its `exp`, refusals remembered), and the revocations and session cuts
//! ([`crate::auth::revocation`]) checked on every request. The endpoints use it too (`/me`, logout, revoke); it knows nothing of HTTP statuses.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use dashmap::DashMap;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use crate::auth::claims::Identity;
use crate::auth::issuers::TrustedIssuers;
use crate::auth::keys::KeyRing;
use crate::auth::revocation::{self, Revocation};
use crate::auth::session::Sessions;
use crate::auth::settings::AuthConfig;
use crate::auth::username::Username;
use crate::auth::verify::{self, Verifier, VerifyError};
use crate::clock::unix_now as now;
use crate::metrics::CacheLookup;
use crate::store::{Store, StoreError};

/// Most verified tokens remembered; beyond it new tokens are verified every time until the prune
/// timer has dropped expired entries.
const CACHE_CAPACITY: usize = 100_000;

/// Most refused tokens remembered, and for how long (seconds). A client retrying one bad token
/// (expired, forged, for another audience) then costs a lookup instead of a signature check each
/// time. Tokens forged fresh for every request still cost one check each; they fill this up to
/// its bound and are then simply not remembered.
const REFUSED_CAPACITY: usize = 10_000;
const REFUSED_FOR_SECS: i64 = 300;

/// Why a request carries no usable credential.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CredentialError {
    /// No token where one is required.
    #[error("no access token")]
    Missing,
    /// Presented in a way the gateway refuses: two tokens, a token in the query, bad syntax.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("invalid access token: {0}")]
    Invalid(VerifyError),
}

/// The key ring and the verifier built from it, swapped together when keys are reloaded.
pub struct KeyState {
    pub ring: KeyRing,
    pub verifier: Verifier,
}

/// Where a presented token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer`: a client put it there.
    Header,
    /// The configured cookie: the browser attaches it to every request to the site, whoever
    /// made the page that sends it.
    Cookie,
    /// The browser-session cookie ([`crate::auth::session`]): sent by the browser on its own
    /// like [`Carrier::Cookie`], and checked the same way.
    Session,
}

impl Carrier {
    /// Whether the browser attached the credential by itself (so a state-changing request must
    /// pass the cross-site check).
    pub fn is_ambient(self) -> bool {
        matches!(self, Carrier::Cookie | Carrier::Session)
    }
}

pub struct Authenticator {
    /// The cookie that may carry the token besides `Authorization: Bearer`.
    cookie: Option<String>,
    max_token_bytes: usize,
    /// Clock skew allowed on `exp`, in seconds.
    leeway: i64,
    /// Seconds the revocations may go without the store's confirmation before requests are
    /// refused as unconfirmable (`auth.max_staleness`).
    max_staleness: i64,
    keys: ArcSwap<KeyState>,
    /// External identity providers whose tokens are accepted too.
    trusted: Arc<TrustedIssuers>,
    store: Arc<dyn Store>,
    /// Revoked ids and session cuts, mirrored from the store. Shared with the authenticator a
    /// reload replaces.
    revocation: Arc<Revocation>,
    /// Seconds after its cut or its revocation until no access token a session or a user held
    /// can still be valid: the longest lifetime plus the allowed skew on both ends.
    token_horizon: i64,
    /// Verified tokens by SHA-256 of the token, each with the token's own `exp`. Shared with the
    /// authenticator a reload replaces when the policy and keys stayed the same.
    cache: Arc<DashMap<[u8; 32], Cached>>,
    /// Tokens refused for a reason time cannot change, by SHA-256 of the token; shared like
    /// `cache`.
    refused: Arc<DashMap<[u8; 32], Refused>>,
    /// Browser sessions and the access tokens held for them; `None` when they are off.
    sessions: Option<Sessions>,
}

/// A refusal worth remembering; like [`Cached`], bound to the external key-set generation.
struct Refused {
    error: VerifyError,
    external_generation: Option<u64>,
    until: i64,
}

/// Whether a refusal holds for this token whatever the time and however often it is retried,
/// under the same policy and keys. Not: time-dependent ones (not yet valid, issued in the
/// future), a key the gateway may learn later, revocation (checked on every request anyway).
fn refusal_is_final(error: &VerifyError) -> bool {
    !matches!(
        error,
        VerifyError::NotYetValid
            | VerifyError::IssuedInFuture
            | VerifyError::UnknownKey
            | VerifyError::Revoked
            | VerifyError::Unconfirmed
    )
}

/// A verified identity, and for an external issuer's token the key-set generation it was
/// verified under: a newer generation may have dropped the key, so the entry no longer counts.
#[derive(Clone)]
struct Cached {
    identity: Arc<Identity>,
    external_generation: Option<u64>,
}

impl Authenticator {
    /// Loads the revocations and cuts from the store. `previous` is the authenticator a reload
    /// replaces: its revocations carry over (caught up), and so do its verdicts while they
    /// still hold: the
    /// same policy and the same keys (kid, and through it the key's thumbprint, algorithm,
    /// retirement, issuer binding). External issuers' verdicts carry their key-set generation,
    /// unique in the process, so the new trusted issuers re-verify them.
    pub async fn new(
        config: &AuthConfig,
        keys: KeyState,
        trusted: Arc<TrustedIssuers>,
        store: Arc<dyn Store>,
        previous: Option<&Authenticator>,
    ) -> Result<Self, StoreError> {
        let (cache, refused) = match previous {
            Some(old) if same_verdicts(&old.keys.load(), &keys) => {
                (Arc::clone(&old.cache), Arc::clone(&old.refused))
            }
            _ => (Arc::default(), Arc::default()),
        };
        let revocation = match previous {
            Some(old) => {
                old.revocation.catch_up(&*store, now()).await?;
                Arc::clone(&old.revocation)
            }
            None => Arc::new(Revocation::load(&*store, now()).await?),
        };
        let token_horizon = revocation::token_horizon(config);
        let sessions = Sessions::new(config, previous.and_then(|p| p.sessions.as_ref()));
        Ok(Self {
            sessions,
            cookie: config.cookie.clone(),
            max_token_bytes: config.max_token_bytes,
            leeway: config.leeway.as_secs() as i64,
            max_staleness: i64::try_from(config.max_staleness.as_secs()).unwrap_or(i64::MAX),
            keys: ArcSwap::from_pointee(keys),
            trusted,
            store,
            revocation,
            token_horizon,
            cache,
            refused,
        })
    }

    /// The current keys (the endpoints mint with them and publish them).
    pub fn keys(&self) -> Guard<Arc<KeyState>> {
        self.keys.load()
    }

    /// Installs reloaded keys. A removed key must not keep vouching for tokens it signed, so
    /// both caches start empty.
    pub fn swap_keys(&self, keys: KeyState) {
        self.keys.store(Arc::new(keys));
        self.cache.clear();
        self.refused.clear();
    }

    /// How many tokens' verdicts are remembered (verified and refused), for diagnostics.
    pub fn remembered(&self) -> usize {
        self.cache.len() + self.refused.len()
    }

    pub fn trusted_issuers(&self) -> &Arc<TrustedIssuers> {
        &self.trusted
    }

    /// The identity behind the token the request presents, `None` when it presents none.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Arc<Identity>>, CredentialError> {
        Ok(self
            .identify_carried(headers, query)
            .await?
            .map(|(identity, _)| identity))
    }

    /// [`identify`](Self::identify), and how the token came: a cookie is sent by the browser
    /// on its own, so what it authenticates must pass the cross-site check.
    pub async fn identify_carried(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<(Arc<Identity>, Carrier)>, CredentialError> {
        match self.presented_token(headers, query)? {
            None => Ok(None),
            Some((token, carrier)) => self
                .verify_access(token)
                .await
                .map(|identity| Some((identity, carrier)))
                .map_err(CredentialError::Invalid),
        }
    }

    /// [`identify_carried`](Self::identify_carried), and when the request presents no token, the
    /// browser session its cookie names (read under the name for the request's scheme:
    /// `secure` for HTTPS). A session that is over is no credential (`Ok(None)`): the browser
    /// signs in again. The session's access token is verified like any other, revocations
    /// included, on every request.
    pub async fn identify_request(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        secure: bool,
    ) -> Result<Option<(Arc<Identity>, Carrier)>, CredentialError> {
        if let Some(found) = self.identify_carried(headers, query).await? {
            return Ok(Some(found));
        }
        let Some(sessions) = &self.sessions else {
            return Ok(None);
        };
        let name = sessions.config().cookie_for(secure);
        let Some(value) = crate::auth::session::cookie_value(headers, name) else {
            return Ok(None);
        };
        let keys = self.keys.load();
        let resumed = match sessions
            .access_token(value, &*self.store, &keys.ring, now())
            .await
        {
            Ok(resumed) => resumed,
            Err(e) if e.is_over() => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "a browser session could not be confirmed");
                return Err(CredentialError::Invalid(VerifyError::Unconfirmed));
            }
        };
        drop(keys);
        match self.verify_access(&resumed.token).await {
            Ok(identity) => Ok(Some((identity, Carrier::Session))),
            Err(VerifyError::Unconfirmed) => {
                Err(CredentialError::Invalid(VerifyError::Unconfirmed))
            }
            // Revoked (its sid, a cut), or its key gone: the session is over here.
            Err(_) => {
                sessions.forget(value);
                Ok(None)
            }
        }
    }

    /// The access token held for the browser session the request's cookie names, if any (a
    /// route that forwards the token gets this one: the browser never had a token to send).
    pub fn held_session_token(&self, headers: &HeaderMap, secure: bool) -> Option<String> {
        let sessions = self.sessions.as_ref()?;
        let value =
            crate::auth::session::cookie_value(headers, sessions.config().cookie_for(secure))?;
        sessions.held_token(value)
    }

    /// Whether browser sessions are on; their settings.
    pub fn sessions(&self) -> Option<&crate::auth::session::settings::SessionConfig> {
        self.sessions.as_ref().map(Sessions::config)
    }

    /// Holds the access token minted at a browser's sign-in for its session.
    pub fn hold_session(&self, digest: [u8; 32], family: &str, token: &str, exp: i64, now: i64) {
        if let Some(sessions) = &self.sessions {
            sessions.hold(digest, family, token, exp, now);
        }
    }

    /// Forgets the token held for the session of cookie `value`.
    pub fn forget_session(&self, value: &str) {
        if let Some(sessions) = &self.sessions {
            sessions.forget(value);
        }
    }

    /// Finds the one token the request presents: `Authorization: Bearer` or the configured
    /// cookie. Two presentations, or a token in the query string, are `invalid_request`.
    pub fn presented_token<'h>(
        &self,
        headers: &'h HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<(&'h str, Carrier)>, CredentialError> {
        if query.is_some_and(query_carries_token) {
            return Err(CredentialError::Malformed(
                "access tokens are not accepted in the query string",
            ));
        }
        let mut found: Option<(&'h str, Carrier)> = None;
        let mut present = |token: &'h str, carrier| -> Result<(), CredentialError> {
            if found.replace((token, carrier)).is_some() {
                return Err(CredentialError::Malformed(
                    "more than one access token presented",
                ));
            }
            Ok(())
        };
        for value in headers.get_all(AUTHORIZATION) {
            match bearer_token(value.as_bytes())? {
                Some(token) => present(token, Carrier::Header)?,
                None => continue,
            }
        }
        if let Some(name) = &self.cookie {
            for value in headers.get_all(COOKIE) {
                let Ok(text) = value.to_str() else { continue };
                for pair in text.split(';') {
                    let mut kv = pair.trim().splitn(2, '=');
                    if kv.next().map(str::trim) == Some(name.as_str()) {
                        present(kv.next().unwrap_or("").trim(), Carrier::Cookie)?;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Verifies an access token: size cap, signature and claims (cached per token until its
    /// `exp`), then revocation, which is checked on every request. A kid the gateway's own keys
    /// do not hold goes to the trusted issuers; no other failure does.
    pub async fn verify_access(&self, token: &str) -> Result<Arc<Identity>, VerifyError> {
        let now = now();
        let max = self.max_token_bytes;
        if token.len() > max {
            return Err(VerifyError::TooLarge);
        }
        let digest = token_digest(token);
        let leeway = self.leeway;
        if let Some(hit) = self.cache.get(&digest) {
            let fresh =
                hit.identity.exp + leeway > now && self.keys_unchanged(hit.external_generation);
            if fresh {
                crate::metrics::verify_cache(CacheLookup::Hit);
                let identity = Arc::clone(&hit.identity);
                let own = hit.external_generation.is_none();
                drop(hit);
                return self.not_revoked(identity, own, now);
            }
            drop(hit);
            self.cache.remove(&digest);
        }
        if let Some(known) = self.refused.get(&digest) {
            let fresh = known.until > now && self.keys_unchanged(known.external_generation);
            if fresh {
                crate::metrics::verify_cache(CacheLookup::Refused);
                return Err(known.error.clone());
            }
        }
        crate::metrics::verify_cache(CacheLookup::Miss);
        let keys = self.keys.load();
        // The kid decides whose policy applies: our own checks (typ first) would refuse an IdP's
        // token before ever looking at its key.
        let external = !self.trusted.is_empty()
            && verify::token_kid(token, self.max_token_bytes)
                .is_ok_and(|kid| keys.ring.lookup().get(&kid).is_none());
        // Read before verifying: a swap during verification makes the entry stale, never wrongly
        // fresh.
        let external_generation = external.then(|| self.trusted.generation());
        let verified = if external {
            self.trusted.verify(token, now).await
        } else {
            keys.verifier.verify(token, now)
        };
        let identity = match verified {
            Ok(identity) => identity,
            Err(error) => {
                self.remember_refusal(digest, &error, external_generation, now);
                return Err(error);
            }
        };
        let identity = Arc::new(identity);
        self.remember(digest, &identity, external_generation);
        self.not_revoked(identity, !external, now)
    }

    fn not_revoked(
        &self,
        identity: Arc<Identity>,
        own: bool,
        now: i64,
    ) -> Result<Arc<Identity>, VerifyError> {
        if self.revocation.refuses(&identity, own, now) {
            return Err(VerifyError::Revoked);
        }
        // Fail closed: a revocation made elsewhere while the store is out of reach is unseen.
        if now - self.revocation.current_at() > self.max_staleness {
            return Err(VerifyError::Unconfirmed);
        }
        Ok(identity)
    }

    fn remember(
        &self,
        digest: [u8; 32],
        identity: &Arc<Identity>,
        external_generation: Option<u64>,
    ) {
        // Full: this token goes uncached. Sweeping 100,000 entries here stalled the request
        // that hit the limit (p99 ~100 ms in BENCHMARKS.md); the prune timer drops expired ones.
        if self.cache.len() >= CACHE_CAPACITY {
            return;
        }
        let entry = Cached {
            identity: Arc::clone(identity),
            external_generation,
        };
        self.cache.insert(digest, entry);
    }

    /// Whether a cached answer still stands for the keys it was reached with: our own keys
    /// (`None`; a key reload clears both caches) or the external key-set generation it records.
    fn keys_unchanged(&self, external_generation: Option<u64>) -> bool {
        external_generation.is_none_or(|g| g == self.trusted.generation())
    }

    fn remember_refusal(
        &self,
        digest: [u8; 32],
        error: &VerifyError,
        external_generation: Option<u64>,
        now: i64,
    ) {
        if !refusal_is_final(error) || self.refused.len() >= REFUSED_CAPACITY {
            return;
        }
        let entry = Refused {
            error: error.clone(),
            external_generation,
            until: now + REFUSED_FOR_SECS,
        };
        self.refused.insert(digest, entry);
    }

    /// Revokes an access token's `jti` until it expires (store first, then the local mirror);
    /// whether it had one to revoke.
    pub async fn revoke_access(&self, identity: &Identity) -> Result<bool, StoreError> {
        let Some(jti) = &identity.jti else {
            return Ok(false);
        };
        self.store.revoke_id(jti, identity.exp).await?;
        self.revocation.revoke(jti.clone(), identity.exp);
        Ok(true)
    }

    /// Refuses every access token of session `sid` from now on, here at once and on every
    /// gateway sharing the store at its next poll; kept until the last of them has expired.
    pub async fn revoke_session_tokens(&self, sid: &str) -> Result<(), StoreError> {
        let until = now() + self.token_horizon;
        self.store.revoke_id(sid, until).await?;
        self.revocation.revoke(sid.to_owned(), until);
        Ok(())
    }

    /// Applies the store's changes made since the last call (by the CLI, by other gateways).
    pub async fn follow(&self) -> Result<usize, StoreError> {
        self.revocation.catch_up(&*self.store, now()).await
    }

    /// Whether the store's feed announced new signing keys since the last call (see
    /// [`Revocation::take_keys_changed`]).
    pub fn take_keys_changed(&self) -> bool {
        self.revocation.take_keys_changed()
    }

    /// The unix time from which `user`'s new tokens are accepted, when its sessions were cut
    /// so recently that a token minted now could be refused.
    pub fn sessions_cut_until(&self, user: &Username) -> Option<i64> {
        self.revocation.not_before(user).filter(|t| *t > now())
    }

    /// Tests: the revocation mirror as if the store had been silent for `secs`.
    #[cfg(test)]
    pub fn age_revocations(&self, secs: i64) {
        self.revocation.age(secs);
    }

    /// Drops expired revocations and cache entries; called on a timer.
    pub fn prune(&self) {
        let now = now();
        self.revocation.prune(now, now - self.token_horizon);
        self.cache.retain(|_, v| v.identity.exp > now);
        self.refused.retain(|_, v| v.until > now);
        if let Some(sessions) = &self.sessions {
            sessions.prune(now);
        }
    }
}

/// Whether the verdicts reached under `old` hold under `new`: the same policy, and the same
/// verification keys. An asymmetric key's kid is its thumbprint (checked when the ring loads),
/// so equal kids mean equal key material; an HMAC key's kid is random, so a secret replaced
/// under its kid would go unseen: with any HMAC key nothing carries over.
fn same_verdicts(old: &KeyState, new: &KeyState) -> bool {
    let described = |keys: &KeyState| {
        let lookup = keys.ring.lookup();
        let mut described: Vec<_> = lookup
            .kids()
            .filter_map(|kid| lookup.get(kid))
            .map(|k| (k.kid.clone(), k.alg, k.not_after, k.issuer.clone()))
            .collect();
        described.sort_by(|a, b| a.0.cmp(&b.0));
        described
    };
    let asymmetric = |keys: &KeyState| {
        let lookup = keys.ring.lookup();
        lookup
            .kids()
            .filter_map(|kid| lookup.get(kid))
            .all(|k| !k.alg.is_symmetric())
    };
    asymmetric(old)
        && asymmetric(new)
        && old.verifier.policy() == new.verifier.policy()
        && described(old) == described(new)
}

/// The bytes a bearer token may hold: RFC 6750 §2.1 `b64token` (ALPHA, DIGIT, `-._~+/`), which
/// includes JWS's `.`, and `=`. Written as two ranges and four bytes rather than ten tests: it
/// runs over every byte of every token presented, vectorised, and fewer comparisons per byte
/// are fewer instructions per lane. `-./` and the digits are one run (0x2D-0x39); setting bit
/// 0x20 maps `A-Z` onto `a-z` and no other byte into `a-z`.
fn is_token_char(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'-') < 13)
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'=')
}

/// How many recent tokens each thread remembers the digest of.
const RECENT_DIGESTS: usize = 4;

/// SHA-256 of `token`, the verification cache's key. A client usually presents the same token
/// on request after request, so each thread keeps the digests of the last few tokens it saw:
/// comparing the bytes costs a small fraction of hashing them again (SHA-256 was a tenth of the
/// gateway's own CPU time on a cached token). Everything else about the cache is unchanged:
/// this only skips recomputing a pure function. The remembered tokens are zeroed when replaced.
fn token_digest(token: &str) -> [u8; 32] {
    type Recent = [Option<(zeroize::Zeroizing<Box<[u8]>>, [u8; 32])>; RECENT_DIGESTS];
    thread_local! {
        static RECENT: std::cell::RefCell<(Recent, usize)> = std::cell::RefCell::default();
    }
    RECENT.with_borrow_mut(|(recent, next)| {
        let bytes = token.as_bytes();
        if let Some((_, digest)) = recent
            .iter()
            .flatten()
            .find(|(seen, _)| seen.as_ref() == bytes)
        {
            return *digest;
        }
        let digest = crate::auth::tokens::refresh_digest(token);
        recent[*next] = Some((zeroize::Zeroizing::new(bytes.into()), digest));
        *next = (*next + 1) % RECENT_DIGESTS;
        digest
    })
}

/// `Bearer <token>`, scheme in any case, exactly one space, a b64token (RFC 6750 §2.1).
/// Another scheme is not a bearer presentation (`Ok(None)`).
fn bearer_token(value: &[u8]) -> Result<Option<&str>, CredentialError> {
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return if value.eq_ignore_ascii_case(b"bearer") {
            Err(CredentialError::Malformed("malformed Authorization header"))
        } else {
            Ok(None)
        };
    };
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = &rest[1..];
    // A fold rather than `all`: no early exit, so the compiler checks many bytes per step.
    let valid = !token.is_empty() && token.iter().fold(true, |ok, &b| ok & is_token_char(b));
    if !valid {
        return Err(CredentialError::Malformed("malformed Authorization header"));
    }
    Ok(std::str::from_utf8(token).ok())
}

/// Query parameters that would carry a token (RFC 6750 §2.3 is refused on purpose).
fn query_carries_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or("");
        key.eq_ignore_ascii_case("access_token") || key.eq_ignore_ascii_case("token")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens;

    #[test]
    fn the_token_byte_check_accepts_exactly_the_b64token_bytes() {
        for b in 0..=u8::MAX {
            let b64token = b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
            assert_eq!(is_token_char(b), b64token, "byte {b:#04x}");
        }
    }

    #[test]
    fn remembered_digests_are_the_digests_of_exactly_the_same_bytes() {
        let tokens: Vec<String> = (0..10)
            .map(|i| format!("header.payload{i}.signature"))
            .collect();
        // Repeats, interleavings and more distinct tokens than are remembered; a token that
        // differs in its last byte or only in length never gets another's digest.
        let order = [
            0, 0, 1, 0, 2, 3, 4, 5, 0, 1, 9, 8, 9, 0, 0, 7, 6, 5, 4, 3, 2, 1, 0,
        ];
        for &i in &order {
            let token = &tokens[i];
            assert_eq!(
                token_digest(token),
                tokens::refresh_digest(token),
                "{token}"
            );
            let longer = format!("{token}x");
            assert_eq!(token_digest(&longer), tokens::refresh_digest(&longer));
            let shorter = &token[..token.len() - 1];
            assert_eq!(token_digest(shorter), tokens::refresh_digest(shorter));
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"bearer abc.def").unwrap(), Some("abc.def"));
        assert_eq!(bearer_token(b"BEARER abc").unwrap(), Some("abc"));
        assert_eq!(bearer_token(b"Basic dXNlcjpwYXNz").unwrap(), None);
    }

    #[test]
    fn malformed_bearer_is_invalid_request() {
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer  abc",
            b"Bearer a b",
            b"Bearer a\"b",
        ] {
            assert!(
                bearer_token(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn every_byte_outside_b64token_is_refused_at_any_position() {
        let allowed: Vec<u8> = (b'a'..=b'z')
            .chain(b'A'..=b'Z')
            .chain(b'0'..=b'9')
            .chain(*b"-._~+/=")
            .collect();
        // Long enough that the check runs in wide steps and a tail.
        let base = vec![b'A'; 131];
        for byte in 0..=255u8 {
            for position in [0, 1, 15, 16, 17, 64, 130] {
                let mut token = base.clone();
                token[position] = byte;
                let mut header = b"Bearer ".to_vec();
                header.extend_from_slice(&token);
                let accepted = bearer_token(&header).is_ok_and(|t| t.is_some());
                assert_eq!(
                    accepted,
                    allowed.contains(&byte),
                    "byte {byte:#04x} at {position}"
                );
            }
        }
    }

    #[test]
    fn token_in_query_is_detected() {
        assert!(query_carries_token("a=1&access_token=x"));
        assert!(query_carries_token("ACCESS_TOKEN=x"));
        assert!(!query_carries_token("tokens=3"));
    }
}
