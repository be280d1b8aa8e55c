//! The sign-in and sign-out pages: server-rendered HTML that works without JavaScript, every
//! interpolated value escaped, served with headers that keep it out of frames and caches. The
//! HTTP handling is [`crate::auth::endpoints`]'s; the work is the grants'.

pub mod return_to;

use std::sync::Arc;

use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderValue};

/// What the sign-in pages need to know about the request, put in its extensions by the
/// pipeline: whether it came over HTTPS (directly or through a trusted proxy), its own host,
/// and the routes' hosts a `return_to` may point at.
#[derive(Clone, Debug, Default)]
pub struct BrowserContext {
    pub secure: bool,
    /// Without port, as the client sent it.
    pub host: String,
    pub route_hosts: Arc<[String]>,
}

/// The one message of a failed sign-in, whatever failed: it never says whether the user exists.
pub const BAD_CREDENTIALS: &str = "Wrong username or password.";
/// The message when a limit or a lockout refused the attempt.
pub const LIMITED: &str = "Too many attempts. Wait a while, then try again.";
/// The message when the gateway could not do the work now.
pub const UNAVAILABLE: &str = "Signing in is not possible right now. Try again shortly.";

/// `Content-Security-Policy` of the pages: nothing loads, nothing runs, no frame holds them.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}\
label{display:block;margin-top:1rem}input{width:100%;padding:.4rem;box-sizing:border-box}\
button{margin-top:1.5rem;padding:.5rem 1rem}.error{color:#a00}";

/// Escapes text for HTML content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} - gatehouse</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <main>\n<h1>gatehouse</h1>\n{body}</main>\n</body>\n</html>\n"
    )
}

/// The sign-in form, posting to `action`, carrying `return_to` (already checked), with `message`
/// above it when a sign-in failed. The username typed is not echoed: the page for an unknown
/// user and for a wrong password is the same byte for byte.
pub fn sign_in_page(action: &str, return_to: &str, message: Option<&str>) -> String {
    let message = match message {
        Some(m) => format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape(m)),
        None => String::new(),
    };
    let body = format!(
        "<h2>Sign in</h2>\n{message}<form method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"return_to\" value=\"{return_to}\">\n\
         <label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" \
         autocapitalize=\"none\" spellcheck=\"false\" maxlength=\"64\" required autofocus>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" maxlength=\"1024\" required>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n",
        action = escape(action),
        return_to = escape(return_to),
    );
    document("Sign in", &body)
}

/// The sign-out page: one button that posts to `action`.
pub fn sign_out_page(action: &str) -> String {
    let body = format!(
        "<h2>Sign out</h2>\n<form method=\"post\" action=\"{}\">\n\
         <button type=\"submit\">Sign out</button>\n</form>\n",
        escape(action)
    );
    document("Sign out", &body)
}

/// The headers every page carries.
pub fn page_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not `no-referrer`: under it the browser sends `Origin: null` with the form's own POST,
    // which the cross-site check must refuse. `same-origin` keeps the origin for this site
    // only and sends nothing to any other.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interpolated_value_is_escaped() {
        let page = sign_in_page(
            "/auth/sign_in",
            "/x\"><script>alert(1)</script>",
            Some("<b>"),
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("&quot;&gt;&lt;script&gt;"), "{page}");
    }

    #[test]
    fn the_form_has_labels_autocomplete_and_the_product_name() {
        let page = sign_in_page("/auth/sign_in", "/", None);
        for part in [
            "<label for=\"username\">",
            "<label for=\"password\">",
            "id=\"username\"",
            "id=\"password\"",
            "autocomplete=\"username\"",
            "autocomplete=\"current-password\"",
            "gatehouse",
            "method=\"post\"",
        ] {
            assert!(page.contains(part), "{part}");
        }
        assert!(!page.contains("<script"));
    }
}
