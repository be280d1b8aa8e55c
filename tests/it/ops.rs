//! Operations: health and readiness, metrics, request ids, access logs without secrets, hot reload
//! (routes, invalid files, certificates, under load) and `routes explain`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;

use crate::support::{Behaviour, GatewayBuilder, TestGateway, Upstream, client, route};

async fn admin(gw: &TestGateway) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gw.app.clone();
    tokio::spawn(async move { app.serve_admin(listener, std::future::pending()).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn health_is_alive_and_readiness_follows_the_store() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .start()
        .await;
    let base = admin(&gw).await;
    assert_eq!(
        client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The database file disappears (a wiped volume): not ready, still alive.
    let gatehouse::store::StoreConfig::Sqlite { path: db } = gw.gateway.config().store.clone()
    else {
        panic!("this test runs on the SQLite store");
    };
    std::fs::remove_file(&db).unwrap();
    let r = client().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// `name{labels} value` lines; panics on a line that is not valid exposition text.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn value(series: &[(String, f64)], name: &str, labels: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(s, _)| s.starts_with(name) && labels.iter().all(|l| s.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_exposition_parses_and_counts_what_happened() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("metered", "/metered", &up.url(), "")
        .and(&route(
            "metered-admin",
            "/metered-admin",
            &up.url(),
            "require_roles = [\"admin\"]",
        ))
        .start()
        .await;
    gw.add_user("alice", "secret", &[], &[]).await;
    let base = admin(&gw).await;
    let before = parse_exposition(
        &client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let token = gw.access_token("alice", "secret").await;
    for _ in 0..3 {
        client()
            .get(gw.url("/metered/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    }
    client().get(gw.url("/metered/x")).send().await.unwrap();
    client()
        .get(gw.url("/metered/x"))
        .bearer_auth("a.b.c")
        .send()
        .await
        .unwrap();
    client()
        .get(gw.url("/metered-admin/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let r = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let after = parse_exposition(&r.text().await.unwrap());
    let delta =
        |name: &str, labels: &[&str]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(
        delta(
            "gatehouse_requests_total",
            &["route=\"metered\"", "status=\"2xx\""]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "gatehouse_requests_total",
            &["route=\"metered\"", "status=\"4xx\""]
        ),
        2.0
    );
    assert!(delta("gatehouse_auth_failures_total", &["reason=\"missing\""]) >= 1.0);
    assert!(delta("gatehouse_auth_failures_total", &["reason=\"malformed\""]) >= 1.0);
    assert_eq!(
        delta(
            "gatehouse_authz_denials_total",
            &["route=\"metered-admin\""]
        ),
        1.0
    );
    assert!(delta("gatehouse_logins_total", &["outcome=\"success\""]) >= 1.0);
    assert!(delta("gatehouse_verify_cache_total", &["result=\"hit\""]) >= 2.0);
    assert!(
        value(
            &after,
            "gatehouse_request_duration_seconds_count",
            &["route=\"metered\""]
        ) >= 5.0
    );
    assert!(
        value(
            &after,
            "gatehouse_upstream_duration_seconds_count",
            &["route=\"metered\""]
        ) >= 3.0
    );
    // Labels are bounded: no path or user ever becomes a label.
    assert!(
        after
            .iter()
            .all(|(s, _)| !s.contains("/metered/x") && !s.contains("alice"))
    );
}

#[tokio::test]
async fn request_id_is_generated_forwarded_and_returned_and_client_ids_are_not_trusted() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("pub", "/", &up.url(), "auth = \"public\"")
        .start()
        .await;
    let r = client()
        .get(gw.url("/x"))
        .header("x-request-id", "spoofed-id")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_ne!(id, "spoofed-id");
    assert_eq!(up.only().header("x-request-id"), Some(id.as_str()));
    // Rejections carry one too.
    let r = client().get(gw.url("/a%2fb")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn request_id_from_a_trusted_proxy_is_kept() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("pub", "/", &up.url(), "auth = \"public\"")
        .and("[server]\ntrusted_proxies = [\"127.0.0.1\"]")
        .start()
        .await;
    let r = client()
        .get(gw.url("/x"))
        .header("x-request-id", "lb-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "lb-1234");
    assert_eq!(up.only().header("x-request-id"), Some("lb-1234"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_concurrent_load_loses_no_request() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let base = route("pub", "/", &up.url(), "auth = \"public\"");
    let gw = GatewayBuilder::new(&base).start_from_file(dir, &file).await;
    let gw = Arc::new(gw);
    let mut load = Vec::new();
    for _ in 0..4 {
        let url = gw.url("/x");
        load.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            for _ in 0..50 {
                statuses.push(
                    c.get(&url)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0),
                );
            }
            statuses
        }));
    }
    for i in 0..5 {
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("{text}\n# reload {i}\n")).unwrap();
        gw.app.reload().await.expect("valid reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in load {
        let statuses = task.await.unwrap();
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
}

#[tokio::test]
async fn reload_swaps_routes_and_an_invalid_file_keeps_the_running_config() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let slow = Upstream::with(Behaviour::Delay(Duration::from_millis(600))).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let first = route("a", "/a", &a.url(), "auth = \"public\"")
        + &route("slow", "/slow", &slow.url(), "auth = \"public\"");
    let gw = GatewayBuilder::new(&first)
        .start_from_file(dir, &file)
        .await;
    assert_eq!(
        client().get(gw.url("/b/x")).send().await.unwrap().status(),
        404
    );

    // A request in flight finishes on the configuration it started with.
    let in_flight = tokio::spawn({
        let url = gw.url("/slow/x");
        async move { client().get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = std::fs::read_to_string(&file).unwrap();
    let second = text.replace(
        &route("slow", "/slow", &slow.url(), "auth = \"public\""),
        "",
    ) + &route("b", "/b", &b.url(), "auth = \"public\"");
    std::fs::write(&file, &second).unwrap();
    gw.app.reload().await.unwrap();
    assert_eq!(in_flight.await.unwrap(), 200);
    assert_eq!(
        client().get(gw.url("/b/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.url("/slow/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // An invalid file is refused with its reason; the running routes stay.
    std::fs::write(&file, format!("{second}\n[server]\nlisten_typo = 1\n")).unwrap();
    let err = gw.app.reload().await.unwrap_err().to_string();
    assert!(err.contains("listen_typo"), "{err}");
    assert_eq!(
        client().get(gw.url("/b/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client().get(gw.url("/a/x")).send().await.unwrap().status(),
        200
    );
}

/// A reload must not bring in what check-config refuses: a host route weaker than the
/// host-less route at the same prefix. The running table keeps answering 401.
#[tokio::test]
async fn reload_refuses_a_host_route_that_weakens_a_protected_prefix() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let admin = route("admin", "/admin", &up.url(), "require_roles = [\"admin\"]");
    let gw = GatewayBuilder::new(&admin)
        .start_from_file(dir, &file)
        .await;
    let www = route(
        "www",
        "/admin",
        &up.url(),
        "host = \"127.0.0.1\"\nauth = \"public\"",
    );
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n{www}")).unwrap();
    let err = gw.app.reload().await.unwrap_err().to_string();
    assert!(err.contains("allow_shadowing"), "{err}");
    assert_eq!(
        client()
            .get(gw.url("/admin/x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert!(up.seen().is_empty());
}

fn cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), name.into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn tls_client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn certificate_reload_serves_new_handshakes_with_the_new_certificate() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = cert("a.test");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_a).unwrap();
    crate::support::write_private(&key_path, &key_a);
    let file = dir.path().join("gatehouse.toml");
    let text = route("pub", "/", &up.url(), "auth = \"public\"")
        + &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        );
    let gw = GatewayBuilder::new(&text).start_from_file(dir, &file).await;
    let url = format!("https://127.0.0.1:{}/x", gw.addr.port());
    assert_eq!(
        tls_client(&cert_a).get(&url).send().await.unwrap().status(),
        200
    );

    let (cert_b, key_b) = cert("b.test");
    std::fs::write(&cert_path, &cert_b).unwrap();
    std::fs::write(&key_path, &key_b).unwrap();
    gw.app.reload().await.unwrap();
    assert_eq!(
        tls_client(&cert_b).get(&url).send().await.unwrap().status(),
        200
    );
    assert!(
        tls_client(&cert_a).get(&url).send().await.is_err(),
        "the old certificate is still served"
    );

    // A broken key file is refused and the current pair stays.
    std::fs::write(&key_path, "not a key").unwrap();
    assert!(gw.app.reload().await.is_err());
    assert_eq!(
        tls_client(&cert_b).get(&url).send().await.unwrap().status(),
        200
    );
}

fn gatehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env_remove("GATEHOUSE_CONFIG");
    c
}

#[test]
fn routes_explain_shows_the_route_the_forwarded_url_and_the_policy() {
    let out = gatehouse()
        .args([
            "routes",
            "explain",
            "--config",
            "config/gatehouse.example.toml",
            "GET",
        ])
        .arg("http://api.example.com/api/./items/7?x=1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("route      api"), "{text}");
    assert!(
        text.contains("/api/items/7 (normalised from /api/./items/7)"),
        "{text}"
    );
    assert!(
        text.contains("upstream   http://127.0.0.1:9000/api/items/7?x=1"),
        "{text}"
    );
    assert!(text.contains("auth       required"), "{text}");

    let out = gatehouse()
        .args([
            "routes",
            "explain",
            "--config",
            "config/gatehouse.example.toml",
            "GET",
            "http://h/nothing",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no route   404"), "{text}");
    let out = gatehouse()
        .args([
            "routes",
            "explain",
            "--config",
            "config/gatehouse.example.toml",
            "GET",
            "http://h/api/%2e%2e/x",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected   400"));
}

/// The real binary with JSON logs: log in, use the API, refresh, log out; the log must name the
/// requests but hold no password, token, refresh token or cookie value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_contains_no_secrets() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let data = dir.path().display().to_string();
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[log]\nformat = \"json\"\n[auth]\nkeys_dir = \"{data}/keys\"\ncookie = \"gh\"\n[store]\npath = \"{data}/db\"\n{}",
            route("api", "/api", &up.url(), "")
        ),
    )
    .unwrap();
    let password = "correct-horse-battery-staple";
    let mut add = gatehouse()
        .args([
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--create-store",
            "--config",
        ])
        .arg(&file)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(add.wait().unwrap().success());

    let mut child = gatehouse()
        .args(["serve", "--config"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway did not start");
        lines.push(line.clone());
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split(['"', ' ', '\\']).next().unwrap().to_owned();
        }
    };
    let base = format!("http://{addr}");
    let c = client();
    let tokens: serde_json::Value = c
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    c.get(format!("{base}/api/x"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    c.get(format!("{base}/api/y"))
        .header("cookie", format!("gh={access}"))
        .send()
        .await
        .unwrap();
    c.post(format!("{base}/auth/token?password={password}"))
        .send()
        .await
        .unwrap();
    let renewed: serde_json::Value = c
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    c.post(format!("{base}/auth/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    // Stop it by its PID and collect what it logged.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(line);
    }
    let log = lines.join("\n");
    assert!(
        log.contains("\"/api/x\"") && log.contains("\"sub\":\"alice\""),
        "{log}"
    );
    assert!(log.contains("request_id"), "{log}");
    let new_refresh = renewed["refresh_token"].as_str().unwrap();
    let new_access = renewed["access_token"].as_str().unwrap();
    for secret in [
        password,
        access.as_str(),
        refresh.as_str(),
        new_refresh,
        new_access,
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    // Not even a piece of a token (its signature part).
    let signature = access.rsplit('.').next().unwrap();
    assert!(!log.contains(signature));
}

/// Another process holding the database's write lock (a backup, a migration, an admin's
/// `sqlite3` shell) makes the store time out: refresh and login answer 503 with Retry-After, a
/// passing condition the client retries, and work again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_locked_store_answers_503_with_retry_after() {
    let up = Upstream::start().await;
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .start()
        .await;
    gw.add_user("alice", "secret-pw-1", &[], &[]).await;
    let refresh = gw.login("alice", "secret-pw-1").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let locker = rusqlite::Connection::open(gw.dir.path().join("gatehouse.db")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refreshed = client()
        .post(gw.url("/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": refresh }))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refreshed.headers()["retry-after"], "2");
    let body: serde_json::Value = refreshed.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let login = client()
        .post(gw.url("/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "secret-pw-1"),
        ])
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(login.headers().contains_key("retry-after"));

    locker.execute_batch("ROLLBACK").unwrap();
    let refreshed = client()
        .post(gw.url("/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refreshed.status(),
        StatusCode::OK,
        "the token was not spent"
    );
}

/// A reload (SIGHUP, or a touched config file) used to rebuild the limiters, handing whoever
/// could trigger one a fresh brute-force budget. Counters now carry over while the limits stay
/// the same.
#[tokio::test]
async fn reload_does_not_reset_the_login_rate_limits() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .and("[auth.limits]\nper_address_burst = 2\nper_address_per_minute = 1\nper_user_burst = 100\nper_user_per_minute = 100\nmax_failures = 100\n")
        .start_from_file(dir, &file)
        .await;
    let guess = |user: &'static str| {
        let url = gw.url("/auth/token");
        async move {
            client()
                .post(url)
                .form(&[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", "wrong"),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(guess("u1").await, StatusCode::BAD_REQUEST);
    assert_eq!(guess("u2").await, StatusCode::BAD_REQUEST);
    assert_eq!(guess("u3").await, StatusCode::TOO_MANY_REQUESTS);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n# touched\n")).unwrap();
    gw.app.reload().await.unwrap();
    assert_eq!(guess("u4").await, StatusCode::TOO_MANY_REQUESTS);
}

/// An upstream that answers 200 and counts the TCP connections it accepted.
async fn counting_upstream() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, accepted)
}

/// A reload keeps what is still true: the verdicts on tokens verified under the same policy and
/// keys, and the pooled connections of a route whose client settings did not change.
#[tokio::test]
async fn reload_keeps_still_valid_verdicts_and_upstream_connections() {
    let (upstream, accepted) = counting_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::new(&route("api", "/api", &upstream, ""))
        .start_from_file(dir, &file)
        .await;
    gw.add_user("alice", "correct horse battery", &[], &[])
        .await;
    let token = gw.access_token("alice", "correct horse battery").await;
    let get = || client().get(gw.url("/api/x")).bearer_auth(&token).send();
    assert_eq!(get().await.unwrap().status(), 200);
    let remembered = gw.app.current().auth().authenticator().remembered();
    assert_eq!(remembered, 1);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n# touched\n")).unwrap();
    gw.app.reload().await.unwrap();
    let after = gw.app.current();
    assert!(
        !Arc::ptr_eq(&after, &gw.gateway),
        "the reload built a new pipeline"
    );
    assert_eq!(after.auth().authenticator().remembered(), 1);
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the request after the reload reused the pooled upstream connection"
    );
}

/// A verdict reached under one policy must not outlive it: after a reload that shortens the
/// accepted token lifetime, a token minted under the old one is refused, however recently it
/// was cached. (The audience, which this test used to change, is now a restart-only key: see
/// `reload::a_reload_changing_a_restart_only_key_is_refused_naming_it`.)
#[tokio::test]
async fn reload_with_a_new_token_policy_refuses_tokens_cached_under_the_old_one() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::new(&route("api", "/api", &up.url(), ""))
        .start_from_file(dir, &file)
        .await;
    gw.add_user("alice", "correct horse battery", &[], &[])
        .await;
    let token = gw.access_token("alice", "correct horse battery").await;
    let get = || client().get(gw.url("/api/x")).bearer_auth(&token).send();
    assert_eq!(get().await.unwrap().status(), 200);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("[auth]\n"), "{text}");
    let changed = text.replacen(
        "[auth]\n",
        "[auth]\naccess_token_lifetime = \"1m\"\nclient_token_ttl = \"1m\"\n",
        1,
    );
    std::fs::write(&file, changed).unwrap();
    gw.app.reload().await.unwrap();
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        up.seen().len(),
        1,
        "only the request before the reload went upstream"
    );
}
