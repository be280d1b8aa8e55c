//! Browser sessions: the session cookie and the access tokens the gateway holds for it.
//!
//! The cookie's value is 256 random bits (base64url), never a JWT and never a refresh token: the
//! store keeps only a digest of it under a domain tag (`SHA-256("gatehouse-session\0" ||
//! value)`), as the one token of a refresh family. `/auth/refresh` digests what it is given
//! without the tag, so a cookie value presented there is an unknown refresh token, and a refresh
//! token presented as a cookie is an unknown session. Because the session is a refresh family,
//! everything that ends families (logout, `sessions revoke`, disable, removal, password change,
//! revocation of the `sid`) ends a browser session too.
//!
//! The gateway mints the access token the upstream's identity comes from (its `sid` is the
//! family) and keeps it here per session until shortly before it expires; the next request then
//! mints a new one, after checking in the store that the family is still live and its user
//! enabled. Every request's token still goes through the authenticator's revocation checks, so
//! a revocation ends a browser session as fast as it ends an API token.
//!
//! Idle time is measured here, per gateway: after a restart, or on another gateway sharing the
//! store, a session's idle clock starts again at its first request there. The absolute lifetime
//! is the family's expiry in the store and holds everywhere.

pub mod settings;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use http::HeaderMap;
use http::HeaderValue;
use http::header::COOKIE;

use crate::auth::keys::{KeyRing, fill_random};
use crate::auth::settings::AuthConfig;
use crate::auth::tokens::{AccessTokenSpec, TokenError, TokenSubject, mint_access};
use crate::auth::username::Username;
use crate::store::{Store, StoreError};

use settings::SessionConfig;

/// Random bytes in a session cookie's value.
const VALUE_BYTES: usize = 32;
/// Length of a value as the gateway sets it (base64url of [`VALUE_BYTES`], unpadded); any other
/// length is not a session of ours and is refused before hashing.
const VALUE_CHARS: usize = 43;
/// Domain tag of the stored digest: a session value's digest never equals a refresh token's.
const DIGEST_TAG: &[u8] = b"gatehouse-session\0";
/// Most sessions whose access token is held; beyond it, a session's request mints a token each
/// time until the prune timer drops ended ones.
const CACHE_CAPACITY: usize = 100_000;
/// Longest time before its expiry that a held token is replaced: a request never reaches the
/// upstream with a token about to run out.
const MAX_REMINT_MARGIN: i64 = 30;
/// `client_id` of the access tokens minted for browser sessions.
pub const SESSION_CLIENT_ID: &str = "gatehouse-browser";

/// Why a session cookie does not stand for a live session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("not a session cookie value")]
    Malformed,
    #[error("unknown session")]
    Unknown,
    #[error("session ended")]
    Ended,
    #[error("session past its lifetime")]
    Expired,
    #[error("session idle too long")]
    Idle,
    #[error("the session's user is disabled or removed")]
    UserGone,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("minting: {0}")]
    Mint(#[from] TokenError),
}

impl SessionError {
    /// Whether the session is simply over (the browser must sign in again), rather than
    /// unconfirmable right now.
    pub fn is_over(&self) -> bool {
        !matches!(self, SessionError::Store(_) | SessionError::Mint(_))
    }
}

/// A new session value and the digest to store in its place.
pub fn new_value() -> (zeroize::Zeroizing<String>, [u8; 32]) {
    let mut bytes = zeroize::Zeroizing::new([0u8; VALUE_BYTES]);
    fill_random(bytes.as_mut());
    let value = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()));
    let digest = value_digest(&value);
    (value, digest)
}

/// The stored digest of a session value.
pub fn value_digest(value: &str) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(DIGEST_TAG);
    context.update(value.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The value of cookie `name` in the request, when it is sent exactly once. A cookie sent twice
/// (another path's or another host's planted beside ours) is no session at all.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let mut kv = pair.trim().splitn(2, '=');
            if kv.next().map(str::trim) == Some(name) {
                if found.is_some() {
                    return None;
                }
                found = Some(kv.next().unwrap_or("").trim());
            }
        }
    }
    found
}

/// `Set-Cookie` for a new session: `HttpOnly` (page script never reads it), `SameSite=Lax`,
/// `Path=/`, `Secure` over HTTPS (where the name carries `__Host-`), expiring with the session.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: u64) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(name: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"
    ))
    .ok()
}

/// An access token held for a session.
struct Held {
    family: String,
    token: String,
    exp: i64,
    /// The family's expiry in the store: the session's absolute end.
    ends_at: i64,
    last_seen: AtomicI64,
}

/// What a live session stands for on this request.
pub struct Resumed {
    pub token: String,
    pub family: String,
}

/// The sessions' held tokens and the rules to renew them.
pub struct Sessions {
    config: SessionConfig,
    spec: AccessTokenSpec,
    /// By session digest; shared with the sessions a reload replaces.
    held: Arc<DashMap<[u8; 32], Held>>,
}

impl Sessions {
    /// `None` when browser sessions are off. `previous` keeps the held tokens across a reload
    /// (each is still verified on every request).
    pub fn new(config: &AuthConfig, previous: Option<&Sessions>) -> Option<Self> {
        if !config.session.enabled {
            return None;
        }
        Some(Self {
            config: config.session.clone(),
            spec: AccessTokenSpec {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                lifetime: config.access_token_lifetime,
                max_bytes: config.max_token_bytes,
            },
            held: previous.map(|p| Arc::clone(&p.held)).unwrap_or_default(),
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Holds the token minted at sign-in for the session of `digest`.
    pub fn hold(&self, digest: [u8; 32], family: &str, token: &str, exp: i64, now: i64) {
        if self.held.len() >= CACHE_CAPACITY {
            return;
        }
        let ends_at = now.saturating_add(self.config.lifetime.as_secs() as i64);
        self.held.insert(
            digest,
            Held {
                family: family.to_owned(),
                token: token.to_owned(),
                exp,
                ends_at,
                last_seen: AtomicI64::new(now),
            },
        );
    }

    /// The token held for `value`'s session.
    pub fn held_token(&self, value: &str) -> Option<String> {
        if value.len() != VALUE_CHARS {
            return None;
        }
        self.held
            .get(&value_digest(value))
            .map(|held| held.token.clone())
    }

    /// Forgets the held token of `value`'s session (signed out, or refused).
    pub fn forget(&self, value: &str) {
        self.held.remove(&value_digest(value));
    }

    /// The access token for the session of cookie `value`: the held one while it has time left,
    /// else a new one minted with `ring` after the store confirms the session is live.
    pub async fn access_token(
        &self,
        value: &str,
        store: &dyn Store,
        ring: &KeyRing,
        now: i64,
    ) -> Result<Resumed, SessionError> {
        if value.len() != VALUE_CHARS {
            return Err(SessionError::Malformed);
        }
        let digest = value_digest(value);
        let idle = self.config.idle_timeout.as_secs() as i64;
        let mut idle_from = None;
        if let Some(held) = self.held.get(&digest) {
            let last = held.last_seen.load(Ordering::Relaxed);
            if now - last > idle {
                drop(held);
                self.held.remove(&digest);
                return Err(SessionError::Idle);
            }
            if now >= held.ends_at {
                drop(held);
                self.held.remove(&digest);
                return Err(SessionError::Expired);
            }
            if held.exp - self.remint_margin() > now {
                held.last_seen.store(now, Ordering::Relaxed);
                return Ok(Resumed {
                    token: held.token.clone(),
                    family: held.family.clone(),
                });
            }
            idle_from = Some(last);
        }
        let resumed = self.mint(&digest, store, ring, now).await;
        if resumed.is_err() {
            self.held.remove(&digest);
        }
        let (resumed, exp, ends_at) = resumed?;
        if self.held.len() < CACHE_CAPACITY || self.held.contains_key(&digest) {
            self.held.insert(
                digest,
                Held {
                    family: resumed.family.clone(),
                    token: resumed.token.clone(),
                    exp,
                    ends_at,
                    last_seen: AtomicI64::new(now.max(idle_from.unwrap_or(now))),
                },
            );
        }
        Ok(resumed)
    }

    /// Seconds before a held token's expiry at which it is replaced: a fifth of its lifetime,
    /// at most [`MAX_REMINT_MARGIN`], and at least one second: expiry is checked in whole
    /// seconds after the token is handed out, so a token in its last second could expire
    /// between this check and the verifier's.
    fn remint_margin(&self) -> i64 {
        (self.spec.lifetime.as_secs() as i64 / 5).clamp(1, MAX_REMINT_MARGIN)
    }

    /// Checks the family in the store and mints a token for it: the user's roles of today, the
    /// scopes granted at sign-in that the user still holds.
    async fn mint(
        &self,
        digest: &[u8; 32],
        store: &dyn Store,
        ring: &KeyRing,
        now: i64,
    ) -> Result<(Resumed, i64, i64), SessionError> {
        let (record, state) = store.refresh(digest).await?.ok_or(SessionError::Unknown)?;
        if state.revoked_at.is_some() || state.used_at.is_some() {
            return Err(SessionError::Ended);
        }
        if now >= record.expires_at {
            return Err(SessionError::Expired);
        }
        let user = store
            .user(&record.username)
            .await?
            .filter(|u| !u.disabled)
            .ok_or(SessionError::UserGone)?;
        let scopes: Vec<String> = record
            .scopes
            .iter()
            .filter(|s| user.scopes.contains(s))
            .cloned()
            .collect();
        let minted = mint_access(
            ring,
            &self.spec,
            &TokenSubject {
                sub: user.username.as_str(),
                roles: &user.roles,
                scopes: &scopes,
                client_id: SESSION_CLIENT_ID,
                sid: Some(&record.family),
            },
            now,
        )?;
        Ok((
            Resumed {
                token: minted.token,
                family: record.family,
            },
            minted.expires_at,
            record.expires_at,
        ))
    }

    /// Drops held tokens that expired or whose session ran out.
    pub fn prune(&self, now: i64) {
        let idle = self.config.idle_timeout.as_secs() as i64;
        self.held.retain(|_, h| {
            h.exp > now && h.ends_at > now && now - h.last_seen.load(Ordering::Relaxed) <= idle
        });
    }
}

/// Who a session belongs to, for the sign-out audit.
pub struct Owner {
    pub user: Username,
    pub family: String,
}

/// The live-or-not family of cookie `value`, for sign-out.
pub async fn owner(value: &str, store: &dyn Store) -> Result<Option<Owner>, StoreError> {
    if value.len() != VALUE_CHARS {
        return Ok(None);
    }
    Ok(store
        .refresh(&value_digest(value))
        .await?
        .map(|(record, _)| Owner {
            user: record.username,
            family: record.family,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::KeyAlg;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewUser, RefreshFamilies, RefreshRecord, SessionOrigin, Users};

    const NOW: i64 = 1_700_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        ring: KeyRing,
        sessions: Sessions,
        value: String,
        digest: [u8; 32],
    }

    /// Sessions on (idle 1m, lifetime 1h, access tokens of 5m) and alice's live session,
    /// signed in at `NOW`.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let ring = KeyRing::load_or_generate_at(
            &dir.path().join("keys"),
            KeyAlg::EdDSA,
            std::time::Duration::from_secs(600),
            NOW,
        )
        .unwrap();
        let config = crate::config::Config::from_toml(
            "[auth]\naccess_token_lifetime = \"5m\"\n\
             [auth.session]\nenabled = true\nidle_timeout = \"1m\"\nlifetime = \"1h\"\n",
        )
        .unwrap();
        let sessions = Sessions::new(&config.auth, None).unwrap();
        let alice = Username::parse("alice").unwrap();
        store
            .create_user(NewUser {
                username: alice.clone(),
                password_hash: "x".into(),
                roles: vec!["staff".into()],
                scopes: vec!["read".into()],
            })
            .await
            .unwrap();
        let (value, digest) = new_value();
        store
            .insert_refresh(
                RefreshRecord {
                    digest,
                    family: "fam".into(),
                    username: alice,
                    scopes: vec!["read".into()],
                    issued_at: NOW,
                    expires_at: NOW + 3600,
                },
                SessionOrigin::default(),
            )
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            store,
            ring,
            sessions,
            value: value.as_str().to_owned(),
            digest,
        }
    }

    impl Fixture {
        async fn at(&self, now: i64) -> Result<Resumed, SessionError> {
            self.sessions
                .access_token(&self.value, &self.store, &self.ring, now)
                .await
        }
    }

    #[tokio::test]
    async fn the_held_token_is_used_until_near_its_expiry_then_a_new_one_is_minted() {
        let f = fixture().await;
        let first = f.at(NOW).await.unwrap();
        assert_eq!(first.family, "fam");
        // Used every 40 s (within the idle timeout), the held token serves until 30 s before
        // its 5 minutes run out.
        for t in (NOW + 40..NOW + 270).step_by(40) {
            assert_eq!(f.at(t).await.unwrap().token, first.token, "held at {t}");
        }
        let renewed = f.at(NOW + 271).await.unwrap();
        assert_ne!(renewed.token, first.token);
        assert_eq!(renewed.family, "fam");
    }

    #[tokio::test]
    async fn a_session_idle_too_long_or_past_its_lifetime_is_over() {
        let f = fixture().await;
        f.sessions.hold(f.digest, "fam", "token", NOW + 300, NOW);
        assert!(matches!(f.at(NOW + 61).await, Err(SessionError::Idle)));
        // Busy all along, it still ends with its lifetime (in the store, too).
        let f = fixture().await;
        f.sessions.hold(f.digest, "fam", "token", NOW + 300, NOW);
        let mut t = NOW;
        while t < NOW + 3600 {
            t += 50;
            let result = f.at(t).await;
            if t >= NOW + 3600 {
                assert!(matches!(result, Err(SessionError::Expired)), "at {t}");
            } else {
                assert!(result.is_ok(), "at {t}");
            }
        }
    }

    #[tokio::test]
    async fn no_new_token_for_a_revoked_family_or_a_disabled_user() {
        let f = fixture().await;
        f.store.revoke_family("fam").await.unwrap();
        assert!(matches!(f.at(NOW).await, Err(SessionError::Ended)));
        let f = fixture().await;
        let alice = Username::parse("alice").unwrap();
        // Disabling cuts the sessions (revokes the family) in the store's own transaction.
        f.store.set_disabled(&alice, true, NOW).await.unwrap();
        assert!(f.at(NOW).await.err().is_some_and(|e| e.is_over()));
        let f = fixture().await;
        assert!(matches!(
            f.sessions
                .access_token("short", &f.store, &f.ring, NOW)
                .await,
            Err(SessionError::Malformed)
        ));
        let (unknown, _) = new_value();
        assert!(matches!(
            f.sessions
                .access_token(&unknown, &f.store, &f.ring, NOW)
                .await,
            Err(SessionError::Unknown)
        ));
    }

    #[test]
    fn a_session_value_is_256_random_bits_and_its_digest_is_not_a_refresh_digest() {
        let (a, da) = new_value();
        let (b, db) = new_value();
        assert_eq!(a.len(), VALUE_CHARS);
        assert_ne!(*a, *b);
        assert_ne!(da, db);
        assert_eq!(value_digest(&a), da);
        // /auth/refresh digests without the tag: the cookie is an unknown refresh token there.
        assert_ne!(crate::auth::tokens::refresh_digest(&a), da);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn a_cookie_sent_twice_is_no_session() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; gatehouse=v1"));
        assert_eq!(cookie_value(&h, "gatehouse"), Some("v1"));
        assert_eq!(cookie_value(&h, "__Host-gatehouse"), None);
        h.append(COOKIE, HeaderValue::from_static("gatehouse=v2"));
        assert_eq!(cookie_value(&h, "gatehouse"), None);
    }

    #[test]
    fn the_cookie_is_http_only_lax_root_and_secure_over_https() {
        let set = set_cookie("__Host-gatehouse", "v", true, 60).unwrap();
        let set = set.to_str().unwrap();
        for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure", "Max-Age=60"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set.contains("Domain"), "{set}");
        let plain = set_cookie("gatehouse", "v", false, 60).unwrap();
        assert!(!plain.to_str().unwrap().contains("Secure"));
        let cleared = clear_cookie("gatehouse", false).unwrap();
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
    }
}
