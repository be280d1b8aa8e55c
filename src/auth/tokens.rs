//! Minting: RFC 9068 access tokens signed with the current key, opaque refresh tokens, family ids.
//!
//! Access tokens are checked against the same value rules the verifier applies, so the gateway
//! never issues a token it would refuse. Refresh tokens are 256 random bits; only their SHA-256
//! digest is meant to be stored, so a leaked store does not yield usable tokens.

use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;

use crate::auth::claims::{
    AccessClaims, Audience, ClaimsError, MAX_JTI_BYTES, check_identity_values, is_header_safe,
};
use crate::auth::keys::{KeyRing, fill_random};
use crate::auth::verify::ACCESS_TOKEN_TYP;

/// Longest refresh token a caller should hash; ours are 43 characters. Anything longer is not
/// ours and is refused before any work.
pub const MAX_REFRESH_TOKEN_BYTES: usize = 128;

/// Issuer-side settings of access tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessTokenSpec {
    pub issuer: String,
    pub audience: String,
    pub lifetime: Duration,
    /// The largest token the verifier accepts (`auth.max_token_bytes`): minting a larger one
    /// would hand out a token the gateway then refuses.
    pub max_bytes: usize,
}

/// A signed access token and what it says.
#[derive(Clone, Debug)]
pub struct MintedAccess {
    pub token: String,
    pub kid: String,
    pub jti: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub claims: AccessClaims,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot mint: {0}")]
    InvalidClaim(#[from] ClaimsError),
    #[error("cannot mint: {0}")]
    InvalidSpec(&'static str),
    #[error("minted token is {len} bytes, over the {max}-byte verification limit")]
    TooLarge { len: usize, max: usize },
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Whom an access token speaks for.
#[derive(Clone, Copy, Debug)]
pub struct TokenSubject<'a> {
    pub sub: &'a str,
    pub roles: &'a [String],
    pub scopes: &'a [String],
    pub client_id: &'a str,
    /// The refresh-token family (login session) the token belongs to, as `sid`: logging out
    /// with the access token alone ends that session, and revoking the session refuses every
    /// access token of it at once.
    pub sid: Option<&'a str>,
}

/// Signs an RFC 9068 access token: header `{typ: "at+jwt", alg, kid}`; claims `iss, sub, aud,
/// exp, iat, nbf = iat, jti` (128 random bits, base64url), `scope` (space-joined, omitted when
/// empty), `roles`, `client_id`, and `sid` when the token belongs to a session.
pub fn mint_access(
    keys: &KeyRing,
    spec: &AccessTokenSpec,
    subject: &TokenSubject<'_>,
    now: i64,
) -> Result<MintedAccess, TokenError> {
    let TokenSubject {
        sub,
        roles,
        scopes,
        client_id,
        sid,
    } = *subject;
    if spec.issuer.is_empty() || spec.audience.is_empty() {
        return Err(TokenError::InvalidSpec("issuer and audience must be set"));
    }
    let lifetime = i64::try_from(spec.lifetime.as_secs())
        .ok()
        .filter(|s| *s > 0)
        .ok_or(TokenError::InvalidSpec(
            "lifetime must be at least one second",
        ))?;
    check_identity_values(sub, roles, scopes, Some(client_id))?;
    if sid.is_some_and(|s| !is_header_safe(s, MAX_JTI_BYTES)) {
        return Err(TokenError::InvalidClaim(ClaimsError::Invalid("sid")));
    }
    let expires_at = now
        .checked_add(lifetime)
        .ok_or(TokenError::InvalidSpec("lifetime overflows"))?;

    let jti = random_b64::<16>();
    let claims = AccessClaims {
        iss: Some(spec.issuer.clone()),
        sub: Some(sub.to_owned()),
        aud: Some(Audience::One(spec.audience.clone())),
        exp: Some(expires_at),
        iat: Some(now),
        nbf: Some(now),
        jti: Some(jti.clone()),
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        roles: Some(roles.to_vec()),
        client_id: Some(client_id.to_owned()),
        sid: sid.map(str::to_owned),
        extra: Default::default(),
    };
    let signing = keys.signing();
    let mut header = Header::new(signing.alg.jwt_alg());
    header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
    header.kid = Some(signing.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, signing.encoding_key())?;
    if token.len() > spec.max_bytes {
        return Err(TokenError::TooLarge {
            len: token.len(),
            max: spec.max_bytes,
        });
    }
    Ok(MintedAccess {
        token,
        kid: signing.kid.clone(),
        jti,
        issued_at: now,
        expires_at,
        claims,
    })
}

/// A new opaque refresh token (256 random bits, base64url without padding) and the SHA-256
/// digest to store in its place.
pub fn new_refresh_token() -> (String, [u8; 32]) {
    let token = random_b64::<32>();
    let digest = refresh_digest(&token);
    (token, digest)
}

/// Digest of a presented refresh token, for lookup. The caller rejects tokens longer than
/// [`MAX_REFRESH_TOKEN_BYTES`] first. A plain hash suffices: the input has 256 bits of entropy,
/// so there is nothing to brute-force.
pub fn refresh_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// A new refresh-token family id (128 random bits, base64url).
pub fn new_family_id() -> String {
    random_b64::<16>()
}

fn random_b64<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::parse_object;
    use crate::auth::keys::KeyAlg;

    const NOW: i64 = 1_700_000_000;

    fn spec() -> AccessTokenSpec {
        AccessTokenSpec {
            issuer: "https://gw.example".into(),
            audience: "api".into(),
            lifetime: Duration::from_secs(300),
            max_bytes: crate::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
        }
    }

    fn ring(alg: KeyAlg) -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let ring =
            KeyRing::load_or_generate_at(dir.path(), alg, Duration::from_secs(600), NOW).unwrap();
        (dir, ring)
    }

    fn segment(token: &str, i: usize) -> serde_json::Map<String, serde_json::Value> {
        let part = token.split('.').nth(i).unwrap();
        parse_object(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn a_token_over_the_configured_cap_is_not_minted() {
        let (_dir, ring) = ring(KeyAlg::EdDSA);
        let roles: Vec<String> = (0..40).map(|i| format!("role-{i}")).collect();
        let fits = mint_access(
            &ring,
            &spec(),
            &TokenSubject {
                sub: "alice",
                roles: &roles,
                scopes: &[],
                client_id: "web",
                sid: None,
            },
            NOW,
        )
        .unwrap();
        let small = AccessTokenSpec {
            max_bytes: fits.token.len() - 1,
            ..spec()
        };
        match mint_access(
            &ring,
            &small,
            &TokenSubject {
                sub: "alice",
                roles: &roles,
                scopes: &[],
                client_id: "web",
                sid: None,
            },
            NOW,
        ) {
            Err(TokenError::TooLarge { len, max }) => {
                assert_eq!((len, max), (fits.token.len(), fits.token.len() - 1))
            }
            other => panic!("minted over the cap: {other:?}"),
        }
    }

    #[test]
    fn access_token_has_rfc9068_header_and_claims() {
        let (_dir, ring) = ring(KeyAlg::EdDSA);
        let m = mint_access(
            &ring,
            &spec(),
            &TokenSubject {
                sub: "alice",
                roles: &["admin".into()],
                scopes: &["read".into(), "write".into()],
                client_id: "web",
                sid: None,
            },
            NOW,
        )
        .unwrap();
        let header = segment(&m.token, 0);
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], ring.signing().kid.as_str());
        assert_eq!(header.len(), 3, "{header:?}");
        let claims = segment(&m.token, 1);
        assert_eq!(claims["iss"], "https://gw.example");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "api");
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["nbf"], NOW);
        assert_eq!(claims["exp"], NOW + 300);
        assert_eq!(claims["scope"], "read write");
        assert_eq!(claims["roles"], serde_json::json!(["admin"]));
        assert_eq!(claims["client_id"], "web");
        assert_eq!(claims["jti"], m.jti.as_str());
        assert_eq!(m.jti.len(), 22);
        assert_eq!(m.expires_at, NOW + 300);
        assert_eq!(m.kid, ring.signing().kid);
    }

    #[test]
    fn jti_is_fresh_per_token() {
        let (_dir, ring) = ring(KeyAlg::HS256);
        let a = mint_access(
            &ring,
            &spec(),
            &TokenSubject {
                sub: "a",
                roles: &[],
                scopes: &[],
                client_id: "c",
                sid: None,
            },
            NOW,
        )
        .unwrap();
        let b = mint_access(
            &ring,
            &spec(),
            &TokenSubject {
                sub: "a",
                roles: &[],
                scopes: &[],
                client_id: "c",
                sid: None,
            },
            NOW,
        )
        .unwrap();
        assert_ne!(a.jti, b.jti);
        assert!(segment(&a.token, 1).get("scope").is_none());
    }

    #[test]
    fn refusing_to_mint_values_the_verifier_would_reject() {
        let (_dir, ring) = ring(KeyAlg::HS256);
        let s = spec();
        let bad_sub = mint_access(
            &ring,
            &s,
            &TokenSubject {
                sub: "alice,admin",
                roles: &[],
                scopes: &[],
                client_id: "c",
                sid: None,
            },
            NOW,
        );
        assert!(matches!(
            bad_sub,
            Err(TokenError::InvalidClaim(ClaimsError::Invalid("sub")))
        ));
        let bad_role = mint_access(
            &ring,
            &s,
            &TokenSubject {
                sub: "a",
                roles: &["x\r\nX-Admin: 1".into()],
                scopes: &[],
                client_id: "c",
                sid: None,
            },
            NOW,
        );
        assert!(matches!(
            bad_role,
            Err(TokenError::InvalidClaim(ClaimsError::Invalid("roles")))
        ));
        let bad_scope = mint_access(
            &ring,
            &s,
            &TokenSubject {
                sub: "a",
                roles: &[],
                scopes: &["a b".into()],
                client_id: "c",
                sid: None,
            },
            NOW,
        );
        assert!(matches!(
            bad_scope,
            Err(TokenError::InvalidClaim(ClaimsError::Invalid("scope")))
        ));
        let zero = AccessTokenSpec {
            lifetime: Duration::ZERO,
            ..spec()
        };
        assert!(matches!(
            mint_access(
                &ring,
                &zero,
                &TokenSubject {
                    sub: "a",
                    roles: &[],
                    scopes: &[],
                    client_id: "c",
                    sid: None
                },
                NOW
            ),
            Err(TokenError::InvalidSpec(_))
        ));
    }

    #[test]
    fn refresh_tokens_are_256_bit_base64url_and_digest_matches() {
        let (token, digest) = new_refresh_token();
        assert_eq!(token.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
        assert_eq!(refresh_digest(&token), digest);
        let (other, other_digest) = new_refresh_token();
        assert_ne!(token, other);
        assert_ne!(digest, other_digest);
        assert!(token.len() <= MAX_REFRESH_TOKEN_BYTES);
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(refresh_digest("abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn family_ids_are_unique_128_bit_values() {
        let a = new_family_id();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 16);
        assert_ne!(a, new_family_id());
    }
}
