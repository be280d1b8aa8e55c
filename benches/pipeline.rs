//! The per-request work of the pipeline outside token verification, each stage measured alone
//! and as the full header sequence: header hygiene on a realistic 20-header request
//! (`remove_hop_by_hop`, `remove_untrusted_forwarding`, `IdentityScrubber::scrub`,
//! `set_forwarding`, `gateway::inject_identity`; the full sequence with the first three as the
//! pipeline runs them, in one pass: `scrub_request`), against the baseline of cloning that request's
//! `HeaderMap` (what any proxy pays to own the headers); path normalisation
//! (`proxy::path::normalize`) on typical paths, against copying the path into a `String`; and
//! route matching (`RouteTable::find`) with 10, 100 and 1000 routes built by `Config::from_toml`,
//! for a hit on the longest prefix, a hit on a middle route and a miss (which scans every route);
//! and stage 4's endpoint lookup (`EndpointPaths::endpoint_for`, the `[auth.paths]` table) for
//! an endpoint, the prefix's catch-all and a proxied path (the common case), against comparing
//! the path with one string.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use gatehouse::auth::claims::{Identity, IdentityValues};
use gatehouse::auth::paths::Endpoint;
use gatehouse::config::Config;
use gatehouse::gateway::inject_identity;
use gatehouse::proxy::headers::{
    Forwarding, IdentityScrubber, remove_hop_by_hop, remove_untrusted_forwarding, scrub_request,
    set_forwarding,
};
use gatehouse::proxy::path::normalize;
use gatehouse::routes::RouteTable;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// A browser-ish API call: 20 headers, three of which the gateway must remove (a spoofed
/// identity header, a spoofed client address, a hop-by-hop `Keep-Alive`).
const REQUEST_HEADERS: [(&str, &str); 20] = [
    ("host", "api.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0",
    ),
    ("accept", "application/json, text/plain, */*"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-GB,en;q=0.9,de;q=0.8"),
    (
        "authorization",
        "Bearer eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSJ9.c2ln",
    ),
    ("content-type", "application/json"),
    ("cookie", "theme=dark; session_hint=abc123; consent=1"),
    ("connection", "keep-alive"),
    ("keep-alive", "timeout=5"),
    ("x-request-id", "7f9c2ba4-e88f-11ee-9a3a-0242ac120002"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    ("referer", "https://app.example.com/orders/42"),
    ("origin", "https://app.example.com"),
    ("cache-control", "no-cache"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-site", "same-site"),
    ("x-forwarded-for", "203.0.113.9"),
    ("x-real-ip", "10.0.0.1"),
    ("x-user", "admin"),
];

fn request_headers() -> HeaderMap {
    let mut map = HeaderMap::with_capacity(REQUEST_HEADERS.len());
    for (name, value) in REQUEST_HEADERS {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

fn identity() -> Identity {
    let roles = vec!["admin".into(), "ops".into()];
    let scopes = vec!["read".into(), "write".into()];
    Identity {
        values: IdentityValues::render("alice", &roles, &scopes),
        sub: "alice".into(),
        roles,
        scopes,
        issuer: "gatehouse".into(),
        exp: 4_102_444_800,
        iat: 4_102_443_900,
        jti: Some("Qm9vdHN0cmFwcGVkSnRp".into()),
        sid: None,
        client_id: Some("gatehouse".into()),
        extra: Default::default(),
    }
}

const ONE_ROUTE: &str = r#"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "http://127.0.0.1:9"
"#;

fn bench_headers(c: &mut Criterion) {
    let config = Config::from_toml(ONE_ROUTE).expect("config");
    let names = &config.auth.identity_headers;
    let scrubber = IdentityScrubber::new(&names.all_names(), &names.strip_prefixes).expect("names");
    let identity = identity();
    let template = request_headers();
    let host = HeaderValue::from_static("api.example.com");
    let forwarding = Forwarding {
        peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        trusted_proxies: &[],
        proto: "http",
        host: Some(&host),
    };

    let mut group = c.benchmark_group("headers_20");
    group.bench_function("baseline_clone_headermap", |b| {
        b.iter(|| black_box(&template).clone())
    });
    // Each stage gets a fresh copy; the copy is made outside the timed section.
    let fresh = || template.clone();
    group.bench_function("remove_hop_by_hop", |b| {
        b.iter_batched_ref(
            fresh,
            |h| remove_hop_by_hop(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("remove_untrusted_forwarding", |b| {
        b.iter_batched_ref(
            fresh,
            |h| remove_untrusted_forwarding(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("identity_scrub", |b| {
        b.iter_batched_ref(
            fresh,
            |h| scrubber.scrub(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("set_forwarding", |b| {
        b.iter_batched_ref(
            fresh,
            |h| set_forwarding(black_box(h), &forwarding),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("inject_identity", |b| {
        b.iter_batched_ref(
            fresh,
            |h| inject_identity(black_box(h), &identity, names),
            BatchSize::SmallInput,
        )
    });
    // The order the pipeline runs them in (gateway.rs stages 3, 8 and 9).
    group.bench_function("full_sequence", |b| {
        b.iter_batched_ref(
            fresh,
            |h| {
                let upgrade = scrub_request(h, &scrubber);
                h.remove(http::header::AUTHORIZATION);
                inject_identity(h, &identity, names);
                set_forwarding(h, &forwarding);
                upgrade
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

const PATHS: [(&str, &str); 5] = [
    ("short", "/api/v1/users/12345"),
    ("static_asset", "/static/js/app.3f2a1b9c.chunk.js"),
    (
        "long_10_segments",
        "/api/v1/projects/42/repos/gatehouse/commits/ed929fe/files/src",
    ),
    ("percent_encoded", "/api/v1/search/caf%c3%a9/%7Euser"),
    ("dot_segments", "/api/v1/./users//12345/../67890"),
];

fn bench_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("path_normalize");
    for (label, path) in PATHS {
        assert!(normalize(path).is_ok(), "{path}");
        group.bench_with_input(BenchmarkId::new("normalize", label), path, |b, p| {
            b.iter(|| normalize(black_box(p)))
        });
        group.bench_with_input(
            BenchmarkId::new("baseline_to_owned", label),
            path,
            |b, p| b.iter(|| black_box(p).to_owned()),
        );
    }
    group.finish();
}

/// `n` routes with prefixes of two to four segments, as a service catalogue would have.
fn routes_toml(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let prefix = match i % 3 {
            0 => format!("/svc{i}"),
            1 => format!("/svc{i}/v1"),
            _ => format!("/svc{i}/v1/items"),
        };
        out.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:9\"\n\n"
        ));
    }
    out
}

fn bench_routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_find");
    for n in [10usize, 100, 1000] {
        let config = Config::from_toml(&routes_toml(n)).expect("routes config");
        let table = RouteTable::new(&config.routes);
        assert_eq!(table.len(), n);
        // Positions in match order (the table's own order): the first route tried, the one
        // half-way down, and a miss, which tries every route.
        let under = |i: usize| {
            let route = table.iter().nth(i).expect("route");
            (
                format!("{}/x/1", route.path_prefix),
                Some(route.name.clone()),
            )
        };
        let (first_path, first) = under(0);
        let (middle_path, middle) = under(n / 2);
        let cases = [
            ("hit_first", first_path, first),
            ("hit_middle", middle_path, middle),
            ("miss", "/nothing/here".to_owned(), None),
        ];
        for (label, path, expect) in cases {
            let found = table.find(Some("api.example.com"), &Method::GET, &path);
            assert_eq!(found.map(|r| r.name.clone()), expect, "{path}");
            group.bench_with_input(BenchmarkId::new(label, n), &path, |b, p| {
                b.iter(|| table.find(Some("api.example.com"), &Method::GET, black_box(p)))
            });
        }
    }
    group.finish();
}

fn bench_endpoints(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_for");
    let config = Config::from_toml("[auth.paths]\ntoken = \"/token\"\nme = \"/users/me\"\n")
        .expect("paths config");
    let paths = &config.auth.paths;
    for (label, path, expect) in [
        ("endpoint", "/users/me", Some(Endpoint::Me)),
        ("catch_all", "/auth/nothing", Some(Endpoint::Unknown)),
        ("proxied", "/api/v1/users/12345", None),
    ] {
        assert_eq!(paths.endpoint_for(path), expect, "{path}");
        group.bench_with_input(BenchmarkId::new(label, path), path, |b, p| {
            b.iter(|| paths.endpoint_for(black_box(p)))
        });
    }
    group.bench_function("baseline_one_compare", |b| {
        b.iter(|| black_box("/api/v1/users/12345") == black_box("/users/me"))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_headers,
    bench_paths,
    bench_routes,
    bench_endpoints
);
criterion_main!(benches);
