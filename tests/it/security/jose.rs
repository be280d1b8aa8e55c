//! Tokens beyond tests/it/verify.rs: Project Wycheproof's signature vectors (tests/data/wycheproof,
//! Apache-2.0) through the gateway's own verification path. ES256, EdDSA and RS256 keys are built
//! with `VerificationKey::from_jwk` from each group's JWK, HS256 keys are loaded by `KeyRing` from
//! a key directory, and every signature is checked with `verify_signature`. Then every one of those
//! signatures, valid for its own message, is put on a real access token and must fail
//! `Verifier::verify`.
//!
//! Wycheproof marks each case `valid`, `invalid` or `acceptable` (either answer is allowed).
//! gatehouse may be stricter than `valid` in one place only, on purpose: HS256 needs the full
//! 256-bit tag and a key of at least 32 bytes, so truncated tags and short keys never verify.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use gatehouse::auth::keys::{KeyLookup, KeyRing, VerificationKey};
use gatehouse::auth::verify::{Policy, Verifier, VerifyError};
use serde_json::{Value, json};

fn vectors(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/wycheproof")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn groups(v: &Value) -> &Vec<Value> {
    v["testGroups"].as_array().unwrap()
}

fn tests(group: &Value) -> &Vec<Value> {
    group["tests"].as_array().unwrap()
}

/// Outcome of one file: how many cases ran, and every disagreement with Wycheproof.
#[derive(Default, Debug)]
struct Tally {
    checked: usize,
    accepted_valid: usize,
    keys_refused: usize,
    wrong: Vec<String>,
}

impl Tally {
    fn check(&mut self, case: &Value, verified: bool) {
        self.checked += 1;
        let expected = case["result"].as_str().unwrap();
        let ok = match expected {
            "valid" => verified,
            "invalid" => !verified,
            _ => true,
        };
        if expected == "valid" && verified {
            self.accepted_valid += 1;
        }
        if !ok {
            self.wrong.push(format!(
                "tcId {} ({}; {:?}): expected {expected}, verified = {verified}",
                case["tcId"], case["comment"], case["flags"]
            ));
        }
    }

    fn assert_clean(&self, file: &str) {
        eprintln!(
            "{file}: {} cases, {} valid accepted, {} keys refused",
            self.checked, self.accepted_valid, self.keys_refused
        );
        assert!(
            self.wrong.is_empty(),
            "{file}: {} disagreements with Wycheproof:\n{}",
            self.wrong.len(),
            self.wrong.join("\n")
        );
    }
}

/// Runs every group of an asymmetric file through `from_jwk` and `verify_signature`.
fn run_jwk_file(file: &str, jwk_member: &str) -> Tally {
    let v = vectors(file);
    let mut tally = Tally::default();
    for group in groups(&v) {
        let Some(jwk) = group.get(jwk_member) else {
            // Wycheproof has no JWK for keys JOSE cannot express; nothing to run.
            continue;
        };
        let key = match VerificationKey::from_jwk(jwk) {
            Ok(key) => key,
            Err(_) => {
                tally.keys_refused += 1;
                continue;
            }
        };
        for case in tests(group) {
            let msg = hex(case["msg"].as_str().unwrap());
            let sig = hex(case["sig"].as_str().unwrap());
            tally.check(case, key.verify_signature(&msg, &sig));
        }
    }
    tally
}

#[test]
fn wycheproof_ecdsa_p256_p1363_vectors_verify_exactly_as_specified() {
    let file = "ecdsa_secp256r1_sha256_p1363_test.json";
    let tally = run_jwk_file(file, "publicKeyJwk");
    tally.assert_clean(file);
    // r or s zero or out of range, wrong lengths, point-at-infinity tricks are all in here.
    assert!(
        tally.checked > 200 && tally.accepted_valid > 100,
        "{tally:?}"
    );
    assert_eq!(tally.keys_refused, 0, "{tally:?}");
}

#[test]
fn wycheproof_ed25519_vectors_verify_exactly_as_specified() {
    let file = "ed25519_test.json";
    let tally = run_jwk_file(file, "publicKeyJwk");
    tally.assert_clean(file);
    // Malleable S >= L, non-canonical encodings and truncated signatures among them.
    assert!(
        tally.checked > 140 && tally.accepted_valid > 80,
        "{tally:?}"
    );
    assert_eq!(tally.keys_refused, 0, "{tally:?}");
}

#[test]
fn wycheproof_rsa_pkcs1_2048_sha256_vectors_verify_exactly_as_specified() {
    let file = "rsa_signature_2048_sha256_test.json";
    let tally = run_jwk_file(file, "keyJwk");
    tally.assert_clean(file);
    // Padding and ASN.1 forgeries (BER lengths, missing NULL, wrong hash) make up most cases. The
    // groups with e = 3 may be refused as keys, which is stricter, never weaker.
    assert!(
        tally.checked >= 257 && tally.accepted_valid >= 8,
        "{tally:?}"
    );
    assert!(tally.keys_refused <= 2, "{tally:?}");
}

/// Writes a key directory holding one HS256 secret, the way `KeyRing` stores them.
fn hmac_key_dir(dir: &Path, kid: &str, secret: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let mut pem = String::from("-----BEGIN GATEHOUSE HMAC SECRET-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END GATEHOUSE HMAC SECRET-----\n");
    let key_file = dir.join(format!("{kid}.pem"));
    std::fs::write(&key_file, pem).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let manifest = json!({
        "version": 1,
        "current": kid,
        "keys": [{"kid": kid, "alg": "HS256", "created": 0, "retired": null}],
    });
    std::fs::write(dir.join("keys.json"), manifest.to_string()).unwrap();
}

#[test]
fn wycheproof_hmac_sha256_vectors_verify_only_with_full_tags_and_strong_keys() {
    let v = vectors("hmac_sha256_test.json");
    let mut tally = Tally::default();
    let mut short_keys_refused = 0;
    for group in groups(&v) {
        let key_bits = group["keySize"].as_u64().unwrap();
        let full_tag = group["tagSize"].as_u64().unwrap() == 256;
        for case in tests(group) {
            let dir = tempfile::tempdir().unwrap();
            hmac_key_dir(
                dir.path(),
                "wycheproof",
                &hex(case["key"].as_str().unwrap()),
            );
            let ring = match KeyRing::load(dir.path(), Duration::from_secs(60)) {
                Ok(ring) => ring,
                Err(_) => {
                    assert!(key_bits < 256, "a {key_bits}-bit key was refused");
                    short_keys_refused += 1;
                    continue;
                }
            };
            assert!(key_bits >= 256, "a {key_bits}-bit HMAC key was accepted");
            let key = ring.verification_key("wycheproof").unwrap();
            let msg = hex(case["msg"].as_str().unwrap());
            let tag = hex(case["tag"].as_str().unwrap());
            let verified = key.verify_signature(&msg, &tag);
            if full_tag {
                tally.check(case, verified);
            } else {
                // A truncated tag is "valid" to Wycheproof for its truncated MAC; a JWS HS256
                // signature is the whole tag, so nothing shorter may ever verify.
                assert!(!verified, "a truncated tag verified: tcId {}", case["tcId"]);
            }
        }
    }
    tally.assert_clean("hmac_sha256_test.json");
    assert!(
        tally.checked >= 84 && tally.accepted_valid >= 30,
        "{tally:?}"
    );
    assert_eq!(short_keys_refused, 6);
}

fn claims() -> Value {
    let now = gatehouse::clock::unix_now();
    json!({
        "iss": "gatehouse", "sub": "alice", "aud": "gatehouse", "exp": now + 600, "iat": now,
        "jti": "wycheproof", "scope": "read", "roles": ["user"],
    })
}

#[test]
fn wycheproof_signatures_never_verify_a_token_they_were_not_made_for() {
    // Every signature in the files, edge cases included, on a real access token whose header names
    // the Wycheproof key: the whole policy path must refuse each at the signature step.
    let files = [
        (
            "ecdsa_secp256r1_sha256_p1363_test.json",
            "publicKeyJwk",
            "ES256",
        ),
        ("ed25519_test.json", "publicKeyJwk", "EdDSA"),
        ("rsa_signature_2048_sha256_test.json", "keyJwk", "RS256"),
    ];
    let now = gatehouse::clock::unix_now();
    let mut tried = 0;
    for (file, member, alg) in files {
        let v = vectors(file);
        for group in groups(&v) {
            let Some(key) = group
                .get(member)
                .and_then(|jwk| VerificationKey::from_jwk(jwk).ok())
            else {
                continue;
            };
            let kid = key.kid.clone();
            let mut lookup = KeyLookup::new();
            lookup.insert(key).unwrap();
            let verifier = Verifier::new(
                Policy::new("gatehouse", "gatehouse", Duration::from_secs(3600)),
                lookup,
            );
            let header = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
            let signing_input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims().to_string())
            );
            for case in tests(group) {
                let sig = hex(case["sig"].as_str().unwrap());
                let token = format!("{signing_input}.{}", B64.encode(&sig));
                let result = verifier.verify(&token, now);
                assert_eq!(
                    result.as_ref().err(),
                    Some(&VerifyError::BadSignature),
                    "{file} tcId {}: {result:?}",
                    case["tcId"]
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 600, "{tried}");
}

/// One hostile change to a JWK.
type JwkEdit = Box<dyn Fn(&mut Value)>;

#[test]
fn wycheproof_keys_cannot_be_smuggled_in_as_other_algorithms() {
    // The JWK decides the algorithm: a Wycheproof key with a contradicting `alg`, a private
    // member, a symmetric type or the wrong curve is refused before any signature is looked at.
    let ec = vectors("ecdsa_secp256r1_sha256_p1363_test.json");
    let jwk = groups(&ec)[0]["publicKeyJwk"].clone();
    let edits: Vec<(&str, JwkEdit)> = vec![
        ("alg HS256", Box::new(|j| j["alg"] = json!("HS256"))),
        ("alg none", Box::new(|j| j["alg"] = json!("none"))),
        ("alg RS256", Box::new(|j| j["alg"] = json!("RS256"))),
        ("private d", Box::new(|j| j["d"] = j["x"].clone())),
        ("kty oct", Box::new(|j| j["kty"] = json!("oct"))),
        ("curve P-384", Box::new(|j| j["crv"] = json!("P-384"))),
        (
            "curve secp256k1",
            Box::new(|j| j["crv"] = json!("secp256k1")),
        ),
        ("use enc", Box::new(|j| j["use"] = json!("enc"))),
        (
            "key_ops encrypt",
            Box::new(|j| j["key_ops"] = json!(["encrypt"])),
        ),
        ("empty kid", Box::new(|j| j["kid"] = json!(""))),
        (
            "x padded",
            Box::new(|j| {
                let x = j["x"].as_str().unwrap().to_owned();
                j["x"] = json!(format!("{x}="));
            }),
        ),
        ("x not on the curve", Box::new(|j| j["x"] = j["y"].clone())),
    ];
    assert!(VerificationKey::from_jwk(&jwk).is_ok(), "the control JWK");
    for (case, edit) in edits {
        let mut bad = jwk.clone();
        edit(&mut bad);
        assert!(VerificationKey::from_jwk(&bad).is_err(), "{case}: accepted");
    }
}
