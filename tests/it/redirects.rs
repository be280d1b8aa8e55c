//! Upstream redirects and Host: `preserve_host`, and `Location` / `Content-Location` / `Refresh`
//! naming the upstream's own address rewritten to the public one, through real sockets.

use http::StatusCode;
use reqwest::header::HeaderMap;

use crate::support::{Behaviour, GatewayBuilder, TestGateway, Upstream, client, h2_client, route};

/// FastAPI's trailing-slash redirect, as uvicorn sends it behind a proxy that does not preserve
/// the Host: built from the address it was reached on.
const FASTAPI_TRAILING_SLASH: &[(&str, &str)] = &[("location", "http://{upstream}/v1/items/")];

/// GET `path` on the gateway with `Host: host`; the response's status and headers.
async fn get(gw: &TestGateway, path: &str, host: &str) -> (StatusCode, HeaderMap) {
    let r = client()
        .get(gw.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (r.status(), r.headers().clone())
}

fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A gateway with one public route `/api` (prefix stripped) to `upstream` + `/v1`.
async fn api_gateway(upstream: &Upstream, extra: &str) -> TestGateway {
    let base = format!("{}/v1", upstream.url());
    let extra = format!("auth = \"public\"\nstrip_prefix = true\n{extra}");
    GatewayBuilder::route("api", "/api", &base, &extra)
        .start()
        .await
}

#[tokio::test]
async fn preserve_host_sends_the_clients_host_and_the_default_sends_the_upstreams_own() {
    let kept = Upstream::start().await;
    let own = Upstream::start().await;
    let gw = GatewayBuilder::new(&route(
        "kept",
        "/kept",
        &kept.url(),
        "auth = \"public\"\npreserve_host = true",
    ))
    .and(&route("own", "/own", &own.url(), "auth = \"public\""))
    .start()
    .await;

    let (status, _) = get(&gw, "/kept/x", "Public.Example:8443").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&gw, "/own/x", "Public.Example:8443").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept.only().header("host"), Some("Public.Example:8443"));
    assert_eq!(
        own.only().header("host"),
        Some(own.addr.to_string().as_str())
    );

    // An HTTP/2 client sends no Host, only :authority: that is what is preserved.
    let r = h2_client().get(gw.url("/kept/y")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = kept.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("host"), Some(gw.addr.to_string().as_str()));
    assert_eq!(seen[1].headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn fastapi_trailing_slash_redirect_lands_on_the_public_address() {
    let up = Upstream::with(Behaviour::Respond(307, FASTAPI_TRAILING_SLASH)).await;
    let gw = api_gateway(&up, "").await;
    let (status, headers) = get(&gw, "/api/items", "public.example").await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        all(&headers, "location"),
        ["http://public.example/api/items/"]
    );
    assert_eq!(up.only().target, "/v1/items");
}

#[tokio::test]
async fn redirect_over_the_gateways_tls_is_rewritten_to_https() {
    let pki = crate::tls::pki();
    let up = Upstream::with(Behaviour::Respond(307, FASTAPI_TRAILING_SLASH)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
    crate::support::write_private(dir.path().join("key.pem"), &pki.key_pem);
    let base = format!("{}/v1", up.url());
    let gw = GatewayBuilder::route(
        "api",
        "/api",
        &base,
        "auth = \"public\"\nstrip_prefix = true",
    )
    .and(&format!(
        "[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
        dir.path().display()
    ))
    .start()
    .await;
    let port = gw.addr.port();
    for (http1_only, version) in [
        (false, http::Version::HTTP_2),
        (true, http::Version::HTTP_11),
    ] {
        let mut tls = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only([reqwest::Certificate::from_pem(pki.cert_pem.as_bytes()).unwrap()]);
        if http1_only {
            tls = tls.http1_only();
        }
        let url = format!("https://localhost:{port}/api/items");
        let r = tls.build().unwrap().get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.version(), version);
        assert_eq!(
            all(r.headers(), "location"),
            [format!("https://localhost:{port}/api/items/")]
        );
    }
}

#[tokio::test]
async fn relative_location_under_the_base_path_is_mapped_back_and_others_left_alone() {
    const RELATIVE: &[(&str, &str)] = &[
        ("location", "/v1/items/?page=2"),
        ("content-location", "/elsewhere"),
    ];
    let up = Upstream::with(Behaviour::Respond(302, RELATIVE)).await;
    let gw = api_gateway(&up, "").await;
    let (status, headers) = get(&gw, "/api/items", "public.example").await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(all(&headers, "location"), ["/api/items/?page=2"]);
    assert_eq!(all(&headers, "content-location"), ["/elsewhere"]);
}

#[tokio::test]
async fn redirect_to_foreign_host_is_not_rewritten_into_ours() {
    const FOREIGN: &[(&str, &str)] = &[
        (
            "location",
            "https://login.example.com/v1/authorize?next=/v1/x",
        ),
        ("content-location", "http://127.0.0.1:1/v1/x"),
        ("refresh", "0; url=http://{upstream}.evil.example/v1/x"),
    ];
    let up = Upstream::with(Behaviour::Respond(302, FOREIGN)).await;
    let gw = api_gateway(&up, "").await;
    let (status, headers) = get(&gw, "/api/x", "public.example").await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(
        all(&headers, "location"),
        ["https://login.example.com/v1/authorize?next=/v1/x"]
    );
    assert_eq!(
        all(&headers, "content-location"),
        ["http://127.0.0.1:1/v1/x"]
    );
    assert_eq!(
        all(&headers, "refresh"),
        [format!("0; url=http://{}.evil.example/v1/x", up.addr)]
    );
}

#[tokio::test]
async fn content_location_and_refresh_naming_the_upstream_are_rewritten() {
    const BOTH: &[(&str, &str)] = &[
        ("content-location", "http://{upstream}/v1/items/7"),
        ("refresh", "5; url=http://{upstream}/v1/items/"),
    ];
    let up = Upstream::with(Behaviour::Respond(200, BOTH)).await;
    let gw = api_gateway(&up, "").await;
    let (status, headers) = get(&gw, "/api/items/7", "public.example:8080").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        all(&headers, "content-location"),
        ["http://public.example:8080/api/items/7"]
    );
    assert_eq!(
        all(&headers, "refresh"),
        ["5; url=http://public.example:8080/api/items/"]
    );
}

#[tokio::test]
async fn forged_x_forwarded_proto_from_an_untrusted_peer_does_not_change_the_rewritten_scheme() {
    let up = Upstream::with(Behaviour::Respond(307, FASTAPI_TRAILING_SLASH)).await;
    let forged = |gw: &TestGateway| {
        client()
            .get(gw.url("/api/items"))
            .header("host", "public.example")
            .header("x-forwarded-proto", "https")
            .send()
    };
    let untrusted = api_gateway(&up, "").await;
    let r = forged(&untrusted).await.unwrap();
    assert_eq!(
        all(r.headers(), "location"),
        ["http://public.example/api/items/"]
    );
    // The same header from a trusted proxy is believed: the check above can fail.
    let base = format!("{}/v1", up.url());
    let trusted = GatewayBuilder::route(
        "api",
        "/api",
        &base,
        "auth = \"public\"\nstrip_prefix = true",
    )
    .and("[server]\ntrusted_proxies = [\"127.0.0.1\"]")
    .start()
    .await;
    let r = forged(&trusted).await.unwrap();
    assert_eq!(
        all(r.headers(), "location"),
        ["https://public.example/api/items/"]
    );
}

#[tokio::test]
async fn a_route_with_rewrite_redirects_off_passes_location_through() {
    let up = Upstream::with(Behaviour::Respond(307, FASTAPI_TRAILING_SLASH)).await;
    let gw = api_gateway(&up, "rewrite_redirects = false").await;
    let (_, headers) = get(&gw, "/api/items", "public.example").await;
    assert_eq!(
        all(&headers, "location"),
        [format!("http://{}/v1/items/", up.addr)]
    );
}
