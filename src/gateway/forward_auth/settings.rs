//! The `[forward_auth]` settings: which peers may ask the forward-auth endpoint for decisions,
//! and how long a fronting proxy may reuse one.

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::value::{ConfigError, RawDuration, invalid, parse_cidrs};

/// Default lifetime of a forward-auth decision in the fronting proxy's cache: none, every
/// request is decided afresh (a revocation is seen at once).
pub const DEFAULT_MAX_AGE: Duration = Duration::ZERO;
/// Longest `max_age` accepted: each second of it is a second in which a fronting proxy may let
/// a logged-out or revoked token through on a cached decision.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(300);

/// The `[forward_auth]` section as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForwardAuth {
    pub trusted_peers: Vec<String>,
    pub max_age: RawDuration,
}

impl Default for RawForwardAuth {
    fn default() -> Self {
        Self {
            trusted_peers: Vec::new(),
            max_age: DEFAULT_MAX_AGE.into(),
        }
    }
}

/// The validated `[forward_auth]` section.
#[derive(Clone, Debug)]
pub struct ForwardAuthConfig {
    /// The fronting proxies (addresses and CIDR blocks) whose requests to `{prefix}/verify` are
    /// answered, and the only peers whose `X-Original-*` / `X-Forwarded-*` headers are read.
    /// Empty: the endpoint is off and answers 404 like an unknown endpoint.
    pub trusted_peers: Vec<IpNet>,
    /// Upper bound of the `max-age` of an allowing decision (also bounded by the token's life).
    pub max_age: Duration,
}

impl ForwardAuthConfig {
    /// Whether the endpoint answers at all.
    pub fn enabled(&self) -> bool {
        !self.trusted_peers.is_empty()
    }
}

impl RawForwardAuth {
    pub fn validate(self) -> Result<ForwardAuthConfig, ConfigError> {
        let trusted_peers = parse_cidrs("forward_auth.trusted_peers", &self.trusted_peers)?;
        let max_age = self.max_age.parse("forward_auth.max_age")?;
        if max_age > MAX_MAX_AGE {
            return Err(invalid(
                "forward_auth.max_age",
                format!(
                    "must be at most {}s: a cached decision outlives a logout by that long",
                    MAX_MAX_AGE.as_secs()
                ),
            ));
        }
        Ok(ForwardAuthConfig {
            trusted_peers,
            max_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, refusal as err};

    #[test]
    fn the_endpoint_is_off_by_default_and_decisions_are_not_cached() {
        let c = Config::from_toml("").unwrap();
        assert!(!c.forward_auth.enabled());
        assert_eq!(c.forward_auth.max_age, DEFAULT_MAX_AGE);
        let c = Config::from_toml(
            "[forward_auth]\ntrusted_peers = [\"10.0.0.7\", \"192.0.2.0/24\", \"::1\"]\nmax_age = \"30s\"\n",
        )
        .unwrap();
        assert!(c.forward_auth.enabled());
        assert_eq!(c.forward_auth.trusted_peers.len(), 3);
        assert_eq!(c.forward_auth.max_age, Duration::from_secs(30));
        let c = Config::from_toml("[forward_auth]\nmax_age = \"5m\"\n").unwrap();
        assert_eq!(c.forward_auth.max_age, MAX_MAX_AGE);
    }

    #[test]
    fn a_bad_peer_or_a_cache_lifetime_over_five_minutes_is_refused() {
        for text in [
            "[forward_auth]\ntrusted_peers = [\"nginx\"]\n",
            "[forward_auth]\ntrusted_peers = [\"10.0.0.0/33\"]\n",
        ] {
            let e = err(text);
            assert!(e.contains("forward_auth.trusted_peers"), "{e}");
        }
        for value in ["\"301s\"", "\"1h\"", "\"soon\""] {
            let e = err(&format!("[forward_auth]\nmax_age = {value}\n"));
            assert!(e.contains("forward_auth.max_age"), "{value}: {e}");
        }
        let e = err("[forward_auth]\ntrusted_proxies = []\n");
        assert!(e.contains("trusted_proxies"), "{e}");
    }
}
