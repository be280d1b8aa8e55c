//! The forward-auth decision endpoint, `GET`/`HEAD {auth.prefix}/verify`, for a proxy that stays
//! in front of the services (nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`,
//! Envoy `ext_authz` in HTTP mode): it asks about a request it holds, and gatehouse answers
//! whether to let it through and with which identity.
//!
//! - **Who may ask.** Only a peer in `[forward_auth] trusted_peers` (the fronting proxies; not
//!   `[server] trusted_proxies`). With none configured the endpoint is off and answers 404 like
//!   an unknown endpoint; any other peer gets 403 and its headers are never read.
//! - **The original request**, from the trusted peer's headers, each at most once (two copies,
//!   or both spellings of one fact, answer 400): the method from `X-Original-Method` (nginx) or
//!   `X-Forwarded-Method` (Traefik, Caddy), required; the path and query from `X-Original-URI`
//!   or `X-Forwarded-Uri`, required, raw as the client sent it; the host from
//!   `X-Original-Host` or `X-Forwarded-Host`, else the request's own `Host`; the scheme from
//!   `X-Forwarded-Proto` (`http` or `https`), else the scheme the verify request came over. They
//!   are read in [`caller`], before stage 3 of the verify request's own pipeline scrubs them.
//! - **One decision.** A synthetic request head (that method, that origin-form URI, that
//!   `Host`, and the verify request's other headers as its stages 1-3 left them: the client's
//!   `Authorization`, `Cookie`, `Origin`, ..., never a client's identity headers) goes through
//!   [`Router::decide`], the same stages 1-7 as the proxy path: target checks and path
//!   normalisation (`/public/../admin` is decided as `/admin`), framing, route match,
//!   authentication with the cross-site check, authorisation.
//! - **The answer.** Allowed: 200, empty body, exactly the identity headers the proxy path would
//!   inject ([`inject_identity`]), `Cache-Control: private, max-age=N` with N the smaller of
//!   `[forward_auth] max_age` and the seconds the token still lives. A URI the gateway's own
//!   endpoints serve (login, JWKS, ...) is allowed with no identity, as they are public; one
//!   under the prefix that names no endpoint is refused like a URI no route takes. Refused: the
//!   proxy path's answer (401 with `WWW-Authenticate`, 403 for scope and role, 400 for a
//!   malformed target, 503 when revocations cannot be confirmed), except that a URI no route
//!   takes is 403, never 404 (a caller must not read "not found" as anything but "no"), with
//!   `Cache-Control: no-store`. Every decision carries `Vary: Authorization, Cookie, Accept`; a
//!   browser navigation without a session on a `login_redirect` route is sent to sign in (see
//!   [`refusal`]).
//!
//! What the fronting proxy must do itself (README, "Forward-auth"): remove every identity header
//! a client sent before its upstream sees the request, whatever gatehouse answered, and the
//! `Authorization` header unless the route forwards the token.

pub mod settings;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{CACHE_CONTROL, HOST, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};

use crate::auth::authenticator::Authenticator;
use crate::auth::claims::Identity;
use crate::auth::endpoints::{Endpoint, EndpointError};
use crate::body::Body;
use crate::config::Config;
use crate::error::{DECISION_VARY, Rejection};
use crate::proxy::headers::is_trusted;

use super::decide::{Authentication, Choice, Router, Scheme, Trail};
use super::forward::inject_identity;
use settings::ForwardAuthConfig;

static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-original-host");
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Every header that describes the original request, removed from the synthetic one.
static DESCRIBING: [&HeaderName; 7] = [
    &X_ORIGINAL_METHOD,
    &X_ORIGINAL_URI,
    &X_ORIGINAL_HOST,
    &X_FORWARDED_METHOD,
    &X_FORWARDED_URI,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PROTO,
];

/// The original request as a trusted fronting proxy described it.
#[derive(Debug)]
pub struct Original {
    method: Method,
    /// Path and query, as the client sent them (normalised by stage 1 of the decision).
    uri: Uri,
    /// `None`: the verify request's own `Host` is the original's (Caddy keeps it).
    host: Option<HeaderValue>,
    /// `None`: the scheme the verify request arrived over.
    scheme: Option<Scheme>,
    /// Described in nginx's spelling (`X-Original-URI`): a caller that understands only 2xx,
    /// 401 and 403, so a browser's login redirect must reach it as a 401 (see [`refusal`]).
    nginx: bool,
}

/// Who sent a request, as far as the forward-auth endpoint cares; known before the request's
/// own stages run, since stage 3 removes the headers a trusted peer describes the original with.
#[derive(Debug)]
pub enum Caller {
    /// No trusted peers are configured: the endpoint is off.
    Off,
    /// A peer outside `trusted_peers`: nothing it sent was read.
    Untrusted,
    /// A trusted fronting proxy, with its description of the original request or what is
    /// wrong with it. Boxed: a `Caller` is held across the request's own stages, in the future
    /// of every request, and only a trusted peer's needs the room.
    Trusted(Box<Result<Original, Rejection>>),
}

/// Reads what `peer` says about the original request, if it is a trusted fronting proxy.
/// Called for every request before its stages run (it cannot know yet whether the request is
/// for `/verify`), so it reads nothing unless the endpoint is on and the peer trusted.
pub fn caller(settings: &ForwardAuthConfig, peer: IpAddr, headers: &HeaderMap) -> Caller {
    if !settings.enabled() {
        return Caller::Off;
    }
    if !is_trusted(peer.to_canonical(), &settings.trusted_peers) {
        return Caller::Untrusted;
    }
    Caller::Trusted(Box::new(original(headers)))
}

/// The original request from the headers of a trusted peer (see the module text).
fn original(headers: &HeaderMap) -> Result<Original, Rejection> {
    use Rejection::ForwardAuthHeader as Bad;
    let method = one_of(
        headers,
        [&X_ORIGINAL_METHOD, &X_FORWARDED_METHOD],
        "X-Original-Method and X-Forwarded-Method both name the original method",
        [
            "more than one X-Original-Method",
            "more than one X-Forwarded-Method",
        ],
    )?
    .ok_or(Bad(
        "the original method is missing (X-Forwarded-Method or X-Original-Method)",
    ))?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Bad("the original method is not an HTTP method"))?;
    let uri = one_of(
        headers,
        [&X_ORIGINAL_URI, &X_FORWARDED_URI],
        "X-Original-URI and X-Forwarded-Uri both name the original URI",
        [
            "more than one X-Original-URI",
            "more than one X-Forwarded-Uri",
        ],
    )?
    .ok_or(Bad(
        "the original URI is missing (X-Forwarded-Uri or X-Original-URI)",
    ))?;
    let uri = Uri::try_from(uri.as_bytes()).map_err(|_| Bad("the original URI is not a URI"))?;
    let host = one_of(
        headers,
        [&X_ORIGINAL_HOST, &X_FORWARDED_HOST],
        "X-Original-Host and X-Forwarded-Host both name the original host",
        [
            "more than one X-Original-Host",
            "more than one X-Forwarded-Host",
        ],
    )?
    .cloned();
    let scheme = match single(
        headers,
        &X_FORWARDED_PROTO,
        "more than one X-Forwarded-Proto",
    )? {
        None => None,
        Some(proto) if proto.as_bytes().eq_ignore_ascii_case(b"https") => Some(Scheme::Https),
        Some(proto) if proto.as_bytes().eq_ignore_ascii_case(b"http") => Some(Scheme::Http),
        Some(_) => return Err(Bad("X-Forwarded-Proto must be http or https")),
    };
    Ok(Original {
        method,
        uri,
        host,
        scheme,
        // Both spellings at once were refused above, so this names the one used.
        nginx: headers.contains_key(&X_ORIGINAL_URI),
    })
}

/// The one value of whichever of the two spellings of a fact is present.
fn one_of<'h>(
    headers: &'h HeaderMap,
    names: [&HeaderName; 2],
    both: &'static str,
    twice: [&'static str; 2],
) -> Result<Option<&'h HeaderValue>, Rejection> {
    let first = single(headers, names[0], twice[0])?;
    let second = single(headers, names[1], twice[1])?;
    match (first, second) {
        (Some(_), Some(_)) => Err(Rejection::ForwardAuthHeader(both)),
        (value, None) | (None, value) => Ok(value),
    }
}

fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    twice: &'static str,
) -> Result<Option<&'h HeaderValue>, Rejection> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        (Some(_), Some(_)) | (None, Some(_)) => Err(Rejection::ForwardAuthHeader(twice)),
    }
}

/// Answers a request that stages 1-5 sent to [`Endpoint::Verify`]: `verify` is that request
/// as its stages 1-3 left it, `scheme` the scheme it arrived over. Returns the answer and the
/// identity it was decided for (for the access log), refused or not.
pub async fn answer<B>(
    router: &Router,
    authenticator: &Authenticator,
    config: &Config,
    caller: Caller,
    verify: &Request<B>,
    scheme: Scheme,
) -> (Result<Response<Body>, Rejection>, Option<Arc<Identity>>) {
    let original = match caller {
        Caller::Off => return (Err(EndpointError::NotFound.into()), None),
        Caller::Untrusted => return (Err(Rejection::UntrustedForwardAuthPeer), None),
        Caller::Trusted(original) => original,
    };
    if !matches!(*verify.method(), Method::GET | Method::HEAD) {
        return (Err(EndpointError::MethodNotAllowed.into()), None);
    }
    let original = match *original {
        Ok(original) => original,
        Err(rejection) => return (Err(rejection), None),
    };
    let scheme = original.scheme.unwrap_or(scheme);
    let nginx = original.nginx;
    let mut synthetic = synthetic_request(original, verify.headers());
    let mut trail = Trail::default();
    let decided = router
        .decide(
            &mut synthetic,
            Authentication::Verify(authenticator, scheme),
            &mut trail,
        )
        .await;
    let decision = match decided {
        Ok(decision) => decision,
        Err(rejection) => return (Err(refusal(rejection, nginx)), trail.identity),
    };
    let response = match decision.choice {
        // Under the prefix but no endpoint: the proxy path's 404, so "no" here.
        Choice::Endpoint(Endpoint::Unknown) => Err(refusal(Rejection::NoRoute, nginx)),
        Choice::Endpoint(_) => Ok(allowed(None, config)),
        Choice::Route(_) => Ok(allowed(decision.identity.as_deref(), config)),
    };
    (response, decision.identity)
}

/// The head the fronting proxy holds, rebuilt: its method, URI and host, the verify request's
/// other headers (credentials, `Origin`, `Accept`, ...) minus those that described it.
fn synthetic_request(original: Original, verify: &HeaderMap) -> Request<()> {
    let mut headers = verify.clone();
    for name in DESCRIBING {
        headers.remove(name);
    }
    if let Some(host) = original.host {
        headers.insert(HOST, host);
    }
    let mut request = Request::new(());
    *request.method_mut() = original.method;
    *request.uri_mut() = original.uri;
    *request.headers_mut() = headers;
    request
}

/// A 200 carrying the identity headers the proxy path would inject, cacheable by the caller for
/// at most `max_age` and never past the token's expiry.
fn allowed(identity: Option<&Identity>, config: &Config) -> Response<Body> {
    let mut response = Response::new(crate::body::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let mut max_age = config.forward_auth.max_age.as_secs();
    if let Some(identity) = identity {
        inject_identity(headers, identity, &config.auth.identity_headers);
        let lives = identity.exp.saturating_sub(crate::clock::unix_now()).max(0);
        max_age = max_age.min(u64::try_from(lives).unwrap_or(0));
    }
    if let Ok(value) = HeaderValue::from_str(&format!("private, max-age={max_age}")) {
        headers.insert(CACHE_CONTROL, value);
    }
    headers.insert(VARY, DECISION_VARY);
    response
}

/// What the fronting proxy is answered when the decision refused the original request: the
/// refusal as the proxy path renders it, except that no route is 403 (see `crate::error`).
///
/// A browser's navigation refused for want of a session on a `login_redirect` route (the
/// decision's [`Rejection::LoginRedirect`]; only a GET or HEAD accepting `text/html` is one, so
/// API calls keep the 401 with `WWW-Authenticate` and a proxy never loops a script through
/// redirects) is answered in the form the caller can carry out:
/// - Traefik, Caddy and Envoy (the `X-Forwarded-*` callers) hand a refusal to the client as it
///   is: the `302` with `Location` goes to the browser.
/// - nginx `auth_request` understands only 2xx, 401 and 403 (anything else becomes a 500): it
///   gets a 401 carrying the sign-in URL in `X-Gatehouse-Login`, which the README's snippet
///   captures with `auth_request_set` and redirects to from its `error_page 401` location.
fn refusal(rejection: Rejection, nginx: bool) -> Rejection {
    match rejection {
        Rejection::LoginRedirect { location } if nginx => Rejection::ForwardAuthLogin { location },
        other => Rejection::ForwardAuthDenied(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn refused(pairs: &[(&'static str, &'static str)]) -> &'static str {
        match original(&headers(pairs)) {
            Err(Rejection::ForwardAuthHeader(what)) => what,
            other => panic!("accepted or refused otherwise: {other:?}"),
        }
    }

    #[test]
    fn either_spelling_describes_the_original_and_host_and_scheme_may_be_left_out() {
        let nginx = original(&headers(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/api/items?page=2"),
            ("x-original-host", "api.example.com"),
        ]))
        .unwrap();
        assert_eq!(nginx.method, Method::POST);
        assert_eq!(nginx.uri, "/api/items?page=2");
        assert_eq!(nginx.host.unwrap(), "api.example.com");
        assert_eq!(nginx.scheme, None);
        let traefik = original(&headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/"),
            ("x-forwarded-proto", "HTTPS"),
        ]))
        .unwrap();
        assert_eq!(traefik.host, None);
        assert_eq!(traefik.scheme, Some(Scheme::Https));
    }

    #[test]
    fn a_fact_given_twice_or_in_both_spellings_or_not_at_all_is_refused() {
        let method = ("x-forwarded-method", "GET");
        let uri = ("x-forwarded-uri", "/");
        assert!(refused(&[method, uri, ("x-forwarded-uri", "/admin")]).contains("more than one"));
        assert!(refused(&[method, uri, ("x-original-uri", "/public")]).contains("both"));
        assert!(refused(&[uri, ("x-original-method", "GET"), method]).contains("both"));
        assert!(
            refused(&[
                method,
                uri,
                ("x-original-host", "a.example"),
                ("x-forwarded-host", "b.example")
            ])
            .contains("both")
        );
        assert!(
            refused(&[
                method,
                uri,
                ("x-forwarded-proto", "http"),
                ("x-forwarded-proto", "https")
            ])
            .contains("more than one")
        );
        assert!(refused(&[uri]).contains("method is missing"));
        assert!(refused(&[method]).contains("URI is missing"));
        assert!(refused(&[("x-forwarded-method", "G E T"), uri]).contains("not an HTTP method"));
        assert!(refused(&[method, ("x-forwarded-uri", "/a b")]).contains("not a URI"));
        assert!(refused(&[method, uri, ("x-forwarded-proto", "wss")]).contains("http or https"));
    }

    #[test]
    fn the_synthetic_head_drops_what_described_the_original_and_keeps_the_credentials() {
        let verify = headers(&[
            ("host", "gatehouse.internal"),
            ("authorization", "Bearer t"),
            ("x-original-method", "DELETE"),
            ("x-original-uri", "/api/x"),
            ("x-original-host", "api.example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        let synthetic = synthetic_request(original(&verify).unwrap(), &verify);
        assert_eq!(synthetic.method(), Method::DELETE);
        assert_eq!(synthetic.uri(), "/api/x");
        assert_eq!(synthetic.headers()[HOST], "api.example.com");
        assert_eq!(synthetic.headers().get_all(HOST).iter().count(), 1);
        assert_eq!(synthetic.headers()["authorization"], "Bearer t");
        for name in DESCRIBING {
            assert!(!synthetic.headers().contains_key(name), "{name}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_not_read_and_no_peers_means_off() {
        let c = Config::from_toml("[forward_auth]\ntrusted_peers = [\"10.0.0.0/8\"]\n").unwrap();
        // Garbage that would be a 400 if it were read.
        let forged = headers(&[("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/b")]);
        let peer: IpAddr = [192, 0, 2, 1].into();
        assert!(matches!(
            caller(&c.forward_auth, peer, &forged),
            Caller::Untrusted
        ));
        let proxy: IpAddr = [10, 1, 2, 3].into();
        match caller(&c.forward_auth, proxy, &forged) {
            Caller::Trusted(read) => {
                assert!(matches!(*read, Err(Rejection::ForwardAuthHeader(_))))
            }
            other => panic!("{other:?}"),
        }
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        let mapped = std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped();
        assert!(matches!(
            caller(&c.forward_auth, mapped.into(), &forged),
            Caller::Trusted(_)
        ));
        let off = Config::from_toml("").unwrap();
        assert!(matches!(
            caller(&off.forward_auth, proxy, &forged),
            Caller::Off
        ));
    }
}
