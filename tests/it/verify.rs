//! Per-request verification through real sockets: each token and header attack from SECURITY.md,
//! per-route authorisation, optional and public routes, claim mapping, cookies and the cache.
//! Every test checks the status, `WWW-Authenticate`, and what the recording upstream received.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use gatehouse::auth::keys::KeyRing;
use http::StatusCode;
use serde_json::{Value, json};

use crate::support::{GatewayBuilder, TestGateway, Upstream, client, raw, raw_status, route};

/// A gateway with a protected `/api`, an optional `/opt`, a public `/pub`, and alice.
async fn setup() -> (TestGateway, Upstream) {
    setup_with("").await
}

async fn setup_with(extra: &str) -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&route("opt", "/opt", &up.url(), "auth = \"optional\""))
        .and(&route("pub", "/pub", &up.url(), "auth = \"public\""))
        .and(&route(
            "admin",
            "/admin",
            &up.url(),
            "require_roles = [\"admin\"]",
        ))
        .and(&route(
            "writes",
            "/writes",
            &up.url(),
            "require_scopes = [\"write\"]",
        ))
        .and(&route(
            "staff",
            "/staff",
            &up.url(),
            "require_any_role = [\"admin\", \"staff\"]",
        ))
        .and(extra)
        .start()
        .await;
    gw.add_user("alice", "secret", &["user"], &["read"]).await;
    (gw, up)
}

fn now() -> i64 {
    gatehouse::clock::unix_now()
}

/// Claims a genuine gatehouse token would carry.
fn good_claims() -> Value {
    let now = now();
    json!({
        "iss": "gatehouse", "sub": "alice", "aud": "gatehouse",
        "exp": now + 600, "iat": now, "nbf": now, "jti": format!("j{now}{}", rand_suffix()),
        "scope": "read", "roles": ["user"], "client_id": "test",
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// One hostile change to a token's claims.
type ClaimEdit = Box<dyn Fn(&mut Value)>;

/// The gateway's own keys, read from its key directory, to forge tokens with.
struct Forge {
    ring: KeyRing,
}

impl Forge {
    fn of(gw: &TestGateway) -> Forge {
        let a = &gw.gateway.config().auth;
        Forge {
            ring: KeyRing::load(&a.keys_dir, Duration::from_secs(3600)).unwrap(),
        }
    }

    fn header(&self) -> Value {
        json!({"alg": self.ring.signing().alg.name(), "typ": "at+jwt", "kid": self.ring.signing().kid})
    }

    /// Signs exactly these header and claims bytes with the real signing key.
    fn sign_raw(&self, header: &str, claims: &str) -> String {
        let message = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let key = self.ring.signing();
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), key.encoding_key(), key.alg.jwt_alg())
                .unwrap();
        format!("{message}.{sig}")
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    fn token_with(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = good_claims();
        edit(&mut claims);
        self.sign(&self.header(), &claims)
    }

    fn token_with_header(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut header = self.header();
        edit(&mut header);
        self.sign(&header, &good_claims())
    }
}

/// Sends the token to the protected route and checks a 401 `invalid_token` that reached nothing.
async fn assert_refused(gw: &TestGateway, up: &Upstream, token: &str) {
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "token accepted: {token}"
    );
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(!challenge.contains(token), "the challenge echoes the token");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    up.assert_untouched();
}

#[tokio::test]
async fn forged_claims_with_the_real_key_are_accepted_only_when_valid() {
    // The control for every forged-token test below: the forge itself produces good tokens.
    let (gw, up) = setup().await;
    let token = Forge::of(&gw).token_with(|_| {});
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.only().header("x-user"), Some("alice"));
}

#[tokio::test]
async fn alg_none_in_any_case_is_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": f.ring.signing().kid});
        let unsigned = format!(
            "{}.{}.",
            B64.encode(header.to_string()),
            B64.encode(good_claims().to_string())
        );
        assert_refused(&gw, &up, &unsigned).await;
        let with_sig = f.token_with_header(|h| h["alg"] = json!(alg));
        assert_refused(&gw, &up, &with_sig).await;
    }
}

#[tokio::test]
async fn hmac_signed_with_the_public_key_algorithm_confusion_is_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let jwks: Value = client()
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = &jwks["keys"][0];
    let x = B64.decode(jwk["x"].as_str().unwrap()).unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        x,
        jwk.to_string().into_bytes(),
        jwk["x"].as_str().unwrap().as_bytes().to_vec(),
    ];
    for secret in secrets {
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": f.ring.signing().kid});
        let message = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(good_claims().to_string())
        );
        let key = jsonwebtoken::EncodingKey::from_secret(&secret);
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        assert_refused(&gw, &up, &format!("{message}.{sig}")).await;
    }
}

#[tokio::test]
async fn alg_other_than_the_keys_bound_algorithm_is_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    for alg in ["ES256", "RS256", "HS256", "PS256", "EdDSA "] {
        assert_refused(&gw, &up, &f.token_with_header(|h| h["alg"] = json!(alg))).await;
    }
}

#[tokio::test]
async fn unknown_empty_path_sql_and_huge_kids_find_no_key() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let huge = "k".repeat(5000);
    for kid in [
        "unknown",
        "",
        "../../etc/passwd",
        "' OR 1=1 --",
        huge.as_str(),
    ] {
        assert_refused(&gw, &up, &f.token_with_header(|h| h["kid"] = json!(kid))).await;
    }
    assert_refused(
        &gw,
        &up,
        &f.token_with_header(|h| {
            h.as_object_mut().unwrap().remove("kid");
        }),
    )
    .await;
}

#[tokio::test]
async fn embedded_and_remote_key_headers_are_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let jwks: Value = client()
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (name, value) in [
        ("jwk", jwks["keys"][0].clone()),
        ("jku", json!("http://127.0.0.1:1/jwks.json")),
        ("x5u", json!("http://127.0.0.1:1/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
    ] {
        assert_refused(&gw, &up, &f.token_with_header(|h| h[name] = value)).await;
    }
}

#[tokio::test]
async fn wrong_typ_is_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    for typ in [json!("JWT"), json!("refresh+jwt"), json!(""), json!(1)] {
        assert_refused(&gw, &up, &f.token_with_header(|h| h["typ"] = typ)).await;
    }
    assert_refused(
        &gw,
        &up,
        &f.token_with_header(|h| {
            h.as_object_mut().unwrap().remove("typ");
        }),
    )
    .await;
}

#[tokio::test]
async fn malformed_serialisations_are_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let good = f.token_with(|_| {});
    let parts: Vec<&str> = good.split('.').collect();
    let cases = vec![
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra.parts"),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
        good.replace('-', "+").replace('_', "/"),
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() - 4]
        ),
        // JSON serialisation in place of compact JWS.
        B64.encode(json!({"payload": parts[1], "signatures": []}).to_string()),
        "a.b.c".to_owned(),
    ];
    for token in cases {
        if token == good {
            continue;
        }
        assert_refused(&gw, &up, &token).await;
    }
    // Non-canonical base64: flip unused trailing bits of the signature's last character.
    let sig = parts[2];
    let last = sig.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let tweaked = alphabet.chars().nth(idx ^ 1).unwrap();
    let noncanonical = format!(
        "{}.{}.{}{}",
        parts[0],
        parts[1],
        &sig[..sig.len() - 1],
        tweaked
    );
    assert_refused(&gw, &up, &noncanonical).await;
}

#[tokio::test]
async fn exp_nbf_iat_attacks_are_rejected_and_leeway_is_bounded() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let now = now();
    let cases: Vec<ClaimEdit> = vec![
        Box::new(|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        Box::new(move |c| c["exp"] = json!((now + 600).to_string())),
        Box::new(move |c| c["exp"] = json!(now - 11)),
        Box::new(move |c| c["nbf"] = json!(now + 60)),
        Box::new(move |c| c["iat"] = json!(now + 60)),
        Box::new(|c| {
            c.as_object_mut().unwrap().remove("iat");
        }),
        // Far beyond the configured lifetime.
        Box::new(move |c| c["exp"] = json!(now + 10 * 365 * 86400)),
        Box::new(move |c| c["exp"] = json!(1e300)),
    ];
    for edit in cases {
        assert_refused(&gw, &up, &f.token_with(|c| edit(c))).await;
    }
    // Within the leeway: accepted.
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(f.token_with(|c| {
            c["iat"] = json!(now - 600);
            c["nbf"] = json!(now - 600);
            c["exp"] = json!(now - 5);
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn wrong_issuer_audience_and_claim_types_are_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let cases: Vec<ClaimEdit> = vec![
        Box::new(|c| c["iss"] = json!("evil")),
        Box::new(|c| {
            c.as_object_mut().unwrap().remove("iss");
        }),
        Box::new(|c| c["aud"] = json!("other")),
        Box::new(|c| c["aud"] = json!(["other", "another"])),
        Box::new(|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
        Box::new(|c| c["sub"] = json!("")),
        Box::new(|c| c["sub"] = json!(42)),
        Box::new(|c| c["roles"] = json!("admin")),
        Box::new(|c| c["scope"] = json!(["read"])),
        Box::new(|c| c["sub"] = json!("alice,admin")),
        Box::new(|c| c["sub"] = json!("alice\r\nX-User: admin")),
        Box::new(|c| c["sub"] = json!("alïce")),
        Box::new(|c| c["roles"] = json!(["user,admin"])),
        Box::new(|c| c["roles"] = json!(["us\ner"])),
        Box::new(|c| c["sub"] = json!("a".repeat(1000))),
    ];
    for edit in cases {
        assert_refused(&gw, &up, &f.token_with(|c| edit(c))).await;
    }
    // An audience list that contains ours is fine.
    let token = f.token_with(|c| c["aud"] = json!(["other", "gatehouse"]));
    assert_eq!(
        client()
            .get(gw.url("/api/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn duplicate_json_members_are_rejected() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let claims = good_claims().to_string();
    let dup_sub = claims.replacen('{', "{\"sub\":\"admin\",", 1);
    assert_refused(&gw, &up, &f.sign_raw(&f.header().to_string(), &dup_sub)).await;
    let header = f
        .header()
        .to_string()
        .replacen('{', "{\"alg\":\"none\",", 1);
    assert_refused(&gw, &up, &f.sign_raw(&header, &claims)).await;
}

#[tokio::test]
async fn refresh_token_presented_as_access_token_is_rejected() {
    let (gw, up) = setup().await;
    let tokens = gw.login("alice", "secret").await;
    assert_refused(&gw, &up, tokens["refresh_token"].as_str().unwrap()).await;
}

#[tokio::test]
async fn oversized_token_is_rejected_before_decoding() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let big = f.token_with(|c| c["pad"] = json!("x".repeat(9000)));
    assert_refused(&gw, &up, &big).await;
}

#[tokio::test]
async fn two_authorization_headers_or_header_plus_query_are_invalid_request() {
    let (gw, up) = setup().await;
    let token = gw.access_token("alice", "secret").await;
    let r = client()
        .get(gw.url("/api/x"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_request")
    );
    let r = client()
        .get(gw.url(&format!("/api/x?access_token={token}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = client()
        .get(gw.url(&format!("/api/x?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "tokens in query strings are not accepted"
    );
    up.assert_untouched();
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let (gw, up) = setup().await;
    let token = gw.access_token("alice", "secret").await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = client()
            .get(gw.url("/api/x"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn missing_token_gets_a_bare_challenge() {
    let (gw, up) = setup().await;
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"gatehouse\""
    );
    up.assert_untouched();
}

#[tokio::test]
async fn missing_role_or_scope_is_403_insufficient_scope() {
    let (gw, up) = setup().await;
    gw.add_user("root", "rootpass", &["admin"], &["read", "write"])
        .await;
    let alice = gw.access_token("alice", "secret").await;
    let root = gw.access_token("root", "rootpass").await;
    for path in ["/admin/x", "/writes/x", "/staff/x"] {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
    }
    let r = client()
        .get(gw.url("/writes/x"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"write\"")
    );
    up.assert_untouched();
    for path in ["/admin/x", "/writes/x", "/staff/x"] {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(&root)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn optional_route_injects_when_valid_forwards_bare_without_and_refuses_invalid() {
    let (gw, up) = setup().await;
    let token = gw.access_token("alice", "secret").await;
    client()
        .get(gw.url("/opt/a"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    client()
        .get(gw.url("/opt/b"))
        .header("x-user", "mallory")
        .send()
        .await
        .unwrap();
    let r = client()
        .get(gw.url("/opt/c"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-user"), Some("alice"));
    assert!(
        seen[1].headers_like("x-user").is_empty(),
        "{:?}",
        seen[1].headers
    );
}

/// Every alias of the injected headers a client could send.
fn spoofed_identity() -> Vec<(&'static str, &'static str)> {
    vec![
        ("X-User", "mallory"),
        ("x-user", "mallory2"),
        ("X_User", "mallory3"),
        ("x.user", "mallory4"),
        ("X-USER-ROLES", "admin"),
        ("x_user_roles", "admin"),
        ("X-User-Scopes", "write"),
        ("x-user", ""),
    ]
}

#[tokio::test]
async fn client_identity_headers_in_any_spelling_never_reach_the_upstream() {
    let (gw, up) = setup().await;
    let token = gw.access_token("alice", "secret").await;
    for path in ["/api/x", "/opt/x", "/pub/x"] {
        // Raw bytes: client libraries refuse some of these spellings.
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n"
        );
        for (k, v) in spoofed_identity() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let out = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&out), 200, "{path}: {out}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        let user: Vec<_> = s.headers.get_all("x-user").iter().collect();
        if i == 2 {
            assert!(
                s.headers_like("x-user").is_empty(),
                "public route leaked {:?}",
                s.headers
            );
        } else {
            assert_eq!(user.len(), 1);
            assert_eq!(user[0], "alice");
            assert_eq!(s.header("x-user-roles"), Some("user"));
            assert_eq!(s.header("x-user-scopes"), Some("read"));
            let names = s.headers_like("x-user");
            assert_eq!(names.len(), 3, "only the three injected headers: {names:?}");
        }
    }
}

#[tokio::test]
async fn connection_header_cannot_strip_the_injected_identity() {
    let (gw, up) = setup().await;
    let token = gw.access_token("alice", "secret").await;
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close, X-User, X-User-Roles, Authorization\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let out = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    // Connection nominated Authorization, so it was removed before authentication: 401.
    assert_eq!(raw_status(&out), 401, "{out}");
    up.assert_untouched();
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close, X-User, X-User-Roles\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let out = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let s = up.only();
    assert_eq!(s.header("x-user"), Some("alice"));
    assert_eq!(s.header("x-user-roles"), Some("user"));
}

#[tokio::test]
async fn pipelined_requests_each_get_their_own_scrubbing() {
    let (gw, up) = setup().await;
    let req = b"GET /pub/1 HTTP/1.1\r\nHost: x\r\nX-User: mallory\r\n\r\nGET /pub/2 HTTP/1.1\r\nHost: x\r\nX_User_Roles: admin\r\nConnection: close\r\n\r\n";
    let out = raw(gw.addr, req, Duration::from_secs(5)).await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    for s in up.seen() {
        assert!(s.headers_like("x-user").is_empty(), "{:?}", s.headers);
    }
}

#[tokio::test]
async fn configured_strip_prefixes_and_claim_mappings_apply() {
    let (gw, up) = setup_with(
        "[auth.identity_headers]\nstrip_prefixes = [\"x-auth-\"]\n[auth.identity_headers.claims]\n\"x-user-client\" = \"client_id\"",
    )
    .await;
    let token = gw.access_token("alice", "secret").await;
    client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .header("x-auth-level", "root")
        .header("X_Auth_Tenant", "other")
        .header("x-user-client", "spoofed")
        .send()
        .await
        .unwrap();
    let s = up.only();
    assert!(s.headers_like("x-auth-").is_empty(), "{:?}", s.headers);
    assert_eq!(s.header("x-user-client"), Some("gatehouse"));
}

#[tokio::test]
async fn token_is_not_forwarded_unless_the_route_says_so() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&route("fwd", "/fwd", &up.url(), "forward_token = true"))
        .start()
        .await;
    gw.add_user("alice", "secret", &[], &[]).await;
    let token = gw.access_token("alice", "secret").await;
    client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    client()
        .get(gw.url("/fwd/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let seen = up.seen();
    assert!(seen[0].header("authorization").is_none());
    assert_eq!(
        seen[1].header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}

#[tokio::test]
async fn cookie_presentation_works_when_configured_and_double_presentation_is_refused() {
    let (gw, up) = setup_with("[auth]\ncookie = \"gh_token\"").await;
    let token = gw.access_token("alice", "secret").await;
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", format!("theme=dark; gh_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = up.only();
    assert_eq!(s.header("x-user"), Some("alice"));
    assert_eq!(
        s.header("cookie"),
        Some("theme=dark"),
        "the token cookie must not be forwarded"
    );
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .header("cookie", format!("gh_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn cookies_are_ignored_when_no_cookie_is_configured() {
    let (gw, up) = setup().await;
    let token = gw.access_token("alice", "secret").await;
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", format!("gatehouse_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    up.assert_untouched();
}

#[tokio::test]
async fn cached_verification_still_runs_route_checks_and_honours_revocation() {
    let (gw, up) = setup().await;
    let tokens = gw.login("alice", "secret").await;
    let token = tokens["access_token"].as_str().unwrap();
    // Warm the cache on a route alice may use, then try one she may not.
    assert_eq!(
        client()
            .get(gw.url("/api/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.url("/api/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.url("/admin/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let r = client()
        .post(gw.url("/auth/logout"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client()
            .get(gw.url("/api/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn removed_key_stops_verifying_even_for_cached_tokens() {
    let (gw, up) = setup().await;
    let token = gw.access_token("alice", "secret").await;
    assert_eq!(
        client()
            .get(gw.url("/api/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The operator deletes the key directory and a new key is made: old tokens must die.
    let a = &gw.gateway.config().auth;
    std::fs::remove_dir_all(&a.keys_dir).unwrap();
    KeyRing::load_or_generate(&a.keys_dir, a.algorithm, Duration::from_secs(3600)).unwrap();
    gw.gateway.auth().reload_keys().unwrap();
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.seen().len(), 1);
}

/// The process-wide count of tokens refused from memory (the recorder is shared by every test in
/// this binary; only this feature ever increments the series).
fn refused_from_memory() -> f64 {
    let text = gatehouse::metrics::render().unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("gatehouse_verify_cache_total{result=\"refused\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn flood_of_one_forged_token_is_refused_from_memory_after_one_check() {
    let (gw, up) = setup().await;
    let f = Forge::of(&gw);
    let token = f.token_with(|_| {});
    // Same header and claims, signature bytes changed: a forgery that costs a signature check.
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{flipped}{}", &sig[1..]);
    let before = refused_from_memory();
    for _ in 0..20 {
        let r = client()
            .get(gw.url("/api/x"))
            .bearer_auth(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains("invalid signature"), "{challenge}");
    }
    assert!(refused_from_memory() - before >= 19.0);
    // The genuine token is unaffected by its forged twin being remembered.
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn not_yet_valid_token_is_not_remembered_as_refused() {
    let (gw, up) = setup_with("[auth]\nleeway = \"0s\"").await;
    let f = Forge::of(&gw);
    let start = now();
    let token = f.token_with(|c| {
        c["nbf"] = json!(start + 2);
        c["iat"] = json!(start);
    });
    assert_refused(&gw, &up, &token).await;
    assert_refused(&gw, &up, &token).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a time-dependent refusal outlived its reason"
    );
}

/// With a small `max_token_bytes`, a user with many roles used to be handed a token the
/// gateway then refused on every request (minting checked a fixed 8192 bytes). Now the login
/// fails instead, and a token the gateway hands out is one it accepts.
#[tokio::test]
async fn the_gateway_never_mints_a_token_it_would_refuse() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and("[auth]\nmax_token_bytes = 900\n")
        .start()
        .await;
    let many: Vec<String> = (0..60).map(|i| format!("role-{i:02}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    gw.add_user("crowded", "pw-crowded-1", &many, &[]).await;
    gw.add_user("plain", "pw-plain-123", &["user"], &[]).await;

    let response = client()
        .post(gw.url("/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "crowded"),
            ("password", "pw-crowded-1"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(body.get("access_token").is_none(), "{status}: {body}");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");

    let token = gw.access_token("plain", "pw-plain-123").await;
    assert!(token.len() <= 900);
    let status = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
}
