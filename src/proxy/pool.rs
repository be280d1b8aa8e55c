//! Upstream connections kept for reuse: one idle stack of HTTP/1.1 connections and at most one
//! shared HTTP/2 connection per origin, on `hyper::client::conn`.
//!
//! Why not hyper-util's legacy client: its pool hashes every request's origin with SipHash, spawns
//! a task per HTTP/1 request to wait for the connection to be ready again, formats the `Host`
//! header per request and moves the request through several large futures; on a keep-alive
//! request that was about a fifth of everything the gateway did (measured with callgrind). Here a
//! route's origin is found by comparing its scheme and authority with the one the route uses, the
//! `Host` value is built once per origin, and a connection goes back on its stack when the
//! response body has been read to its end ([`UpstreamBody`]), with no task in between.
//!
//! An HTTP/1 connection has no task of its own: hyper's dispatch for it ([`Http1`]) is polled by
//! the task of the request using it, while the request is sent and while its response body is
//! read, and by nobody while it is idle. Every exchange used to cross two tasks (the request into
//! the connection's task, the response head and every body frame back), each crossing a wakeup
//! and a scheduling of the other task. HTTP/2 connections, shared by concurrent requests, keep
//! their task; so does an HTTP/1 connection once it switched protocols (`101`). With no task
//! reading it, an idle connection its upstream closed is noticed by the sweeper's next pass (or
//! by the next request that takes it, which then goes on another connection).
//!
//! Rules: a connection is handed out only when it is open, was idle for less than the idle
//! timeout (or than the `Keep-Alive: timeout=` its upstream sent, less a margin, when that is
//! shorter) and hyper says it is ready; a body dropped before its end (or a `101` response) never
//! returns its connection. A request is sent again when hyper returns it unsent (a pooled
//! connection closed under it), or, once and on a new connection, when it is a bodiless GET, HEAD
//! or OPTIONS whose reused connection closed before any response: never a request that may have
//! changed something upstream. Idle connections are closed by a sweeper task once they are older
//! than the idle timeout, so an upstream sees no socket held longer than that. A request's send
//! timeout runs on a timer its HTTP/1 connection keeps between requests (`Deadline`). A connection
//! whose exchange is not over when its response body ends (an upstream that answered before
//! reading the whole request body) is closed, not kept.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::coop;
use tokio::time::Sleep;
use tower_service::Service;
use tracing::debug;

use super::headers::has;
use crate::body::{Body, BoxError};

/// The most by which a connection is retired before the idle time its upstream advertised in
/// `Keep-Alive: timeout=N`: the upstream's clock started when it finished writing the response,
/// ours when we finished reading it, and N is in whole seconds. A quarter of N when that is less.
const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// How long a connection the pool closes gets to end cleanly (TLS `close_notify`, FIN) before its
/// socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// `Keep-Alive` (RFC 9112 appendix C.2.2; still sent by Apache, nginx and Node to say how long
/// they keep an idle connection).
static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");

/// What went wrong on the way to a response head.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection: DNS, refused, unreachable, connect timeout, TLS, or the handshake.
    #[error("cannot connect to {origin}")]
    Connect {
        origin: String,
        #[source]
        source: BoxError,
    },
    /// The request was sent (or may have been) and failed.
    #[error("the upstream exchange failed")]
    Exchange(#[source] hyper::Error),
    /// No response head within the timeout given to [`Pool::send`].
    #[error("no response head within {after:?}")]
    TimedOut { after: Duration },
    /// The request URI has no scheme or authority, or no usable one (a caller bug: route
    /// upstreams are validated with the config).
    #[error("the upstream URI {0} is not absolute")]
    NotAbsolute(Uri),
    /// The `Host` to present to an HTTP/2 upstream is not an authority (a caller bug: it is the
    /// one stage 1 checked).
    #[error("the Host {0:?} cannot be an HTTP/2 :authority")]
    NotAnAuthority(HeaderValue),
}

/// The pooled connections of every origin one client has talked to.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    max_idle: usize,
    origins: Mutex<Vec<Arc<Origin>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

/// One scheme + authority and its connections.
#[derive(Debug)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header for HTTP/1 requests: the authority without a default port.
    host: HeaderValue,
    /// `scheme://authority/`, what the connector is called with.
    connect_uri: Uri,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    max_idle: usize,
    /// The pool's idle timeout: the longest any connection is kept.
    idle_timeout: Duration,
}

struct Idle {
    conn: Http1,
    since: Instant,
    /// How long it may stay idle: the pool's idle timeout, or less when the upstream said it
    /// closes idle connections sooner.
    keep_for: Duration,
    /// The send timer its last request used, for its next one (see [`Deadline`]).
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("since", &self.since)
            .field("keep_for", &self.keep_for)
            .finish_non_exhaustive()
    }
}

impl Idle {
    fn is_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.keep_for || !self.conn.is_open()
    }
}

/// hyper's dispatch of one HTTP/1 connection (its `Connection`, with upgrades): it writes the
/// requests and reads the responses when polled. Boxed once per connection, so that moving the
/// connection between the pool and a request moves a pointer.
type Dispatch = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// An HTTP/1 connection: the sender a request goes into, and the dispatch that the task using the
/// connection polls (`None` once the connection has ended).
struct Http1 {
    sender: http1::SendRequest<Body>,
    dispatch: Option<Dispatch>,
}

impl Http1 {
    /// Lets the connection make progress (write the request, read the response, notice that the
    /// upstream closed), to be woken through `cx` when it can make more. Whether it is still
    /// open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(dispatch) = &mut self.dispatch
            && let Poll::Ready(ended) = dispatch.as_mut().poll(cx)
        {
            if let Err(error) = ended {
                debug!(%error, "upstream HTTP/1 connection ended");
            }
            self.dispatch = None;
        }
        self.dispatch.is_some()
    }

    /// Drives the connection until `outcome`, which only its dispatch can complete, is ready,
    /// and polls `outcome` for no task. The connection is driven for no task first, and for
    /// `cx` only when that was not enough: a dispatch driven for `cx` leaves `cx`'s waker with
    /// its body channel, and the body's reader, this same task, would wake itself on taking the
    /// data (one more, empty, poll of the whole client connection per request).
    fn drive_for<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut outcome: impl FnMut() -> Poll<T>,
    ) -> Poll<T> {
        self.settle();
        if let Poll::Ready(done) = outcome() {
            return Poll::Ready(done);
        }
        self.drive(cx);
        outcome()
    }

    /// Drives the connection once for no task: it finishes what it can now and leaves no task's
    /// waker behind to be woken by an idle connection's events. Whether it is still open.
    fn settle(&mut self) -> bool {
        self.drive(&mut no_task())
    }

    fn is_open(&self) -> bool {
        self.dispatch.is_some() && !self.sender.is_closed()
    }

    /// Sends `req` and drives the connection until its response head (or its failure: hyper
    /// returns a request it never wrote). The response is polled for no task: only this
    /// connection's dispatch completes it, and that runs here.
    async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let mut response = pin!(self.sender.try_send_request(req));
        // The first turn writes the request, and its response cannot be in yet: the connection
        // is driven for this task at once, to wake it when the response arrives.
        let mut written = false;
        std::future::poll_fn(|cx| {
            if !std::mem::replace(&mut written, true) {
                self.drive(cx);
                return response.as_mut().poll(&mut no_task());
            }
            self.drive_for(cx, || response.as_mut().poll(&mut no_task()))
        })
        .await
    }

    /// Closes the connection: with no sender left, its dispatch shuts the connection down
    /// cleanly, given [`CLOSE_WAIT`] on a task of its own (outside a runtime it is dropped).
    fn close(self) {
        let Self { sender, dispatch } = self;
        drop(sender);
        if let (Some(dispatch), Ok(runtime)) = (dispatch, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(CLOSE_WAIT, dispatch).await;
            });
        }
    }

    /// Hands the connection to a task of its own, for a tunnel after `101`: the dispatch
    /// completes the upgrade, after which the upgraded IO belongs to whoever took it.
    fn detach(self) {
        if let Some(dispatch) = self.dispatch {
            tokio::spawn(async move {
                if let Err(error) = dispatch.await {
                    debug!(%error, "upstream HTTP/1 connection ended");
                }
            });
        }
    }
}

/// A context that wakes no task, for polling what only the polling task itself can complete.
fn no_task() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// A connection handed out for one request.
enum Conn {
    Http1 { conn: Http1, pooled: bool },
    Http2(http2::SendRequest<Body>),
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            connector,
            idle_timeout,
            max_idle,
            origins: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` and returns the response head, or [`PoolError::TimedOut`] when that takes
    /// longer than `timeout`: connecting, the TLS handshake, waiting for a pooled connection to
    /// be ready, sending the request (body included) and every retry count against it.
    ///
    /// The URI is absolute and names the origin to connect to: TCP, TLS server name (SNI) and
    /// certificate verification always follow it. A `Host` header, if the caller set one, is the
    /// authority the upstream is told (HTTP/1 `Host`, HTTP/2 `:authority`); without one it is the
    /// URI's authority, without a default port.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let mut deadline = Deadline::new(timeout);
        let origin = self.origin(req.uri())?;
        // Set once a replayed request is under way: it goes on a new connection, and only once.
        let mut replaying = false;
        loop {
            let pooled = match replaying {
                false => self.checkout(&origin, &mut deadline),
                true => None,
            };
            let conn = match pooled {
                Some(conn) => conn,
                // Boxed: connecting is rare, and its future (TLS, handshakes) is large enough
                // that carrying it inline made every request's future kilobytes bigger.
                None => deadline.bound(Box::pin(self.connect(&origin))).await??,
            };
            match conn {
                Conn::Http2(mut sender) => {
                    prepare_http2(&mut req, &origin)?;
                    let response = deadline.bound(sender.send_request(req)).await?;
                    return response
                        .map(|r| r.map(|body| UpstreamBody::new(body, None)))
                        .map_err(PoolError::Exchange);
                }
                Conn::Http1 { mut conn, pooled } => {
                    prepare_http1(&mut req, &origin.host);
                    let replay = if pooled { replay_copy(&req) } else { None };
                    match deadline.bound(conn.send(req)).await? {
                        Ok(response) => {
                            let timer = deadline.timer.take();
                            return Ok(finish_http1(response, conn, timer, &origin));
                        }
                        Err(mut failed) => match (failed.take_message(), replay) {
                            // Never written: the pooled connection closed under it. Another
                            // idle connection or a fresh one gets it.
                            (Some(unsent), _) if pooled => {
                                debug!(error = %failed.error(), "pooled upstream connection closed; retrying");
                                req = unsent;
                            }
                            // Written, but the reused connection closed before a response:
                            // the upstream's keep-alive ran out as the request arrived. Safe
                            // to send again; a request that may have changed something is not.
                            (None, Some(copy)) if closed_before_response(failed.error()) => {
                                debug!(error = %failed.error(), "pooled upstream connection closed before answering; sending again on a new one");
                                req = copy;
                                replaying = true;
                            }
                            _ => return Err(PoolError::Exchange(failed.into_error())),
                        },
                    }
                }
            }
        }
    }

    /// The origin of `uri`, created on first use (with its sweeper).
    fn origin(&self, uri: &Uri) -> Result<Arc<Origin>, PoolError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(PoolError::NotAbsolute(uri.clone()));
        };
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        // A route talks to one origin: this is a comparison of two short strings, not a lookup.
        // Byte for byte: `Authority`'s own `==` folds case a byte at a time, which was most of
        // this function's cost, and a route builds every URI from its one upstream spelling (a
        // reload that changes only the case gets an origin of its own, with its own connections).
        if let Some(found) = origins
            .iter()
            .find(|o| o.authority.as_str() == authority.as_str() && o.scheme == *scheme)
        {
            return Ok(found.clone());
        }
        let origin = Origin::new(
            scheme.clone(),
            authority.clone(),
            self.max_idle,
            self.idle_timeout,
        )
        .ok_or_else(|| PoolError::NotAbsolute(uri.clone()))?;
        let origin = Arc::new(origin);
        tokio::spawn(sweep(Arc::downgrade(&origin), self.idle_timeout));
        origins.push(origin.clone());
        Ok(origin)
    }

    /// A live connection of `origin`, if it has one: the shared HTTP/2 one, or the most recently
    /// idle HTTP/1 one that is still open, fresh and ready (whose send timer `deadline` takes).
    fn checkout(&self, origin: &Origin, deadline: &mut Deadline) -> Option<Conn> {
        if let Some(sender) = origin.live_h2() {
            return Some(Conn::Http2(sender));
        }
        loop {
            let idle = origin.pop_idle()?;
            if idle.is_due(Instant::now()) {
                idle.conn.close();
                continue;
            }
            // Only a connection whose exchange was over is kept (`Origin::put_idle`), and nothing
            // moves it out of ready while it is idle, so there is nothing to wait for.
            let conn = idle.conn;
            if conn.sender.is_ready() {
                deadline.adopt(idle.timer);
                return Some(Conn::Http1 { conn, pooled: true });
            }
            conn.close();
        }
    }

    /// A new connection to `origin`: HTTP/2 when TLS negotiated `h2`, else HTTP/1.1.
    async fn connect(&self, origin: &Origin) -> Result<Conn, PoolError> {
        let connect_error = |source: BoxError| PoolError::Connect {
            origin: format!("{}://{}", origin.scheme, origin.authority),
            source,
        };
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(connect_error)?;
        let io = connector
            .call(origin.connect_uri.clone())
            .await
            .map_err(connect_error)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake::<_, Body>(io)
                .await
                .map_err(|e| connect_error(e.into()))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            origin.set_h2(sender.clone());
            return Ok(Conn::Http2(sender));
        }
        let (sender, connection) = http1::Builder::new()
            .handshake::<_, Body>(io)
            .await
            .map_err(|e| connect_error(e.into()))?;
        Ok(Conn::Http1 {
            conn: Http1 {
                sender,
                dispatch: Some(Box::pin(connection.with_upgrades())),
            },
            pooled: false,
        })
    }
}

/// The `Host` an HTTP/1 request to `scheme://authority` carries: the authority without a
/// default port. `None` if it cannot be a header value.
pub fn host_header(scheme: &Scheme, authority: &Authority) -> Option<HeaderValue> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let text = match authority.port_u16() {
        Some(port) if port != default_port => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(text).ok()
}

impl Origin {
    fn new(
        scheme: Scheme,
        authority: Authority,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Option<Self> {
        let mut parts = Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
        let connect_uri = Uri::from_parts(parts).ok()?;
        let host = host_header(&scheme, &authority)?;
        Some(Self {
            scheme,
            authority,
            host,
            connect_uri,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            max_idle,
            idle_timeout,
        })
    }

    fn live_h2(&self) -> Option<http2::SendRequest<Body>> {
        let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        match h2.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    fn set_h2(&self, sender: http2::SendRequest<Body>) {
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    fn pop_idle(&self) -> Option<Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// How long a connection may stay idle after a response whose upstream advertised
    /// `keep_alive` (`Keep-Alive: timeout=`): a margin less than that, never more than the
    /// pool's idle timeout. Zero: not worth keeping.
    fn keep_for(&self, keep_alive: Option<Duration>) -> Duration {
        let Some(advertised) = keep_alive else {
            return self.idle_timeout;
        };
        let margin = (advertised / 4).min(KEEP_ALIVE_MARGIN);
        (advertised - margin).min(self.idle_timeout)
    }

    /// Puts a connection whose response has been read back on the stack for `keep_for`, with
    /// the send timer of its last request. Closed instead when its exchange is not over (the
    /// upstream answered before the whole request body was sent), when the stack is full or
    /// when `keep_for` is zero.
    fn put_idle(&self, mut conn: Http1, keep_for: Duration, timer: Option<Pin<Box<Sleep>>>) {
        // One more turn lets hyper finish the exchange and take the connection back to idle.
        if !conn.settle() || !conn.sender.is_ready() || keep_for.is_zero() {
            conn.close();
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            drop(idle);
            conn.close();
            return;
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
            keep_for,
            timer,
        });
    }

    /// Closes the idle connections that the upstream closed or that are due for retirement.
    fn drop_expired(&self) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            // Not always oldest first: an upstream's advertised keep-alive may have changed.
            // Settling reads what an idle connection received: the upstream's FIN ends it.
            idle.extract_if(.., |i| {
                i.conn.settle();
                i.is_due(now)
            })
            .collect()
        };
        // Closed outside the lock.
        for idle in expired {
            idle.conn.close();
        }
    }
}

/// Closes expired idle connections of `origin` until the origin is gone.
async fn sweep(origin: Weak<Origin>, timeout: Duration) {
    let period = (timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(origin) = origin.upgrade() else {
            return;
        };
        origin.drop_expired();
    }
}

/// The send timeout of one request, on a timer that an HTTP/1 connection keeps from one request
/// to the next and that each request sets to its own deadline: tokio moves a registered timer
/// later with one atomic operation, where `tokio::time::timeout` registered a timer and cancelled
/// it again, under the timer driver's lock both times, on every request (−0.9k instructions per
/// keep-alive request with callgrind: BENCHMARKS.md, "Levers, one at a time").
///
/// A timer belongs to the runtime it was created on, as the connection's task does.
struct Deadline {
    at: tokio::time::Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(timeout: Duration) -> Self {
        let now = tokio::time::Instant::now();
        // As `tokio::time::timeout` does, a far future stands in for a deadline that overflows.
        let at = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        Self {
            at,
            timeout,
            timer: None,
        }
    }

    /// Takes a pooled connection's timer, set to this request's deadline, unless the request
    /// already has one.
    fn adopt(&mut self, timer: Option<Pin<Box<Sleep>>>) {
        if let (None, Some(mut timer)) = (&self.timer, timer) {
            timer.as_mut().reset(self.at);
            self.timer = Some(timer);
        }
    }

    /// `future`'s output, or [`PoolError::TimedOut`] once the deadline has passed. As in
    /// `tokio::time::timeout`, the future is polled first, and the timer is polled even when the
    /// future used up the task's budget, so a busy future cannot outrun its deadline.
    async fn bound<F: Future>(&mut self, future: F) -> Result<F::Output, PoolError> {
        let mut future = pin!(future);
        std::future::poll_fn(|cx| {
            let had_budget = coop::has_budget_remaining();
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            let at = self.at;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            let fired = if had_budget && !coop::has_budget_remaining() {
                Pin::new(&mut coop::unconstrained(timer.as_mut())).poll(cx)
            } else {
                timer.as_mut().poll(cx)
            };
            fired.map(|()| {
                Err(PoolError::TimedOut {
                    after: self.timeout,
                })
            })
        })
        .await
    }
}

/// The `timeout` parameter of a response's `Keep-Alive` fields, in whole seconds: the idle time
/// after which the upstream closes the connection. Parameters are `name=value` separated by `,`
/// (or `;`, seen in the wild), the name in any case, the value digits, possibly quoted; anything
/// else is ignored, and the smallest timeout wins when there are several.
fn keep_alive_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    if !has(headers, &KEEP_ALIVE) {
        return None;
    }
    headers
        .get_all(&KEEP_ALIVE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b',' || b == b';'))
        .filter_map(|param| {
            let equals = param.iter().position(|&b| b == b'=')?;
            let (name, value) = (&param[..equals], &param[equals + 1..]);
            if !name.trim_ascii().eq_ignore_ascii_case(b"timeout") {
                return None;
            }
            let value = value.trim_ascii();
            let digits = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            // Ten digits is over 300 years; longer is garbage, and cannot overflow.
            if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(digits).ok()?.parse::<u64>().ok()
        })
        .min()
        .map(Duration::from_secs)
}

/// A copy of `req` to send again should a reused connection die under it, for the requests that
/// can be repeated without their sender noticing: safe methods (RFC 9110 §9.2.1; RFC 9112 §9.3.1
/// lets a client retry them automatically) with no body to replay. `None` for everything else.
///
/// Every bodiless GET on a pooled connection pays for this copy of its head (method, URI and
/// headers, whose values share their bytes): the price of not failing it when the upstream's
/// keep-alive ends just as it is sent.
fn replay_copy(req: &Request<Body>) -> Option<Request<Body>> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(crate::body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether an exchange failed because the connection was closed or reset before a complete
/// response head came back (hyper reports nothing else before the head as these kinds).
fn closed_before_response(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    let io = std::error::Error::source(error).and_then(|e| e.downcast_ref::<std::io::Error>());
    io.is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        )
    })
}

/// HTTP/1.1 wants origin-form and a `Host` header: the caller's, else the origin's.
fn prepare_http1(req: &mut Request<Body>, host: &HeaderValue) {
    *req.version_mut() = Version::HTTP_11;
    if req.uri().scheme().is_some() {
        let origin_form = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin_form);
    }
    if !has(req.headers(), &http::header::HOST) {
        req.headers_mut().insert(http::header::HOST, host.clone());
    }
}

/// HTTP/2 carries the authority in `:authority`, taken from the URI, and no `Host` (RFC 9113
/// §8.3.1). A caller's `Host` becomes the URI's authority; the connection was already chosen
/// by the origin, so this changes what the upstream is told, never where the request goes.
fn prepare_http2(req: &mut Request<Body>, origin: &Origin) -> Result<(), PoolError> {
    *req.version_mut() = Version::HTTP_2;
    let Some(host) = req.headers_mut().remove(http::header::HOST) else {
        return Ok(());
    };
    let authority = Authority::try_from(host.as_bytes())
        .map_err(|_| PoolError::NotAnAuthority(host.clone()))?;
    let mut parts = Parts::default();
    parts.scheme = Some(origin.scheme.clone());
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| PoolError::NotAnAuthority(host))?;
    Ok(())
}

fn finish_http1(
    response: Response<Incoming>,
    conn: Http1,
    timer: Option<Pin<Box<Sleep>>>,
    origin: &Arc<Origin>,
) -> Response<UpstreamBody> {
    // After `101` the connection belongs to the tunnel.
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        conn.detach();
        return response.map(|body| UpstreamBody::new(body, None));
    }
    let give_back = GiveBack {
        origin: origin.clone(),
        conn,
        keep_for: origin.keep_for(keep_alive_timeout(response.headers())),
        timer,
    };
    response.map(|body| UpstreamBody::new(body, Some(give_back)))
}

/// An upstream response body. Read to its end, it returns its HTTP/1 connection to the pool;
/// until then, reading it is what drives the connection.
pub struct UpstreamBody {
    inner: Incoming,
    give_back: Option<GiveBack>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("inner", &self.inner)
            .field("pooled", &self.give_back.is_some())
            .finish()
    }
}

/// An HTTP/1 connection whose response body is being read, where it goes once that is over, and
/// for how long.
struct GiveBack {
    origin: Arc<Origin>,
    conn: Http1,
    keep_for: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl UpstreamBody {
    fn new(inner: Incoming, give_back: Option<GiveBack>) -> Self {
        Self { inner, give_back }
    }

    fn release(&mut self) {
        if let Some(back) = self.give_back.take() {
            back.origin.put_idle(back.conn, back.keep_for, back.timer);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.give_back {
            // HTTP/2: the connection has its own task.
            None => Pin::new(&mut this.inner).poll_frame(cx),
            // Only the connection's dispatch, driven here, feeds the body: it is driven when the
            // body has nothing (see `Http1::drive_for`).
            Some(back) => match Pin::new(&mut this.inner).poll_frame(&mut no_task()) {
                Poll::Pending => back
                    .conn
                    .drive_for(cx, || Pin::new(&mut this.inner).poll_frame(&mut no_task())),
                ready => ready,
            },
        };
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A failed body leaves the connection in an unknown state.
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper's server may drop a body it knows is empty (HEAD, 204, Content-Length: 0)
        // without polling it. A body dropped before its end closes its connection instead
        // (dropped with its dispatch: unread data makes that a reset).
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{ClientSettings, UpstreamClient};
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    const GUARD: Duration = Duration::from_secs(20);

    #[derive(Clone, Default)]
    struct Counts {
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    impl Counts {
        fn get(&self) -> (usize, usize, usize) {
            (
                self.accepted.load(Ordering::SeqCst),
                self.closed.load(Ordering::SeqCst),
                self.requests.load(Ordering::SeqCst),
            )
        }
    }

    /// A hyper HTTP/1.1 upstream on 127.0.0.1:0 counting connections accepted and closed and
    /// requests seen. `/big` streams 8 MiB, `/204` is No Content, `/empty` an empty 200, `/slow`
    /// answers after 200 ms, `/silent` never, `/hangup` closes the connection without answering;
    /// else "ok".
    async fn upstream(keep_alive: bool) -> (SocketAddr, Counts) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Counts::default();
        let shared = counts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counts = shared.clone();
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let seen = counts.requests.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        seen.fetch_add(1, Ordering::SeqCst);
                        answer(req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    counts.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, counts)
    }

    async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let path = req.uri().path().to_owned();
        let _ = req.into_body().collect().await;
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        match path.as_str() {
            "/big" => *response.body_mut() = Full::new(Bytes::from(vec![b'x'; 8 << 20])),
            "/204" => {
                *response.status_mut() = StatusCode::NO_CONTENT;
                *response.body_mut() = Full::default();
            }
            "/empty" => *response.body_mut() = Full::default(),
            "/slow" => tokio::time::sleep(Duration::from_millis(200)).await,
            "/silent" => std::future::pending::<()>().await,
            "/hangup" => return Err(std::io::Error::other("hang up")),
            _ => {}
        }
        Ok(response)
    }

    fn pool(idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        let settings = ClientSettings {
            pool_idle_timeout: idle_timeout,
            pool_max_idle_per_host: max_idle,
            ..ClientSettings::default()
        };
        UpstreamClient::new(&settings).unwrap().pool
    }

    fn get(addr: SocketAddr, path: &str) -> Request<Body> {
        Request::get(format!("http://{addr}{path}"))
            .body(crate::body::empty())
            .unwrap()
    }

    async fn fetch(pool: &Pool, req: Request<Body>) -> (StatusCode, Bytes) {
        let response = tokio::time::timeout(GUARD, pool.send(req, GUARD))
            .await
            .unwrap()
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    async fn fetch_within(pool: &Pool, req: Request<Body>, timeout: Duration) -> StatusCode {
        let response = pool.send(req, timeout).await.unwrap();
        let status = response.status();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
        status
    }

    /// Whether the one idle connection kept its last request's send timer.
    fn idle_has_timer(pool: &Pool) -> bool {
        let origins = pool.origins.lock().unwrap();
        let idle = origins[0].idle.lock().unwrap();
        idle.len() == 1 && idle[0].timer.is_some()
    }

    fn idle_count(pool: &Pool) -> usize {
        let origins = pool.origins.lock().unwrap();
        origins.iter().map(|o| o.idle.lock().unwrap().len()).sum()
    }

    /// Waits until `check` holds, failing after GUARD.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let started = Instant::now();
        while !check() {
            assert!(started.elapsed() < GUARD, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn sequential_requests_share_one_keep_alive_connection() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_secs(30), 8);
        for _ in 0..5 {
            assert_eq!(
                fetch(&pool, get(addr, "/")).await,
                (StatusCode::OK, "ok".into())
            );
        }
        assert_eq!(counts.get(), (1, 0, 5));
    }

    #[tokio::test]
    async fn a_reused_timer_times_out_a_stalled_request_at_its_own_deadline() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_secs(30), 8);
        // The connection keeps the timer of this request, set a minute ahead.
        let first = fetch_within(&pool, get(addr, "/"), Duration::from_secs(60)).await;
        assert_eq!(first, StatusCode::OK);
        assert!(idle_has_timer(&pool));
        let short = Duration::from_millis(300);
        let started = Instant::now();
        let error = tokio::time::timeout(GUARD, pool.send(get(addr, "/silent"), short))
            .await
            .expect("the stalled request outlived its own timeout")
            .unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(error, PoolError::TimedOut { after } if after == short),
            "{error:?}"
        );
        assert!(
            waited >= short && waited < short + Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(
            counts.get().0,
            1,
            "the stalled request was not on the reused connection"
        );
    }

    #[tokio::test]
    async fn an_earlier_requests_deadline_does_not_time_out_a_later_request() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_secs(30), 8);
        let short = Duration::from_millis(100);
        assert_eq!(
            fetch_within(&pool, get(addr, "/"), short).await,
            StatusCode::OK
        );
        assert!(idle_has_timer(&pool));
        // The first request's deadline passes while the second (200 ms) is in flight...
        let long = Duration::from_secs(5);
        assert_eq!(
            fetch_within(&pool, get(addr, "/slow"), long).await,
            StatusCode::OK
        );
        // ...and a short one's while its connection is idle.
        assert_eq!(
            fetch_within(&pool, get(addr, "/"), short).await,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            fetch_within(&pool, get(addr, "/slow"), long).await,
            StatusCode::OK
        );
        assert_eq!(counts.get(), (1, 0, 4));
    }

    #[tokio::test]
    async fn host_header_names_the_upstream_without_a_default_port() {
        let origin = |uri: &str| {
            let uri: Uri = uri.parse().unwrap();
            Origin::new(
                uri.scheme().unwrap().clone(),
                uri.authority().unwrap().clone(),
                1,
                Duration::from_secs(30),
            )
            .unwrap()
            .host
        };
        assert_eq!(origin("http://api.internal:80/"), "api.internal");
        assert_eq!(origin("http://api.internal:8080/"), "api.internal:8080");
        assert_eq!(origin("https://api.internal:443/"), "api.internal");
        assert_eq!(origin("https://api.internal:80/"), "api.internal:80");
        assert_eq!(origin("http://[::1]:9000/"), "[::1]:9000");
    }

    #[test]
    fn keep_alive_timeout_is_read_leniently_and_garbage_is_ignored() {
        let timeout = |values: &[&[u8]]| {
            let mut headers = http::HeaderMap::new();
            for value in values {
                headers.append(&KEEP_ALIVE, HeaderValue::from_bytes(value).unwrap());
            }
            keep_alive_timeout(&headers).map(|d| d.as_secs())
        };
        assert_eq!(timeout(&[]), None);
        for (value, seconds) in [
            (&b"timeout=5, max=1000"[..], Some(5)),
            (b"max=1000,timeout=5", Some(5)),
            (b"Timeout = 7", Some(7)),
            (b"timeout=\"3\"", Some(3)),
            (b"timeout=5;max=100", Some(5)),
            (b"timeout=0", Some(0)),
            (b"timeout=9999999999", Some(9_999_999_999)),
            (b"timeout=99999999999999999999", None),
            (b"timeout=", None),
            (b"timeout", None),
            (b"timeout=-1", None),
            (b"timeout=+1", None),
            (b"timeout=1.5", None),
            (b"timeout=5s", None),
            (b"timeout=\"5", None),
            (b"timeouts=5", None),
            (b"max=5", None),
            (b"\xff\xfe=1, timeout=\xff", None),
            (b"\xfftimeout=2", None),
            (b"garbage, timeout=4, timeout=x", Some(4)),
        ] {
            assert_eq!(
                timeout(&[value]),
                seconds,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        // Several fields or parameters: the upstream closes at the soonest.
        assert_eq!(timeout(&[b"timeout=10", b"timeout=2"]), Some(2));
        assert_eq!(timeout(&[b"timeout=10, timeout=3"]), Some(3));
    }

    #[test]
    fn an_advertised_keep_alive_retires_connections_early_but_never_later_than_the_pool() {
        let origin = Origin::new(
            Scheme::HTTP,
            Authority::from_static("127.0.0.1:1"),
            1,
            Duration::from_secs(30),
        )
        .unwrap();
        let keep_for = |seconds: Option<u64>| origin.keep_for(seconds.map(Duration::from_secs));
        assert_eq!(keep_for(None), Duration::from_secs(30));
        assert_eq!(keep_for(Some(0)), Duration::ZERO);
        assert_eq!(keep_for(Some(1)), Duration::from_millis(750));
        assert_eq!(keep_for(Some(2)), Duration::from_millis(1500));
        assert_eq!(keep_for(Some(5)), Duration::from_secs(4));
        assert_eq!(keep_for(Some(20)), Duration::from_secs(19));
        assert_eq!(keep_for(Some(75)), Duration::from_secs(30));
        assert_eq!(keep_for(Some(9_999_999_999)), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_body_dropped_mid_stream_does_not_return_its_connection() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_secs(30), 8);
        let response = pool.send(get(addr, "/big"), GUARD).await.unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
        drop(body);
        assert_eq!(idle_count(&pool), 0);
        assert_eq!(
            fetch(&pool, get(addr, "/")).await,
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(counts.get().0, 2, "the half-read connection was reused");
        // A body read to its end does return its connection.
        let (status, big) = fetch(&pool, get(addr, "/big")).await;
        assert_eq!((status, big.len()), (StatusCode::OK, 8 << 20));
        assert_eq!(fetch(&pool, get(addr, "/")).await.0, StatusCode::OK);
        assert_eq!(counts.get().0, 2);
    }

    #[tokio::test]
    async fn empty_responses_return_their_connection_even_unread() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_secs(30), 8);
        let head = Request::head(format!("http://{addr}/"))
            .body(crate::body::empty())
            .unwrap();
        for req in [head, get(addr, "/204"), get(addr, "/empty")] {
            // Dropped without a poll, as hyper's server does with a body it knows is empty.
            drop(pool.send(req, GUARD).await.unwrap());
            assert_eq!(idle_count(&pool), 1);
        }
        assert_eq!(fetch(&pool, get(addr, "/")).await.0, StatusCode::OK);
        assert_eq!(counts.get(), (1, 0, 4));
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (addr, counts) = upstream(false).await;
        let pool = pool(Duration::from_secs(30), 8);
        for _ in 0..3 {
            assert_eq!(fetch(&pool, get(addr, "/")).await.0, StatusCode::OK);
        }
        let (accepted, _, requests) = counts.get();
        assert_eq!((accepted, requests), (3, 3));
    }

    #[tokio::test]
    async fn a_request_the_upstream_may_have_seen_is_not_sent_twice() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_secs(30), 8);
        assert_eq!(fetch(&pool, get(addr, "/")).await.0, StatusCode::OK);
        let post = Request::post(format!("http://{addr}/hangup"))
            .body(crate::body::full("payload"))
            .unwrap();
        let error = pool.send(post, GUARD).await.unwrap_err();
        assert!(matches!(error, PoolError::Exchange(_)), "{error:?}");
        assert_eq!(counts.get().2, 2, "the POST reached the upstream twice");
    }

    /// What a raw upstream does with a connection once it has answered its first request.
    #[derive(Clone, Copy)]
    enum Then {
        /// Resets the connection (RST, not FIN) when anything more arrives.
        Reset,
        /// Keeps it open, reading and dropping whatever else comes.
        Drain,
    }

    /// A raw upstream answering the first request on each connection with `answer` as soon as
    /// its head has arrived, then doing `then`; returns connections accepted.
    async fn raw_upstream(answer: &'static [u8], then: Then) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    match then {
                        Then::Reset => {
                            let _ = stream.read(&mut byte).await;
                            let _ = stream.set_zero_linger();
                        }
                        Then::Drain => {
                            let mut buf = [0u8; 4096];
                            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_get_whose_reused_connection_is_reset_is_sent_again_on_a_new_one() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (addr, accepted) = raw_upstream(answer, Then::Reset).await;
        let pool = pool(Duration::from_secs(30), 8);
        for _ in 0..3 {
            assert_eq!(
                fetch(&pool, get(addr, "/")).await,
                (StatusCode::OK, "ok".into())
            );
        }
        // 1 + 2 retries: each reuse was reset and its request sent again on a fresh connection.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let post = Request::post(format!("http://{addr}/"))
            .body(crate::body::full("payload"))
            .unwrap();
        let error = pool.send(post, GUARD).await.unwrap_err();
        assert!(matches!(error, PoolError::Exchange(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_kept() {
        use futures_util::StreamExt;
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly";
        let (addr, accepted) = raw_upstream(answer, Then::Drain).await;
        let pool = pool(Duration::from_secs(30), 8);
        // A request body that never ends, answered before the upstream has read it.
        let first = std::future::ready(Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a"))));
        let endless = futures_util::stream::once(first).chain(futures_util::stream::pending());
        let post = Request::post(format!("http://{addr}/"))
            .body(BodyExt::boxed(http_body_util::StreamBody::new(endless)))
            .unwrap();
        assert_eq!(fetch(&pool, post).await, (StatusCode::OK, "early".into()));
        assert_eq!(
            idle_count(&pool),
            0,
            "a connection still sending a request body was kept for the next request"
        );
        assert_eq!(fetch(&pool, get(addr, "/")).await.1, "early");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A connection whose exchange is over is kept.
        assert_eq!(idle_count(&pool), 1);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout_without_traffic() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_millis(300), 8);
        assert_eq!(fetch(&pool, get(addr, "/")).await.0, StatusCode::OK);
        assert_eq!(idle_count(&pool), 1);
        eventually("the idle connection is closed", || counts.get().1 == 1).await;
        assert_eq!(idle_count(&pool), 0);
        // And a fresh one serves the next request.
        assert_eq!(fetch(&pool, get(addr, "/")).await.0, StatusCode::OK);
        assert_eq!(counts.get().0, 2);
    }

    #[tokio::test]
    async fn no_more_idle_connections_are_kept_than_allowed() {
        let (addr, counts) = upstream(true).await;
        let pool = pool(Duration::from_secs(30), 2);
        let requests = (0..5).map(|_| fetch(&pool, get(addr, "/slow")));
        for (status, _) in futures_util::future::join_all(requests).await {
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(counts.get().0, 5);
        assert_eq!(idle_count(&pool), 2);
        eventually("the extra connections are closed", || counts.get().1 == 3).await;
    }
}
