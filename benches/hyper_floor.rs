//! Load-test helper, not a measurement: the least a proxy built on hyper can spend per request,
//! the floor under every gatehouse figure. A plain HTTP/1.1 reverse proxy with nothing but what
//! proxying needs: the current-thread runtime, hyper's server connection, and for each client
//! connection one upstream connection of its own (hyper's client connection, driven by its own
//! task), so no pool, no timers, no header work beyond dropping `Connection`, and mimalloc as
//! gatehouse's binary uses. Usage: `hyper_floor serve ADDR UPSTREAM_ADDR MAX_SECONDS`; it prints
//! `listening ADDR` once bound and exits by itself after MAX_SECONDS. Run by `cargo bench` it
//! exits at once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

mod helper;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Sender = Arc<Mutex<Option<SendRequest<Incoming>>>>;

fn main() -> ExitCode {
    helper::main(
        "hyper_floor",
        "ADDR UPSTREAM_ADDR MAX_SECONDS",
        false,
        |between| match between {
            [upstream] => upstream.parse().ok(),
            _ => None,
        },
        |addr, upstream, max| {
            helper::accept_until(addr, max, move |stream| serve_connection(stream, upstream))
        },
    )
}

/// One client connection and the upstream connection that serves only it.
async fn serve_connection(stream: TcpStream, upstream: SocketAddr) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await
    else {
        return;
    };
    tokio::spawn(connection);
    let sender: Sender = Arc::new(Mutex::new(Some(sender)));
    let service = service_fn(move |req| {
        let sender = sender.clone();
        async move { Ok::<_, hyper::Error>(forward(&sender, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn forward(
    sender: &Sender,
    mut req: Request<Incoming>,
) -> Response<Either<Incoming, Empty<Bytes>>> {
    // HTTP/1 serves one request at a time, so the sender is always there; taken out only while
    // waiting for the previous exchange to finish.
    let taken = sender.lock().ok().and_then(|mut slot| slot.take());
    let Some(mut up) = taken else {
        return status(StatusCode::BAD_GATEWAY);
    };
    if up.ready().await.is_err() {
        return status(StatusCode::BAD_GATEWAY);
    }
    req.headers_mut().remove(http::header::CONNECTION);
    let response = up.send_request(req);
    if let Ok(mut slot) = sender.lock() {
        *slot = Some(up);
    }
    match response.await {
        Ok(response) => response.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Either<Incoming, Empty<Bytes>>> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}
