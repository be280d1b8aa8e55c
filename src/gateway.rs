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
//! 4. **endpoints**: the gateway's own endpoints answer here, before any route: the exact paths of
//!    `[auth.paths]` (`/auth/*` and the JWKS by default), and a 404 for anything else under a
//!    non-root `[auth] prefix`.
//! 5. **route**: host, method, longest segment-bounded prefix; no route answers 404. A CORS
//!    preflight to a route or endpoint with a CORS policy ends here, before authentication:
//!    answered 204 or refused 403 by the gateway (or, with `forward_preflight`, sent on
//!    without identity).
//! 6. **authenticate**: the route's auth mode decides whether a token is required; the token is
//!    taken from exactly one place and verified.
//! 7. **authorise**: the route's required scopes and roles.
//! 8. **inject**: the verified identity as headers; the token removed unless the route forwards it;
//!    the request id and the trace context ([`crate::trace`], read before stage 1: the
//!    gateway's span as the upstream's parent) written over whatever the client sent.
//! 9. **forward**: upstream URI from the route's base URL, the upstream's own `Host` (the
//!    client's with `preserve_host`), forwarding headers, bounded body, response timeout; the
//!    response streams back with its hop-by-hop headers removed, its `Location`,
//!    `Content-Location` and `Refresh` rewritten from the upstream's address to the public one
//!    (unless the route sets `rewrite_redirects = false`), cut when the upstream stalls longer
//!    than the route's `body_timeout` between body chunks.
//! 10. **cors**: on a route or endpoint with a CORS policy, every response but a preflight's
//!     (the upstream's and the gateway's own refusals alike) loses the upstream's
//!     `Access-Control-*` headers and gets the policy's for the request's origin, if allowed.
//! 11. **log**: one access-log line with the request and trace ids (and a warn line with the
//!     same request id if the response body is later cut); with `[tracing]`, a sampled request's
//!     span queued for export.
//!
//! Stages 1-7 live in [`decide`] ([`Router::decide`], the one place they are decided: `routes
//! explain` calls it too), stages 8-9 in [`forward`], the CORS headers in [`crate::cors`]; this
//! file runs them and logs.
//!
//! The forward-auth endpoint (`{prefix}/verify`, [`forward_auth`]) is the one endpoint the
//! pipeline answers itself: what a trusted fronting proxy says about the original request is
//! read before stage 1 (stage 3 would scrub it), and once stage 4 has chosen the endpoint, the
//! original request is decided by the same [`Router::decide`] and answered instead of
//! forwarded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::auth::authenticator::Authenticator;
use crate::auth::claims::Identity;
use crate::auth::discovery::RequestOrigin;
use crate::auth::endpoints::Endpoint;
use crate::auth::service::AuthService;
use crate::auth::signin::BrowserContext;
use crate::body::Body;
use crate::config::Config;
use crate::cors::{self, CorsPolicy};
use crate::error::Rejection;
use crate::metrics::RouteMetrics;
use crate::origin::Origin;
use crate::proxy::headers::{self, Forwarding, X_REQUEST_ID, request_id};
use crate::proxy::{ClientSettings, ProxyError, UpstreamClient};
use crate::server::ConnInfo;
use crate::trace::export::{ExportError, Exporter, FinishedSpan};
use crate::trace::{Sampler, TraceContext};

pub mod csrf;
pub mod decide;
pub mod forward;
pub mod forward_auth;
pub mod redirects;

pub use decide::{Authentication, Choice, Decision, Preflight, Router, Scheme, Target, Trail};
use forward::StallLog;
pub use forward::inject_identity;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building an upstream client: {0}")]
    Proxy(#[from] ProxyError),
    #[error("identity headers: {0}")]
    Headers(#[from] headers::HeaderError),
    #[error("tracing: {0}")]
    Tracing(#[from] ExportError),
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
    /// The routes' hosts, where a browser may be sent after signing in.
    route_hosts: Arc<[String]>,
    /// Where sampled spans go, with `[tracing]`; kept across reloads that leave it unchanged.
    tracer: Option<Arc<Exporter>>,
    /// The sampling decision for new traces and untrusted callers.
    sampler: Sampler,
}

/// What each route needs beside its config: its own pooled client (each route has its own
/// connect timeout) and its metric handles.
struct RouteState {
    client: UpstreamClient,
    /// What `client` was built with, so a reload can tell whether it may keep it.
    settings: ClientSettings,
    metrics: RouteMetrics,
    stalls: Arc<StallLog>,
    failures: forward::FailureLog,
    /// The route's upstream address and path mapping, unless it turned rewriting off.
    redirects: Option<redirects::Rewriter>,
}

impl Gateway {
    /// Builds the pipeline. `running` is the one a reload replaces: a route of the same name
    /// whose client settings did not change keeps its upstream client, and so its pooled
    /// connections. A client that trusts a CA file is rebuilt, so a replaced file is re-read.
    pub fn new(
        config: Arc<Config>,
        auth: Arc<AuthService>,
        running: Option<&Gateway>,
    ) -> Result<Self, BuildError> {
        let router = Router::new(&config)?;
        let mut per_route = Vec::with_capacity(router.routes().len());
        for route in router.routes().iter() {
            let settings = ClientSettings {
                ca_file: config.upstream.ca_file.clone(),
                connect_timeout: route.connect_timeout,
                pool_idle_timeout: config.upstream.pool_idle_timeout,
                pool_max_idle_per_host: config.upstream.pool_max_idle_per_host,
            };
            let kept = running
                .filter(|_| settings.ca_file.is_none())
                .and_then(|g| g.route_state(&route.name))
                .filter(|state| state.settings == settings)
                .map(|state| state.client.clone());
            let client = match kept {
                Some(client) => client,
                None => UpstreamClient::new(&settings)?,
            };
            per_route.push(RouteState {
                client,
                settings,
                metrics: RouteMetrics::new(&route.name),
                stalls: Arc::new(StallLog {
                    route: route.name.clone(),
                }),
                failures: forward::FailureLog::new(route),
                redirects: redirects::Rewriter::for_route(route),
            });
        }
        let (tracer, sampler) = match &config.tracing {
            None => (None, Sampler::NEVER),
            Some(settings) => {
                let kept = running
                    .and_then(|g| g.tracer.clone())
                    .filter(|exporter| exporter.config == *settings);
                let exporter = match kept {
                    Some(exporter) => exporter,
                    None => Arc::new(Exporter::start(settings)?),
                };
                (Some(exporter), Sampler::ratio(settings.sampling_ratio))
            }
        };
        let route_hosts = router
            .routes()
            .iter()
            .filter_map(|r| r.host.clone())
            .collect();
        Ok(Self {
            route_hosts,
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
            tracer,
            sampler,
        })
    }

    fn route_state(&self, name: &str) -> Option<&RouteState> {
        let index = self.router.routes().iter().position(|r| r.name == name)?;
        self.per_route.get(index)
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn auth(&self) -> &Arc<AuthService> {
        &self.auth
    }

    /// Sends the spans still queued for export (shutdown), waiting at most `bound` and at most
    /// `[tracing] export_timeout`; nothing to do without `[tracing]`.
    pub async fn flush_spans(&self, bound: Duration) {
        let Some(tracer) = &self.tracer else {
            return;
        };
        let bound = bound.min(tracer.config.export_timeout);
        if !tracer.flush(bound).await {
            tracing::warn!(
                endpoint = %tracer.config.endpoint,
                ?bound,
                "spans still queued at shutdown were not all sent in time"
            );
        }
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
        let trace = TraceContext::start(
            req.headers(),
            headers::is_trusted(conn.peer.ip().to_canonical(), trusted),
            self.sampler,
        );
        // The wall clock only for a span that will be exported.
        let span_start = self
            .tracer
            .as_ref()
            .filter(|_| trace.sampled)
            .map(|_| SystemTime::now());
        let origin = cors::request_origin(req.headers());
        let mut access = AccessLog::default();
        let mut response = match self
            .pipeline(req, &conn, client, &request_id, &trace, &mut access)
            .await
        {
            Ok(response) => response,
            Err(rejection) => {
                access.rejection = Some(rejection.reason());
                count_rejection(&rejection, access.route);
                crate::error::respond(&rejection)
            }
        };
        if let Some(policy) = access.cors {
            policy.finish(origin.as_ref(), response.headers_mut());
        }
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
            trace_id = trace.trace_id_hex(),
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
        if let (Some(tracer), Some(start)) = (&self.tracer, span_start) {
            tracer.record(FinishedSpan {
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                parent_id: trace.parent_id,
                start,
                end: SystemTime::now(),
                method,
                route: route.to_owned(),
                status,
                request_id: request_id.to_str().unwrap_or("-").to_owned(),
            });
        }
        response
    }

    async fn pipeline<'g>(
        &'g self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        client: IpAddr,
        request_id: &HeaderValue,
        trace: &TraceContext,
        access: &mut AccessLog<'g>,
    ) -> Result<Response<Body>, Rejection> {
        let logging = tracing::enabled!(target: "access", tracing::Level::INFO);
        let mut trail = Trail::default();
        let scheme = self.scheme(conn, req.headers());
        let caller = forward_auth::caller(&self.config.forward_auth, conn.peer.ip(), req.headers());
        let decided = self
            .router
            .decide(
                &mut req,
                Authentication::Verify(&self.authenticator, scheme),
                &mut trail,
            )
            .await;
        let decision = match decided {
            Ok(decision) => decision,
            Err(rejection) => {
                if logging {
                    access.path = trail.path;
                }
                if let Some(choice) = trail.choice {
                    self.label(access, choice);
                }
                if matches!(rejection, Rejection::Cors(_)) {
                    // A refused preflight gets no Access-Control-* header at all.
                    access.cors = None;
                }
                access.identity = trail.identity;
                return Err(rejection);
            }
        };
        let Decision {
            target,
            choice,
            identity,
            upgrade,
            preflight,
        } = decision;
        if logging {
            access.path = Some(target.path.clone());
        }
        self.label(access, choice);
        match preflight {
            Some(Preflight::Answer(headers)) => {
                access.cors = None;
                return Ok(cors::preflight_response(headers));
            }
            // The upstream's own answer is the policy for its preflights.
            Some(Preflight::Forward) => access.cors = None,
            None => {}
        }
        let index = match choice {
            Choice::Endpoint(Endpoint::Verify) => {
                // Boxed like the endpoints: a second decision inline would double the size of
                // every proxied request's future.
                let (answer, identity) = Box::pin(forward_auth::answer(
                    &self.router,
                    &self.authenticator,
                    &self.config,
                    caller,
                    &req,
                    scheme,
                ))
                .await;
                access.identity = identity;
                return answer;
            }
            Choice::Endpoint(endpoint) => {
                if matches!(endpoint, Endpoint::SignIn | Endpoint::SignOut) {
                    req.extensions_mut().insert(BrowserContext {
                        secure: scheme == Scheme::Https,
                        host: target.host().to_owned(),
                        route_hosts: Arc::clone(&self.route_hosts),
                    });
                }
                // The discovery documents' base when `[auth] public_url` is unset: the scheme
                // decided as for the session cookie, and the Host stage 1 validated.
                if matches!(
                    endpoint,
                    Endpoint::AuthorizationServerMetadata | Endpoint::OpenIdConfiguration
                ) && self.config.auth.public_url.is_none()
                {
                    let authority = target
                        .authority()
                        .to_str()
                        .map_err(|_| Rejection::BadHost)?;
                    let origin = Origin::from_parts(scheme.as_str(), authority)
                        .map_err(|_| Rejection::BadHost)?;
                    req.extensions_mut().insert(RequestOrigin(origin));
                }
                return Ok(self.auth.serve_apart(endpoint, req, client).await?);
            }
            Choice::Route(index) => index,
        };
        let (route, state) = self
            .router
            .routes()
            .get(index)
            .zip(self.per_route.get(index))
            .ok_or(Rejection::NoRoute)?;
        access.identity.clone_from(&identity);

        // After scrubbing, so no Connection header can remove them.
        req.headers_mut().insert(&X_REQUEST_ID, request_id.clone());
        trace.write(req.headers_mut());
        forward::prepare_upstream_headers(
            req.headers_mut(),
            route,
            identity.as_deref(),
            &self.config.auth.identity_headers,
            self.config.auth.cookie.as_deref(),
        );
        // The session cookie is the gateway's alone: no upstream ever sees it. A route that
        // forwards the token gets the one the gateway holds for the session instead.
        if self.config.auth.session.enabled {
            let session = &self.config.auth.session;
            let held = (route.forward_token
                && identity.is_some()
                && !req.headers().contains_key(http::header::AUTHORIZATION))
            .then(|| {
                self.authenticator
                    .held_session_token(req.headers(), scheme == Scheme::Https)
            })
            .flatten();
            for secure in [true, false] {
                forward::remove_cookie(req.headers_mut(), session.cookie_for(secure));
            }
            if let Some(value) =
                held.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
            {
                req.headers_mut().insert(http::header::AUTHORIZATION, value);
            }
        }
        let forwarding = Forwarding {
            peer: conn.peer.ip(),
            trusted_proxies: &self.config.server.trusted_proxies,
            proto: if conn.tls { "https" } else { "http" },
            host: Some(target.authority()),
        };
        headers::set_forwarding(req.headers_mut(), &forwarding);

        let uri = crate::routes::upstream_uri(
            route,
            &target.path,
            target.query.as_deref(),
            req.uri().path_and_query(),
        )
        .ok_or(Rejection::Unforwardable)?;
        let public = redirects::Public {
            scheme: scheme.as_str(),
            authority: target.authority(),
        };
        let started = Instant::now();
        let result = forward::send(
            &state.client,
            &state.stalls,
            &self.config.server,
            req,
            uri,
            route,
            request_id,
            upgrade,
            &public,
            state.redirects.as_ref(),
        )
        .await;
        access.upstream = Some(started.elapsed());
        if let Err(Rejection::Upstream(error)) = &result {
            state.failures.record(error);
        }
        result
    }

    /// The scheme the client used to reach the gateway, or the trusted proxy in front of it.
    fn scheme(&self, conn: &ConnInfo, headers: &http::HeaderMap) -> Scheme {
        let trusted = &self.config.server.trusted_proxies;
        if conn.tls || headers::forwarded_https(conn.peer.ip(), headers, trusted) {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    /// Names the request's route or endpoint in the access log and picks its metric handles
    /// and CORS policy.
    fn label<'g>(&'g self, access: &mut AccessLog<'g>, choice: Choice) {
        access.cors = self.router.cors(choice);
        match choice {
            Choice::Endpoint(endpoint) => {
                access.route = Some(endpoint.label());
                access.metrics = self.endpoint_metrics.get(endpoint as usize);
            }
            Choice::Route(index) => {
                access.route = self.router.routes().get(index).map(|r| r.name.as_str());
                access.metrics = self.per_route.get(index).map(|s| &s.metrics);
            }
        }
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
        Rejection::ForwardAuthDenied(inner) => count_rejection(inner, route),
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
    /// The CORS policy the response is finished with (stage 10): the chosen route's or
    /// `[auth.cors]`, unless the request was a preflight.
    cors: Option<&'g CorsPolicy>,
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

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
