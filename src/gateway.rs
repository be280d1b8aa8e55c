//! The request pipeline. Every request goes through these stages, in this order; each is a plain
//! function below, and the first one that fails ends the request with its error, rendered by
//! [`crate::error`]:
//!
//! 1. **target**: origin-form only, exactly one `Host` (HTTP/2: `:authority`, agreeing with any
//!    `Host`), path normalised once; everything later sees only the normalised path.
//! 2. **framing**: CONNECT and TRACE refused; a body on GET/HEAD/OPTIONS refused; a declared
//!    `Content-Length` over the limit answers 413 before a byte is read.
//! 3. **scrub**: hop-by-hop and `Connection`-nominated headers first, then client forwarding and
//!    identity headers, so nothing a client names can remove what the gateway injects later.
//! 4. **endpoints**: the gateway's own `/auth/*` and JWKS endpoints answer here.
//! 5. **route**: host, method, longest segment-bounded prefix; no route answers 404.
//! 6. **authenticate**: the route's auth mode decides whether a token is required; the token is
//!    taken from exactly one place and verified.
//! 7. **authorise**: the route's required scopes and roles.
//! 8. **inject**: the verified identity as headers; the token removed unless the route forwards it.
//! 9. **forward**: upstream URI from the route's base URL, forwarding headers, bounded body,
//!    response timeout; the response streams back with its hop-by-hop headers removed, cut when
//!    the upstream stalls longer than the route's `body_timeout` between body chunks.
//! 10. **log**: one access-log line (and a warn line with the same request id if the response
//!     body is later cut).
//!
//! Stages 1-5 live in [`Router`], the one place they are decided: `routes explain` calls it too.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, COOKIE, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::auth::authenticator::Authenticator;
use crate::auth::claims::Identity;
use crate::auth::endpoints::{Endpoint, endpoint_for};
use crate::auth::service::AuthService;
use crate::body::Body;
use crate::config::{AuthMode, Config, IdentityHeaders, Route};
use crate::error::Rejection;
use crate::metrics::RouteMetrics;
use crate::proxy::headers::{self, Forwarding, IdentityScrubber, X_REQUEST_ID, request_id};
use crate::proxy::path;
use crate::proxy::{self as forward, ClientSettings, UpstreamClient};
use crate::routes::RouteTable;
use crate::server::ConnInfo;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building an upstream client: {0}")]
    Proxy(#[from] forward::ProxyError),
    #[error("identity headers: {0}")]
    Headers(#[from] headers::HeaderError),
}

/// Everything the pipeline needs, built once from a validated [`Config`].
pub struct Gateway {
    config: Arc<Config>,
    router: Router,
    /// Per-route state, in the router's table order.
    per_route: Vec<RouteState>,
    /// Metric handles of the gateway's own endpoints, by `Endpoint as usize`.
    endpoint_metrics: Vec<RouteMetrics>,
    /// Metric handles for requests refused before a route or endpoint was chosen.
    unrouted_metrics: RouteMetrics,
    auth: Arc<AuthService>,
    /// The proxy path's half of `auth`, held directly for stage 6.
    authenticator: Arc<Authenticator>,
}

/// What each route needs beside its config: its own pooled client (each route has its own
/// connect timeout) and its metric handles.
struct RouteState {
    client: UpstreamClient,
    metrics: RouteMetrics,
    stalls: Arc<StallLog>,
}

/// How a route records an upstream response body cut for stalling. The access-log line went out
/// with the response head, long before, so a cut gets its own warn line (same target and
/// request id, so the two join) and a counter.
struct StallLog {
    route: String,
    count: metrics::Counter,
}

/// What stage 1 learned about the request target.
pub struct Target {
    /// The host and port as sent (the Host header or the HTTP/2 authority), for
    /// `X-Forwarded-Host`; checked by [`host_len`].
    authority: HeaderValue,
    /// Bytes of `authority` before the port.
    host_len: usize,
    /// Normalised once; everything later sees only this.
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    /// The host without port or trailing dots, in the client's letter case.
    pub fn host(&self) -> &str {
        let host = self
            .authority
            .as_bytes()
            .get(..self.host_len)
            .unwrap_or_default();
        std::str::from_utf8(host)
            .unwrap_or_default()
            .trim_end_matches('.')
    }
}

impl Gateway {
    pub fn new(config: Arc<Config>, auth: Arc<AuthService>) -> Result<Self, BuildError> {
        let router = Router::new(&config)?;
        let mut per_route = Vec::with_capacity(router.routes.len());
        for route in router.routes.iter() {
            let settings = ClientSettings {
                ca_file: config.upstream.ca_file.clone(),
                connect_timeout: route.connect_timeout,
                pool_idle_timeout: config.upstream.pool_idle_timeout,
                pool_max_idle_per_host: config.upstream.pool_max_idle_per_host,
            };
            per_route.push(RouteState {
                client: UpstreamClient::new(&settings)?,
                metrics: RouteMetrics::new(&route.name),
                stalls: Arc::new(StallLog {
                    route: route.name.clone(),
                    count: crate::metrics::upstream_body_timeouts(&route.name),
                }),
            });
        }
        Ok(Self {
            config,
            router,
            per_route,
            endpoint_metrics: Endpoint::ALL
                .iter()
                .map(|e| RouteMetrics::new(e.label()))
                .collect(),
            unrouted_metrics: RouteMetrics::new(UNROUTED),
            authenticator: auth.authenticator().clone(),
            auth,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn auth(&self) -> &Arc<AuthService> {
        &self.auth
    }

    /// Runs the pipeline for one request and renders any rejection; never panics on input.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        // A refcount, not a copy: only logged when the target is refused.
        let raw_uri = req.uri().clone();
        let trusted = &self.config.server.trusted_proxies;
        let client = headers::client_ip(conn.peer.ip(), req.headers(), trusted);
        let request_id = request_id(req.headers(), conn.peer.ip(), trusted);
        let mut access = AccessLog::default();
        let mut response = match self
            .pipeline(req, &conn, client, &request_id, &mut access)
            .await
        {
            Ok(response) => response,
            Err(rejection) => {
                access.rejection = Some(rejection.reason());
                count_rejection(&rejection, access.route);
                crate::error::respond(&rejection)
            }
        };
        response
            .headers_mut()
            .insert(&X_REQUEST_ID, request_id.clone());
        let latency = started.elapsed();
        let status = response.status().as_u16();
        let route = access.route.unwrap_or(UNROUTED);
        access
            .metrics
            .unwrap_or(&self.unrouted_metrics)
            .request(status, latency, access.upstream);
        tracing::info!(
            target: "access",
            request_id = request_id.to_str().unwrap_or("-"),
            client = %client,
            method = %method,
            path = access
                .path
                .as_deref()
                .unwrap_or(raw_path_for_log(raw_uri.path())),
            route,
            status,
            latency_us = latency.as_micros() as u64,
            upstream_us = access.upstream.map(|d| d.as_micros() as u64),
            sub = access.identity.as_ref().map_or("-", |identity| identity.sub.as_str()),
            rejected = access.rejection.unwrap_or("-"),
        );
        response
    }

    async fn pipeline<'g>(
        &'g self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        client: IpAddr,
        request_id: &HeaderValue,
        access: &mut AccessLog<'g>,
    ) -> Result<Response<Body>, Rejection> {
        let target = self.router.target(&req)?;
        if tracing::enabled!(target: "access", tracing::Level::INFO) {
            access.path = Some(target.path.clone());
        }
        let (choice, upgrade) = self.router.route(&mut req, &target)?;
        let index = match choice {
            Choice::Endpoint(endpoint) => {
                access.route = Some(endpoint.label());
                access.metrics = self.endpoint_metrics.get(endpoint as usize);
                return Ok(self.auth.serve_apart(endpoint, req, client).await?);
            }
            Choice::Route(index) => index,
        };
        let (route, state) = self
            .router
            .routes
            .get(index)
            .zip(self.per_route.get(index))
            .ok_or(Rejection::NoRoute)?;
        access.route = Some(&route.name);
        access.metrics = Some(&state.metrics);

        let identity = self
            .authenticate(&req, route, target.query.as_deref())
            .await?;
        if let Some(identity) = &identity {
            access.identity = Some(identity.clone());
            authorise(route, identity)?;
        }
        // After scrubbing, so no Connection header can remove it.
        req.headers_mut().insert(&X_REQUEST_ID, request_id.clone());
        prepare_upstream_headers(
            req.headers_mut(),
            route,
            identity.as_deref(),
            &self.config.auth.identity_headers,
            self.config.auth.cookie.as_deref(),
        );
        let forwarding = Forwarding {
            peer: conn.peer.ip(),
            trusted_proxies: &self.config.server.trusted_proxies,
            proto: if conn.tls { "https" } else { "http" },
            host: Some(&target.authority),
        };
        headers::set_forwarding(req.headers_mut(), &forwarding);

        let uri = crate::routes::upstream_uri(route, &target.path, target.query.as_deref())
            .ok_or(Rejection::Unforwardable)?;
        let started = Instant::now();
        let result = self
            .forward(req, uri, route, state, request_id, upgrade)
            .await;
        access.upstream = Some(started.elapsed());
        result
    }

    /// Stage 6: the route's auth mode decides what a missing or invalid token means.
    async fn authenticate(
        &self,
        req: &Request<Incoming>,
        route: &Route,
        query: Option<&str>,
    ) -> Result<Option<Arc<Identity>>, Rejection> {
        if route.auth == AuthMode::Public {
            return Ok(None);
        }
        match self.authenticator.identify(req.headers(), query).await? {
            None if route.auth == AuthMode::Required => Err(Rejection::NoToken),
            identity => Ok(identity),
        }
    }

    /// Stage 9.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        uri: Uri,
        route: &Route,
        state: &RouteState,
        request_id: &HeaderValue,
        upgrade: Option<HeaderValue>,
    ) -> Result<Response<Body>, Rejection> {
        let on_client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        parts.headers.remove(HOST);
        if let Some(protocol) = &upgrade {
            parts.headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            parts
                .headers
                .insert(http::header::UPGRADE, protocol.clone());
        }
        let server = &self.config.server;
        let (body, limit) =
            forward::limit_body(body, server.max_body_bytes, server.body_idle_timeout);
        let request = Request::from_parts(parts, body);
        let sent = state.client.send(request, route.timeout).await;
        // The limit flag is the truth about the client's body: over HTTP/2 the body error may
        // not survive in the client's error chain.
        if let Some(limit_error) = limit.tripped() {
            return Err(Rejection::Upstream(limit_error));
        }
        let mut response = sent.map_err(Rejection::Upstream)?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // An upstream may not switch protocols the client never asked for.
            let on_upgrade = on_client_upgrade.ok_or(Rejection::UnexpectedUpgrade)?;
            forward::tunnel(on_upgrade, &mut response, server.idle_timeout)
                .map_err(Rejection::Upstream)?;
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, crate::body::empty()));
        }
        headers::remove_hop_by_hop_response(response.headers_mut());
        let stalls = Arc::clone(&state.stalls);
        let request_id = request_id.clone();
        let idle = route.body_timeout;
        let on_stall = move |body_bytes: u64| {
            stalls.count.increment(1);
            tracing::warn!(
                target: "access",
                request_id = request_id.to_str().unwrap_or("-"),
                route = stalls.route.as_str(),
                body_bytes,
                idle_ms = idle.as_millis() as u64,
                "upstream response body stalled; response cut",
            );
        };
        Ok(response.map(|body| forward::limit_response_body(body, idle, on_stall)))
    }
}

/// Stages 1-5 on a request head (target, framing, scrub, endpoints, route): decided here once,
/// for the proxy path and for `routes explain` alike.
pub struct Router {
    routes: RouteTable,
    scrubber: IdentityScrubber,
    auth_prefix: String,
    max_body_bytes: u64,
}

/// Where stages 4-5 send a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// One of the gateway's own endpoints.
    Endpoint(Endpoint),
    /// The route at this index of [`Router::routes`].
    Route(usize),
}

impl Router {
    pub fn new(config: &Config) -> Result<Self, BuildError> {
        let ids = &config.auth.identity_headers;
        Ok(Self {
            routes: RouteTable::new(&config.routes),
            scrubber: IdentityScrubber::new(&ids.all_names(), &ids.strip_prefixes)?,
            auth_prefix: config.auth.prefix.clone(),
            max_body_bytes: config.server.max_body_bytes,
        })
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Stage 1: methods never proxied, then the target.
    pub fn target<B>(&self, req: &Request<B>) -> Result<Target, Rejection> {
        check_method(req.method())?;
        check_target(req)
    }

    /// Stages 2-5 for a request whose [`target`](Self::target) passed; also returns the
    /// WebSocket upgrade to re-add when forwarding.
    pub fn route<B>(
        &self,
        req: &mut Request<B>,
        target: &Target,
    ) -> Result<(Choice, Option<HeaderValue>), Rejection> {
        check_framing(req, self.max_body_bytes)?;
        let upgrade = scrub(req.headers_mut(), &self.scrubber)
            // RFC 6455 §4.1: the opening handshake is a GET.
            .filter(|_| req.method() == Method::GET);
        if let Some(endpoint) = endpoint_for(&self.auth_prefix, &target.path) {
            return Ok((Choice::Endpoint(endpoint), upgrade));
        }
        let index = self
            .routes
            .position(Some(target.host()), req.method(), &target.path)
            .ok_or(Rejection::NoRoute)?;
        Ok((Choice::Route(index), upgrade))
    }
}

/// Stage 1.
fn check_target<B>(req: &Request<B>) -> Result<Target, Rejection> {
    let uri = req.uri();
    let (authority, host_len) = match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            let from_uri = uri.authority().ok_or(Rejection::MissingHost)?;
            let host_len = host_len(from_uri.as_str().as_bytes()).ok_or(Rejection::BadHost)?;
            if let Some((host, _)) = single_host(req.headers())?
                && !host
                    .as_bytes()
                    .eq_ignore_ascii_case(from_uri.as_str().as_bytes())
            {
                return Err(Rejection::HostMismatch);
            }
            let authority =
                HeaderValue::from_str(from_uri.as_str()).map_err(|_| Rejection::BadHost)?;
            (authority, host_len)
        }
        _ => {
            if uri.scheme().is_some() || uri.authority().is_some() {
                return Err(Rejection::TargetForm);
            }
            single_host(req.headers())?.ok_or(Rejection::MissingHost)?
        }
    };
    let target = Target {
        authority,
        host_len,
        path: path::normalize(uri.path()).map_err(Rejection::BadPath)?,
        query: uri.query().map(str::to_owned),
    };
    if target.host().is_empty() {
        return Err(Rejection::BadHost);
    }
    Ok(target)
}

/// The one `Host` header and the length of its host part; two or more is an error.
fn single_host(headers: &HeaderMap) -> Result<Option<(HeaderValue, usize)>, Rejection> {
    let mut values = headers.get_all(HOST).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::DuplicateHost);
    }
    let host_len = host_len(first.as_bytes()).ok_or(Rejection::BadHost)?;
    Ok(Some((first.clone(), host_len)))
}

/// The length of the host in `host[:port]` as RFC 9110 §7.2 allows it: a registered name of at
/// most 253 bytes or a bracketed IPv6 literal, and a port of digits that fits in 16 bits. `None`
/// for anything else (userinfo, `x:99999`, `[name]`, several colons, empty host).
fn host_len(authority: &[u8]) -> Option<usize> {
    let host = if authority.first() == Some(&b'[') {
        let close = authority.iter().position(|&b| b == b']')?;
        let literal = std::str::from_utf8(&authority[1..close]).ok()?;
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        &authority[..=close]
    } else {
        let end = authority
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(authority.len());
        let name = &authority[..end];
        // A registered name of RFC 3986 §3.2.2 unreserved bytes (percent-encodings and
        // sub-delims are refused).
        let reg_name = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if name.is_empty() || name.len() > 253 || !name.iter().all(reg_name) {
            return None;
        }
        name
    };
    let port_ok = match &authority[host.len()..] {
        [] | [b':'] => true,
        [b':', digits @ ..] => {
            digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits).is_ok_and(|p| p.parse::<u16>().is_ok())
        }
        _ => false,
    };
    port_ok.then_some(host.len())
}

/// Stage 1, first: methods the gateway never proxies (CONNECT tunnels, TRACE reflection).
fn check_method(method: &Method) -> Result<(), Rejection> {
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(Rejection::MethodNotAllowed);
    }
    Ok(())
}

/// Stage 2.
fn check_framing<B>(req: &Request<B>, max_body: u64) -> Result<(), Rejection> {
    let method = req.method();
    let headers = req.headers();
    let declared = match headers.get(CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Rejection::BadFraming)?,
        ),
    };
    let chunked = transfer_coding(headers)?;
    let has_body = declared.is_some_and(|n| n > 0) || chunked;
    if has_body && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Err(Rejection::BodyNotAllowed);
    }
    if declared.is_some_and(|n| n > max_body) {
        return Err(Rejection::PayloadTooLarge);
    }
    Ok(())
}

/// Whether the body is chunked. Only exactly `chunked` is accepted: the gateway decodes nothing
/// else, and a coding it passed on undecoded would be read differently by the upstream
/// (RFC 9112 §6.1: 501 for a coding not understood).
fn transfer_coding(headers: &HeaderMap) -> Result<bool, Rejection> {
    let mut values = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = values.next() else {
        return Ok(false);
    };
    let only_chunked = values.next().is_none()
        && first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
    if only_chunked {
        Ok(true)
    } else {
        Err(Rejection::UnsupportedTransferCoding)
    }
}

/// Stage 3: order matters (see the module docs). Returns the WebSocket upgrade to re-add, if any.
fn scrub(headers: &mut HeaderMap, scrubber: &IdentityScrubber) -> Option<HeaderValue> {
    let upgrade = headers::remove_hop_by_hop(headers);
    headers::remove_untrusted_forwarding(headers);
    scrubber.scrub(headers);
    upgrade
}

/// Stage 7: every required scope and role, and one of the any-roles.
fn authorise(route: &Route, identity: &Identity) -> Result<(), Rejection> {
    let missing_scopes: Vec<&str> = route
        .require_scopes
        .iter()
        .filter(|s| !identity.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if !missing_scopes.is_empty() {
        return Err(Rejection::InsufficientScope(missing_scopes.join(" ")));
    }
    let roles_ok = route
        .require_roles
        .iter()
        .all(|r| identity.roles.contains(r))
        && (route.require_any_role.is_empty()
            || route
                .require_any_role
                .iter()
                .any(|r| identity.roles.contains(r)));
    if !roles_ok {
        return Err(Rejection::InsufficientRole);
    }
    Ok(())
}

/// Stage 8: drop the credentials unless forwarded on purpose, then inject the identity.
fn prepare_upstream_headers(
    headers: &mut HeaderMap,
    route: &Route,
    identity: Option<&Identity>,
    names: &IdentityHeaders,
    cookie: Option<&str>,
) {
    if !route.forward_token {
        headers.remove(AUTHORIZATION);
        if let Some(cookie) = cookie {
            remove_cookie(headers, cookie);
        }
    }
    if let Some(identity) = identity {
        inject_identity(headers, identity, names);
    }
}

/// Writes the identity headers. Values were checked to be header-safe by the verifier; mapped
/// claims that cannot be carried in a header are left out rather than mangled.
pub fn inject_identity(headers: &mut HeaderMap, identity: &Identity, names: &IdentityHeaders) {
    let values = &identity.values;
    for (name, value) in [
        (&names.user, &values.user),
        (&names.roles, &values.roles),
        (&names.scopes, &values.scopes),
    ] {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
    for (header, claim) in &names.claims {
        if let Some(value) = claim_value(identity, claim)
            .as_ref()
            .and_then(claim_header_value)
            .and_then(|value| HeaderValue::from_str(&value).ok())
        {
            headers.insert(header, value);
        }
    }
}

/// A claim by name: the typed ones from their fields, the rest from `extra`.
fn claim_value(identity: &Identity, claim: &str) -> Option<serde_json::Value> {
    use serde_json::Value;
    match claim {
        "sub" => Some(Value::from(identity.sub.as_str())),
        "iss" => Some(Value::from(identity.issuer.as_str())),
        "exp" => Some(Value::from(identity.exp)),
        "jti" => identity.jti.as_deref().map(Value::from),
        "client_id" => identity.client_id.as_deref().map(Value::from),
        "roles" => Some(Value::from(identity.roles.clone())),
        "scope" => Some(Value::from(identity.scopes.clone())),
        other => identity.extra.get(other).cloned(),
    }
}

fn claim_header_value(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => Some(value.to_string()),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.contains(',') => Some(s.clone()),
                    Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
                    _ => None,
                })
                .collect();
            parts.map(|p| p.join(","))
        }
    }
}

/// Removes one cookie by name from every `Cookie` header, keeping the others.
fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next().map(str::trim) != Some(name))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// The route label of requests refused before a route or endpoint was chosen.
const UNROUTED: &str = "-";

/// Counts a refusal under its metric; the access log has the reason too.
fn count_rejection(rejection: &Rejection, route: Option<&str>) {
    match rejection {
        Rejection::InvalidToken(e) => crate::metrics::auth_failure(e.reason()),
        Rejection::NoToken => crate::metrics::auth_failure("missing"),
        Rejection::InsufficientScope(_) | Rejection::InsufficientRole => {
            crate::metrics::authz_denied(route.unwrap_or("-"))
        }
        Rejection::Upstream(_) | Rejection::UnexpectedUpgrade => {
            crate::metrics::upstream_error(rejection.reason())
        }
        _ => {}
    }
}

/// Raw paths are logged only up to a bound, and only as ASCII.
fn raw_path_for_log(raw: &str) -> &str {
    let end = raw.len().min(256);
    raw.get(..end).unwrap_or("-")
}

#[derive(Default)]
struct AccessLog<'g> {
    /// The normalised path, kept only while the access log is on.
    path: Option<String>,
    /// The route's name, or `gatehouse:<endpoint>` for the gateway's own endpoints.
    route: Option<&'g str>,
    /// The metric handles of that route or endpoint.
    metrics: Option<&'g RouteMetrics>,
    identity: Option<Arc<Identity>>,
    upstream: Option<std::time::Duration>,
    rejection: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_len_takes_names_ip_literals_and_16_bit_ports_only() {
        for (authority, host) in [
            ("api.example.com", "api.example.com"),
            ("API.example.com:8443", "API.example.com"),
            ("x:", "x"),
            ("x:65535", "x"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[::1]:", "[::1]"),
            ("[2001:db8::1]:443", "[2001:db8::1]"),
        ] {
            assert_eq!(
                host_len(authority.as_bytes()),
                Some(host.len()),
                "{authority}"
            );
        }
        for authority in [
            "", ":80", "user@x", "x:65536", "x:+80", "x:8a", "x:1:2", "[::1]x", "[::1", "[x]",
            "x y", "x/y", "x%41", "a,b",
        ] {
            assert_eq!(host_len(authority.as_bytes()), None, "{authority}");
        }
        assert_eq!(host_len("a".repeat(254).as_bytes()), None);
    }

    #[test]
    fn fresh_request_ids_are_32_hex_digits_and_never_repeat_across_refills() {
        let untrusted: IpAddr = [192, 0, 2, 1].into();
        let mut headers = HeaderMap::new();
        // A client's own id is replaced, not kept.
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("chosen-by-client"));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = request_id(&headers, untrusted, &[]);
            let text = id.to_str().unwrap().to_owned();
            assert_eq!(text.len(), 32, "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert!(seen.insert(text), "request id repeated");
        }
    }
}
