//! The one place where errors become HTTP responses: an exhaustive match, no catch-all arm.
//!
//! Bodies are short JSON. Nothing from the request (tokens, paths, header values) is echoed.

use http::header::{CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::auth::authenticator::CredentialError;
use crate::auth::endpoints::EndpointError;
use crate::auth::grants::GrantError;
use crate::auth::verify::VerifyError;
use crate::body::{Body, with_json};
use crate::cors::CorsRefusal;
use crate::proxy::ProxyError;
use crate::proxy::path::PathError;

/// Why the pipeline refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("request target is not in origin form")]
    TargetForm,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("Host header and :authority disagree")]
    HostMismatch,
    #[error("invalid Host header")]
    BadHost,
    #[error("invalid request path: {0}")]
    BadPath(PathError),
    #[error("the forwarded URI cannot be built")]
    Unforwardable,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("invalid message framing")]
    BadFraming,
    #[error("a body is not allowed with this method")]
    BodyNotAllowed,
    #[error("transfer coding not implemented")]
    UnsupportedTransferCoding,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("no route matches")]
    NoRoute,
    #[error("no access token")]
    NoToken,
    #[error("malformed credentials: {0}")]
    InvalidRequest(&'static str),
    #[error("invalid access token: {0}")]
    InvalidToken(VerifyError),
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
    #[error("insufficient role")]
    InsufficientRole,
    #[error("a cookie-authenticated request that changes state came from another site")]
    CrossSite,
    /// A CORS preflight the route's (or `[auth.cors]`'s) policy does not allow.
    #[error("CORS preflight refused: {0}")]
    Cors(CorsRefusal),
    /// A request to the forward-auth endpoint from a peer outside `[forward_auth]
    /// trusted_peers`; nothing it said was read.
    #[error("forward-auth request from a peer that is not a trusted fronting proxy")]
    UntrustedForwardAuthPeer,
    /// A trusted fronting proxy's description of the original request is missing, repeated or
    /// malformed.
    #[error("forward-auth request: {0}")]
    ForwardAuthHeader(&'static str),
    /// The original request a fronting proxy asked about was refused with this.
    #[error("forward-auth decision: {0}")]
    ForwardAuthDenied(Box<Rejection>),
    /// A browser navigation without a session that nginx asked about: nginx's `auth_request`
    /// passes only 2xx, 401 and 403, so the sign-in redirect travels as a 401 naming the page.
    #[error("forward-auth decision: sign in at {location}")]
    ForwardAuthLogin { location: String },
    #[error("upstream: {0}")]
    Upstream(ProxyError),
    #[error("upstream switched protocols unasked")]
    UnexpectedUpgrade,
    /// A browser's navigation to a `login_redirect` route without a live session: sent to the
    /// sign-in page (`location`, the page with the percent-encoded `return_to`).
    #[error("no session: redirected to sign in")]
    LoginRedirect { location: String },
    /// One of the gateway's own endpoints refused (credential failures become the variants
    /// above, so they answer alike wherever they happen).
    #[error("{0}")]
    Endpoint(EndpointError),
}

impl From<CredentialError> for Rejection {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::Missing => Rejection::NoToken,
            CredentialError::Malformed(what) => Rejection::InvalidRequest(what),
            CredentialError::Invalid(e) => Rejection::InvalidToken(e),
        }
    }
}

impl From<EndpointError> for Rejection {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::Credential(c) => c.into(),
            other => Rejection::Endpoint(other),
        }
    }
}

impl Rejection {
    /// A short label for logs and metrics (bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TargetForm => "target_form",
            Rejection::MissingHost => "missing_host",
            Rejection::DuplicateHost => "duplicate_host",
            Rejection::HostMismatch => "host_mismatch",
            Rejection::BadHost => "bad_host",
            Rejection::BadPath(_) => "bad_path",
            Rejection::Unforwardable => "unforwardable",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::BadFraming => "bad_framing",
            Rejection::BodyNotAllowed => "body_not_allowed",
            Rejection::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Rejection::PayloadTooLarge => "payload_too_large",
            Rejection::NoRoute => "no_route",
            Rejection::NoToken => "no_token",
            Rejection::InvalidRequest(_) => "invalid_request",
            Rejection::InvalidToken(e) => e.reason(),
            Rejection::InsufficientScope(_) => "insufficient_scope",
            Rejection::InsufficientRole => "insufficient_role",
            Rejection::CrossSite => "cross_site",
            Rejection::Cors(_) => "cors_refused",
            Rejection::UntrustedForwardAuthPeer => "forward_auth_peer",
            Rejection::ForwardAuthHeader(_) => "forward_auth_header",
            Rejection::ForwardAuthDenied(inner) => inner.reason(),
            Rejection::ForwardAuthLogin { .. } => "login_redirect",
            Rejection::Upstream(ProxyError::Timeout { .. }) => "upstream_timeout",
            Rejection::Upstream(ProxyError::BodyTooLarge { .. }) => "payload_too_large",
            Rejection::Upstream(ProxyError::BodyTimeout { .. }) => "body_timeout",
            Rejection::Upstream(ProxyError::Connect(_)) => "upstream_connect",
            Rejection::Upstream(_) => "upstream_error",
            Rejection::UnexpectedUpgrade => "unexpected_upgrade",
            Rejection::LoginRedirect { .. } => "login_redirect",
            Rejection::Endpoint(e) => e.code(),
        }
    }
}

// draft-ietf-httpapi-ratelimit-headers field names, as widely deployed.
static RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: http::HeaderName = http::HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");

const REALM: &str = "Bearer realm=\"gatehouse\"";
/// The challenge of a failed client authentication (RFC 6749 §5.2, `client_secret_basic`).
const BASIC_REALM: &str = "Basic realm=\"gatehouse\"";

/// `Vary` of every forward-auth decision, allowing or refusing: the same original request is
/// decided differently for other credentials, and a browser's navigation (`Accept: text/html`)
/// differently from an API call, so a caller's cache must key on them.
pub const DECISION_VARY: HeaderValue = HeaderValue::from_static("Authorization, Cookie, Accept");

/// Where nginx is to send a browser that must sign in (see `gateway::forward_auth`).
pub static X_GATEHOUSE_LOGIN: http::HeaderName = http::HeaderName::from_static("x-gatehouse-login");

/// Renders a rejection.
pub fn respond(rejection: &Rejection) -> Response<Body> {
    match rejection {
        Rejection::TargetForm
        | Rejection::MissingHost
        | Rejection::DuplicateHost
        | Rejection::HostMismatch
        | Rejection::BadHost => plain(StatusCode::BAD_REQUEST, &rejection.to_string()),
        // The body was not read as the client framed it: nothing after it on this connection can
        // be trusted to start a request (RFC 9112 §6.3), so the connection closes. (HTTP/2 has
        // no connection header; hyper leaves it out there.)
        Rejection::BadFraming | Rejection::BodyNotAllowed => {
            closing(plain(StatusCode::BAD_REQUEST, &rejection.to_string()))
        }
        Rejection::BadPath(e) => plain(
            StatusCode::BAD_REQUEST,
            &format!("invalid request path: {e}"),
        ),
        Rejection::Unforwardable => {
            plain(StatusCode::BAD_REQUEST, "the forwarded URI cannot be built")
        }
        Rejection::MethodNotAllowed => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        Rejection::UnsupportedTransferCoding => closing(plain(
            StatusCode::NOT_IMPLEMENTED,
            "only the chunked transfer coding is accepted",
        )),
        Rejection::PayloadTooLarge => {
            plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        Rejection::NoRoute => plain(StatusCode::NOT_FOUND, "no route"),
        // RFC 6750 §3.1: no authentication information, so no error code.
        Rejection::NoToken => bearer(
            StatusCode::UNAUTHORIZED,
            REALM.to_owned(),
            json!({"error": "unauthorized", "error_description": "an access token is required"}),
        ),
        Rejection::InvalidRequest(what) => bearer(
            StatusCode::BAD_REQUEST,
            format!("{REALM}, error=\"invalid_request\", error_description=\"{what}\""),
            json!({"error": "invalid_request", "error_description": what}),
        ),
        // Not the token's fault: the gateway cannot confirm it is not revoked. Retry later.
        Rejection::InvalidToken(VerifyError::Unconfirmed) => {
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocations cannot be confirmed: the store does not answer",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(STORE_RETRY_AFTER));
            response
        }
        Rejection::InvalidToken(e) => bearer(
            StatusCode::UNAUTHORIZED,
            format!(
                "{REALM}, error=\"invalid_token\", error_description=\"{}\"",
                e.description()
            ),
            json!({"error": "invalid_token", "error_description": e.description()}),
        ),
        Rejection::InsufficientScope(scope) => bearer(
            StatusCode::FORBIDDEN,
            format!("{REALM}, error=\"insufficient_scope\", scope=\"{scope}\""),
            json!({"error": "insufficient_scope", "scope": scope}),
        ),
        Rejection::InsufficientRole => bearer(
            StatusCode::FORBIDDEN,
            format!(
                "{REALM}, error=\"insufficient_scope\", error_description=\"a required role is missing\""
            ),
            json!({"error": "insufficient_scope", "error_description": "a required role is missing"}),
        ),
        // Not the token's fault, and no challenge: a bearer token would pass.
        Rejection::CrossSite => with_json(
            StatusCode::FORBIDDEN,
            json!({
                "error": "cross_site_request",
                "error_description": "a request authenticated by a cookie that changes state must come from this site (Origin)",
            }),
        ),
        // No Access-Control-* header at all: the browser then refuses the actual request.
        Rejection::Cors(refusal) => with_json(
            StatusCode::FORBIDDEN,
            json!({"error": "cors_refused", "error_description": refusal.to_string()}),
        ),
        Rejection::UntrustedForwardAuthPeer => no_store(with_json(
            StatusCode::FORBIDDEN,
            json!({
                "error": "untrusted_peer",
                "error_description": "forward-auth decisions are given only to [forward_auth] trusted_peers",
            }),
        )),
        Rejection::ForwardAuthHeader(what) => no_store(with_json(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": what}),
        )),
        Rejection::ForwardAuthDenied(inner) => forward_auth_refusal(inner),
        Rejection::ForwardAuthLogin { location } => {
            let mut response = forward_auth_refusal(&Rejection::NoToken);
            if let Ok(location) = HeaderValue::from_str(location) {
                response.headers_mut().insert(&X_GATEHOUSE_LOGIN, location);
            }
            response
        }
        Rejection::Upstream(e) => upstream(e),
        Rejection::UnexpectedUpgrade => with_json(
            StatusCode::BAD_GATEWAY,
            json!({
                "error": "upstream_error",
                "error_description": "the upstream switched protocols unasked",
            }),
        ),
        // 302, not 303: the browser repeats the GET or HEAD it made, at the sign-in page.
        Rejection::LoginRedirect { location } => match HeaderValue::from_str(location) {
            Ok(location) => {
                let mut response = Response::new(crate::body::empty());
                *response.status_mut() = StatusCode::FOUND;
                let headers = response.headers_mut();
                headers.insert(http::header::LOCATION, location);
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(_) => respond(&Rejection::NoToken),
        },
        Rejection::Endpoint(EndpointError::Credential(c)) => respond(&c.clone().into()),
        Rejection::Endpoint(EndpointError::SignIn { error, page }) => sign_in_failed(error, page),
        Rejection::Endpoint(e) => oauth(e),
    }
}

/// A failed browser sign-in: the form again, with the grant's status (the same for an unknown
/// user and a wrong password) and, for limits, `Retry-After`.
fn sign_in_failed(error: &GrantError, page: &str) -> Response<Body> {
    let mut response = crate::auth::endpoints::page(grant_status(error), page.to_owned());
    if let Some(secs) = grant_retry_after(error) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// A refused forward-auth decision: the refusal the proxy path would answer, but a request no
/// route takes is 403 (to a caller, a 404 must not read as anything but "no"), never cached,
/// and without `Connection: close` (that would be about the original request's framing, not
/// the connection the question came on).
fn forward_auth_refusal(inner: &Rejection) -> Response<Body> {
    let mut response = match inner {
        Rejection::NoRoute => with_json(
            StatusCode::FORBIDDEN,
            json!({"error": "access_denied", "error_description": "no route serves this request"}),
        ),
        other => respond(other),
    };
    let headers = response.headers_mut();
    headers.remove(http::header::CONNECTION);
    headers.insert(http::header::VARY, DECISION_VARY);
    no_store(response)
}

fn no_store(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An upstream failure in the shape of every other error: a stable `error` code and a short
/// `error_description` (the cause, naming no address, goes to the log).
fn upstream(e: &ProxyError) -> Response<Body> {
    let (status, error, description) = match e {
        ProxyError::Timeout { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream did not answer in time",
        ),
        ProxyError::BodyTooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body too large",
        ),
        ProxyError::BodyTimeout { .. } => (
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "request body too slow",
        ),
        ProxyError::ClientBody(_) => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "request body unreadable",
        ),
        ProxyError::Connect(_) => (
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            "the upstream cannot be reached",
        ),
        ProxyError::Upstream(_) => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream request failed",
        ),
        ProxyError::NotUpgraded { .. } => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream refused the protocol upgrade",
        ),
        // Start-up errors; should one reach a request, the upstream is unusable.
        ProxyError::CaFile { .. } | ProxyError::NoCaCertificate { .. } | ProxyError::Tls(_) => (
            StatusCode::BAD_GATEWAY,
            "upstream_misconfigured",
            "the upstream is misconfigured",
        ),
    };
    with_json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// Seconds a client is told to wait when the hashing pool is full.
const BUSY_RETRY_AFTER: u64 = 1;
/// Seconds a client is told to wait when the store did not answer (locked by a writer, busy
/// past its timeout, gone): a passing condition, not the client's fault nor a bug.
const STORE_RETRY_AFTER: u64 = 2;

/// The status of an endpoint's refusal.
fn endpoint_status(e: &EndpointError) -> StatusCode {
    match e {
        EndpointError::Grant(e) => grant_status(e),
        EndpointError::Credential(CredentialError::Missing | CredentialError::Invalid(_)) => {
            StatusCode::UNAUTHORIZED
        }
        EndpointError::Credential(CredentialError::Malformed(_))
        | EndpointError::InvalidRequest(_)
        | EndpointError::UnsupportedGrantType => StatusCode::BAD_REQUEST,
        EndpointError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        EndpointError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        EndpointError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        EndpointError::NotFound => StatusCode::NOT_FOUND,
        EndpointError::SignIn { error, .. } => grant_status(error),
    }
}

/// The status of a failed grant (RFC 6749 §5.2: 400 for the client's mistakes).
fn grant_status(e: &GrantError) -> StatusCode {
    match e {
        GrantError::InvalidRequest(_)
        | GrantError::BadCredentials
        | GrantError::InvalidRefresh(_)
        | GrantError::InvalidScope
        | GrantError::UnauthorizedClient
        | GrantError::InvalidTarget
        | GrantError::WeakPassword(_) => StatusCode::BAD_REQUEST,
        // RFC 6749 §5.2: a failed client authentication is 401 with a challenge for the
        // scheme the client may use (see `oauth`).
        GrantError::InvalidClient => StatusCode::UNAUTHORIZED,
        // Authenticated, but not allowed to call the introspection endpoint (RFC 7662 §2.3
        // leaves the code open; 403 says "who you are is known, and it is not enough").
        GrantError::IntrospectionDenied => StatusCode::FORBIDDEN,
        GrantError::Busy | GrantError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        GrantError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
        GrantError::Server => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Seconds to wait before retrying, for refusals that pass by themselves.
fn retry_after(e: &EndpointError) -> Option<u64> {
    match e {
        EndpointError::Grant(e) | EndpointError::SignIn { error: e, .. } => grant_retry_after(e),
        _ => None,
    }
}

fn grant_retry_after(e: &GrantError) -> Option<u64> {
    match e {
        GrantError::Busy => Some(BUSY_RETRY_AFTER),
        GrantError::StoreUnavailable => Some(STORE_RETRY_AFTER),
        GrantError::Limited(r) => Some(r.retry_after),
        _ => None,
    }
}

/// RFC 6749 §5.2 error responses (and 429/503 with Retry-After for limits and a busy pool).
fn oauth(e: &EndpointError) -> Response<Body> {
    let status = endpoint_status(e);
    let mut response = with_json(
        status,
        json!({"error": e.code(), "error_description": e.description()}),
    );
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = retry_after(e) {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let EndpointError::Grant(GrantError::Limited(refusal)) = e {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(refusal.limit));
        headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from_static("0"));
        headers.insert(
            RATELIMIT_RESET.clone(),
            HeaderValue::from(refusal.retry_after),
        );
    }
    if let EndpointError::Grant(GrantError::InvalidClient) = e {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_REALM));
    } else if status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    }
    response
}

fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn plain(status: StatusCode, message: &str) -> Response<Body> {
    with_json(status, json!({ "error": message }))
}

fn bearer(status: StatusCode, challenge: String, body: serde_json::Value) -> Response<Body> {
    let mut response = with_json(status, body);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify::VerifyError;
    use crate::limits::Refusal;

    fn status(r: Rejection) -> (u16, Option<String>) {
        let response = respond(&r);
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), challenge)
    }

    #[test]
    fn request_shape_rejections_are_400() {
        for r in [
            Rejection::TargetForm,
            Rejection::MissingHost,
            Rejection::DuplicateHost,
            Rejection::HostMismatch,
            Rejection::BadHost,
            Rejection::BadPath(PathError::NotOriginForm),
            Rejection::Unforwardable,
            Rejection::BadFraming,
            Rejection::BodyNotAllowed,
        ] {
            assert_eq!(status(r).0, 400);
        }
    }

    #[test]
    fn method_body_and_route_rejections() {
        assert_eq!(status(Rejection::MethodNotAllowed).0, 405);
        assert_eq!(status(Rejection::PayloadTooLarge).0, 413);
        assert_eq!(status(Rejection::NoRoute).0, 404);
        assert_eq!(status(Rejection::UnsupportedTransferCoding).0, 501);
        for r in [
            Rejection::BadFraming,
            Rejection::BodyNotAllowed,
            Rejection::UnsupportedTransferCoding,
        ] {
            let response = respond(&r);
            assert_eq!(response.headers()[http::header::CONNECTION], "close");
        }
    }

    #[test]
    fn missing_token_is_a_bare_bearer_challenge() {
        assert_eq!(status(Rejection::NoToken), (401, Some(REALM.to_owned())));
    }

    #[test]
    fn invalid_token_names_the_error_without_the_token() {
        let (code, challenge) = status(Rejection::InvalidToken(VerifyError::Expired));
        assert_eq!(code, 401);
        assert_eq!(
            challenge.unwrap(),
            "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"token expired\""
        );
    }

    #[test]
    fn invalid_request_is_400_with_its_error_code() {
        let (code, challenge) = status(Rejection::InvalidRequest("two tokens"));
        assert_eq!(code, 400);
        assert!(challenge.unwrap().contains("error=\"invalid_request\""));
    }

    #[test]
    fn missing_scope_or_role_is_403_insufficient_scope() {
        let (code, challenge) = status(Rejection::InsufficientScope("write".into()));
        assert_eq!(code, 403);
        assert!(challenge.unwrap().contains("scope=\"write\""));
        let (code, challenge) = status(Rejection::InsufficientRole);
        assert_eq!(code, 403);
        assert!(challenge.unwrap().contains("insufficient_scope"));
    }

    #[test]
    fn a_cross_site_cookie_request_is_403_without_a_challenge() {
        assert_eq!(status(Rejection::CrossSite), (403, None));
    }

    #[test]
    fn a_refused_preflight_is_403_json_without_access_control_headers() {
        for refusal in [
            CorsRefusal::Origin,
            CorsRefusal::Method,
            CorsRefusal::Headers,
        ] {
            let response = respond(&Rejection::Cors(refusal));
            assert_eq!(response.status(), 403);
            assert_eq!(
                response.headers()[http::header::CONTENT_TYPE],
                "application/json"
            );
            assert!(
                response
                    .headers()
                    .keys()
                    .all(|k| !k.as_str().starts_with("access-control-")),
                "{response:?}"
            );
            assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        }
        assert_eq!(
            Rejection::Cors(CorsRefusal::Origin).reason(),
            "cors_refused"
        );
    }

    #[test]
    fn a_forward_auth_question_from_an_untrusted_peer_is_403_and_never_cached() {
        let response = respond(&Rejection::UntrustedForwardAuthPeer);
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
    }

    #[test]
    fn a_malformed_forward_auth_description_is_400_naming_the_problem() {
        let response = respond(&Rejection::ForwardAuthHeader(
            "more than one X-Forwarded-Uri",
        ));
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            Rejection::ForwardAuthHeader("x").reason(),
            "forward_auth_header"
        );
    }

    #[test]
    fn a_sign_in_redirect_for_nginx_is_a_401_naming_the_page_with_the_challenge() {
        let rejection = Rejection::ForwardAuthLogin {
            location: "/auth/sign_in?return_to=%2Fapp".into(),
        };
        assert_eq!(rejection.reason(), "login_redirect");
        let response = respond(&rejection);
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()[&X_GATEHOUSE_LOGIN],
            "/auth/sign_in?return_to=%2Fapp"
        );
        assert_eq!(response.headers()[WWW_AUTHENTICATE], REALM);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            response.headers()[http::header::VARY],
            "Authorization, Cookie, Accept"
        );
        // Through Traefik or Caddy the proxy path's own redirect goes to the browser as it is.
        let denied = respond(&Rejection::ForwardAuthDenied(Box::new(
            Rejection::LoginRedirect {
                location: "/auth/sign_in".into(),
            },
        )));
        assert_eq!(denied.status(), 302);
        assert_eq!(denied.headers()[http::header::LOCATION], "/auth/sign_in");
        assert_eq!(denied.headers()[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn a_refused_forward_auth_decision_answers_like_the_proxy_path_but_no_route_is_403() {
        let denied = |r| Rejection::ForwardAuthDenied(Box::new(r));
        assert_eq!(status(denied(Rejection::NoRoute)), (403, None));
        assert_eq!(
            status(denied(Rejection::NoToken)),
            (401, Some(REALM.to_owned()))
        );
        let (code, challenge) = status(denied(Rejection::InsufficientRole));
        assert_eq!(code, 403);
        assert!(challenge.unwrap().contains("insufficient_scope"));
        assert_eq!(status(denied(Rejection::CrossSite)).0, 403);
        assert_eq!(
            status(denied(Rejection::BadPath(PathError::NotOriginForm))).0,
            400
        );
        for r in [
            Rejection::NoRoute,
            Rejection::NoToken,
            Rejection::BodyNotAllowed,
            Rejection::InvalidToken(VerifyError::Unconfirmed),
        ] {
            let reason = r.reason();
            let rejection = denied(r);
            assert_eq!(rejection.reason(), reason, "the inner reason is logged");
            let response = respond(&rejection);
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store", "{reason}");
            assert_eq!(
                response.headers()[http::header::VARY],
                "Authorization, Cookie, Accept"
            );
            assert!(
                !response.headers().contains_key(http::header::CONNECTION),
                "{reason}"
            );
        }
    }

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let d = std::time::Duration::from_secs(1);
        assert_eq!(
            status(Rejection::Upstream(ProxyError::Timeout { after: d })).0,
            504
        );
        assert_eq!(
            status(Rejection::Upstream(ProxyError::BodyTooLarge { max: 1 })).0,
            413
        );
        assert_eq!(
            status(Rejection::Upstream(ProxyError::BodyTimeout { idle: d })).0,
            408
        );
        assert_eq!(
            status(Rejection::Upstream(ProxyError::ClientBody("x".into()))).0,
            400
        );
        let not_upgraded = ProxyError::NotUpgraded {
            status: StatusCode::OK,
        };
        assert_eq!(status(Rejection::Upstream(not_upgraded)).0, 502);
        assert_eq!(status(Rejection::UnexpectedUpgrade).0, 502);
    }

    /// Every upstream failure answers in the JSON shape of every other error, with its stable
    /// code. The match makes a new variant a compile error here until it is given a row.
    #[tokio::test]
    async fn every_upstream_failure_answers_json_with_a_stable_code() {
        use http_body_util::BodyExt as _;
        fn listed(e: &ProxyError) {
            match e {
                ProxyError::Connect(_)
                | ProxyError::Timeout { .. }
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::BodyTimeout { .. }
                | ProxyError::ClientBody(_)
                | ProxyError::Upstream(_)
                | ProxyError::NotUpgraded { .. }
                | ProxyError::CaFile { .. }
                | ProxyError::NoCaCertificate { .. }
                | ProxyError::Tls(_) => {}
            }
        }
        let d = std::time::Duration::from_secs(1);
        let refused = || crate::proxy::PoolError::Connect {
            origin: "http://127.0.0.1:9".into(),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        let not_absolute = || crate::proxy::PoolError::NotAbsolute(http::Uri::from_static("/"));
        let table: Vec<(Rejection, u16, &str)> = vec![
            (
                Rejection::Upstream(ProxyError::Connect(refused())),
                502,
                "upstream_unreachable",
            ),
            (
                Rejection::Upstream(ProxyError::Timeout { after: d }),
                504,
                "upstream_timeout",
            ),
            (
                Rejection::Upstream(ProxyError::BodyTooLarge { max: 1 }),
                413,
                "payload_too_large",
            ),
            (
                Rejection::Upstream(ProxyError::BodyTimeout { idle: d }),
                408,
                "request_timeout",
            ),
            (
                Rejection::Upstream(ProxyError::ClientBody("x".into())),
                400,
                "invalid_request",
            ),
            (
                Rejection::Upstream(ProxyError::Upstream(not_absolute())),
                502,
                "upstream_error",
            ),
            (
                Rejection::Upstream(ProxyError::NotUpgraded {
                    status: StatusCode::OK,
                }),
                502,
                "upstream_error",
            ),
            (
                Rejection::Upstream(ProxyError::CaFile {
                    path: "/ca.pem".into(),
                    source: rustls_pki_types::pem::Error::NoItemsFound,
                }),
                502,
                "upstream_misconfigured",
            ),
            (
                Rejection::Upstream(ProxyError::NoCaCertificate {
                    path: "/ca.pem".into(),
                }),
                502,
                "upstream_misconfigured",
            ),
            (
                Rejection::Upstream(ProxyError::Tls(rustls::Error::General("x".into()))),
                502,
                "upstream_misconfigured",
            ),
            (Rejection::UnexpectedUpgrade, 502, "upstream_error"),
        ];
        for (rejection, status, code) in table {
            if let Rejection::Upstream(e) = &rejection {
                listed(e);
            }
            let label = rejection.to_string();
            let response = respond(&rejection);
            assert_eq!(response.status().as_u16(), status, "{label}");
            assert_eq!(
                response.headers()[http::header::CONTENT_TYPE],
                "application/json",
                "{label}"
            );
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["error"], code, "{label}");
            assert!(
                body["error_description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{label}: {body}"
            );
            assert!(
                !body.to_string().contains("127.0.0.1"),
                "no address: {body}"
            );
        }
    }

    #[test]
    fn a_browser_without_a_session_is_sent_to_sign_in_and_not_challenged() {
        let location = "/auth/sign_in?return_to=%2Fapp%3Fx%3D1".to_owned();
        let response = respond(&Rejection::LoginRedirect {
            location: location.clone(),
        });
        assert_eq!(response.status(), 302);
        assert_eq!(
            response.headers()[http::header::LOCATION],
            location.as_str()
        );
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        // A location that cannot be a header value is never sent: the plain challenge instead.
        let response = respond(&Rejection::LoginRedirect {
            location: "/x\n".to_owned(),
        });
        assert_eq!(response.status(), 401);
    }

    #[test]
    fn a_failed_sign_in_shows_the_form_again_with_the_grants_status() {
        for (error, status) in [
            (GrantError::BadCredentials, 400),
            (GrantError::InvalidRequest("username too long"), 400),
            (
                GrantError::Limited(Refusal {
                    retry_after: 9,
                    limit: 5,
                }),
                429,
            ),
            (GrantError::Busy, 503),
        ] {
            let limited = matches!(error, GrantError::Limited(_));
            let response = respond(&Rejection::Endpoint(EndpointError::SignIn {
                error,
                page: "<p>form</p>".into(),
            }));
            assert_eq!(response.status(), status);
            assert!(
                response.headers()[http::header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html")
            );
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
            assert_eq!(response.headers()["x-frame-options"], "DENY");
            if limited {
                assert_eq!(response.headers()[RETRY_AFTER], "9");
            }
        }
    }

    #[test]
    fn a_failed_client_authentication_is_401_with_a_basic_challenge() {
        let response = respond(&Rejection::Endpoint(EndpointError::Grant(
            GrantError::InvalidClient,
        )));
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Basic realm=\"gatehouse\""
        );
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn a_client_not_registered_for_introspection_is_403_without_a_challenge() {
        let response = respond(&Rejection::Endpoint(EndpointError::Grant(
            GrantError::IntrospectionDenied,
        )));
        assert_eq!(response.status(), 403);
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn oauth_errors_carry_no_store_and_limits_carry_retry_after() {
        let response = respond(&Rejection::Endpoint(EndpointError::Grant(
            GrantError::BadCredentials,
        )));
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        let refusal = Refusal {
            retry_after: 7,
            limit: 5,
        };
        let response = respond(&Rejection::Endpoint(EndpointError::Grant(
            GrantError::Limited(refusal),
        )));
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[RETRY_AFTER], "7");
        assert_eq!(response.headers()["ratelimit-limit"], "5");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        let response = respond(&Rejection::Endpoint(EndpointError::Grant(GrantError::Busy)));
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key(RETRY_AFTER));
        let response = respond(&Rejection::Endpoint(EndpointError::Grant(
            GrantError::StoreUnavailable,
        )));
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
    }

    /// Every endpoint and grant error with the status it must answer. The match makes a new
    /// variant a compile error here until it is given a row.
    #[test]
    fn every_endpoint_and_grant_error_has_its_status() {
        fn listed(e: &EndpointError) {
            match e {
                EndpointError::Grant(
                    GrantError::InvalidRequest(_)
                    | GrantError::BadCredentials
                    | GrantError::InvalidRefresh(_)
                    | GrantError::InvalidScope
                    | GrantError::InvalidClient
                    | GrantError::UnauthorizedClient
                    | GrantError::IntrospectionDenied
                    | GrantError::InvalidTarget
                    | GrantError::WeakPassword(_)
                    | GrantError::Busy
                    | GrantError::StoreUnavailable
                    | GrantError::Limited(_)
                    | GrantError::Server,
                )
                | EndpointError::Credential(
                    CredentialError::Missing
                    | CredentialError::Malformed(_)
                    | CredentialError::Invalid(_),
                )
                | EndpointError::InvalidRequest(_)
                | EndpointError::UnsupportedGrantType
                | EndpointError::UnsupportedMediaType
                | EndpointError::TooLarge
                | EndpointError::MethodNotAllowed
                | EndpointError::NotFound
                | EndpointError::SignIn { .. } => {}
            }
        }
        let refusal = Refusal {
            retry_after: 1,
            limit: 1,
        };
        let table: Vec<(EndpointError, u16)> = vec![
            (GrantError::InvalidRequest("x").into(), 400),
            (GrantError::BadCredentials.into(), 400),
            (
                GrantError::InvalidRefresh(crate::auth::grants::RefreshRefusal::Reused).into(),
                400,
            ),
            (GrantError::InvalidScope.into(), 400),
            (GrantError::InvalidClient.into(), 401),
            (GrantError::UnauthorizedClient.into(), 400),
            (GrantError::IntrospectionDenied.into(), 403),
            (GrantError::InvalidTarget.into(), 400),
            (GrantError::WeakPassword("x").into(), 400),
            (GrantError::Busy.into(), 503),
            (GrantError::StoreUnavailable.into(), 503),
            (GrantError::Limited(refusal).into(), 429),
            (GrantError::Server.into(), 500),
            (CredentialError::Missing.into(), 401),
            (CredentialError::Malformed("x").into(), 400),
            (CredentialError::Invalid(VerifyError::Expired).into(), 401),
            (EndpointError::InvalidRequest("x"), 400),
            (EndpointError::UnsupportedGrantType, 400),
            (EndpointError::UnsupportedMediaType, 415),
            (EndpointError::TooLarge, 413),
            (EndpointError::MethodNotAllowed, 405),
            (EndpointError::NotFound, 404),
            (
                EndpointError::SignIn {
                    error: GrantError::BadCredentials,
                    page: String::new(),
                },
                400,
            ),
        ];
        assert_eq!(table.len(), 23, "one row per variant");
        for (error, expected) in table {
            listed(&error);
            let label = error.to_string();
            // The same status whether the table is asked directly or the rejection is rendered
            // (credential failures render as the pipeline's own bearer challenges).
            assert_eq!(endpoint_status(&error).as_u16(), expected, "{label}");
            let rejection = Rejection::from(error);
            assert_eq!(respond(&rejection).status().as_u16(), expected, "{label}");
        }
    }
}
