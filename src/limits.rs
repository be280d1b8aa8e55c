//! Brute-force limits on the login-type endpoints: keyed governor limiters per client address
//! (IPv6 by /64) for logins and, apart, for refreshes, and per canonical username; and the
//! client networks the lockout (whose state lives in the store) counts failures for. Checked
//! before any store lookup or hashing. The `[auth.limits]` settings, their defaults and their
//! validation live here too.

pub mod shared;

use std::hash::Hash;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
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
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero};

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
}

fn quota(per_minute: NonZeroU32, burst: NonZeroU32) -> Quota {
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl Limits {
    pub fn new(config: LimitsConfig, clock: Clock) -> Self {
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
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// One login-type attempt from `addr`; IPv6 addresses count per /64.
    pub fn check_addr(&self, addr: IpAddr) -> Result<Allowance, Refusal> {
        self.check_addr_in(&self.by_addr, addr)
    }

    /// One refresh-token grant from `addr`, against the refresh budget; IPv6 per /64.
    pub fn check_refresh_addr(&self, addr: IpAddr) -> Result<Allowance, Refusal> {
        self.check_addr_in(&self.refresh_by_addr, addr)
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
    pub fn check_user(&self, username: &str) -> Result<Allowance, Refusal> {
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

    /// Gives back the charge of one [`check_user`](Self::check_user) that let through a login
    /// whose password was right, so only failures spend a username's budget and its owner can
    /// log in as often as the other limits allow.
    ///
    /// Why charge then give back, rather than charge only failures: charging only after the
    /// verdict needs a check before hashing that takes nothing, and then a burst of parallel
    /// guesses all pass that check before the first of them is charged, each costing a hash.
    /// Charged up front, at most the budget is in flight at once; a refund cannot be abused,
    /// since earning one takes the right password.
    pub fn give_back_user(&self, username: &str) {
        if !self.config.enabled {
            return;
        }
        let interval = Nanos::from(self.by_user_quota().replenish_interval());
        self.by_user_state.give_back(&user_key(username), interval);
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
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, refusal as err};

    fn limits(toml: &str) -> Limits {
        let config = Config::from_toml(&format!("[auth.limits]\n{toml}")).unwrap();
        Limits::new(config.auth.limits, Clock::default())
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
        assert_ne!(addr_key(a), addr_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(addr_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn lockout_networks_are_ipv4_24s_and_ipv6_64s() {
        let net = |s: &str| ClientNetwork::of(s.parse().unwrap());
        assert_eq!(net("192.0.2.7"), net("192.0.2.200"));
        assert_ne!(net("192.0.2.7"), net("192.0.3.7"));
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.0/24");
        assert_eq!(net("::ffff:192.0.2.9"), net("192.0.2.7"));
        assert_eq!(net("::ffff:192.0.2.9").to_string(), "192.0.2.0/24");
        assert_eq!(net("2001:db8:1:2:aaaa::1"), net("2001:db8:1:2:bbbb::2"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
        // Loopback is no exception: 127.0.0.1 and 127.0.1.1 are two networks.
        assert_ne!(net("127.0.0.1"), net("127.0.1.1"));
        assert_eq!(net("127.0.0.1"), net("127.0.0.2"));
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let l = limits("per_address_burst = 2\nper_address_per_minute = 2");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = l.check_addr(ip).unwrap();
        assert_eq!((first.limit, first.remaining), (2, 1));
        l.check_addr(ip).unwrap();
        let refusal = l.check_addr(ip).unwrap_err();
        assert!((1..=30).contains(&refusal.retry_after), "{refusal:?}");
        l.clock().advance(Duration::from_secs(30));
        l.check_addr(ip).unwrap();
    }

    #[test]
    fn limiter_state_is_pruned_under_many_distinct_keys() {
        let l = limits("per_user_burst = 1\nper_user_per_minute = 60");
        for i in 0..50_000 {
            let _ = l.check_user(&format!("user{i}"));
        }
        assert!(l.tracked_keys() >= 50_000);
        l.clock().advance(Duration::from_secs(2));
        l.prune();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn long_usernames_are_truncated_before_keying() {
        let l = limits("per_user_burst = 1");
        let long = "a".repeat(10_000);
        l.check_user(&long).unwrap();
        // Same first 64 characters: the same key.
        assert!(l.check_user(&format!("{long}b")).is_err());
    }

    #[test]
    fn refreshes_and_logins_have_separate_address_budgets() {
        let l = limits(
            "per_address_burst = 1\nper_address_per_minute = 1\n\
             refresh_per_address_burst = 3\nrefresh_per_address_per_minute = 1",
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            l.check_refresh_addr(ip).unwrap();
        }
        let refusal = l.check_refresh_addr(ip).unwrap_err();
        assert_eq!(refusal.limit, 3);
        l.check_addr(ip).unwrap();
        assert_eq!(l.check_addr(ip).unwrap_err().limit, 1);
    }

    #[test]
    fn a_charge_given_back_leaves_the_user_budget_as_it_was() {
        let l = limits("per_user_burst = 2\nper_user_per_minute = 1");
        for _ in 0..10 {
            l.check_user("alice").unwrap();
            l.give_back_user("alice");
        }
        // Giving back more than was charged never grows the bucket past its burst.
        l.give_back_user("alice");
        l.give_back_user("bob");
        for name in ["alice", "bob"] {
            assert_eq!(l.check_user(name).unwrap().remaining, 1, "{name}");
            l.check_user(name).unwrap();
            assert!(l.check_user(name).is_err(), "{name}");
        }
        // A refund gives back exactly one cell.
        l.give_back_user("alice");
        l.check_user("alice").unwrap();
        assert!(l.check_user("alice").is_err());
        l.clock().advance(Duration::from_secs(61));
        l.prune();
        l.check_user("alice").unwrap();
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let l = limits("enabled = false\nper_user_burst = 1");
        for _ in 0..10 {
            l.check_user("alice").unwrap();
        }
    }

    /// A ceiling everywhere below the limit per network would lock names everywhere first: the
    /// denial of service the per-network split exists to prevent, so it is refused.
    #[test]
    fn per_user_failure_ceiling_below_the_per_network_limit_is_refused() {
        let e = err("[auth.limits]\nmax_failures = 10\nmax_failures_per_user = 9\n");
        assert!(e.contains("auth.limits.max_failures_per_user"), "{e}");
        let c = Config::from_toml("[auth.limits]\nmax_failures = 10\nmax_failures_per_user = 10\n")
            .unwrap();
        assert_eq!(c.auth.limits.max_failures_per_user.get(), 10);
        for key in [
            "refresh_per_address_burst",
            "refresh_per_address_per_minute",
        ] {
            let e = err(&format!("[auth.limits]\n{key} = 0\n"));
            assert!(e.contains(key), "{e}");
        }
    }
}
