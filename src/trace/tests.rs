//! Trace Context parsing, the sampling rule and the `[tracing]` settings.

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::config::Config;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

#[test]
fn a_valid_traceparent_is_read() {
    let p = parse_traceparent(VALID.as_bytes()).unwrap();
    assert_eq!(p.trace_id[0], 0x4b);
    assert_eq!(p.trace_id[15], 0x36);
    assert_eq!(
        p.parent_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
    );
    assert!(p.sampled);
    let unsampled = VALID.replace("-01", "-00");
    assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
    // A later version with more fields after a '-' is read as far as version 00 goes.
    let later = VALID.replacen("00-", "01-", 1) + "-what-comes-next";
    assert!(parse_traceparent(later.as_bytes()).is_some());
}

#[test]
fn malformed_traceparents_are_refused_per_the_spec() {
    let cases = [
        ("version ff", VALID.replacen("00-", "ff-", 1)),
        ("uppercase version", VALID.replacen("00-", "0A-", 1)),
        ("uppercase trace id", VALID.replace("4bf92f", "4BF92F")),
        ("uppercase parent id", VALID.replace("00f067aa", "00F067AA")),
        ("uppercase flags", VALID.replace("-01", "-0A")),
        (
            "all-zero trace id",
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
        ),
        (
            "all-zero parent id",
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16)),
        ),
        (
            "short trace id",
            VALID.replace("4bf92f3577b34da6", "4bf92f3577b34da"),
        ),
        ("long trace id", VALID.replace("4bf92f", "4bf92ff")),
        ("version 00 too long", format!("{VALID}-extra")),
        ("version 00 too short", VALID[..54].to_owned()),
        (
            "later version without a dash after the flags",
            VALID.replacen("00-", "01-", 1) + "x",
        ),
        ("non-hex", VALID.replace("4bf9", "4bg9")),
        ("wrong separators", VALID.replace('-', "_")),
        ("empty", String::new()),
        ("garbage", "hello".to_owned()),
    ];
    for (what, value) in cases {
        assert_eq!(parse_traceparent(value.as_bytes()), None, "{what}: {value}");
    }
}

#[test]
fn a_kept_trace_gets_a_new_parent_id_and_the_callers_becomes_the_gateways_parent() {
    let ctx = TraceContext::start(&headers(&[("traceparent", VALID)]), true, Sampler::NEVER);
    assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        ctx.parent_id,
        Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
    );
    let sent = ctx.traceparent();
    let parsed = parse_traceparent(sent.as_bytes()).expect("what is sent is valid");
    assert_eq!(parsed.trace_id, ctx.trace_id);
    assert_eq!(parsed.parent_id, ctx.span_id);
    assert_ne!(
        &sent[36..52],
        "00f067aa0ba902b7",
        "the caller's span id is not forwarded"
    );
}

#[test]
fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
    let mut seen = std::collections::HashSet::new();
    for incoming in [
        headers(&[]),
        headers(&[("traceparent", &VALID.replace("4bf92f", "4BF92F"))]),
        headers(&[("traceparent", VALID), ("traceparent", VALID)]),
    ] {
        let ctx = TraceContext::start(&incoming, true, Sampler::NEVER);
        assert_eq!(ctx.parent_id, None);
        assert_ne!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parse_traceparent(ctx.traceparent().as_bytes()).is_some());
        assert!(seen.insert(ctx.trace_id), "trace ids repeat");
    }
}

#[test]
fn client_chosen_sampling_is_followed_only_from_trusted_peers() {
    let sampled = headers(&[("traceparent", VALID)]);
    let unsampled = headers(&[("traceparent", &VALID.replace("-01", "-00"))]);
    // Trusted: the caller's flag, whatever our ratio.
    assert!(TraceContext::start(&sampled, true, Sampler::NEVER).sampled);
    assert!(!TraceContext::start(&unsampled, true, Sampler::ratio(1.0)).sampled);
    // Untrusted: our decision either way; the trace id stays.
    let ctx = TraceContext::start(&sampled, false, Sampler::NEVER);
    assert!(!ctx.sampled);
    assert!(ctx.traceparent().ends_with("-00"));
    assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(TraceContext::start(&unsampled, false, Sampler::ratio(1.0)).sampled);
}

#[test]
fn the_sampling_ratio_is_drawn_not_taken_from_the_trace_id() {
    let sampler = Sampler::ratio(0.25);
    let n = 4000;
    // The same client-chosen trace id every time: a trace-id-based sampler would answer the
    // same way each time.
    let incoming = headers(&[("traceparent", VALID)]);
    let sampled = (0..n)
        .filter(|_| TraceContext::start(&incoming, false, sampler).sampled)
        .count();
    assert!((700..1300).contains(&sampled), "{sampled} of {n} at 0.25");
    assert!(!Sampler::ratio(0.0).decide(0));
    assert!(Sampler::ratio(1.0).decide(u64::MAX));
}

#[test]
fn tracestate_is_passed_on_only_with_a_valid_parent_and_within_bounds() {
    let ctx = TraceContext::start(
        &headers(&[
            ("traceparent", VALID),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7, tenant@vendor=x"),
        ]),
        false,
        Sampler::NEVER,
    );
    let mut out = headers(&[("tracestate", "stale=1")]);
    ctx.write(&mut out);
    assert_eq!(
        out.get_all("tracestate").iter().collect::<Vec<_>>(),
        ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7, tenant@vendor=x"]
    );
    let dropped = |pairs: &[(&'static str, &str)]| {
        let mut out = headers(&[("tracestate", "stale=1")]);
        TraceContext::start(&headers(pairs), false, Sampler::NEVER).write(&mut out);
        out.get("tracestate").is_none()
    };
    let bad = VALID.replace("4bf92f", "4BF92F");
    assert!(dropped(&[("traceparent", &bad), ("tracestate", "congo=1")]));
    assert!(dropped(&[("tracestate", "congo=1")]));
    assert!(dropped(&[
        ("traceparent", VALID),
        ("tracestate", "Congo=1")
    ]));
    assert!(dropped(&[("traceparent", VALID), ("tracestate", "congo")]));
    assert!(dropped(&[("traceparent", VALID), ("tracestate", "a=b=c")]));
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert!(dropped(&[
        ("traceparent", VALID),
        ("tracestate", &many.join(","))
    ]));
    let long = format!("k={}", "v".repeat(MAX_TRACESTATE_BYTES));
    assert!(dropped(&[("traceparent", VALID), ("tracestate", &long)]));
}

#[test]
fn tracing_settings_default_and_refuse_bad_values_naming_the_key() {
    let c = Config::from_toml("").unwrap();
    assert!(c.tracing.is_none(), "no export unless configured");
    let c = Config::from_toml("[tracing]\n").unwrap();
    let t = c.tracing.unwrap();
    assert_eq!(t.endpoint, DEFAULT_ENDPOINT);
    assert_eq!(t.service_name, DEFAULT_SERVICE_NAME);
    assert_eq!(t.sampling_ratio, DEFAULT_SAMPLING_RATIO);
    assert_eq!(t.queue_size, DEFAULT_QUEUE_SIZE);
    assert_eq!(t.batch_size, DEFAULT_BATCH_SIZE);
    assert_eq!(t.batch_interval, DEFAULT_BATCH_INTERVAL);
    assert_eq!(t.export_timeout, DEFAULT_EXPORT_TIMEOUT);
    for (line, key) in [
        ("endpoint = \"not a url\"", "tracing.endpoint"),
        (
            "endpoint = \"ftp://collector/v1/traces\"",
            "tracing.endpoint",
        ),
        ("service_name = \"\"", "tracing.service_name"),
        ("sampling_ratio = 1.5", "tracing.sampling_ratio"),
        ("sampling_ratio = -0.1", "tracing.sampling_ratio"),
        ("queue_size = 0", "tracing.queue_size"),
        ("queue_size = 1000000", "tracing.queue_size"),
        ("batch_size = 0", "tracing.batch_size"),
        ("queue_size = 10\nbatch_size = 11", "tracing.batch_size"),
        ("batch_interval = \"0s\"", "tracing.batch_interval"),
        ("export_timeout = \"10m\"", "tracing.export_timeout"),
        // Roots for TLS the http default endpoint never uses: a mistake, not a no-op.
        ("ca_file = \"/etc/ca.pem\"", "tracing.ca_file"),
        ("endpont = \"http://x\"", "endpont"),
    ] {
        let e = Config::from_toml(&format!("[tracing]\n{line}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{line}: {e}");
    }
}

/// The example config comments out a `[tracing]` table; with the comment marks taken away it is
/// exactly the defaults.
#[test]
fn the_example_configs_tracing_table_shows_the_defaults() {
    let example = include_str!("../../config/gatehouse.example.toml");
    let start = example
        .find("# [tracing]\n")
        .expect("[tracing] is not in the example config");
    let block: String = example[start..]
        .lines()
        .take_while(|line| line.starts_with("# "))
        .map(|line| format!("{}\n", line.trim_start_matches("# ")))
        .collect();
    for key in [
        "endpoint",
        "service_name",
        "sampling_ratio",
        "queue_size",
        "batch_size",
        "batch_interval",
        "export_timeout",
    ] {
        assert!(
            block.contains(&format!("\n{key} = ")),
            "[tracing] lacks {key}"
        );
    }
    let shown = Config::from_toml(&block).unwrap().tracing.unwrap();
    let defaults = Config::from_toml("[tracing]\n").unwrap().tracing.unwrap();
    assert_eq!(shown, defaults);
}
