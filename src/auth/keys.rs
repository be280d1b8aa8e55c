//! Signing and verification keys: the on-disk key directory, rotation, key lookup by `kid`, JWKS.
//!
//! # Key directory
//! ```text
//! <dir>/            mode 0700 when gatehouse creates it
//!   keys.json       manifest: {"version":1,"current":"<kid>","keys":[{"kid","alg","created","retired"}]}
//!   <kid>.pem       one private key per kid, mode 0600 (PKCS#8 "PRIVATE KEY", or
//!                   "GATEHOUSE HMAC SECRET" holding the 32 raw bytes of an HS256 key)
//!   .lock           advisory lock held while generating or rotating
//! ```
//! `created` and `retired` are Unix seconds; exactly the current key has `retired: null`. Every file
//! is written to a temporary name, synced and renamed, and the manifest is written last, so a
//! reader sees either the old key set or the new one. A kid is the RFC 7638 thumbprint of the
//! public key (checked on every load, so a swapped file is refused), or 128 random bits for HS256:
//! a hash of a shared secret would leak a test for guesses of it.
//!
//! A retired key stays usable for verification, and stays in the JWKS, for `retain` after its
//! retirement (the longest access-token lifetime plus leeway); after that it is ignored on load,
//! refused by the verifier, and its file is deleted by the next rotation.
//!
//! # Keys from the store
//! Several gateways share their keys through the store instead (`crate::auth::keystore` opens
//! them); [`KeyRing::from_entries`] builds the ring from them. There each key has its own times:
//! it verifies and is published from the moment it is stored, signs from `active_from`, and
//! stops signing at `retired_at`. The signing key is the one with the greatest `active_from`
//! not after now, so a rotation stored with a future `active_from` is in every gateway's JWKS
//! before any of them signs with it; [`KeyRing::next_transition`] says when the ring must be
//! built again even if nothing changes in the store.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    RsaPublicKeyComponents,
};
use aws_lc_rs::{digest, hmac, rand, rsa};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::EncodingKey;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::clock::unix_now;

/// Name of the manifest inside the key directory.
pub const MANIFEST_FILE: &str = "keys.json";
const LOCK_FILE: &str = ".lock";
const MANIFEST_VERSION: u32 = 1;
/// PEM label of PKCS#8 private keys (Ed25519, P-256, RSA).
const PKCS8_LABEL: &str = "PRIVATE KEY";
/// PEM label of an HS256 secret; not a standard label, so no other tool mistakes it for a key pair.
const HMAC_LABEL: &str = "GATEHOUSE HMAC SECRET";
const HMAC_SECRET_BYTES: usize = 32;
/// How long a client may cache the JWKS (its `Cache-Control`): a new key must be published at
/// least this long before it signs.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// The JWKS response's `Cache-Control`, with [`JWKS_MAX_AGE`] in seconds.
pub const JWKS_CACHE_CONTROL: &str = "public, max-age=300";
/// Longest kid accepted anywhere: ours are 43 (thumbprint) or 22 (random) characters.
pub const MAX_KID_BYTES: usize = 128;
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// RSA moduli accepted: 2048 to 8192 bits, the range the RS256 verifier enforces.
const RSA_MIN_MODULUS_BYTES: usize = 256;
const RSA_MAX_MODULUS_BYTES: usize = 1024;

/// A signature algorithm bound to a key. The key decides the algorithm, never the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyAlg {
    /// Ed25519.
    #[default]
    EdDSA,
    /// ECDSA P-256 with SHA-256, fixed-length (r||s) signatures.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys or larger.
    RS256,
    /// HMAC-SHA-256 with a 32-byte secret; only for a gateway that verifies its own tokens.
    HS256,
}

impl KeyAlg {
    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::EdDSA => "EdDSA",
            KeyAlg::ES256 => "ES256",
            KeyAlg::RS256 => "RS256",
            KeyAlg::HS256 => "HS256",
        }
    }

    pub fn jwt_alg(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyAlg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            KeyAlg::ES256 => jsonwebtoken::Algorithm::ES256,
            KeyAlg::RS256 => jsonwebtoken::Algorithm::RS256,
            KeyAlg::HS256 => jsonwebtoken::Algorithm::HS256,
        }
    }

    /// Symmetric keys verify only tokens this gateway minted and are never published.
    pub fn is_symmetric(self) -> bool {
        self == KeyAlg::HS256
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlg {
    type Err = KeyError;

    /// Exact JOSE names only, as in the config file.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EdDSA" => Ok(KeyAlg::EdDSA),
            "ES256" => Ok(KeyAlg::ES256),
            "RS256" => Ok(KeyAlg::RS256),
            "HS256" => Ok(KeyAlg::HS256),
            _ => Err(KeyError::UnknownAlgorithm(s.chars().take(32).collect())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{dir}: no key manifest ({MANIFEST_FILE}); run `gatehouse keys rotate` or start the gateway once to generate a key"
    )]
    NotInitialised { dir: PathBuf },
    #[error("{path}: invalid key manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: key file is accessible by group or others (mode {mode:o}); chmod 600 it")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("key {kid}: {reason}")]
    KeyFile { kid: String, reason: &'static str },
    #[error("key {kid}: the key file does not match its kid (thumbprint {actual})")]
    ThumbprintMismatch { kid: String, actual: String },
    #[error("generating a {alg} key failed")]
    Generate { alg: KeyAlg },
    #[error("unknown key algorithm {0:?} (expected EdDSA, ES256, RS256 or HS256)")]
    UnknownAlgorithm(String),
    #[error("JWK rejected: {0}")]
    Jwk(&'static str),
    #[error("two verification keys share the kid {0:?}")]
    DuplicateKid(String),
    #[error("no signing key is stored")]
    NoKeys,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Signature check material, parsed once per key.
enum Material {
    Hmac(Box<hmac::Key>),
    Public(ParsedPublicKey),
}

/// A key that can verify signatures of one algorithm under one kid.
pub struct VerificationKey {
    pub kid: String,
    pub alg: KeyAlg,
    /// Unix second from which the key is refused (a retired key's end of retention).
    pub not_after: Option<i64>,
    /// When set, tokens verified with this key must carry exactly this `iss`, so a key merged in
    /// from one issuer's JWKS cannot vouch for another issuer's tokens.
    pub issuer: Option<String>,
    material: Material,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Builds a key from a public JWK (RFC 7517) of a trusted external issuer: RSA (RS256,
    /// 2048-8192 bits), EC P-256 (ES256) or OKP Ed25519 (EdDSA). A stated `alg` must agree with
    /// the key type. Symmetric (`oct`) keys, private members, keys not meant for signatures and
    /// empty or malformed material are refused. Without a `kid` the RFC 7638 thumbprint is used.
    pub fn from_jwk(jwk: &Value) -> Result<Self, KeyError> {
        let obj = jwk.as_object().ok_or(KeyError::Jwk("not a JSON object"))?;
        let kty = jwk_str(obj, "kty")?.ok_or(KeyError::Jwk("kty missing"))?;
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            if obj.contains_key(private) {
                return Err(KeyError::Jwk("private or symmetric key material present"));
            }
        }
        if let Some(usage) = jwk_str(obj, "use")?
            && usage != "sig"
        {
            return Err(KeyError::Jwk("use is not sig"));
        }
        if let Some(ops) = obj.get("key_ops") {
            let allows_verify = ops
                .as_array()
                .ok_or(KeyError::Jwk("key_ops is not an array"))?
                .iter()
                .any(|op| op.as_str() == Some("verify"));
            if !allows_verify {
                return Err(KeyError::Jwk("key_ops does not allow verify"));
            }
        }
        let public = match kty {
            "RSA" => PublicJwk::Rsa {
                n: jwk_b64(obj, "n")?,
                e: jwk_b64(obj, "e")?,
            },
            "EC" => {
                if jwk_str(obj, "crv")? != Some("P-256") {
                    return Err(KeyError::Jwk("only the P-256 curve is supported"));
                }
                PublicJwk::Ec {
                    x: jwk_b64(obj, "x")?,
                    y: jwk_b64(obj, "y")?,
                }
            }
            "OKP" => {
                if jwk_str(obj, "crv")? != Some("Ed25519") {
                    return Err(KeyError::Jwk("only the Ed25519 curve is supported"));
                }
                PublicJwk::Okp {
                    x: jwk_b64(obj, "x")?,
                }
            }
            "oct" => return Err(KeyError::Jwk("symmetric keys are never accepted")),
            _ => return Err(KeyError::Jwk("unsupported kty")),
        };
        let alg = public.alg();
        if let Some(stated) = jwk_str(obj, "alg")?
            && stated != alg.name()
        {
            return Err(KeyError::Jwk("alg does not match the key type"));
        }
        let material = public.parse().map_err(KeyError::Jwk)?;
        let kid = match jwk_str(obj, "kid")? {
            Some(kid) if kid.is_empty() || kid.len() > MAX_KID_BYTES => {
                return Err(KeyError::Jwk("kid empty or too long"));
            }
            Some(kid) => kid.to_owned(),
            None => public.thumbprint(),
        };
        Ok(VerificationKey {
            kid,
            alg,
            not_after: None,
            issuer: None,
            material,
        })
    }

    /// Binds the key to one issuer (see [`VerificationKey::issuer`]).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    pub fn is_usable_at(&self, now: i64) -> bool {
        self.not_after.is_none_or(|end| now < end)
    }

    /// Checks `signature` over `message` with this key's own algorithm. Constant time for HMAC;
    /// ECDSA rejects r or s of zero or out of range, RSA rejects moduli outside 2048-8192 bits.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Material::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }
}

fn jwk_str<'a>(
    obj: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, KeyError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(KeyError::Jwk("a member has the wrong type")),
    }
}

fn jwk_b64(obj: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    let text = jwk_str(obj, name)?.ok_or(KeyError::Jwk("key material missing"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| KeyError::Jwk("key material is not base64url"))?;
    if bytes.is_empty() {
        return Err(KeyError::Jwk("key material is empty"));
    }
    Ok(bytes)
}

/// Public key members of a JWK, raw bytes.
enum PublicJwk {
    Okp { x: Vec<u8> },
    Ec { x: Vec<u8>, y: Vec<u8> },
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl PublicJwk {
    fn alg(&self) -> KeyAlg {
        match self {
            PublicJwk::Okp { .. } => KeyAlg::EdDSA,
            PublicJwk::Ec { .. } => KeyAlg::ES256,
            PublicJwk::Rsa { .. } => KeyAlg::RS256,
        }
    }

    fn parse(&self) -> Result<Material, &'static str> {
        let parsed = match self {
            PublicJwk::Okp { x } => {
                if x.len() != 32 {
                    return Err("Ed25519 x must be 32 bytes");
                }
                ParsedPublicKey::new(&ED25519, x)
            }
            PublicJwk::Ec { x, y } => {
                if x.len() != 32 || y.len() != 32 {
                    return Err("P-256 x and y must be 32 bytes each");
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            }
            PublicJwk::Rsa { n, e } => {
                if n[0] == 0 || e[0] == 0 {
                    return Err("RSA n and e must not have leading zero bytes");
                }
                if !(RSA_MIN_MODULUS_BYTES..=RSA_MAX_MODULUS_BYTES).contains(&n.len()) {
                    return Err("RSA modulus must be 2048 to 8192 bits");
                }
                if e.len() > 8 {
                    return Err("RSA exponent too large");
                }
                RsaPublicKeyComponents { n, e }.to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            }
        };
        parsed
            .map(Material::Public)
            .map_err(|_| "invalid public key")
    }

    fn members(&self) -> Map<String, Value> {
        let b64 = |bytes: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(bytes));
        let mut m = Map::new();
        match self {
            PublicJwk::Okp { x } => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert("x".into(), b64(x));
            }
            PublicJwk::Ec { x, y } => {
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), "P-256".into());
                m.insert("x".into(), b64(x));
                m.insert("y".into(), b64(y));
            }
            PublicJwk::Rsa { n, e } => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64(n));
                m.insert("e".into(), b64(e));
            }
        }
        m
    }

    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace. The
    /// values are base64url, which needs no JSON escaping, so the text is built directly rather
    /// than relying on the map order of serde_json.
    fn thumbprint(&self) -> String {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let canonical = match self {
            PublicJwk::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x)),
            PublicJwk::Ec { x, y } => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64(x),
                b64(y)
            ),
            PublicJwk::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n))
            }
        };
        b64(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    }
}

/// Verification keys by exact kid. Cheap to clone; sets from several sources (our key ring, a
/// trusted issuer's JWKS) are merged with [`KeyLookup::merge`], which refuses a kid collision
/// rather than let one source shadow another.
#[derive(Clone, Debug, Default)]
pub struct KeyLookup {
    keys: HashMap<String, Arc<VerificationKey>>,
}

impl KeyLookup {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: VerificationKey) -> Result<(), KeyError> {
        if self.keys.contains_key(&key.kid) {
            return Err(KeyError::DuplicateKid(key.kid));
        }
        self.keys.insert(key.kid.clone(), Arc::new(key));
        Ok(())
    }

    /// Adds every key of `other`; on a kid collision nothing is added.
    pub fn merge(&mut self, other: &KeyLookup) -> Result<(), KeyError> {
        if let Some(kid) = other.keys.keys().find(|kid| self.keys.contains_key(*kid)) {
            return Err(KeyError::DuplicateKid(kid.clone()));
        }
        for (kid, key) in &other.keys {
            self.keys.insert(kid.clone(), Arc::clone(key));
        }
        Ok(())
    }

    /// Exact match only: no fallback key, no normalisation of the kid.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerificationKey>> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

/// The key new tokens are signed with.
pub struct SigningKey {
    pub kid: String,
    pub alg: KeyAlg,
    encoding: EncodingKey,
}

impl SigningKey {
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// What `gatehouse keys list` shows; read from the manifest alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: KeyAlg,
    pub created: i64,
    pub retired: Option<i64>,
    pub current: bool,
}

/// One key with its times, to build a ring from ([`KeyRing::from_entries`]).
pub struct KeyEntry {
    pub kid: String,
    pub alg: KeyAlg,
    /// The private key in the key files' form (PEM; see the module doc).
    pub private: Zeroizing<Vec<u8>>,
    pub active_from: i64,
    pub retired_at: Option<i64>,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("active_from", &self.active_from)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// A newly generated private key: its kid and its PEM form.
pub struct NewKey {
    pub kid: String,
    pub alg: KeyAlg,
    pub private: Zeroizing<String>,
}

impl NewKey {
    /// Generates a key of `alg`; its kid is derived as for the key directory.
    pub fn generate(alg: KeyAlg) -> Result<Self, KeyError> {
        let private = generate_pem(alg).ok_or(KeyError::Generate { alg })?;
        let loaded = parse_key(alg, private.as_bytes()).map_err(|_| KeyError::Generate { alg })?;
        Ok(Self {
            kid: new_kid(&loaded),
            alg,
            private,
        })
    }
}

/// The current signing key and every key still valid for verification.
pub struct KeyRing {
    signing: SigningKey,
    lookup: KeyLookup,
    jwks: Value,
    /// When the ring built from the same keys would differ (a key starts signing, a retired
    /// one ends); `None` for the key directory, whose ring changes only by a reload.
    next_transition: Option<i64>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("signing", &self.signing)
            .field("verification_kids", &self.lookup.len())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the directory; generates a first key of `alg` when it holds none. Keys retired more
    /// than `retain` ago are ignored. An existing current key is used whatever its algorithm:
    /// compare `signing().alg` with the configured one and suggest `keys rotate` on a mismatch.
    pub fn load_or_generate(dir: &Path, alg: KeyAlg, retain: Duration) -> Result<Self, KeyError> {
        Self::load_or_generate_at(dir, alg, retain, unix_now())
    }

    pub fn load_or_generate_at(
        dir: &Path,
        alg: KeyAlg,
        retain: Duration,
        now: i64,
    ) -> Result<Self, KeyError> {
        ensure_dir(dir)?;
        let _lock = DirLock::acquire(dir)?;
        if read_manifest(dir)?.is_none() {
            let entry = create_key(dir, alg, now)?;
            let manifest = Manifest {
                version: MANIFEST_VERSION,
                current: entry.kid.clone(),
                keys: vec![entry],
            };
            write_manifest(dir, &manifest)?;
        }
        Self::load_at(dir, retain, now)
    }

    /// Loads without generating anything; for reloads and for tools that must not create keys.
    pub fn load(dir: &Path, retain: Duration) -> Result<Self, KeyError> {
        Self::load_at(dir, retain, unix_now())
    }

    pub fn load_at(dir: &Path, retain: Duration, now: i64) -> Result<Self, KeyError> {
        let manifest = read_manifest(dir)?.ok_or_else(|| KeyError::NotInitialised {
            dir: dir.to_path_buf(),
        })?;
        let retain = secs(retain);
        let mut signing = None;
        let mut lookup = KeyLookup::new();
        let mut published = Vec::new();
        // The manifest lists the current key first after every rotation, but do not rely on it:
        // the JWKS puts the current key first explicitly.
        let mut entries: Vec<&ManifestEntry> = manifest.keys.iter().collect();
        entries.sort_by_key(|e| (e.kid != manifest.current, std::cmp::Reverse(e.created)));
        for entry in entries {
            let not_after = entry.retired.map(|r| r.saturating_add(retain));
            if not_after.is_some_and(|end| now >= end) {
                continue;
            }
            let loaded = load_key_file(dir, entry)?;
            if let Some(public) = &loaded.public {
                published.push(public_jwk(public, &entry.kid, entry.alg));
            }
            lookup.insert(VerificationKey {
                kid: entry.kid.clone(),
                alg: entry.alg,
                not_after,
                issuer: None,
                material: loaded.material,
            })?;
            if entry.kid == manifest.current {
                signing = Some(SigningKey {
                    kid: entry.kid.clone(),
                    alg: entry.alg,
                    encoding: loaded.encoding,
                });
            }
        }
        let signing = signing.ok_or_else(|| KeyError::Manifest {
            path: dir.join(MANIFEST_FILE),
            reason: "the current key is missing".into(),
        })?;
        Ok(KeyRing {
            signing,
            lookup,
            jwks: json!({ "keys": published }),
            next_transition: None,
        })
    }

    /// The ring of keys kept elsewhere (the store), at `now`: every entry not retired `retain`
    /// or longer ago verifies and, unless symmetric, is published, including entries that do
    /// not sign yet; the signing key is the entry with the greatest `active_from` not after
    /// `now` (ties: the greatest kid, so every gateway picks the same). When none signs yet (a
    /// first key stored by a gateway whose clock runs ahead of this one), the one that signs
    /// first: there is no earlier key it could be published ahead of.
    pub fn from_entries(
        entries: Vec<KeyEntry>,
        retain: Duration,
        now: i64,
    ) -> Result<Self, KeyError> {
        let retain = secs(retain);
        let mut live: Vec<KeyEntry> = entries
            .into_iter()
            .filter(|e| e.retired_at.is_none_or(|r| r.saturating_add(retain) > now))
            .collect();
        let by_start =
            |a: &&KeyEntry, b: &&KeyEntry| (a.active_from, &a.kid).cmp(&(b.active_from, &b.kid));
        // A retired key never signs again, even when it activates after the key that retired
        // it (two rotations out of order): its tokens would outlive its verification.
        let signer = live
            .iter()
            .filter(|e| e.active_from <= now && e.retired_at.is_none_or(|r| r > now))
            .max_by(by_start)
            .or_else(|| {
                live.iter()
                    .filter(|e| e.active_from <= now)
                    .max_by(by_start)
            })
            .or_else(|| live.iter().min_by(by_start))
            .map(|e| e.kid.clone())
            .ok_or(KeyError::NoKeys)?;
        // The signing key first in the JWKS, then the newest.
        live.sort_by(|a, b| {
            (b.kid == signer, b.active_from, &b.kid).cmp(&(a.kid == signer, a.active_from, &a.kid))
        });
        let next_transition = live
            .iter()
            .flat_map(|e| {
                [
                    Some(e.active_from),
                    e.retired_at,
                    e.retired_at.map(|r| r.saturating_add(retain)),
                ]
            })
            .flatten()
            .filter(|t| *t > now)
            .min();
        let mut signing = None;
        let mut lookup = KeyLookup::new();
        let mut published = Vec::new();
        for entry in live {
            let loaded = parse_entry(&entry)?;
            if let Some(public) = &loaded.public {
                published.push(public_jwk(public, &entry.kid, entry.alg));
            }
            lookup.insert(VerificationKey {
                kid: entry.kid.clone(),
                alg: entry.alg,
                not_after: entry.retired_at.map(|r| r.saturating_add(retain)),
                issuer: None,
                material: loaded.material,
            })?;
            if entry.kid == signer {
                signing = Some(SigningKey {
                    kid: entry.kid,
                    alg: entry.alg,
                    encoding: loaded.encoding,
                });
            }
        }
        Ok(KeyRing {
            signing: signing.ok_or(KeyError::NoKeys)?,
            lookup,
            jwks: json!({ "keys": published }),
            next_transition,
        })
    }

    /// When this ring must be built again from the same keys: the next time a key starts or
    /// stops signing or a retired key's retention ends. `None`: never by time alone.
    pub fn next_transition(&self) -> Option<i64> {
        self.next_transition
    }

    /// Makes a new current key of `alg`, retires the previous one now (it stays verifiable for
    /// `retain`) and deletes keys retired at least `retain` ago. Returns the new kid. A running
    /// gateway signs with the new key only after it reloads the directory.
    pub fn rotate(dir: &Path, alg: KeyAlg, retain: Duration) -> Result<String, KeyError> {
        Self::rotate_at(dir, alg, retain, unix_now())
    }

    pub fn rotate_at(
        dir: &Path,
        alg: KeyAlg,
        retain: Duration,
        now: i64,
    ) -> Result<String, KeyError> {
        ensure_dir(dir)?;
        let _lock = DirLock::acquire(dir)?;
        let old = read_manifest(dir)?;
        let entry = create_key(dir, alg, now)?;
        let kid = entry.kid.clone();
        let mut keys = vec![entry];
        let mut expired = Vec::new();
        let retain = secs(retain);
        for mut previous in old.map(|m| m.keys).unwrap_or_default() {
            let retired = *previous.retired.get_or_insert(now);
            if now >= retired.saturating_add(retain) {
                expired.push(previous.kid);
            } else {
                keys.push(previous);
            }
        }
        write_manifest(
            dir,
            &Manifest {
                version: MANIFEST_VERSION,
                current: kid.clone(),
                keys,
            },
        )?;
        // After the manifest commit: a crash here leaves only unreferenced files behind.
        for old_kid in expired {
            let path = key_path(dir, &old_kid);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
            }
        }
        Ok(kid)
    }

    pub fn list(dir: &Path) -> Result<Vec<KeyInfo>, KeyError> {
        let manifest = read_manifest(dir)?.ok_or_else(|| KeyError::NotInitialised {
            dir: dir.to_path_buf(),
        })?;
        Ok(manifest
            .keys
            .iter()
            .map(|e| KeyInfo {
                kid: e.kid.clone(),
                alg: e.alg,
                created: e.created,
                retired: e.retired,
                current: e.kid == manifest.current,
            })
            .collect())
    }

    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// Exact kid, no fallback.
    pub fn verification_key(&self, kid: &str) -> Option<&VerificationKey> {
        self.lookup.get(kid).map(Arc::as_ref)
    }

    /// All keys valid for verification, to hand to the verifier (merged with other sources).
    pub fn lookup(&self) -> &KeyLookup {
        &self.lookup
    }

    /// RFC 7517 JWK Set of the public keys still valid: the current one first, then retained
    /// previous ones. HS256 keys are never published.
    pub fn jwks(&self) -> Value {
        self.jwks.clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    current: String,
    keys: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    kid: String,
    alg: KeyAlg,
    created: i64,
    retired: Option<i64>,
}

/// A published key: its public members, kid, algorithm and use.
fn public_jwk(public: &PublicJwk, kid: &str, alg: KeyAlg) -> Value {
    let mut jwk = public.members();
    jwk.insert("kid".into(), kid.into());
    jwk.insert("alg".into(), alg.name().into());
    jwk.insert("use".into(), "sig".into());
    Value::Object(jwk)
}

/// Parses an entry's private key and checks it against its kid as [`load_key_file`] does.
fn parse_entry(entry: &KeyEntry) -> Result<LoadedKey, KeyError> {
    if !is_safe_kid(&entry.kid) {
        return Err(KeyError::KeyFile {
            kid: entry.kid.chars().take(MAX_KID_BYTES).collect(),
            reason: "the kid contains characters other than base64url",
        });
    }
    let loaded = parse_key(entry.alg, &entry.private).map_err(|reason| KeyError::KeyFile {
        kid: entry.kid.clone(),
        reason,
    })?;
    check_thumbprint(&entry.kid, &loaded)?;
    Ok(loaded)
}

fn check_thumbprint(kid: &str, loaded: &LoadedKey) -> Result<(), KeyError> {
    if let Some(public) = &loaded.public {
        let actual = public.thumbprint();
        if actual != kid {
            return Err(KeyError::ThumbprintMismatch {
                kid: kid.to_owned(),
                actual,
            });
        }
    }
    Ok(())
}

/// The kid of a new key: its thumbprint, or 128 random bits for HS256 (see the module doc).
fn new_kid(loaded: &LoadedKey) -> String {
    match &loaded.public {
        Some(public) => public.thumbprint(),
        None => {
            let mut id = [0u8; 16];
            fill_random(&mut id);
            URL_SAFE_NO_PAD.encode(id)
        }
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Kids become file names: base64url characters only, so no path can be smuggled in.
fn is_safe_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_BYTES
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.pem"))
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Advisory lock on `<dir>/.lock` so two `keys rotate` runs cannot lose each other's key.
struct DirLock(File);

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(DirLock(file))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first just makes it prompt.
        let _ = self.0.unlock();
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut buf = Zeroizing::new(Vec::new());
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > limit {
        return Err(KeyError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "file too large"),
        });
    }
    Ok(Some(buf))
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, KeyError> {
    let path = dir.join(MANIFEST_FILE);
    let Some(bytes) = read_bounded(&path, MAX_MANIFEST_BYTES)? else {
        return Ok(None);
    };
    let bad = |reason: String| KeyError::Manifest {
        path: path.clone(),
        reason,
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if manifest.version != MANIFEST_VERSION {
        return Err(bad(format!("unsupported version {}", manifest.version)));
    }
    let mut seen = std::collections::HashSet::new();
    for entry in &manifest.keys {
        if !is_safe_kid(&entry.kid) {
            return Err(bad("a kid contains characters other than base64url".into()));
        }
        if !seen.insert(entry.kid.as_str()) {
            return Err(bad(format!("kid {} listed twice", entry.kid)));
        }
        let is_current = entry.kid == manifest.current;
        if is_current == entry.retired.is_some() {
            return Err(bad("exactly the current key must be unretired".into()));
        }
    }
    if !seen.contains(manifest.current.as_str()) {
        return Err(bad("the current kid is not listed".into()));
    }
    Ok(Some(manifest))
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), KeyError> {
    let mut text = serde_json::to_vec_pretty(manifest).map_err(|e| KeyError::Manifest {
        path: dir.join(MANIFEST_FILE),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    write_atomic(dir, MANIFEST_FILE, &text, 0o644)
}

/// Temp file in the same directory, fsync, rename, fsync the directory: the name points at
/// either the complete old content or the complete new one.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut suffix = [0u8; 8];
    fill_random(&mut suffix);
    let tmp = dir.join(format!(".{name}.{}.tmp", URL_SAFE_NO_PAD.encode(suffix)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(&dir.join(name)))
}

pub(crate) fn fill_random(buf: &mut [u8]) {
    // AWS-LC's RAND_bytes aborts the process rather than return failure, so this error path is
    // unreachable in practice; a gateway without randomness must not issue anything anyway.
    rand::fill(buf).expect("system random generator failed");
}

fn pem_encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Exactly one PEM block with the expected label; strict base64 inside.
fn pem_decode(text: &[u8], label: &str) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let text = std::str::from_utf8(text).map_err(|_| "not a PEM file")?;
    let mut lines = text.lines().map(str::trim_end).filter(|l| !l.is_empty());
    if lines.next() != Some(format!("-----BEGIN {label}-----").as_str()) {
        return Err("unexpected PEM label");
    }
    let end = format!("-----END {label}-----");
    let mut body = Zeroizing::new(String::new());
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended || lines.next().is_some() {
        return Err("malformed PEM block");
    }
    STANDARD
        .decode(body.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| "malformed PEM base64")
}

struct LoadedKey {
    encoding: EncodingKey,
    material: Material,
    public: Option<PublicJwk>,
}

/// Parses one key, checks that it fits its algorithm and, for public-key algorithms, that its
/// thumbprint is its kid.
fn parse_key(alg: KeyAlg, pem: &[u8]) -> Result<LoadedKey, &'static str> {
    if alg == KeyAlg::HS256 {
        let secret = pem_decode(pem, HMAC_LABEL)?;
        if secret.len() < HMAC_SECRET_BYTES {
            return Err("HS256 secret shorter than 32 bytes");
        }
        return Ok(LoadedKey {
            encoding: EncodingKey::from_secret(&secret),
            material: Material::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &secret))),
            public: None,
        });
    }
    let der = pem_decode(pem, PKCS8_LABEL)?;
    let (encoding, public) = match alg {
        KeyAlg::EdDSA => {
            let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| "not an Ed25519 PKCS#8 key")?;
            let x = pair.public_key().as_ref().to_vec();
            (EncodingKey::from_ed_der(&der), PublicJwk::Okp { x })
        }
        KeyAlg::ES256 => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| "not a P-256 PKCS#8 key")?;
            let point = pair.public_key().as_ref();
            if point.len() != 65 || point[0] != 0x04 {
                return Err("unexpected P-256 public key encoding");
            }
            let (x, y) = point[1..].split_at(32);
            (
                EncodingKey::from_ec_der(&der),
                PublicJwk::Ec {
                    x: x.to_vec(),
                    y: y.to_vec(),
                },
            )
        }
        KeyAlg::RS256 => {
            let pair = rsa::KeyPair::from_pkcs8(&der).map_err(|_| "not an RSA PKCS#8 key")?;
            if pair.public_modulus_len() < RSA_MIN_MODULUS_BYTES {
                return Err("RSA key shorter than 2048 bits");
            }
            let parts = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            // jsonwebtoken signs RSA with a PKCS#1 key; its PEM reader unwraps PKCS#8 to that.
            let encoding = EncodingKey::from_rsa_pem(pem).map_err(|_| "RSA key not usable")?;
            (
                encoding,
                PublicJwk::Rsa {
                    n: parts.n,
                    e: parts.e,
                },
            )
        }
        KeyAlg::HS256 => return Err("unreachable: HS256 handled above"),
    };
    let material = public.parse()?;
    Ok(LoadedKey {
        encoding,
        material,
        public: Some(public),
    })
}

/// The mode (permission bits) of a private key file that group or others may access at all,
/// `None` when only its owner can: the one check for every private key file read from disk
/// (signing keys here, the TLS key in `server`). The fix to tell is `chmod 600`.
pub fn exposed_mode(meta: &fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

fn load_key_file(dir: &Path, entry: &ManifestEntry) -> Result<LoadedKey, KeyError> {
    let path = key_path(dir, &entry.kid);
    let file_err = |reason| KeyError::KeyFile {
        kid: entry.kid.clone(),
        reason,
    };
    let meta = fs::metadata(&path).map_err(io_err(&path))?;
    if let Some(mode) = exposed_mode(&meta) {
        return Err(KeyError::InsecurePermissions { path, mode });
    }
    let pem = read_bounded(&path, MAX_KEY_FILE_BYTES)?.ok_or(file_err("key file missing"))?;
    let loaded = parse_key(entry.alg, &pem).map_err(file_err)?;
    check_thumbprint(&entry.kid, &loaded)?;
    Ok(loaded)
}

fn generate_pem(alg: KeyAlg) -> Option<Zeroizing<String>> {
    Some(match alg {
        KeyAlg::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate().ok()?.to_pkcs8v1().ok()?;
            pem_encode(PKCS8_LABEL, pkcs8.as_ref())
        }
        KeyAlg::ES256 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).ok()?;
            pem_encode(PKCS8_LABEL, pair.to_pkcs8v1().ok()?.as_ref())
        }
        KeyAlg::RS256 => {
            let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).ok()?;
            pem_encode(PKCS8_LABEL, pair.as_der().ok()?.as_ref())
        }
        KeyAlg::HS256 => {
            let mut secret = Zeroizing::new([0u8; HMAC_SECRET_BYTES]);
            fill_random(secret.as_mut());
            pem_encode(HMAC_LABEL, secret.as_ref())
        }
    })
}

/// Generates a key, derives its kid from the written form (so what is on disk is what loads)
/// and writes `<kid>.pem` with mode 0600.
fn create_key(dir: &Path, alg: KeyAlg, now: i64) -> Result<ManifestEntry, KeyError> {
    let pem = generate_pem(alg).ok_or(KeyError::Generate { alg })?;
    let loaded = parse_key(alg, pem.as_bytes()).map_err(|_| KeyError::Generate { alg })?;
    let kid = new_kid(&loaded);
    write_atomic(dir, &format!("{kid}.pem"), pem.as_bytes(), 0o600)?;
    Ok(ManifestEntry {
        kid,
        alg,
        created: now,
        retired: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETAIN: Duration = Duration::from_secs(900);
    const T0: i64 = 1_700_000_000;

    fn sign(ring: &KeyRing, msg: &[u8]) -> Vec<u8> {
        let s = ring.signing();
        let b64 = jsonwebtoken::crypto::sign(msg, s.encoding_key(), s.alg.jwt_alg()).unwrap();
        URL_SAFE_NO_PAD.decode(b64).unwrap()
    }

    #[test]
    fn generated_key_signs_and_verifies_for_every_algorithm() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::RS256, KeyAlg::HS256] {
            let dir = tempfile::tempdir().unwrap();
            let ring = KeyRing::load_or_generate_at(dir.path(), alg, RETAIN, T0).unwrap();
            assert_eq!(ring.signing().alg, alg);
            let sig = sign(&ring, b"message");
            let key = ring.verification_key(&ring.signing().kid).unwrap();
            assert!(key.verify_signature(b"message", &sig), "{alg}");
            assert!(!key.verify_signature(b"messagf", &sig), "{alg}");
            // Reloading yields the same key, not a fresh one.
            let again = KeyRing::load_or_generate_at(dir.path(), alg, RETAIN, T0).unwrap();
            assert_eq!(again.signing().kid, ring.signing().kid);
        }
    }

    #[test]
    fn key_files_are_private_and_manifest_is_strict_json() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0).unwrap();
        let kid = &ring.signing().kid;
        let mode = fs::metadata(key_path(dir.path(), kid))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let manifest: Value =
            serde_json::from_slice(&fs::read(dir.path().join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(manifest["current"], kid.as_str());
        assert_eq!(manifest["keys"][0]["alg"], "EdDSA");
        assert_eq!(manifest["keys"][0]["created"], T0);
        assert!(manifest["keys"][0]["retired"].is_null());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_of_the_public_key() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::RS256] {
            let dir = tempfile::tempdir().unwrap();
            let ring = KeyRing::load_or_generate_at(dir.path(), alg, RETAIN, T0).unwrap();
            let jwk = ring.jwks()["keys"][0].clone();
            // Recompute from the published members with jsonwebtoken's own implementation.
            let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
            let expected = parsed
                .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap();
            assert_eq!(ring.signing().kid, expected, "{alg}");
        }
    }

    #[test]
    fn thumbprint_matches_the_rfc7638_example() {
        // RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = VerificationKey::from_jwk(&jwk).unwrap();
        assert_eq!(key.kid, "2011-04-29");
        assert_eq!(key.alg, KeyAlg::RS256);
        let mut without_kid = jwk.clone();
        without_kid.as_object_mut().unwrap().remove("kid");
        let key = VerificationKey::from_jwk(&without_kid).unwrap();
        assert_eq!(key.kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn hs256_kid_is_random_not_derived_from_the_secret() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ra = KeyRing::load_or_generate_at(a.path(), KeyAlg::HS256, RETAIN, T0).unwrap();
        let rb = KeyRing::load_or_generate_at(b.path(), KeyAlg::HS256, RETAIN, T0).unwrap();
        assert_ne!(ra.signing().kid, rb.signing().kid);
        assert_eq!(ra.signing().kid.len(), 22);
        let pem = fs::read(key_path(a.path(), &ra.signing().kid)).unwrap();
        let secret = pem_decode(&pem, HMAC_LABEL).unwrap();
        let hashed = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &secret));
        assert!(!hashed.starts_with(&ra.signing().kid));
    }

    #[test]
    fn hs256_secret_is_never_published_in_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_generate_at(dir.path(), KeyAlg::HS256, RETAIN, T0).unwrap();
        assert_eq!(ring.jwks(), json!({ "keys": [] }));
        // Rotating to an asymmetric key publishes only that one.
        let kid = KeyRing::rotate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0 + 10).unwrap();
        let ring = KeyRing::load_at(dir.path(), RETAIN, T0 + 10).unwrap();
        let keys = ring.jwks()["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], kid.as_str());
        assert_eq!(
            ring.lookup().len(),
            2,
            "the HS256 key still verifies its tokens"
        );
    }

    #[test]
    fn rotation_keeps_old_kid_verifiable_and_jwks_lists_both() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0).unwrap();
        let old_kid = first.signing().kid.clone();
        let old_sig = sign(&first, b"m");
        let new_kid = KeyRing::rotate_at(dir.path(), KeyAlg::ES256, RETAIN, T0 + 100).unwrap();
        assert_ne!(new_kid, old_kid);

        let ring = KeyRing::load_at(dir.path(), RETAIN, T0 + 100).unwrap();
        assert_eq!(ring.signing().kid, new_kid);
        assert_eq!(ring.signing().alg, KeyAlg::ES256);
        let old = ring.verification_key(&old_kid).unwrap();
        assert!(old.verify_signature(b"m", &old_sig));
        assert_eq!(old.not_after, Some(T0 + 100 + 900));
        assert!(old.is_usable_at(T0 + 999) && !old.is_usable_at(T0 + 1000));
        let kids: Vec<_> = ring.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, vec![new_kid.clone(), old_kid.clone()]);
        for jwk in ring.jwks()["keys"].as_array().unwrap() {
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("d").is_none());
        }

        let list = KeyRing::list(dir.path()).unwrap();
        let old_info = list.iter().find(|k| k.kid == old_kid).unwrap();
        assert_eq!(old_info.retired, Some(T0 + 100));
        assert!(!old_info.current);
        assert!(
            list.iter()
                .any(|k| k.kid == new_kid && k.current && k.retired.is_none())
        );
    }

    #[test]
    fn keys_retired_longer_than_retain_are_ignored_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0).unwrap();
        let old_kid = first.signing().kid.clone();
        KeyRing::rotate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0 + 100).unwrap();

        let later = KeyRing::load_at(dir.path(), RETAIN, T0 + 100 + 900).unwrap();
        assert!(later.verification_key(&old_kid).is_none());
        assert_eq!(later.jwks()["keys"].as_array().unwrap().len(), 1);
        assert!(
            key_path(dir.path(), &old_kid).exists(),
            "load never deletes"
        );

        let third = KeyRing::rotate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0 + 100 + 900).unwrap();
        assert!(!key_path(dir.path(), &old_kid).exists());
        let list = KeyRing::list(dir.path()).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|k| k.kid != old_kid));
        assert!(list.iter().any(|k| k.kid == third && k.current));
    }

    #[test]
    fn load_without_keys_does_not_generate() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyRing::load(dir.path(), RETAIN).unwrap_err();
        assert!(matches!(err, KeyError::NotInitialised { .. }), "{err}");
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0).unwrap();
        let path = key_path(dir.path(), &ring.signing().kid);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyRing::load_at(dir.path(), RETAIN, T0).unwrap_err();
        assert!(
            matches!(err, KeyError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn swapped_key_file_is_refused_by_thumbprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0).unwrap();
        let a_kid = a.signing().kid.clone();
        let b_kid = KeyRing::rotate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0 + 1).unwrap();
        // An attacker with write access to one file substitutes another key under the old name.
        fs::copy(key_path(dir.path(), &b_kid), key_path(dir.path(), &a_kid)).unwrap();
        let err = KeyRing::load_at(dir.path(), RETAIN, T0 + 1).unwrap_err();
        assert!(matches!(err, KeyError::ThumbprintMismatch { .. }), "{err}");
    }

    #[test]
    fn manifest_with_path_in_kid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = json!({
            "version": 1, "current": "../../etc/passwd",
            "keys": [{"kid": "../../etc/passwd", "alg": "EdDSA", "created": 1, "retired": null}]
        });
        fs::write(dir.path().join(MANIFEST_FILE), manifest.to_string()).unwrap();
        let err = KeyRing::load(dir.path(), RETAIN).unwrap_err();
        assert!(matches!(err, KeyError::Manifest { .. }), "{err}");
    }

    #[test]
    fn manifest_with_two_unretired_keys_or_unknown_fields_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let two_current = json!({
            "version": 1, "current": "a",
            "keys": [
                {"kid": "a", "alg": "EdDSA", "created": 1, "retired": null},
                {"kid": "b", "alg": "EdDSA", "created": 1, "retired": null}
            ]
        });
        fs::write(dir.path().join(MANIFEST_FILE), two_current.to_string()).unwrap();
        assert!(matches!(
            KeyRing::list(dir.path()),
            Err(KeyError::Manifest { .. })
        ));
        let extra = json!({"version": 1, "current": "a", "keys": [], "fallback": "x"});
        fs::write(dir.path().join(MANIFEST_FILE), extra.to_string()).unwrap();
        assert!(matches!(
            KeyRing::list(dir.path()),
            Err(KeyError::Manifest { .. })
        ));
    }

    #[test]
    fn key_file_of_another_algorithm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_generate_at(dir.path(), KeyAlg::EdDSA, RETAIN, T0).unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"EdDSA\"", "\"ES256\"");
        fs::write(&path, text).unwrap();
        let err = KeyRing::load_at(dir.path(), RETAIN, T0).unwrap_err();
        assert!(
            matches!(&err, KeyError::KeyFile { kid, .. } if *kid == ring.signing().kid),
            "{err}"
        );
    }

    fn entry(key: &NewKey, active_from: i64, retired_at: Option<i64>) -> KeyEntry {
        KeyEntry {
            kid: key.kid.clone(),
            alg: key.alg,
            private: Zeroizing::new(key.private.as_bytes().to_vec()),
            active_from,
            retired_at,
        }
    }

    /// A first key stored by a gateway whose clock runs ahead: this gateway signs with it
    /// rather than with nothing (there is no earlier key it would be published ahead of).
    #[test]
    fn a_first_key_from_a_gateway_whose_clock_runs_ahead_still_signs() {
        let key = NewKey::generate(KeyAlg::EdDSA).unwrap();
        let ring = KeyRing::from_entries(vec![entry(&key, T0 + 5, None)], RETAIN, T0).unwrap();
        assert_eq!(ring.signing().kid, key.kid);
        assert_eq!(ring.next_transition(), Some(T0 + 5));
        assert!(matches!(
            KeyRing::from_entries(Vec::new(), RETAIN, T0),
            Err(KeyError::NoKeys)
        ));
    }

    /// Two rotations out of order (a later one with a shorter publish_ahead, or a CLI clock
    /// behind): the second retires the first's pending key at its own activation. The retired
    /// key must not sign once its activation comes, or its tokens would outlive its key.
    #[test]
    fn a_key_retired_before_its_activation_never_signs() {
        let old = NewKey::generate(KeyAlg::EdDSA).unwrap();
        let pending = NewKey::generate(KeyAlg::EdDSA).unwrap();
        let newest = NewKey::generate(KeyAlg::EdDSA).unwrap();
        let entries = || {
            vec![
                entry(&old, T0 - 100, Some(T0 + 600)),
                entry(&pending, T0 + 600, Some(T0 + 310)),
                entry(&newest, T0 + 310, None),
            ]
        };
        for (now, signer) in [
            (T0, &old.kid),
            (T0 + 310, &newest.kid),
            (T0 + 600, &newest.kid),
            (T0 + 700, &newest.kid),
        ] {
            let ring = KeyRing::from_entries(entries(), RETAIN, now).unwrap();
            assert_eq!(&ring.signing().kid, signer, "at T0 + {}", now - T0);
        }
    }

    /// A stored record whose private key is another key's (the kid is the thumbprint) is
    /// refused, whatever opened it.
    #[test]
    fn a_stored_key_under_another_keys_kid_is_refused() {
        let a = NewKey::generate(KeyAlg::EdDSA).unwrap();
        let b = NewKey::generate(KeyAlg::EdDSA).unwrap();
        let mut swapped = entry(&a, T0, None);
        swapped.private = Zeroizing::new(b.private.as_bytes().to_vec());
        let err = KeyRing::from_entries(vec![swapped], RETAIN, T0).unwrap_err();
        assert!(matches!(err, KeyError::ThumbprintMismatch { .. }), "{err}");
        let mut pathy = entry(&a, T0, None);
        pathy.kid = "../a".into();
        let err = KeyRing::from_entries(vec![pathy], RETAIN, T0).unwrap_err();
        assert!(matches!(err, KeyError::KeyFile { .. }), "{err}");
    }

    /// Gateways building rings from the same keys at the same second agree on the signer, and
    /// HS256 keys from the store verify without being published.
    #[test]
    fn rings_from_the_same_entries_agree_and_never_publish_hmac_keys() {
        let h = NewKey::generate(KeyAlg::HS256).unwrap();
        let e = NewKey::generate(KeyAlg::EdDSA).unwrap();
        let build = |order: bool| {
            let mut entries = vec![entry(&h, T0, None), entry(&e, T0, None)];
            if order {
                entries.reverse();
            }
            KeyRing::from_entries(entries, RETAIN, T0).unwrap()
        };
        let (one, two) = (build(false), build(true));
        assert_eq!(one.signing().kid, two.signing().kid);
        assert_eq!(one.lookup().len(), 2);
        let published = one.jwks()["keys"].as_array().unwrap().clone();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0]["kid"], e.kid.as_str());
    }

    #[test]
    fn jwks_cache_control_says_the_max_age() {
        assert_eq!(
            JWKS_CACHE_CONTROL,
            format!("public, max-age={}", JWKS_MAX_AGE.as_secs())
        );
    }

    #[test]
    fn key_alg_names_parse_exactly() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::RS256, KeyAlg::HS256] {
            assert_eq!(alg.name().parse::<KeyAlg>().unwrap(), alg);
            let from_json: KeyAlg = serde_json::from_value(json!(alg.name())).unwrap();
            assert_eq!(from_json, alg);
            assert_eq!(
                serde_json::to_value(alg.jwt_alg()).unwrap(),
                json!(alg.name())
            );
        }
        for bad in ["none", "eddsa", "HS512", "PS256", ""] {
            assert!(bad.parse::<KeyAlg>().is_err(), "{bad}");
        }
        assert_eq!(KeyAlg::default(), KeyAlg::EdDSA);
    }

    #[test]
    fn jwk_import_accepts_our_published_keys() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256, KeyAlg::RS256] {
            let dir = tempfile::tempdir().unwrap();
            let ring = KeyRing::load_or_generate_at(dir.path(), alg, RETAIN, T0).unwrap();
            let imported = VerificationKey::from_jwk(&ring.jwks()["keys"][0]).unwrap();
            assert_eq!(imported.kid, ring.signing().kid);
            assert_eq!(imported.alg, alg);
            let sig = sign(&ring, b"hello");
            assert!(imported.verify_signature(b"hello", &sig), "{alg}");
        }
    }

    #[test]
    fn jwk_import_rejects_symmetric_private_mismatched_and_empty_keys() {
        let okp_x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let cases = [
            json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}),
            json!({"kty": "oct", "k": ""}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": okp_x, "d": okp_x}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": okp_x, "alg": "HS256"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": okp_x, "alg": "none"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": okp_x, "use": "enc"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": okp_x, "key_ops": ["sign"]}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": ""}),
            json!({"kty": "OKP", "crv": "Ed448", "x": okp_x}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": okp_x, "kid": ""}),
            json!({"kty": "EC", "crv": "P-256", "x": "", "y": ""}),
            json!({"kty": "EC", "crv": "P-384", "x": okp_x, "y": okp_x}),
            // (7,7) is not a point on P-256.
            json!({"kty": "EC", "crv": "P-256", "x": okp_x, "y": okp_x}),
            json!({"kty": "RSA", "n": "", "e": "AQAB"}),
            json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc1u8; 128]), "e": "AQAB"}),
            json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc1u8; 256]), "e": "AQAB", "alg": "PS256"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "padded=="}),
            json!({"crv": "Ed25519", "x": okp_x}),
            json!(["not", "an", "object"]),
        ];
        for case in cases {
            assert!(VerificationKey::from_jwk(&case).is_err(), "{case}");
        }
        // The well-formed baseline of the cases above is accepted, so they fail for their defect.
        let ok = VerificationKey::from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": okp_x}));
        assert_eq!(ok.unwrap().alg, KeyAlg::EdDSA);
    }

    #[test]
    fn lookup_merge_refuses_kid_collisions() {
        let a = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_generate_at(a.path(), KeyAlg::EdDSA, RETAIN, T0).unwrap();
        let mut merged = KeyLookup::new();
        merged.merge(ring.lookup()).unwrap();
        let twin = VerificationKey::from_jwk(&ring.jwks()["keys"][0]).unwrap();
        assert!(matches!(
            merged.insert(twin),
            Err(KeyError::DuplicateKid(_))
        ));
        assert!(matches!(
            merged.merge(ring.lookup()),
            Err(KeyError::DuplicateKid(_))
        ));
        assert_eq!(merged.len(), 1);
        assert!(merged.get(&ring.signing().kid).is_some());
        assert!(merged.get(&ring.signing().kid.to_lowercase()).is_none());
    }

    #[test]
    fn pem_round_trips_and_rejects_foreign_labels() {
        let der = (0u8..=200).collect::<Vec<_>>();
        let pem = pem_encode(PKCS8_LABEL, &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(
            pem_decode(pem.as_bytes(), PKCS8_LABEL).unwrap().as_slice(),
            der.as_slice()
        );
        assert!(pem_decode(pem.as_bytes(), HMAC_LABEL).is_err());
        let doubled = format!("{}{}", pem.as_str(), pem.as_str());
        assert!(pem_decode(doubled.as_bytes(), PKCS8_LABEL).is_err());
    }
}
