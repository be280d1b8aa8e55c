//! Listeners: the accept loop, TLS handshakes, per-connection limits, idle closing and graceful shutdown.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests bind `127.0.0.1:0` and
//! stop the server cleanly; [`bind`] makes the gateway's listeners with the configured accept
//! queue (`listen_backlog`). Every wait a client can cause has a limit:
//!
//! | limit | HTTP/1.1 | HTTP/2 |
//! |---|---|---|
//! | `max_connections` | one permit per TCP connection, held by the socket itself, so an upgraded (WebSocket) connection keeps its permit until the tunnel closes; over the cap the new socket is closed at once | same |
//! | `max_header_bytes` | hyper's read buffer (`max_buf_size`, at least 8 KiB): a request head that does not fit gets `431` and the connection closes | not used; see `h2_max_header_list_bytes` |
//! | `max_headers` | more header fields than this gets `431` | not used; the header list size bounds HTTP/2 |
//! | `header_read_timeout` | runs whenever the connection waits for a request head, so it cuts slow-loris heads **and** closes idle keep-alive connections (whichever of this and `idle_timeout` is shorter wins); plaintext: the connection's own timer, from the end of the previous request ([`drive_parkable`]); TLS: hyper's | bounds the wait for the first request (see below) |
//! | `tls_handshake_timeout` | a TLS handshake that has not finished in time is dropped | same |
//! | `idle_timeout` | a connection with no request in flight for this long is shut down gracefully | same: `GOAWAY`, streams in flight finish |
//! | `h2_max_concurrent_streams` | — | advertised `SETTINGS_MAX_CONCURRENT_STREAMS` |
//! | `h2_max_header_list_bytes` | — | a larger header list (RFC 9113 §6.5.2 size) gets `431`; `SETTINGS_MAX_HEADER_LIST_SIZE` advertises twice it (see [`H2_HEADER_LIST_HEADROOM`]), which also bounds CONTINUATION floods |
//! | `shutdown_grace` | in-flight requests finish, then the connection closes | `GOAWAY`, in-flight streams finish |
//!
//! Also fixed here: HTTP/2 pending-accept and local-error reset limits (rapid-reset floods) and an
//! HTTP/2 keep-alive ping that drops peers that stop answering.
//!
//! Idle closing: hyper has no idle timeout, so each connection counts the requests in flight (from
//! the handler call until the response body is dropped) and a watchdog calls `graceful_shutdown`
//! once none has been in flight for `idle_timeout`. Until the first request arrives the watchdog
//! uses `min(idle_timeout, header_read_timeout)`, which also cuts a stalled HTTP/2 preface (the
//! protocol sniffing of hyper-util has no timer of its own). A connection that ignores the graceful
//! close stays for at most one more idle period before it is dropped.
//!
//! Protocol choice: without TLS, the connection's first bytes are read here: the HTTP/2 preface
//! (prior knowledge) selects HTTP/2, anything else HTTP/1.1, and the bytes are replayed to hyper.
//! The wait for them is bounded like the wait for a first request. With TLS, ALPN decides: `h2` is
//! served as HTTP/2 only; `http/1.1` (or no ALPN) is served by hyper-util's auto builder with
//! upgrades enabled, and an HTTP/2 request sneaking in there is answered `505`.
//!
//! Parking (plaintext HTTP/1.1 only): a connection with no request in flight for [`PARK_DELAY`]
//! ends its hyper connection without closing the socket (`graceful_shutdown` on an idle hyper
//! connection closes it at once; the socket's `poll_shutdown` is skipped while parking) and takes
//! the socket and any bytes hyper had read but not parsed back with `into_parts`. hyper's buffers
//! and connection state (most of the ~31 KiB an unparked connection holds) are freed; the socket
//! then waits alone for readability, until the idle limit that applied (`min(idle_timeout,
//! header_read_timeout)` from the end of the last request) or shutdown closes it. The next bytes
//! get a fresh hyper connection, with unparsed bytes replayed first, in order. A request head
//! begun before a park must still complete within `header_read_timeout` of the moment the
//! connection went idle, and a connection is parked at most once between two requests, so a slow
//! client cannot use parks to stretch its head. An upgraded connection is never parked: hyper
//! hands its socket to the tunnel. Busy keep-alive connections never wait `PARK_DELAY` and pay
//! nothing. TLS connections are not parked: the rustls session (and its buffers) must live on
//! with the socket, so only hyper's part could be freed.
//!
//! Answers the listener gives itself, without calling the handler, get what the pipeline gives
//! its own: a fresh `X-Request-Id`, an access-log line (route `-`, `rejected` naming the reason)
//! and a count (`gatehouse_listener_refusals_total`, and the unrouted route's requests). Those are
//! hyper's HTTP/1 answers to request heads it refuses (400, 414, 431; found on their way to the
//! socket, see [`Stamped`]: hyper has no hook for them) and the `505` above.
//!
//! Graceful shutdown signals every connection through a watch channel and calls hyper's
//! `graceful_shutdown` on it. hyper-util's `GracefulShutdown` is not used: its `watch` takes the
//! connection by value and its trait is sealed, so the same connection could no longer be closed by
//! the idle watchdog.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::body::{self, Body, BoxError};

/// hyper panics on a smaller HTTP/1 buffer.
const MIN_HTTP1_BUF_BYTES: usize = 8192;
/// Streams a client may open and reset before the server accepted them (rapid reset, CVE-2023-44487).
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset because of client protocol errors before it drops the connection.
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 100;
/// The h2 library answers a header list over its own limit itself (`431` and a stream reset) before
/// any service sees the request: no request id, access-log line or count, and no hook. It gets
/// this many times `h2_max_header_list_bytes`, so that a list over the configured limit, up to
/// this multiple, reaches the listener's own check, which answers `431` with all three. Larger
/// lists are still the library's (and past four times its limit it ends the connection).
const H2_HEADER_LIST_HEADROOM: u32 = 2;
/// How often an HTTP/2 peer is pinged to prove it is still there.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long an HTTP/2 peer has to answer a ping.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a plaintext HTTP/1 connection may have no request in flight before it is parked:
/// hyper's connection and buffers are dropped and only the socket waits. A busy keep-alive client
/// never waits this long between requests, so it never pays for a new hyper connection; a client
/// that does pays a park and a fresh connection per request (about 5 µs of CPU: 40.6 against
/// 35.3 µs per request on the public route, 256 connections pausing 100 ms between requests).
/// Shorter means less memory held by connections that have just gone idle: with ~4,000 new
/// connections a second each going idle after one request, 10,000 of them held 109 MiB RSS with
/// 250 ms and 66-69 MiB with 50 ms (about 31 KiB each while unparked). With mimalloc as the
/// binary's allocator: 60 MiB at 50 ms, 99 MiB at 250 ms, 138 MiB at 1 s, two seconds after the
/// last connection opened (freed pages are returned lazily). nginx frees an idle keep-alive
/// connection's buffers at once; 50 ms keeps back-to-back requests off the park path.
const PARK_DELAY: Duration = Duration::from_millis(50);
/// Pause after an accept error that is not about one connection (EMFILE, ENFILE, ENOBUFS...).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "connection limit reached" warning per this period, so a flood cannot flood the log.
const REJECT_LOG_PERIOD: Duration = Duration::from_secs(1);

/// Connection and protocol limits for one listener. `Default` uses the `DEFAULT_*` constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Concurrently open client connections, upgraded tunnels included.
    pub max_connections: usize,
    /// Largest HTTP/1.1 request head (raised to 8 KiB if lower: hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// Most HTTP/1.1 request header fields.
    pub max_headers: usize,
    /// Time to receive a complete HTTP/1.1 request head; also bounds waiting for the first request.
    pub header_read_timeout: Duration,
    /// Time to complete a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub h2_max_header_list_bytes: u32,
    /// Time in-flight requests get to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    /// The configuration's defaults ([`crate::config`] defines each once).
    fn default() -> Self {
        use crate::config as c;
        Self {
            max_connections: c::DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: c::DEFAULT_MAX_HEADER_BYTES,
            max_headers: c::DEFAULT_MAX_HEADERS,
            header_read_timeout: c::DEFAULT_HEADER_READ_TIMEOUT,
            tls_handshake_timeout: c::DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            idle_timeout: c::DEFAULT_IDLE_TIMEOUT,
            h2_max_concurrent_streams: c::DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            // The gateway bounds HTTP/2 header lists with the same number as HTTP/1 heads.
            h2_max_header_list_bytes: c::DEFAULT_MAX_HEADER_BYTES as u32,
            shutdown_grace: c::DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// What the handler learns about the connection a request came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The socket peer: the only client address the gateway can trust on its own.
    pub peer: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate chain file is missing, unreadable or not PEM.
    #[error("cannot read the TLS certificate chain {path}: {source}")]
    CertificateFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate chain file holds no `CERTIFICATE` block.
    #[error("the TLS certificate file {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    /// The key file is missing, unreadable, not PEM, or holds no private key.
    #[error("cannot read a TLS private key from {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key file may be read or written by group or others.
    #[error(
        "the TLS private key {path} is accessible by group or others (mode {mode:o}); chmod 600 it"
    )]
    InsecureKey { path: PathBuf, mode: u32 },
    /// rustls refused the pair (unsupported key type, key not matching the certificate...).
    #[error("the TLS certificate {cert} and key {key} are not usable together: {source}")]
    CertifiedKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The listener could not report its own address.
    #[error("cannot read the listener's local address: {0}")]
    LocalAddr(#[source] io::Error),
}

/// The server certificate and key, swappable while the listener runs: new handshakes use the
/// newest pair, established connections keep theirs.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: arc_swap::ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1), checking that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, ServerError> {
        // An explicit provider, so that a second provider compiled into the tree cannot make the
        // process-wide default ambiguous.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certified = read_certified_key(cert, key, &provider)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: arc_swap::ArcSwap::from_pointee(certified),
        }))
    }

    /// Re-reads both files; on any error the previous pair stays in use.
    pub fn reload(&self) -> Result<(), ServerError> {
        let certified = read_certified_key(&self.cert, &self.key, &self.provider)?;
        self.current.store(Arc::new(certified));
        Ok(())
    }

    /// A rustls configuration serving this store's current pair, with ALPN `h2` then
    /// `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| ServerError::CertifiedKey {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, ServerError> {
    let chain = read_chain(cert)?;
    let private_key = read_private_key(key)?;
    certify(cert, key, chain, private_key, provider)
}

/// Every problem of a TLS pair as [`CertStore::load`] would meet it, each file checked even
/// when the other one fails (for `check-config`'s list), the pair's match when both read.
pub fn tls_problems(cert: &Path, key: &Path) -> Vec<ServerError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    match (read_chain(cert), read_private_key(key)) {
        (Ok(chain), Ok(private_key)) => certify(cert, key, chain, private_key, &provider)
            .err()
            .into_iter()
            .collect(),
        (chain, private_key) => [chain.err(), private_key.err()]
            .into_iter()
            .flatten()
            .collect(),
    }
}

fn read_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|blocks| blocks.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ServerError::CertificateFile {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(ServerError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    Ok(chain)
}

fn read_private_key(key: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    let meta = std::fs::metadata(key).map_err(|e| ServerError::KeyFile {
        path: key.to_owned(),
        source: rustls_pki_types::pem::Error::Io(e),
    })?;
    if let Some(mode) = crate::auth::keys::exposed_mode(&meta) {
        return Err(ServerError::InsecureKey {
            path: key.to_owned(),
            mode,
        });
    }
    PrivateKeyDer::from_pem_file(key).map_err(|source| ServerError::KeyFile {
        path: key.to_owned(),
        source,
    })
}

/// The pair as rustls serves it; refused when the key does not belong to the certificate.
fn certify(
    cert: &Path,
    key: &Path,
    chain: Vec<CertificateDer<'static>>,
    private_key: PrivateKeyDer<'static>,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, ServerError> {
    CertifiedKey::from_der(chain, private_key, provider).map_err(|source| {
        ServerError::CertifiedKey {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        }
    })
}

/// Loads a rustls server configuration from PEM files (see [`CertStore::load`]).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    CertStore::load(cert, key)?.server_config()
}

/// Where Linux keeps the cap it silently puts on every `listen(2)` backlog.
const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// Binds a listener whose accept queue holds `backlog` connections, lowered to the kernel's
/// `net.core.somaxconn` when that is smaller (the kernel would lower it anyway; this way the log
/// says so). tokio's `TcpListener::bind` always asks for 128, so a burst of new connections beyond
/// that waits a SYN retransmit (1 s) however fast the accept loop is.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let somaxconn = read_somaxconn(Path::new(SOMAXCONN_PATH));
    let effective = effective_backlog(backlog, somaxconn);
    if effective < backlog {
        warn!(
            %addr,
            listen_backlog = backlog,
            somaxconn = effective,
            "listen_backlog is above net.core.somaxconn; the kernel's cap applies"
        );
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As tokio's `bind` does: a restarted gateway can take its port back at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(effective)?;
    debug!(%addr, backlog = effective, "listener bound");
    Ok(listener)
}

/// `net.core.somaxconn`, or `None` when it cannot be read (not Linux, no /proc): then the
/// configured backlog is used as it is, and never fails the start.
fn read_somaxconn(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn effective_backlog(configured: u32, somaxconn: Option<u32>) -> u32 {
    // A zero cap (never seen) would make every connect wait; keep at least one slot.
    somaxconn.map_or(configured, |cap| configured.min(cap.max(1)))
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets in-flight requests
/// finish for up to `limits.shutdown_grace` before returning. Connections still open after the
/// grace are dropped. WebSocket tunnels already handed to the handler's tasks are not waited for.
pub async fn run<H, F>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError>
where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let local = listener.local_addr().map_err(ServerError::LocalAddr)?;
    let shared = Arc::new(Shared::new(local, tls, &limits));
    serve(listener, shared, limits, handler, shutdown).await;
    Ok(())
}

async fn serve<H, F>(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let local = shared.local;
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut rejections = Rejections::default();
    let handler = Arc::new(handler);
    let mut shutdown = pin!(shutdown);
    info!(%local, tls = shared.tls.is_some(), "listening");

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                report_connection_task(joined);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(serve_connection(
                            stream,
                            peer,
                            permit,
                            shared.clone(),
                            handler.clone(),
                            stop_rx.clone(),
                        ));
                    }
                    Err(_) => {
                        drop(stream);
                        rejections.record(peer, limits.max_connections);
                    }
                },
                Err(error) if is_about_one_connection(&error) => {
                    debug!(%error, "accept failed for one connection");
                }
                Err(error) => {
                    warn!(%error, backoff = ?ACCEPT_ERROR_BACKOFF, "accept failed; backing off");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            },
        }
    }

    drop(listener);
    info!(
        open = connections.len(),
        grace = ?limits.shutdown_grace,
        "shutting down: no longer accepting, draining connections"
    );
    stop_tx.send_replace(());
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while let Some(joined) = connections.join_next().await {
            report_connection_task(joined);
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            remaining = connections.len(),
            "shutdown grace expired; dropping the remaining connections"
        );
        connections.shutdown().await;
    }
    info!("server stopped");
}

/// Accept errors caused by one client (it reset before we accepted it) need no backoff; resource
/// exhaustion does, or the loop would spin on EMFILE.
fn is_about_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

fn report_connection_task(joined: Result<(), JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        error!(%error, "a connection task panicked");
    }
}

/// Counts connections refused at the cap and logs them at a bounded rate.
#[derive(Default)]
struct Rejections {
    total: u64,
    last_logged: Option<Instant>,
}

impl Rejections {
    fn record(&mut self, peer: SocketAddr, max_connections: usize) {
        self.total += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= REJECT_LOG_PERIOD)
        {
            self.last_logged = Some(now);
            warn!(
                %peer,
                max_connections,
                rejected_total = self.total,
                "connection limit reached; closing new connections"
            );
        }
    }
}

/// Everything a connection task needs that does not change per connection.
struct Shared {
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
    /// TLS `http/1.1`: sniffs the HTTP/2 preface (so that it can be refused); upgrades enabled.
    auto: auto::Builder<TokioExecutor>,
    /// HTTP/2: TLS connections that negotiated `h2`, and plaintext ones that sent the preface.
    h2_only: auto::Builder<TokioExecutor>,
    /// Plaintext HTTP/1.1: one hyper connection per stretch between two parks.
    http1: http1::Builder,
    /// Plaintext HTTP/1 connections parked so far.
    parks: AtomicU64,
    h2_max_header_list_bytes: u32,
    header_read_timeout: Duration,
    tls_handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Shared {
    fn new(local: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>, limits: &Limits) -> Self {
        let auto = protocol_builder(limits);
        Self {
            local,
            tls: tls.map(TlsAcceptor::from),
            h2_only: auto.clone().http2_only(),
            auto,
            http1: http1_builder(limits),
            parks: AtomicU64::new(0),
            h2_max_header_list_bytes: limits.h2_max_header_list_bytes,
            header_read_timeout: limits.header_read_timeout,
            tls_handshake_timeout: limits.tls_handshake_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    fn idle_limits(&self) -> IdleLimits {
        IdleLimits {
            first: self.idle_timeout.min(self.header_read_timeout),
            after: self.idle_timeout,
        }
    }
}

fn protocol_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HTTP1_BUF_BYTES))
        .max_headers(limits.max_headers)
        .keep_alive(true)
        .half_close(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(
            limits
                .h2_max_header_list_bytes
                .saturating_mul(H2_HEADER_LIST_HEADROOM),
        )
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// The same HTTP/1 settings as [`protocol_builder`], for the plaintext connections served
/// without hyper-util's auto builder, but for `header_read_timeout`: [`drive_parkable`]
/// enforces it on the connection's one timer. hyper's own header timer boxes a new sleep, reads
/// the clock and registers a timer for every request head it waits for (1.5k of the public
/// route's 42.2k instructions per request, BENCHMARKS.md, issue 19); the connection's timer is
/// already armed nearer (the park) whenever a head is awaited, so the bound costs nothing more.
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(MIN_HTTP1_BUF_BYTES))
        .max_headers(limits.max_headers)
        .keep_alive(true)
        .half_close(false);
    builder
}

/// Which HTTP version a connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// TLS with ALPN `http/1.1` or none, or plaintext without the HTTP/2 preface. An HTTP/2
    /// request on it is refused: the auto builder used for TLS would still sniff the preface.
    Http1,
    /// TLS with ALPN `h2`, or plaintext that opened with the HTTP/2 preface (prior knowledge).
    Http2,
}

async fn serve_connection<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    handler: Arc<H>,
    mut stop: watch::Receiver<()>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let local = stream.local_addr().unwrap_or(shared.local);
    let io = Permitted {
        io: stream,
        _permit: permit,
        _open: crate::metrics::OpenConnection::new(),
    };
    // Every phase but the parked one is boxed: the task's own future, allocated at its largest
    // for the connection's whole life, holds only what a parked connection needs.
    if shared.tls.is_some() {
        Box::pin(serve_tls(io, peer, local, shared, handler, stop)).await;
        return;
    }
    let info = ConnInfo {
        peer,
        local,
        tls: false,
    };
    let activity = Arc::new(Activity::new());
    let opening = open_plaintext(io, info, &shared, &activity, &mut stop);
    let Some((mut io, protocol)) = Box::pin(opening).await else {
        return;
    };
    if protocol == Protocol::Http2 {
        let serving = serve_http(io, info, protocol, &shared, handler, activity, stop);
        Box::pin(serving).await;
        return;
    }

    // Plaintext HTTP/1.1: serve until parked, wait alone, serve again.
    let mut parked_after = None;
    loop {
        let session = serve_until_parked(
            io,
            info,
            &shared,
            &handler,
            &activity,
            parked_after,
            &mut stop,
        );
        let Some(parked) = Box::pin(session).await else {
            return;
        };
        io = parked;
        shared.parks.fetch_add(1, Ordering::Relaxed);
        parked_after = Some(activity.started());
        if io.replay.is_empty() {
            let limit = activity.idle_limit(shared.idle_limits());
            let close_at = activity.idle_start() + limit.min(shared.header_read_timeout);
            if !park(&io.stream.io.io, close_at, &mut stop).await {
                return;
            }
        }
    }
}

/// What a plain-HTTP request on the TLS port is told (as nginx does), then the connection closes.
const PLAIN_HTTP_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 55\r\n\
Connection: close\r\n\
\r\n\
400 The plain HTTP request was sent to the HTTPS port.\n";

/// The most of a plain-HTTP request read (and dropped) after the answer, so that closing with
/// unread bytes does not reset the connection before the client reads the answer.
const PLAIN_HTTP_DRAIN_BYTES: usize = 16 * 1024;

/// The first byte a client sent, without consuming it; `None` when it closed first. A TLS
/// handshake starts with 0x16 (a handshake record); an HTTP/1 request with a method's
/// uppercase ASCII letter.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut probe = [0u8; 1];
    match stream.peek(&mut probe).await {
        Ok(1) => Some(probe[0]),
        _ => None,
    }
}

/// How long the rest of a plain-HTTP request is read (and dropped) after the answer.
const PLAIN_HTTP_LINGER: Duration = Duration::from_secs(1);

/// Answers a plain-HTTP request on the TLS port with [`PLAIN_HTTP_ON_TLS_PORT`] and closes:
/// the answer written within `limit`, the request never parsed, and at most
/// [`PLAIN_HTTP_DRAIN_BYTES`] of it read within [`PLAIN_HTTP_LINGER`].
async fn refuse_plain_http(stream: &mut TcpStream, limit: Duration) {
    use tokio::io::AsyncWriteExt as _;
    let answer = async {
        stream.write_all(PLAIN_HTTP_ON_TLS_PORT).await?;
        stream.shutdown().await
    };
    if !matches!(tokio::time::timeout(limit, answer).await, Ok(Ok(()))) {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < PLAIN_HTTP_DRAIN_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(PLAIN_HTTP_LINGER.min(limit), drain).await;
}

async fn serve_tls<H, F>(
    io: Permitted<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    shared: Arc<Shared>,
    handler: Arc<H>,
    mut stop: watch::Receiver<()>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let Some(acceptor) = &shared.tls else {
        return;
    };
    let mut io = io;
    // One deadline for the first byte and the handshake together.
    let deadline = Instant::now() + shared.tls_handshake_timeout;
    let first = tokio::select! {
        first = tokio::time::timeout_at(deadline, first_byte(&io.io)) => first,
        _ = stop.changed() => return,
    };
    match first {
        Ok(Some(byte)) if byte.is_ascii_uppercase() => {
            debug!(%peer, "plain HTTP request on the TLS port; answered 400");
            refuse_plain_http(&mut io.io, shared.tls_handshake_timeout).await;
            return;
        }
        Ok(Some(_)) => {}
        // Closed before a byte, or silent past the handshake timeout.
        Ok(None) | Err(_) => {
            debug!(%peer, "TLS connection closed or silent before the handshake");
            return;
        }
    }
    let handshake = tokio::time::timeout_at(deadline, acceptor.accept(io));
    let stream = tokio::select! {
        finished = handshake => match finished {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, timeout = ?shared.tls_handshake_timeout, "TLS handshake timed out");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    let info = ConnInfo {
        peer,
        local,
        tls: true,
    };
    let activity = Arc::new(Activity::new());
    if protocol == Protocol::Http1 {
        let stream = Stamped::new(stream, activity.clone(), peer.ip(), protocol);
        serve_http(stream, info, protocol, &shared, handler, activity, stop).await;
    } else {
        serve_http(stream, info, protocol, &shared, handler, activity, stop).await;
    }
}

/// Serves a TLS connection, or a plaintext HTTP/2 one, with one hyper connection for its whole
/// life (never parked).
async fn serve_http<I, H, F>(
    io: I,
    info: ConnInfo,
    protocol: Protocol,
    shared: &Shared,
    handler: Arc<H>,
    activity: Arc<Activity>,
    stop: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = request_service(&activity, &handler, info, protocol, shared);
    let idle = shared.idle_limits();
    let io = TokioIo::new(io);
    // Boxed so that the task itself stays small.
    let ended = if protocol == Protocol::Http2 {
        let mut connection = Box::pin(shared.h2_only.serve_connection(io, service));
        drive(
            connection.as_mut(),
            |c| c.graceful_shutdown(),
            &activity,
            idle,
            stop,
        )
        .await
    } else {
        let mut connection = Box::pin(shared.auto.serve_connection_with_upgrades(io, service));
        drive(
            connection.as_mut(),
            |c| c.graceful_shutdown(),
            &activity,
            idle,
            stop,
        )
        .await
    };
    if let Err(error) = ended {
        debug!(peer = %info.peer, %error, "connection ended with an error");
    }
}

/// The hyper service of one connection: calls the handler and marks the request in flight until
/// its response body is dropped. HTTP/2 over ALPN `http/1.1` and HTTP/2 header lists over the
/// limit are answered here instead.
fn request_service<H, F>(
    activity: &Arc<Activity>,
    handler: &Arc<H>,
    info: ConnInfo,
    protocol: Protocol,
    shared: &Shared,
) -> impl Service<
    Request<Incoming>,
    Response = Response<InFlightBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Unpin
+ 'static
where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = activity.clone();
    let handler = handler.clone();
    let max_header_list = shared.h2_max_header_list_bytes as usize;
    service_fn(move |request: Request<Incoming>| {
        let in_flight = activity.begin();
        let h2 = request.version() == Version::HTTP_2;
        let answer = if h2 && protocol == Protocol::Http1 {
            Err(version_not_negotiated(&request, info.peer.ip()))
        } else if h2 && header_list_size(&request) > max_header_list {
            Err(own_answer(
                &request,
                info.peer.ip(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_list_too_large",
            ))
        } else {
            // Boxed: hyper moves the service future several times before and while storing it,
            // and the gateway's future is kilobytes large; a box is moved as one pointer.
            Ok(Box::pin(handler(request, info)))
        };
        async move {
            let response = match answer {
                Ok(answer) => answer.await,
                Err(refusal) => refusal,
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // Before hyper writes the 101: what follows on the socket is the tunnel's.
                in_flight.0.upgraded.store(true, Ordering::Release);
            }
            Ok::<_, Infallible>(response.map(|inner| InFlightBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    })
}

fn version_not_negotiated(request: &Request<Incoming>, client: IpAddr) -> Response<Body> {
    own_answer(
        request,
        client,
        StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        "version_not_negotiated",
    )
}

/// An HTTP/2 request's header list size as `SETTINGS_MAX_HEADER_LIST_SIZE` counts it (RFC 9113
/// §6.5.2): every field, pseudo-header fields included, as name and value bytes plus 32.
fn header_list_size<B>(request: &Request<B>) -> usize {
    const PER_FIELD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        Some((":method".len(), request.method().as_str().len())),
        uri.scheme_str()
            .map(|scheme| (":scheme".len(), scheme.len())),
        uri.authority()
            .map(|authority| (":authority".len(), authority.as_str().len())),
        uri.path_and_query()
            .map(|path| (":path".len(), path.as_str().len())),
    ];
    let fields = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().len(), value.len()));
    pseudo
        .into_iter()
        .flatten()
        .chain(fields)
        .map(|(name, value)| name + value + PER_FIELD)
        .sum()
}

/// The route label of answers given before any route was chosen (the pipeline's own).
const UNROUTED: &str = "-";

/// An answer the listener gives itself instead of calling the handler, with what the pipeline
/// gives each of its own answers: a request id, an access-log line and a count.
fn own_answer(
    request: &Request<Incoming>,
    client: IpAddr,
    status: StatusCode,
    reason: &'static str,
) -> Response<Body> {
    let path = request.uri().path();
    let id = record_own_answer(
        client,
        request.method().as_str(),
        // Bounded like the pipeline's raw paths.
        path.get(..path.len().min(256)).unwrap_or("-"),
        status.as_u16(),
        reason,
    );
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(&crate::proxy::headers::X_REQUEST_ID, id);
    response
}

/// Logs and counts an answer the listener gave itself (see [`own_answer`]); returns its fresh
/// request id. A client's or proxy's id is not taken: the listener has no list of trusted
/// proxies, and a refused request should not choose its own log key.
fn record_own_answer(
    client: IpAddr,
    method: &str,
    path: &str,
    status: u16,
    reason: &'static str,
) -> HeaderValue {
    let id = crate::proxy::headers::request_id(&HeaderMap::new(), client, &[]);
    info!(
        target: "access",
        request_id = id.to_str().unwrap_or("-"),
        client = %client,
        method = %method,
        path,
        route = UNROUTED,
        status,
        sub = "-",
        rejected = reason,
    );
    crate::metrics::listener_refusal(status, reason);
    id
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plaintext connection opened with.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    /// The HTTP/2 preface: prior knowledge.
    Http2(Bytes),
    /// Anything else, read ahead: HTTP/1.
    Http1(Bytes),
    /// The client closed before it could be told apart.
    Closed,
}

/// Reads until the bytes stop matching the HTTP/2 preface or complete it. The bytes read are
/// returned, to be replayed to hyper.
async fn read_opening(io: &mut (impl AsyncRead + Unpin)) -> io::Result<Opening> {
    let mut seen = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    loop {
        let read = io.read(&mut seen[filled..]).await?;
        if read == 0 {
            return Ok(Opening::Closed);
        }
        filled += read;
        if seen[..filled] != H2_PREFACE[..filled] {
            return Ok(Opening::Http1(Bytes::copy_from_slice(&seen[..filled])));
        }
        if filled == H2_PREFACE.len() {
            return Ok(Opening::Http2(Bytes::copy_from_slice(&seen)));
        }
    }
}

/// Tells a plaintext connection's protocol from its first bytes, which the returned socket
/// replays. `None` when the connection should close: nothing came in time, shutdown, or the
/// client left.
async fn open_plaintext(
    mut io: Permitted<TcpStream>,
    info: ConnInfo,
    shared: &Shared,
    activity: &Arc<Activity>,
    stop: &mut watch::Receiver<()>,
) -> Option<(PlainIo, Protocol)> {
    // The same bound the idle watchdog puts on the wait for a first request.
    let first_bytes_by = activity.origin + shared.idle_limits().first;
    let opening = tokio::select! {
        opening = read_opening(&mut io) => opening,
        () = tokio::time::sleep_until(first_bytes_by) => {
            debug!(peer = %info.peer, "nothing received before the first-request timeout");
            return None;
        }
        _ = stop.changed() => return None,
    };
    let (replay, protocol) = match opening {
        Ok(Opening::Http2(preface)) => (preface, Protocol::Http2),
        Ok(Opening::Http1(head)) => (head, Protocol::Http1),
        Ok(Opening::Closed) => return None,
        Err(error) => {
            debug!(peer = %info.peer, %error, "read failed before the first request");
            return None;
        }
    };
    let io = PlainIo {
        replay,
        stream: Stamped::new(io, activity.clone(), info.peer.ip(), protocol),
    };
    Some((io, protocol))
}

/// Serves `io` with one hyper connection until it closes (`None`) or parks: then the socket comes
/// back with the bytes hyper had read but not parsed in front.
async fn serve_until_parked<H, F>(
    io: PlainIo,
    info: ConnInfo,
    shared: &Shared,
    handler: &Arc<H>,
    activity: &Arc<Activity>,
    parked_after: Option<u64>,
    stop: &mut watch::Receiver<()>,
) -> Option<PlainIo>
where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // hyper starts its header timer afresh; the head awaited since the connection went idle
    // must still arrive within `header_read_timeout` of that moment.
    let head_by = activity.idle_start() + shared.header_read_timeout;
    let service = request_service(activity, handler, info, Protocol::Http1, shared);
    let mut connection = shared
        .http1
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let ended = drive_parkable(
        Pin::new(&mut connection),
        |c| c.graceful_shutdown(),
        activity,
        shared.idle_limits(),
        (head_by, shared.header_read_timeout),
        parked_after,
        stop,
    )
    .await;
    match ended {
        Ok(Ended::Parked) => {}
        Ok(Ended::Closed) => return None,
        Err(error) => {
            debug!(peer = %info.peer, %error, "connection ended with an error");
            return None;
        }
    }
    // `None` only after an upgrade, which a park never follows.
    let http1::Parts {
        io: parked,
        read_buf,
        ..
    } = connection.into_parts()?;
    let mut io = parked.into_inner();
    io.unread(read_buf);
    Some(io)
}

/// Waits, holding only the socket, for the client's next bytes. False when the connection should
/// close instead: end of stream, an error, `close_at` or shutdown.
async fn park(stream: &TcpStream, close_at: Instant, stop: &mut watch::Receiver<()>) -> bool {
    let mut probe = [0u8; 1];
    tokio::select! {
        peeked = stream.peek(&mut probe) => matches!(peeked, Ok(read) if read > 0),
        () = tokio::time::sleep_until(close_at) => false,
        _ = stop.changed() => false,
    }
}

/// How a parkable HTTP/1 connection stopped.
enum Ended {
    /// hyper is done and the socket is closed (or about to be).
    Closed,
    /// hyper stopped while idle without closing the socket; take it back with `into_parts`.
    Parked,
}

/// [`drive`] for a plaintext HTTP/1 connection, which also parks it, and with `head` =
/// `(head_by, header_read_timeout)` cuts a first request head that is late for `head_by` and
/// every request head not complete within `header_read_timeout` of the end of the request before
/// it (of the connection's start for the first): hyper's own header timer is off for these
/// connections. No park follows `parked_after`
/// (the value of [`Activity::started`] at the previous park) until another request has started.
async fn drive_parkable<C>(
    mut connection: Pin<&mut C>,
    close: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle: IdleLimits,
    (head_by, header_read_timeout): (Instant, Duration),
    parked_after: Option<u64>,
    stop: &mut watch::Receiver<()>,
) -> Result<Ended, hyper::Error>
where
    C: Future<Output = hyper::Result<()>>,
{
    let started = activity.started();
    let mut closing = false;
    loop {
        let park = (!closing).then_some(parked_after);
        tokio::select! {
            // The connection first: `next_due` must see the requests it has just started or ended.
            biased;
            ended = connection.as_mut() => return ended.map(|()| Ended::Closed),
            _ = stop.changed(), if !closing => {
                closing = true;
                close(connection.as_mut());
            }
            due = activity.next_due(idle, Some((head_by, started)), Some(header_read_timeout), park) => match due {
                Due::Idle => {
                    if closing {
                        debug!("connection ignored the close; dropping it");
                        return Ok(Ended::Closed);
                    }
                    closing = true;
                    close(connection.as_mut());
                    activity.restart_idle_clock();
                }
                Due::HeadOverdue => {
                    debug!("no request head within the header read timeout");
                    return Ok(Ended::Closed);
                }
                Due::Park => {
                    // An idle hyper connection closes at once on `graceful_shutdown`, within
                    // this poll; `PlainIo` skips the socket shutdown while `parking` is set.
                    activity.parking.store(true, Ordering::Release);
                    close(connection.as_mut());
                    let polled =
                        std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await;
                    activity.parking.store(false, Ordering::Release);
                    match polled {
                        Poll::Ready(Ok(())) => return Ok(Ended::Parked),
                        Poll::Ready(Err(error)) => return Err(error),
                        // Not idle after all (a request body still being drained): it now closes
                        // after the exchange, like an idle close.
                        Poll::Pending => closing = true,
                    }
                }
            }
        }
    }
}

/// Polls a connection to completion, closing it gracefully on shutdown or when idle, and dropping
/// it if it is still idle one idle period after that.
async fn drive<C>(
    mut connection: Pin<&mut C>,
    close: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle: IdleLimits,
    mut stop: watch::Receiver<()>,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), BoxError>>,
{
    let mut closing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => return ended,
            _ = stop.changed(), if !closing => {
                closing = true;
                close(connection.as_mut());
            }
            _ = activity.next_due(idle, None, None, None) => {
                if closing {
                    debug!("connection ignored the close; dropping it");
                    return Ok(());
                }
                closing = true;
                close(connection.as_mut());
                activity.restart_idle_clock();
            }
        }
    }
}

/// What [`Activity::next_due`] found due.
enum Due {
    Idle,
    HeadOverdue,
    Park,
}

#[derive(Clone, Copy)]
struct IdleLimits {
    /// Until the first request has finished.
    first: Duration,
    /// Afterwards.
    after: Duration,
}

/// Requests in flight on one connection and when the last one finished.
struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `origin` to the moment `in_flight` last dropped to zero.
    idle_since_ms: AtomicU64,
    /// Milliseconds from `origin` to the end of the last request (0: none yet): where the wait
    /// for the next request head started. Unlike `idle_since_ms`, never moved by a close.
    head_since_ms: AtomicU64,
    served: AtomicBool,
    /// Requests handed to the handler so far.
    started: AtomicU64,
    /// Set while a plaintext HTTP/1 connection is being parked: its socket must stay open.
    parking: AtomicBool,
    /// Set once a response switched protocols: the socket now carries a tunnel.
    upgraded: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            started: AtomicU64::new(0),
            parking: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When `in_flight` last dropped to zero (the connection's start if it never rose).
    fn idle_start(&self) -> Instant {
        self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// The idle limit that applies now: before or after the first finished request.
    fn idle_limit(&self, limits: IdleLimits) -> Duration {
        if self.served.load(Ordering::Acquire) {
            limits.after
        } else {
            limits.first
        }
    }

    /// Resolves with the first of these to come, on one timer (three timers polled on every
    /// wake of the connection cost more than the rest of the connection glue):
    /// - [`Due::Idle`]: no request in flight for the applicable idle limit;
    /// - [`Due::HeadOverdue`], with `head` = `(head_by, started)`: `head_by` passed and no request
    ///   started since [`started`](Self::started) read `started`; or, with `every_head`, no
    ///   request in flight for `every_head` since the last one ended (the connection began);
    /// - [`Due::Park`], with `park` = `Some(parked_after)`: no request in flight for
    ///   [`PARK_DELAY`], and a request started since the previous park (`parked_after`), so that a
    ///   parked connection whose client sends nothing complete is not parked over and over.
    ///
    /// Looks at the connection on every poll: it must be polled after the connection itself (a
    /// `biased` select), which is where requests start and end, so no timer runs while a request
    /// is in flight. The timer is moved only when it would fire too late or has fired, not once
    /// per request; firing early is harmless (the next poll re-arms it for the rest). A deadline
    /// already past when it starts to apply fires on the timer's next tick.
    async fn next_due(
        &self,
        limits: IdleLimits,
        head: Option<(Instant, u64)>,
        every_head: Option<Duration>,
        park: Option<Option<u64>>,
    ) -> Due {
        let mut timer = pin!(tokio::time::sleep(limits.first));
        std::future::poll_fn(|cx| {
            let idle = self.in_flight.load(Ordering::Acquire) == 0;
            let idle_start = self.idle_start();
            // What applies now, in order of precedence.
            let candidates = [
                idle.then(|| (idle_start + self.idle_limit(limits), Due::Idle)),
                head.filter(|&(_, started)| self.started() == started)
                    .map(|(head_by, _)| (head_by, Due::HeadOverdue)),
                every_head.filter(|_| idle).map(|limit| {
                    let since = self.head_since_ms.load(Ordering::Acquire);
                    (
                        self.origin + Duration::from_millis(since) + limit,
                        Due::HeadOverdue,
                    )
                }),
                park.filter(|&parked_after| idle && parked_after != Some(self.started()))
                    .map(|_| (idle_start + PARK_DELAY, Due::Park)),
            ];
            let Some(next) = candidates.iter().flatten().map(|&(at, _)| at).min() else {
                return Poll::Pending;
            };
            // The timer never waits past the nearest deadline, so nothing is due before it
            // fires: the clock is read only then (a clock read per wake was measurable).
            if timer.is_elapsed() {
                let now = Instant::now();
                if let Some((_, what)) = candidates.into_iter().flatten().find(|&(at, _)| now >= at)
                {
                    return Poll::Ready(what);
                }
                timer.as_mut().reset(next);
            } else if timer.deadline() > next {
                timer.as_mut().reset(next);
            }
            let _ = timer.as_mut().poll(cx);
            Poll::Pending
        })
        .await
    }

    /// Restarts the idle clock now; returns its new value.
    fn restart_idle_clock(&self) -> u64 {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(now, Ordering::Release);
        now
    }
}

/// One request in flight; dropped with the response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.served.store(true, Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = self.0.restart_idle_clock();
            self.0.head_since_ms.store(now, Ordering::Release);
        }
    }
}

/// The handler's response body, holding the request's in-flight mark until hyper drops it.
struct InFlightBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for InFlightBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket holding its connection permit, so the permit lives exactly as long as the
/// socket, including after an HTTP/1 upgrade hands it to a tunnel.
struct Permitted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
    _open: crate::metrics::OpenConnection,
}

impl<I: AsyncRead + Unpin> AsyncRead for Permitted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Permitted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A plaintext socket as hyper's HTTP/1 sees it: bytes already read (the opening, or what the
/// previous hyper connection had read but not parsed) come first, hyper's own answers are
/// stamped ([`Stamped`]), and while the connection is being parked hyper's shutdown leaves the
/// socket open.
struct PlainIo {
    replay: Bytes,
    stream: Stamped<Permitted<TcpStream>>,
}

impl PlainIo {
    /// Puts bytes read from the socket but not consumed back in front of the rest.
    fn unread(&mut self, read: Bytes) {
        if read.is_empty() {
            // May still hold hyper's whole read buffer alive; drop it.
            return;
        }
        self.replay = if self.replay.is_empty() {
            Bytes::copy_from_slice(&read)
        } else {
            let mut joined = BytesMut::with_capacity(read.len() + self.replay.len());
            joined.extend_from_slice(&read);
            joined.extend_from_slice(&self.replay);
            joined.freeze()
        };
    }
}

impl AsyncRead for PlainIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replay.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let count = this.replay.len().min(buf.remaining());
        buf.put_slice(&this.replay[..count]);
        this.replay.advance(count);
        if this.replay.is_empty() {
            this.replay = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PlainIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stream.activity.parking.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Finds hyper's own HTTP/1 answers to request heads it refuses (`400` for a malformed head, `414`,
/// `431` over `max_header_bytes` or `max_headers`) and gives each what the pipeline gives its own
/// answers: an `X-Request-Id` (inserted after the status line), an access-log line and a count.
/// hyper writes these before any service call and has no hook for them.
///
/// They are told apart without parsing the output. hyper's HTTP/1 server writes nothing unasked
/// but these answers (a response, and a `100 Continue`, only follow a service call), and it
/// flushes the IO only once its own buffer is written out. So after a flush that found no request
/// in flight, until the next request starts, the next write is such an answer, whole. Left
/// unstamped (and unlogged): an answer to a refused head pipelined behind a response the socket
/// had not yet taken, which shares a write with the end of that response. Off for HTTP/2 and for
/// tunnels; a first write that is not an HTTP/1 status line (HTTP/2 sniffed behind TLS ALPN
/// `http/1.1`) turns it off for good.
struct Stamped<I> {
    io: I,
    activity: Arc<Activity>,
    client: IpAddr,
    /// [`Activity::started`] at the last flush with no request in flight.
    settled: u64,
    /// Set for HTTP/2, and after the one answer hyper gives before it closes.
    off: bool,
    /// The stamped answer, still to be written.
    pending: Bytes,
}

impl<I> Stamped<I> {
    fn new(io: I, activity: Arc<Activity>, client: IpAddr, protocol: Protocol) -> Self {
        Self {
            io,
            settled: activity.started(),
            activity,
            client,
            off: protocol == Protocol::Http2,
            pending: Bytes::new(),
        }
    }

    /// Whether hyper's next write can only be its own answer to a refused head.
    fn answer_due(&self) -> bool {
        !self.off
            && self.activity.in_flight() == 0
            && self.activity.started() == self.settled
            && !self.activity.upgraded.load(Ordering::Acquire)
    }

    /// When `buf` is hyper's own answer: stamps, logs and counts it, keeps it to write, and
    /// returns how many bytes of `buf` that took (all of it).
    fn take_answer(&mut self, buf: &[u8]) -> Option<usize> {
        if buf.is_empty() || !self.answer_due() {
            return None;
        }
        // One answer, then hyper closes; and a first write that is no answer means another
        // protocol.
        self.off = true;
        self.pending = stamp_answer(buf, self.client)?;
        Some(buf.len())
    }
}

impl<I: AsyncWrite + Unpin> Stamped<I> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's answer with a fresh `X-Request-Id` after its status line, logged and counted; `None`
/// when `answer` does not start with an HTTP/1 status line.
fn stamp_answer(answer: &[u8], client: IpAddr) -> Option<Bytes> {
    let status_line = answer
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| answer.strip_prefix(b"HTTP/1.0 "))?;
    let status = StatusCode::from_bytes(status_line.get(..3)?).ok()?;
    let line_end = answer.windows(2).position(|pair| pair == b"\r\n")? + 2;
    let id = record_own_answer(client, "-", "-", status.as_u16(), parser_refusal(status));
    let name = crate::proxy::headers::X_REQUEST_ID.as_str().as_bytes();
    let mut stamped = BytesMut::with_capacity(answer.len() + name.len() + id.len() + 4);
    stamped.extend_from_slice(&answer[..line_end]);
    stamped.extend_from_slice(name);
    stamped.extend_from_slice(b": ");
    stamped.extend_from_slice(id.as_bytes());
    stamped.extend_from_slice(b"\r\n");
    stamped.extend_from_slice(&answer[line_end..]);
    Some(stamped.freeze())
}

/// The logged and counted reason of an answer hyper's HTTP/1 parser gave.
fn parser_refusal(status: StatusCode) -> &'static str {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "header_fields_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::BAD_REQUEST => "malformed_head",
        _ => "refused_by_parser",
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Stamped<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Stamped<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        // Written out by the flush hyper does next.
        if let Some(taken) = this.take_answer(buf) {
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty())
            && let Some(taken) = this.take_answer(first)
        {
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        // hyper's buffer is empty whenever it flushes the IO: with no request in flight,
        // everything hyper will ever write for the requests so far has been written.
        if this.activity.in_flight() == 0 {
            this.settled = this.activity.started();
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{Notify, oneshot};
    use tokio::task::JoinHandle;

    /// Generous bound for things that must happen "soon"; a hang fails instead of blocking.
    const GUARD: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(200);

    struct Running {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<(), ServerError>>,
    }

    impl Running {
        async fn shutdown(mut self) -> Result<(), ServerError> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(GUARD, self.task)
                .await
                .expect("server did not stop in time")
                .expect("server task panicked")
        }
    }

    async fn start<H, F>(
        limits: Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: H,
    ) -> Running
    where
        H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, tls, limits, handler, async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Answers with what the server told the handler about the request and its connection.
    async fn describe(request: Request<Incoming>, info: ConnInfo) -> Response<Body> {
        Response::new(body::full(format!(
            "{:?} tls={} peer={} local={}",
            request.version(),
            info.tls,
            info.peer,
            info.local
        )))
    }

    async fn ok(_: Request<Incoming>, _: ConnInfo) -> Response<Body> {
        Response::new(body::full("ok"))
    }

    fn quick_limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            ..Limits::default()
        }
    }

    /// Reads one HTTP/1.1 response with a Content-Length body; returns head and body as text.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "connection closed mid-response: {buffer:?}");
            buffer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&buffer).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }

    /// Waits for the server to close `stream`; returns what it sent before closing.
    async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        tokio::time::timeout(GUARD, async {
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => received.extend_from_slice(&chunk[..read]),
                }
            }
        })
        .await
        .expect("the server kept the connection open");
        received
    }

    fn install_provider() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }

    struct TestPki {
        dir: tempfile::TempDir,
        ca_pem: String,
    }

    impl TestPki {
        fn cert(&self) -> PathBuf {
            self.dir.path().join("cert.pem")
        }
        fn key(&self) -> PathBuf {
            self.dir.path().join("key.pem")
        }
    }

    /// A CA and a leaf for `localhost` and `127.0.0.1`, written as PEM files.
    fn test_pki() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(dir.path().join("key.pem"), private).unwrap();
        }
        TestPki {
            dir,
            ca_pem: ca.pem(),
        }
    }

    fn tls_client(pki: &TestPki, http1_only: bool) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
        let builder = reqwest::Client::builder().tls_certs_only([ca]);
        let builder = if http1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    }

    /// A server whose parks the test can count.
    async fn start_counting<H, F>(limits: Limits, handler: H) -> (Running, Arc<Shared>)
    where
        H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::new(addr, None, &limits));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            serve(listener, serving, limits, handler, async move {
                let _ = stopped.await;
            })
            .await;
            Ok(())
        });
        let running = Running {
            addr,
            stop: Some(stop),
            task,
        };
        (running, shared)
    }

    /// Waits until the server has parked `count` connections in all.
    async fn parked(shared: &Shared, count: u64) {
        tokio::time::timeout(PARK_DELAY + GUARD, async {
            while shared.parks.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the connection was never parked");
    }

    async fn echo_path(request: Request<Incoming>, _: ConnInfo) -> Response<Body> {
        Response::new(body::full(request.uri().path().to_owned()))
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: gatehouse\r\n\r\n").into_bytes()
    }

    /// Reads until `needle` has been received; returns everything received.
    async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        tokio::time::timeout(GUARD, async {
            while !String::from_utf8_lossy(&received).contains(needle) {
                let read = stream.read(&mut chunk).await.unwrap();
                assert!(read > 0, "closed before {needle:?}: {received:?}");
                received.extend_from_slice(&chunk[..read]);
            }
        })
        .await
        .expect("the expected bytes never came");
        String::from_utf8_lossy(&received).into_owned()
    }

    #[tokio::test]
    async fn opening_tells_the_http2_preface_from_http1() {
        let mut http1: &[u8] = b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n";
        assert_eq!(
            read_opening(&mut http1).await.unwrap(),
            Opening::Http1(Bytes::from_static(b"GET / HTTP/1.1\r\nHost: ga"))
        );
        let mut preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0";
        assert_eq!(
            read_opening(&mut preface).await.unwrap(),
            Opening::Http2(Bytes::from_static(H2_PREFACE))
        );
        let mut cut: &[u8] = b"PRI * HTTP/2.0\r\n";
        assert_eq!(read_opening(&mut cut).await.unwrap(), Opening::Closed);
    }

    #[tokio::test]
    async fn parked_connection_serves_its_next_request() {
        let (server, shared) = start_counting(quick_limits(), echo_path).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        for (round, path) in [(1, "/first"), (2, "/second")] {
            stream.write_all(&get(path)).await.unwrap();
            let response = read_response(&mut stream).await;
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            assert!(response.ends_with(path), "{response}");
            assert!(
                !response.to_ascii_lowercase().contains("connection: close"),
                "{response}"
            );
            parked(&shared, round).await;
        }
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn bytes_sent_at_park_time_are_neither_lost_nor_reordered() {
        let (server, shared) = start_counting(quick_limits(), echo_path).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&get("/first")).await.unwrap();
        assert!(read_response(&mut stream).await.ends_with("/first"));
        // Half a head is in hyper's buffer when the park comes.
        stream
            .write_all(b"GET /second HTTP/1.1\r\nHost: gate")
            .await
            .unwrap();
        parked(&shared, 1).await;
        let mut rest = b"house\r\n\r\n".to_vec();
        rest.extend_from_slice(&get("/third"));
        stream.write_all(&rest).await.unwrap();
        let received = read_until(&mut stream, "/third").await;
        let second = received
            .find("/second")
            .expect("the half-sent request was lost");
        assert!(second < received.find("/third").unwrap(), "{received}");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn parked_connection_closes_when_its_idle_or_header_timeout_expires() {
        let timeout = PARK_DELAY + Duration::from_millis(500);
        let idle = Limits {
            idle_timeout: timeout,
            ..quick_limits()
        };
        let head = Limits {
            header_read_timeout: timeout,
            ..quick_limits()
        };
        for limits in [idle, head] {
            let (server, shared) = start_counting(limits, echo_path).await;
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(&get("/")).await.unwrap();
            read_response(&mut stream).await;
            let idle_from = Instant::now();
            parked(&shared, 1).await;
            let after = until_closed(&mut stream).await;
            assert!(after.is_empty(), "unexpected bytes: {after:?}");
            assert!(idle_from.elapsed() >= timeout - Duration::from_millis(50));
            server.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn shutdown_closes_parked_connections_at_once() {
        let (server, shared) = start_counting(quick_limits(), echo_path).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&get("/")).await.unwrap();
        read_response(&mut stream).await;
        parked(&shared, 1).await;
        let started = Instant::now();
        // The grace is 30 s: only an immediate close lets this return within `GUARD`.
        server.shutdown().await.unwrap();
        assert!(until_closed(&mut stream).await.is_empty());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn slow_loris_head_is_not_extended_by_a_park() {
        let header_read_timeout = PARK_DELAY + Duration::from_secs(1);
        let limits = Limits {
            header_read_timeout,
            ..quick_limits()
        };
        let (server, shared) = start_counting(limits, echo_path).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&get("/")).await.unwrap();
        read_response(&mut stream).await;
        let idle_from = Instant::now();
        parked(&shared, 1).await;
        // Starting the head late: a fresh hyper timer would allow it a whole
        // `header_read_timeout` from here.
        tokio::time::sleep_until(idle_from + PARK_DELAY + Duration::from_millis(500)).await;
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        let mut chunk = [0u8; 64];
        let mut drip = tokio::time::interval(Duration::from_millis(100));
        tokio::time::timeout(GUARD, async {
            loop {
                tokio::select! {
                    read = stream.read(&mut chunk) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => panic!("the slow head was answered"),
                    },
                    _ = drip.tick() => {
                        if stream.write_all(b"a").await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .await
        .expect("the slow head was never cut");
        assert!(shared.parks.load(Ordering::Relaxed) >= 1, "never parked");
        let cut_after = idle_from.elapsed();
        assert!(
            cut_after < header_read_timeout + Duration::from_millis(400),
            "cut only after {cut_after:?}"
        );
        server.shutdown().await.unwrap();
    }

    /// Answers upgrade requests with 101 and echoes the tunnelled bytes; others with their path.
    async fn echo_upgrade(mut request: Request<Incoming>, _: ConnInfo) -> Response<Body> {
        if !request.headers().contains_key(http::header::UPGRADE) {
            return Response::new(body::full(request.uri().path().to_owned()));
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut chunk = [0u8; 64];
            while let Ok(read) = io.read(&mut chunk).await {
                if read == 0 || io.write_all(&chunk[..read]).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        headers.insert(http::header::UPGRADE, "echo".parse().unwrap());
        response
    }

    #[tokio::test]
    async fn upgrade_after_a_park_still_tunnels_and_holds_its_permit() {
        let limits = Limits {
            max_connections: 1,
            ..quick_limits()
        };
        let (server, shared) = start_counting(limits, echo_upgrade).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&get("/first")).await.unwrap();
        assert!(read_response(&mut stream).await.ends_with("/first"));
        parked(&shared, 1).await;

        stream
            .write_all(b"GET /ws HTTP/1.1\r\nHost: gatehouse\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let head = read_until(&mut stream, "\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(read_until(&mut stream, "ping").await, "ping");

        // The tunnel still holds the only permit.
        let mut excess = TcpStream::connect(server.addr).await.unwrap();
        let _ = excess.write_all(&get("/excess")).await;
        assert!(until_closed(&mut excess).await.is_empty());
        stream.write_all(b"pong").await.unwrap();
        assert_eq!(read_until(&mut stream, "pong").await, "pong");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn serves_http1_and_reports_the_socket_peer() {
        let server = start(quick_limits(), None, describe).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let client_addr = stream.local_addr().unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.ends_with(&format!(
                "HTTP/1.1 tls=false peer={client_addr} local={}",
                server.addr
            )),
            "{response}"
        );
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn serves_http2_with_prior_knowledge() {
        let server = start(quick_limits(), None, describe).await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client
            .get(format!("http://{}/", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .starts_with("HTTP/2.0 tls=false")
        );
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn tls_alpn_selects_http2_or_http1() {
        install_provider();
        let pki = test_pki();
        let tls = tls_config(&pki.cert(), &pki.key()).unwrap();
        let server = start(quick_limits(), Some(tls), describe).await;
        let url = format!("https://localhost:{}/", server.addr.port());

        let h2 = tls_client(&pki, false).get(&url).send().await.unwrap();
        assert_eq!(h2.version(), reqwest::Version::HTTP_2);
        assert!(h2.text().await.unwrap().starts_with("HTTP/2.0 tls=true"));

        let h1 = tls_client(&pki, true).get(&url).send().await.unwrap();
        assert_eq!(h1.version(), reqwest::Version::HTTP_11);
        assert!(h1.text().await.unwrap().starts_with("HTTP/1.1 tls=true"));
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn http2_smuggled_past_http1_alpn_is_refused() {
        install_provider();
        let pki = test_pki();
        let tls = tls_config(&pki.cert(), &pki.key()).unwrap();
        let server = start(quick_limits(), Some(tls), describe).await;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls_stream = connector.connect(name, tcp).await.unwrap();
        assert_eq!(
            tls_stream.get_ref().1.alpn_protocol(),
            Some(&b"http/1.1"[..])
        );

        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls_stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .uri(format!("https://localhost:{}/", server.addr.port()))
            .body(body::empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
        assert!(response.headers().contains_key("x-request-id"));
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn slow_loris_request_head_is_cut_at_header_read_timeout() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let handler = move |request, info| {
            counted.fetch_add(1, Ordering::SeqCst);
            ok(request, info)
        };
        let limits = Limits {
            header_read_timeout: SHORT,
            ..quick_limits()
        };
        let server = start(limits, None, handler).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // A first complete request, so that only the header timer (not the wait for a first
        // request) can cut the slow one. The timer may start as soon as the first response is
        // written, before this side has read it, so the earliest true start is the first write.
        let started = Instant::now();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut stream).await.ends_with("ok"));
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\nX-Slow: ")
            .await
            .unwrap();
        until_closed(&mut stream).await;
        assert!(started.elapsed() >= SHORT);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn slow_loris_partial_http2_preface_is_cut() {
        let limits = Limits {
            header_read_timeout: SHORT,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        until_closed(&mut stream).await;
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn idle_http1_keep_alive_connection_is_closed() {
        let limits = Limits {
            idle_timeout: SHORT,
            header_read_timeout: Duration::from_secs(30),
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut stream).await.ends_with("ok"));
        let idle_from = Instant::now();
        let after = until_closed(&mut stream).await;
        assert!(after.is_empty(), "unexpected bytes: {after:?}");
        assert!(idle_from.elapsed() >= SHORT / 2);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn idle_http2_connection_is_closed() {
        let limits = Limits {
            idle_timeout: SHORT,
            header_read_timeout: Duration::from_secs(30),
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = Request::builder()
            .uri(format!("http://{}/", server.addr))
            .body(body::empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&text[..], b"ok");
        tokio::time::timeout(GUARD, connection)
            .await
            .expect("idle HTTP/2 connection stayed open")
            .unwrap()
            .unwrap();
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn stalled_tls_handshake_is_dropped() {
        install_provider();
        let pki = test_pki();
        let tls = tls_config(&pki.cert(), &pki.key()).unwrap();
        let limits = Limits {
            tls_handshake_timeout: SHORT,
            ..quick_limits()
        };
        let server = start(limits, Some(tls), ok).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // The start of a TLS record header, then silence.
        stream.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        let started = Instant::now();
        until_closed(&mut stream).await;
        assert!(started.elapsed() >= SHORT / 2);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn connection_flood_beyond_the_cap_is_closed_at_once() {
        let limits = Limits {
            max_connections: 1,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let mut held = TcpStream::connect(server.addr).await.unwrap();
        held.write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut held).await.ends_with("ok"));

        let mut excess = TcpStream::connect(server.addr).await.unwrap();
        let _ = excess
            .write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
            .await;
        let answer = until_closed(&mut excess).await;
        assert!(answer.is_empty(), "over-cap connection was served");

        drop(held);
        tokio::time::timeout(GUARD, async {
            loop {
                let mut stream = TcpStream::connect(server.addr).await.unwrap();
                let _ = stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\nConnection: close\r\n\r\n")
                    .await;
                let answer = until_closed(&mut stream).await;
                if answer.starts_with(b"HTTP/1.1 200") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the permit of a closed connection was never released");
        server.shutdown().await.unwrap();
    }

    #[derive(Default)]
    struct Gate {
        entered: Notify,
        release: Notify,
    }

    #[tokio::test]
    async fn graceful_shutdown_finishes_in_flight_request_and_refuses_new_ones() {
        let gate = Arc::new(Gate::default());
        let held = gate.clone();
        let handler = move |_: Request<Incoming>, _: ConnInfo| {
            let gate = held.clone();
            async move {
                gate.entered.notify_one();
                gate.release.notified().await;
                Response::new(body::full("finished"))
            }
        };
        let mut server = start(quick_limits(), None, handler).await;
        let addr = server.addr;
        let in_flight = tokio::spawn(async move {
            let response = reqwest::get(format!("http://{addr}/slow")).await.unwrap();
            (response.status(), response.text().await.unwrap())
        });
        gate.entered.notified().await;

        let _ = server.stop.take().unwrap().send(());
        tokio::time::timeout(GUARD, async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("still accepting after shutdown");
        assert!(!server.task.is_finished(), "returned before the drain");

        gate.release.notify_one();
        let (status, text) = in_flight.await.unwrap();
        assert_eq!(status, reqwest::StatusCode::OK);
        assert_eq!(text, "finished");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_grace_bounds_a_request_that_never_ends() {
        let gate = Arc::new(Gate::default());
        let held = gate.clone();
        let handler = move |_: Request<Incoming>, _: ConnInfo| {
            let gate = held.clone();
            async move {
                gate.entered.notify_one();
                std::future::pending::<()>().await;
                Response::new(body::empty())
            }
        };
        let limits = Limits {
            shutdown_grace: SHORT,
            ..quick_limits()
        };
        let server = start(limits, None, handler).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
            .await
            .unwrap();
        gate.entered.notified().await;
        server.shutdown().await.unwrap();
        let answer = until_closed(&mut stream).await;
        assert!(answer.is_empty());
    }

    #[tokio::test]
    async fn oversized_request_head_gets_431() {
        let limits = Limits {
            max_header_bytes: 8192,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: gatehouse\r\nX-Big: {}\r\n\r\n",
            "a".repeat(10_000)
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let answer = until_closed(&mut stream).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn header_count_flood_gets_431() {
        let limits = Limits {
            max_headers: 10,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut request = String::from("GET / HTTP/1.1\r\nHost: gatehouse\r\n");
        for n in 0..20 {
            request.push_str(&format!("X-Filler-{n}: x\r\n"));
        }
        request.push_str("\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        let answer = until_closed(&mut stream).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn http2_header_list_over_the_limit_is_refused() {
        let limits = Limits {
            h2_max_header_list_bytes: 4096,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let url = format!("http://{}/", server.addr);
        let small = client.get(&url).send().await.unwrap();
        assert_eq!(small.status(), reqwest::StatusCode::OK);
        let big = client
            .get(&url)
            .header("x-big", "a".repeat(8000))
            .send()
            .await;
        match big {
            Ok(response) => assert_eq!(
                response.status(),
                reqwest::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            ),
            Err(error) => assert!(!error.is_timeout(), "{error}"),
        }
        server.shutdown().await.unwrap();
    }

    /// The `X-Request-Id` of the one response in `answer`, which must be `status`.
    fn stamped_id(answer: &[u8], status: &str) -> String {
        let text = String::from_utf8_lossy(answer);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let id = text
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("no X-Request-Id: {text}"));
        assert_eq!(id.len(), 32, "{text}");
        id.to_owned()
    }

    #[tokio::test]
    async fn malformed_and_oversized_heads_get_parser_answers_with_a_request_id() {
        let limits = Limits {
            max_headers: 10,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let mut many = String::from("GET / HTTP/1.1\r\nHost: gatehouse\r\n");
        for n in 0..20 {
            many.push_str(&format!("X-Filler-{n}: x\r\n"));
        }
        many.push_str("\r\n");
        for (request, status) in [
            (many.as_str(), "431"),
            ("GET / HTTP/1.1\r\nHost gatehouse\r\n\r\n", "400"),
            ("G\x01T / HTTP/1.1\r\nHost: gatehouse\r\n\r\n", "400"),
        ] {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            let _ = stream.write_all(request.as_bytes()).await;
            stamped_id(&until_closed(&mut stream).await, status);
        }
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn refused_head_pipelined_behind_a_served_request_gets_its_own_request_id() {
        let limits = Limits {
            max_headers: 10,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut pipelined = String::from(
            "GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\nGET / HTTP/1.1\r\nHost: gatehouse\r\n",
        );
        for n in 0..20 {
            pipelined.push_str(&format!("X-Filler-{n}: x\r\n"));
        }
        pipelined.push_str("\r\n");
        let _ = stream.write_all(pipelined.as_bytes()).await;
        let answer = until_closed(&mut stream).await;
        let text = String::from_utf8_lossy(&answer);
        // The handler's own response carries no id; the parser's answer after it does.
        let served = text.find("HTTP/1.1 431 ").expect(&text);
        assert!(text.starts_with("HTTP/1.1 200 ") && text[..served].ends_with("ok"));
        stamped_id(&answer[served..], "431");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn parser_answers_over_tls_carry_a_request_id() {
        install_provider();
        let pki = test_pki();
        let tls = tls_config(&pki.cert(), &pki.key()).unwrap();
        let limits = Limits {
            max_header_bytes: 8192,
            ..quick_limits()
        };
        let server = start(limits, Some(tls), ok).await;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
            "a".repeat(10_000)
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(GUARD, stream.read_to_end(&mut answer)).await;
        stamped_id(&answer, "431");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn tunnel_bytes_after_an_upgrade_are_never_stamped() {
        // The tunnel's first bytes look exactly like a parser answer.
        const FROM_TUNNEL: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let handler = |mut request: Request<Incoming>, _: ConnInfo| async move {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut tunnel = TokioIo::new(upgraded);
                    let _ = tunnel.write_all(FROM_TUNNEL).await;
                    let _ = tunnel.shutdown().await;
                }
            });
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("websocket"),
            );
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            response
        };
        let server = start(quick_limits(), None, handler).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: gatehouse\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await
            .unwrap();
        let answer = until_closed(&mut stream).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        assert!(
            answer.ends_with(FROM_TUNNEL) && !text.contains("x-request-id"),
            "{text}"
        );
        server.shutdown().await.unwrap();
    }

    #[test]
    fn header_list_size_counts_pseudo_fields_and_32_bytes_per_field() {
        let request = Request::builder()
            .method("GET")
            .uri("https://h.example/p?q")
            .header("x-a", "bc")
            .body(())
            .unwrap();
        let method = 7 + 3 + 32;
        let scheme = 7 + 5 + 32;
        let authority = 10 + 9 + 32;
        let path = 5 + 4 + 32;
        let field = 3 + 2 + 32;
        assert_eq!(
            header_list_size(&request),
            method + scheme + authority + path + field
        );
    }

    #[tokio::test]
    async fn http2_header_list_between_the_limit_and_the_library_limit_gets_the_listener_431() {
        let limits = Limits {
            h2_max_header_list_bytes: 4096,
            ..quick_limits()
        };
        let server = start(limits, None, ok).await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client
            .get(format!("http://{}/", server.addr))
            .header("x-big", "a".repeat(6000))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert!(response.headers().contains_key("x-request-id"));
        server.shutdown().await.unwrap();
    }

    #[test]
    fn only_an_http1_status_line_is_stamped() {
        let client: IpAddr = [127, 0, 0, 1].into();
        let stamped = stamp_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
            client,
        )
        .unwrap();
        let text = String::from_utf8(stamped.to_vec()).unwrap();
        let (first, rest) = text.split_once("\r\n").unwrap();
        assert_eq!(first, "HTTP/1.1 431 Request Header Fields Too Large");
        assert!(rest.starts_with("x-request-id: "), "{text}");
        assert!(rest.ends_with("\r\ncontent-length: 0\r\n\r\n"), "{text}");
        // An HTTP/2 SETTINGS frame, a status that is no status, a cut-off line.
        for other in [
            &b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"[..],
            b"HTTP/1.1 +43 x\r\n\r\n",
            b"HTTP/1.1 431 Request Header",
        ] {
            assert!(stamp_answer(other, client).is_none(), "{other:?}");
        }
    }

    #[test]
    fn tls_config_names_the_missing_file() {
        let pki = test_pki();
        let missing = pki.dir.path().join("absent.pem");
        let error = tls_config(&missing, &pki.key()).unwrap_err();
        assert!(matches!(&error, ServerError::CertificateFile { path, .. } if path == &missing));
        assert!(error.to_string().contains("absent.pem"));
        let error = tls_config(&pki.cert(), &missing).unwrap_err();
        assert!(matches!(&error, ServerError::KeyFile { path, .. } if path == &missing));
    }

    #[test]
    fn tls_config_rejects_a_file_without_certificates() {
        let pki = test_pki();
        let error = tls_config(&pki.key(), &pki.key()).unwrap_err();
        assert!(
            matches!(error, ServerError::NoCertificate { .. }),
            "{error}"
        );
        // A certificate where the key should be (kept private, so the PEM check is what refuses).
        let cert_as_key = pki.dir.path().join("cert-as-key.pem");
        std::fs::copy(pki.cert(), &cert_as_key).unwrap();
        set_mode(&cert_as_key, 0o600);
        let error = tls_config(&pki.cert(), &cert_as_key).unwrap_err();
        assert!(matches!(error, ServerError::KeyFile { .. }), "{error}");
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_world_readable_tls_private_key_is_refused_naming_the_file_and_the_fix() {
        let pki = test_pki();
        for mode in [0o644, 0o604, 0o640, 0o620] {
            set_mode(&pki.key(), mode);
            let error = CertStore::load(&pki.cert(), &pki.key()).unwrap_err();
            assert!(
                matches!(&error, ServerError::InsecureKey { path, mode: m } if path == &pki.key() && *m == mode),
                "{mode:o}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&pki.key().display().to_string()),
                "{message}"
            );
            assert!(message.contains("chmod 600"), "{message}");
        }
        // A reload refuses it too, and keeps the pair in use.
        set_mode(&pki.key(), 0o600);
        let store = CertStore::load(&pki.cert(), &pki.key()).unwrap();
        set_mode(&pki.key(), 0o644);
        assert!(matches!(
            store.reload(),
            Err(ServerError::InsecureKey { .. })
        ));
        for mode in [0o600, 0o400] {
            set_mode(&pki.key(), mode);
            CertStore::load(&pki.cert(), &pki.key()).unwrap();
        }
    }

    #[test]
    fn tls_config_rejects_a_key_that_does_not_match() {
        let pki = test_pki();
        let other = test_pki();
        let error = tls_config(&pki.cert(), &other.key()).unwrap_err();
        assert!(matches!(error, ServerError::CertifiedKey { .. }), "{error}");
    }

    #[test]
    fn backlog_is_lowered_to_somaxconn_and_an_unreadable_cap_changes_nothing() {
        assert_eq!(effective_backlog(1024, Some(4096)), 1024);
        assert_eq!(effective_backlog(1024, Some(128)), 128);
        assert_eq!(effective_backlog(1024, None), 1024);
        assert_eq!(effective_backlog(1024, Some(0)), 1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("somaxconn");
        assert_eq!(read_somaxconn(&file), None);
        std::fs::write(&file, "many\n").unwrap();
        assert_eq!(read_somaxconn(&file), None);
        std::fs::write(&file, "4096\n").unwrap();
        assert_eq!(read_somaxconn(&file), Some(4096));
    }

    #[test]
    fn accept_errors_from_resource_exhaustion_back_off() {
        let emfile = io::Error::from_raw_os_error(24);
        let enfile = io::Error::from_raw_os_error(23);
        assert!(!is_about_one_connection(&emfile));
        assert!(!is_about_one_connection(&enfile));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(is_about_one_connection(&aborted));
    }
}
