//! Fuzzes route matching on normalised paths against a fixed table. Invariants: the route found
//! covers the path on a segment boundary and allows the method; a path under `/admin` in any
//! spelling never falls through to the public catch-all; the admin host is never served by a
//! host-less route.
#![no_main]

use std::sync::OnceLock;

use gatehouse::config::Config;
use gatehouse::proxy::path::{normalize, under_prefix};
use gatehouse::routes::RouteTable;
use http::Method;
use libfuzzer_sys::fuzz_target;

const TABLE: &str = r#"
[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "http://127.0.0.1:1"
require_roles = ["admin"]

[[routes]]
name = "admin-host"
path_prefix = "/"
host = "admin.example"
upstream = "http://127.0.0.1:1"
require_roles = ["admin"]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "http://127.0.0.1:1"

[[routes]]
name = "api-writes"
path_prefix = "/api/v1"
methods = ["POST", "DELETE"]
upstream = "http://127.0.0.1:1"
require_scopes = ["write"]

[[routes]]
name = "public"
path_prefix = "/"
upstream = "http://127.0.0.1:1"
auth = "public"
"#;

const METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::DELETE,
    Method::PUT,
    Method::HEAD,
    Method::OPTIONS,
];

fn table() -> &'static RouteTable {
    static TABLE_CELL: OnceLock<RouteTable> = OnceLock::new();
    TABLE_CELL.get_or_init(|| {
        let config = Config::from_toml(TABLE).expect("the fuzz route table is valid");
        RouteTable::new(&config.routes)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (host, raw_path) = text.split_once('\n').unwrap_or(("", text));
    let Ok(path) = normalize(raw_path) else {
        return;
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let route = table()
        .find(Some(&host), method, &path)
        .expect("the catch-all covers every path");
    assert!(
        under_prefix(&path, &route.path_prefix),
        "{path:?} routed to {}",
        route.name
    );
    assert!(route.methods.as_ref().is_none_or(|ms| ms.contains(method)));
    assert!(route.host.as_deref().is_none_or(|h| h == host));
    if host == "admin.example" {
        assert_eq!(route.name, "admin-host", "{path:?}");
    } else if under_prefix(&path, "/admin") {
        assert_eq!(route.name, "admin", "{path:?} escaped the admin route");
    } else if under_prefix(&path, "/api/v1")
        && (*method == Method::POST || *method == Method::DELETE)
    {
        assert_eq!(route.name, "api-writes", "{method} {path:?}");
    } else if under_prefix(&path, "/api") {
        assert_eq!(route.name, "api", "{method} {path:?}");
    } else {
        assert_eq!(route.name, "public");
    }
});
