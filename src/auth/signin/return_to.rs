//! Where a browser goes after signing in: only a path on this site, or an absolute URL on one of
//! the configured routes' hosts (or the request's own host). Everything else is `/`, so the
//! sign-in page is never an open redirect.

/// Longest `return_to` kept; a longer one goes to `/`.
pub const MAX_RETURN_TO_BYTES: usize = 2048;

/// Where to send the browser: `raw` when it is safe, else `/`.
///
/// - A relative reference must be an absolute path: starting with one `/` (`//host` is
///   scheme-relative), with no backslash (browsers read `/\host` as `//host`).
/// - An absolute URL must be `http` or `https`, with `//`, no userinfo (`https://ok@evil`), and a
///   host of plain name characters (no percent-encodings) that is `own_host` or in `hosts`.
/// - Only visible ASCII anywhere: tabs and newlines (which browsers strip from URLs, turning
///   `/\t/evil` into `//evil`), spaces, controls and non-ASCII are refused.
pub fn checked<'a>(raw: &'a str, own_host: &str, hosts: &[String]) -> &'a str {
    if is_safe(raw, own_host, hosts) {
        raw
    } else {
        "/"
    }
}

fn is_safe(raw: &str, own_host: &str, hosts: &[String]) -> bool {
    if raw.is_empty()
        || raw.len() > MAX_RETURN_TO_BYTES
        || !raw.bytes().all(|b| (0x21..=0x7e).contains(&b))
        || raw.contains('\\')
    {
        return false;
    }
    if let Some(rest) = raw.strip_prefix('/') {
        return !rest.starts_with('/');
    }
    let lower = raw.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let name_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host = host.trim_end_matches('.');
    name_ok
        && port_ok
        && (host.eq_ignore_ascii_case(own_host)
            || hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> &str {
        checked(raw, "gw.example", &["app.example".to_owned()])
    }

    #[test]
    fn open_redirect_payloads_land_on_the_root() {
        for payload in [
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "http://evil.com/",
            "https:evil.com",
            "https:/evil.com",
            "%2F%2Fevil.com",
            "%2f%2fevil.com",
            "https://gw.example@evil.com",
            "https://user:pass@app.example/",
            "https://evil.com#@app.example",
            "https://app.example.evil.com/",
            "https://evil.com\\@app.example",
            "https://app%2eexample/",
            "/\t/evil.com",
            "/\n/evil.com",
            "\t//evil.com",
            " /x",
            "javascript:alert(1)",
            "data:text/html,x",
            "ftp://app.example/",
            "https://[::1]/",
            "https://app.example:99999999/",
            "",
            "/caf\u{e9}",
        ] {
            assert_eq!(check(payload), "/", "{payload:?}");
        }
        assert_eq!(check(&format!("/{}", "a".repeat(MAX_RETURN_TO_BYTES))), "/");
    }

    #[test]
    fn paths_and_configured_hosts_are_kept() {
        for kept in [
            "/",
            "/app/page?x=1&y=%2F#top",
            "/%2F%2Fevil.com",
            "https://app.example/",
            "https://APP.example:8443/x?y",
            "http://gw.example/home",
            "https://app.example",
        ] {
            assert_eq!(check(kept), kept, "{kept:?}");
        }
    }
}
