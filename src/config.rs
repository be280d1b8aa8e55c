//! Configuration: a raw serde structure read by figment (TOML file, then `GATEHOUSE_` environment
//! overrides), validated into a [`Config`] that cannot hold an invalid value.
//!
//! Every default is a named constant below and is echoed in `config/gatehouse.example.toml`.

pub mod source;
pub mod value;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::auth::settings::{AuthConfig, RawAuth};
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero, parse_cidrs, positive};
use crate::gateway::forward_auth::settings::{ForwardAuthConfig, RawForwardAuth};
use crate::logging::{LogConfig, RawLog};
use crate::proxy::{RawUpstream, UpstreamConfig};
use crate::routes::{RawRoute, Route, shadowings, validate_routes};
use crate::store::{RawStore, StoreConfig};
use crate::trace::{RawTracing, TracingConfig};

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
/// Default of `[server] allow_no_routes`: a configuration without a route is refused, since it
/// answers every proxied request 404 (the usual sign of an empty or truncated file).
pub const DEFAULT_ALLOW_NO_ROUTES: bool = false;

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
    pub forward_auth: RawForwardAuth,
    pub store: RawStore,
    pub log: RawLog,
    pub admin: RawAdmin,
    pub tracing: Option<RawTracing>,
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
    pub allow_no_routes: bool,
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
            allow_no_routes: DEFAULT_ALLOW_NO_ROUTES,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
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
    pub forward_auth: ForwardAuthConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    /// Every key with its value as loaded (defaults, file, environment; paths rebased), before
    /// validation: what a reload compares to tell what changed and what needs a restart.
    pub loaded: Arc<Dict>,
    /// `None`: no spans exported (trace context is still propagated).
    pub tracing: Option<TracingConfig>,
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
    /// Whether a configuration without routes is accepted (see [`Config::require_routes`]).
    pub allow_no_routes: bool,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads `path` (when given) then `GATEHOUSE_*` overrides, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Self::from_file_text(path, &source::read(path)?),
            None => Self::from_figment(
                Figment::from(Serialized::defaults(RawConfig::default())).merge(env_provider()),
                None,
            ),
        }
    }

    /// Validates `text`, read from the file `path` (which decides where relative paths
    /// point and what errors cite, with line and column), then `GATEHOUSE_*` overrides.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(Serialized::defaults(RawConfig::default()))
            .merge(FileText { path, text })
            .merge(env_provider());
        let mut raw = extract(&figment, Some(text))?;
        if let Some(dir) = path.parent() {
            raw.rebase(dir);
        }
        raw.validate().map_err(|e| located(e, &figment, path, text))
    }

    /// A configuration without routes answers every proxied request 404: refused unless
    /// `[server] allow_no_routes` says it is meant (`serve`, `check-config` and reloads ask).
    pub fn require_routes(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() && !self.server.allow_no_routes {
            return Err(invalid(
                "routes",
                "no [[routes]]: every proxied request would get 404; add a route, or set \
                 [server] allow_no_routes = true if the gateway only serves its own endpoints",
            ));
        }
        Ok(())
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
            None,
        )
    }

    fn from_figment(figment: Figment, text: Option<&str>) -> Result<Config, ConfigError> {
        extract(&figment, text)?.validate()
    }
}

/// A configuration file's text (read once by the caller) as a figment provider that cites the
/// file: figment's own file provider would read the file a second time.
struct FileText<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Provider for FileText<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path)
    }

    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        Toml::string(self.text).data()
    }
}

/// `text`: the file's, so that errors about its keys can say where they are.
fn extract(figment: &Figment, text: Option<&str>) -> Result<RawConfig, ConfigError> {
    figment.extract().map_err(|errors: figment::Error| {
        let shown: Vec<String> = errors
            .into_iter()
            .map(|e| describe(figment, &e, text))
            .collect();
        ConfigError::Load(shown.join("; "))
    })
}

/// One loading error as an operator reads it: the key without figment's profile name, a route
/// by its `name` (or 1-based number), a "did you mean" for a near-miss key, and the source
/// (for the file, with the line and column of the key).
fn describe(figment: &Figment, e: &figment::Error, text: Option<&str>) -> String {
    let mut key = String::new();
    let mut parts = e.path.iter().peekable();
    while let Some(part) = parts.next() {
        let indexed = part == "routes" && key.is_empty();
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(part);
        if indexed && let Some(n) = parts.peek().and_then(|n| n.parse::<usize>().ok()) {
            parts.next();
            let name = figment
                .find_value("routes")
                .ok()
                .and_then(|v| v.into_array())
                .and_then(|routes| routes.into_iter().nth(n))
                .and_then(|r| r.find("name"))
                .and_then(|v| v.into_string());
            match name {
                Some(name) => key.push_str(&format!("[{name}]")),
                None => key.push_str(&format!("[#{}]", n + 1)),
            }
        }
    }
    let mut reason = match &e.kind {
        figment::error::Kind::UnknownField(found, expected) => {
            let mut r = format!("unknown key `{found}`");
            if let Some(near) = expected
                .iter()
                .filter(|k| edit_distance(found, k) <= MAX_SUGGESTION_DISTANCE)
                .min_by_key(|k| edit_distance(found, k))
            {
                r.push_str(&format!(" (did you mean `{near}`?)"));
            }
            r
        }
        kind => kind.to_string(),
    };
    if let Some(source) = e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        let at = match (source, text) {
            (figment::Source::File(_), Some(text)) => source::locate(text, &e.path)
                .map(|(line, column)| format!(":{line}:{column}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        reason.push_str(&format!(" (in {source}{at})"));
    }
    if key.is_empty() {
        reason
    } else {
        format!("{key}: {reason}")
    }
}

/// A validation error `e` with the line and column of its key in the file at `path`, when
/// the value came from the file (not from a default or a `GATEHOUSE_` variable).
fn located(e: ConfigError, figment: &Figment, path: &Path, text: &str) -> ConfigError {
    let ConfigError::Invalid { key, reason } = e else {
        return e;
    };
    let at = key_path(figment, &key).and_then(|parts| {
        let value = value_at(figment, &parts)?;
        let from_file = figment
            .get_metadata(value.tag())
            .is_some_and(|m| matches!(m.source, Some(figment::Source::File(_))));
        from_file.then(|| source::locate(text, &parts)).flatten()
    });
    let reason = match at {
        Some((line, column)) => format!("{reason} (in {}:{line}:{column})", path.display()),
        None => reason,
    };
    ConfigError::Invalid { key, reason }
}

/// A validation error's key (`server.listen`, `routes[api].timeout`, `routes[#2]`,
/// `auth.trusted_issuers[0].issuer`) as figment's path of table keys and array indexes.
fn key_path(figment: &Figment, key: &str) -> Option<Vec<String>> {
    let mut path = Vec::new();
    for segment in key.split('.') {
        let Some((name, rest)) = segment.split_once('[') else {
            path.push(segment.to_owned());
            continue;
        };
        let inner = rest.strip_suffix(']')?;
        path.push(name.to_owned());
        let index = if let Some(n) = inner.strip_prefix('#') {
            n.parse::<usize>().ok()?.checked_sub(1)?
        } else if let Ok(i) = inner.parse::<usize>() {
            i
        } else {
            let Value::Array(_, items) = value_at(figment, &path)? else {
                return None;
            };
            items
                .iter()
                .position(|r| r.find_ref("name").and_then(|n| n.as_str()) == Some(inner))?
        };
        path.push(index.to_string());
    }
    Some(path)
}

/// The value figment holds at `path` (table keys and array indexes), with its tag.
fn value_at(figment: &Figment, path: &[String]) -> Option<Value> {
    let mut value = figment.find_value(path.first()?).ok()?;
    for part in &path[1..] {
        value = match value {
            Value::Dict(_, mut dict) => dict.remove(part)?,
            Value::Array(_, mut items) => {
                let i: usize = part.parse().ok()?;
                if i >= items.len() {
                    return None;
                }
                items.swap_remove(i)
            }
            _ => return None,
        };
    }
    Some(value)
}

/// The largest edit distance between an unknown key and a known one that is suggested.
const MAX_SUGGESTION_DISTANCE: usize = 2;

/// Levenshtein distance (insertions, deletions, substitutions), on characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `path` made relative to `dir` (the config file's directory) when it is relative.
fn rebased(dir: &Path, path: &mut PathBuf) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = dir.join(&*path);
    }
}

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| {
            !ENV_NOT_CONFIG
                .iter()
                .any(|k| key.as_str().eq_ignore_ascii_case(k))
                && !is_service_link(key.as_str())
        })
        .split("__")
}

/// Whether `key` (a variable's name after `GATEHOUSE_`) is one of the service-link variables
/// Kubernetes injects into every pod for a Service named `gatehouse`:
/// `PORT`, `SERVICE_HOST`, `SERVICE_PORT`, `SERVICE_PORT_<NAME>`, `PORT_<n>_<PROTO>` and
/// `PORT_<n>_<PROTO>_{PROTO,PORT,ADDR}` with `<PROTO>` one of `TCP`, `UDP`, `SCTP`. These are
/// ignored, not refused. No configuration key can look like them: a real key is a section and
/// a field joined by `__`, and no section is called `port` or `service_*`
/// (`no_config_key_looks_like_a_service_link` holds that).
fn is_service_link(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    if key == "PORT" || key == "SERVICE_HOST" || key == "SERVICE_PORT" {
        return true;
    }
    if let Some(name) = key.strip_prefix("SERVICE_PORT_") {
        return !name.is_empty() && !name.contains("__");
    }
    let Some(rest) = key.strip_prefix("PORT_") else {
        return false;
    };
    let mut parts = rest.split('_');
    let port_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let proto_ok = parts
        .next()
        .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    let field_ok = match parts.next() {
        None => true,
        Some(f) => matches!(f, "PROTO" | "PORT" | "ADDR"),
    };
    port_ok && proto_ok && field_ok && parts.next().is_none()
}

impl RawConfig {
    /// Makes every relative file and directory path the configuration names (defaults
    /// included) relative to `dir`, the directory of the file it was read from, so that the
    /// process's working directory does not decide where keys, store and certificates are.
    pub fn rebase(&mut self, dir: &Path) {
        let mut each: Vec<&mut PathBuf> = vec![&mut self.auth.keys_dir, &mut self.store.path];
        if let Some(tls) = &mut self.server.tls {
            each.push(&mut tls.cert);
            each.push(&mut tls.key);
        }
        each.extend(self.upstream.ca_file.as_mut());
        each.extend(self.auth.kek_file.as_mut());
        for issuer in &mut self.auth.trusted_issuers {
            each.extend(issuer.jwks_file.as_mut());
        }
        if let Some(pg) = &mut self.store.postgres {
            each.extend(pg.password_file.as_mut());
            each.extend(pg.ca_file.as_mut());
        }
        if let Some(redis) = &mut self.auth.limits.redis {
            each.extend(redis.password_file.as_mut());
            each.extend(redis.ca_file.as_mut());
        }
        if let Some(tracing) = &mut self.tracing {
            each.extend(tracing.ca_file.as_mut());
        }
        for path in each {
            rebased(dir, path);
        }
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let loaded = match Value::serialize(&self) {
            Ok(Value::Dict(_, dict)) => Arc::new(dict),
            _ => return Err(ConfigError::Load("the settings cannot be listed".into())),
        };
        let server = self.server.validate()?;
        let upstream = self.upstream.validate()?;
        let auth = self.auth.validate()?;
        let routes = validate_routes(self.routes, &auth.paths)?;
        if !auth.session.enabled
            && let Some(route) = routes.iter().find(|r| r.login_redirect)
        {
            return Err(invalid(
                format!("routes[{}].login_redirect", route.name),
                "needs browser sessions: set [auth.session] enabled = true",
            ));
        }
        let forward_auth = self.forward_auth.validate()?;
        let store = self.store.validate()?;
        if store.is_shared() && auth.kek_file.is_none() {
            return Err(invalid(
                "auth.kek_file",
                "is required with store.backend = \"postgres\": gateways sharing a database \
                 must share their signing keys too, which live in it sealed under this \
                 key-encryption key (create one with `gatehouse keys new-kek PATH`)",
            ));
        }
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
            forward_auth,
            store,
            log: self.log.validate()?,
            admin,
            loaded,
            tracing: self.tracing.map(RawTracing::validate).transpose()?,
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
            allow_no_routes: self.allow_no_routes,
        })
    }
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
    use crate::proxy::DEFAULT_CONNECT_TIMEOUT;
    use crate::routes::{DEFAULT_ROUTE_BODY_TIMEOUT, DEFAULT_ROUTE_TIMEOUT};

    fn route(extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9000\"\n{extra}\n"
        )
    }

    use super::refusal as err;

    #[test]
    fn gateways_sharing_a_database_without_a_key_encryption_key_are_refused() {
        let pg = "[store]\nbackend = \"postgres\"\n[store.postgres]\nurl = \"postgresql://gh@db/auth\"\n";
        let e = refusal(pg);
        assert!(
            e.contains("auth.kek_file") && e.contains("keys new-kek"),
            "{e}"
        );
        let c =
            Config::from_toml(&format!("{pg}[auth]\nkek_file = \"/etc/gatehouse/kek\"\n")).unwrap();
        assert!(c.store.is_shared());
        let e = refusal("[store]\nbackend = \"postgres\"\n");
        assert!(e.contains("[store.postgres]"), "{e}");
        let e = refusal("[store.postgres]\nurl = \"postgresql://gh@db/auth\"\n");
        assert!(e.contains("store.postgres") && e.contains("backend"), "{e}");
    }

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
                "forward_auth",
                format!("{:?}", example.forward_auth),
                format!("{:?}", defaults.forward_auth),
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
    fn kubernetes_service_links_are_recognised_exactly() {
        for yes in [
            "PORT",
            "SERVICE_HOST",
            "SERVICE_PORT",
            "SERVICE_PORT_HTTP",
            "service_port_admin_api",
            "PORT_8080_TCP",
            "PORT_8080_TCP_PROTO",
            "PORT_8080_TCP_PORT",
            "PORT_8080_TCP_ADDR",
            "PORT_53_UDP_ADDR",
            "PORT_9_SCTP",
        ] {
            assert!(is_service_link(yes), "{yes}");
        }
        for no in [
            "PORTS",
            "SERVICE",
            "SERVICE_PORT_",
            "PORT_8080",
            "PORT_X_TCP",
            "PORT_8080_HTTP",
            "PORT_8080_TCP_HOST",
            "PORT_8080_TCP_ADDR_X",
            "SERVER__LISTEN",
            "SERVICE_PORT_A__B",
        ] {
            assert!(!is_service_link(no), "{no}");
        }
    }

    /// The service-link variables are ignored only because no configuration key has their
    /// shape: no section (a top-level key) is named `port` or `service_...`.
    #[test]
    fn no_config_key_looks_like_a_service_link() {
        let value = figment::Figment::from(Serialized::defaults(RawConfig::default()))
            .extract::<figment::value::Value>()
            .unwrap();
        let dict = value.into_dict().unwrap();
        assert!(dict.contains_key("server"), "{dict:?}");
        for section in dict.keys() {
            assert!(!is_service_link(section), "{section}");
            let s = section.to_ascii_uppercase();
            assert!(
                s != "PORT" && !s.starts_with("PORT_") && !s.starts_with("SERVICE"),
                "{s}"
            );
        }
    }

    #[test]
    fn config_errors_name_routes_suggest_near_misses_and_hide_the_profile() {
        let e = err(&format!(
            "{}[[routes]]\nname = \"api\"\npath_prefx = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n",
            route("")
        ));
        assert!(e.contains("routes[api].path_prefx"), "{e}");
        assert!(e.contains("did you mean `path_prefix`?"), "{e}");
        assert!(!e.contains("default."), "{e}");
        let e = err("[[routes]]\npath_prefx = \"/api\"\n");
        assert!(e.contains("routes[#1].path_prefx"), "{e}");
        let e = err("[server]\nlistne = 3\n");
        assert!(
            e.contains("server.listne") && e.contains("`listen`?"),
            "{e}"
        );
        let e = err("[server]\ncompletely_else = 3\n");
        assert!(!e.contains("did you mean"), "{e}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("path_prefx", "path_prefix"), 1);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(e.contains("listen_port"), "{e}");
        let e = err(&route("bogus = 1"));
        assert!(e.contains("bogus"), "{e}");
    }
}
