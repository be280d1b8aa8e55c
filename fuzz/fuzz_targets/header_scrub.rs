//! Fuzzes the header hygiene in pipeline order: hop-by-hop and `Connection`-nominated removal,
//! untrusted forwarding headers, identity scrubbing, then identity injection and forwarding
//! headers. Invariants: no client identity header survives in any alias spelling, nothing a
//! `Connection` header named (other than Host and Content-Length) survives, no hop-by-hop field
//! survives, and the injected identity and forwarding headers are exactly the gateway's.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use gatehouse::auth::claims::{Identity, IdentityValues};
use gatehouse::config::Config;
use gatehouse::gateway::inject_identity;
use gatehouse::proxy::headers::{
    Forwarding, IdentityHeaders, IdentityScrubber, scrub_request, set_forwarding,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// The injected names (default configuration), alias-folded. `X-Useror` is another header.
const IDENTITY: [&str; 3] = ["x-user", "x-user-roles", "x-user-scopes"];

fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// The default identity header names and their scrubber, built once.
fn hygiene() -> &'static (IdentityHeaders, IdentityScrubber) {
    static BUILT: OnceLock<(IdentityHeaders, IdentityScrubber)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let config = Config::from_toml("").expect("the default configuration is valid");
        let names = config.auth.identity_headers;
        let scrubber =
            IdentityScrubber::new(&names.all_names(), &names.strip_prefixes).expect("scrubber");
        (names, scrubber)
    })
}

fuzz_target!(|data: &[u8]| {
    // Lines of "name:value"; lines that are not a valid header are skipped, as hyper would refuse
    // them before the gateway saw them.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let nominated: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|o| o.trim().to_ascii_lowercase())
        .filter(|o| !o.is_empty() && o != "host" && o != "content-length")
        .collect();

    let (names, scrubber) = hygiene();
    // Stage 3 as the pipeline runs it: one pass.
    let _websocket = scrub_request(&mut headers, scrubber);

    for name in headers.keys() {
        let folded = fold(name.as_str());
        assert!(
            !IDENTITY.contains(&folded.as_str()),
            "identity header {name} survived"
        );
        assert!(
            !nominated.iter().any(|n| n == name.as_str()),
            "{name} was nominated by Connection and survived"
        );
        for hop in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert_ne!(name.as_str(), hop, "hop-by-hop {name} survived");
        }
        assert!(!name.as_str().starts_with("proxy-"), "{name} survived");
        for untrusted in ["x-real-ip", "x-original-url", "x-http-method-override"] {
            assert_ne!(folded, untrusted, "{name} survived");
        }
    }

    let (roles, scopes) = (vec!["user".to_owned()], vec!["read".to_owned()]);
    let identity = Identity {
        values: IdentityValues::render("alice", &roles, &scopes),
        sub: "alice".into(),
        roles,
        scopes,
        issuer: "gatehouse".into(),
        exp: 0,
        iat: 0,
        jti: None,
        sid: None,
        client_id: None,
        extra: serde_json::Map::new(),
    };
    inject_identity(&mut headers, &identity, names);
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    set_forwarding(
        &mut headers,
        &Forwarding {
            peer,
            trusted_proxies: &[],
            proto: "https",
            host: Some(&HeaderValue::from_static("gw.example")),
        },
    );
    let all = |name: &str| -> Vec<&[u8]> {
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    };
    assert_eq!(all("x-user"), [b"alice"]);
    assert_eq!(all("x-user-roles"), [b"user"]);
    assert_eq!(all("x-user-scopes"), [b"read"]);
    assert_eq!(all("x-forwarded-for"), [b"192.0.2.7"]);
    assert_eq!(all("x-forwarded-proto"), [b"https"]);
    let identity_like = headers
        .keys()
        .filter(|n| IDENTITY.contains(&fold(n.as_str()).as_str()))
        .count();
    assert_eq!(identity_like, 3);
});
