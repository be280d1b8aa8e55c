//! Prometheus metrics: the process-wide recorder and one small function per event, so call sites
//! stay one line and label values stay bounded (route names and fixed reasons, never paths,
//! users or tokens).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: sub-millisecond proxying up to slow upstreams.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder once (later calls return the same handle). `None` when another
/// recorder was installed first, in which case `/metrics` says so.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The exposition text.
pub fn render() -> Option<String> {
    install().map(PrometheusHandle::render)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "gatehouse_requests_total",
        "Requests by route and status class."
    );
    describe_histogram!(
        "gatehouse_request_duration_seconds",
        "Time from request head to response head, by route."
    );
    describe_histogram!(
        "gatehouse_upstream_duration_seconds",
        "Time the upstream took to answer, by route."
    );
    describe_counter!(
        "gatehouse_auth_failures_total",
        "Rejected access tokens by reason."
    );
    describe_counter!(
        "gatehouse_authz_denials_total",
        "Requests refused for a missing scope or role, by route."
    );
    describe_counter!("gatehouse_logins_total", "Password logins by outcome.");
    describe_counter!(
        "gatehouse_limit_refusals_total",
        "Attempts refused by a rate limit or lockout, by kind."
    );
    describe_gauge!(
        "gatehouse_hash_queue_depth",
        "Password hash jobs running or waiting."
    );
    describe_counter!(
        "gatehouse_verify_cache_total",
        "Verification cache lookups by result."
    );
    describe_gauge!("gatehouse_open_connections", "Client connections open now.");
    describe_counter!(
        "gatehouse_upstream_errors_total",
        "Failed upstream exchanges by kind."
    );
    describe_counter!(
        "gatehouse_config_reloads_total",
        "Configuration reloads by outcome."
    );
}

/// One finished request.
pub fn request(route: &str, status: u16, total: Duration, upstream: Option<Duration>) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    counter!("gatehouse_requests_total", "route" => route.to_owned(), "status" => class)
        .increment(1);
    histogram!("gatehouse_request_duration_seconds", "route" => route.to_owned())
        .record(total.as_secs_f64());
    if let Some(upstream) = upstream {
        histogram!("gatehouse_upstream_duration_seconds", "route" => route.to_owned())
            .record(upstream.as_secs_f64());
    }
}

pub fn auth_failure(reason: &'static str) {
    counter!("gatehouse_auth_failures_total", "reason" => reason).increment(1);
}

pub fn authz_denied(route: &str) {
    counter!("gatehouse_authz_denials_total", "route" => route.to_owned()).increment(1);
}

/// `outcome`: success, bad_credentials, limited, busy, error.
pub fn login(outcome: &'static str) {
    counter!("gatehouse_logins_total", "outcome" => outcome).increment(1);
}

/// `kind`: address, user, lockout.
pub fn limit_refusal(kind: &'static str) {
    counter!("gatehouse_limit_refusals_total", "kind" => kind).increment(1);
}

pub fn hash_queue_depth(depth: usize) {
    gauge!("gatehouse_hash_queue_depth").set(depth as f64);
}

pub fn verify_cache(hit: bool) {
    counter!("gatehouse_verify_cache_total", "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

pub fn upstream_error(kind: &'static str) {
    counter!("gatehouse_upstream_errors_total", "kind" => kind).increment(1);
}

/// `outcome`: ok, invalid.
pub fn reload(outcome: &'static str) {
    counter!("gatehouse_config_reloads_total", "outcome" => outcome).increment(1);
}

/// Counts an open client connection for as long as it lives.
pub struct OpenConnection(());

impl OpenConnection {
    pub fn new() -> Self {
        gauge!("gatehouse_open_connections").increment(1.0);
        OpenConnection(())
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!("gatehouse_open_connections").decrement(1.0);
    }
}
