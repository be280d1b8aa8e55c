//! HTTP/2 with prior knowledge, written frame by frame: `:authority`/`Host` disagreement,
//! CONNECT, malformed header blocks (RFC 9113 §8.2 and §8.3), a rapid-reset flood
//! (CVE-2023-44487) measured against a well-behaved client, and a CONTINUATION flood.
//!
//! The frames are built here rather than with a client library because client libraries refuse
//! to send most of these. Header blocks use HPACK literals without indexing and without Huffman
//! coding, so no encoder state is needed; responses are read one request per connection, so the
//! only field decoded, the leading `:status`, never depends on the decoder's dynamic table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{Recorder, gateway};
use crate::support::{client, h2_client};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const WAIT: Duration = Duration::from_secs(5);

/// A header block's fields, in order, as raw bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), `first` holding the pattern bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One header block of literals without indexing, new names, no Huffman (RFC 7541 §6.2.2).
fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

fn request(method: &str, path: &str, authority: &str) -> Fields {
    vec![
        (b":method".to_vec(), method.as_bytes().to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), authority.as_bytes().to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ]
}

fn fields(list: &Fields) -> Vec<u8> {
    let borrowed: Vec<(&[u8], &[u8])> = list
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    block(&borrowed)
}

/// What the server did with stream 1.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Reset(u32),
    GoAway(u32),
    Closed,
    Silent,
}

/// The `:status` at the start of a response header block, if the encoder put it there in one of
/// the forms that need no dynamic table.
fn leading_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    // Indexed static entries 8..=14 are the statuses HPACK predefines (RFC 7541 Appendix A).
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // A literal whose name is static entry 8 (":status"), with or without indexing.
    let value_at = match first {
        0x48 | 0x08 | 0x18 => 1,
        _ => return None,
    };
    let len_byte = *block.get(value_at)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(value_at + 1..value_at + 1 + len)?;
    let digits = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// Decodes a Huffman string made of ASCII digits only (RFC 7541 Appendix B: `0`-`2` are the
/// 5-bit codes 0-2, `3`-`9` the 6-bit codes 25-31); padding is ones.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut at = 0;
    let mut out = String::new();
    let read = |at: usize, n: usize| -> Option<u8> {
        bits.get(at..at + n)
            .map(|b| b.iter().fold(0u8, |acc, bit| acc << 1 | bit))
    };
    while out.len() < 3 {
        let five = read(at, 5)?;
        if five <= 2 {
            out.push(char::from(b'0' + five));
            at += 5;
            continue;
        }
        let six = read(at, 6)?;
        if !(25..=31).contains(&six) {
            return None;
        }
        out.push(char::from(b'0' + (six - 22)));
        at += 6;
    }
    Some(out)
}

struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (read, mut write) = stream.into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        write.write_all(&hello).await.unwrap();
        Conn { read, write }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// One frame, or `None` at EOF.
    async fn next_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        self.read.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.read.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// Reads until the server answers, resets or abandons stream 1, acknowledging its SETTINGS.
    async fn outcome(&mut self) -> Outcome {
        let wait = async {
            loop {
                let Some((kind, flags, stream, payload)) = self.next_frame().await else {
                    return Outcome::Closed;
                };
                match kind {
                    SETTINGS if flags & ACK == 0 => {
                        let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    HEADERS if stream == 1 => {
                        return leading_status(&payload)
                            .map_or(Outcome::Status(0), Outcome::Status);
                    }
                    RST_STREAM if stream == 1 => {
                        return Outcome::Reset(u32::from_be_bytes(
                            payload[..4].try_into().unwrap(),
                        ));
                    }
                    GOAWAY => {
                        return Outcome::GoAway(u32::from_be_bytes(
                            payload[4..8].try_into().unwrap(),
                        ));
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or(Outcome::Silent)
    }
}

/// Sends one header block on stream 1 of a fresh connection and reports what came back.
async fn one(addr: SocketAddr, list: &Fields, body: Option<&[u8]>) -> Outcome {
    let mut conn = Conn::open(addr).await;
    let flags = if body.is_some() {
        END_HEADERS
    } else {
        END_HEADERS | END_STREAM
    };
    let mut bytes = frame(HEADERS, flags, 1, &fields(list));
    if let Some(body) = body {
        bytes.extend(frame(DATA, END_STREAM, 1, body));
    }
    if conn.send(&bytes).await.is_err() {
        return Outcome::Closed;
    }
    conn.outcome().await
}

fn with(mut list: Fields, name: &str, value: &str) -> Fields {
    list.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    list
}

#[tokio::test]
async fn raw_frame_client_control_request_is_served() {
    // The control for every test below: a well-formed request built by this module is answered.
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let outcome = one(gw.addr, &request("GET", "/pub/ok", "x"), None).await;
    assert_eq!(outcome, Outcome::Status(200));
    let seen = up.only();
    assert_eq!(seen.target, "/pub/ok");
    let outcome = one(gw.addr, &request("GET", "/api/x", "x"), None).await;
    assert_eq!(outcome, Outcome::Status(401));
}

#[tokio::test]
async fn authority_and_host_disagreement_is_refused() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let base = request("GET", "/pub/a", "a.example");
    let cases = vec![
        ("host disagrees", with(base.clone(), "host", "b.example")),
        (
            "host disagrees in port",
            with(base.clone(), "host", "a.example:8080"),
        ),
        (
            "second host",
            with(with(base.clone(), "host", "a.example"), "host", "b.example"),
        ),
        (
            "host only",
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
                (b":path".to_vec(), b"/pub/a".to_vec()),
                (b"host".to_vec(), b"a.example".to_vec()),
            ],
        ),
        ("userinfo", request("GET", "/pub/a", "user@a.example")),
        ("empty authority", request("GET", "/pub/a", "")),
    ];
    for (case, list) in cases {
        let outcome = one(gw.addr, &list, None).await;
        assert!(
            matches!(outcome, Outcome::Status(400) | Outcome::Reset(_)),
            "{case}: {outcome:?}"
        );
    }
    up.assert_untouched();
    // Agreement, in any case, is fine.
    let outcome = one(gw.addr, &with(base, "host", "A.EXAMPLE"), None).await;
    assert_eq!(outcome, Outcome::Status(200));
}

#[tokio::test]
async fn connect_and_extended_connect_are_refused() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // CONNECT would open a raw tunnel to any host:port the client names, the upstream included.
    let connect = vec![
        (b":method".to_vec(), b"CONNECT".to_vec()),
        (b":authority".to_vec(), up.addr.to_string().into_bytes()),
    ];
    let outcome = one(gw.addr, &connect, None).await;
    assert!(
        matches!(outcome, Outcome::Status(405) | Outcome::Reset(_)),
        "CONNECT: {outcome:?}"
    );
    // RFC 8441 extended CONNECT, which the server never enabled.
    let extended = with(request("CONNECT", "/pub/ws", "x"), ":protocol", "websocket");
    let outcome = one(gw.addr, &extended, None).await;
    assert!(
        matches!(outcome, Outcome::Status(400 | 405) | Outcome::Reset(_)),
        "extended CONNECT: {outcome:?}"
    );
    up.assert_untouched();
}

#[tokio::test]
async fn malformed_http2_requests_are_reset_or_refused() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let base = || request("GET", "/pub/a", "x");
    let mut cases: Vec<(&str, Fields)> = vec![
        ("uppercase name", with(base(), "X-User", "admin")),
        ("connection", with(base(), "connection", "x-user")),
        ("keep-alive", with(base(), "keep-alive", "timeout=5")),
        (
            "transfer-encoding",
            with(base(), "transfer-encoding", "chunked"),
        ),
        ("upgrade", with(base(), "upgrade", "h2c")),
        ("te other than trailers", with(base(), "te", "gzip")),
        ("unknown pseudo-header", with(base(), ":user", "admin")),
        (
            "CR LF in a value",
            with(base(), "x-a", "b\r\nx-user: admin"),
        ),
        ("NUL in a value", with(base(), "x-a", "b\0c")),
        ("space in a name", with(base(), "x a", "b")),
        ("colon in a name", with(base(), "x:a", "b")),
        ("empty path", request("GET", "", "x")),
        ("asterisk path", request("GET", "*", "x")),
        ("absolute path", request("GET", "http://evil/pub/a", "x")),
        ("relative path", request("GET", "pub/a", "x")),
        ("dot segments", request("GET", "/pub/../admin/a", "x")),
    ];
    let mut late_pseudo = with(
        vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":authority".to_vec(), b"x".to_vec()),
        ],
        "x-a",
        "b",
    );
    late_pseudo.push((b":path".to_vec(), b"/pub/a".to_vec()));
    cases.push(("pseudo-header after a field", late_pseudo));
    cases.push(("duplicate :path", with(base(), ":path", "/admin/a")));
    cases.push((
        "missing :method",
        base().into_iter().skip(1).collect::<Vec<_>>(),
    ));
    for (case, list) in cases {
        let outcome = one(gw.addr, &list, None).await;
        let refused = match outcome {
            Outcome::Status(s) => (400..500).contains(&s),
            Outcome::Reset(_) | Outcome::GoAway(_) | Outcome::Closed => true,
            Outcome::Silent => false,
        };
        assert!(refused, "{case}: {outcome:?}");
    }
    up.assert_untouched();

    // A body longer than its content-length (RFC 9113 §8.1.1): whatever the gateway had already
    // forwarded must fail at the upstream, never complete.
    let post = with(request("POST", "/pub/a", "x"), "content-length", "5");
    let outcome = one(gw.addr, &post, Some(b"hello world")).await;
    assert!(
        !matches!(outcome, Outcome::Status(200..=299)),
        "content-length mismatch: {outcome:?}"
    );
    for seen in up.seen() {
        assert!(seen.body_error, "{seen:#?}");
    }
}

/// Latencies of a well-behaved client (HTTP/2 and HTTP/1.1 in turn) until `stop` is set.
async fn well_behaved(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Duration> {
    let (h2, h1) = (h2_client(), client());
    let mut latencies = Vec::new();
    let mut n = 0u32;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let c = if n.is_multiple_of(2) { &h2 } else { &h1 };
        n += 1;
        let started = Instant::now();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_is_cut_and_other_clients_keep_being_served() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = tokio::spawn(well_behaved(gw.url("/pub/ok"), stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Two attackers, each opening and cancelling streams as fast as the socket takes them.
    const PAIRS: u32 = 20_000;
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let addr = gw.addr;
        attackers.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let headers = fields(&request("GET", "/api/flood", "x"));
            let started = Instant::now();
            let mut sent = 0u32;
            let mut id = 1u32;
            'flood: while sent < PAIRS && started.elapsed() < Duration::from_secs(10) {
                let mut batch = Vec::new();
                for _ in 0..100 {
                    batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &headers));
                    batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
                    id += 2;
                }
                if conn.send(&batch).await.is_err() {
                    break 'flood;
                }
                sent += 100;
            }
            // Did the server give up on this connection?
            let ended = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match conn.next_frame().await {
                        None => return "closed",
                        Some((GOAWAY, ..)) => return "goaway",
                        Some(_) => {}
                    }
                }
            })
            .await
            .unwrap_or("open");
            (sent, ended)
        }));
    }
    let mut results = Vec::new();
    for a in attackers {
        results.push(a.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let latencies = good.await.unwrap();

    eprintln!(
        "rapid reset: (pairs sent, how the connection ended) = {results:?}; well-behaved latencies: n = {}, max = {:?}",
        latencies.len(),
        latencies.iter().max()
    );
    for (sent, ended) in &results {
        assert_ne!(
            *ended, "open",
            "a connection that reset {sent} streams was never closed"
        );
    }
    assert!(latencies.len() >= 5, "{latencies:?}");
    let worst = latencies.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(2),
        "a well-behaved client waited {worst:?} during the flood ({results:?})"
    );
    // Nothing of the flood reached the upstream; the good client's requests did.
    assert!(up.targets().iter().all(|t| t == "/pub/ok"));
    let r = h2_client().get(gw.url("/pub/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn continuation_flood_is_cut_before_it_is_buffered() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let mut conn = Conn::open(gw.addr).await;
    let first = fields(&request("GET", "/pub/a", "x"));
    conn.send(&frame(HEADERS, END_STREAM, 1, &first))
        .await
        .unwrap();
    // Header fields in CONTINUATION frames that never set END_HEADERS: 16 KiB each, up to 64 MiB,
    // far past the 16 KiB header list limit.
    let mut chunk = Vec::new();
    let mut n = 0;
    while chunk.len() < 16 * 1024 - 200 {
        chunk.extend(block(&[(format!("x-f{n}").as_bytes(), &[b'a'; 100])]));
        n += 1;
    }
    let started = Instant::now();
    let mut sent = 0usize;
    let writer = async {
        for _ in 0..4096 {
            if conn
                .write
                .write_all(&frame(CONTINUATION, 0, 1, &chunk))
                .await
                .is_err()
            {
                return;
            }
            sent += chunk.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    let outcome = conn.outcome().await;
    assert!(
        matches!(
            outcome,
            Outcome::GoAway(_) | Outcome::Closed | Outcome::Reset(_) | Outcome::Status(431)
        ),
        "after {sent} bytes of CONTINUATION in {:?}: {outcome:?}",
        started.elapsed()
    );
    assert!(
        sent < 64 * 1024 * 1024,
        "the server read all {sent} bytes of an endless header block"
    );
    up.assert_untouched();
}
