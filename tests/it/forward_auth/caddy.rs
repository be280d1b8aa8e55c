//! The real Caddy (`forward_auth`) in front of an app, asking gatehouse's `/auth/verify`, on the
//! configuration `examples/forward-auth/Caddyfile` that the README shows.
//!
//! Caddy's `copy_headers` sets only the headers gatehouse's answer has (and 2.6 sets the others
//! to their unreplaced placeholder), so a client's own `X-User` would reach the app on any
//! answer without one; the example removes every such header first, and these tests hold it to
//! that.

use std::time::Duration;

use super::front::{self, Front};
use super::{IDENTITY, gateway};
use crate::support::{TestGateway, Upstream, client, raw, raw_status};

/// Caddy from the example, its gatehouse `gw` and its app `app`; `None` when skipped.
async fn caddy(gw: &TestGateway, app: &Upstream) -> Option<Front> {
    let program = front::program("caddy")?;
    let front = Front::start(|port, dir| {
        let site = front::example(
            "Caddyfile",
            &[
                ("\n:80 {", format!("\nhttp://:{port} {{")),
                ("127.0.0.1:8080", gw.addr.to_string()),
                ("127.0.0.1:9000", app.addr.to_string()),
            ],
        );
        // No admin endpoint, no certificates, loopback only, state in the temporary directory.
        let globals = format!(
            "{{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n\tstorage file_system {}\n}}\n",
            dir.join("data").display()
        );
        let file = dir.join("Caddyfile");
        std::fs::write(&file, format!("{globals}{site}")).unwrap();
        let mut command = std::process::Command::new(&program);
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"));
        command
    }, |dir| {
        // Logged once its servers listen.
        std::fs::read_to_string(dir.join("front.log"))
            .is_ok_and(|log| log.contains("serving initial configuration"))
    })
    .await;
    Some(front)
}

/// Every client-sent spelling of an identity header Caddy must not pass on, and a name under the
/// identity prefix that gatehouse never sends.
fn spoofed(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("X-User", "admin")
        .header("x-user-roles", "admin")
        .header("X-User-Scopes", "everything")
        .header("X_User", "admin")
        .header("x.user-roles", "admin")
        .header("X-User-Client", "trusted-client")
}

#[tokio::test]
async fn caddy_lets_an_allowed_request_through_with_the_identity_gatehouse_decided() {
    let (gw, routes) = gateway("").await;
    let app = Upstream::start().await;
    let Some(caddy) = caddy(&gw, &app).await else {
        return;
    };
    let token = gw.access_token("alice", "secret").await;
    let r = spoofed(client().post(caddy.url("/api/items?page=2")))
        .bearer_auth(&token)
        .body("a=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", caddy.log_text());
    let seen = app.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/items?page=2");
    assert_eq!(seen.body_len, 3);
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(seen.header("x-user-roles"), Some("user"));
    assert_eq!(seen.header("x-user-scopes"), Some("read"));
    for name in IDENTITY {
        assert_eq!(seen.headers.get_all(name).iter().count(), 1, "{name}");
    }
    assert_eq!(seen.headers_like("x-user").len(), 3, "{:?}", seen.headers);
    assert_eq!(
        seen.header("authorization"),
        None,
        "the token stays at the proxy"
    );
    routes.assert_untouched();
}

#[tokio::test]
async fn caddy_refuses_what_gatehouse_refuses_and_the_app_never_sees_it() {
    let (gw, routes) = gateway("").await;
    let app = Upstream::start().await;
    let Some(caddy) = caddy(&gw, &app).await else {
        return;
    };
    let r = client().get(caddy.url("/api/items")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"gatehouse\""
    );
    let token = gw.access_token("alice", "secret").await;
    let r = client()
        .delete(caddy.url("/admin/users/7"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a missing role");
    let r = client()
        .get(caddy.url("/nowhere"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no route");
    let out = raw(
        caddy.addr,
        b"GET /public/../admin HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&out), 401, "decided as /admin: {out}");
    app.assert_untouched();
    routes.assert_untouched();
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_app_behind_caddy() {
    let (gw, _routes) = gateway("").await;
    let app = Upstream::start().await;
    let Some(caddy) = caddy(&gw, &app).await else {
        return;
    };
    // A public route: gatehouse's 200 names no identity, so Caddy must send none at all (no
    // client copy, no placeholder).
    let r = spoofed(client().get(caddy.url("/public/page")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", caddy.log_text());
    let seen = app.only();
    assert_eq!(
        seen.headers_like("x-user"),
        Vec::<String>::new(),
        "{:?}",
        seen.headers
    );
    // A client describing another original request in nginx's spelling: Caddy passes it on
    // beside its own X-Forwarded-Uri, and gatehouse decides neither (400).
    let r = client()
        .get(caddy.url("/admin/users"))
        .header("X-Original-URI", "/public/page")
        .header("X-Original-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(app.seen().len(), 1, "the app saw nothing more");
}

#[tokio::test]
async fn a_browser_signs_in_through_caddy_and_reaches_the_app_as_itself() {
    let (gw, routes) = super::browser_gateway().await;
    let app = Upstream::start().await;
    let Some(caddy) = caddy(&gw, &app).await else {
        return;
    };
    super::a_browser_signs_in_through(&caddy, &app).await;
    routes.assert_untouched();
}
