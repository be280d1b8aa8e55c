//! Prometheus metrics: the process-wide recorder and one small function per event, so call sites
//! stay one line and label values stay bounded (route names and fixed reasons, never paths,
//! users or tokens).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: sub-millisecond proxying up to slow upstreams.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// How often recorded histogram samples are folded into their buckets. The recorder keeps every
/// sample (value and timestamp) until then, so without this a gateway nobody scrapes would grow
/// by tens of bytes per request for ever.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder once (later calls return the same handle), with a thread that
/// folds histogram samples every [`UPKEEP_EVERY`]. `None` when another recorder was installed
/// first, in which case `/metrics` says so.
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
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("gatehouse-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = started {
                // Rendering folds samples too: a scraped gateway stays bounded without it.
                tracing::warn!(%error, "cannot start the metrics upkeep thread");
            }
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
    describe_counter!(
        "gatehouse_shared_limit_fallbacks_total",
        "Checks of a shared (Redis) limit that failed or timed out, so the gateway's own limit decided, by kind."
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
        "gatehouse_upstream_body_timeouts_total",
        "Responses cut because the upstream's body stalled past the route's body_timeout, by route."
    );
    describe_counter!(
        "gatehouse_config_reloads_total",
        "Configuration reloads by outcome."
    );
    describe_counter!(
        "gatehouse_listener_refusals_total",
        "Requests the listener answered itself, before the pipeline, by reason."
    );
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One route's request metrics, registered when the gateway is built so that a proxied request
/// records them without label allocations or registry lookups.
pub struct RouteMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    upstream: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        install();
        let route = route.to_owned();
        Self {
            requests: STATUS_CLASSES.map(|class| {
                counter!("gatehouse_requests_total", "route" => route.clone(), "status" => class)
            }),
            duration: histogram!("gatehouse_request_duration_seconds", "route" => route.clone()),
            upstream: histogram!("gatehouse_upstream_duration_seconds", "route" => route),
        }
    }

    /// One finished request on this route.
    pub fn request(&self, status: u16, total: Duration, upstream: Option<Duration>) {
        self.requests[status_class(status)].increment(1);
        self.duration.record(total.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream.record(upstream.as_secs_f64());
        }
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

/// `kind`: address, refresh_address, user, client (a client name's budget), lockout.
pub fn limit_refusal(kind: &'static str) {
    counter!("gatehouse_limit_refusals_total", "kind" => kind).increment(1);
}

/// A shared (Redis) limit that could not answer, so the in-process one decided. `kind`: address,
/// refresh_address, user.
pub fn shared_limit_fallback(kind: &'static str) {
    counter!("gatehouse_shared_limit_fallbacks_total", "kind" => kind).increment(1);
}

pub fn hash_queue_depth(depth: usize) {
    gauge!("gatehouse_hash_queue_depth").set(depth as f64);
}

/// What the verification cache answered for one token.
#[derive(Clone, Copy)]
pub enum CacheLookup {
    /// Verified earlier and still valid.
    Hit,
    /// Not known: verified now.
    Miss,
    /// Refused earlier for a reason that cannot change: refused again without verifying.
    Refused,
}

/// Called on every authenticated request, so its handles are registered once.
pub fn verify_cache(lookup: CacheLookup) {
    static HANDLES: OnceLock<[Counter; 3]> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        install();
        ["hit", "miss", "refused"]
            .map(|result| counter!("gatehouse_verify_cache_total", "result" => result))
    });
    handles[lookup as usize].increment(1);
}

pub fn upstream_error(kind: &'static str) {
    counter!("gatehouse_upstream_errors_total", "kind" => kind).increment(1);
}

/// The handle a proxied route counts its stalled upstream response bodies with, registered
/// when the gateway is built so the series exists (at 0) before the first stall.
pub fn upstream_body_timeouts(route: &str) -> Counter {
    install();
    counter!("gatehouse_upstream_body_timeouts_total", "route" => route.to_owned())
}

/// A request the listener answered itself (a head the HTTP/1 parser refused, an HTTP/2 header list
/// over the limit...): counted with the requests of the unrouted route `-`, like the pipeline's
/// refusals before a route, and by `reason`.
pub fn listener_refusal(status: u16, reason: &'static str) {
    let class = STATUS_CLASSES[status_class(status)];
    counter!("gatehouse_requests_total", "route" => "-", "status" => class).increment(1);
    counter!("gatehouse_listener_refusals_total", "reason" => reason).increment(1);
}

/// `outcome`: ok, invalid, needs_restart (a restart-only key changed), unsettled (the file
/// kept changing while read).
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
