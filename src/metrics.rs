//! Prometheus metrics: the process-wide recorder and one small function per event, so call sites
//! stay one line and label values stay bounded (route names and fixed reasons, never paths,
//! users or tokens).
//!
//! A series exists once something happened to it: a route's series are registered at its first
//! request of each kind (and cached in [`RouteMetrics`]), so a gateway with hundreds of routes
//! scrapes small before traffic. The recorder cannot forget a series, so the series of a route
//! that a reload removed are left out of [`render`] from then on ([`routes_removed`]; a route of
//! that name that comes back carries on counting where it was). Beside the recorder's series, [`render`] adds `gatehouse_build_info` and the standard `process_*` metrics
//! ([`process`]).

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub mod process;

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
            gauge!("gatehouse_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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

/// The exposition text: the recorder's series but those of gone routes, then the process's.
pub fn render() -> Option<String> {
    let text = install()?.render();
    let mut out = {
        let routes = ROUTES.read().unwrap_or_else(|e| e.into_inner());
        match routes
            .as_ref()
            .filter(|r| r.values().any(|&live| live == 0))
        {
            Some(routes) => without_gone_routes(&text, routes),
            None => text,
        }
    };
    process::render(&mut out);
    Some(out)
}

/// Every route name a running configuration has had, with how many running configurations have
/// it now (one in a gateway process; tests run several side by side). A name at 0 is gone: its
/// series are left out of [`render`]. Touched only when a configuration is built or replaced and
/// at a scrape, never per request.
static ROUTES: RwLock<Option<HashMap<String, usize>>> = RwLock::new(None);

/// A running configuration now has these routes (the first one built, or a reload added them):
/// their series are shown (again).
pub fn routes_added<'a>(routes: impl IntoIterator<Item = &'a str>) {
    let mut map = ROUTES.write().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    for route in routes {
        *map.entry(route.to_owned()).or_insert(0) += 1;
    }
}

/// A running configuration no longer has these routes (a reload removed them, or it stopped):
/// once no configuration has a route, its series are left out of [`render`].
pub fn routes_removed<'a>(routes: impl IntoIterator<Item = &'a str>) {
    let mut map = ROUTES.write().unwrap_or_else(|e| e.into_inner());
    if let Some(map) = map.as_mut() {
        for route in routes {
            if let Some(live) = map.get_mut(route) {
                *live = live.saturating_sub(1);
            }
        }
    }
}

/// `text` without the sample lines whose `route` label names a gone route. Route names are
/// `[A-Za-z0-9._-]` (the route table checks), so the label's value needs no unescaping.
fn without_gone_routes(text: &str, routes: &HashMap<String, usize>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let gone = route_label(line).is_some_and(|route| routes.get(route) == Some(&0));
        if !gone {
            out.push_str(line);
        }
    }
    out
}

/// The value of a sample line's `route` label.
fn route_label(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    let (_, labels) = line.split_once('{')?;
    let (labels, _) = labels.split_once('}')?;
    labels.split(',').find_map(|pair| {
        pair.strip_prefix("route=\"")
            .and_then(|value| value.strip_suffix('"'))
    })
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
    describe_counter!(
        "gatehouse_trace_spans_total",
        "Finished spans by outcome: exported, failed, dropped (export queue full); with [tracing] only."
    );
    describe_gauge!(
        "gatehouse_build_info",
        "Always 1; the running build's version as a label."
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

/// One route's request metrics. Each series is registered at the route's first request of its
/// kind and its handle kept, so later requests record without label allocations or registry
/// lookups (one atomic load to find the handle), and a route nobody called adds nothing to the
/// exposition.
pub struct RouteMetrics {
    route: String,
    requests: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
    upstream: OnceLock<Histogram>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        install();
        Self {
            route: route.to_owned(),
            requests: Default::default(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
        }
    }

    /// One finished request on this route.
    pub fn request(&self, status: u16, total: Duration, upstream: Option<Duration>) {
        let class = status_class(status);
        self.requests[class]
            .get_or_init(|| {
                counter!(
                    "gatehouse_requests_total",
                    "route" => self.route.clone(),
                    "status" => STATUS_CLASSES[class]
                )
            })
            .increment(1);
        self.duration
            .get_or_init(
                || histogram!("gatehouse_request_duration_seconds", "route" => self.route.clone()),
            )
            .record(total.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream
                .get_or_init(|| {
                    histogram!("gatehouse_upstream_duration_seconds", "route" => self.route.clone())
                })
                .record(upstream.as_secs_f64());
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

/// How a proxied route counts its stalled upstream response bodies: the series is registered at
/// the first stall (a stall is rare; the lookup then costs nothing that matters).
pub fn upstream_body_timeout(route: &str) {
    counter!("gatehouse_upstream_body_timeouts_total", "route" => route.to_owned()).increment(1);
}

/// A request the listener answered itself (a head the HTTP/1 parser refused, an HTTP/2 header list
/// over the limit...): counted with the requests of the unrouted route `-`, like the pipeline's
/// refusals before a route, and by `reason`.
pub fn listener_refusal(status: u16, reason: &'static str) {
    let class = STATUS_CLASSES[status_class(status)];
    counter!("gatehouse_requests_total", "route" => "-", "status" => class).increment(1);
    counter!("gatehouse_listener_refusals_total", "reason" => reason).increment(1);
}

/// Finished spans by `outcome`: exported, failed (the collector refused or did not answer in
/// time), dropped (the export queue was full).
pub fn trace_spans(outcome: &'static str, count: u64) {
    counter!("gatehouse_trace_spans_total", "outcome" => outcome).increment(count);
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
