//! The forward-auth endpoint `/auth/verify`, asked directly the way a fronting proxy asks it:
//! the original request described by `X-Forwarded-*` (Traefik, Caddy) or `X-Original-*` (nginx)
//! headers, decided by the proxy path's own stages, answered 200 with identity headers or
//! refused. The gateway's route upstream must never be reached: the endpoint decides, it does
//! not forward. `nginx` and `caddy` put the real servers in front.

mod caddy;
mod front;
mod nginx;

use std::time::Duration;

use reqwest::RequestBuilder;

use crate::support::{GatewayBuilder, TestGateway, Upstream, client, raw, raw_status};

/// The identity headers of the default `[auth.identity_headers]`.
const IDENTITY: [&str; 3] = ["x-user", "x-user-roles", "x-user-scopes"];

/// Routes `/api` (any user), `/admin` (role admin), `/public`, all to `up`; the endpoint on
/// for 127.0.0.1 with `extra` appended.
fn builder(up: &Upstream, extra: &str) -> GatewayBuilder {
    GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&crate::support::route(
            "admin",
            "/admin",
            &up.url(),
            "require_roles = [\"admin\"]",
        ))
        .and(&crate::support::route(
            "public",
            "/public",
            &up.url(),
            "auth = \"public\"",
        ))
        .and(extra)
}

async fn gateway(extra: &str) -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = builder(
        &up,
        &format!("[forward_auth]\ntrusted_peers = [\"127.0.0.1\"]\nmax_age = \"5m\"\n{extra}"),
    )
    .start()
    .await;
    gw.add_user("alice", "secret", &["user"], &["read"]).await;
    gw.add_user("root", "secret", &["admin", "user"], &["read", "write"])
        .await;
    (gw, up)
}

/// A question about `method uri` in the Traefik/Caddy spelling.
fn ask(gw: &TestGateway, method: &str, uri: &str) -> RequestBuilder {
    ask_with(&client(), gw, method, uri)
}

fn ask_with(client: &reqwest::Client, gw: &TestGateway, method: &str, uri: &str) -> RequestBuilder {
    client
        .get(gw.url("/auth/verify"))
        .header("x-forwarded-method", method)
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-host", "app.example.test")
        .header("x-forwarded-proto", "https")
}

fn identity_of(response: &reqwest::Response) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-user"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    found.sort();
    found
}

fn max_age(response: &reqwest::Response) -> u64 {
    let value = response.headers()["cache-control"].to_str().unwrap();
    value
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("cache-control {value}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_allowed_request_answers_200_with_the_identity_the_proxy_path_injects() {
    let (gw, up) =
        gateway("[auth.identity_headers.claims]\n\"x-user-client\" = \"client_id\"\n").await;
    let token = gw.access_token("alice", "secret").await;
    let r = ask(&gw, "GET", "/api/items?page=2")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answered = identity_of(&r);
    assert_eq!(r.headers()["vary"], "Authorization, Cookie, Accept");
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private, max-age=")
    );
    assert_eq!(r.bytes().await.unwrap().len(), 0, "the body is empty");
    up.assert_untouched();

    // Exactly what the proxy path injects for the same request.
    let proxied = client()
        .get(gw.url("/api/items?page=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    let seen = up.only();
    let mut injected: Vec<(String, String)> = IDENTITY
        .iter()
        .chain(&["x-user-client"])
        .filter_map(|name| seen.header(name).map(|v| (name.to_string(), v.to_owned())))
        .collect();
    injected.sort();
    assert_eq!(answered, injected);
    let names: Vec<&str> = answered.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["x-user", "x-user-client", "x-user-roles", "x-user-scopes"],
        "claim mappings included"
    );
    assert_eq!(answered[0].1, "alice");
    assert_eq!(answered[2].1, "user");
    assert_eq!(answered[3].1, "read");

    // nginx's spelling, HEAD too.
    let r = client()
        .head(gw.url("/auth/verify"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/admin/users")
        .header("x-original-host", "app.example.test")
        .bearer_auth(gw.access_token("root", "secret").await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user"], "root");
    assert_eq!(r.headers()["x-user-roles"], "admin,user");
}

#[tokio::test]
async fn no_token_answers_401_with_the_bearer_challenge_and_is_never_cached() {
    let (gw, up) = gateway("").await;
    let r = ask(&gw, "GET", "/api/items").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"gatehouse\""
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["vary"], "Authorization, Cookie, Accept");
    assert!(identity_of(&r).is_empty());
    let r = ask(&gw, "GET", "/api/items")
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    up.assert_untouched();
}

#[tokio::test]
async fn a_missing_role_answers_403() {
    let (gw, up) = gateway("").await;
    let token = gw.access_token("alice", "secret").await;
    let r = ask(&gw, "DELETE", "/admin/users/7")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(identity_of(&r).is_empty(), "a refusal carries no identity");
    assert_eq!(r.headers()["cache-control"], "no-store");
    up.assert_untouched();
}

#[tokio::test]
async fn a_uri_no_route_takes_is_403_never_404() {
    let (gw, up) = gateway("").await;
    let token = gw.access_token("root", "secret").await;
    for uri in ["/elsewhere", "/apix", "/", "/auth/no-such-endpoint"] {
        let r = ask(&gw, "GET", uri)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{uri}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{uri}");
    }
    // The gateway's own endpoints are public: allowed, with no identity.
    let r = ask(&gw, "POST", "/auth/token")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(identity_of(&r).is_empty());
    up.assert_untouched();
}

#[tokio::test]
async fn a_public_route_is_allowed_with_no_identity_headers() {
    let (gw, up) = gateway("").await;
    let token = gw.access_token("root", "secret").await;
    for with_token in [false, true] {
        let mut question = ask(&gw, "GET", "/public/page");
        if with_token {
            question = question.bearer_auth(&token);
        }
        let r = question.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(identity_of(&r).is_empty(), "{:?}", r.headers());
        // No token to outlive: the configured lifetime bounds it alone.
        assert_eq!(max_age(&r), 300);
    }
    up.assert_untouched();
}

/// The endpoint must not take a description of the original request from just anyone: a client
/// reaching it directly could otherwise ask about a public URI and get a 200 to replay, or make
/// the gateway decide a request it will never see.
#[tokio::test]
async fn forged_original_uri_from_an_untrusted_peer_is_not_believed() {
    let (gw, up) = gateway("").await;
    // 127.0.0.2 is loopback too on Linux, and not in trusted_peers (127.0.0.1).
    let outsider = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = ask_with(&outsider, &gw, "GET", "/public/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "untrusted_peer");
    // Headers that would be a 400 if read: still 403, so they were not read.
    let r = ask_with(&outsider, &gw, "GET", "/public/page")
        .header("x-forwarded-uri", "/other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    up.assert_untouched();
}

#[tokio::test]
async fn the_endpoint_is_off_without_trusted_peers() {
    let up = Upstream::start().await;
    let gw = builder(&up, "").start().await;
    let r = client()
        .get(gw.url("/auth/verify"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/public/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (gw, _up) = gateway("").await;
    let r = client()
        .post(gw.url("/auth/verify"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/public/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "only GET and HEAD ask");
    up.assert_untouched();
}

/// Two descriptions of one request: one from the fronting proxy, one a client slipped in. The
/// gateway cannot tell which the proxy will act on, so it decides neither.
#[tokio::test]
async fn a_duplicated_x_forwarded_uri_is_refused_400() {
    let (gw, up) = gateway("").await;
    let r = ask(&gw, "GET", "/admin/users")
        .header("x-forwarded-uri", "/public/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error_description"], "more than one X-Forwarded-Uri");
    let r = ask(&gw, "GET", "/admin/users")
        .header("x-original-uri", "/public/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "both spellings name the URI");
    let r = client()
        .get(gw.url("/auth/verify"))
        .header("x-forwarded-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no URI at all");
    up.assert_untouched();
}

/// A fronting proxy caching a decision must not keep using it after the token has expired.
#[tokio::test]
async fn a_cached_decision_never_outlives_the_token() {
    let (gw, _up) = gateway("[auth]\naccess_token_lifetime = \"20s\"\n").await;
    let token = gw.access_token("alice", "secret").await;
    let r = ask(&gw, "GET", "/api/items")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let age = max_age(&r);
    assert!(
        (18..=20).contains(&age),
        "max-age {age} beyond the token's 20 s"
    );
    // With the configured lifetime the shorter: it.
    let (gw, _up) = gateway("").await;
    let token = gw.access_token("alice", "secret").await;
    let r = ask(&gw, "GET", "/api/items")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(max_age(&r), 300);
}

#[tokio::test]
async fn decisions_are_not_cached_by_default() {
    let up = Upstream::start().await;
    let gw = builder(&up, "[forward_auth]\ntrusted_peers = [\"127.0.0.1\"]\n")
        .start()
        .await;
    let r = ask(&gw, "GET", "/public/x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(max_age(&r), 0);
}

/// A client's own `X-User` on the question (nginx and Caddy pass the client's headers to the
/// auth request) must not come back as the identity to inject.
#[tokio::test]
async fn a_spoofed_identity_header_on_the_question_is_not_echoed_back_as_identity() {
    let (gw, up) = gateway("").await;
    let spoof = |b: RequestBuilder| {
        b.header("x-user", "admin")
            .header("X_User_Roles", "admin")
            .header("x-user-scopes", "everything")
    };
    let r = spoof(ask(&gw, "GET", "/public/page")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(identity_of(&r).is_empty(), "{:?}", r.headers());
    let token = gw.access_token("alice", "secret").await;
    let r = spoof(ask(&gw, "GET", "/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user"], "alice");
    assert_eq!(r.headers()["x-user-roles"], "user");
    assert_eq!(r.headers()["x-user-scopes"], "read");
    assert!(!r.headers().contains_key("x_user_roles"));
    // And a forged identity does not authenticate.
    let r = spoof(ask(&gw, "GET", "/admin/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    up.assert_untouched();
}

/// `X-Original-URI` is the raw `$request_uri`: the decision normalises it exactly like the proxy
/// path, so `/public/../admin` is decided as `/admin`, not waved through as public.
#[tokio::test]
async fn dot_segments_in_the_original_uri_are_decided_as_the_path_they_resolve_to() {
    let (gw, up) = gateway("").await;
    let question = |uri: &str, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "GET /auth/verify HTTP/1.1\r\nHost: gatehouse\r\nX-Original-Method: GET\r\nX-Original-URI: {uri}\r\nX-Original-Host: app.example.test\r\n{auth}Connection: close\r\n\r\n"
        )
    };
    for uri in [
        "/public/../admin",
        "/public/./../admin/x",
        "//public/..//admin/",
    ] {
        let out = raw(
            gw.addr,
            question(uri, None).as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(raw_status(&out), 401, "{uri}: {out}");
    }
    let token = gw.access_token("alice", "secret").await;
    let out = raw(
        gw.addr,
        question("/public/../admin", Some(&token)).as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&out), 403, "alice is no admin: {out}");
    // What the proxy path refuses as ambiguous, so does the decision.
    for uri in [
        "/public/%2e%2e/admin",
        "/public/%2fadmin",
        "/public/..%5cadmin",
        "http://evil.example/public",
    ] {
        let out = raw(
            gw.addr,
            question(uri, None).as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(raw_status(&out), 400, "{uri}: {out}");
    }
    up.assert_untouched();
}

/// The decision includes the cross-site check: a cookie-authenticated POST from another site is
/// refused through forward-auth exactly as on the proxy path.
#[tokio::test]
async fn a_cross_site_cookie_post_is_refused_through_forward_auth_too() {
    let (gw, up) = gateway("[auth]\ncookie = \"gh_token\"\n").await;
    let token = gw.access_token("alice", "secret").await;
    let post = |origin: &str| {
        ask(&gw, "POST", "/api/items")
            .header("cookie", format!("gh_token={token}"))
            .header("origin", origin.to_owned())
    };
    let r = post("https://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "cross_site_request");
    // The original's own origin is its scheme (X-Forwarded-Proto) and host (X-Forwarded-Host).
    let r = post("https://app.example.test").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user"], "alice");
    let r = post("http://app.example.test").send().await.unwrap();
    assert_eq!(r.status(), 403, "another scheme is another origin");
    up.assert_untouched();
}

/// A gateway whose `/app` route sends browsers without a session to the sign-in page.
async fn browser_gateway() -> (TestGateway, Upstream) {
    gateway(&format!(
        "{}\n[auth.session]\nenabled = true\n",
        crate::support::route("app", "/app", "http://127.0.0.1:9", "login_redirect = true")
    ))
    .await
}

/// The browser flow through a fronting proxy `front` (from the example files) to its app `app`:
/// an API call keeps the 401 and challenge; a browser is sent to the sign-in page, which the
/// proxy serves from gatehouse, signs in there and reaches the app as itself; the question
/// endpoint is closed to clients.
async fn a_browser_signs_in_through(front: &front::Front, app: &Upstream) {
    let page = front.url("/app/page?x=1");
    let r = client()
        .get(&page)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{}", front.log_text());
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"gatehouse\""
    );
    assert!(!r.headers().contains_key("location"));
    let r = client()
        .get(&page)
        .header("accept", NAVIGATION)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{}", front.log_text());
    // Relative from Caddy (gatehouse's own), made absolute by nginx's `return`.
    let location = r.headers()["location"].to_str().unwrap();
    assert!(location.ends_with(SIGN_IN), "{location}");
    let form = client().get(front.url(SIGN_IN)).send().await.unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("name=\"password\""));
    let r = client()
        .post(front.url("/auth/sign_in"))
        .header("origin", format!("http://{}", front.addr))
        .form(&[
            ("username", "alice"),
            ("password", "secret"),
            ("return_to", "/app/page?x=1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", front.log_text());
    assert_eq!(r.headers()["location"], "/app/page?x=1");
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let r = client()
        .get(&page)
        .header("accept", NAVIGATION)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", front.log_text());
    let seen = app.only();
    assert_eq!(seen.target, "/app/page?x=1");
    assert_eq!(seen.header("x-user"), Some("alice"));
    for (method, uri) in [
        ("x-original-method", "x-original-uri"),
        ("x-forwarded-method", "x-forwarded-uri"),
    ] {
        let r = client()
            .get(front.url("/auth/verify"))
            .header(method, "GET")
            .header(uri, "/app/page")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "clients ask the proxy's questions through it"
        );
    }
}

const NAVIGATION: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const SIGN_IN: &str = "/auth/sign_in?return_to=%2Fapp%2Fpage%3Fx%3D1";

#[tokio::test]
async fn a_browser_without_a_session_is_sent_to_sign_in_in_the_form_each_caller_carries_out() {
    let (gw, _up) = browser_gateway().await;
    // Traefik and Caddy hand the refusal to the browser as it is: a redirect.
    let r = ask(&gw, "GET", "/app/page?x=1")
        .header("accept", NAVIGATION)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], SIGN_IN);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["vary"], "Authorization, Cookie, Accept");
    // nginx passes only 2xx, 401 and 403: a 401 naming the page, for its error_page.
    let r = client()
        .get(gw.url("/auth/verify"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/app/page?x=1")
        .header("x-original-host", "app.example.test")
        .header("accept", NAVIGATION)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-gatehouse-login"], SIGN_IN);
    assert!(r.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn an_api_call_without_a_session_keeps_the_401_so_no_proxy_loops_a_script() {
    let (gw, _up) = browser_gateway().await;
    for nginx in [false, true] {
        for (method, accept) in [
            ("GET", "application/json"),
            ("POST", NAVIGATION),
            ("GET", "*/*"),
        ] {
            let request = if nginx {
                client()
                    .get(gw.url("/auth/verify"))
                    .header("x-original-method", method)
                    .header("x-original-uri", "/app/page?x=1")
            } else {
                ask(&gw, method, "/app/page?x=1")
            };
            let r = request.header("accept", accept).send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {accept} nginx={nginx}");
            assert!(r.headers().contains_key("www-authenticate"));
            assert!(!r.headers().contains_key("x-gatehouse-login"));
            assert!(!r.headers().contains_key("location"));
        }
    }
}
