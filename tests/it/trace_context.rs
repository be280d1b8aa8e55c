//! W3C trace context through the gateway (what the upstream receives, what the access log says)
//! and span export to a real OTLP/HTTP receiver on 127.0.0.1 decoding the protobuf with
//! opentelemetry-proto.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::{GatewayBuilder, ServedBinary, Upstream, client, route, serve_binary};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `(version, trace id, parent id, flags)` of a traceparent the upstream received, which must be
/// well-formed version 00.
fn fields(traceparent: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert!(
        traceparent
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{traceparent}"
    );
    assert_ne!(parts[1], "0".repeat(32));
    assert_ne!(parts[2], "0".repeat(16));
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

/// Sends one GET through `gw` with these headers; returns the traceparent and tracestate the
/// upstream got.
async fn through(
    gw: &crate::support::TestGateway,
    up: &Upstream,
    headers: &[(&str, &str)],
) -> (String, Option<String>) {
    let before = up.seen().len();
    let mut request = client().get(gw.url("/traced/x"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), before + 1);
    let last = seen.last().unwrap();
    assert_eq!(
        last.headers.get_all("traceparent").iter().count(),
        1,
        "exactly one traceparent upstream"
    );
    (
        last.header("traceparent").unwrap().to_owned(),
        last.header("tracestate").map(str::to_owned),
    )
}

async fn gateway(extra: &str) -> (crate::support::TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("traced", "/traced", &up.url(), "auth = \"public\"")
        .and(extra)
        .start()
        .await;
    (gw, up)
}

#[tokio::test]
async fn a_request_without_traceparent_starts_a_trace_and_every_request_gets_its_own_parent_id() {
    let (gw, up) = gateway("").await;
    let (first, state) = through(&gw, &up, &[]).await;
    let (version, trace, parent, flags) = fields(&first);
    assert_eq!(version, "00");
    // No [tracing]: nothing records the trace, so it goes on unsampled.
    assert_eq!(flags, "00");
    assert_eq!(state, None);
    let (second, _) = through(&gw, &up, &[]).await;
    let (_, trace2, parent2, _) = fields(&second);
    assert_ne!(trace, trace2, "a new trace per request without one");
    assert_ne!(parent, parent2);

    // The same caller span twice: one trace, two gateway spans.
    let (a, _) = through(&gw, &up, &[("traceparent", CALLER)]).await;
    let (b, _) = through(&gw, &up, &[("traceparent", CALLER)]).await;
    let ((_, ta, pa, _), (_, tb, pb, _)) = (fields(&a), fields(&b));
    assert_eq!((ta.as_str(), tb.as_str()), (CALLER_TRACE, CALLER_TRACE));
    assert_ne!(
        pa, CALLER_SPAN,
        "the caller's span id is not the upstream's parent"
    );
    assert_ne!(pa, pb, "each forwarded request is a span of its own");
}

/// A client that is not a trusted proxy may join its own trace, but the sampled flag it sends
/// is not ours: it cannot switch recording on (load on the collector) or off.
#[tokio::test]
async fn client_chosen_sampling_from_an_untrusted_peer_is_overridden() {
    // 127.0.0.1 is not a trusted proxy here; the gateway samples nothing (ratio 0).
    let (gw, up) =
        gateway("[tracing]\nendpoint = \"http://127.0.0.1:9/v1/traces\"\nsampling_ratio = 0.0\n")
            .await;
    let (sent, _) = through(&gw, &up, &[("traceparent", CALLER)]).await;
    let (_, trace, _, flags) = fields(&sent);
    assert_eq!(trace, CALLER_TRACE, "the trace id is kept");
    assert_eq!(flags, "00", "the client's sampled flag was followed");

    // Sampling everything: an untrusted client's "not sampled" does not switch it off either.
    let (gw, up) =
        gateway("[tracing]\nendpoint = \"http://127.0.0.1:9/v1/traces\"\nsampling_ratio = 1.0\n")
            .await;
    let unsampled = CALLER.replace("-01", "-00");
    let (sent, _) = through(&gw, &up, &[("traceparent", &unsampled)]).await;
    assert_eq!(fields(&sent).3, "01");
}

#[tokio::test]
async fn a_trusted_proxys_sampling_decision_is_followed() {
    let (gw, up) = gateway("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    let (sent, state) = through(
        &gw,
        &up,
        &[("traceparent", CALLER), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    let (_, trace, parent, flags) = fields(&sent);
    assert_eq!(trace, CALLER_TRACE);
    assert_ne!(parent, CALLER_SPAN);
    assert_eq!(flags, "01");
    assert_eq!(state.as_deref(), Some("congo=t61rcWkgMzE"));
}

/// A malformed traceparent (and the tracestate riding on it) never reaches the upstream: it is
/// replaced by a new trace, so no client can smuggle unparseable trace data to a tracer behind
/// the gateway.
#[tokio::test]
async fn malformed_traceparent_is_replaced_never_forwarded() {
    let (gw, up) = gateway("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    let cases = [
        CALLER.replace("4bf92f", "4BF92F"),
        CALLER.replacen("00-", "ff-", 1),
        format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
        format!("00-{CALLER_TRACE}-{}-01", "0".repeat(16)),
        format!("{CALLER}-extra"),
        CALLER[..50].to_owned(),
        "00-xyz".to_owned(),
    ];
    for bad in cases {
        let (sent, state) = through(
            &gw,
            &up,
            &[("traceparent", &bad), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let (version, trace, _, _) = fields(&sent);
        assert_eq!(version, "00", "{bad}");
        assert_ne!(
            trace, CALLER_TRACE,
            "{bad}: a trace id from a malformed header"
        );
        assert_eq!(state, None, "{bad}: tracestate without a valid traceparent");
    }
    // Two traceparent headers: which is the caller's? Neither.
    let r = client()
        .get(gw.url("/traced/x"))
        .header("traceparent", CALLER)
        .header("traceparent", CALLER.replace("4bf9", "5bf9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    let sent = seen
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    let (_, trace, _, _) = fields(&sent);
    assert!(!trace.ends_with("a6a3ce929d0e0e4736"), "{sent}");
}

/// The access-log line of the request with `request_id`, from the binary's JSON log (waits up
/// to 5 s for the writer thread).
async fn access_line(served: &ServedBinary, request_id: &str) -> serde_json::Value {
    for _ in 0..250 {
        let found = served
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["target"] == "access")
            .map(|line| line["fields"].clone())
            .find(|fields| fields["request_id"] == request_id);
        if let Some(fields) = found {
            return fields;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no access-log line for {request_id}");
}

#[tokio::test]
async fn the_access_log_names_the_trace() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[log]\nformat = \"json\"\n[auth]\nkeys_dir = \"{data}/keys\"\n[store]\npath = \"{data}/db\"\n{}",
            route("traced", "/traced", &up.url(), "auth = \"public\"")
        ),
    )
    .unwrap();
    let served = serve_binary(&file);
    let url = |path: &str| format!("http://{}{path}", served.addr);
    let r = client()
        .get(url("/traced/x"))
        .header("traceparent", CALLER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        fields(up.only().header("traceparent").unwrap()).1,
        CALLER_TRACE
    );
    let line = access_line(&served, &request_id).await;
    assert_eq!(line["trace_id"], CALLER_TRACE, "{line}");

    // A refused request has its trace id too (a new trace: none came).
    let r = client().get(url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let line = access_line(&served, &request_id).await;
    let trace = line["trace_id"].as_str().unwrap();
    assert_eq!(trace.len(), 32, "{line}");
    assert_ne!(trace, "0".repeat(32));
}

/// An OTLP/HTTP receiver: accepts `POST /v1/traces` (protobuf), hands every span it decodes to
/// the test with its resource's `service.name`.
async fn receiver() -> (SocketAddr, mpsc::UnboundedReceiver<(String, Span)>) {
    receiver_on(None).await
}

/// [`receiver`], over TLS with `acceptor`'s certificate when given.
async fn receiver_on(
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, mpsc::UnboundedReceiver<(String, Span)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let ok = req.method() == http::Method::POST
                            && req.uri().path() == "/v1/traces"
                            && req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                == Some("application/x-protobuf");
                        let body = Limited::new(req.into_body(), 4 << 20).collect().await;
                        let decoded = body
                            .ok()
                            .filter(|_| ok)
                            .and_then(|b| ExportTraceServiceRequest::decode(b.to_bytes()).ok());
                        let status = match decoded {
                            Some(export) => {
                                for resource in export.resource_spans {
                                    let service = resource
                                        .resource
                                        .iter()
                                        .flat_map(|r| &r.attributes)
                                        .find(|kv| kv.key == "service.name")
                                        .and_then(|kv| string(kv.value.as_ref()?.value.as_ref()?))
                                        .unwrap_or_default();
                                    for scope in resource.scope_spans {
                                        for span in scope.spans {
                                            let _ = tx.send((service.clone(), span));
                                        }
                                    }
                                }
                                StatusCode::OK
                            }
                            None => StatusCode::BAD_REQUEST,
                        };
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = status;
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn string(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn sampled_requests_are_exported_over_otlp_http_as_the_upstream_saw_them() {
    let (collector, mut spans) = receiver().await;
    let (gw, up) = gateway(&format!(
        "[tracing]\nendpoint = \"http://{collector}/v1/traces\"\nservice_name = \"edge-gw\"\nbatch_interval = \"100ms\"\n"
    ))
    .await;
    // A new trace, and one a client started (its trace id kept, its span our parent).
    let (fresh, _) = through(&gw, &up, &[]).await;
    let (joined, _) = through(&gw, &up, &[("traceparent", CALLER)]).await;
    let r = client().get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let mut got = Vec::new();
    while got.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), spans.recv())
            .await
            .expect("the collector received no span within 10 s")
            .unwrap();
        got.push(next);
    }
    for (sent, parent) in [(&fresh, None), (&joined, Some(CALLER_SPAN))] {
        let (_, trace, span_id, flags) = fields(sent);
        assert_eq!(flags, "01", "sampled at ratio 1.0");
        let (service, span) = got
            .iter()
            .find(|(_, s)| hex(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no span of trace {trace}"));
        assert_eq!(service, "edge-gw");
        assert_eq!(
            hex(&span.span_id),
            span_id,
            "the upstream's parent is the gateway's span"
        );
        assert_eq!(
            (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
            parent.map(str::to_owned)
        );
        assert_eq!(
            attribute(span, "gatehouse.route"),
            Some(Value::StringValue("traced".into()))
        );
        assert_eq!(
            attribute(span, "http.response.status_code"),
            Some(Value::IntValue(200))
        );
        assert_eq!(
            attribute(span, "http.request.method"),
            Some(Value::StringValue("GET".into()))
        );
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert!(span.start_time_unix_nano > 0);
    }
    let refused = got
        .iter()
        .find(|(_, s)| attribute(s, "http.response.status_code") == Some(Value::IntValue(404)))
        .expect("the refused request's span");
    assert_eq!(
        attribute(&refused.1, "gatehouse.route"),
        Some(Value::StringValue("-".into()))
    );
}

/// A collector that never answers costs the requests nothing: spans wait in the bounded queue
/// and each export gives up at `export_timeout`.
#[tokio::test]
async fn a_collector_that_never_answers_does_not_slow_requests() {
    // Accepts connections and never reads or answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let (gw, up) = gateway(&format!(
        "[tracing]\nendpoint = \"http://{collector}/v1/traces\"\nqueue_size = 4\nbatch_size = 2\nbatch_interval = \"50ms\"\nexport_timeout = \"300ms\"\n"
    ))
    .await;
    let spans = |outcome: &str| -> f64 {
        let series = format!("gatehouse_trace_spans_total{{outcome=\"{outcome}\"}} ");
        gatehouse::metrics::render()
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0.0)
    };
    let (dropped, failed) = (spans("dropped"), spans("failed"));
    let started = std::time::Instant::now();
    for _ in 0..40 {
        through(&gw, &up, &[]).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "40 requests took {:?}",
        started.elapsed()
    );
    // Two spans per 300 ms leave: the queue of 4 overflowed, and exports gave up in time.
    assert!(spans("dropped") > dropped, "no span was dropped");
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    while spans("failed") <= failed {
        assert!(
            std::time::Instant::now() < give_up,
            "no export gave up within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.abort();
}

/// The last request's span waits for a batch due in a minute; shutdown sends it at once rather
/// than dropping it with the process.
#[tokio::test]
async fn spans_still_queued_at_shutdown_are_flushed_not_lost() {
    let (collector, mut spans) = receiver().await;
    let (mut gw, up) = gateway(&format!(
        "[tracing]\nendpoint = \"http://{collector}/v1/traces\"\nbatch_interval = \"60s\"\n"
    ))
    .await;
    let (sent, _) = through(&gw, &up, &[]).await;
    let trace = fields(&sent).1;
    // Only the flush can deliver it within the test's bound: its batch is due in 60 s.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), spans.recv())
            .await
            .is_err(),
        "a span arrived before shutdown; the batch interval does not hold it"
    );
    gw.shutdown().await;
    let (_, span) = tokio::time::timeout(Duration::from_secs(5), spans.recv())
        .await
        .expect("the span queued at shutdown never reached the collector")
        .unwrap();
    assert_eq!(hex(&span.trace_id), trace);
}

/// The flush at shutdown is bounded: a collector that never answers holds shutdown no longer
/// than `export_timeout` (and never past the server's `shutdown_grace`).
#[tokio::test]
async fn a_silent_collector_does_not_hold_shutdown_past_the_bound() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    for (extra, bound) in [
        ("export_timeout = \"500ms\"\n", Duration::from_millis(500)),
        (
            "export_timeout = \"30s\"\n[server]\nshutdown_grace = \"500ms\"\n",
            Duration::from_millis(500),
        ),
    ] {
        let (mut gw, up) = gateway(&format!(
            "[tracing]\nendpoint = \"http://{collector}/v1/traces\"\nbatch_interval = \"60s\"\n{extra}"
        ))
        .await;
        through(&gw, &up, &[]).await;
        let started = std::time::Instant::now();
        gw.shutdown().await;
        let took = started.elapsed();
        assert!(
            took < bound + Duration::from_millis(1500),
            "{extra}: shutdown took {took:?}"
        );
    }
    held.abort();
}

/// A collector behind a private CA: trusted with `[tracing] ca_file`, and a missing file is
/// refused at startup naming the key.
#[tokio::test]
async fn an_https_collector_with_a_private_ca_receives_spans_with_ca_file() {
    use rustls_pki_types::pem::PemObject;
    let pki = crate::tls::pki();
    let certs =
        vec![rustls_pki_types::CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let (collector, mut spans) = receiver_on(Some(acceptor)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("collector-ca.pem");
    std::fs::write(&ca, &pki.cert_pem).unwrap();
    let tracing = |ca: &std::path::Path| {
        format!(
            "[tracing]\nendpoint = \"https://127.0.0.1:{}/v1/traces\"\nbatch_interval = \"50ms\"\nca_file = \"{}\"\n",
            collector.port(),
            ca.display()
        )
    };
    let (gw, up) = gateway(&tracing(&ca)).await;
    let (sent, _) = through(&gw, &up, &[]).await;
    let (_, span) = tokio::time::timeout(Duration::from_secs(10), spans.recv())
        .await
        .expect("the https collector received no span within 10 s")
        .unwrap();
    assert_eq!(hex(&span.trace_id), fields(&sent).1);

    // Without ca_file the private CA is not trusted: nothing arrives.
    let (gw, up) = gateway(&format!(
        "[tracing]\nendpoint = \"https://127.0.0.1:{}/v1/traces\"\nbatch_interval = \"50ms\"\n",
        collector.port()
    ))
    .await;
    through(&gw, &up, &[]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(700), spans.recv())
            .await
            .is_err(),
        "a span reached a collector whose CA the gateway does not trust"
    );

    // A missing ca_file: the preflight (serve and check-config) names the key.
    let missing = dir.path().join("none").join("ca.pem");
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[auth]\nkeys_dir = \"{d}/keys\"\n[store]\npath = \"{d}/db\"\n{}{}",
            crate::support::route("traced", "/traced", &up.url(), "auth = \"public\""),
            tracing(&missing),
            d = dir.path().display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env_remove("GATEHOUSE_CONFIG")
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("tracing.ca_file"), "{stderr}");
}
