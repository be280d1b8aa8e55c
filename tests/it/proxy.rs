//! The core proxy: routing, rewriting, header hygiene, forwarding headers, failures, streaming,
//! TLS and shutdown. Routes here are `public` so no token is needed; auth has its own tests.

use std::time::Duration;

use http::StatusCode;

use crate::support::{
    Behaviour, GatewayBuilder, Upstream, client, h2_client, raw, raw_status, route,
};

const PUBLIC: &str = "auth = \"public\"";

#[tokio::test]
async fn routes_by_longest_prefix_on_segment_boundaries() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let gw = GatewayBuilder::route("root", "/api", &a.url(), PUBLIC)
        .and(&route("v1", "/api/v1", &b.url(), PUBLIC))
        .start()
        .await;
    let c = client();
    assert_eq!(
        c.get(gw.url("/api/v1/items"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/api/v10")).send().await.unwrap().status(),
        200
    );
    assert_eq!(b.only().target, "/api/v1/items");
    assert_eq!(a.only().target, "/api/v10");
    // Not on a segment boundary, and no other route: 404, nothing forwarded.
    let r = c.get(gw.url("/apix")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(a.seen().len() + b.seen().len(), 2);
}

#[tokio::test]
async fn routes_by_host_and_method() {
    let (any, api, writes) = (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    );
    let gw = GatewayBuilder::route("any", "/", &any.url(), PUBLIC)
        .and(&route(
            "api",
            "/",
            &api.url(),
            "auth = \"public\"\nhost = \"api.example.com\"",
        ))
        .and(&route(
            "writes",
            "/data",
            &writes.url(),
            "auth = \"public\"\nmethods = [\"POST\"]",
        ))
        .start()
        .await;
    let c = client();
    let r = c
        .get(gw.url("/x"))
        .header("host", "API.example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(api.only().target, "/x");
    c.post(gw.url("/data")).body("x").send().await.unwrap();
    c.get(gw.url("/data")).send().await.unwrap();
    assert_eq!(writes.only().method, "POST");
    assert_eq!(any.only().method, "GET");
}

#[tokio::test]
async fn unmatched_request_gets_404_and_reaches_no_upstream() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), PUBLIC)
        .start()
        .await;
    let r = client().get(gw.url("/admin")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string());
    up.assert_untouched();
}

#[tokio::test]
async fn strip_prefix_and_base_path_build_the_upstream_path() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route(
        "api",
        "/api",
        &format!("{}/base/", up.url()),
        "auth = \"public\"\nstrip_prefix = true",
    )
    .start()
    .await;
    let c = client();
    c.get(gw.url("/api/items/7?q=a%20b&x=1"))
        .send()
        .await
        .unwrap();
    c.get(gw.url("/api")).send().await.unwrap();
    let seen = up.seen();
    assert_eq!(seen[0].target, "/base/items/7?q=a%20b&x=1");
    assert_eq!(seen[1].target, "/base/");
}

#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_forwarded_resolved() {
    let (public, admin) = (Upstream::start().await, Upstream::start().await);
    let gw = GatewayBuilder::route("public", "/public", &public.url(), PUBLIC)
        .and(&route("admin", "/admin", &admin.url(), ""))
        .start()
        .await;
    // Raw bytes: clients normalise paths themselves, attackers do not.
    let out = raw(
        gw.addr,
        b"GET /public/../admin/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    // The path resolves to /admin/users, which needs a token.
    assert_eq!(raw_status(&out), 401, "{out}");
    public.assert_untouched();
    admin.assert_untouched();
    let out = raw(
        gw.addr,
        b"GET /public/a/./b/../c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&out), 200, "{out}");
    assert_eq!(public.only().target, "/public/a/c");
}

#[tokio::test]
async fn malformed_targets_are_rejected_before_any_upstream() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .start()
        .await;
    let cases: &[(&[u8], u16)] = &[
        (b"GET /a%2fb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%5cb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a/%2e%2e/b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a/%252e%252e/b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /admin;x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://evil/a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 405),
        (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
    ];
    for (request, status) in cases {
        let mut bytes = request.to_vec();
        // Close after one response so read_to_end returns.
        let at = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        bytes.splice(at..at, b"\r\nConnection: close".iter().copied());
        let out = raw(gw.addr, &bytes, Duration::from_secs(5)).await;
        let got = if out.is_empty() { 0 } else { raw_status(&out) };
        assert!(
            got == *status || (got == 0 && *status == 400),
            "{:?}: expected {status}, got {out:?}",
            String::from_utf8_lossy(request)
        );
    }
    up.assert_untouched();
}

#[tokio::test]
async fn hop_by_hop_and_connection_nominated_headers_are_removed() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .start()
        .await;
    let out = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret, Keep-Alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9v\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let seen = up.only();
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn forwarding_headers_are_written_by_the_gateway_not_the_client() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .start()
        .await;
    client()
        .get(gw.url("/x"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-real-ip", "6.6.6.6")
        .header("x-original-url", "/admin")
        .header("x-http-method-override", "DELETE")
        .send()
        .await
        .unwrap();
    let seen = up.only();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    let forwarded = seen.header("forwarded").unwrap();
    assert!(
        forwarded.contains("for=127.0.0.1") && !forwarded.contains("6.6.6.6"),
        "{forwarded}"
    );
    for gone in ["x-real-ip", "x-original-url", "x-http-method-override"] {
        assert!(seen.header(gone).is_none(), "{gone} was forwarded");
    }
    assert_eq!(seen.method, "GET");
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended_not_replaced() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .and("[server]\ntrusted_proxies = [\"127.0.0.0/8\"]")
        .start()
        .await;
    client()
        .get(gw.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.only().header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
}

#[tokio::test]
async fn refused_upstream_gives_502_and_other_routes_keep_working() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("dead", "/dead", &format!("http://{dead}"), PUBLIC)
        .and(&route("live", "/live", &up.url(), PUBLIC))
        .start()
        .await;
    let r = client().get(gw.url("/dead/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string());
    assert_eq!(
        client()
            .get(gw.url("/live/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn slow_upstream_gives_504_after_the_route_timeout() {
    let slow = Upstream::with(Behaviour::Delay(Duration::from_secs(30))).await;
    let gw = GatewayBuilder::route(
        "slow",
        "/",
        &slow.url(),
        "auth = \"public\"\ntimeout = \"300ms\"",
    )
    .start()
    .await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn http2_clients_are_proxied() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .start()
        .await;
    let r = h2_client().get(gw.url("/h2?x=1")).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(up.only().target, "/h2?x=1");
}

#[tokio::test]
async fn declared_oversized_body_gets_413_before_reaching_upstream() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .and("[server]\nmax_body_bytes = 1000")
        .start()
        .await;
    let r = client()
        .post(gw.url("/x"))
        .body(vec![0u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    up.assert_untouched();
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .and("[server]\nmax_body_bytes = 100000")
        .start()
        .await;
    let chunks = futures_util::stream::iter(
        (0..50).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 10_000]))),
    );
    let r = client()
        .post(gw.url("/x"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Whatever reached the upstream, it was never more than the limit.
    assert!(up.seen().iter().all(|s| s.body_len <= 100_000));
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let up = Upstream::with(Behaviour::Download(SIZE)).await;
    let gw = GatewayBuilder::route("all", "/", &up.url(), PUBLIC)
        .and(&format!("[server]\nmax_body_bytes = {}", SIZE + 1))
        .start()
        .await;
    let before = resident_bytes();
    // Upload: a generated stream, never held in memory by the client either.
    let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let n = SIZE / chunk.len() as u64;
    let chunks =
        futures_util::stream::iter((0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Download: read frame by frame.
    let mut r = client()
        .get(gw.url("/download"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let mut received = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    let grew = resident_bytes().saturating_sub(before);
    assert_eq!(up.seen()[0].body_len as u64, SIZE);
    assert_eq!(received, SIZE);
    assert!(
        grew < 64 * 1024 * 1024,
        "resident memory grew by {grew} bytes for {SIZE}-byte bodies"
    );
}

#[tokio::test]
async fn graceful_shutdown_completes_an_in_flight_request() {
    let slow = Upstream::with(Behaviour::Delay(Duration::from_millis(800))).await;
    let mut gw = GatewayBuilder::route("slow", "/", &slow.url(), PUBLIC)
        .start()
        .await;
    let url = gw.url("/x");
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.shutdown().await;
    let r = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(r.status(), 200);
    // New connections are refused once the server has returned.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

/// A raw upstream that answers an upgrade with `status_line` and, after a 101, echoes bytes.
async fn upgrade_upstream(
    status_line: &'static str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        s.write_all(status_line.as_bytes()).await.unwrap();
        if status_line.contains(" 101 ") {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(&buf[..n]).await.unwrap();
        }
        head
    });
    (addr, task)
}

const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-User: mallory\r\n\r\n";

#[tokio::test]
async fn websocket_is_tunnelled_after_the_upstream_answers_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, upstream) = upgrade_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .await;
    let gw = GatewayBuilder::route("ws", "/ws", &format!("http://{addr}"), PUBLIC)
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(UPGRADE_REQUEST).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_ne!(s.read(&mut byte).await.unwrap(), 0, "closed before the 101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"hello through the tunnel").await.unwrap();
    let mut echoed = [0u8; 24];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"hello through the tunnel");
    let seen = String::from_utf8_lossy(&upstream.await.unwrap()).to_lowercase();
    assert!(
        seen.contains("upgrade: websocket") && seen.contains("connection: upgrade"),
        "{seen}"
    );
    assert!(
        !seen.contains("mallory"),
        "identity headers must be scrubbed on upgrades too"
    );
}

#[tokio::test]
async fn upgrade_refused_by_the_upstream_opens_no_tunnel() {
    let (addr, _upstream) = upgrade_upstream(
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
    )
    .await;
    let gw = GatewayBuilder::route("ws", "/ws", &format!("http://{addr}"), PUBLIC)
        .start()
        .await;
    let mut request = UPGRADE_REQUEST.to_vec();
    request.truncate(request.len() - 2);
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let out = raw(gw.addr, &request, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&out), 403, "{out}");
    assert!(out.ends_with("no"), "{out}");
}
