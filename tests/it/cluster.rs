//! Several gateways, one state: real `gatehouse serve` processes on one private PostgreSQL
//! (`[store] backend = "postgres"`, over TLS verified against the test CA, the password from a
//! file, the signing keys in it under one key-encryption key) and one private Redis (the shared
//! login limits), with no sticky sessions. What one node does (a logout, a lockout, a rotation) every
//! node enforces within a second; concurrent refreshes spread over the nodes have one winner;
//! a node killed with SIGKILL loses nothing it acknowledged.
//!
//! Without PostgreSQL or Redis installed these tests print a notice and pass, except under `CI`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::limits::redis_testing;
use crate::support::{ServedBinary, Upstream, cli, client, route, serve_binary};

#[allow(dead_code)]
#[path = "../../src/store/postgres/testing.rs"]
mod pg;

/// How fast a change made on one node must be enforced by the others.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Rate limits out of the way (each test that wants them sets its own).
const NO_RATE_LIMITS: &str = "per_address_burst = 100000\nper_address_per_minute = 100000\n\
    per_user_burst = 100000\nper_user_per_minute = 100000\nrefresh_per_address_burst = 100000\n\
    refresh_per_address_per_minute = 100000";

/// N gateway processes on one database, one upstream, one data directory.
struct Cluster {
    nodes: Vec<ServedBinary>,
    config: PathBuf,
    _up: Upstream,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes sharing a fresh database; `limits` goes into `[auth.limits]`, `auth` into
    /// `[auth]`. `alice` (password `secret-one`) and `bob` exist. `None` when PostgreSQL is not
    /// installed (outside CI).
    async fn start(n: usize, limits: &str, auth: &str) -> Option<Cluster> {
        let server = pg::server()?;
        let redis = redis_testing::shared()?;
        let db = server.create_database().await;
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gatehouse.toml");
        let kek = dir.path().join("kek");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n\
                 [log]\nformat = \"json\"\n{store}\
                 [auth]\nkek_file = \"{kek}\"\n{auth}\n\
                 [auth.limits]\n{limits}\n\
                 [auth.limits.redis]\nurl = \"{redis}\"\nprefix = \"{db}\"\n{route}",
                store = postgres_store(server, &db, dir.path(), ""),
                kek = kek.display(),
                redis = redis.url(),
                route = route("api", "/api", &up.url(), ""),
            ),
        )
        .unwrap();
        cli(
            &config,
            &["keys", "new-kek", &kek.display().to_string()],
            None,
        )
        .await;
        for name in ["alice", "bob"] {
            cli(
                &config,
                &["user", "add", name, "--password-stdin"],
                Some("secret-one\n"),
            )
            .await;
        }
        // All at once: of nodes starting on an empty store exactly one stores the first key.
        let mut nodes = Vec::new();
        let starts: Vec<_> = (0..n)
            .map(|_| {
                let file = config.clone();
                tokio::task::spawn_blocking(move || serve_binary(&file))
            })
            .collect();
        for start in starts {
            nodes.push(start.await.unwrap());
        }
        Some(Cluster {
            nodes,
            config,
            _up: up,
            _dir: dir,
        })
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[node].addr)
    }

    async fn post_form(&self, node: usize, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        client()
            .post(self.url(node, path))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn login(&self, node: usize, user: &str, password: &str) -> reqwest::Response {
        self.post_form(
            node,
            "/auth/token",
            &[
                ("grant_type", "password"),
                ("username", user),
                ("password", password),
            ],
        )
        .await
    }

    async fn tokens(&self, node: usize) -> Value {
        let r = self.login(node, "alice", "secret-one").await;
        assert_eq!(r.status(), 200, "login on node {node}");
        r.json().await.unwrap()
    }

    async fn refresh(&self, node: usize, token: &str) -> reqwest::Response {
        self.post_form(
            node,
            "/auth/token",
            &[("grant_type", "refresh_token"), ("refresh_token", token)],
        )
        .await
    }

    async fn status_with(&self, node: usize, access: &str) -> u16 {
        client()
            .get(self.url(node, "/api/x"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Polls every node with `access` until each refuses it; panics when one still accepts it
    /// after [`PROPAGATION`]. Returns the slowest node's time.
    async fn refused_everywhere(&self, access: &str) -> Duration {
        let start = Instant::now();
        let mut pending: Vec<usize> = (0..self.nodes.len()).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &node in &pending {
                match self.status_with(node, access).await {
                    401 => {}
                    200 => still.push(node),
                    other => panic!("node {node} answered {other} while waiting for a refusal"),
                }
            }
            pending = still;
            assert!(
                pending.is_empty() || start.elapsed() < PROPAGATION,
                "nodes {pending:?} still accept the token after {PROPAGATION:?}"
            );
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        start.elapsed()
    }
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Writes a file only its owner may read.
fn private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn login_on_a_refresh_on_b_logout_on_c_is_enforced_by_all_three_within_a_second() {
    let Some(c) = Cluster::start(3, NO_RATE_LIMITS, "").await else {
        return;
    };
    let first = c.tokens(0).await;
    let r = c.refresh(1, field(&first, "refresh_token")).await;
    assert_eq!(r.status(), 200, "node B refreshes node A's token");
    let second: Value = r.json().await.unwrap();
    for node in 0..3 {
        for pair in [&first, &second] {
            assert_eq!(c.status_with(node, field(pair, "access_token")).await, 200);
        }
    }
    let r = client()
        .post(c.url(2, "/auth/logout"))
        .bearer_auth(field(&second, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "node C logs the session out");
    let mut slowest = Duration::ZERO;
    for pair in [&first, &second] {
        slowest = slowest.max(c.refused_everywhere(field(pair, "access_token")).await);
    }
    eprintln!("logout on C enforced by every node after {slowest:?}");
    for node in 0..3 {
        for pair in [&first, &second] {
            let r = c.refresh(node, field(pair, "refresh_token")).await;
            assert_eq!(
                r.status(),
                400,
                "a refresh token of the ended session, node {node}"
            );
        }
    }
}

#[tokio::test]
async fn wrong_passwords_spread_over_the_nodes_lock_the_name_on_every_node() {
    let limits =
        format!("{NO_RATE_LIMITS}\nmax_failures = 3\nfind_time = \"10m\"\nban_time = \"15m\"");
    let Some(c) = Cluster::start(3, &limits, "").await else {
        return;
    };
    // One guess per node: no node alone saw max_failures of them.
    for node in 0..3 {
        let r = c.login(node, "alice", "wrong").await;
        assert_eq!(r.status(), 400, "guess on node {node}");
    }
    for node in 0..3 {
        let r = c.login(node, "alice", "secret-one").await;
        assert_eq!(
            r.status(),
            429,
            "node {node}: a name locked by guesses on other nodes must not log in"
        );
    }
    // Another name is untouched.
    assert_eq!(c.login(1, "bob", "secret-one").await.status(), 200);
}

#[tokio::test]
async fn twenty_refreshes_spread_over_the_nodes_have_exactly_one_winner() {
    let Some(c) = Cluster::start(3, NO_RATE_LIMITS, "").await else {
        return;
    };
    let tokens = c.tokens(0).await;
    let token = field(&tokens, "refresh_token");
    let sends = (0..20).map(|i| c.refresh(i % 3, token));
    let answers = futures_util::future::join_all(sends).await;
    let mut won = Vec::new();
    for r in answers {
        match r.status().as_u16() {
            200 => won.push(r.json::<Value>().await.unwrap()),
            400 => {}
            other => panic!("a refresh answered {other}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one rotation wins: {won:?}");
    // The others were a reuse under strict rotation: the session is revoked, the winner's pair
    // included, on every node.
    c.refused_everywhere(field(&won[0], "access_token")).await;
    for node in 0..3 {
        let r = c.refresh(node, field(&won[0], "refresh_token")).await;
        assert_eq!(r.status(), 400, "node {node}");
    }
}

#[tokio::test]
async fn a_node_killed_under_load_loses_no_acknowledged_rotation_or_logout() {
    let Some(mut c) = Cluster::start(2, NO_RATE_LIMITS, "").await else {
        return;
    };
    const SESSIONS: usize = 12;
    // Each session chains refreshes on node A with pauses between them and records what A
    // acknowledged; half of them log out part way.
    #[derive(Default)]
    struct Seen {
        /// The last refresh token A handed out, and whether a request was in flight since.
        last: Option<(String, String)>,
        in_flight: bool,
        logged_out: bool,
    }
    let seen: Vec<std::sync::Arc<std::sync::Mutex<Seen>>> =
        (0..SESSIONS).map(|_| Default::default()).collect();
    let mut tasks = Vec::new();
    for (i, slot) in seen.iter().enumerate() {
        let tokens = c.tokens(0).await;
        *slot.lock().unwrap() = Seen {
            last: Some((
                field(&tokens, "refresh_token").to_owned(),
                field(&tokens, "access_token").to_owned(),
            )),
            ..Seen::default()
        };
        let slot = slot.clone();
        let base = c.url(0, "");
        tasks.push(tokio::spawn(async move {
            for round in 0.. {
                let (refresh, access) = slot.lock().unwrap().last.clone().unwrap();
                slot.lock().unwrap().in_flight = true;
                let logout = i % 2 == 0 && round == 3;
                let sent = if logout {
                    client()
                        .post(format!("{base}/auth/logout"))
                        .bearer_auth(&access)
                        .send()
                        .await
                } else {
                    client()
                        .post(format!("{base}/auth/token"))
                        .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
                        .send()
                        .await
                };
                let Ok(r) = sent else { return };
                if r.status() != 200 {
                    return;
                }
                if logout {
                    let mut s = slot.lock().unwrap();
                    s.logged_out = true;
                    s.in_flight = false;
                    return;
                }
                let Ok(pair) = r.json::<Value>().await else {
                    return;
                };
                {
                    let mut s = slot.lock().unwrap();
                    s.last = Some((
                        field(&pair, "refresh_token").to_owned(),
                        field(&pair, "access_token").to_owned(),
                    ));
                    s.in_flight = false;
                }
                tokio::time::sleep(Duration::from_millis(60 + 5 * i as u64)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // SIGKILL, mid-traffic: no shutdown, no flush.
    let killed = c.nodes.remove(0);
    drop(killed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let outcomes: Vec<(bool, bool, (String, String))> = seen
        .iter()
        .map(|slot| {
            let s = slot.lock().unwrap();
            (s.in_flight, s.logged_out, s.last.clone().unwrap())
        })
        .collect();
    let mut checked = 0;
    for (i, (in_flight, logged_out, (refresh, access))) in outcomes.into_iter().enumerate() {
        if in_flight {
            // Whether A committed the request it never answered is unknowable; skip it.
            continue;
        }
        checked += 1;
        if logged_out {
            // A logout A acknowledged reaches B through the feed, lost or not by A.
            c.refused_everywhere(&access).await;
        } else {
            let r = c.refresh(0, &refresh).await;
            assert_eq!(
                r.status(),
                200,
                "session {i}: the last rotation A acknowledged was lost"
            );
        }
    }
    assert!(
        checked >= SESSIONS / 3,
        "only {checked} sessions were idle at the kill"
    );
    eprintln!("{checked} of {SESSIONS} sessions checked after the kill");
}

#[tokio::test]
async fn a_user_disabled_and_unlocked_by_the_cli_changes_every_node_within_a_second() {
    let limits = format!("{NO_RATE_LIMITS}\nmax_failures = 2\nban_time = \"15m\"");
    let Some(c) = Cluster::start(3, &limits, "").await else {
        return;
    };
    // Sessions on every node, then one `user disable` against the database.
    let mut tokens = Vec::new();
    for node in 0..3 {
        tokens.push(c.tokens(node).await);
    }
    cli(&c.config, &["user", "disable", "alice"], None).await;
    for pair in &tokens {
        c.refused_everywhere(field(pair, "access_token")).await;
    }
    for node in 0..3 {
        // Refused; the refusals count as failures, so the name ends locked too (429).
        let status = c.login(node, "alice", "secret-one").await.status().as_u16();
        assert!(matches!(status, 400 | 429), "node {node}: {status}");
    }
    // A lockout made on one node is lifted for all by one `user unlock`.
    for node in 0..2 {
        c.login(node, "bob", "wrong").await;
    }
    assert_eq!(c.login(2, "bob", "secret-one").await.status(), 429);
    cli(&c.config, &["user", "unlock", "bob"], None).await;
    for node in 0..3 {
        assert_eq!(
            c.login(node, "bob", "secret-one").await.status(),
            200,
            "node {node}"
        );
    }
}

/// The TOML that puts a gateway on database `db` of `server` over verified TLS, the password
/// read from a private file in `dir`.
/// `bounds` goes into `[store.postgres]` (the timeouts).
fn postgres_store(server: &pg::Server, db: &str, dir: &Path, bounds: &str) -> String {
    let password = dir.join("pg-password");
    private(&password, &format!("{}\n", server.password));
    format!(
        "[store]\nbackend = \"postgres\"\n[store.postgres]\n\
         url = \"postgresql://{user}@127.0.0.1:{port}/{db}\"\n\
         password_file = \"{pw}\"\nca_file = \"{ca}\"\n{bounds}\n",
        user = pg::SUPERUSER,
        port = server.port,
        pw = password.display(),
        ca = server.ca_file.display(),
    )
}

#[tokio::test]
async fn postgres_stopped_under_load_fails_closed_and_recovers_without_a_restart() {
    let Some(server) = pg::private_server() else {
        return;
    };
    let db = server.create_database().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Short bounds, so the outage shows at once.
    let store = postgres_store(
        &server,
        &db,
        dir.path(),
        "connect_timeout = \"1s\"\nstatement_timeout = \"1s\"\npool_wait_timeout = \"1s\"",
    );
    let kek = dir.path().join("kek");
    cli(&kek, &["keys", "new-kek", &kek.display().to_string()], None).await;
    let gw = crate::support::GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&store)
        .and(&format!(
            "[auth]\nmax_staleness = \"3s\"\nkek_file = \"{}\"",
            kek.display()
        ))
        .start_in(dir)
        .await;
    gw.add_user("alice", "secret-one", &[], &[]).await;
    let tokens = gw.login("alice", "secret-one").await;
    let access = field(&tokens, "access_token").to_owned();
    let proxied = |access: String| {
        let url = gw.url("/api/x");
        async move {
            let r = client().get(url).bearer_auth(access).send().await.unwrap();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        }
    };
    assert_eq!(proxied(access.clone()).await.0, 200);
    // Load throughout: every answer is a 200 or a 503 with Retry-After, never anything else.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let url = gw.url("/api/x");
        let access = access.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<u16, usize>::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let r = client()
                    .get(&url)
                    .bearer_auth(&access)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                assert!(
                    status == 200 || (status == 503 && r.headers().contains_key("retry-after")),
                    "under the outage a request answered {status}"
                );
                *seen.entry(status).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop();
    let stopped = Instant::now();
    // Within the staleness bound, verified tokens still pass; what needs the store answers 503.
    assert_eq!(proxied(access.clone()).await, (200, false));
    let r = client()
        .post(gw.url("/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "secret-one"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a login without the store");
    assert!(r.headers().contains_key("retry-after"));
    let r = client()
        .post(gw.url("/auth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", field(&tokens, "refresh_token")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a refresh without the store");
    assert!(gw.app.ready().await.is_err(), "/readyz must turn unready");
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "the checks above took {:?}, past the staleness bound",
        stopped.elapsed()
    );
    // Past the bound: fail closed.
    tokio::time::sleep(Duration::from_secs(3) - stopped.elapsed() + Duration::from_millis(1100))
        .await;
    assert_eq!(proxied(access.clone()).await, (503, true));
    // Back: the same gateway serves again, no restart.
    server.start_again();
    let back = Instant::now();
    loop {
        let ready = gw.app.ready().await.is_ok();
        if ready && proxied(access.clone()).await.0 == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "not recovered 10s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client()
        .post(gw.url("/auth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", field(&tokens, "refresh_token")),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(
        status, 200,
        "the refresh refused during the outage works now: {body}"
    );
    eprintln!("recovered {:?} after the restart", back.elapsed());
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert!(seen.get(&503).is_some_and(|n| *n > 0), "{seen:?}");
    assert!(seen.get(&200).is_some_and(|n| *n > 0), "{seen:?}");
}

/// The `kid`s a node's JWKS publishes.
async fn published_kids(c: &Cluster, node: usize) -> Vec<String> {
    let jwks: Value = client()
        .get(c.url(node, "/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

/// The `kid` in a token's header.
fn signed_with(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_rotated_on_one_node_is_published_by_every_node_before_any_signs_with_it() {
    let Some(c) = Cluster::start(3, NO_RATE_LIMITS, "").await else {
        return;
    };
    // Nodes started at once on an empty store agree on one key.
    let first = published_kids(&c, 0).await;
    assert_eq!(first.len(), 1, "{first:?}");
    for node in 0..3 {
        assert_eq!(published_kids(&c, node).await, first, "node {node}");
        let tokens = c.tokens(node).await;
        assert_eq!(signed_with(field(&tokens, "access_token")), first[0]);
    }
    let out = cli(&c.config, &["keys", "rotate"], None).await;
    assert!(out.contains("published now, signs from"), "{out}");
    let start = Instant::now();
    for node in 0..3 {
        loop {
            let kids = published_kids(&c, node).await;
            if kids.len() == 2 {
                assert!(kids.contains(&first[0]), "node {node}: {kids:?}");
                break;
            }
            assert!(
                start.elapsed() < PROPAGATION,
                "node {node} does not publish the rotated key after {PROPAGATION:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Published everywhere, and no node signs with it yet (it activates after publish_ahead).
    for node in 0..3 {
        let tokens = c.tokens(node).await;
        assert_eq!(
            signed_with(field(&tokens, "access_token")),
            first[0],
            "node {node} signs with a key a verifier may not know yet"
        );
        for other in 0..3 {
            assert_eq!(
                c.status_with(other, field(&tokens, "access_token")).await,
                200
            );
        }
    }
}

#[tokio::test]
async fn password_guessing_spread_over_three_nodes_gets_one_budget_through_redis() {
    let limits = "per_address_burst = 100000\nper_address_per_minute = 100000\n\
        per_user_burst = 3\nper_user_per_minute = 1\nmax_failures = 100000\n\
        max_failures_per_user = 100000";
    let Some(c) = Cluster::start(3, limits, "").await else {
        return;
    };
    // Each node's Redis connection is up once it has answered one check (bob's logins give
    // their charge back).
    for node in 0..3 {
        assert_eq!(c.login(node, "bob", "secret-one").await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Three guesses, one per node: alone, each node would allow three.
    for node in 0..3 {
        assert_eq!(
            c.login(node, "alice", "wrong").await.status(),
            400,
            "node {node}"
        );
    }
    for node in 0..3 {
        let r = c.login(node, "alice", "secret-one").await;
        assert_eq!(
            r.status(),
            429,
            "node {node}: the budget spent on the other nodes is spent here too"
        );
    }
}
