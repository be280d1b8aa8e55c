//! Span export over OTLP/HTTP (protobuf) when `[tracing]` is configured: the request path hands
//! a finished, sampled span to a bounded queue without waiting ([`Exporter::record`]); one task
//! sends batches of at most `batch_size` spans, each at most `batch_interval` after its first
//! span, every request bounded by `export_timeout`. A full queue drops the span (counted in
//! `gatehouse_trace_spans_total{outcome="dropped"}`): tracing must never slow or stop proxying.
//! On shutdown [`Exporter::flush`] sends what is queued at once instead of at the batch's due
//! time, waiting no longer than the bound it is given.
//!
//! The OTLP encoding is opentelemetry-otlp's; the transport is the gateway's own pooled hyper
//! client ([`crate::proxy::UpstreamClient`], rustls with aws-lc-rs and the system roots or `ca_file`'s), so
//! tracing adds no second HTTP stack or TLS provider.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::{mpsc, oneshot};

use super::TracingConfig;
use crate::proxy::{ClientSettings, UpstreamClient};

/// Largest collector answer read (an `ExportTraceServiceResponse` is a few bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("tracing export needs a running tokio runtime")]
    NoRuntime,
    #[error("building the OTLP exporter: {0}")]
    Build(String),
}

/// One finished request's span, as the request path hands it over: plain data, turned into the
/// OTLP span by the export task.
#[derive(Debug)]
pub struct FinishedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: Method,
    /// The route's name, the endpoint's label, or `-`.
    pub route: String,
    pub status: u16,
    pub request_id: String,
}

/// The handle the gateway records spans with; the export task ends (after sending what is
/// queued) once every handle is dropped.
pub struct Exporter {
    queue: mpsc::Sender<FinishedSpan>,
    /// Asks the export task to send what is queued now; it answers once that export ended.
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    /// What it was started with: a reload keeps an exporter whose settings did not change.
    pub config: TracingConfig,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Builds the OTLP exporter and starts its task on the current tokio runtime.
    pub fn start(config: &TracingConfig) -> Result<Exporter, ExportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let transport = Transport {
            client: UpstreamClient::new(&ClientSettings {
                ca_file: config.ca_file.clone(),
                connect_timeout: config.export_timeout,
                ..ClientSettings::default()
            })
            .map_err(|e| ExportError::Build(e.to_string()))?,
            timeout: config.export_timeout,
        };
        let mut otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(transport)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.to_string())
            .with_timeout(config.export_timeout)
            .build()
            .map_err(|e| ExportError::Build(e.to_string()))?;
        otlp.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .build(),
        );
        let (queue, spans) = mpsc::channel(config.queue_size);
        let (flushes, flush_requests) = mpsc::channel(1);
        runtime.spawn(run(spans, flush_requests, otlp, config.clone()));
        Ok(Exporter {
            queue,
            flushes,
            config: config.clone(),
        })
    }

    /// Queues a finished span; never waits. A full queue drops it.
    pub fn record(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            crate::metrics::trace_spans("dropped", 1);
        }
    }

    /// Sends the queued spans now (shutdown: a batch waiting for its `batch_interval` would be
    /// lost). Returns once that export ended, or after `bound` at the latest (false then); the
    /// export itself is bounded by `export_timeout` too.
    pub async fn flush(&self, bound: Duration) -> bool {
        let due = tokio::time::Instant::now() + bound;
        let (done, flushed) = oneshot::channel();
        let asked = tokio::time::timeout_at(due, self.flushes.send(done)).await;
        if !matches!(asked, Ok(Ok(()))) {
            return false;
        }
        matches!(tokio::time::timeout_at(due, flushed).await, Ok(Ok(())))
    }
}

/// The export task: batches off the queue until every sender is gone, then sends the rest. A
/// flush request ends the batch being gathered at once, with every span queued so far.
async fn run(
    mut spans: mpsc::Receiver<FinishedSpan>,
    mut flush_requests: mpsc::Receiver<oneshot::Sender<()>>,
    otlp: opentelemetry_otlp::SpanExporter,
    config: TracingConfig,
) {
    let scope = InstrumentationScope::builder("gatehouse")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut failing = false;
    let mut open = true;
    let mut flushes_open = true;
    while open {
        let mut batch = Vec::with_capacity(config.batch_size.min(64));
        let mut flushed = None;
        tokio::select! {
            first = spans.recv() => match first {
                Some(first) => batch.push(span_data(first, &scope)),
                None => break,
            },
            request = flush_requests.recv(), if flushes_open => match request {
                Some(done) => flushed = Some(done),
                None => {
                    flushes_open = false;
                    continue;
                }
            },
        }
        let due = tokio::time::Instant::now() + config.batch_interval;
        while batch.len() < config.batch_size {
            if flushed.is_some() {
                // Everything queued now, without waiting for more.
                match spans.try_recv() {
                    Ok(span) => batch.push(span_data(span, &scope)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
                continue;
            }
            tokio::select! {
                next = tokio::time::timeout_at(due, spans.recv()) => match next {
                    Ok(Some(span)) => batch.push(span_data(span, &scope)),
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                },
                request = flush_requests.recv(), if flushes_open => match request {
                    Some(done) => flushed = Some(done),
                    None => flushes_open = false,
                },
            }
        }
        if !batch.is_empty() {
            export(&otlp, batch, &config, &mut failing).await;
        }
        if let Some(done) = flushed {
            // A batch full before the queue was empty: the rest goes out before answering.
            while let Ok(span) = spans.try_recv() {
                let mut rest = vec![span_data(span, &scope)];
                while rest.len() < config.batch_size
                    && let Ok(span) = spans.try_recv()
                {
                    rest.push(span_data(span, &scope));
                }
                export(&otlp, rest, &config, &mut failing).await;
            }
            let _ = done.send(());
        }
    }
}

/// One export request, bounded by `export_timeout`; counted, and logged when exports start or
/// stop failing.
async fn export(
    otlp: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    config: &TracingConfig,
    failing: &mut bool,
) {
    let count = batch.len() as u64;
    let sent = tokio::time::timeout(config.export_timeout, otlp.export(batch)).await;
    match sent {
        Ok(Ok(())) => {
            crate::metrics::trace_spans("exported", count);
            if std::mem::take(failing) {
                tracing::info!(endpoint = %config.endpoint, "exporting spans again");
            }
        }
        failed => {
            crate::metrics::trace_spans("failed", count);
            if !std::mem::replace(failing, true) {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", config.export_timeout),
                };
                tracing::warn!(
                    endpoint = %config.endpoint,
                    %error,
                    "span export failed; spans are dropped until the collector answers"
                );
            }
        }
    }
}

fn span_data(span: FinishedSpan, scope: &InstrumentationScope) -> SpanData {
    let status = if span.status >= 500 {
        Status::error(format!("HTTP {}", span.status))
    } else {
        Status::Unset
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: span.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: span.parent_id.is_some(),
        span_kind: SpanKind::Server,
        name: format!("{} {}", span.method, span.route).into(),
        start_time: span.start,
        end_time: span.end,
        attributes: vec![
            KeyValue::new("http.request.method", span.method.to_string()),
            KeyValue::new("http.response.status_code", i64::from(span.status)),
            KeyValue::new("gatehouse.route", span.route),
            KeyValue::new("gatehouse.request_id", span.request_id),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// opentelemetry-otlp's HTTP transport on the gateway's own client: one POST, bounded in time
/// (connecting included) and in the answer's size.
struct Transport {
    client: UpstreamClient,
    timeout: Duration,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let due = tokio::time::Instant::now() + self.timeout;
        let response = self
            .client
            .send(request.map(crate::body::full), self.timeout)
            .await?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES).collect();
        let body = tokio::time::timeout_at(due, body)
            .await
            .map_err(|_| "the collector's answer did not arrive in time")??;
        Ok(Response::from_parts(parts, body.to_bytes()))
    }
}
