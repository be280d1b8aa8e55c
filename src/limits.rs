//! Brute-force limits on the login-type endpoints: keyed governor limiters per client address
//! (IPv6 by /64) for logins and, apart, for refreshes, and per canonical username; and the
//! client networks the lockout (whose state lives in the store) counts failures for. Checked
//! before any store lookup or hashing. With `[auth.limits.redis]` the same limits are shared by
//! every gateway using that Redis ([`shared`]): the in-process limiter stays the cheap first
//! filter, and what it lets through the shared limit decides, or, when Redis does not answer in
//! time, the in-process verdict stands (never no limit). The `[auth.limits]` settings, their
//! defaults and their validation live here too.

pub mod shared;

use std::hash::Hash;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero, read_secret};
use shared::{LimitKind, SharedLimits, SharedLimitsConfig};

/// The `[auth.limits]` section as written: brute-force limits on login, token, refresh and
/// register.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub enabled: bool,
    pub per_address_per_minute: u32,
    pub per_address_burst: u32,
    pub per_user_per_minute: u32,
    pub per_user_burst: u32,
    pub refresh_per_address_per_minute: u32,
    pub refresh_per_address_burst: u32,
    pub max_failures: u32,
    pub max_failures_per_user: u32,
    pub find_time: RawDuration,
    pub ban_time: RawDuration,
    /// `[auth.limits.redis]`: absent (the default), each gateway limits on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RawRedis>,
}

/// The `[auth.limits.redis]` section as written: where the limits every gateway shares live.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedis {
    /// `redis://host[:port][/db]` or `rediss://...`, optionally with a username; required.
    pub url: String,
    /// File holding the `AUTH` password (not readable by group or others).
    pub password_file: Option<PathBuf>,
    /// PEM roots for a `rediss://` server, in place of the system's.
    pub ca_file: Option<PathBuf>,
    pub prefix: String,
    pub command_timeout: RawDuration,
    pub connect_timeout: RawDuration,
}

/// Default namespace of the shared limits' keys in Redis.
pub const DEFAULT_REDIS_PREFIX: &str = "gatehouse";
/// Default bound on one shared check, connecting included. A Redis near the gateways answers the
/// script in well under a millisecond; 100 ms is a hundred times that, so a busy Redis still
/// decides, while a hung one adds at most 100 ms to a login (two checks and a give-back: 300 ms
/// at worst, against ~16 ms of hashing) before the in-process verdict stands.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: &str = "100ms";
/// Default bound on one connection attempt (TCP, TLS, AUTH), made in the background: a TLS
/// handshake across a region fits, and no login waits on it longer than `command_timeout`.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: &str = "1s";
/// Longest CA file read.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: String::new(),
            password_file: None,
            ca_file: None,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            command_timeout: DEFAULT_REDIS_COMMAND_TIMEOUT.into(),
            connect_timeout: DEFAULT_REDIS_CONNECT_TIMEOUT.into(),
        }
    }
}

impl RawRedis {
    /// Reads the password and CA files and checks everything the client would refuse, without
    /// connecting.
    pub fn validate(self) -> Result<SharedLimitsConfig, ConfigError> {
        const KEY: &str = "auth.limits.redis";
        if self.url.is_empty() {
            return Err(invalid(
                format!("{KEY}.url"),
                "is required in [auth.limits.redis]",
            ));
        }
        let password = match &self.password_file {
            Some(path) => Some(read_secret(&format!("{KEY}.password_file"), path)?),
            None => None,
        };
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read_bounded(
                &format!("{KEY}.ca_file"),
                path,
                MAX_CA_FILE_BYTES,
            )?),
            None => None,
        };
        let config = SharedLimitsConfig {
            url: self.url,
            password,
            ca_pem,
            prefix: self.prefix,
            command_timeout: self
                .command_timeout
                .parse(&format!("{KEY}.command_timeout"))?,
            connect_timeout: self
                .connect_timeout
                .parse(&format!("{KEY}.connect_timeout"))?,
        };
        config
            .check()
            .map_err(|e| invalid(format!("{KEY}.{}", e.key()), e.to_string()))?;
        Ok(config)
    }
}

/// The file's bytes, refused past `max` bytes.
fn read_bounded(key: &str, path: &Path, max: u64) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(invalid(
            key,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

/// Default sustained attempts per minute from one client address (IPv6: one /64).
pub const DEFAULT_PER_ADDRESS_PER_MINUTE: u32 = 30;
/// Default burst of attempts from one client address.
pub const DEFAULT_PER_ADDRESS_BURST: u32 = 10;
/// Default sustained attempts per minute for one username.
pub const DEFAULT_PER_USER_PER_MINUTE: u32 = 10;
/// Default burst of attempts for one username.
pub const DEFAULT_PER_USER_BURST: u32 = 5;
/// Default sustained refresh-token grants per minute from one client address (IPv6: one /64):
/// a budget of its own, so clients that refresh often never spend the login budget.
pub const DEFAULT_REFRESH_PER_ADDRESS_PER_MINUTE: u32 = 120;
/// Default burst of refresh-token grants from one client address.
pub const DEFAULT_REFRESH_PER_ADDRESS_BURST: u32 = 30;
/// Default failed logins for one username from one client network (IPv4 /24, IPv6 /64) within
/// `find_time` that lock the username for that network.
pub const DEFAULT_MAX_FAILURES: u32 = 5;
/// Default failed logins for one username from all networks within `find_time` that lock the
/// username everywhere: the ceiling for guessing spread over many networks.
pub const DEFAULT_MAX_FAILURES_PER_USER: u32 = 100;
/// Default window in which failures count towards a lockout.
pub const DEFAULT_FIND_TIME: &str = "10m";
/// Default lockout duration.
pub const DEFAULT_BAN_TIME: &str = "15m";

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            per_address_per_minute: DEFAULT_PER_ADDRESS_PER_MINUTE,
            per_address_burst: DEFAULT_PER_ADDRESS_BURST,
            per_user_per_minute: DEFAULT_PER_USER_PER_MINUTE,
            per_user_burst: DEFAULT_PER_USER_BURST,
            refresh_per_address_per_minute: DEFAULT_REFRESH_PER_ADDRESS_PER_MINUTE,
            refresh_per_address_burst: DEFAULT_REFRESH_PER_ADDRESS_BURST,
            max_failures: DEFAULT_MAX_FAILURES,
            max_failures_per_user: DEFAULT_MAX_FAILURES_PER_USER,
            find_time: DEFAULT_FIND_TIME.into(),
            ban_time: DEFAULT_BAN_TIME.into(),
            redis: None,
        }
    }
}

impl RawLimits {
    pub fn validate(self) -> Result<LimitsConfig, ConfigError> {
        let nz = |key: &str, n: u32| {
            NonZeroU32::new(n)
                .ok_or_else(|| invalid(format!("auth.limits.{key}"), "must be greater than 0"))
        };
        if self.max_failures_per_user < self.max_failures {
            return Err(invalid(
                "auth.limits.max_failures_per_user",
                format!(
                    "must be at least max_failures ({}): the ceiling for a username from every \
                     network below the limit for one network would lock the name everywhere \
                     first, and anyone could lock anyone out again",
                    self.max_failures
                ),
            ));
        }
        Ok(LimitsConfig {
            enabled: self.enabled,
            per_address_per_minute: nz("per_address_per_minute", self.per_address_per_minute)?,
            per_address_burst: nz("per_address_burst", self.per_address_burst)?,
            per_user_per_minute: nz("per_user_per_minute", self.per_user_per_minute)?,
            per_user_burst: nz("per_user_burst", self.per_user_burst)?,
            refresh_per_address_per_minute: nz(
                "refresh_per_address_per_minute",
                self.refresh_per_address_per_minute,
            )?,
            refresh_per_address_burst: nz(
                "refresh_per_address_burst",
                self.refresh_per_address_burst,
            )?,
            max_failures: nz("max_failures", self.max_failures)?,
            max_failures_per_user: nz("max_failures_per_user", self.max_failures_per_user)?,
            find_time: nonzero("auth.limits.find_time", &self.find_time)?,
            ban_time: nonzero("auth.limits.ban_time", &self.ban_time)?,
            redis: self.redis.map(RawRedis::validate).transpose()?,
        })
    }
}

/// The validated `[auth.limits]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    pub enabled: bool,
    pub per_address_per_minute: NonZeroU32,
    pub per_address_burst: NonZeroU32,
    pub per_user_per_minute: NonZeroU32,
    pub per_user_burst: NonZeroU32,
    pub refresh_per_address_per_minute: NonZeroU32,
    pub refresh_per_address_burst: NonZeroU32,
    /// Per (username, client network).
    pub max_failures: NonZeroU32,
    /// Per username, from every network.
    pub max_failures_per_user: NonZeroU32,
    pub find_time: Duration,
    pub ban_time: Duration,
    /// Where the limits every gateway shares live; `None`: this gateway's own only.
    pub redis: Option<SharedLimitsConfig>,
}

/// Longest key kept in a limiter (usernames are at most 64 bytes; addresses are fixed size).
const MAX_KEY_BYTES: usize = 64;

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, Clock, StateInformationMiddleware>;

/// A keyed limiter whose cells can be given back ([`Refundable`]).
type KeyedRefundable<K> = RateLimiter<K, Refundable<K>, Clock, StateInformationMiddleware>;

/// Keyed GCRA state like governor's `DashMapStateStore` (per key, the theoretical arrival time in
/// nanoseconds from the limiter's start, 0 for a fresh key), plus what governor has no API for:
/// giving one cell back. The limiter and [`Limits`] share it, so a refund reaches the state the
/// limiter reads.
#[derive(Clone, Debug, Default)]
struct Refundable<K: Hash + Eq>(Arc<DashMap<K, AtomicU64>>);

impl<K: Hash + Eq + Clone> Refundable<K> {
    /// Moves the key's arrival time back by one cell's interval: the state is as if the last
    /// conforming check had not happened (GCRA treats every arrival time before now alike, so
    /// going below now loses nothing). A key never charged, or already pruned, has nothing to
    /// give back.
    fn give_back(&self, key: &K, interval: Nanos) {
        if let Some(state) = self.0.get(key) {
            let _ = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(interval.as_u64()))
            });
        }
    }
}

impl<K: Hash + Eq + Clone> StateStore for Refundable<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let replace = |state: &AtomicU64| {
            let mut prev = state.load(Ordering::Acquire);
            loop {
                let (outcome, next) = f(NonZeroU64::new(prev).map(|n| Nanos::new(n.get())))?;
                match state.compare_exchange_weak(
                    prev,
                    next.as_u64(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(outcome),
                    Err(actual) => prev = actual,
                }
            }
        };
        if let Some(state) = self.0.get(key) {
            return replace(&state);
        }
        let state = self.0.entry(key.clone()).or_default();
        replace(&state)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for Refundable<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0
            .retain(|_, tat| tat.load(Ordering::Relaxed) > drop_below.as_u64());
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a refused attempt tells the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Seconds until an attempt may succeed (at least 1).
    pub retry_after: u64,
    /// The limit that refused: burst size of its quota.
    pub limit: u32,
}

/// A permitted attempt, for `RateLimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// The login limiters.
pub struct Limits {
    config: LimitsConfig,
    clock: Clock,
    /// Logins, registrations and token requests that are not refreshes.
    by_addr: Keyed<IpAddr>,
    /// Refresh-token grants: a budget apart, so refreshing never spends the login budget.
    refresh_by_addr: Keyed<IpAddr>,
    by_user: KeyedRefundable<String>,
    /// The state `by_user` reads, for giving cells back.
    by_user_state: Refundable<String>,
    /// The same limits shared with every gateway using this Redis, when configured.
    shared: Option<Arc<SharedLimits>>,
}

fn quota(per_minute: NonZeroU32, burst: NonZeroU32) -> Quota {
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl Limits {
    /// Fresh limiters; with `[auth.limits.redis]`, a connection to the shared limits made in
    /// the background (a gateway starts whether Redis answers or not). Must run inside a Tokio
    /// runtime when `config.redis` is set.
    pub fn new(config: LimitsConfig, clock: Clock) -> Self {
        let shared = config.redis.clone().and_then(start_shared);
        Self::with_shared(config, clock, shared)
    }

    /// The limits after a reload that changed `config`: fresh in-process counters (governor's
    /// quota is fixed per limiter) on `old`'s clock, and `old`'s connection to the shared
    /// limits, whose counters live on in Redis, unless the Redis settings changed.
    pub fn reloaded(config: LimitsConfig, old: &Limits) -> Self {
        let shared = if config.redis == old.config.redis {
            old.shared.clone()
        } else {
            config.redis.clone().and_then(start_shared)
        };
        Self::with_shared(config, old.clock.clone(), shared)
    }

    fn with_shared(config: LimitsConfig, clock: Clock, shared: Option<Arc<SharedLimits>>) -> Self {
        let by_addr = RateLimiter::dashmap_with_clock(
            quota(config.per_address_per_minute, config.per_address_burst),
            clock.clone(),
        )
        .with_middleware::<StateInformationMiddleware>();
        let refresh_by_addr = RateLimiter::dashmap_with_clock(
            quota(
                config.refresh_per_address_per_minute,
                config.refresh_per_address_burst,
            ),
            clock.clone(),
        )
        .with_middleware::<StateInformationMiddleware>();
        let by_user_state = Refundable::default();
        let by_user = KeyedRefundable::new(
            quota(config.per_user_per_minute, config.per_user_burst),
            by_user_state.clone(),
            clock.clone(),
        );
        Self {
            config,
            clock,
            by_addr,
            refresh_by_addr,
            by_user,
            by_user_state,
            shared,
        }
    }

    /// The shared limits, when configured (for health and tests).
    pub fn shared(&self) -> Option<&Arc<SharedLimits>> {
        self.shared.as_ref()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// One login-type attempt from `addr`; IPv6 addresses count per /64.
    pub async fn check_addr(&self, addr: IpAddr) -> Result<Allowance, Refusal> {
        let quota = quota(
            self.config.per_address_per_minute,
            self.config.per_address_burst,
        );
        let local = self.check_addr_in(&self.by_addr, addr)?;
        self.shared_decides(LimitKind::Address, &addr_bytes(addr), quota, local)
            .await
    }

    /// One refresh-token grant from `addr`, against the refresh budget; IPv6 per /64.
    pub async fn check_refresh_addr(&self, addr: IpAddr) -> Result<Allowance, Refusal> {
        let quota = quota(
            self.config.refresh_per_address_per_minute,
            self.config.refresh_per_address_burst,
        );
        let local = self.check_addr_in(&self.refresh_by_addr, addr)?;
        self.shared_decides(LimitKind::RefreshAddress, &addr_bytes(addr), quota, local)
            .await
    }

    fn check_addr_in(&self, limiter: &Keyed<IpAddr>, addr: IpAddr) -> Result<Allowance, Refusal> {
        if !self.config.enabled {
            return Ok(self.unlimited());
        }
        match limiter.check_key(&addr_key(addr)) {
            Ok(snapshot) => {
                Ok(self.allowance(snapshot.quota(), snapshot.remaining_burst_capacity()))
            }
            Err(not_until) => Err(self.refusal(not_until)),
        }
    }

    /// Charges one attempt for the canonical (or, when it does not parse, the truncated raw)
    /// username. A login charges before hashing, so a flood past the budget costs no hashing
    /// work, and gives the charge back with [`give_back_user`](Self::give_back_user) once the
    /// password proved right.
    pub async fn check_user(&self, username: &str) -> Result<Allowance, Refusal> {
        let local = self.check_user_locally(username)?;
        let key = user_key(username);
        self.shared_decides(LimitKind::User, key.as_bytes(), self.by_user_quota(), local)
            .await
    }

    fn check_user_locally(&self, username: &str) -> Result<Allowance, Refusal> {
        if !self.config.enabled {
            return Ok(self.unlimited());
        }
        match self.by_user.check_key(&user_key(username)) {
            Ok(snapshot) => {
                Ok(self.allowance(snapshot.quota(), snapshot.remaining_burst_capacity()))
            }
            Err(not_until) => Err(self.refusal(not_until)),
        }
    }

    /// After the in-process limiter let an attempt through: the shared limit's verdict when
    /// Redis answers in time, else the in-process one (the failure is counted and logged once
    /// per outage by [`SharedLimits`]). Both charge the same quota, so N gateways give a key one
    /// budget, and each gateway alone never more than that budget either.
    async fn shared_decides(
        &self,
        kind: LimitKind,
        key: &[u8],
        quota: Quota,
        local: Allowance,
    ) -> Result<Allowance, Refusal> {
        let Some(shared) = self.shared.as_ref().filter(|_| self.config.enabled) else {
            return Ok(local);
        };
        match shared.check(kind, key, quota).await {
            Ok(verdict) => verdict.into_limits(quota),
            Err(_) => Ok(local),
        }
    }

    /// Gives back the charge of one [`check_user`](Self::check_user) that let through a login
    /// whose password was right, so only failures spend a username's budget and its owner can
    /// log in as often as the other limits allow. Given back in process and in Redis alike.
    ///
    /// Why charge then give back, rather than charge only failures: charging only after the
    /// verdict needs a check before hashing that takes nothing, and then a burst of parallel
    /// guesses all pass that check before the first of them is charged, each costing a hash.
    /// Charged up front, at most the budget is in flight at once; a refund cannot be abused,
    /// since earning one takes the right password.
    pub async fn give_back_user(&self, username: &str) {
        if !self.config.enabled {
            return;
        }
        let key = user_key(username);
        let interval = Nanos::from(self.by_user_quota().replenish_interval());
        self.by_user_state.give_back(&key, interval);
        if let Some(shared) = &self.shared {
            // A failure leaves the cell spent in Redis: it comes back with time, like any
            // other, and the outage is counted and logged by `SharedLimits`.
            let _ = shared
                .give_back(LimitKind::User, key.as_bytes(), self.by_user_quota())
                .await;
        }
    }

    fn by_user_quota(&self) -> Quota {
        quota(self.config.per_user_per_minute, self.config.per_user_burst)
    }

    fn unlimited(&self) -> Allowance {
        Allowance {
            limit: u32::MAX,
            remaining: u32::MAX,
            reset: 0,
        }
    }

    fn allowance(&self, quota: Quota, remaining: u32) -> Allowance {
        let used = quota.burst_size().get().saturating_sub(remaining);
        Allowance {
            limit: quota.burst_size().get(),
            remaining,
            reset: (quota.replenish_interval() * used).as_secs(),
        }
    }

    fn refusal(&self, not_until: governor::NotUntil<Nanos>) -> Refusal {
        let wait = not_until.wait_time_from(self.clock.now());
        Refusal {
            retry_after: wait.as_secs().max(1) + u64::from(wait.subsec_nanos() > 0),
            limit: not_until.quota().burst_size().get(),
        }
    }

    /// Forgets keys whose buckets are full again; bounds memory under many distinct keys.
    pub fn prune(&self) {
        self.by_addr.retain_recent();
        self.by_addr.shrink_to_fit();
        self.refresh_by_addr.retain_recent();
        self.refresh_by_addr.shrink_to_fit();
        self.by_user.retain_recent();
        self.by_user.shrink_to_fit();
    }

    /// Keys currently held (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.by_addr.len() + self.refresh_by_addr.len() + self.by_user.len()
    }
}

/// The shared limits for validated settings. Validation already checked everything `start`
/// checks; should it still refuse, this gateway keeps its own limits, and says so loudly.
fn start_shared(config: SharedLimitsConfig) -> Option<Arc<SharedLimits>> {
    match SharedLimits::start(config) {
        Ok(shared) => Some(shared),
        Err(error) => {
            tracing::error!(%error, "shared rate limits not started: this gateway limits alone");
            None
        }
    }
}

/// An address's key in the shared limits: its [`addr_key`] as 4 or 16 octets (the lengths keep
/// IPv4 and IPv6 apart).
fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr_key(addr) {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A username's limiter key: bounded, so a huge name cannot grow the state.
fn user_key(username: &str) -> String {
    username.chars().take(MAX_KEY_BYTES).collect()
}

/// IPv4 as is; IPv6 by its /64 (one host usually owns the whole prefix); v4-mapped as IPv4.
pub fn addr_key(addr: IpAddr) -> IpAddr {
    match unmapped(addr) {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4
/// peer) as the IPv4 address it is, so one client is one key whichever socket it reached.
fn unmapped(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The client network a login lockout counts failures for: an IPv4 /24 or an IPv6 /64
/// (IPv4-mapped IPv6 counts as IPv4). Shown as `192.0.2.0/24` or `2001:db8:1:2::/64`.
///
/// Why these prefixes: the lockout is there to stop the owner of the network guessing, while the
/// user on another network keeps logging in, so one key must cover everything one party can
/// easily switch between. On IPv6 that is at least a /64: a single host picks fresh addresses
/// from its /64 at will (SLAAC privacy addresses), so keying by address would hand an attacker
/// 2^64 fresh failure budgets. On IPv4 a /24 is the smallest block that is routed and leased as
/// a unit (hosting providers, cloud VMs and NAT pools hand out neighbouring addresses), so
/// renting a few more addresses next to the first does not buy more guesses; and a user whose
/// address moves inside the ISP's pool keeps the same count. The cost: a user who shares a /24
/// with the attacker (one office NAT, one campus) shares that network's lock; the per-user
/// ceiling and `user unlock` bound that case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientNetwork(IpAddr);

impl ClientNetwork {
    /// Prefix length of an IPv4 client network.
    pub const V4_PREFIX: u8 = 24;
    /// Prefix length of an IPv6 client network.
    pub const V6_PREFIX: u8 = 64;

    pub fn of(addr: IpAddr) -> Self {
        Self(match unmapped(addr) {
            IpAddr::V4(v4) => {
                let mut octets = v4.octets();
                octets[3] = 0;
                IpAddr::V4(octets.into())
            }
            v6 => addr_key(v6),
        })
    }

    pub fn prefix_len(self) -> u8 {
        match self.0 {
            IpAddr::V4(_) => Self::V4_PREFIX,
            IpAddr::V6(_) => Self::V6_PREFIX,
        }
    }
}

impl std::fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.prefix_len())
    }
}

#[cfg(test)]
mod tests;
