//! Trusted external token issuers (Keycloak, Auth0, ...): their key sets, fetched or read from
//! files and kept fresh, and verification of the access tokens they sign.
//!
//! Each issuer has its own [`Verifier`]: a [`Policy`] with its exact `iss`, its audiences, its
//! accepted `typ` values and its role and scope claim paths, over keys bound to it with
//! [`VerificationKey::with_issuer`], so a key from one issuer's set never vouches for a token that
//! names another issuer. A token is routed by its `kid` alone, looked up exactly in the union of
//! the issuers' current sets; a kid found in two sets routes nowhere and is refused for both.
//!
//! Key sets:
//! - fetched with a plain GET: no redirect is followed, only `200` counts, the body is capped at
//!   [`MAX_JWKS_BYTES`] and the whole exchange is bounded by `fetch_timeout`;
//! - parsed with [`parse_object`] (duplicate members refused), at most [`MAX_JWKS_KEYS`] entries;
//!   an entry that [`VerificationKey::from_jwk`] refuses (encryption keys, `oct`, curves we do not
//!   verify) is skipped with a warning, a kid listed twice in one set is dropped, and a set left
//!   with no usable key counts as a failed fetch;
//! - on any failure the last good set stays in use;
//! - refreshed every `refresh_interval` ([`TrustedIssuers::spawn_refresh`]). A token whose kid no
//!   issuer holds triggers a refetch of the URL-based sets, at most once per `refetch_cooldown`
//!   per issuer, and waits for it up to `fetch_timeout`. At most one fetch per issuer runs at a
//!   time; a request that finds one running waits for it instead of starting another.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{ACCEPT, CONTENT_LENGTH, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::auth::claims::{Identity, parse_object};
use crate::auth::keys::{KeyLookup, MAX_KID_BYTES, VerificationKey};
use crate::auth::verify::{IdentityClaims, Policy, Verifier, VerifyError, token_kid};
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero};

/// Largest key set accepted, fetched or read from a file.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most entries in one key set; real identity providers publish a handful.
pub const MAX_JWKS_KEYS: usize = 100;
const USER_AGENT_VALUE: &str = concat!("gatehouse/", env!("CARGO_PKG_VERSION"));
const JWKS_MEDIA_TYPES: &str = "application/jwk-set+json, application/json";
/// Fetches are minutes apart; an idle connection kept longer only ties up a socket.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an issuer's JSON Web Key Set comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// `https://` (or `http://`, warned about unless loopback) URL of the JWKS document.
    Url(Uri),
    /// A JWKS document on disk, re-read on every refresh.
    File(PathBuf),
}

/// One trusted issuer, as the validated configuration describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerSettings {
    /// Exact `iss`.
    pub issuer: String,
    /// `aud` must contain at least one.
    pub audiences: Vec<String>,
    pub source: JwksSource,
    /// Accepted `typ` header values, e.g. `["at+jwt", "JWT"]`; compared case-insensitively,
    /// with or without the `application/` prefix.
    pub token_types: Vec<String>,
    /// Dotted claim path, split: `["realm_access", "roles"]` (Keycloak) or `["roles"]`.
    pub roles_claim: Vec<String>,
    /// `["scope"]` (space-separated string) or `["permissions"]` (Auth0 array); either form works.
    pub scopes_claim: Vec<String>,
    pub max_token_lifetime: Duration,
    pub leeway: Duration,
    pub max_token_bytes: usize,
    /// Background JWKS refresh period.
    pub refresh_interval: Duration,
    /// An unknown kid triggers a refetch at most once per cooldown.
    pub refetch_cooldown: Duration,
    pub fetch_timeout: Duration,
}

/// An `[[auth.trusted_issuers]]` entry as written: an external identity provider whose access
/// tokens the gateway accepts.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default = "default_issuer_types")]
    pub token_types: Vec<String>,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    #[serde(default = "default_issuer_max_lifetime")]
    pub max_token_lifetime: RawDuration,
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: RawDuration,
    #[serde(default = "default_jwks_cooldown")]
    pub refetch_cooldown: RawDuration,
    #[serde(default = "default_jwks_timeout")]
    pub fetch_timeout: RawDuration,
}

/// Default accepted `typ` values of an external issuer's tokens (many IdPs send "JWT").
pub const DEFAULT_ISSUER_TOKEN_TYPES: &[&str] = &["at+jwt", "JWT"];
/// Default claim holding an external token's roles.
pub const DEFAULT_ROLES_CLAIM: &str = "roles";
/// Default claim holding an external token's scopes (space-separated string or array).
pub const DEFAULT_SCOPES_CLAIM: &str = "scope";
/// Default longest lifetime (exp - iat) accepted from an external issuer.
pub const DEFAULT_ISSUER_MAX_LIFETIME: &str = "24h";
/// Default interval between background JWKS fetches.
pub const DEFAULT_JWKS_REFRESH: &str = "5m";
/// Default shortest interval between fetches triggered by an unknown `kid`.
pub const DEFAULT_JWKS_COOLDOWN: &str = "30s";
/// Default time a JWKS fetch may take.
pub const DEFAULT_JWKS_TIMEOUT: &str = "5s";

fn default_issuer_types() -> Vec<String> {
    DEFAULT_ISSUER_TOKEN_TYPES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_roles_claim() -> String {
    DEFAULT_ROLES_CLAIM.into()
}
fn default_scopes_claim() -> String {
    DEFAULT_SCOPES_CLAIM.into()
}
fn default_issuer_max_lifetime() -> RawDuration {
    DEFAULT_ISSUER_MAX_LIFETIME.into()
}
fn default_jwks_refresh() -> RawDuration {
    DEFAULT_JWKS_REFRESH.into()
}
fn default_jwks_cooldown() -> RawDuration {
    DEFAULT_JWKS_COOLDOWN.into()
}
fn default_jwks_timeout() -> RawDuration {
    DEFAULT_JWKS_TIMEOUT.into()
}

impl RawTrustedIssuer {
    /// The gateway-wide leeway and token cap apply to external tokens too.
    pub fn validate(
        self,
        key: &str,
        leeway: Duration,
        max_token_bytes: usize,
    ) -> Result<IssuerSettings, ConfigError> {
        if self.issuer.is_empty() || self.issuer.len() > 512 {
            return Err(invalid(format!("{key}.issuer"), "must be 1-512 characters"));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            return Err(invalid(
                format!("{key}.audiences"),
                "list at least one audience your API expects",
            ));
        }
        let source = match (self.jwks_url, self.jwks_file) {
            (Some(url), None) => {
                let uri: Uri = url.parse().map_err(|_| {
                    invalid(format!("{key}.jwks_url"), format!("{url:?} is not a URL"))
                })?;
                if !matches!(uri.scheme_str(), Some("https") | Some("http"))
                    || uri.authority().is_none()
                {
                    return Err(invalid(
                        format!("{key}.jwks_url"),
                        "must be an http:// or https:// URL",
                    ));
                }
                JwksSource::Url(uri)
            }
            (None, Some(file)) => JwksSource::File(file),
            _ => {
                return Err(invalid(key, "set exactly one of jwks_url and jwks_file"));
            }
        };
        if self.token_types.is_empty() {
            return Err(invalid(
                format!("{key}.token_types"),
                "must list at least one typ",
            ));
        }
        let path = |k: &str, v: &str| -> Result<Vec<String>, ConfigError> {
            let parts: Vec<String> = v.split('.').map(str::to_owned).collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(invalid(
                    format!("{key}.{k}"),
                    format!("{v:?} is not a claim path"),
                ));
            }
            Ok(parts)
        };
        Ok(IssuerSettings {
            issuer: self.issuer,
            audiences: self.audiences,
            source,
            token_types: self.token_types,
            roles_claim: path("roles_claim", &self.roles_claim)?,
            scopes_claim: path("scopes_claim", &self.scopes_claim)?,
            max_token_lifetime: nonzero(
                &format!("{key}.max_token_lifetime"),
                &self.max_token_lifetime,
            )?,
            leeway,
            max_token_bytes,
            refresh_interval: nonzero(&format!("{key}.refresh_interval"), &self.refresh_interval)?,
            refetch_cooldown: nonzero(&format!("{key}.refetch_cooldown"), &self.refetch_cooldown)?,
            fetch_timeout: nonzero(&format!("{key}.fetch_timeout"), &self.fetch_timeout)?,
        })
    }
}

/// Whose key set an [`IssuerError`] is about, named first in its message: the fetch and parse
/// code is shared by trusted issuers and `private_key_jwt` clients (`jwks_url`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySetOf {
    TrustedIssuer,
    Client,
}

impl std::fmt::Display for KeySetOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySetOf::TrustedIssuer => "trusted issuer",
            KeySetOf::Client => "key set of client",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{of} {issuer:?}: {reason}")]
    Invalid {
        of: KeySetOf,
        issuer: String,
        reason: &'static str,
    },
    #[error("trusted issuer {issuer:?} is configured twice")]
    DuplicateIssuer { issuer: String },
    #[error("loading the system's root certificates for HTTPS key-set URLs: {0}")]
    TlsRoots(#[source] io::Error),
    #[error("{of} {issuer:?}: reading {path}: {source}")]
    File {
        of: KeySetOf,
        issuer: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{of} {issuer:?}: fetching {url}: {source}")]
    Transport {
        of: KeySetOf,
        issuer: String,
        url: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{of} {issuer:?}: fetching {url}: no complete response within {timeout:?}")]
    Timeout {
        of: KeySetOf,
        issuer: String,
        url: String,
        timeout: Duration,
    },
    #[error("{of} {issuer:?}: fetching {url}: HTTP status {status}")]
    Status {
        of: KeySetOf,
        issuer: String,
        url: String,
        status: StatusCode,
    },
    #[error("{of} {issuer:?}: key set larger than {limit} bytes")]
    TooLarge {
        of: KeySetOf,
        issuer: String,
        limit: usize,
    },
    #[error("{of} {issuer:?}: invalid key set: {reason}")]
    BadKeySet {
        of: KeySetOf,
        issuer: String,
        reason: String,
    },
    #[error("{of} {issuer:?}: the key set holds no usable signature key")]
    NoUsableKeys { of: KeySetOf, issuer: String },
}

/// The trusted external issuers and their current keys. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct TrustedIssuers {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: Vec<Issuer>,
    client: JwksClient,
    state: RwLock<State>,
    /// The largest per-issuer cap, applied before a token is routed; the chosen verifier then
    /// applies its own.
    max_token_bytes: usize,
    /// Changed whenever any issuer's key set is replaced, so cached verifications of external
    /// tokens can tell that the key that vouched for them may be gone. Drawn from
    /// [`GENERATIONS`]: unique in the process, so a cache a reload hands to a new set of trusted
    /// issuers never mistakes the old set's generation for the new one's.
    generation: std::sync::atomic::AtomicU64,
}

/// The next key-set generation, for every [`TrustedIssuers`] of the process.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Issuer {
    settings: IssuerSettings,
    policy: Policy,
    gate: Mutex<Gate>,
    /// Bumped whenever a fetch of this issuer's URL ends, successful or not.
    fetched: watch::Sender<u64>,
}

#[derive(Default)]
struct Gate {
    running: bool,
    last_unknown_kid_fetch: Option<Instant>,
}

/// Replaced as a whole under the write lock, so routes and verifiers always agree.
struct State {
    verifiers: Vec<Arc<Verifier>>,
    routes: HashMap<String, Route>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Issuer(usize),
    Ambiguous,
}

enum Lookup {
    Found(Arc<Verifier>),
    Ambiguous,
    Unknown,
}

impl fmt::Debug for TrustedIssuers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedIssuers")
            .field("key_counts", &self.key_counts())
            .finish_non_exhaustive()
    }
}

impl TrustedIssuers {
    /// Validates the settings and loads file-based key sets now (a missing or invalid file is an
    /// error). URL-based sets start empty: call [`TrustedIssuers::refresh_all`] at start-up. A
    /// failed first fetch is logged, not fatal; that issuer's tokens are refused until its keys
    /// arrive. Plain `http://` URLs to non-loopback hosts are allowed but warned about.
    pub fn new(settings: Vec<IssuerSettings>) -> Result<Self, IssuerError> {
        let mut seen = HashSet::new();
        for s in &settings {
            validate(s)?;
            if !seen.insert(s.issuer.as_str()) {
                return Err(IssuerError::DuplicateIssuer {
                    issuer: s.issuer.clone(),
                });
            }
            warn_if_cleartext(s);
        }
        let client = build_client(&settings)?;
        let max_token_bytes = settings
            .iter()
            .map(|s| s.max_token_bytes)
            .max()
            .unwrap_or(0);
        let issuers: Vec<Issuer> = settings.into_iter().map(Issuer::new).collect();
        let verifiers = issuers
            .iter()
            .map(|i| Arc::new(Verifier::new(i.policy.clone(), KeyLookup::new())))
            .collect();
        let inner = Inner {
            issuers,
            client,
            state: RwLock::new(State {
                verifiers,
                routes: HashMap::new(),
            }),
            max_token_bytes,
            generation: std::sync::atomic::AtomicU64::new(next_generation()),
        };
        for (index, issuer) in inner.issuers.iter().enumerate() {
            if let JwksSource::File(path) = &issuer.settings.source {
                let keys = load_file(&issuer.settings.issuer, path)?;
                inner.install(index, keys);
            }
        }
        Ok(TrustedIssuers {
            inner: Arc::new(inner),
        })
    }

    /// Verifies a token of a trusted issuer at Unix time `now`. For the gateway's own tokens use
    /// its own [`Verifier`] first; call this when the gateway's key set does not hold the kid.
    ///
    /// The kid is looked up exactly. When no issuer holds it, URL-based sets whose cooldown has
    /// passed are refetched (waiting up to `fetch_timeout`) and the lookup is retried once.
    /// [`VerifyError::UnknownKey`] when no issuer has the kid, or when two do.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Identity, VerifyError> {
        if self.inner.issuers.is_empty() {
            return Err(VerifyError::UnknownKey);
        }
        let kid = token_kid(token, self.inner.max_token_bytes)?;
        match self.inner.lookup(&kid) {
            Lookup::Found(verifier) => return verifier.verify(token, now),
            Lookup::Ambiguous => return Err(VerifyError::UnknownKey),
            Lookup::Unknown => {}
        }
        let waits = Inner::refetch_for_unknown_kid(&self.inner);
        if waits.is_empty() {
            return Err(VerifyError::UnknownKey);
        }
        let limit = waits.iter().map(|(_, t)| *t).max().unwrap_or_default();
        let all_done = async {
            for (mut done, _) in waits {
                // An error means the sender is gone, which cannot happen while we hold `inner`.
                let _ = done.changed().await;
            }
        };
        // On timeout the fetch carries on in its own task and serves later requests.
        let _ = tokio::time::timeout(limit, all_done).await;
        match self.inner.lookup(&kid) {
            Lookup::Found(verifier) => verifier.verify(token, now),
            Lookup::Ambiguous | Lookup::Unknown => Err(VerifyError::UnknownKey),
        }
    }

    /// Fetches every URL-based set and re-reads every file-based one, concurrently, and returns
    /// when all are done. Failures are logged and keep the last good set.
    pub async fn refresh_all(&self) {
        join_all((0..self.inner.issuers.len()).map(|i| Inner::refresh(&self.inner, i))).await;
    }

    /// Refreshes each issuer at its own `refresh_interval`, first one interval from now. Abort
    /// the handle to stop.
    pub fn spawn_refresh(self: &Arc<Self>) -> JoinHandle<()> {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let mut loops = JoinSet::new();
            for index in 0..inner.issuers.len() {
                let inner = Arc::clone(&inner);
                let period = inner.issuers[index].settings.refresh_interval;
                loops.spawn(async move {
                    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
                    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    loop {
                        ticks.tick().await;
                        Inner::refresh(&inner, index).await;
                    }
                });
            }
            // Dropping the set (when this task is aborted) aborts every loop.
            while loops.join_next().await.is_some() {}
        })
    }

    pub fn is_empty(&self) -> bool {
        self.inner.issuers.is_empty()
    }

    /// Changes whenever a key set is replaced (see `Inner::generation`).
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Each issuer with the number of keys it currently holds, for readiness and diagnostics.
    pub fn key_counts(&self) -> Vec<(String, usize)> {
        let state = read(&self.inner.state);
        self.inner
            .issuers
            .iter()
            .zip(&state.verifiers)
            .map(|(i, v)| (i.settings.issuer.clone(), v.keys().len()))
            .collect()
    }
}

impl Issuer {
    fn new(settings: IssuerSettings) -> Self {
        let policy = Policy {
            issuer: settings.issuer.clone(),
            audiences: settings.audiences.clone(),
            types: settings.token_types.clone(),
            leeway: settings.leeway,
            max_lifetime: settings.max_token_lifetime,
            max_token_bytes: settings.max_token_bytes,
            identity_claims: IdentityClaims::Paths {
                roles: settings.roles_claim.clone(),
                scopes: settings.scopes_claim.clone(),
            },
        };
        Issuer {
            settings,
            policy,
            gate: Mutex::new(Gate::default()),
            fetched: watch::Sender::new(0),
        }
    }

    fn name(&self) -> &str {
        &self.settings.issuer
    }
}

impl Inner {
    fn lookup(&self, kid: &str) -> Lookup {
        let state = read(&self.state);
        match state.routes.get(kid) {
            Some(Route::Issuer(index)) => Lookup::Found(Arc::clone(&state.verifiers[*index])),
            Some(Route::Ambiguous) => Lookup::Ambiguous,
            None => Lookup::Unknown,
        }
    }

    /// Replaces one issuer's keys and rebuilds the kid routes.
    fn install(&self, index: usize, keys: KeyLookup) {
        let verifier = Arc::new(Verifier::new(self.issuers[index].policy.clone(), keys));
        let mut state = write(&self.state);
        state.verifiers[index] = verifier;
        let routes = build_routes(&state.verifiers);
        for (kid, route) in &routes {
            let was_ambiguous = state.routes.get(kid) == Some(&Route::Ambiguous);
            if *route == Route::Ambiguous && !was_ambiguous {
                let holders: Vec<&str> = state
                    .verifiers
                    .iter()
                    .zip(&self.issuers)
                    .filter(|(v, _)| v.keys().get(kid).is_some())
                    .map(|(_, i)| i.name())
                    .collect();
                tracing::error!(
                    kid = ?kid,
                    issuers = ?holders,
                    "a kid is in the key sets of several trusted issuers; tokens with it are refused for all of them"
                );
            }
        }
        state.routes = routes;
        self.generation
            .store(next_generation(), std::sync::atomic::Ordering::Release);
    }

    fn key_count(&self, index: usize) -> usize {
        read(&self.state).verifiers[index].keys().len()
    }

    /// Starts a fetch for every URL-based issuer whose cooldown allows one, and joins the fetches
    /// already running. Returns what to wait on, with each issuer's time limit.
    fn refetch_for_unknown_kid(this: &Arc<Self>) -> Vec<(watch::Receiver<u64>, Duration)> {
        let now = Instant::now();
        let mut waits = Vec::new();
        for (index, issuer) in this.issuers.iter().enumerate() {
            if !matches!(issuer.settings.source, JwksSource::Url(_)) {
                continue;
            }
            let mut gate = lock(&issuer.gate);
            let limit = issuer.settings.fetch_timeout;
            if gate.running {
                waits.push((issuer.fetched.subscribe(), limit));
                continue;
            }
            let cooling = gate
                .last_unknown_kid_fetch
                .is_some_and(|last| now.duration_since(last) < issuer.settings.refetch_cooldown);
            if cooling {
                continue;
            }
            gate.last_unknown_kid_fetch = Some(now);
            gate.running = true;
            // Subscribed under the gate lock, which the end of the fetch also takes: the end
            // cannot be missed.
            waits.push((issuer.fetched.subscribe(), limit));
            drop(gate);
            tracing::info!(issuer = %issuer.name(), "unknown kid: refetching the key set");
            Self::spawn_fetch(this, index);
        }
        waits
    }

    /// Refreshes one issuer now and returns when that is done.
    async fn refresh(this: &Arc<Self>, index: usize) {
        let issuer = &this.issuers[index];
        match &issuer.settings.source {
            JwksSource::File(path) => {
                let name = issuer.name().to_owned();
                let path = path.clone();
                let loaded = tokio::task::spawn_blocking(move || load_file(&name, &path)).await;
                match loaded {
                    Ok(Ok(keys)) => this.install(index, keys),
                    Ok(Err(e)) => tracing::warn!(
                        issuer = %issuer.name(),
                        error = %e,
                        "re-reading the key set failed; keeping the last good set"
                    ),
                    Err(e) => tracing::error!(
                        issuer = %issuer.name(),
                        error = %e,
                        "re-reading the key set did not complete"
                    ),
                }
            }
            JwksSource::Url(_) => {
                let (mut done, start) = {
                    let mut gate = lock(&issuer.gate);
                    let start = !gate.running;
                    gate.running = true;
                    (issuer.fetched.subscribe(), start)
                };
                if start {
                    Self::spawn_fetch(this, index);
                }
                let _ = done.changed().await;
            }
        }
    }

    /// Runs one fetch in its own task, so a caller that stops waiting (a client that goes away,
    /// a timeout) never cancels it halfway. The caller has set `running`.
    fn spawn_fetch(this: &Arc<Self>, index: usize) {
        // Created outside the task: if the task is dropped before it first runs, the guard still
        // clears `running`.
        let done = FetchDone {
            inner: Arc::clone(this),
            index,
        };
        let inner = Arc::clone(this);
        tokio::spawn(async move {
            let _done = done;
            inner.fetch_and_install(index).await;
        });
    }

    async fn fetch_and_install(&self, index: usize) {
        let issuer = &self.issuers[index];
        match self.fetch_key_set(index).await {
            Ok(keys) => {
                tracing::debug!(issuer = %issuer.name(), keys = keys.len(), "key set fetched");
                self.install(index, keys);
            }
            Err(e) if self.key_count(index) == 0 => tracing::error!(
                error = %e,
                "no keys for this trusted issuer yet; its tokens are refused until a fetch succeeds"
            ),
            Err(e) => tracing::warn!(error = %e, "key set fetch failed; keeping the last good set"),
        }
    }

    async fn fetch_key_set(&self, index: usize) -> Result<KeyLookup, IssuerError> {
        let settings = &self.issuers[index].settings;
        let JwksSource::Url(url) = &settings.source else {
            return Err(IssuerError::Invalid {
                of: KeySetOf::TrustedIssuer,
                issuer: settings.issuer.clone(),
                reason: "only URL key sets are fetched",
            });
        };
        fetch_key_set(
            &self.client,
            KeySetOf::TrustedIssuer,
            &settings.issuer,
            url,
            settings.fetch_timeout,
        )
        .await
    }
}

/// The HTTP client key sets are fetched with (see [`build_client`]).
pub type JwksClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Fetches the key set at `url` with `client` and parses it into keys bound to `issuer` (see
/// the module text: no redirect, only `200`, at most [`MAX_JWKS_BYTES`], the whole exchange
/// within `timeout`). Also fetches `private_key_jwt` clients' key sets, bound to the client.
pub async fn fetch_key_set(
    client: &JwksClient,
    of: KeySetOf,
    issuer: &str,
    url: &Uri,
    timeout: Duration,
) -> Result<KeyLookup, IssuerError> {
    let issuer = issuer.to_owned();
    let shown_url = url.to_string();
    let transport = |source: Box<dyn std::error::Error + Send + Sync>| IssuerError::Transport {
        of,
        issuer: issuer.clone(),
        url: shown_url.clone(),
        source,
    };
    let request = Request::get(url.clone())
        .header(ACCEPT, JWKS_MEDIA_TYPES)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::<Bytes>::new())
        .map_err(|e| transport(e.into()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| transport(e.into()))?;
        if response.status() != StatusCode::OK {
            return Err(IssuerError::Status {
                of,
                issuer: issuer.clone(),
                url: shown_url.clone(),
                status: response.status(),
            });
        }
        let too_large = || IssuerError::TooLarge {
            of,
            issuer: issuer.clone(),
            limit: MAX_JWKS_BYTES,
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    too_large()
                } else {
                    transport(e)
                }
            })?;
        Ok(body.to_bytes())
    };
    let bytes = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| IssuerError::Timeout {
            of,
            issuer: issuer.clone(),
            url: shown_url.clone(),
            timeout,
        })??;
    parse_key_set(of, &issuer, &bytes)
}

/// Ends a fetch: clears `running` and wakes the waiters, however the fetch task ended.
struct FetchDone {
    inner: Arc<Inner>,
    index: usize,
}

impl Drop for FetchDone {
    fn drop(&mut self) {
        let issuer = &self.inner.issuers[self.index];
        let mut gate = lock(&issuer.gate);
        gate.running = false;
        issuer.fetched.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn build_routes(verifiers: &[Arc<Verifier>]) -> HashMap<String, Route> {
    let mut routes = HashMap::new();
    for (index, verifier) in verifiers.iter().enumerate() {
        for kid in verifier.keys().kids() {
            routes
                .entry(kid.to_owned())
                .and_modify(|r| *r = Route::Ambiguous)
                .or_insert(Route::Issuer(index));
        }
    }
    routes
}

/// Parses a JWKS document into keys bound to `issuer`.
pub fn parse_key_set(of: KeySetOf, issuer: &str, bytes: &[u8]) -> Result<KeyLookup, IssuerError> {
    let bad = |reason: String| IssuerError::BadKeySet {
        of,
        issuer: issuer.to_owned(),
        reason,
    };
    let mut document = parse_object(bytes).map_err(|e| bad(e.to_string()))?;
    let Some(Value::Array(entries)) = document.remove("keys") else {
        return Err(bad("no \"keys\" array".into()));
    };
    if entries.len() > MAX_JWKS_KEYS {
        return Err(bad(format!("more than {MAX_JWKS_KEYS} keys")));
    }
    let mut keys = Vec::with_capacity(entries.len());
    for entry in &entries {
        match VerificationKey::from_jwk(entry) {
            Ok(key) => keys.push(key.with_issuer(issuer)),
            Err(e) => tracing::warn!(
                issuer = %issuer,
                kid = ?printable_kid(entry),
                reason = %e,
                "skipping a key the issuer publishes"
            ),
        }
    }
    let mut seen = HashMap::<String, usize>::new();
    for key in &keys {
        *seen.entry(key.kid.clone()).or_default() += 1;
    }
    let mut lookup = KeyLookup::new();
    for key in keys {
        if seen.get(&key.kid).is_some_and(|n| *n > 1) {
            tracing::warn!(issuer = %issuer, kid = ?key.kid, "skipping a kid listed twice in one key set");
            continue;
        }
        // Cannot collide: kids listed twice were skipped just above.
        let _ = lookup.insert(key);
    }
    if lookup.is_empty() {
        return Err(IssuerError::NoUsableKeys {
            of,
            issuer: issuer.to_owned(),
        });
    }
    Ok(lookup)
}

/// The `kid` of a JWKS entry for a log line: only when it is a string, and cut short.
fn printable_kid(entry: &Value) -> Option<String> {
    entry
        .get("kid")
        .and_then(Value::as_str)
        .map(|k| k.chars().take(MAX_KID_BYTES).collect())
}

/// The key set of `jwks_file`, read as at start-up (also what `check-config` runs).
pub fn load_file(issuer: &str, path: &Path) -> Result<KeyLookup, IssuerError> {
    let file_err = |source| IssuerError::File {
        of: KeySetOf::TrustedIssuer,
        issuer: issuer.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_JWKS_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(file_err)?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(IssuerError::TooLarge {
            of: KeySetOf::TrustedIssuer,
            issuer: issuer.to_owned(),
            limit: MAX_JWKS_BYTES,
        });
    }
    parse_key_set(KeySetOf::TrustedIssuer, issuer, &bytes)
}

fn validate(s: &IssuerSettings) -> Result<(), IssuerError> {
    let invalid = |reason| {
        Err(IssuerError::Invalid {
            of: KeySetOf::TrustedIssuer,
            issuer: s.issuer.clone(),
            reason,
        })
    };
    let has_empty = |list: &[String]| list.is_empty() || list.iter().any(String::is_empty);
    if s.issuer.is_empty() {
        return invalid("the issuer is empty");
    }
    if has_empty(&s.audiences) {
        return invalid("audiences must be a non-empty list of non-empty names");
    }
    if has_empty(&s.token_types) {
        return invalid("token types must be a non-empty list of non-empty names");
    }
    if has_empty(&s.roles_claim) || has_empty(&s.scopes_claim) {
        return invalid("claim paths must be non-empty with no empty member names");
    }
    if s.max_token_bytes == 0 || s.max_token_lifetime.is_zero() {
        return invalid("the token size and lifetime limits must be above zero");
    }
    if s.refresh_interval.is_zero() || s.refetch_cooldown.is_zero() || s.fetch_timeout.is_zero() {
        return invalid(
            "the refresh interval, refetch cooldown and fetch timeout must be above zero",
        );
    }
    if let JwksSource::Url(url) = &s.source {
        if !matches!(url.scheme_str(), Some("https" | "http")) {
            return invalid("the key set URL must be https:// (or http://)");
        }
        if url.host().is_none_or(str::is_empty) {
            return invalid("the key set URL has no host");
        }
    }
    Ok(())
}

fn warn_if_cleartext(s: &IssuerSettings) {
    if let JwksSource::Url(url) = &s.source
        && url.scheme_str() == Some("http")
        && !url.host().is_some_and(is_loopback)
    {
        tracing::warn!(
            issuer = %s.issuer,
            url = %url,
            "the key set URL is plain http: anyone on the path can substitute keys and forge this issuer's tokens; use https"
        );
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One pooled client for all issuers. System roots are loaded only when some URL is https, so a
/// host without a CA bundle can still use file or loopback sources.
fn build_client(settings: &[IssuerSettings]) -> Result<JwksClient, IssuerError> {
    let needs_roots = settings
        .iter()
        .any(|s| matches!(&s.source, JwksSource::Url(u) if u.scheme_str() == Some("https")));
    build_jwks_client(needs_roots)
}

/// A pooled key-set client; with `needs_roots`, one that trusts the system's root certificates
/// (without, https URLs fail to verify).
pub fn build_jwks_client(needs_roots: bool) -> Result<JwksClient, IssuerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = if needs_roots {
        HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(IssuerError::TlsRoots)?
    } else {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IssuerError::TlsRoots(io::Error::other(e)))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        HttpsConnectorBuilder::new().with_tls_config(config)
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(1)
        .pool_timer(TokioTimer::new())
        .build(connector))
}

// Poisoning means a panic elsewhere while the lock was held; what it guards is still a valid, if
// possibly stale, key set, and refusing every token over it would turn one bug into an outage.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, RsaPublicKeyComponents};
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use http::Response;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{Config, refusal as err};

    const NOW: i64 = 1_700_000_000;
    const KEYCLOAK: &str = "https://sso.example/realms/main";
    const AUTH0: &str = "https://tenant.auth0.example/";

    // ---- keys and tokens of the test identity providers ----

    struct IdpKey {
        kid: String,
        alg: Algorithm,
        encoding: EncodingKey,
        jwk: Value,
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn ed_key(kid: &str) -> IdpKey {
        let pair = Ed25519KeyPair::generate().unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        IdpKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()),
                "kid": kid, "use": "sig", "alg": "EdDSA"
            }),
        }
    }

    /// One RSA key for the whole binary: generation is slow.
    fn rsa_key() -> &'static IdpKey {
        static KEY: OnceLock<IdpKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
            let der = pair.as_der().unwrap();
            let body = STANDARD.encode(der.as_ref());
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                lines.join("\n")
            );
            let parts = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            IdpKey {
                kid: "rsa-2024".to_owned(),
                alg: Algorithm::RS256,
                encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
                jwk: json!({
                    "kty": "RSA", "n": b64(&parts.n), "e": b64(&parts.e),
                    "kid": "rsa-2024", "use": "sig", "alg": "RS256"
                }),
            }
        })
    }

    fn jwks(keys: &[&IdpKey]) -> String {
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
    }

    fn claims(iss: &str) -> Value {
        json!({
            "iss": iss, "sub": "f81d4fae-7dec", "aud": "api", "exp": NOW + 300, "iat": NOW,
            "azp": "web", "scope": "openid profile",
            "realm_access": {"roles": ["ops", "viewer"]},
            "permissions": ["read:orders", "write:orders"]
        })
    }

    fn set(mut v: Value, name: &str, value: Value) -> Value {
        v.as_object_mut().unwrap().insert(name.to_owned(), value);
        v
    }

    fn token_with(key: &IdpKey, kid: &str, typ: &str, claims: &Value) -> String {
        let alg = serde_json::to_value(key.alg).unwrap();
        let header = json!({"alg": alg, "typ": typ, "kid": kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, key.alg).unwrap();
        format!("{input}.{signature}")
    }

    fn token(key: &IdpKey, claims: &Value) -> String {
        token_with(key, &key.kid, "at+jwt", claims)
    }

    // ---- a JWKS endpoint on a real socket ----

    #[derive(Clone)]
    enum Mode {
        Serve(String),
        /// The body without a Content-Length, in chunks.
        Chunked(String),
        Status(u16),
        /// Close the connection without answering.
        Close,
        /// Read the request, never answer.
        Hang,
    }

    struct JwksServer {
        url: Uri,
        mode: Arc<Mutex<Mode>>,
        hits: Arc<AtomicUsize>,
        task: JoinHandle<()>,
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    type Body = BoxBody<Bytes, Infallible>;

    async fn respond(mode: Mode) -> Result<Response<Body>, io::Error> {
        let full = |status: u16, text: String| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(text)).boxed())
                .unwrap()
        };
        match mode {
            Mode::Serve(text) => Ok(full(200, text)),
            Mode::Status(status) => {
                // A usable key set, so only the status can make the client refuse it.
                let mut response = full(status, jwks(&[&ed_key("decoy")]));
                // A redirect to a real key set must not be followed either.
                response
                    .headers_mut()
                    .insert("location", http::HeaderValue::from_static("/elsewhere"));
                Ok(response)
            }
            Mode::Chunked(text) => {
                let chunks: Vec<Result<Frame<Bytes>, Infallible>> = text
                    .into_bytes()
                    .chunks(64 * 1024)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                let body = StreamBody::new(futures_util::stream::iter(chunks));
                Ok(Response::new(body.boxed()))
            }
            Mode::Close => Err(io::Error::other("closing without a response")),
            Mode::Hang => std::future::pending().await,
        }
    }

    impl JwksServer {
        async fn start(mode: Mode) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mode = Arc::new(Mutex::new(mode));
            let hits = Arc::new(AtomicUsize::new(0));
            let (m, h) = (Arc::clone(&mode), Arc::clone(&hits));
            let task = tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (m, h) = (Arc::clone(&m), Arc::clone(&h));
                    tokio::spawn(async move {
                        let service = service_fn(move |_request| {
                            h.fetch_add(1, Ordering::SeqCst);
                            let current = m.lock().unwrap().clone();
                            respond(current)
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            JwksServer {
                url: format!("http://{addr}/protocol/openid-connect/certs")
                    .parse()
                    .unwrap(),
                mode,
                hits,
                task,
            }
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn source(&self) -> JwksSource {
            JwksSource::Url(self.url.clone())
        }
    }

    fn settings(issuer: &str, source: JwksSource) -> IssuerSettings {
        IssuerSettings {
            issuer: issuer.to_owned(),
            audiences: vec!["gatehouse".into(), "api".into()],
            source,
            token_types: vec!["at+jwt".into()],
            roles_claim: vec!["realm_access".into(), "roles".into()],
            scopes_claim: vec!["permissions".into()],
            max_token_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(10),
            max_token_bytes: 8192,
            refresh_interval: Duration::from_secs(3600),
            refetch_cooldown: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(2),
        }
    }

    /// One URL-based issuer, fetched once.
    async fn started(s: IssuerSettings) -> TrustedIssuers {
        let trusted = TrustedIssuers::new(vec![s]).unwrap();
        trusted.refresh_all().await;
        trusted
    }

    fn write_jwks(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    // ---- tests ----

    #[test]
    fn trusted_issuers_is_send_and_sync() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<TrustedIssuers>();
        shareable::<Arc<TrustedIssuers>>();
    }

    #[tokio::test]
    async fn idp_token_verifies_with_realm_roles_and_permission_scopes() {
        let ed = ed_key("kc-ed-1");
        let server = JwksServer::start(Mode::Serve(jwks(&[&ed, rsa_key()]))).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        assert_eq!(server.hits(), 1);
        assert_eq!(trusted.key_counts(), vec![(KEYCLOAK.to_owned(), 2)]);

        for key in [&ed, rsa_key()] {
            let id = trusted.verify(&token(key, &claims(KEYCLOAK)), NOW).await;
            let id = id.unwrap_or_else(|e| panic!("{}: {e}", key.kid));
            assert_eq!(id.sub, "f81d4fae-7dec");
            assert_eq!(id.issuer, KEYCLOAK);
            assert_eq!(id.roles, vec!["ops", "viewer"]);
            assert_eq!(id.scopes, vec!["read:orders", "write:orders"]);
            assert_eq!(id.exp, NOW + 300);
        }
        assert_eq!(server.hits(), 1, "known kids never cause a fetch");
        for key in [&ed, rsa_key()] {
            let Lookup::Found(verifier) = trusted.inner.lookup(&key.kid) else {
                panic!("{} not routed", key.kid);
            };
            let bound = verifier.keys().get(&key.kid).unwrap().issuer.clone();
            assert_eq!(bound.as_deref(), Some(KEYCLOAK));
        }
        // Expiry and the rest of the policy still apply.
        assert_eq!(
            trusted
                .verify(&token(&ed, &claims(KEYCLOAK)), NOW + 311)
                .await,
            Err(VerifyError::Expired)
        );
    }

    #[tokio::test]
    async fn scopes_claim_may_be_a_space_separated_string() {
        let ed = ed_key("a0-1");
        let server = JwksServer::start(Mode::Serve(jwks(&[&ed]))).await;
        let s = IssuerSettings {
            roles_claim: vec!["https://example.com/roles".into()],
            scopes_claim: vec!["scope".into()],
            ..settings(AUTH0, server.source())
        };
        let trusted = started(s).await;
        let c = set(claims(AUTH0), "https://example.com/roles", json!(["admin"]));
        let id = trusted.verify(&token(&ed, &c), NOW).await.unwrap();
        assert_eq!(id.roles, vec!["admin"]);
        assert_eq!(id.scopes, vec!["openid", "profile"]);
    }

    #[tokio::test]
    async fn key_of_one_issuer_cannot_vouch_for_another_issuers_token() {
        let (a_key, b_key) = (ed_key("kc-a"), ed_key("a0-b"));
        let a = JwksServer::start(Mode::Serve(jwks(&[&a_key]))).await;
        let b = JwksServer::start(Mode::Serve(jwks(&[&b_key]))).await;
        let trusted = TrustedIssuers::new(vec![
            settings(KEYCLOAK, a.source()),
            settings(AUTH0, b.source()),
        ])
        .unwrap();
        trusted.refresh_all().await;
        assert!(
            trusted
                .verify(&token(&a_key, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
        assert!(
            trusted
                .verify(&token(&b_key, &claims(AUTH0)), NOW)
                .await
                .is_ok()
        );

        // Issuer A's key signs a token claiming to come from B, or from nobody we trust.
        for iss in [
            AUTH0,
            "https://evil.example",
            "https://sso.example/realms/main/",
        ] {
            assert_eq!(
                trusted.verify(&token(&a_key, &claims(iss)), NOW).await,
                Err(VerifyError::WrongIssuer),
                "{iss}"
            );
        }
        // B's kid on a token A's key signed: B's key checks the signature.
        let forged = token_with(&a_key, &b_key.kid, "at+jwt", &claims(AUTH0));
        assert_eq!(
            trusted.verify(&forged, NOW).await,
            Err(VerifyError::BadSignature)
        );
    }

    #[tokio::test]
    async fn audience_not_in_the_list_is_refused() {
        let ed = ed_key("kc-1");
        let server = JwksServer::start(Mode::Serve(jwks(&[&ed]))).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        for aud in [json!("gatehouse"), json!(["account", "api"])] {
            let c = set(claims(KEYCLOAK), "aud", aud.clone());
            assert!(trusted.verify(&token(&ed, &c), NOW).await.is_ok(), "{aud}");
        }
        for aud in [json!("account"), json!(["account", "broker"]), json!([])] {
            let c = set(claims(KEYCLOAK), "aud", aud.clone());
            assert_eq!(
                trusted.verify(&token(&ed, &c), NOW).await,
                Err(VerifyError::WrongAudience),
                "{aud}"
            );
        }
    }

    #[tokio::test]
    async fn typ_jwt_is_accepted_only_when_listed() {
        let ed = ed_key("kc-1");
        let server = JwksServer::start(Mode::Serve(jwks(&[&ed]))).await;
        let jwt = token_with(&ed, &ed.kid, "JWT", &claims(KEYCLOAK));

        let strict = started(settings(KEYCLOAK, server.source())).await;
        assert_eq!(strict.verify(&jwt, NOW).await, Err(VerifyError::WrongType));

        let s = IssuerSettings {
            token_types: vec!["at+jwt".into(), "JWT".into()],
            ..settings(KEYCLOAK, server.source())
        };
        let lenient = started(s).await;
        assert!(lenient.verify(&jwt, NOW).await.is_ok());
        let rt = token_with(&ed, &ed.kid, "rt+jwt", &claims(KEYCLOAK));
        assert_eq!(lenient.verify(&rt, NOW).await, Err(VerifyError::WrongType));
    }

    #[tokio::test]
    async fn rotated_idp_key_triggers_one_refetch_and_verifies() {
        let old = ed_key("kc-old");
        let server = JwksServer::start(Mode::Serve(jwks(&[&old]))).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        assert_eq!(server.hits(), 1);

        // The IdP rotates to an RSA key and starts signing with it.
        server.set(Mode::Serve(jwks(&[rsa_key(), &old])));
        let id = trusted
            .verify(&token(rsa_key(), &claims(KEYCLOAK)), NOW)
            .await
            .unwrap();
        assert_eq!(id.roles, vec!["ops", "viewer"]);
        assert_eq!(server.hits(), 2, "exactly one refetch");
        assert!(
            trusted
                .verify(&token(&old, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn unknown_kid_flood_within_cooldown_does_not_refetch() {
        let k1 = ed_key("kc-1");
        let server = JwksServer::start(Mode::Serve(jwks(&[&k1]))).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;

        let k2 = ed_key("kc-2");
        assert_eq!(
            trusted.verify(&token(&k2, &claims(KEYCLOAK)), NOW).await,
            Err(VerifyError::UnknownKey)
        );
        assert_eq!(server.hits(), 2, "the first unknown kid refetches");
        // Even once the IdP publishes it, further unknown kids wait for the cooldown.
        server.set(Mode::Serve(jwks(&[&k1, &k2])));
        for i in 0..20 {
            let random = token_with(&k2, &format!("guess-{i}"), "at+jwt", &claims(KEYCLOAK));
            assert_eq!(
                trusted.verify(&random, NOW).await,
                Err(VerifyError::UnknownKey)
            );
        }
        assert_eq!(
            trusted.verify(&token(&k2, &claims(KEYCLOAK)), NOW).await,
            Err(VerifyError::UnknownKey)
        );
        assert_eq!(server.hits(), 2, "no refetch within the cooldown");
        // The regular refresh still picks the key up.
        trusted.refresh_all().await;
        assert!(
            trusted
                .verify(&token(&k2, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_share_a_single_refetch() {
        let k1 = ed_key("kc-1");
        let k2 = ed_key("kc-2");
        let server = JwksServer::start(Mode::Serve(jwks(&[&k1]))).await;
        let trusted = Arc::new(started(settings(KEYCLOAK, server.source())).await);
        server.set(Mode::Serve(jwks(&[&k1, &k2])));
        let fresh = token(&k2, &claims(KEYCLOAK));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (trusted, fresh) = (Arc::clone(&trusted), fresh.clone());
                tokio::spawn(async move { trusted.verify(&fresh, NOW).await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn cooldown_expiry_allows_the_next_refetch() {
        let k1 = ed_key("kc-1");
        let server = JwksServer::start(Mode::Status(503)).await;
        let s = IssuerSettings {
            refetch_cooldown: Duration::from_millis(300),
            ..settings(KEYCLOAK, server.source())
        };
        let trusted = started(s).await;
        // The first fetch failed: nothing verifies, and that is not fatal.
        assert_eq!(trusted.key_counts(), vec![(KEYCLOAK.to_owned(), 0)]);
        let t = token(&k1, &claims(KEYCLOAK));
        assert_eq!(trusted.verify(&t, NOW).await, Err(VerifyError::UnknownKey));
        assert_eq!(server.hits(), 2);

        server.set(Mode::Serve(jwks(&[&k1])));
        assert_eq!(trusted.verify(&t, NOW).await, Err(VerifyError::UnknownKey));
        assert_eq!(server.hits(), 2, "still cooling down");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(trusted.verify(&t, NOW).await.is_ok());
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn failing_jwks_endpoint_keeps_the_last_good_keys() {
        let ed = ed_key("kc-1");
        let good = jwks(&[&ed]);
        let server = JwksServer::start(Mode::Serve(good.clone())).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        let t = token(&ed, &claims(KEYCLOAK));
        assert!(trusted.verify(&t, NOW).await.is_ok());

        let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0", "kid": "kc-1"}]});
        let failures = [
            Mode::Status(500),
            Mode::Status(404),
            Mode::Status(302),
            Mode::Status(204),
            Mode::Close,
            Mode::Serve("<html>maintenance</html>".into()),
            Mode::Serve(String::new()),
            Mode::Serve(r#"{"keys":[],"keys":[]}"#.into()),
            Mode::Serve(format!(
                r#"{{"keys":{}, "keys":[]}}"#,
                json!([ed.jwk.clone()])
            )),
            Mode::Serve(r#"{"keys":[]}"#.into()),
            Mode::Serve(r#"{"keys":"none"}"#.into()),
            Mode::Serve(r#"{"jwks":[]}"#.into()),
            Mode::Serve(oct.to_string()),
            Mode::Serve(format!("{good} trailing")),
        ];
        for (i, mode) in failures.into_iter().enumerate() {
            server.set(mode);
            let before = server.hits();
            trusted.refresh_all().await;
            assert!(server.hits() > before, "case {i} never reached the server");
            assert!(trusted.verify(&t, NOW).await.is_ok(), "case {i}");
            assert_eq!(trusted.key_counts()[0].1, 1, "case {i}");
        }
        // Recovery replaces the set again.
        let next = ed_key("kc-2");
        server.set(Mode::Serve(jwks(&[&next])));
        trusted.refresh_all().await;
        assert!(
            trusted
                .verify(&token(&next, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn hanging_jwks_endpoint_is_time_bounded_and_keeps_keys() {
        let ed = ed_key("kc-1");
        let server = JwksServer::start(Mode::Serve(jwks(&[&ed]))).await;
        let s = IssuerSettings {
            fetch_timeout: Duration::from_millis(300),
            ..settings(KEYCLOAK, server.source())
        };
        let trusted = started(s).await;
        server.set(Mode::Hang);

        let started_at = std::time::Instant::now();
        trusted.refresh_all().await;
        let took = started_at.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(
            trusted
                .verify(&token(&ed, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );

        // A request with an unknown kid waits for the hanging fetch no longer than the timeout.
        let started_at = std::time::Instant::now();
        let unknown = token(&ed_key("kc-2"), &claims(KEYCLOAK));
        assert_eq!(
            trusted.verify(&unknown, NOW).await,
            Err(VerifyError::UnknownKey)
        );
        assert!(started_at.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            trusted.inner.fetch_key_set(0).await,
            Err(IssuerError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn oversize_jwks_body_is_refused() {
        let ed = ed_key("kc-1");
        // Valid JSON with a real key, padded past the cap: only the size is wrong.
        let padded =
            json!({"keys": [ed.jwk.clone()], "pad": "x".repeat(MAX_JWKS_BYTES)}).to_string();
        for mode in [Mode::Serve(padded.clone()), Mode::Chunked(padded)] {
            let server = JwksServer::start(mode).await;
            let trusted = started(settings(KEYCLOAK, server.source())).await;
            assert_eq!(server.hits(), 1);
            assert_eq!(trusted.key_counts()[0].1, 0);
            assert!(matches!(
                trusted.inner.fetch_key_set(0).await,
                Err(IssuerError::TooLarge { .. })
            ));
        }
        // The same document under the cap is accepted, so the size was the only defect.
        let fits = json!({"keys": [ed.jwk.clone()], "pad": "x".repeat(MAX_JWKS_BYTES - 1000)});
        let server = JwksServer::start(Mode::Chunked(fits.to_string())).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        assert!(
            trusted
                .verify(&token(&ed, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn oct_and_encryption_keys_in_a_jwks_are_skipped() {
        let ed = ed_key("kc-sig");
        let secret = b"0123456789abcdef0123456789abcdef";
        let hmac = IdpKey {
            kid: "kc-hmac".into(),
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            jwk: json!({"kty": "oct", "k": b64(secret), "kid": "kc-hmac", "alg": "HS256"}),
        };
        let mut enc = rsa_key().jwk.clone();
        enc["kid"] = json!("kc-enc");
        enc["use"] = json!("enc");
        enc["alg"] = json!("RSA-OAEP");
        let set =
            json!({"keys": [hmac.jwk.clone(), enc, ed.jwk.clone(), {"kty": "EC", "crv": "P-521"}]});
        let server = JwksServer::start(Mode::Serve(set.to_string())).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        assert_eq!(trusted.key_counts()[0].1, 1);
        assert!(
            trusted
                .verify(&token(&ed, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
        // A token MACed with the published secret finds no key.
        assert_eq!(
            trusted.verify(&token(&hmac, &claims(KEYCLOAK)), NOW).await,
            Err(VerifyError::UnknownKey)
        );
        let rsa_under_enc = token_with(rsa_key(), "kc-enc", "at+jwt", &claims(KEYCLOAK));
        assert_eq!(
            trusted.verify(&rsa_under_enc, NOW).await,
            Err(VerifyError::UnknownKey)
        );
    }

    #[tokio::test]
    async fn kid_listed_twice_in_one_set_is_dropped() {
        let (a, b, other) = (ed_key("twin"), ed_key("twin"), ed_key("kc-other"));
        let server = JwksServer::start(Mode::Serve(jwks(&[&a, &b, &other]))).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        assert_eq!(trusted.key_counts()[0].1, 1);
        assert!(
            trusted
                .verify(&token(&other, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
        for twin in [&a, &b] {
            assert_eq!(
                trusted.verify(&token(twin, &claims(KEYCLOAK)), NOW).await,
                Err(VerifyError::UnknownKey)
            );
        }
    }

    #[tokio::test]
    async fn jwks_file_source_loads_at_start_and_rereads_on_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (ed_key("file-1"), ed_key("file-2"));
        let path = write_jwks(&dir, "jwks.json", &jwks(&[&k1]));
        let trusted =
            TrustedIssuers::new(vec![settings(AUTH0, JwksSource::File(path.clone()))]).unwrap();
        // No refresh needed: file sets load in `new`.
        assert!(
            trusted
                .verify(&token(&k1, &claims(AUTH0)), NOW)
                .await
                .is_ok()
        );
        // An unknown kid does not re-read files.
        std::fs::write(&path, jwks(&[&k2])).unwrap();
        assert_eq!(
            trusted.verify(&token(&k2, &claims(AUTH0)), NOW).await,
            Err(VerifyError::UnknownKey)
        );
        trusted.refresh_all().await;
        assert!(
            trusted
                .verify(&token(&k2, &claims(AUTH0)), NOW)
                .await
                .is_ok()
        );
        assert_eq!(
            trusted.verify(&token(&k1, &claims(AUTH0)), NOW).await,
            Err(VerifyError::UnknownKey)
        );
        // A broken or vanished file keeps the last good set.
        std::fs::write(&path, "{\"keys\": [").unwrap();
        trusted.refresh_all().await;
        std::fs::remove_file(&path).unwrap();
        trusted.refresh_all().await;
        assert!(
            trusted
                .verify(&token(&k2, &claims(AUTH0)), NOW)
                .await
                .is_ok()
        );
    }

    #[test]
    fn jwks_file_that_is_missing_invalid_or_oversize_fails_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let start =
            |path: PathBuf| TrustedIssuers::new(vec![settings(AUTH0, JwksSource::File(path))]);
        assert!(matches!(
            start(dir.path().join("absent.json")),
            Err(IssuerError::File { .. })
        ));
        let bad = write_jwks(&dir, "bad.json", r#"{"keys":[],"keys":[]}"#);
        assert!(matches!(start(bad), Err(IssuerError::BadKeySet { .. })));
        let empty = write_jwks(&dir, "empty.json", r#"{"keys":[]}"#);
        assert!(matches!(
            start(empty),
            Err(IssuerError::NoUsableKeys { .. })
        ));
        let k = ed_key("f");
        let big = json!({"keys": [k.jwk.clone()], "pad": "x".repeat(MAX_JWKS_BYTES)}).to_string();
        let big = write_jwks(&dir, "big.json", &big);
        assert!(matches!(start(big), Err(IssuerError::TooLarge { .. })));
        let ok = write_jwks(&dir, "ok.json", &jwks(&[&k]));
        assert!(start(ok).is_ok());
    }

    #[tokio::test]
    async fn kid_shared_by_two_issuers_is_refused_for_both() {
        let dir = tempfile::tempdir().unwrap();
        let (a_shared, b_shared) = (ed_key("shared"), ed_key("shared"));
        let a_next = ed_key("kc-next");
        let server = JwksServer::start(Mode::Serve(jwks(&[&a_shared]))).await;
        let path = write_jwks(&dir, "b.json", &jwks(&[&b_shared]));
        let trusted = TrustedIssuers::new(vec![
            settings(KEYCLOAK, server.source()),
            settings(AUTH0, JwksSource::File(path)),
        ])
        .unwrap();
        // Before the URL set arrives, the kid belongs to the file issuer alone.
        assert!(
            trusted
                .verify(&token(&b_shared, &claims(AUTH0)), NOW)
                .await
                .is_ok()
        );
        trusted.refresh_all().await;
        let hits = server.hits();
        for (key, iss) in [(&a_shared, KEYCLOAK), (&b_shared, AUTH0)] {
            assert_eq!(
                trusted.verify(&token(key, &claims(iss)), NOW).await,
                Err(VerifyError::UnknownKey),
                "{iss}"
            );
        }
        assert_eq!(
            server.hits(),
            hits,
            "an ambiguous kid is not an unknown one"
        );
        // Once one issuer stops publishing the kid, it belongs to the other again.
        server.set(Mode::Serve(jwks(&[&a_next])));
        trusted.refresh_all().await;
        assert!(
            trusted
                .verify(&token(&b_shared, &claims(AUTH0)), NOW)
                .await
                .is_ok()
        );
        assert!(
            trusted
                .verify(&token(&a_next, &claims(KEYCLOAK)), NOW)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn background_refresh_runs_at_the_interval_and_stops_on_abort() {
        let (k1, k2) = (ed_key("kc-1"), ed_key("kc-2"));
        let server = JwksServer::start(Mode::Serve(jwks(&[&k1]))).await;
        let s = IssuerSettings {
            refresh_interval: Duration::from_millis(100),
            refetch_cooldown: Duration::from_secs(3600),
            ..settings(KEYCLOAK, server.source())
        };
        let trusted = Arc::new(started(s).await);
        // Use up the cooldown, so only the timer can bring k2 in.
        let _ = trusted
            .verify(&token_with(&k1, "x", "at+jwt", &claims(KEYCLOAK)), NOW)
            .await;
        server.set(Mode::Serve(jwks(&[&k2])));
        let handle = trusted.spawn_refresh();
        let t = token(&k2, &claims(KEYCLOAK));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while trusted.key_counts()[0].1 == 0 || trusted.verify(&t, NOW).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the timer never refreshed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.abort();
        let _ = handle.await;
        let stopped_at = server.hits();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.hits(), stopped_at);
    }

    #[tokio::test]
    async fn no_issuers_refuse_every_token_as_unknown_key() {
        let trusted = TrustedIssuers::new(Vec::new()).unwrap();
        assert!(trusted.is_empty());
        let t = token(&ed_key("k"), &claims(KEYCLOAK));
        assert_eq!(trusted.verify(&t, NOW).await, Err(VerifyError::UnknownKey));
        trusted.refresh_all().await;
        // With nothing to refresh, the background task ends at once.
        Arc::new(trusted).spawn_refresh().await.unwrap();
    }

    #[tokio::test]
    async fn malformed_tokens_never_trigger_a_fetch() {
        let ed = ed_key("kc-1");
        let server = JwksServer::start(Mode::Serve(jwks(&[&ed]))).await;
        let trusted = started(settings(KEYCLOAK, server.source())).await;
        let good = token_with(&ed, "unknown", "at+jwt", &claims(KEYCLOAK));
        let (_, rest) = good.split_once('.').unwrap();
        let with_header = |h: Value| format!("{}.{rest}", b64(h.to_string().as_bytes()));
        let cases = [
            "x".repeat(8193),
            "a.b".to_owned(),
            format!("{good}."),
            with_header(json!({"alg": "EdDSA", "kid": "u", "crit": ["b64"]})),
            with_header(json!({"alg": "EdDSA", "kid": "u", "jku": "http://127.0.0.1/"})),
            with_header(json!({"alg": "EdDSA", "kid": ""})),
            with_header(json!({"alg": "EdDSA"})),
            format!("{}.{rest}", b64(br#"{"alg":"EdDSA","kid":"u","kid":"v"}"#)),
        ];
        for case in &cases {
            assert!(trusted.verify(case, NOW).await.is_err());
        }
        assert_eq!(server.hits(), 1);
    }

    #[test]
    fn invalid_settings_are_refused() {
        let url = || JwksSource::Url("https://sso.example/certs".parse().unwrap());
        let base = || settings(KEYCLOAK, url());
        let cases: Vec<IssuerSettings> = vec![
            IssuerSettings {
                issuer: String::new(),
                ..base()
            },
            IssuerSettings {
                audiences: Vec::new(),
                ..base()
            },
            IssuerSettings {
                audiences: vec![String::new()],
                ..base()
            },
            IssuerSettings {
                token_types: Vec::new(),
                ..base()
            },
            IssuerSettings {
                roles_claim: Vec::new(),
                ..base()
            },
            IssuerSettings {
                scopes_claim: vec!["a".into(), String::new()],
                ..base()
            },
            IssuerSettings {
                max_token_bytes: 0,
                ..base()
            },
            IssuerSettings {
                max_token_lifetime: Duration::ZERO,
                ..base()
            },
            IssuerSettings {
                refresh_interval: Duration::ZERO,
                ..base()
            },
            IssuerSettings {
                refetch_cooldown: Duration::ZERO,
                ..base()
            },
            IssuerSettings {
                fetch_timeout: Duration::ZERO,
                ..base()
            },
            IssuerSettings {
                source: JwksSource::Url("ftp://sso.example/certs".parse().unwrap()),
                ..base()
            },
            IssuerSettings {
                source: JwksSource::Url("/certs".parse().unwrap()),
                ..base()
            },
        ];
        for (i, s) in cases.into_iter().enumerate() {
            assert!(
                matches!(
                    TrustedIssuers::new(vec![s]),
                    Err(IssuerError::Invalid { .. })
                ),
                "case {i}"
            );
        }
        assert!(matches!(
            TrustedIssuers::new(vec![base(), base()]),
            Err(IssuerError::DuplicateIssuer { .. })
        ));
        let local = JwksSource::Url("http://127.0.0.1:1/certs".parse().unwrap());
        assert!(TrustedIssuers::new(vec![settings(KEYCLOAK, local)]).is_ok());
    }

    #[test]
    fn loopback_hosts_are_recognised_for_the_cleartext_warning() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1",
            "[::2]",
            "localhost.example.com",
            "0.0.0.0",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn trusted_issuer_needs_exactly_one_key_source_and_an_audience() {
        let base = "[[auth.trusted_issuers]]\nissuer = \"https://idp\"\naudiences = [\"api\"]\n";
        let e = err(base);
        assert!(e.contains("exactly one of jwks_url and jwks_file"), "{e}");
        let both = format!("{base}jwks_url = \"https://idp/certs\"\njwks_file = \"/x\"\n");
        assert!(err(&both).contains("exactly one"));
        let e = err(&format!("{base}jwks_url = \"ftp://idp/certs\"\n"));
        assert!(e.contains("jwks_url"), "{e}");
        let e = err(&base
            .replace("[\"api\"]", "[]")
            .replace("issuer =", "jwks_file = \"/x\"\nissuer ="));
        assert!(e.contains("audiences"), "{e}");
        let c = Config::from_toml(&format!(
            "{base}jwks_file = \"/x\"\nroles_claim = \"realm_access.roles\"\n"
        ))
        .unwrap();
        let t = &c.auth.trusted_issuers[0];
        assert_eq!(t.roles_claim, vec!["realm_access", "roles"]);
        assert_eq!(t.leeway, c.auth.leeway);
    }
}
