//! Load-test helper, not a measurement: the "cost of proxying" baseline for `benches/load.sh`. A
//! plain HTTP/1.1 reverse proxy with no authentication, built from the same parts as gatehouse
//! (hyper server, hyper-util pooled client with `TCP_NODELAY`): it rewrites the target to the
//! upstream, drops `Host` and `Connection`, forwards, and streams the response back. Usage:
//! `passthrough serve ADDR UPSTREAM_AUTHORITY MAX_SECONDS`; it prints `listening ADDR` once bound
//! and exits by itself after MAX_SECONDS. Run by `cargo bench` it exits at once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

mod helper;

type Upstream = Client<HttpConnector, Incoming>;

fn main() -> ExitCode {
    helper::main(
        "passthrough",
        "ADDR UPSTREAM_AUTHORITY MAX_SECONDS",
        true,
        |between| match between {
            [upstream] => upstream.parse().ok(),
            _ => None,
        },
        serve,
    )
}

async fn serve(addr: SocketAddr, upstream: Authority, max: Duration) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(connector);
    let shared = Arc::new((client, upstream));
    helper::accept_until(addr, max, move |stream| {
        let shared = shared.clone();
        async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, hyper::Error>(forward(&shared.0, &shared.1, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

async fn forward(
    client: &Upstream,
    upstream: &Authority,
    req: Request<Incoming>,
) -> Response<BoxBody<Bytes, hyper::Error>> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.clone())
        .path_and_query(path)
        .build();
    let Ok(uri) = uri else {
        return status(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers.remove(http::header::HOST);
    parts.headers.remove(http::header::CONNECTION);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<BoxBody<Bytes, hyper::Error>> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = code;
    response
}
