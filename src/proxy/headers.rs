//! Header hygiene on the proxy path: hop-by-hop removal, identity scrubbing, untrusted forwarding
//! headers, the client address, and the forwarding headers the gateway writes.
//!
//! Order on every request (SECURITY.md, "Headers"):
//! 1. [`remove_hop_by_hop`]: a client's `Connection` header may nominate any field, including
//!    the gateway's own identity headers, so it must run before anything is injected.
//! 2. [`IdentityScrubber::scrub`]: client-sent identity headers and their aliases.
//! 3. [`remove_untrusted_forwarding`] and [`set_forwarding`].
//! 4. Inject the verified identity.
//!
//! Header names are matched on an alias-normalised form (lowercase, `_` and `.` read as `-`)
//! wherever a client could spell a name differently to reach an upstream: CGI-style gateways
//! (PHP, WSGI, Rack) map `X-User`, `X_User` and `X.User` to the same variable.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{
    CONNECTION, CONTENT_LENGTH, FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue, UPGRADE,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::value::{ConfigError, invalid};

/// Why an [`IdentityScrubber`] could not be built from the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("identity header strip prefix is empty: it would remove every header")]
    EmptyStripPrefix,
    #[error("identity header strip prefix {prefix:?} is not a valid header-name prefix")]
    InvalidStripPrefix { prefix: String },
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Fields that are hop-by-hop whatever `Connection` says. RFC 9110 §7.6.1 names Connection,
/// Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade; Trailer describes this hop's
/// chunked framing (RFC 9110 §6.6.2); Proxy-Authenticate and Proxy-Authorization are addressed
/// to the proxy (RFC 9110 §11.7.1, §11.7.2). Any other `proxy-*` field is removed by prefix.
/// Names as bytes: compared on the name's text, which is cheaper than comparing `HeaderName`s.
const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Fields a `Connection` header is not allowed to remove. RFC 9110 §7.6.1 forbids nominating
/// fields meant for all recipients; Host is the request's authority (RFC 9112 §3.2) and
/// Content-Length its framing (RFC 9112 §6.2), so honouring the nomination would only let a
/// client change what the upstream routes on or how it reads the body.
static NOT_NOMINATABLE: [&HeaderName; 2] = [&HOST, &CONTENT_LENGTH];

const HOP_BY_HOP_PREFIX: &[u8] = b"proxy-";

/// Headers some upstream treats as an authoritative statement by the proxy in front of it.
/// The gateway never writes them, so any copy came from the client. Kept in alias-normalised form.
const UNTRUSTED_FORWARDING: &[&str] = &[
    // Client address claims, read for IP allow-lists, rate limits and audit logs (nginx realip,
    // Rails/Rack `remote_ip`, CDN conventions from Akamai and Cloudflare).
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    // Request-URL overrides (IIS URL Rewrite, Symfony, Zend, nginx auth_request): the upstream
    // would serve a different path from the one the gateway authorised.
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    // Path base (Spring ForwardedHeaderFilter, ASP.NET PathBase): rewrites generated links and
    // redirects, and changes which prefix the upstream strips.
    "x-forwarded-prefix",
    // Method tunnelling (Express method-override, ASP.NET, Google APIs): turns the method the
    // gateway authorised, say POST, into DELETE at the upstream.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    // Host, port and scheme reconstruction for absolute URLs: redirect and cache poisoning, or an
    // upstream believing a plain-HTTP request arrived over TLS (Rack, IIS, OWA conventions).
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "x-url-scheme",
    "front-end-https",
    "x-host",
    "x-original-host",
];

/// The forwarding headers [`set_forwarding`] writes, alias-normalised. Only the exact spelling is
/// ever kept; aliases such as `X_Forwarded_For` would reach CGI-style upstreams unchecked.
const WRITTEN_FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// RFC 9110 §7.6.1: removes every header named in `Connection` (all `Connection` lines, comma
/// lists, any case) except Host and Content-Length, then the fixed hop-by-hop set and every
/// `proxy-*` header.
///
/// Returns `Upgrade: websocket` (canonical spelling) only for a WebSocket upgrade request: a
/// `Connection` option `upgrade` and an `Upgrade` field whose only protocol is `websocket`, any
/// case. The proxy re-adds `Connection: upgrade` and the returned `Upgrade` for the tunnel, after
/// checking the method is GET (RFC 6455 §4.1). `h2c` and every other upgrade are dropped.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let connection = ConnectionHeader::read(headers);
    remove_matching_names(headers, |name| connection.is_hop_by_hop(name));
    connection.websocket()
}

/// Stage 3 of the pipeline in one pass over the request's header names: what
/// [`remove_hop_by_hop`], [`remove_untrusted_forwarding`] and [`IdentityScrubber::scrub`] remove
/// one after the other, removed together. Each rule looks at a name alone (the `Connection`
/// options are read first, as [`remove_hop_by_hop`] reads them), so the union is the same set;
/// one pass instead of three, and `Connection` looked up once instead of twice. Returns what
/// [`remove_hop_by_hop`] returns.
pub fn scrub_request(headers: &mut HeaderMap, identity: &IdentityScrubber) -> Option<HeaderValue> {
    let connection = ConnectionHeader::read(headers);
    remove_matching_names(headers, |name| {
        let bytes = name.as_str().as_bytes();
        connection.may_remove(&identity.screen, &identity.prefixes, bytes)
            && (connection.is_hop_by_hop(name)
                || is_untrusted_forwarding(bytes)
                || identity.matches(bytes))
    });
    connection.websocket()
}

/// The same removal for responses. For a 101 the proxy re-adds `Connection: upgrade` and
/// `Upgrade` itself after this runs.
pub fn remove_hop_by_hop_response(headers: &mut HeaderMap) {
    let connection = ConnectionHeader::read(headers);
    remove_matching_names(headers, |name| {
        connection.may_remove(&HOP_BY_HOP_SCREEN, &[], name.as_str().as_bytes())
            && connection.is_hop_by_hop(name)
    });
}

/// The whole names a set of rules matches, by first byte and length: bit `n` of entry `b` is set
/// when one of them starts with `b` and is `n` bytes long (below 64). What [`could_match`]
/// screens on: the lengths alone let most real names through, since the rules' names have
/// nearly every length from 5 to 20.
#[derive(Clone)]
struct NameScreen([u64; 256]);

impl NameScreen {
    const fn of(names: &[&[u8]]) -> Self {
        let mut screen = Self([0; 256]);
        let mut i = 0;
        while i < names.len() {
            screen = screen.and(names[i]);
            i += 1;
        }
        screen
    }

    /// The screen with `name` added (no bit for the empty or long: [`Self::may_be`] lets those
    /// through anyway).
    const fn and(mut self, name: &[u8]) -> Self {
        if !name.is_empty() && name.len() < 64 {
            self.0[name[0] as usize] |= 1 << name.len();
        }
        self
    }

    /// Whether a whole name of the set could be `name` (always, for the empty or long).
    fn may_be(&self, name: &[u8]) -> bool {
        match name.first() {
            Some(&first) if name.len() < 64 => self.0[usize::from(first)] & (1 << name.len()) != 0,
            _ => true,
        }
    }
}

impl std::fmt::Debug for NameScreen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // 256 words of bits say nothing to a reader; the names it was built from are beside it.
        f.debug_struct("NameScreen").finish_non_exhaustive()
    }
}

/// The fixed hop-by-hop names, and `proxy` (see [`is_protocol_alias`]).
const HOP_BY_HOP_SCREEN: NameScreen = NameScreen::of(&HOP_BY_HOP).and(b"proxy");

/// [`HOP_BY_HOP_SCREEN`] and the untrusted forwarding headers: the request pass's fixed names.
const REQUEST_SCREEN: NameScreen = {
    let mut screen = HOP_BY_HOP_SCREEN;
    let mut i = 0;
    while i < UNTRUSTED_FORWARDING.len() {
        screen = screen.and(UNTRUSTED_FORWARDING[i].as_bytes());
        i += 1;
    }
    screen
};

/// Whether some removal rule could match `name`, by what every rule needs: a rule that names a
/// header whole needs its first byte and its length (alias folding maps a byte to a byte, and
/// changes no first byte but `_` and `.`), one that names a prefix needs it at the start, and
/// alias spellings need `_` or `.` (a `HeaderName` is lowercase, so folding changes nothing
/// else). `false` only when none of that holds: the name is kept without the rules' full
/// comparisons, which cost a hundred or more instructions per name. `screen`: every whole name
/// the rules match; `prefixes`: every prefix beside `proxy-`, alias-normalised.
fn could_match(screen: &NameScreen, prefixes: &[Box<[u8]>], name: &[u8]) -> bool {
    screen.may_be(name)
        || name.starts_with(HOP_BY_HOP_PREFIX)
        || prefixes.iter().any(|prefix| name.starts_with(prefix))
        || has_alias_separator(name)
}

/// A map with at most this many names is searched by walking them. The pipeline mostly asks
/// about names a message does not carry (`Authorization` on a public route, `Connection`,
/// `tracestate`, a response's `Location`), and over a message's few headers a walk answers that
/// for a fraction of what hashing the name and probing costs (callgrind: ~140 instructions per
/// miss through the hash).
const WALKED_NAMES: usize = 12;

/// Whether `headers` has `name`: [`HeaderMap::contains_key`], by a walk over a small map's names.
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= WALKED_NAMES {
        headers.keys().any(|key| key == name)
    } else {
        headers.contains_key(name)
    }
}

/// Removes every value of `name`, looking it up through the hash only when [`has`] found it.
pub fn remove_all(headers: &mut HeaderMap, name: &HeaderName) {
    if has(headers, name) {
        headers.remove(name);
    }
}

/// What a message's `Connection` lines say, read before anything is removed (`Connection` itself
/// is hop-by-hop).
struct ConnectionHeader {
    /// The names it nominates, minus the ones that may not be nominated.
    nominated: Vec<HeaderName>,
    /// Whether the message is a WebSocket upgrade (see [`remove_hop_by_hop`]).
    websocket: bool,
}

impl ConnectionHeader {
    fn read(headers: &HeaderMap) -> Self {
        // Most messages carry no `Connection`: one lookup, and nothing else to read.
        if !has(headers, &CONNECTION) {
            return Self {
                nominated: Vec::new(),
                websocket: false,
            };
        }
        Self {
            nominated: connection_nominated(headers),
            websocket: connection_has_upgrade(headers) && upgrade_is_only_websocket(headers),
        }
    }

    /// Hop-by-hop on this message: nominated, in the fixed set, `proxy-*`, or an alias spelling
    /// of a protocol name.
    fn is_hop_by_hop(&self, name: &HeaderName) -> bool {
        let bytes = name.as_str().as_bytes();
        HOP_BY_HOP.contains(&bytes)
            || bytes.starts_with(HOP_BY_HOP_PREFIX)
            || is_protocol_alias(bytes)
            || self.nominated.contains(name)
    }

    /// Whether `name` needs the full comparisons: [`could_match`] says so, or the `Connection`
    /// lines nominate something (nominated names are compared whole, any length).
    fn may_remove(&self, screen: &NameScreen, prefixes: &[Box<[u8]>], name: &[u8]) -> bool {
        !self.nominated.is_empty() || could_match(screen, prefixes, name)
    }

    fn websocket(&self) -> Option<HeaderValue> {
        self.websocket
            .then(|| HeaderValue::from_static("websocket"))
    }
}

/// Names with protocol meaning that must reach an upstream only in their one true spelling.
/// CGI-style upstreams fold `_` and `.` into `-` (and WSGI/CGI turn `Proxy` into `HTTP_PROXY`,
/// "httpoxy"), so `Content_Length` would become a second Content-Length there and `Proxy` an
/// outbound proxy setting.
const PROTOCOL_NAMES: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
];

/// `Proxy` itself, any `proxy-*` alias, or an alias spelling (with `_` or `.`) of a protocol name.
fn is_protocol_alias(name: &[u8]) -> bool {
    if name == b"proxy" {
        return true;
    }
    if !has_alias_separator(name) {
        return false;
    }
    let folded = alias_normalise(name);
    folded.starts_with(HOP_BY_HOP_PREFIX) || PROTOCOL_NAMES.iter().any(|p| **p == *folded)
}

/// Removes client-sent identity headers before routing. Built once from config.
#[derive(Debug, Clone)]
pub struct IdentityScrubber {
    /// Alias-normalised exact names.
    names: Vec<Box<[u8]>>,
    /// Alias-normalised prefixes, never empty.
    prefixes: Vec<Box<[u8]>>,
    /// `names` and the request pass's fixed names ([`REQUEST_SCREEN`]), for [`scrub_request`].
    screen: Box<NameScreen>,
}

impl IdentityScrubber {
    /// `names`: every header the gateway may inject (x-user, x-user-roles, x-user-scopes, plus
    /// mapped ones); `strip_prefixes`: configured prefixes such as "x-auth-". Both are matched on
    /// the alias-normalised form, so `X_User`, `x.user` and `X-USER` all match `x-user`.
    ///
    /// An empty prefix (it would strip every header) or one that cannot start a header name is a
    /// configuration error.
    pub fn new(names: &[HeaderName], strip_prefixes: &[String]) -> Result<Self, HeaderError> {
        let names: Vec<Box<[u8]>> = names
            .iter()
            .map(|name| alias_normalise(name.as_str().as_bytes()))
            .collect();
        let prefixes = strip_prefixes
            .iter()
            .map(|prefix| {
                if prefix.is_empty() {
                    Err(HeaderError::EmptyStripPrefix)
                } else if HeaderName::from_bytes(prefix.as_bytes()).is_err() {
                    Err(HeaderError::InvalidStripPrefix {
                        prefix: prefix.clone(),
                    })
                } else {
                    Ok(alias_normalise(prefix.as_bytes()))
                }
            })
            .collect::<Result<_, _>>()?;
        let screen = names
            .iter()
            .fold(REQUEST_SCREEN, |screen, name| screen.and(name));
        Ok(Self {
            names,
            prefixes,
            screen: Box::new(screen),
        })
    }

    /// Removes every matching header: all values, empty ones too. Allocates nothing when no
    /// header matches.
    pub fn scrub(&self, headers: &mut HeaderMap) {
        remove_matching(headers, |name| self.matches(name));
    }

    fn matches(&self, name: &[u8]) -> bool {
        self.names.iter().any(|own| alias_eq(name, own))
            || self.prefixes.iter().any(|prefix| {
                name.get(..prefix.len())
                    .is_some_and(|head| alias_eq(head, prefix))
            })
    }
}

/// Default `X-User` header fed from `sub`.
pub const DEFAULT_USER_HEADER: &str = "x-user";
/// Default header fed from `roles`.
pub const DEFAULT_ROLES_HEADER: &str = "x-user-roles";
/// Default header fed from `scope`.
pub const DEFAULT_SCOPES_HEADER: &str = "x-user-scopes";

/// The `[auth.identity_headers]` section as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentityHeaders {
    pub user: String,
    pub roles: String,
    pub scopes: String,
    /// Extra header name -> claim name.
    pub claims: BTreeMap<String, String>,
    /// Client headers starting with one of these prefixes are removed too.
    pub strip_prefixes: Vec<String>,
}

impl Default for RawIdentityHeaders {
    fn default() -> Self {
        Self {
            user: DEFAULT_USER_HEADER.into(),
            roles: DEFAULT_ROLES_HEADER.into(),
            scopes: DEFAULT_SCOPES_HEADER.into(),
            claims: Default::default(),
            strip_prefixes: Vec::new(),
        }
    }
}

/// Which headers carry the verified identity upstream.
#[derive(Clone, Debug)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub roles: HeaderName,
    pub scopes: HeaderName,
    /// Extra header -> claim name, in a stable order.
    pub claims: Vec<(HeaderName, String)>,
    /// Lowercase prefixes with `_`/`.` folded to `-`.
    pub strip_prefixes: Vec<String>,
}

impl IdentityHeaders {
    /// Every header the gateway may inject.
    pub fn all_names(&self) -> Vec<HeaderName> {
        let mut names = vec![self.user.clone(), self.roles.clone(), self.scopes.clone()];
        names.extend(self.claims.iter().map(|(h, _)| h.clone()));
        names
    }
}

/// Longest claim name a header may be mapped from.
const MAPPABLE_CLAIM_MAX: usize = 64;

impl RawIdentityHeaders {
    pub fn validate(self) -> Result<IdentityHeaders, ConfigError> {
        let user = injectable_header("auth.identity_headers.user", &self.user)?;
        let roles = injectable_header("auth.identity_headers.roles", &self.roles)?;
        let scopes = injectable_header("auth.identity_headers.scopes", &self.scopes)?;
        let mut claims = Vec::new();
        for (header, claim) in self.claims {
            let key = format!("auth.identity_headers.claims.{header}");
            let name = injectable_header(&key, &header)?;
            if claim.is_empty() || claim.len() > MAPPABLE_CLAIM_MAX {
                return Err(invalid(key, "claim name must be 1-64 characters"));
            }
            claims.push((name, claim));
        }
        let mut seen = HashSet::new();
        for name in [&user, &roles, &scopes]
            .into_iter()
            .chain(claims.iter().map(|(h, _)| h))
        {
            if !seen.insert(fold_header(name.as_str())) {
                return Err(invalid(
                    "auth.identity_headers",
                    format!("header {name} is mapped twice (names compare with _ and . as -)"),
                ));
            }
        }
        let mut strip_prefixes = Vec::new();
        for prefix in self.strip_prefixes {
            if prefix.is_empty() || !prefix.bytes().all(is_tchar) {
                return Err(invalid(
                    "auth.identity_headers.strip_prefixes",
                    format!("{prefix:?} is not a header-name prefix"),
                ));
            }
            strip_prefixes.push(fold_header(&prefix));
        }
        Ok(IdentityHeaders {
            user,
            roles,
            scopes,
            claims,
            strip_prefixes,
        })
    }
}

/// Header names the gateway must never be told to inject: they carry protocol meaning.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "set-cookie",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

fn injectable_header(key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(key, format!("{name:?} is not a header name")))?;
    let folded = fold_header(parsed.as_str());
    if RESERVED_HEADERS.contains(&folded.as_str()) || folded.starts_with("proxy-") {
        return Err(invalid(
            key,
            format!("{name} is reserved and cannot carry identity"),
        ));
    }
    Ok(parsed)
}

/// [`alias_byte`] over a name, as text: how configured names are compared with each other.
fn fold_header(name: &str) -> String {
    name.bytes().map(|b| char::from(alias_byte(b))).collect()
}

/// Removes headers a client must never be trusted on, in any alias spelling (see
/// `UNTRUSTED_FORWARDING` for why each one is dangerous): x-real-ip, x-client-ip,
/// true-client-ip, cf-connecting-ip, x-original-url, x-rewrite-url, x-original-uri,
/// x-forwarded-prefix, x-http-method-override, x-http-method, x-method-override,
/// x-original-method, x-forwarded-server, x-forwarded-port, x-forwarded-scheme, x-forwarded-ssl,
/// x-forwarded-protocol, x-url-scheme, front-end-https, x-host, x-original-host.
/// X-Forwarded-For/-Proto/-Host and Forwarded are rewritten by [`set_forwarding`] instead.
pub fn remove_untrusted_forwarding(headers: &mut HeaderMap) {
    remove_matching(headers, is_untrusted_forwarding);
}

/// Whether `name` is one of `UNTRUSTED_FORWARDING` in any alias spelling.
fn is_untrusted_forwarding(name: &[u8]) -> bool {
    UNTRUSTED_FORWARDING
        .iter()
        .any(|untrusted| alias_eq(name, untrusted.as_bytes()))
}

/// Whether the client reached a trusted proxy in front of the gateway over TLS: one
/// `X-Forwarded-Proto: https` from a peer in `trusted`. Anyone else's claim is ignored.
pub fn forwarded_https(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> bool {
    if !is_trusted(peer.to_canonical(), trusted) {
        return false;
    }
    let mut values = headers.get_all(&X_FORWARDED_PROTO).iter();
    match (values.next(), values.next()) {
        (Some(proto), None) => proto.as_bytes().trim_ascii().eq_ignore_ascii_case(b"https"),
        _ => false,
    }
}

/// The client address: the socket peer, unless the peer is in `trusted`; then X-Forwarded-For
/// is walked from the right and the right-most address that is not trusted is returned. If every
/// hop is trusted, the left-most; an unparsable entry stops the walk and the last good address is
/// used. Empty list elements are skipped (RFC 9110 §5.6.1).
///
/// IPv4-mapped IPv6 addresses (a dual-stack socket's `::ffff:192.0.2.1`) are returned and
/// compared as IPv4, so one client has one address for limits and IPv4 CIDRs match.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let entries = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|&byte| byte == b','))
        .map(trim_ows)
        .filter(|entry| !entry.is_empty());
    let mut client = peer;
    for entry in entries {
        let Some(hop) = parse_forwarded_for_entry(entry) else {
            break;
        };
        client = hop;
        if !is_trusted(hop, trusted) {
            break;
        }
    }
    client
}

/// What the gateway knows about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The socket peer.
    pub peer: IpAddr,
    /// Proxies whose forwarding headers are kept and extended rather than replaced.
    pub trusted_proxies: &'a [IpNet],
    /// "http" or "https": the scheme the client used to reach the gateway.
    pub proto: &'static str,
    /// The request's authority (Host), if it had one.
    pub host: Option<&'a HeaderValue>,
}

/// Writes the forwarding headers.
///
/// - X-Forwarded-For: an untrusted peer's value is replaced by the peer alone; a trusted peer's
///   chain is kept (all lines joined, RFC 9110 §5.3) and the peer appended.
/// - X-Forwarded-Proto, X-Forwarded-Host: a trusted peer's values are kept; otherwise replaced by
///   ours (X-Forwarded-Host removed when there is no valid host).
/// - Forwarded (RFC 7239 §4): `for=...;proto=...;host=...`, IPv6 nodes quoted and bracketed
///   (`for="[2001:db8::1]"`, §6), values that are not tokens quoted (§4). A trusted peer's
///   elements are kept and ours appended; otherwise replaced.
///
/// Alias spellings of these four (`X_Forwarded_For`, `x.forwarded.host`, ...) are always removed.
pub fn set_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let peer = f.peer.to_canonical();
    let trusted = is_trusted(peer, f.trusted_proxies);
    // Names are lowercase, so only a name with `_` or `.` can be another spelling of one of ours.
    remove_matching(headers, |name| {
        has_alias_separator(name)
            && WRITTEN_FORWARDING
                .iter()
                .any(|written| name != written.as_bytes() && alias_eq(name, written.as_bytes()))
    });

    let mut peer_text = IpText::default();
    peer_text.write(peer);
    append_or_replace(headers, &X_FORWARDED_FOR, trusted, peer_text.as_bytes());
    keep_or_replace(
        headers,
        &X_FORWARDED_PROTO,
        trusted,
        Some(HeaderValue::from_static(f.proto)),
    );
    keep_or_replace(headers, &X_FORWARDED_HOST, trusted, f.host.cloned());
    let element = forwarded_element(peer, &peer_text, f.proto, f.host);
    if trusted && headers.contains_key(&FORWARDED) {
        append_or_replace(headers, &FORWARDED, trusted, &element);
    } else {
        // The element's own buffer becomes the value: no second copy (the usual request, from
        // an untrusted peer, sends none of its own).
        match HeaderValue::from_maybe_shared(bytes::Bytes::from(element)) {
            Ok(value) => {
                headers.insert(&FORWARDED, value);
            }
            Err(_) => {
                headers.remove(&FORWARDED);
            }
        }
    }
}

/// An address's text form, written without the formatting machinery (this runs on every request:
/// `Ipv4Addr`'s `Display` cost more than the rest of [`set_forwarding`] together).
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            buf: [0; 45],
            len: 0,
        }
    }
}

impl IpText {
    fn write(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut rest = &mut self.buf[..];
                // 45 bytes hold the longest form (IPv4-mapped with every group written out).
                if write!(rest, "{v6}").is_ok() {
                    self.len = 45 - rest.len();
                }
            }
        }
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Removes every header whose name satisfies `doomed`. Allocates only when something matches.
fn remove_matching(headers: &mut HeaderMap, doomed: impl Fn(&[u8]) -> bool) {
    remove_matching_names(headers, |name| doomed(name.as_str().as_bytes()));
}

/// [`remove_matching`] on the `HeaderName`s.
fn remove_matching_names(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| doomed(name))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

/// Header names listed in `Connection`, minus the ones that may not be nominated.
fn connection_nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    connection_options(headers)
        .filter_map(|option| HeaderName::from_bytes(option).ok())
        .filter(|name| !NOT_NOMINATABLE.contains(&name))
        .collect()
}

/// The connection options of every `Connection` line (RFC 9110 §7.6.1), empty elements skipped.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    list_elements(headers, &CONNECTION)
}

fn list_elements<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    connection_options(headers).any(|option| option.eq_ignore_ascii_case(b"upgrade"))
}

/// Whether `Upgrade` (RFC 9110 §7.8) offers exactly one protocol and it is `websocket`. A list
/// such as `websocket, h2c` is refused: the gateway tunnels nothing but WebSocket.
fn upgrade_is_only_websocket(headers: &HeaderMap) -> bool {
    let mut protocols = list_elements(headers, &UPGRADE);
    matches!(
        (protocols.next(), protocols.next()),
        (Some(protocol), None) if protocol.eq_ignore_ascii_case(b"websocket")
    )
}

/// Optional whitespace around list elements (RFC 9110 §5.6.3).
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The form header names are compared in: lowercase, `_` and `.` read as `-`.
/// Whether `name` has a byte that [`alias_byte`] folds into `-`: only such a name can be
/// another spelling of one the rules name. Eight bytes at a time, as one word each (a header
/// name is a few words long, and this runs on every name of every request; memchr's `memchr2`
/// counted more instructions here than a byte loop, its vector set-up outweighing names this
/// short).
fn has_alias_separator(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether some byte of `word` is zero (exact, for whether; not for which).
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let separator = |word: u64| {
        zero_byte(word ^ u64::from_ne_bytes([b'_'; 8]))
            || zero_byte(word ^ u64::from_ne_bytes([b'.'; 8]))
    };
    let mut chunks = name.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        if separator(u64::from_ne_bytes(word)) {
            return true;
        }
    }
    // The tail padded with zero bytes, which are neither separator.
    let rest = chunks.remainder();
    let mut word = [0; 8];
    word[..rest.len()].copy_from_slice(rest);
    separator(u64::from_ne_bytes(word))
}

fn alias_byte(byte: u8) -> u8 {
    match byte {
        b'_' | b'.' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

fn alias_normalise(name: &[u8]) -> Box<[u8]> {
    name.iter().copied().map(alias_byte).collect()
}

/// Correlates a request across the gateway's log, the upstream and the client.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The id a trusted proxy assigned (when well-formed), or a fresh random one. A client's own
/// value is never trusted: it would let one client spoof another's log lines.
pub fn request_id(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> HeaderValue {
    let from_proxy = trusted.iter().any(|net| net.contains(&peer));
    if from_proxy
        && let Some(v) = headers.get(&X_REQUEST_ID)
        && (1..=128).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    {
        return v.clone();
    }
    let bytes = random_id_bytes();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// 16 bytes from the system CSPRNG for one request id (or trace and span id). The generator is asked for a block of ids
/// at a time per thread: per call, its fixed cost was most of the id's cost.
pub fn random_id_bytes() -> [u8; 16] {
    const IDS_PER_FILL: usize = 64;
    thread_local! {
        static POOL: std::cell::RefCell<([u8; 16 * IDS_PER_FILL], usize)> =
            const { std::cell::RefCell::new(([0; 16 * IDS_PER_FILL], IDS_PER_FILL)) };
    }
    POOL.with_borrow_mut(|(block, next)| {
        if *next == IDS_PER_FILL {
            if aws_lc_rs::rand::fill(block).is_err() {
                // The DRBG never fails in practice; a constant id beats no response.
                *block = [0; 16 * IDS_PER_FILL];
            }
            *next = 0;
        }
        let mut id = [0; 16];
        id.copy_from_slice(&block[*next * 16..][..16]);
        *next += 1;
        id
    })
}

#[cfg(test)]
mod protocol_alias_tests {
    use super::*;

    #[test]
    fn framing_and_proxy_aliases_are_removed_but_the_real_names_kept() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-length", "5"),
            ("content_length", "500"),
            ("content.length", "500"),
            ("transfer_encoding", "chunked"),
            ("proxy", "http://evil"),
            ("proxy_authorization", "Basic x"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-kept", "1"),
            ("x_kept_too", "1"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-length", "x-kept", "x_kept_too"]);
    }
}

/// Whether `name` is an alias spelling of `normalised` (already in alias-normalised form).
fn alias_eq(name: &[u8], normalised: &[u8]) -> bool {
    name.len() == normalised.len()
        && name
            .iter()
            .zip(normalised)
            .all(|(&byte, &want)| alias_byte(byte) == want)
}

/// Whether `ip` lies in one of the `trusted` blocks (callers pass it through `to_canonical`).
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// An X-Forwarded-For entry: a bare address, or with a port as some proxies write it
/// (`192.0.2.1:443`, `[2001:db8::1]:443`), or a bracketed IPv6 address.
fn parse_forwarded_for_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            let inner = text.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// Sets `name` to `ours`, or for a trusted peer appends `ours` to its existing list.
fn append_or_replace(headers: &mut HeaderMap, name: &HeaderName, trusted: bool, ours: &[u8]) {
    let mut joined = Vec::new();
    // Only a trusted proxy's list is kept; anything else is replaced by ours alone.
    if trusted {
        for existing in headers.get_all(name) {
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
        }
    }
    // Existing values were valid and `ours` is built from valid bytes; should the joined value
    // still be refused, ours alone is the safe fallback.
    let value = if joined.is_empty() {
        HeaderValue::from_bytes(ours)
    } else {
        joined.extend_from_slice(ours);
        HeaderValue::from_bytes(&joined).or_else(|_| HeaderValue::from_bytes(ours))
    };
    match value {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Keeps a trusted peer's `name`; otherwise sets it to `ours`, or removes it when there is none.
fn keep_or_replace(
    headers: &mut HeaderMap,
    name: &HeaderName,
    trusted: bool,
    ours: Option<HeaderValue>,
) {
    if trusted && headers.contains_key(name) {
        return;
    }
    match ours {
        Some(value) => {
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// One RFC 7239 forwarded-element describing this hop.
fn forwarded_element(
    peer: IpAddr,
    peer_text: &IpText,
    proto: &str,
    host: Option<&HeaderValue>,
) -> Vec<u8> {
    let mut element = Vec::with_capacity(64);
    element.extend_from_slice(b"for=");
    match peer {
        IpAddr::V4(_) => element.extend_from_slice(peer_text.as_bytes()),
        // RFC 7239 §6: an IPv6 node is bracketed, and `[`, `:` are not token characters.
        IpAddr::V6(_) => {
            element.extend_from_slice(b"\"[");
            element.extend_from_slice(peer_text.as_bytes());
            element.extend_from_slice(b"]\"");
        }
    }
    element.extend_from_slice(b";proto=");
    push_token_or_quoted(&mut element, proto.as_bytes());
    if let Some(host) = host {
        element.extend_from_slice(b";host=");
        push_token_or_quoted(&mut element, host.as_bytes());
    }
    element
}

/// RFC 7239 §4: `value = token / quoted-string`; `host:port` needs quoting because `:` is not a
/// token character (RFC 9110 §5.6.2), and `"` and `\` inside quotes are escaped (§5.6.4).
fn push_token_or_quoted(out: &mut Vec<u8>, value: &[u8]) {
    if !value.is_empty() && value.iter().copied().all(is_tchar) {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    // Usually nothing needs escaping (a host with a port only needs the quotes).
    if !value.iter().any(|&byte| byte == b'"' || byte == b'\\') {
        out.extend_from_slice(value);
    } else {
        for &byte in value {
            if byte == b'"' || byte == b'\\' {
                out.push(b'\\');
            }
            out.push(byte);
        }
    }
    out.push(b'"');
}

/// RFC 9110 §5.6.2 `tchar`: the bytes of a token (header names, cookie names, unquoted values).
pub(crate) fn is_tchar(byte: u8) -> bool {
    TCHAR[usize::from(byte)]
}

/// [`is_tchar`] by byte: this runs for every byte of every forwarded host.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        byte += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::refusal as err;

    #[test]
    fn alias_separator_is_found_at_every_position_and_no_other_byte_is_taken_for_one() {
        for len in 0..=40 {
            let base = vec![b'a'; len];
            assert!(!has_alias_separator(&base), "{len}");
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut name = base.clone();
                    name[at] = byte;
                    assert_eq!(
                        has_alias_separator(&name),
                        matches!(byte, b'_' | b'.'),
                        "byte {byte} at {at} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn removal_screen_never_keeps_a_name_a_rule_would_remove() {
        let identity = IdentityScrubber::new(
            &[
                HeaderName::from_static("x-user"),
                HeaderName::from_static("x-tenant-id"),
            ],
            &["x-auth-".to_owned()],
        )
        .unwrap();
        let mut names: Vec<Vec<u8>> = Vec::new();
        let ruled = HOP_BY_HOP
            .iter()
            .chain(PROTOCOL_NAMES)
            .copied()
            .chain(UNTRUSTED_FORWARDING.iter().map(|n| n.as_bytes()))
            .chain(WRITTEN_FORWARDING.iter().map(|n| n.as_bytes()))
            .chain([
                &b"x-user"[..],
                b"x-tenant-id",
                b"x-auth-",
                b"proxy-",
                b"proxy",
            ]);
        // Every rule's name, its alias spellings, longer and shorter by a byte, and names
        // sharing its length but not its letters.
        for name in ruled {
            for variant in [
                name.to_vec(),
                name.iter()
                    .map(|&b| if b == b'-' { b'_' } else { b })
                    .collect(),
                name.iter()
                    .map(|&b| if b == b'-' { b'.' } else { b })
                    .collect(),
                [name, b"x"].concat(),
                [name, b"-extra"].concat(),
                name[..name.len() - 1].to_vec(),
                vec![b'q'; name.len()],
            ] {
                names.push(variant);
            }
        }
        names.extend([b"host".to_vec(), b"accept".to_vec(), vec![b'z'; 70]]);
        for name in names {
            let Ok(name) = HeaderName::from_bytes(&name) else {
                continue;
            };
            let bytes = name.as_str().as_bytes();
            let hop = ConnectionHeader {
                nominated: Vec::new(),
                websocket: false,
            };
            let removed = hop.is_hop_by_hop(&name)
                || is_untrusted_forwarding(bytes)
                || identity.matches(bytes);
            if removed {
                assert!(
                    hop.may_remove(&identity.screen, &identity.prefixes, bytes),
                    "{name}"
                );
            }
            if hop.is_hop_by_hop(&name) {
                assert!(hop.may_remove(&HOP_BY_HOP_SCREEN, &[], bytes), "{name}");
            }
        }
    }

    #[test]
    fn name_walk_answers_as_the_hash_does_for_small_and_large_maps() {
        let asked: Vec<HeaderName> = [
            "host",
            "authorization",
            "cookie",
            "connection",
            "tracestate",
            "x-custom",
            "x-custom-2",
            "x-other",
        ]
        .into_iter()
        .map(HeaderName::from_static)
        .collect();
        // Sizes on both sides of the walk's bound, standard and custom names present and not.
        for size in [0, 1, 3, WALKED_NAMES, WALKED_NAMES + 1, 40] {
            let mut headers = HeaderMap::new();
            let names = [HOST, CONNECTION]
                .into_iter()
                .chain((0..).map(|i| HeaderName::try_from(format!("x-custom{}", i + 1)).unwrap()));
            for name in names.take(size) {
                headers.append(name, HeaderValue::from_static("v"));
            }
            if size > 2 {
                headers.append("x-custom-2", HeaderValue::from_static("v"));
            }
            for name in &asked {
                let hashed = headers.contains_key(name);
                assert_eq!(has(&headers, name), hashed, "{name} in {size} names");
                let mut removed = headers.clone();
                remove_all(&mut removed, name);
                assert!(!removed.contains_key(name), "{name} in {size} names");
                assert_eq!(removed.len() + usize::from(hashed), headers.len());
            }
        }
    }

    #[test]
    fn address_text_matches_display_for_every_octet_width_and_ipv6_form() {
        let mut cases: Vec<IpAddr> = [0u8, 7, 9, 10, 42, 99, 100, 199, 255]
            .into_iter()
            .map(|o| IpAddr::from([o, 255 - o, o / 2, 1]))
            .collect();
        cases.extend(
            [
                "::",
                "::1",
                "2001:db8::8a2e:370:7334",
                "fe80::1:2:3:4",
                "::ffff:1.2.3.4",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "0:0:0:0:0:ffff:255.255.255.255",
            ]
            .iter()
            .map(|t| t.parse::<IpAddr>().unwrap()),
        );
        for ip in cases {
            let mut text = IpText::default();
            text.write(ip);
            assert_eq!(text.as_bytes(), ip.to_string().as_bytes(), "{ip}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for &(name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect()
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    fn nets(cidrs: &[&str]) -> Vec<IpNet> {
        cidrs.iter().map(|cidr| cidr.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn scrubber() -> IdentityScrubber {
        let names = ["x-user", "x-user-roles", "x-user-scopes"].map(HeaderName::from_static);
        IdentityScrubber::new(&names, &["x-auth-".to_owned()]).unwrap()
    }

    #[test]
    fn fixed_hop_by_hop_set_and_proxy_prefix_are_removed() {
        let mut headers = map(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-anything", "x"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("authorization", "Bearer t"),
            ("x-proxy-note", "kept: proxy- only as a prefix"),
        ]);
        assert_eq!(remove_hop_by_hop(&mut headers), None);
        assert_eq!(names(&headers), ["accept", "authorization", "x-proxy-note"]);
    }

    #[test]
    fn connection_nominated_headers_are_removed_in_any_case_and_list_form() {
        let mut headers = map(&[
            ("connection", "X-Foo, x-bar"),
            ("connection", " X-BAZ ,, keep-alive\t"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-bar", "3"),
            ("x-baz", ""),
            ("x-kept", "4"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
    }

    #[test]
    fn connection_cannot_nominate_host_or_content_length() {
        let mut headers = map(&[
            ("connection", "host, Content-Length, cookie"),
            ("host", "app.example"),
            ("content-length", "3"),
            ("cookie", "a=b"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["content-length", "host"]);
    }

    #[test]
    fn invalid_connection_options_are_ignored() {
        let mut headers = map(&[("connection", "close, bad token, (x)"), ("x-kept", "1")]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
    }

    #[test]
    fn connection_nominating_identity_header_cannot_remove_injected_one() {
        let client_headers = map(&[
            ("connection", "x-user, X-User-Roles"),
            ("x-user", "mallory"),
            ("x_user_roles", "admin"),
        ]);
        let inject = |headers: &mut HeaderMap| {
            headers.insert("x-user", HeaderValue::from_static("alice"));
            headers.insert("x-user-roles", HeaderValue::from_static("reader"));
        };

        // The pipeline's order: hop-by-hop, then scrub, then inject.
        let mut headers = client_headers.clone();
        remove_hop_by_hop(&mut headers);
        scrubber().scrub(&mut headers);
        inject(&mut headers);
        assert_eq!(values(&headers, "x-user"), ["alice"]);
        assert_eq!(values(&headers, "x-user-roles"), ["reader"]);
        assert_eq!(names(&headers), ["x-user", "x-user-roles"]);

        // Why the order matters: injecting before hop-by-hop removal lets the client's
        // `Connection` delete the gateway's own identity headers.
        let mut headers = client_headers;
        scrubber().scrub(&mut headers);
        inject(&mut headers);
        remove_hop_by_hop(&mut headers);
        assert!(headers.get("x-user").is_none());
        assert!(headers.get("x-user-roles").is_none());
    }

    #[test]
    fn h2c_upgrade_is_dropped() {
        let mut headers = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("accept", "*/*"),
        ]);
        assert_eq!(remove_hop_by_hop(&mut headers), None);
        assert_eq!(names(&headers), ["accept"]);
    }

    #[test]
    fn websocket_upgrade_is_returned() {
        for (connection, upgrade) in [
            ("Upgrade", "websocket"),
            ("keep-alive, upgrade", "WebSocket"),
            ("UPGRADE", " websocket "),
        ] {
            let mut headers = map(&[
                ("connection", connection),
                ("upgrade", upgrade),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
            ]);
            assert_eq!(
                remove_hop_by_hop(&mut headers),
                Some(HeaderValue::from_static("websocket")),
                "{connection:?} / {upgrade:?}"
            );
            assert_eq!(
                names(&headers),
                ["sec-websocket-key", "sec-websocket-version"]
            );
        }
    }

    #[test]
    fn websocket_upgrade_without_connection_upgrade_is_dropped() {
        let mut headers = map(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert_eq!(remove_hop_by_hop(&mut headers), None);
        let mut headers = map(&[("upgrade", "websocket")]);
        assert_eq!(remove_hop_by_hop(&mut headers), None);
        assert!(headers.is_empty());
    }

    #[test]
    fn h2c_smuggled_beside_websocket_upgrade_is_dropped() {
        for upgrades in [
            &["websocket, h2c"][..],
            &["h2c", "websocket"],
            &["websocket/13x, h2c"],
        ] {
            let mut headers = map(&[("connection", "upgrade")]);
            for upgrade in upgrades {
                headers.append(UPGRADE, HeaderValue::from_str(upgrade).unwrap());
            }
            assert_eq!(remove_hop_by_hop(&mut headers), None, "{upgrades:?}");
            assert!(headers.is_empty());
        }
    }

    #[test]
    fn response_hop_by_hop_and_nominated_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "upgrade, x-internal"),
            ("upgrade", "websocket"),
            ("x-internal", "secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("content-type", "text/plain"),
        ]);
        remove_hop_by_hop_response(&mut headers);
        assert_eq!(names(&headers), ["content-type", "sec-websocket-accept"]);
    }

    #[test]
    fn one_pass_scrub_removes_what_the_three_passes_remove() {
        let client_headers = map(&[
            ("connection", "x-user, X-Foo, upgrade"),
            ("upgrade", "websocket"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-anything", "x"),
            ("content_length", "500"),
            ("x_real_ip", "6.6.6.6"),
            ("X-Original-URL", "/admin"),
            ("x_user", "mallory"),
            ("x-auth-role", "admin"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x_forwarded_for", "127.0.0.2"),
            ("host", "app.example"),
            ("accept", "*/*"),
            ("x-kept", "1"),
        ]);
        let mut one = client_headers.clone();
        let one_upgrade = scrub_request(&mut one, &scrubber());
        let mut three = client_headers;
        let three_upgrade = remove_hop_by_hop(&mut three);
        remove_untrusted_forwarding(&mut three);
        scrubber().scrub(&mut three);
        assert_eq!(one, three);
        assert_eq!(one_upgrade, three_upgrade);
        assert_eq!(one_upgrade, Some(HeaderValue::from_static("websocket")));
        assert_eq!(names(&one), ["accept", "host", "x-forwarded-for", "x-kept"]);
    }

    #[test]
    fn identity_header_aliases_are_scrubbed_in_every_spelling() {
        let mut headers = map(&[
            ("x-user", "mallory"),
            ("X-USER", "mallory2"),
            ("x_user", "mallory3"),
            ("X.User", "mallory4"),
            ("x_user.roles", "admin"),
            ("X-User-Scopes", ""),
            ("x.user_scopes", "write"),
            ("x-username", "kept: different name"),
            ("x-userx", "kept"),
            ("x--user", "kept: doubled separator is another name"),
            ("accept", "*/*"),
        ]);
        scrubber().scrub(&mut headers);
        assert_eq!(
            names(&headers),
            ["accept", "x--user", "x-username", "x-userx"]
        );
    }

    #[test]
    fn identity_header_configured_in_alias_form_still_matches() {
        let names = [HeaderName::from_static("x_tenant.id")];
        let scrubber = IdentityScrubber::new(&names, &[]).unwrap();
        let mut headers = map(&[("x-tenant-id", "evil"), ("X_TENANT_ID", "evil2")]);
        scrubber.scrub(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn identity_prefix_aliases_are_stripped() {
        let scrubber =
            IdentityScrubber::new(&[], &["X_Auth_".to_owned(), "x-jwt.".to_owned()]).unwrap();
        let mut headers = map(&[
            ("x-auth-sub", "mallory"),
            ("X_AUTH_ROLE", "admin"),
            ("x.auth.tenant", "other"),
            ("x-auth-", "empty suffix still has the prefix"),
            ("x-jwt-claim-sub", "mallory"),
            ("x-auth", "kept: no separator after the prefix"),
            ("x-author", "kept"),
            ("accept", "*/*"),
        ]);
        scrubber.scrub(&mut headers);
        assert_eq!(names(&headers), ["accept", "x-auth", "x-author"]);
    }

    #[test]
    fn scrub_without_matches_leaves_headers_untouched() {
        let original = map(&[
            ("accept", "*/*"),
            ("authorization", "Bearer t"),
            ("x-other", ""),
        ]);
        let mut headers = original.clone();
        scrubber().scrub(&mut headers);
        assert_eq!(headers, original);
    }

    #[test]
    fn empty_or_invalid_strip_prefix_is_a_config_error() {
        assert_eq!(
            IdentityScrubber::new(&[], &[String::new()]).unwrap_err(),
            HeaderError::EmptyStripPrefix
        );
        assert_eq!(
            IdentityScrubber::new(&[], &["x auth".to_owned()]).unwrap_err(),
            HeaderError::InvalidStripPrefix {
                prefix: "x auth".to_owned()
            }
        );
    }

    #[test]
    fn untrusted_forwarding_headers_are_removed_in_every_spelling() {
        let mut headers = HeaderMap::new();
        for name in UNTRUSTED_FORWARDING {
            let upper = name.to_ascii_uppercase();
            let underscored = name.replace('-', "_");
            let dotted = name.replace('-', ".");
            for spelling in [name.to_string(), upper, underscored, dotted] {
                headers.append(
                    HeaderName::from_bytes(spelling.as_bytes()).unwrap(),
                    HeaderValue::from_static("spoofed"),
                );
            }
        }
        headers.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.append("accept", HeaderValue::from_static("*/*"));
        remove_untrusted_forwarding(&mut headers);
        assert_eq!(names(&headers), ["accept", "x-forwarded-for"]);
    }

    #[test]
    fn method_override_cannot_reach_upstream() {
        let mut headers = map(&[
            ("X-HTTP-Method-Override", "DELETE"),
            ("x_http_method", "DELETE"),
            ("x-method-override", "PUT"),
        ]);
        remove_untrusted_forwarding(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn original_url_path_override_cannot_reach_upstream() {
        let mut headers = map(&[
            ("X-Original-URL", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x_original_uri", "/admin"),
        ]);
        remove_untrusted_forwarding(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn xff_spoofing_from_untrusted_peer_is_ignored() {
        let headers = map(&[("x-forwarded-for", "127.0.0.1, 10.0.0.1")]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers, &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_chain_yields_rightmost_untrusted_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let cases = [
            // (X-Forwarded-For lines, expected client)
            (&["198.51.100.7"][..], "198.51.100.7"),
            (&["198.51.100.7, 10.0.0.2"], "198.51.100.7"),
            // The client prepended a fake address; the right-most untrusted one wins.
            (&["6.6.6.6, 198.51.100.7, 10.0.0.2"], "198.51.100.7"),
            // Several lines form one list (RFC 9110 §5.3).
            (
                &["6.6.6.6, 198.51.100.7", "10.0.0.3", "10.0.0.2"],
                "198.51.100.7",
            ),
            // Every hop trusted: the left-most.
            (&["10.0.0.9, 10.0.0.2"], "10.0.0.9"),
            // Unparsable entries stop the walk at the last good address.
            (&["198.51.100.7, unknown, 10.0.0.2"], "10.0.0.2"),
            (&["198.51.100.7, _hidden"], "10.0.0.1"),
            // Empty list elements are skipped.
            (&["198.51.100.7,, 10.0.0.2,"], "198.51.100.7"),
            (&[""], "10.0.0.1"),
        ];
        for (lines, want) in cases {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
            }
            assert_eq!(
                client_ip(ip("10.0.0.1"), &headers, &trusted),
                ip(want),
                "{lines:?}"
            );
        }
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_for_ipv6_and_port_forms_are_parsed() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let cases = [
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("198.51.100.7:5678", "198.51.100.7"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
            ("2001:db8::1, fd00::2", "2001:db8::1"),
            ("fe80::1%eth0", "fd00::1"),
        ];
        for (xff, want) in cases {
            let headers = map(&[("x-forwarded-for", xff)]);
            assert_eq!(
                client_ip(ip("fd00::1"), &headers, &trusted),
                ip(want),
                "{xff:?}"
            );
        }
    }

    #[test]
    fn ipv4_mapped_peer_is_matched_against_ipv4_trust_list() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = map(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &headers, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.9"), &headers, &trusted),
            ip("203.0.113.9")
        );
    }

    fn spoofed_forwarding() -> HeaderMap {
        map(&[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.internal"),
            ("forwarded", "for=127.0.0.1;host=admin.internal;proto=https"),
        ])
    }

    #[test]
    fn forwarding_headers_from_untrusted_peer_are_replaced() {
        let mut headers = spoofed_forwarding();
        let trusted = nets(&["10.0.0.0/8"]);
        set_forwarding(
            &mut headers,
            &Forwarding {
                peer: ip("203.0.113.9"),
                trusted_proxies: &trusted,
                proto: "http",
                host: Some(&HeaderValue::from_static("app.example")),
            },
        );
        assert_eq!(values(&headers, "x-forwarded-for"), ["203.0.113.9"]);
        assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["app.example"]);
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=203.0.113.9;proto=http;host=app.example"]
        );
    }

    #[test]
    fn spoofed_forwarded_host_is_removed_when_request_has_no_host() {
        let mut headers = spoofed_forwarding();
        set_forwarding(
            &mut headers,
            &Forwarding {
                peer: ip("203.0.113.9"),
                trusted_proxies: &[],
                proto: "https",
                host: None,
            },
        );
        assert!(headers.get("x-forwarded-host").is_none());
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=203.0.113.9;proto=https"]
        );
    }

    #[test]
    fn trusted_proxy_forwarding_chain_is_extended() {
        let mut headers = map(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
            ("forwarded", "for=198.51.100.7;proto=https"),
        ]);
        let trusted = nets(&["10.0.0.0/8"]);
        set_forwarding(
            &mut headers,
            &Forwarding {
                peer: ip("10.0.0.1"),
                trusted_proxies: &trusted,
                proto: "http",
                host: Some(&HeaderValue::from_static("internal:8080")),
            },
        );
        assert_eq!(
            values(&headers, "x-forwarded-for"),
            ["198.51.100.7, 10.0.0.5, 10.0.0.1"]
        );
        assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["app.example"]);
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=198.51.100.7;proto=https, for=10.0.0.1;proto=http;host=\"internal:8080\""]
        );
    }

    #[test]
    fn trusted_proxy_without_forwarding_headers_gets_ours() {
        let mut headers = HeaderMap::new();
        let trusted = nets(&["10.0.0.0/8"]);
        set_forwarding(
            &mut headers,
            &Forwarding {
                peer: ip("10.0.0.1"),
                trusted_proxies: &trusted,
                proto: "https",
                host: Some(&HeaderValue::from_static("app.example")),
            },
        );
        assert_eq!(values(&headers, "x-forwarded-for"), ["10.0.0.1"]);
        assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["app.example"]);
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=10.0.0.1;proto=https;host=app.example"]
        );
    }

    #[test]
    fn forwarded_ipv6_node_is_quoted_and_bracketed() {
        for (peer, want_for) in [
            ("2001:db8::1", "for=\"[2001:db8::1]\""),
            ("::1", "for=\"[::1]\""),
            // A dual-stack socket's IPv4 client is written as IPv4.
            ("::ffff:192.0.2.1", "for=192.0.2.1"),
        ] {
            let mut headers = HeaderMap::new();
            set_forwarding(
                &mut headers,
                &Forwarding {
                    peer: ip(peer),
                    trusted_proxies: &[],
                    proto: "https",
                    host: Some(&HeaderValue::from_static("[2001:db8::2]:8443")),
                },
            );
            assert_eq!(
                values(&headers, "forwarded"),
                [format!(
                    "{want_for};proto=https;host=\"[2001:db8::2]:8443\""
                )],
                "{peer}"
            );
            let want_xff = ip(peer).to_canonical().to_string();
            assert_eq!(values(&headers, "x-forwarded-for"), [want_xff]);
        }
    }

    #[test]
    fn forwarded_quoted_string_escapes_quote_and_backslash() {
        let mut element = Vec::new();
        push_token_or_quoted(&mut element, br#"a"b\c"#);
        assert_eq!(element, br#""a\"b\\c""#);
        let mut element = Vec::new();
        push_token_or_quoted(&mut element, b"");
        assert_eq!(element, b"\"\"");
    }

    #[test]
    fn forwarding_header_aliases_are_removed_even_from_trusted_peers() {
        let mut headers = map(&[
            ("x_forwarded_for", "127.0.0.1"),
            ("X.Forwarded.Proto", "https"),
            ("x_forwarded_host", "admin.internal"),
            ("FORWARDED", "for=127.0.0.1"),
        ]);
        let trusted = nets(&["10.0.0.0/8"]);
        set_forwarding(
            &mut headers,
            &Forwarding {
                peer: ip("10.0.0.1"),
                trusted_proxies: &trusted,
                proto: "https",
                host: None,
            },
        );
        assert_eq!(
            names(&headers),
            ["forwarded", "x-forwarded-for", "x-forwarded-proto"]
        );
        // `FORWARDED` is the canonical name in another case: HeaderMap already merged it.
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=127.0.0.1, for=10.0.0.1;proto=https"]
        );
        assert_eq!(values(&headers, "x-forwarded-for"), ["10.0.0.1"]);
    }

    #[test]
    fn reserved_identity_header_is_rejected() {
        let e = err("[auth.identity_headers]\nuser = \"Authorization\"\n");
        assert!(e.contains("reserved"), "{e}");
        let e = err("[auth.identity_headers]\nuser = \"x_user_roles\"\n");
        assert!(e.contains("mapped twice"), "{e}");
    }
}
