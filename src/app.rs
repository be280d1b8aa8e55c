//! Assembles a running gateway from a validated config and keeps it current: store, auth
//! service, pipeline, listeners, hot reload (SIGHUP and config-file changes), the admin listener,
//! background pruning and graceful shutdown.
//!
//! A reload takes only a settled file that changes nothing a restart must apply, and passes
//! the same checks as `serve` ([`reload`], [`preflight`]).
//!
//! The pipeline lives behind an `ArcSwap`: each request takes the current [`Gateway`] once, so a
//! reload never changes the configuration under a request in flight.

pub mod preflight;
pub mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::revocation::FollowSchedule;
use crate::auth::service::{AuthService, ServiceError};
use crate::body::Body;
use crate::body::with_json;
use crate::config::Config;
use crate::config::value::ConfigError;
use crate::gateway::{BuildError, Gateway};
use crate::server::{self, CertStore, ConnInfo, Limits, ServerError};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreConfig, StoreError};

/// How often expired revocations, cache entries, limiter keys and store rows are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("opening the store {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error(transparent)]
    Auth(#[from] ServiceError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// Not a source: the message holds the whole list already.
    #[error("the configuration cannot run: {0}")]
    Preflight(preflight::Problems),
    #[error("reload refused: {0}")]
    Reload(#[from] reload::ReloadError),
}

/// Installs the one rustls crypto provider (aws-lc-rs); harmless when already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Opens the configured store: the SQLite file, or the PostgreSQL database (connected and
/// migrated; an unreachable server is an error here, bounded by the connect timeout).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    open_store_with(config, true).await
}

/// Opens the configured store; with `create` false a SQLite file that does not exist is an
/// error naming it (the operator's commands never create a store).
pub async fn open_store_with(config: &Config, create: bool) -> Result<Arc<dyn Store>, AppError> {
    let opened = match &config.store {
        StoreConfig::Sqlite { path } if create => {
            SqliteStore::open(path).map(|s| Arc::new(s) as Arc<dyn Store>)
        }
        StoreConfig::Sqlite { path } => {
            SqliteStore::open_existing(path).map(|s| Arc::new(s) as Arc<dyn Store>)
        }
        StoreConfig::Postgres(pg) => PgStore::open(pg)
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>),
    };
    opened.map_err(|source| AppError::Store {
        path: config.store.to_string(),
        source,
    })
}

/// Builds a pipeline (keys, hashing pool, upstream clients) on an open store. On a reload,
/// `running` is the one it replaces, whose long-lived state carries over: limiter counters,
/// revocations, verification verdicts that still hold, upstream pools of unchanged routes.
async fn build_gateway(
    config: Config,
    store: Arc<dyn Store>,
    running: Option<&Gateway>,
) -> Result<Gateway, AppError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let previous = running.map(|g| g.auth().as_ref());
    let auth = Arc::new(AuthService::new(config.auth.clone(), store, previous).await?);
    Ok(Gateway::new(Arc::new(config), auth, running)?)
}

/// The running gateway: the current pipeline and what a reload needs.
pub struct App {
    current: ArcSwap<Gateway>,
    store: Arc<dyn Store>,
    /// The file the configuration came from; `None` when built from text (tests, demo).
    source: Option<PathBuf>,
    certs: Option<Arc<CertStore>>,
    /// The trusted issuers' background JWKS refresh of the current pipeline.
    issuer_refresh: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held by the reload under way: two at once (SIGHUP during a file-change reload) could
    /// swap in the older file last.
    reloading: tokio::sync::Mutex<()>,
    /// SIGHUP, listened to from the start: one arriving before the background task runs must
    /// reload, not end the process (the default action) nor be lost.
    #[cfg(unix)]
    hangup: std::sync::Mutex<Option<tokio::signal::unix::Signal>>,
}

impl App {
    /// Opens the store and builds the first pipeline.
    pub async fn new(config: Config, source: Option<PathBuf>) -> Result<Arc<App>, AppError> {
        install_crypto_provider();
        crate::metrics::install();
        let store = open_store(&config).await?;
        let certs = match &config.server.tls {
            Some(files) => Some(CertStore::load(&files.cert, &files.key)?),
            None => None,
        };
        let gateway = build_gateway(config, store.clone(), None).await?;
        crate::metrics::routes_added(route_names(&gateway));
        Ok(Arc::new(App {
            current: ArcSwap::from_pointee(gateway),
            store,
            source,
            certs,
            issuer_refresh: std::sync::Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            #[cfg(unix)]
            hangup: std::sync::Mutex::new(hangup_signal()),
        }))
    }

    /// The pipeline new requests get.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Re-reads the config file (and the keys and TLS certificate it names) and swaps in a new
    /// pipeline. On any error the running one stays and the error is returned.
    pub async fn reload(&self) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(changes) => {
                crate::metrics::reload("ok");
                changes.log();
            }
            Err(e) => {
                let outcome = match e {
                    AppError::Reload(e) => e.outcome(),
                    _ => "invalid",
                };
                crate::metrics::reload(outcome);
                tracing::error!(error = %e, "reload refused; keeping the running configuration");
            }
        }
        result.map(|_| ())
    }

    async fn try_reload(&self) -> Result<reload::Changes, AppError> {
        let config = match &self.source {
            Some(path) => reload::load_settled(path).await?,
            None => (*self.current().config().as_ref()).clone(),
        };
        let running = self.current();
        reload::refuse_restart_only(running.config(), &config)?;
        preflight::check(&config).map_err(AppError::Preflight)?;
        let gateway = build_gateway(config, self.store.clone(), Some(&running)).await?;
        if let Some(certs) = &self.certs {
            certs.reload()?;
        }
        let gateway = Arc::new(gateway);
        if self.issuer_refresh_running() {
            self.restart_issuer_refresh(&gateway);
        }
        // Route names are required and unique, so the change log's routes are the metrics'.
        let changes = reload::Changes::between(&running, &gateway);
        self.current.store(gateway);
        crate::metrics::routes_added(changes.routes_added.iter().map(String::as_str));
        crate::metrics::routes_removed(changes.routes_removed.iter().map(String::as_str));
        Ok(changes)
    }

    fn issuer_refresh_running(&self) -> bool {
        self.issuer_refresh
            .lock()
            .map(|h| h.is_some())
            .unwrap_or(false)
    }

    /// Runs `gateway`'s issuer refresh, stopping the previous pipeline's.
    fn restart_issuer_refresh(&self, gateway: &Gateway) {
        let handle = gateway.auth().trusted_issuers().spawn_refresh();
        if let Ok(mut slot) = self.issuer_refresh.lock()
            && let Some(old) = slot.replace(handle)
        {
            old.abort();
        }
    }

    fn stop_issuer_refresh(&self) {
        if let Ok(mut slot) = self.issuer_refresh.lock()
            && let Some(old) = slot.take()
        {
            old.abort();
        }
    }

    /// Readiness: a configuration is loaded with its keys (it could not exist otherwise) and the
    /// store answers.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Serves the public listener until `shutdown` resolves.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AppError> {
        let config = self.current().config().clone();
        let tls = match &self.certs {
            Some(certs) => Some(certs.server_config()?),
            None => None,
        };
        let background = tokio::spawn(background(self.clone()));
        self.restart_issuer_refresh(&self.current());
        let app = self.clone();
        let handler = move |req, conn| app.current().handle(req, conn);
        let result = server::run(listener, tls, limits(&config), handler, shutdown).await;
        background.abort();
        self.stop_issuer_refresh();
        // The last requests' spans may still wait for their batch: send them now, within the
        // shutdown grace (the requests themselves had theirs).
        self.current()
            .flush_spans(config.server.shutdown_grace)
            .await;
        Ok(result?)
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown` resolves.
    pub async fn serve_admin(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AppError> {
        let app = self.clone();
        let handler = move |req: Request<Incoming>, _conn: ConnInfo| {
            let app = app.clone();
            async move { app.admin(req).await }
        };
        let limits = Limits {
            max_connections: 64,
            ..Limits::default()
        };
        Ok(server::run(listener, None, limits, handler, shutdown).await?)
    }

    async fn admin(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return crate::error::plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the admin listener answers GET and HEAD",
            );
        }
        match req.uri().path() {
            "/healthz" => with_json(StatusCode::OK, json!({"status": "alive"})),
            "/readyz" => match self.ready().await {
                Ok(()) => with_json(StatusCode::OK, json!({"status": "ready"})),
                Err(e) => {
                    tracing::warn!(error = %e, "not ready");
                    with_json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "not ready", "reason": "store unavailable"}),
                    )
                }
            },
            "/metrics" => match crate::metrics::render() {
                Some(text) => {
                    let mut r = Response::new(crate::body::full(text));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                None => crate::error::plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metrics_unavailable",
                    "another metrics recorder is installed",
                ),
            },
            _ => crate::error::plain(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        crate::metrics::routes_removed(route_names(&self.current.load()));
    }
}

fn route_names(gateway: &Gateway) -> impl Iterator<Item = &str> {
    gateway.config().routes.iter().map(|r| r.name.as_str())
}

pub fn limits(config: &Config) -> Limits {
    let s = &config.server;
    Limits {
        max_connections: s.max_connections,
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
        header_read_timeout: s.header_read_timeout,
        tls_handshake_timeout: s.tls_handshake_timeout,
        idle_timeout: s.idle_timeout,
        h2_max_concurrent_streams: s.h2_max_concurrent_streams,
        h2_max_header_list_bytes: s.max_header_bytes as u32,
        shutdown_grace: s.shutdown_grace,
    }
}

/// Binds the configured listeners and serves until SIGTERM or Ctrl-C.
pub async fn run(config: Config, source: Option<PathBuf>) -> Result<(), AppError> {
    preflight::check(&config).map_err(AppError::Preflight)?;
    let addr = config.server.listen;
    let admin_addr = config.admin.listen;
    let backlog = config.server.listen_backlog;
    let app = App::new(config, source).await?;
    let listener = server::bind(addr, backlog).map_err(|source| AppError::Bind { addr, source })?;
    let scheme = if app.certs.is_some() { "https" } else { "http" };
    tracing::info!(
        "gatehouse listening on {scheme}://{}",
        listener.local_addr().unwrap_or(addr)
    );
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match admin_addr {
        Some(addr) => {
            let admin_listener =
                server::bind(addr, backlog).map_err(|source| AppError::Bind { addr, source })?;
            tracing::info!("admin listening on http://{addr} (/healthz, /readyz, /metrics)");
            let app = app.clone();
            Some(tokio::spawn(async move {
                let stopped = async {
                    let _ = admin_stopped.await;
                };
                if let Err(e) = app.serve_admin(admin_listener, stopped).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            }))
        }
        None => None,
    };
    let result = app.serve(listener, shutdown_signal()).await;
    let _ = stop_admin.send(());
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    result
}

/// Pruning on a timer; following the store's change feed (on a timer, and at once when the
/// store announces a change); reload on SIGHUP and, when enabled,
/// on a change of the config file.
async fn background(app: Arc<App>) {
    #[cfg(unix)]
    let mut hangup = app
        .hangup
        .lock()
        .ok()
        .and_then(|mut h| h.take())
        .or_else(hangup_signal);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut follow = FollowSchedule::new(&*app.store);
    let mut follow_failing = false;
    let admin = app.current().config().admin.clone();
    let mut watch = tokio::time::interval(admin.watch_interval);
    let watched = app.source.clone().filter(|_| admin.watch_config);
    let mut last_seen = watched.as_deref().and_then(modified);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = prune.tick() => app.current().auth().prune().await,
            _ = follow.next() => follow_changes(&app, &mut follow_failing).await,
            _ = hup => {
                tracing::info!("SIGHUP: reloading");
                let _ = app.reload().await;
            }
            _ = watch.tick(), if watched.is_some() => {
                let now = watched.as_deref().and_then(modified);
                if now != last_seen {
                    last_seen = now;
                    tracing::info!("config file changed: reloading");
                    let _ = app.reload().await;
                }
            }
        }
    }
}

/// Catches up with the store's change feed (revocations and cuts made by the CLI or another
/// gateway), then rebuilds the signing keys if the feed or the clock says so. A failing store is
/// logged once until it answers again; meanwhile what was already mirrored is still enforced.
async fn follow_changes(app: &App, failing: &mut bool) {
    let auth = app.current().auth().clone();
    let followed = auth.authenticator().follow().await;
    auth.follow_keys().await;
    match followed {
        Ok(_) => {
            if std::mem::take(failing) {
                tracing::info!("following the store's changes again");
            }
        }
        Err(e) => {
            if !std::mem::replace(failing, true) {
                tracing::warn!(
                    error = %e,
                    "cannot read the store's changes: revocations made elsewhere wait for it"
                );
            }
        }
    }
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
}
