//! Cross-origin resource sharing (the Fetch standard's CORS protocol): the `[routes.cors]` and
//! `[auth.cors]` settings, the verdict on a preflight, and the `Access-Control-*` headers of an
//! actual response.
//!
//! A browser asks before a cross-origin request that a form could not send (another method, a
//! JSON body, an `Authorization` header): an `OPTIONS` *preflight* with `Origin` and
//! `Access-Control-Request-Method`. It carries no credentials, so on a route that requires a
//! token it can only be answered before authentication, by the gateway, from the route's policy.
//! On the actual request the browser lets the page read the response only when
//! `Access-Control-Allow-Origin` names the page's origin; the gateway writes that header itself,
//! from the configured list and never from the request alone, after removing whatever the
//! upstream sent under `Access-Control-*`: one policy, the gateway's.
//!
//! CORS decides what a page may *read*; it stops no request from being sent. What stops a
//! cross-site request that changes state is the cross-site check of `crate::gateway::csrf`,
//! which trusts the origins listed here with `allow_credentials = true` (see
//! [`CorsPolicy::credentialed_origins`]).

use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::body::{self, Body};
use crate::config::value::{ConfigError, RawDuration, invalid};
use crate::origin::Origin;
use crate::proxy::headers::is_tchar;

/// Default `allow_methods`: the methods a form can send anyway (the CORS-safelisted methods).
pub const DEFAULT_ALLOW_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];
/// Default `max_age`: how long a browser may reuse a preflight's answer.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// Longest `max_age` accepted (Firefox's own cap; Chromium caps at 2 hours).
pub const MAX_MAX_AGE: Duration = Duration::from_secs(86_400);
/// Default `allow_credentials`: pages on the listed origins may not send cookies.
pub const DEFAULT_ALLOW_CREDENTIALS: bool = false;
/// Default `forward_preflight`: the gateway answers preflights itself.
pub const DEFAULT_FORWARD_PREFLIGHT: bool = false;
/// Most entries in each list of a CORS table.
pub const MAX_LIST_ENTRIES: usize = 64;
/// Most header names a preflight may ask for; more is refused.
pub const MAX_REQUESTED_HEADERS: usize = 64;

/// The methods `allow_methods` may list: those of RFC 9110 §9 that a page's `fetch` can send
/// (CONNECT and TRACE cannot be, and the gateway never proxies them), and PATCH (RFC 5789).
const KNOWN_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// A `[routes.cors]` or `[auth.cors]` table as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default = "default_allow_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default = "default_max_age")]
    pub max_age: RawDuration,
    #[serde(default = "default_allow_credentials")]
    pub allow_credentials: bool,
    #[serde(default = "default_forward_preflight")]
    pub forward_preflight: bool,
}

fn default_allow_methods() -> Vec<String> {
    DEFAULT_ALLOW_METHODS
        .iter()
        .map(|m| m.to_string())
        .collect()
}

fn default_max_age() -> RawDuration {
    DEFAULT_MAX_AGE.into()
}

fn default_allow_credentials() -> bool {
    DEFAULT_ALLOW_CREDENTIALS
}

fn default_forward_preflight() -> bool {
    DEFAULT_FORWARD_PREFLIGHT
}

/// Which origins a policy lets read its responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowOrigins {
    /// `["*"]`: every origin, never with credentials.
    Any,
    /// Exactly these, compared in canonical form.
    List(Vec<Origin>),
}

/// A validated CORS policy: of one route, or of the gateway's own endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsPolicy {
    pub allow_origins: AllowOrigins,
    /// Upper case, as the browser sends the standard methods.
    pub allow_methods: Vec<Method>,
    /// Lower case; a preflight may ask for these and no others.
    pub allow_headers: Vec<HeaderName>,
    /// Response headers a page may read besides the CORS-safelisted ones.
    pub expose_headers: Vec<HeaderName>,
    pub max_age: Duration,
    pub allow_credentials: bool,
    /// Preflights go to the upstream, unauthenticated, and its answer comes back untouched.
    pub forward_preflight: bool,
}

/// Why a preflight was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorsRefusal {
    #[error("the origin is not allowed")]
    Origin,
    #[error("the requested method is not allowed")]
    Method,
    #[error("a requested header is not allowed")]
    Headers,
}

/// What the table is for: a route, or the gateway's own endpoints (which have no upstream to
/// forward a preflight to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Route,
    Endpoints,
}

impl RawCors {
    /// Validates the table found at `key` (e.g. `routes[api].cors`).
    pub fn validate(self, key: &str, owner: Owner) -> Result<CorsPolicy, ConfigError> {
        let allow_origins = self.origins(key)?;
        if allow_origins == AllowOrigins::Any && self.allow_credentials {
            return Err(invalid(
                format!("{key}.allow_origins"),
                "\"*\" cannot be combined with allow_credentials = true: list the exact origins \
                 whose pages may send cookies",
            ));
        }
        let allow_methods = methods(&format!("{key}.allow_methods"), &self.allow_methods)?;
        let allow_headers = header_names(&format!("{key}.allow_headers"), &self.allow_headers)?;
        let expose_headers = header_names(&format!("{key}.expose_headers"), &self.expose_headers)?;
        if let Some(cookie) = expose_headers
            .iter()
            .find(|h| h.as_str() == "set-cookie" || h.as_str() == "set-cookie2")
        {
            return Err(invalid(
                format!("{key}.expose_headers"),
                format!("{cookie} is never exposed to a page by a browser"),
            ));
        }
        let max_age = self.max_age.parse(&format!("{key}.max_age"))?;
        if max_age > MAX_MAX_AGE {
            return Err(invalid(format!("{key}.max_age"), "must be at most 24h"));
        }
        if owner == Owner::Endpoints && self.forward_preflight {
            return Err(invalid(
                format!("{key}.forward_preflight"),
                "the gateway's own endpoints have no upstream to answer preflights",
            ));
        }
        Ok(CorsPolicy {
            allow_origins,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age,
            allow_credentials: self.allow_credentials,
            forward_preflight: self.forward_preflight,
        })
    }

    fn origins(&self, key: &str) -> Result<AllowOrigins, ConfigError> {
        let key = format!("{key}.allow_origins");
        bounded(&key, &self.allow_origins)?;
        if self.allow_origins.is_empty() {
            return Err(invalid(
                key,
                "list at least one origin (scheme://host[:port]); leave the table out for no CORS",
            ));
        }
        if self.allow_origins.iter().any(|o| o == "*") {
            if self.allow_origins.len() > 1 {
                return Err(invalid(key, "\"*\" must be the only entry"));
            }
            return Ok(AllowOrigins::Any);
        }
        let mut list: Vec<Origin> = Vec::with_capacity(self.allow_origins.len());
        for (i, text) in self.allow_origins.iter().enumerate() {
            let origin = Origin::parse(text)
                .map_err(|e| invalid(format!("{key}[{i}]"), format!("{text:?}: {e}")))?;
            if !list.contains(&origin) {
                list.push(origin);
            }
        }
        Ok(AllowOrigins::List(list))
    }
}

fn bounded(key: &str, list: &[String]) -> Result<(), ConfigError> {
    if list.len() > MAX_LIST_ENTRIES {
        return Err(invalid(key, format!("at most {MAX_LIST_ENTRIES} entries")));
    }
    Ok(())
}

fn methods(key: &str, list: &[String]) -> Result<Vec<Method>, ConfigError> {
    bounded(key, list)?;
    if list.is_empty() {
        return Err(invalid(
            key,
            "an empty list allows no preflight; leave it out for GET, HEAD and POST",
        ));
    }
    let mut methods = Vec::with_capacity(list.len());
    for text in list {
        let upper = text.to_ascii_uppercase();
        let method = KNOWN_METHODS
            .iter()
            .find(|m| m.as_str() == upper)
            .ok_or_else(|| {
                invalid(
                    key,
                    format!("{text:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                )
            })?;
        if !methods.contains(method) {
            methods.push(method.clone());
        }
    }
    Ok(methods)
}

fn header_names(key: &str, list: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    bounded(key, list)?;
    let mut names: Vec<HeaderName> = Vec::with_capacity(list.len());
    for text in list {
        if text == "*" {
            return Err(invalid(
                key,
                "\"*\" is not supported: list the header names",
            ));
        }
        let name = (!text.is_empty() && text.len() <= 256 && text.bytes().all(is_tchar))
            .then(|| HeaderName::from_bytes(text.as_bytes()).ok())
            .flatten()
            .ok_or_else(|| invalid(key, format!("{text:?} is not a header name")))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a preflight asks about, when it names exactly one valid one: the route that would
/// serve the actual request is the one whose policy answers.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    let value = single(headers, &ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(value.as_bytes()).ok()
}

/// The request's `Origin`, when it sent exactly one: what an actual response is finished for
/// (two are no origin at all).
pub fn request_origin(headers: &HeaderMap) -> Option<HeaderValue> {
    single(headers, &ORIGIN).cloned()
}

fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

static ANY: HeaderValue = HeaderValue::from_static("*");
static TRUE: HeaderValue = HeaderValue::from_static("true");
static VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl CorsPolicy {
    /// The origins whose pages the operator trusts with the cookie: listed with
    /// `allow_credentials = true`. The cross-site check lets their state-changing requests
    /// through, or a credentialed cross-origin call could never change anything.
    pub fn credentialed_origins(&self) -> &[Origin] {
        match &self.allow_origins {
            AllowOrigins::List(list) if self.allow_credentials => list,
            _ => &[],
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin` (as the request sent it), if the
    /// policy allows it: `*` for any origin, else the origin itself when it is listed. An
    /// origin that is not listed is never reflected.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.allow_origins {
            AllowOrigins::Any => Some(ANY.clone()),
            AllowOrigins::List(list) => {
                let parsed = origin.to_str().ok().and_then(|t| Origin::parse(t).ok())?;
                list.contains(&parsed).then(|| origin.clone())
            }
        }
    }

    /// The verdict on a preflight (see [`is_preflight`]): the headers of the 204 that allows
    /// it, or why it is refused. Requested headers must all be listed; only they are named in
    /// `Access-Control-Allow-Headers`.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<HeaderMap, CorsRefusal> {
        let allow_origin = single(headers, &ORIGIN)
            .and_then(|origin| self.allow_origin(origin))
            .ok_or(CorsRefusal::Origin)?;
        let method = requested_method(headers).ok_or(CorsRefusal::Method)?;
        if !self.allow_methods.contains(&method) {
            return Err(CorsRefusal::Method);
        }
        let requested = self.requested_headers(headers)?;
        let mut answer = HeaderMap::new();
        answer.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if let Some(value) = joined(self.allow_methods.iter().map(Method::as_str)) {
            answer.insert(ACCESS_CONTROL_ALLOW_METHODS, value);
        }
        if let Some(value) = joined(requested.iter().map(|h| h.as_str())) {
            answer.insert(ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        answer.insert(
            ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age.as_secs()),
        );
        if self.allow_credentials {
            answer.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
        }
        answer.insert(VARY, VARY_PREFLIGHT.clone());
        Ok(answer)
    }

    /// The names of `Access-Control-Request-Headers`, each of them allowed, in the configured
    /// spelling and without repeats.
    fn requested_headers(&self, headers: &HeaderMap) -> Result<Vec<&HeaderName>, CorsRefusal> {
        let mut requested: Vec<&HeaderName> = Vec::new();
        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let text = value.to_str().map_err(|_| CorsRefusal::Headers)?;
            for name in text.split(',').map(|n| n.trim_matches([' ', '\t'])) {
                if name.is_empty() {
                    continue;
                }
                let allowed = self
                    .allow_headers
                    .iter()
                    .find(|h| h.as_str().eq_ignore_ascii_case(name))
                    .ok_or(CorsRefusal::Headers)?;
                if !requested.contains(&allowed) {
                    if requested.len() == MAX_REQUESTED_HEADERS {
                        return Err(CorsRefusal::Headers);
                    }
                    requested.push(allowed);
                }
            }
        }
        Ok(requested)
    }

    /// Finishes the response to an actual request that `origin` made (the upstream's, or the
    /// gateway's own refusal): the upstream's `Access-Control-*` headers removed, then, for an
    /// allowed origin, `Access-Control-Allow-Origin`, `-Allow-Credentials` and
    /// `-Expose-Headers`; `Vary: Origin` appended either way (the answer depends on it).
    pub fn finish(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        remove_access_control(response);
        response.append(VARY, VARY_ORIGIN.clone());
        let Some(allow_origin) = origin.and_then(|origin| self.allow_origin(origin)) else {
            return;
        };
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.allow_credentials {
            response.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
        }
        if let Some(value) = joined(self.expose_headers.iter().map(HeaderName::as_str)) {
            response.insert(ACCESS_CONTROL_EXPOSE_HEADERS, value);
        }
    }

    /// The policy in one line, for `routes explain`.
    pub fn describe(&self) -> String {
        let list = |items: Vec<&str>| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(" ")
            }
        };
        let origins = match &self.allow_origins {
            AllowOrigins::Any => "* (any)".to_owned(),
            AllowOrigins::List(l) => list(l.iter().map(Origin::as_str).collect()),
        };
        format!(
            "origins {origins}; methods {}; headers {}; exposed {}; max-age {}s; {}; preflights {}",
            list(self.allow_methods.iter().map(Method::as_str).collect()),
            list(self.allow_headers.iter().map(HeaderName::as_str).collect()),
            list(self.expose_headers.iter().map(HeaderName::as_str).collect()),
            self.max_age.as_secs(),
            if self.allow_credentials {
                "credentials allowed (these origins may change state with the cookie)"
            } else {
                "no credentials"
            },
            if self.forward_preflight {
                "forwarded to the upstream unauthenticated"
            } else {
                "answered by the gateway"
            },
        )
    }
}

/// The 204 that allows a preflight, with the headers [`CorsPolicy::preflight`] decided.
pub fn preflight_response(headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    *response.headers_mut() = headers;
    response
}

/// Removes every `Access-Control-*` header (the names are lower case in a `HeaderMap`).
fn remove_access_control(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// `a, b, c` as a header value; `None` for no items.
fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let text = items.collect::<Vec<_>>().join(", ");
    if text.is_empty() {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests;
