//! Web origins (RFC 6454): `scheme://host[:port]` parsed and compared in one canonical form, for
//! the configured trusted origins and the `Origin` header alike.

use std::fmt;

/// Longest origin accepted; a browser's is far shorter (a 253-byte host and a port).
pub const MAX_ORIGIN_BYTES: usize = 300;

/// An `http` or `https` origin in canonical form: scheme and host in lower case, the scheme's
/// default port dropped. Two origins are the same origin exactly when they are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin(String);

/// Why a text is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("longer than {MAX_ORIGIN_BYTES} bytes")]
    TooLong,
    #[error("the scheme must be http or https")]
    Scheme,
    #[error("an origin is scheme://host[:port], with no path, query, userinfo or wildcard")]
    Form,
    #[error("the port must be a number from 1 to 65535")]
    Port,
}

impl Origin {
    /// Parses an origin as configured or as a browser sends it. `null` (an opaque origin) and
    /// anything with a path, userinfo, wildcard or percent-encoding is refused.
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        if text.len() > MAX_ORIGIN_BYTES {
            return Err(OriginError::TooLong);
        }
        let (scheme, rest) = text.split_once("://").ok_or(OriginError::Form)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(OriginError::Scheme);
        }
        Self::from_parts(&scheme, rest)
    }

    /// The origin a request addressed: its scheme and its `Host` (`host[:port]`).
    pub fn from_parts(scheme: &str, authority: &str) -> Result<Self, OriginError> {
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return Err(OriginError::Scheme),
        };
        let (host, port) = split_authority(authority)?;
        let host_ok = if host.starts_with('[') {
            host.len() > 2
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        if !host_ok {
            return Err(OriginError::Form);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(OriginError::Form);
        }
        Ok(match port {
            Some(port) if port != default_port => Origin(format!("{scheme}://{host}:{port}")),
            _ => Origin(format!("{scheme}://{host}")),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `host[:port]` into the host (an IPv6 literal keeps its brackets) and the port, if any.
fn split_authority(authority: &str) -> Result<(&str, Option<u16>), OriginError> {
    let colon = match authority.rfind(']') {
        Some(close) => authority[close..].find(':').map(|i| close + i),
        None => authority.rfind(':'),
    };
    let Some(colon) = colon else {
        return Ok((authority, None));
    };
    let digits = &authority[colon + 1..];
    if digits.is_empty() {
        return Ok((&authority[..colon], None));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OriginError::Port);
    }
    match digits.parse::<u16>() {
        Ok(port) if port > 0 => Ok((&authority[..colon], Some(port))),
        _ => Err(OriginError::Port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_in_canonical_form() {
        for (text, canonical) in [
            ("https://App.Example.com", "https://app.example.com"),
            ("https://app.example.com:443", "https://app.example.com"),
            ("HTTP://app.example.com:80", "http://app.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("https://example.com.", "https://example.com"),
        ] {
            assert_eq!(Origin::parse(text).unwrap().as_str(), canonical, "{text}");
        }
        assert_eq!(
            Origin::from_parts("https", "App.example.com:443").unwrap(),
            Origin::parse("https://app.example.com").unwrap()
        );
    }

    #[test]
    fn what_is_not_an_origin_is_refused() {
        for text in [
            "null",
            "",
            "app.example.com",
            "ftp://example.com",
            "https://",
            "https://example.com/",
            "https://example.com/path",
            "https://user@example.com",
            "https://*.example.com",
            "*",
            "https://example.com:0",
            "https://example.com:65536",
            "https://example.com:x",
            "https://exa%6dple.com",
            "https://[::1",
            "https://[nothost]",
            "https://example.com?q",
            "https://example.com#f",
            "https://ex ample.com",
        ] {
            assert!(Origin::parse(text).is_err(), "{text:?} was accepted");
        }
        assert!(Origin::parse(&format!("https://{}", "a".repeat(400))).is_err());
    }
}
