//! The CORS policy and its settings: validation and its errors, preflight verdicts, the headers
//! of actual responses, and the example config's commented tables held to the defaults.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::{Config, refusal};

/// The policy of a route `api` with these `[routes.cors]` lines.
fn policy(lines: &str) -> CorsPolicy {
    let text = format!(
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n[routes.cors]\n{lines}\n"
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.routes[0].cors.clone().expect("a CORS policy")
}

fn app() -> CorsPolicy {
    policy(
        "allow_origins = [\"https://App.example.com:443\"]\nallow_methods = [\"get\", \"PUT\", \"DELETE\"]\nallow_headers = [\"Authorization\", \"content-type\"]\nexpose_headers = [\"X-Request-Id\"]\nmax_age = \"1h\"\nallow_credentials = true",
    )
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(*name, HeaderValue::from_static(value));
    }
    h
}

fn access_control(h: &HeaderMap) -> Vec<&str> {
    h.keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[test]
fn defaults_are_the_named_constants() {
    let p = policy("allow_origins = [\"https://app.example.com\"]");
    assert_eq!(
        p.allow_methods,
        DEFAULT_ALLOW_METHODS
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
            .collect::<Vec<_>>()
    );
    assert!(p.allow_headers.is_empty() && p.expose_headers.is_empty());
    assert_eq!(p.max_age, DEFAULT_MAX_AGE);
    assert_eq!(p.allow_credentials, DEFAULT_ALLOW_CREDENTIALS);
    assert_eq!(p.forward_preflight, DEFAULT_FORWARD_PREFLIGHT);
    assert_eq!(DEFAULT_MAX_AGE, std::time::Duration::from_secs(600));
    let c = Config::from_toml("").unwrap();
    assert!(c.auth.cors.is_none(), "no CORS unless configured");
}

/// The example config comments out a `[routes.cors]` and an `[auth.cors]` table; with the
/// comment marks taken away, every key in them but the origins is its default.
#[test]
fn the_example_configs_cors_tables_show_the_defaults() {
    let example = include_str!("../../config/gatehouse.example.toml");
    let defaults = policy("allow_origins = [\"https://app.example.com\"]");
    for table in ["[routes.cors]", "[auth.cors]"] {
        let start = example
            .find(&format!("# {table}\n"))
            .unwrap_or_else(|| panic!("{table} is not in the example config"));
        let block: String = example[start..]
            .lines()
            .take_while(|line| line.starts_with("# "))
            .map(|line| format!("{}\n", line.trim_start_matches("# ")))
            .collect();
        let block = block.replacen(table, "[routes.cors]", 1);
        for key in [
            "allow_origins",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "forward_preflight",
        ] {
            assert!(
                block.contains(&format!("\n{key} = ")),
                "{table} lacks {key}"
            );
        }
        let shown = policy(&block.replacen("[routes.cors]\n", "", 1));
        assert_eq!(
            CorsPolicy {
                allow_origins: defaults.allow_origins.clone(),
                ..shown
            },
            defaults,
            "{table}"
        );
    }
}

#[test]
fn bad_cors_settings_are_refused_with_the_key_named() {
    let route = |lines: &str| {
        format!(
            "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n[routes.cors]\n{lines}\n"
        )
    };
    for (lines, key, says) in [
        ("", "routes[api].cors.allow_origins", "at least one origin"),
        (
            "allow_origins = [\"*\"]\nallow_credentials = true",
            "routes[api].cors.allow_origins",
            "allow_credentials",
        ),
        (
            "allow_origins = [\"*\", \"https://a.example\"]",
            "routes[api].cors.allow_origins",
            "only entry",
        ),
        (
            "allow_origins = [\"https://a.example\", \"https://a.example/app\"]",
            "routes[api].cors.allow_origins[1]",
            "no path",
        ),
        (
            "allow_origins = [\"https://*.example.com\"]",
            "routes[api].cors.allow_origins[0]",
            "wildcard",
        ),
        (
            "allow_origins = [\"null\"]",
            "routes[api].cors.allow_origins[0]",
            "",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nallow_methods = [\"GTE\"]",
            "routes[api].cors.allow_methods",
            "GTE",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nallow_methods = [\"TRACE\"]",
            "routes[api].cors.allow_methods",
            "TRACE",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nallow_methods = []",
            "routes[api].cors.allow_methods",
            "empty",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nallow_headers = [\"x y\"]",
            "routes[api].cors.allow_headers",
            "not a header name",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nallow_headers = [\"x:y\"]",
            "routes[api].cors.allow_headers",
            "not a header name",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nallow_headers = [\"\"]",
            "routes[api].cors.allow_headers",
            "not a header name",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nallow_headers = [\"*\"]",
            "routes[api].cors.allow_headers",
            "list the header names",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nexpose_headers = [\"x\\ny\"]",
            "routes[api].cors.expose_headers",
            "not a header name",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nexpose_headers = [\"Set-Cookie\"]",
            "routes[api].cors.expose_headers",
            "never exposed",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nmax_age = \"25h\"",
            "routes[api].cors.max_age",
            "24h",
        ),
        (
            "allow_origins = [\"https://a.example\"]\nmax_age = \"soon\"",
            "routes[api].cors.max_age",
            "duration",
        ),
    ] {
        let e = refusal(&route(lines));
        assert!(e.contains(key) && e.contains(says), "{lines:?}: {e}");
    }
    let many: Vec<String> = (0..=MAX_LIST_ENTRIES)
        .map(|i| format!("\"https://a{i}.example\""))
        .collect();
    let e = refusal(&route(&format!("allow_origins = [{}]", many.join(","))));
    assert!(e.contains("at most"), "{e}");
    let e = refusal(&route("allow_origins = [\"https://a.example\"]\nbogus = 1"));
    assert!(e.contains("bogus"), "{e}");
    let e =
        refusal("[auth.cors]\nallow_origins = [\"https://a.example\"]\nforward_preflight = true\n");
    assert!(e.contains("auth.cors.forward_preflight"), "{e}");
    let e = refusal("[auth.cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n");
    assert!(e.contains("auth.cors.allow_origins"), "{e}");
    let c = Config::from_toml("[auth.cors]\nallow_origins = [\"*\"]\n").unwrap();
    assert_eq!(c.auth.cors.unwrap().allow_origins, AllowOrigins::Any);
}

#[test]
fn an_allowed_preflight_names_the_exact_origin_and_only_the_requested_headers() {
    let p = app();
    let answer = p
        .preflight(&headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "content-type,  AUTHORIZATION",
            ),
        ]))
        .unwrap();
    assert_eq!(
        answer[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert_eq!(answer[ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT, DELETE");
    assert_eq!(
        answer[ACCESS_CONTROL_ALLOW_HEADERS],
        "content-type, authorization"
    );
    assert_eq!(answer[ACCESS_CONTROL_MAX_AGE], "3600");
    assert_eq!(answer[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(
        answer[VARY],
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    // Asking for one header names that one only; asking for none names none.
    let answer = p
        .preflight(&headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "authorization"),
            ("access-control-request-headers", "Authorization"),
        ]))
        .unwrap();
    assert_eq!(answer[ACCESS_CONTROL_ALLOW_HEADERS], "authorization");
    let answer = p
        .preflight(&headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
        ]))
        .unwrap();
    assert!(!answer.contains_key(ACCESS_CONTROL_ALLOW_HEADERS));
    let public = policy("allow_origins = [\"*\"]");
    let answer = public
        .preflight(&headers(&[
            ("origin", "https://anyone.example"),
            ("access-control-request-method", "POST"),
        ]))
        .unwrap();
    assert_eq!(answer[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(!answer.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
}

#[test]
fn a_preflight_from_an_unlisted_origin_or_for_an_unlisted_method_or_header_is_refused() {
    let p = app();
    for (pairs, why) in [
        (
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ][..],
            CorsRefusal::Origin,
        ),
        // The same host over another scheme, or on another port, is another origin.
        (
            &[
                ("origin", "http://app.example.com"),
                ("access-control-request-method", "GET"),
            ],
            CorsRefusal::Origin,
        ),
        (
            &[
                ("origin", "https://app.example.com:8443"),
                ("access-control-request-method", "GET"),
            ],
            CorsRefusal::Origin,
        ),
        // A suffix or prefix trick is not the origin.
        (
            &[
                ("origin", "https://app.example.com.evil.example"),
                ("access-control-request-method", "GET"),
            ],
            CorsRefusal::Origin,
        ),
        (
            &[("origin", "null"), ("access-control-request-method", "GET")],
            CorsRefusal::Origin,
        ),
        (
            &[
                ("origin", "https://app.example.com"),
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
            ],
            CorsRefusal::Origin,
        ),
        (
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PATCH"),
            ],
            CorsRefusal::Method,
        ),
        // Method names are case-sensitive: a browser sends `patch` as it was written.
        (
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "put"),
            ],
            CorsRefusal::Method,
        ),
        (
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "authorization, x-admin"),
            ],
            CorsRefusal::Headers,
        ),
    ] {
        assert_eq!(p.preflight(&headers(pairs)), Err(why), "{pairs:?}");
    }
    let too_many = (0..=MAX_REQUESTED_HEADERS)
        .map(|i| format!("x-h{i}"))
        .collect::<Vec<_>>();
    let listed = too_many
        .iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>();
    let wide = policy(&format!(
        "allow_origins = [\"https://app.example.com\"]\nallow_headers = [{}]",
        listed[..MAX_LIST_ENTRIES].join(",")
    ));
    let mut h = headers(&[
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "GET"),
    ]);
    h.insert(
        "access-control-request-headers",
        HeaderValue::from_str(&too_many.join(",")).unwrap(),
    );
    assert_eq!(wide.preflight(&h), Err(CorsRefusal::Headers));
}

#[test]
fn an_actual_response_loses_the_upstreams_access_control_headers_and_gets_the_policys() {
    let p = app();
    let upstream = || {
        headers(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-secret"),
            ("vary", "Accept-Encoding"),
            ("content-type", "application/json"),
        ])
    };
    let mut response = upstream();
    p.finish(
        Some(&HeaderValue::from_static("https://app.example.com")),
        &mut response,
    );
    assert_eq!(
        response[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert_eq!(response[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(response[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
    let vary: Vec<_> = response.get_all(VARY).iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    assert_eq!(response["content-type"], "application/json");

    for origin in [
        Some("https://evil.example"),
        Some("null"),
        Some("https://app.example.com/"),
        None,
    ] {
        let mut response = upstream();
        let origin = origin.map(HeaderValue::from_static);
        p.finish(origin.as_ref(), &mut response);
        assert!(
            access_control(&response).is_empty(),
            "{origin:?}: {response:?}"
        );
        assert_eq!(response.get_all(VARY).iter().count(), 2);
    }

    let public = policy("allow_origins = [\"*\"]\nexpose_headers = [\"etag\"]");
    let mut response = upstream();
    public.finish(
        Some(&HeaderValue::from_static("https://anyone.example")),
        &mut response,
    );
    assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(response[ACCESS_CONTROL_EXPOSE_HEADERS], "etag");
    assert!(!response.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
}

#[test]
fn only_origins_listed_with_credentials_are_trusted_with_the_cookie() {
    assert_eq!(
        app().credentialed_origins(),
        [Origin::parse("https://app.example.com").unwrap()]
    );
    let without = policy("allow_origins = [\"https://app.example.com\"]");
    assert!(without.credentialed_origins().is_empty());
    assert!(
        policy("allow_origins = [\"*\"]")
            .credentialed_origins()
            .is_empty()
    );
}

#[test]
fn preflights_are_options_with_origin_and_a_requested_method() {
    let both = headers(&[
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "PUT"),
    ]);
    assert!(is_preflight(&Method::OPTIONS, &both));
    assert!(!is_preflight(&Method::GET, &both));
    assert!(!is_preflight(
        &Method::OPTIONS,
        &headers(&[("origin", "https://app.example.com")])
    ));
    assert!(!is_preflight(
        &Method::OPTIONS,
        &headers(&[("access-control-request-method", "PUT")])
    ));
    assert_eq!(requested_method(&both), Some(Method::PUT));
    assert_eq!(
        requested_method(&headers(&[
            ("access-control-request-method", "PUT"),
            ("access-control-request-method", "GET"),
        ])),
        None
    );
    assert_eq!(
        request_origin(&headers(&[
            ("origin", "https://a.example"),
            ("origin", "https://b.example")
        ])),
        None
    );
}

#[test]
fn explain_describes_the_policy() {
    let text = app().describe();
    assert!(
        text.contains("origins https://app.example.com")
            && text.contains("methods GET PUT DELETE")
            && text.contains("headers authorization content-type")
            && text.contains("max-age 3600s")
            && text.contains("credentials allowed")
            && text.contains("answered by the gateway"),
        "{text}"
    );
}
