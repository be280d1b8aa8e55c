//! Stages 1-7 of the pipeline on a request head, decided once: target, framing, scrub,
//! endpoints, route, authenticate, authorise. [`Router::decide`] is what the gateway, `routes
//! explain` and the forward-auth endpoint (on the original request a fronting proxy describes,
//! `super::forward_auth`) call: what it decides is the same wherever it is asked.
//!
//! A CORS preflight on a route or endpoint with a CORS policy is decided at stage 5, before
//! authentication (a browser sends no credentials with one): answered from the policy
//! ([`Preflight::Answer`]), refused ([`Rejection::Cors`]), or, when the route says so, sent on
//! unauthenticated ([`Preflight::Forward`]). Stage 5 picks the route the actual request would
//! take (by `Access-Control-Request-Method`), so its policy answers.

use std::sync::Arc;

use http::header::{ACCEPT, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Version};

use crate::auth::authenticator::{Authenticator, Carrier};
use crate::auth::claims::Identity;
use crate::auth::endpoints::Endpoint;
use crate::auth::paths::EndpointPaths;
use crate::config::Config;
use crate::cors::{self, CorsPolicy};
use crate::error::Rejection;
use crate::origin::Origin;
use crate::proxy::headers::{self, IdentityScrubber};
use crate::proxy::path;
use crate::routes::{AuthMode, Route, RouteTable};

use super::BuildError;
use super::csrf;

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
    /// The host and port as sent.
    pub fn authority(&self) -> &HeaderValue {
        &self.authority
    }

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

/// Stages 1-5 on a request head (target, framing, scrub, endpoints, route), and with
/// [`Router::decide`] stages 6-7.
pub struct Router {
    routes: RouteTable,
    scrubber: IdentityScrubber,
    /// Stage 4's table: the gateway's own endpoint paths.
    endpoints: EndpointPaths,
    max_body_bytes: u64,
    /// Origins besides the request's own whose cookie-authenticated requests to the gateway's
    /// own endpoints may change state: `[auth] trusted_origins` and `[auth.cors]`'s
    /// credentialed origins.
    endpoint_trusted: Vec<Origin>,
    /// The same for each route, in table order: `[auth] trusted_origins` and the route's
    /// credentialed CORS origins.
    route_trusted: Vec<Vec<Origin>>,
    /// `[auth.cors]`, for the gateway's own endpoints.
    endpoint_cors: Option<CorsPolicy>,
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
        let routes = RouteTable::new(&config.routes);
        let trusted = |cors: Option<&CorsPolicy>| {
            let mut list = config.auth.trusted_origins.clone();
            list.extend(
                cors.map_or(&[][..], CorsPolicy::credentialed_origins)
                    .iter()
                    .cloned(),
            );
            list
        };
        Ok(Self {
            route_trusted: routes.iter().map(|r| trusted(r.cors.as_ref())).collect(),
            endpoint_trusted: trusted(config.auth.cors.as_ref()),
            endpoint_cors: config.auth.cors.clone(),
            routes,
            scrubber: IdentityScrubber::new(&ids.all_names(), &ids.strip_prefixes)?,
            endpoints: config.auth.paths.clone(),
            max_body_bytes: config.server.max_body_bytes,
        })
    }

    /// The CORS policy of a route or of the gateway's own endpoints, if it has one.
    pub fn cors(&self, choice: Choice) -> Option<&CorsPolicy> {
        match choice {
            Choice::Endpoint(_) => self.endpoint_cors.as_ref(),
            Choice::Route(index) => self.routes.get(index)?.cors.as_ref(),
        }
    }

    /// The origins whose cookie-authenticated requests to `choice` may change state.
    fn trusted(&self, choice: Choice) -> &[Origin] {
        match choice {
            Choice::Endpoint(_) => &self.endpoint_trusted,
            Choice::Route(index) => self.route_trusted.get(index).map_or(&[], Vec::as_slice),
        }
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Where the gateway's own endpoints live.
    pub fn endpoints(&self) -> &EndpointPaths {
        &self.endpoints
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
        // Endpoints before routes: an endpoint's exact path is the gateway's even under a
        // route's prefix (config validation refuses a route whose own prefix it would hide).
        if let Some(endpoint) = self.endpoints.endpoint_for(&target.path) {
            return Ok((Choice::Endpoint(endpoint), upgrade));
        }
        let index = self
            .preflighted_route(req, target)
            .or_else(|| {
                self.routes
                    .position(Some(target.host()), req.method(), &target.path)
            })
            .ok_or(Rejection::NoRoute)?;
        Ok((Choice::Route(index), upgrade))
    }

    /// For a preflight: the route the actual request would take, when it has a CORS policy
    /// (a route serving only `GET` and `PUT` still owns the `OPTIONS` asking about `PUT`).
    fn preflighted_route<B>(&self, req: &Request<B>, target: &Target) -> Option<usize> {
        if !cors::is_preflight(req.method(), req.headers()) {
            return None;
        }
        let method = cors::requested_method(req.headers())?;
        self.routes
            .position(Some(target.host()), &method, &target.path)
            .filter(|&index| self.routes.get(index).is_some_and(|r| r.cors.is_some()))
    }

    /// Stage 5's verdict on a CORS preflight to `choice`; `None` when the request is not one or
    /// `choice` has no CORS policy (it then goes on like any request).
    fn preflight<B>(
        &self,
        req: &Request<B>,
        choice: Choice,
    ) -> Result<Option<Preflight>, Rejection> {
        if !cors::is_preflight(req.method(), req.headers()) {
            return Ok(None);
        }
        let Some(policy) = self.cors(choice) else {
            return Ok(None);
        };
        if policy.forward_preflight {
            return Ok(Some(Preflight::Forward));
        }
        let answer = policy.preflight(req.headers()).map_err(Rejection::Cors)?;
        Ok(Some(Preflight::Answer(answer)))
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
        [b':', digits @ ..] => port_fits(digits),
        _ => false,
    };
    port_ok.then_some(host.len())
}

/// Whether `digits` (non-empty) are all ASCII digits and their value fits in 16 bits, as
/// `str::parse::<u16>` would say for them (leading zeros allowed), without its UTF-8 and sign
/// handling: this runs on every request's `Host`.
fn port_fits(digits: &[u8]) -> bool {
    let mut port: u32 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return false;
        }
        port = port * 10 + u32::from(digit - b'0');
        if port > u32::from(u16::MAX) {
            return false;
        }
    }
    true
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

/// Stage 3: hop-by-hop (with what `Connection` nominates, read before anything is removed),
/// untrusted forwarding and client identity headers, in one pass ([`headers::scrub_request`]).
/// Returns the WebSocket upgrade to re-add, if any.
fn scrub(headers: &mut HeaderMap, scrubber: &IdentityScrubber) -> Option<HeaderValue> {
    headers::scrub_request(headers, scrubber)
}

/// Stage 7: every required scope and role, and one of the any-roles.
/// Stage 7.
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

/// The scheme the client used: the connection's, or what a trusted proxy in front of the
/// gateway says it was (`X-Forwarded-Proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// How stage 6 treats credentials.
#[derive(Clone, Copy)]
pub enum Authentication<'a> {
    /// Verify the presented token and apply the route's auth mode and requirements; the
    /// request was made over `Scheme` (the origin a cookie-authenticated request must come
    /// from is that scheme and the request's `Host`).
    Verify(&'a Authenticator, Scheme),
    /// Decide stages 1-5 only (`routes explain`, which holds no keys): no identity.
    Skip,
}

/// What the head of a request was decided to be.
pub struct Decision {
    pub target: Target,
    pub choice: Choice,
    /// The verified identity, for a route that authenticated one.
    pub identity: Option<Arc<Identity>>,
    /// The WebSocket upgrade to re-add when forwarding.
    pub upgrade: Option<HeaderValue>,
    /// A CORS preflight decided before authentication (and so with no identity).
    pub preflight: Option<Preflight>,
}

/// What becomes of a CORS preflight to a route or endpoint with a CORS policy.
#[derive(Debug)]
pub enum Preflight {
    /// The gateway answers it: 204 with these headers ([`cors::preflight_response`]).
    Answer(HeaderMap),
    /// The route's upstream answers it (`forward_preflight = true`): sent on without
    /// authentication, its answer passed back as it is.
    Forward,
}

/// What the stages learned before one refused, for the access log and the metrics.
#[derive(Default)]
pub struct Trail {
    /// The normalised path, once stage 1 passed.
    pub path: Option<String>,
    /// The endpoint or route, once stage 5 chose it.
    pub choice: Option<Choice>,
    /// The identity that stage 7 refused.
    pub identity: Option<Arc<Identity>>,
}

impl Router {
    /// Stages 1-7. A refusal leaves in `trail` what the stages before it learned.
    pub async fn decide<B>(
        &self,
        req: &mut Request<B>,
        auth: Authentication<'_>,
        trail: &mut Trail,
    ) -> Result<Decision, Rejection> {
        let target = self.target(req)?;
        match self.after_target(req, &target, auth, trail).await {
            Ok((choice, identity, upgrade, preflight)) => Ok(Decision {
                target,
                choice,
                identity,
                upgrade,
                preflight,
            }),
            Err(rejection) => {
                trail.path = Some(target.path);
                Err(rejection)
            }
        }
    }

    async fn after_target<B>(
        &self,
        req: &mut Request<B>,
        target: &Target,
        auth: Authentication<'_>,
        trail: &mut Trail,
    ) -> Result<Decided, Rejection> {
        let (choice, upgrade) = self.route(req, target)?;
        trail.choice = Some(choice);
        if let Some(preflight) = self.preflight(req, choice)? {
            return Ok((choice, None, upgrade, Some(preflight)));
        }
        let Authentication::Verify(authenticator, scheme) = auth else {
            return Ok((choice, None, upgrade, None));
        };
        // The own origin is built only for a request that changes state (not per cookie GET).
        let cross_site_check = || {
            if !csrf::changes_state(req.method()) {
                return Some(Ok(()));
            }
            let own = Origin::from_parts(scheme.as_str(), target.authority().to_str().ok()?).ok();
            Some(csrf::check(
                req.method(),
                req.headers(),
                own.as_ref(),
                self.trusted(choice),
            ))
        };
        let index = match choice {
            Choice::Route(index) => index,
            // A logout by cookie ends a session: not for another site to do.
            Choice::Endpoint(Endpoint::Logout) => {
                let by_cookie = matches!(
                    authenticator.presented_token(req.headers(), target.query.as_deref()),
                    Ok(Some((_, Carrier::Cookie)))
                );
                if by_cookie && csrf::changes_state(req.method()) {
                    cross_site_check().unwrap_or(Err(Rejection::CrossSite))?;
                }
                return Ok((choice, None, upgrade, None));
            }
            // The browser's forms change its session whatever credential comes along: a
            // sign-in posted by another site would sign the browser in as someone else (login
            // CSRF), a sign-out would end the session.
            Choice::Endpoint(Endpoint::SignIn | Endpoint::SignOut) => {
                if csrf::changes_state(req.method()) {
                    cross_site_check().unwrap_or(Err(Rejection::CrossSite))?;
                }
                return Ok((choice, None, upgrade, None));
            }
            Choice::Endpoint(_) => return Ok((choice, None, upgrade, None)),
        };
        let route = self.routes.get(index).ok_or(Rejection::NoRoute)?;
        let presented = match authenticate(authenticator, route, req, target, scheme).await {
            Ok(presented) => presented,
            Err(Rejection::NoToken) if route.login_redirect && is_navigation(req) => {
                return Err(self.login_redirect(target));
            }
            Err(rejection) => return Err(rejection),
        };
        let identity = match presented {
            Some((identity, carrier)) if carrier.is_ambient() => {
                if let Err(rejection) = cross_site_check().unwrap_or(Err(Rejection::CrossSite)) {
                    trail.identity = Some(identity);
                    return Err(rejection);
                }
                Some(identity)
            }
            Some((identity, _)) => Some(identity),
            None => None,
        };
        if let Some(identity) = &identity
            && let Err(rejection) = authorise(route, identity)
        {
            trail.identity = Some(Arc::clone(identity));
            return Err(rejection);
        }
        Ok((choice, identity, upgrade, None))
    }
}

/// What stages 5-7 decided: the choice, the identity, the upgrade to re-add, the preflight.
type Decided = (
    Choice,
    Option<Arc<Identity>>,
    Option<HeaderValue>,
    Option<Preflight>,
);

impl Router {
    /// Where a browser without a session is sent: the sign-in page, with the path and query it
    /// asked for as `return_to`.
    fn login_redirect(&self, target: &Target) -> Rejection {
        let mut wanted = target.path.clone();
        if let Some(query) = &target.query {
            wanted.push('?');
            wanted.push_str(query);
        }
        let query =
            serde_urlencoded::to_string([("return_to", wanted.as_str())]).unwrap_or_default();
        Rejection::LoginRedirect {
            location: format!("{}?{query}", self.endpoints.path(Endpoint::SignIn)),
        }
    }
}

/// A browser navigating: GET or HEAD asking for HTML. Anything else (an API call, a `fetch`
/// for JSON) keeps the 401 and its challenge.
fn is_navigation<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && req.headers().get_all(ACCEPT).iter().any(|accept| {
            accept
                .to_str()
                .is_ok_and(|a| a.to_ascii_lowercase().contains("text/html"))
        })
}

/// Stage 6: the route's auth mode decides what a missing or invalid token means. Without a
/// token, the browser session the request's cookie names counts (see
/// [`Authenticator::identify_request`]).
async fn authenticate<B>(
    authenticator: &Authenticator,
    route: &Route,
    req: &Request<B>,
    target: &Target,
    scheme: Scheme,
) -> Result<Option<(Arc<Identity>, Carrier)>, Rejection> {
    if route.auth == AuthMode::Public {
        return Ok(None);
    }
    let presented = authenticator
        .identify_request(
            req.headers(),
            target.query.as_deref(),
            scheme == Scheme::Https,
        )
        .await?;
    match presented {
        None if route.auth == AuthMode::Required => Err(Rejection::NoToken),
        identity => Ok(identity),
    }
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
            ("x:0000065535", "x"),
            ("x:08080", "x"),
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
            "",
            ":80",
            "user@x",
            "x:65536",
            "x:0000065536",
            "x:99999999999",
            "x:+80",
            "x:-1",
            "x:8 ",
            "x:8a",
            "x:1:2",
            "[::1]x",
            "[::1",
            "[x]",
            "x y",
            "x/y",
            "x%41",
            "a,b",
        ] {
            assert_eq!(host_len(authority.as_bytes()), None, "{authority}");
        }
        assert_eq!(host_len("a".repeat(254).as_bytes()), None);
    }
}
