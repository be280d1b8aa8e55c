//! The access-token validation policy, explicit and complete; no library defaults apply.
//!
//! [`Verifier::verify`] runs these steps in order and stops at the first failure:
//! 1. size: more than `max_token_bytes` is refused before anything is decoded;
//! 2. shape: exactly three `.`-separated segments (compact JWS; JWE and JSON serialisation are
//!    refused), each strict base64url without padding and with canonical trailing bits;
//! 3. header: one JSON object without duplicate members; `crit` refused (we understand no
//!    extension); `jwk`, `jku`, `x5u`, `x5c` refused (keys never come from the token); `alg`
//!    and `kid` required strings, `kid` 1 to 128 bytes; `typ` required and equal to one of the
//!    policy types, case-insensitively, with or without the `application/` prefix (RFC 8725 3.11);
//! 4. key: exact `kid` lookup, no fallback; the key must still be within its retention; the
//!    header `alg` must equal the algorithm bound to the key, so `none`, HMAC-with-a-public-key
//!    and every other swap fail here;
//! 5. signature, checked with the key's algorithm over the exact received bytes;
//! 6. claims (only now is the payload parsed): strict JSON object; `exp` required and
//!    `exp + leeway > now`; `nbf` if present `<= now + leeway`; `iat` required, `<= now + leeway`
//!    and `<= exp`; `exp - iat <= max_lifetime`; `iss` equal to the policy issuer (and to the
//!    key's issuer if it is bound to one); `aud` equal to or containing one of the policy
//!    audiences; roles and scopes taken from where [`IdentityClaims`] says; `sub`, roles, scopes
//!    and `client_id` safe to place in headers, bounded in length and count.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::auth::claims::{
    AccessClaims, ClaimsError, Identity, IdentityValues, MAX_JTI_BYTES, check_identity_values,
    is_header_safe, parse_object,
};
use crate::auth::keys::{KeyLookup, MAX_KID_BYTES};

/// The `typ` of an RFC 9068 access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(10);
/// Tokens longer than this are refused before decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;

/// What a token must satisfy. Built from validated configuration.
///
/// Empty `audiences` or `types` accept nothing: a policy fails closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub issuer: String,
    /// `aud` must equal, or be an array containing, at least one of these.
    pub audiences: Vec<String>,
    /// Accepted `typ` values; `[ACCESS_TOKEN_TYP]` for our access tokens.
    pub types: Vec<String>,
    pub leeway: Duration,
    /// Longest accepted `exp - iat`.
    pub max_lifetime: Duration,
    pub max_token_bytes: usize,
    /// Where roles and scopes are read from.
    pub identity_claims: IdentityClaims,
}

impl Policy {
    /// A policy for our own access tokens: one audience, type `at+jwt`, the default leeway and
    /// size cap, roles and scopes as we mint them.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        max_lifetime: Duration,
    ) -> Self {
        Policy {
            issuer: issuer.into(),
            audiences: vec![audience.into()],
            types: vec![ACCESS_TOKEN_TYP.to_owned()],
            leeway: DEFAULT_LEEWAY,
            max_lifetime,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            identity_claims: IdentityClaims::Standard,
        }
    }
}

/// Where a policy takes roles and scopes from. Either way every value then passes
/// [`check_identity_values`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum IdentityClaims {
    /// As this gateway mints them: `roles`, an array of strings, and `scope`, one
    /// space-separated string (RFC 9068 section 2.2.3).
    #[default]
    Standard,
    /// An external issuer's layout. Each is a path of member names into nested objects, e.g.
    /// `["realm_access", "roles"]` (Keycloak) or `["permissions"]` (Auth0). Roles must be an array
    /// of strings; scopes may be a space-separated string or an array of strings. A member
    /// missing anywhere on the path means none; a member of the wrong type refuses the token.
    /// Top-level `roles` and `scope` members are ignored unless a path names them.
    Paths {
        roles: Vec<String>,
        scopes: Vec<String>,
    },
}

/// Why a token was refused. Carries only static text: nothing from the token is echoed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("duplicate JSON member")]
    DuplicateMember,
    #[error("invalid header: {0}")]
    BadHeader(&'static str),
    #[error("crit header present")]
    CritHeader,
    #[error("forbidden header: {0}")]
    ForbiddenHeader(&'static str),
    #[error("wrong token type")]
    WrongType,
    #[error("unknown key")]
    UnknownKey,
    #[error("algorithm does not match the key")]
    AlgorithmMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("missing claim: {0}")]
    MissingClaim(&'static str),
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("invalid claim: {0}")]
    BadClaim(&'static str),
    /// Valid, but revoked at logout (checked by the auth service, after this policy).
    #[error("token revoked")]
    Revoked,
    /// Valid, but whether it was revoked cannot be told: the store has not answered for longer
    /// than `auth.max_staleness` (checked by the auth service; a 503, not a 401).
    #[error("revocations cannot be confirmed: the store does not answer")]
    Unconfirmed,
}

impl VerifyError {
    /// Short text for `WWW-Authenticate: Bearer error="invalid_token", error_description=...`.
    /// Plain ASCII without quotes or backslashes, so it needs no escaping there.
    pub fn description(&self) -> &'static str {
        match self {
            VerifyError::TooLarge => "token too large",
            VerifyError::Malformed(_) | VerifyError::DuplicateMember => "malformed token",
            VerifyError::BadHeader(_)
            | VerifyError::CritHeader
            | VerifyError::ForbiddenHeader(_) => "unacceptable token header",
            VerifyError::WrongType => "not an access token",
            VerifyError::UnknownKey => "unknown signing key",
            VerifyError::AlgorithmMismatch => "algorithm not allowed for this key",
            VerifyError::BadSignature => "invalid signature",
            VerifyError::Expired => "token expired",
            VerifyError::NotYetValid => "token not yet valid",
            VerifyError::IssuedInFuture => "token issued in the future",
            VerifyError::LifetimeTooLong => "token lifetime too long",
            VerifyError::MissingClaim(_) => "required claim missing",
            VerifyError::WrongIssuer => "wrong issuer",
            VerifyError::WrongAudience => "wrong audience",
            VerifyError::BadClaim(_) => "invalid claim",
            VerifyError::Revoked => "token revoked",
            VerifyError::Unconfirmed => "revocations cannot be confirmed",
        }
    }

    /// Metric label; a small fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::TooLarge => "too_large",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::DuplicateMember => "duplicate_member",
            VerifyError::BadHeader(_) => "bad_header",
            VerifyError::CritHeader => "crit_header",
            VerifyError::ForbiddenHeader(_) => "forbidden_header",
            VerifyError::WrongType => "wrong_type",
            VerifyError::UnknownKey => "unknown_key",
            VerifyError::AlgorithmMismatch => "algorithm_mismatch",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::IssuedInFuture => "issued_in_future",
            VerifyError::LifetimeTooLong => "lifetime_too_long",
            VerifyError::MissingClaim(_) => "missing_claim",
            VerifyError::WrongIssuer => "wrong_issuer",
            VerifyError::WrongAudience => "wrong_audience",
            VerifyError::BadClaim(_) => "bad_claim",
            VerifyError::Revoked => "revoked",
            VerifyError::Unconfirmed => "unconfirmed",
        }
    }
}

/// Header members that would make us fetch or trust a key named by the token itself.
pub(crate) const FORBIDDEN_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Checks access tokens against one policy with one set of keys. Immutable; share it behind an
/// `Arc` and replace it whole on reload.
#[derive(Debug)]
pub struct Verifier {
    policy: Policy,
    keys: KeyLookup,
    leeway: i64,
    max_lifetime: i64,
}

impl Verifier {
    pub fn new(policy: Policy, keys: KeyLookup) -> Self {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Verifier {
            leeway: secs(policy.leeway),
            max_lifetime: secs(policy.max_lifetime),
            policy,
            keys,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn keys(&self) -> &KeyLookup {
        &self.keys
    }

    /// Verifies `token` (the bare compact JWS, without `Bearer `) at Unix time `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Identity, VerifyError> {
        if token.len() > self.policy.max_token_bytes {
            return Err(VerifyError::TooLarge);
        }
        let (header_b64, payload_b64, signature_b64) = split_compact(token)?;
        let header = decode_segment(header_b64, "header is not base64url")?;
        let (alg, kid) = self.check_header(&header)?;

        let key = self.keys.get(&kid).ok_or(VerifyError::UnknownKey)?;
        if !key.is_usable_at(now) {
            return Err(VerifyError::UnknownKey);
        }
        if alg != key.alg.name() {
            return Err(VerifyError::AlgorithmMismatch);
        }
        let signature = decode_segment(signature_b64, "signature is not base64url")?;
        // The signing input is the received text up to the second dot, byte for byte.
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        if !key.verify_signature(signing_input.as_bytes(), &signature) {
            return Err(VerifyError::BadSignature);
        }

        let payload = decode_segment(payload_b64, "payload is not base64url")?;
        let mut object = parse_object(&payload).map_err(|e| claims_error(e, "claims"))?;
        let configured = match &self.policy.identity_claims {
            IdentityClaims::Standard => None,
            IdentityClaims::Paths { roles, scopes } => {
                let found = (
                    roles_at(&object, roles)?.unwrap_or_default(),
                    scopes_at(&object, scopes)?.unwrap_or_default(),
                );
                // This issuer may use these names differently; the typed parse must not judge
                // members the policy does not read.
                object.remove("roles");
                object.remove("scope");
                Some(found)
            }
        };
        let claims = AccessClaims::from_object(object).map_err(|e| claims_error(e, "claims"))?;
        let issuer_binding = key.issuer.as_deref();
        self.check_claims(claims, configured, issuer_binding, now)
    }

    /// Returns the header's `alg` and `kid` once every header rule holds.
    fn check_header(&self, header: &[u8]) -> Result<(String, String), VerifyError> {
        let JoseHeader { alg, kid, typ } = parse_header(header)?;
        let Some(Value::String(typ)) = typ else {
            return Err(VerifyError::WrongType);
        };
        if !self.policy.types.iter().any(|t| typ_matches(&typ, t)) {
            return Err(VerifyError::WrongType);
        }
        Ok((alg, kid))
    }

    /// `configured` holds the roles and scopes already read under [`IdentityClaims::Paths`].
    fn check_claims(
        &self,
        claims: AccessClaims,
        configured: Option<(Vec<String>, Vec<String>)>,
        issuer_binding: Option<&str>,
        now: i64,
    ) -> Result<Identity, VerifyError> {
        let exp = claims.exp.ok_or(VerifyError::MissingClaim("exp"))?;
        if exp.saturating_add(self.leeway) <= now {
            return Err(VerifyError::Expired);
        }
        let horizon = now.saturating_add(self.leeway);
        if claims.nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(VerifyError::NotYetValid);
        }
        let iat = claims.iat.ok_or(VerifyError::MissingClaim("iat"))?;
        if iat > horizon {
            return Err(VerifyError::IssuedInFuture);
        }
        if iat > exp {
            return Err(VerifyError::BadClaim("iat"));
        }
        if exp.saturating_sub(iat) > self.max_lifetime {
            return Err(VerifyError::LifetimeTooLong);
        }
        let issuer = claims.iss.clone().ok_or(VerifyError::MissingClaim("iss"))?;
        if issuer != self.policy.issuer || issuer_binding.is_some_and(|bound| bound != issuer) {
            return Err(VerifyError::WrongIssuer);
        }
        let aud = claims
            .aud
            .as_ref()
            .ok_or(VerifyError::MissingClaim("aud"))?;
        if !self.policy.audiences.iter().any(|a| aud.contains(a)) {
            return Err(VerifyError::WrongAudience);
        }
        let sub = claims.sub.clone().ok_or(VerifyError::MissingClaim("sub"))?;
        let (roles, scopes) = match configured {
            Some(found) => found,
            None => (
                claims.roles.clone().unwrap_or_default(),
                claims.scopes().map_err(|e| claims_error(e, "claims"))?,
            ),
        };
        check_identity_values(&sub, &roles, &scopes, claims.client_id.as_deref())
            .map_err(|e| claims_error(e, "claims"))?;
        if claims
            .jti
            .as_deref()
            .is_some_and(|j| !is_header_safe(j, MAX_JTI_BYTES))
        {
            return Err(VerifyError::BadClaim("jti"));
        }
        if claims
            .sid
            .as_deref()
            .is_some_and(|s| !is_header_safe(s, MAX_JTI_BYTES))
        {
            return Err(VerifyError::BadClaim("sid"));
        }
        Ok(Identity {
            values: IdentityValues::render(&sub, &roles, &scopes),
            sub,
            roles,
            scopes,
            issuer,
            exp,
            iat,
            jti: claims.jti,
            sid: claims.sid,
            client_id: claims.client_id,
            extra: claims.extra,
        })
    }
}

/// The header members a policy reads, once the policy-independent header rules hold.
struct JoseHeader {
    alg: String,
    kid: String,
    typ: Option<Value>,
}

fn parse_header(header: &[u8]) -> Result<JoseHeader, VerifyError> {
    let mut map =
        parse_object(header).map_err(|e| claims_error(e, "header is not a JSON object"))?;
    if map.contains_key("crit") {
        return Err(VerifyError::CritHeader);
    }
    if let Some(name) = FORBIDDEN_HEADERS.iter().find(|n| map.contains_key(**n)) {
        return Err(VerifyError::ForbiddenHeader(name));
    }
    let Some(Value::String(alg)) = map.remove("alg") else {
        return Err(VerifyError::BadHeader("alg"));
    };
    let Some(Value::String(kid)) = map.remove("kid") else {
        return Err(VerifyError::BadHeader("kid"));
    };
    if kid.is_empty() || kid.len() > MAX_KID_BYTES {
        return Err(VerifyError::BadHeader("kid"));
    }
    Ok(JoseHeader {
        alg,
        kid,
        typ: map.remove("typ"),
    })
}

/// The `kid` of a compact JWS, read only to choose which key set (and so which [`Verifier`])
/// the token goes to. Applies the size cap, the shape and every policy-independent header rule,
/// so a token that would be refused anyway never causes a key lookup or a JWKS fetch. The
/// signature is not checked: the chosen verifier checks everything again.
pub fn token_kid(token: &str, max_token_bytes: usize) -> Result<String, VerifyError> {
    if token.len() > max_token_bytes {
        return Err(VerifyError::TooLarge);
    }
    let (header_b64, _, _) = split_compact(token)?;
    let header = decode_segment(header_b64, "header is not base64url")?;
    parse_header(&header).map(|h| h.kid)
}

/// The member at `path` in nested objects; `None` when any member on the way is missing.
fn member_at<'a>(
    object: &'a Map<String, Value>,
    path: &[String],
    claim: &'static str,
) -> Result<Option<&'a Value>, VerifyError> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(None);
    };
    let mut current = object;
    for name in parents {
        match current.get(name) {
            None => return Ok(None),
            Some(Value::Object(inner)) => current = inner,
            Some(_) => return Err(VerifyError::BadClaim(claim)),
        }
    }
    Ok(current.get(last))
}

fn string_array(items: &[Value], claim: &'static str) -> Result<Vec<String>, VerifyError> {
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.clone()),
            _ => Err(VerifyError::BadClaim(claim)),
        })
        .collect()
}

/// Roles at a configured path: an array of strings.
fn roles_at(
    object: &Map<String, Value>,
    path: &[String],
) -> Result<Option<Vec<String>>, VerifyError> {
    match member_at(object, path, "roles")? {
        None => Ok(None),
        Some(Value::Array(items)) => string_array(items, "roles").map(Some),
        Some(_) => Err(VerifyError::BadClaim("roles")),
    }
}

/// Scopes at a configured path: a space-separated string (as `scope`) or an array of strings
/// (as Auth0's `permissions`).
fn scopes_at(
    object: &Map<String, Value>,
    path: &[String],
) -> Result<Option<Vec<String>>, VerifyError> {
    match member_at(object, path, "scope")? {
        None => Ok(None),
        Some(Value::String(text)) => {
            let as_claim = AccessClaims {
                scope: Some(text.clone()),
                ..AccessClaims::default()
            };
            as_claim
                .scopes()
                .map(Some)
                .map_err(|e| claims_error(e, "claims"))
        }
        Some(Value::Array(items)) => string_array(items, "scope").map(Some),
        Some(_) => Err(VerifyError::BadClaim("scope")),
    }
}

/// Splits a compact JWS into its three segments. Empty segments pass here and fail later with a
/// precise reason (an empty signature is a bad signature, not a shape error).
pub(crate) fn split_compact(token: &str) -> Result<(&str, &str, &str), VerifyError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(VerifyError::Malformed("not three segments")),
    }
}

/// Strict base64url: no padding, no `+` or `/`, no whitespace, canonical trailing bits.
pub(crate) fn decode_segment(segment: &str, what: &'static str) -> Result<Vec<u8>, VerifyError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| VerifyError::Malformed(what))
}

fn claims_error(e: ClaimsError, not_object: &'static str) -> VerifyError {
    match e {
        ClaimsError::Syntax { .. } | ClaimsError::NotAnObject => VerifyError::Malformed(not_object),
        ClaimsError::DuplicateMember => VerifyError::DuplicateMember,
        ClaimsError::WrongType(name) | ClaimsError::Invalid(name) => VerifyError::BadClaim(name),
    }
}

/// `at+jwt`, `AT+JWT` and `application/at+jwt` all name the same media type.
pub(crate) fn typ_matches(typ: &str, expected: &str) -> bool {
    const PREFIX: &[u8] = b"application/";
    let bytes = typ.as_bytes();
    let bare = if bytes.len() > PREFIX.len() && bytes[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        // The prefix is ASCII, so this index is a char boundary.
        &typ[PREFIX.len()..]
    } else {
        typ
    };
    bare.eq_ignore_ascii_case(expected)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::RsaPublicKeyComponents;
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;

    use super::*;
    use crate::auth::keys::{KeyAlg, KeyRing, VerificationKey};
    use crate::auth::tokens::{AccessTokenSpec, TokenSubject, mint_access, new_refresh_token};

    const NOW: i64 = 1_700_000_000;
    const ISS: &str = "https://gw.example";
    const AUD: &str = "api";
    const MAX_LIFETIME: Duration = Duration::from_secs(3600);

    struct Fixture {
        _dir: tempfile::TempDir,
        ring: KeyRing,
    }

    /// One key directory per algorithm for the whole test binary: RSA generation is slow.
    fn ring(alg: KeyAlg) -> &'static KeyRing {
        static RINGS: [OnceLock<Fixture>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        let index = match alg {
            KeyAlg::EdDSA => 0,
            KeyAlg::ES256 => 1,
            KeyAlg::RS256 => 2,
            KeyAlg::HS256 => 3,
        };
        &RINGS[index]
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let ring =
                    KeyRing::load_or_generate_at(dir.path(), alg, MAX_LIFETIME, NOW).unwrap();
                Fixture { _dir: dir, ring }
            })
            .ring
    }

    fn ed() -> &'static KeyRing {
        ring(KeyAlg::EdDSA)
    }

    fn verifier(ring: &KeyRing) -> Verifier {
        Verifier::new(Policy::new(ISS, AUD, MAX_LIFETIME), ring.lookup().clone())
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn header(ring: &KeyRing) -> Value {
        json!({"typ": "at+jwt", "alg": ring.signing().alg.name(), "kid": ring.signing().kid})
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "sub": "alice", "aud": AUD, "exp": NOW + 300, "iat": NOW, "nbf": NOW,
            "jti": "j1", "scope": "read write", "roles": ["admin"], "client_id": "web"
        })
    }

    fn set(mut v: Value, name: &str, value: Value) -> Value {
        v.as_object_mut().unwrap().insert(name.to_owned(), value);
        v
    }

    fn unset(mut v: Value, name: &str) -> Value {
        v.as_object_mut().unwrap().remove(name);
        v
    }

    /// Header and payload text as given, signed by `key` under `alg`.
    fn sign_with(key: &EncodingKey, alg: Algorithm, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
        format!("{input}.{signature}")
    }

    /// Properly signed by the ring's current key: any rejection is the policy's doing.
    fn sign_raw(ring: &KeyRing, header: &str, payload: &str) -> String {
        let s = ring.signing();
        sign_with(s.encoding_key(), s.alg.jwt_alg(), header, payload)
    }

    fn sign(ring: &KeyRing, header: &Value, claims: &Value) -> String {
        sign_raw(ring, &header.to_string(), &claims.to_string())
    }

    fn check(header: Value, claims: Value) -> Result<Identity, VerifyError> {
        verifier(ed()).verify(&sign(ed(), &header, &claims), NOW)
    }

    fn check_claims(claims: Value) -> Result<Identity, VerifyError> {
        check(header(ed()), claims)
    }

    fn segments(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn baseline_token_is_accepted() {
        let id = check(header(ed()), claims()).unwrap();
        assert_eq!(id.sub, "alice");
        assert_eq!(id.roles, vec!["admin"]);
        assert_eq!(id.scopes, vec!["read", "write"]);
        assert_eq!(id.issuer, ISS);
        assert_eq!(id.exp, NOW + 300);
        assert_eq!(id.jti.as_deref(), Some("j1"));
        assert_eq!(id.client_id.as_deref(), Some("web"));
        assert!(id.extra.is_empty());
    }

    #[test]
    fn mint_then_verify_round_trips_for_all_four_algorithms() {
        let spec = AccessTokenSpec {
            issuer: ISS.into(),
            audience: AUD.into(),
            lifetime: Duration::from_secs(300),
            max_bytes: crate::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
        };
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::RS256, KeyAlg::HS256] {
            let ring = ring(alg);
            let roles = vec!["admin".to_owned(), "ops".to_owned()];
            let scopes = vec!["read".to_owned()];
            let minted = mint_access(
                ring,
                &spec,
                &TokenSubject {
                    sub: "alice",
                    roles: &roles,
                    scopes: &scopes,
                    client_id: "web",
                    sid: None,
                },
                NOW,
            )
            .unwrap();
            let id = verifier(ring).verify(&minted.token, NOW + 1).unwrap();
            assert_eq!(id.sub, "alice", "{alg}");
            assert_eq!(id.roles, roles);
            assert_eq!(id.scopes, scopes);
            assert_eq!(id.exp, minted.expires_at);
            assert_eq!(id.jti.as_deref(), Some(minted.jti.as_str()));
            assert_eq!(id.client_id.as_deref(), Some("web"));
            // Expires exactly at exp (plus leeway), not a second later.
            let v = verifier(ring);
            assert!(v.verify(&minted.token, minted.expires_at + 9).is_ok());
            assert_eq!(
                v.verify(&minted.token, minted.expires_at + 10),
                Err(VerifyError::Expired)
            );
        }
    }

    #[test]
    fn rotation_keeps_old_kid_verifiable_and_jwks_lists_both() {
        let dir = tempfile::tempdir().unwrap();
        let retain = Duration::from_secs(600);
        let spec = AccessTokenSpec {
            issuer: ISS.into(),
            audience: AUD.into(),
            lifetime: Duration::from_secs(3600),
            max_bytes: crate::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
        };
        let old = KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, retain, NOW).unwrap();
        let old_token = mint_access(
            &old,
            &spec,
            &TokenSubject {
                sub: "alice",
                roles: &[],
                scopes: &[],
                client_id: "web",
                sid: None,
            },
            NOW,
        )
        .unwrap();
        let new_kid = KeyRing::rotate_at(dir.path(), KeyAlg::ES256, retain, NOW + 10).unwrap();
        let ring = KeyRing::load_at(dir.path(), retain, NOW + 10).unwrap();
        let new_token = mint_access(
            &ring,
            &spec,
            &TokenSubject {
                sub: "bob",
                roles: &[],
                scopes: &[],
                client_id: "web",
                sid: None,
            },
            NOW + 10,
        )
        .unwrap();
        assert_eq!(new_token.kid, new_kid);

        let v = verifier(&ring);
        assert_eq!(v.verify(&old_token.token, NOW + 20).unwrap().sub, "alice");
        assert_eq!(v.verify(&new_token.token, NOW + 20).unwrap().sub, "bob");
        let kids: Vec<_> = ring.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, vec![new_kid, old.signing().kid.clone()]);
        // Once retention ends the old key is refused even in a verifier loaded earlier.
        assert_eq!(
            v.verify(&old_token.token, NOW + 10 + 600),
            Err(VerifyError::UnknownKey)
        );
        assert!(v.verify(&new_token.token, NOW + 10 + 600).is_ok());
    }

    #[test]
    fn alg_none_in_any_case_is_rejected() {
        for none in ["none", "None", "NONE", "nOnE"] {
            let h = set(header(ed()), "alg", json!(none));
            let unsigned = format!(
                "{}.{}.",
                b64(h.to_string().as_bytes()),
                b64(claims().to_string().as_bytes())
            );
            assert_eq!(
                verifier(ed()).verify(&unsigned, NOW),
                Err(VerifyError::AlgorithmMismatch)
            );
            // Carrying a valid signature of our key does not help either.
            assert_eq!(
                check(h, claims()),
                Err(VerifyError::AlgorithmMismatch),
                "{none}"
            );
        }
    }

    /// The secrets an attacker would try: the public key as PEM (with and without the final
    /// newline), its DER, its raw bytes and the published JWKS text.
    fn public_key_secrets(ring: &KeyRing) -> Vec<Vec<u8>> {
        let jwk = &ring.jwks()["keys"][0];
        let der = match ring.signing().alg {
            KeyAlg::EdDSA => {
                let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
                let mut der = hex_bytes("302a300506032b6570032100");
                der.extend_from_slice(&x);
                der
            }
            KeyAlg::RS256 => {
                let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
                let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
                RsaPublicKeyComponents { n: &n, e: &e }
                    .as_der()
                    .unwrap()
                    .as_ref()
                    .to_vec()
            }
            KeyAlg::ES256 => {
                let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
                let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
                let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d03010703420004");
                der.extend_from_slice(&x);
                der.extend_from_slice(&y);
                der
            }
            KeyAlg::HS256 => unreachable!("symmetric keys have no public form"),
        };
        let body = STANDARD.encode(&der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        vec![
            pem.clone().into_bytes(),
            pem.trim_end().as_bytes().to_vec(),
            der,
            ring.jwks().to_string().into_bytes(),
        ]
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hs256_signed_with_public_key_bytes_is_rejected_algorithm_confusion() {
        for alg in [KeyAlg::EdDSA, KeyAlg::RS256, KeyAlg::ES256] {
            let ring = ring(alg);
            for secret in public_key_secrets(ring) {
                let key = EncodingKey::from_secret(&secret);
                let h = set(header(ring), "alg", json!("HS256"));
                let token = sign_with(
                    &key,
                    Algorithm::HS256,
                    &h.to_string(),
                    &claims().to_string(),
                );
                assert_eq!(
                    verifier(ring).verify(&token, NOW),
                    Err(VerifyError::AlgorithmMismatch),
                    "{alg}"
                );
                // Keeping the key's own alg in the header but an HMAC signature fails too.
                let token = sign_with(
                    &key,
                    Algorithm::HS256,
                    &header(ring).to_string(),
                    &claims().to_string(),
                );
                assert_eq!(
                    verifier(ring).verify(&token, NOW),
                    Err(VerifyError::BadSignature)
                );
            }
        }
    }

    #[test]
    fn alg_swapped_to_another_valid_alg_is_rejected() {
        for alg in [
            "ES256", "RS256", "HS256", "PS256", "ES384", "HS512", "eddsa", "EDDSA",
        ] {
            let h = set(header(ed()), "alg", json!(alg));
            assert_eq!(
                check(h, claims()),
                Err(VerifyError::AlgorithmMismatch),
                "{alg}"
            );
        }
        // An ES256 token presented under the EdDSA key's kid.
        let es = ring(KeyAlg::ES256);
        let h = set(header(es), "kid", json!(ed().signing().kid));
        let mut keys = ed().lookup().clone();
        keys.merge(es.lookup()).unwrap();
        let v = Verifier::new(Policy::new(ISS, AUD, MAX_LIFETIME), keys);
        assert_eq!(
            v.verify(&sign(es, &h, &claims()), NOW),
            Err(VerifyError::AlgorithmMismatch)
        );
    }

    #[test]
    fn token_signed_by_another_key_of_the_same_alg_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let other =
            KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, MAX_LIFETIME, NOW).unwrap();
        // The attacker's key, our kid.
        let token = sign(&other, &header(ed()), &claims());
        assert_eq!(
            verifier(ed()).verify(&token, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn unknown_kid_is_rejected() {
        let h = set(header(ed()), "kid", json!("not-a-key-we-have"));
        assert_eq!(check(h, claims()), Err(VerifyError::UnknownKey));
        let empty = Verifier::new(Policy::new(ISS, AUD, MAX_LIFETIME), KeyLookup::new());
        assert_eq!(
            empty.verify(&sign(ed(), &header(ed()), &claims()), NOW),
            Err(VerifyError::UnknownKey)
        );
    }

    #[test]
    fn empty_missing_non_string_or_huge_kid_is_rejected() {
        assert_eq!(
            check(set(header(ed()), "kid", json!("")), claims()),
            Err(VerifyError::BadHeader("kid"))
        );
        assert_eq!(
            check(unset(header(ed()), "kid"), claims()),
            Err(VerifyError::BadHeader("kid"))
        );
        assert_eq!(
            check(set(header(ed()), "kid", json!(1)), claims()),
            Err(VerifyError::BadHeader("kid"))
        );
        assert_eq!(
            check(set(header(ed()), "kid", json!(null)), claims()),
            Err(VerifyError::BadHeader("kid"))
        );
        let huge = "k".repeat(MAX_KID_BYTES + 1);
        assert_eq!(
            check(set(header(ed()), "kid", json!(huge)), claims()),
            Err(VerifyError::BadHeader("kid"))
        );
    }

    #[test]
    fn kid_with_path_or_sql_characters_is_looked_up_exactly_and_rejected() {
        let kid = ed().signing().kid.clone();
        for hostile in [
            "../../../../dev/null".to_owned(),
            "/etc/passwd".to_owned(),
            "' OR '1'='1".to_owned(),
            "x'; DROP TABLE keys; --".to_owned(),
            format!("{kid}\u{0}"),
            format!("{kid} "),
            format!("../{kid}"),
            kid.to_uppercase(),
            kid[..kid.len() - 1].to_owned(),
        ] {
            let h = set(header(ed()), "kid", json!(hostile));
            assert_eq!(
                check(h, claims()),
                Err(VerifyError::UnknownKey),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn missing_or_non_string_alg_is_rejected() {
        assert_eq!(
            check(unset(header(ed()), "alg"), claims()),
            Err(VerifyError::BadHeader("alg"))
        );
        assert_eq!(
            check(set(header(ed()), "alg", json!(["EdDSA"])), claims()),
            Err(VerifyError::BadHeader("alg"))
        );
    }

    #[test]
    fn huge_token_is_rejected_before_decoding() {
        let v = verifier(ed());
        // Not even base64: the size check must come first.
        let junk = "!".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
        assert_eq!(v.verify(&junk, NOW), Err(VerifyError::TooLarge));
        // A correctly signed token over the limit is refused too.
        let big = set(claims(), "pad", json!("x".repeat(DEFAULT_MAX_TOKEN_BYTES)));
        assert_eq!(check_claims(big), Err(VerifyError::TooLarge));
        assert_eq!(
            v.verify(&"a".repeat(DEFAULT_MAX_TOKEN_BYTES), NOW),
            Err(VerifyError::Malformed("not three segments"))
        );
    }

    #[test]
    fn two_four_and_five_segments_are_rejected() {
        let token = sign(ed(), &header(ed()), &claims());
        let s = segments(&token);
        let v = verifier(ed());
        let not_three = Err(VerifyError::Malformed("not three segments"));
        assert_eq!(v.verify(&format!("{}.{}", s[0], s[1]), NOW), not_three);
        assert_eq!(v.verify(&format!("{token}."), NOW), not_three);
        assert_eq!(v.verify(&format!("{token}.{}", s[2]), NOW), not_three);
        // JWE compact serialisation: five segments.
        let jwe_header = b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"x","typ":"at+jwt"}"#);
        assert_eq!(
            v.verify(&format!("{jwe_header}.AAAA.AAAA.AAAA.AAAA"), NOW),
            not_three
        );
        assert_eq!(v.verify("", NOW), not_three);
        assert_eq!(
            v.verify("..", NOW),
            Err(VerifyError::Malformed("header is not a JSON object"))
        );
    }

    #[test]
    fn json_serialised_jws_is_rejected() {
        let token = sign(ed(), &header(ed()), &claims());
        let s = segments(&token);
        let flattened = json!({"protected": s[0], "payload": s[1], "signature": s[2]}).to_string();
        let general =
            json!({"payload": s[1], "signatures": [{"protected": s[0], "signature": s[2]}]})
                .to_string();
        for form in [flattened, general] {
            assert!(
                matches!(
                    verifier(ed()).verify(&form, NOW),
                    Err(VerifyError::Malformed(_))
                ),
                "{form}"
            );
        }
    }

    #[test]
    fn refresh_token_presented_as_access_token_is_rejected() {
        let (refresh, _) = new_refresh_token();
        assert_eq!(
            verifier(ed()).verify(&refresh, NOW),
            Err(VerifyError::Malformed("not three segments"))
        );
    }

    /// Signs an already encoded signing input, so encoding defects in it survive the signature.
    fn sign_input(ring: &KeyRing, input: &str) -> String {
        let s = ring.signing();
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), s.encoding_key(), s.alg.jwt_alg())
                .unwrap();
        format!("{input}.{signature}")
    }

    fn pad(segment: &str) -> String {
        let mut padded = segment.to_owned();
        padded.push('=');
        while !padded.len().is_multiple_of(4) {
            padded.push('=');
        }
        padded
    }

    #[test]
    fn padded_base64_is_rejected() {
        let token = sign(ed(), &header(ed()), &claims());
        let s = segments(&token);
        let v = verifier(ed());
        // Header and payload padded, then correctly signed: padding is the only defect.
        let padded_header = sign_input(ed(), &format!("{}.{}", pad(&s[0]), s[1]));
        assert_eq!(
            v.verify(&padded_header, NOW),
            Err(VerifyError::Malformed("header is not base64url"))
        );
        let padded_payload = sign_input(ed(), &format!("{}.{}", s[0], pad(&s[1])));
        assert_eq!(
            v.verify(&padded_payload, NOW),
            Err(VerifyError::Malformed("payload is not base64url"))
        );
        let padded_signature = format!("{}.{}.{}", s[0], s[1], pad(&s[2]));
        assert_eq!(
            v.verify(&padded_signature, NOW),
            Err(VerifyError::Malformed("signature is not base64url"))
        );
    }

    #[test]
    fn non_url_safe_base64_is_rejected() {
        let spec = AccessTokenSpec {
            issuer: ISS.into(),
            audience: AUD.into(),
            lifetime: Duration::from_secs(60),
            max_bytes: crate::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
        };
        // Mint until a signature contains a url-safe-only character (about 94% of them do).
        let token = (0..100)
            .map(|_| {
                mint_access(
                    ed(),
                    &spec,
                    &TokenSubject {
                        sub: "alice",
                        roles: &[],
                        scopes: &[],
                        client_id: "web",
                        sid: None,
                    },
                    NOW,
                )
                .unwrap()
                .token
            })
            .find(|t| t.rsplit('.').next().unwrap().contains(['-', '_']))
            .unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let standard = signature.replace('-', "+").replace('_', "/");
        assert_eq!(
            verifier(ed()).verify(&format!("{input}.{standard}"), NOW),
            Err(VerifyError::Malformed("signature is not base64url"))
        );
        // Whitespace inside a segment is not skipped either.
        let spaced = format!("{input}.{} {}", &signature[..10], &signature[10..]);
        assert!(matches!(
            verifier(ed()).verify(&spaced, NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn non_canonical_base64_trailing_bits_are_rejected() {
        // The engine itself: "QQ" is the canonical encoding of "A"; "QR" differs only in bits
        // a lenient decoder ignores.
        assert_eq!(URL_SAFE_NO_PAD.decode("QQ").unwrap(), b"A");
        assert!(URL_SAFE_NO_PAD.decode("QR").is_err());
        assert!(URL_SAFE_NO_PAD.decode("QQ==").is_err());

        // An Ed25519 signature is 64 bytes: 86 characters, the last carrying 4 unused bits.
        // Setting one keeps the decoded signature identical, so only the canonical check stops
        // a second spelling of a valid token from being accepted.
        let token = sign(ed(), &header(ed()), &claims());
        let (input, signature) = token.rsplit_once('.').unwrap();
        assert_eq!(signature.len(), 86);
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = *signature.as_bytes().last().unwrap();
        let value = ALPHABET.iter().position(|c| *c == last).unwrap();
        assert_eq!(value & 0x0f, 0);
        let twin = format!(
            "{input}.{}{}",
            &signature[..85],
            ALPHABET[value | 1] as char
        );
        assert_eq!(
            verifier(ed()).verify(&twin, NOW),
            Err(VerifyError::Malformed("signature is not base64url"))
        );
        assert!(verifier(ed()).verify(&token, NOW).is_ok());

        // The same in a signed payload: pad the claims until the encoding has trailing bits.
        let payload = (0..3)
            .map(|n| set(claims(), "p", json!("x".repeat(n))).to_string())
            .find(|p| b64(p.as_bytes()).len() % 4 == 2)
            .unwrap();
        let encoded = b64(payload.as_bytes());
        let last = *encoded.as_bytes().last().unwrap();
        let value = ALPHABET.iter().position(|c| *c == last).unwrap();
        let twin = format!(
            "{}{}",
            &encoded[..encoded.len() - 1],
            ALPHABET[value | 1] as char
        );
        let h = b64(header(ed()).to_string().as_bytes());
        assert!(
            verifier(ed())
                .verify(&sign_input(ed(), &format!("{h}.{encoded}")), NOW)
                .is_ok()
        );
        assert_eq!(
            verifier(ed()).verify(&sign_input(ed(), &format!("{h}.{twin}")), NOW),
            Err(VerifyError::Malformed("payload is not base64url"))
        );
    }

    #[test]
    fn crit_header_is_rejected() {
        for crit in [json!(["exp"]), json!([]), json!("b64"), json!(null)] {
            let h = set(header(ed()), "crit", crit.clone());
            assert_eq!(check(h, claims()), Err(VerifyError::CritHeader), "{crit}");
        }
        let h = set(
            set(header(ed()), "crit", json!(["b64"])),
            "b64",
            json!(false),
        );
        assert_eq!(check(h, claims()), Err(VerifyError::CritHeader));
    }

    #[test]
    fn jku_jwk_x5u_x5c_headers_are_rejected() {
        let jwk = ed().jwks()["keys"][0].clone();
        let cases = [
            ("jku", json!("https://attacker.example/jwks.json")),
            ("jwk", jwk),
            ("x5u", json!("https://attacker.example/cert.pem")),
            ("x5c", json!(["MIIB"])),
        ];
        for (name, value) in cases {
            let h = set(header(ed()), name, value);
            assert_eq!(
                check(h, claims()),
                Err(VerifyError::ForbiddenHeader(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn wrong_or_missing_typ_is_rejected() {
        for typ in [
            json!("JWT"),
            json!("jwt"),
            json!("at+jwt "),
            json!("application/jwt"),
            json!("rt+jwt"),
            json!("application/"),
            json!(""),
            json!(["at+jwt"]),
            json!(null),
        ] {
            let h = set(header(ed()), "typ", typ.clone());
            assert_eq!(check(h, claims()), Err(VerifyError::WrongType), "{typ}");
        }
        assert_eq!(
            check(unset(header(ed()), "typ"), claims()),
            Err(VerifyError::WrongType)
        );
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+JWT",
        ] {
            assert!(
                check(set(header(ed()), "typ", json!(typ)), claims()).is_ok(),
                "{typ}"
            );
        }
    }

    #[test]
    fn duplicate_header_member_is_rejected() {
        let kid = &ed().signing().kid;
        let raw = format!(r#"{{"typ":"at+jwt","alg":"EdDSA","kid":"{kid}","alg":"none"}}"#);
        let token = sign_raw(ed(), &raw, &claims().to_string());
        assert_eq!(
            verifier(ed()).verify(&token, NOW),
            Err(VerifyError::DuplicateMember)
        );
    }

    #[test]
    fn exp_missing_is_rejected() {
        assert_eq!(
            check_claims(unset(claims(), "exp")),
            Err(VerifyError::MissingClaim("exp"))
        );
    }

    #[test]
    fn exp_of_the_wrong_type_is_rejected() {
        for exp in [
            json!((NOW + 300).to_string()),
            json!(NOW as f64 + 300.5),
            json!(null),
            json!(true),
        ] {
            assert_eq!(
                check_claims(set(claims(), "exp", exp.clone())),
                Err(VerifyError::BadClaim("exp")),
                "{exp}"
            );
        }
    }

    #[test]
    fn exp_beyond_leeway_is_rejected_and_within_leeway_accepted() {
        let c = set(
            set(claims(), "iat", json!(NOW - 300)),
            "nbf",
            json!(NOW - 300),
        );
        assert_eq!(
            check_claims(set(c.clone(), "exp", json!(NOW - 10))),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            check_claims(set(c.clone(), "exp", json!(NOW - 3000))),
            Err(VerifyError::Expired)
        );
        assert!(check_claims(set(c, "exp", json!(NOW - 9))).is_ok());
    }

    #[test]
    fn nbf_in_the_future_is_rejected() {
        assert_eq!(
            check_claims(set(claims(), "nbf", json!(NOW + 11))),
            Err(VerifyError::NotYetValid)
        );
        assert!(check_claims(set(claims(), "nbf", json!(NOW + 10))).is_ok());
        assert!(check_claims(unset(claims(), "nbf")).is_ok());
        assert_eq!(
            check_claims(set(claims(), "nbf", json!("0"))),
            Err(VerifyError::BadClaim("nbf"))
        );
    }

    #[test]
    fn iat_missing_or_in_the_future_is_rejected() {
        assert_eq!(
            check_claims(unset(claims(), "iat")),
            Err(VerifyError::MissingClaim("iat"))
        );
        let future = set(unset(claims(), "nbf"), "iat", json!(NOW + 11));
        assert_eq!(check_claims(future), Err(VerifyError::IssuedInFuture));
        assert!(check_claims(set(unset(claims(), "nbf"), "iat", json!(NOW + 10))).is_ok());
        let after_exp = set(set(claims(), "iat", json!(NOW + 5)), "exp", json!(NOW + 4));
        assert_eq!(
            check_claims(unset(after_exp, "nbf")),
            Err(VerifyError::BadClaim("iat"))
        );
    }

    #[test]
    fn lifetime_longer_than_policy_is_rejected() {
        let max = MAX_LIFETIME.as_secs() as i64;
        assert_eq!(
            check_claims(set(claims(), "exp", json!(NOW + max + 1))),
            Err(VerifyError::LifetimeTooLong)
        );
        assert_eq!(
            check_claims(set(claims(), "exp", json!(i64::MAX))),
            Err(VerifyError::LifetimeTooLong)
        );
        assert!(check_claims(set(claims(), "exp", json!(NOW + max))).is_ok());
        // An iat far in the past cannot stretch the window either.
        let old = set(set(claims(), "iat", json!(0)), "nbf", json!(0));
        assert_eq!(check_claims(old), Err(VerifyError::LifetimeTooLong));
    }

    #[test]
    fn wrong_or_missing_iss_is_rejected() {
        assert_eq!(
            check_claims(set(claims(), "iss", json!("https://evil.example"))),
            Err(VerifyError::WrongIssuer)
        );
        assert_eq!(
            check_claims(set(claims(), "iss", json!("https://gw.example/"))),
            Err(VerifyError::WrongIssuer)
        );
        assert_eq!(
            check_claims(unset(claims(), "iss")),
            Err(VerifyError::MissingClaim("iss"))
        );
        assert_eq!(
            check_claims(set(claims(), "iss", json!([ISS]))),
            Err(VerifyError::BadClaim("iss"))
        );
    }

    #[test]
    fn key_bound_to_another_issuer_cannot_vouch_for_ours() {
        let jwk = &ed().jwks()["keys"][0];
        let mut keys = KeyLookup::new();
        keys.insert(
            VerificationKey::from_jwk(jwk)
                .unwrap()
                .with_issuer("https://other.example"),
        )
        .unwrap();
        let v = Verifier::new(Policy::new(ISS, AUD, MAX_LIFETIME), keys);
        let token = sign(ed(), &header(ed()), &claims());
        assert_eq!(v.verify(&token, NOW), Err(VerifyError::WrongIssuer));
    }

    #[test]
    fn wrong_or_missing_aud_is_rejected() {
        for aud in [
            json!("other"),
            json!(["other", "more"]),
            json!([]),
            json!("API"),
            json!("api "),
        ] {
            assert_eq!(
                check_claims(set(claims(), "aud", aud.clone())),
                Err(VerifyError::WrongAudience),
                "{aud}"
            );
        }
        assert_eq!(
            check_claims(unset(claims(), "aud")),
            Err(VerifyError::MissingClaim("aud"))
        );
        assert_eq!(
            check_claims(set(claims(), "aud", json!(["api", 1]))),
            Err(VerifyError::BadClaim("aud"))
        );
    }

    #[test]
    fn aud_array_containing_ours_is_accepted() {
        assert!(check_claims(set(claims(), "aud", json!(["other", AUD]))).is_ok());
    }

    #[test]
    fn duplicate_sub_member_is_rejected() {
        let payload = format!(
            r#"{{"iss":"{ISS}","sub":"alice","aud":"{AUD}","exp":{},"iat":{NOW},"sub":"admin"}}"#,
            NOW + 300
        );
        let token = sign_raw(ed(), &header(ed()).to_string(), &payload);
        assert_eq!(
            verifier(ed()).verify(&token, NOW),
            Err(VerifyError::DuplicateMember)
        );
    }

    #[test]
    fn sub_with_comma_crlf_or_non_ascii_is_rejected() {
        for sub in [
            "alice,admin",
            "alice\r\nX-Admin: true",
            "alice\n",
            "alicé",
            "ali ce",
            "\"alice\"",
            "alice\\",
            "",
            "a\u{0}",
        ] {
            assert_eq!(
                check_claims(set(claims(), "sub", json!(sub))),
                Err(VerifyError::BadClaim("sub")),
                "{sub:?}"
            );
        }
        let long = "a".repeat(257);
        assert_eq!(
            check_claims(set(claims(), "sub", json!(long))),
            Err(VerifyError::BadClaim("sub"))
        );
        assert_eq!(
            check_claims(unset(claims(), "sub")),
            Err(VerifyError::MissingClaim("sub"))
        );
        assert_eq!(
            check_claims(set(claims(), "sub", json!(42))),
            Err(VerifyError::BadClaim("sub"))
        );
    }

    #[test]
    fn roles_not_an_array_or_with_unsafe_values_are_rejected() {
        for roles in [
            json!("admin"),
            json!({"admin": true}),
            json!(1),
            json!(["admin", 1]),
            json!(null),
        ] {
            assert_eq!(
                check_claims(set(claims(), "roles", roles.clone())),
                Err(VerifyError::BadClaim("roles")),
                "{roles}"
            );
        }
        for role in ["admin,root", "admin\r\nX-Admin: 1", "rôle", ""] {
            let roles = json!(["user", role]);
            assert_eq!(
                check_claims(set(claims(), "roles", roles)),
                Err(VerifyError::BadClaim("roles")),
                "{role:?}"
            );
        }
        let too_many: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
        assert_eq!(
            check_claims(set(claims(), "roles", json!(too_many))),
            Err(VerifyError::BadClaim("roles"))
        );
        let id = check_claims(unset(claims(), "roles")).unwrap();
        assert!(id.roles.is_empty());
    }

    #[test]
    fn scope_with_unsafe_values_is_rejected() {
        for scope in ["read,write", "read\twrite", "read  write", "read\r\n"] {
            assert_eq!(
                check_claims(set(claims(), "scope", json!(scope))),
                Err(VerifyError::BadClaim("scope")),
                "{scope:?}"
            );
        }
        assert_eq!(
            check_claims(set(claims(), "scope", json!(["read"]))),
            Err(VerifyError::BadClaim("scope"))
        );
        assert_eq!(
            check_claims(set(claims(), "client_id", json!("a,b"))),
            Err(VerifyError::BadClaim("client_id"))
        );
        assert_eq!(
            check_claims(set(claims(), "jti", json!("a\nb"))),
            Err(VerifyError::BadClaim("jti"))
        );
    }

    #[test]
    fn unregistered_claims_are_kept_for_header_mapping() {
        let id = check_claims(set(claims(), "email", json!("alice@example.com"))).unwrap();
        assert_eq!(id.extra["email"], "alice@example.com");
    }

    #[test]
    fn payload_that_is_not_a_json_object_is_rejected_after_the_signature() {
        let h = header(ed()).to_string();
        for payload in ["[1]", "\"claims\"", "{", "{\"sub\":\"a\"} trailing", ""] {
            let token = sign_raw(ed(), &h, payload);
            assert_eq!(
                verifier(ed()).verify(&token, NOW),
                Err(VerifyError::Malformed("claims")),
                "{payload}"
            );
        }
    }

    #[test]
    fn ecdsa_signature_with_r_or_s_zero_or_out_of_range_is_rejected() {
        let es = ring(KeyAlg::ES256);
        let token = sign(es, &header(es), &claims());
        let (input, _) = token.rsplit_once('.').unwrap();
        let order = hex_bytes("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        let one = {
            let mut b = vec![0u8; 32];
            b[31] = 1;
            b
        };
        let zero = vec![0u8; 32];
        let cases = [
            [zero.clone(), zero.clone()].concat(),
            [zero.clone(), one.clone()].concat(),
            [one.clone(), zero.clone()].concat(),
            [order.clone(), one.clone()].concat(),
            [one.clone(), order.clone()].concat(),
            vec![0xff; 64],
        ];
        for sig in cases {
            let forged = format!("{input}.{}", b64(&sig));
            assert_eq!(
                verifier(es).verify(&forged, NOW),
                Err(VerifyError::BadSignature)
            );
        }
        assert!(verifier(es).verify(&token, NOW).is_ok());
    }

    #[test]
    fn der_encoded_ecdsa_signature_is_rejected() {
        // JWS uses fixed r||s; a DER SEQUENCE of two INTEGERs is a different encoding.
        let es = ring(KeyAlg::ES256);
        let token = sign(es, &header(es), &claims());
        let (input, sig) = token.rsplit_once('.').unwrap();
        let raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let int = |v: &[u8]| {
            let mut out = vec![0x02, 33, 0x00];
            out.extend_from_slice(v);
            out
        };
        let body = [int(&raw[..32]), int(&raw[32..])].concat();
        let der = [vec![0x30, body.len() as u8], body].concat();
        assert_eq!(
            verifier(es).verify(&format!("{input}.{}", b64(&der)), NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn truncated_or_empty_signature_is_rejected() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::RS256, KeyAlg::HS256] {
            let r = ring(alg);
            let token = sign(r, &header(r), &claims());
            let (input, sig) = token.rsplit_once('.').unwrap();
            let raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
            for cut in [1, raw.len() / 2, raw.len()] {
                let truncated = format!("{input}.{}", b64(&raw[..raw.len() - cut]));
                assert_eq!(
                    verifier(r).verify(&truncated, NOW),
                    Err(VerifyError::BadSignature),
                    "{alg} -{cut}"
                );
            }
            let extended = format!("{input}.{}", b64(&[raw.as_slice(), &[0]].concat()));
            assert_eq!(
                verifier(r).verify(&extended, NOW),
                Err(VerifyError::BadSignature),
                "{alg} +1"
            );
        }
    }

    #[test]
    fn any_single_character_change_is_rejected() {
        let token = sign(ed(), &header(ed()), &claims());
        let v = verifier(ed());
        for i in 0..token.len() {
            for replacement in ['A', 'B', '.', '-'] {
                if token.as_bytes()[i] == replacement as u8 {
                    continue;
                }
                let mut bytes = token.clone().into_bytes();
                bytes[i] = replacement as u8;
                let changed = String::from_utf8(bytes).unwrap();
                assert!(
                    v.verify(&changed, NOW).is_err(),
                    "position {i} -> {replacement}"
                );
            }
        }
    }

    #[test]
    fn bearer_prefix_whitespace_and_non_ascii_are_not_stripped() {
        let token = sign(ed(), &header(ed()), &claims());
        let v = verifier(ed());
        for bad in [
            format!("Bearer {token}"),
            format!(" {token}"),
            format!("{token}\n"),
            format!("{token}é"),
        ] {
            assert!(
                matches!(v.verify(&bad, NOW), Err(VerifyError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_texts_are_static_distinct_and_header_safe() {
        let all = [
            VerifyError::TooLarge,
            VerifyError::Malformed("x"),
            VerifyError::DuplicateMember,
            VerifyError::BadHeader("x"),
            VerifyError::CritHeader,
            VerifyError::ForbiddenHeader("x"),
            VerifyError::WrongType,
            VerifyError::UnknownKey,
            VerifyError::AlgorithmMismatch,
            VerifyError::BadSignature,
            VerifyError::Expired,
            VerifyError::NotYetValid,
            VerifyError::IssuedInFuture,
            VerifyError::LifetimeTooLong,
            VerifyError::MissingClaim("x"),
            VerifyError::WrongIssuer,
            VerifyError::WrongAudience,
            VerifyError::BadClaim("x"),
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(VerifyError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        for e in &all {
            let d = e.description();
            assert!(
                !d.is_empty()
                    && d.bytes()
                        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            );
            assert!(
                e.reason()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
    }

    #[test]
    fn typ_matching_is_case_insensitive_with_optional_application_prefix() {
        assert!(typ_matches("at+jwt", "at+jwt"));
        assert!(typ_matches("At+JwT", "at+jwt"));
        assert!(typ_matches("APPLICATION/at+jwt", "at+jwt"));
        assert!(!typ_matches("application/application/at+jwt", "at+jwt"));
        assert!(!typ_matches("applicatioé/at+jwt", "at+jwt"));
        assert!(!typ_matches("xapplication/at+jwt", "at+jwt"));
    }

    fn external_policy() -> Policy {
        Policy {
            audiences: vec!["account".into(), AUD.into()],
            types: vec![ACCESS_TOKEN_TYP.into(), "JWT".into()],
            identity_claims: IdentityClaims::Paths {
                roles: vec!["realm_access".into(), "roles".into()],
                scopes: vec!["permissions".into()],
            },
            ..Policy::new(ISS, AUD, MAX_LIFETIME)
        }
    }

    fn check_with(policy: Policy, header: Value, claims: Value) -> Result<Identity, VerifyError> {
        Verifier::new(policy, ed().lookup().clone()).verify(&sign(ed(), &header, &claims), NOW)
    }

    #[test]
    fn policy_with_several_audiences_accepts_any_listed_and_refuses_others() {
        let p = external_policy();
        for aud in [json!("account"), json!(AUD), json!(["other", "account"])] {
            assert!(
                check_with(p.clone(), header(ed()), set(claims(), "aud", aud.clone())).is_ok(),
                "{aud}"
            );
        }
        for aud in [json!("other"), json!(["x", "y"]), json!("Account")] {
            assert_eq!(
                check_with(p.clone(), header(ed()), set(claims(), "aud", aud.clone())),
                Err(VerifyError::WrongAudience),
                "{aud}"
            );
        }
    }

    #[test]
    fn policy_with_empty_audiences_or_types_accepts_nothing() {
        let no_aud = Policy {
            audiences: Vec::new(),
            ..Policy::new(ISS, AUD, MAX_LIFETIME)
        };
        assert_eq!(
            check_with(no_aud, header(ed()), claims()),
            Err(VerifyError::WrongAudience)
        );
        let no_typ = Policy {
            types: Vec::new(),
            ..Policy::new(ISS, AUD, MAX_LIFETIME)
        };
        assert_eq!(
            check_with(no_typ, header(ed()), claims()),
            Err(VerifyError::WrongType)
        );
    }

    #[test]
    fn typ_jwt_is_accepted_only_by_a_policy_that_lists_it() {
        let jwt = set(header(ed()), "typ", json!("JWT"));
        assert_eq!(
            check_with(Policy::new(ISS, AUD, MAX_LIFETIME), jwt.clone(), claims()),
            Err(VerifyError::WrongType)
        );
        for typ in ["JWT", "jwt", "application/JWT", "at+jwt"] {
            let h = set(header(ed()), "typ", json!(typ));
            assert!(check_with(external_policy(), h, claims()).is_ok(), "{typ}");
        }
        for typ in ["rt+jwt", "JWS", "application/application/jwt"] {
            let h = set(header(ed()), "typ", json!(typ));
            assert_eq!(
                check_with(external_policy(), h, claims()),
                Err(VerifyError::WrongType),
                "{typ}"
            );
        }
    }

    #[test]
    fn configured_claim_paths_supply_roles_and_scopes() {
        let c = set(
            set(
                claims(),
                "realm_access",
                json!({"roles": ["ops", "viewer"]}),
            ),
            "permissions",
            json!(["read:orders", "write:orders"]),
        );
        let id = check_with(external_policy(), header(ed()), c).unwrap();
        assert_eq!(id.roles, vec!["ops", "viewer"]);
        assert_eq!(id.scopes, vec!["read:orders", "write:orders"]);
        // The unconfigured top-level `roles` and `scope` of the baseline are ignored.
        assert!(!id.roles.contains(&"admin".to_owned()));

        // A space-separated string at the scope path works as well.
        let string_scopes = Policy {
            identity_claims: IdentityClaims::Paths {
                roles: vec!["roles".into()],
                scopes: vec!["scope".into()],
            },
            ..external_policy()
        };
        let id = check_with(string_scopes.clone(), header(ed()), claims()).unwrap();
        assert_eq!(id.roles, vec!["admin"]);
        assert_eq!(id.scopes, vec!["read", "write"]);
        // And so does an array where our own policy insists on a string.
        let c = set(claims(), "scope", json!(["read"]));
        assert_eq!(
            check_with(string_scopes, header(ed()), c.clone())
                .unwrap()
                .scopes,
            vec!["read"]
        );
        assert_eq!(
            check_with(Policy::new(ISS, AUD, MAX_LIFETIME), header(ed()), c),
            Err(VerifyError::BadClaim("scope"))
        );
    }

    #[test]
    fn missing_claim_path_means_no_roles_or_scopes() {
        for c in [
            claims(),
            set(claims(), "realm_access", json!({})),
            set(claims(), "realm_access", json!({"other": 1})),
        ] {
            let id = check_with(external_policy(), header(ed()), c).unwrap();
            assert!(id.roles.is_empty() && id.scopes.is_empty());
        }
    }

    #[test]
    fn configured_claims_of_the_wrong_type_are_rejected() {
        let cases = [
            ("realm_access", json!("admin"), "roles"),
            ("realm_access", json!(["admin"]), "roles"),
            ("realm_access", json!({"roles": "admin"}), "roles"),
            ("realm_access", json!({"roles": ["admin", 1]}), "roles"),
            ("realm_access", json!({"roles": null}), "roles"),
            ("permissions", json!({"read": true}), "scope"),
            ("permissions", json!(["read", null]), "scope"),
            ("permissions", json!(7), "scope"),
            ("permissions", json!("read  write"), "scope"),
        ];
        for (name, value, claim) in cases {
            assert_eq!(
                check_with(
                    external_policy(),
                    header(ed()),
                    set(claims(), name, value.clone())
                ),
                Err(VerifyError::BadClaim(claim)),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn configured_roles_or_scopes_smuggling_headers_are_rejected() {
        for role in ["admin,root", "admin\r\nX-Admin: 1", "rôle", "", "a b"] {
            let c = set(claims(), "realm_access", json!({"roles": ["user", role]}));
            assert_eq!(
                check_with(external_policy(), header(ed()), c),
                Err(VerifyError::BadClaim("roles")),
                "{role:?}"
            );
        }
        for scope in ["read,write", "read\r\n", "", "é"] {
            let c = set(claims(), "permissions", json!([scope]));
            assert_eq!(
                check_with(external_policy(), header(ed()), c),
                Err(VerifyError::BadClaim("scope")),
                "{scope:?}"
            );
        }
        let many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
        assert_eq!(
            check_with(
                external_policy(),
                header(ed()),
                set(claims(), "permissions", json!(many))
            ),
            Err(VerifyError::BadClaim("scope"))
        );
    }

    #[test]
    fn token_kid_applies_size_shape_and_header_rules() {
        let token = sign(ed(), &header(ed()), &claims());
        assert_eq!(
            token_kid(&token, DEFAULT_MAX_TOKEN_BYTES).unwrap(),
            ed().signing().kid
        );
        assert_eq!(
            token_kid(&token, token.len() - 1),
            Err(VerifyError::TooLarge)
        );
        assert_eq!(
            token_kid("a.b", DEFAULT_MAX_TOKEN_BYTES),
            Err(VerifyError::Malformed("not three segments"))
        );
        let crit = sign(ed(), &set(header(ed()), "crit", json!(["x"])), &claims());
        assert_eq!(
            token_kid(&crit, DEFAULT_MAX_TOKEN_BYTES),
            Err(VerifyError::CritHeader)
        );
        let jku = sign(
            ed(),
            &set(header(ed()), "jku", json!("https://a")),
            &claims(),
        );
        assert_eq!(
            token_kid(&jku, DEFAULT_MAX_TOKEN_BYTES),
            Err(VerifyError::ForbiddenHeader("jku"))
        );
        let no_kid = sign(ed(), &unset(header(ed()), "kid"), &claims());
        assert_eq!(
            token_kid(&no_kid, DEFAULT_MAX_TOKEN_BYTES),
            Err(VerifyError::BadHeader("kid"))
        );
    }
}
