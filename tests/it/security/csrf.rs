//! Cross-site request forgery: a page on another site makes the browser send a state-changing
//! request that carries the gateway's cookie. A `text/plain` form POST needs no CORS preflight,
//! so only the gateway's Origin / `Sec-Fetch-Site` check stands between it and the upstream.

use crate::support::{GatewayBuilder, TestGateway, Upstream, client, route};

async fn setup(extra: &str) -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&route("opt", "/opt", &up.url(), "auth = \"optional\""))
        .and(&format!("[auth]\ncookie = \"gh_token\"\n{extra}"))
        .start()
        .await;
    gw.add_user("alice", "secret", &["user"], &["read"]).await;
    (gw, up)
}

/// The gateway's own origin as a browser on it would send it.
fn own_origin(gw: &TestGateway) -> String {
    gw.url("").trim_end_matches('/').to_owned()
}

async fn post(
    gw: &TestGateway,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> reqwest::StatusCode {
    let mut r = client()
        .post(gw.url(path))
        .header("cookie", format!("gh_token={token}"))
        .header("content-type", "text/plain")
        .body("amount=1000&to=mallory");
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r.send().await.unwrap().status()
}

#[tokio::test]
async fn cross_site_text_plain_post_with_the_token_cookie_never_reaches_the_upstream() {
    let (gw, up) = setup("").await;
    let token = gw.access_token("alice", "secret").await;
    for headers in [
        &[("origin", "https://evil.example")][..],
        &[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        // Sandboxed frames and some redirects send an opaque origin.
        &[("origin", "null")],
        // Another subdomain is same-site: SameSite=Lax lets its requests carry the cookie.
        &[("sec-fetch-site", "same-site")],
        &[("sec-fetch-site", "cross-site")],
        // No header at all: not a browser this check can vouch for.
        &[],
        // The right host over the wrong scheme is another origin.
        &[("origin", &own_origin(&gw).replace("http://", "https://"))],
    ] {
        assert_eq!(
            post(&gw, "/api/transfer", &token, headers).await,
            403,
            "{headers:?}"
        );
        // An optional route would otherwise pass it on with the identity.
        assert_eq!(post(&gw, "/opt/transfer", &token, headers).await, 403);
    }
    up.assert_untouched();
}

#[tokio::test]
async fn same_origin_and_trusted_origin_cookie_posts_and_cross_site_bearer_posts_pass() {
    let (gw, up) = setup("trusted_origins = [\"https://App.example.com:443\"]").await;
    let token = gw.access_token("alice", "secret").await;
    let own = own_origin(&gw);
    assert_eq!(post(&gw, "/api/a", &token, &[("origin", &own)]).await, 200);
    assert_eq!(
        post(&gw, "/api/b", &token, &[("sec-fetch-site", "same-origin")]).await,
        200
    );
    assert_eq!(
        post(
            &gw,
            "/api/c",
            &token,
            &[("origin", "https://app.example.com")]
        )
        .await,
        200
    );
    // A bearer token is put there by a script of the client's own, not by the browser.
    let r = client()
        .post(gw.url("/api/d"))
        .bearer_auth(&token)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Reading is not changing: a cross-site GET with the cookie passes (SameSite decides
    // whether the browser sends it at all).
    let r = client()
        .get(gw.url("/api/e"))
        .header("cookie", format!("gh_token={token}"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Vec<String> = up.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(seen, ["/api/a", "/api/b", "/api/c", "/api/d", "/api/e"]);
}

#[tokio::test]
async fn cross_site_logout_by_cookie_is_refused_and_the_session_lives() {
    let (gw, up) = setup("").await;
    let token = gw.access_token("alice", "secret").await;
    assert_eq!(
        post(
            &gw,
            "/auth/logout",
            &token,
            &[("origin", "https://evil.example")]
        )
        .await,
        403
    );
    let r = client()
        .get(gw.url("/api/still"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the forged logout ended the session");
    assert_eq!(up.seen().len(), 1);
    let r = client()
        .post(gw.url("/auth/logout"))
        .header("cookie", format!("gh_token={token}"))
        .header("origin", own_origin(&gw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a logout from the site itself");
}

#[test]
fn a_trusted_origin_that_is_not_an_origin_is_refused_at_load() {
    for bad in [
        "https://app.example.com/",
        "*",
        "null",
        "https://*.example.com",
    ] {
        let text = format!("[auth]\ntrusted_origins = [{bad:?}]\n");
        let e = gatehouse::config::Config::from_toml(&text).unwrap_err();
        assert!(
            e.to_string().contains("auth.trusted_origins[0]"),
            "{bad}: {e}"
        );
    }
}
