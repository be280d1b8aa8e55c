//! Configuration: a raw serde structure read by figment (TOML file, then `GATEHOUSE_` environment
//! overrides), validated into a [`Config`] that cannot hold an invalid value.
//!
//! Every default is a named constant below and is echoed in `config/gatehouse.example.toml`.

pub mod value;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use http::{Method, Uri};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::auth::claims::{MAX_ROLE_BYTES, is_header_safe};
use crate::auth::settings::{AuthConfig, RawAuth};
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero, parse_cidrs, positive};
use crate::logging::{LogConfig, RawLog};
use crate::proxy::path;
use crate::proxy::{DEFAULT_CONNECT_TIMEOUT, RawUpstream, UpstreamConfig};
use crate::store::{RawStore, StoreConfig};

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default cap on concurrently open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default cap on the bytes of a request head (request line and headers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default cap on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default cap on a request body (larger answers 413).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default time a client has to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to complete the TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a keep-alive connection may sit with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a request body may go without sending a byte.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default HTTP/2 concurrent streams per connection.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Default queue of connections the kernel completes before the gateway accepts them (the
/// `listen(2)` backlog). At bind time it is lowered to `net.core.somaxconn`, which caps it anyway.
/// A burst larger than the queue makes the excess clients wait a SYN retransmit (1 s).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
/// Largest `listen_backlog` accepted.
pub const MAX_LISTEN_BACKLOG: u32 = 65_535;
/// Default upstream response timeout of a route.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest gap between two chunks of an upstream response body; then the client's
/// response is cut.
pub const DEFAULT_ROUTE_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `body_timeout` a route accepts: long enough for quiet event streams, short enough
/// that a stalled upstream cannot hold a client connection for ever.
pub const MAX_ROUTE_BODY_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Environment variables with this prefix override file values; `__` separates nested keys.
pub const ENV_PREFIX: &str = "GATEHOUSE_";
/// Variables with the prefix that belong to the command line, not to the configuration.
const ENV_NOT_CONFIG: &[&str] = &["CONFIG", "LOG"];

// ---------------------------------------------------------------------------------------------
// Raw: what the file and environment say, before validation.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub routes: Vec<RawRoute>,
    pub auth: RawAuth,
    pub store: RawStore,
    pub log: RawLog,
    pub admin: RawAdmin,
}

/// Default address of the admin listener (health, readiness, metrics).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default interval at which the config file is checked for changes.
pub const DEFAULT_WATCH_INTERVAL: &str = "2s";

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub enabled: bool,
    pub listen: String,
    pub watch_config: bool,
    pub watch_interval: RawDuration,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_ADMIN_LISTEN.into(),
            watch_config: true,
            watch_interval: DEFAULT_WATCH_INTERVAL.into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub tls: Option<RawTls>,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: RawDuration,
    pub tls_handshake_timeout: RawDuration,
    pub idle_timeout: RawDuration,
    pub body_idle_timeout: RawDuration,
    pub shutdown_grace: RawDuration,
    pub h2_max_concurrent_streams: u32,
    pub trusted_proxies: Vec<String>,
    pub listen_backlog: u32,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT.into(),
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT.into(),
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT.into(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE.into(),
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            trusted_proxies: Vec::new(),
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

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

// ---------------------------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------------------------

/// A configuration that passed validation.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub routes: Vec<Route>,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// `None`: no admin listener.
    pub listen: Option<SocketAddr>,
    /// Reload when the config file changes (SIGHUP always reloads).
    pub watch_config: bool,
    pub watch_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub h2_max_concurrent_streams: u32,
    pub trusted_proxies: Vec<IpNet>,
    /// The requested `listen(2)` backlog, 1..=65535 (lowered to `net.core.somaxconn` at bind).
    pub listen_backlog: u32,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
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
}

/// An upstream base URL split into the parts the forwarder needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Empty or starting with `/`.
    pub base_path: String,
}

// ---------------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads `path` (when given) then `GATEHOUSE_*` overrides, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(figment.merge(env_provider()))
    }

    /// What a valid configuration still deserves a warning for, one line each: the shadowings
    /// that `allow_shadowing` let through.
    pub fn warnings(&self) -> Vec<String> {
        shadowings(&self.routes)
            .map(|s| format!("{s} (allowed by allow_shadowing)"))
            .collect()
    }

    /// Parses TOML text (no environment): for tests and `check-config` of literal text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        raw.validate()
    }
}

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| {
            !ENV_NOT_CONFIG
                .iter()
                .any(|k| key.as_str().eq_ignore_ascii_case(k))
        })
        .split("__")
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
        let upstream = self.upstream.validate()?;
        let auth = self.auth.validate()?;
        let routes = validate_routes(self.routes, &auth.prefix)?;
        let store = self.store.validate()?;
        let admin_listen = if self.admin.enabled {
            let addr: SocketAddr = self.admin.listen.parse().map_err(|_| {
                invalid(
                    "admin.listen",
                    format!(
                        "{:?} is not an address like 127.0.0.1:9901",
                        self.admin.listen
                    ),
                )
            })?;
            if addr == server.listen {
                return Err(invalid("admin.listen", "must differ from server.listen"));
            }
            Some(addr)
        } else {
            None
        };
        let admin = AdminConfig {
            listen: admin_listen,
            watch_config: self.admin.watch_config,
            watch_interval: nonzero("admin.watch_interval", &self.admin.watch_interval)?,
        };
        Ok(Config {
            server,
            upstream,
            routes,
            auth,
            store,
            log: self.log.validate()?,
            admin,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:8080", self.listen),
            )
        })?;
        positive("server.max_connections", self.max_connections as u64)?;
        if self.max_header_bytes < 8192 {
            return Err(invalid(
                "server.max_header_bytes",
                "must be at least 8192 (the HTTP/1 parser's smallest buffer)",
            ));
        }
        positive("server.max_headers", self.max_headers as u64)?;
        positive("server.max_body_bytes", self.max_body_bytes)?;
        positive(
            "server.h2_max_concurrent_streams",
            self.h2_max_concurrent_streams as u64,
        )?;
        let tls = match self.tls {
            None => None,
            Some(t) => {
                for (key, p) in [("server.tls.cert", &t.cert), ("server.tls.key", &t.key)] {
                    if p.as_os_str().is_empty() {
                        return Err(invalid(key, "must name a PEM file"));
                    }
                }
                Some(TlsFiles {
                    cert: t.cert,
                    key: t.key,
                })
            }
        };
        let trusted_proxies = parse_cidrs("server.trusted_proxies", &self.trusted_proxies)?;
        if !(1..=MAX_LISTEN_BACKLOG).contains(&self.listen_backlog) {
            return Err(invalid(
                "server.listen_backlog",
                format!("must be between 1 and {MAX_LISTEN_BACKLOG}"),
            ));
        }
        Ok(ServerConfig {
            listen,
            tls,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes,
            header_read_timeout: nonzero("server.header_read_timeout", &self.header_read_timeout)?,
            tls_handshake_timeout: nonzero(
                "server.tls_handshake_timeout",
                &self.tls_handshake_timeout,
            )?,
            idle_timeout: nonzero("server.idle_timeout", &self.idle_timeout)?,
            body_idle_timeout: nonzero("server.body_idle_timeout", &self.body_idle_timeout)?,
            shutdown_grace: self.shutdown_grace.parse("server.shutdown_grace")?,
            h2_max_concurrent_streams: self.h2_max_concurrent_streams,
            trusted_proxies,
            listen_backlog: self.listen_backlog,
        })
    }
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

fn validate_routes(raw: Vec<RawRoute>, auth_prefix: &str) -> Result<Vec<Route>, ConfigError> {
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
        if route.path_prefix != "/" && path::under_prefix(auth_prefix, &route.path_prefix)
            || path::under_prefix(&route.path_prefix, auth_prefix)
        {
            return Err(invalid(
                format!("{key}.path_prefix"),
                format!(
                    "{} overlaps the gateway's own endpoints under {auth_prefix}",
                    route.path_prefix
                ),
            ));
        }
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
    Ok(Upstream {
        scheme,
        authority,
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

/// What loading `text` is refused with, for the tests of every section.
#[cfg(test)]
pub(crate) fn refusal(text: &str) -> String {
    match Config::from_toml(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9000\"\n{extra}\n"
        )
    }

    use super::refusal as err;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/gatehouse.example.toml");
        let config = Config::from_toml(text).expect("example config must be valid");
        assert!(!config.routes.is_empty());
        assert_eq!(config.server.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    /// The example config documents every key with its default: loading it must give exactly
    /// what loading nothing gives, section by section (routes aside: the defaults have none).
    #[test]
    fn example_config_values_are_the_defaults() {
        let example = Config::from_toml(include_str!("../config/gatehouse.example.toml")).unwrap();
        let defaults = Config::from_toml("").unwrap();
        for (section, a, b) in [
            (
                "server",
                format!("{:?}", example.server),
                format!("{:?}", defaults.server),
            ),
            (
                "upstream",
                format!("{:?}", example.upstream),
                format!("{:?}", defaults.upstream),
            ),
            (
                "auth",
                format!("{:?}", example.auth),
                format!("{:?}", defaults.auth),
            ),
            (
                "store",
                format!("{:?}", example.store),
                format!("{:?}", defaults.store),
            ),
            (
                "log",
                format!("{:?}", example.log),
                format!("{:?}", defaults.log),
            ),
            (
                "admin",
                format!("{:?}", example.admin),
                format!("{:?}", defaults.admin),
            ),
        ] {
            assert_eq!(
                a, b,
                "[{section}] of the example config differs from the defaults"
            );
        }
        let route = &example.routes[0];
        assert_eq!(route.timeout, DEFAULT_ROUTE_TIMEOUT);
        assert_eq!(route.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(route.body_timeout, DEFAULT_ROUTE_BODY_TIMEOUT);
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.auth.prefix, "/auth");
        assert_eq!(c.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.auth.access_token_lifetime, Duration::from_secs(900));
        assert_eq!(c.auth.leeway, Duration::from_secs(10));
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
    fn listen_backlog_defaults_to_1024_and_is_bounded() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.listen_backlog, DEFAULT_LISTEN_BACKLOG);
        let c = Config::from_toml("[server]\nlisten_backlog = 4096\n").unwrap();
        assert_eq!(c.server.listen_backlog, 4096);
        for bad in [0, 65_536] {
            let e = err(&format!("[server]\nlisten_backlog = {bad}\n"));
            assert!(e.contains("server.listen_backlog"), "{e}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(e.contains("listen_port"), "{e}");
        let e = err(&route("bogus = 1"));
        assert!(e.contains("bogus"), "{e}");
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
