//! CORS through real sockets: preflights answered by the gateway before authentication (never
//! forwarded unless the route says so), refused ones 403 without any `Access-Control-*` header,
//! and the policy's headers on every actual response, the gateway's own refusals included, with
//! whatever the upstream said about CORS removed.

use reqwest::{Method, Response};

use crate::support::{Behaviour, GatewayBuilder, TestGateway, Upstream, client, route};

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";

/// A required-auth route `api` whose CORS policy lets `APP` call it with credentials.
fn api_cors(extra: &str) -> String {
    format!(
        "[routes.cors]\nallow_origins = [\"{APP}\"]\nallow_methods = [\"GET\", \"POST\", \"PUT\"]\nallow_headers = [\"authorization\", \"content-type\"]\nexpose_headers = [\"x-request-id\"]\nmax_age = \"1h\"\nallow_credentials = true\n{extra}"
    )
}

async fn gateway(up: &Upstream, cors_extra: &str, more: &str) -> TestGateway {
    let gw = GatewayBuilder::route("api", "/api", &up.url(), &api_cors(cors_extra))
        .and(&route("plain", "/plain", &up.url(), ""))
        .and(more)
        .start()
        .await;
    gw.add_user("alice", "secret", &["user"], &["read"]).await;
    gw
}

async fn preflight(
    gw: &TestGateway,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> Response {
    let mut r = client()
        .request(Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        r = r.header("access-control-request-headers", headers);
    }
    r.send().await.unwrap()
}

fn header<'r>(r: &'r Response, name: &str) -> Option<&'r str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn access_control(r: &Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn varies_by_origin(r: &Response) -> bool {
    r.headers().get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|f| f.trim().eq_ignore_ascii_case("origin"))
    })
}

#[tokio::test]
async fn a_preflight_on_a_required_auth_route_is_answered_by_the_gateway_and_never_forwarded() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    let r = preflight(&gw, "/api/items", APP, "PUT", "content-type, authorization").await;
    assert_eq!(r.status(), 204, "no token, yet no 401");
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, POST, PUT")
    );
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("content-type, authorization")
    );
    assert_eq!(header(&r, "access-control-max-age"), Some("3600"));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&r, "vary"),
        Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
    );
    assert!(header(&r, "x-request-id").is_some());
    // A route without a CORS policy behaves as before: a preflight there is any OPTIONS.
    let r = preflight(&gw, "/plain/items", APP, "PUT", "").await;
    assert_eq!(r.status(), 401);
    assert!(access_control(&r).is_empty());
    up.assert_untouched();
}

#[tokio::test]
async fn a_preflight_asking_for_a_method_the_route_serves_but_options_it_does_not_is_answered() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route(
        "api",
        "/api",
        &up.url(),
        &format!("methods = [\"PUT\"]\n{}", api_cors("")),
    )
    .start()
    .await;
    let r = preflight(&gw, "/api/items", APP, "PUT", "").await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    up.assert_untouched();
}

#[tokio::test]
async fn a_preflight_on_the_token_endpoint_is_answered_and_the_login_readable() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "",
        &format!("[auth.cors]\nallow_origins = [\"{APP}\"]\nallow_headers = [\"content-type\"]\n"),
    )
    .await;
    let r = preflight(&gw, "/auth/token", APP, "POST", "content-type").await;
    assert_eq!(r.status(), 204, "was 405 before [auth.cors]");
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    let r = client()
        .post(gw.url("/auth/token"))
        .header("origin", APP)
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert!(varies_by_origin(&r));
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    // The JWKS too, and a refused login is readable by the page.
    let r = client()
        .get(gw.url("/.well-known/jwks.json"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    let r = client()
        .post(gw.url("/auth/token"))
        .header("origin", APP)
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    up.assert_untouched();

    // Without [auth.cors] nothing changes: 405, no Access-Control-* header.
    let plain = gateway(&up, "", "").await;
    let r = preflight(&plain, "/auth/token", APP, "POST", "content-type").await;
    assert_eq!(r.status(), 405);
    assert!(access_control(&r).is_empty());
}

#[tokio::test]
async fn a_preflight_from_an_unlisted_origin_or_for_an_unlisted_method_or_header_is_refused_403() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    for (origin, method, headers) in [
        (EVIL, "PUT", ""),
        ("null", "PUT", ""),
        // The allowed host over another scheme is another origin.
        ("http://app.example.com", "GET", ""),
        ("https://app.example.com.evil.example", "GET", ""),
        (APP, "DELETE", ""),
        (APP, "PUT", "authorization, x-admin"),
    ] {
        let r = preflight(&gw, "/api/items", origin, method, headers).await;
        assert_eq!(r.status(), 403, "{origin} {method} {headers}");
        assert!(access_control(&r).is_empty(), "{:?}", r.headers());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "cors_refused");
    }
    up.assert_untouched();
}

#[tokio::test]
async fn unlisted_origin_is_never_reflected_into_allow_origin() {
    let up = Upstream::with(Behaviour::Headers(&[(
        "access-control-allow-origin",
        "https://evil.example",
    )]))
    .await;
    let gw = gateway(&up, "", "").await;
    let token = gw.access_token("alice", "secret").await;
    for origin in [
        EVIL,
        "null",
        "https://app.example.com.evil.example",
        "https://evil.example/https://app.example.com",
    ] {
        let r = client()
            .get(gw.url("/api/items"))
            .bearer_auth(&token)
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(access_control(&r).is_empty(), "{origin}: {:?}", r.headers());
        assert!(varies_by_origin(&r));
    }
    // Two Origin headers are no origin, even with the allowed one among them.
    let r = client()
        .get(gw.url("/api/items"))
        .bearer_auth(&token)
        .header("origin", APP)
        .header("origin", EVIL)
        .send()
        .await
        .unwrap();
    assert!(access_control(&r).is_empty(), "{:?}", r.headers());
    assert_eq!(up.seen().len(), 5);
}

#[tokio::test]
async fn a_401_on_a_cors_route_carries_allow_origin_for_an_allowed_origin() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    let r = client()
        .get(gw.url("/api/items"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(varies_by_origin(&r));
    assert!(header(&r, "www-authenticate").is_some());
    let r = client()
        .get(gw.url("/api/items"))
        .header("origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(access_control(&r).is_empty());
    up.assert_untouched();
}

#[tokio::test]
async fn an_upstreams_own_wildcard_allow_origin_is_stripped_and_replaced() {
    let up = Upstream::with(Behaviour::Headers(&[
        ("access-control-allow-origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-internal"),
        ("vary", "Accept-Encoding"),
    ]))
    .await;
    let gw = gateway(&up, "", "").await;
    let token = gw.access_token("alice", "secret").await;
    let r = client()
        .get(gw.url("/api/items"))
        .bearer_auth(&token)
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let allow: Vec<_> = r
        .headers()
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(allow, [APP]);
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("x-request-id")
    );
    let vary: Vec<_> = r.headers().get_all("vary").iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    // For an origin the policy does not list, the upstream's `*` is not left behind either.
    let r = client()
        .get(gw.url("/api/items"))
        .bearer_auth(&token)
        .header("origin", EVIL)
        .send()
        .await
        .unwrap();
    assert!(access_control(&r).is_empty(), "{:?}", r.headers());
    // On a route without a CORS policy the upstream's headers pass as before.
    let r = client()
        .get(gw.url("/plain/items"))
        .bearer_auth(&token)
        .header("origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn forward_preflight_sends_the_options_to_the_upstream_without_identity() {
    let up = Upstream::with(Behaviour::Headers(&[(
        "access-control-allow-origin",
        "https://app.example.com",
    )]))
    .await;
    let gw = gateway(&up, "forward_preflight = true", "").await;
    let r = client()
        .request(Method::OPTIONS, gw.url("/api/items"))
        .header("origin", APP)
        .header("access-control-request-method", "PUT")
        .header("x-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the upstream's own answer");
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    let seen = up.only();
    assert_eq!(seen.method, "OPTIONS");
    assert_eq!(seen.header("access-control-request-method"), Some("PUT"));
    assert!(seen.headers_like("x-user").is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_credentialed_cookie_post_from_a_cors_origin_with_credentials_passes_and_without_is_refused()
 {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), &api_cors(""))
        .and(&route(
            "reports",
            "/reports",
            &up.url(),
            "[routes.cors]\nallow_origins = [\"https://reports.example.com\"]\nallow_methods = [\"POST\"]",
        ))
        .and("[auth]\ncookie = \"gh_token\"\n")
        .start()
        .await;
    gw.add_user("alice", "secret", &["user"], &["read"]).await;
    let token = gw.access_token("alice", "secret").await;
    let post = |path: &'static str, origin: &'static str| {
        client()
            .post(gw.url(path))
            .header("cookie", format!("gh_token={token}"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .body("{\"amount\":1}")
            .send()
    };
    let r = post("/api/transfer", APP).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "listed with credentials: trusted with the cookie"
    );
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    // Listed without credentials: readable, not trusted to change state with the cookie.
    let r = post("/reports/run", "https://reports.example.com")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "cross_site_request");
    // Trust is per route: APP's credentials on `api` are nothing on `reports`.
    let r = post("/reports/run", APP).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post("/api/transfer", EVIL).await.unwrap();
    assert_eq!(r.status(), 403);
    let seen: Vec<String> = up.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(seen, ["/api/transfer"]);
}

#[tokio::test]
async fn a_cookie_logout_from_an_auth_cors_origin_with_credentials_passes_the_cross_site_check() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "",
        &format!(
            "[auth]\ncookie = \"gh_token\"\n[auth.cors]\nallow_origins = [\"{APP}\"]\nallow_credentials = true\n"
        ),
    )
    .await;
    let token = gw.access_token("alice", "secret").await;
    let logout = |origin: &'static str| {
        client()
            .post(gw.url("/auth/logout"))
            .header("cookie", format!("gh_token={token}"))
            .header("origin", origin)
            .send()
    };
    assert_eq!(logout(EVIL).await.unwrap().status(), 403);
    let r = logout(APP).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
}

#[test]
fn a_wildcard_origin_with_credentials_is_refused_at_load() {
    for text in [
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n[routes.cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n",
        "[auth.cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n",
    ] {
        let e = gatehouse::config::Config::from_toml(text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cors.allow_origins") && e.contains("allow_credentials"),
            "{e}"
        );
    }
}

#[test]
fn routes_explain_shows_the_cors_policy_of_the_chosen_route() {
    let config = gatehouse::config::Config::from_toml(&format!(
        "{}{}\n{}[auth.cors]\nallow_origins = [\"*\"]\n",
        route("api", "/api", "http://127.0.0.1:9", ""),
        api_cors(""),
        route("plain", "/plain", "http://127.0.0.1:9", ""),
    ))
    .unwrap();
    let text = gatehouse::cli::explain(&config, "GET", "http://x.test/api/items").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("cors "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(APP)
            && line.contains("credentials allowed")
            && line.contains("answered by the gateway"),
        "{line}"
    );
    let text = gatehouse::cli::explain(&config, "GET", "http://x.test/plain/items").unwrap();
    assert!(text.contains("cors       none"), "{text}");
    let text = gatehouse::cli::explain(&config, "POST", "http://x.test/auth/token").unwrap();
    assert!(text.contains("cors       origins * (any)"), "{text}");
}
