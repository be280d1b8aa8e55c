//! Access-token verification cost per algorithm (EdDSA, ES256, RS256, HS256) on one minted token:
//! gatehouse's full policy (`Verifier::verify`, keys from `KeyRing::load_or_generate`) against two
//! baselines on the same token in the same run — `jsonwebtoken::decode` with a comparable
//! `Validation` (alg, iss, aud, exp, nbf, required claims) and the bare aws-lc-rs signature check
//! (`UnparsedPublicKey::verify`, which parses the key each call, `ParsedPublicKey::verify_sig`,
//! which does not, and `hmac::verify`) over the same signing input and signature. Also the
//! verification-cache hit: `Authenticator::verify_access` on a token it has already verified,
//! through a service built by `gatehouse::app::build`.

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::auth::keys::{KeyAlg, KeyRing};
use gatehouse::auth::service::AuthService;
use gatehouse::auth::tokens::{AccessTokenSpec, TokenSubject, mint_access};
use gatehouse::auth::verify::{Policy, Verifier};
use gatehouse::config::Config;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

const ISSUER: &str = "gatehouse";
const AUDIENCE: &str = "gatehouse";
const LIFETIME: Duration = Duration::from_secs(900);
const ALGORITHMS: [KeyAlg; 4] = [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::RS256, KeyAlg::HS256];

/// The claims gatehouse mints, typed the way a jsonwebtoken user would decode them.
#[derive(Deserialize)]
#[allow(dead_code)] // Read by serde; the bench only needs them decoded.
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    scope: Option<String>,
    roles: Vec<String>,
    client_id: String,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn spec() -> AccessTokenSpec {
    AccessTokenSpec {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        lifetime: LIFETIME,
        max_bytes: gatehouse::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
    }
}

fn mint(ring: &KeyRing) -> String {
    mint_access(
        ring,
        &spec(),
        &TokenSubject {
            sub: "alice",
            roles: &["admin".into(), "ops".into()],
            scopes: &["read".into(), "write".into()],
            client_id: "gatehouse",
            // Every token the gateway mints belongs to a session.
            sid: Some("c2Vzc2lvbi1pZC0xMjM0NQ"),
        },
        now(),
    )
    .expect("mint")
    .token
}

/// The raw signature check, two ways, as a baseline the policy cannot beat.
enum Primitive {
    Hmac(Box<hmac::Key>),
    Public {
        alg: &'static dyn VerificationAlgorithm,
        raw: Vec<u8>,
        parsed: ParsedPublicKey,
    },
}

impl Primitive {
    fn unparsed(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Primitive::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Primitive::Public { alg, raw, .. } => UnparsedPublicKey::new(*alg, raw)
                .verify(message, signature)
                .is_ok(),
        }
    }

    fn parsed(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Primitive::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Primitive::Public { parsed, .. } => parsed.verify_sig(message, signature).is_ok(),
        }
    }
}

/// Both baseline keys, taken from what gatehouse publishes (JWKS) or stores (HMAC secret PEM).
fn baseline_keys(dir: &Path, ring: &KeyRing) -> (DecodingKey, Primitive) {
    let kid = &ring.signing().kid;
    if ring.signing().alg == KeyAlg::HS256 {
        let pem = std::fs::read_to_string(dir.join(format!("{kid}.pem"))).expect("key file");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let secret = STANDARD.decode(body).expect("PEM base64");
        return (
            DecodingKey::from_secret(&secret),
            Primitive::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &secret))),
        );
    }
    let jwks = ring.jwks();
    let jwk_json = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .expect("current key in JWKS")
        .clone();
    let member = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk_json[name].as_str().expect("JWK member"))
            .expect("JWK base64url")
    };
    let jwk: Jwk = serde_json::from_value(jwk_json.clone()).expect("JWK");
    let decoding = DecodingKey::from_jwk(&jwk).expect("decoding key");
    let (alg, raw): (&'static dyn VerificationAlgorithm, Vec<u8>) = match ring.signing().alg {
        KeyAlg::EdDSA => (&ED25519, member("x")),
        KeyAlg::ES256 => {
            let mut point = vec![0x04];
            point.extend(member("x"));
            point.extend(member("y"));
            (&ECDSA_P256_SHA256_FIXED, point)
        }
        KeyAlg::RS256 => {
            let (n, e) = (member("n"), member("e"));
            let parsed = RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                .expect("RSA key");
            // UnparsedPublicKey takes the DER RSAPublicKey, which the parsed key exports.
            let der = parsed.as_ref().to_vec();
            return (
                decoding,
                Primitive::Public {
                    alg: &RSA_PKCS1_2048_8192_SHA256,
                    raw: der,
                    parsed,
                },
            );
        }
        KeyAlg::HS256 => unreachable!("handled above"),
    };
    let parsed = ParsedPublicKey::new(alg, &raw).expect("public key");
    (decoding, Primitive::Public { alg, raw, parsed })
}

fn validation(alg: KeyAlg) -> Validation {
    let mut v = Validation::new(alg.jwt_alg());
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = 10;
    v
}

fn bench_algorithms(c: &mut Criterion) {
    for alg in ALGORITHMS {
        let dir = tempfile::tempdir().expect("temp dir");
        let ring = KeyRing::load_or_generate(dir.path(), alg, LIFETIME).expect("keys");
        let token = mint(&ring);
        let verifier = Verifier::new(
            Policy::new(ISSUER, AUDIENCE, LIFETIME + Duration::from_secs(10)),
            ring.lookup().clone(),
        );
        let (decoding, primitive) = baseline_keys(dir.path(), &ring);
        let validation = validation(alg);
        let dot = token.rfind('.').expect("three segments");
        let message = token.as_bytes()[..dot].to_vec();
        let signature = URL_SAFE_NO_PAD
            .decode(&token[dot + 1..])
            .expect("signature base64url");
        let at = now();

        // Every contender must accept the token, or the comparison means nothing.
        assert!(verifier.verify(&token, at).is_ok(), "{alg}: gatehouse");
        assert!(
            jsonwebtoken::decode::<Claims>(&token, &decoding, &validation).is_ok(),
            "{alg}: jsonwebtoken"
        );
        assert!(primitive.unparsed(&message, &signature), "{alg}: unparsed");
        assert!(primitive.parsed(&message, &signature), "{alg}: parsed");

        let mut group = c.benchmark_group(format!("verify/{alg}"));
        group.bench_function("gatehouse_verifier", |b| {
            b.iter(|| verifier.verify(black_box(&token), at))
        });
        group.bench_function("jsonwebtoken_decode", |b| {
            b.iter(|| jsonwebtoken::decode::<Claims>(black_box(&token), &decoding, &validation))
        });
        group.bench_function("aws_lc_unparsed_key", |b| {
            b.iter(|| primitive.unparsed(black_box(&message), black_box(&signature)))
        });
        group.bench_function("aws_lc_parsed_key", |b| {
            b.iter(|| primitive.parsed(black_box(&message), black_box(&signature)))
        });
        group.finish();
    }
}

/// Polls a future that must complete without waiting: the cache-hit path has no await point
/// that can suspend, so this measures it without any runtime overhead.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("cache hit suspended"),
    }
}

fn service(dir: &Path) -> Arc<AuthService> {
    let toml = format!(
        r#"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "http://127.0.0.1:9"

[auth]
keys_dir = "{keys}"
# Nothing follows the store's feed in a benchmark (the app is built, not served): without this
# the revocations count as unconfirmed after the default 30s and every check is a 503.
max_staleness = "1h"

[store]
path = "{db}"
"#,
        keys = dir.join("keys").display(),
        db = dir.join("gatehouse.db").display(),
    );
    let config = Config::from_toml(&toml).expect("config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let app = runtime
        .block_on(gatehouse::app::App::new(config, None))
        .expect("build");
    app.current().auth().clone()
}

fn bench_cache_hit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = service(dir.path());
    let ring =
        KeyRing::load_or_generate(&dir.path().join("keys"), KeyAlg::EdDSA, LIFETIME).expect("keys");
    let token = mint(&ring);
    let first = ready(auth.authenticator().verify_access(&token)).expect("first verification");
    assert_eq!(first.sub, "alice");
    c.bench_function("verify/cache_hit/auth_service_verify_access", |b| {
        b.iter(|| ready(auth.authenticator().verify_access(black_box(&token))))
    });
}

/// The revocation check every request makes after verification (`Revocation::refuses`): the
/// token's `jti` and `sid` against the revoked ids, its user against the session cuts. Empty,
/// and with 10,000 revoked ids and 10,000 users' cuts, the user's own among them (older than
/// the token, so it is looked up and compared, and the token passes).
fn bench_revocation_check(c: &mut Criterion) {
    use gatehouse::auth::revocation::Revocation;
    use gatehouse::auth::username::Username;
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = service(dir.path());
    let ring =
        KeyRing::load_or_generate(&dir.path().join("keys"), KeyAlg::EdDSA, LIFETIME).expect("keys");
    let identity = ready(auth.authenticator().verify_access(&mint(&ring))).expect("verifies");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let load = || {
        runtime
            .block_on(Revocation::load(&**auth.store(), now()))
            .expect("loads")
    };
    let empty = load();
    let cuts = load();
    let full = load();
    for i in 0..10_000 {
        full.revoke(format!("revoked-id-{i:05}-padding-to-22"), now() + 900);
        let user = Username::parse(&format!("user{i}")).expect("name");
        full.cut(&user, now() - 100);
        cuts.cut(&user, now() - 100);
    }
    for r in [&full, &cuts] {
        r.cut(&Username::parse("alice").expect("name"), now() - 100);
    }
    let at = now();
    assert!(!full.refuses(&identity, true, at));
    let mut group = c.benchmark_group("verify/revocation_check");
    group.bench_function("empty", |b| {
        b.iter(|| empty.refuses(black_box(&identity), true, black_box(at)))
    });
    // The per-user check alone: no id revoked, 10,000 users cut, alice among them.
    group.bench_function("10k_cuts", |b| {
        b.iter(|| cuts.refuses(black_box(&identity), true, black_box(at)))
    });
    group.bench_function("10k_ids_10k_cuts", |b| {
        b.iter(|| full.refuses(black_box(&identity), true, black_box(at)))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_algorithms,
    bench_cache_hit,
    bench_revocation_check
);
criterion_main!(benches);
