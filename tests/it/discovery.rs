//! The discovery documents (RFC 8414, OpenID Connect Discovery) over real sockets: their content
//! follows the config, their URLs come from `[auth] public_url` or else the request's own origin,
//! and neither a client's `Host` nor an untrusted peer's `X-Forwarded-Proto` can move them.

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::{GatewayBuilder, TestGateway, Upstream, client, route};

const OAUTH: &str = "/.well-known/oauth-authorization-server";
const OPENID: &str = "/.well-known/openid-configuration";

async fn gateway(up: &Upstream, extra: &str) -> TestGateway {
    GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .and(extra)
        .start()
        .await
}

/// GET `path` with these request headers; the response and its JSON.
async fn fetch(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (reqwest::header::HeaderMap, Value) {
    let mut request = client().get(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let headers = response.headers().clone();
    (headers, response.json().await.unwrap())
}

#[tokio::test]
async fn the_metadata_lists_the_configured_paths_under_public_url_whatever_the_host() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "[auth]\nissuer = \"https://id.example\"\npublic_url = \"https://id.example\"\n\
         [auth.paths]\ntoken = \"/token\"\nintrospect = \"/oauth/introspect\"\nrevoke = \"/oauth/revoke\"\njwks = \"/keys.json\"\n",
    )
    .await;
    for path in [OAUTH, OPENID] {
        // A Host the client chose is not where the gateway is.
        let (headers, doc) = fetch(&gw, path, &[("host", "evil.example")]).await;
        assert_eq!(doc["issuer"], "https://id.example", "{path}");
        assert_eq!(doc["token_endpoint"], "https://id.example/token");
        assert_eq!(
            doc["introspection_endpoint"],
            "https://id.example/oauth/introspect"
        );
        assert_eq!(
            doc["revocation_endpoint"],
            "https://id.example/oauth/revoke"
        );
        assert_eq!(doc["jwks_uri"], "https://id.example/keys.json");
        assert_eq!(
            doc["grant_types_supported"],
            json!(["password", "refresh_token", "client_credentials"])
        );
        let methods = doc["token_endpoint_auth_methods_supported"].clone();
        for method in [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ] {
            assert!(
                methods.as_array().unwrap().contains(&json!(method)),
                "{doc}"
            );
            assert!(
                doc["introspection_endpoint_auth_methods_supported"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(method))
            );
        }
        assert_eq!(
            doc["token_endpoint_auth_signing_alg_values_supported"],
            json!(["RS256", "ES256", "EdDSA"])
        );
        assert!(doc.get("authorization_endpoint").is_none(), "{doc}");
        assert!(doc.get("code_challenge_methods_supported").is_none());
        assert!(doc.get("id_token_signing_alg_values_supported").is_none());
        assert!(!doc.to_string().contains("evil"), "{doc}");
        assert_eq!(headers["cache-control"], "public, max-age=300");
        assert!(headers.get("vary").is_none(), "one document for every Host");
        assert_eq!(headers["content-type"], "application/json");
    }
    let (_, openid) = fetch(&gw, OPENID, &[]).await;
    assert_eq!(openid["subject_types_supported"], json!(["public"]));
    let (_, oauth) = fetch(&gw, OAUTH, &[]).await;
    assert!(oauth.get("subject_types_supported").is_none());
    // The moved endpoints really are there.
    let r = client()
        .post(gw.url("/oauth/introspect"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client().get(gw.url("/keys.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    up.assert_untouched();
}

#[tokio::test]
async fn without_public_url_the_documents_follow_the_request_origin_and_vary_with_it() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "").await;
    let (headers, doc) = fetch(&gw, OAUTH, &[("host", "gw.example:8080")]).await;
    assert_eq!(doc["token_endpoint"], "http://gw.example:8080/auth/token");
    assert_eq!(
        doc["introspection_endpoint"],
        "http://gw.example:8080/auth/introspect"
    );
    assert_eq!(
        doc["jwks_uri"],
        "http://gw.example:8080/.well-known/jwks.json"
    );
    assert_eq!(doc["issuer"], "gatehouse");
    let vary = headers["vary"].to_str().unwrap().to_ascii_lowercase();
    assert!(vary.contains("host"), "{vary}");
    let (_, doc) = fetch(&gw, OPENID, &[]).await;
    assert_eq!(
        doc["token_endpoint"],
        format!("http://127.0.0.1:{}/auth/token", gw.addr.port())
    );
    // A Host stage 1 refuses never becomes a URL.
    let out = crate::support::raw(
        gw.addr,
        format!("GET {OAUTH} HTTP/1.1\r\nHost: a@evil.example\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(crate::support::raw_status(&out), 400, "{out}");
    up.assert_untouched();
}

#[tokio::test]
async fn an_untrusted_peers_x_forwarded_proto_cannot_make_the_metadata_claim_https() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "").await;
    let spoofed = [("host", "gw.example"), ("x-forwarded-proto", "https")];
    let (_, doc) = fetch(&gw, OAUTH, &spoofed).await;
    assert_eq!(doc["token_endpoint"], "http://gw.example/auth/token");

    // From a trusted proxy the same header is the scheme the client used.
    let trusting = gateway(&up, "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let (_, doc) = fetch(&trusting, OAUTH, &spoofed).await;
    assert_eq!(doc["token_endpoint"], "https://gw.example/auth/token");
    let vary = fetch(&trusting, OAUTH, &spoofed).await.0["vary"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(vary.contains("x-forwarded-proto"), "{vary}");
    up.assert_untouched();
}

#[tokio::test]
async fn the_documents_get_the_auth_cors_policy_like_the_jwks() {
    let up = Upstream::start().await;
    let app = "https://app.example";
    let gw = gateway(&up, &format!("[auth.cors]\nallow_origins = [\"{app}\"]\n")).await;
    for path in [OAUTH, OPENID, "/.well-known/jwks.json"] {
        let (headers, _) = fetch(&gw, path, &[("origin", app)]).await;
        assert_eq!(headers["access-control-allow-origin"], app, "{path}");
        let (headers, _) = fetch(&gw, path, &[("origin", "https://evil.example")]).await;
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
    // HEAD as for the JWKS; POST is not a way to read a document.
    let r = client().head(gw.url(OAUTH)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client().post(gw.url(OPENID)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_documents_stay_at_their_well_known_paths_under_a_root_prefix() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::new(&route("all", "/", &up.url(), "auth = \"public\""))
        .and("[auth]\nprefix = \"/\"\n")
        .start()
        .await;
    let (_, doc) = fetch(&gw, OAUTH, &[("host", "gw.example")]).await;
    assert_eq!(doc["token_endpoint"], "http://gw.example/token");
    assert_eq!(
        doc["introspection_endpoint"],
        "http://gw.example/introspect"
    );
    up.assert_untouched();
}
