//! Fuzzes `Verifier::verify` with a fixed HS256 key ring, two ways: the input as a raw token, and
//! the input as header and claims JSON that the harness signs with the real key, so the fuzzer
//! reaches the header rules and every claim check behind the signature. A verified identity must
//! be safe to place in headers.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gatehouse::auth::keys::KeyRing;
use gatehouse::auth::verify::{Policy, Verifier};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

const KID: &str = "fuzzkey";
const SECRET: [u8; 32] = *b"gatehouse-fuzz-fixed-hmac-secret";
/// A fixed clock, so inputs that carry plausible times stay reproducible.
const NOW: i64 = 1_700_000_000;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("gatehouse-fuzz-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key directory");
        let pem = format!(
            "-----BEGIN GATEHOUSE HMAC SECRET-----\n{}\n-----END GATEHOUSE HMAC SECRET-----\n",
            STANDARD.encode(SECRET)
        );
        let key = dir.join(format!("{KID}.pem"));
        std::fs::write(&key, pem).expect("key file");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let manifest = format!(
            r#"{{"version":1,"current":"{KID}","keys":[{{"kid":"{KID}","alg":"HS256","created":0,"retired":null}}]}}"#
        );
        std::fs::write(dir.join("keys.json"), manifest).expect("manifest");
        let ring = KeyRing::load_at(&dir, Duration::from_secs(3600), NOW).expect("key ring");
        let _ = std::fs::remove_dir_all(&dir);
        Verifier::new(
            Policy::new("gatehouse", "gatehouse", Duration::from_secs(3600)),
            ring.lookup().clone(),
        )
    })
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &SECRET),
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        // Header and claims separated by the first NUL; an empty header means the real one.
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (&b""[..], rest),
        };
        let default = format!(r#"{{"alg":"HS256","typ":"at+jwt","kid":"{KID}"}}"#);
        let header = if header.is_empty() {
            default.as_bytes()
        } else {
            header
        };
        signed(header, claims)
    };
    if let Ok(identity) = verifier().verify(&token, NOW) {
        assert!(!identity.sub.is_empty());
        assert!(
            HeaderValue::from_str(&identity.sub).is_ok(),
            "{:?}",
            identity.sub
        );
        for value in identity.roles.iter().chain(&identity.scopes) {
            assert!(!value.contains(','), "{value:?}");
            assert!(HeaderValue::from_str(value).is_ok(), "{value:?}");
        }
        assert!(HeaderValue::from_str(&identity.roles.join(",")).is_ok());
        assert!(identity.exp + 10 > NOW);
        assert_eq!(identity.issuer, "gatehouse");
    }
});
