//! The authentication service: builds the authenticator (proxy path) and the grants (endpoint
//! path) from the auth settings, runs the endpoints apart from proxied traffic, and reloads keys:
//! from `keys_dir` on request, or, with the keys in the store (`kek_file`), whenever the change
//! feed announces new keys and whenever the ring's next transition comes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::auth::authenticator::{Authenticator, KeyState};
use crate::auth::endpoints::{self, Endpoint, EndpointError};
use crate::auth::grants::{GrantError, Grants};
use crate::auth::issuers::{IssuerError, TrustedIssuers};
use crate::auth::keys::{KeyError, KeyRing};
use crate::auth::keystore::{self, Kek, KeystoreError};
use crate::auth::password::{
    DEFAULT_QUEUE_PER_WORKER, HashParams, PasswordError, PasswordPool, PoolLimits,
};
use crate::auth::runtime::{EndpointRuntime, RuntimeError};
use crate::auth::settings::AuthConfig;
use crate::auth::verify::{IdentityClaims, Policy, Verifier};
use crate::body::Body;
use crate::clock::{Clock, unix_now};
use crate::limits::Limits;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    #[error("keys in the store: {0}")]
    Keystore(#[from] KeystoreError),
    #[error("password hashing: {0}")]
    Password(#[from] PasswordError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("trusted issuers: {0}")]
    Issuers(#[from] IssuerError),
    #[error("endpoint runtime: {0}")]
    Runtime(#[from] RuntimeError),
}

pub struct AuthService {
    grants: Arc<Grants>,
    /// Where the endpoints run, apart from the proxy runtime (see [`crate::auth::runtime`]).
    /// Its thread ends when the service is dropped.
    endpoints: EndpointRuntime,
    /// With the keys in the store: the KEK that opens them.
    kek: Option<Kek>,
    /// A rebuild of the ring from the store is due (announced, or failed and to be retried).
    keys_due: AtomicBool,
    /// The last rebuild failed (logged once until one succeeds).
    keys_failing: AtomicBool,
}

impl AuthService {
    /// Loads (or on first start generates) the keys, builds the pool, loads revocations.
    /// `previous` is the service this one replaces on a reload. Its limiter state is kept when
    /// the limits did not change, so a reload (which a client may be able to trigger, or a
    /// config-management run does) never hands an attacker a fresh budget; its revocations and
    /// still-valid verdicts carry over (see [`Authenticator::new`]).
    pub async fn new(
        config: AuthConfig,
        store: Arc<dyn Store>,
        previous: Option<&AuthService>,
    ) -> Result<Self, ServiceError> {
        let kek = config.kek_file.as_deref().map(Kek::load).transpose()?;
        let keys = match &kek {
            Some(kek) => {
                let ring = keystore::load_or_create_ring(
                    &*store,
                    kek,
                    config.algorithm,
                    key_retention(&config),
                    unix_now(),
                )
                .await?;
                key_state(&config, ring)
            }
            None => load_keys(&config, true)?,
        };
        let p = &config.password;
        let workers = if p.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            p.workers
        };
        let queue = if p.queue == 0 {
            workers * DEFAULT_QUEUE_PER_WORKER
        } else {
            p.queue
        };
        let pool = PasswordPool::with_priority(
            HashParams {
                m_kib: p.memory_kib,
                t: p.iterations,
                p: p.parallelism,
            },
            PoolLimits { workers, queue },
            p.priority,
        )?;
        let endpoints = EndpointRuntime::start(p.priority)?;
        let limits = match previous.map(AuthService::shared_limits) {
            Some(limits) if limits.config() == &config.limits => limits,
            // New quotas start new counters (governor's quota is fixed per limiter); the
            // lockout lives in the store and is unaffected.
            // Redis's counters live on, and so does the connection unless its settings changed.
            Some(old) => Arc::new(Limits::reloaded(config.limits.clone(), &old)),
            None => Arc::new(Limits::new(config.limits.clone(), Clock::default())),
        };
        let trusted = Arc::new(TrustedIssuers::new(config.trusted_issuers.clone())?);
        // A failed first fetch is logged inside; tokens of that issuer wait for its keys.
        trusted.refresh_all().await;
        let authenticator = Authenticator::new(
            &config,
            keys,
            trusted,
            store.clone(),
            previous.map(|p| p.authenticator().as_ref()),
        )
        .await?;
        let authenticator = Arc::new(authenticator);
        let grants = Arc::new(Grants::new(config, authenticator, store, pool, limits));
        Ok(Self {
            grants,
            endpoints,
            kek,
            // Due at once: a rotation committed between reading the ring above and the feed's
            // position (read by the authenticator after it) would otherwise never be seen.
            keys_due: AtomicBool::new(true),
            keys_failing: AtomicBool::new(false),
        })
    }

    /// The kernel's ids of the threads doing login work: the endpoint runtime's driver thread,
    /// then the hashing threads. They end when the service is dropped.
    pub fn login_thread_ids(&self) -> Vec<i32> {
        let mut tids = vec![self.endpoints.thread_id()];
        tids.extend_from_slice(self.grants.pool().thread_ids());
        tids
    }

    /// Answers one of the gateway's endpoints ([`endpoints::serve`]) on the endpoint runtime,
    /// so a login flood's request handling only gets the CPU proxied traffic leaves. A panic
    /// there is a 500 for this request, logged once.
    pub async fn serve_apart(
        &self,
        endpoint: Endpoint,
        req: Request<Incoming>,
        client: std::net::IpAddr,
    ) -> Result<Response<Body>, EndpointError> {
        let grants = Arc::clone(&self.grants);
        // Boxed: the endpoint's state machine is large, and inline it would sit in every proxied
        // request's future too (the pipeline's future holds either branch), copied on each move.
        let work = Box::pin(async move { endpoints::serve(&grants, endpoint, req, client).await });
        match self.endpoints.run(work).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, endpoint = endpoint.label(), "endpoint failed");
                Err(GrantError::Server.into())
            }
        }
    }

    /// Re-reads the key directory (after `gatehouse keys rotate`); the old keys stay on failure.
    pub fn reload_keys(&self) -> Result<(), ServiceError> {
        let keys = load_keys(self.config(), false)?;
        self.authenticator().swap_keys(keys);
        Ok(())
    }

    /// With the keys in the store: rebuilds the ring when the change feed announced new keys
    /// (follow the feed first) or the ring's next transition has come (a key starts signing, a
    /// retired one's retention ends), so no event is needed for a published key to start
    /// signing. Called after each catch-up with the feed. On failure the running ring stays
    /// and the rebuild is retried at the next call; the failure is logged once. Returns whether
    /// the ring was rebuilt.
    pub async fn follow_keys(&self) -> bool {
        let announced = self.authenticator().take_keys_changed();
        let Some(kek) = &self.kek else {
            return false;
        };
        let now = unix_now();
        let transition = self
            .authenticator()
            .keys()
            .ring
            .next_transition()
            .is_some_and(|t| t <= now);
        let due = self.keys_due.swap(false, Ordering::AcqRel) | announced | transition;
        if !due {
            return false;
        }
        let config = self.config();
        match keystore::load_ring(&**self.store(), kek, key_retention(config), now).await {
            Ok(ring) => {
                let signing = ring.signing().kid.clone();
                self.authenticator().swap_keys(key_state(config, ring));
                if self.keys_failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("reading the signing keys from the store again");
                }
                tracing::info!(%signing, "signing keys rebuilt from the store");
                true
            }
            Err(e) => {
                self.keys_due.store(true, Ordering::Release);
                if !self.keys_failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "cannot rebuild the signing keys from the store; keeping the running ones");
                }
                false
            }
        }
    }

    /// The proxy path's half.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        self.grants.authenticator()
    }

    pub fn trusted_issuers(&self) -> &Arc<TrustedIssuers> {
        self.authenticator().trusted_issuers()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.grants.store()
    }

    pub fn config(&self) -> &AuthConfig {
        self.grants.config()
    }

    pub fn limits(&self) -> &Limits {
        self.grants.limits()
    }

    /// The limiter state, for the service that replaces this one on a reload.
    pub fn shared_limits(&self) -> Arc<Limits> {
        self.grants.limits().clone()
    }

    /// Hashes a new password on the bounded pool (CLI, demo, registration).
    pub async fn hash_password(
        &self,
        password: zeroize::Zeroizing<String>,
    ) -> Result<String, PasswordError> {
        self.grants.hash_password(password).await
    }

    /// Drops expired revocations, cache entries, limiter keys and stored rows; called on a timer.
    pub async fn prune(&self) {
        self.authenticator().prune();
        self.limits().prune();
        if let Err(e) = self.store().purge_expired(unix_now()).await {
            tracing::warn!(error = %e, "purging expired store rows failed");
        }
    }
}

/// How long a retired key still verifies: until every token it signed has expired.
pub fn key_retention(config: &AuthConfig) -> Duration {
    config.longest_access_lifetime() + config.leeway + Duration::from_secs(60)
}

fn load_keys(config: &AuthConfig, generate: bool) -> Result<KeyState, KeyError> {
    let retain = key_retention(config);
    let ring = if generate {
        KeyRing::load_or_generate(&config.keys_dir, config.algorithm, retain)?
    } else {
        KeyRing::load(&config.keys_dir, retain)?
    };
    Ok(key_state(config, ring))
}

/// The ring and the verifier of the gateway's own tokens built on it.
fn key_state(config: &AuthConfig, ring: KeyRing) -> KeyState {
    let policy = Policy {
        issuer: config.issuer.clone(),
        audiences: vec![config.audience.clone()],
        types: vec![crate::auth::verify::ACCESS_TOKEN_TYP.to_owned()],
        leeway: config.leeway,
        max_lifetime: config.longest_access_lifetime() + config.leeway,
        max_token_bytes: config.max_token_bytes,
        identity_claims: IdentityClaims::Standard,
    };
    let verifier = Verifier::new(policy, ring.lookup().clone());
    KeyState { ring, verifier }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::KeyAlg;
    use crate::config::Config;
    use crate::store::sqlite::SqliteStore;

    fn published(auth: &AuthService) -> Vec<String> {
        auth.authenticator().keys().ring.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    fn signing(auth: &AuthService) -> String {
        auth.authenticator().keys().ring.signing().kid.clone()
    }

    /// Two gateways on one store (two handles): a rotation made through one reaches the other
    /// through the feed, which publishes the new key at once and signs with it at its
    /// activation without any further event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_publishes_a_rotation_made_elsewhere_and_signs_with_it_at_activation() {
        let dir = tempfile::tempdir().unwrap();
        let kek_file = dir.path().join("kek");
        Kek::write_new(&kek_file).unwrap();
        let keys_dir = dir.path().join("keys");
        let text = format!(
            "[auth]\nkek_file = {:?}\nkeys_dir = {:?}\n",
            kek_file.display().to_string(),
            keys_dir.display().to_string()
        );
        let config = Config::from_toml(&text).unwrap().auth;
        let db = dir.path().join("state.db");
        let other: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
        let gateway: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
        let auth = AuthService::new(config.clone(), gateway, None)
            .await
            .unwrap();
        let first = signing(&auth);
        assert!(!keys_dir.exists(), "no key directory with kek_file");
        // The first follow always rebuilds: a rotation committed while the service was being
        // built (after its ring was read, before the feed's position was) is in no feed entry
        // it will read.
        assert!(
            auth.follow_keys().await,
            "the first follow reads the keys again"
        );
        assert_eq!(signing(&auth), first);
        assert!(!auth.follow_keys().await, "nothing announced, nothing due");

        let kek = Kek::load(&kek_file).unwrap();
        let now = unix_now();
        let new = keystore::rotate(
            &*other,
            &kek,
            KeyAlg::ES256,
            Duration::from_secs(2),
            key_retention(&config),
            now,
        )
        .await
        .unwrap();
        auth.authenticator().follow().await.unwrap();
        assert!(auth.follow_keys().await, "announced by the feed");
        assert_eq!(published(&auth), [first.clone(), new.kid.clone()]);
        assert_eq!(signing(&auth), first, "published before it signs");

        tokio::time::sleep(Duration::from_millis(2100)).await;
        auth.authenticator().follow().await.unwrap();
        assert!(auth.follow_keys().await, "its activation is due");
        assert_eq!(signing(&auth), new.kid);
        assert!(!auth.follow_keys().await);
    }

    /// RFC 7009 answers 200 "whether or not the token was known", but a token that cannot be
    /// checked against revocations (the store silent past `max_staleness`) was not revoked
    /// either: the caller must hear 503 and retry, not believe its token dead.
    #[tokio::test]
    async fn a_revocation_the_gateway_cannot_confirm_answers_unavailable_not_ok() {
        use crate::auth::grants::{Grant, TokenRequest};
        use crate::auth::username::Username;
        use crate::store::NewUser;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[auth]\nkeys_dir = {:?}\n[auth.password]\nmemory_kib = 8\niterations = 1\n",
            dir.path().join("keys").display().to_string()
        );
        let config = Config::from_toml(&text).unwrap().auth;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
        let auth = AuthService::new(config, store, None).await.unwrap();
        let hash = auth
            .hash_password(zeroize::Zeroizing::new("pw-of-alice".into()))
            .await
            .unwrap();
        auth.store()
            .create_user(NewUser {
                username: Username::parse("alice").unwrap(),
                password_hash: hash,
                roles: vec![],
                scopes: vec![],
            })
            .await
            .unwrap();
        let client = std::net::IpAddr::from([127, 0, 0, 1]);
        let form = TokenRequest {
            client_id: None,
            scope: None,
            username: Some("alice"),
            password: Some("pw-of-alice"),
            refresh_token: None,
            user_agent: None,
            browser: false,
            ..TokenRequest::default()
        };
        let issued = auth
            .grants
            .token(Grant::Password, form, client)
            .await
            .unwrap();
        auth.authenticator().age_revocations(3600);
        let answer = auth
            .grants
            .revoke(Some(&issued.access_token), Some("access_token"), client)
            .await;
        assert!(
            matches!(answer, Err(GrantError::StoreUnavailable)),
            "{answer:?}"
        );
        auth.authenticator().follow().await.unwrap();
        auth.grants
            .revoke(Some(&issued.access_token), Some("access_token"), client)
            .await
            .unwrap();
        assert!(matches!(
            auth.authenticator()
                .verify_access(&issued.access_token)
                .await,
            Err(crate::auth::verify::VerifyError::Revoked)
        ));
    }

    /// Introspection must not say "active" for a token whose revocation it cannot rule out, nor
    /// "inactive" for a live one: while the store is silent past `max_staleness` it answers
    /// 503, and once the store answers again, the truth.
    #[tokio::test]
    async fn an_introspection_the_gateway_cannot_confirm_answers_unavailable_not_active() {
        use crate::auth::clients;
        use crate::auth::grants::TokenRequest;
        use crate::auth::introspection::introspect;
        use crate::auth::username::Username;
        use crate::store::NewClient;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[auth]\nkeys_dir = {:?}\n",
            dir.path().join("keys").display().to_string()
        );
        let config = Config::from_toml(&text).unwrap().auth;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
        let auth = AuthService::new(config, store, None).await.unwrap();
        let now = unix_now();
        for (name, grant) in [
            ("rs", clients::GRANT_INTROSPECTION),
            ("ci", clients::GRANT_CLIENT_CREDENTIALS),
        ] {
            let name = Username::parse(name).unwrap();
            auth.store()
                .create_client(
                    NewClient {
                        secret_digest: clients::secret_digest(&name, "secret-of-it"),
                        name,
                        scopes: vec![],
                        audiences: vec![],
                        grants: vec![grant.to_owned()],
                        auth_method: crate::store::ClientAuthMethod::Secret,
                        jwks: None,
                        jwks_url: None,
                        epoch: clients::new_epoch(),
                    },
                    now,
                )
                .await
                .unwrap();
        }
        let addr = std::net::IpAddr::from([127, 0, 0, 1]);
        let as_client = |id| TokenRequest {
            client_id: Some(id),
            client_secret: Some("secret-of-it"),
            ..TokenRequest::default()
        };
        let token = auth
            .grants
            .client_credentials(as_client("ci"), addr)
            .await
            .unwrap()
            .access_token;
        auth.authenticator().age_revocations(3600);
        let answer = introspect(&auth.grants, &as_client("rs"), Some(&token), addr).await;
        assert!(
            matches!(answer, Err(GrantError::StoreUnavailable)),
            "{answer:?}"
        );
        auth.authenticator().follow().await.unwrap();
        let answer = introspect(&auth.grants, &as_client("rs"), Some(&token), addr)
            .await
            .unwrap();
        assert_eq!(answer["active"], true, "{answer}");
    }
}
