//! The shared limits against a real Redis: private `redis-server`s ([`testing`]) on free
//! 127.0.0.1 ports, stopped when this test process ends however it ends. Without the binary the
//! tests pass with a notice, except in CI (`CI` set), where they fail.

use std::num::NonZeroU32;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use futures_util::future::join_all;

use super::testing::{self, Listen, Server, free_port};
use super::*;

/// A prefix no other test (nor an earlier run against the same server) uses.
fn prefix(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{}:{test}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(url: String, prefix: &str) -> SharedLimitsConfig {
    SharedLimitsConfig {
        url,
        password: None,
        ca_pem: None,
        prefix: prefix.to_owned(),
        command_timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(250),
    }
}

/// A gateway for the tests of what the limits decide: timeouts at their most patient, so that
/// a machine busy with other tests does not turn a verdict into a fallback. The tests of
/// failures use [`config`]'s short ones.
async fn gateway(server: &Server, prefix: &str) -> SharedLimits {
    let limits = SharedLimits::connect(SharedLimitsConfig {
        command_timeout: MAX_TIMEOUT,
        connect_timeout: MAX_TIMEOUT,
        ..config(server.url(), prefix)
    })
    .await
    .unwrap();
    assert!(!limits.is_degraded(), "{}", server.log());
    limits
}

/// A gateway with the short timeouts of [`config`] (100 ms a command), for the tests of failures.
async fn fast_gateway(server: &Server, test: &str) -> SharedLimits {
    let limits = SharedLimits::connect(config(server.url(), &prefix(test)))
        .await
        .unwrap();
    // A busy machine may miss the first deadline; the test needs a working start.
    until_answered(&limits).await;
    limits
}

/// Three cells, one back every 2/3 s: 3 per 2 s.
fn three_per_two_seconds() -> Quota {
    Quota::with_period(Duration::from_secs(2) / 3)
        .unwrap()
        .allow_burst(NonZeroU32::new(3).unwrap())
}

fn allowed(verdict: Verdict) -> bool {
    matches!(verdict, Verdict::Allowed { .. })
}

#[tokio::test]
async fn a_burst_is_refused_with_a_sensible_retry_after() {
    let Some(server) = testing::shared() else {
        return;
    };
    let limits = gateway(server, &prefix("burst")).await;
    let quota = three_per_two_seconds();
    for expected in [2, 1, 0] {
        match limits.check(LimitKind::Address, b"192.0.2.1", quota).await {
            Ok(Verdict::Allowed { remaining, full_in }) => {
                assert_eq!(remaining, expected);
                assert!(full_in <= Duration::from_secs(2), "{full_in:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    let verdict = limits
        .check(LimitKind::Address, b"192.0.2.1", quota)
        .await
        .unwrap();
    let Verdict::Refused { retry_after } = verdict else {
        panic!("{verdict:?}");
    };
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_secs(2) / 3,
        "{retry_after:?}"
    );
    assert_eq!(
        verdict.into_limits(quota),
        Err(Refusal {
            retry_after: 1,
            limit: 3
        })
    );
    tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
    let verdict = limits
        .check(LimitKind::Address, b"192.0.2.1", quota)
        .await
        .unwrap();
    assert!(allowed(verdict), "{verdict:?}");
}

#[tokio::test]
async fn n_gateways_do_not_multiply_the_login_budget() {
    let Some(server) = testing::shared() else {
        return;
    };
    let prefix = prefix("gateways");
    let (a, b) = (
        gateway(server, &prefix).await,
        gateway(server, &prefix).await,
    );
    let quota = three_per_two_seconds();
    let user = b"alice";
    assert!(allowed(
        a.check(LimitKind::User, user, quota).await.unwrap()
    ));
    assert!(allowed(
        b.check(LimitKind::User, user, quota).await.unwrap()
    ));
    assert!(allowed(
        a.check(LimitKind::User, user, quota).await.unwrap()
    ));
    assert!(!allowed(
        b.check(LimitKind::User, user, quota).await.unwrap()
    ));
    assert!(!allowed(
        a.check(LimitKind::User, user, quota).await.unwrap()
    ));
}

#[tokio::test]
async fn concurrent_checks_from_two_gateways_never_overspend_the_budget() {
    let Some(server) = testing::shared() else {
        return;
    };
    let prefix = prefix("concurrent");
    let gateways = [
        gateway(server, &prefix).await,
        gateway(server, &prefix).await,
    ];
    let quota = three_per_two_seconds();
    let checks = (0..40).map(|i| gateways[i % 2].check(LimitKind::User, b"alice", quota));
    let verdicts = join_all(checks).await;
    let granted = verdicts
        .into_iter()
        .filter(|v| allowed(*v.as_ref().unwrap()))
        .count();
    assert_eq!(granted, 3);
}

#[tokio::test]
async fn a_given_back_charge_restores_exactly_one_cell() {
    let Some(server) = testing::shared() else {
        return;
    };
    let limits = gateway(server, &prefix("give-back")).await;
    let quota = three_per_two_seconds();
    let check = |name: &'static [u8]| limits.check(LimitKind::User, name, quota);
    // Giving back what was never charged does not grow the bucket past its burst.
    for _ in 0..5 {
        limits
            .give_back(LimitKind::User, b"alice", quota)
            .await
            .unwrap();
    }
    for _ in 0..10 {
        assert!(allowed(check(b"alice").await.unwrap()));
        limits
            .give_back(LimitKind::User, b"alice", quota)
            .await
            .unwrap();
    }
    for _ in 0..3 {
        assert!(allowed(check(b"alice").await.unwrap()));
    }
    assert!(!allowed(check(b"alice").await.unwrap()));
    limits
        .give_back(LimitKind::User, b"alice", quota)
        .await
        .unwrap();
    assert!(allowed(check(b"alice").await.unwrap()));
    assert!(!allowed(check(b"alice").await.unwrap()));
}

#[tokio::test]
async fn kinds_and_prefixes_keep_separate_budgets() {
    let Some(server) = testing::shared() else {
        return;
    };
    let one = gateway(server, &prefix("one")).await;
    let other = gateway(server, &prefix("other")).await;
    let quota = Quota::with_period(Duration::from_secs(60))
        .unwrap()
        .allow_burst(NonZeroU32::new(1).unwrap());
    let key = b"192.0.2.1";
    assert!(allowed(
        one.check(LimitKind::Address, key, quota).await.unwrap()
    ));
    assert!(!allowed(
        one.check(LimitKind::Address, key, quota).await.unwrap()
    ));
    for kind in [LimitKind::RefreshAddress, LimitKind::User] {
        assert!(
            allowed(one.check(kind, key, quota).await.unwrap()),
            "{kind:?}"
        );
    }
    assert!(allowed(
        other.check(LimitKind::Address, key, quota).await.unwrap()
    ));
}

#[tokio::test]
async fn keys_expire_and_never_hold_the_username_in_the_clear() {
    let Some(server) = testing::shared() else {
        return;
    };
    let prefix = prefix("keys");
    let limits = gateway(server, &prefix).await;
    let quota = three_per_two_seconds();
    for _ in 0..3 {
        limits
            .check(LimitKind::User, b"alice@example.com", quota)
            .await
            .unwrap();
    }
    let mut admin = server.admin().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    let hash = key.strip_prefix(&format!("{prefix}:user:")).unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let value: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(value.bytes().all(|b| b.is_ascii_digit()), "{value}");
    // The state matters until the three cells are back, 2 s after the first.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!((1..=2000).contains(&ttl), "{ttl}");
    // Another name, another key of the same length.
    let other = limits.redis_key(LimitKind::User, &[b'a'; 64]);
    assert_eq!(other.len(), key.len());
    assert!(!other.contains("aaaa"));
}

#[tokio::test]
async fn a_flushed_script_cache_is_loaded_again() {
    let Some(server) = testing::shared() else {
        return;
    };
    let limits = gateway(server, &prefix("flush")).await;
    let quota = three_per_two_seconds();
    limits
        .check(LimitKind::User, b"alice", quota)
        .await
        .unwrap();
    let mut admin = server.admin().await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let verdict = limits
        .check(LimitKind::User, b"alice", quota)
        .await
        .unwrap();
    assert!(
        matches!(verdict, Verdict::Allowed { remaining: 1, .. }),
        "{verdict:?}"
    );
}

/// Runs `check` and returns its result with the time it took.
async fn timed_check(limits: &SharedLimits) -> (Result<Verdict, SharedError>, Duration) {
    let started = Instant::now();
    let result = limits
        .check(LimitKind::User, b"alice", three_per_two_seconds())
        .await;
    (result, started.elapsed())
}

/// Checks until one succeeds, for at most 5 s.
async fn until_answered(limits: &SharedLimits) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if timed_check(limits).await.0.is_ok() {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the shared limits did not answer again within 5 s");
}

#[tokio::test]
async fn a_stopped_redis_fails_fast_degrades_once_and_recovers() {
    let Some(server) = Server::start(Listen::Plain) else {
        return;
    };
    let limits = fast_gateway(&server, "stopped").await;
    server.stop();

    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (result, took) = timed_check(&limits).await;
        assert!(result.is_err(), "{result:?}");
        slowest = slowest.max(took);
    }
    println!("slowest check against a stopped redis: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(limits.is_degraded());
    assert_eq!(limits.outages(), 1);

    server.restart();
    let took = until_answered(&limits).await;
    println!("answered again {took:?} after the restart");
    assert!(!limits.is_degraded());
    assert_eq!(limits.outages(), 1);
}

#[tokio::test]
async fn a_hung_redis_costs_one_timeout_per_check() {
    let Some(server) = Server::start(Listen::Plain) else {
        return;
    };
    let limits = fast_gateway(&server, "hung").await;
    server.pause();
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let (result, took) = timed_check(&limits).await;
        assert!(result.is_err(), "{result:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        slowest = slowest.max(took);
    }
    println!("slowest check against a hung redis: {slowest:?}");
    assert_eq!(limits.outages(), 1);
    server.resume();
    until_answered(&limits).await;
    assert!(!limits.is_degraded());
}

#[tokio::test]
async fn a_gateway_starts_while_redis_is_down() {
    if !testing::available() {
        return;
    }
    let started = Instant::now();
    let limits = SharedLimits::connect(config(
        format!("redis://127.0.0.1:{}", free_port()),
        &prefix("down"),
    ))
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(limits.is_degraded());
    let (result, took) = timed_check(&limits).await;
    assert!(
        result.is_err() && took < Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_rediss_server_is_verified_against_the_configured_ca() {
    if !testing::available() {
        return;
    }
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let Some(server) = Server::start(Listen::Tls { cert, key }) else {
        return;
    };
    let url = format!("rediss://localhost:{}", server.port);

    // redis loads the system's roots and builds a TLS config on every connection: ~100 ms in a
    // debug build alone, more beside other tests. Room for that here; these tests are about
    // which certificate is trusted, not how fast.
    let mut trusted = SharedLimitsConfig {
        command_timeout: MAX_TIMEOUT,
        connect_timeout: MAX_TIMEOUT,
        ..config(url.clone(), &prefix("tls"))
    };
    trusted.ca_pem = Some(certified.cert.pem().into_bytes());
    let started = Instant::now();
    let trusted_config = trusted.clone();
    let limits = SharedLimits::connect(trusted).await.unwrap();
    println!("TLS connect and PING took {:?}", started.elapsed());
    assert!(!limits.is_degraded(), "{}", server.log());
    assert!(timed_check(&limits).await.0.is_ok());

    // The system's roots do not know the test CA.
    let untrusted = SharedLimits::connect(SharedLimitsConfig {
        ca_pem: None,
        ..trusted_config
    })
    .await
    .unwrap();
    assert!(untrusted.is_degraded());
    match timed_check(&untrusted).await.0 {
        Err(SharedError::Redis(error)) => {
            assert!(error.to_string().contains("UnknownIssuer"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unusable_configurations_are_refused_before_connecting() {
    let base = || config("redis://127.0.0.1:1".to_owned(), "gh");
    let refused = |c: SharedLimitsConfig| SharedLimits::new(c).err();
    for (url, expected) in [
        ("http://127.0.0.1", "redis:// or rediss://"),
        ("unix:///tmp/redis.sock", "redis:// or rediss://"),
        ("redis://:secret@127.0.0.1", "password"),
        ("redis://user:secret@127.0.0.1", "password"),
        ("rediss://127.0.0.1/#insecure", "fragment"),
        ("redis://127.0.0.1/?protocol=resp3", "query"),
    ] {
        let error = refused(SharedLimitsConfig {
            url: url.to_owned(),
            ..base()
        })
        .unwrap_or_else(|| panic!("{url} was accepted"));
        assert!(error.to_string().contains(expected), "{url}: {error}");
    }
    for prefix in ["", "a b", "gh{x}", &"a".repeat(65)] {
        assert!(
            matches!(
                refused(SharedLimitsConfig {
                    prefix: prefix.to_owned(),
                    ..base()
                }),
                Some(SharedConfigError::Prefix)
            ),
            "{prefix:?}"
        );
    }
    for timeout in [Duration::ZERO, Duration::from_secs(2)] {
        assert!(matches!(
            refused(SharedLimitsConfig {
                command_timeout: timeout,
                ..base()
            }),
            Some(SharedConfigError::Timeout("command_timeout"))
        ));
        assert!(matches!(
            refused(SharedLimitsConfig {
                connect_timeout: timeout,
                ..base()
            }),
            Some(SharedConfigError::Timeout("connect_timeout"))
        ));
    }
    assert!(matches!(
        refused(SharedLimitsConfig {
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            ..base()
        }),
        Some(SharedConfigError::CaWithoutTls)
    ));
    // A username (for an ACL user) is fine, and so is a database number.
    let accepted = SharedLimits::new(SharedLimitsConfig {
        url: "redis://gatehouse@127.0.0.1:1/2".to_owned(),
        ..base()
    });
    assert!(accepted.is_ok(), "{accepted:?}");
    let shown = format!(
        "{:?}",
        SharedLimitsConfig {
            password: Some(Zeroizing::new("secret".to_owned())),
            ..base()
        }
    );
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn refusals_round_up_to_whole_seconds_like_retry_after_needs() {
    let quota = three_per_two_seconds();
    let refusal = |micros| {
        Verdict::Refused {
            retry_after: Duration::from_micros(micros),
        }
        .into_limits(quota)
    };
    assert_eq!(refusal(0).unwrap_err().retry_after, 1);
    assert_eq!(refusal(1).unwrap_err().retry_after, 1);
    assert_eq!(refusal(1_000_000).unwrap_err().retry_after, 1);
    assert_eq!(refusal(1_000_001).unwrap_err().retry_after, 2);
    let allowance = Verdict::Allowed {
        remaining: 1,
        full_in: Duration::from_millis(1333),
    }
    .into_limits(quota)
    .unwrap();
    assert_eq!(
        (allowance.limit, allowance.remaining, allowance.reset),
        (3, 1, 1)
    );
}

#[test]
fn remaining_cells_follow_governors_arithmetic() {
    let gcra = Gcra::of(three_per_two_seconds());
    assert_eq!(gcra.t, 666_666);
    assert_eq!(gcra.tau, 2 * 666_666);
    assert_eq!(gcra.remaining(gcra.t), 2);
    assert_eq!(gcra.remaining(2 * gcra.t), 1);
    assert_eq!(gcra.remaining(3 * gcra.t), 0);
    assert_eq!(gcra.remaining(0), 2);
}

#[tokio::test]
async fn keys_are_the_prefix_the_kind_and_the_sha256_of_the_key() {
    let limits = SharedLimits::new(config("redis://127.0.0.1:1".to_owned(), "gh:prod")).unwrap();
    assert_eq!(
        limits.redis_key(LimitKind::User, b"alice"),
        "gh:prod:user:2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
    );
    assert!(
        limits
            .redis_key(LimitKind::RefreshAddress, b"192.0.2.1")
            .starts_with("gh:prod:refresh_address:")
    );
}

/// The checks come from the endpoint runtime, which every reload replaces while the shared
/// limits live on: a connection driven there would die with it, and each reload would cost a
/// fallback and a false outage. Each check here runs on a runtime of its own, dropped after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_from_a_runtime_that_ends_do_not_cut_the_connection() {
    let Some(server) = testing::shared() else {
        return;
    };
    let limits = Arc::new(
        SharedLimits::new(SharedLimitsConfig {
            command_timeout: MAX_TIMEOUT,
            connect_timeout: MAX_TIMEOUT,
            ..config(server.url(), &prefix("runtimes"))
        })
        .unwrap(),
    );
    for round in 0..3 {
        let limits = Arc::clone(&limits);
        let verdict = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(limits.check(LimitKind::User, b"alice", three_per_two_seconds()))
        })
        .await
        .unwrap();
        assert!(
            matches!(verdict, Ok(Verdict::Allowed { .. })),
            "round {round}: {verdict:?}"
        );
    }
    assert_eq!(limits.outages(), 0);
}
