//! `private_key_jwt` client authentication (RFC 7523 §2.2): clients registered with their public
//! keys (inline or at a JWKS URL) authenticate with signed assertions, and every forged, stale,
//! misdirected or replayed assertion is `invalid_client`, also on a second gateway of the store;
//! and authlib's client-credentials flow with `PrivateKeyJWT`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use http::StatusCode;
use serde_json::{Value, json};

use crate::issuers::{IdpKey, jwks_server};
use crate::support::{GatewayBuilder, TestGateway, Upstream, claims, cli, client, route};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The gateway's `[auth] issuer` in these tests (an audience an assertion may name).
const ISSUER: &str = "https://gatehouse.test";

struct Keyed {
    gw: TestGateway,
    config: PathBuf,
    key: IdpKey,
    _up: Upstream,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A gateway with `/api`, `public_url` its own address (`{port}`, see the support), `auth` in its `[auth]` table and
/// `extra` after.
fn builder(up: &Upstream, auth: &str, extra: &str) -> GatewayBuilder {
    GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .and(&format!(
            "[auth]\nissuer = \"{ISSUER}\"\npublic_url = \"http://127.0.0.1:{{port}}\"\n{auth}\n"
        ))
        .and(extra)
}

/// Runs the CLI expecting it to fail; its stderr.
async fn cli_fails(config: &Path, args: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    command
        .env_remove("GATEHOUSE_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A gateway and a client `ci` registered with one Ed25519 key, inline (`--jwks-file`).
async fn keyed(extra: &str) -> Keyed {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let gw = builder(&up, "", extra).start_from_file(dir, &config).await;
    let key = IdpKey::new("ci-key-1");
    register(&config, "ci", &[&key], &["--scope", "read"]).await;
    Keyed {
        gw,
        config,
        key,
        _up: up,
    }
}

/// `client add NAME --jwks-file` with the public keys of `keys`.
async fn register(config: &Path, name: &str, keys: &[&IdpKey], args: &[&str]) -> String {
    let file = config.with_file_name(format!("{name}.jwks.json"));
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    std::fs::write(&file, jwks.to_string()).unwrap();
    let file = file.display().to_string();
    let mut all = vec!["client", "add", name, "--jwks-file", &file];
    all.extend_from_slice(args);
    cli(config, &all, None).await
}

fn token_url(gw: &TestGateway) -> String {
    gw.url("/auth/token")
}

/// Claims of a valid assertion of `ci` for `aud`, with a fresh jti.
fn assertion_claims(aud: &str) -> Value {
    let now = now();
    let jti = B64.encode(gatehouse::auth::tokens::new_family_id());
    json!({"iss": "ci", "sub": "ci", "aud": aud, "iat": now, "exp": now + 60, "jti": jti})
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

/// A `client_credentials` request authenticated by `assertion`, with `form` besides.
async fn token_with(gw: &TestGateway, assertion: &str, form: &[(&str, &str)]) -> reqwest::Response {
    let mut all = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    all.extend_from_slice(form);
    client()
        .post(token_url(gw))
        .form(&all)
        .send()
        .await
        .unwrap()
}

async fn access_token(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The answer is RFC 6749 §5.2's to a failed client authentication.
async fn assert_invalid_client(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"gatehouse\"",
        "{what}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{what}: {body}");
}

/// A compact JWS with `header` and `claims` and this signature segment.
fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

#[tokio::test]
async fn private_key_jwt_mints_a_token_for_the_client_itself() {
    let k = keyed("").await;
    let listed = cli(&k.config, &["client", "list", "--json"], None).await;
    let line: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(line["auth_method"], "private_key_jwt");
    assert_eq!(
        line["token_endpoint_auth_methods"],
        json!(["private_key_jwt"])
    );
    assert_eq!(line["jwks"], true);
    let plain = cli(&k.config, &["client", "list"], None).await;
    assert!(plain.contains("auth=private_key_jwt"), "{plain}");

    // The token endpoint's URL under public_url, and the issuer, are both this gateway.
    for aud in [json!(token_url(&k.gw)), json!(ISSUER), json!(["x", ISSUER])] {
        let assertion = k.key.sign(&with(assertion_claims(""), "aud", aud.clone()));
        let token = access_token(token_with(&k.gw, &assertion, &[]).await).await;
        let c = claims(&token);
        assert_eq!(
            (c["sub"].as_str(), c["client_id"].as_str()),
            (Some("ci"), Some("ci"))
        );
        assert_eq!(c["scope"], "read", "{aud}");
        let api = client()
            .get(k.gw.url("/api/reports"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), StatusCode::OK);
    }
    // A body client_id naming the same client is fine; the scopes narrow as for secrets.
    let assertion = k.key.sign(&assertion_claims(&token_url(&k.gw)));
    let form = [("client_id", "ci"), ("scope", "read")];
    access_token(token_with(&k.gw, &assertion, &form).await).await;
    let assertion = k.key.sign(&assertion_claims(&token_url(&k.gw)));
    let response = token_with(&k.gw, &assertion, &[("scope", "admin")]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "invalid_scope");
}

#[tokio::test]
async fn a_replayed_assertion_is_refused() {
    let k = keyed("").await;
    let assertion = k.key.sign(&assertion_claims(&token_url(&k.gw)));
    access_token(token_with(&k.gw, &assertion, &[]).await).await;
    assert_invalid_client(
        token_with(&k.gw, &assertion, &[]).await,
        "the same assertion",
    )
    .await;
    // A new assertion that reuses the jti is a replay too.
    let first: Value =
        serde_json::from_slice(&B64.decode(assertion.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let again = with(
        assertion_claims(&token_url(&k.gw)),
        "jti",
        first["jti"].clone(),
    );
    assert_invalid_client(
        token_with(&k.gw, &k.key.sign(&again), &[]).await,
        "the same jti",
    )
    .await;
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_by_a_second_gateway_on_the_same_store() {
    let k = keyed("").await;
    let data = k.gw.dir.path();
    let up = Upstream::start().await;
    let second = builder(
        &up,
        &format!("keys_dir = \"{}/keys\"", data.display()),
        &format!("[store]\npath = \"{}/gatehouse.db\"\n", data.display()),
    )
    .start()
    .await;
    let assertion = k.key.sign(&assertion_claims(ISSUER));
    access_token(token_with(&k.gw, &assertion, &[]).await).await;
    assert_invalid_client(
        token_with(&second, &assertion, &[]).await,
        "replayed on the second gateway",
    )
    .await;
    // The other way round, and the second gateway does accept fresh assertions.
    let fresh = k.key.sign(&assertion_claims(ISSUER));
    access_token(token_with(&second, &fresh, &[]).await).await;
    assert_invalid_client(
        token_with(&k.gw, &fresh, &[]).await,
        "replayed on the first",
    )
    .await;
}

#[tokio::test]
async fn an_assertion_for_another_audience_is_refused() {
    let k = keyed("").await;
    let real = token_url(&k.gw);
    let evil_host = "evil.example";
    for aud in [
        json!("https://evil.example/auth/token"),
        json!(format!("{real}/")),
        json!(real.replace("/auth/token", "/auth/revoke")),
        json!("gatehouse"),
        json!([]),
    ] {
        let assertion = k.key.sign(&with(assertion_claims(""), "aud", aud.clone()));
        assert_invalid_client(token_with(&k.gw, &assertion, &[]).await, &aud.to_string()).await;
    }
    // An audience built from the request's Host is never this gateway's.
    let assertion = k
        .key
        .sign(&assertion_claims(&format!("http://{evil_host}/auth/token")));
    let response = client()
        .post(token_url(&k.gw))
        .header("host", evil_host)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ])
        .send()
        .await
        .unwrap();
    assert_invalid_client(response, "aud from a spoofed Host").await;
}

#[tokio::test]
async fn an_assertion_signed_by_another_key_is_refused() {
    let k = keyed("").await;
    let aud = token_url(&k.gw);
    // Same kid, another key: a thief who knows the kid but not the key.
    let thief = IdpKey::new("ci-key-1");
    assert_invalid_client(
        token_with(&k.gw, &thief.sign(&assertion_claims(&aud)), &[]).await,
        "same kid",
    )
    .await;
    let other = IdpKey::new("other");
    assert_invalid_client(
        token_with(&k.gw, &other.sign(&assertion_claims(&aud)), &[]).await,
        "unknown kid",
    )
    .await;
    // Another registered client's key cannot sign for ci.
    let backup = IdpKey::new("backup-key");
    register(&k.config, "backup", &[&backup], &[]).await;
    assert_invalid_client(
        token_with(
            &k.gw,
            &backup.sign(&assertion_claims(&aud)),
            &[("client_id", "ci")],
        )
        .await,
        "another client's key",
    )
    .await;
}

#[tokio::test]
async fn an_hs256_assertion_made_with_a_guessable_key_is_refused() {
    let k = keyed("").await;
    let claims = assertion_claims(&token_url(&k.gw));
    // The public key's bytes, the client's name, an empty key: what an attacker would try.
    let jwk = k.key.jwk();
    let public_x = B64.decode(jwk["x"].as_str().unwrap()).unwrap();
    for secret in [public_x.as_slice(), b"ci", b""] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("ci-key-1".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap();
        assert_invalid_client(token_with(&k.gw, &forged, &[]).await, "HS256").await;
    }
}

#[tokio::test]
async fn an_alg_none_assertion_is_refused() {
    let k = keyed("").await;
    let claims = assertion_claims(&token_url(&k.gw));
    for alg in ["none", "None", "NONE"] {
        let forged = unsigned(&json!({"alg": alg, "kid": "ci-key-1"}), &claims, "");
        assert_invalid_client(token_with(&k.gw, &forged, &[]).await, alg).await;
    }
    // Nor a key the assertion carries itself.
    let attacker = IdpKey::new("ci-key-1");
    let signed = attacker.sign(&claims);
    let (_, rest) = signed.split_once('.').unwrap();
    let header = json!({"alg": "EdDSA", "kid": "ci-key-1", "jwk": attacker.jwk()});
    let embedded = format!("{}.{rest}", B64.encode(header.to_string()));
    assert_invalid_client(token_with(&k.gw, &embedded, &[]).await, "embedded jwk").await;
}

#[tokio::test]
async fn an_expired_assertion_is_refused() {
    let k = keyed("").await;
    let now = now();
    let claims = with(assertion_claims(&token_url(&k.gw)), "exp", json!(now - 60));
    let claims = with(claims, "iat", json!(now - 120));
    assert_invalid_client(
        token_with(&k.gw, &k.key.sign(&claims), &[]).await,
        "expired",
    )
    .await;
    let mut no_exp = assertion_claims(&token_url(&k.gw));
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_invalid_client(token_with(&k.gw, &k.key.sign(&no_exp), &[]).await, "no exp").await;
}

#[tokio::test]
async fn an_assertion_valid_too_far_into_the_future_is_refused() {
    let k = keyed("").await;
    let now = now();
    // Past the one-hour bound (two hours): a long-lived credential in all but name, refused.
    let claims = with(
        assertion_claims(&token_url(&k.gw)),
        "exp",
        json!(now + 7200),
    );
    assert_invalid_client(token_with(&k.gw, &k.key.sign(&claims), &[]).await, "2 h").await;
    // Not usable yet, or made in the future.
    for claim in ["nbf", "iat"] {
        let claims = with(assertion_claims(&token_url(&k.gw)), claim, json!(now + 120));
        assert_invalid_client(token_with(&k.gw, &k.key.sign(&claims), &[]).await, claim).await;
    }
}

#[tokio::test]
async fn an_assertion_whose_iss_is_not_its_sub_is_refused() {
    let k = keyed("").await;
    let aud = token_url(&k.gw);
    for (iss, sub) in [("backup", "ci"), ("ci", "backup")] {
        let claims = with(
            with(assertion_claims(&aud), "iss", json!(iss)),
            "sub",
            json!(sub),
        );
        assert_invalid_client(
            token_with(&k.gw, &k.key.sign(&claims), &[]).await,
            &format!("iss {iss} sub {sub}"),
        )
        .await;
    }
    // And a body client_id that is not the assertion's client.
    register(&k.config, "backup", &[&k.key], &[]).await;
    let assertion = k.key.sign(&assertion_claims(&aud));
    assert_invalid_client(
        token_with(&k.gw, &assertion, &[("client_id", "backup")]).await,
        "client_id differs",
    )
    .await;
}

#[tokio::test]
async fn a_disabled_clients_assertion_is_refused() {
    let k = keyed("").await;
    let aud = token_url(&k.gw);
    access_token(token_with(&k.gw, &k.key.sign(&assertion_claims(&aud)), &[]).await).await;
    cli(&k.config, &["client", "disable", "ci"], None).await;
    assert_invalid_client(
        token_with(&k.gw, &k.key.sign(&assertion_claims(&aud)), &[]).await,
        "disabled",
    )
    .await;
    cli(&k.config, &["client", "enable", "ci"], None).await;
    access_token(token_with(&k.gw, &k.key.sign(&assertion_claims(&aud)), &[]).await).await;
}

#[tokio::test]
async fn a_client_authenticates_only_by_its_registered_method() {
    let k = keyed("").await;
    let aud = token_url(&k.gw);
    // A key client has no secret to rotate, and whatever secret is sent is refused.
    let rotate = cli_fails(&k.config, &["client", "rotate-secret", "ci"]).await;
    assert!(rotate.contains("private_key_jwt"), "{rotate}");
    let basic = format!("Basic {}", STANDARD.encode("ci:anything"));
    let response = client()
        .post(token_url(&k.gw))
        .header("authorization", basic)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_invalid_client(response, "a secret for a key client").await;
    // A secret client's name in an assertion signed by any key is refused.
    let out = cli(&k.config, &["client", "add", "reporting"], None).await;
    assert!(out.contains("client_secret: "), "{out}");
    let claims = with(
        with(assertion_claims(&aud), "iss", json!("reporting")),
        "sub",
        json!("reporting"),
    );
    assert_invalid_client(
        token_with(&k.gw, &k.key.sign(&claims), &[]).await,
        "an assertion for a secret client",
    )
    .await;
    // An assertion and a secret together are two methods at once.
    let response = token_with(
        &k.gw,
        &k.key.sign(&assertion_claims(&aud)),
        &[("client_id", "ci"), ("client_secret", "x")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn keys_at_a_jwks_url_are_fetched_and_a_rotation_is_followed() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let gw = builder(&up, "", "").start_from_file(dir, &config).await;
    let old = IdpKey::new("2026-01");
    let published = Arc::new(Mutex::new(vec![old.jwk()]));
    let url = jwks_server(published.clone()).await;
    cli(&config, &["client", "add", "ci", "--jwks-url", &url], None).await;
    let aud = token_url(&gw);
    access_token(token_with(&gw, &old.sign(&assertion_claims(&aud)), &[]).await).await;
    // The client publishes a new key: an assertion with its kid is verified after a refetch.
    let new = IdpKey::new("2026-02");
    published.lock().unwrap().push(new.jwk());
    access_token(token_with(&gw, &new.sign(&assertion_claims(&aud)), &[]).await).await;
    // A key the client never published is refused (the refetch it causes finds nothing).
    let stranger = IdpKey::new("2026-03");
    assert_invalid_client(
        token_with(&gw, &stranger.sign(&assertion_claims(&aud)), &[]).await,
        "unpublished key",
    )
    .await;
}

#[tokio::test]
async fn registering_private_or_unusable_keys_is_refused() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let _gw = builder(&up, "", "").start_from_file(dir, &config).await;
    let key = IdpKey::new("k");
    let mut private = key.jwk();
    private["d"] = json!(B64.encode([7u8; 32]));
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
    for (name, jwks) in [
        ("private", json!({"keys": [private]})),
        ("oct", json!({"keys": [oct]})),
        ("empty", json!({"keys": []})),
    ] {
        let file = config.with_file_name(format!("{name}.json"));
        std::fs::write(&file, jwks.to_string()).unwrap();
        let file = file.display().to_string();
        let err = cli_fails(&config, &["client", "add", name, "--jwks-file", &file]).await;
        assert!(err.contains("--jwks-file"), "{name}: {err}");
    }
    let err = cli_fails(
        &config,
        &["client", "add", "u", "--jwks-url", "ftp://ci.example/jwks"],
    )
    .await;
    assert!(err.contains("--jwks-url"), "{err}");
    let listed = cli(&config, &["client", "list"], None).await;
    assert_eq!(listed, "", "nothing was registered");
}

#[tokio::test]
async fn failed_assertions_spend_the_clients_budget_like_wrong_secrets() {
    let k = keyed(
        "[auth.limits]\nper_address_burst = 1000\nper_address_per_minute = 1000\n\
         per_user_burst = 3\nper_user_per_minute = 1\n",
    )
    .await;
    let aud = token_url(&k.gw);
    for _ in 0..4 {
        access_token(token_with(&k.gw, &k.key.sign(&assertion_claims(&aud)), &[]).await).await;
    }
    let thief = IdpKey::new("ci-key-1");
    for _ in 0..3 {
        let response = token_with(&k.gw, &thief.sign(&assertion_claims(&aud)), &[]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = token_with(&k.gw, &k.key.sign(&assertion_claims(&aud)), &[]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_client_credentials_with_private_key_jwt() {
    if crate::identity::python().is_none() {
        return;
    }
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let gw = builder(&up, "", "").start_from_file(dir, &config).await;
    let (pem, jwk) = rsa_key();
    let jwks = config.with_file_name("reporting.jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    let pem_file = config.with_file_name("reporting.pem");
    std::fs::write(&pem_file, pem).unwrap();
    cli(
        &config,
        &[
            "client",
            "add",
            "reporting",
            "--scope",
            "read",
            "--jwks-file",
            &jwks.display().to_string(),
        ],
        None,
    )
    .await;
    crate::identity::run_python(
        "authlib_private_key_jwt.py",
        &[&gw.url(""), "reporting", &pem_file.display().to_string()],
    )
    .await;
}

/// An RSA-2048 key (authlib's default algorithm for private_key_jwt is RS256): its PKCS#8 PEM
/// and its public JWK.
fn rsa_key() -> (String, Value) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa;
    use aws_lc_rs::signature::{KeyPair as _, RsaPublicKeyComponents};
    let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let body = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let parts = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    let jwk = json!({"kty": "RSA", "n": B64.encode(&parts.n), "e": B64.encode(&parts.e), "kid": "reporting-1"});
    (pem, jwk)
}

#[tokio::test]
async fn an_assertion_is_never_logged() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let text = GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .and(&format!("[auth]\nissuer = \"{ISSUER}\"\n"))
        .and("[server]\nlisten = \"127.0.0.1:0\"\n")
        .text(dir.path());
    std::fs::write(&config, text).unwrap();
    let key = IdpKey::new("ci-key-1");
    let file = config.with_file_name("ci.jwks.json");
    std::fs::write(&file, json!({"keys": [key.jwk()]}).to_string()).unwrap();
    let file = file.display().to_string();
    cli(
        &config,
        &[
            "client",
            "add",
            "ci",
            "--jwks-file",
            &file,
            "--create-store",
        ],
        None,
    )
    .await;
    let served = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || crate::support::serve_binary(&config))
            .await
            .unwrap()
    };
    let url = format!("http://{}/auth/token", served.addr);
    let good = key.sign(&assertion_claims(ISSUER));
    let wrong_aud = key.sign(&assertion_claims("https://evil.example/token"));
    let mut statuses = Vec::new();
    // Accepted, replayed, refused.
    for assertion in [&good, &good, &wrong_aud] {
        let response = client()
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 401, 401]);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let lines = served.lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("replayed")),
        "the log says why: {lines:?}"
    );
    for line in &lines {
        for assertion in [&good, &wrong_aud] {
            // Not the whole assertion, nor its signature.
            let signature = assertion.rsplit('.').next().unwrap();
            assert!(!line.contains(signature), "assertion logged: {line}");
        }
    }
}

#[tokio::test]
async fn introspection_authenticates_a_key_client_by_its_assertion_too() {
    let k = keyed("").await;
    let aud = token_url(&k.gw);
    let rs = IdpKey::new("rs-key");
    register(
        &k.config,
        "orders-api",
        &[&rs],
        &["--grant", "introspection"],
    )
    .await;
    let token =
        access_token(token_with(&k.gw, &k.key.sign(&assertion_claims(&aud)), &[]).await).await;
    let claims = |sub: &str| {
        let now = now();
        let jti = B64.encode(gatehouse::auth::tokens::new_family_id());
        json!({"iss": sub, "sub": sub, "aud": ISSUER, "iat": now, "exp": now + 60, "jti": jti})
    };
    let introspect = |assertion: String| {
        let url = k.gw.url("/auth/introspect");
        let token = token.clone();
        async move {
            client()
                .post(url)
                .form(&[
                    ("token", token.as_str()),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let signed = rs.sign(&claims("orders-api"));
    let response = introspect(signed.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["client_id"], "ci");
    // The same path as the token endpoint: a replay is invalid_client here too.
    assert_invalid_client(introspect(signed).await, "replayed at introspection").await;
    // And a client not registered for introspection is refused after authenticating.
    let response = introspect(k.key.sign(&claims("ci"))).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}
