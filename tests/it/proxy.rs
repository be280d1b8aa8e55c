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

/// An upstream that is down fails every request: each answers in the JSON error shape, and the
/// log says so once per burst (route, address, cause), not once per request.
#[tokio::test]
async fn a_refused_upstream_is_logged_once_per_burst_and_every_answer_is_json() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[auth]\nkeys_dir = \"{data}/keys\"\n[store]\npath = \"{data}/db\"\n{}",
            route("down", "/down", &format!("http://{dead}"), PUBLIC)
        ),
    )
    .unwrap();
    let gw = tokio::task::spawn_blocking(move || crate::support::serve_binary(&file))
        .await
        .unwrap();
    let http = client();
    for _ in 0..50 {
        let r = http
            .get(format!("http://{}/down/x", gw.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "upstream_unreachable", "{body}");
        assert!(body["error_description"].is_string(), "{body}");
    }
    // The access lines of all 50 requests are out once the last one is: the warn lines with them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("/down/x"))
        .count()
        < 50
    {
        assert!(std::time::Instant::now() < deadline, "access lines missing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = gw.lines.lock().unwrap().clone();
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("upstream failed"))
        .collect();
    assert_eq!(failures.len(), 1, "one line per burst: {failures:#?}");
    let line = failures[0];
    assert!(line.contains("WARN") || line.contains("warn"), "{line}");
    assert!(line.contains("down"), "names the route: {line}");
    assert!(
        line.contains(&dead.to_string()),
        "names the upstream: {line}"
    );
    assert!(line.contains("refused"), "names the cause: {line}");
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

/// What a [`raw_upstream`] counted.
#[derive(Clone, Default)]
struct RawCounts {
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawCounts {
    /// (connections accepted, request heads read).
    fn get(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.accepted.load(SeqCst), self.requests.load(SeqCst))
    }
}

/// A hand-written HTTP/1.1 upstream, for failures hyper's server cannot be made to produce.
/// `GET /stall` gets a head promising 1000 body bytes, 10 of them, and then nothing while the
/// socket stays open; anything else gets `200 ok` with `extra_head` (header lines ending in
/// CRLF). With `keep_alive`, a request that arrives on a connection idle for longer than that
/// is read and then the connection is closed unanswered: the upstream's keep-alive timer fired
/// just as the request came in, the race a pooled connection can lose.
async fn raw_upstream(
    keep_alive: Option<Duration>,
    extra_head: &'static str,
) -> (std::net::SocketAddr, RawCounts) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = RawCounts::default();
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            shared.accepted.fetch_add(1, SeqCst);
            let counts = shared.clone();
            tokio::spawn(async move {
                let mut answered: Option<std::time::Instant> = None;
                while let Some(head) = read_request(&mut stream).await {
                    counts.requests.fetch_add(1, SeqCst);
                    if keep_alive
                        .zip(answered)
                        .is_some_and(|(ka, at)| at.elapsed() > ka)
                    {
                        return;
                    }
                    if head.starts_with("GET /stall ") {
                        let stalled = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
                        let _ = stream.write_all(stalled).await;
                        std::future::pending::<()>().await;
                    }
                    let answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{extra_head}\r\nok");
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    answered = Some(std::time::Instant::now());
                }
            });
        }
    });
    (addr, counts)
}

/// Reads one request head and its `Content-Length` body; `None` once the peer closes.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head)
}

/// The value of one series in the process's metrics exposition (0 when absent).
fn metric(series: &str) -> f64 {
    gatehouse::metrics::render()
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Tries `attempt` every 20 ms until it returns `Some`, for at most 5 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(tokio::time::Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /fast` on a new HTTP/1.1 connection; `Some(status)` when the gateway answered at all.
async fn fresh_h1_get(gateway: std::net::SocketAddr) -> Option<u16> {
    let out = raw(
        gateway,
        b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    (!out.is_empty()).then(|| raw_status(&out))
}

#[tokio::test]
async fn stalled_upstream_body_is_cut_after_the_body_timeout() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SERIES: &str = "gatehouse_upstream_body_timeouts_total{route=\"stalled-body\"}";
    const BOUND: Duration = Duration::from_secs(5);
    let (upstream, _) = raw_upstream(None, "").await;
    let mut gw = GatewayBuilder::route(
        "stalled-body",
        "/",
        &format!("http://{upstream}"),
        "auth = \"public\"\nbody_timeout = \"300ms\"",
    )
    // One connection at most: a stalled connection the gateway still counted would lock out
    // every later client.
    .and("[server]\nmax_connections = 1")
    .start()
    .await;
    let before = metric(SERIES);

    // HTTP/1.1: the head and the 10 bytes arrive, then the gateway closes the connection.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let ended = tokio::time::timeout(BOUND, async {
        let mut buffer = [0u8; 4096];
        while let Ok(read @ 1..) = stream.read(&mut buffer).await {
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(ended.is_ok(), "the stalled body was never cut: {text:?}");
    assert_eq!(raw_status(&text), 200, "{text}");
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text:?}");
    // The connection is no longer counted: a new client is served.
    let status = eventually("a new connection is served", || fresh_h1_get(gw.addr)).await;
    assert_eq!(status, 200);

    // HTTP/2: the stream is reset; the connection and its other streams carry on.
    let mut h2 = eventually("an HTTP/2 connection is accepted", || async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.ok()?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(connection);
        sender.ready().await.ok()?;
        Some(sender)
    })
    .await;
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", gw.addr))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let response = h2.send_request(get("/stall")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(BOUND, body.frame())
        .await
        .expect("no first frame")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "0123456789");
    let next = tokio::time::timeout(BOUND, body.frame())
        .await
        .expect("the stalled HTTP/2 stream was never reset");
    assert!(matches!(next, Some(Err(_))), "{next:?}");
    let other = h2.send_request(get("/fast")).await.unwrap();
    assert_eq!(other.status(), 200);
    let text = other.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "ok");

    assert_eq!(metric(SERIES) - before, 2.0);
    drop(h2);
    gw.shutdown().await;
}

/// The upstream's keep-alive in the pool tests, and the pause between requests: just past it.
const UPSTREAM_KEEP_ALIVE: Duration = Duration::from_millis(150);
const PAST_THE_KEEP_ALIVE: Duration = Duration::from_millis(200);

#[tokio::test]
async fn pooled_connection_closed_by_upstream_is_retried_once() {
    let (upstream, counts) = raw_upstream(Some(UPSTREAM_KEEP_ALIVE), "").await;
    let gw = GatewayBuilder::route("all", "/", &format!("http://{upstream}"), PUBLIC)
        .start()
        .await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(c.get(gw.url("/x")).send().await.unwrap().status().as_u16());
        tokio::time::sleep(PAST_THE_KEEP_ALIVE).await;
    }
    assert_eq!(statuses, [200; 10]);
    // Each reuse met a dead connection and was sent once more, on a new one; never more.
    assert_eq!(counts.get(), (10, 19));
}

#[tokio::test]
async fn request_with_a_body_is_not_sent_twice_when_its_pooled_connection_dies() {
    let (upstream, counts) = raw_upstream(Some(UPSTREAM_KEEP_ALIVE), "").await;
    let gw = GatewayBuilder::route("all", "/", &format!("http://{upstream}"), PUBLIC)
        .start()
        .await;
    let c = client();
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    tokio::time::sleep(PAST_THE_KEEP_ALIVE).await;
    // The upstream read this POST before the connection died: it may have acted on it.
    let r = c.post(gw.url("/orders")).body("buy").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(counts.get(), (1, 2), "the POST reached the upstream twice");
}

#[tokio::test]
async fn upstream_keep_alive_timeout_is_honoured() {
    // The upstream says it keeps idle connections 1 s, and drops the next request after that.
    let advertised = Duration::from_secs(1);
    let (upstream, counts) = raw_upstream(Some(advertised), "Keep-Alive: timeout=1\r\n").await;
    let gw = GatewayBuilder::route("all", "/", &format!("http://{upstream}"), PUBLIC)
        .start()
        .await;
    let c = client();
    let post = || c.post(gw.url("/orders")).body("buy").send();
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    // Well within the advertised time the connection is reused.
    assert_eq!(post().await.unwrap().status(), 200);
    assert_eq!(counts.get(), (1, 2));
    // Past it, the pool has retired the connection: a new one carries the request, which is
    // never sent on a dead connection (a POST could not be sent again).
    for round in 1..=2 {
        tokio::time::sleep(advertised + Duration::from_millis(100)).await;
        assert_eq!(post().await.unwrap().status(), 200, "round {round}");
        assert_eq!(counts.get(), (1 + round, 2 + round));
    }
}
