//! The assertion rules one by one, each broken alone against an otherwise valid assertion.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const NOW: i64 = 1_700_000_000;
const TOKEN_URL: &str = "https://gw.example/auth/token";

struct Signer {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

fn ed_signer(kid: &str) -> Signer {
    let pair = Ed25519KeyPair::generate().unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    Signer {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}),
    }
}

fn keys_of(signers: &[&Signer]) -> KeyLookup {
    let jwks = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    parse_key_set(super::KeySetOf::Client, "ci", jwks.to_string().as_bytes()).unwrap()
}

fn claims() -> Value {
    json!({"iss": "ci", "sub": "ci", "aud": TOKEN_URL, "exp": NOW + 60, "iat": NOW, "jti": "j-1"})
}

fn sign(signer: &Signer, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.encoding).unwrap()
}

fn audiences() -> Vec<String> {
    vec!["https://gw.example".to_owned(), TOKEN_URL.to_owned()]
}

fn check(assertion: &str, keys: &KeyLookup) -> Result<Verified, AssertionError> {
    let audiences = audiences();
    let expected = Expected {
        client: "ci",
        audiences: &audiences,
        leeway: 10,
    };
    verify(assertion, keys, &expected, NOW)
}

fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut c = claims();
    change(c.as_object_mut().unwrap());
    c
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn a_valid_assertion_names_its_jti_and_expiry() {
    let s = ed_signer("k1");
    let verified = check(&sign(&s, &claims()), &keys_of(&[&s])).unwrap();
    assert_eq!(verified.jti, "j-1");
    assert!(
        verified.exp >= NOW + 60,
        "remembered at least until it expires"
    );
    // The issuer as audience, and an array containing one of them, do too.
    for aud in [json!("https://gw.example"), json!(["other", TOKEN_URL])] {
        let c = with(|c| {
            c.insert("aud".into(), aud);
        });
        check(&sign(&s, &c), &keys_of(&[&s])).unwrap();
    }
}

#[test]
fn an_assertion_signed_by_another_key_is_refused() {
    let (registered, thief) = (ed_signer("k1"), ed_signer("k1"));
    assert_eq!(
        check(&sign(&thief, &claims()), &keys_of(&[&registered])),
        Err(AssertionError::BadSignature)
    );
    let other_kid = ed_signer("k2");
    assert_eq!(
        check(&sign(&other_kid, &claims()), &keys_of(&[&registered])),
        Err(AssertionError::UnknownKey)
    );
}

#[test]
fn without_a_kid_only_a_single_key_set_is_used() {
    let (a, b) = (ed_signer("a"), ed_signer("b"));
    let header = Header::new(Algorithm::EdDSA);
    let no_kid = jsonwebtoken::encode(&header, &claims(), &a.encoding).unwrap();
    check(&no_kid, &keys_of(&[&a])).unwrap();
    assert_eq!(
        check(&no_kid, &keys_of(&[&a, &b])),
        Err(AssertionError::UnknownKey)
    );
}

#[test]
fn an_hs256_assertion_with_a_guessable_key_is_refused() {
    let s = ed_signer("k1");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    for secret in [&b""[..], b"secret", b"ci"] {
        let forged =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
        assert_eq!(
            check(&forged, &keys_of(&[&s])),
            Err(AssertionError::Algorithm)
        );
    }
}

#[test]
fn an_alg_none_assertion_is_refused() {
    let s = ed_signer("k1");
    for alg in ["none", "None", "NONE"] {
        let forged = format!(
            "{}.{}.",
            b64json(&json!({"alg": alg, "kid": "k1"})),
            b64json(&claims())
        );
        assert_eq!(
            check(&forged, &keys_of(&[&s])),
            Err(AssertionError::Algorithm)
        );
    }
}

#[test]
fn an_algorithm_other_than_the_keys_is_refused() {
    let s = ed_signer("k1");
    let token = sign(&s, &claims());
    let (_, rest) = token.split_once('.').unwrap();
    let swapped = format!("{}.{rest}", b64json(&json!({"alg": "ES256", "kid": "k1"})));
    assert_eq!(
        check(&swapped, &keys_of(&[&s])),
        Err(AssertionError::AlgorithmMismatch)
    );
}

#[test]
fn keys_named_by_the_assertion_itself_are_never_used() {
    let s = ed_signer("k1");
    for (name, value) in [
        ("jku", json!("https://evil.example/jwks")),
        ("jwk", s.jwk.clone()),
        ("crit", json!(["exp"])),
    ] {
        let mut header = json!({"alg": "EdDSA", "kid": "k1"});
        header[name] = value;
        let forged = format!("{}.{}.sig", b64json(&header), b64json(&claims()));
        assert!(
            matches!(
                check(&forged, &keys_of(&[&s])),
                Err(AssertionError::BadHeader(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn an_assertion_for_another_audience_is_refused() {
    let s = ed_signer("k1");
    for aud in [
        json!("https://evil.example/auth/token"),
        json!(["https://gw.example.evil/auth/token"]),
        json!([]),
        json!(""),
    ] {
        let c = with(|c| {
            c.insert("aud".into(), aud.clone());
        });
        assert_eq!(
            check(&sign(&s, &c), &keys_of(&[&s])),
            Err(AssertionError::WrongAudience),
            "{aud}"
        );
    }
    let c = with(|c| {
        c.remove("aud");
    });
    assert_eq!(
        check(&sign(&s, &c), &keys_of(&[&s])),
        Err(AssertionError::MissingClaim("aud"))
    );
}

#[test]
fn an_assertion_whose_iss_is_not_its_sub_is_refused() {
    let s = ed_signer("k1");
    for (iss, sub) in [("other", "ci"), ("ci", "other"), ("other", "other")] {
        let c = with(|c| {
            c.insert("iss".into(), json!(iss));
            c.insert("sub".into(), json!(sub));
        });
        assert_eq!(
            check(&sign(&s, &c), &keys_of(&[&s])),
            Err(AssertionError::WrongClient),
            "{iss} {sub}"
        );
    }
}

#[test]
fn an_expired_assertion_is_refused() {
    let s = ed_signer("k1");
    let c = with(|c| {
        c.insert("exp".into(), json!(NOW - 11));
        c.insert("iat".into(), json!(NOW - 70));
    });
    assert_eq!(
        check(&sign(&s, &c), &keys_of(&[&s])),
        Err(AssertionError::Expired)
    );
    let c = with(|c| {
        c.remove("exp");
    });
    assert_eq!(
        check(&sign(&s, &c), &keys_of(&[&s])),
        Err(AssertionError::MissingClaim("exp"))
    );
}

#[test]
fn an_assertion_expiring_too_far_ahead_is_refused() {
    let s = ed_signer("k1");
    let limit = MAX_ASSERTION_LIFETIME.as_secs() as i64;
    let ok = with(|c| {
        c.insert("exp".into(), json!(NOW + limit));
    });
    check(&sign(&s, &ok), &keys_of(&[&s])).unwrap();
    let c = with(|c| {
        c.insert("exp".into(), json!(NOW + limit + 11));
    });
    assert_eq!(
        check(&sign(&s, &c), &keys_of(&[&s])),
        Err(AssertionError::TooLongLived)
    );
}

#[test]
fn an_assertion_from_the_future_is_refused() {
    let s = ed_signer("k1");
    for claim in ["nbf", "iat"] {
        let c = with(|c| {
            c.insert(claim.into(), json!(NOW + 11));
        });
        assert_eq!(
            check(&sign(&s, &c), &keys_of(&[&s])),
            Err(AssertionError::NotYetValid),
            "{claim}"
        );
        // Within the leeway it is accepted.
        let c = with(|c| {
            c.insert(claim.into(), json!(NOW + 9));
        });
        check(&sign(&s, &c), &keys_of(&[&s])).unwrap();
    }
}

#[test]
fn an_assertion_without_a_usable_jti_is_refused() {
    let s = ed_signer("k1");
    for jti in [
        json!(null),
        json!(7),
        json!(""),
        json!("a,b\r\n"),
        json!("x".repeat(129)),
    ] {
        let c = with(|c| {
            if jti.is_null() {
                c.remove("jti");
            } else {
                c.insert("jti".into(), jti.clone());
            }
        });
        assert!(check(&sign(&s, &c), &keys_of(&[&s])).is_err(), "{jti}");
    }
}

#[test]
fn an_oversized_or_malformed_assertion_is_refused_before_decoding() {
    let s = ed_signer("k1");
    let keys = keys_of(&[&s]);
    let huge = "a".repeat(MAX_ASSERTION_BYTES + 1);
    assert_eq!(check(&huge, &keys), Err(AssertionError::TooLarge));
    for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
        assert!(
            matches!(check(bad, &keys), Err(AssertionError::Malformed(_))),
            "{bad}"
        );
    }
    assert_eq!(unverified_subject(&huge), None);
    assert_eq!(
        unverified_subject(&sign(&s, &claims())).as_deref(),
        Some("ci")
    );
}

#[test]
fn a_registered_key_set_must_be_public_usable_and_distinct() {
    let s = ed_signer("k1");
    assert_eq!(
        check_client_jwks(&json!({"keys": [s.jwk]}).to_string()).unwrap(),
        1
    );
    let mut private = s.jwk.clone();
    private["d"] = json!("AAAA");
    assert!(matches!(
        check_client_jwks(&json!({"keys": [private]}).to_string()),
        Err(JwksError::Private { index: 0 })
    ));
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
    assert!(check_client_jwks(&json!({"keys": [oct]}).to_string()).is_err());
    let twice = json!({"keys": [s.jwk, s.jwk]}).to_string();
    assert!(matches!(
        check_client_jwks(&twice),
        Err(JwksError::DuplicateKid(_))
    ));
    for bad in ["", "[]", "{}", r#"{"keys": []}"#, r#"{"keys": 1}"#] {
        assert!(check_client_jwks(bad).is_err(), "{bad}");
    }
    assert!(check_jwks_url("https://ci.example/jwks").is_ok());
    for bad in ["ftp://ci.example/jwks", "/jwks", "https://", "not a url"] {
        assert!(check_jwks_url(bad).is_err(), "{bad}");
    }
}

/// The fetch code is the trusted issuers', but a failing client key set must not be logged as a
/// trusted issuer's: the message names the client.
#[tokio::test]
async fn a_failing_client_key_set_fetch_names_the_client_not_a_trusted_issuer() {
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let keys = super::ClientKeys::new();
    let e = keys
        .fetch("ci", &format!("http://{addr}/jwks.json"))
        .await
        .map(|_| ())
        .expect_err("nothing listens there")
        .to_string();
    assert!(e.starts_with("key set of client \"ci\": fetching"), "{e}");
    assert!(!e.contains("trusted issuer"), "{e}");
    let e = super::parse_key_set(super::KeySetOf::Client, "ci", b"{}")
        .map(|_| ())
        .expect_err("no keys")
        .to_string();
    assert!(e.starts_with("key set of client \"ci\""), "{e}");
}
