//! Machine clients: the `client_credentials` grant with `client_secret_basic` and
//! `client_secret_post`, the limits on client authentication, a disabled client's tokens, the
//! password grant restricted to registered clients, and authlib's client-credentials flow.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use serde_json::Value;

use crate::support::{
    GatewayBuilder, TestGateway, Upstream, claims, cli, client, route, serve_binary,
};

/// How long a disable may take to reach the proxy path (as for a disabled user).
const PROPAGATION: Duration = Duration::from_secs(1);

struct Clients {
    gw: TestGateway,
    config: PathBuf,
    _up: Upstream,
}

/// A gateway with `/api`, started from a file so the CLI acts on its store.
async fn gateway(extra: &str) -> Clients {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .and(extra)
        .start_from_file(dir, &config)
        .await;
    Clients {
        gw,
        config,
        _up: up,
    }
}

/// `gatehouse client add NAME ARGS...`; the secret it prints once.
pub(crate) async fn add_client(config: &std::path::Path, name: &str, args: &[&str]) -> String {
    let mut all = vec!["client", "add", name];
    all.extend_from_slice(args);
    let out = cli(config, &all, None).await;
    secret_in(&out)
}

fn secret_in(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .unwrap_or_else(|| panic!("no secret printed: {out}"))
        .to_owned()
}

pub(crate) fn basic(id: &str, secret: &str) -> String {
    let pair = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A `client_credentials` request with Basic authentication and `form` besides.
async fn token_basic(
    gw: &TestGateway,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut all = vec![("grant_type", "client_credentials")];
    all.extend_from_slice(form);
    client()
        .post(gw.url("/auth/token"))
        .header("authorization", basic(id, secret))
        .form(&all)
        .send()
        .await
        .unwrap()
}

async fn token_post(gw: &TestGateway, form: &[(&str, &str)]) -> reqwest::Response {
    let mut all = vec![("grant_type", "client_credentials")];
    all.extend_from_slice(form);
    client()
        .post(gw.url("/auth/token"))
        .form(&all)
        .send()
        .await
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

async fn api_status(gw: &TestGateway, token: &str) -> StatusCode {
    client()
        .get(gw.url("/api/reports"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn access_token(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn client_secret_basic_and_post_both_mint_a_token_for_the_client_itself() {
    let c = gateway("").await;
    let secret = add_client(&c.config, "ci", &["--scope", "read", "--scope", "write"]).await;

    let response = token_basic(&c.gw, "ci", &secret, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["scope"], "read write");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().unwrap();
    let minted = claims(token);
    assert_eq!(minted["sub"], "ci");
    assert_eq!(minted["client_id"], "ci");
    assert_eq!(minted["aud"], "gatehouse");
    assert!(minted["sid"].as_str().unwrap().starts_with("c."));
    assert_eq!(api_status(&c.gw, token).await, StatusCode::OK);

    let posted = token_post(&c.gw, &[("client_id", "ci"), ("client_secret", &secret)]).await;
    let token = access_token(posted).await;
    assert_eq!(claims(&token)["sub"], "ci");
    assert_eq!(api_status(&c.gw, &token).await, StatusCode::OK);

    // Wrong secret, unknown client, no authentication at all: 401 invalid_client with the
    // Basic challenge (RFC 6749 §5.2).
    for response in [
        token_basic(&c.gw, "ci", "not-the-secret", &[]).await,
        token_basic(&c.gw, "nobody", &secret, &[]).await,
        token_post(&c.gw, &[("client_id", "ci")]).await,
    ] {
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"gatehouse\""
        );
        assert_eq!(
            error_of(response).await,
            (StatusCode::UNAUTHORIZED, "invalid_client".into())
        );
    }
}

#[tokio::test]
async fn both_client_authentication_methods_at_once_are_a_bad_request() {
    let c = gateway("").await;
    let secret = add_client(&c.config, "ci", &[]).await;
    let response = token_basic(
        &c.gw,
        "ci",
        &secret,
        &[("client_id", "ci"), ("client_secret", &secret)],
    )
    .await;
    assert_eq!(
        error_of(response).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
}

#[tokio::test]
async fn client_cannot_widen_its_scopes() {
    let c = gateway("").await;
    let secret = add_client(&c.config, "ci", &["--scope", "read"]).await;
    for asked in ["admin", "read admin"] {
        let response = token_basic(&c.gw, "ci", &secret, &[("scope", asked)]).await;
        assert_eq!(
            error_of(response).await,
            (StatusCode::BAD_REQUEST, "invalid_scope".into()),
            "{asked}"
        );
    }
    let token = access_token(token_basic(&c.gw, "ci", &secret, &[("scope", "read")]).await).await;
    assert_eq!(claims(&token)["scope"], "read");
}

#[tokio::test]
async fn client_cannot_ask_for_an_audience_it_is_not_allowed() {
    let c = gateway("").await;
    let secret = add_client(
        &c.config,
        "ci",
        &["--audience", "gatehouse", "--audience", "billing"],
    )
    .await;
    for (key, value) in [("resource", "payroll"), ("audience", "payroll")] {
        let response = token_basic(&c.gw, "ci", &secret, &[(key, value)]).await;
        assert_eq!(
            error_of(response).await,
            (StatusCode::BAD_REQUEST, "invalid_target".into()),
            "{key}"
        );
    }
    let token = access_token(token_basic(&c.gw, "ci", &secret, &[]).await).await;
    assert_eq!(claims(&token)["aud"], "gatehouse", "the first allowed one");
    let token =
        access_token(token_basic(&c.gw, "ci", &secret, &[("resource", "billing")]).await).await;
    assert_eq!(claims(&token)["aud"], "billing");
    // A token for another resource server does not open this gateway's routes.
    assert_eq!(api_status(&c.gw, &token).await, StatusCode::UNAUTHORIZED);

    // Registered without audiences: only the gateway's own.
    let other = add_client(&c.config, "backup", &[]).await;
    let response = token_basic(&c.gw, "backup", &other, &[("resource", "billing")]).await;
    assert_eq!(
        error_of(response).await,
        (StatusCode::BAD_REQUEST, "invalid_target".into())
    );
}

#[tokio::test]
async fn a_client_not_registered_for_the_grant_is_unauthorized() {
    let c = gateway("").await;
    let secret = add_client(&c.config, "web", &["--grant", "password"]).await;
    let response = token_basic(&c.gw, "web", &secret, &[]).await;
    assert_eq!(
        error_of(response).await,
        (StatusCode::BAD_REQUEST, "unauthorized_client".into())
    );
}

async fn refused_within(gw: &TestGateway, token: &str, bound: Duration) {
    let start = tokio::time::Instant::now();
    loop {
        if api_status(gw, token).await == StatusCode::UNAUTHORIZED {
            return;
        }
        assert!(
            start.elapsed() < bound,
            "the token was still accepted after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn disabled_client_tokens_are_refused_within_a_second() {
    let c = gateway("").await;
    let secret = add_client(&c.config, "ci", &[]).await;
    let token = access_token(token_basic(&c.gw, "ci", &secret, &[]).await).await;
    assert_eq!(api_status(&c.gw, &token).await, StatusCode::OK);

    // Through the store and its change feed, as the CLI next to a running gateway does.
    cli(&c.config, &["client", "disable", "ci"], None).await;
    refused_within(&c.gw, &token, PROPAGATION).await;
    let response = token_basic(&c.gw, "ci", &secret, &[]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Enabled again: new tokens work, the old one stays refused.
    cli(&c.config, &["client", "enable", "ci"], None).await;
    let fresh = access_token(token_basic(&c.gw, "ci", &secret, &[]).await).await;
    assert_eq!(api_status(&c.gw, &fresh).await, StatusCode::OK);
    assert_eq!(api_status(&c.gw, &token).await, StatusCode::UNAUTHORIZED);

    // Logging out with a client token ends that token only, not the client's others.
    let other = access_token(token_basic(&c.gw, "ci", &secret, &[]).await).await;
    let out = client()
        .post(c.gw.url("/auth/logout"))
        .bearer_auth(&fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    assert_eq!(api_status(&c.gw, &fresh).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api_status(&c.gw, &other).await, StatusCode::OK);

    // Removed: refused as for a disable.
    cli(&c.config, &["client", "remove", "ci"], None).await;
    refused_within(&c.gw, &other, PROPAGATION).await;
}

#[tokio::test]
async fn wrong_client_secret_is_rate_limited_like_a_login() {
    let c = gateway(
        "[auth.limits]\nper_address_burst = 1000\nper_address_per_minute = 1000\n\
         per_user_burst = 3\nper_user_per_minute = 1\n",
    )
    .await;
    let secret = add_client(&c.config, "ci", &[]).await;
    // A right secret gives its place in the budget back: successes never lock a client out.
    for _ in 0..5 {
        access_token(token_basic(&c.gw, "ci", &secret, &[]).await).await;
    }
    for _ in 0..3 {
        let response = token_basic(&c.gw, "ci", "guess", &[]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The budget of the name is spent: refused before the secret is looked at, even the right
    // one, with 429 and Retry-After exactly as a login.
    for response in [
        token_basic(&c.gw, "ci", "guess", &[]).await,
        token_basic(&c.gw, "ci", &secret, &[]).await,
        token_post(&c.gw, &[("client_id", "ci"), ("client_secret", &secret)]).await,
    ] {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key("retry-after"));
    }
    // Another client's budget is its own, and a user of the same name is another name.
    let other = add_client(&c.config, "backup", &[]).await;
    access_token(token_basic(&c.gw, "backup", &other, &[]).await).await;
    c.gw.add_user("ci", "correct-horse", &[], &[]).await;
    c.gw.login("ci", "correct-horse").await;
}

#[tokio::test]
async fn password_grant_clients_require_a_listed_authenticated_client() {
    let c = gateway("[auth]\npassword_grant_clients = [\"web\"]\n").await;
    c.gw.add_user("alice", "correct-horse", &[], &["read"])
        .await;
    let web = add_client(&c.config, "web", &["--grant", "password"]).await;
    let other = add_client(&c.config, "other", &["--grant", "password"]).await;
    let login = |auth: Option<String>, extra: Vec<(&'static str, String)>| {
        let mut form = vec![
            ("grant_type", "password".to_owned()),
            ("username", "alice".to_owned()),
            ("password", "correct-horse".to_owned()),
        ];
        form.extend(extra);
        let mut request = client().post(c.gw.url("/auth/token")).form(&form);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    // No client, a free-text client_id, a wrong secret: invalid_client.
    for response in [
        login(None, vec![]).await.unwrap(),
        login(None, vec![("client_id", "web".into())])
            .await
            .unwrap(),
        login(Some(basic("web", "guess")), vec![]).await.unwrap(),
    ] {
        assert_eq!(
            error_of(response).await,
            (StatusCode::UNAUTHORIZED, "invalid_client".into())
        );
    }
    // A registered client that is not listed.
    let response = login(Some(basic("other", &other)), vec![]).await.unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::BAD_REQUEST, "unauthorized_client".into())
    );
    // The listed one, by either method; its name is the token's client_id.
    for response in [
        login(Some(basic("web", &web)), vec![]).await.unwrap(),
        login(
            None,
            vec![("client_id", "web".into()), ("client_secret", web.clone())],
        )
        .await
        .unwrap(),
    ] {
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            claims(body["access_token"].as_str().unwrap())["client_id"],
            "web"
        );
        assert!(body["refresh_token"].is_string());
    }
}

#[tokio::test]
async fn the_password_grant_stays_open_without_password_grant_clients() {
    let c = gateway("").await;
    c.gw.add_user("alice", "correct-horse", &[], &[]).await;
    // As before: a free-text client_id, even with an (empty) Basic secret as tools send it.
    let response = client()
        .post(c.gw.url("/auth/token"))
        .header("authorization", basic("anything", ""))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "correct-horse"),
            ("client_id", "anything"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn client_cli_lists_rotates_and_never_shows_a_secret_again() {
    let c = gateway("").await;
    let secret = add_client(
        &c.config,
        "ci",
        &["--scope", "read", "--audience", "billing"],
    )
    .await;
    assert_eq!(secret.len(), 43, "256 bits, base64url");
    let listed = cli(&c.config, &["client", "list", "--json"], None).await;
    let line: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(line["client_id"], "ci");
    assert_eq!(line["scopes"], serde_json::json!(["read"]));
    assert_eq!(line["audiences"], serde_json::json!(["billing"]));
    assert_eq!(line["grants"], serde_json::json!(["client_credentials"]));
    assert_eq!(line["auth_method"], "client_secret");
    assert_eq!(
        line["token_endpoint_auth_methods"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(line["disabled"], false);
    let plain = cli(&c.config, &["client", "list"], None).await;
    for out in [&listed, &plain] {
        assert!(!out.contains(&secret), "{out}");
    }

    let rotated = secret_in(&cli(&c.config, &["client", "rotate-secret", "ci"], None).await);
    assert_ne!(rotated, secret);
    let response = token_basic(&c.gw, "ci", &secret, &[]).await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the old secret"
    );
    access_token(token_basic(&c.gw, "ci", &rotated, &[]).await).await;
}

#[tokio::test]
async fn a_disable_after_a_secret_rotation_still_ends_the_tokens_issued_before_it() {
    let c = gateway("").await;
    let secret = add_client(&c.config, "ci", &[]).await;
    let before = access_token(token_basic(&c.gw, "ci", &secret, &[]).await).await;
    cli(&c.config, &["client", "rotate-secret", "ci"], None).await;
    assert_eq!(api_status(&c.gw, &before).await, StatusCode::OK);
    cli(&c.config, &["client", "disable", "ci"], None).await;
    refused_within(&c.gw, &before, PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_is_never_logged() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let text = GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .and("[server]\nlisten = \"127.0.0.1:0\"\n")
        .text(dir.path());
    std::fs::write(&config, text).unwrap();
    // The first command of a new installation creates its store, when told to.
    let secret = add_client(&config, "ci", &["--scope", "read", "--create-store"]).await;
    let served = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || serve_binary(&config))
            .await
            .unwrap()
    };
    let url = format!("http://{}/auth/token", served.addr);
    let requests = [
        client()
            .post(&url)
            .header("authorization", basic("ci", &secret))
            .form(&[("grant_type", "client_credentials")]),
        client().post(&url).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "ci"),
            ("client_secret", &secret),
        ]),
        // Refused ones log too: a wrong scope, both methods, a secret for another name.
        client()
            .post(&url)
            .header("authorization", basic("ci", &secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "admin")]),
        client()
            .post(&url)
            .header("authorization", basic("ci", &secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_secret", &secret),
            ]),
        client()
            .post(&url)
            .header("authorization", basic("nobody", &secret))
            .form(&[("grant_type", "client_credentials")]),
    ];
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 400, 400, 401]);
    // The audit lines of these requests are written before their answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = served.lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("client_token")),
        "the audit trail records client tokens: {lines:?}"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("ci:{secret}"));
    for line in &lines {
        assert!(!line.contains(&secret), "secret logged: {line}");
        assert!(!line.contains(&encoded), "Basic credentials logged: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_client_credentials_with_client_secret_basic_works_unchanged() {
    if crate::identity::python().is_none() {
        return;
    }
    let c = gateway("").await;
    let secret = add_client(
        &c.config,
        "reporting",
        &["--scope", "read", "--scope", "write"],
    )
    .await;
    crate::identity::run_python(
        "authlib_client_credentials.py",
        &[&c.gw.url(""), "reporting", &secret],
    )
    .await;
}

#[tokio::test]
async fn a_client_token_ttl_longer_than_users_tokens_still_verifies() {
    let c = gateway("[auth]\nclient_token_ttl = \"2h\"\n").await;
    let secret = add_client(&c.config, "ci", &[]).await;
    let response = token_basic(&c.gw, "ci", &secret, &[]).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["expires_in"], 7200);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(api_status(&c.gw, token).await, StatusCode::OK);
}
