//! Brute-force limits on the login-type endpoints: keyed governor limiters per client address
//! (IPv6 by /64) and per canonical username, and the consecutive-failure lockout whose state
//! lives in the store. Checked before any store lookup or hashing.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::Clock;
use crate::config::LimitsConfig;

/// Longest key kept in a limiter (usernames are at most 64 bytes; addresses are fixed size).
const MAX_KEY_BYTES: usize = 64;

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, Clock, StateInformationMiddleware>;

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
    by_addr: Keyed<IpAddr>,
    by_user: Keyed<String>,
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
        let by_user = RateLimiter::dashmap_with_clock(
            quota(config.per_user_per_minute, config.per_user_burst),
            clock.clone(),
        )
        .with_middleware::<StateInformationMiddleware>();
        Self {
            config,
            clock,
            by_addr,
            by_user,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// One attempt from `addr`; IPv6 addresses count per /64.
    pub fn check_addr(&self, addr: IpAddr) -> Result<Allowance, Refusal> {
        if !self.config.enabled {
            return Ok(self.unlimited());
        }
        let key = addr_key(addr);
        match self.by_addr.check_key(&key) {
            Ok(snapshot) => {
                Ok(self.allowance(snapshot.quota(), snapshot.remaining_burst_capacity()))
            }
            Err(not_until) => Err(self.refusal(not_until)),
        }
    }

    /// One attempt for the canonical (or, when it does not parse, the truncated raw) username.
    pub fn check_user(&self, username: &str) -> Result<Allowance, Refusal> {
        if !self.config.enabled {
            return Ok(self.unlimited());
        }
        let key: String = username.chars().take(MAX_KEY_BYTES).collect();
        match self.by_user.check_key(&key) {
            Ok(snapshot) => {
                Ok(self.allowance(snapshot.quota(), snapshot.remaining_burst_capacity()))
            }
            Err(not_until) => Err(self.refusal(not_until)),
        }
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
        self.by_user.retain_recent();
        self.by_user.shrink_to_fit();
    }

    /// Keys currently held (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.by_addr.len() + self.by_user.len()
    }
}

/// IPv4 as is; IPv6 by its /64 (one host usually owns the whole prefix); v4-mapped as IPv4.
pub fn addr_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

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
    fn disabled_limits_never_refuse() {
        let l = limits("enabled = false\nper_user_burst = 1");
        for _ in 0..10 {
            l.check_user("alice").unwrap();
        }
    }
}
