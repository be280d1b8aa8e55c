//! Brute-force limits through real sockets, with the limiters' clock moved by the test; and
//! shared by several gateways through a private `redis-server`.

use std::time::Duration;

use http::StatusCode;

use crate::support::{GatewayBuilder, TestGateway, Upstream, client};

#[path = "../../src/limits/shared/testing.rs"]
pub(crate) mod redis_testing;

async fn gateway(limits: &str) -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&format!("[auth.limits]\n{limits}"))
        .start()
        .await;
    gw.add_user("alice", "secret", &[], &["read"]).await;
    (gw, up)
}

async fn attempt(
    gw: &TestGateway,
    user: &str,
    password: &str,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut req = client().post(gw.url("/auth/token")).form(&[
        ("grant_type", "password"),
        ("username", user),
        ("password", password),
    ]);
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap()
}

fn advance(gw: &TestGateway, by: Duration) {
    gw.gateway.auth().limits().clock().advance(by);
}

#[tokio::test]
async fn password_spraying_from_one_address_is_refused_with_429_and_headers() {
    let (gw, _up) = gateway(
        "per_address_burst = 3\nper_address_per_minute = 1\nper_user_burst = 100\nper_user_per_minute = 100\nmax_failures = 100",
    )
    .await;
    for user in ["a1", "a2", "a3"] {
        assert_eq!(
            attempt(&gw, user, "x", None).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    let r = attempt(&gw, "a4", "x", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.headers()["ratelimit-limit"], "3");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert!(r.headers().contains_key("ratelimit-reset"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string());
    // Even the right password waits: the limit runs before any lookup or hashing.
    assert_eq!(
        attempt(&gw, "alice", "secret", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    advance(&gw, Duration::from_secs(61));
    assert_eq!(
        attempt(&gw, "alice", "secret", None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn spoofed_x_forwarded_for_from_an_untrusted_peer_does_not_reset_the_address_limit() {
    let (gw, _up) = gateway("per_address_burst = 2\nper_address_per_minute = 1\nper_user_burst = 100\nmax_failures = 100").await;
    attempt(&gw, "u1", "x", Some("198.51.100.1")).await;
    attempt(&gw, "u2", "x", Some("198.51.100.2")).await;
    let r = attempt(&gw, "u3", "x", Some("198.51.100.3")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn trusted_proxy_clients_are_limited_by_their_forwarded_address() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and("[server]\ntrusted_proxies = [\"127.0.0.1\"]")
        .and("[auth.limits]\nper_address_burst = 1\nper_address_per_minute = 1\nper_user_burst = 100\nmax_failures = 100")
        .start()
        .await;
    assert_eq!(
        attempt(&gw, "u1", "x", Some("198.51.100.1")).await.status(),
        400
    );
    assert_eq!(
        attempt(&gw, "u1", "x", Some("198.51.100.1")).await.status(),
        429
    );
    assert_eq!(
        attempt(&gw, "u1", "x", Some("198.51.100.2")).await.status(),
        400
    );
    // IPv6 clients share a bucket per /64.
    assert_eq!(
        attempt(&gw, "u1", "x", Some("2001:db8:1:2::1"))
            .await
            .status(),
        400
    );
    assert_eq!(
        attempt(&gw, "u1", "x", Some("2001:db8:1:2::ffff"))
            .await
            .status(),
        429
    );
    assert_eq!(
        attempt(&gw, "u1", "x", Some("2001:db8:1:3::1"))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn per_username_limit_treats_unknown_users_like_real_ones() {
    let (gw, _up) = gateway(
        "per_address_burst = 100\nper_user_burst = 2\nper_user_per_minute = 1\nmax_failures = 100",
    )
    .await;
    let mut refusals = Vec::new();
    for user in ["alice", "ghost"] {
        assert_eq!(attempt(&gw, user, "x", None).await.status(), 400);
        assert_eq!(attempt(&gw, user, "x", None).await.status(), 400);
        let r = attempt(&gw, user, "x", None).await;
        assert_eq!(r.status(), 429, "{user}");
        refusals.push(r.bytes().await.unwrap());
    }
    assert_eq!(
        refusals[0], refusals[1],
        "the refusal must not reveal which account exists"
    );
    // The username is canonicalised: case does not open a new bucket.
    assert_eq!(attempt(&gw, "ALICE", "secret", None).await.status(), 429);
    assert_eq!(attempt(&gw, "bob", "x", None).await.status(), 400);
}

#[tokio::test]
async fn lockout_after_repeated_failures_holds_even_for_the_right_password() {
    let (gw, _up) = gateway("per_address_burst = 100\nper_user_burst = 100\nmax_failures = 3\nfind_time = \"10m\"\nban_time = \"15m\"").await;
    for _ in 0..3 {
        assert_eq!(attempt(&gw, "alice", "wrong", None).await.status(), 400);
    }
    let r = attempt(&gw, "alice", "secret", None).await;
    assert_eq!(
        r.status(),
        429,
        "a locked account must not log in with the right password"
    );
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 800 && retry <= 900, "{retry}");
    // Unknown names lock the same way.
    for _ in 0..3 {
        attempt(&gw, "ghost", "wrong", None).await;
    }
    assert_eq!(attempt(&gw, "ghost", "wrong", None).await.status(), 429);
    advance(&gw, Duration::from_secs(15 * 60 + 1));
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 200);
}

#[tokio::test]
async fn success_resets_the_failure_count_and_old_failures_expire() {
    let (gw, _up) = gateway(
        "per_address_burst = 100\nper_user_burst = 100\nmax_failures = 3\nfind_time = \"10m\"",
    )
    .await;
    attempt(&gw, "alice", "wrong", None).await;
    attempt(&gw, "alice", "wrong", None).await;
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 200);
    attempt(&gw, "alice", "wrong", None).await;
    attempt(&gw, "alice", "wrong", None).await;
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 200);
    attempt(&gw, "alice", "wrong", None).await;
    attempt(&gw, "alice", "wrong", None).await;
    advance(&gw, Duration::from_secs(11 * 60));
    attempt(&gw, "alice", "wrong", None).await;
    assert_eq!(
        attempt(&gw, "alice", "secret", None).await.status(),
        200,
        "failures outside find_time must not add up"
    );
}

#[tokio::test]
async fn lockout_survives_a_restart() {
    let (mut gw, up) =
        gateway("per_address_burst = 100\nper_user_burst = 100\nmax_failures = 2").await;
    attempt(&gw, "alice", "wrong", None).await;
    attempt(&gw, "alice", "wrong", None).await;
    gw.shutdown().await;
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    drop(gw);
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and("[auth.limits]\nper_address_burst = 100\nper_user_burst = 100\nmax_failures = 2")
        .start_in(dir)
        .await;
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 429);
}

/// The nice value the kernel holds for one of this process's threads (`stat` field 19).
fn thread_nice(tid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The name (field 2) may hold spaces or parentheses: count fields after its closing ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(16)?.parse().ok()
}

fn thread_name(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

#[tokio::test]
async fn login_flood_work_runs_at_the_lowest_priority_and_ends_with_the_app() {
    let (mut gw, _up) = gateway("per_address_burst = 1000\nper_user_burst = 1000").await;
    let tids = gw.gateway.auth().login_thread_ids();
    assert!(tids.len() >= 2, "{tids:?}");
    for &tid in &tids {
        let name = thread_name(tid).unwrap();
        assert!(name.starts_with("gatehouse-"), "{tid}: {name}");
        assert_eq!(thread_nice(tid), Some(19), "{tid} ({name})");
    }
    // The endpoints still answer end to end from their own thread.
    assert_eq!(attempt(&gw, "alice", "wrong", None).await.status(), 400);
    let token = gw.access_token("alice", "secret").await;
    let me = client()
        .get(gw.url("/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    gw.shutdown().await;
    drop(gw);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let alive = || {
        tids.iter()
            .filter(|&&tid| thread_name(tid).is_some_and(|n| n.starts_with("gatehouse-")))
            .count()
    };
    while alive() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(alive(), 0, "login threads outlived their app: {tids:?}");
}

#[tokio::test]
async fn normal_priority_leaves_login_threads_at_the_process_priority() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and("[auth.password]\npriority = \"normal\"")
        .start()
        .await;
    let own = thread_nice(gatehouse_tid()).unwrap();
    for tid in gw.gateway.auth().login_thread_ids() {
        assert_eq!(thread_nice(tid), Some(own), "{tid}");
    }
    gw.add_user("bob", "pw", &[], &[]).await;
    assert_eq!(attempt(&gw, "bob", "pw", None).await.status(), 200);
}

fn gatehouse_tid() -> i32 {
    gatehouse::auth::runtime::current_tid()
}

/// 40 wrong passwords at once for one name (per-user rate limits raised, as for a shared service
/// account): admission reserves a place in the failure budget before any hash starts, so at
/// most `max_failures` guesses are checked; the rest are refused, and the name ends locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_passwords_cannot_exceed_max_failures() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and("[auth.password]\nqueue = 100\n")
        .and(
            "[auth.limits]\nper_address_burst = 1000\nper_address_per_minute = 1000\nper_user_burst = 1000\nper_user_per_minute = 1000\nmax_failures = 5\n",
        )
        .start()
        .await;
    gw.add_user("alice", "secret", &[], &["read"]).await;
    let guesses = (0..40).map(|i| {
        let gw = &gw;
        async move {
            attempt(gw, "alice", &format!("guess-{i}"), None)
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::BAD_REQUEST)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(checked <= 5, "{checked} guesses were checked: {statuses:?}");
    assert_eq!(checked + refused, 40, "{statuses:?}");
    assert_eq!(
        attempt(&gw, "alice", "secret", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the right password must wait out the lockout"
    );
}

/// `enabled = false` turns the rate limits off, never the lockout.
#[tokio::test]
async fn lockout_still_holds_with_the_rate_limits_disabled() {
    let (gw, _up) =
        gateway("enabled = false\nper_address_burst = 1\nper_user_burst = 1\nmax_failures = 3")
            .await;
    for _ in 0..3 {
        assert_eq!(attempt(&gw, "alice", "wrong", None).await.status(), 400);
    }
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 429);
}

/// A client whose connections leave from `local`: on Linux all of 127.0.0.0/8 is loopback, so
/// 127.0.1.1 is another client network (another /24) than 127.0.0.1, with a real source address.
fn client_from(local: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from(local))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn login_from(gw: &TestGateway, from: [u8; 4], user: &str, password: &str) -> StatusCode {
    client_from(from)
        .post(gw.url("/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

const OWNER: [u8; 4] = [127, 0, 0, 1];

fn name(s: &str) -> gatehouse::auth::username::Username {
    gatehouse::auth::username::Username::parse(s).unwrap()
}

/// The lockout as a denial of service: wrong passwords from the attacker's network lock the name
/// for that network (its neighbours included), while the owner, on another network, still logs
/// in with the right password.
#[tokio::test]
async fn attacker_failures_from_another_network_do_not_lock_the_user_out() {
    let (gw, _up) = gateway(
        "per_address_burst = 100\nper_user_burst = 100\nmax_failures = 3\nmax_failures_per_user = 100",
    )
    .await;
    let attacker = [127, 0, 1, 1];
    for _ in 0..3 {
        assert_eq!(login_from(&gw, attacker, "alice", "guess").await, 400);
    }
    assert_eq!(
        login_from(&gw, attacker, "alice", "secret").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the attacker's network is locked out, even with the right password"
    );
    assert_eq!(
        login_from(&gw, [127, 0, 1, 77], "alice", "secret").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a neighbour in the attacker's /24 is the same network"
    );
    assert_eq!(
        login_from(&gw, OWNER, "alice", "secret").await,
        StatusCode::OK,
        "the owner's own network must not be locked by the attacker"
    );
    let now = gw.gateway.auth().limits().clock().unix_now();
    let lockouts = gw
        .gateway
        .auth()
        .store()
        .lockouts(&name("alice"), now)
        .await
        .unwrap();
    assert_eq!(lockouts.everywhere, None);
    let networks: Vec<&str> = lockouts.networks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(networks, ["127.0.1.0/24"]);
}

/// Guessing spread over many networks, each below its own limit: the name's failures from all of
/// them meet `max_failures_per_user`, which locks it for everyone, the owner included, until the
/// ban ends or an operator unlocks it.
#[tokio::test]
async fn distributed_guessing_meets_the_per_user_ceiling() {
    let (gw, _up) = gateway(
        "per_address_burst = 100\nper_user_burst = 100\nmax_failures = 3\nmax_failures_per_user = 7\nban_time = \"15m\"",
    )
    .await;
    let guessers = [
        [127, 0, 1, 1],
        [127, 0, 2, 1],
        [127, 0, 3, 1],
        [127, 0, 4, 1],
    ];
    let mut answers = Vec::new();
    for from in guessers {
        for _ in 0..2 {
            answers.push(login_from(&gw, from, "alice", "guess").await.as_u16());
        }
    }
    // Seven guesses are checked; the eighth meets the lock everywhere.
    assert_eq!(answers, [400, 400, 400, 400, 400, 400, 400, 429]);
    let r = client_from(OWNER)
        .post(gw.url("/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["ratelimit-limit"], "7");
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 800 && retry <= 900, "{retry}");
    // Other names are not affected.
    gw.add_user("bob", "pw", &[], &[]).await;
    assert_eq!(login_from(&gw, [127, 0, 1, 1], "bob", "pw").await, 200);
    // `user unlock` lifts it (the store call the CLI makes).
    let now = gw.gateway.auth().limits().clock().unix_now();
    let store = gw.gateway.auth().store();
    assert!(store.unlock(&name("alice"), now).await.unwrap());
    assert_eq!(login_from(&gw, OWNER, "alice", "secret").await, 200);
    assert_eq!(login_from(&gw, [127, 0, 1, 1], "alice", "guess").await, 400);
}

/// Rotates `refresh` once, by `/auth/refresh` or by the token endpoint's `refresh_token` grant.
async fn refresh(gw: &TestGateway, refresh: &str, by_token_endpoint: bool) -> reqwest::Response {
    let request = if by_token_endpoint {
        client()
            .post(gw.url("/auth/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
    } else {
        client()
            .post(gw.url("/auth/refresh"))
            .form(&[("refresh_token", refresh)])
    };
    request.send().await.unwrap()
}

/// A client that refreshes often (a page polling, many tabs) must not run out of logins: one
/// login and twenty refreshes from one address all succeed, by either endpoint, and the login
/// budget is left exactly as one login left it.
#[tokio::test]
async fn refreshes_do_not_spend_the_login_budget() {
    let (gw, _up) = gateway(
        "per_address_burst = 3\nper_address_per_minute = 1\nper_user_burst = 100\nper_user_per_minute = 100\nmax_failures = 100",
    )
    .await;
    let mut token = gw.login("alice", "secret").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..20 {
        let r = refresh(&gw, &token, i % 2 == 0).await;
        assert_eq!(r.status(), StatusCode::OK, "refresh {i}");
        let body: serde_json::Value = r.json().await.unwrap();
        token = body["refresh_token"].as_str().unwrap().to_owned();
    }
    // Two of the three logins are left, then the login budget refuses as before.
    for _ in 0..2 {
        assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 200);
    }
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 429);
    // And a login flood leaves refreshing alone.
    assert_eq!(refresh(&gw, &token, true).await.status(), 200);
}

/// The refresh budget is a limit of its own: a flood of refresh requests from one address, by
/// either endpoint, meets 429 with Retry-After, before any store lookup; logins are untouched.
#[tokio::test]
async fn refresh_floods_are_refused_with_429_and_retry_after() {
    let (gw, _up) = gateway(
        "per_address_burst = 100\nper_user_burst = 100\nrefresh_per_address_burst = 4\nrefresh_per_address_per_minute = 1",
    )
    .await;
    for i in 0..4 {
        let r = refresh(&gw, &format!("forged-{i}"), i % 2 == 0).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "refresh {i}");
    }
    for by_token_endpoint in [false, true] {
        let r = refresh(&gw, "forged", by_token_endpoint).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(r.headers()["ratelimit-limit"], "4");
    }
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 200);
    advance(&gw, Duration::from_secs(61));
    assert_eq!(refresh(&gw, "forged", true).await.status(), 400);
}

/// The per-username budget is for guesses: the owner logging in again and again (more often
/// than the burst) is never refused, while wrong passwords still spend it and meet 429, the
/// right password included once it is spent (the check runs before hashing).
#[tokio::test]
async fn successful_logins_do_not_count_as_failures() {
    let (gw, _up) = gateway(
        "per_address_burst = 100\nper_user_burst = 3\nper_user_per_minute = 1\nmax_failures = 100",
    )
    .await;
    for i in 0..10 {
        assert_eq!(
            attempt(&gw, "alice", "secret", None).await.status(),
            200,
            "login {i}"
        );
    }
    for _ in 0..3 {
        assert_eq!(attempt(&gw, "alice", "guess", None).await.status(), 400);
    }
    assert_eq!(attempt(&gw, "alice", "guess", None).await.status(), 429);
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 429);
}

/// Guessing limits of 3 a user, shared through the Redis at `url` under `prefix`.
async fn shared_gateway(url: &str, prefix: &str) -> (TestGateway, Upstream) {
    gateway(&format!(
        "per_address_burst = 100\nper_user_burst = 3\nper_user_per_minute = 1\nmax_failures = 100\n\
         [auth.limits.redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
         command_timeout = \"1s\"\nconnect_timeout = \"1s\""
    ))
    .await
}

/// A gateway's limits answered by Redis, at most 5 s after start (it connects in the
/// background).
async fn until_shared(gw: &TestGateway) {
    let shared = gw.gateway.auth().limits().shared().unwrap().clone();
    for _ in 0..250 {
        // One answered check proves the connection; the probe key is no one's.
        let probe = shared
            .check(
                gatehouse::limits::shared::LimitKind::User,
                b"-probe-",
                governor::Quota::per_second(std::num::NonZeroU32::MIN),
            )
            .await;
        if probe.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the gateway's shared limits did not answer within 5 s");
}

/// An attacker who alternates between two gateways behind one load balancer gets one guessing
/// budget, not one per gateway; and once it is spent, the owner's right password waits too
/// (the check runs before hashing), on either gateway.
#[tokio::test]
async fn password_guessing_spread_over_two_gateways_gets_one_budget() {
    let Some(redis) = redis_testing::shared() else {
        return;
    };
    let prefix = format!("it{}-spread", std::process::id());
    let (a, _up_a) = shared_gateway(&redis.url(), &prefix).await;
    let (b, _up_b) = shared_gateway(&redis.url(), &prefix).await;
    until_shared(&a).await;
    until_shared(&b).await;
    for gw in [&a, &b, &a] {
        assert_eq!(attempt(gw, "alice", "guess", None).await.status(), 400);
    }
    // b alone has seen one guess of its 3: the refusal is the shared budget's.
    let r = attempt(&b, "alice", "guess", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["ratelimit-limit"], "3");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(attempt(&b, "alice", "secret", None).await.status(), 429);
    assert_eq!(attempt(&a, "alice", "guess", None).await.status(), 429);
}

/// Redis stopping mid-attack must not lift the limits: each gateway falls back to its own
/// budget and refuses past it, and answers without waiting on Redis for long.
#[tokio::test]
async fn a_stopped_redis_leaves_each_gateway_its_own_guessing_limit() {
    let Some(redis) = redis_testing::Server::start(redis_testing::Listen::Plain) else {
        return;
    };
    let prefix = format!("it{}-stopped", std::process::id());
    let (gw, _up) = shared_gateway(&redis.url(), &prefix).await;
    until_shared(&gw).await;
    redis.stop();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(attempt(&gw, "alice", "guess", None).await.status(), 400);
    }
    assert_eq!(attempt(&gw, "alice", "guess", None).await.status(), 429);
    assert_eq!(attempt(&gw, "alice", "secret", None).await.status(), 429);
    let shared = gw.gateway.auth().limits().shared().unwrap();
    assert!(shared.is_degraded());
    println!("5 attempts with Redis down took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(10));
}
