//! The listener itself: its accept queue (`[server] listen_backlog`) and the answers hyper writes
//! on its own for request heads it refuses, which must carry `X-Request-Id`, be logged and be
//! counted like every other response.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{GatewayBuilder, ServedBinary, TestGateway, Upstream, client, serve_binary};

/// Connects that complete within this were queued by the kernel; one that is not queued waits
/// for a SYN retransmit, 1 s at the earliest.
const QUEUED_WITHIN: Duration = Duration::from_millis(700);

fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Opens `count` connections at once to a listener that accepts none of them; returns how many
/// the kernel completed (queued) before the first SYN retransmit could have happened.
async fn burst(addr: SocketAddr, count: usize) -> usize {
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..count {
        connects.spawn(tokio::time::timeout(
            QUEUED_WITHIN,
            TcpStream::connect(addr),
        ));
    }
    // Held until all are counted, so that none leaves the queue early.
    let mut queued = Vec::new();
    while let Some(joined) = connects.join_next().await {
        if let Ok(Ok(Ok(stream))) = joined {
            queued.push(stream);
        }
    }
    queued.len()
}

#[tokio::test]
async fn connect_burst_beyond_128_is_queued_up_to_the_configured_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let config = GatewayBuilder::new("[server]\nlisten_backlog = 600").config(dir.path());
    let listener =
        gatehouse::server::bind("127.0.0.1:0".parse().unwrap(), config.server.listen_backlog)
            .unwrap();
    let addr = listener.local_addr().unwrap();
    // Linux queues backlog + 1 connections; tokio's own `bind` (backlog 128) queued 129 here.
    let expected = somaxconn().map_or(600, |cap| cap.min(600)) as usize;
    let queued = burst(addr, 600).await;
    assert!(
        queued >= expected,
        "only {queued} of 600 connects were queued at once (expected {expected})"
    );
    drop(listener);
}

/// Starts `gatehouse serve` on 127.0.0.1:0 with `server_keys` added to `[server]`.
fn serve_with(dir: &std::path::Path, server_keys: &str) -> ServedBinary {
    let data = dir.display().to_string();
    let file = dir.join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nallow_no_routes = true\n{server_keys}\n[admin]\nenabled = false\n[auth]\nkeys_dir = \"{data}/keys\"\n[store]\npath = \"{data}/db\"\n"
        ),
    )
    .unwrap();
    serve_binary(&file)
}

/// The backlog of the listening socket on `port` as `ss` reports it (Send-Q of a LISTEN socket);
/// `None` when `ss` (iproute2) is not installed.
fn listen_backlog_of(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    // State Recv-Q Send-Q Local Peer
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn the_binary_listens_with_the_configured_backlog() {
    if Command::new("ss").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ss (iproute2) is needed to read a listener's backlog"
        );
        eprintln!("skipped: ss (iproute2) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let served = serve_with(dir.path(), "listen_backlog = 700");
    let expected = somaxconn().map_or(700, |cap| cap.min(700));
    assert_eq!(listen_backlog_of(served.addr.port()), Some(expected));

    let dir = tempfile::tempdir().unwrap();
    let served = serve_with(dir.path(), "");
    let expected = somaxconn().map_or(1024, |cap| cap.min(1024));
    assert_eq!(listen_backlog_of(served.addr.port()), Some(expected));
}

/// Access-log lines written on this thread while the guard lives (the tests below run on tokio's
/// current-thread runtime, so the gateway's tasks log here too), as JSON objects.
#[derive(Clone, Default)]
struct AccessLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for AccessLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AccessLog {
    type Writer = AccessLog;
    fn make_writer(&'a self) -> AccessLog {
        self.clone()
    }
}

impl AccessLog {
    fn capture() -> (AccessLog, tracing::subscriber::DefaultGuard) {
        let log = AccessLog::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(log.clone())
            .finish();
        (log.clone(), tracing::subscriber::set_default(subscriber))
    }

    /// The `fields` of the access-log line with this request id.
    fn line_for(&self, request_id: &str) -> Option<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["target"] == "access")
            .map(|line| line["fields"].clone())
            .find(|fields| fields["request_id"] == request_id)
    }
}

async fn metrics_text(gw: &TestGateway) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gw.app.clone();
    let admin =
        tokio::spawn(async move { app.serve_admin(listener, std::future::pending()).await });
    let text = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    admin.abort();
    text
}

/// The sum of every series of `name` whose labels include `label`.
fn counter(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Writes `request` on `stream` and reads one response head (and nothing after it).
async fn response_head(stream: &mut TcpStream, request: &[u8]) -> String {
    let _ = stream.write_all(request).await;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
    })
    .await
    .expect("no response head in time");
    String::from_utf8_lossy(&head).into_owned()
}

fn request_id_of(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-request-id")
            .then(|| value.trim().to_owned())
    })
}

fn drain_body(stream: &mut TcpStream, head: &str) -> impl std::future::Future<Output = ()> {
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    async move {
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
    }
}

#[tokio::test]
async fn header_floods_refused_by_the_parser_carry_a_request_id_and_are_logged_and_counted() {
    let (log, _guard) = AccessLog::capture();
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "auth = \"public\"")
        .and("[server]\nmax_headers = 20\nmax_header_bytes = 8192")
        .start()
        .await;
    let reason = "reason=\"header_fields_too_large\"";
    let before = metrics_text(&gw).await;

    let mut many = String::from("GET /api/x HTTP/1.1\r\nHost: x\r\n");
    for n in 0..40 {
        many.push_str(&format!("X-Filler-{n}: x\r\n"));
    }
    many.push_str("\r\n");
    let big = format!(
        "GET /api/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12_000)
    );
    let mut ids = Vec::new();
    for request in [&many, &big] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let head = response_head(&mut stream, request.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        ids.push(request_id_of(&head).unwrap_or_else(|| panic!("no X-Request-Id: {head}")));
    }
    // On a keep-alive connection, after a request that was served.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let ok = response_head(&mut stream, b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    let served_id = request_id_of(&ok).unwrap();
    drain_body(&mut stream, &ok).await;
    let head = response_head(&mut stream, big.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    let id = request_id_of(&head).unwrap_or_else(|| panic!("no X-Request-Id: {head}"));
    assert_ne!(id, served_id);
    ids.push(id);

    for id in &ids {
        let line = log
            .line_for(id)
            .unwrap_or_else(|| panic!("no access-log line for {id}"));
        assert_eq!(line["status"], 431, "{line}");
        assert_eq!(line["route"], "-", "{line}");
        assert_eq!(line["rejected"], "header_fields_too_large", "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
    }
    let after = metrics_text(&gw).await;
    let refusals = "gatehouse_listener_refusals_total";
    assert!(
        counter(&after, refusals, reason) >= counter(&before, refusals, reason) + 3.0,
        "{after}"
    );
    let unrouted = ["route=\"-\"", "status=\"4xx\""];
    let requests = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("gatehouse_requests_total{"))
            .filter(|l| unrouted.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(requests(&after) >= requests(&before) + 3.0, "{after}");
    assert_eq!(
        up.seen().len(),
        1,
        "only the served request reaches the upstream"
    );
}

#[tokio::test]
async fn http2_header_list_over_the_limit_gets_431_with_a_request_id_and_is_logged_and_counted() {
    let (log, _guard) = AccessLog::capture();
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "auth = \"public\"")
        .and("[server]\nmax_header_bytes = 8192")
        .start()
        .await;
    let reason = "reason=\"header_list_too_large\"";
    let refusals = "gatehouse_listener_refusals_total";
    let before = counter(&metrics_text(&gw).await, refusals, reason);
    let h2 = crate::support::h2_client();
    let small = h2
        .get(gw.url("/api/x"))
        .header("x-small", "a".repeat(7_000))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    // Over the 8 KiB limit, within what the HTTP/2 library itself accepts (twice the limit).
    let big = h2
        .get(gw.url("/api/x"))
        .header("x-big", "a".repeat(12_000))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 431);
    let id = big
        .headers()
        .get("x-request-id")
        .expect("no X-Request-Id")
        .to_str()
        .unwrap()
        .to_owned();
    let line = log.line_for(&id).expect("no access-log line");
    assert_eq!(line["status"], 431, "{line}");
    assert_eq!(line["route"], "-", "{line}");
    assert_eq!(line["rejected"], "header_list_too_large", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/api/x", "{line}");
    let after = counter(&metrics_text(&gw).await, refusals, reason);
    assert!(after >= before + 1.0, "{before} -> {after}");
    // The connection survives the refusal.
    let again = h2.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        up.seen().len(),
        2,
        "the refused request must not reach the upstream"
    );
}
