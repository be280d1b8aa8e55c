//! Token introspection (RFC 7662) over real sockets: live tokens answer their claims, revoked,
//! expired, foreign and malformed ones exactly `{"active": false}`, only authenticated clients
//! registered for it may ask; and authlib discovers the endpoints from the RFC 8414 metadata of
//! a TLS gateway, gets a client-credentials token and introspects it.

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::clients::{add_client, basic};
use crate::support::{GatewayBuilder, TestGateway, Upstream, cli, client, route};

/// How long a revocation made by the CLI may take to reach the gateway.
const PROPAGATION: Duration = Duration::from_secs(1);

struct Introspecting {
    gw: TestGateway,
    config: PathBuf,
    /// The secret of `rs`, a resource server registered for introspection.
    rs: String,
    _up: Upstream,
}

/// A gateway started from a file (so the CLI acts on its store), with a user `alice` and a
/// client `rs` registered for introspection.
async fn gateway(extra: &str) -> Introspecting {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .and(extra)
        .start_from_file(dir, &config)
        .await;
    gw.add_user("alice", "pw-of-alice", &["staff"], &["read", "write"])
        .await;
    let rs = add_client(&config, "rs", &["--grant", "introspection"]).await;
    Introspecting {
        gw,
        config,
        rs,
        _up: up,
    }
}

async fn introspect_as(gw: &TestGateway, id: &str, secret: &str, token: &str) -> reqwest::Response {
    client()
        .post(gw.url("/auth/introspect"))
        .header("authorization", basic(id, secret))
        .form(&[("token", token), ("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap()
}

impl Introspecting {
    async fn introspect(&self, token: &str) -> Value {
        let response = introspect_as(&self.gw, "rs", &self.rs, token).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        response.json().await.unwrap()
    }

    /// Polls until `token` is inactive, failing after `bound`.
    async fn inactive_within(&self, token: &str, bound: Duration) {
        let start = tokio::time::Instant::now();
        loop {
            let answer = self.introspect(token).await;
            if answer == json!({"active": false}) {
                return;
            }
            assert!(
                start.elapsed() < bound,
                "still active after {bound:?}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn client_token(&self, id: &str, secret: &str) -> String {
        let response = client()
            .post(self.gw.url("/auth/token"))
            .header("authorization", basic(id, secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn a_live_users_token_is_active_with_its_claims() {
    let i = gateway("").await;
    let token = i.gw.access_token("alice", "pw-of-alice").await;
    let minted = crate::support::claims(&token);
    let answer = i.introspect(&token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], "alice");
    assert_eq!(answer["username"], "alice");
    assert_eq!(answer["client_id"], "gatehouse");
    assert_eq!(answer["scope"], "read write");
    assert_eq!(answer["aud"], "gatehouse");
    assert_eq!(answer["iss"], "gatehouse");
    assert_eq!(answer["token_type"], "Bearer");
    for member in ["exp", "iat", "nbf", "jti"] {
        assert_eq!(answer[member], minted[member], "{member}");
    }
}

#[tokio::test]
async fn a_live_client_token_is_active_without_a_username() {
    let i = gateway("").await;
    let secret = add_client(&i.config, "ci", &["--scope", "read"]).await;
    let token = i.client_token("ci", &secret).await;
    let answer = i.introspect(&token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], "ci");
    assert_eq!(answer["client_id"], "ci");
    assert_eq!(answer["scope"], "read");
    assert!(answer.get("username").is_none(), "{answer}");
}

#[tokio::test]
async fn a_logged_out_token_is_inactive() {
    let i = gateway("").await;
    let token = i.gw.access_token("alice", "pw-of-alice").await;
    assert_eq!(i.introspect(&token).await["active"], true);
    let r = client()
        .post(i.gw.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(i.introspect(&token).await, json!({"active": false}));
}

#[tokio::test]
async fn tokens_of_revoked_sessions_and_disabled_clients_turn_inactive_within_a_second() {
    let i = gateway("").await;
    let user = i.gw.access_token("alice", "pw-of-alice").await;
    let secret = add_client(&i.config, "ci", &[]).await;
    let machine = i.client_token("ci", &secret).await;
    assert_eq!(i.introspect(&user).await["active"], true);
    assert_eq!(i.introspect(&machine).await["active"], true);

    cli(&i.config, &["sessions", "revoke", "alice"], None).await;
    i.inactive_within(&user, PROPAGATION).await;
    assert_eq!(i.introspect(&machine).await["active"], true, "only alice's");

    cli(&i.config, &["client", "disable", "ci"], None).await;
    i.inactive_within(&machine, PROPAGATION).await;
}

#[tokio::test]
async fn an_expired_token_is_inactive() {
    let i = gateway("[auth]\naccess_token_lifetime = \"1s\"\nleeway = \"0s\"\n").await;
    let token = i.gw.access_token("alice", "pw-of-alice").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(i.introspect(&token).await, json!({"active": false}));
}

#[tokio::test]
async fn foreign_malformed_and_refresh_tokens_are_inactive() {
    let i = gateway("").await;
    // Another gateway: another issuer, keys this one does not hold.
    let other = GatewayBuilder::new("[auth]\nissuer = \"other\"\n")
        .start()
        .await;
    other
        .add_user("alice", "pw-of-alice", &["staff"], &["read"])
        .await;
    let foreign = other.access_token("alice", "pw-of-alice").await;
    // The same issuer name and audience, still not signed by this gateway's keys.
    let twin = GatewayBuilder::new("").start().await;
    twin.add_user("alice", "pw-of-alice", &[], &[]).await;
    let lookalike = twin.access_token("alice", "pw-of-alice").await;
    let refresh = i.gw.login("alice", "pw-of-alice").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let live = i.gw.access_token("alice", "pw-of-alice").await;
    let (head, rest) = live.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let forged_claims = {
        use base64::Engine as _;
        let mut claims = crate::support::claims(&live);
        claims["scope"] = json!("read write admin");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    let tampered = format!("{head}.{forged_claims}.{signature}");
    for token in [
        foreign.as_str(),
        lookalike.as_str(),
        refresh.as_str(),
        tampered.as_str(),
        "not-a-token",
        "a.b.c",
        &"x".repeat(3500),
    ] {
        assert_eq!(
            i.introspect(token).await,
            json!({"active": false}),
            "{token:.40}"
        );
    }
    assert_eq!(i.introspect(&live).await["active"], true);
}

#[tokio::test]
async fn introspection_without_client_authentication_is_refused_like_the_token_endpoint() {
    let i = gateway("").await;
    let token = i.gw.access_token("alice", "pw-of-alice").await;
    let anonymous = client()
        .post(i.gw.url("/auth/introspect"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    let wrong = introspect_as(&i.gw, "rs", "not-the-secret", &token).await;
    let unknown = introspect_as(&i.gw, "nobody", &i.rs, &token).await;
    // A user's bearer token is no client authentication.
    let bearer = client()
        .post(i.gw.url("/auth/introspect"))
        .bearer_auth(&token)
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    for response in [anonymous, wrong, unknown, bearer] {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"gatehouse\""
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        assert!(body.get("active").is_none(), "{body}");
    }
    // client_secret_post is client authentication too.
    let posted = client()
        .post(i.gw.url("/auth/introspect"))
        .form(&[
            ("client_id", "rs"),
            ("client_secret", i.rs.as_str()),
            ("token", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let body: Value = posted.json().await.unwrap();
    assert_eq!(body["active"], true);
    // GET, or the token in the query string: refused.
    let r = client()
        .get(i.gw.url("/auth/introspect"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = client()
        .post(i.gw.url(&format!("/auth/introspect?token={token}")))
        .header("authorization", basic("rs", &i.rs))
        .form(&[("x", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_client_not_registered_for_introspection_cannot_learn_whether_tokens_are_live() {
    let i = gateway("").await;
    let token = i.gw.access_token("alice", "pw-of-alice").await;
    let secret = add_client(&i.config, "ci", &[]).await;
    let response = introspect_as(&i.gw, "ci", &secret, &token).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized_client");
    assert!(body.get("active").is_none(), "{body}");
    // Its own token is no exception.
    let own = i.client_token("ci", &secret).await;
    let response = introspect_as(&i.gw, "ci", &secret, &own).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn guessing_an_introspecting_clients_secret_is_rate_limited_like_a_login() {
    let i = gateway(
        "[auth.limits]\nper_address_burst = 1000\nper_address_per_minute = 1000\nper_user_burst = 3\nper_user_per_minute = 1\n",
    )
    .await;
    let token = i.gw.access_token("alice", "pw-of-alice").await;
    for _ in 0..3 {
        let r = introspect_as(&i.gw, "rs", "guess", &token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = introspect_as(&i.gw, "rs", "guess", &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // Spent, even the right secret waits: the limit is the name's, not the guess's.
    let r = introspect_as(&i.gw, "rs", &i.rs, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// authlib, as a resource server would use it: reads the RFC 8414 metadata of a TLS gateway
/// whose issuer is its https origin, validates it, finds the token endpoint, gets a
/// client-credentials token, introspects it (active), revokes it at the revocation endpoint
/// the metadata names, and introspects it again (inactive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_discovers_the_endpoints_and_introspects_a_live_then_revoked_token() {
    if crate::identity::python().is_none() {
        return;
    }
    let pki = crate::tls::pki();
    let certs = tempfile::tempdir().unwrap();
    let cert = certs.path().join("cert.pem");
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    crate::support::write_private(certs.path().join("key.pem"), &pki.key_pem);
    let i = gateway(&format!(
        "[auth]\nissuer = \"https://127.0.0.1:{{port}}\"\npublic_url = \"https://127.0.0.1:{{port}}\"\n\
         [server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n",
        certs.path().display()
    ))
    .await;
    let secret = add_client(&i.config, "reporting", &["--scope", "read"]).await;
    let issuer = format!("https://127.0.0.1:{}", i.gw.addr.port());
    crate::identity::run_python(
        "authlib_discovery.py",
        &[
            &issuer,
            &cert.display().to_string(),
            "reporting",
            &secret,
            "rs",
            &i.rs,
        ],
    )
    .await;
}

/// A trusted issuer's token opens this gateway's routes, but it is that issuer's to introspect:
/// here it is inactive, and asking never makes the gateway look its key up.
#[tokio::test]
async fn a_trusted_issuers_token_is_inactive_here_though_the_routes_accept_it() {
    let idp = GatewayBuilder::new("[auth]\nissuer = \"idp\"\n")
        .start()
        .await;
    idp.add_user("carol", "pw-of-carol", &[], &["read"]).await;
    let external = idp.access_token("carol", "pw-of-carol").await;
    let jwks = client()
        .get(idp.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let jwks_file = files.path().join("idp-jwks.json");
    std::fs::write(&jwks_file, jwks).unwrap();
    let i = gateway(&format!(
        "[[auth.trusted_issuers]]\nissuer = \"idp\"\naudiences = [\"gatehouse\"]\njwks_file = \"{}\"\n",
        jwks_file.display()
    ))
    .await;
    let api = client()
        .get(i.gw.url("/api/x"))
        .bearer_auth(&external)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::OK, "the routes accept it");
    assert_eq!(i.introspect(&external).await, json!({"active": false}));
}
