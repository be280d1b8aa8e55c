//! The login limits: in process, and shared by several gateways through a private
//! `redis-server` ([`shared::testing`]; without the binary those tests pass with a notice,
//! except in CI).

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

#[tokio::test]
async fn burst_then_refusal_then_refill() {
    let l = limits("per_address_burst = 2\nper_address_per_minute = 2");
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let first = l.check_addr(ip).await.unwrap();
    assert_eq!((first.limit, first.remaining), (2, 1));
    l.check_addr(ip).await.unwrap();
    let refusal = l.check_addr(ip).await.unwrap_err();
    assert!((1..=30).contains(&refusal.retry_after), "{refusal:?}");
    l.clock().advance(Duration::from_secs(30));
    l.check_addr(ip).await.unwrap();
}

#[tokio::test]
async fn limiter_state_is_pruned_under_many_distinct_keys() {
    let l = limits("per_user_burst = 1\nper_user_per_minute = 60");
    for i in 0..50_000 {
        let _ = l.check_user(&format!("user{i}")).await;
    }
    assert!(l.tracked_keys() >= 50_000);
    l.clock().advance(Duration::from_secs(2));
    l.prune();
    assert_eq!(l.tracked_keys(), 0);
}

#[tokio::test]
async fn long_usernames_are_truncated_before_keying() {
    let l = limits("per_user_burst = 1");
    let long = "a".repeat(10_000);
    l.check_user(&long).await.unwrap();
    // Same first 64 characters: the same key.
    assert!(l.check_user(&format!("{long}b")).await.is_err());
}

#[tokio::test]
async fn refreshes_and_logins_have_separate_address_budgets() {
    let l = limits(
        "per_address_burst = 1\nper_address_per_minute = 1\n\
         refresh_per_address_burst = 3\nrefresh_per_address_per_minute = 1",
    );
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    for _ in 0..3 {
        l.check_refresh_addr(ip).await.unwrap();
    }
    let refusal = l.check_refresh_addr(ip).await.unwrap_err();
    assert_eq!(refusal.limit, 3);
    l.check_addr(ip).await.unwrap();
    assert_eq!(l.check_addr(ip).await.unwrap_err().limit, 1);
}

#[tokio::test]
async fn a_charge_given_back_leaves_the_user_budget_as_it_was() {
    let l = limits("per_user_burst = 2\nper_user_per_minute = 1");
    for _ in 0..10 {
        l.check_user("alice").await.unwrap();
        l.give_back_user("alice").await;
    }
    // Giving back more than was charged never grows the bucket past its burst.
    l.give_back_user("alice").await;
    l.give_back_user("bob").await;
    for name in ["alice", "bob"] {
        assert_eq!(l.check_user(name).await.unwrap().remaining, 1, "{name}");
        l.check_user(name).await.unwrap();
        assert!(l.check_user(name).await.is_err(), "{name}");
    }
    // A refund gives back exactly one cell.
    l.give_back_user("alice").await;
    l.check_user("alice").await.unwrap();
    assert!(l.check_user("alice").await.is_err());
    l.clock().advance(Duration::from_secs(61));
    l.prune();
    l.check_user("alice").await.unwrap();
}

#[tokio::test]
async fn disabled_limits_never_refuse() {
    let l = limits("enabled = false\nper_user_burst = 1");
    for _ in 0..10 {
        l.check_user("alice").await.unwrap();
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

// The limits shared through Redis.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Instant;

use super::shared::testing::{self, Blackhole, Listen, Server};

/// A key prefix no other test (nor an earlier run against the same server) uses.
fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{}-{test}",
        std::process::id(),
        NEXT.fetch_add(1, AtomicOrdering::Relaxed)
    )
}

/// One gateway's limits: 3 attempts per address and per user, one back a minute (nothing refills
/// during a test), shared through `url` under `prefix`, with `timeout` per command.
fn gateway_on(url: &str, prefix: &str, timeout: &str) -> Limits {
    let toml = format!(
        "[auth.limits]\nper_address_burst = 3\nper_address_per_minute = 1\n\
         per_user_burst = 3\nper_user_per_minute = 1\n\
         [auth.limits.redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
         command_timeout = \"{timeout}\"\nconnect_timeout = \"{timeout}\"\n"
    );
    let config = Config::from_toml(&toml).unwrap();
    Limits::new(config.auth.limits, Clock::default())
}

/// A gateway whose verdicts are the tests' subject: timeouts at their most patient, so a
/// machine busy with other tests does not turn a verdict into a fallback; and connected.
async fn gateway(server: &Server, prefix: &str) -> Limits {
    let limits = gateway_on(&server.url(), prefix, "1s");
    until_connected(&limits, server).await;
    limits
}

/// Waits (at most 5 s) until the limits' connection answers.
async fn until_connected(limits: &Limits, server: &Server) {
    let shared = limits.shared().expect("shared limits configured");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let probe = shared
            .give_back(LimitKind::User, b"-probe-", limits.by_user_quota())
            .await;
        if probe.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the shared limits did not answer within 5 s\n{}",
        server.log()
    );
}

/// This process's `gatehouse_shared_limit_fallbacks_total{kind}`.
fn fallbacks(kind: &str) -> u64 {
    let text = crate::metrics::render().unwrap_or_default();
    let series = format!("gatehouse_shared_limit_fallbacks_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Each gateway alone would let 3 guesses per user and per address through: with one Redis, two
/// gateways let 3 through together, whichever gateway the load balancer picks.
#[tokio::test]
async fn two_gateways_share_one_login_budget() {
    let Some(server) = testing::shared() else {
        return;
    };
    let prefix = unique_prefix("share");
    let (a, b) = (
        gateway(server, &prefix).await,
        gateway(server, &prefix).await,
    );
    for (i, gw) in [&a, &b, &a].into_iter().enumerate() {
        let allowance = gw.check_user("alice").await.unwrap();
        assert_eq!(allowance.remaining, 2 - i as u32, "attempt {i}");
    }
    // b has let one guess through of its own 3: the refusal is the shared budget's.
    let refusal = b.check_user("alice").await.unwrap_err();
    assert_eq!(refusal.limit, 3);
    assert!((1..=60).contains(&refusal.retry_after), "{refusal:?}");
    assert!(a.check_user("alice").await.is_err());
    // Another user, another budget.
    b.check_user("bob").await.unwrap();

    let ip: IpAddr = "2001:db8:1:2::7".parse().unwrap();
    let same_64: IpAddr = "2001:db8:1:2::8".parse().unwrap();
    a.check_addr(ip).await.unwrap();
    b.check_addr(same_64).await.unwrap();
    a.check_addr(same_64).await.unwrap();
    assert!(b.check_addr(ip).await.is_err());
    // Refreshes keep a budget of their own, shared too.
    b.check_refresh_addr(ip).await.unwrap();
}

/// A right password gives its charge back in Redis too, so a user who logs in on gateway a
/// does not spend the budget gateway b sees.
#[tokio::test]
async fn a_successful_login_gives_its_charge_back_on_every_gateway() {
    let Some(server) = testing::shared() else {
        return;
    };
    let prefix = unique_prefix("give-back");
    let (a, b) = (
        gateway(server, &prefix).await,
        gateway(server, &prefix).await,
    );
    for _ in 0..3 {
        a.check_user("alice").await.unwrap();
    }
    assert!(b.check_user("alice").await.is_err());
    a.give_back_user("alice").await;
    b.check_user("alice").await.unwrap();
    assert!(b.check_user("alice").await.is_err());
}

/// Redis down: each check fails fast and the gateway's own limit decides, so guesses are
/// still refused past the in-process budget; the outage is counted and logged once.
#[tokio::test]
async fn redis_down_falls_back_to_the_local_limit_not_to_none() {
    let Some(server) = Server::start(Listen::Plain) else {
        return;
    };
    crate::metrics::install();
    let limits = gateway_on(&server.url(), &unique_prefix("down"), "100ms");
    until_connected(&limits, &server).await;
    server.stop();
    let before = fallbacks("user");
    let mut slowest = Duration::ZERO;
    for attempt in 0..3 {
        let started = Instant::now();
        let allowance = limits.check_user("mallory").await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(allowance.unwrap().remaining, 2 - attempt);
    }
    let started = Instant::now();
    let refusal = limits.check_user("mallory").await.unwrap_err();
    slowest = slowest.max(started.elapsed());
    assert_eq!(refusal.limit, 3);
    println!("slowest check with Redis down: {slowest:?}");
    assert!(slowest < Duration::from_millis(600), "{slowest:?}");
    let shared = limits.shared().unwrap();
    assert!(shared.is_degraded());
    assert_eq!(shared.outages(), 1);
    // The three that Redis did not answer; the refusal never asked it.
    assert!(fallbacks("user") >= before + 3);
}

/// Redis back after an outage: the next checks use it again, no restart or reload needed.
#[tokio::test]
async fn redis_back_resumes_shared_limits_without_restart() {
    let Some(server) = Server::start(Listen::Plain) else {
        return;
    };
    let prefix = unique_prefix("back");
    let (a, b) = (
        gateway(&server, &prefix).await,
        gateway(&server, &prefix).await,
    );
    server.stop();
    a.check_user("alice").await.unwrap();
    assert!(a.shared().unwrap().is_degraded());
    server.restart();
    until_connected(&a, &server).await;
    until_connected(&b, &server).await;
    assert!(!a.shared().unwrap().is_degraded());
    // Shared again: a has 2 cells of its own left, b 3, but together they get 3.
    a.check_user("alice").await.unwrap();
    b.check_user("alice").await.unwrap();
    a.check_user("alice").await.unwrap();
    assert!(b.check_user("alice").await.is_err());
    assert_eq!(a.shared().unwrap().outages(), 1);
}

/// A Redis that accepts connections and never answers (a hung server, a firewall dropping
/// replies) must not hold logins: the gateway starts at once, and each check waits at most
/// command_timeout before the gateway's own limit decides.
#[tokio::test]
async fn a_blackholed_redis_bounds_the_login_wait() {
    if !testing::available() {
        return;
    }
    let hole = Blackhole::new();
    let started = Instant::now();
    let limits = gateway_on(&hole.url(), &unique_prefix("blackhole"), "100ms");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    let mut slowest = Duration::ZERO;
    for attempt in 0..3 {
        let started = Instant::now();
        let allowance = limits.check_user("mallory").await.unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(allowance.remaining, 2 - attempt);
    }
    // Refused in process: Redis is not even asked.
    let started = Instant::now();
    assert!(limits.check_user("mallory").await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    limits.give_back_user("mallory").await;
    slowest = slowest.max(started.elapsed());
    println!("slowest call with a blackholed Redis: {slowest:?}");
    assert!(
        slowest >= Duration::from_millis(90),
        "Redis was not asked: {slowest:?}"
    );
    // command_timeout, plus room for a busy machine's timers; not the client's own retries.
    assert!(slowest < Duration::from_millis(250), "{slowest:?}");
    assert!(limits.shared().unwrap().is_degraded());
}

/// A reload that leaves `[auth.limits.redis]` alone keeps the connection (counters live in
/// Redis anyway); one that changes it connects anew.
#[tokio::test]
async fn a_reload_keeps_the_redis_connection_unless_its_settings_changed() {
    let old = gateway_on("redis://127.0.0.1:1", "gh", "100ms");
    let quotas_changed = {
        let mut config = old.config().clone();
        config.per_user_burst = NonZeroU32::new(7).unwrap();
        Limits::reloaded(config, &old)
    };
    assert!(Arc::ptr_eq(
        old.shared().unwrap(),
        quotas_changed.shared().unwrap()
    ));
    assert_eq!(quotas_changed.check_user("alice").await.unwrap().limit, 7);
    let moved = {
        let mut config = old.config().clone();
        if let Some(redis) = config.redis.as_mut() {
            redis.prefix = "gh2".into();
        }
        Limits::reloaded(config, &old)
    };
    assert!(!Arc::ptr_eq(old.shared().unwrap(), moved.shared().unwrap()));
    let removed = {
        let mut config = old.config().clone();
        config.redis = None;
        Limits::reloaded(config, &old)
    };
    assert!(removed.shared().is_none());
}

fn redis_refusal(section: &str) -> String {
    err(&format!("[auth.limits.redis]\n{section}\n"))
}

/// Settings that would leak the password, turn off certificate checks or wait too long are
/// refused when the configuration is read, naming the key.
#[test]
fn unsafe_redis_settings_are_refused_naming_the_key() {
    for (section, key, why) in [
        ("url = \"redis://:hunter2@127.0.0.1\"", "url", "password"),
        ("url = \"redis://gh:hunter2@127.0.0.1\"", "url", "password"),
        ("url = \"rediss://127.0.0.1/#insecure\"", "url", "fragment"),
        (
            "url = \"redis://127.0.0.1/?protocol=resp3\"",
            "url",
            "query",
        ),
        ("url = \"http://127.0.0.1\"", "url", "redis://"),
        ("prefix = \"gh\"", "url", "required"),
        (
            "url = \"redis://127.0.0.1\"\nprefix = \"a{b}\"",
            "prefix",
            "characters",
        ),
        (
            "url = \"redis://127.0.0.1\"\ncommand_timeout = \"2s\"",
            "command_timeout",
            "1 s",
        ),
        (
            "url = \"redis://127.0.0.1\"\nconnect_timeout = \"0ms\"",
            "connect_timeout",
            "1 ms",
        ),
        (
            "url = \"redis://127.0.0.1\"\ncolour = \"red\"",
            "colour",
            "unknown",
        ),
    ] {
        let e = redis_refusal(section);
        assert!(e.contains(key) && e.contains(why), "{section}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[test]
fn a_ca_file_without_rediss_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let e = redis_refusal(&format!(
        "url = \"redis://127.0.0.1\"\nca_file = \"{}\"",
        ca.display()
    ));
    assert!(
        e.contains("auth.limits.redis.ca_file") && e.contains("rediss"),
        "{e}"
    );
    let ok = Config::from_toml(&format!(
        "[auth.limits.redis]\nurl = \"rediss://localhost\"\nca_file = \"{}\"\n",
        ca.display()
    ))
    .unwrap();
    assert!(ok.auth.limits.redis.unwrap().ca_pem.is_some());
}

/// A password file anyone on the host can read gives them the Redis password: refused. A
/// private one is read, its trailing newline trimmed, and never shown.
#[test]
fn a_world_readable_password_file_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "hunter2\n").unwrap();
    let section = format!(
        "url = \"redis://127.0.0.1\"\npassword_file = \"{}\"",
        file.display()
    );
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = redis_refusal(&section);
        assert!(
            e.contains("auth.limits.redis.password_file") && e.contains("chmod 600"),
            "{mode:o}: {e}"
        );
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = Config::from_toml(&format!("[auth.limits.redis]\n{section}\n")).unwrap();
    assert!(!format!("{:?}", config.auth.limits).contains("hunter2"));
    let redis = config.auth.limits.redis.unwrap();
    assert_eq!(
        redis.password.as_deref().map(String::as_str),
        Some("hunter2")
    );
    let missing = redis_refusal("url = \"redis://127.0.0.1\"\npassword_file = \"/nonexistent\"");
    assert!(
        missing.contains("auth.limits.redis.password_file"),
        "{missing}"
    );
}

#[test]
fn redis_settings_default_to_none_and_documented_values() {
    assert!(Config::from_toml("").unwrap().auth.limits.redis.is_none());
    let config = Config::from_toml("[auth.limits.redis]\nurl = \"redis://127.0.0.1\"\n").unwrap();
    let redis = config.auth.limits.redis.unwrap();
    assert_eq!(redis.prefix, DEFAULT_REDIS_PREFIX);
    assert_eq!(redis.command_timeout, Duration::from_millis(100));
    assert_eq!(redis.connect_timeout, Duration::from_secs(1));
    assert!(redis.password.is_none() && redis.ca_pem.is_none());
}
