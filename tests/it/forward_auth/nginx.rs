//! The real nginx (`auth_request`) in front of an app, asking gatehouse's `/auth/verify`, on the
//! configuration `examples/forward-auth/nginx.conf` that the README shows.

use std::time::Duration;

use super::front::{self, Front};
use super::{IDENTITY, gateway};
use crate::support::{TestGateway, Upstream, client, raw, raw_status};

/// nginx from the example, its gatehouse `gw` and its app `app`; `None` when skipped.
async fn nginx(gw: &TestGateway, app: &Upstream) -> Option<Front> {
    let program = front::program("nginx")?;
    let front = Front::start(
        |port, dir| {
            let site = front::example(
                "nginx.conf",
                &[
                    ("listen 80;", format!("listen 127.0.0.1:{port};")),
                    ("127.0.0.1:8080", gw.addr.to_string()),
                    ("127.0.0.1:9000", app.addr.to_string()),
                ],
            );
            let d = dir.display();
            let conf = format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/client_body;\n    \
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
             uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{site}\n}}\n"
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut command = std::process::Command::new(&program);
            command
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"]);
            command
        },
        |dir| {
            // nginx writes its pid file once it has bound its listening sockets.
            dir.join("nginx.pid").is_file()
        },
    )
    .await;
    Some(front)
}

/// Every client-sent spelling of an identity header nginx must not pass on.
fn spoofed(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("X-User", "admin")
        .header("x-user-roles", "admin")
        .header("X-User-Scopes", "everything")
        .header("X_User", "admin")
}

#[tokio::test]
async fn nginx_lets_an_allowed_request_through_with_the_identity_gatehouse_decided() {
    let (gw, routes) = gateway("").await;
    let app = Upstream::start().await;
    let Some(nginx) = nginx(&gw, &app).await else {
        return;
    };
    let token = gw.access_token("alice", "secret").await;
    let r = spoofed(client().post(nginx.url("/api/items?page=2")))
        .bearer_auth(&token)
        .body("a=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", nginx.log_text());
    let seen = app.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/items?page=2");
    assert_eq!(
        seen.body_len, 3,
        "the body goes to the app, not to gatehouse"
    );
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
async fn nginx_refuses_what_gatehouse_refuses_and_the_app_never_sees_it() {
    let (gw, routes) = gateway("").await;
    let app = Upstream::start().await;
    let Some(nginx) = nginx(&gw, &app).await else {
        return;
    };
    let r = client().get(nginx.url("/api/items")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"gatehouse\""
    );
    let token = gw.access_token("alice", "secret").await;
    let r = client()
        .get(nginx.url("/admin/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a missing role");
    let r = client()
        .get(nginx.url("/nowhere"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no route");
    // A raw `..` reaches gatehouse as nginx's $request_uri and is decided as /admin.
    let out = raw(
        nginx.addr,
        b"GET /public/../admin HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&out), 401, "{out}");
    app.assert_untouched();
    routes.assert_untouched();
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_app_behind_nginx() {
    let (gw, _routes) = gateway("").await;
    let app = Upstream::start().await;
    let Some(nginx) = nginx(&gw, &app).await else {
        return;
    };
    // A public route: gatehouse's 200 names no identity, so nginx must send none at all.
    let r = spoofed(client().get(nginx.url("/public/page")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", nginx.log_text());
    let seen = app.only();
    assert_eq!(
        seen.headers_like("x-user"),
        Vec::<String>::new(),
        "{:?}",
        seen.headers
    );
    // A client describing another original request in either spelling changes nothing.
    let r = client()
        .get(nginx.url("/admin/users"))
        .header("X-Original-URI", "/public/page")
        .header("X-Forwarded-Uri", "/public/page")
        .header("X-Forwarded-Method", "GET")
        .header("X-Original-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.seen().len(), 1, "the app saw nothing more");
}

#[tokio::test]
async fn a_browser_signs_in_through_nginx_and_reaches_the_app_as_itself() {
    let (gw, routes) = super::browser_gateway().await;
    let app = Upstream::start().await;
    let Some(nginx) = nginx(&gw, &app).await else {
        return;
    };
    super::a_browser_signs_in_through(&nginx, &app).await;
    routes.assert_untouched();
}
