//! The gateway's own endpoints over HTTP: the OAuth2 token endpoint (password and refresh_token
//! grants), login/refresh/logout/revoke/me/register for clients that do not speak OAuth2, and the
//! JWKS. This module parses requests and renders answers; the work is
//! [`crate::auth::grants`]'s and the authenticator's.
//!
//! Each endpoint's path is `[auth.paths]`'s ([`crate::auth::paths`]). `sign_in` and `sign_out`
//! are the browser's: HTML pages ([`crate::auth::signin`]) and a session cookie
//! ([`crate::auth::session`]) instead of JSON and tokens, with the same password grant, limits
//! and lockout as `/login` behind them. They answer 404 unless `[auth.session] enabled`.
//!
//! `introspect` is RFC 7662 token introspection ([`crate::auth::introspection`]); the two
//! discovery documents ([`crate::auth::discovery`]) answer at their well-known paths.
//!
//! One implementation sits behind `/token`, `/login` and `/refresh`. A `/token` request without
//! `grant_type` but with `username` and `password` is the password grant (FastAPI's
//! `OAuth2PasswordRequestForm`); an empty `client_id` names no client (Swagger UI sends one).
//! Every failure is an [`EndpointError`], rendered in `crate::error`. Token responses carry
//! `Cache-Control: no-store`.
//!
//! Limits run before any lookup or hashing, and before parsing wherever the path says what is
//! asked: `/login` and `/register` spend the per-address login budget, `/refresh` the refresh
//! budget. `/token` names its grant in the body, so its body (bounded, read under a deadline) is
//! read first: a `refresh_token` grant spends the refresh budget, anything else (a password
//! grant, an unknown grant, an unreadable body) the login budget.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, PRAGMA, SET_COOKIE,
    USER_AGENT, VARY,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::auth::authenticator::CredentialError;
use crate::auth::claims::Identity;
use crate::auth::discovery;
use crate::auth::grants::{ClientToken, Grant, GrantError, Grants, Issued, TokenRequest};
// Where each endpoint lives is `crate::auth::paths`'s; its users name it from here.
use crate::auth::introspection;
pub use crate::auth::paths::Endpoint;
use crate::auth::session;
use crate::auth::signin::{self, BrowserContext, return_to};
use crate::body::{Body, with_json};

/// Largest token-endpoint body; larger is refused before parsing or hashing.
pub const MAX_FORM_BYTES: usize = 4 * 1024;
/// Time a client has to send the whole token-endpoint body.
const FORM_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an endpoint refused a request: the request itself, its credential, or the grant.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    Grant(#[from] GrantError),
    #[error("{0}")]
    Credential(#[from] CredentialError),
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("request body too large")]
    TooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    /// A browser's sign-in failed: the grant's error, and the sign-in page to show again.
    #[error("sign-in failed: {error}")]
    SignIn { error: GrantError, page: String },
}

impl EndpointError {
    /// The RFC 6749 §5.2 `error` code (or the gateway's own for non-OAuth failures).
    pub fn code(&self) -> &'static str {
        match self {
            EndpointError::Grant(e) => e.code(),
            EndpointError::Credential(CredentialError::Missing) => "unauthorized",
            EndpointError::Credential(CredentialError::Malformed(_)) => "invalid_request",
            EndpointError::Credential(CredentialError::Invalid(_)) => "invalid_token",
            EndpointError::InvalidRequest(_)
            | EndpointError::UnsupportedMediaType
            | EndpointError::TooLarge => "invalid_request",
            EndpointError::UnsupportedGrantType => "unsupported_grant_type",
            EndpointError::MethodNotAllowed => "method_not_allowed",
            EndpointError::NotFound => "not_found",
            EndpointError::SignIn { error, .. } => error.code(),
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            EndpointError::Grant(e) => e.description(),
            EndpointError::Credential(CredentialError::Missing) => "an access token is required",
            EndpointError::Credential(CredentialError::Malformed(d))
            | EndpointError::InvalidRequest(d) => d,
            EndpointError::Credential(CredentialError::Invalid(e)) => e.description(),
            EndpointError::UnsupportedGrantType => {
                "grant_type must be password, refresh_token or client_credentials"
            }
            EndpointError::UnsupportedMediaType => {
                "send application/x-www-form-urlencoded or application/json"
            }
            EndpointError::TooLarge => "request body too large",
            EndpointError::MethodNotAllowed => "method not allowed",
            EndpointError::NotFound => "no such endpoint",
            EndpointError::SignIn { error, .. } => error.description(),
        }
    }
}

/// Answers one of the gateway's endpoints. Limits run first, before any lookup (see the module
/// text for `/token`).
pub async fn serve(
    grants: &Grants,
    endpoint: Endpoint,
    req: Request<Incoming>,
    client: IpAddr,
) -> Result<Response<Body>, EndpointError> {
    let allowed: &[Method] = match endpoint {
        // The gateway answers /verify in the pipeline; reaching here means nobody should.
        Endpoint::Unknown | Endpoint::Verify => return Err(EndpointError::NotFound),
        Endpoint::Me
        | Endpoint::Jwks
        | Endpoint::AuthorizationServerMetadata
        | Endpoint::OpenIdConfiguration => &[Method::GET, Method::HEAD],
        Endpoint::SignIn | Endpoint::SignOut => &[Method::GET, Method::HEAD, Method::POST],
        _ => &[Method::POST],
    };
    if !allowed.contains(req.method()) {
        return Err(EndpointError::MethodNotAllowed);
    }
    match endpoint {
        Endpoint::Login | Endpoint::Register => grants.admit_client(client).await?,
        Endpoint::Refresh => grants.admit_refresh_client(client).await?,
        _ => {}
    }
    match endpoint {
        Endpoint::Unknown | Endpoint::Verify => Err(EndpointError::NotFound),
        Endpoint::SignIn => sign_in(grants, req, client).await,
        Endpoint::SignOut => sign_out(grants, req, client).await,
        Endpoint::Jwks => Ok(jwks_response(grants.authenticator().keys().ring.jwks())),
        Endpoint::AuthorizationServerMetadata => {
            metadata(grants, &req, discovery::Document::AuthorizationServer)
        }
        Endpoint::OpenIdConfiguration => {
            metadata(grants, &req, discovery::Document::OpenIdConfiguration)
        }
        Endpoint::Introspect => {
            let authorization = req.headers().get(AUTHORIZATION).cloned();
            let form = read_form(req).await?;
            let answer = introspection::introspect(
                grants,
                &client_authentication(&form, authorization.as_ref()),
                form.get("token"),
                client,
            )
            .await?;
            Ok(no_store(with_json(StatusCode::OK, answer)))
        }
        Endpoint::Me => {
            let identity = grants
                .authenticator()
                .identify(req.headers(), req.uri().query())
                .await?
                .ok_or(CredentialError::Missing)?;
            Ok(with_json(StatusCode::OK, me_json(&identity)))
        }
        Endpoint::Token => {
            let agent = req.headers().get(USER_AGENT).cloned();
            let authorization = req.headers().get(AUTHORIZATION).cloned();
            let form = read_form(req).await;
            match &form {
                Ok(form) if form.get("grant_type") == Some("refresh_token") => {
                    grants.admit_refresh_client(client).await?;
                }
                _ => grants.admit_client(client).await?,
            }
            let form = form?;
            let grant = match form.get("grant_type").filter(|g| !g.is_empty()) {
                Some("password") => Grant::Password,
                Some("refresh_token") => Grant::Refresh,
                Some("client_credentials") => {
                    return client_credentials(grants, &form, authorization.as_ref(), client).await;
                }
                Some(_) => return Err(EndpointError::UnsupportedGrantType),
                // FastAPI's `OAuth2PasswordRequestForm` makes grant_type optional: a username
                // and a password say which grant is meant. Nothing else is guessed.
                None if form.get("username").is_some() && form.get("password").is_some() => {
                    Grant::Password
                }
                None => return Err(EndpointError::InvalidRequest("grant_type is required")),
            };
            token_from(grants, grant, &form, client, agent, authorization.as_ref()).await
        }
        Endpoint::Login => token(grants, Grant::Password, req, client).await,
        Endpoint::Refresh => token(grants, Grant::Refresh, req, client).await,
        Endpoint::Logout => {
            let identity = grants
                .authenticator()
                .identify(req.headers(), req.uri().query())
                .await?;
            let has_body = req
                .headers()
                .get(CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
                || req.headers().contains_key(http::header::TRANSFER_ENCODING);
            let form = if has_body {
                read_form(req).await?
            } else {
                Form::default()
            };
            let ended = grants
                .logout(identity.as_deref(), form.get("refresh_token"), client)
                .await?;
            // What was ended, so a client can tell "logged out" from "nothing to end".
            Ok(no_store(with_json(
                StatusCode::OK,
                json!({
                    "revoked": ended.access_token || ended.session,
                    "access_token": ended.access_token,
                    "session": ended.session,
                }),
            )))
        }
        Endpoint::Revoke => {
            let form = read_form(req).await?;
            grants
                .revoke(form.get("token"), form.get("token_type_hint"), client)
                .await?;
            Ok(no_store(with_json(StatusCode::OK, json!({}))))
        }
        Endpoint::Register => {
            if !grants.config().registration {
                return Err(EndpointError::NotFound);
            }
            let form = read_form(req).await?;
            grants
                .register(form.get("username"), form.get("password"))
                .await?;
            // 202 with one body for a free and a taken name alike (see `Grants::register`).
            Ok(with_json(
                StatusCode::ACCEPTED,
                json!({"status": "accepted"}),
            ))
        }
    }
}

/// `GET` the sign-in path: the form; `POST`: the password grant for a browser session, then a
/// 303 to where the browser was going with the session cookie set, or the form again with one
/// generic message.
async fn sign_in(
    grants: &Grants,
    req: Request<Incoming>,
    client: IpAddr,
) -> Result<Response<Body>, EndpointError> {
    let Some(settings) = grants.authenticator().sessions().cloned() else {
        return Err(EndpointError::NotFound);
    };
    let context = req
        .extensions()
        .get::<BrowserContext>()
        .cloned()
        .unwrap_or_default();
    let action = grants.config().paths.path(Endpoint::SignIn);
    let checked = |raw: Option<&str>| {
        return_to::checked(raw.unwrap_or("/"), &context.host, &context.route_hosts).to_owned()
    };
    if req.method() != Method::POST {
        let asked: Vec<(String, String)> = req
            .uri()
            .query()
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        let asked = asked
            .iter()
            .find(|(k, _)| k == "return_to")
            .map(|(_, v)| v.as_str());
        return Ok(page(
            StatusCode::OK,
            signin::sign_in_page(action, &checked(asked), None),
        ));
    }
    let failed = |error: GrantError, return_to: &str| {
        let message = match &error {
            GrantError::Limited(_) => signin::LIMITED,
            GrantError::Busy | GrantError::StoreUnavailable | GrantError::Server => {
                signin::UNAVAILABLE
            }
            _ => signin::BAD_CREDENTIALS,
        };
        EndpointError::SignIn {
            page: signin::sign_in_page(action, return_to, Some(message)),
            error,
        }
    };
    if let Err(error) = grants.admit_client(client).await {
        return Err(failed(error, "/"));
    }
    let agent = req.headers().get(USER_AGENT).cloned();
    let name = settings.cookie_for(context.secure);
    let previous = session::cookie_value(req.headers(), name).map(str::to_owned);
    let form = read_form(req).await?;
    let return_to = checked(form.get("return_to"));
    let request = TokenRequest {
        username: Some(form.get("username").unwrap_or("")),
        password: Some(form.get("password").unwrap_or("")),
        user_agent: agent.as_ref().map(HeaderValue::as_bytes),
        client_id: Some(session::SESSION_CLIENT_ID),
        browser: true,
        ..TokenRequest::default()
    };
    let issued = match grants.token(Grant::Password, request, client).await {
        Ok(issued) => issued,
        Err(error) => return Err(failed(error, &return_to)),
    };
    // A sign-in never continues a session the browser arrived with (fixation): the new one
    // replaces it, and the old one ends.
    if let Some(previous) = previous
        && let Err(e) = grants.sign_out(&previous, client).await
    {
        tracing::warn!(error = %e, "ending the session a browser signed in over failed");
    }
    let cookie = session::set_cookie(
        name,
        &issued.refresh_token,
        context.secure,
        settings.lifetime.as_secs(),
    )
    .ok_or(GrantError::Server)?;
    let mut response = see_other(&return_to)?;
    response.headers_mut().insert(SET_COOKIE, cookie);
    Ok(response)
}

/// `GET` the sign-out path: a page with one button; `POST` (cross-site checked in the pipeline):
/// ends the session, clears the cookie and sends the browser to the sign-in page.
async fn sign_out(
    grants: &Grants,
    req: Request<Incoming>,
    client: IpAddr,
) -> Result<Response<Body>, EndpointError> {
    let Some(settings) = grants.authenticator().sessions().cloned() else {
        return Err(EndpointError::NotFound);
    };
    let paths = &grants.config().paths;
    if req.method() != Method::POST {
        let action = paths.path(Endpoint::SignOut);
        return Ok(page(StatusCode::OK, signin::sign_out_page(action)));
    }
    let secure = req
        .extensions()
        .get::<BrowserContext>()
        .is_some_and(|c| c.secure);
    let name = settings.cookie_for(secure);
    if let Some(value) = session::cookie_value(req.headers(), name) {
        grants.sign_out(value, client).await?;
    }
    let mut response = see_other(paths.path(Endpoint::SignIn))?;
    let cleared = session::clear_cookie(name, secure).ok_or(GrantError::Server)?;
    response.headers_mut().insert(SET_COOKIE, cleared);
    Ok(response)
}

/// An HTML page with the headers every page carries.
pub fn page(status: StatusCode, html: String) -> Response<Body> {
    let mut response = Response::new(crate::body::full(html));
    *response.status_mut() = status;
    signin::page_headers(response.headers_mut());
    response
}

/// A 303 to `location` (checked by the caller), never cached.
fn see_other(location: &str) -> Result<Response<Body>, EndpointError> {
    let location = HeaderValue::from_str(location).map_err(|_| GrantError::Server)?;
    let mut response = Response::new(crate::body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(LOCATION, location);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `/login` and `/refresh`, which name their grant by path.
async fn token(
    grants: &Grants,
    grant: Grant,
    req: Request<Incoming>,
    client: IpAddr,
) -> Result<Response<Body>, EndpointError> {
    let agent = req.headers().get(USER_AGENT).cloned();
    let authorization = req.headers().get(AUTHORIZATION).cloned();
    let form = read_form(req).await?;
    token_from(grants, grant, &form, client, agent, authorization.as_ref()).await
}

async fn token_from(
    grants: &Grants,
    grant: Grant,
    form: &Form,
    client: IpAddr,
    agent: Option<HeaderValue>,
    authorization: Option<&HeaderValue>,
) -> Result<Response<Body>, EndpointError> {
    let request = TokenRequest {
        // Swagger UI sends an empty `client_id=`: no client named, not a client named "".
        client_id: form.get("client_id").filter(|c| !c.is_empty()),
        // Likewise an empty `scope=` (FastAPI's form defaults it to ""): the default scopes,
        // as with no scope at all (RFC 6749 §3.3), not a token without any.
        scope: form.get("scope").filter(|s| !s.is_empty()),
        username: form.get("username"),
        password: form.get("password"),
        refresh_token: form.get("refresh_token"),
        client_secret: form.get("client_secret"),
        basic: basic_of(authorization),
        client_assertion_type: form.get("client_assertion_type"),
        client_assertion: form.get("client_assertion"),
        resource: None,
        audience: None,
        user_agent: agent.as_ref().map(HeaderValue::as_bytes),
        browser: false,
    };
    let issued = grants.token(grant, request, client).await?;
    Ok(no_store(with_json(StatusCode::OK, tokens_json(issued))))
}

/// The credentials of an `Authorization: Basic` header (client authentication); another scheme
/// is not client authentication and is left alone.
fn basic_of(authorization: Option<&HeaderValue>) -> Option<&[u8]> {
    authorization.and_then(|v| crate::auth::clients::basic_credentials(v.as_bytes()))
}

/// `grant_type=client_credentials` (RFC 6749 §4.4): a token for the authenticated client, with
/// no refresh token.
async fn client_credentials(
    grants: &Grants,
    form: &Form,
    authorization: Option<&HeaderValue>,
    client: IpAddr,
) -> Result<Response<Body>, EndpointError> {
    let request = TokenRequest {
        scope: form.get("scope"),
        resource: form.get("resource"),
        audience: form.get("audience"),
        ..client_authentication(form, authorization)
    };
    let token = grants.client_credentials(request, client).await?;
    Ok(no_store(with_json(
        StatusCode::OK,
        client_token_json(token),
    )))
}

/// The client-authentication parameters of a request to the token or introspection endpoint,
/// read the same way for both ([`Grants::authenticated_client`] checks them).
fn client_authentication<'f>(
    form: &'f Form,
    authorization: Option<&'f HeaderValue>,
) -> TokenRequest<'f> {
    TokenRequest {
        client_id: form.get("client_id"),
        client_secret: form.get("client_secret"),
        basic: basic_of(authorization),
        client_assertion_type: form.get("client_assertion_type"),
        client_assertion: form.get("client_assertion"),
        ..TokenRequest::default()
    }
}

/// A discovery document (see [`crate::auth::discovery`]), its URLs from `[auth] public_url`
/// or else the request's origin (then varying with it).
fn metadata(
    grants: &Grants,
    req: &Request<Incoming>,
    which: discovery::Document,
) -> Result<Response<Body>, EndpointError> {
    let config = grants.config();
    let request = req
        .extensions()
        .get::<discovery::RequestOrigin>()
        .map(|o| &o.0);
    let doc = discovery::document(config, request, which).ok_or(GrantError::Server)?;
    let mut response = with_json(StatusCode::OK, doc);
    let headers = response.headers_mut();
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(discovery::METADATA_CACHE_CONTROL),
    );
    if config.public_url.is_none() {
        headers.insert(VARY, HeaderValue::from_static(discovery::METADATA_VARY));
    }
    Ok(response)
}

/// RFC 6749 §4.4.3: no refresh token.
fn client_token_json(token: ClientToken) -> Value {
    json!({
        "access_token": token.access_token,
        "token_type": "Bearer",
        "expires_in": token.expires_in,
        "scope": token.scopes.join(" "),
    })
}

/// RFC 6749 §5.1.
fn tokens_json(issued: Issued) -> Value {
    json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token,
        "scope": issued.scopes.join(" "),
    })
}

/// Parameters of a form or JSON body; each name at most once (RFC 6749 §3.2).
#[derive(Debug, Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a bounded form-urlencoded or JSON body. Credentials in the query string are refused.
async fn read_form(req: Request<Incoming>) -> Result<Form, EndpointError> {
    if let Some(query) = req.uri().query() {
        let names = [
            "password",
            "username",
            "refresh_token",
            "client_secret",
            "client_assertion",
            "token",
        ];
        if query
            .split('&')
            .any(|pair| names.contains(&pair.split('=').next().unwrap_or("")))
        {
            return Err(EndpointError::InvalidRequest(
                "credentials are not accepted in the query string",
            ));
        }
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES) {
        return Err(EndpointError::TooLarge);
    }
    let body = req.into_body();
    let collected = tokio::time::timeout(
        FORM_READ_TIMEOUT,
        Limited::new(body, MAX_FORM_BYTES).collect(),
    )
    .await
    .map_err(|_| EndpointError::InvalidRequest("request body too slow"))?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            EndpointError::TooLarge
        } else {
            EndpointError::InvalidRequest("unreadable request body")
        }
    })?
    .to_bytes();
    let pairs = match content_type.as_str() {
        "application/x-www-form-urlencoded" => {
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(&collected)
                .map_err(|_| EndpointError::InvalidRequest("malformed form body"))?
        }
        "application/json" => json_pairs(&collected)?,
        _ => return Err(EndpointError::UnsupportedMediaType),
    };
    let mut seen = HashSet::new();
    for (k, _) in &pairs {
        if !seen.insert(k.as_str()) {
            return Err(EndpointError::InvalidRequest("a parameter is repeated"));
        }
    }
    Ok(Form(pairs))
}

/// A flat JSON object of strings (numbers and booleans are refused, not coerced).
fn json_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, EndpointError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|_| EndpointError::InvalidRequest("malformed JSON body"))?;
    let Value::Object(map) = value else {
        return Err(EndpointError::InvalidRequest("JSON body must be an object"));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(EndpointError::InvalidRequest(
                "JSON parameters must be strings",
            )),
        })
        .collect()
}

fn me_json(identity: &Identity) -> Value {
    json!({
        "sub": identity.sub,
        "roles": identity.roles,
        "scopes": identity.scopes,
        "iss": identity.issuer,
        "exp": identity.exp,
        "client_id": identity.client_id,
    })
}

fn jwks_response(jwks: Value) -> Response<Body> {
    let mut response = with_json(StatusCode::OK, jwks);
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static(crate::auth::keys::JWKS_CACHE_CONTROL),
    );
    response
}

fn no_store(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_sits_at_its_own_index_with_a_distinct_label() {
        let mut labels = std::collections::HashSet::new();
        for (i, endpoint) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(endpoint as usize, i, "{endpoint:?}");
            assert!(labels.insert(endpoint.label()), "{endpoint:?}");
        }
    }

    #[test]
    fn json_body_rejects_non_string_values() {
        assert!(json_pairs(br#"{"username": "a", "password": 1}"#).is_err());
        assert!(json_pairs(br#"["a"]"#).is_err());
        assert_eq!(json_pairs(br#"{"username": "a"}"#).unwrap().len(), 1);
    }
}
