//! Idle plaintext HTTP/1.1 connections are parked by the server (hyper's state dropped, the
//! socket kept) after 50 ms without a request. These tests leave connections idle past
//! that and check that the gateway behaves exactly as before: the next request is served on the
//! same socket, keep-alive is kept, and a WebSocket upgrade still tunnels. The server's own unit
//! tests prove that the park really happens.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{GatewayBuilder, Upstream, route};

const PUBLIC: &str = "auth = \"public\"";
/// Longer than the server's park delay (50 ms).
const PAST_THE_PARK: Duration = Duration::from_millis(600);

/// Reads one response with a `Content-Length` body; returns it as text.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "closed mid-response: {buffer:?}");
            buffer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&buffer).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map_or(0, |value| value.trim().parse::<usize>().unwrap());
                if buffer.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    })
    .await
    .expect("no complete response")
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gatehouse\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn keep_alive_connection_idle_past_the_park_is_served_again() {
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &upstream.url(), PUBLIC)
        .start()
        .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for path in ["/api/before", "/api/after"] {
        stream.write_all(&get(path)).await.unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("http/1.1 200"), "{response}");
        assert!(!response.contains("connection: close"), "{response}");
        tokio::time::sleep(PAST_THE_PARK).await;
    }
    assert_eq!(upstream.seen().len(), 2);
}

/// A raw upstream that answers one upgrade with 101, then echoes what it receives.
async fn echo_upgrade_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        while let Ok(read) = s.read(&mut buf).await {
            if read == 0 || s.write_all(&buf[..read]).await.is_err() {
                return;
            }
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrade_after_an_idle_gap_is_tunnelled() {
    let upstream = Upstream::start().await;
    let ws = echo_upgrade_upstream().await;
    let gw = GatewayBuilder::route("api", "/api", &upstream.url(), PUBLIC)
        .and(&route("ws", "/ws", &format!("http://{ws}"), PUBLIC))
        .start()
        .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(&get("/api/first")).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("http/1.1 200"));
    tokio::time::sleep(PAST_THE_PARK).await;

    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let head = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    for message in [&b"through the tunnel"[..], b"and back again"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(echoed, message);
        // The tunnel is not an idle HTTP/1 connection: it is never parked.
        tokio::time::sleep(PAST_THE_PARK).await;
    }
}
