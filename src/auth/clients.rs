//! Machine clients' credentials: generating a secret, its stored digest and the check of a
//! presented one, the epoch id a client's tokens carry, and reading the client authentication a
//! token request presents (`client_secret_basic`, RFC 6749 §2.3.1, `client_secret_post`, or
//! `private_key_jwt`, RFC 7523 §2.2, whose assertion [`crate::auth::assertion`] checks).
//!
//! Secrets are generated here, 256 random bits, and never stored: the store keeps a digest.
//! The digest is one domain-tagged SHA-256 over the client's name and the secret, not a
//! password hash. A password hash (argon2) is slow so that guessing a low-entropy password from
//! a leaked digest is slow; a 256-bit random secret cannot be guessed however fast the digest
//! is, so the slowness would buy nothing, and at the token endpoint it would hand anyone who can
//! send requests a lever to tie up the hashing pool. The tag keeps these digests apart from any
//! other SHA-256 the gateway computes (refresh tokens), and the name binds a digest to its
//! client, so a digest copied onto another client's row does not log that client in.

use std::fmt;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

use crate::auth::assertion::{self, ASSERTION_TYPE};
use crate::auth::keys::fill_random;
use crate::auth::username::Username;

/// Bytes of randomness in a generated client secret (256 bits).
pub const SECRET_BYTES: usize = 32;
/// Longest client secret presented that is even looked at; ours are 43 characters.
pub const MAX_SECRET_BYTES: usize = 128;
/// The grant type a client needs for `grant_type=client_credentials` (RFC 6749 §4.4).
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// The grant type a client needs to send users' passwords (`[auth] password_grant_clients`).
pub const GRANT_PASSWORD: &str = "password";
/// Not a grant type but kept with them: the permission to call the RFC 7662 introspection
/// endpoint. A client authenticates there like at the token endpoint, and only a client
/// registered for this may learn what a token it was handed says (RFC 7662 §4: the endpoint
/// tells whoever may call it which tokens are live).
pub const GRANT_INTROSPECTION: &str = "introspection";
/// The grant types (and permissions) a client may be registered for.
pub const GRANTS: [&str; 3] = [
    GRANT_CLIENT_CREDENTIALS,
    GRANT_PASSWORD,
    GRANT_INTROSPECTION,
];
/// What a client epoch starts with. Refresh-family ids are plain base64url, which has no `.`,
/// so a `sid` names a client epoch exactly when it starts with this.
pub const EPOCH_PREFIX: &str = "c.";

/// Domain tag of the secret digest (see the module text).
const DIGEST_TAG: &[u8] = b"gatehouse client secret v1\0";

/// A new client secret (base64url, no padding), shown once.
pub fn new_secret() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
    fill_random(&mut bytes[..]);
    Zeroizing::new(URL_SAFE_NO_PAD.encode(&bytes[..]))
}

/// A new epoch id for a client's tokens (128 random bits).
pub fn new_epoch() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    format!("{EPOCH_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether a token's `sid` is a client epoch rather than a login session.
pub fn is_epoch(sid: &str) -> bool {
    sid.starts_with(EPOCH_PREFIX)
}

/// The digest the store keeps for `secret` of client `name`.
pub fn secret_digest(name: &Username, secret: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(DIGEST_TAG);
    ctx.update(name.as_str().as_bytes());
    ctx.update(b"\0");
    ctx.update(secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Whether `presented` is the secret whose digest is `stored`, compared in constant time.
pub fn secret_matches(stored: &[u8; 32], name: &Username, presented: &str) -> bool {
    let computed = secret_digest(name, presented);
    #[allow(deprecated)] // The replacement is not in the aws-lc-rs version we pin.
    aws_lc_rs::constant_time::verify_slices_are_equal(stored, &computed).is_ok()
}

/// How the client authenticated (RFC 7591's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Basic` with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    SecretBasic,
    /// `client_id` and `client_secret` in the request body.
    SecretPost,
    /// `client_assertion_type` (jwt-bearer) and `client_assertion` in the body (RFC 7523 §2.2).
    PrivateKeyJwt,
}

/// What proves the client's identity.
pub enum Credential {
    Secret(Zeroizing<String>),
    /// A signed JWT, still unverified.
    Assertion(String),
}

/// A client's id and credential as presented; `Debug` never shows the credential.
pub struct Presented {
    /// The body's `client_id`, or else (for an assertion) the assertion's unverified `sub`.
    pub id: String,
    pub credential: Credential,
    pub method: AuthMethod,
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presented")
            .field("id", &self.id)
            .field("credential", &"<redacted>")
            .field("method", &self.method)
            .finish()
    }
}

/// The body's `client_assertion_type` and `client_assertion`, as sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct AssertionParams<'a> {
    pub assertion_type: Option<&'a str>,
    pub assertion: Option<&'a str>,
}

/// Why the presented client authentication cannot even be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresentError {
    /// Basic and the body both, or a secret with no id: RFC 6749 §2.3 allows one method.
    #[error("{0}")]
    Ambiguous(&'static str),
    /// A Basic header that does not decode to `id:secret`.
    #[error("{0}")]
    Malformed(&'static str),
}

/// The client authentication of a token request: `authorization` is the header's value if it is
/// a Basic one (`None` for none, or for another scheme), `form_id`/`form_secret` and `signed`
/// the body's. `Ok(None)`: no client authentication (a body `client_id` alone names, never
/// authenticates).
pub fn presented(
    basic: Option<&[u8]>,
    form_id: Option<&str>,
    form_secret: Option<&str>,
    signed: AssertionParams<'_>,
) -> Result<Option<Presented>, PresentError> {
    if signed.assertion_type.is_some() || signed.assertion.is_some() {
        if basic.is_some() || form_secret.is_some() {
            return Err(PresentError::Ambiguous(
                "use one client authentication method: a client_assertion, Basic or client_secret",
            ));
        }
        return presented_assertion(form_id, signed).map(Some);
    }
    match (basic, form_secret) {
        (Some(_), Some(_)) => Err(PresentError::Ambiguous(
            "use one client authentication method: Basic or client_secret in the body",
        )),
        (Some(encoded), None) => {
            let (id, secret) = decode_basic(encoded)?;
            if form_id.is_some_and(|f| !f.is_empty() && f != id) {
                return Err(PresentError::Ambiguous(
                    "client_id in the body differs from the one in Authorization",
                ));
            }
            Ok(Some(Presented {
                id,
                credential: Credential::Secret(secret),
                method: AuthMethod::SecretBasic,
            }))
        }
        (None, Some(secret)) => {
            let id = form_id
                .filter(|id| !id.is_empty())
                .ok_or(PresentError::Ambiguous("client_secret needs a client_id"))?;
            Ok(Some(Presented {
                id: id.to_owned(),
                credential: Credential::Secret(Zeroizing::new(secret.to_owned())),
                method: AuthMethod::SecretPost,
            }))
        }
        (None, None) => Ok(None),
    }
}

/// RFC 7521 §4.2: both parameters, the jwt-bearer type, and a client named by `client_id` or by
/// the assertion's `sub` (which verification then holds to the same name).
fn presented_assertion(
    form_id: Option<&str>,
    signed: AssertionParams<'_>,
) -> Result<Presented, PresentError> {
    let (Some(kind), Some(assertion)) = (signed.assertion_type, signed.assertion) else {
        return Err(PresentError::Malformed(
            "client_assertion_type and client_assertion go together",
        ));
    };
    if kind != ASSERTION_TYPE {
        return Err(PresentError::Malformed(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let id = match form_id.filter(|id| !id.is_empty()) {
        Some(id) => id.to_owned(),
        None => assertion::unverified_subject(assertion).ok_or(PresentError::Malformed(
            "client_assertion is not a JWT whose sub names the client",
        ))?,
    };
    Ok(Presented {
        id,
        credential: Credential::Assertion(assertion.to_owned()),
        method: AuthMethod::PrivateKeyJwt,
    })
}

/// The credentials of `Authorization: Basic` (the bytes after the scheme): base64 of
/// `urlencode(id):urlencode(secret)` (RFC 6749 §2.3.1).
fn decode_basic(encoded: &[u8]) -> Result<(String, Zeroizing<String>), PresentError> {
    const BAD: PresentError = PresentError::Malformed("malformed Basic client credentials");
    let trimmed = encoded.trim_ascii();
    if trimmed.len() > 4 * MAX_SECRET_BYTES {
        return Err(BAD);
    }
    let raw = Zeroizing::new(STANDARD.decode(trimmed).map_err(|_| BAD)?);
    let text = std::str::from_utf8(&raw).map_err(|_| BAD)?;
    let (id, secret) = text.split_once(':').ok_or(BAD)?;
    let id = form_decode(id).ok_or(BAD)?;
    let secret = Zeroizing::new(form_decode(secret).ok_or(BAD)?);
    if id.is_empty() {
        return Err(BAD);
    }
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space).
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The scheme of an `Authorization` value, if it is Basic: the credentials after it.
pub fn basic_credentials(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = authorization.split_at_checked(6)?;
    scheme
        .eq_ignore_ascii_case(b"basic ")
        .then_some(rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: AssertionParams<'static> = AssertionParams {
        assertion_type: None,
        assertion: None,
    };

    fn ci() -> Username {
        Username::parse("ci").unwrap()
    }

    #[test]
    fn a_generated_secret_has_256_bits_and_only_its_digest_matches() {
        let secret = new_secret();
        assert_eq!(secret.len(), 43);
        assert_ne!(*new_secret(), *secret);
        let stored = secret_digest(&ci(), &secret);
        assert!(secret_matches(&stored, &ci(), &secret));
        assert!(!secret_matches(&stored, &ci(), "wrong"));
        // Bound to the client: the same secret under another name does not match.
        let other = Username::parse("other").unwrap();
        assert!(!secret_matches(&stored, &other, &secret));
        assert!(is_epoch(&new_epoch()));
        assert!(!is_epoch(&crate::auth::tokens::new_family_id()));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = STANDARD.encode("my+client%3A1:s%3Ac%25r+t");
        let p = presented(Some(header.as_bytes()), None, None, NONE)
            .unwrap()
            .unwrap();
        assert_eq!(p.id, "my client:1");
        assert!(matches!(&p.credential, Credential::Secret(s) if **s == *"s:c%r t"));
        assert_eq!(p.method, AuthMethod::SecretBasic);
        for bad in ["!!", &STANDARD.encode("nocolon"), &STANDARD.encode(":x")] {
            assert!(
                presented(Some(bad.as_bytes()), None, None, NONE).is_err(),
                "{bad}"
            );
        }
        assert_eq!(basic_credentials(b"Basic abc"), Some(&b"abc"[..]));
        assert_eq!(basic_credentials(b"bearer abc"), None);
    }

    #[test]
    fn one_method_per_request() {
        let header = STANDARD.encode("ci:s");
        assert!(matches!(
            presented(Some(header.as_bytes()), Some("ci"), Some("s"), NONE),
            Err(PresentError::Ambiguous(_))
        ));
        assert!(presented(None, None, Some("s"), NONE).is_err());
        let p = presented(None, Some("ci"), Some("s"), NONE)
            .unwrap()
            .unwrap();
        assert_eq!(p.method, AuthMethod::SecretPost);
        assert!(presented(None, Some("ci"), None, NONE).unwrap().is_none());
        // An assertion with a secret beside it, in either place, is two methods.
        let signed = AssertionParams {
            assertion_type: Some(ASSERTION_TYPE),
            assertion: Some(ASSERTION),
        };
        for (basic, secret) in [(Some(header.as_bytes()), None), (None, Some("s"))] {
            assert!(matches!(
                presented(basic, Some("ci"), secret, signed),
                Err(PresentError::Ambiguous(_))
            ));
        }
    }

    /// `{"alg":"EdDSA"}.{"sub":"ci"}.sig`: enough to be read, not to be verified.
    const ASSERTION: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjaSJ9.c2ln";

    #[test]
    fn an_assertion_names_its_client_by_client_id_or_by_its_sub() {
        let signed = AssertionParams {
            assertion_type: Some(ASSERTION_TYPE),
            assertion: Some(ASSERTION),
        };
        let p = presented(None, None, None, signed).unwrap().unwrap();
        assert_eq!((p.id.as_str(), p.method), ("ci", AuthMethod::PrivateKeyJwt));
        let p = presented(None, Some("other"), None, signed)
            .unwrap()
            .unwrap();
        assert_eq!(
            p.id, "other",
            "verification then refuses a sub that differs"
        );
        for bad in [
            AssertionParams {
                assertion_type: Some("urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
                assertion: Some(ASSERTION),
            },
            AssertionParams {
                assertion_type: Some(ASSERTION_TYPE),
                assertion: None,
            },
            AssertionParams {
                assertion_type: None,
                assertion: Some(ASSERTION),
            },
            AssertionParams {
                assertion_type: Some(ASSERTION_TYPE),
                assertion: Some("not-a-jwt"),
            },
        ] {
            assert!(
                matches!(
                    presented(None, None, None, bad),
                    Err(PresentError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let p = presented(None, Some("ci"), Some("TOPSECRET"), NONE)
            .unwrap()
            .unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        let signed = AssertionParams {
            assertion_type: Some(ASSERTION_TYPE),
            assertion: Some(ASSERTION),
        };
        let p = presented(None, None, None, signed).unwrap().unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains(ASSERTION), "{shown}");
    }
}
