//! The discovery documents: RFC 8414 authorization server metadata at
//! `/.well-known/oauth-authorization-server` and OpenID Connect Discovery's provider
//! configuration at `/.well-known/openid-configuration`, listing only what the gateway really
//! does.
//!
//! Both name the same endpoints and methods: the token, revocation and introspection endpoints
//! and the JWKS, the grants the token endpoint serves, and how clients authenticate at each.
//! Neither claims what the gateway does not have: there is no authorization endpoint (no
//! browser redirect flow, so no `authorization_endpoint`, no PKCE methods), no ID tokens (no
//! `id_token_signing_alg_values_supported`, no `openid` scope, no `userinfo_endpoint`: `/me`
//! answers the gateway's own JSON, not OpenID claims), no dynamic client registration (the
//! `register` endpoint registers users). The OpenID document exists because many resource-server
//! libraries find an issuer's `jwks_uri` only through it; it is the OAuth document plus the one
//! further member OpenID requires that is true here (`subject_types_supported: ["public"]`:
//! every client sees the same `sub`), and an OpenID Connect client that needs ID tokens learns
//! from the missing members that this provider issues none. `scopes_supported` is left out:
//! scopes belong to users and clients in the store, and no fixed list would be complete.
//!
//! URLs are absolute. With `[auth] public_url` set they are built from it alone
//! ([`AuthConfig::endpoint_url`]) and the document is the same for every request. Without it
//! they are built from the request's own origin, [`RequestOrigin`]: the scheme it arrived over
//! (the TLS listener, or `X-Forwarded-Proto` from a trusted proxy only, as for the session
//! cookie's `Secure`) and its validated `Host`; the answer then carries `Vary: Host,
//! X-Forwarded-Proto`. RFC 8414 clients compare the published `issuer` with the URL they
//! fetched the document from, so an operator who wants them to work sets `public_url` to the
//! HTTPS origin and `[auth] issuer` to the same string.

use serde_json::{Value, json};

use crate::auth::clients::{GRANT_CLIENT_CREDENTIALS, GRANT_PASSWORD};
use crate::auth::paths::Endpoint;
use crate::auth::settings::AuthConfig;
use crate::origin::Origin;

/// The metadata documents' `Cache-Control`: short, so a changed `[auth.paths]` or a new
/// endpoint is seen within minutes, like the JWKS.
pub const METADATA_CACHE_CONTROL: &str = "public, max-age=300";

/// The `Vary` of a document built from the request's origin.
pub const METADATA_VARY: &str = "Host, X-Forwarded-Proto";

/// The signature algorithms a `private_key_jwt` client assertion may use (RFC 7523), at the
/// token and introspection endpoints alike: exactly those the assertion check accepts
/// ([`crate::auth::assertion::ASSERTION_ALGORITHMS`], held to this by a test).
pub const CLIENT_ASSERTION_SIGNING_ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// How clients authenticate at the token endpoint. `none`: a public client's password grant
/// (open unless `[auth] password_grant_clients` is set) and every refresh grant, where the
/// refresh token is the credential.
const TOKEN_AUTH_METHODS_OPEN: [&str; 4] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "none",
];

/// How a client authenticates at the introspection endpoint: always, with a registered
/// client's credentials.
const INTROSPECTION_AUTH_METHODS: [&str; 3] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];

/// The revocation endpoint authenticates no client: the token is the credential (RFC 7009
/// §2.1 allows this for public clients; revoking a token one holds can only help).
const REVOCATION_AUTH_METHODS: [&str; 1] = ["none"];

/// RFC 8414 requires `response_types_supported`, and clients (authlib among them) refuse an
/// empty array. The gateway has no authorization endpoint and so no response type that hands
/// out a credential; `none` is the registered response type that hands out none (OAuth 2.0
/// Multiple Response Type Encoding Practices §4), the one value that claims nothing false.
/// No `authorization_endpoint` is published, so no client is sent anywhere by it.
pub const RESPONSE_TYPES: [&str; 1] = ["none"];

/// The origin a request for a discovery document arrived at: its scheme and its validated
/// `Host`, put in the request's extensions by the pipeline. Used only while `[auth]
/// public_url` is unset.
#[derive(Clone, Debug)]
pub struct RequestOrigin(pub Origin);

/// Which discovery document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Document {
    /// RFC 8414.
    AuthorizationServer,
    /// OpenID Connect Discovery 1.0.
    OpenIdConfiguration,
}

/// The document, its URLs from `public_url` or else `request`; `None` when neither is known.
pub fn document(config: &AuthConfig, request: Option<&Origin>, which: Document) -> Option<Value> {
    let url = |endpoint: Endpoint| {
        config
            .endpoint_url(endpoint)
            .or_else(|| request.map(|origin| format!("{origin}{}", config.paths.path(endpoint))))
    };
    let grants = [GRANT_PASSWORD, "refresh_token", GRANT_CLIENT_CREDENTIALS];
    let mut doc = json!({
        "issuer": config.issuer,
        "token_endpoint": url(Endpoint::Token)?,
        "revocation_endpoint": url(Endpoint::Revoke)?,
        "introspection_endpoint": url(Endpoint::Introspect)?,
        "jwks_uri": url(Endpoint::Jwks)?,
        "grant_types_supported": grants,
        "response_types_supported": RESPONSE_TYPES,
        "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS_OPEN,
        "token_endpoint_auth_signing_alg_values_supported": CLIENT_ASSERTION_SIGNING_ALGS,
        "revocation_endpoint_auth_methods_supported": REVOCATION_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": INTROSPECTION_AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": CLIENT_ASSERTION_SIGNING_ALGS,
    });
    if which == Document::OpenIdConfiguration
        && let Some(map) = doc.as_object_mut()
    {
        map.insert("subject_types_supported".into(), json!(["public"]));
    }
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_published_assertion_algorithms_are_the_accepted_ones() {
        let accepted = crate::auth::assertion::ASSERTION_ALGORITHMS.map(|a| a.name());
        assert_eq!(accepted, CLIENT_ASSERTION_SIGNING_ALGS);
    }

    fn auth(toml: &str) -> AuthConfig {
        Config::from_toml(toml).unwrap().auth
    }

    #[test]
    fn public_url_builds_every_url_and_the_request_origin_is_not_used() {
        let c = auth(
            "[auth]\nissuer = \"https://id.example\"\npublic_url = \"https://id.example\"\n[auth.paths]\ntoken = \"/token\"\nintrospect = \"/oauth/introspect\"\n",
        );
        let evil = Origin::parse("http://evil.example").unwrap();
        let doc = document(&c, Some(&evil), Document::AuthorizationServer).unwrap();
        assert_eq!(doc["issuer"], "https://id.example");
        assert_eq!(doc["token_endpoint"], "https://id.example/token");
        assert_eq!(
            doc["introspection_endpoint"],
            "https://id.example/oauth/introspect"
        );
        assert_eq!(doc["revocation_endpoint"], "https://id.example/auth/revoke");
        assert_eq!(doc["jwks_uri"], "https://id.example/.well-known/jwks.json");
        assert!(doc.get("subject_types_supported").is_none());
        assert!(doc.get("authorization_endpoint").is_none());
    }

    #[test]
    fn without_public_url_the_request_origin_is_the_base_and_nothing_else() {
        let c = auth("");
        let origin = Origin::from_parts("http", "127.0.0.1:8080").unwrap();
        let doc = document(&c, Some(&origin), Document::OpenIdConfiguration).unwrap();
        assert_eq!(doc["token_endpoint"], "http://127.0.0.1:8080/auth/token");
        assert_eq!(doc["subject_types_supported"], json!(["public"]));
        assert!(doc.get("id_token_signing_alg_values_supported").is_none());
        assert_eq!(document(&c, None, Document::AuthorizationServer), None);
    }
}
