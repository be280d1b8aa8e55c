//! Where the gateway's own endpoints live: the [`Endpoint`]s, the `[auth.paths]` settings (one
//! path per endpoint, each defaulting to `{prefix}/<name>`, the JWKS to
//! [`DEFAULT_JWKS_PATH`]) and [`EndpointPaths`], the table stage 4 looks a request's path up in,
//! built once at config load.
//!
//! The two discovery documents are not configurable: RFC 8414 §3 and OpenID Connect Discovery
//! §4 put them at [`AUTHORIZATION_SERVER_METADATA_PATH`] and [`OPENID_CONFIGURATION_PATH`] of
//! the issuer's origin, and a client that finds them elsewhere is not discovering anything. No
//! other endpoint may be moved onto them.
//!
//! Stage 4 asks, for every request and before any route: is the normalised path exactly one of
//! the configured endpoint paths (case as written)? Then it is that endpoint. Otherwise, is it
//! the prefix or under it (on a segment boundary)? Then it is [`Endpoint::Unknown`], a 404 from
//! the gateway, never proxied. A root prefix (`prefix = ""` or `"/"`) has no such catch-all:
//! only the exact endpoint paths are the gateway's, everything else goes to the routes.

use serde::{Deserialize, Serialize};

use crate::config::value::{ConfigError, invalid};
use crate::proxy::path;

/// Where the JWKS is published unless `[auth.paths] jwks` says otherwise.
pub const DEFAULT_JWKS_PATH: &str = "/.well-known/jwks.json";
/// Where RFC 8414 §3 puts the authorization server's metadata (for an issuer without a path).
pub const AUTHORIZATION_SERVER_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Where OpenID Connect Discovery §4 puts the provider's configuration.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// Longest endpoint path accepted.
pub const MAX_ENDPOINT_PATH_BYTES: usize = 256;

/// The gateway's own endpoints, plus the JWKS.
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
    /// The browser's sign-in page and form.
    SignIn,
    /// The browser's sign-out page and button.
    SignOut,
    /// The forward-auth decision for a fronting proxy, answered by the gateway itself
    /// (`crate::gateway::forward_auth`), never by `auth::endpoints`.
    Verify,
    /// RFC 7662 token introspection, for authenticated clients.
    Introspect,
    /// RFC 8414 authorization server metadata, at its fixed well-known path.
    AuthorizationServerMetadata,
    /// OpenID Connect Discovery's provider configuration, at its fixed well-known path.
    OpenIdConfiguration,
    /// Under the prefix but no such endpoint.
    Unknown,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`ALL[e as usize] == e`), for per-endpoint state
    /// built once.
    pub const ALL: [Endpoint; 15] = [
        Endpoint::Token,
        Endpoint::Login,
        Endpoint::Refresh,
        Endpoint::Logout,
        Endpoint::Revoke,
        Endpoint::Me,
        Endpoint::Register,
        Endpoint::Jwks,
        Endpoint::SignIn,
        Endpoint::SignOut,
        Endpoint::Verify,
        Endpoint::Introspect,
        Endpoint::AuthorizationServerMetadata,
        Endpoint::OpenIdConfiguration,
        Endpoint::Unknown,
    ];

    /// The endpoints that have a path of their own: all but [`Endpoint::Unknown`], which is
    /// last, in the same order.
    pub const NAMED: [Endpoint; Endpoint::ALL.len() - 1] = {
        let mut named = [Endpoint::Token; Endpoint::ALL.len() - 1];
        let mut i = 0;
        while i < named.len() {
            named[i] = Endpoint::ALL[i];
            i += 1;
        }
        named
    };

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
            Endpoint::SignIn => "gatehouse:sign_in",
            Endpoint::SignOut => "gatehouse:sign_out",
            Endpoint::Verify => "gatehouse:verify",
            Endpoint::Introspect => "gatehouse:introspect",
            Endpoint::AuthorizationServerMetadata => "gatehouse:oauth_authorization_server",
            Endpoint::OpenIdConfiguration => "gatehouse:openid_configuration",
            Endpoint::Unknown => "gatehouse:unknown",
        }
    }

    /// Its key in `[auth.paths]`; also the last segment of its default path under the prefix.
    pub fn name(self) -> &'static str {
        self.label().trim_start_matches("gatehouse:")
    }

    /// The fixed path of an endpoint `[auth.paths]` cannot move (the discovery documents).
    pub fn fixed_path(self) -> Option<&'static str> {
        match self {
            Endpoint::AuthorizationServerMetadata => Some(AUTHORIZATION_SERVER_METADATA_PATH),
            Endpoint::OpenIdConfiguration => Some(OPENID_CONFIGURATION_PATH),
            _ => None,
        }
    }
}

/// The `[auth.paths]` section as written: every key optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPaths {
    pub token: Option<String>,
    pub login: Option<String>,
    pub refresh: Option<String>,
    pub logout: Option<String>,
    pub revoke: Option<String>,
    pub me: Option<String>,
    pub register: Option<String>,
    pub jwks: Option<String>,
    pub sign_in: Option<String>,
    pub sign_out: Option<String>,
    pub verify: Option<String>,
    pub introspect: Option<String>,
}

impl RawPaths {
    fn get(&self, endpoint: Endpoint) -> Option<&str> {
        match endpoint {
            Endpoint::Token => self.token.as_deref(),
            Endpoint::Login => self.login.as_deref(),
            Endpoint::Refresh => self.refresh.as_deref(),
            Endpoint::Logout => self.logout.as_deref(),
            Endpoint::Revoke => self.revoke.as_deref(),
            Endpoint::Me => self.me.as_deref(),
            Endpoint::Register => self.register.as_deref(),
            Endpoint::Jwks => self.jwks.as_deref(),
            Endpoint::SignIn => self.sign_in.as_deref(),
            Endpoint::SignOut => self.sign_out.as_deref(),
            Endpoint::Verify => self.verify.as_deref(),
            Endpoint::Introspect => self.introspect.as_deref(),
            Endpoint::AuthorizationServerMetadata
            | Endpoint::OpenIdConfiguration
            | Endpoint::Unknown => None,
        }
    }

    /// The table for `prefix` (already validated: `""` for the root, else a normalised path
    /// without a trailing slash).
    pub fn validate(&self, prefix: &str) -> Result<EndpointPaths, ConfigError> {
        let mut by_endpoint: Vec<Box<str>> = Vec::with_capacity(Endpoint::NAMED.len());
        for endpoint in Endpoint::NAMED {
            let key = format!("auth.paths.{}", endpoint.name());
            let path = match (endpoint.fixed_path(), self.get(endpoint)) {
                (Some(fixed), _) => fixed.to_owned(),
                (None, Some(written)) => checked_path(&key, written)?,
                (None, None) if endpoint == Endpoint::Jwks => DEFAULT_JWKS_PATH.to_owned(),
                (None, None) => format!("{prefix}/{}", endpoint.name()),
            };
            if let Some(other) = Endpoint::NAMED
                .iter()
                .zip(&by_endpoint)
                .find(|(_, p)| p.eq_ignore_ascii_case(&path))
                .map(|(e, _)| e)
            {
                // The fixed paths come last: the key at fault is the other one's.
                if endpoint.fixed_path().is_some() {
                    return Err(invalid(
                        format!("auth.paths.{}", other.name()),
                        format!(
                            "{path} is the well-known path of the {} document, which no endpoint can take",
                            endpoint.name()
                        ),
                    ));
                }
                return Err(invalid(
                    key,
                    format!(
                        "{path} is already the path of auth.paths.{}; two endpoints cannot share a path",
                        other.name()
                    ),
                ));
            }
            by_endpoint.push(path.into_boxed_str());
        }
        let mut sorted: Vec<(Box<str>, Endpoint)> =
            by_endpoint.iter().cloned().zip(Endpoint::NAMED).collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(EndpointPaths {
            prefix: prefix.into(),
            by_endpoint: by_endpoint.into_boxed_slice(),
            sorted: sorted.into_boxed_slice(),
        })
    }
}

/// A configured endpoint path: absolute, normalised as requests are, not the root, no trailing
/// slash (`/token` and `/token/` would be two paths), bounded.
fn checked_path(key: &str, written: &str) -> Result<String, ConfigError> {
    let fine = written.starts_with('/')
        && written.len() > 1
        && written.len() <= MAX_ENDPOINT_PATH_BYTES
        && !written.ends_with('/')
        && path::normalize(written).as_deref() == Ok(written);
    if !fine {
        return Err(invalid(
            key,
            format!(
                "{written:?} must be a normalised path like \"/token\" (not \"/\", no trailing slash, at most {MAX_ENDPOINT_PATH_BYTES} bytes)"
            ),
        ));
    }
    Ok(written.to_owned())
}

/// The endpoint paths, validated: what stage 4 matches and what every URL the gateway builds
/// to its own endpoints (the login redirect, the sign-in form's action) is made from.
#[derive(Clone, Debug)]
pub struct EndpointPaths {
    /// `""` for a root prefix (no catch-all).
    prefix: Box<str>,
    /// Indexed by [`Endpoint::NAMED`] position.
    by_endpoint: Box<[Box<str>]>,
    /// By path, for the lookup.
    sorted: Box<[(Box<str>, Endpoint)]>,
}

impl EndpointPaths {
    /// The path `endpoint` is served at (`""` for [`Endpoint::Unknown`], which has none).
    pub fn path(&self, endpoint: Endpoint) -> &str {
        self.by_endpoint.get(endpoint as usize).map_or("", |p| &**p)
    }

    /// The prefix whose paths the gateway answers itself; `""` when it is the root and there is
    /// no catch-all.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every endpoint with its path, in [`Endpoint::NAMED`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Endpoint, &str)> {
        Endpoint::NAMED
            .into_iter()
            .zip(self.by_endpoint.iter().map(|p| &**p))
    }

    /// Which of the gateway's endpoints the (normalised) path names, if any: an exact path
    /// first, then anything else under a non-root prefix is [`Endpoint::Unknown`]. No
    /// allocation: it runs on every request.
    pub fn endpoint_for(&self, path: &str) -> Option<Endpoint> {
        if let Ok(at) = self.sorted.binary_search_by(|(p, _)| (**p).cmp(path)) {
            return self.sorted.get(at).map(|(_, e)| *e);
        }
        if self.prefix.is_empty() {
            return None;
        }
        let rest = path.strip_prefix(&*self.prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(Endpoint::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, refusal};

    fn paths(toml: &str) -> EndpointPaths {
        Config::from_toml(toml).unwrap().auth.paths
    }

    #[test]
    fn named_is_all_but_unknown_in_order() {
        for (i, e) in Endpoint::NAMED.into_iter().enumerate() {
            assert_eq!(e as usize, i);
            assert_ne!(e, Endpoint::Unknown);
        }
    }

    #[test]
    fn defaults_are_the_prefix_and_the_well_known_jwks() {
        let p = paths("");
        for (path, endpoint) in [
            ("/auth/token", Endpoint::Token),
            ("/auth/login", Endpoint::Login),
            ("/auth/refresh", Endpoint::Refresh),
            ("/auth/logout", Endpoint::Logout),
            ("/auth/revoke", Endpoint::Revoke),
            ("/auth/me", Endpoint::Me),
            ("/auth/register", Endpoint::Register),
            ("/auth/sign_in", Endpoint::SignIn),
            ("/auth/sign_out", Endpoint::SignOut),
            ("/auth/verify", Endpoint::Verify),
            ("/auth/introspect", Endpoint::Introspect),
            ("/.well-known/jwks.json", Endpoint::Jwks),
            (
                "/.well-known/oauth-authorization-server",
                Endpoint::AuthorizationServerMetadata,
            ),
            (
                "/.well-known/openid-configuration",
                Endpoint::OpenIdConfiguration,
            ),
        ] {
            assert_eq!(p.endpoint_for(path), Some(endpoint), "{path}");
            assert_eq!(p.path(endpoint), path);
        }
        for path in ["/auth", "/auth/", "/auth/nope", "/auth/token/x"] {
            assert_eq!(p.endpoint_for(path), Some(Endpoint::Unknown), "{path}");
        }
        for path in ["/authx", "/api", "/", "/token", "/AUTH/token"] {
            assert_eq!(p.endpoint_for(path), None, "{path}");
        }
    }

    #[test]
    fn a_moved_endpoint_is_served_only_at_its_new_path() {
        let p = paths("[auth.paths]\ntoken = \"/token\"\nme = \"/users/me\"\n");
        assert_eq!(p.endpoint_for("/token"), Some(Endpoint::Token));
        assert_eq!(p.endpoint_for("/users/me"), Some(Endpoint::Me));
        // The old paths fall in the prefix's catch-all: a 404, not a hidden second path.
        assert_eq!(p.endpoint_for("/auth/token"), Some(Endpoint::Unknown));
        assert_eq!(p.endpoint_for("/auth/me"), Some(Endpoint::Unknown));
        assert_eq!(p.endpoint_for("/users"), None);
        assert_eq!(p.endpoint_for("/users/me/x"), None);
        assert_eq!(p.endpoint_for("/auth/login"), Some(Endpoint::Login));
    }

    #[test]
    fn a_root_prefix_has_no_catch_all() {
        for prefix in ["\"\"", "\"/\""] {
            let p = paths(&format!("[auth]\nprefix = {prefix}\n"));
            assert_eq!(p.prefix(), "");
            assert_eq!(p.endpoint_for("/token"), Some(Endpoint::Token), "{prefix}");
            assert_eq!(p.endpoint_for("/sign_in"), Some(Endpoint::SignIn));
            for path in ["/", "/nope", "/token/x", "/auth/token"] {
                assert_eq!(p.endpoint_for(path), None, "{prefix} {path}");
            }
        }
    }

    #[test]
    fn two_endpoints_on_one_path_are_refused() {
        let e = refusal("[auth.paths]\ntoken = \"/auth/login\"\n");
        assert!(
            e.contains("auth.paths.login") && e.contains("auth.paths.token"),
            "{e}"
        );
        let e = refusal("[auth.paths]\nme = \"/x\"\nsign_in = \"/X\"\n");
        assert!(e.contains("auth.paths.sign_in"), "{e}");
    }

    #[test]
    fn the_discovery_documents_stay_at_their_well_known_paths() {
        let p = paths("[auth]\nprefix = \"/\"\n");
        assert_eq!(
            p.endpoint_for("/.well-known/oauth-authorization-server"),
            Some(Endpoint::AuthorizationServerMetadata)
        );
        let e = refusal("[auth.paths]\ntoken = \"/.well-known/openid-configuration\"\n");
        assert!(
            e.contains("auth.paths.token") && e.contains("openid_configuration"),
            "{e}"
        );
        let e = refusal("[auth.paths]\noauth_authorization_server = \"/meta\"\n");
        assert!(e.contains("oauth_authorization_server"), "{e}");
    }

    #[test]
    fn unnormalised_paths_are_refused() {
        for bad in [
            "token",
            "/",
            "",
            "/token/",
            "/a/../token",
            "/a//b",
            "/a?b",
            "/a%2fb",
            "/a b",
        ] {
            let e = refusal(&format!("[auth.paths]\ntoken = {bad:?}\n"));
            assert!(e.contains("auth.paths.token"), "{bad:?}: {e}");
        }
        let long = format!("/{}", "a".repeat(MAX_ENDPOINT_PATH_BYTES));
        let e = refusal(&format!("[auth.paths]\ntoken = {long:?}\n"));
        assert!(e.contains("auth.paths.token"), "{e}");
        // An endpoint the gateway does not have is no key.
        let e = refusal("[auth.paths]\nverfy = \"/v\"\n");
        assert!(e.contains("verfy"), "{e}");
    }
}
