//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) for the proxy path, and the
//! `[tracing]` settings; the spans' export over OTLP/HTTP lives in [`export`].
//!
//! Every request gets a [`TraceContext`] before anything else is read:
//! - a valid `traceparent` keeps its trace id; a missing or malformed one (wrong version or
//!   length, a field that is not lowercase hex, an all-zero id, the invalid version `ff`, the
//!   header repeated) starts a new trace. A malformed one is never forwarded, nor is the
//!   `tracestate` that came with it (§3.3: no valid parent, no state).
//! - the gateway is a span of its own: a fresh span id, which the upstream receives as its
//!   parent-id; the caller's parent-id is the gateway span's parent.
//! - the sampled flag is the gateway's decision. From a trusted peer (`[server] trusted_proxies`,
//!   the same peers whose `X-Forwarded-*` and `X-Request-Id` are believed) the caller's flag is
//!   followed (parent-based sampling); from anyone else, and for new traces, the gateway draws
//!   at `[tracing] sampling_ratio` from its own random numbers, never from the trace id a client
//!   chose. Without `[tracing]` nothing is recorded, so untrusted and new traces go on unsampled.
//! - `tracestate` (combined over repeated headers) is passed on when it is well-formed and within
//!   [`MAX_TRACESTATE_BYTES`] and [`MAX_TRACESTATE_MEMBERS`], and dropped otherwise.
//!
//! Cost on the request path with export off: one or two draws from the request-id random pool,
//! 55 bytes of hex on the stack, and one header value for a request that is forwarded; no lock,
//! no span object.

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};

use crate::config::value::{ConfigError, RawDuration, invalid, nonzero};
use crate::proxy::headers::{has, random_id_bytes, remove_all};

pub mod export;

/// The `traceparent` request header (Trace Context §3.2).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` request header (Trace Context §3.3).
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on: the length the spec asks every vendor to propagate (§3.3.1.5).
pub const MAX_TRACESTATE_BYTES: usize = 512;
/// Most `tracestate` list members passed on (§3.3.1.1).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Default OTLP/HTTP traces endpoint: a collector on the same host (the OTLP default port).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";
/// Default `service.name` of the exported spans.
pub const DEFAULT_SERVICE_NAME: &str = "gatehouse";
/// Default share of new and untrusted traces the gateway samples: all of them.
pub const DEFAULT_SAMPLING_RATIO: f64 = 1.0;
/// Default bound of finished spans waiting for export; past it spans are dropped and counted.
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
/// Largest `queue_size` accepted.
pub const MAX_QUEUE_SIZE: usize = 65_536;
/// Default spans per export request.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Default longest wait of a finished span before its batch is sent.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_secs(5);
/// Default bound of one export request, connecting and reading the answer included.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `batch_interval` and `export_timeout` accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The `[tracing]` section as written; present means spans are exported.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    pub endpoint: String,
    pub service_name: String,
    pub sampling_ratio: f64,
    pub queue_size: usize,
    pub batch_size: usize,
    pub batch_interval: RawDuration,
    pub export_timeout: RawDuration,
    /// PEM roots for an `https` endpoint in place of the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.into(),
            service_name: DEFAULT_SERVICE_NAME.into(),
            sampling_ratio: DEFAULT_SAMPLING_RATIO,
            queue_size: DEFAULT_QUEUE_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_interval: DEFAULT_BATCH_INTERVAL.into(),
            export_timeout: DEFAULT_EXPORT_TIMEOUT.into(),
            ca_file: None,
        }
    }
}

/// The validated `[tracing]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// The full URL spans are POSTed to (`http` or `https`).
    pub endpoint: Uri,
    pub service_name: String,
    /// 0.0..=1.0.
    pub sampling_ratio: f64,
    pub queue_size: usize,
    /// 1..=queue_size.
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub export_timeout: Duration,
    /// PEM roots the collector's certificate is verified against (only with `https`); the
    /// preflight checks it loads ([`crate::proxy::ca_roots`]).
    pub ca_file: Option<PathBuf>,
}

impl RawTracing {
    pub fn validate(self) -> Result<TracingConfig, ConfigError> {
        let endpoint: Uri = self.endpoint.parse().map_err(|_| {
            invalid(
                "tracing.endpoint",
                format!("{:?} is not a URL", self.endpoint),
            )
        })?;
        if !matches!(endpoint.scheme_str(), Some("http" | "https")) || endpoint.host().is_none() {
            return Err(invalid(
                "tracing.endpoint",
                format!(
                    "{:?} must be an http:// or https:// URL with a host, like {DEFAULT_ENDPOINT}",
                    self.endpoint
                ),
            ));
        }
        if self.ca_file.is_some() && endpoint.scheme_str() != Some("https") {
            return Err(invalid(
                "tracing.ca_file",
                "is only used with an https:// endpoint",
            ));
        }
        if self.service_name.is_empty() || self.service_name.len() > 255 {
            return Err(invalid("tracing.service_name", "must be 1-255 bytes"));
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(invalid(
                "tracing.sampling_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if !(1..=MAX_QUEUE_SIZE).contains(&self.queue_size) {
            return Err(invalid(
                "tracing.queue_size",
                format!("must be 1-{MAX_QUEUE_SIZE}"),
            ));
        }
        if !(1..=self.queue_size).contains(&self.batch_size) {
            return Err(invalid(
                "tracing.batch_size",
                "must be at least 1 and at most queue_size",
            ));
        }
        let bounded = |key: &str, raw: &RawDuration| {
            let d = nonzero(key, raw)?;
            if d > MAX_WAIT {
                return Err(invalid(
                    key,
                    format!("must be at most {}s", MAX_WAIT.as_secs()),
                ));
            }
            Ok(d)
        };
        Ok(TracingConfig {
            endpoint,
            service_name: self.service_name,
            sampling_ratio: self.sampling_ratio,
            queue_size: self.queue_size,
            batch_size: self.batch_size,
            batch_interval: bounded("tracing.batch_interval", &self.batch_interval)?,
            export_timeout: bounded("tracing.export_timeout", &self.export_timeout)?,
            ca_file: self.ca_file,
        })
    }
}

/// The gateway's own sampling decision for new and untrusted traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// A draw below this samples; `u64::MAX` with `always`.
    threshold: u64,
    always: bool,
}

impl Sampler {
    /// Samples nothing (no `[tracing]`: nothing would record it).
    pub const NEVER: Sampler = Sampler {
        threshold: 0,
        always: false,
    };

    pub fn ratio(ratio: f64) -> Sampler {
        if ratio >= 1.0 {
            return Sampler {
                threshold: u64::MAX,
                always: true,
            };
        }
        Sampler {
            // In 0.0..1.0 here, so the product fits; `as` saturates anyway.
            threshold: (ratio.max(0.0) * u64::MAX as f64) as u64,
            always: false,
        }
    }

    fn decide(self, draw: u64) -> bool {
        self.always || draw < self.threshold
    }
}

/// A valid incoming `traceparent`'s fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

/// Parses one `traceparent` value (§3.2.2), `None` when it is malformed. A version above `00`
/// is read as `00` where it agrees (§3.2.4: longer only after a `-`); `ff` is invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    const LEN: usize = 55;
    let version = hex_byte(value.get(0..2)?)?;
    if version == 0xff
        || (version == 0 && value.len() != LEN)
        || (value.len() > LEN && value[LEN] != b'-')
        || value.len() < LEN
    {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex_into(&value[3..35], &mut trace_id)?;
    let mut parent_id = [0u8; 8];
    hex_into(&value[36..52], &mut parent_id)?;
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

/// Lowercase hex only: §3.2.2.1 makes uppercase invalid.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    match two {
        [hi, lo] => Some(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => None,
    }
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// The `tracestate` to pass on: every header's members joined, when all are well-formed and
/// within the bounds (§3.3.1); `None` to drop it.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    let combined = match values.next() {
        None => first.clone(),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for value in std::iter::once(second).chain(values) {
                if joined.len() > MAX_TRACESTATE_BYTES {
                    return None;
                }
                joined.push(b',');
                joined.extend_from_slice(value.as_bytes());
            }
            HeaderValue::from_bytes(&joined).ok()?
        }
    };
    let bytes = combined.as_bytes();
    if bytes.len() > MAX_TRACESTATE_BYTES {
        return None;
    }
    let mut members = 0;
    for member in bytes.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        members += 1;
        if members > MAX_TRACESTATE_MEMBERS || !valid_member(member) {
            return None;
        }
    }
    (members > 0).then_some(combined)
}

/// `key=value` per §3.3.1.3: a key of lowercase letters, digits and `_-*/` (with one `@` for
/// multi-tenant keys) starting with a letter or digit, and a value of printable ASCII other
/// than `,` and `=` that does not end in a space.
fn valid_member(member: &[u8]) -> bool {
    let Some(eq) = member.iter().position(|&b| b == b'=') else {
        return false;
    };
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    let key_ok = (1..=256).contains(&key.len())
        && (key[0].is_ascii_lowercase() || key[0].is_ascii_digit())
        && key.iter().filter(|&&b| b == b'@').count() <= 1
        && key
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b));
    let value_ok = (1..=256).contains(&value.len())
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    key_ok && value_ok
}

/// The trace a request belongs to and the gateway's span in it.
#[derive(Clone, Debug)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's span: the upstream's parent-id.
    pub span_id: [u8; 8],
    /// The caller's span, when a valid `traceparent` came.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    /// `00-{trace id}-{span id}-{flags}`, what the upstream receives: kept as bytes, so a
    /// request that is never forwarded allocates nothing for it.
    traceparent: [u8; 55],
    tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Reads the caller's trace context (see the module docs). `trusted`: the peer is one of
    /// `[server] trusted_proxies`, whose sampled flag is followed.
    pub fn start(headers: &HeaderMap, trusted: bool, sampler: Sampler) -> TraceContext {
        // Most requests carry none: a walk over their few names says so without the hash.
        let parent = match has(headers, &TRACEPARENT) {
            false => None,
            true => {
                let mut values = headers.get_all(&TRACEPARENT).iter();
                match (values.next(), values.next()) {
                    (Some(one), None) => parse_traceparent(one.as_bytes()),
                    // Repeated: which one would be the caller's?
                    _ => None,
                }
            }
        };
        let fresh = random_id_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&fresh[..8]);
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        let mut draw = [0u8; 8];
        draw.copy_from_slice(&fresh[8..]);
        let ours = sampler.decide(u64::from_le_bytes(draw));
        let (trace_id, parent_id, sampled, tracestate) = match parent {
            Some(p) => (
                p.trace_id,
                Some(p.parent_id),
                if trusted { p.sampled } else { ours },
                tracestate(headers),
            ),
            None => {
                let mut trace_id = random_id_bytes();
                if trace_id == [0; 16] {
                    trace_id[15] = 1;
                }
                (trace_id, None, ours, None)
            }
        };
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&trace_id, &mut text[3..35]);
        write_hex(&span_id, &mut text[36..52]);
        text[54] = if sampled { b'1' } else { b'0' };
        TraceContext {
            trace_id,
            span_id,
            parent_id,
            sampled,
            traceparent: text,
            tracestate,
        }
    }

    /// The trace id as 32 lowercase hex digits (for the access log).
    pub fn trace_id_hex(&self) -> &str {
        self.traceparent().get(3..35).unwrap_or("-")
    }

    /// The `traceparent` the upstream receives.
    pub fn traceparent(&self) -> &str {
        // Written from ASCII only (digits, hex, dashes).
        std::str::from_utf8(&self.traceparent).unwrap_or("-")
    }

    /// Replaces whatever trace headers the request carries with the gateway's.
    pub fn write(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_bytes(&self.traceparent) {
            headers.insert(&TRACEPARENT, value);
        } else {
            headers.remove(&TRACEPARENT);
        }
        match &self.tracestate {
            Some(state) => {
                headers.insert(&TRACESTATE, state.clone());
            }
            None => remove_all(headers, &TRACESTATE),
        }
    }
}

#[cfg(test)]
mod tests;
