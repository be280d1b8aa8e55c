//! The gateway's own endpoints: the OAuth2 token endpoint (password and refresh_token grants),
//! login/refresh/logout/revoke/me/register for clients that do not speak OAuth2, and the JWKS.
//!
//! One implementation sits behind `/token`, `/login` and `/refresh`. Every failure is an
//! [`OAuthError`], rendered in `crate::error`. Token responses carry `Cache-Control: no-store`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, PRAGMA};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::auth::claims::Identity;
use crate::auth::claims::{MAX_CLIENT_ID_BYTES, MAX_ROLE_BYTES, is_header_safe};
use crate::auth::password::{MAX_PASSWORD_BYTES, PasswordError};
use crate::auth::service::AuthService;
use crate::auth::tokens::{self, MAX_REFRESH_TOKEN_BYTES, mint_access};
use crate::auth::username::Username;
use crate::body::{Body, with_json};
use crate::clock::unix_now as now;
use crate::error::Rejection;
use crate::limits::Refusal;
use crate::store::{
    LockoutPolicy, LoginAdmission, LoginAttempt, LoginVerdict, NewUser, RefreshRecord,
    RefreshSuccessor, RotateError, StoreError,
};

/// Largest token-endpoint body; larger is refused before parsing or hashing.
pub const MAX_FORM_BYTES: usize = 4 * 1024;
/// Time a client has to send the whole token-endpoint body.
const FORM_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `client_id` stamped on tokens when the client names none.
const DEFAULT_CLIENT_ID: &str = "gatehouse";
/// Shortest password accepted at registration.
const MIN_PASSWORD_CHARS: usize = 8;
/// Seconds a client is told to wait when the hashing pool is full.
const BUSY_RETRY_AFTER: u64 = 1;
/// Seconds a client is told to wait when the store did not answer (locked by a writer, busy
/// past its timeout, gone): a passing condition, not the client's fault nor a bug.
const STORE_RETRY_AFTER: u64 = 2;

/// The one error type of the endpoints (RFC 6749 §5.2 codes where they apply).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// Wrong username or password, unknown or disabled user: one byte-identical answer.
    #[error("invalid_grant: invalid username or password")]
    BadCredentials,
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("invalid_scope")]
    InvalidScope,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("request body too large")]
    TooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("username is taken")]
    Conflict,
    #[error("invalid password: {0}")]
    WeakPassword(&'static str),
    #[error("temporarily unavailable")]
    Busy,
    #[error("store unavailable")]
    StoreUnavailable,
    /// A rate limit or a lockout refused the attempt before any lookup or hashing.
    #[error("too many attempts")]
    Limited(Refusal),
    #[error("server error")]
    Server,
}

impl OAuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidRequest(_)
            | OAuthError::BadCredentials
            | OAuthError::InvalidGrant(_)
            | OAuthError::UnsupportedGrantType
            | OAuthError::InvalidScope
            | OAuthError::WeakPassword(_) => StatusCode::BAD_REQUEST,
            OAuthError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            OAuthError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            OAuthError::NotFound => StatusCode::NOT_FOUND,
            OAuthError::Conflict => StatusCode::CONFLICT,
            OAuthError::Busy | OAuthError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            OAuthError::Server => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_)
            | OAuthError::UnsupportedMediaType
            | OAuthError::TooLarge
            | OAuthError::WeakPassword(_) => "invalid_request",
            OAuthError::BadCredentials | OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::MethodNotAllowed => "method_not_allowed",
            OAuthError::NotFound => "not_found",
            OAuthError::Conflict => "conflict",
            OAuthError::Busy | OAuthError::StoreUnavailable => "temporarily_unavailable",
            OAuthError::Limited(_) => "too_many_attempts",
            OAuthError::Server => "server_error",
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(d)
            | OAuthError::InvalidGrant(d)
            | OAuthError::WeakPassword(d) => d,
            OAuthError::BadCredentials => "invalid username or password",
            OAuthError::UnsupportedGrantType => "grant_type must be password or refresh_token",
            OAuthError::InvalidScope => "the requested scope exceeds what was granted",
            OAuthError::UnsupportedMediaType => {
                "send application/x-www-form-urlencoded or application/json"
            }
            OAuthError::TooLarge => "request body too large",
            OAuthError::MethodNotAllowed => "method not allowed",
            OAuthError::NotFound => "no such endpoint",
            OAuthError::Conflict => "username is taken",
            OAuthError::Busy => "too many logins in progress, retry shortly",
            OAuthError::StoreUnavailable => "state store unavailable, retry shortly",
            OAuthError::Limited(_) => "too many attempts, retry later",
            OAuthError::Server => "internal error",
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            OAuthError::Busy => Some(BUSY_RETRY_AFTER),
            OAuthError::StoreUnavailable => Some(STORE_RETRY_AFTER),
            OAuthError::Limited(r) => Some(r.retry_after),
            _ => None,
        }
    }
}

impl From<PasswordError> for OAuthError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => OAuthError::Busy,
            PasswordError::TooLong { .. } => OAuthError::InvalidRequest("password too long"),
            other => {
                tracing::error!(error = %other, "password hashing failed");
                OAuthError::Server
            }
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failed");
        match e {
            StoreError::Unavailable(_) => OAuthError::StoreUnavailable,
            _ => OAuthError::Server,
        }
    }
}

/// The endpoints under the configured prefix, plus the JWKS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Login,
    Refresh,
    Logout,
    Revoke,
    Me,
    Register,
    Jwks,
    /// Under the prefix but no such endpoint.
    Unknown,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`ALL[e as usize] == e`), for per-endpoint state
    /// built once.
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Token,
        Endpoint::Login,
        Endpoint::Refresh,
        Endpoint::Logout,
        Endpoint::Revoke,
        Endpoint::Me,
        Endpoint::Register,
        Endpoint::Jwks,
        Endpoint::Unknown,
    ];

    /// Its label in the access log and the metrics, where route names stand for proxied requests.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Token => "gatehouse:token",
            Endpoint::Login => "gatehouse:login",
            Endpoint::Refresh => "gatehouse:refresh",
            Endpoint::Logout => "gatehouse:logout",
            Endpoint::Revoke => "gatehouse:revoke",
            Endpoint::Me => "gatehouse:me",
            Endpoint::Register => "gatehouse:register",
            Endpoint::Jwks => "gatehouse:jwks",
            Endpoint::Unknown => "gatehouse:unknown",
        }
    }
}

pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Which of the gateway's endpoints the (normalised) path names, if any. Any other path
/// under the prefix is a 404 from the gateway itself, never proxied.
pub fn endpoint_for(prefix: &str, path: &str) -> Option<Endpoint> {
    if path == JWKS_PATH {
        return Some(Endpoint::Jwks);
    }
    let rest = path.strip_prefix(prefix)?;
    Some(match rest {
        "/token" => Endpoint::Token,
        "/login" => Endpoint::Login,
        "/refresh" => Endpoint::Refresh,
        "/logout" => Endpoint::Logout,
        "/revoke" => Endpoint::Revoke,
        "/me" => Endpoint::Me,
        "/register" => Endpoint::Register,
        r if r.is_empty() || r.starts_with('/') => Endpoint::Unknown,
        _ => return None,
    })
}

impl AuthService {
    /// Answers one of the gateway's endpoints. Limits run first, before any parsing or lookup.
    pub async fn serve(
        &self,
        endpoint: Endpoint,
        req: Request<Incoming>,
        client: IpAddr,
    ) -> Result<Response<Body>, Rejection> {
        let allowed: &[Method] = match endpoint {
            Endpoint::Unknown => return Err(OAuthError::NotFound.into()),
            Endpoint::Me | Endpoint::Jwks => &[Method::GET, Method::HEAD],
            _ => &[Method::POST],
        };
        if !allowed.contains(req.method()) {
            return Err(OAuthError::MethodNotAllowed.into());
        }
        let limited = matches!(
            endpoint,
            Endpoint::Token | Endpoint::Login | Endpoint::Refresh | Endpoint::Register
        );
        if limited && let Err(refusal) = self.limits.check_addr(client) {
            crate::metrics::limit_refusal("address");
            return Err(OAuthError::Limited(refusal).into());
        }
        match endpoint {
            Endpoint::Unknown => Err(OAuthError::NotFound.into()),
            Endpoint::Jwks => Ok(jwks_response(self.keys.load().ring.jwks())),
            Endpoint::Me => {
                let identity = self.require_identity(&req).await?;
                Ok(with_json(StatusCode::OK, me_json(&identity)))
            }
            Endpoint::Token => {
                let form = read_form(req).await?;
                let grant = match form.get("grant_type") {
                    Some("password") => Grant::Password,
                    Some("refresh_token") => Grant::Refresh,
                    Some(_) => return Err(OAuthError::UnsupportedGrantType.into()),
                    None => return Err(OAuthError::InvalidRequest("grant_type is required").into()),
                };
                self.grant(grant, &form).await.map_err(Into::into)
            }
            Endpoint::Login => {
                let form = read_form(req).await?;
                self.grant(Grant::Password, &form).await.map_err(Into::into)
            }
            Endpoint::Refresh => {
                let form = read_form(req).await?;
                self.grant(Grant::Refresh, &form).await.map_err(Into::into)
            }
            Endpoint::Logout => self.logout(req).await,
            Endpoint::Revoke => {
                let form = read_form(req).await?;
                self.revoke(&form).await.map_err(Into::into)
            }
            Endpoint::Register => {
                if !self.config.registration {
                    return Err(OAuthError::NotFound.into());
                }
                let form = read_form(req).await?;
                self.register(&form).await.map_err(Into::into)
            }
        }
    }

    /// The identity behind the request's access token; no token or a bad one is a rejection.
    async fn require_identity(
        &self,
        req: &Request<Incoming>,
    ) -> Result<std::sync::Arc<Identity>, Rejection> {
        let token = self
            .presented_token(req.headers(), req.uri().query())?
            .ok_or(Rejection::NoToken)?;
        self.verify_access(&token)
            .await
            .map_err(Rejection::InvalidToken)
    }

    async fn grant(&self, grant: Grant, form: &Form) -> Result<Response<Body>, OAuthError> {
        let client_id = match form.get("client_id") {
            None => DEFAULT_CLIENT_ID.to_owned(),
            Some(id) if is_header_safe(id, MAX_CLIENT_ID_BYTES) => id.to_owned(),
            Some(_) => return Err(OAuthError::InvalidRequest("invalid client_id")),
        };
        let requested = match form.get("scope") {
            None => None,
            Some(s) => Some(parse_scope(s)?),
        };
        match grant {
            Grant::Password => {
                let username = form
                    .get("username")
                    .ok_or(OAuthError::InvalidRequest("username is required"))?;
                let password = form
                    .get("password")
                    .ok_or(OAuthError::InvalidRequest("password is required"))?;
                self.password_grant(username, password, requested, &client_id)
                    .await
            }
            Grant::Refresh => {
                let token = form
                    .get("refresh_token")
                    .ok_or(OAuthError::InvalidRequest("refresh_token is required"))?;
                self.refresh_grant(token, requested, &client_id).await
            }
        }
    }

    /// Checks the password. Unknown, disabled and wrong all cost one real verification and give
    /// the same answer.
    async fn password_grant(
        &self,
        raw_username: &str,
        password: &str,
        requested: Option<Vec<String>>,
        client_id: &str,
    ) -> Result<Response<Body>, OAuthError> {
        if raw_username.len() > 64 {
            return Err(OAuthError::InvalidRequest("username too long"));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(OAuthError::InvalidRequest("password too long"));
        }
        let name = Username::parse(raw_username).ok();
        let limit_key = name.as_ref().map_or_else(
            || raw_username.to_ascii_lowercase(),
            |n| n.as_str().to_owned(),
        );
        self.limits.check_user(&limit_key).map_err(|r| {
            crate::metrics::limit_refusal("user");
            OAuthError::Limited(r)
        })?;
        // A place in the hashing pool before any store lookup: a flood beyond the pool is
        // refused without costing a query.
        let admission = self
            .pool
            .admit()
            .inspect_err(|_| crate::metrics::login("busy"))?;
        let now = self.limits.clock().unix_now();
        // The attempt's place in the name's failure budget, taken before any hashing: parallel
        // guesses cannot outrun the count.
        let attempt = match &name {
            Some(name) => {
                match LoginAttempt::admit(&self.store, name, now, self.lockout_policy()).await? {
                    Ok(attempt) => Some(attempt),
                    Err(refused) => {
                        crate::metrics::limit_refusal("lockout");
                        let retry_after = match refused {
                            LoginAdmission::Locked(until) => (until - now).max(1) as u64,
                            // Attempts in flight hold the rest of the budget for seconds at most.
                            _ => 1,
                        };
                        return Err(OAuthError::Limited(Refusal {
                            retry_after,
                            limit: self.limits.config().max_failures.get(),
                        }));
                    }
                }
            }
            None => None,
        };
        let user = match &name {
            Some(name) => self.store.user(name).await?.filter(|u| !u.disabled),
            None => None,
        };
        crate::metrics::hash_queue_depth(self.pool.queue_depth() + 1);
        let outcome = self
            .pool
            .verify_admitted(
                admission,
                Zeroizing::new(password.to_owned()),
                user.as_ref().map(|u| u.password_hash.clone()),
            )
            .await
            .inspect_err(|e| {
                let busy = matches!(e, PasswordError::Busy);
                crate::metrics::login(if busy { "busy" } else { "error" });
            })?;
        crate::metrics::hash_queue_depth(self.pool.queue_depth());
        if let Some(problem) = outcome.unusable {
            tracing::warn!(%problem, "stored password hash cannot be verified");
        }
        let user = match user {
            Some(user) if outcome.ok => user,
            _ => {
                crate::metrics::login("bad_credentials");
                if let Some(attempt) = attempt
                    && let Some(until) = attempt.finish(now, LoginVerdict::Failed).await?
                {
                    tracing::warn!(
                        user = name.as_ref().map_or(raw_username, Username::as_str),
                        until,
                        "login locked after repeated failures"
                    );
                }
                return Err(OAuthError::BadCredentials);
            }
        };
        crate::metrics::login("success");
        if let Some(attempt) = attempt {
            attempt.finish(now, LoginVerdict::Succeeded).await?;
        }
        if outcome.needs_rehash {
            self.upgrade_hash(&user.username, password).await;
        }
        let scopes = narrow_scopes(&user.scopes, requested)?;
        let issued = self
            .issue(&user.username, &user.roles, &scopes, client_id)
            .await?;
        Ok(issued)
    }

    /// The lockout rule in the store's terms. The attempt that reaches the limit is answered
    /// like any failure; the next ones are refused by the lockout.
    fn lockout_policy(&self) -> LockoutPolicy {
        let c = self.limits.config();
        LockoutPolicy {
            max_failures: c.max_failures.get(),
            find_time: c.find_time.as_secs() as i64,
            ban_time: c.ban_time.as_secs() as i64,
        }
    }

    /// Rehashes with the configured parameters after a successful login; failure only logs.
    async fn upgrade_hash(&self, username: &Username, password: &str) {
        match self.pool.hash(Zeroizing::new(password.to_owned())).await {
            Ok(hash) => {
                if let Err(e) = self.store.set_password(username, &hash).await {
                    tracing::warn!(error = %e, user = username.as_str(), "could not store upgraded hash");
                } else {
                    tracing::info!(user = username.as_str(), "password hash upgraded");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not upgrade password hash"),
        }
    }

    /// Rotates the refresh token; a reused one has revoked its family inside the store.
    async fn refresh_grant(
        &self,
        presented: &str,
        requested: Option<Vec<String>>,
        client_id: &str,
    ) -> Result<Response<Body>, OAuthError> {
        if presented.is_empty() || presented.len() > MAX_REFRESH_TOKEN_BYTES {
            return Err(OAuthError::InvalidGrant("invalid refresh token"));
        }
        let old_digest = tokens::refresh_digest(presented);
        let (new_token, new_digest) = tokens::new_refresh_token();
        let now = now();
        let successor = RefreshSuccessor {
            digest: new_digest,
            issued_at: now,
            expires_at: now + self.refresh_lifetime(),
        };
        let old = match self.store.rotate_refresh(&old_digest, successor, now).await {
            Ok(old) => old,
            Err(RotateError::Reused { username, .. }) => {
                tracing::warn!(
                    user = username.as_str(),
                    "refresh token reuse detected: family revoked"
                );
                return Err(OAuthError::InvalidGrant("invalid refresh token"));
            }
            Err(RotateError::Unknown | RotateError::Expired | RotateError::Revoked) => {
                return Err(OAuthError::InvalidGrant("invalid refresh token"));
            }
            Err(RotateError::Store(e)) => return Err(e.into()),
        };
        let user = self
            .store
            .user(&old.username)
            .await?
            .filter(|u| !u.disabled);
        let Some(user) = user else {
            self.store.revoke_family(&old.family).await?;
            return Err(OAuthError::InvalidGrant("invalid refresh token"));
        };
        // Never more than first granted, nor more than the user holds today.
        let granted: Vec<String> = old
            .scopes
            .iter()
            .filter(|s| user.scopes.contains(s))
            .cloned()
            .collect();
        let scopes = narrow_scopes(&granted, requested)?;
        self.respond_tokens(&user.username, &user.roles, &scopes, client_id, new_token)
    }

    fn refresh_lifetime(&self) -> i64 {
        self.config.refresh_token_lifetime.as_secs() as i64
    }

    /// Mints an access token and a new refresh-token family.
    async fn issue(
        &self,
        username: &Username,
        roles: &[String],
        scopes: &[String],
        client_id: &str,
    ) -> Result<Response<Body>, OAuthError> {
        let now = now();
        let (refresh, digest) = tokens::new_refresh_token();
        self.store
            .insert_refresh(RefreshRecord {
                digest,
                family: tokens::new_family_id(),
                username: username.clone(),
                scopes: scopes.to_vec(),
                issued_at: now,
                expires_at: now + self.refresh_lifetime(),
            })
            .await?;
        self.respond_tokens(username, roles, scopes, client_id, refresh)
    }

    fn respond_tokens(
        &self,
        username: &Username,
        roles: &[String],
        scopes: &[String],
        client_id: &str,
        refresh: String,
    ) -> Result<Response<Body>, OAuthError> {
        let keys = self.keys.load();
        let minted = mint_access(
            &keys.ring,
            &self.spec,
            username.as_str(),
            roles,
            scopes,
            client_id,
            now(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "minting an access token failed");
            OAuthError::Server
        })?;
        let body = json!({
            "access_token": minted.token,
            "token_type": "Bearer",
            "expires_in": self.spec.lifetime.as_secs(),
            "refresh_token": refresh,
            "scope": scopes.join(" "),
        });
        Ok(no_store(with_json(StatusCode::OK, body)))
    }

    /// Revokes the presented refresh token's family and, with an access token, its `jti`.
    async fn logout(&self, req: Request<Incoming>) -> Result<Response<Body>, Rejection> {
        let token = self.presented_token(req.headers(), req.uri().query())?;
        let identity = match token {
            Some(t) => Some(
                self.verify_access(&t)
                    .await
                    .map_err(Rejection::InvalidToken)?,
            ),
            None => None,
        };
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
        let refresh = form.get("refresh_token");
        if identity.is_none() && refresh.is_none() {
            return Err(
                OAuthError::InvalidRequest("present a refresh_token or an access token").into(),
            );
        }
        if let Some(identity) = &identity {
            self.revoke_access(identity)
                .await
                .map_err(OAuthError::from)?;
        }
        if let Some(refresh) = refresh {
            self.revoke_refresh(refresh, identity.as_deref()).await?;
        }
        Ok(no_store(with_json(
            StatusCode::OK,
            json!({"revoked": true}),
        )))
    }

    /// Revokes the family of a refresh token; with an identity, only a family of that user.
    async fn revoke_refresh(
        &self,
        token: &str,
        owner: Option<&Identity>,
    ) -> Result<bool, OAuthError> {
        if token.len() > MAX_REFRESH_TOKEN_BYTES {
            return Ok(false);
        }
        let Some((record, _)) = self.store.refresh(&tokens::refresh_digest(token)).await? else {
            return Ok(false);
        };
        if owner.is_some_and(|id| id.sub != record.username.as_str()) {
            return Ok(false);
        }
        self.store.revoke_family(&record.family).await?;
        Ok(true)
    }

    /// RFC 7009: answers 200 whether or not the token was known.
    async fn revoke(&self, form: &Form) -> Result<Response<Body>, OAuthError> {
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is required"))?;
        let hint = form.get("token_type_hint");
        let as_refresh = hint != Some("access_token");
        let mut revoked = as_refresh && self.revoke_refresh(token, None).await?;
        if !revoked
            && token.len() <= self.config.max_token_bytes
            && let Ok(identity) = self.verify_access(token).await
        {
            self.revoke_access(&identity).await?;
            revoked = true;
        }
        if !revoked && !as_refresh {
            self.revoke_refresh(token, None).await?;
        }
        Ok(no_store(with_json(StatusCode::OK, json!({}))))
    }

    async fn register(&self, form: &Form) -> Result<Response<Body>, OAuthError> {
        let raw = form
            .get("username")
            .ok_or(OAuthError::InvalidRequest("username is required"))?;
        let password = form
            .get("password")
            .ok_or(OAuthError::InvalidRequest("password is required"))?;
        let username = Username::parse(raw).map_err(|_| {
            OAuthError::InvalidRequest("username must be 1-64 characters from a-z 0-9 . _ @ + -")
        })?;
        self.limits
            .check_user(username.as_str())
            .map_err(OAuthError::Limited)?;
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(OAuthError::WeakPassword(
                "password must be at least 8 characters",
            ));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(OAuthError::WeakPassword(
                "password must be at most 1024 bytes",
            ));
        }
        if Username::parse(password).is_ok_and(|p| p == username) {
            return Err(OAuthError::WeakPassword(
                "password must differ from the username",
            ));
        }
        if self.store.user(&username).await?.is_some() {
            return Err(OAuthError::Conflict);
        }
        let hash = self.pool.hash(Zeroizing::new(password.to_owned())).await?;
        let created = self
            .store
            .create_user(NewUser {
                username: username.clone(),
                password_hash: hash,
                roles: self.config.default_roles.clone(),
                scopes: self.config.default_scopes.clone(),
            })
            .await;
        match created {
            Ok(_) => Ok(with_json(
                StatusCode::CREATED,
                json!({"username": username.as_str()}),
            )),
            Err(StoreError::Conflict(_)) => Err(OAuthError::Conflict),
            Err(e) => Err(e.into()),
        }
    }
}

impl From<OAuthError> for Rejection {
    fn from(e: OAuthError) -> Self {
        Rejection::OAuth(e)
    }
}

#[derive(Clone, Copy)]
enum Grant {
    Password,
    Refresh,
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
async fn read_form(req: Request<Incoming>) -> Result<Form, OAuthError> {
    if let Some(query) = req.uri().query() {
        let names = [
            "password",
            "username",
            "refresh_token",
            "client_secret",
            "token",
        ];
        if query
            .split('&')
            .any(|pair| names.contains(&pair.split('=').next().unwrap_or("")))
        {
            return Err(OAuthError::InvalidRequest(
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
        return Err(OAuthError::TooLarge);
    }
    let body = req.into_body();
    let collected = tokio::time::timeout(
        FORM_READ_TIMEOUT,
        Limited::new(body, MAX_FORM_BYTES).collect(),
    )
    .await
    .map_err(|_| OAuthError::InvalidRequest("request body too slow"))?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            OAuthError::TooLarge
        } else {
            OAuthError::InvalidRequest("unreadable request body")
        }
    })?
    .to_bytes();
    let pairs = match content_type.as_str() {
        "application/x-www-form-urlencoded" => {
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(&collected)
                .map_err(|_| OAuthError::InvalidRequest("malformed form body"))?
        }
        "application/json" => json_pairs(&collected)?,
        _ => return Err(OAuthError::UnsupportedMediaType),
    };
    let mut seen = HashSet::new();
    for (k, _) in &pairs {
        if !seen.insert(k.as_str()) {
            return Err(OAuthError::InvalidRequest("a parameter is repeated"));
        }
    }
    Ok(Form(pairs))
}

/// A flat JSON object of strings (numbers and booleans are refused, not coerced).
fn json_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|_| OAuthError::InvalidRequest("malformed JSON body"))?;
    let Value::Object(map) = value else {
        return Err(OAuthError::InvalidRequest("JSON body must be an object"));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(OAuthError::InvalidRequest(
                "JSON parameters must be strings",
            )),
        })
        .collect()
}

/// A space-separated scope list (RFC 6749 §3.3).
fn parse_scope(text: &str) -> Result<Vec<String>, OAuthError> {
    let mut scopes = Vec::new();
    for s in text.split(' ').filter(|s| !s.is_empty()) {
        if !is_header_safe(s, MAX_ROLE_BYTES) {
            return Err(OAuthError::InvalidScope);
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_owned());
        }
    }
    Ok(scopes)
}

/// The requested scopes if they are a subset of `granted`; all of `granted` if none requested.
fn narrow_scopes(
    granted: &[String],
    requested: Option<Vec<String>>,
) -> Result<Vec<String>, OAuthError> {
    match requested {
        None => Ok(granted.to_vec()),
        Some(req) if req.iter().all(|s| granted.contains(s)) => Ok(req),
        Some(_) => Err(OAuthError::InvalidScope),
    }
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
        HeaderValue::from_static("public, max-age=300"),
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
    fn requested_scope_never_widens_the_grant() {
        let granted = vec!["read".to_owned(), "write".to_owned()];
        assert_eq!(narrow_scopes(&granted, None).unwrap(), granted);
        assert_eq!(
            narrow_scopes(&granted, Some(vec!["read".into()])).unwrap(),
            vec!["read".to_owned()]
        );
        assert!(narrow_scopes(&granted, Some(vec!["admin".into()])).is_err());
    }

    #[test]
    fn scope_with_unsafe_characters_is_invalid() {
        assert!(parse_scope("read,write").is_err());
        assert!(parse_scope("re\"ad").is_err());
        assert_eq!(
            parse_scope("read  write read").unwrap(),
            vec!["read", "write"]
        );
    }

    #[test]
    fn json_body_rejects_non_string_values() {
        assert!(json_pairs(br#"{"username": "a", "password": 1}"#).is_err());
        assert!(json_pairs(br#"["a"]"#).is_err());
        assert_eq!(json_pairs(br#"{"username": "a"}"#).unwrap().len(), 1);
    }
}
