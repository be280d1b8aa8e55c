//! The route table: the `[[routes]]` settings and their validation, and picking the route for a
//! request by host, method and normalised path.
//!
//! The rule, one for every caller (the gateway, `routes explain`): among the routes that fit a
//! request (host unset or equal to the request's, method allowed, path under the prefix on a
//! segment boundary), the longest `path_prefix` wins; at equal length a route naming the host
//! wins over a host-less one ([`precedence`]). Nothing fitting means no route: the
//! pipeline answers 404 and nothing is forwarded.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Method, Uri};
use serde::{Deserialize, Serialize};

use crate::auth::claims::{MAX_ROLE_BYTES, is_header_safe};
use crate::auth::paths::EndpointPaths;
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero};
use crate::cors::{CorsPolicy, Owner, RawCors};
use crate::origin::Origin;
use crate::proxy::path::{self, under_prefix};
use crate::proxy::{DEFAULT_CONNECT_TIMEOUT, host_header};

/// Default upstream response timeout of a route.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest gap between two chunks of an upstream response body; then the client's
/// response is cut.
pub const DEFAULT_ROUTE_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `body_timeout` a route accepts: long enough for quiet event streams, short enough
/// that a stalled upstream cannot hold a client connection for ever.
pub const MAX_ROUTE_BODY_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Default of a route's `preserve_host`: the upstream is sent its own authority as `Host`, which
/// is what virtual-hosted upstreams and TLS upstreams behind a name expect.
pub const DEFAULT_PRESERVE_HOST: bool = false;
/// Default of a route's `rewrite_redirects`: `Location`, `Content-Location` and `Refresh` that
/// point at the upstream's own address are rewritten to the public one, so a browser is never
/// sent around the gateway.
pub const DEFAULT_REWRITE_REDIRECTS: bool = true;

/// A `[[routes]]` entry as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub path_prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default = "default_route_timeout")]
    pub timeout: RawDuration,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: RawDuration,
    #[serde(default = "default_route_body_timeout")]
    pub body_timeout: RawDuration,
    #[serde(default)]
    pub require_scopes: Vec<String>,
    #[serde(default)]
    pub require_roles: Vec<String>,
    #[serde(default)]
    pub require_any_role: Vec<String>,
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default)]
    pub allow_shadowing: bool,
    #[serde(default = "default_preserve_host")]
    pub preserve_host: bool,
    #[serde(default = "default_rewrite_redirects")]
    pub rewrite_redirects: bool,
    /// `[routes.cors]`: absent, the route has no CORS policy.
    #[serde(default)]
    pub cors: Option<RawCors>,
    #[serde(default)]
    pub login_redirect: bool,
}

fn default_preserve_host() -> bool {
    DEFAULT_PRESERVE_HOST
}

fn default_rewrite_redirects() -> bool {
    DEFAULT_REWRITE_REDIRECTS
}

fn default_route_timeout() -> RawDuration {
    DEFAULT_ROUTE_TIMEOUT.into()
}

fn default_connect_timeout() -> RawDuration {
    DEFAULT_CONNECT_TIMEOUT.into()
}

fn default_route_body_timeout() -> RawDuration {
    DEFAULT_ROUTE_BODY_TIMEOUT.into()
}

/// How a route treats access tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is required (the default).
    #[default]
    Required,
    /// A valid token is verified and injected; no token forwards without identity.
    Optional,
    /// No token is needed; identity headers are still scrubbed.
    Public,
}

/// A validated route.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    /// Lowercase host without port; `None` matches any host.
    pub host: Option<String>,
    /// Normalised, without a trailing slash unless it is `/`.
    pub path_prefix: String,
    /// `None` allows every method.
    pub methods: Option<Vec<Method>>,
    pub upstream: Upstream,
    pub strip_prefix: bool,
    pub auth: AuthMode,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest gap between two chunks of the upstream's response body.
    pub body_timeout: Duration,
    pub require_scopes: Vec<String>,
    pub require_roles: Vec<String>,
    pub require_any_role: Vec<String>,
    pub forward_token: bool,
    /// This route may take, for its host, requests that a host-less route with the same prefix
    /// and a stronger auth policy would otherwise serve (see [`shadowings`]); logged as a warning.
    pub allow_shadowing: bool,
    /// Send the upstream the client's `Host` (the authority stage 1 checked) instead of the
    /// upstream URL's. TLS to the upstream is still verified against the upstream URL's host.
    pub preserve_host: bool,
    /// Rewrite response headers that point at the upstream's own address to the public one
    /// (see `gateway::redirects`).
    pub rewrite_redirects: bool,
    /// The route's CORS policy (`[routes.cors]`): preflights answered by the gateway, the
    /// `Access-Control-*` headers of its responses. `None`: preflights are like any request.
    pub cors: Option<CorsPolicy>,
    /// A browser's navigation (GET or HEAD accepting `text/html`) without a live session or
    /// token is sent to the sign-in page instead of answered 401; API calls still get 401.
    pub login_redirect: bool,
}

/// An upstream base URL split into the parts the forwarder needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// The `Host` it is sent unless the route preserves the client's (see
    /// [`crate::proxy::host_header`]), made once here.
    pub host: http::HeaderValue,
    /// Empty or starting with `/`.
    pub base_path: String,
}

impl Upstream {
    /// The upstream's own address as a web origin (scheme, host, port; default port dropped),
    /// what a redirect must name to be rewritten. `None` for a host that is no origin host
    /// (validation refuses it where it matters).
    pub fn origin(&self) -> Option<Origin> {
        Origin::from_parts(self.scheme.as_str(), self.authority.as_str()).ok()
    }
}

/// Routes in the order [`precedence`] tries them.
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        let mut routes: Vec<Arc<Route>> = routes.iter().cloned().map(Arc::new).collect();
        // Stable sort keeps config order among equals; equals never overlap (config rejects it).
        routes.sort_by(|a, b| precedence(a, b));
        Self { routes }
    }

    /// The route for `host` (no port; letter case and trailing dots do not matter), `method` and
    /// the normalised `path`.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Option<&Arc<Route>> {
        self.position(host, method, path).map(|i| &self.routes[i])
    }

    /// Like [`find`](Self::find), as the route's index in [`iter`](Self::iter) order, for
    /// callers that keep per-route state beside the table.
    pub fn position(&self, host: Option<&str>, method: &Method, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| fits(r, host, method, path))
    }

    /// Every route that fits the request, the winner first: what `routes explain` shows as the
    /// routes that would otherwise have matched.
    pub fn fitting<'t>(
        &'t self,
        host: Option<&'t str>,
        method: &'t Method,
        path: &'t str,
    ) -> impl Iterator<Item = &'t Arc<Route>> {
        self.routes
            .iter()
            .filter(move |r| fits(r, host, method, path))
    }

    /// The route at `index` in [`iter`](Self::iter) order.
    pub fn get(&self, index: usize) -> Option<&Arc<Route>> {
        self.routes.get(index)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

fn fits(route: &Route, host: Option<&str>, method: &Method, path: &str) -> bool {
    route
        .host
        .as_deref()
        .is_none_or(|h| host.is_some_and(|host| host.trim_end_matches('.').eq_ignore_ascii_case(h)))
        && route.methods.as_ref().is_none_or(|ms| ms.contains(method))
        && under_prefix(path, &route.path_prefix)
}

/// The upstream URI for a request on `route`: the route's scheme and authority, its base path
/// joined with the normalised path (prefix removed when the route strips it), and the query as the
/// client sent it. Built with `Uri` parts, never by gluing URL strings.
///
/// `sent` is the path and query of the request as it came: when they are exactly what this
/// builds (no base path, nothing stripped, a path normalising left as it was), its bytes are
/// shared instead of copied and checked again.
pub fn upstream_uri(
    route: &Route,
    normalised_path: &str,
    query: Option<&str>,
    sent: Option<&PathAndQuery>,
) -> Option<Uri> {
    let unchanged = sent.filter(|sent| {
        route.upstream.base_path.is_empty()
            && !route.strip_prefix
            && normalised_path.starts_with('/')
            && sent.path() == normalised_path
            && sent.query() == query
    });
    let path_and_query = match unchanged {
        Some(sent) => sent.clone(),
        None => {
            let forwarded = if route.strip_prefix {
                path::strip_prefix(normalised_path, &route.path_prefix)
            } else {
                normalised_path
            };
            let mut target = path::join_base(&route.upstream.base_path, forwarded);
            if let Some(query) = query {
                target.push('?');
                target.push_str(query);
            }
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(target)).ok()?
        }
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(route.upstream.scheme.clone());
    parts.authority = Some(route.upstream.authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

/// The inverse of [`upstream_uri`]'s path mapping: the public path that `upstream_path` (a path
/// the upstream names, empty or starting with `/`, without query or fragment) stands for on
/// `route`; `None` when it is not under the upstream's base path. The base path is matched on a
/// segment boundary (`/v1` covers `/v1` and `/v1/x`, never `/v10`) and in its exact letter case:
/// it is the upstream's own path, and the gateway forwards it as written. With `/api` stripped
/// and base `/v1`: `/v1/items/` -> `/api/items/`, `/v1` -> `/api`.
pub fn public_path(route: &Route, upstream_path: &str) -> Option<String> {
    let rest = upstream_path.strip_prefix(route.upstream.base_path.as_str())?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let put_back = match route.strip_prefix {
        true if route.path_prefix != "/" => route.path_prefix.as_str(),
        _ => "",
    };
    let mut public = String::with_capacity(put_back.len() + rest.len() + 1);
    public.push_str(put_back);
    public.push_str(rest);
    if public.is_empty() {
        public.push('/');
    }
    Some(public)
}

/// Role and scope names end up in comma- and space-joined header values.
fn claim_token(key: &str, value: &str) -> Result<(), ConfigError> {
    if !is_header_safe(value, MAX_ROLE_BYTES) {
        return Err(invalid(
            key,
            format!("{value:?} must be 1-128 printable ASCII characters without , \" or \\"),
        ));
    }
    Ok(())
}

/// The `[[routes]]` entries validated, in file order: names unique, none overlapping the
/// gateway's own endpoints (see [`check_endpoints`]), none ambiguous with another, and no
/// shadowing that `allow_shadowing` did not allow.
pub fn validate_routes(
    raw: Vec<RawRoute>,
    endpoints: &EndpointPaths,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        let route = r.validate(&key)?;
        if !names.insert(route.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("route name {:?} is used twice", route.name),
            ));
        }
        check_endpoints(&key, &route, endpoints)?;
        if let Some(other) = routes.iter().find(|o| same_requests(o, &route)) {
            return Err(invalid(
                format!("{key}.path_prefix"),
                format!(
                    "route {:?} matches the same requests as route {:?} (same host, prefix and methods)",
                    route.name, other.name
                ),
            ));
        }
        routes.push(route);
    }
    if let Some(s) = shadowings(&routes).find(|s| !s.winner.allow_shadowing) {
        return Err(invalid(
            format!("routes[{}].allow_shadowing", s.winner.name),
            format!(
                "{s}; give both routes the same policy, or set allow_shadowing = true on route {:?} if that host is meant to be weaker",
                s.winner.name
            ),
        ));
    }
    Ok(routes)
}

/// Stage 4 decides the gateway's own endpoints before any route, so a route may lose paths to
/// them, but never its own prefix: an endpoint's exact path may sit under a route's prefix (the
/// endpoint wins that one path: how a FastAPI app's `/token` is taken over), but a route whose
/// `path_prefix` is an endpoint path is refused, and so is one under a non-root auth prefix or
/// covering it (other than `/`), whose requests the prefix's catch-all 404 would take.
fn check_endpoints(key: &str, route: &Route, endpoints: &EndpointPaths) -> Result<(), ConfigError> {
    let prefix = endpoints.prefix();
    if !prefix.is_empty()
        && (route.path_prefix != "/" && path::under_prefix(prefix, &route.path_prefix)
            || path::under_prefix(&route.path_prefix, prefix))
    {
        return Err(invalid(
            format!("{key}.path_prefix"),
            format!(
                "{} overlaps the gateway's own endpoints under {prefix}",
                route.path_prefix
            ),
        ));
    }
    if let Some((endpoint, at)) = endpoints
        .iter()
        .find(|(_, at)| at.eq_ignore_ascii_case(route.path_prefix.trim_end_matches('/')))
    {
        return Err(invalid(
            format!("{key}.path_prefix"),
            format!(
                "{} is the path of the gateway's own endpoint auth.paths.{} ({at}), which is decided before any route: the route would never see its own prefix; move one of them",
                route.path_prefix,
                endpoint.name()
            ),
        ));
    }
    Ok(())
}

/// The one precedence rule of the route table: among the routes that fit a request (host unset
/// or equal to the request's, method allowed, path under the prefix on a segment boundary), the
/// longest `path_prefix` wins; at equal length, a route naming the host wins over a host-less
/// one. `Less` means `a` is tried before `b`. Routes that tie on both are never ambiguous: equal
/// prefixes then have the same host, and `same_requests` refuses those whose methods overlap.
pub fn precedence(a: &Route, b: &Route) -> std::cmp::Ordering {
    b.path_prefix
        .len()
        .cmp(&a.path_prefix.len())
        .then(b.host.is_some().cmp(&a.host.is_some()))
}

/// A route that wins, for its host, requests that another route with an equally long prefix
/// and a stronger auth policy also matches. The only way [`precedence`] lets a route win
/// without a longer prefix is by naming the host, so `winner` names a host and `shadowed` does
/// not. A longer prefix winning is not shadowing: it is the documented, expected rule.
#[derive(Debug)]
pub struct Shadowing<'a> {
    pub winner: &'a Route,
    pub shadowed: &'a Route,
}

impl std::fmt::Display for Shadowing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, s) = (self.winner, self.shadowed);
        write!(
            f,
            "route {:?} (host {}, prefix {}, {}) takes requests for its host that route {:?} (any host, prefix {}, {}) would otherwise serve with a stronger auth policy",
            w.name,
            w.host.as_deref().unwrap_or("*"),
            w.path_prefix,
            policy_text(w),
            s.name,
            s.path_prefix,
            policy_text(s),
        )
    }
}

/// Every pair of routes where one shadows a stronger one (see [`Shadowing`]).
pub fn shadowings(routes: &[Route]) -> impl Iterator<Item = Shadowing<'_>> {
    routes.iter().flat_map(move |winner| {
        routes
            .iter()
            .filter(move |shadowed| {
                winner.host.is_some()
                    && shadowed.host.is_none()
                    && winner
                        .path_prefix
                        .eq_ignore_ascii_case(&shadowed.path_prefix)
                    && methods_overlap(winner, shadowed)
                    && !at_least_as_strict(winner, shadowed)
            })
            .map(move |shadowed| Shadowing { winner, shadowed })
    })
}

fn methods_overlap(a: &Route, b: &Route) -> bool {
    match (&a.methods, &b.methods) {
        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
        _ => true,
    }
}

/// Whether every request `route` lets through, `other` would let through too: its auth mode
/// is at least as strict, it requires every scope and role `other` requires, and it accepts no
/// role outside `other`'s any-of list (or requires one in it outright).
fn at_least_as_strict(route: &Route, other: &Route) -> bool {
    let rank = |mode: AuthMode| match mode {
        AuthMode::Public => 0,
        // Optional lets a request without a token through, requirements and all.
        AuthMode::Optional => 1,
        AuthMode::Required => 2,
    };
    let all_in = |needed: &[String], have: &[String]| needed.iter().all(|n| have.contains(n));
    let any_role_covered = other.require_any_role.is_empty()
        || route
            .require_roles
            .iter()
            .any(|r| other.require_any_role.contains(r))
        || (!route.require_any_role.is_empty()
            && all_in(&route.require_any_role, &other.require_any_role));
    rank(route.auth) >= rank(other.auth)
        && all_in(&other.require_scopes, &route.require_scopes)
        && all_in(&other.require_roles, &route.require_roles)
        && any_role_covered
}

/// The auth policy in a few words, for messages.
pub fn policy_text(route: &Route) -> String {
    let mut text = match route.auth {
        AuthMode::Required => "auth required",
        AuthMode::Optional => "auth optional",
        AuthMode::Public => "public",
    }
    .to_owned();
    for (what, list) in [
        ("scopes", &route.require_scopes),
        ("roles", &route.require_roles),
        ("any role of", &route.require_any_role),
    ] {
        if !list.is_empty() {
            text.push_str(&format!(", {what} {}", list.join(" ")));
        }
    }
    text
}

/// Two routes are ambiguous when host and prefix are equal and their method sets intersect.
fn same_requests(a: &Route, b: &Route) -> bool {
    // Prefixes match without regard to ASCII case (see proxy::path::under_prefix).
    a.host == b.host && a.path_prefix.eq_ignore_ascii_case(&b.path_prefix) && methods_overlap(a, b)
}

impl RawRoute {
    fn validate(self, key: &str) -> Result<Route, ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "{:?} must be 1-64 characters from [A-Za-z0-9._-]",
                    self.name
                ),
            ));
        }
        let key = format!("routes[{}]", self.name);
        let path_prefix = validate_prefix(&format!("{key}.path_prefix"), &self.path_prefix)?;
        let host = match self.host {
            None => None,
            Some(h) => Some(validate_host(&format!("{key}.host"), &h)?),
        };
        let methods = match self.methods {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(invalid(
                        format!("{key}.methods"),
                        "an empty list allows nothing; leave it out to allow every method",
                    ));
                }
                let mut methods = Vec::new();
                for m in list {
                    let upper = m.to_ascii_uppercase();
                    let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                        invalid(format!("{key}.methods"), format!("{m:?} is not a method"))
                    })?;
                    if method == Method::CONNECT || method == Method::TRACE {
                        return Err(invalid(
                            format!("{key}.methods"),
                            format!("{method} is never proxied"),
                        ));
                    }
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                Some(methods)
            }
        };
        let upstream = parse_upstream(&format!("{key}.upstream"), &self.upstream)?;
        if self.rewrite_redirects && upstream.origin().is_none() {
            return Err(invalid(
                format!("{key}.upstream"),
                format!(
                    "{:?}: redirects to it cannot be recognised (the host is not a plain name or IP address); fix it or set rewrite_redirects = false",
                    self.upstream
                ),
            ));
        }
        for (k, list) in [
            ("require_scopes", &self.require_scopes),
            ("require_roles", &self.require_roles),
            ("require_any_role", &self.require_any_role),
        ] {
            for item in list {
                claim_token(&format!("{key}.{k}"), item)?;
            }
        }
        let has_requirements = !self.require_scopes.is_empty()
            || !self.require_roles.is_empty()
            || !self.require_any_role.is_empty();
        if self.auth == AuthMode::Public && self.login_redirect {
            return Err(invalid(
                format!("{key}.login_redirect"),
                "a public route never asks anyone to sign in",
            ));
        }
        if self.auth == AuthMode::Public && has_requirements {
            return Err(invalid(
                format!("{key}.auth"),
                "a public route cannot require scopes or roles",
            ));
        }
        Ok(Route {
            name: self.name,
            host,
            path_prefix,
            methods,
            upstream,
            strip_prefix: self.strip_prefix,
            auth: self.auth,
            timeout: nonzero(&format!("{key}.timeout"), &self.timeout)?,
            connect_timeout: nonzero(&format!("{key}.connect_timeout"), &self.connect_timeout)?,
            body_timeout: route_body_timeout(&format!("{key}.body_timeout"), &self.body_timeout)?,
            require_scopes: self.require_scopes,
            require_roles: self.require_roles,
            require_any_role: self.require_any_role,
            forward_token: self.forward_token,
            allow_shadowing: self.allow_shadowing,
            preserve_host: self.preserve_host,
            rewrite_redirects: self.rewrite_redirects,
            cors: self
                .cors
                .map(|c| c.validate(&format!("{key}.cors"), Owner::Route))
                .transpose()?,
            login_redirect: self.login_redirect,
        })
    }
}

fn validate_prefix(key: &str, prefix: &str) -> Result<String, ConfigError> {
    let normalised = path::normalize(prefix)
        .map_err(|e| invalid(key, format!("{prefix:?} is not a clean path: {e}")))?;
    let trimmed = match normalised.trim_end_matches('/') {
        "" => "/".to_owned(),
        t => t.to_owned(),
    };
    let expected = if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        prefix
    };
    if trimmed != expected {
        return Err(invalid(
            key,
            format!("{prefix:?} is not normalised (did you mean {trimmed:?}?)"),
        ));
    }
    Ok(trimmed)
}

fn validate_host(key: &str, host: &str) -> Result<String, ConfigError> {
    let lower = host.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 253
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        && !lower.starts_with('.')
        && !lower.ends_with('.');
    if !ok {
        return Err(invalid(
            key,
            format!("{host:?} must be a host name without port, e.g. api.example.com"),
        ));
    }
    Ok(lower)
}

fn parse_upstream(key: &str, text: &str) -> Result<Upstream, ConfigError> {
    let uri: Uri = text
        .parse()
        .map_err(|_| invalid(key, format!("{text:?} is not a URL")))?;
    let scheme = match uri.scheme_str() {
        Some("http") | Some("https") => uri.scheme().cloned(),
        _ => None,
    }
    .ok_or_else(|| invalid(key, format!("{text:?} must start with http:// or https://")))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(key, format!("{text:?} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            key,
            "credentials in the upstream URL are not supported",
        ));
    }
    if authority.host().is_empty() {
        return Err(invalid(key, format!("{text:?} has no host")));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(invalid(
            key,
            "an upstream URL cannot carry a query or fragment",
        ));
    }
    let raw_path = uri.path();
    let base_path = if raw_path == "/" || raw_path.is_empty() {
        String::new()
    } else {
        let normalised = path::normalize(raw_path)
            .map_err(|e| invalid(key, format!("base path {raw_path:?}: {e}")))?;
        let trimmed = normalised.trim_end_matches('/').to_owned();
        if trimmed != raw_path.trim_end_matches('/') {
            return Err(invalid(
                key,
                format!("base path {raw_path:?} is not normalised (did you mean {trimmed:?}?)"),
            ));
        }
        trimmed
    };
    let host = host_header(&scheme, &authority)
        .ok_or_else(|| invalid(key, "the upstream's host cannot be sent as a Host header"))?;
    Ok(Upstream {
        scheme,
        authority,
        host,
        base_path,
    })
}

fn route_body_timeout(key: &str, d: &RawDuration) -> Result<Duration, ConfigError> {
    let d = nonzero(key, d)?;
    if d > MAX_ROUTE_BODY_TIMEOUT {
        return Err(invalid(key, "must be at most 1d"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(toml: &str) -> RouteTable {
        RouteTable::new(&Config::from_toml(toml).unwrap().routes)
    }

    fn route(name: &str, prefix: &str, extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n"
        )
    }

    fn found(t: &RouteTable, host: Option<&str>, method: Method, path: &str) -> Option<String> {
        t.find(host, &method, path).map(|r| r.name.clone())
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(
            &(route("root", "/", "") + &route("api", "/api", "") + &route("v1", "/api/v1", "")),
        );
        assert_eq!(
            found(&t, None, Method::GET, "/api/v1/x").as_deref(),
            Some("v1")
        );
        assert_eq!(
            found(&t, None, Method::GET, "/api/v2").as_deref(),
            Some("api")
        );
        assert_eq!(
            found(&t, None, Method::GET, "/other").as_deref(),
            Some("root")
        );
    }

    #[test]
    fn prefix_not_on_segment_boundary_does_not_match() {
        let t = table(&route("admin", "/admin", ""));
        assert_eq!(
            found(&t, None, Method::GET, "/admin").as_deref(),
            Some("admin")
        );
        assert_eq!(
            found(&t, None, Method::GET, "/admin/x").as_deref(),
            Some("admin")
        );
        assert_eq!(found(&t, None, Method::GET, "/administrator"), None);
        assert_eq!(found(&t, None, Method::GET, "/"), None);
    }

    #[test]
    fn host_specific_routes_win_at_equal_prefix() {
        let t = table(&(route("any", "/", "") + &route("api", "/", "host = \"API.example.com\"")));
        assert_eq!(
            found(&t, Some("api.example.com"), Method::GET, "/x").as_deref(),
            Some("api")
        );
        assert_eq!(
            found(&t, Some("other"), Method::GET, "/x").as_deref(),
            Some("any")
        );
        assert_eq!(found(&t, None, Method::GET, "/x").as_deref(), Some("any"));
    }

    #[test]
    fn a_longer_host_less_prefix_beats_a_shorter_host_specific_one() {
        let t = table(
            &(route("www", "/", "host = \"www.example.test\"\nauth = \"public\"")
                + &route("admin", "/admin", "require_roles = [\"admin\"]")),
        );
        for host in ["www.example.test", "WWW.Example.Test", "www.example.test."] {
            assert_eq!(
                found(&t, Some(host), Method::GET, "/admin/users").as_deref(),
                Some("admin"),
                "{host}"
            );
            assert_eq!(
                found(&t, Some(host), Method::GET, "/other").as_deref(),
                Some("www")
            );
        }
        let fitting: Vec<_> = t
            .fitting(Some("www.example.test"), &Method::GET, "/admin/users")
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(fitting, ["admin", "www"]);
    }

    #[test]
    fn upstream_uri_strips_the_prefix_and_keeps_the_query() {
        let t = table(
            &route("api", "/api", "strip_prefix = true").replace("127.0.0.1:1", "127.0.0.1:1/base"),
        );
        let r = t.find(None, &Method::GET, "/api/x").unwrap();
        let uri = upstream_uri(r, "/api/x", Some("a=1&b=%20"), None).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:1/base/x?a=1&b=%20");
        assert_eq!(
            upstream_uri(r, "/api", None, None).unwrap().to_string(),
            "http://127.0.0.1:1/base/"
        );
    }

    #[test]
    fn upstream_uri_shares_the_sent_path_only_when_it_is_what_would_be_built() {
        let plain = table(&route("api", "/api", "auth = \"public\""));
        let based = table(
            &route("api", "/api", "strip_prefix = true").replace("127.0.0.1:1", "127.0.0.1:1/base"),
        );
        let (plain, based) = (
            plain.find(None, &Method::GET, "/api/x").unwrap(),
            based.find(None, &Method::GET, "/api/x").unwrap(),
        );
        let built = |r: &Route, sent: &str| {
            let sent = PathAndQuery::try_from(sent).unwrap();
            upstream_uri(r, "/api/x", Some("a=1"), Some(&sent))
                .unwrap()
                .to_string()
        };
        // The same bytes either way, shared or built.
        assert_eq!(built(plain, "/api/x?a=1"), "http://127.0.0.1:1/api/x?a=1");
        // A path normalising changed, another query, or one the route maps: built, never sent.
        for sent in [
            "/api/./x?a=1",
            "/api//x?a=1",
            "/api/x?a=2",
            "/api/x",
            "/API/x?a=1",
        ] {
            assert_eq!(built(plain, sent), "http://127.0.0.1:1/api/x?a=1", "{sent}");
            assert_eq!(
                built(based, sent),
                "http://127.0.0.1:1/base/x?a=1",
                "{sent}"
            );
        }
        assert_eq!(built(based, "/api/x?a=1"), "http://127.0.0.1:1/base/x?a=1");
    }

    #[test]
    fn public_path_undoes_upstream_uri_on_a_segment_boundary_of_the_base_path() {
        let mapped = |prefix: &str, strip: bool, upstream: &str, path: &str| {
            let t = table(
                &route("r", prefix, &format!("strip_prefix = {strip}"))
                    .replace("http://127.0.0.1:1", upstream),
            );
            let r = t.iter().next().unwrap().clone();
            public_path(&r, path)
        };
        let v1 = "http://127.0.0.1:1/v1";
        assert_eq!(
            mapped("/api", true, v1, "/v1/items/").as_deref(),
            Some("/api/items/")
        );
        assert_eq!(mapped("/api", true, v1, "/v1").as_deref(), Some("/api"));
        assert_eq!(mapped("/api", true, v1, "/v1/").as_deref(), Some("/api/"));
        assert_eq!(
            mapped("/api", false, v1, "/v1/api/x").as_deref(),
            Some("/api/x")
        );
        assert_eq!(mapped("/", true, v1, "/v1/x").as_deref(), Some("/x"));
        assert_eq!(mapped("/api", true, v1, "/v1").as_deref(), Some("/api"));
        for outside in ["/v10/items", "/V1/items", "/", "", "/v1.json", "/x/v1"] {
            assert_eq!(mapped("/api", true, v1, outside), None, "{outside}");
        }
        let root = "http://127.0.0.1:1";
        assert_eq!(mapped("/api", true, root, "/x").as_deref(), Some("/api/x"));
        assert_eq!(mapped("/api", true, root, "").as_deref(), Some("/api"));
        assert_eq!(mapped("/api", false, root, "/x").as_deref(), Some("/x"));
        assert_eq!(mapped("/api", false, root, "").as_deref(), Some("/"));
        // And back: every public path under the prefix survives the round trip (but the bare
        // prefix, which the upstream sees as its base with a slash).
        let t = table(
            &route("r", "/api", "strip_prefix = true").replace("127.0.0.1:1", "127.0.0.1:1/v1"),
        );
        let r = t.iter().next().unwrap();
        for public in ["/api/x", "/api/x/", "/api/a/b%2Fc", "/api/"] {
            let uri = upstream_uri(r, public, None, None).unwrap();
            assert_eq!(
                public_path(r, uri.path()).as_deref(),
                Some(public),
                "{public}"
            );
        }
        assert_eq!(
            public_path(r, upstream_uri(r, "/api", None, None).unwrap().path()).as_deref(),
            Some("/api/")
        );
    }

    #[test]
    fn host_matches_in_any_letter_case_and_with_a_trailing_dot() {
        let t = table(&route("api", "/", "host = \"api.example.com\""));
        for host in ["api.example.com", "API.Example.COM", "api.example.com."] {
            assert_eq!(
                found(&t, Some(host), Method::GET, "/x").as_deref(),
                Some("api"),
                "{host}"
            );
        }
        for host in ["api.example.co", "xapi.example.com", ""] {
            assert_eq!(found(&t, Some(host), Method::GET, "/x"), None, "{host}");
        }
        assert_eq!(found(&t, None, Method::GET, "/x"), None);
    }

    #[test]
    fn method_filter_falls_back_to_shorter_prefix() {
        let t = table(&(route("read", "/data", "methods = [\"GET\"]") + &route("root", "/", "")));
        assert_eq!(
            found(&t, None, Method::GET, "/data").as_deref(),
            Some("read")
        );
        assert_eq!(
            found(&t, None, Method::DELETE, "/data").as_deref(),
            Some("root")
        );
        let t = table(&route("read", "/data", "methods = [\"GET\"]"));
        assert_eq!(found(&t, None, Method::POST, "/data"), None);
    }
}

/// Loading `[[routes]]`: what a route table is refused for, and the defaults it gets.
#[cfg(test)]
mod validation_tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, refusal as err};

    fn route(extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9000\"\n{extra}\n"
        )
    }

    #[test]
    fn route_body_timeout_defaults_to_its_constant_and_is_bounded() {
        let default = RawDuration::from(DEFAULT_ROUTE_BODY_TIMEOUT)
            .parse("default")
            .unwrap();
        let c = Config::from_toml(&route("")).unwrap();
        assert_eq!(c.routes[0].body_timeout, default);
        let example = Config::from_toml(include_str!("../config/gatehouse.example.toml")).unwrap();
        assert_eq!(example.routes[0].body_timeout, default);
        let c = Config::from_toml(&route("body_timeout = \"300ms\"")).unwrap();
        assert_eq!(c.routes[0].body_timeout, Duration::from_millis(300));
        for bad in ["\"0s\"", "\"2d\"", "\"soon\""] {
            let e = err(&route(&format!("body_timeout = {bad}")));
            assert!(e.contains("routes[api].body_timeout"), "{e}");
        }
    }

    #[test]
    fn host_and_redirect_options_default_to_their_constants() {
        let c = Config::from_toml(&route("")).unwrap();
        let example = Config::from_toml(include_str!("../config/gatehouse.example.toml")).unwrap();
        for r in [&c.routes[0], &example.routes[0]] {
            assert_eq!(r.preserve_host, DEFAULT_PRESERVE_HOST);
            assert_eq!(r.rewrite_redirects, DEFAULT_REWRITE_REDIRECTS);
        }
        let c =
            Config::from_toml(&route("preserve_host = true\nrewrite_redirects = false")).unwrap();
        assert!(c.routes[0].preserve_host && !c.routes[0].rewrite_redirects);
    }

    #[test]
    fn an_upstream_host_that_is_no_origin_host_needs_rewriting_off() {
        let odd = route("").replace("127.0.0.1:9000", "odd~host:9000");
        let e = err(&odd);
        assert!(
            e.contains("routes[api].upstream") && e.contains("rewrite_redirects"),
            "{e}"
        );
        Config::from_toml(&odd.replace("[[routes]]\n", "[[routes]]\nrewrite_redirects = false\n"))
            .unwrap();
    }

    #[test]
    fn route_prefix_must_be_normalised() {
        let text = route("").replace("/api", "/api/../admin");
        let e = err(&text);
        assert!(e.contains("path_prefix"), "{e}");
        let c = Config::from_toml(&route("").replace("\"/api\"", "\"/api/\"")).unwrap();
        assert_eq!(c.routes[0].path_prefix, "/api");
    }

    #[test]
    fn ambiguous_routes_are_rejected() {
        let text = format!("{}{}", route(""), route("").replace("\"api\"", "\"api2\""));
        let e = err(&text);
        assert!(e.contains("same requests"), "{e}");
        let text = format!(
            "{}{}",
            route("methods = [\"GET\"]"),
            route("methods = [\"post\"]").replace("\"api\"", "\"api2\"")
        );
        Config::from_toml(&text).expect("disjoint methods are not ambiguous");
    }

    #[test]
    fn upstream_url_is_checked() {
        for bad in [
            "ftp://x",
            "127.0.0.1:9000",
            "http://u:p@x",
            "http://x/?q=1",
            "http://x/a/../b",
        ] {
            let e = err(&route("").replace("http://127.0.0.1:9000", bad));
            assert!(e.contains("upstream"), "{bad}: {e}");
        }
        let c = Config::from_toml(&route("").replace("http://127.0.0.1:9000", "https://h:1/base/"))
            .unwrap();
        assert_eq!(c.routes[0].upstream.base_path, "/base");
    }

    #[test]
    fn route_overlapping_auth_endpoints_is_rejected() {
        let e = err(&route("").replace("\"/api\"", "\"/auth/x\""));
        assert!(e.contains("gateway's own endpoints"), "{e}");
    }

    #[test]
    fn route_whose_prefix_is_an_endpoint_path_is_refused() {
        let paths = "[auth.paths]\ntoken = \"/token\"\nme = \"/users/me\"\n";
        for prefix in ["/token", "/users/me", "/Users/Me", "/.well-known/jwks.json"] {
            let e = err(&format!("{paths}{}", named("r", prefix, "")));
            assert!(e.contains("routes[0].path_prefix"), "{prefix}: {e}");
            assert!(e.contains("decided before any route"), "{prefix}: {e}");
        }
        // An endpoint's exact path under a route's prefix is the endpoint's; the route keeps
        // the rest (a FastAPI app behind `/`, its /token taken over).
        for prefix in ["/", "/users", "/token/x", "/users/me/x"] {
            Config::from_toml(&format!("{paths}{}", named("r", prefix, "")))
                .unwrap_or_else(|e| panic!("{prefix}: {e}"));
        }
    }

    #[test]
    fn a_root_auth_prefix_leaves_every_other_path_to_the_routes() {
        let c = Config::from_toml(&format!(
            "[auth]\nprefix = \"/\"\n{}{}",
            named("app", "/", ""),
            named("auth", "/auth", "")
        ))
        .unwrap();
        assert_eq!(
            c.auth.paths.path(crate::auth::paths::Endpoint::Token),
            "/token"
        );
        let e = err(&format!(
            "[auth]\nprefix = \"\"\n{}",
            named("t", "/token", "")
        ));
        assert!(e.contains("auth.paths.token"), "{e}");
    }

    fn named(name: &str, prefix: &str, extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:9000\"\n{extra}\n"
        )
    }

    #[test]
    fn host_route_weaker_than_a_host_less_route_at_the_same_prefix_is_refused() {
        let admin = named("admin", "/admin", "require_roles = [\"admin\"]");
        let www = |policy: &str| {
            named(
                "www",
                "/Admin",
                &format!("host = \"www.example.test\"\n{policy}"),
            )
        };
        for weaker in [
            "auth = \"public\"",
            "auth = \"optional\"\nrequire_roles = [\"admin\"]",
            "",
            "require_any_role = [\"admin\", \"ops\"]",
            "methods = [\"GET\"]\nrequire_roles = [\"ops\"]",
        ] {
            let e = err(&(admin.clone() + &www(weaker)));
            assert!(e.contains("routes[www].allow_shadowing"), "{weaker}: {e}");
            assert!(e.contains("\"admin\" (any host, prefix /admin"), "{e}");
        }
        for as_strict in [
            "require_roles = [\"admin\"]",
            "require_roles = [\"admin\", \"ops\"]\nrequire_scopes = [\"x\"]",
        ] {
            let config = Config::from_toml(&(admin.clone() + &www(as_strict))).unwrap();
            assert!(config.warnings().is_empty(), "{as_strict}");
        }
        // A longer prefix winning is the rule, not shadowing; nor are disjoint methods.
        Config::from_toml(
            &(admin.clone() + &named("www", "/admin/pub", "host = \"w\"\nauth = \"public\"")),
        )
        .unwrap();
        let get_only = named("admin", "/admin", "methods = [\"POST\"]");
        Config::from_toml(&(get_only + &www("auth = \"public\"\nmethods = [\"GET\"]"))).unwrap();
        // With the opt-in it loads, and says so.
        let config =
            Config::from_toml(&(admin + &www("auth = \"public\"\nallow_shadowing = true")))
                .unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("allowed by allow_shadowing"),
            "{warnings:?}"
        );
    }

    #[test]
    fn any_role_policies_compare_by_the_roles_they_admit() {
        let admin = named("admin", "/a", "require_any_role = [\"admin\", \"ops\"]");
        for strict in [
            "require_any_role = [\"ops\"]",
            "require_roles = [\"admin\"]",
        ] {
            let text = admin.clone() + &named("h", "/a", &format!("host = \"h\"\n{strict}"));
            Config::from_toml(&text).unwrap();
        }
        let text = admin
            + &named(
                "h",
                "/a",
                "host = \"h\"\nrequire_any_role = [\"ops\", \"dev\"]",
            );
        err(&text);
    }

    #[test]
    fn public_route_with_requirements_is_rejected() {
        let e = err(&route("auth = \"public\"\nrequire_scopes = [\"read\"]"));
        assert!(e.contains("public"), "{e}");
    }
}
