//! Stage 9's rewriting of upstream responses that name the upstream's own address: `Location`,
//! `Content-Location` and the URL in `Refresh` are turned into the public address the client
//! used, with the route's path mapping undone, so a browser is never sent around the gateway.
//!
//! An upstream builds absolute URLs from what it was sent: its own authority (unless the route
//! has `preserve_host`) and the path the gateway forwarded. FastAPI, for one, answers `/items`
//! with `307 Location: http://127.0.0.1:9000/items/`. The rule, for each of those headers:
//!
//! - An absolute URL (or a network-path reference `//host/...`, read with the upstream's
//!   scheme) whose origin is the upstream's, compared canonically ([`Origin`]: scheme and host
//!   in any case, default port or none), and whose path is under the upstream's base path
//!   ([`routes::public_path`]) becomes `scheme://host` of the client (the connection's scheme,
//!   or a trusted proxy's `X-Forwarded-Proto`; the `Host` stage 1 checked) with the public path.
//! - An absolute path (`/v1/items/`) under the base path is mapped back the same way and stays
//!   relative, unless the result would read as a network path (`//...`, `/\...`): a browser
//!   would leave the site for it, so it is left as the upstream wrote it.
//! - Anything else (another host, another port or scheme, userinfo, a path outside the base
//!   path, a relative reference without `/`, a value that is not visible ASCII) is left as it is.
//!
//! Responses without any of the three headers cost three header lookups and nothing else.

use http::header::{CONTENT_LOCATION, LOCATION, REFRESH};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::origin::Origin;
use crate::routes::{self, Route};

/// The address the client used to reach the gateway.
#[derive(Clone, Copy, Debug)]
pub struct Public<'a> {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The authority stage 1 checked: the `Host` header, or the HTTP/2 `:authority`.
    pub authority: &'a HeaderValue,
}

/// A route's upstream address and path mapping, built once per route.
#[derive(Clone, Debug)]
pub struct Rewriter {
    route: Route,
    upstream: Origin,
}

/// How a header carries its URL.
#[derive(Clone, Copy)]
enum Carrier {
    /// The whole value is a URI reference (RFC 9110 §10.2.2, §8.7).
    Uri,
    /// `delay; url=URL` (the HTML refresh syntax, which browsers also apply to the header).
    Refresh,
}

const REWRITTEN: [(HeaderName, Carrier); 3] = [
    (LOCATION, Carrier::Uri),
    (CONTENT_LOCATION, Carrier::Uri),
    (REFRESH, Carrier::Refresh),
];

impl Rewriter {
    /// The rewriter of `route`; `None` when the route turned rewriting off (or its upstream host
    /// is no origin host, which validation refuses unless rewriting is off).
    pub fn for_route(route: &Route) -> Option<Self> {
        if !route.rewrite_redirects {
            return None;
        }
        Some(Self {
            upstream: route.upstream.origin()?,
            route: route.clone(),
        })
    }

    /// Rewrites every value of the three headers that names the upstream (see the module docs);
    /// values it cannot read or does not recognise are left untouched.
    pub fn rewrite(&self, headers: &mut HeaderMap, public: &Public<'_>) {
        for (name, carrier) in &REWRITTEN {
            if !crate::proxy::headers::has(headers, name) {
                continue;
            }
            let Ok(authority) = public.authority.to_str() else {
                return;
            };
            if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
                for value in entry.iter_mut() {
                    if let Some(new) = value
                        .to_str()
                        .ok()
                        .and_then(|text| self.value(*carrier, text, public.scheme, authority))
                        .and_then(|text| HeaderValue::from_str(&text).ok())
                    {
                        *value = new;
                    }
                }
            }
        }
    }

    fn value(&self, carrier: Carrier, text: &str, scheme: &str, authority: &str) -> Option<String> {
        match carrier {
            Carrier::Uri => self.url(text, scheme, authority),
            Carrier::Refresh => {
                let (start, end) = refresh_url(text)?;
                let url = self.url(&text[start..end], scheme, authority)?;
                Some(format!("{}{url}{}", &text[..start], &text[end..]))
            }
        }
    }

    /// The public form of the URI reference `url`, or `None` to leave it as it is.
    fn url(&self, url: &str, scheme: &str, authority: &str) -> Option<String> {
        if reads_as_network_path(url) {
            // `/\host` and the like are a browser's quirk, not a reference to judge here.
            let rest = url.strip_prefix("//")?;
            let (origin, after) = split_authority(self.route.upstream.scheme.as_str(), rest)?;
            return self.absolute(origin, after, scheme, authority);
        }
        if url.starts_with('/') {
            let (path, tail) = split_path(url);
            let public = routes::public_path(&self.route, path)?;
            if public == path || reads_as_network_path(&public) {
                return None;
            }
            return Some(public + tail);
        }
        let (url_scheme, rest) = url.split_once("://")?;
        let url_scheme = match url_scheme {
            s if s.eq_ignore_ascii_case("http") => "http",
            s if s.eq_ignore_ascii_case("https") => "https",
            _ => return None,
        };
        let (origin, after) = split_authority(url_scheme, rest)?;
        self.absolute(origin, after, scheme, authority)
    }

    /// `scheme://authority` and the public path, for a URL whose origin and path-and-after are
    /// given, when the origin is the upstream's and the path is under its base path.
    fn absolute(
        &self,
        origin: Origin,
        after: &str,
        scheme: &str,
        authority: &str,
    ) -> Option<String> {
        if origin != self.upstream {
            return None;
        }
        let (path, tail) = split_path(after);
        let public = routes::public_path(&self.route, path)?;
        Some(format!("{scheme}://{authority}{public}{tail}"))
    }
}

/// The origin of `scheme://` + `rest` and what follows its authority (the path, query and
/// fragment); `None` when the authority is not an origin's (userinfo, a bad port, ...).
fn split_authority<'u>(scheme: &str, rest: &'u str) -> Option<(Origin, &'u str)> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // A browser reads `\` as `/` in http(s) URLs: an authority holding one is not ours to judge.
    let authority = &rest[..end];
    if authority.contains('\\') {
        return None;
    }
    let origin = Origin::from_parts(scheme, authority).ok()?;
    Some((origin, &rest[end..]))
}

/// The path of a reference (up to `?` or `#`) and the rest, kept as it was.
fn split_path(url: &str) -> (&str, &str) {
    url.split_at(url.find(['?', '#']).unwrap_or(url.len()))
}

/// Whether a browser would read this reference as a network path (another host): two slashes
/// or backslashes first, once it has dropped the tabs it ignores in URLs.
fn reads_as_network_path(path: &str) -> bool {
    let mut bytes = path.bytes().filter(|&b| b != b'\t');
    matches!(
        (bytes.next(), bytes.next()),
        (Some(b'/' | b'\\'), Some(b'/' | b'\\'))
    )
}

/// The byte range of the URL in a `Refresh` value (`5; url=/x`, `0;URL='/x'`, `5, /x`): after
/// the delay, a `;` or `,`, then optionally `url=` in any case, then the URL, optionally quoted.
/// `None` when the value has no URL.
fn refresh_url(value: &str) -> Option<(usize, usize)> {
    let bytes = value.as_bytes();
    let skip_ws = |mut i: usize| {
        while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let mut i = bytes
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(bytes.len());
    i = skip_ws(i);
    if !matches!(bytes.get(i), Some(b';' | b',')) {
        return None;
    }
    i = skip_ws(i + 1);
    if bytes
        .get(i..i + 3)
        .is_some_and(|word| word.eq_ignore_ascii_case(b"url"))
    {
        let after = skip_ws(i + 3);
        if bytes.get(after) == Some(&b'=') {
            i = skip_ws(after + 1);
        }
    }
    let (start, end) = match bytes.get(i) {
        Some(&quote @ (b'\'' | b'"')) => {
            let start = i + 1;
            let len = bytes[start..].iter().position(|&b| b == quote);
            (start, len.map_or(bytes.len(), |len| start + len))
        }
        _ => (i, value.trim_end().len()),
    };
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::config::Config;

    fn shown(result: Option<String>) -> Cow<'static, str> {
        result.map_or(Cow::Borrowed("(untouched)"), Cow::Owned)
    }

    fn rewriter(upstream: &str, prefix: &str, strip: bool) -> Rewriter {
        let toml = format!(
            "[[routes]]\nname = \"r\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\nstrip_prefix = {strip}\n"
        );
        let config = Config::from_toml(&toml).unwrap();
        Rewriter::for_route(&config.routes[0]).unwrap()
    }

    fn public(r: &Rewriter, url: &str) -> Cow<'static, str> {
        shown(r.url(url, "https", "public.example"))
    }

    #[test]
    fn the_upstreams_own_address_becomes_the_public_one_with_the_path_mapping_inverted() {
        let r = rewriter("http://127.0.0.1:9000/v1", "/api", true);
        for (url, expected) in [
            (
                "http://127.0.0.1:9000/v1/items/",
                "https://public.example/api/items/",
            ),
            (
                "http://127.0.0.1:9000/v1/items?page=2#top",
                "https://public.example/api/items?page=2#top",
            ),
            ("http://127.0.0.1:9000/v1", "https://public.example/api"),
            ("http://127.0.0.1:9000/v1/", "https://public.example/api/"),
            ("http://127.0.0.1:9000/v1?x", "https://public.example/api?x"),
            ("/v1/items/", "/api/items/"),
            ("/v1", "/api"),
            ("/v1/a?next=/v1/b", "/api/a?next=/v1/b"),
            (
                "//127.0.0.1:9000/v1/items/",
                "https://public.example/api/items/",
            ),
        ] {
            assert_eq!(public(&r, url), expected, "{url}");
        }
    }

    #[test]
    fn origins_compare_canonically_in_case_and_default_port() {
        let r = rewriter("http://Backend.internal", "/", false);
        for url in [
            "http://backend.internal/x",
            "HTTP://BACKEND.INTERNAL/x",
            "http://backend.internal:80/x",
            "http://backend.internal./x",
        ] {
            assert_eq!(public(&r, url), "https://public.example/x", "{url}");
        }
        assert_eq!(
            public(&r, "http://backend.internal"),
            "https://public.example/"
        );
        let r = rewriter("https://backend.internal:443", "/", false);
        assert_eq!(
            public(&r, "https://backend.internal/x"),
            "https://public.example/x"
        );
        assert_eq!(public(&r, "http://backend.internal/x"), "(untouched)");
    }

    #[test]
    fn other_ports_schemes_and_hosts_are_left_alone() {
        let r = rewriter("http://127.0.0.1:9000", "/", false);
        for url in [
            "http://127.0.0.1:9001/x",
            "http://127.0.0.1/x",
            "https://127.0.0.1:9000/x",
            "http://127.0.0.2:9000/x",
            "http://login.example.com/x",
            "http://127.0.0.1:9000.evil.com/x",
            "http://127.0.0.1:9000@evil.com/x",
            "http://evil.com@127.0.0.1:9000/x",
            "http://evil.com\\@127.0.0.1:9000/x",
            "http://127.0.0.1:9000\\@evil.com/x",
            "//evil.com/x",
            "ftp://127.0.0.1:9000/x",
            "items/",
            "../x",
            "?q=1",
            "",
            "http:/127.0.0.1:9000/x",
        ] {
            assert_eq!(public(&r, url), "(untouched)", "{url}");
        }
    }

    #[test]
    fn ipv6_literal_upstreams_are_recognised() {
        let r = rewriter("http://[::1]:9000/v1", "/", false);
        assert_eq!(
            public(&r, "http://[::1]:9000/v1/x"),
            "https://public.example/x"
        );
        assert_eq!(public(&r, "http://[::2]:9000/v1/x"), "(untouched)");
        assert_eq!(public(&r, "http://[::1]/v1/x"), "(untouched)");
        let public_v6 = r.url("http://[::1]:9000/v1/x", "http", "[2001:db8::1]:8080");
        assert_eq!(public_v6.as_deref(), Some("http://[2001:db8::1]:8080/x"));
    }

    #[test]
    fn the_base_path_is_matched_on_a_segment_boundary_and_in_its_case() {
        let r = rewriter("http://127.0.0.1:9000/v1", "/api", true);
        for url in [
            "http://127.0.0.1:9000/v10/items",
            "http://127.0.0.1:9000/V1/items",
            "http://127.0.0.1:9000/",
            "http://127.0.0.1:9000/other",
            "/v10/items",
            "/v1.json",
            "/other",
        ] {
            assert_eq!(public(&r, url), "(untouched)", "{url}");
        }
    }

    #[test]
    fn without_a_base_path_or_stripped_prefix_relative_references_stay_as_they_are() {
        let r = rewriter("http://127.0.0.1:9000", "/api", false);
        assert_eq!(public(&r, "/api/items/"), "(untouched)");
        assert_eq!(
            public(&r, "http://127.0.0.1:9000/api/items/"),
            "https://public.example/api/items/"
        );
        let r = rewriter("http://127.0.0.1:9000", "/api", true);
        assert_eq!(public(&r, "/items/"), "/api/items/");
        assert_eq!(public(&r, "/"), "/api/");
    }

    #[test]
    fn relative_redirect_is_never_rewritten_into_a_network_path() {
        let r = rewriter("http://127.0.0.1:9000/v1", "/", false);
        for url in [
            "/v1//evil.com/x",
            "/v1/\\evil.com",
            "/v1/\\/evil.com",
            "/v1/\t/evil.com",
        ] {
            assert_eq!(public(&r, url), "(untouched)", "{url}");
        }
        assert_eq!(public(&r, "/v1/x"), "/x");
        // Absolute, the same path is harmless: the authority comes first.
        assert_eq!(
            public(&r, "http://127.0.0.1:9000/v1//evil.com"),
            "https://public.example//evil.com"
        );
        // What a browser reads as another host is not for us to reinterpret either.
        let r = rewriter("http://127.0.0.1:9000", "/api", true);
        for url in ["/\\evil.com", "/\t/evil.com", "\\\\evil.com"] {
            assert_eq!(public(&r, url), "(untouched)", "{url}");
        }
    }

    #[test]
    fn refresh_urls_are_found_in_every_spelling() {
        let r = rewriter("http://127.0.0.1:9000", "/api", true);
        let refresh = |value: &str| shown(r.value(Carrier::Refresh, value, "https", "p.example"));
        for (value, expected) in [
            (
                "5; url=http://127.0.0.1:9000/x",
                "5; url=https://p.example/api/x",
            ),
            (
                "0;URL=http://127.0.0.1:9000/x",
                "0;URL=https://p.example/api/x",
            ),
            (
                "0; URL = 'http://127.0.0.1:9000/x' ",
                "0; URL = 'https://p.example/api/x' ",
            ),
            ("3, \"/x\"", "3, \"/api/x\""),
            ("3; /x", "3; /api/x"),
            ("1.5; url=/x", "1.5; url=/api/x"),
        ] {
            assert_eq!(refresh(value), expected, "{value}");
        }
        for value in [
            "5",
            "5;",
            "5; url=",
            "5; url=http://evil.example/x",
            "soon; url=/x",
            "5; url='",
        ] {
            assert_eq!(refresh(value), "(untouched)", "{value}");
        }
    }

    #[test]
    fn headers_are_rewritten_in_place_and_unreadable_values_left_as_they_are() {
        let r = rewriter("http://127.0.0.1:9000/v1", "/api", true);
        let mut headers = HeaderMap::new();
        headers.append(
            LOCATION,
            HeaderValue::from_static("http://127.0.0.1:9000/v1/a"),
        );
        headers.append(
            CONTENT_LOCATION,
            HeaderValue::from_static("http://127.0.0.1:9000/v1/b"),
        );
        headers.append(CONTENT_LOCATION, HeaderValue::from_static("/v1/c"));
        headers.append(
            REFRESH,
            HeaderValue::from_bytes(b"0; url=/v1/\xff").unwrap(),
        );
        headers.append(REFRESH, HeaderValue::from_static("0; url=/v1/d"));
        let authority = HeaderValue::from_static("public.example:8443");
        r.rewrite(
            &mut headers,
            &Public {
                scheme: "https",
                authority: &authority,
            },
        );
        let all = |name| {
            headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all(LOCATION), ["https://public.example:8443/api/a"]);
        assert_eq!(
            all(CONTENT_LOCATION),
            ["https://public.example:8443/api/b", "/api/c"]
        );
        assert_eq!(all(REFRESH), ["0; url=/v1/\u{fffd}", "0; url=/api/d"]);
    }

    #[test]
    fn a_route_can_turn_rewriting_off() {
        let toml = "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:9000\"\nrewrite_redirects = false\n";
        let config = Config::from_toml(toml).unwrap();
        assert!(Rewriter::for_route(&config.routes[0]).is_none());
    }
}
