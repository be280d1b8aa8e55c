//! The `[auth.session]` settings: browser sessions (the sign-in page and its cookie), off by
//! default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::value::{ConfigError, RawDuration, invalid};

/// Browser sessions are off unless enabled: the sign-in pages answer 404 and no session cookie
/// is read.
pub const DEFAULT_SESSION_ENABLED: bool = false;
/// Default base name of the session cookie. Over HTTPS it is sent as `__Host-<name>` (the
/// browser then insists on `Secure`, `Path=/` and no `Domain`, so no sibling host can plant or
/// shadow it); over plain HTTP, where `Secure` is impossible, as `<name>` itself.
pub const DEFAULT_SESSION_COOKIE_NAME: &str = "gatehouse";
/// Default time a session may go unused before it ends.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: &str = "1h";
/// Default time from sign-in after which a session ends however busy it is.
pub const DEFAULT_SESSION_LIFETIME: &str = "12h";
/// `idle_timeout` must lie in this range.
pub const SESSION_IDLE_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(7 * 86_400));
/// `lifetime` must lie in this range: a browser session is not meant to outlive a month.
pub const SESSION_LIFETIME_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(30 * 86_400));
/// Longest cookie base name accepted.
const MAX_COOKIE_NAME_BYTES: usize = 64;

/// The `[auth.session]` section as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSession {
    pub enabled: bool,
    pub cookie_name: String,
    pub idle_timeout: RawDuration,
    pub lifetime: RawDuration,
}

impl Default for RawSession {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_SESSION_ENABLED,
            cookie_name: DEFAULT_SESSION_COOKIE_NAME.into(),
            idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT.into(),
            lifetime: DEFAULT_SESSION_LIFETIME.into(),
        }
    }
}

/// The validated `[auth.session]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub enabled: bool,
    /// The base name (see [`DEFAULT_SESSION_COOKIE_NAME`] for the prefix over HTTPS).
    pub cookie_name: String,
    /// `__Host-` and the base name: the name over HTTPS, built once (it is looked up on every
    /// request while sessions are on).
    host_cookie_name: String,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
}

impl SessionConfig {
    /// The cookie's name over HTTPS (`secure`) or plain HTTP. Only that name is read for a
    /// request of that scheme: over HTTPS a cookie without the prefix may have been planted by
    /// another host of the site or over plain HTTP.
    pub fn cookie_for(&self, secure: bool) -> &str {
        if secure {
            &self.host_cookie_name
        } else {
            &self.cookie_name
        }
    }
}

impl RawSession {
    /// `token_cookie` is `[auth] cookie`: the two cookies must not share a name.
    pub fn validate(self, token_cookie: Option<&str>) -> Result<SessionConfig, ConfigError> {
        let name = &self.cookie_name;
        let token_char = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        if name.is_empty()
            || name.len() > MAX_COOKIE_NAME_BYTES
            || !name.bytes().all(token_char)
            || name.to_ascii_lowercase().starts_with("__host-")
            || name.to_ascii_lowercase().starts_with("__secure-")
        {
            return Err(invalid(
                "auth.session.cookie_name",
                "must be 1-64 characters from [A-Za-z0-9._-], without a __Host- or __Secure- \
                 prefix (the gateway adds __Host- over HTTPS)",
            ));
        }
        if token_cookie.is_some_and(|t| t == name || t == format!("__Host-{name}")) {
            return Err(invalid(
                "auth.session.cookie_name",
                "must differ from auth.cookie (the access-token cookie)",
            ));
        }
        let idle_timeout = self.idle_timeout.parse("auth.session.idle_timeout")?;
        let (low, high) = SESSION_IDLE_RANGE;
        if !(low..=high).contains(&idle_timeout) {
            return Err(invalid("auth.session.idle_timeout", "must be 1m to 7d"));
        }
        let lifetime = self.lifetime.parse("auth.session.lifetime")?;
        let (low, high) = SESSION_LIFETIME_RANGE;
        if !(low..=high).contains(&lifetime) {
            return Err(invalid("auth.session.lifetime", "must be 1m to 30d"));
        }
        if idle_timeout > lifetime {
            return Err(invalid(
                "auth.session.idle_timeout",
                "must not exceed auth.session.lifetime",
            ));
        }
        Ok(SessionConfig {
            enabled: self.enabled,
            host_cookie_name: format!("__Host-{}", self.cookie_name),
            cookie_name: self.cookie_name,
            idle_timeout,
            lifetime,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::refusal as err;

    #[test]
    fn session_settings_are_bounded_and_the_cookie_name_is_plain() {
        for (toml, key) in [
            ("cookie_name = \"__Host-x\"", "cookie_name"),
            ("cookie_name = \"a b\"", "cookie_name"),
            ("cookie_name = \"\"", "cookie_name"),
            ("idle_timeout = \"10s\"", "idle_timeout"),
            ("lifetime = \"90d\"", "lifetime"),
            ("idle_timeout = \"2h\"\nlifetime = \"1h\"", "idle_timeout"),
        ] {
            let e = err(&format!("[auth.session]\n{toml}\n"));
            assert!(e.contains(&format!("auth.session.{key}")), "{toml}: {e}");
        }
        let e = err("[auth]\ncookie = \"gatehouse\"\n[auth.session]\nenabled = true\n");
        assert!(e.contains("auth.session.cookie_name"), "{e}");
        let c = crate::config::Config::from_toml("[auth.session]\nenabled = true\n").unwrap();
        assert!(c.auth.session.enabled);
        assert_eq!(c.auth.session.cookie_for(true), "__Host-gatehouse");
        assert_eq!(c.auth.session.cookie_for(false), "gatehouse");
    }

    #[test]
    fn login_redirect_needs_sessions_and_a_route_that_asks_for_credentials() {
        let route = |extra: &str| {
            format!(
                "[[routes]]\nname = \"app\"\npath_prefix = \"/app\"\n\
                 upstream = \"http://127.0.0.1:9\"\nlogin_redirect = true\n{extra}\n"
            )
        };
        let e = err(&route(""));
        assert!(e.contains("routes[app].login_redirect"), "{e}");
        let e = err(&format!(
            "{}[auth.session]\nenabled = true\n",
            route("auth = \"public\"")
        ));
        assert!(e.contains("routes[app].login_redirect"), "{e}");
        let c = crate::config::Config::from_toml(&format!(
            "{}[auth.session]\nenabled = true\n",
            route("")
        ))
        .unwrap();
        assert!(c.routes[0].login_redirect);
    }
}
