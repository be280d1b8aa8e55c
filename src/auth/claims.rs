//! Typed access-token claims (RFC 9068), strict JSON object parsing, and the verified identity.
//!
//! Token JSON is parsed once into a map that refuses duplicate members at every depth (serde's
//! derive does not do that once `flatten` is involved, and a JSON parser that keeps the last
//! duplicate lets two parsers disagree about what a token says). Claims are then taken out of the
//! map with exact types: no string-to-number or number-to-string coercion, NumericDates must be
//! integers. Values that become HTTP headers are restricted to visible ASCII without `,`, `"`
//! or `\`, so no header can be split, folded or smuggled through them.

use std::fmt;

use http::HeaderValue;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Number, Value};

/// Longest `sub` accepted or minted.
pub const MAX_SUB_BYTES: usize = 256;
/// Longest single role or scope.
pub const MAX_ROLE_BYTES: usize = 128;
/// Most roles in one token.
pub const MAX_ROLES: usize = 64;
/// Most scopes in one token.
pub const MAX_SCOPES: usize = 64;
/// Longest `client_id`.
pub const MAX_CLIENT_ID_BYTES: usize = 256;
/// Longest `jti`.
pub const MAX_JTI_BYTES: usize = 128;

/// Claims that have a typed field; everything else lands in [`AccessClaims::extra`].
pub const REGISTERED: [&str; 11] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "scope",
    "roles",
    "client_id",
    "sid",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("invalid JSON at line {line}, column {column}")]
    Syntax { line: usize, column: usize },
    #[error("duplicate JSON member")]
    DuplicateMember,
    #[error("not a JSON object")]
    NotAnObject,
    #[error("claim {0} has the wrong type")]
    WrongType(&'static str),
    #[error("claim {0} has an invalid value")]
    Invalid(&'static str),
}

/// Parses `bytes` as one JSON object, refusing duplicate members anywhere and trailing data.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ClaimsError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| match e.classify() {
            // The only data error the visitor raises is the duplicate check.
            serde_json::error::Category::Data => ClaimsError::DuplicateMember,
            _ => ClaimsError::Syntax {
                line: e.line(),
                column: e.column(),
            },
        })?;
    match value.0 {
        Value::Object(map) => Ok(map),
        _ => Err(ClaimsError::NotAnObject),
    }
}

/// A JSON value built by a visitor that refuses duplicate object members.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Number::from_f64(v)
            .map(|n| StrictValue(Value::Number(n)))
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom("duplicate member"));
            }
            let StrictValue(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(StrictValue(Value::Object(map)))
    }
}

/// `aud`: one audience or several (RFC 7519 section 4.1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(list) => list.iter().any(|a| a == audience),
        }
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Audience::One(a) => a.serialize(s),
            Audience::Many(list) => list.serialize(s),
        }
    }
}

/// The claims of an access token, each typed but optional: presence is the verifier's policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccessClaims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Option<Audience>,
    pub exp: Option<i64>,
    pub iat: Option<i64>,
    pub nbf: Option<i64>,
    pub jti: Option<String>,
    /// Space-separated, as RFC 8693 section 4.2 defines it; see [`AccessClaims::scopes`].
    pub scope: Option<String>,
    pub roles: Option<Vec<String>>,
    pub client_id: Option<String>,
    /// The session (refresh-token family) the token belongs to; OpenID Connect's `sid`.
    pub sid: Option<String>,
    /// Every other claim, for configurable claim-to-header mapping. Never holds a name of
    /// [`REGISTERED`] after parsing; such names are skipped when serialising.
    pub extra: Map<String, Value>,
}

impl AccessClaims {
    /// Parses a JWT payload: strict JSON object, then typed extraction.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ClaimsError> {
        Self::from_object(parse_object(bytes)?)
    }

    pub fn from_object(mut map: Map<String, Value>) -> Result<Self, ClaimsError> {
        Ok(AccessClaims {
            iss: take_string(&mut map, "iss")?,
            sub: take_string(&mut map, "sub")?,
            aud: take_audience(&mut map)?,
            exp: take_date(&mut map, "exp")?,
            iat: take_date(&mut map, "iat")?,
            nbf: take_date(&mut map, "nbf")?,
            jti: take_string(&mut map, "jti")?,
            scope: take_string(&mut map, "scope")?,
            roles: take_strings(&mut map, "roles")?,
            client_id: take_string(&mut map, "client_id")?,
            sid: take_string(&mut map, "sid")?,
            extra: map,
        })
    }

    /// The scopes of `scope`, split on single spaces. Empty items (leading, trailing or doubled
    /// spaces) are an error rather than silently dropped.
    pub fn scopes(&self) -> Result<Vec<String>, ClaimsError> {
        match self.scope.as_deref() {
            None | Some("") => Ok(Vec::new()),
            Some(s) => s
                .split(' ')
                .map(|item| {
                    if item.is_empty() {
                        Err(ClaimsError::Invalid("scope"))
                    } else {
                        Ok(item.to_owned())
                    }
                })
                .collect(),
        }
    }
}

impl Serialize for AccessClaims {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        let strings = [
            ("iss", &self.iss),
            ("sub", &self.sub),
            ("jti", &self.jti),
            ("scope", &self.scope),
            ("client_id", &self.client_id),
            ("sid", &self.sid),
        ];
        if let Some(aud) = &self.aud {
            map.serialize_entry("aud", aud)?;
        }
        for (name, value) in [("exp", self.exp), ("iat", self.iat), ("nbf", self.nbf)] {
            if let Some(v) = value {
                map.serialize_entry(name, &v)?;
            }
        }
        for (name, value) in strings {
            if let Some(v) = value {
                map.serialize_entry(name, v)?;
            }
        }
        if let Some(roles) = &self.roles {
            map.serialize_entry("roles", roles)?;
        }
        for (name, value) in &self.extra {
            if !REGISTERED.contains(&name.as_str()) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

fn take_string(
    map: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, ClaimsError> {
    match map.remove(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ClaimsError::WrongType(name)),
    }
}

/// NumericDate as an integer that fits i64; fractions, strings and booleans are wrong types.
fn take_date(map: &mut Map<String, Value>, name: &'static str) -> Result<Option<i64>, ClaimsError> {
    match map.remove(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(ClaimsError::WrongType(name)),
        Some(_) => Err(ClaimsError::WrongType(name)),
    }
}

fn take_strings(
    map: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<Vec<String>>, ClaimsError> {
    match map.remove(name) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(ClaimsError::WrongType(name)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ClaimsError::WrongType(name)),
    }
}

fn take_audience(map: &mut Map<String, Value>) -> Result<Option<Audience>, ClaimsError> {
    match map.get("aud") {
        None => Ok(None),
        Some(Value::String(_)) => Ok(take_string(map, "aud")?.map(Audience::One)),
        Some(Value::Array(_)) => Ok(take_strings(map, "aud")?.map(Audience::Many)),
        Some(_) => Err(ClaimsError::WrongType("aud")),
    }
}

/// True when `value` can be placed in an HTTP header (or a comma-joined list of them) as is:
/// 1 to `max_len` bytes of visible ASCII (0x21..=0x7E), none of them `,`, `"` or `\`.
pub fn is_header_safe(value: &str, max_len: usize) -> bool {
    !value.is_empty()
        && value.len() <= max_len
        && value
            .bytes()
            .all(|b| (0x21..=0x7E).contains(&b) && !matches!(b, b',' | b'"' | b'\\'))
}

/// The rules both minting and verification apply to the values that become identity headers.
pub fn check_identity_values(
    sub: &str,
    roles: &[String],
    scopes: &[String],
    client_id: Option<&str>,
) -> Result<(), ClaimsError> {
    if !is_header_safe(sub, MAX_SUB_BYTES) {
        return Err(ClaimsError::Invalid("sub"));
    }
    if roles.len() > MAX_ROLES || !roles.iter().all(|r| is_header_safe(r, MAX_ROLE_BYTES)) {
        return Err(ClaimsError::Invalid("roles"));
    }
    if scopes.len() > MAX_SCOPES || !scopes.iter().all(|s| is_header_safe(s, MAX_ROLE_BYTES)) {
        return Err(ClaimsError::Invalid("scope"));
    }
    if client_id.is_some_and(|c| !is_header_safe(c, MAX_CLIENT_ID_BYTES)) {
        return Err(ClaimsError::Invalid("client_id"));
    }
    Ok(())
}

/// Why a role or scope list can never be put in a token, named for the operator who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountValueError {
    #[error(
        "{kind} {value:?} must be 1-{MAX_ROLE_BYTES} printable ASCII characters without spaces, `,`, `\"` or `\\`"
    )]
    Unsafe { kind: &'static str, value: String },
    #[error("at most {max} {kind}s fit in a token, got {got}")]
    TooMany {
        kind: &'static str,
        max: usize,
        got: usize,
    },
}

/// The one check every edge that stores roles or scopes applies (`user add`/`update`, import,
/// the `[auth]` defaults that registration grants): exactly what [`check_identity_values`]
/// demands at minting, so a stored account can always log in.
pub fn check_account_values(roles: &[String], scopes: &[String]) -> Result<(), AccountValueError> {
    for (kind, list, max) in [("role", roles, MAX_ROLES), ("scope", scopes, MAX_SCOPES)] {
        if list.len() > max {
            return Err(AccountValueError::TooMany {
                kind,
                max,
                got: list.len(),
            });
        }
        if let Some(bad) = list.iter().find(|v| !is_header_safe(v, MAX_ROLE_BYTES)) {
            return Err(AccountValueError::Unsafe {
                kind,
                value: bad.clone(),
            });
        }
    }
    Ok(())
}

/// Who a verified access token speaks for; what the pipeline turns into identity headers.
/// `sub`, every role and every scope passed [`is_header_safe`]. `extra` holds the unregistered
/// claims unchecked: a mapping that puts one into a header must validate it there.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub sub: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub issuer: String,
    pub exp: i64,
    /// When the token was issued: a user's sessions cut at a later time refuse it.
    pub iat: i64,
    pub jti: Option<String>,
    /// The session the token belongs to (see [`AccessClaims::sid`]).
    pub sid: Option<String>,
    pub client_id: Option<String>,
    pub extra: Map<String, Value>,
    /// `sub`, `roles` and `scopes` as header values, rendered once from the fields above.
    pub values: IdentityValues,
}

/// An identity's user, roles and scopes as header values. Rendered once per verified token: a
/// cached identity is injected into every later request that presents the same token. A value
/// that cannot be a header value is `None` (never, once [`check_identity_values`] passed).
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityValues {
    pub user: Option<HeaderValue>,
    /// The roles joined with ','.
    pub roles: Option<HeaderValue>,
    /// The scopes joined with ','.
    pub scopes: Option<HeaderValue>,
}

impl IdentityValues {
    pub fn render(sub: &str, roles: &[String], scopes: &[String]) -> Self {
        Self {
            user: HeaderValue::from_str(sub).ok(),
            roles: HeaderValue::from_str(&roles.join(",")).ok(),
            scopes: HeaderValue::from_str(&scopes.join(",")).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_top_level_member_is_rejected() {
        let err = parse_object(br#"{"sub":"alice","sub":"admin"}"#).unwrap_err();
        assert_eq!(err, ClaimsError::DuplicateMember);
    }

    #[test]
    fn duplicate_unregistered_and_nested_members_are_rejected() {
        assert_eq!(
            parse_object(br#"{"sub":"a","x":1,"x":2}"#).unwrap_err(),
            ClaimsError::DuplicateMember
        );
        assert_eq!(
            parse_object(br#"{"sub":"a","o":{"k":1,"k":1}}"#).unwrap_err(),
            ClaimsError::DuplicateMember
        );
        assert_eq!(
            parse_object(br#"{"a":[{"k":1,"k":2}]}"#).unwrap_err(),
            ClaimsError::DuplicateMember
        );
    }

    #[test]
    fn escaped_duplicate_member_name_is_rejected() {
        // "\u0073ub" is "sub": the comparison happens after unescaping.
        assert_eq!(
            parse_object(br#"{"sub":"alice","\u0073ub":"admin"}"#).unwrap_err(),
            ClaimsError::DuplicateMember
        );
    }

    #[test]
    fn trailing_data_and_non_objects_are_rejected() {
        assert!(matches!(
            parse_object(br#"{"a":1} {"a":2}"#),
            Err(ClaimsError::Syntax { .. })
        ));
        assert!(matches!(
            parse_object(br#"{"a":1}x"#),
            Err(ClaimsError::Syntax { .. })
        ));
        assert_eq!(
            parse_object(br#"["a"]"#).unwrap_err(),
            ClaimsError::NotAnObject
        );
        assert_eq!(
            parse_object(br#""a""#).unwrap_err(),
            ClaimsError::NotAnObject
        );
        assert!(matches!(parse_object(b""), Err(ClaimsError::Syntax { .. })));
        assert!(matches!(
            parse_object(br#"{"a":"\ud800"}"#),
            Err(ClaimsError::Syntax { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_stack_overflow() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_object(deep.as_bytes()),
            Err(ClaimsError::Syntax { .. })
        ));
    }

    #[test]
    fn typed_claims_parse_and_keep_the_rest() {
        let c = AccessClaims::from_json(
            br#"{"iss":"https://gw","sub":"alice","aud":["api","other"],"exp":20,"iat":10,
                "nbf":10,"jti":"j","scope":"read write","roles":["admin"],"client_id":"cli",
                "email":"a@example.com","nested":{"k":[1,2]}}"#,
        )
        .unwrap();
        assert_eq!(c.iss.as_deref(), Some("https://gw"));
        assert_eq!(
            c.aud,
            Some(Audience::Many(vec!["api".into(), "other".into()]))
        );
        assert!(c.aud.as_ref().unwrap().contains("other"));
        assert_eq!((c.exp, c.iat, c.nbf), (Some(20), Some(10), Some(10)));
        assert_eq!(c.scopes().unwrap(), vec!["read", "write"]);
        assert_eq!(c.roles, Some(vec!["admin".to_owned()]));
        assert_eq!(c.extra.len(), 2);
        assert_eq!(c.extra["email"], "a@example.com");
    }

    #[test]
    fn claims_of_the_wrong_type_are_rejected_without_coercion() {
        let cases: [(&str, &str); 12] = [
            (r#"{"exp":"20"}"#, "exp"),
            (r#"{"exp":20.5}"#, "exp"),
            (r#"{"exp":1e3}"#, "exp"),
            (r#"{"exp":18446744073709551615}"#, "exp"),
            (r#"{"iat":true}"#, "iat"),
            (r#"{"nbf":null}"#, "nbf"),
            (r#"{"sub":42}"#, "sub"),
            (r#"{"iss":["a"]}"#, "iss"),
            (r#"{"aud":7}"#, "aud"),
            (r#"{"aud":["a",7]}"#, "aud"),
            (r#"{"roles":"admin"}"#, "roles"),
            (r#"{"roles":["a",{"b":1}]}"#, "roles"),
        ];
        for (json, claim) in cases {
            assert_eq!(
                AccessClaims::from_json(json.as_bytes()).unwrap_err(),
                ClaimsError::WrongType(claim),
                "{json}"
            );
        }
        assert_eq!(
            AccessClaims::from_json(br#"{"scope":["a"]}"#).unwrap_err(),
            ClaimsError::WrongType("scope")
        );
    }

    #[test]
    fn scope_with_empty_items_is_invalid() {
        for scope in ["a  b", " a", "a "] {
            let c = AccessClaims {
                scope: Some(scope.into()),
                ..Default::default()
            };
            assert_eq!(
                c.scopes().unwrap_err(),
                ClaimsError::Invalid("scope"),
                "{scope:?}"
            );
        }
        let none = AccessClaims {
            scope: Some(String::new()),
            ..Default::default()
        };
        assert!(none.scopes().unwrap().is_empty());
    }

    #[test]
    fn header_values_with_separators_controls_or_non_ascii_are_unsafe() {
        for bad in [
            "",
            "a,b",
            "a b",
            "a\r\nX-Admin: 1",
            "a\n",
            "a\t",
            "\"a\"",
            "a\\",
            "é",
            "a\u{0}",
            "\u{7f}",
        ] {
            assert!(!is_header_safe(bad, 64), "{bad:?}");
        }
        assert!(!is_header_safe(&"a".repeat(65), 64));
        assert!(is_header_safe(&"a".repeat(64), 64));
        assert!(is_header_safe("user:read/x-1_2.3@example.com", 64));
    }

    #[test]
    fn identity_values_are_bounded_in_length_and_count() {
        let ok = |s: &str| s.to_owned();
        assert!(check_identity_values("alice", &[ok("r")], &[ok("s")], Some("c")).is_ok());
        assert_eq!(
            check_identity_values(&"a".repeat(MAX_SUB_BYTES + 1), &[], &[], None).unwrap_err(),
            ClaimsError::Invalid("sub")
        );
        let many = vec![ok("r"); MAX_ROLES + 1];
        assert_eq!(
            check_identity_values("a", &many, &[], None).unwrap_err(),
            ClaimsError::Invalid("roles")
        );
        assert_eq!(
            check_identity_values("a", &[], &many, None).unwrap_err(),
            ClaimsError::Invalid("scope")
        );
        assert_eq!(
            check_identity_values("a", &[], &[], Some("c,d")).unwrap_err(),
            ClaimsError::Invalid("client_id")
        );
    }

    #[test]
    fn serialising_never_duplicates_a_registered_claim() {
        let mut extra = Map::new();
        extra.insert("sub".into(), json!("admin"));
        extra.insert("email".into(), json!("a@example.com"));
        let c = AccessClaims {
            sub: Some("alice".into()),
            aud: Some(Audience::One("api".into())),
            exp: Some(5),
            extra,
            ..Default::default()
        };
        let text = serde_json::to_string(&c).unwrap();
        // The strict parser would reject a duplicate; it also proves the round trip.
        let back = AccessClaims::from_json(text.as_bytes()).unwrap();
        assert_eq!(back.sub.as_deref(), Some("alice"));
        assert_eq!(back.aud, Some(Audience::One("api".into())));
        assert_eq!(back.extra.len(), 1);
    }
}
