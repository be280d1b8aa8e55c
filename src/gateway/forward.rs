//! Stages 8-9 of the pipeline, after [`super::decide`]: the verified identity injected and the
//! credentials dropped, then the request sent upstream on the route's pooled client, its
//! answer streamed back with hop-by-hop headers removed, `Location`, `Content-Location` and
//! `Refresh` that name the upstream's own address rewritten to the public one
//! ([`super::redirects`]), and cut when its body stalls.
//!
//! The `Host` the upstream sees is decided once, in [`send`]: the upstream URL's authority (its
//! default port left out, made once per route), or with `preserve_host` the authority the client
//! sent (stage 1 checked it). The pool renders it as HTTP/1 `Host` or HTTP/2 `:authority`; where
//! it connects, the TLS server name it sends and the name the upstream's certificate is verified
//! against stay the upstream URL's host either way, so a client's `Host` can never pick the
//! upstream or weaken its verification.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, COOKIE, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::auth::claims::Identity;
use crate::body::Body;
use crate::config::ServerConfig;
use crate::error::Rejection;
use crate::proxy::headers::{self, IdentityHeaders};
use crate::proxy::{self, ProxyError, UpstreamClient};
use crate::routes::Route;

use super::redirects::{Public, Rewriter};

/// How a route records an upstream response body cut for stalling. The access-log line went out
/// with the response head, long before, so a cut gets its own warn line (same target and
/// request id, so the two join) and a counter.
pub struct StallLog {
    pub route: String,
}

/// At most one upstream-failure warn line per route in this long: an upstream that is down
/// fails every request, and one line per burst (with the count of the failures it stood for)
/// says as much as thousands.
pub const UPSTREAM_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How a route logs its upstream's failures (refused, timed out, TLS, protocol): the first
/// at warn, with the route, the upstream's address and the cause, then at most one line per
/// [`UPSTREAM_FAILURE_LOG_INTERVAL`], counting the failures left out since the last one. Two
/// atomics, no lock: a failing upstream is when the hot path is hottest.
pub struct FailureLog {
    route: String,
    upstream: String,
    since: Instant,
    /// Milliseconds after `since` (plus one) of the last line; 0 before the first.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl FailureLog {
    pub fn new(route: &Route) -> Self {
        Self {
            route: route.name.clone(),
            upstream: format!("{}://{}", route.upstream.scheme, route.upstream.authority),
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Records one failure; logs it unless a line went out less than the interval ago.
    pub fn record(&self, error: &ProxyError) {
        if !error.is_upstream_failure() {
            return;
        }
        let now = (self.since.elapsed().as_millis() as u64).saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval = UPSTREAM_FAILURE_LOG_INTERVAL.as_millis() as u64;
        let due = last == 0 || now.saturating_sub(last) >= interval;
        if !due
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            route = self.route.as_str(),
            upstream = self.upstream.as_str(),
            cause = error.cause(),
            error = %chain(error),
            suppressed,
            "upstream failed: {}",
            error.cause(),
        );
    }
}

/// An error and its sources, `: `-separated (an I/O error's payload included).
fn chain(error: &ProxyError) -> String {
    let mut text = error.to_string();
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        let shown = e.to_string();
        if !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().and_then(|inner| inner.source()),
            None => e.source(),
        };
    }
    text
}

/// Stage 8: drop the credentials unless forwarded on purpose, then inject the identity.
pub fn prepare_upstream_headers(
    headers: &mut HeaderMap,
    route: &Route,
    identity: Option<&Identity>,
    names: &IdentityHeaders,
    cookie: Option<&str>,
) {
    if !route.forward_token {
        headers::remove_all(headers, &AUTHORIZATION);
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
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    // Most requests carry no such cookie: leave their Cookie headers as they are.
    let named = |pair: &str| pair.split('=').next().map(str::trim) == Some(name);
    let present = headers::has(headers, &COOKIE)
        && headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(';').any(named));
    if !present {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !named(pair))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// Stage 9: sends the request upstream on the route's client and streams the answer back.
/// `public` is the address the client used: the `Host` of a `preserve_host` route, and what
/// `redirects` (the route's, unless it turned rewriting off) points the upstream's own back at.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    client: &UpstreamClient,
    stalls: &Arc<StallLog>,
    server: &ServerConfig,
    mut req: Request<Incoming>,
    uri: Uri,
    route: &Route,
    request_id: &HeaderValue,
    upgrade: Option<HeaderValue>,
    public: &Public<'_>,
    redirects: Option<&Rewriter>,
) -> Result<Response<Body>, Rejection> {
    let on_client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    // The one decision on the upstream's Host (see the module docs). The client's own header
    // is replaced either way: over HTTP/2 it may be absent, and only the checked authority counts.
    let host = match route.preserve_host {
        true => public.authority,
        false => &route.upstream.host,
    };
    parts.headers.insert(HOST, host.clone());
    if let Some(protocol) = &upgrade {
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        parts
            .headers
            .insert(http::header::UPGRADE, protocol.clone());
    }
    let (body, limit) = proxy::limit_body(body, server.max_body_bytes, server.body_idle_timeout);
    let request = Request::from_parts(parts, body);
    let sent = client.send(request, route.timeout).await;
    // The limit flag is the truth about the client's body: over HTTP/2 the body error may
    // not survive in the client's error chain.
    if let Some(limit_error) = limit.tripped() {
        return Err(Rejection::Upstream(limit_error));
    }
    let mut response = sent.map_err(Rejection::Upstream)?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // An upstream may not switch protocols the client never asked for.
        let on_upgrade = on_client_upgrade.ok_or(Rejection::UnexpectedUpgrade)?;
        proxy::tunnel(on_upgrade, &mut response, server.idle_timeout)
            .map_err(Rejection::Upstream)?;
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, crate::body::empty()));
    }
    headers::remove_hop_by_hop_response(response.headers_mut());
    if let Some(redirects) = redirects {
        redirects.rewrite(response.headers_mut(), public);
    }
    let stalls = Arc::clone(stalls);
    let request_id = request_id.clone();
    let idle = route.body_timeout;
    let on_stall = move |body_bytes: u64| {
        crate::metrics::upstream_body_timeout(&stalls.route);
        tracing::warn!(
            target: "access",
            request_id = request_id.to_str().unwrap_or("-"),
            route = stalls.route.as_str(),
            body_bytes,
            idle_ms = idle.as_millis() as u64,
            "upstream response body stalled; response cut",
        );
    };
    Ok(response.map(|body| proxy::limit_response_body(body, idle, on_stall)))
}
