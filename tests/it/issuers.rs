//! A trusted external issuer end to end: an IdP's JWKS served inside the test, its tokens
//! verified by the gateway, its roles and scopes injected from configured claim paths.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::{GatewayBuilder, Upstream, client};

const IDP: &str = "https://idp.example.test/realms/main";

pub(crate) struct IdpKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl IdpKey {
    pub(crate) fn new(kid: &str) -> IdpKey {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        IdpKey {
            kid: kid.into(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    pub(crate) fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(&self.public), "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let message = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let key = jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8);
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::EdDSA)
                .unwrap();
        format!("{message}.{sig}")
    }
}

/// Serves whatever key set `keys` holds at /certs.
pub(crate) async fn jwks_server(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let keys = keys.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = json!({"keys": *keys.lock().unwrap()}).to_string();
                    async move { Ok::<_, Infallible>(http::Response::new(gatehouse::body::full(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/certs")
}

fn keycloak_claims(aud: &str) -> Value {
    let now = gatehouse::clock::unix_now();
    json!({
        "iss": IDP, "sub": "kc-user-1", "aud": [aud, "account"], "exp": now + 300, "iat": now,
        "realm_access": {"roles": ["admin", "offline_access"]}, "scope": "openid profile",
    })
}

#[tokio::test]
async fn tokens_from_a_trusted_idp_are_verified_and_mapped_and_rotation_is_followed() {
    let first = IdpKey::new("kc-1");
    let keys = Arc::new(Mutex::new(vec![first.jwk()]));
    let url = jwks_server(keys.clone()).await;
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("admin", "/admin", &up.url(), "require_roles = [\"admin\"]")
        .and(&format!(
            "[[auth.trusted_issuers]]\nissuer = \"{IDP}\"\naudiences = [\"orders-api\"]\njwks_url = \"{url}\"\nroles_claim = \"realm_access.roles\"\nrefetch_cooldown = \"1s\"\n"
        ))
        .start()
        .await;

    let token = first.sign(&keycloak_claims("orders-api"));
    let r = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.headers().get("www-authenticate"));
    let seen = up.only();
    assert_eq!(seen.header("x-user"), Some("kc-user-1"));
    assert_eq!(seen.header("x-user-roles"), Some("admin,offline_access"));
    assert_eq!(seen.header("x-user-scopes"), Some("openid,profile"));

    // The IdP's audience list does not name this API: refused, nothing forwarded.
    let wrong_aud = first.sign(&keycloak_claims("billing-api"));
    let r = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&wrong_aud)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // An IdP key cannot vouch for the gateway's own issuer.
    let mut forged = keycloak_claims("orders-api");
    forged["iss"] = json!("gatehouse");
    forged["aud"] = json!("gatehouse");
    let r = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(first.sign(&forged))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The IdP rotates: once the cooldown has passed, a token with the new kid triggers a
    // refetch and verifies.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = IdpKey::new("kc-2");
    keys.lock().unwrap().push(second.jwk());
    let token = second.sign(&keycloak_claims("orders-api"));
    let r = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 2);

    // The IdP retires the first key: a token it signed, cached from its first use, stops
    // working once the gateway has the new key set.
    let old = first.sign(&keycloak_claims("orders-api"));
    let r = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    keys.lock().unwrap().retain(|k| k["kid"] != "kc-1");
    gw.gateway.auth().trusted_issuers().refresh_all().await;
    let r = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a cached verification outlived the key that made it"
    );
    assert_eq!(up.seen().len(), 3);
}
