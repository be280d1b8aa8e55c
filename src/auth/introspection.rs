//! Token introspection (RFC 7662): whether a token is one the gateway would accept right now,
//! and what it says, for a registered client allowed to ask.
//!
//! Who may ask: a client that authenticates exactly as at the token endpoint
//! ([`Grants::authenticated_client`]: the same methods, the same per-client limit `client:NAME`,
//! charged before the check and given back on success, the same `invalid_client` 401) and is
//! registered for `introspection` (`gatehouse client add NAME --grant introspection`). Any other
//! authenticated client is refused (403): the endpoint tells its caller which tokens are live and
//! whose they are (RFC 7662 §4), which a client that only needs tokens of its own has no business
//! learning. The per-address login budget is not spent: a resource server introspecting every
//! request would run it out, and an unauthenticated caller gets nothing but 401 for a guess at a
//! 256-bit secret.
//!
//! What is active: an access token the gateway's own keys signed and its proxy path would accept
//! now, decided by the same [`Authenticator::verify_access`] (signature, `typ`, issuer,
//! audience, lifetime, then the revocations every request is checked against: revoked `jti`, a
//! revoked session or client epoch `sid`, a user's sessions cut). Everything else answers exactly
//! `{"active": false}`, with no reason: expired, revoked, malformed, signed by a key the gateway
//! does not hold (the trusted issuers' tokens included: they are their issuers' to introspect,
//! and asking about one never makes the gateway fetch a key set), and refresh tokens. A refresh
//! token is a credential for its own client to present at the token endpoint, never to a
//! resource server, so no resource server has a reason to introspect one; saying whether one is
//! live would only help whoever found it. `token_type_hint` is accepted and, as RFC 7662 §2.1
//! allows, does not narrow the search. When the revocations cannot be confirmed (the store
//! silent past `[auth] max_staleness`) the answer is 503, never `active`.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::auth::claims::{Identity, parse_object};
use crate::auth::clients::{self, GRANT_INTROSPECTION};
use crate::auth::grants::{GrantError, Grants, TokenRequest};
use crate::auth::verify::{self, VerifyError};

/// RFC 7662 §2.2's answer for every token that is not active: nothing else is said.
pub fn inactive() -> Value {
    json!({"active": false})
}

/// Introspects `token` for the client `client_auth` authenticates (its client-authentication
/// parameters only; see [`Grants::authenticated_client`]).
pub async fn introspect(
    grants: &Grants,
    client_auth: &TokenRequest<'_>,
    token: Option<&str>,
    addr: IpAddr,
) -> Result<Value, GrantError> {
    let client = grants.authenticated_client(client_auth, addr).await?;
    if !client.grants.iter().any(|g| g == GRANT_INTROSPECTION) {
        return Err(GrantError::IntrospectionDenied);
    }
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(GrantError::InvalidRequest("token is required"))?;
    active(grants, token).await
}

/// The answer for `token`: active with its claims, or [`inactive`].
async fn active(grants: &Grants, token: &str) -> Result<Value, GrantError> {
    let config = grants.config();
    let authenticator = grants.authenticator();
    // Only tokens of the gateway's own keys: a kid they do not hold is another issuer's (or
    // nobody's), and is not sent on to the trusted issuers' verification.
    let own_key = verify::token_kid(token, config.max_token_bytes)
        .is_ok_and(|kid| authenticator.keys().ring.lookup().get(&kid).is_some());
    if !own_key {
        return Ok(inactive());
    }
    let identity = match authenticator.verify_access(token).await {
        Ok(identity) => identity,
        Err(VerifyError::Unconfirmed) => return Err(GrantError::StoreUnavailable),
        Err(_) => return Ok(inactive()),
    };
    if identity.issuer != config.issuer {
        return Ok(inactive());
    }
    // The verified payload, for the members the identity does not keep (`aud`, `nbf`).
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|bytes| parse_object(&bytes).ok())
        .unwrap_or_default();
    Ok(claims_json(&identity, &payload))
}

/// RFC 7662 §2.2's members for an active token.
fn claims_json(identity: &Identity, payload: &Map<String, Value>) -> Value {
    let mut answer = Map::new();
    answer.insert("active".into(), Value::Bool(true));
    answer.insert("sub".into(), identity.sub.clone().into());
    if let Some(client_id) = &identity.client_id {
        answer.insert("client_id".into(), client_id.clone().into());
    }
    if !identity.scopes.is_empty() {
        answer.insert("scope".into(), identity.scopes.join(" ").into());
    }
    for member in ["aud", "nbf"] {
        if let Some(value) = payload.get(member) {
            answer.insert(member.into(), value.clone());
        }
    }
    answer.insert("iss".into(), identity.issuer.clone().into());
    answer.insert("exp".into(), identity.exp.into());
    answer.insert("iat".into(), identity.iat.into());
    if let Some(jti) = &identity.jti {
        answer.insert("jti".into(), jti.clone().into());
    }
    answer.insert("token_type".into(), "Bearer".into());
    // A client's own token carries its epoch as `sid`; every other token of the gateway is a
    // user's (a login, a refresh, a browser session).
    let clients_own = identity.sid.as_deref().is_some_and(clients::is_epoch);
    if !clients_own {
        answer.insert("username".into(), identity.sub.clone().into());
    }
    Value::Object(answer)
}
