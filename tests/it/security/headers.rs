//! Headers beyond tests/it/verify.rs: `Connection`-nominated identity headers on optional and
//! public routes, `Upgrade: h2c` smuggling, `Proxy-*` and httpoxy, `TE`, and method overrides that
//! must never change which route or which authorisation applies.

use std::time::Duration;

use super::{Recorder, exchange, gateway};
use crate::support::route;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn connection_nominated_identity_headers_on_optional_and_public_routes() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let token = gw.access_token("alice", "secret").await;
    // Nominating the identity headers must neither let the spoofed copies through (they are
    // scrubbed anyway) nor strip what the gateway injects afterwards.
    let cases = [
        ("/opt/with-token", Some(token.as_str()), true),
        ("/opt/without-token", None, false),
        ("/pub/with-token", Some(token.as_str()), false),
        ("/pub/without-token", None, false),
    ];
    for (path, auth, injected) in cases {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close, X-User, x-user-roles, X_User_Scopes, X-Forwarded-For, Forwarded\r\nX-User: mallory\r\nX-User-Roles: admin\r\nX_User_Scopes: write\r\nX-Forwarded-For: 6.6.6.6\r\n"
        );
        if let Some(token) = auth {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
        assert_eq!(out.statuses(), vec![200], "{path}: {}", out.text);
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.target, path);
        let mut identity = seen.identity_headers();
        identity.sort();
        if injected {
            assert_eq!(
                identity,
                vec![
                    ("x-user".into(), "alice".into()),
                    ("x-user-roles".into(), "user".into()),
                    ("x-user-scopes".into(), "read".into()),
                ],
                "{path}"
            );
        } else {
            assert!(identity.is_empty(), "{path}: {identity:?}");
        }
        // The gateway's own forwarding headers survive a nomination of them.
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"), "{path}");
        assert!(
            seen.header("forwarded")
                .is_some_and(|f| f.contains("for=127.0.0.1")),
            "{path}: {:?}",
            seen.headers
        );
    }
}

#[tokio::test]
async fn h2c_upgrade_smuggling_never_switches_protocols() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // h2c smuggling: a proxy that passes `Upgrade: h2c` on lets the client speak HTTP/2 straight to
    // the upstream over the tunnel, past every later check. Variants: the proper handshake, the
    // upgrade nominated without HTTP2-Settings, mixed with websocket, and on protected routes.
    let settings = "AAMAAABkAARAAAAAAAIAAAAA";
    let cases = [
        format!(
            "GET /pub/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: {settings}\r\n\r\n"
        ),
        format!(
            "GET /pub/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: {settings}\r\n\r\n"
        ),
        "GET /pub/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_owned(),
        "GET /pub/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: H2C\r\n\r\n".to_owned(),
        "POST /pub/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n".to_owned(),
        "GET /api/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_owned(),
    ];
    for request in &cases {
        let mut bytes = request.clone();
        bytes.push_str("GET /pub/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = exchange(gw.addr, bytes.as_bytes(), WAIT).await;
        let line = request.lines().next().unwrap_or_default();
        assert!(
            !out.statuses().contains(&101),
            "{line}: switched protocols: {}",
            out.text
        );
        let expected_first = if line.contains("/api/") { 401 } else { 200 };
        assert_eq!(
            out.statuses(),
            vec![expected_first, 200],
            "{line}: the connection must stay HTTP/1.1: {}",
            out.text
        );
    }
    for seen in up.seen() {
        for gone in ["upgrade", "connection"] {
            assert!(
                seen.header(gone).is_none(),
                "{gone} reached the upstream: {seen:#?}"
            );
        }
    }
}

#[tokio::test]
async fn proxy_headers_in_any_spelling_and_httpoxy_never_reach_the_upstream() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // `Proxy:` becomes HTTP_PROXY in CGI-style upstreams, which many HTTP clients then use as their
    // outbound proxy (httpoxy, CVE-2016-5385); the `_` spellings fold to the same variables.
    let request = "GET /pub/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nProxy: http://127.0.0.1:1\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy_Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nProxy_Connection: keep-alive\r\nProxy-Foo: 1\r\nPROXY-BAR: 1\r\nTE: trailers, deflate\r\nTe_: x\r\nKeep-Alive: timeout=600\r\n\r\n";
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    assert_eq!(out.statuses(), vec![200], "{}", out.text);
    let seen = up.only();
    let leaked: Vec<String> = seen
        .folded_names()
        .into_iter()
        .filter(|n| n == "proxy" || n.starts_with("proxy-") || n == "te" || n == "keep-alive")
        .collect();
    assert!(
        leaked.is_empty(),
        "reached the upstream: {leaked:?} in {:?}",
        seen.headers
    );
}

#[tokio::test]
async fn method_override_headers_never_change_routing_or_authorisation() {
    let up = Recorder::start().await;
    // Reading is public, writing needs the admin role: an override that the routing honoured
    // would turn a public GET into a DELETE, or an admin-only POST into a public GET.
    let gw = gateway(
        &up,
        &[
            route(
                "docs-read",
                "/docs",
                &up.url(),
                "auth = \"public\"\nmethods = [\"GET\", \"HEAD\"]",
            ),
            route(
                "docs-write",
                "/docs",
                &up.url(),
                "methods = [\"POST\", \"PUT\", \"DELETE\"]\nrequire_roles = [\"admin\"]",
            ),
        ]
        .join("\n"),
    )
    .await;
    let token = gw.access_token("alice", "secret").await;
    let overrides = [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X-Original-Method",
        "X_HTTP_Method_Override",
        "x.http.method.override",
    ];
    for name in overrides {
        // A write dressed as a read: judged as the POST it is.
        let request = format!(
            "POST /docs/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{name}: GET\r\nContent-Length: 0\r\n\r\n"
        );
        let close = "GET /docs/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
        // A read dressed as a delete: served as the GET it is, and the override never arrives.
        let read = format!("{close}{name}: DELETE\r\n\r\n");
        let out = exchange(gw.addr, format!("{request}{read}").as_bytes(), WAIT).await;
        assert_eq!(out.statuses(), vec![403, 200], "{name}: {}", out.text);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), overrides.len());
    for s in seen {
        assert_eq!(s.method, "GET");
        let leaked: Vec<String> = s
            .folded_names()
            .into_iter()
            .filter(|n| n.contains("method"))
            .collect();
        assert!(leaked.is_empty(), "{leaked:?}");
    }
}
