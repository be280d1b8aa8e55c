//! Request targets and paths: absolute-, authority- and asterisk-form, missing or duplicate
//! `Host` in HTTP/1.0 and 1.1, and path spellings that one parser reads as `/admin` and another
//! does not (raw non-ASCII, NUL, case, `//`, encoded slashes and backslashes, overlong UTF-8).

use std::time::Duration;

use super::{Recorder, exchange, gateway};
use crate::support::{GatewayBuilder, route};

const WAIT: Duration = Duration::from_secs(5);

/// Sends one raw request with `Connection: close` added, returns the first status (0 when the
/// connection closed without an answer).
async fn status_of(addr: std::net::SocketAddr, head: &[u8]) -> u16 {
    let mut bytes = head.to_vec();
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a request head");
    bytes.splice(at..at, b"\r\nConnection: close".iter().copied());
    let out = exchange(addr, &bytes, WAIT).await;
    out.statuses().first().copied().unwrap_or(0)
}

#[tokio::test]
async fn non_origin_form_targets_are_refused_before_routing() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // Absolute-form would let the client name a host the routing never saw; authority- and
    // asterisk-form belong to CONNECT and server-wide OPTIONS, which the gateway does not proxy.
    let cases: &[&[u8]] = &[
        b"GET http://x/pub/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET https://x/pub/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET HTTP://x/pub/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://127.0.0.1:1/pub/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET //x/pub/a?x=http://y HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET x:80/pub/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST * HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET pub/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://x/pub/a HTTP/1.0\r\nHost: x\r\n\r\n",
    ];
    for request in cases {
        let status = status_of(gw.addr, request).await;
        let line = String::from_utf8_lossy(request);
        // `//x/pub/a` is origin-form with an empty first segment: it normalises to /x/pub/a,
        // which no route covers.
        assert!(
            matches!(status, 400 | 404 | 405 | 0),
            "{line:?}: answered {status}"
        );
    }
    up.assert_untouched();
}

#[tokio::test]
async fn missing_duplicate_or_malformed_host_is_refused_in_http10_and_http11() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let cases: &[&[u8]] = &[
        b"GET /pub/a HTTP/1.0\r\n\r\n",
        b"GET /pub/a HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /pub/a HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: a, b\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: user@x\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: x/admin\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: x y\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: x:99999\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: x:-1\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: [admin.example]\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET /pub/a HTTP/1.1\r\n Host: x\r\n\r\n",
    ];
    let mut served = Vec::new();
    for request in cases {
        let status = status_of(gw.addr, request).await;
        if !matches!(status, 400 | 0) {
            served.push(format!("{:?}: {status}", String::from_utf8_lossy(request)));
        }
    }
    assert!(
        served.is_empty(),
        "invalid Host accepted:\n{}",
        served.join("\n")
    );
    up.assert_untouched();
    // The control: HTTP/1.0 with one Host is served.
    assert_eq!(
        status_of(gw.addr, b"GET /pub/ok HTTP/1.0\r\nHost: x\r\n\r\n").await,
        200
    );
    assert_eq!(up.targets(), ["/pub/ok"]);
}

#[tokio::test]
async fn host_routed_protection_cannot_be_dodged_with_host_spellings() {
    let up = Recorder::start().await;
    // The admin host is protected as a whole; every other host falls through to a public route.
    let gw = GatewayBuilder::route(
        "admin-host",
        "/",
        &up.url(),
        "host = \"admin.example\"\nrequire_roles = [\"admin\"]",
    )
    .and(&route("public", "/", &up.url(), "auth = \"public\""))
    .start()
    .await;
    for host in [
        "admin.example",
        "ADMIN.EXAMPLE",
        "admin.example.",
        "admin.example:80",
        "Admin.Example:8080",
    ] {
        let request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let status = status_of(gw.addr, request.as_bytes()).await;
        assert_eq!(status, 401, "Host: {host}");
    }
    for host in ["admin.example..", "admin.example:80:80"] {
        let request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let status = status_of(gw.addr, request.as_bytes()).await;
        assert!(matches!(status, 400 | 401), "Host: {host}: {status}");
    }
    up.assert_untouched();
}

#[tokio::test]
async fn admin_path_spellings_are_protected_like_admin_or_refused() {
    let up = Recorder::start().await;
    // A public catch-all: any spelling of /admin that escaped the admin route would land here.
    let gw = gateway(&up, &route("catchall", "/", &up.url(), "auth = \"public\"")).await;
    let token = gw.access_token("alice", "secret").await;
    let spellings: &[&[u8]] = &[
        b"/ADMIN/users",
        b"/Admin/users",
        b"/aDmIn",
        b"//admin/users",
        b"///admin/users",
        b"/./admin/users",
        b"/pub/..//admin/users",
        b"/admin//users",
        b"/%61dmin/users",
        b"/%41DMIN/users",
        b"/adm%69n/users",
    ];
    for path in spellings {
        for auth in [None, Some(token.as_str())] {
            let mut request = format!(
                "GET {} HTTP/1.1\r\nHost: x\r\n",
                String::from_utf8_lossy(path)
            );
            if let Some(token) = auth {
                request.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            request.push_str("\r\n");
            let status = status_of(gw.addr, request.as_bytes()).await;
            let expected = if auth.is_some() { 403 } else { 401 };
            assert!(
                status == expected || status == 400,
                "{:?} (token: {}): answered {status}",
                String::from_utf8_lossy(path),
                auth.is_some()
            );
        }
    }
    up.assert_untouched();
    // A prefix that is not on a segment boundary is not /admin: it goes to the catch-all.
    assert_eq!(
        status_of(gw.addr, b"GET /administrator HTTP/1.1\r\nHost: x\r\n\r\n").await,
        200
    );
    assert_eq!(up.targets(), ["/administrator"]);
}

#[tokio::test]
async fn ambiguous_path_bytes_are_refused_not_guessed() {
    let up = Recorder::start().await;
    let gw = gateway(&up, &route("catchall", "/", &up.url(), "auth = \"public\"")).await;
    // Each spelling is /admin (or a way out of /pub) to some upstream or decoder and something
    // else to another; the gateway refuses rather than pick one.
    let paths: &[&[u8]] = &[
        // Raw non-ASCII, including a byte that is not UTF-8 and a Latin-1 'a'.
        b"/pub/\xc3\xa9",
        b"/pub/\xff",
        b"/\xe0dmin",
        // NUL raw and encoded, and other controls.
        b"/admin\x00.css",
        b"/pub/%00/../admin",
        b"/pub/%0d%0aX-User:%20admin",
        b"/pub/%09",
        // Encoded slash and backslash, raw backslash, in several cases.
        b"/pub%2f..%2fadmin",
        b"/pub%2F..%2Fadmin",
        b"/pub/..%2fadmin",
        b"/pub%5c..%5cadmin",
        b"/pub\\..\\admin",
        b"/pub/..\\admin",
        // Encoded and double-encoded dots.
        b"/pub/%2e%2e/admin",
        b"/pub/.%2e/admin",
        b"/pub/%252e%252e/admin",
        b"/pub/%25%32%65%25%32%65/admin",
        // Overlong and look-alike UTF-8 dots and slashes.
        b"/pub/%c0%ae%c0%ae/admin",
        b"/pub/%e0%80%ae%e0%80%ae/admin",
        b"/pub%c0%afadmin",
        b"/pub%e0%80%afadmin",
        b"/pub/%ef%bc%8e%ef%bc%8e/admin",
        b"/pub%ef%bc%8fadmin",
        // Truncated or malformed percent-encoding.
        b"/pub/%",
        b"/pub/%2",
        b"/pub/%zz",
        // Matrix parameters.
        b"/admin;/users",
        b"/pub;x=/../admin",
    ];
    for path in paths {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(path);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let status = status_of(gw.addr, &request).await;
        assert!(
            matches!(status, 400 | 0),
            "{:?}: answered {status}",
            String::from_utf8_lossy(path)
        );
    }
    up.assert_untouched();
}

#[tokio::test]
async fn the_upstream_receives_exactly_the_path_that_was_authorised() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // Spellings that normalise to a public path: the upstream gets the canonical form, so it can
    // never resolve something the gateway did not check.
    let cases: &[(&str, &str)] = &[
        ("//pub//a", "/pub/a"),
        ("/pub/./a/../b", "/pub/b"),
        ("/PUB/a", "/PUB/a"),
        ("/pub/%7euser", "/pub/~user"),
        ("/pub/a%2db", "/pub/a-b"),
        ("/pub/%e2%82%ac", "/pub/%E2%82%AC"),
        ("/pub/a b", ""),
        ("/pub/a?x=/../../admin", "/pub/a?x=/../../admin"),
        // A fragment is not part of the target; the path without it is what is judged and sent.
        ("/pub/a#/../../admin", "/pub/a"),
    ];
    for (sent, forwarded) in cases {
        let before = up.seen().len();
        let request = format!("GET {sent} HTTP/1.1\r\nHost: x\r\n\r\n");
        let status = status_of(gw.addr, request.as_bytes()).await;
        if forwarded.is_empty() {
            assert!(matches!(status, 400 | 0), "{sent:?}: {status}");
            assert_eq!(up.seen().len(), before);
            continue;
        }
        assert_eq!(status, 200, "{sent:?}");
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{sent:?}");
        assert_eq!(seen[before].target, *forwarded, "{sent:?}");
    }
}

/// A public route for one host must not open a longer, protected prefix that names no host:
/// the longest prefix wins whatever the host (issue 20, item 1: this answered 200).
#[tokio::test]
async fn host_specific_public_route_cannot_shadow_a_longer_protected_prefix() {
    let up = Recorder::start().await;
    let gw = GatewayBuilder::route(
        "www",
        "/",
        &up.url(),
        "host = \"www.example.test\"\nauth = \"public\"",
    )
    .and(&route(
        "admin",
        "/admin",
        &up.url(),
        "require_roles = [\"admin\"]",
    ))
    .start()
    .await;
    for host in [
        "www.example.test",
        "WWW.Example.TEST",
        "www.example.test:80",
        "www.example.test.",
        "www.example.test.:8080",
        "other.test",
    ] {
        for target in [
            "/admin/users",
            "/admin",
            "/ADMIN/users",
            "/x/../admin/users",
        ] {
            let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let status = status_of(gw.addr, head.as_bytes()).await;
            assert_eq!(status, 401, "{host} {target}");
        }
    }
    up.assert_untouched();

    // A token without the role is refused by the protected route, not waved through.
    gw.add_user("bob", "pw-bob-1234", &["user"], &[]).await;
    let token = gw.access_token("bob", "pw-bob-1234").await;
    let head = format!(
        "GET /admin/users HTTP/1.1\r\nHost: www.example.test\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    assert_eq!(status_of(gw.addr, head.as_bytes()).await, 403);
    up.assert_untouched();

    // The host's own public route still serves everything else.
    let head = b"GET /about HTTP/1.1\r\nHost: www.example.test\r\n\r\n";
    assert_eq!(status_of(gw.addr, head).await, 200);
    assert_eq!(up.targets(), ["/about"]);
}

/// `routes explain` and the gateway decide stages 1-7 with the same code (`Router::decide`);
/// fed the same hostile targets, they must give the same answer. (They once differed: explain
/// answered 400 for `TRACE /%2e%2e`, the gateway 405.)
#[tokio::test]
async fn routes_explain_and_the_gateway_agree_on_hostile_targets() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let config = gw.gateway.config().clone();
    let cases: &[(&str, &str)] = &[
        ("TRACE", "/%2e%2e"),
        ("TRACE", "/pub/a"),
        ("CONNECT", "/pub/a"),
        ("GET", "/pub/a"),
        ("GET", "/pub/../admin/x"),
        ("GET", "/pub/%2e%2e/admin/x"),
        ("GET", "/pub/%2E%2e/%2e%2E/admin"),
        ("GET", "/pub%2fa"),
        ("GET", "/pub/%2F..%2Fadmin"),
        ("GET", "/pub/a%5c..%5cadmin"),
        ("GET", "/pub/%00"),
        ("GET", "/PUB/a"),
        ("GET", "//pub/a"),
        ("GET", "/pub/./a/"),
        ("GET", "/api/x"),
        ("GET", "/admin"),
        ("GET", "/opt/x"),
        ("GET", "/nothing"),
        ("GET", "/auth/nothing"),
        ("DELETE", "/pub/a/.."),
        ("GET", "/pub/%ff"),
        ("GET", "/pub/%c0%ae%c0%ae/admin"),
    ];
    for &(method, target) in cases {
        let report = gatehouse::cli::explain(&config, method, &format!("http://gw.test{target}"))
            .unwrap_or_else(|e| panic!("{method} {target}: {e:#}"));
        let first = report.lines().next().unwrap_or_default();
        let expected = if let Some(rest) = first.strip_prefix("rejected   ") {
            rest[..3].parse::<u16>().unwrap()
        } else if first.starts_with("no route   404") || first.starts_with("endpoint") {
            // The only endpoint case, /auth/nothing, is the gateway's own 404.
            404
        } else {
            match first.strip_prefix("route      ") {
                Some("pub" | "opt") => 200,
                Some("api" | "admin") => 401,
                _ => panic!("{method} {target}: {report}"),
            }
        };
        let head = format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\n\r\n");
        let status = status_of(gw.addr, head.as_bytes()).await;
        assert_eq!(
            status, expected,
            "{method} {target}: gateway {status}, explain: {report}"
        );
    }
}
