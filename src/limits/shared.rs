//! Limits shared by every gateway behind one load balancer: the in-process limiter's GCRA with
//! its state in Redis, so N gateways give an attacker one budget, not N. Redis holds only
//! counters that may be lost; when it does not answer within the timeout a check fails fast and
//! the caller falls back to its own in-process limits, never to no limit.
//!
//! Each check is one Lua script, atomic on the server, timed by the server's `TIME` so gateways
//! with skewed clocks share one timeline. A key `{prefix}:{kind}:{hex SHA-256 of the key}` holds
//! the theoretical arrival time (TAT) in microseconds and expires when it stops mattering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::digest;
use governor::Quota;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError, Script, TlsCertificates};
use zeroize::Zeroizing;

use super::{Allowance, Refusal};

/// The longest wait [`SharedLimitsConfig`] accepts for a command or a connection: a login must
/// never wait on Redis longer than this, whatever the configuration says.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest key prefix.
const MAX_PREFIX_BYTES: usize = 64;

/// GCRA on one key, atomically. The key's value is the theoretical arrival time (TAT) in
/// microseconds on the server's clock; a missing key is a full bucket.
///
/// - KEYS[1]: the limit's key.
/// - ARGV[1]: `check` or `give_back`.
/// - ARGV[2]: emission interval T, microseconds per cell.
/// - ARGV[3]: tolerance tau = T * (burst - 1), microseconds.
///
/// `check` conforms when now >= TAT - tau and then sets TAT = max(TAT, now) + T (governor's
/// arithmetic); it answers `{1, TAT - now}` (microseconds until the bucket is full) or
/// `{0, TAT - tau - now}` (microseconds until a cell conforms). `give_back` moves TAT back by T,
/// never below now (an arrival time in the past means a full bucket either way), and answers
/// `{1, TAT - now}`. The key expires when TAT passes (its state stops mattering then) and is
/// deleted when TAT is not in the future. Numbers stay integers below 2^53 (microseconds since
/// 1970 are about 2^51), so Lua's doubles are exact.
const GCRA_SCRIPT: &str = r"
local t = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local stored = tonumber(redis.call('GET', KEYS[1]))
local tat = math.max(stored or now, now)
if ARGV[1] == 'check' then
  if now < tat - tau then
    return {0, tat - tau - now}
  end
  tat = tat + t
elseif ARGV[1] == 'give_back' then
  if not stored then
    return {1, 0}
  end
  tat = math.max(tat - t, now)
else
  return redis.error_reply('gatehouse gcra: unknown mode')
end
if tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
else
  redis.call('DEL', KEYS[1])
end
return {1, tat - now}
";

/// Which budget a key is charged against; each kind is a keyspace of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Logins and other token requests per client address.
    Address,
    /// Refresh-token grants per client address.
    RefreshAddress,
    /// Login attempts per canonical username.
    User,
}

impl LimitKind {
    /// The kind's part of the Redis key, and its metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Address => "address",
            LimitKind::RefreshAddress => "refresh_address",
            LimitKind::User => "user",
        }
    }
}

/// Where the shared state lives and how long a gateway may wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedLimitsConfig {
    /// `redis://host:port[/db]` or `rediss://host:port[/db]`, optionally with a username; never
    /// with a password, a query or a fragment (`#insecure` would turn off certificate checks).
    pub url: String,
    /// The `AUTH` password, read from a file by the caller.
    pub password: Option<Zeroizing<String>>,
    /// PEM roots that a `rediss://` server's certificate must chain to, in place of the
    /// system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Namespace of this deployment's keys, so several deployments can share one Redis:
    /// 1-64 characters from `A-Z a-z 0-9 . _ - :`.
    pub prefix: String,
    /// Bound on one check or give-back, connecting included (at most [`MAX_TIMEOUT`]).
    pub command_timeout: Duration,
    /// Bound on one connection attempt (at most [`MAX_TIMEOUT`]).
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for SharedLimitsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimitsConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A [`SharedLimitsConfig`] that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedConfigError {
    #[error("the shared limits URL must start with redis:// or rediss://")]
    Scheme,
    #[error("the shared limits URL must not carry a {0}: {1}")]
    UrlPart(&'static str, &'static str),
    #[error("the shared limits URL does not parse: {0}")]
    Url(RedisError),
    #[error("a CA for the shared limits is set, but the URL is not rediss://")]
    CaWithoutTls,
    #[error("the shared limits CA does not parse: {0}")]
    Ca(RedisError),
    #[error("the shared limits key prefix must be 1-64 characters from A-Z a-z 0-9 . _ - :")]
    Prefix,
    #[error("the shared limits {0} must be between 1 ms and 1 s")]
    Timeout(&'static str),
}

impl SharedConfigError {
    /// The `[auth.limits.redis]` key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            SharedConfigError::Scheme
            | SharedConfigError::UrlPart(..)
            | SharedConfigError::Url(_) => "url",
            SharedConfigError::CaWithoutTls | SharedConfigError::Ca(_) => "ca_file",
            SharedConfigError::Prefix => "prefix",
            SharedConfigError::Timeout(name) => name,
        }
    }
}

impl SharedLimitsConfig {
    /// Checks everything [`SharedLimits`] would refuse, without connecting (and without a
    /// runtime): for validating a configuration file.
    pub fn check(&self) -> Result<(), SharedConfigError> {
        self.checked_client().map(drop)
    }

    fn checked_client(&self) -> Result<Client, SharedConfigError> {
        for (name, timeout) in [
            ("command_timeout", self.command_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if timeout < Duration::from_millis(1) || timeout > MAX_TIMEOUT {
                return Err(SharedConfigError::Timeout(name));
            }
        }
        validate_prefix(&self.prefix)?;
        client(self)
    }
}

/// Why a check could not be answered; the caller falls back to its own limits.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("the runtime running the Redis connection has stopped")]
    Stopped,
}

/// What the shared limit says about one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed {
        /// Cells left in the burst after this one.
        remaining: u32,
        /// Time until the bucket is full again.
        full_in: Duration,
    },
    Refused {
        /// Time until an attempt conforms.
        retry_after: Duration,
    },
}

impl Verdict {
    /// The verdict as the in-process limiter gives it, for `RateLimit-*` and `Retry-After`
    /// (whole seconds: `reset` rounded down, `retry_after` up and at least 1).
    pub fn into_limits(self, quota: Quota) -> Result<Allowance, Refusal> {
        let limit = quota.burst_size().get();
        match self {
            Verdict::Allowed { remaining, full_in } => Ok(Allowance {
                limit,
                remaining,
                reset: full_in.as_secs(),
            }),
            Verdict::Refused { retry_after } => Err(Refusal {
                retry_after: retry_after.as_micros().div_ceil(1_000_000).max(1) as u64,
                limit,
            }),
        }
    }
}

/// A quota in the script's units.
#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Emission interval, microseconds per cell.
    t: u64,
    /// Tolerance, microseconds: T * (burst - 1).
    tau: u64,
}

impl Gcra {
    fn of(quota: Quota) -> Self {
        let t = u64::try_from(quota.replenish_interval().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let tau = t.saturating_mul(u64::from(quota.burst_size().get() - 1));
        Self { t, tau }
    }

    /// Cells left once the bucket is full in `full_in` microseconds (governor's
    /// `remaining_burst_capacity`).
    fn remaining(self, full_in: u64) -> u32 {
        let left = (self.t + self.tau).saturating_sub(full_in).min(self.tau);
        u32::try_from(left / self.t).unwrap_or(u32::MAX)
    }
}

/// Whether the shared state answered lately, and how many times it stopped answering.
#[derive(Debug, Default)]
struct Health {
    degraded: AtomicBool,
    outages: AtomicU64,
}

/// GCRA limits whose state every gateway shares through one Redis. Cheap to share behind an
/// `Arc`; every method takes `&self`.
pub struct SharedLimits {
    connection: ConnectionManager,
    /// The runtime the connection's tasks run on: the one [`SharedLimits`] was made in. Checks
    /// come from the endpoint runtime, which a reload replaces while this outlives it; were
    /// the connection driven there, every reload would cut it and log a false outage.
    runtime: tokio::runtime::Handle,
    /// Bound on one connection attempt.
    connect_timeout: Duration,
    script: Script,
    prefix: String,
    command_timeout: Duration,
    health: Health,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// Validates the configuration and connects. An unreachable Redis is no error: the
    /// limits start degraded (logged once) and connect in the background. Waits at most
    /// `connect_timeout + command_timeout`; [`start`](Self::start) does not wait at all.
    pub async fn connect(config: SharedLimitsConfig) -> Result<Self, SharedConfigError> {
        let limits = Self::new(config)?;
        limits.ping().await;
        Ok(limits)
    }

    /// Validates the configuration and connects in the background, so a gateway starts
    /// whether Redis answers or not (an unreachable Redis shows as degraded, logged once).
    /// Must run inside a Tokio runtime.
    pub fn start(config: SharedLimitsConfig) -> Result<Arc<Self>, SharedConfigError> {
        let limits = Arc::new(Self::new(config)?);
        let warming = Arc::clone(&limits);
        tokio::spawn(async move { warming.ping().await });
        Ok(limits)
    }

    /// One PING, bounded by `connect_timeout + command_timeout`, its outcome recorded.
    async fn ping(&self) {
        let timeout = self.connect_timeout + self.command_timeout;
        let mut connection = self.connection();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<()>(&mut connection);
        let result = match tokio::time::timeout(timeout, ping).await {
            Ok(result) => result.map_err(SharedError::from),
            Err(_) => Err(SharedError::Timeout(timeout)),
        };
        self.record(&result);
    }

    /// Validates the configuration; connects on first use. Must run inside a Tokio runtime.
    fn new(config: SharedLimitsConfig) -> Result<Self, SharedConfigError> {
        let client = config.checked_client()?;
        // Retries are the manager's, in the background after a lost connection: few and soon,
        // since no check waits on them longer than `command_timeout` anyway.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(250));
        let connection = lazy_manager(&client, &manager_config)?;
        Ok(Self {
            connection,
            runtime: tokio::runtime::Handle::current(),
            connect_timeout: config.connect_timeout,
            script: Script::new(GCRA_SCRIPT),
            prefix: config.prefix,
            command_timeout: config.command_timeout,
            health: Health::default(),
        })
    }

    /// Charges one cell of `quota` to `key` of `kind`, shared by every gateway using this
    /// Redis and prefix. `Err` after at most `command_timeout`: the caller decides with its
    /// own in-process limiter instead.
    pub async fn check(
        &self,
        kind: LimitKind,
        key: &[u8],
        quota: Quota,
    ) -> Result<Verdict, SharedError> {
        let gcra = Gcra::of(quota);
        let result = self
            .run(kind, key, "check", gcra)
            .await
            .map(|(allowed, micros)| {
                let micros = u64::try_from(micros).unwrap_or(0);
                if allowed == 1 {
                    Verdict::Allowed {
                        remaining: gcra.remaining(micros),
                        full_in: Duration::from_micros(micros),
                    }
                } else {
                    Verdict::Refused {
                        retry_after: Duration::from_micros(micros),
                    }
                }
            });
        if result.is_err() {
            crate::metrics::shared_limit_fallback(kind.as_str());
        }
        result
    }

    /// Gives back one cell [`check`](Self::check) charged (the in-process limiter's refund
    /// after a right password): the arrival time moves back one interval, never below now, so
    /// a bucket never grows past its burst. A key never charged, or expired, is left alone.
    pub async fn give_back(
        &self,
        kind: LimitKind,
        key: &[u8],
        quota: Quota,
    ) -> Result<(), SharedError> {
        self.run(kind, key, "give_back", Gcra::of(quota))
            .await
            .map(drop)
    }

    /// True from the first failed call after a success until the next success.
    pub fn is_degraded(&self) -> bool {
        self.health.degraded.load(Ordering::Acquire)
    }

    /// How many times the shared state went from answering to not answering.
    pub fn outages(&self) -> u64 {
        self.health.outages.load(Ordering::Acquire)
    }

    /// One script call, bounded by `command_timeout`, its outcome recorded in the health.
    async fn run(
        &self,
        kind: LimitKind,
        key: &[u8],
        mode: &str,
        gcra: Gcra,
    ) -> Result<(i64, i64), SharedError> {
        let mut connection = self.connection();
        let script = self.script.clone();
        let key = self.redis_key(kind, key);
        let mode = mode.to_owned();
        // On the connection's own runtime (see `runtime`); a call cut short here ends there
        // too, after at most the manager's response timeout (`command_timeout`).
        let call = self.runtime.spawn(async move {
            let mut invocation = script.key(key);
            invocation.arg(mode).arg(gcra.t).arg(gcra.tau);
            invocation.invoke_async::<(i64, i64)>(&mut connection).await
        });
        let result = match tokio::time::timeout(self.command_timeout, call).await {
            Ok(Ok(result)) => result.map_err(SharedError::from),
            Ok(Err(_)) => Err(SharedError::Stopped),
            Err(_) => Err(SharedError::Timeout(self.command_timeout)),
        };
        self.record(&result);
        result
    }

    /// `{prefix}:{kind}:{hex SHA-256 of key}`: fixed length, and no username in the clear.
    fn redis_key(&self, kind: LimitKind, key: &[u8]) -> String {
        let hash = digest::digest(&digest::SHA256, key);
        let mut out = String::with_capacity(self.prefix.len() + 82);
        out.push_str(&self.prefix);
        out.push(':');
        out.push_str(kind.as_str());
        out.push(':');
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for byte in hash.as_ref() {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Logs each transition once: the first failure of an outage and the first success after it.
    fn record<T>(&self, result: &Result<T, SharedError>) {
        match result {
            Ok(_) => {
                if self.health.degraded.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        prefix = %self.prefix,
                        "shared rate limits answer again: using them instead of this gateway's own"
                    );
                }
            }
            Err(error) => {
                if !self.health.degraded.swap(true, Ordering::AcqRel) {
                    self.health.outages.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(
                        prefix = %self.prefix,
                        %error,
                        "shared rate limits unavailable: this gateway falls back to its own limits"
                    );
                }
            }
        }
    }
}

fn validate_prefix(prefix: &str) -> Result<(), SharedConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_BYTES || !prefix.chars().all(allowed) {
        return Err(SharedConfigError::Prefix);
    }
    Ok(())
}

/// The redis client for a validated URL, password and CA.
fn client(config: &SharedLimitsConfig) -> Result<Client, SharedConfigError> {
    let url = config.url.as_str();
    let tls = if url.starts_with("rediss://") {
        true
    } else if url.starts_with("redis://") {
        false
    } else {
        return Err(SharedConfigError::Scheme);
    };
    if url.contains('#') {
        return Err(SharedConfigError::UrlPart(
            "fragment",
            "`#insecure` would turn off certificate checks",
        ));
    }
    if url.contains('?') {
        return Err(SharedConfigError::UrlPart(
            "query",
            "the protocol is chosen by the gateway",
        ));
    }
    let info = url.into_connection_info().map_err(SharedConfigError::Url)?;
    if info.redis_settings().password().is_some() {
        return Err(SharedConfigError::UrlPart(
            "password",
            "passwords are read from a file",
        ));
    }
    let mut redis = info.redis_settings().clone();
    if let Some(password) = &config.password {
        redis = redis.set_password(password.as_str());
    }
    let info = info.set_redis_settings(redis);
    match (&config.ca_pem, tls) {
        (Some(_), false) => Err(SharedConfigError::CaWithoutTls),
        (Some(ca), true) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        )
        .map_err(SharedConfigError::Ca),
        (None, _) => Client::open(info).map_err(SharedConfigError::Url),
    }
}

/// A connection manager that connects on first use.
fn lazy_manager(
    client: &Client,
    config: &ConnectionManagerConfig,
) -> Result<ConnectionManager, SharedConfigError> {
    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
        .map_err(SharedConfigError::Url)
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
