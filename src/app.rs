//! Assembles a running gateway from a validated config: store, auth service, pipeline, listener,
//! background tasks (key reload on SIGHUP, pruning), and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::service::{AuthService, ServiceError};
use crate::config::Config;
use crate::gateway::{BuildError, Gateway};
use crate::server::{self, Limits, ServerError};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// How often expired revocations and cache entries are dropped from memory.
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
}

/// Installs the one rustls crypto provider (aws-lc-rs); harmless when already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Opens the configured embedded store.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    SqliteStore::open(&config.store.path)
        .map(|s| Arc::new(s) as Arc<dyn Store>)
        .map_err(|source| AppError::Store {
            path: config.store.path.display().to_string(),
            source,
        })
}

/// Builds the pipeline (store, keys, hashing pool, upstream clients).
pub async fn build(config: Config) -> Result<Arc<Gateway>, AppError> {
    install_crypto_provider();
    let store = open_store(&config)?;
    let auth = Arc::new(AuthService::new(config.auth.clone(), store).await?);
    Ok(Arc::new(Gateway::new(Arc::new(config), auth)?))
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

/// Serves `gateway` on `listener` until `shutdown` resolves.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let config = gateway.config().clone();
    let tls = match &config.server.tls {
        Some(files) => Some(server::tls_config(&files.cert, &files.key)?),
        None => None,
    };
    let background = spawn_background(gateway.clone());
    let issuer_refresh = gateway.auth().trusted_issuers().spawn_refresh();
    let handler = move |req, conn| gateway.clone().handle(req, conn);
    let result = server::run(listener, tls, limits(&config), handler, shutdown).await;
    background.abort();
    issuer_refresh.abort();
    Ok(result?)
}

/// Binds the configured address and serves until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), AppError> {
    let addr = config.server.listen;
    let gateway = build(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    let scheme = if gateway.config().server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "gatehouse listening on {scheme}://{}",
        listener.local_addr().unwrap_or(addr)
    );
    serve(gateway, listener, shutdown_signal()).await
}

/// Pruning on a timer; on Unix, SIGHUP reloads the signing keys.
fn spawn_background(gateway: Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut prune = tokio::time::interval(PRUNE_EVERY);
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
                _ = prune.tick() => gateway.auth().prune().await,
                _ = hup => match gateway.auth().reload_keys() {
                    Ok(()) => tracing::info!("signing keys reloaded"),
                    Err(e) => tracing::error!(error = %e, "key reload failed; keeping the old keys"),
                },
            }
        }
    })
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
