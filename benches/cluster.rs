//! Several gateways on one PostgreSQL, measured in one run on a private server (127.0.0.1):
//!
//! 1. **Cached-token verification, PostgreSQL against SQLite**: `Authenticator::verify_access`
//!    on a token it has verified before, on a service built over each backend, interleaved in
//!    rounds so both see the same machine. The verified path never touches the store, so the
//!    two must be equal within noise (the target: within 5%).
//! 2. **Login throughput, 3 nodes against 1**: `gatehouse serve` processes on one database;
//!    concurrent clients log in (argon2id, the default cost) round-robin over the nodes for a
//!    fixed time.
//! 3. **Propagation of a revocation**: a logout acknowledged by node A, then node B polled every
//!    millisecond until it refuses the access token; p50/p99 over 100 logouts.
//!
//! `cargo bench --bench cluster` (about a minute). Without PostgreSQL it says so and stops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::auth::service::AuthService;
use gatehouse::config::Config;

#[allow(dead_code)]
#[path = "../src/store/postgres/testing.rs"]
mod pg;

const LOGIN_CLIENTS: usize = 8;
const LOGIN_TIME: Duration = Duration::from_secs(8);
const REVOCATIONS: usize = 100;
const VERIFY_ROUNDS: usize = 5;
const VERIFY_PER_ROUND: u32 = 200_000;

fn main() {
    // `cargo bench` passes `--bench`; a filter, if any, is ignored (the three parts are one run).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let Some(server) = pg::server() else {
        println!("cluster bench: PostgreSQL is not installed; nothing measured");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let kek = dir.path().join("kek");
    gatehouse::auth::keystore::Kek::write_new(&kek).expect("key-encryption key");
    let store = Shared {
        store: postgres_store(server, &server.create_database().await, dir.path()),
        auth: format!("kek_file = \"{}\"\n", kek.display()),
    };
    cached_verification(&store, dir.path()).await;
    login_throughput(&store, dir.path()).await;
    propagation(&store, dir.path()).await;
}

/// The settings every node on the database shares: `[store]`, and what goes into `[auth]`.
struct Shared {
    store: String,
    auth: String,
}

/// The `[store]` text for database `db`, over verified TLS, the password from a private file.
fn postgres_store(server: &pg::Server, db: &str, dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let password = dir.join("pg-password");
    std::fs::write(&password, &server.password).expect("password file");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    format!(
        "[store]\nbackend = \"postgres\"\n[store.postgres]\n\
         url = \"postgresql://{user}@127.0.0.1:{port}/{db}\"\n\
         password_file = \"{pw}\"\nca_file = \"{ca}\"\n",
        user = pg::SUPERUSER,
        port = server.port,
        pw = password.display(),
        ca = server.ca_file.display(),
    )
}

/// Limits out of the way: the bench measures throughput, not the brute-force defence.
const NO_LIMITS: &str = "[auth.limits]\nper_address_burst = 1000000\nper_address_per_minute = 1000000\n\
    per_user_burst = 1000000\nper_user_per_minute = 1000000\nmax_failures = 1000000\n\
    max_failures_per_user = 1000000\n";

async fn service(shared: &Shared, keys: &Path) -> Arc<AuthService> {
    let toml = format!(
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n\
         [auth]\nkeys_dir = \"{}\"\n# Built, not served: nothing follows the feed.\n\
         max_staleness = \"1h\"\n{}{}",
        keys.display(),
        shared.auth,
        shared.store
    );
    let config = Config::from_toml(&toml).expect("config");
    let app = gatehouse::app::App::new(config, None).await.expect("build");
    app.current().auth().clone()
}

async fn cached_verification(postgres: &Shared, dir: &Path) {
    let sqlite = Shared {
        store: format!(
            "[store]\npath = \"{}\"\n",
            dir.join("gatehouse.db").display()
        ),
        auth: String::new(),
    };
    let keys = dir.join("keys");
    let backends = [
        ("sqlite", service(&sqlite, &keys).await),
        ("postgres", service(postgres, &keys).await),
    ];
    // Each signed by its service's own key (SQLite: the keys directory; PostgreSQL: the store).
    let tokens: Vec<String> = backends
        .iter()
        .map(|(_, auth)| mint(&auth.authenticator().keys().ring))
        .collect();
    for ((name, auth), token) in backends.iter().zip(&tokens) {
        auth.authenticator()
            .verify_access(token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut best = [f64::MAX; 2];
    for _ in 0..VERIFY_ROUNDS {
        for (i, (_, auth)) in backends.iter().enumerate() {
            let authenticator = auth.authenticator();
            let token = &tokens[i];
            let start = Instant::now();
            for _ in 0..VERIFY_PER_ROUND {
                let verified = authenticator
                    .verify_access(std::hint::black_box(token))
                    .await;
                std::hint::black_box(verified.is_ok());
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(VERIFY_PER_ROUND);
            best[i] = best[i].min(ns);
        }
    }
    println!(
        "cached verification: sqlite {:.0} ns, postgres {:.0} ns, postgres/sqlite {:.3} \
         (best of {VERIFY_ROUNDS} interleaved rounds of {VERIFY_PER_ROUND})",
        best[0],
        best[1],
        best[1] / best[0]
    );
}

fn mint(ring: &gatehouse::auth::keys::KeyRing) -> String {
    use gatehouse::auth::tokens::{AccessTokenSpec, TokenSubject, mint_access};
    let now = gatehouse::clock::unix_now();
    mint_access(
        ring,
        &AccessTokenSpec {
            issuer: "gatehouse".into(),
            audience: "gatehouse".into(),
            lifetime: Duration::from_secs(900),
            max_bytes: gatehouse::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
        },
        &TokenSubject {
            sub: "alice",
            roles: &[],
            scopes: &[],
            client_id: "gatehouse",
            sid: Some("c2Vzc2lvbi1pZC0xMjM0NQ"),
        },
        now,
    )
    .expect("mint")
    .token
}

/// A node: `gatehouse serve` on `config`, killed when dropped.
struct Node {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(config: &Path) -> Node {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env_remove("GATEHOUSE_CONFIG")
        .env_remove("GATEHOUSE_LOG")
        .args(["serve", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse");
    let stderr = child.stderr.take().expect("stderr");
    let mut node = Node {
        child,
        addr: "127.0.0.1:0".parse().expect("addr"),
    };
    let mut lines = std::io::BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("listening on http://").nth(1) {
            node.addr = rest
                .split(['"', ' ', '\\'])
                .next()
                .and_then(|a| a.parse().ok())
                .expect("address in the log");
            // Keep draining stderr so the node never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return node;
        }
    }
    panic!("gatehouse did not start");
}

/// A config file for the nodes, and the users they log in as.
fn node_config(shared: &Shared, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n\
             [auth]\n{}{NO_LIMITS}{}",
            shared.auth, shared.store
        ),
    )
    .expect("config file");
    path
}

fn add_user(config: &Path, name: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env_remove("GATEHOUSE_CONFIG")
        .arg("--config")
        .arg(config)
        .args(["user", "add", name, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("gatehouse user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"bench-password\n")
        .expect("password");
    assert!(child.wait().expect("wait").success(), "user add {name}");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn login(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    user: &str,
) -> serde_json::Value {
    let r = client
        .post(format!("http://{addr}/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", "bench-password"),
        ])
        .send()
        .await
        .expect("login request");
    assert_eq!(r.status(), 200, "login");
    r.json().await.expect("token response")
}

async fn logins_per_second(nodes: &[Node]) -> f64 {
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let deadline = Instant::now() + LOGIN_TIME;
    let start = Instant::now();
    let tasks = (0..LOGIN_CLIENTS).map(|c| {
        let addrs = addrs.clone();
        tokio::spawn(async move {
            let client = client();
            let mut done = 0u64;
            let mut i = c;
            while Instant::now() < deadline {
                login(&client, addrs[i % addrs.len()], &format!("user{c}")).await;
                done += 1;
                i += 1;
            }
            done
        })
    });
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("client task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn login_throughput(store: &Shared, dir: &Path) {
    let config = node_config(store, dir, "nodes");
    for c in 0..LOGIN_CLIENTS {
        add_user(&config, &format!("user{c}"));
    }
    let one = [start_node(&config)];
    let single = logins_per_second(&one).await;
    drop(one);
    let three: Vec<Node> = (0..3).map(|_| start_node(&config)).collect();
    let triple = logins_per_second(&three).await;
    println!(
        "login throughput ({LOGIN_CLIENTS} clients, {}s each): 1 node {single:.1}/s, \
         3 nodes {triple:.1}/s, 3/1 {:.2} (all nodes share this machine's {} cores)",
        LOGIN_TIME.as_secs(),
        triple / single,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

async fn propagation(store: &Shared, dir: &Path) {
    let config = node_config(store, dir, "nodes");
    let a = start_node(&config);
    let b = start_node(&config);
    let client = client();
    let mut delays = Vec::with_capacity(REVOCATIONS);
    for _ in 0..REVOCATIONS {
        let tokens = login(&client, a.addr, "user0").await;
        let access = tokens["access_token"]
            .as_str()
            .expect("access token")
            .to_owned();
        let on_b = |access: String| {
            let client = client.clone();
            let url = format!("http://{}/api/x", b.addr);
            async move {
                client
                    .get(url)
                    .bearer_auth(access)
                    .send()
                    .await
                    .expect("request to B")
                    .status()
                    .as_u16()
            }
        };
        // B knows the token (it answers 502: the route's upstream is a closed port).
        assert_ne!(
            on_b(access.clone()).await,
            401,
            "B must accept the token first"
        );
        let r = client
            .post(format!("http://{}/auth/logout", a.addr))
            .bearer_auth(&access)
            .send()
            .await
            .expect("logout");
        assert_eq!(r.status(), 200, "logout");
        let acknowledged = Instant::now();
        loop {
            if on_b(access.clone()).await == 401 {
                break;
            }
            assert!(
                acknowledged.elapsed() < Duration::from_secs(5),
                "B still accepts a token logged out 5s ago"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(acknowledged.elapsed());
    }
    delays.sort();
    let at =
        |q: f64| delays[((delays.len() as f64 * q).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "revocation propagation A -> B over {REVOCATIONS} logouts: p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3
    );
}
