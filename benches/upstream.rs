//! Load-test helper, not a measurement: the fastest upstream we can put behind a proxy, so the
//! proxy is what `benches/load.sh` measures. HTTP/1.1 with keep-alive; every request gets a fixed
//! `200` with the body `ok`. Usage: `upstream serve ADDR MAX_SECONDS`; it prints
//! `listening ADDR` once bound and exits by itself after MAX_SECONDS. Run by `cargo bench` (no
//! `serve` argument) it exits at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

mod helper;

fn main() -> ExitCode {
    helper::main(
        "upstream",
        "ADDR MAX_SECONDS",
        true,
        |between| between.is_empty().then_some(()),
        |addr, (), max| serve(addr, max),
    )
}

async fn serve(addr: SocketAddr, max: Duration) -> std::io::Result<()> {
    helper::accept_until(addr, max, |stream| async move {
        let service = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}
