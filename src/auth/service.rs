//! The authentication service: builds the authenticator (proxy path) and the grants (endpoint
//! path) from the auth settings, runs the endpoints apart from proxied traffic, and reloads keys.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::auth::authenticator::{Authenticator, KeyState};
use crate::auth::endpoints::{self, Endpoint, EndpointError};
use crate::auth::grants::{GrantError, Grants};
use crate::auth::issuers::{IssuerError, TrustedIssuers};
use crate::auth::keys::{KeyError, KeyRing};
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
        let keys = load_keys(&config, true)?;
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
        Ok(Self { grants, endpoints })
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

fn load_keys(config: &AuthConfig, generate: bool) -> Result<KeyState, KeyError> {
    // Old keys verify until every token they signed has expired.
    let retain = config.access_token_lifetime + config.leeway + Duration::from_secs(60);
    let ring = if generate {
        KeyRing::load_or_generate(&config.keys_dir, config.algorithm, retain)?
    } else {
        KeyRing::load(&config.keys_dir, retain)?
    };
    let policy = Policy {
        issuer: config.issuer.clone(),
        audiences: vec![config.audience.clone()],
        types: vec![crate::auth::verify::ACCESS_TOKEN_TYP.to_owned()],
        leeway: config.leeway,
        max_lifetime: config.access_token_lifetime + config.leeway,
        max_token_bytes: config.max_token_bytes,
        identity_claims: IdentityClaims::Standard,
    };
    let verifier = Verifier::new(policy, ring.lookup().clone());
    Ok(KeyState { ring, verifier })
}
