//! Browser sessions over real sockets: the sign-in page, the session cookie, its use on the
//! proxy path, silent renewal of the access token behind it, the redirect to sign in, and every
//! way it ends (sign-out, `sessions revoke`, disable), with the attacks it must stop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::StatusCode;
use reqwest::Response;

use crate::support::{GatewayBuilder, TestGateway, Upstream, cli, client, route};

/// How long a revocation made by the CLI may take to reach the gateway (as for API tokens).
const PROPAGATION: Duration = Duration::from_secs(1);

const SESSIONS_ON: &str = "[auth.session]\nenabled = true\n";

struct Browser {
    gw: TestGateway,
    up: Upstream,
    config: PathBuf,
}

/// A gateway with sessions on, `/app` (login_redirect) and `/api`, and the user alice; started
/// from a file so the CLI acts on its store.
async fn browser_gateway(auth: &str) -> Browser {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::new(&route("app", "/app", &up.url(), "login_redirect = true"))
        .and(&route("api", "/api", &up.url(), ""))
        .and(&route("tok", "/tok", &up.url(), "forward_token = true"))
        .and(auth)
        .and(SESSIONS_ON)
        .start_from_file(dir, &config)
        .await;
    gw.add_user("alice", "correct-horse", &["staff"], &["read"])
        .await;
    Browser { gw, up, config }
}

fn own_origin(gw: &TestGateway) -> String {
    format!("http://{}", gw.addr)
}

async fn sign_in(gw: &TestGateway, user: &str, password: &str, return_to: &str) -> Response {
    client()
        .post(gw.url("/auth/sign_in"))
        .header("origin", own_origin(gw))
        .form(&[
            ("username", user),
            ("password", password),
            ("return_to", return_to),
        ])
        .send()
        .await
        .unwrap()
}

/// The `Set-Cookie` header of a response (exactly one).
fn set_cookie(r: &Response) -> String {
    let all: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].to_str().unwrap().to_owned()
}

/// `name=value` of a `Set-Cookie`.
fn cookie_pair(set: &str) -> String {
    set.split(';').next().unwrap().trim().to_owned()
}

async fn signed_in(gw: &TestGateway) -> String {
    let r = sign_in(gw, "alice", "correct-horse", "/app/home").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    cookie_pair(&set_cookie(&r))
}

async fn get_with(gw: &TestGateway, path: &str, cookie: &str) -> Response {
    client()
        .get(gw.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sign_in_page_has_labels_and_a_failure_never_tells_whether_the_user_exists() {
    let b = browser_gateway("").await;
    let r = client()
        .get(b.gw.url("/auth/sign_in?return_to=%2Fapp%2Fx"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "same-origin");
    let page = r.text().await.unwrap();
    for part in [
        "<label for=\"username\">",
        "<label for=\"password\">",
        "autocomplete=\"current-password\"",
        "gatehouse",
        "value=\"/app/x\"",
    ] {
        assert!(page.contains(part), "{part} in {page}");
    }
    let wrong = sign_in(&b.gw, "alice", "wrong-password", "/").await;
    let unknown = sign_in(&b.gw, "nobody", "wrong-password", "/").await;
    assert_eq!(wrong.status(), unknown.status());
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(unknown.headers().get("set-cookie").is_none());
    let (wrong, unknown) = (wrong.bytes().await.unwrap(), unknown.bytes().await.unwrap());
    assert_eq!(wrong, unknown, "the pages must be byte-identical");
    let text = String::from_utf8_lossy(&wrong);
    assert!(text.contains("Wrong username or password."), "{text}");
    b.up.assert_untouched();
}

#[tokio::test]
async fn session_cookie_is_http_only_lax_and_reaches_the_route_as_identity_headers_only() {
    let b = browser_gateway("").await;
    let r = sign_in(&b.gw, "alice", "correct-horse", "/app/home?tab=1").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/app/home?tab=1");
    let set = set_cookie(&r);
    for part in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    // Plain HTTP: no Secure, so no __Host- prefix either.
    assert!(set.starts_with("gatehouse="), "{set}");
    assert!(!set.contains("Secure"), "{set}");
    let cookie = format!("{}; theme=dark", cookie_pair(&set));
    let value = cookie_pair(&set)["gatehouse=".len()..].to_owned();
    assert_eq!(value.len(), 43, "256 random bits, base64url");
    assert_eq!(value.matches('.').count(), 0, "not a JWT");

    let r = get_with(&b.gw, "/api/x", &cookie).await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = b.up.only();
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(seen.header("x-user-roles"), Some("staff"));
    assert_eq!(
        seen.header("cookie"),
        Some("theme=dark"),
        "the session cookie never goes upstream"
    );
    assert!(seen.header("authorization").is_none());
}

#[tokio::test]
async fn session_cookie_is_refused_where_a_refresh_token_is_asked_for() {
    let b = browser_gateway("").await;
    let cookie = signed_in(&b.gw).await;
    let value = &cookie["gatehouse=".len()..];
    for (path, form) in [
        ("/auth/refresh", vec![("refresh_token", value)]),
        (
            "/auth/token",
            vec![("grant_type", "refresh_token"), ("refresh_token", value)],
        ),
    ] {
        let r = client()
            .post(b.gw.url(path))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "{path}");
    }
    // Nor is it an access token.
    let r = client()
        .get(b.gw.url("/api/x"))
        .bearer_auth(value)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And the session still works.
    assert_eq!(get_with(&b.gw, "/api/x", &cookie).await.status(), 200);
}

/// Polls with `cookie` until the gateway refuses it; panics past `limit`.
async fn cookie_refused_within(gw: &TestGateway, cookie: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let status = get_with(gw, "/api/x", cookie).await.status();
        if status == StatusCode::UNAUTHORIZED {
            return start.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            start.elapsed() < limit,
            "the session was still accepted after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sessions_revoke_and_user_disable_end_the_browser_session_within_a_second() {
    let b = browser_gateway("").await;
    b.gw.add_user("bob", "battery-staple", &[], &[]).await;
    let alice = signed_in(&b.gw).await;
    let r = sign_in(&b.gw, "bob", "battery-staple", "/").await;
    let bob = cookie_pair(&set_cookie(&r));
    assert_eq!(get_with(&b.gw, "/api/x", &alice).await.status(), 200);
    assert_eq!(get_with(&b.gw, "/api/x", &bob).await.status(), 200);

    let listed = cli(&b.config, &["sessions", "list", "alice"], None).await;
    assert_eq!(
        listed.lines().count(),
        2,
        "the browser session is listed: {listed}"
    );
    let out = cli(&b.config, &["sessions", "revoke", "alice"], None).await;
    assert!(out.contains("ended 1 sessions"), "{out}");
    cookie_refused_within(&b.gw, &alice, PROPAGATION).await;

    cli(&b.config, &["user", "disable", "bob"], None).await;
    cookie_refused_within(&b.gw, &bob, PROPAGATION).await;
    // Ended for good: no re-mint brings either back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_with(&b.gw, "/api/x", &alice).await.status(), 401);
    assert_eq!(get_with(&b.gw, "/api/x", &bob).await.status(), 401);
}

#[tokio::test]
async fn an_expired_access_token_is_replaced_silently_while_the_session_lives() {
    // Two seconds: the shortest lifetime a held token is handed out in (one second of it is
    // the re-mint margin), so a loaded machine cannot make the first request race the expiry.
    let b = browser_gateway("[auth]\naccess_token_lifetime = \"2s\"\nleeway = \"0s\"\n").await;
    let cookie = signed_in(&b.gw).await;
    assert_eq!(get_with(&b.gw, "/tok/x", &cookie).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(get_with(&b.gw, "/tok/x", &cookie).await.status(), 200);
    let seen = b.up.seen();
    assert_eq!(seen.len(), 2);
    let tokens: Vec<serde_json::Value> = seen
        .iter()
        .map(|s| {
            let bearer = s
                .header("authorization")
                .expect("the route forwards the token");
            crate::support::claims(bearer.strip_prefix("Bearer ").unwrap())
        })
        .collect();
    assert_ne!(tokens[0]["jti"], tokens[1]["jti"], "a new token was minted");
    assert_eq!(tokens[0]["sid"], tokens[1]["sid"], "for the same session");
    assert!(tokens[1]["exp"].as_i64() > tokens[0]["exp"].as_i64());
    assert_eq!(tokens[1]["sub"], "alice");
}

#[tokio::test]
async fn browser_navigation_without_a_session_is_sent_to_sign_in_and_api_calls_get_401() {
    let b = browser_gateway("").await;
    let navigate =
        |path: &str, accept: &str| client().get(b.gw.url(path)).header("accept", accept).send();
    let html = "text/html,application/xhtml+xml,*/*;q=0.8";
    let r = navigate("/app/page?x=1&y=2", html).await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        r.headers()["location"],
        "/auth/sign_in?return_to=%2Fapp%2Fpage%3Fx%3D1%26y%3D2"
    );
    let r = navigate("/app/page", "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    // A route without login_redirect keeps the 401 for browsers too.
    let r = navigate("/api/page", html).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A POST is never redirected.
    let r = client()
        .post(b.gw.url("/app/page"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The redirect's return_to comes back on the form; with a session the page is served.
    let cookie = signed_in(&b.gw).await;
    let r = client()
        .get(b.gw.url("/app/page"))
        .header("accept", html)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(b.up.only().header("x-user"), Some("alice"));
}

#[tokio::test]
async fn open_redirect_through_return_to_lands_on_the_root() {
    let b = browser_gateway("").await;
    for payload in [
        "//evil.com",
        "/\\evil.com",
        "https://evil.com/",
        "https:evil.com",
        "%2F%2Fevil.com",
        "https://127.0.0.1@evil.com/",
        "/\t/evil.com",
    ] {
        let r = sign_in(&b.gw, "alice", "correct-horse", payload).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{payload:?}");
        assert_eq!(r.headers()["location"], "/", "{payload:?}");
        let query = serde_urlencoded::to_string([("return_to", payload)]).unwrap();
        let page = client()
            .get(b.gw.url(&format!("/auth/sign_in?{query}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("name=\"return_to\" value=\"/\""),
            "{payload:?}: {page}"
        );
    }
    // The request's own host is a valid destination.
    let own = format!("http://{}/app/x", b.gw.addr);
    let r = sign_in(&b.gw, "alice", "correct-horse", &own).await;
    assert_eq!(r.headers()["location"], own.as_str());
}

#[tokio::test]
async fn cross_site_post_with_the_session_cookie_is_refused_before_the_upstream() {
    let b = browser_gateway("").await;
    let cookie = signed_in(&b.gw).await;
    let r = client()
        .post(b.gw.url("/api/transfer"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // No Origin and no Sec-Fetch-Site: not shown to be same-origin, refused too.
    let r = client()
        .post(b.gw.url("/api/transfer"))
        .header("cookie", &cookie)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    b.up.assert_untouched();
    let r = client()
        .post(b.gw.url("/api/transfer"))
        .header("cookie", &cookie)
        .header("origin", own_origin(&b.gw))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(b.up.only().header("x-user"), Some("alice"));
}

#[tokio::test]
async fn cross_site_sign_in_and_sign_out_posts_are_refused() {
    let b = browser_gateway("").await;
    // Login CSRF: another site signing the browser in as the attacker.
    let r = client()
        .post(b.gw.url("/auth/sign_in"))
        .header("origin", "http://evil.example")
        .form(&[("username", "alice"), ("password", "correct-horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());
    let cookie = signed_in(&b.gw).await;
    let r = client()
        .post(b.gw.url("/auth/sign_out"))
        .header("origin", "http://evil.example")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(get_with(&b.gw, "/api/x", &cookie).await.status(), 200);
}

#[tokio::test]
async fn stolen_session_cookie_is_dead_after_sign_out() {
    let b = browser_gateway("").await;
    let cookie = signed_in(&b.gw).await;
    let page = get_with(&b.gw, "/auth/sign_out", &cookie).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let page = page.text().await.unwrap();
    assert!(
        page.contains("method=\"post\" action=\"/auth/sign_out\""),
        "{page}"
    );
    // A copy taken before the sign-out (another device, a thief).
    let stolen = cookie.clone();
    let r = client()
        .post(b.gw.url("/auth/sign_out"))
        .header("origin", own_origin(&b.gw))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/auth/sign_in");
    let cleared = set_cookie(&r);
    assert!(cleared.starts_with("gatehouse=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(get_with(&b.gw, "/api/x", &stolen).await.status(), 401);
    let r = client()
        .get(b.gw.url("/app/x"))
        .header("cookie", &stolen)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let listed = cli(&b.config, &["sessions", "list", "alice"], None).await;
    assert_eq!(listed.lines().count(), 1, "no live session left: {listed}");
    b.up.assert_untouched();
}

#[tokio::test]
async fn session_fixation_a_sign_in_never_keeps_the_cookie_the_browser_arrived_with() {
    let b = browser_gateway("").await;
    // A value the attacker got the victim's browser to hold: their own live session.
    let planted = signed_in(&b.gw).await;
    let r = client()
        .post(b.gw.url("/auth/sign_in"))
        .header("origin", own_origin(&b.gw))
        .header("cookie", &planted)
        .form(&[("username", "alice"), ("password", "correct-horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let fresh = cookie_pair(&set_cookie(&r));
    assert_ne!(fresh, planted);
    assert_eq!(get_with(&b.gw, "/api/x", &fresh).await.status(), 200);
    assert_eq!(get_with(&b.gw, "/api/x", &planted).await.status(), 401);
}

#[tokio::test]
async fn sessions_off_by_default_serve_no_sign_in_page() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .start()
        .await;
    let r = client().get(gw.url("/auth/sign_in")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

mod tls {
    use super::*;

    #[tokio::test]
    async fn over_tls_the_cookie_is_secure_and_host_prefixed_and_only_that_name_counts() {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        crate::support::write_private(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        );
        let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
            .and(SESSIONS_ON)
            .and(&format!(
                "[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
                dir.path().display()
            ))
            .start()
            .await;
        gw.add_user("alice", "correct-horse", &[], &[]).await;
        let https = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only([
                reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
            ])
            .build()
            .unwrap();
        let base = format!("https://127.0.0.1:{}", gw.addr.port());
        let r = https
            .post(format!("{base}/auth/sign_in"))
            .header("origin", &base)
            .form(&[("username", "alice"), ("password", "correct-horse")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let set = set_cookie(&r);
        assert!(set.starts_with("__Host-gatehouse="), "{set}");
        for part in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(part), "{part} in {set}");
        }
        assert!(!set.contains("Domain"), "{set}");
        let pair = cookie_pair(&set);
        let get = |cookie: String| {
            https
                .get(format!("{base}/api/x"))
                .header("cookie", cookie)
                .send()
        };
        assert_eq!(get(pair.clone()).await.unwrap().status(), 200);
        // The same value without the prefix may have been planted over HTTP or by a sibling
        // host: over HTTPS it is not a session.
        let unprefixed = pair.trim_start_matches("__Host-").to_owned();
        assert_eq!(get(unprefixed).await.unwrap().status(), 401);
        assert_eq!(up.only().header("x-user"), Some("alice"));
    }
}
