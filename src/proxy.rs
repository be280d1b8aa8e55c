//! Forwarding requests to upstreams: the pooled upstream client (and the `[upstream]` settings
//! it is built from), request-body limits, the response-body idle limit and WebSocket tunnels.
//!
//! The client sends what it is given: an absolute URI and headers already cleaned by
//! [`headers`]; its connections are kept by [`pool`]. Errors are classified by where they
//! happened (connecting or exchanging) and by our own body errors in the error chain, never from
//! message text. The status each [`ProxyError`] stands for is written on its variant;
//! the one mapping to HTTP responses lives with the integrator.

pub mod headers;
pub mod path;
mod pool;

pub use pool::{PoolError, UpstreamBody, host_header};

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_rustls::{ConfigBuilderExt, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::body::{Body, BoxError};
use crate::config::value::{ConfigError, RawDuration, invalid};

/// TCP keep-alive probes on upstream connections, so half-dead pooled connections are noticed.
const UPSTREAM_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Default time to establish an upstream TCP connection: a route's `connect_timeout` unless
/// it sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default idle time of pooled upstream connections. Below the usual server keep-alives (nginx
/// 75 s, Go 90 s, many 60 s), so the pool drops a connection before the upstream does; shorter
/// ones are learnt from `Keep-Alive: timeout=`.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default pooled idle connections kept per upstream host.
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 64;

/// The `[upstream]` section as written: how the gateway reaches every upstream.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub ca_file: Option<PathBuf>,
    pub pool_idle_timeout: RawDuration,
    pub pool_max_idle_per_host: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            ca_file: None,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT.into(),
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
        }
    }
}

/// The validated `[upstream]` section.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub ca_file: Option<PathBuf>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl RawUpstream {
    pub fn validate(self) -> Result<UpstreamConfig, ConfigError> {
        if let Some(ca) = &self.ca_file
            && ca.as_os_str().is_empty()
        {
            return Err(invalid("upstream.ca_file", "must name a PEM file"));
        }
        Ok(UpstreamConfig {
            ca_file: self.ca_file,
            pool_idle_timeout: self.pool_idle_timeout.parse("upstream.pool_idle_timeout")?,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
        })
    }
}

/// How the upstream client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// PEM file of CA certificates to trust for `https` upstreams. When set, these are the **only**
    /// trusted roots; when unset, the system roots are.
    pub ca_file: Option<PathBuf>,
    /// Time to establish the TCP connection (TLS comes on top, bounded by the send timeout).
    pub connect_timeout: Duration,
    /// Time an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
        }
    }
}

/// What went wrong while building the client or forwarding a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection to the upstream: refused, unreachable, DNS, connect timeout, TLS. (502)
    #[error("cannot connect to the upstream")]
    Connect(#[source] PoolError),
    /// The upstream sent no response head within the route timeout. (504)
    #[error("the upstream did not answer within {after:?}")]
    Timeout { after: Duration },
    /// The client's body went over the limit, declared or mid-stream. (413)
    #[error("the request body is larger than {max} bytes")]
    BodyTooLarge { max: u64 },
    /// The client sent no body data for too long (slow-body attack). (408)
    #[error("the client sent no request body data for {idle:?}")]
    BodyTimeout { idle: Duration },
    /// Reading the client's body failed: the client aborted or broke the framing. (400)
    #[error("the client's request body failed")]
    ClientBody(#[source] BoxError),
    /// Any other failure talking to the upstream. (502)
    #[error("the upstream request failed")]
    Upstream(#[source] PoolError),
    /// [`tunnel`] was given a response that does not switch protocols. (502)
    #[error("the upstream answered {status} to an upgrade request")]
    NotUpgraded { status: StatusCode },
    /// The CA file is missing, unreadable or not PEM. (startup)
    #[error("cannot read the upstream CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The CA file holds no certificate rustls accepts as a trust anchor. (startup)
    #[error("the upstream CA file {path} holds no usable CA certificate")]
    NoCaCertificate { path: PathBuf },
    /// rustls refused the client configuration. (startup)
    #[error("cannot build the upstream TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

impl ProxyError {
    /// Whether this is the upstream's failure (logged per route), not the client's body.
    pub fn is_upstream_failure(&self) -> bool {
        !matches!(
            self,
            ProxyError::BodyTooLarge { .. }
                | ProxyError::BodyTimeout { .. }
                | ProxyError::ClientBody(_)
        )
    }

    /// The cause in a few words, for the log (bounded set): found in the error chain, where
    /// an I/O error's own payload (rustls' error in tokio-rustls) is looked into too.
    pub fn cause(&self) -> &'static str {
        match self {
            ProxyError::Timeout { .. } => return "timed out",
            ProxyError::NotUpgraded { .. } => return "protocol error",
            ProxyError::CaFile { .. } | ProxyError::NoCaCertificate { .. } | ProxyError::Tls(_) => {
                return "misconfigured";
            }
            _ => {}
        }
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        let mut hyper_seen = false;
        while let Some(error) = next {
            if error.is::<rustls::Error>() {
                return "TLS failure";
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return "connection refused",
                    std::io::ErrorKind::TimedOut => return "timed out",
                    _ => {}
                }
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>())
                {
                    return "TLS failure";
                }
                next = io.get_ref().map(|inner| inner as _);
                continue;
            }
            hyper_seen |= error.is::<hyper::Error>();
            next = error.source();
        }
        match self {
            ProxyError::Connect(_) => "connection failed",
            _ if hyper_seen => "protocol error",
            _ => "request failed",
        }
    }
}

/// A pooled HTTP/1.1 and HTTP/2 client for upstreams. Clone is cheap and shares the pool.
///
/// `https` upstreams offer ALPN `h2` then `http/1.1`; `http` upstreams get HTTP/1.1.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    pool: Arc<pool::Pool>,
}

impl UpstreamClient {
    /// Builds the client. Without `ca_file`, the system roots are loaded once here; if none can be
    /// loaded a warning is logged and every `https` upstream fails with [`ProxyError::Connect`].
    pub fn new(settings: &ClientSettings) -> Result<Self, ProxyError> {
        let tls = match &settings.ca_file {
            Some(path) => tls_builder()?
                .with_root_certificates(ca_roots(path)?)
                .with_no_client_auth(),
            None => match tls_builder()?.with_native_roots() {
                Ok(builder) => builder.with_no_client_auth(),
                Err(error) => {
                    warn!(%error, "no system CA certificates; https upstreams will be refused");
                    tls_builder()?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                }
            },
        };

        let mut tcp = HttpConnector::new();
        // The TLS layer wraps this connector, so it must let `https` URIs through.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(settings.connect_timeout));
        tcp.set_keepalive(Some(UPSTREAM_TCP_KEEPALIVE));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);

        let pool = pool::Pool::new(
            connector,
            settings.pool_idle_timeout,
            settings.pool_max_idle_per_host,
        );
        Ok(Self {
            pool: Arc::new(pool),
        })
    }

    /// Sends `req` (absolute URI, headers already cleaned; a `Host` header only when the upstream
    /// is to be told another authority than the URI's: `preserve_host`) and waits up to `timeout`
    /// for the response head. The timeout covers connecting, the TLS handshake and sending the request body.
    /// The response body streams back unbuffered.
    ///
    /// When the body came from [`limit_body`], prefer [`LimitFlag::tripped`] over the returned
    /// error: over HTTP/2 the body error may not survive in the error chain.
    pub async fn send(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        // Each hop speaks its own version (RFC 9110 §6.2): the pool sets the one of the
        // connection it picked (HTTP/1.1, or HTTP/2 where TLS negotiated h2). The pool bounds
        // the exchange by `timeout`, on a timer its HTTP/1 connections keep between requests.
        self.pool.send(req, timeout).await.map_err(classify)
    }
}

fn tls_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, ProxyError> {
    // An explicit provider: a second one compiled into the tree cannot make the default ambiguous.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ProxyError::Tls)
}

/// The CA certificates of `ca_file`: at least one usable, else an error naming the file (also
/// what `check-config` runs).
pub fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, ProxyError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|blocks| blocks.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ProxyError::CaFile {
            path: path.to_owned(),
            source,
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates);
    if ignored > 0 {
        warn!(path = %path.display(), ignored, "some upstream CA certificates are unusable");
    }
    if added == 0 {
        return Err(ProxyError::NoCaCertificate {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

fn classify(error: PoolError) -> ProxyError {
    if let PoolError::TimedOut { after } = error {
        return ProxyError::Timeout { after };
    }
    match body_failure(&error) {
        Some(BodyFailure::TooLarge { max }) => ProxyError::BodyTooLarge { max },
        Some(BodyFailure::Idle { idle }) => ProxyError::BodyTimeout { idle },
        Some(BodyFailure::Client) => ProxyError::ClientBody(Box::new(error)),
        None if matches!(error, PoolError::Connect { .. }) => ProxyError::Connect(error),
        None => ProxyError::Upstream(error),
    }
}

enum BodyFailure {
    TooLarge { max: u64 },
    Idle { idle: Duration },
    Client,
}

/// Finds the error a [`limit_body`] body put into the upstream error chain, if any.
fn body_failure(error: &(dyn std::error::Error + 'static)) -> Option<BodyFailure> {
    let mut current = Some(error);
    while let Some(error) = current {
        match error.downcast_ref::<ProxyError>() {
            Some(ProxyError::BodyTooLarge { max }) => {
                return Some(BodyFailure::TooLarge { max: *max });
            }
            Some(ProxyError::BodyTimeout { idle }) => {
                return Some(BodyFailure::Idle { idle: *idle });
            }
            Some(ProxyError::ClientBody(_)) => return Some(BodyFailure::Client),
            _ => current = error.source(),
        }
    }
    None
}

const NOT_TRIPPED: u8 = 0;
const TRIPPED_SIZE: u8 = 1;
const TRIPPED_IDLE: u8 = 2;

/// Tells, after the fact, whether a [`limit_body`] body stopped on its size or idle limit.
#[derive(Clone, Debug)]
pub struct LimitFlag {
    /// `None` for a body that had ended before it was wrapped: no limit can trip on it.
    inner: Option<Arc<FlagState>>,
}

#[derive(Debug)]
struct FlagState {
    tripped: AtomicU8,
    max: u64,
    idle: Duration,
}

impl LimitFlag {
    /// `Some(BodyTooLarge)` or `Some(BodyTimeout)` once a limit tripped, else `None`.
    pub fn tripped(&self) -> Option<ProxyError> {
        let state = self.inner.as_deref()?;
        match state.tripped.load(Ordering::Acquire) {
            TRIPPED_SIZE => Some(ProxyError::BodyTooLarge { max: state.max }),
            TRIPPED_IDLE => Some(ProxyError::BodyTimeout { idle: state.idle }),
            _ => None,
        }
    }
}

impl FlagState {
    fn trip(&self, why: u8) -> ProxyError {
        // The first limit to trip is the reason; later ones are consequences.
        let _ =
            self.tripped
                .compare_exchange(NOT_TRIPPED, why, Ordering::AcqRel, Ordering::Acquire);
        if why == TRIPPED_SIZE {
            ProxyError::BodyTooLarge { max: self.max }
        } else {
            ProxyError::BodyTimeout { idle: self.idle }
        }
    }
}

/// Wraps a client's request body for forwarding: more than `max` bytes, or `idle` without a frame
/// while the upstream is waiting for one, fails the stream. Nothing is buffered: each frame is
/// passed on as it arrives. Request trailers are dropped (they are never forwarded).
///
/// A declared `Content-Length` over `max` trips the flag at once, so the caller can answer 413
/// without contacting the upstream: check `flag.tripped()` right after this call.
///
/// A body that has already ended (most requests: no `Content-Length`, or zero) is replaced by an
/// empty one, with nothing to count, time or allocate.
pub fn limit_body(body: Incoming, max: u64, idle: Duration) -> (Body, LimitFlag) {
    if http_body::Body::is_end_stream(&body) {
        return (crate::body::empty(), LimitFlag { inner: None });
    }
    let state = Arc::new(FlagState {
        tripped: AtomicU8::new(NOT_TRIPPED),
        max,
        idle,
    });
    let declared_too_large = http_body::Body::size_hint(&body).lower() > max;
    if declared_too_large {
        state.trip(TRIPPED_SIZE);
    }
    let limited = LimitedBody {
        inner: body,
        max,
        seen: 0,
        idle: IdleTimer::new(idle),
        declared_too_large,
        failed: false,
        flag: Arc::clone(&state),
    };
    (Body::new(limited), LimitFlag { inner: Some(state) })
}

struct LimitedBody {
    inner: Incoming,
    max: u64,
    seen: u64,
    /// Runs only while we wait on the client, so an upstream that reads slowly never counts
    /// against the client.
    idle: IdleTimer,
    /// `Content-Length` over `max`: the first poll fails without reading anything.
    declared_too_large: bool,
    failed: bool,
    flag: Arc<FlagState>,
}

impl LimitedBody {
    fn fail(&mut self, why: u8) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(Box::new(self.flag.trip(why)))))
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.declared_too_large {
            this.declared_too_large = false;
            return this.fail(TRIPPED_SIZE);
        }
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.progressed();
                    let Ok(data) = frame.into_data() else {
                        // Trailers (and any future frame kind) stop here.
                        continue;
                    };
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.max {
                        return this.fail(TRIPPED_SIZE);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(Box::new(ProxyError::ClientBody(Box::new(
                        error,
                    ))))));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending if this.idle.expired(cx) => return this.fail(TRIPPED_IDLE),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream sent no response body data for `idle` while the client was waiting for it. The
/// response head is out by then, so this never becomes a status: the client's response is cut
/// (HTTP/1: the connection closes; HTTP/2: the stream is reset).
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response body data for {idle:?}")]
pub struct ResponseBodyStalled {
    pub idle: Duration,
}

/// Wraps an upstream response body for the client: `idle` without a frame while the client waits
/// for one ends the stream with [`ResponseBodyStalled`], after calling `on_stall` once with the
/// number of body bytes passed on. Time the client spends not reading never counts. Frames pass
/// through as they arrive; the stalled upstream connection is closed, never pooled.
pub fn limit_response_body<F>(body: UpstreamBody, idle: Duration, on_stall: F) -> Body
where
    F: FnOnce(u64) + Send + Sync + Unpin + 'static,
{
    Body::new(StallGuard {
        inner: body,
        idle: IdleTimer::new(idle),
        sent: 0,
        on_stall: Some(on_stall),
    })
}

struct StallGuard<F> {
    inner: UpstreamBody,
    idle: IdleTimer,
    sent: u64,
    /// Taken when the body stalls; `None` afterwards.
    on_stall: Option<F>,
}

impl<F: FnOnce(u64) + Unpin> http_body::Body for StallGuard<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.on_stall.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                if let Some(data) = frame.data_ref() {
                    this.sent = this.sent.saturating_add(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.idle.expired(cx) => {
                if let Some(on_stall) = this.on_stall.take() {
                    on_stall(this.sent);
                }
                Poll::Ready(Some(Err(Box::new(ResponseBodyStalled {
                    idle: this.idle.idle,
                }))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_stall.is_some() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The idle clock of a streamed body. It runs only while the body waits on its source (from the
/// first `Pending` after a frame), never while the reader is busy elsewhere, so a slow reader
/// never counts against the source. The timer is created the first time the source makes us
/// wait: a body whose frames are always ready never arms one.
struct IdleTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl IdleTimer {
    fn new(idle: Duration) -> Self {
        Self {
            idle,
            sleep: None,
            waiting: false,
        }
    }

    /// The source yielded a frame: the clock stops until it makes us wait again.
    fn progressed(&mut self) {
        self.waiting = false;
    }

    /// Called when the source returned `Pending`: starts the clock if it was stopped, and says
    /// whether `idle` has passed since it started. Registers `cx` for the deadline.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let now = Instant::now();
            // A validated idle time fits; a far future stands in for one that would overflow.
            let deadline = now
                .checked_add(self.idle)
                .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// Joins a client and an upstream after the upstream answered `101 Switching Protocols`, copying
/// bytes both ways in a spawned task until either side closes or nothing moves for `idle`.
///
/// `client` is `hyper::upgrade::on(&mut request)`, taken before the request is forwarded. The
/// caller then returns the 101 response (with its `Connection: upgrade` and `Upgrade` headers) to
/// the client; the client side of the upgrade completes once hyper has sent it. The connection
/// permit of the client socket stays held until the tunnel ends.
pub fn tunnel(
    client: OnUpgrade,
    upstream_response: &mut Response<impl Send>,
    idle: Duration,
) -> Result<JoinHandle<()>, ProxyError> {
    let status = upstream_response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::NotUpgraded { status });
    }
    let upstream = hyper::upgrade::on(upstream_response);
    Ok(tokio::spawn(async move {
        let both = tokio::time::timeout(idle, async { tokio::try_join!(client, upstream) });
        let (client, upstream) = match both.await {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                debug!(%error, "upgrade failed; no tunnel");
                return;
            }
            Err(_) => {
                debug!(?idle, "upgrade did not complete in time; no tunnel");
                return;
            }
        };
        let clock = Arc::new(Clock::new());
        let mut client = Watched {
            io: TokioIo::new(client),
            clock: clock.clone(),
        };
        let mut upstream = Watched {
            io: TokioIo::new(upstream),
            clock: clock.clone(),
        };
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok((up, down)) => debug!(up, down, "tunnel closed"),
                Err(error) => debug!(%error, "tunnel failed"),
            },
            () = clock.idle_for(idle) => debug!(?idle, "tunnel idle; closing it"),
        }
    }))
}

/// When bytes last moved through a tunnel.
struct Clock {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.origin + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of a tunnel, marking the shared clock whenever bytes move.
struct Watched<I> {
    io: I,
    clock: Arc<Clock>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            this.clock.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;
    use http::header::{CONNECTION, HOST, UPGRADE};
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioExecutor;
    use hyper_util::server::conn::auto;
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Notify, mpsc};

    /// Generous bound for things that must happen "soon"; a hang fails instead of blocking.
    const GUARD: Duration = Duration::from_secs(20);
    const SHORT: Duration = Duration::from_millis(300);
    const MIB: usize = 1024 * 1024;

    fn install_provider() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }

    /// A hyper server on 127.0.0.1:0 (HTTP/1.1 with upgrades, or HTTP/2), optionally over TLS.
    async fn serve<H, F>(tls: Option<Arc<rustls::ServerConfig>>, handler: H) -> SocketAddr
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let io = TokioIo::new(stream);
                            let _ = builder.serve_connection_with_upgrades(io, service).await;
                        }
                        None => {
                            let io = TokioIo::new(stream);
                            let _ = builder.serve_connection_with_upgrades(io, service).await;
                        }
                    }
                });
            }
        });
        addr
    }

    fn status(code: StatusCode) -> Response<Body> {
        let mut response = Response::new(crate::body::empty());
        *response.status_mut() = code;
        response
    }

    /// The statuses the integrator documents for each error, enough to observe them from a client.
    fn status_for(error: &ProxyError) -> Response<Body> {
        status(match error {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        })
    }

    fn stream_back(response: Response<UpstreamBody>) -> Response<Body> {
        response.map(|body| body.map_err(Into::into).boxed())
    }

    fn retarget<B>(request: &mut Request<B>, upstream: SocketAddr) {
        request.headers_mut().remove(HOST);
        let path = request.uri().path().to_owned();
        *request.uri_mut() = format!("http://{upstream}{path}").parse().unwrap();
    }

    /// A gateway in miniature: limits the client's body, forwards to `upstream`, and joins
    /// upgrades with `tunnel`.
    async fn front(upstream: SocketAddr, max: u64, idle: Duration) -> SocketAddr {
        front_recording(upstream, max, idle, Arc::default()).await
    }

    /// [`front`], also recording the `Debug` of each error `send` returned, before the flag is
    /// consulted, so tests can check the error chain alone.
    async fn front_recording(
        upstream: SocketAddr,
        max: u64,
        idle: Duration,
        errors: Arc<Mutex<Vec<String>>>,
    ) -> SocketAddr {
        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        serve(None, move |mut request: Request<Incoming>| {
            let client = client.clone();
            let errors = errors.clone();
            async move {
                if request.headers().contains_key(UPGRADE) {
                    let client_side = hyper::upgrade::on(&mut request);
                    let (parts, _) = request.into_parts();
                    let mut forwarded = Request::from_parts(parts, crate::body::empty());
                    retarget(&mut forwarded, upstream);
                    let mut response = match client.send(forwarded, GUARD).await {
                        Ok(response) => response,
                        Err(error) => return status_for(&error),
                    };
                    if let Err(error) = tunnel(client_side, &mut response, idle) {
                        return status_for(&error);
                    }
                    return stream_back(response);
                }
                let (parts, incoming) = request.into_parts();
                let (body, flag) = limit_body(incoming, max, idle);
                if let Some(error) = flag.tripped() {
                    return status_for(&error);
                }
                let mut forwarded = Request::from_parts(parts, body);
                retarget(&mut forwarded, upstream);
                match client.send(forwarded, GUARD).await {
                    Ok(response) => stream_back(response),
                    Err(error) => {
                        errors.lock().unwrap().push(format!("{error:?}"));
                        status_for(&flag.tripped().unwrap_or(error))
                    }
                }
            }
        })
        .await
    }

    /// Reads one HTTP/1.1 response head plus its Content-Length body, as text.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut buffer = Vec::new();
        let mut byte = [0u8; 1];
        tokio::time::timeout(GUARD, async {
            while !buffer.ends_with(b"\r\n\r\n") {
                let read = stream.read(&mut byte).await.unwrap();
                assert!(read > 0, "closed mid-head: {buffer:?}");
                buffer.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&buffer).to_string();
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).await.unwrap();
            head + &String::from_utf8_lossy(&body)
        })
        .await
        .expect("no response in time")
    }

    fn chunk(data: &[u8]) -> Vec<u8> {
        let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
        framed.extend_from_slice(data);
        framed.extend_from_slice(b"\r\n");
        framed
    }

    const CHUNKED_POST: &[u8] =
        b"POST /upload HTTP/1.1\r\nHost: gatehouse\r\nTransfer-Encoding: chunked\r\n\r\n";

    /// A response body the test feeds by hand, to see frames arrive one by one.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|next| next.map(|data| Ok(Frame::data(data))))
        }
    }

    #[tokio::test]
    async fn forwards_the_request_and_streams_the_response() {
        let (feed, frames) = mpsc::channel::<Bytes>(1);
        let frames = Arc::new(Mutex::new(Some(frames)));
        let seen = Arc::new(Mutex::new(None));
        let (upstream_frames, upstream_seen) = (frames.clone(), seen.clone());
        let upstream = serve(None, move |request: Request<Incoming>| {
            let frames = upstream_frames.lock().unwrap().take().unwrap();
            *upstream_seen.lock().unwrap() = Some((
                request.method().clone(),
                request.uri().to_string(),
                request.headers().get("x-injected").cloned(),
            ));
            async move { Response::new(Body::new(ChannelBody(frames))) }
        })
        .await;

        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        let request = Request::post(format!("http://{upstream}/api/items?page=2"))
            .header("x-injected", "alice")
            .body(crate::body::full("payload"))
            .unwrap();
        let mut response = client.send(request, GUARD).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (method, uri, header) = seen.lock().unwrap().clone().unwrap();
        assert_eq!(method, http::Method::POST);
        assert_eq!(uri, "/api/items?page=2");
        assert_eq!(header.unwrap(), "alice");

        feed.send(Bytes::from_static(b"first")).await.unwrap();
        let first = tokio::time::timeout(GUARD, response.body_mut().frame())
            .await
            .expect("the first frame was held back: the response was buffered")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        // The second frame only exists once the client has the first: nothing was buffered.
        feed.send(Bytes::from_static(b"second")).await.unwrap();
        drop(feed);
        let rest = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second");
    }

    #[tokio::test]
    async fn response_body_idle_clock_runs_only_while_the_client_waits_on_the_upstream() {
        let (feed, frames) = mpsc::channel::<Bytes>(4);
        let frames = Arc::new(Mutex::new(Some(frames)));
        let upstream = serve(None, move |_request: Request<Incoming>| {
            let frames = frames.lock().unwrap().take().unwrap();
            async move { Response::new(Body::new(ChannelBody(frames))) }
        })
        .await;
        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        let request = Request::get(format!("http://{upstream}/"))
            .body(crate::body::empty())
            .unwrap();
        let response = client.send(request, GUARD).await.unwrap();
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let recorded = stalls.clone();
        let mut body = limit_response_body(response.into_body(), SHORT, move |sent| {
            recorded.lock().unwrap().push(sent);
        });

        feed.send(Bytes::from_static(b"first")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        // A client that stops reading for longer than the idle time is not the upstream's fault.
        feed.send(Bytes::from_static(b"second")).await.unwrap();
        tokio::time::sleep(SHORT * 3).await;
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), "second");
        assert!(stalls.lock().unwrap().is_empty());

        // Then the upstream goes quiet while the client waits: cut after the idle time, once.
        let started = Instant::now();
        let cut = tokio::time::timeout(GUARD, body.frame())
            .await
            .expect("the stalled body was never cut")
            .unwrap()
            .unwrap_err();
        assert!(started.elapsed() >= SHORT);
        assert!(
            cut.downcast_ref::<ResponseBodyStalled>().is_some(),
            "{cut:?}"
        );
        assert_eq!(*stalls.lock().unwrap(), [11]);
        assert!(body.frame().await.is_none());
        drop(feed);
    }

    #[tokio::test]
    async fn http2_client_request_reaches_an_http1_upstream() {
        let upstream = serve(None, version_name).await;
        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        let request = Request::get(format!("http://{upstream}/"))
            .version(Version::HTTP_2)
            .body(crate::body::empty())
            .unwrap();
        let response = client.send(request, GUARD).await.unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, "HTTP/1.1");
    }

    struct TestCa {
        dir: tempfile::TempDir,
        server: Arc<rustls::ServerConfig>,
    }

    impl TestCa {
        fn ca_file(&self) -> PathBuf {
            self.dir.path().join("ca.pem")
        }
    }

    /// A CA written to `ca.pem`, and a server config whose leaf for 127.0.0.1 it signed.
    fn test_ca() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "upstream test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "upstream");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes())
                .unwrap();
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        TestCa {
            dir,
            server: Arc::new(server),
        }
    }

    async fn version_name(request: Request<Incoming>) -> Response<Body> {
        Response::new(crate::body::full(format!("{:?}", request.version())))
    }

    #[tokio::test]
    async fn https_upstream_is_trusted_through_ca_file_and_speaks_h2() {
        install_provider();
        let ca = test_ca();
        let upstream = serve(Some(ca.server.clone()), version_name).await;
        let client = UpstreamClient::new(&ClientSettings {
            ca_file: Some(ca.ca_file()),
            ..ClientSettings::default()
        })
        .unwrap();
        let request = Request::get(format!("https://{upstream}/"))
            .body(crate::body::empty())
            .unwrap();
        let response = client.send(request, GUARD).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, "HTTP/2.0");
    }

    /// What an upstream was told: version, the URI's authority (HTTP/2 `:authority`), `Host`.
    async fn told(request: Request<Incoming>) -> Response<Body> {
        let authority = request.uri().authority().map(|a| a.to_string());
        let hosts: Vec<_> = request.headers().get_all(HOST).iter().cloned().collect();
        Response::new(crate::body::full(format!(
            "{:?} {authority:?} {hosts:?}",
            request.version()
        )))
    }

    async fn told_text(client: &UpstreamClient, url: String, host: Option<&str>) -> String {
        let mut request = Request::get(url);
        if let Some(host) = host {
            request = request.header(HOST, host);
        }
        let request = request.body(crate::body::empty()).unwrap();
        let response = client.send(request, GUARD).await.unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(text.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_callers_host_is_told_to_an_h2_upstream_while_tls_verifies_the_urls_host() {
        install_provider();
        let ca = test_ca();
        let upstream = serve(Some(ca.server.clone()), told).await;
        let client = UpstreamClient::new(&ClientSettings {
            ca_file: Some(ca.ca_file()),
            ..ClientSettings::default()
        })
        .unwrap();
        // The certificate names 127.0.0.1 only, and `localhost:PORT` reaches the same server:
        // had the TLS name come from the Host, the certificate would be refused.
        let url = format!("https://{upstream}/x");
        let host = format!("localhost:{}", upstream.port());
        assert_eq!(
            told_text(&client, url.clone(), Some(&host)).await,
            format!("HTTP/2.0 Some(\"{host}\") []")
        );
        assert_eq!(
            told_text(&client, url, None).await,
            format!("HTTP/2.0 Some(\"{upstream}\") []")
        );
    }

    #[tokio::test]
    async fn a_callers_host_is_sent_to_an_http1_upstream_else_the_urls_authority() {
        let upstream = serve(None, told).await;
        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        let url = format!("http://{upstream}/x");
        assert_eq!(
            told_text(&client, url.clone(), Some("public.example")).await,
            "HTTP/1.1 None [\"public.example\"]"
        );
        assert_eq!(
            told_text(&client, url, None).await,
            format!("HTTP/1.1 None [\"{upstream}\"]")
        );
    }

    #[tokio::test]
    async fn https_upstream_with_an_untrusted_certificate_is_a_connect_error() {
        install_provider();
        let ca = test_ca();
        let upstream = serve(Some(ca.server.clone()), version_name).await;
        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        let request = Request::get(format!("https://{upstream}/"))
            .body(crate::body::empty())
            .unwrap();
        let error = client.send(request, GUARD).await.unwrap_err();
        assert!(matches!(error, ProxyError::Connect(_)), "{error:?}");
        assert_eq!(error.cause(), "TLS failure", "{error:?}");
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.pem");
        let settings = ClientSettings {
            ca_file: Some(missing.clone()),
            ..ClientSettings::default()
        };
        let error = UpstreamClient::new(&settings).unwrap_err();
        assert!(matches!(&error, ProxyError::CaFile { path, .. } if path == &missing));
        assert!(error.to_string().contains("absent.pem"));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let settings = ClientSettings {
            ca_file: Some(empty),
            ..ClientSettings::default()
        };
        let error = UpstreamClient::new(&settings).unwrap_err();
        assert!(
            matches!(error, ProxyError::NoCaCertificate { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        let request = Request::get(format!("http://{addr}/"))
            .body(crate::body::empty())
            .unwrap();
        let error = client.send(request, GUARD).await.unwrap_err();
        assert!(matches!(error, ProxyError::Connect(_)), "{error:?}");
        assert_eq!(error.cause(), "connection refused", "{error:?}");
        assert!(error.is_upstream_failure());
    }

    #[tokio::test]
    async fn silent_upstream_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let client = UpstreamClient::new(&ClientSettings::default()).unwrap();
        let request = Request::get(format!("http://{addr}/"))
            .body(crate::body::empty())
            .unwrap();
        let started = Instant::now();
        let error = tokio::time::timeout(GUARD, client.send(request, SHORT))
            .await
            .expect("send ignored its timeout")
            .unwrap_err();
        assert!(matches!(error, ProxyError::Timeout { after } if after == SHORT));
        assert_eq!(error.cause(), "timed out");
        assert!(started.elapsed() >= SHORT);
        held.abort();
    }

    /// An upstream that reads the whole body, counting frames and bytes as they arrive.
    #[derive(Default)]
    struct Sink {
        requests: AtomicUsize,
        received: AtomicU64,
        complete: AtomicBool,
        first_mib: Notify,
        trailers: Mutex<Option<http::HeaderMap>>,
    }

    async fn sink_upstream(sink: Arc<Sink>) -> SocketAddr {
        serve(None, move |request: Request<Incoming>| {
            let sink = sink.clone();
            async move {
                sink.requests.fetch_add(1, Ordering::SeqCst);
                let mut body = request.into_body();
                let mut frames = 0u64;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else {
                        return status(StatusCode::BAD_REQUEST);
                    };
                    match frame.into_data() {
                        Ok(data) => {
                            frames += 1;
                            let before =
                                sink.received.fetch_add(data.len() as u64, Ordering::SeqCst);
                            let after = before + data.len() as u64;
                            if before < MIB as u64 && after >= MIB as u64 {
                                sink.first_mib.notify_one();
                            }
                        }
                        Err(frame) => {
                            *sink.trailers.lock().unwrap() = frame.into_trailers().ok();
                        }
                    }
                }
                sink.complete.store(true, Ordering::SeqCst);
                let total = sink.received.load(Ordering::SeqCst);
                Response::new(crate::body::full(format!("total={total} frames={frames}")))
            }
        })
        .await
    }

    #[tokio::test]
    async fn oversized_chunked_body_is_cut_mid_stream() {
        let sink = Arc::new(Sink::default());
        let upstream = sink_upstream(sink.clone()).await;
        let errors = Arc::default();
        let gateway = front_recording(upstream, 1000, GUARD, Arc::clone(&errors)).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        let mut request = CHUNKED_POST.to_vec();
        for _ in 0..5 {
            request.extend(chunk(&[b'x'; 400]));
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let _ = stream.write_all(&request).await;
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert_eq!(*errors.lock().unwrap(), ["BodyTooLarge { max: 1000 }"]);
        assert!(!sink.complete.load(Ordering::SeqCst));
        assert!(sink.received.load(Ordering::SeqCst) <= 1000);
    }

    #[tokio::test]
    async fn declared_oversized_body_is_refused_before_the_upstream_sees_it() {
        let sink = Arc::new(Sink::default());
        let upstream = sink_upstream(sink.clone()).await;
        let gateway = front(upstream, 1000, GUARD).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: gatehouse\r\nContent-Length: 5000\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert_eq!(sink.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn slow_body_trips_the_idle_timeout() {
        let sink = Arc::new(Sink::default());
        let upstream = sink_upstream(sink.clone()).await;
        let errors = Arc::default();
        let gateway = front_recording(upstream, 1000, SHORT, Arc::clone(&errors)).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        let mut request = CHUNKED_POST.to_vec();
        request.extend(chunk(b"hello"));
        stream.write_all(&request).await.unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert_eq!(*errors.lock().unwrap(), ["BodyTimeout { idle: 300ms }"]);
        assert!(!sink.complete.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn client_aborting_its_body_is_a_client_body_error() {
        let sink = Arc::new(Sink::default());
        let upstream = sink_upstream(sink.clone()).await;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let gateway = front_recording(upstream, 1000, GUARD, errors.clone()).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        let mut request = CHUNKED_POST.to_vec();
        request.extend(chunk(b"hello"));
        stream.write_all(&request).await.unwrap();
        drop(stream);
        tokio::time::timeout(GUARD, async {
            while errors.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the aborted body produced no error");
        let recorded = errors.lock().unwrap().clone();
        assert!(recorded[0].starts_with("ClientBody("), "{recorded:?}");
        assert!(!sink.complete.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn request_trailers_are_not_forwarded() {
        let sink = Arc::new(Sink::default());
        let upstream = sink_upstream(sink.clone()).await;
        let gateway = front(upstream, 1000, GUARD).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        // `Trailer` names the field, or hyper's encoder would drop it on its own.
        let mut request = b"POST /upload HTTP/1.1\r\nHost: gatehouse\r\n\
            Transfer-Encoding: chunked\r\nTrailer: X-User\r\n\r\n"
            .to_vec();
        request.extend(chunk(b"hello"));
        request.extend_from_slice(b"0\r\nX-User: admin\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.ends_with("total=5 frames=1"), "{response}");
        assert!(sink.trailers.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn large_body_streams_through_limit_body_unbuffered() {
        let sink = Arc::new(Sink::default());
        let upstream = sink_upstream(sink.clone()).await;
        let gateway = front(upstream, 128 * MIB as u64, GUARD).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        stream.write_all(CHUNKED_POST).await.unwrap();
        let block = vec![b'z'; MIB];
        stream.write_all(&chunk(&block)).await.unwrap();
        // The rest of the body is only sent once the upstream holds the first MiB; a gateway that
        // buffered the body would wait here forever.
        tokio::time::timeout(GUARD, sink.first_mib.notified())
            .await
            .expect("the upstream saw nothing before the body ended: it was buffered");
        for _ in 1..64 {
            stream.write_all(&chunk(&block)).await.unwrap();
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let frames: u64 = response.rsplit_once("frames=").unwrap().1.parse().unwrap();
        assert!(
            response.contains(&format!("total={}", 64 * MIB)),
            "{response}"
        );
        assert!(frames > 1);
    }

    /// Answers upgrades with 101 and echoes the tunnelled bytes; `/refuse` answers 200.
    async fn echo_upstream() -> SocketAddr {
        serve(None, |mut request: Request<Incoming>| async move {
            if request.uri().path() == "/refuse" {
                return status(StatusCode::OK);
            }
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buffer = [0u8; 1024];
                while let Ok(read) = io.read(&mut buffer).await {
                    if read == 0 || io.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
            let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
            response
                .headers_mut()
                .insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
            response
                .headers_mut()
                .insert(UPGRADE, http::HeaderValue::from_static("websocket"));
            response
        })
        .await
    }

    const UPGRADE_REQUEST: &str =
        "HTTP/1.1\r\nHost: gatehouse\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";

    #[tokio::test]
    async fn websocket_upgrade_is_tunnelled_both_ways_then_closed_when_idle() {
        let upstream = echo_upstream().await;
        let gateway = front(upstream, 1000, SHORT).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        stream
            .write_all(format!("GET /ws {UPGRADE_REQUEST}").as_bytes())
            .await
            .unwrap();
        let head = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");

        for message in [&b"hello"[..], &b"second message"[..]] {
            stream.write_all(message).await.unwrap();
            let mut echoed = vec![0u8; message.len()];
            tokio::time::timeout(GUARD, stream.read_exact(&mut echoed))
                .await
                .expect("no echo through the tunnel")
                .unwrap();
            assert_eq!(echoed, message);
        }

        let idle_from = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(GUARD, stream.read_to_end(&mut rest))
            .await
            .expect("idle tunnel stayed open")
            .unwrap();
        assert!(rest.is_empty());
        assert!(idle_from.elapsed() >= SHORT / 2);
    }

    #[tokio::test]
    async fn upgrade_the_upstream_refused_is_not_tunnelled() {
        let upstream = echo_upstream().await;
        let gateway = front(upstream, 1000, SHORT).await;
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        stream
            .write_all(format!("GET /refuse {UPGRADE_REQUEST}").as_bytes())
            .await
            .unwrap();
        let head = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    }
}
