//! Stage 6's refusal of cross-site requests a browser authenticated by itself: a state-changing
//! request whose credential is a cookie must come from the request's own origin or a trusted one.
//!
//! The browser says where a request comes from in `Origin` (sent on every cross-origin request
//! and on every same-origin request but GET and HEAD) and in `Sec-Fetch-Site`; a page cannot set
//! either. `SameSite=Lax` is not enough alone: a same-site page (another subdomain) passes it,
//! and a cookie set without it is sent with a cross-site form POST. A `text/plain` form POST
//! needs no CORS preflight, so this check, not CORS, is what stops it.

use http::header::ORIGIN;
use http::{HeaderMap, HeaderName, Method};

use crate::error::Rejection;
use crate::origin::Origin;

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether a request with `method` changes state (RFC 9110 §9.2.1: only the safe methods
/// don't; CONNECT and TRACE never get this far).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a state-changing cookie-authenticated request that does not show it comes from
/// `own` (the origin the client addressed) or one of `trusted`.
///
/// - With an `Origin`: it must parse and be `own` or trusted (`null`, sent by sandboxed frames
///   and some redirects, is neither).
/// - Without one: `Sec-Fetch-Site: same-origin`. No header at all is refused: every browser
///   this check is for sends `Origin` on such a request, and a client that is not a browser
///   should present a bearer token, not a cookie.
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    own: Option<&Origin>,
    trusted: &[Origin],
) -> Result<(), Rejection> {
    if !changes_state(method) {
        return Ok(());
    }
    let mut origins = headers.get_all(ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (Some(origin), None) => {
            let origin = origin
                .to_str()
                .ok()
                .and_then(|text| Origin::parse(text).ok())
                .ok_or(Rejection::CrossSite)?;
            if own == Some(&origin) || trusted.contains(&origin) {
                Ok(())
            } else {
                Err(Rejection::CrossSite)
            }
        }
        (Some(_), Some(_)) => Err(Rejection::CrossSite),
        (None, _) => {
            let mut sites = headers.get_all(&SEC_FETCH_SITE).iter();
            match (sites.next(), sites.next()) {
                (Some(site), None) if site.as_bytes() == b"same-origin" => Ok(()),
                _ => Err(Rejection::CrossSite),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn verdict(method: Method, pairs: &[(&'static str, &'static str)]) -> bool {
        let own = Origin::parse("https://api.example.com").unwrap();
        let trusted = [Origin::parse("https://app.example.com").unwrap()];
        check(&method, &headers(pairs), Some(&own), &trusted).is_ok()
    }

    #[test]
    fn cross_site_cookie_post_is_refused_same_origin_and_trusted_pass() {
        assert!(!verdict(
            Method::POST,
            &[("origin", "https://evil.example")]
        ));
        assert!(!verdict(
            Method::POST,
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin")
            ]
        ));
        assert!(!verdict(Method::DELETE, &[("origin", "null")]));
        assert!(!verdict(
            Method::PUT,
            &[("origin", "http://api.example.com")]
        ));
        assert!(!verdict(Method::POST, &[]));
        assert!(!verdict(Method::POST, &[("sec-fetch-site", "same-site")]));
        assert!(!verdict(Method::POST, &[("sec-fetch-site", "cross-site")]));
        assert!(!verdict(
            Method::POST,
            &[
                ("origin", "https://api.example.com"),
                ("origin", "https://evil.example")
            ]
        ));
        assert!(verdict(
            Method::POST,
            &[("origin", "https://API.example.com:443")]
        ));
        assert!(verdict(
            Method::PATCH,
            &[("origin", "https://app.example.com")]
        ));
        assert!(verdict(Method::POST, &[("sec-fetch-site", "same-origin")]));
        assert!(verdict(Method::GET, &[("origin", "https://evil.example")]));
        assert!(verdict(Method::HEAD, &[]));
    }
}
