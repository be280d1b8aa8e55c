//! The security suite (SECURITY.md, one module per attack class): hostile input through real
//! sockets, checking the documented rejection and what the upstream received.
//!
//! Most tests use [`Recorder`], an upstream that keeps every request whole (body bytes, trailers,
//! version), so a test can prove that nothing but the gateway's own framing and headers arrived.
//! The cases tests/it/verify.rs, proxy.rs and identity.rs already cover are not repeated here.

mod csrf;
mod exhaustion;
mod framing;
mod h2;
mod headers;
mod jose;
mod targets;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse::body::Body;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::{GatewayBuilder, TestGateway, route};

/// One request exactly as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// The body ended with an error (the gateway aborted the stream).
    pub body_error: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Header names folded the way CGI-style upstreams fold them (lowercase, `_`/`.` as `-`).
    pub fn folded_names(&self) -> Vec<String> {
        self.headers
            .keys()
            .map(|k| k.as_str().replace(['_', '.'], "-"))
            .collect()
    }

    /// Every `x-user*` header, folded, with all its values.
    pub fn identity_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.as_str().replace(['_', '.'], "-").starts_with("x-user"))
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect()
    }
}

/// An HTTP/1.1 + HTTP/2 upstream that records whole requests and answers 200 `ok`.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
    _stop: oneshot::Sender<()>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let record = record.clone();
                        async move { Ok::<_, Infallible>(keep(req, record).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            seen,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    pub fn targets(&self) -> Vec<String> {
        self.seen().into_iter().map(|r| r.target).collect()
    }

    pub fn only(&self) -> Received {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "upstream saw {seen:#?}");
        seen.into_iter().next().unwrap()
    }

    pub fn assert_untouched(&self) {
        let seen = self.seen();
        assert!(
            seen.is_empty(),
            "the upstream must see nothing, saw {seen:#?}"
        );
    }
}

async fn keep(req: Request<Incoming>, record: Arc<Mutex<Vec<Received>>>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut bytes = Vec::new();
    let mut trailers = None;
    let mut body_error = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => bytes.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Err(_) => {
                body_error = true;
                break;
            }
        }
    }
    record.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body: bytes,
        trailers,
        body_error,
    });
    Response::new(gatehouse::body::full("ok"))
}

/// The route layout every class uses: protected `/api`, optional `/opt`, public `/pub`, and
/// `/admin` for the role `admin`; alice has the role `user` and scope `read`.
pub async fn gateway(up: &Recorder, extra: &str) -> TestGateway {
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&route("opt", "/opt", &up.url(), "auth = \"optional\""))
        .and(&route("pub", "/pub", &up.url(), "auth = \"public\""))
        .and(&route(
            "admin",
            "/admin",
            &up.url(),
            "require_roles = [\"admin\"]",
        ))
        .and(extra)
        .start()
        .await;
    gw.add_user("alice", "secret", &["user"], &["read"]).await;
    gw
}

/// What came back on one raw connection: every status line in order, and the raw text.
pub struct Exchange {
    pub text: String,
    /// Whether the server closed the connection within the wait.
    pub closed: bool,
}

impl Exchange {
    pub fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.")
            .filter_map(|(at, _)| {
                let line = &self.text[at..];
                // Only status lines: "HTTP/1.x NNN".
                line.get(9..12).and_then(|s| s.parse().ok())
            })
            .collect()
    }
}

/// Writes `bytes` on one connection and reads until the server closes it or `wait` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may close before reading everything (an early 4xx); that is an answer too.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(wait, read_all(&mut stream, &mut out))
        .await
        .is_ok();
    Exchange {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

async fn read_all(stream: &mut TcpStream, out: &mut Vec<u8>) {
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads from `stream` until it is closed, or fails the test after `guard`.
pub async fn until_closed(stream: &mut TcpStream, guard: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(guard, read_all(stream, &mut out))
        .await
        .unwrap_or_else(|_| panic!("the gateway kept the connection open for {guard:?}"));
    out
}
