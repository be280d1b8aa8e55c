//! `private_key_jwt` client authentication (RFC 7523 §2.2 and §3, RFC 7521 §4.2): the client
//! signs a short-lived JWT with its own key, and the gateway checks it against the public keys
//! registered for that client, inline or at a JWKS URL.
//!
//! [`verify`] runs these rules in order and stops at the first failure:
//! 1. size: more than [`MAX_ASSERTION_BYTES`] is refused before anything is decoded;
//! 2. shape: a compact JWS, strict base64url segments (as for access tokens);
//! 3. header: one JSON object without duplicate members; `crit`, `jwk`, `jku`, `x5u`, `x5c`
//!    refused (keys never come from the assertion); `alg` one of [`ASSERTION_ALGORITHMS`]
//!    (never `none`, never HMAC: a client's keys are public); `typ`, if present, `JWT` or
//!    `client-authentication+jwt`;
//! 4. key: the registered key of exactly that `kid`, or without a `kid` the only key of the set;
//!    its algorithm must be the header's;
//! 5. signature over the received bytes;
//! 6. claims: `iss` and `sub` both the client's name (RFC 7523 §3); `aud` equal to or containing
//!    one of the audiences the caller passes (the gateway's issuer, its token endpoint URL under
//!    `[auth] public_url`: never anything taken from the request); `exp` required, not past
//!    (with the leeway) and at most [`MAX_ASSERTION_LIFETIME`] ahead; `nbf` and `iat`, when
//!    present, not in the future (with the leeway); `jti` required, 1 to 128 header-safe bytes.
//!
//! The `jti` is then spent in the store until `exp` ([`crate::store::Clients::spend_assertion`]),
//! by the caller, so a replay is refused by every gateway of the store.
//!
//! Key sets at a URL are fetched with the trusted issuers' fetcher and parser
//! ([`crate::auth::issuers::fetch_key_set`]), kept for [`CLIENT_JWKS_REFRESH`], refetched early
//! when an assertion names a kid the set lacks (at most once per [`CLIENT_JWKS_COOLDOWN`] per
//! client), and on failure the last good set stays in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::auth::claims::{MAX_JTI_BYTES, is_header_safe, parse_object};
use crate::auth::issuers::{
    IssuerError, JwksClient, KeySetOf, MAX_JWKS_BYTES, build_jwks_client, fetch_key_set,
    parse_key_set,
};
use crate::auth::keys::{KeyAlg, KeyLookup, MAX_KID_BYTES, VerificationKey};
use crate::auth::verify::{FORBIDDEN_HEADERS, decode_segment, split_compact, typ_matches};
use crate::store::Client;

/// RFC 7523 §2.2: the only `client_assertion_type` understood.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest assertion even looked at. A signed assertion is well under 1 KiB (an RSA-4096 one
/// about 1.2 KiB); the token request body as a whole is capped at 4 KiB anyway.
pub const MAX_ASSERTION_BYTES: usize = 4096;
/// Furthest ahead of now an assertion's `exp` may be: one hour. RFC 7523 §3 asks servers to
/// bound it, and the `jti` is remembered (in the store) that long; each assertion is accepted
/// once, so the bound limits how long an intercepted, unused assertion stays good. An hour is
/// the bound Okta applies and the lifetime authlib's `PrivateKeyJWT` signs by default, so
/// common clients work unchanged.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// The signature algorithms an assertion may use, as the key decides: the asymmetric ones the
/// gateway verifies (JWKs of type RSA, EC P-256 and OKP Ed25519).
pub const ASSERTION_ALGORITHMS: [KeyAlg; 3] = [KeyAlg::RS256, KeyAlg::ES256, KeyAlg::EdDSA];
/// How long a client's fetched key set is used before it is fetched again.
pub const CLIENT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Least time between two fetches of one client's key set caused by unknown kids.
pub const CLIENT_JWKS_COOLDOWN: Duration = Duration::from_secs(30);
/// Bound on one fetch of a client's key set (connect, response and body).
pub const CLIENT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// `typ` values an assertion may carry (RFC 7519's `JWT`, and the type the OAuth working group
/// proposes for client assertions).
const ASSERTION_TYPES: [&str; 2] = ["JWT", "client-authentication+jwt"];

/// Why an assertion was refused. The client is told only `invalid_client`; this is for the log,
/// and carries nothing from the assertion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("assertion too large")]
    TooLarge,
    #[error("malformed assertion: {0}")]
    Malformed(&'static str),
    #[error("unacceptable assertion header: {0}")]
    BadHeader(&'static str),
    #[error("algorithm not accepted for client assertions")]
    Algorithm,
    #[error("no registered key of the client matches")]
    UnknownKey,
    #[error("algorithm does not match the client's key")]
    AlgorithmMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("iss or sub is not the client")]
    WrongClient,
    #[error("wrong audience")]
    WrongAudience,
    #[error("assertion expired")]
    Expired,
    #[error("assertion expires too far ahead")]
    TooLongLived,
    #[error("assertion not yet valid")]
    NotYetValid,
    #[error("missing claim: {0}")]
    MissingClaim(&'static str),
    #[error("invalid claim: {0}")]
    BadClaim(&'static str),
    /// The jti was already spent (by this gateway or another of the store).
    #[error("assertion replayed")]
    Replayed,
    /// The client has no key set the gateway could read.
    #[error("the client's keys are not available: {0}")]
    NoKeys(String),
}

impl AssertionError {
    /// A small fixed set, for metrics and the log.
    pub fn reason(&self) -> &'static str {
        match self {
            AssertionError::TooLarge => "too_large",
            AssertionError::Malformed(_) => "malformed",
            AssertionError::BadHeader(_) => "bad_header",
            AssertionError::Algorithm => "algorithm",
            AssertionError::UnknownKey => "unknown_key",
            AssertionError::AlgorithmMismatch => "algorithm_mismatch",
            AssertionError::BadSignature => "bad_signature",
            AssertionError::WrongClient => "wrong_client",
            AssertionError::WrongAudience => "wrong_audience",
            AssertionError::Expired => "expired",
            AssertionError::TooLongLived => "too_long_lived",
            AssertionError::NotYetValid => "not_yet_valid",
            AssertionError::MissingClaim(_) => "missing_claim",
            AssertionError::BadClaim(_) => "bad_claim",
            AssertionError::Replayed => "replayed",
            AssertionError::NoKeys(_) => "no_keys",
        }
    }
}

/// What the assertion must say: whose it is, for whom, and the clock's tolerance.
pub struct Expected<'a> {
    /// The client's name: `iss` and `sub`.
    pub client: &'a str,
    /// `aud` must equal or contain one of these.
    pub audiences: &'a [String],
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: i64,
}

/// A verified assertion: the id to spend and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub jti: String,
    pub exp: i64,
}

/// The `sub` of an assertion, unverified: only to know which client's keys and limits apply
/// when the request names no `client_id`. `None` when it cannot be read.
pub fn unverified_subject(assertion: &str) -> Option<String> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return None;
    }
    let (_, payload, _) = split_compact(assertion).ok()?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match parse_object(&bytes).ok()?.remove("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => Some(sub),
        _ => None,
    }
}

/// The `kid` of an assertion's header, unverified: only to tell whether a fetched key set lacks
/// it (and may be refetched early).
pub fn unverified_kid(assertion: &str) -> Option<String> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return None;
    }
    let (header, _, _) = split_compact(assertion).ok()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let header = parse_object(&bytes).ok()?;
    header_kid(&header).ok().flatten().map(str::to_owned)
}

/// The `kid` of an assertion's header, when it has one it could be looked up by.
fn header_kid(header: &Map<String, Value>) -> Result<Option<&str>, AssertionError> {
    match header.get("kid") {
        None => Ok(None),
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_BYTES => Ok(Some(kid)),
        Some(_) => Err(AssertionError::BadHeader("kid")),
    }
}

/// The header once the rules of step 3 hold: its `alg` and `kid`.
fn check_header(header: &Map<String, Value>) -> Result<(KeyAlg, Option<&str>), AssertionError> {
    if header.contains_key("crit") {
        return Err(AssertionError::BadHeader("crit"));
    }
    if let Some(name) = FORBIDDEN_HEADERS.iter().find(|n| header.contains_key(**n)) {
        return Err(AssertionError::BadHeader(name));
    }
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(AssertionError::BadHeader("alg"));
    };
    let alg = ASSERTION_ALGORITHMS
        .into_iter()
        .find(|a| a.name() == alg)
        .ok_or(AssertionError::Algorithm)?;
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if ASSERTION_TYPES.iter().any(|t| typ_matches(typ, t)) => {}
        Some(_) => return Err(AssertionError::BadHeader("typ")),
    }
    Ok((alg, header_kid(header)?))
}

/// The key an assertion names: exactly its `kid`, or without one the set's only key.
fn choose_key<'k>(
    keys: &'k KeyLookup,
    kid: Option<&str>,
) -> Result<&'k Arc<VerificationKey>, AssertionError> {
    let found = match kid {
        Some(kid) => keys.get(kid),
        None if keys.len() == 1 => keys.kids().next().and_then(|only| keys.get(only)),
        None => None,
    };
    found.ok_or(AssertionError::UnknownKey)
}

/// Checks `assertion` against the client's `keys` at Unix time `now` (the rules of the module
/// text, steps 1-6).
pub fn verify(
    assertion: &str,
    keys: &KeyLookup,
    expected: &Expected<'_>,
    now: i64,
) -> Result<Verified, AssertionError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError::TooLarge);
    }
    let malformed = |_| AssertionError::Malformed("not a compact JWS");
    let (header_b64, payload_b64, signature_b64) = split_compact(assertion).map_err(malformed)?;
    let header = decode_segment(header_b64, "header").map_err(malformed)?;
    let header = parse_object(&header).map_err(|_| AssertionError::Malformed("header"))?;
    let (alg, kid) = check_header(&header)?;
    let key = choose_key(keys, kid)?;
    if key.alg != alg {
        return Err(AssertionError::AlgorithmMismatch);
    }
    let signature = decode_segment(signature_b64, "signature").map_err(malformed)?;
    let signing_input = &assertion[..header_b64.len() + 1 + payload_b64.len()];
    if !key.verify_signature(signing_input.as_bytes(), &signature) {
        return Err(AssertionError::BadSignature);
    }
    let payload = decode_segment(payload_b64, "payload").map_err(malformed)?;
    let claims = parse_object(&payload).map_err(|_| AssertionError::Malformed("claims"))?;
    check_claims(&claims, expected, now)
}

fn string_claim<'c>(
    claims: &'c Map<String, Value>,
    name: &'static str,
) -> Result<&'c str, AssertionError> {
    match claims.get(name) {
        None => Err(AssertionError::MissingClaim(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(AssertionError::BadClaim(name)),
    }
}

/// A NumericDate claim: integer seconds (a fraction is not worth a second reading).
fn time_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, AssertionError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or(AssertionError::BadClaim(name)),
    }
}

fn check_claims(
    claims: &Map<String, Value>,
    expected: &Expected<'_>,
    now: i64,
) -> Result<Verified, AssertionError> {
    if string_claim(claims, "iss")? != expected.client
        || string_claim(claims, "sub")? != expected.client
    {
        return Err(AssertionError::WrongClient);
    }
    let audience_matches = |aud: &str| expected.audiences.iter().any(|a| a == aud);
    let aud_ok = match claims.get("aud") {
        None => return Err(AssertionError::MissingClaim("aud")),
        Some(Value::String(aud)) => audience_matches(aud),
        Some(Value::Array(items)) => {
            let mut any = false;
            for item in items {
                let Value::String(aud) = item else {
                    return Err(AssertionError::BadClaim("aud"));
                };
                any |= audience_matches(aud);
            }
            any
        }
        Some(_) => return Err(AssertionError::BadClaim("aud")),
    };
    if !aud_ok {
        return Err(AssertionError::WrongAudience);
    }
    let exp = time_claim(claims, "exp")?.ok_or(AssertionError::MissingClaim("exp"))?;
    if exp.saturating_add(expected.leeway) <= now {
        return Err(AssertionError::Expired);
    }
    let furthest = i64::try_from(MAX_ASSERTION_LIFETIME.as_secs()).unwrap_or(i64::MAX);
    if exp > now.saturating_add(furthest).saturating_add(expected.leeway) {
        return Err(AssertionError::TooLongLived);
    }
    let horizon = now.saturating_add(expected.leeway);
    if time_claim(claims, "nbf")?.is_some_and(|nbf| nbf > horizon) {
        return Err(AssertionError::NotYetValid);
    }
    if time_claim(claims, "iat")?.is_some_and(|iat| iat > horizon) {
        return Err(AssertionError::NotYetValid);
    }
    let jti = string_claim(claims, "jti")?;
    if !is_header_safe(jti, MAX_JTI_BYTES) {
        return Err(AssertionError::BadClaim("jti"));
    }
    Ok(Verified {
        jti: jti.to_owned(),
        // Remembered at least until the assertion can no longer be accepted.
        exp: exp.saturating_add(expected.leeway),
    })
}

/// Why a JWKS cannot be registered for a client.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the key set is not a JSON object with a \"keys\" array")]
    NotAKeySet,
    #[error("key {index} holds private key material: register only the public keys")]
    Private { index: usize },
    #[error("key {index} cannot verify client assertions: {reason}")]
    Unusable { index: usize, reason: String },
    #[error("the key set holds no key")]
    Empty,
    #[error("the key set lists the kid {0:?} twice")]
    DuplicateKid(String),
    #[error("{0:?} is not an http(s) URL with a host")]
    BadUrl(String),
}

/// Checks a JWKS an operator registers for a client: every key a public signature key the
/// gateway verifies (an entry it would skip is an error here, and private material is refused
/// outright so it never lands in the store), kids distinct. Returns the number of keys.
pub fn check_client_jwks(text: &str) -> Result<usize, JwksError> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let document = parse_object(text.as_bytes()).map_err(|_| JwksError::NotAKeySet)?;
    let Some(Value::Array(entries)) = document.get("keys") else {
        return Err(JwksError::NotAKeySet);
    };
    if entries.is_empty() {
        return Err(JwksError::Empty);
    }
    let mut keys = KeyLookup::new();
    for (index, entry) in entries.iter().enumerate() {
        let private = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
        if private.iter().any(|m| entry.get(m).is_some()) {
            return Err(JwksError::Private { index });
        }
        let key = VerificationKey::from_jwk(entry).map_err(|e| JwksError::Unusable {
            index,
            reason: e.to_string(),
        })?;
        let kid = key.kid.clone();
        keys.insert(key).map_err(|_| JwksError::DuplicateKid(kid))?;
    }
    Ok(keys.len())
}

/// Checks a client's JWKS URL: `http` or `https`, with a host.
pub fn check_jwks_url(text: &str) -> Result<Uri, JwksError> {
    let bad = || JwksError::BadUrl(text.chars().take(256).collect());
    let uri: Uri = text.parse().map_err(|_| bad())?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(uri)
}

/// The registered keys of `private_key_jwt` clients, inline ones parsed once and URL ones
/// fetched and cached (see the module text). Cheap to share; every method takes `&self`.
#[derive(Default)]
pub struct ClientKeys {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Built at the first fetch: with system roots for https (loading them can fail on a host
    /// without a CA bundle, and only key clients at https URLs need them).
    http: OnceLock<Result<JwksClient, String>>,
    http_plain: OnceLock<Result<JwksClient, String>>,
}

/// One client's keys, for one source (a changed registration starts a new entry).
struct Entry {
    source: Source,
    state: tokio::sync::Mutex<Cached>,
}

#[derive(Clone, PartialEq, Eq)]
enum Source {
    Inline(String),
    Url(String),
}

#[derive(Default)]
struct Cached {
    keys: Option<KeyLookup>,
    fetched: Option<Instant>,
    /// The last fetch for an unknown kid, or that failed: the next such waits for the cooldown.
    refetched: Option<Instant>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys").finish_non_exhaustive()
    }
}

impl ClientKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// The keys registered for `client`, bound to its name, for an assertion naming `kid`.
    pub async fn keys_for(
        &self,
        client: &Client,
        kid: Option<&str>,
    ) -> Result<KeyLookup, AssertionError> {
        let name = client.name.as_str();
        let source = match (&client.jwks, &client.jwks_url) {
            (Some(inline), _) => Source::Inline(inline.clone()),
            (None, Some(url)) => Source::Url(url.clone()),
            (None, None) => return Err(AssertionError::NoKeys("none registered".into())),
        };
        let entry = self.entry(name, source);
        let mut cached = entry.state.lock().await;
        match &entry.source {
            Source::Inline(text) => {
                if cached.keys.is_none() {
                    let keys = parse_key_set(KeySetOf::Client, name, text.as_bytes())
                        .map_err(|e| AssertionError::NoKeys(e.to_string()))?;
                    cached.keys = Some(keys);
                }
            }
            Source::Url(url) => self.refresh_url(name, url, &mut cached, kid).await,
        }
        cached
            .keys
            .clone()
            .ok_or_else(|| AssertionError::NoKeys("the key set could not be fetched".into()))
    }

    fn entry(&self, name: &str, source: Source) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(name) {
            Some(entry) if entry.source == source => Arc::clone(entry),
            _ => {
                let entry = Arc::new(Entry {
                    source,
                    state: tokio::sync::Mutex::new(Cached::default()),
                });
                entries.insert(name.to_owned(), Arc::clone(&entry));
                entry
            }
        }
    }

    /// Fetches the set when it is missing or stale, or when it lacks `kid` and the cooldown
    /// allows; a failed fetch keeps the last good set. Callers for one client wait on the lock
    /// `cached` is held under, so one fetch serves them all.
    async fn refresh_url(&self, name: &str, url: &str, cached: &mut Cached, kid: Option<&str>) {
        let now = Instant::now();
        let stale = cached
            .fetched
            .is_none_or(|at| now.duration_since(at) >= CLIENT_JWKS_REFRESH);
        let lacks_kid =
            kid.is_some_and(|kid| cached.keys.as_ref().is_some_and(|k| k.get(kid).is_none()));
        let may_refetch = cached
            .refetched
            .is_none_or(|at| now.duration_since(at) >= CLIENT_JWKS_COOLDOWN);
        let fetch = if cached.keys.is_none() || lacks_kid {
            may_refetch
        } else {
            stale
        };
        if !fetch {
            return;
        }
        match self.fetch(name, url).await {
            Ok(keys) => {
                tracing::debug!(client = name, keys = keys.len(), "client key set fetched");
                cached.keys = Some(keys);
                cached.fetched = Some(Instant::now());
                // A refetch for an unknown kid starts the cooldown; the first fetch does not,
                // so a key published right after it is still found.
                if lacks_kid {
                    cached.refetched = Some(now);
                }
            }
            Err(e) => {
                // A failing source is not asked again before the cooldown either.
                cached.refetched = Some(now);
                tracing::warn!(
                    client = name,
                    error = %e,
                    "fetching the client's key set failed; keeping the last good set, if any"
                );
            }
        }
    }

    async fn fetch(&self, name: &str, url: &str) -> Result<KeyLookup, IssuerError> {
        let invalid = |reason| IssuerError::Invalid {
            of: KeySetOf::Client,
            issuer: name.to_owned(),
            reason,
        };
        let uri = check_jwks_url(url).map_err(|_| invalid("the client's jwks_url is not a URL"))?;
        let https = uri.scheme_str() == Some("https");
        let slot = if https { &self.http } else { &self.http_plain };
        let client = slot
            .get_or_init(|| build_jwks_client(https).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|_| invalid("no HTTP client for key sets (system roots missing?)"))?;
        fetch_key_set(client, KeySetOf::Client, name, &uri, CLIENT_JWKS_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests;
