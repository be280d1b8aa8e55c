//! The endpoint path's grants: the password, refresh-token and client-credentials grants, client
//! authentication, logout, revocation and registration, with the brute-force limits and the
//! lockout in front of them.
//!
//! Client authentication (`client_secret_basic`, `client_secret_post` or `private_key_jwt`, see
//! [`crate::auth::clients`] and [`crate::auth::assertion`]; each client has one method) is
//! limited like a login: the per-address budget (spent by the
//! endpoint) and the per-name budget, keyed `client:NAME` so a client and a user of one name
//! do not share it. A failure answers `invalid_client` (401); while a name's budget is spent the
//! answer is 429 `too_many_attempts` with `Retry-After`, whether or not the secret was right,
//! exactly as for a login. An assertion's `jti` is spent in the store, so a replay is refused by
//! every gateway sharing it. Inputs are the
//! parameters as the client sent them; answers are tokens or a [`GrantError`], never HTTP (the
//! endpoints render them, `crate::error` decides statuses).

use std::net::IpAddr;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::auth::assertion::{self, AssertionError, ClientKeys};
use crate::auth::audit::{self, Event, Outcome, Source};
use crate::auth::authenticator::Authenticator;
use crate::auth::claims::Identity;
use crate::auth::claims::{MAX_CLIENT_ID_BYTES, MAX_ROLE_BYTES, is_header_safe};
use crate::auth::clients::{
    self, AssertionParams, Credential, GRANT_CLIENT_CREDENTIALS, GRANT_PASSWORD, Presented,
};
use crate::auth::password::{MAX_PASSWORD_BYTES, PasswordError, PasswordPool};
use crate::auth::paths::Endpoint;
use crate::auth::session;
use crate::auth::settings::AuthConfig;
use crate::auth::tokens::{
    self, AccessTokenSpec, MAX_REFRESH_TOKEN_BYTES, TokenSubject, mint_access,
};
use crate::auth::username::Username;
use crate::auth::verify::VerifyError;
use crate::clock::unix_now as now;
use crate::limits::{ClientNetwork, Limits, Refusal};
use crate::store::{
    ClientAuthMethod, LockScope, Lockout, LockoutPolicy, LoginAdmission, LoginAttempt,
    LoginVerdict, NewUser, RefreshRecord, RefreshSuccessor, RotateError, SessionOrigin, Store,
    StoreError,
};

/// `client_id` stamped on tokens when the client names none.
const DEFAULT_CLIENT_ID: &str = "gatehouse";

/// Most bytes of a `User-Agent` kept with a session.
const MAX_USER_AGENT_BYTES: usize = 256;

/// Why a grant failed (RFC 6749 §5.2 codes where they apply). `crate::error` decides the status.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// Wrong username or password, unknown or disabled user: one byte-identical answer.
    #[error("invalid_grant: invalid username or password")]
    BadCredentials,
    /// A refresh token that cannot be rotated. The client is told only "invalid refresh token"
    /// whatever the reason (a thief learns nothing about the token); the audit log gets it.
    #[error("invalid_grant: invalid refresh token ({})", .0.reason())]
    InvalidRefresh(RefreshRefusal),
    #[error("invalid_scope")]
    InvalidScope,
    /// Client authentication failed: unknown, disabled, wrong secret, or none where required.
    #[error("invalid_client")]
    InvalidClient,
    /// The client may not use this grant type.
    #[error("unauthorized_client")]
    UnauthorizedClient,
    /// An authenticated client not registered for token introspection asked to introspect.
    #[error("unauthorized_client: not registered for introspection")]
    IntrospectionDenied,
    /// An audience (RFC 8707 `resource`) the client is not allowed.
    #[error("invalid_target")]
    InvalidTarget,
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

impl GrantError {
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::InvalidRequest(_) | GrantError::WeakPassword(_) => "invalid_request",
            GrantError::BadCredentials | GrantError::InvalidRefresh(_) => "invalid_grant",
            GrantError::InvalidScope => "invalid_scope",
            GrantError::InvalidClient => "invalid_client",
            GrantError::UnauthorizedClient | GrantError::IntrospectionDenied => {
                "unauthorized_client"
            }
            GrantError::InvalidTarget => "invalid_target",
            GrantError::Busy | GrantError::StoreUnavailable => "temporarily_unavailable",
            GrantError::Limited(_) => "too_many_attempts",
            GrantError::Server => "server_error",
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            GrantError::InvalidRequest(d) | GrantError::WeakPassword(d) => d,
            GrantError::InvalidRefresh(_) => "invalid refresh token",
            GrantError::BadCredentials => "invalid username or password",
            GrantError::InvalidScope => "the requested scope exceeds what was granted",
            GrantError::InvalidClient => "client authentication failed",
            GrantError::UnauthorizedClient => "the client may not use this grant type",
            GrantError::IntrospectionDenied => {
                "the client is not registered for token introspection"
            }
            GrantError::InvalidTarget => "the requested audience is not allowed for this client",
            GrantError::Busy => "too many logins in progress, retry shortly",
            GrantError::StoreUnavailable => "state store unavailable, retry shortly",
            GrantError::Limited(_) => "too many attempts, retry later",
            GrantError::Server => "internal error",
        }
    }
}

/// Why a refresh token could not be rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshRefusal {
    /// Empty or longer than any token the gateway issues.
    Malformed,
    Unknown,
    Expired,
    /// Its session was ended (logout, a cut, an earlier reuse).
    Revoked,
    /// Already used and presented again outside the grace: the session is now revoked.
    Reused,
    /// Its user was disabled or removed since.
    UserGone,
}

impl RefreshRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            RefreshRefusal::Malformed => "malformed",
            RefreshRefusal::Unknown => "unknown",
            RefreshRefusal::Expired => "expired",
            RefreshRefusal::Revoked => "revoked",
            RefreshRefusal::Reused => "reused",
            RefreshRefusal::UserGone => "user_disabled_or_removed",
        }
    }
}

impl GrantError {
    /// How the audit log records this refusal.
    fn audited(&self) -> (Outcome, &'static str) {
        match self {
            GrantError::BadCredentials => (Outcome::Failure, "bad_credentials"),
            GrantError::InvalidRefresh(r) => (Outcome::Failure, r.reason()),
            GrantError::InvalidRequest(_) | GrantError::WeakPassword(_) => {
                (Outcome::Failure, "invalid_request")
            }
            GrantError::InvalidScope => (Outcome::Failure, "invalid_scope"),
            GrantError::InvalidClient => (Outcome::Failure, "invalid_client"),
            GrantError::UnauthorizedClient => (Outcome::Failure, "unauthorized_client"),
            GrantError::IntrospectionDenied => (Outcome::Refused, "introspection_denied"),
            GrantError::InvalidTarget => (Outcome::Failure, "invalid_target"),
            GrantError::Limited(_) => (Outcome::Refused, "limited"),
            GrantError::Busy => (Outcome::Refused, "busy"),
            GrantError::StoreUnavailable => (Outcome::Refused, "store_unavailable"),
            GrantError::Server => (Outcome::Failure, "server_error"),
        }
    }
}

impl From<PasswordError> for GrantError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => GrantError::Busy,
            PasswordError::TooLong { .. } => GrantError::InvalidRequest("password too long"),
            other => {
                tracing::error!(error = %other, "password hashing failed");
                GrantError::Server
            }
        }
    }
}

impl From<StoreError> for GrantError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failed");
        match e {
            StoreError::Unavailable(_) => GrantError::StoreUnavailable,
            _ => GrantError::Server,
        }
    }
}

/// Which grant a token request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Password,
    Refresh,
}

/// A token request's parameters as the client sent them (each at most once).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenRequest<'a> {
    pub client_id: Option<&'a str>,
    pub scope: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub refresh_token: Option<&'a str>,
    /// `client_secret` from the body (`client_secret_post`).
    pub client_secret: Option<&'a str>,
    /// The credentials of `Authorization: Basic` (`client_secret_basic`), still encoded.
    pub basic: Option<&'a [u8]>,
    /// `client_assertion_type` and `client_assertion` from the body (`private_key_jwt`).
    pub client_assertion_type: Option<&'a str>,
    pub client_assertion: Option<&'a str>,
    /// RFC 8707 `resource`, or `audience` as several servers name it.
    pub resource: Option<&'a str>,
    pub audience: Option<&'a str>,
    /// Recorded with a new session for operators (`gatehouse sessions list`).
    pub user_agent: Option<&'a [u8]>,
    /// A browser's sign-in: the family's one token is a session cookie value
    /// ([`crate::auth::session`]), never a refresh token, and lives for the session lifetime.
    pub browser: bool,
}

impl TokenRequest<'_> {
    /// Where a session started, as operators see it: the agent as visible ASCII (anything else
    /// becomes `?`, so a listing cannot carry terminal escapes), at most
    /// [`MAX_USER_AGENT_BYTES`].
    fn origin(&self, client: IpAddr) -> SessionOrigin {
        let agent = self.user_agent.map(|raw| {
            raw.iter()
                .take(MAX_USER_AGENT_BYTES)
                .map(|&b| match b {
                    b' '..=b'~' => char::from(b),
                    _ => '?',
                })
                .collect()
        });
        SessionOrigin {
            client_addr: Some(client.to_string()),
            user_agent: agent,
        }
    }
}

/// What a new family's first token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstToken {
    /// A refresh token the client holds and rotates.
    Refresh,
    /// A browser session's cookie value: it never rotates and is never a refresh token.
    Session,
}

/// A new family: where it started and what its first token is.
struct NewFamily {
    origin: SessionOrigin,
    first: FirstToken,
}

/// A refresh token's session, found (and ended) by a logout or a revocation.
struct FoundSession {
    user: Username,
    session: String,
    /// Whether it was still live.
    ended: bool,
}

/// What a logout ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoggedOut {
    /// The presented access token (its `jti`) is refused from now on.
    pub access_token: bool,
    /// A session (refresh family) that was still live was ended, with its access tokens.
    pub session: bool,
}

/// A machine client's token (`client_credentials`): no refresh token (RFC 6749 §4.4.3).
pub struct ClientToken {
    pub client: Username,
    pub access_token: String,
    pub expires_in: u64,
    pub scopes: Vec<String>,
}

/// Tokens granted: a new access token and the refresh token that continues the family.
pub struct Issued {
    pub user: Username,
    /// The session (refresh family) the tokens belong to.
    pub session: String,
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub scopes: Vec<String>,
}

/// The grants, with what they need: the authenticator (revocation, verifying a presented access
/// token), the store, the hashing pool and the limiters.
pub struct Grants {
    config: AuthConfig,
    authenticator: Arc<Authenticator>,
    store: Arc<dyn Store>,
    pool: PasswordPool,
    spec: AccessTokenSpec,
    /// Shared with the grants a reload replaces, so counters survive reloads.
    limits: Arc<Limits>,
    /// `private_key_jwt` clients' keys (a reload starts afresh: at worst a refetch).
    client_keys: ClientKeys,
}

impl Grants {
    pub fn new(
        config: AuthConfig,
        authenticator: Arc<Authenticator>,
        store: Arc<dyn Store>,
        pool: PasswordPool,
        limits: Arc<Limits>,
    ) -> Self {
        let spec = AccessTokenSpec {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            lifetime: config.access_token_lifetime,
            max_bytes: config.max_token_bytes,
        };
        Self {
            config,
            authenticator,
            store,
            pool,
            spec,
            limits,
            client_keys: ClientKeys::new(),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn pool(&self) -> &PasswordPool {
        &self.pool
    }

    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Hashes a new password on the bounded pool (CLI, demo, registration).
    pub async fn hash_password(
        &self,
        password: Zeroizing<String>,
    ) -> Result<String, PasswordError> {
        self.pool.hash(password).await
    }

    /// The per-address limit of logins, registrations and every token request that is not a
    /// refresh, checked before any lookup or hashing.
    pub async fn admit_client(&self, client: IpAddr) -> Result<(), GrantError> {
        self.limits
            .check_addr(client)
            .await
            .map(drop)
            .map_err(|refusal| {
                crate::metrics::limit_refusal("address");
                GrantError::Limited(refusal)
            })
    }

    /// The per-address limit of refresh-token grants: a budget apart from the login one, so a
    /// client refreshing every few minutes never runs its logins out, and a login flood never
    /// stops refreshes.
    pub async fn admit_refresh_client(&self, client: IpAddr) -> Result<(), GrantError> {
        self.limits
            .check_refresh_addr(client)
            .await
            .map(drop)
            .map_err(|refusal| {
                crate::metrics::limit_refusal("refresh_address");
                GrantError::Limited(refusal)
            })
    }

    /// The token endpoint's grants (and `/login`, `/refresh`, which name theirs by path), for a
    /// request from `client` (the address the limits and the lockout count).
    /// Every outcome is one audit event (see [`crate::auth::audit`]).
    pub async fn token(
        &self,
        grant: Grant,
        form: TokenRequest<'_>,
        client: IpAddr,
    ) -> Result<Issued, GrantError> {
        let result = self.grant(grant, form, client).await;
        let event = match grant {
            Grant::Password => Event::Login,
            Grant::Refresh => Event::Refresh,
        };
        let typed = form.username.map(audit::shown_user);
        let source = Source::Client(client);
        match &result {
            Ok(issued) => audit::record(
                event,
                Some(issued.user.as_str()),
                source,
                Outcome::Success,
                "-",
                Some(&issued.session),
            ),
            // Logged where it was found, with its user and session.
            Err(GrantError::InvalidRefresh(RefreshRefusal::Reused)) => {}
            Err(e) => {
                let (outcome, reason) = e.audited();
                audit::record(event, typed.as_deref(), source, outcome, reason, None);
            }
        }
        result
    }

    async fn grant(
        &self,
        grant: Grant,
        form: TokenRequest<'_>,
        client: IpAddr,
    ) -> Result<Issued, GrantError> {
        let client_id = match form.client_id {
            None => DEFAULT_CLIENT_ID.to_owned(),
            Some(id) if is_header_safe(id, MAX_CLIENT_ID_BYTES) => id.to_owned(),
            Some(_) => return Err(GrantError::InvalidRequest("invalid client_id")),
        };
        let requested = match form.scope {
            None => None,
            Some(s) => Some(parse_scope(s)?),
        };
        match grant {
            Grant::Password => {
                let client_id = self.password_client(&form, client, client_id).await?;
                let username = form
                    .username
                    .ok_or(GrantError::InvalidRequest("username is required"))?;
                let password = form
                    .password
                    .ok_or(GrantError::InvalidRequest("password is required"))?;
                let family = NewFamily {
                    origin: form.origin(client),
                    first: if form.browser {
                        FirstToken::Session
                    } else {
                        FirstToken::Refresh
                    },
                };
                self.password_grant(username, password, requested, &client_id, client, family)
                    .await
            }
            Grant::Refresh => {
                let token = form
                    .refresh_token
                    .ok_or(GrantError::InvalidRequest("refresh_token is required"))?;
                self.refresh_grant(token, requested, &client_id, client)
                    .await
            }
        }
    }

    /// The client of a password grant. With `[auth] password_grant_clients` empty, the grant is
    /// open as before: `client_id` is free text and client credentials are not examined (tools
    /// send an empty Basic secret for public clients). With it set, the client must be one of
    /// those, authenticated and registered for the password grant; the browser's sign-in is the
    /// gateway's own client and exempt. Returns the `client_id` to stamp.
    async fn password_client(
        &self,
        form: &TokenRequest<'_>,
        addr: IpAddr,
        named: String,
    ) -> Result<String, GrantError> {
        let required = &self.config.password_grant_clients;
        if form.browser || required.is_empty() {
            return Ok(named);
        }
        let registered = self.authenticated_client(form, addr).await?;
        if !registered.grants.iter().any(|g| g == GRANT_PASSWORD)
            || !required.contains(&registered.name)
        {
            return Err(GrantError::UnauthorizedClient);
        }
        Ok(registered.name.as_str().to_owned())
    }

    /// The registered client a request authenticates as: the one client-authentication step of
    /// the token endpoint (client credentials, a restricted password grant) and of token
    /// introspection. The request's client authentication is read once
    /// ([`presented_client`]) and checked by [`authenticate_client`](Self::authenticate_client);
    /// none at all is `InvalidClient`. Whether the client may do what it asks is the caller's
    /// to decide.
    pub async fn authenticated_client(
        &self,
        form: &TokenRequest<'_>,
        addr: IpAddr,
    ) -> Result<crate::store::Client, GrantError> {
        let presented = presented_client(form)?.ok_or(GrantError::InvalidClient)?;
        self.authenticate_client(&presented, addr).await
    }

    /// Authenticates a client by its one registered method, limited like a login (see the
    /// module text): the token endpoint's grants and every other endpoint that authenticates
    /// clients come here. Unknown, disabled, the wrong method, a wrong secret and a refused or
    /// replayed assertion all answer `InvalidClient`.
    pub async fn authenticate_client(
        &self,
        presented: &Presented,
        addr: IpAddr,
    ) -> Result<crate::store::Client, GrantError> {
        let name = Username::parse(&presented.id).ok();
        let limit_key = format!(
            "client:{}",
            name.as_ref().map_or_else(
                || presented
                    .id
                    .chars()
                    .take(64)
                    .collect::<String>()
                    .to_ascii_lowercase(),
                |n| n.as_str().to_owned()
            )
        );
        self.limits.check_user(&limit_key).await.map_err(|r| {
            crate::metrics::limit_refusal("client");
            GrantError::Limited(r)
        })?;
        let bounded = match &presented.credential {
            Credential::Secret(secret) => secret.len() <= clients::MAX_SECRET_BYTES,
            Credential::Assertion(signed) => signed.len() <= assertion::MAX_ASSERTION_BYTES,
        };
        let found = match &name {
            Some(name) if bounded => self.store.client(name).await?,
            _ => None,
        };
        let refusal = match &found {
            None => Some("unknown client"),
            Some(c) if c.disabled => Some("disabled client"),
            Some(c) => self.check_credential(c, &presented.credential).await?,
        };
        match (found, refusal) {
            (Some(c), None) => {
                self.limits.give_back_user(&limit_key).await;
                Ok(c)
            }
            (_, refusal) => {
                let reason = refusal.unwrap_or("unknown client");
                // The reason is for operators; the client hears only invalid_client. Neither
                // ever carries the secret or the assertion.
                tracing::info!(client = %audit::shown_user(&presented.id), reason, "client authentication refused");
                audit::record(
                    Event::ClientToken,
                    Some(&audit::shown_user(&presented.id)),
                    Source::Client(addr),
                    Outcome::Failure,
                    "invalid_client",
                    None,
                );
                Err(GrantError::InvalidClient)
            }
        }
    }

    /// Checks the credential against client `c`'s one method: `None` when it proves the client,
    /// else why not. An assertion's `jti` is spent in the store here (an error of the store is
    /// an error, never a pass).
    async fn check_credential(
        &self,
        c: &crate::store::Client,
        credential: &Credential,
    ) -> Result<Option<&'static str>, GrantError> {
        match (credential, c.auth_method) {
            (Credential::Secret(secret), ClientAuthMethod::Secret) => {
                // Client names are not secrets as passwords are, and a digest costs
                // microseconds: no dummy work for an unknown name.
                let ok = clients::secret_matches(&c.secret_digest, &c.name, secret);
                Ok((!ok).then_some("wrong secret"))
            }
            (Credential::Assertion(signed), ClientAuthMethod::PrivateKeyJwt) => {
                match self.check_assertion(c, signed).await {
                    Ok(()) => Ok(None),
                    Err(AssertionFailure::Refused(e)) => Ok(Some(e.reason())),
                    Err(AssertionFailure::Grant(e)) => Err(e),
                }
            }
            (Credential::Secret(_), ClientAuthMethod::PrivateKeyJwt) => {
                Ok(Some("a private_key_jwt client presented a secret"))
            }
            (Credential::Assertion(_), ClientAuthMethod::Secret) => {
                Ok(Some("a secret client presented an assertion"))
            }
        }
    }

    /// Verifies a `private_key_jwt` assertion of client `c` and spends its `jti`. Its audience
    /// is this gateway: the configured issuer, or the token endpoint's URL under `[auth]
    /// public_url` (never one built from the request's Host).
    async fn check_assertion(
        &self,
        c: &crate::store::Client,
        signed: &str,
    ) -> Result<(), AssertionFailure> {
        let refused = AssertionFailure::Refused;
        let kid = assertion::unverified_kid(signed);
        let keys = self
            .client_keys
            .keys_for(c, kid.as_deref())
            .await
            .map_err(refused)?;
        let mut audiences = vec![self.config.issuer.clone()];
        audiences.extend(self.config.endpoint_url(Endpoint::Token));
        let expected = assertion::Expected {
            client: c.name.as_str(),
            audiences: &audiences,
            leeway: i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX),
        };
        let now = now();
        let verified = assertion::verify(signed, &keys, &expected, now).map_err(refused)?;
        let spent = self
            .store
            .spend_assertion(&c.name, &verified.jti, verified.exp, now)
            .await
            .map_err(|e| AssertionFailure::Grant(e.into()))?;
        if !spent {
            return Err(refused(AssertionError::Replayed));
        }
        Ok(())
    }

    /// The `client_credentials` grant (RFC 6749 §4.4): a token for the authenticated client
    /// itself, `sub` = `client_id` = its name, its epoch as `sid` (so disabling it refuses the
    /// token everywhere), the requested scopes within its own (never silently narrowed or
    /// widened: asking for one it lacks is `invalid_scope`), and one audience: the one asked
    /// for (RFC 8707 `resource` or `audience`) if the client is allowed it, otherwise its first
    /// allowed one; a client registered without audiences gets only the gateway's.
    pub async fn client_credentials(
        &self,
        form: TokenRequest<'_>,
        addr: IpAddr,
    ) -> Result<ClientToken, GrantError> {
        let result = self.client_grant(form, addr).await;
        let source = Source::Client(addr);
        match &result {
            Ok(t) => audit::record(
                Event::ClientToken,
                Some(t.client.as_str()),
                source,
                Outcome::Success,
                "-",
                None,
            ),
            Err(GrantError::InvalidClient) => {} // Recorded where it was found.
            Err(e) => {
                let (outcome, reason) = e.audited();
                let shown = form.client_id.map(audit::shown_user);
                audit::record(
                    Event::ClientToken,
                    shown.as_deref(),
                    source,
                    outcome,
                    reason,
                    None,
                );
            }
        }
        result
    }

    async fn client_grant(
        &self,
        form: TokenRequest<'_>,
        addr: IpAddr,
    ) -> Result<ClientToken, GrantError> {
        let requested = form.scope.map(parse_scope).transpose()?;
        let asked = match (form.resource, form.audience) {
            (Some(r), Some(a)) if r != a => {
                return Err(GrantError::InvalidRequest(
                    "resource and audience name different audiences",
                ));
            }
            (r, a) => r.or(a),
        };
        let client = self.authenticated_client(&form, addr).await?;
        if !client.grants.iter().any(|g| g == GRANT_CLIENT_CREDENTIALS) {
            return Err(GrantError::UnauthorizedClient);
        }
        let scopes = narrow_scopes(&client.scopes, requested)?;
        let gateway = [self.config.audience.clone()];
        let allowed: &[String] = if client.audiences.is_empty() {
            &gateway
        } else {
            &client.audiences
        };
        let audience = match asked {
            Some(a) if allowed.iter().any(|x| x == a) => a.to_owned(),
            Some(_) => return Err(GrantError::InvalidTarget),
            None => allowed[0].clone(),
        };
        let spec = AccessTokenSpec {
            audience,
            lifetime: self.config.client_token_ttl,
            ..self.spec.clone()
        };
        let subject = TokenSubject {
            sub: client.name.as_str(),
            roles: &[],
            scopes: &scopes,
            client_id: client.name.as_str(),
            sid: Some(&client.epoch),
        };
        let keys = self.authenticator.keys();
        let minted = mint_access(&keys.ring, &spec, &subject, now()).map_err(|e| {
            tracing::error!(error = %e, "minting a client's access token failed");
            GrantError::Server
        })?;
        Ok(ClientToken {
            client: client.name,
            access_token: minted.token,
            expires_in: spec.lifetime.as_secs(),
            scopes,
        })
    }

    /// Checks the password. Unknown, disabled and wrong all cost one real verification and give
    /// the same answer. The per-username budget is charged before hashing and given back on
    /// success (see [`Limits::give_back_user`]); the lockout counts failures per (username,
    /// network of `client`) and per username.
    async fn password_grant(
        &self,
        raw_username: &str,
        password: &str,
        requested: Option<Vec<String>>,
        client_id: &str,
        client: IpAddr,
        family: NewFamily,
    ) -> Result<Issued, GrantError> {
        if raw_username.len() > 64 {
            return Err(GrantError::InvalidRequest("username too long"));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(GrantError::InvalidRequest("password too long"));
        }
        let name = Username::parse(raw_username).ok();
        let limit_key = name.as_ref().map_or_else(
            || raw_username.to_ascii_lowercase(),
            |n| n.as_str().to_owned(),
        );
        self.limits.check_user(&limit_key).await.map_err(|r| {
            crate::metrics::limit_refusal("user");
            GrantError::Limited(r)
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
        let network = ClientNetwork::of(client);
        let policy = self.lockout_policy();
        let attempt = match &name {
            Some(name) => match LoginAttempt::admit(&self.store, name, network, now, policy).await?
            {
                Ok(attempt) => Some(attempt),
                Err(refused) => {
                    crate::metrics::limit_refusal("lockout");
                    let (retry_after, limit) = match refused {
                        LoginAdmission::Locked(lockout) => (
                            (lockout.until - now).max(1) as u64,
                            scope_limit(policy, lockout.scope),
                        ),
                        // Attempts in flight hold the rest of the budget for seconds at most.
                        _ => (1, policy.max_failures),
                    };
                    return Err(GrantError::Limited(Refusal { retry_after, limit }));
                }
            },
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
                    && let Some(Lockout { until, scope }) =
                        attempt.finish(now, LoginVerdict::Failed).await?
                {
                    let scope = match scope {
                        LockScope::Network => "network",
                        LockScope::Everywhere => "everywhere",
                    };
                    let reason =
                        format!("repeated failures: locked for {scope} {network} until {until}");
                    audit::record(
                        Event::Lockout,
                        Some(&audit::shown_user(raw_username)),
                        Source::Client(client),
                        Outcome::Success,
                        &reason,
                        None,
                    );
                }
                return Err(GrantError::BadCredentials);
            }
        };
        crate::metrics::login("success");
        self.limits.give_back_user(&limit_key).await;
        if let Some(attempt) = attempt {
            attempt.finish(now, LoginVerdict::Succeeded).await?;
        }
        if outcome.needs_rehash {
            self.upgrade_hash(&user.username, password).await;
        }
        let scopes = narrow_scopes(&user.scopes, requested)?;
        let issued = self
            .issue(&user.username, &user.roles, &scopes, client_id, family)
            .await?;
        Ok(issued)
    }

    /// The lockout rule in the store's terms. The attempt that reaches the limit is answered
    /// like any failure; the next ones are refused by the lockout.
    fn lockout_policy(&self) -> LockoutPolicy {
        let c = self.limits.config();
        LockoutPolicy {
            max_failures: c.max_failures.get(),
            max_failures_per_user: c.max_failures_per_user.get(),
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
        client: IpAddr,
    ) -> Result<Issued, GrantError> {
        if presented.is_empty() || presented.len() > MAX_REFRESH_TOKEN_BYTES {
            return Err(GrantError::InvalidRefresh(RefreshRefusal::Malformed));
        }
        let old_digest = tokens::refresh_digest(presented);
        let (new_token, new_digest) = tokens::new_refresh_token();
        let now = now();
        let successor = RefreshSuccessor {
            digest: new_digest,
            issued_at: now,
            expires_at: now + self.refresh_lifetime(),
        };
        let grace = self.config.refresh_reuse_grace.as_secs() as i64;
        let rotated = self
            .store
            .rotate_refresh(&old_digest, successor, now, grace)
            .await;
        let old = match rotated {
            Ok(old) => old,
            Err(RotateError::Reused { username, family }) => {
                tracing::warn!(
                    user = username.as_str(),
                    "refresh token reuse detected: session revoked"
                );
                // The access tokens of a stolen session end with it.
                self.authenticator.revoke_session_tokens(&family).await?;
                audit::record(
                    Event::Refresh,
                    Some(username.as_str()),
                    Source::Client(client),
                    Outcome::Failure,
                    RefreshRefusal::Reused.reason(),
                    Some(&family),
                );
                return Err(GrantError::InvalidRefresh(RefreshRefusal::Reused));
            }
            Err(RotateError::Unknown) => {
                return Err(GrantError::InvalidRefresh(RefreshRefusal::Unknown));
            }
            Err(RotateError::Expired) => {
                return Err(GrantError::InvalidRefresh(RefreshRefusal::Expired));
            }
            Err(RotateError::Revoked) => {
                return Err(GrantError::InvalidRefresh(RefreshRefusal::Revoked));
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
            self.authenticator
                .revoke_session_tokens(&old.family)
                .await?;
            return Err(GrantError::InvalidRefresh(RefreshRefusal::UserGone));
        };
        // Never more than first granted, nor more than the user holds today.
        let granted: Vec<String> = old
            .scopes
            .iter()
            .filter(|s| user.scopes.contains(s))
            .cloned()
            .collect();
        let scopes = narrow_scopes(&granted, requested)?;
        let subject = TokenSubject {
            sub: user.username.as_str(),
            roles: &user.roles,
            scopes: &scopes,
            client_id,
            sid: Some(&old.family),
        };
        self.mint(&user.username, &subject, new_token).await
    }

    fn refresh_lifetime(&self) -> i64 {
        self.config.refresh_token_lifetime.as_secs() as i64
    }

    /// Mints an access token and a new refresh-token family, whose first token is a refresh
    /// token or a browser session's cookie value.
    async fn issue(
        &self,
        username: &Username,
        roles: &[String],
        scopes: &[String],
        client_id: &str,
        new_family: NewFamily,
    ) -> Result<Issued, GrantError> {
        let NewFamily { origin, first } = new_family;
        let now = now();
        let (refresh, digest, lifetime) = match first {
            FirstToken::Refresh => {
                let (token, digest) = tokens::new_refresh_token();
                (token, digest, self.refresh_lifetime())
            }
            FirstToken::Session => {
                let (value, digest) = session::new_value();
                let lifetime = self.config.session.lifetime.as_secs() as i64;
                (value.as_str().to_owned(), digest, lifetime)
            }
        };
        let family = tokens::new_family_id();
        self.store
            .insert_refresh(
                RefreshRecord {
                    digest,
                    family: family.clone(),
                    username: username.clone(),
                    scopes: scopes.to_vec(),
                    issued_at: now,
                    expires_at: now + lifetime,
                },
                origin,
            )
            .await?;
        let subject = TokenSubject {
            sub: username.as_str(),
            roles,
            scopes,
            client_id,
            sid: Some(&family),
        };
        let issued = self.mint(username, &subject, refresh).await?;
        if first == FirstToken::Session {
            // Held from the start, so the first request after sign-in mints nothing.
            let exp = now + issued.expires_in as i64 - 1;
            self.authenticator
                .hold_session(digest, &family, &issued.access_token, exp, now);
        }
        Ok(issued)
    }

    /// Ends the browser session of cookie `value` (its family and every access token of it);
    /// whether one was still live. An unknown value ends nothing.
    pub async fn sign_out(&self, value: &str, client: IpAddr) -> Result<bool, GrantError> {
        self.authenticator.forget_session(value);
        let Some(owner) = session::owner(value, &*self.store).await? else {
            audit::record(
                Event::Logout,
                None,
                Source::Client(client),
                Outcome::Nothing,
                "sign-out: unknown session",
                None,
            );
            return Ok(false);
        };
        let ended = self
            .store
            .revoke_session(&owner.user, &owner.family, now())
            .await?;
        self.authenticator
            .revoke_session_tokens(&owner.family)
            .await?;
        audit::record(
            Event::Logout,
            Some(owner.user.as_str()),
            Source::Client(client),
            if ended {
                Outcome::Success
            } else {
                Outcome::Nothing
            },
            "sign-out: browser session ended",
            Some(&owner.family),
        );
        Ok(ended)
    }

    /// Mints the access token that goes with `refresh`. Right after the user's sessions were
    /// cut (a password change, then a login in the same second), a token issued now would carry
    /// an `iat` the cut refuses: the cut is caught up first and minting waits for the next
    /// second (at most one).
    async fn mint(
        &self,
        user: &Username,
        subject: &TokenSubject<'_>,
        refresh: String,
    ) -> Result<Issued, GrantError> {
        self.authenticator.follow().await?;
        if let Some(from) = self.authenticator.sessions_cut_until(user) {
            // A cut is at most a second ahead of its own clock; a clock far ahead elsewhere
            // must not hold the login for longer.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            while now() < from && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let keys = self.authenticator.keys();
        let minted = mint_access(&keys.ring, &self.spec, subject, now()).map_err(|e| {
            tracing::error!(error = %e, "minting an access token failed");
            GrantError::Server
        })?;
        Ok(Issued {
            user: user.clone(),
            session: subject.sid.unwrap_or_default().to_owned(),
            access_token: minted.token,
            expires_in: self.spec.lifetime.as_secs(),
            refresh_token: refresh,
            scopes: subject.scopes.to_vec(),
        })
    }

    /// Logout ends the whole login: the presented access token, and its session (named by its
    /// `sid`, or by the refresh token) with every access token of that session. With both
    /// presented, only a session of the access token's user is ended. Says what it ended: a
    /// garbage refresh token ends nothing.
    pub async fn logout(
        &self,
        identity: Option<&Identity>,
        refresh: Option<&str>,
        client: IpAddr,
    ) -> Result<LoggedOut, GrantError> {
        if identity.is_none() && refresh.is_none() {
            return Err(GrantError::InvalidRequest(
                "present a refresh_token or an access token",
            ));
        }
        let mut ended = LoggedOut::default();
        let mut user = identity.map(|id| id.sub.clone());
        let mut session = identity
            .and_then(|id| id.sid.clone())
            .filter(|s| !clients::is_epoch(s));
        if let Some(identity) = identity {
            ended.access_token = self.authenticator.revoke_access(identity).await?;
            // A client's epoch is not a session: its tokens end when the client is disabled,
            // never because one holder logged out.
            if let Some(sid) = identity.sid.as_ref().filter(|s| !clients::is_epoch(s))
                && let Ok(owner) = Username::parse(&identity.sub)
            {
                ended.session = self.store.revoke_session(&owner, sid, now()).await?;
                self.authenticator.revoke_session_tokens(sid).await?;
            }
        }
        if let Some(refresh) = refresh
            && let Some(found) = self.revoke_refresh(refresh, identity).await?
        {
            ended.session |= found.ended;
            user.get_or_insert_with(|| found.user.as_str().to_owned());
            session.get_or_insert(found.session);
        }
        let outcome = if ended.access_token || ended.session {
            Outcome::Success
        } else {
            Outcome::Nothing
        };
        let reason = match (ended.access_token, ended.session) {
            (true, true) => "access token and session ended",
            (true, false) => "access token ended",
            (false, true) => "session ended",
            (false, false) => "nothing to end",
        };
        audit::record(
            Event::Logout,
            user.as_deref(),
            Source::Client(client),
            outcome,
            reason,
            session.as_deref(),
        );
        Ok(ended)
    }

    /// Revokes the family of a refresh token; with an identity, only a family of that user.
    /// `None` when the token is unknown (or another user's).
    async fn revoke_refresh(
        &self,
        token: &str,
        owner: Option<&Identity>,
    ) -> Result<Option<FoundSession>, GrantError> {
        if token.len() > MAX_REFRESH_TOKEN_BYTES {
            return Ok(None);
        }
        let Some((record, _)) = self.store.refresh(&tokens::refresh_digest(token)).await? else {
            return Ok(None);
        };
        if owner.is_some_and(|id| id.sub != record.username.as_str()) {
            return Ok(None);
        }
        let ended = self
            .store
            .revoke_session(&record.username, &record.family, now())
            .await?;
        self.authenticator
            .revoke_session_tokens(&record.family)
            .await?;
        Ok(Some(FoundSession {
            user: record.username,
            session: record.family,
            ended,
        }))
    }

    /// RFC 7009: answers 200 whether or not the token was known.
    pub async fn revoke(
        &self,
        token: Option<&str>,
        hint: Option<&str>,
        client: IpAddr,
    ) -> Result<(), GrantError> {
        let token = token.ok_or(GrantError::InvalidRequest("token is required"))?;
        let as_refresh = hint != Some("access_token");
        let mut found = match as_refresh {
            true => self.revoke_refresh(token, None).await?,
            false => None,
        };
        let mut access = None;
        if found.is_none() && token.len() <= self.config.max_token_bytes {
            match self.authenticator.verify_access(token).await {
                Ok(identity) => {
                    self.authenticator.revoke_access(&identity).await?;
                    access = Some(identity);
                }
                // Valid, maybe, but the store has been silent too long to say: a 503, never
                // a 200 that revoked nothing.
                Err(VerifyError::Unconfirmed) => return Err(GrantError::StoreUnavailable),
                Err(_) => {}
            }
        }
        if found.is_none() && access.is_none() && !as_refresh {
            found = self.revoke_refresh(token, None).await?;
        }
        let source = Source::Client(client);
        match (&found, &access) {
            (Some(f), _) => audit::record(
                Event::Revoke,
                Some(f.user.as_str()),
                source,
                if f.ended {
                    Outcome::Success
                } else {
                    Outcome::Nothing
                },
                "refresh token: session ended",
                Some(&f.session),
            ),
            (None, Some(id)) => audit::record(
                Event::Revoke,
                Some(&id.sub),
                source,
                Outcome::Success,
                "access token",
                id.sid.as_deref(),
            ),
            (None, None) => audit::record(
                Event::Revoke,
                None,
                source,
                Outcome::Nothing,
                "unknown token",
                None,
            ),
        }
        Ok(())
    }

    /// Self-registration with the configured default roles and scopes.
    ///
    /// A taken name answers exactly as a free one (`Ok`, after the same hashing work): telling
    /// the two apart would let anyone list the accounts, which the login path takes care never
    /// to do. The cost is that someone registering a taken name learns it only when the
    /// password does not log in.
    pub async fn register(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<(), GrantError> {
        let raw = username.ok_or(GrantError::InvalidRequest("username is required"))?;
        let password = password.ok_or(GrantError::InvalidRequest("password is required"))?;
        let username = Username::parse(raw).map_err(|_| {
            GrantError::InvalidRequest("username must be 1-64 characters from a-z 0-9 . _ @ + -")
        })?;
        self.limits
            .check_user(username.as_str())
            .await
            .map_err(GrantError::Limited)?;
        if password.chars().count() < self.config.min_password_chars {
            return Err(GrantError::WeakPassword(
                "password is shorter than the minimum length (auth.min_password_chars)",
            ));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(GrantError::WeakPassword(
                "password must be at most 1024 bytes",
            ));
        }
        if Username::parse(password).is_ok_and(|p| p == username) {
            return Err(GrantError::WeakPassword(
                "password must differ from the username",
            ));
        }
        // Hashed whether or not the name is free, so the time taken does not tell either.
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
            Ok(_) => {
                tracing::info!(user = username.as_str(), "registered");
                Ok(())
            }
            Err(StoreError::Conflict(_)) => {
                tracing::info!(user = username.as_str(), "registration for a taken name");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Why an assertion did not authenticate its client: refused (`invalid_client`), or the store
/// could not record its use (an error, never a pass).
enum AssertionFailure {
    Refused(AssertionError),
    Grant(GrantError),
}

/// The client authentication a request presents (see [`clients::presented`]); its ambiguities
/// are bad requests.
pub fn presented_client(form: &TokenRequest<'_>) -> Result<Option<Presented>, GrantError> {
    let signed = AssertionParams {
        assertion_type: form.client_assertion_type,
        assertion: form.client_assertion,
    };
    clients::presented(form.basic, form.client_id, form.client_secret, signed).map_err(
        |e| match e {
            clients::PresentError::Ambiguous(d) | clients::PresentError::Malformed(d) => {
                GrantError::InvalidRequest(d)
            }
        },
    )
}

/// A space-separated scope list (RFC 6749 §3.3).
/// The failure limit whose lockout refused: what `RateLimit-Limit` reports.
fn scope_limit(policy: LockoutPolicy, scope: LockScope) -> u32 {
    match scope {
        LockScope::Network => policy.max_failures,
        LockScope::Everywhere => policy.max_failures_per_user,
    }
}

fn parse_scope(text: &str) -> Result<Vec<String>, GrantError> {
    let mut scopes = Vec::new();
    for s in text.split(' ').filter(|s| !s.is_empty()) {
        if !is_header_safe(s, MAX_ROLE_BYTES) {
            return Err(GrantError::InvalidScope);
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
) -> Result<Vec<String>, GrantError> {
    match requested {
        None => Ok(granted.to_vec()),
        Some(req) if req.iter().all(|s| granted.contains(s)) => Ok(req),
        Some(_) => Err(GrantError::InvalidScope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
