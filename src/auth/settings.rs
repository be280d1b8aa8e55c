//! The `[auth]` section: the gateway's own tokens (issuer, audience, algorithm, lifetimes),
//! registration and the cookie, with the subsections that belong to other modules assembled in:
//! `[auth.password]` ([`crate::auth::password`]), `[auth.cors]` ([`crate::cors`]),
//! `[auth.identity_headers]` ([`crate::proxy::headers`]), `[[auth.trusted_issuers]]`
//! ([`crate::auth::issuers`]), `[auth.limits]` ([`crate::limits`]) and `[auth.session]`
//! ([`crate::auth::session::settings`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::claims::check_account_values;
use crate::auth::issuers::{IssuerSettings, RawTrustedIssuer};
use crate::auth::keys::{JWKS_MAX_AGE, KeyAlg};
use crate::auth::password::{MAX_PASSWORD_BYTES, PasswordConfig, RawPassword};
use crate::auth::paths::{Endpoint, EndpointPaths, RawPaths};
use crate::auth::session::settings::{RawSession, SessionConfig};
use crate::auth::username::Username;
// The validator's own defaults, defined once there.
use crate::auth::verify::{DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_BYTES};
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero};
use crate::cors::{CorsPolicy, Owner, RawCors};
use crate::limits::{LimitsConfig, RawLimits};
use crate::origin::Origin;
use crate::proxy::headers::{IdentityHeaders, RawIdentityHeaders, is_tchar};
use crate::proxy::path;

/// Shortest password, in characters, that `user add`, `user passwd` and registration accept.
pub const DEFAULT_MIN_PASSWORD_CHARS: usize = 8;
/// Default path prefix of the gateway's own endpoints.
pub const DEFAULT_AUTH_PREFIX: &str = "/auth";
/// Default `iss` of minted tokens and the issuer the gateway trusts for its own tokens.
pub const DEFAULT_ISSUER: &str = "gatehouse";
/// Default `aud` of minted tokens and the audience every access token must carry.
pub const DEFAULT_AUDIENCE: &str = "gatehouse";
/// Default access-token lifetime.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: &str = "15m";
/// Default refresh-token lifetime.
pub const DEFAULT_REFRESH_TOKEN_LIFETIME: &str = "7d";
/// Default grace after a refresh token's rotation in which presenting it again continues its
/// session instead of revoking it: none, strict rotation.
pub const DEFAULT_REFRESH_REUSE_GRACE: &str = "0s";
/// Longest `refresh_reuse_grace` accepted: the grace covers racing tabs and retried requests,
/// and every second of it is a second in which a copied token is honoured.
pub const MAX_REFRESH_REUSE_GRACE: Duration = Duration::from_secs(60);
/// Default bound on how stale the revocations a gateway enforces may be: when the store has
/// not answered the change feed for this long, proxied requests are refused (503) rather than
/// served with revocations that might be missing.
pub const DEFAULT_MAX_STALENESS: &str = "30s";
/// `max_staleness` must lie in this range: above the feed's poll, and short enough that an
/// unreachable store cannot hide a logout for long.
pub const MAX_STALENESS_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// Largest leeway the validator accepts.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// Default lifetime of access tokens minted for machine clients (`client_credentials`): that of
/// users' access tokens, so key retention and the verifier's lifetime cap stay as they were.
pub const DEFAULT_CLIENT_TOKEN_TTL: &str = "15m";
/// Longest `client_token_ttl` accepted. A disabled or removed client's epoch is revoked for this
/// long, so every token it was issued is refused until it has expired.
pub const MAX_CLIENT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Default signing algorithm of the gateway's keys.
pub const DEFAULT_ALGORITHM: &str = "EdDSA";
/// Default directory of the gateway's signing keys.
pub const DEFAULT_KEYS_DIR: &str = "data/keys";
/// Default time a rotated key of the store is published before it signs: twice the JWKS
/// max-age, so a verifier that fetched the key set just before the rotation has refetched it
/// (with room for one that refreshes late) before the first token signed with the new key.
pub const DEFAULT_PUBLISH_AHEAD: &str = "10m";
/// Shortest `publish_ahead` accepted: the JWKS max-age, plus a second for a gateway to hear
/// of the rotation through the change feed (it polls every 250 ms) and rebuild its ring.
pub const MIN_PUBLISH_AHEAD: Duration = JWKS_MAX_AGE.saturating_add(Duration::from_secs(1));

/// The `[auth]` section as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub prefix: String,
    pub paths: RawPaths,
    pub issuer: String,
    pub public_url: Option<String>,
    pub audience: String,
    pub algorithm: String,
    pub keys_dir: PathBuf,
    pub kek_file: Option<PathBuf>,
    pub publish_ahead: RawDuration,
    pub access_token_lifetime: RawDuration,
    pub refresh_token_lifetime: RawDuration,
    pub refresh_reuse_grace: RawDuration,
    pub client_token_ttl: RawDuration,
    pub password_grant_clients: Vec<String>,
    pub max_staleness: RawDuration,
    pub leeway: RawDuration,
    pub max_token_bytes: usize,
    pub min_password_chars: usize,
    pub registration: bool,
    pub default_roles: Vec<String>,
    pub default_scopes: Vec<String>,
    pub cookie: Option<String>,
    pub trusted_origins: Vec<String>,
    pub cors: Option<RawCors>,
    pub password: RawPassword,
    pub identity_headers: RawIdentityHeaders,
    pub trusted_issuers: Vec<RawTrustedIssuer>,
    pub limits: RawLimits,
    pub session: RawSession,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_AUTH_PREFIX.into(),
            paths: RawPaths::default(),
            issuer: DEFAULT_ISSUER.into(),
            public_url: None,
            audience: DEFAULT_AUDIENCE.into(),
            algorithm: DEFAULT_ALGORITHM.into(),
            keys_dir: DEFAULT_KEYS_DIR.into(),
            kek_file: None,
            publish_ahead: DEFAULT_PUBLISH_AHEAD.into(),
            access_token_lifetime: DEFAULT_ACCESS_TOKEN_LIFETIME.into(),
            refresh_token_lifetime: DEFAULT_REFRESH_TOKEN_LIFETIME.into(),
            refresh_reuse_grace: DEFAULT_REFRESH_REUSE_GRACE.into(),
            client_token_ttl: DEFAULT_CLIENT_TOKEN_TTL.into(),
            password_grant_clients: Vec::new(),
            max_staleness: DEFAULT_MAX_STALENESS.into(),
            leeway: DEFAULT_LEEWAY.into(),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            min_password_chars: DEFAULT_MIN_PASSWORD_CHARS,
            registration: false,
            default_roles: Vec::new(),
            default_scopes: Vec::new(),
            cookie: None,
            trusted_origins: Vec::new(),
            cors: None,
            password: RawPassword::default(),
            identity_headers: RawIdentityHeaders::default(),
            trusted_issuers: Vec::new(),
            limits: RawLimits::default(),
            session: RawSession::default(),
        }
    }
}

/// The validated `[auth]` section: what the auth service, the grants and the authenticator are
/// built from.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The base of the endpoints' default paths and, unless `""` (the root), a catch-all the
    /// gateway answers itself.
    pub prefix: String,
    /// `[auth.paths]`: every endpoint's path, the table stage 4 looks requests up in.
    pub paths: EndpointPaths,
    pub issuer: String,
    /// The origin clients reach the gateway at (`scheme://host[:port]`), when configured: the
    /// base of the absolute endpoint URLs the metadata documents publish, and of the token
    /// endpoint URL a `private_key_jwt` assertion may name as its audience. Never derived from
    /// a request's `Host`, which the client chooses.
    pub public_url: Option<Origin>,
    pub audience: String,
    pub algorithm: KeyAlg,
    pub keys_dir: PathBuf,
    /// When set, the signing keys live in the store, sealed under this key-encryption key
    /// (`crate::auth::keystore`), and `keys_dir` is not used.
    pub kek_file: Option<PathBuf>,
    /// How long a rotated key of the store is published before it signs.
    pub publish_ahead: Duration,
    pub access_token_lifetime: Duration,
    pub refresh_token_lifetime: Duration,
    /// After a rotation, how long the rotated token may be presented again for a sibling pair
    /// in its session (racing tabs, a retried request) before a reuse revokes the session.
    pub refresh_reuse_grace: Duration,
    /// Lifetime of access tokens minted for machine clients.
    pub client_token_ttl: Duration,
    /// When not empty, the password grant requires one of these clients, authenticated.
    pub password_grant_clients: Vec<Username>,
    /// How long proxied requests are served from the in-memory revocations while the store's
    /// change feed does not answer; then they are refused with 503.
    pub max_staleness: Duration,
    pub leeway: Duration,
    pub max_token_bytes: usize,
    pub min_password_chars: usize,
    pub registration: bool,
    pub default_roles: Vec<String>,
    pub default_scopes: Vec<String>,
    pub cookie: Option<String>,
    /// Origins besides a request's own from which a cookie-authenticated request may change
    /// state (the cross-site check of `crate::gateway::csrf`).
    pub trusted_origins: Vec<Origin>,
    /// `[auth.cors]`: the CORS policy of the gateway's own endpoints and the JWKS.
    pub cors: Option<CorsPolicy>,
    pub password: PasswordConfig,
    pub identity_headers: IdentityHeaders,
    pub trusted_issuers: Vec<IssuerSettings>,
    pub limits: LimitsConfig,
    /// Browser sessions: the sign-in page and its cookie.
    pub session: SessionConfig,
}

impl AuthConfig {
    /// The longest lifetime of an access token the gateway mints (users' or clients'): what the
    /// verifier's lifetime cap, key retention and revocation horizons must cover.
    pub fn longest_access_lifetime(&self) -> Duration {
        self.access_token_lifetime.max(self.client_token_ttl)
    }

    /// The absolute URL of one of the gateway's endpoints under `public_url`, if that is set.
    pub fn endpoint_url(&self, endpoint: Endpoint) -> Option<String> {
        let base = self.public_url.as_ref()?;
        Some(format!("{base}{}", self.paths.path(endpoint)))
    }
}

impl RawAuth {
    pub fn validate(self) -> Result<AuthConfig, ConfigError> {
        // `""` and `"/"` are the root: the endpoints' default paths are `/token` and so on, and
        // nothing else is kept from the routes.
        let prefix = self.prefix.trim_end_matches('/').to_owned();
        if !prefix.is_empty()
            && (!prefix.starts_with('/') || path::normalize(&prefix).as_deref() != Ok(&prefix))
        {
            return Err(invalid(
                "auth.prefix",
                format!(
                    "{:?} must be a normalised path like \"/auth\", or \"/\" for the root",
                    self.prefix
                ),
            ));
        }
        let paths = self.paths.validate(&prefix)?;
        for (key, value) in [
            ("auth.issuer", &self.issuer),
            ("auth.audience", &self.audience),
        ] {
            if value.is_empty()
                || value.len() > 256
                || !value.bytes().all(|b| (0x21..0x7f).contains(&b))
            {
                return Err(invalid(key, "must be 1-256 printable ASCII characters"));
            }
        }
        let public_url = self
            .public_url
            .as_deref()
            .map(|text| {
                Origin::parse(text.trim_end_matches('/')).map_err(|e| {
                    invalid(
                        "auth.public_url",
                        format!("{text:?}: {e} (the URL clients reach the gateway at)"),
                    )
                })
            })
            .transpose()?;
        let algorithm: KeyAlg = self.algorithm.parse().map_err(|_| {
            invalid(
                "auth.algorithm",
                format!(
                    "{:?} is not one of EdDSA, ES256, RS256, HS256",
                    self.algorithm
                ),
            )
        })?;
        if self.keys_dir.as_os_str().is_empty() {
            return Err(invalid("auth.keys_dir", "must not be empty"));
        }
        if self
            .kek_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(invalid("auth.kek_file", "must not be empty"));
        }
        let publish_ahead = self.publish_ahead.parse("auth.publish_ahead")?;
        if publish_ahead < MIN_PUBLISH_AHEAD {
            return Err(invalid(
                "auth.publish_ahead",
                format!(
                    "must be at least {}s (the JWKS max-age plus the time gateways take to hear of a rotation)",
                    MIN_PUBLISH_AHEAD.as_secs()
                ),
            ));
        }
        let access_token_lifetime =
            nonzero("auth.access_token_lifetime", &self.access_token_lifetime)?;
        let refresh_token_lifetime =
            nonzero("auth.refresh_token_lifetime", &self.refresh_token_lifetime)?;
        let refresh_reuse_grace = self.refresh_reuse_grace.parse("auth.refresh_reuse_grace")?;
        if refresh_reuse_grace > MAX_REFRESH_REUSE_GRACE {
            return Err(invalid("auth.refresh_reuse_grace", "must be at most 60s"));
        }
        let client_token_ttl = nonzero("auth.client_token_ttl", &self.client_token_ttl)?;
        if client_token_ttl > MAX_CLIENT_TOKEN_TTL {
            return Err(invalid("auth.client_token_ttl", "must be at most 24h"));
        }
        let password_grant_clients = self
            .password_grant_clients
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Username::parse(name)
                    .ok()
                    .filter(|n| n.as_str() == name)
                    .ok_or_else(|| {
                        invalid(
                            format!("auth.password_grant_clients[{i}]"),
                            format!("{name:?} is not a client name (a-z 0-9 . _ @ + -)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_staleness = self.max_staleness.parse("auth.max_staleness")?;
        let (low, high) = MAX_STALENESS_RANGE;
        if !(low..=high).contains(&max_staleness) {
            return Err(invalid("auth.max_staleness", "must be 1s to 1h"));
        }
        let leeway = self.leeway.parse("auth.leeway")?;
        if leeway > MAX_LEEWAY {
            return Err(invalid("auth.leeway", "must be at most 60s"));
        }
        if self.max_token_bytes < 256 || self.max_token_bytes > 64 * 1024 {
            return Err(invalid(
                "auth.max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        if self.min_password_chars == 0 || self.min_password_chars > MAX_PASSWORD_BYTES {
            return Err(invalid(
                "auth.min_password_chars",
                format!("must be between 1 and {MAX_PASSWORD_BYTES}"),
            ));
        }
        // Registration stores these on every new account: a bad one would make each login 500.
        check_account_values(&self.default_roles, &[])
            .map_err(|e| invalid("auth.default_roles", e.to_string()))?;
        check_account_values(&[], &self.default_scopes)
            .map_err(|e| invalid("auth.default_scopes", e.to_string()))?;
        if let Some(cookie) = &self.cookie
            && (cookie.is_empty() || !cookie.bytes().all(is_tchar))
        {
            return Err(invalid(
                "auth.cookie",
                "must be a cookie name (token characters)",
            ));
        }
        let trusted_origins = self
            .trusted_origins
            .iter()
            .enumerate()
            .map(|(i, text)| {
                Origin::parse(text)
                    .map_err(|e| invalid(format!("auth.trusted_origins[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cors = self
            .cors
            .map(|c| c.validate("auth.cors", Owner::Endpoints))
            .transpose()?;
        let session = self.session.validate(self.cookie.as_deref())?;
        let password = self.password.validate()?;
        let identity_headers = self.identity_headers.validate()?;
        let mut trusted_issuers: Vec<IssuerSettings> = Vec::new();
        for (i, raw) in self.trusted_issuers.into_iter().enumerate() {
            let key = format!("auth.trusted_issuers[{i}]");
            let t = raw.validate(&key, leeway, self.max_token_bytes)?;
            if t.issuer == self.issuer || trusted_issuers.iter().any(|o| o.issuer == t.issuer) {
                return Err(invalid(
                    format!("auth.trusted_issuers[{i}].issuer"),
                    format!("issuer {:?} is configured twice", t.issuer),
                ));
            }
            trusted_issuers.push(t);
        }
        Ok(AuthConfig {
            prefix,
            paths,
            issuer: self.issuer,
            public_url,
            audience: self.audience,
            algorithm,
            keys_dir: self.keys_dir,
            kek_file: self.kek_file,
            publish_ahead,
            access_token_lifetime,
            refresh_token_lifetime,
            refresh_reuse_grace,
            client_token_ttl,
            password_grant_clients,
            max_staleness,
            leeway,
            max_token_bytes: self.max_token_bytes,
            min_password_chars: self.min_password_chars,
            registration: self.registration,
            default_roles: self.default_roles,
            default_scopes: self.default_scopes,
            cookie: self.cookie,
            trusted_origins,
            cors,
            password,
            identity_headers,
            trusted_issuers,
            limits: self.limits.validate()?,
            session,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::refusal as err;

    #[test]
    fn a_key_published_for_less_than_the_jwks_max_age_is_refused() {
        use super::*;
        let e = err("[auth]\npublish_ahead = \"300s\"\n");
        assert!(e.contains("auth.publish_ahead"), "{e}");
        let default = RawDuration::from(DEFAULT_PUBLISH_AHEAD)
            .parse("auth.publish_ahead")
            .unwrap();
        assert!(default >= MIN_PUBLISH_AHEAD);
        assert!(
            MIN_PUBLISH_AHEAD >= JWKS_MAX_AGE + crate::auth::revocation::FOLLOW_EVERY,
            "a gateway hears of a rotation within one poll"
        );
        let e = err("[auth]\nkek_file = \"\"\n");
        assert!(e.contains("auth.kek_file"), "{e}");
    }

    #[test]
    fn a_public_url_is_an_origin_and_builds_the_endpoint_urls() {
        use crate::auth::paths::Endpoint;
        let c = crate::config::Config::from_toml(
            "[auth]\npublic_url = \"HTTPS://Auth.Example.com:443/\"\n[auth.paths]\ntoken = \"/token\"\n",
        )
        .unwrap();
        assert_eq!(
            c.auth.endpoint_url(Endpoint::Token).as_deref(),
            Some("https://auth.example.com/token")
        );
        assert_eq!(
            c.auth.endpoint_url(Endpoint::Jwks).as_deref(),
            Some(
                format!(
                    "https://auth.example.com{}",
                    crate::auth::paths::DEFAULT_JWKS_PATH
                )
                .as_str()
            )
        );
        let unset = crate::config::Config::from_toml("").unwrap();
        assert_eq!(unset.auth.endpoint_url(Endpoint::Token), None);
        for bad in [
            "auth.example.com",
            "https://a.example/base",
            "ftp://a.example",
            "https://u@a",
        ] {
            let e = err(&format!("[auth]\npublic_url = \"{bad}\"\n"));
            assert!(e.contains("auth.public_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_client_token_ttl_past_a_day_or_a_bad_client_name_is_refused() {
        let e = err("[auth]\nclient_token_ttl = \"25h\"\n");
        assert!(e.contains("auth.client_token_ttl"), "{e}");
        let e = err("[auth]\npassword_grant_clients = [\"Web App\"]\n");
        assert!(e.contains("auth.password_grant_clients[0]"), "{e}");
        let c = crate::config::Config::from_toml("[auth]\npassword_grant_clients = [\"web\"]\n")
            .unwrap();
        assert_eq!(c.auth.password_grant_clients[0].as_str(), "web");
    }

    #[test]
    fn leeway_is_capped() {
        let e = err("[auth]\nleeway = \"61s\"\n");
        assert!(e.contains("auth.leeway"), "{e}");
    }

    #[test]
    fn an_unbounded_or_instant_staleness_is_refused() {
        for value in ["\"0s\"", "\"500ms\"", "\"2h\""] {
            let e = err(&format!("[auth]\nmax_staleness = {value}\n"));
            assert!(e.contains("auth.max_staleness"), "{value}: {e}");
        }
        let c = crate::config::Config::from_toml("[auth]\nmax_staleness = \"5s\"\n").unwrap();
        assert_eq!(c.auth.max_staleness, std::time::Duration::from_secs(5));
    }
}
