//! Exhaustion through the configuration a user writes: slow headers, slow TLS handshakes, slow
//! and trickled bodies, idle keep-alive, header count and size, declared bodies over the limit,
//! the connection cap, and compressed bodies that must pass through without being inflated.
//!
//! Limits are set short (300 ms) so each test proves the cut happens near its limit, not at some
//! later default.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Recorder, exchange, gateway, until_closed};
use crate::support::{client, h2_client, route};

const SHORT: &str = "300ms";
/// Far above every short limit, far below the defaults (10 s and more): a cut inside this window
/// was made by the configured limit.
const GUARD: Duration = Duration::from_secs(4);

#[tokio::test]
async fn slowloris_head_trickled_under_every_read_is_cut_at_header_read_timeout() {
    let up = Recorder::start().await;
    let gw = gateway(&up, &format!("[server]\nheader_read_timeout = \"{SHORT}\"")).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /pub/a HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A header line every 50 ms: each read makes progress, the head never ends.
    let trickle = async {
        for n in 0..200 {
            if stream
                .write_all(format!("X-Slow-{n}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(GUARD, trickle).await;
    let cut_after = started.elapsed();
    let rest = until_closed(&mut stream, GUARD).await;
    assert!(
        cut_after < GUARD,
        "still accepting header lines after {cut_after:?}"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    up.assert_untouched();

    // A connection that never sends a byte is cut by the same limit.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    until_closed(&mut silent, GUARD).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
}

struct Pki {
    dir: tempfile::TempDir,
    cert_pem: String,
}

fn pki() -> Pki {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    crate::support::write_private(
        dir.path().join("key.pem"),
        certified.signing_key.serialize_pem(),
    );
    Pki {
        dir,
        cert_pem: certified.cert.pem(),
    }
}

#[tokio::test]
async fn slow_tls_handshake_is_dropped_at_tls_handshake_timeout() {
    let up = Recorder::start().await;
    let pki = pki();
    let gw = gateway(
        &up,
        &format!(
            "[server]\ntls_handshake_timeout = \"{SHORT}\"\n[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
            pki.dir.path().display()
        ),
    )
    .await;
    // Silence, half a record header, and a ClientHello record that never completes.
    let openings: [&[u8]; 3] = [
        b"",
        &[0x16, 0x03, 0x01],
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
    ];
    for opening in openings {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        let started = Instant::now();
        until_closed(&mut stream, GUARD).await;
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{opening:?}"
        );
    }
    // The control: a real client completes its handshake and is served.
    let tls = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = tls
        .get(format!("https://localhost:{}/pub/ok", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.targets(), ["/pub/ok"]);
}

#[tokio::test]
async fn stalled_body_gets_408_at_body_idle_timeout_and_never_completes_upstream() {
    let up = Recorder::start().await;
    let gw = gateway(&up, &format!("[server]\nbody_idle_timeout = \"{SHORT}\"")).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = until_closed(&mut stream, GUARD).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    for seen in up.seen() {
        assert!(seen.body_error && seen.body.len() <= 10, "{seen:#?}");
    }
}

#[tokio::test]
async fn body_trickled_under_the_idle_limit_is_bounded_by_the_route_timeout() {
    let up = Recorder::start().await;
    let gw = gateway(
        &up,
        &route(
            "upload",
            "/upload",
            &up.url(),
            "auth = \"public\"\ntimeout = \"1s\"",
        ),
    )
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One byte every 100 ms never trips the (default 30 s) body idle limit; 200 of them take 20 s.
    let trickle = async {
        for _ in 0..200 {
            if stream.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(GUARD, trickle).await;
    let answer = until_closed(&mut stream, GUARD).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 504") || text.starts_with("HTTP/1.1 408"),
        "after {:?}: {text}",
        started.elapsed()
    );
    for seen in up.seen() {
        assert!(seen.body_error, "a trickled body completed: {seen:#?}");
    }
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_at_idle_timeout() {
    let up = Recorder::start().await;
    let gw = gateway(&up, &format!("[server]\nidle_timeout = \"{SHORT}\"")).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /pub/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let idle_from = Instant::now();
    let answer = until_closed(&mut stream, GUARD).await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
    assert!(idle_from.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn header_count_and_size_floods_get_431_and_reach_nothing() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "[server]\nmax_headers = 20\nmax_header_bytes = 8192").await;
    let mut many = String::from("GET /pub/a HTTP/1.1\r\nHost: x\r\n");
    for n in 0..40 {
        many.push_str(&format!("X-Filler-{n}: x\r\n"));
    }
    many.push_str("\r\n");
    let big = format!(
        "GET /pub/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12_000)
    );
    let long_target = format!(
        "GET /pub/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(12_000)
    );
    for request in [many, big, long_target] {
        let out = exchange(gw.addr, request.as_bytes(), GUARD).await;
        let first = out.statuses().first().copied();
        assert!(
            matches!(first, Some(431 | 414 | 400)),
            "{:.60}: {}",
            request,
            out.text
        );
        assert!(out.closed);
    }
    // HTTP/2: the same byte limit bounds the header list.
    let h2 = h2_client()
        .get(gw.url("/pub/a"))
        .header("x-big", "a".repeat(12_000))
        .send()
        .await;
    if let Ok(response) = h2 {
        assert_eq!(response.status(), 431);
    }
    up.assert_untouched();
}

#[tokio::test]
async fn declared_body_over_the_limit_gets_413_before_a_byte_is_sent() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "[server]\nmax_body_bytes = 1000").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Only the head: the answer must not wait for a body that would take ages to send.
    stream
        .write_all(b"POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut stream, GUARD).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // The same on a protected route before authentication, and over HTTP/2.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"PUT /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&until_closed(&mut stream, GUARD).await).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let r = h2_client()
        .post(gw.url("/pub/a"))
        .body(vec![0u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    up.assert_untouched();
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_unserved() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "[server]\nmax_connections = 3").await;
    // Three clients hold their connections with unfinished heads.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /pub/held HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = exchange(
        gw.addr,
        b"GET /pub/excess HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        GUARD,
    )
    .await;
    assert!(out.closed && out.text.is_empty(), "{}", out.text);
    // A freed slot is usable again.
    held.pop();
    let served = tokio::time::timeout(GUARD, async {
        loop {
            let out = exchange(
                gw.addr,
                b"GET /pub/freed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                GUARD,
            )
            .await;
            if out.statuses() == [200] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the freed permit never came back");
    assert!(!up.targets().iter().any(|t| t == "/pub/excess"));
    drop(held);
}

#[tokio::test]
async fn compressed_bodies_pass_through_without_being_inflated() {
    let up = Recorder::start().await;
    // 1 MiB of zeros in 1051 gzip bytes, under a 4 KiB body limit: inflating it anywhere on the
    // way would either trip the limit or hand the upstream different bytes.
    let gz: &[u8] = include_bytes!("../../data/zeros-1mib.gz");
    let gw = gateway(&up, "[server]\nmax_body_bytes = 4096").await;
    for encoding in ["gzip", "deflate", "br", "gzip, gzip"] {
        let r = client()
            .post(gw.url("/pub/upload"))
            .header("content-encoding", encoding)
            .body(gz.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{encoding}");
    }
    // Over HTTP/2 as well, where the body arrives as DATA frames.
    let r = h2_client()
        .post(gw.url("/pub/upload"))
        .header("content-encoding", "gzip")
        .body(gz.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 5);
    for s in seen {
        assert_eq!(s.body, gz, "the upstream must receive the compressed bytes");
        assert!(s.header("content-encoding").is_some(), "{:?}", s.headers);
    }
}
