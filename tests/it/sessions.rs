//! Sessions end when they should: logout ends the whole login, disable / remove / password change
//! end every session at once (access tokens included) on every gateway sharing the store, an
//! operator sees and ends sessions, and concurrent refreshes within the configured grace keep
//! the session.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    GatewayBuilder, ServedBinary, TestGateway, Upstream, cli, client, serve_binary,
};

/// How fast a change made elsewhere must be enforced.
const PROPAGATION: Duration = Duration::from_secs(1);

async fn post_form(gw: &TestGateway, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    client().post(gw.url(path)).form(form).send().await.unwrap()
}

async fn refresh(gw: &TestGateway, token: &str) -> reqwest::Response {
    post_form(
        gw,
        "/auth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
    )
    .await
}

async fn status_with(gw: &TestGateway, access: &str) -> u16 {
    client()
        .get(gw.url("/api/x"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls with `access` until the gateway refuses it; panics when that takes longer than
/// `limit`. Returns how long it took.
async fn refused_within(gw: &TestGateway, access: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let status = status_with(gw, access).await;
        if status == 401 {
            return start.elapsed();
        }
        assert_eq!(
            status, 200,
            "unexpected status while waiting for the refusal"
        );
        assert!(
            start.elapsed() < limit,
            "the token was still accepted after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// A gateway started from a config file, so the CLI can act on the same store.
struct Setup {
    gw: TestGateway,
    _up: Upstream,
    config: PathBuf,
}

async fn setup(extra: &str) -> Setup {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let gw = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(extra)
        .start_from_file(dir, &config)
        .await;
    gw.add_user("alice", "secret-one", &["admin"], &["read"])
        .await;
    Setup {
        gw,
        _up: up,
        config,
    }
}

#[tokio::test]
async fn logout_with_only_the_access_token_ends_the_refresh_token_of_the_same_login() {
    let s = setup("").await;
    let tokens = s.gw.login("alice", "secret-one").await;
    let access = field(&tokens, "access_token");
    let r = client()
        .post(s.gw.url("/auth/logout"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"revoked": true, "access_token": true, "session": true})
    );
    let r = refresh(&s.gw, field(&tokens, "refresh_token")).await;
    assert_eq!(r.status(), 400, "the login's refresh token must be dead");
    assert_eq!(status_with(&s.gw, access).await, 401);
}

#[tokio::test]
async fn logout_ends_every_access_token_of_the_session_not_only_the_one_presented() {
    let s = setup("").await;
    let first = s.gw.login("alice", "secret-one").await;
    let rotated: Value = refresh(&s.gw, field(&first, "refresh_token"))
        .await
        .json()
        .await
        .unwrap();
    let other_login = s.gw.access_token("alice", "secret-one").await;
    let r = client()
        .post(s.gw.url("/auth/logout"))
        .bearer_auth(field(&rotated, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        status_with(&s.gw, field(&first, "access_token")).await,
        401,
        "the session's earlier access token must end with it"
    );
    assert_eq!(
        status_with(&s.gw, &other_login).await,
        200,
        "another login of the same user is another session"
    );
}

#[tokio::test]
async fn logout_with_a_garbage_refresh_token_does_not_claim_to_have_revoked_anything() {
    let s = setup("").await;
    let r = post_form(&s.gw, "/auth/logout", &[("refresh_token", "garbage")]).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"revoked": false, "access_token": false, "session": false})
    );
    // A refresh token already logged out ends nothing the second time either.
    let tokens = s.gw.login("alice", "secret-one").await;
    let refresh_token = field(&tokens, "refresh_token");
    let r = post_form(&s.gw, "/auth/logout", &[("refresh_token", refresh_token)]).await;
    assert_eq!(r.json::<Value>().await.unwrap()["session"], true);
    let r = post_form(&s.gw, "/auth/logout", &[("refresh_token", refresh_token)]).await;
    assert_eq!(r.json::<Value>().await.unwrap()["revoked"], false);
}

#[tokio::test]
async fn a_disabled_admin_loses_access_at_once_not_when_the_token_expires() {
    let s = setup("").await;
    let tokens = s.gw.login("alice", "secret-one").await;
    let access = field(&tokens, "access_token");
    assert_eq!(status_with(&s.gw, access).await, 200);
    let out = cli(&s.config, &["user", "disable", "alice"], None).await;
    assert!(out.contains("disabled alice"), "{out}");
    let took = refused_within(&s.gw, access, PROPAGATION).await;
    eprintln!("disable enforced after {took:?}");
    assert_eq!(
        refresh(&s.gw, field(&tokens, "refresh_token"))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn a_password_change_ends_the_sessions_the_old_password_started() {
    let s = setup("").await;
    let tokens = s.gw.login("alice", "secret-one").await;
    let access = field(&tokens, "access_token");
    let out = cli(
        &s.config,
        &["user", "passwd", "alice", "--password-stdin"],
        Some("secret-two\n"),
    )
    .await;
    assert!(out.contains("1 sessions ended"), "{out}");
    refused_within(&s.gw, access, PROPAGATION).await;
    assert_eq!(
        refresh(&s.gw, field(&tokens, "refresh_token"))
            .await
            .status(),
        400
    );
    // A login with the new password at once (in the same second as the cut) gets a token the
    // cut does not refuse.
    let fresh = s.gw.access_token("alice", "secret-two").await;
    assert_eq!(status_with(&s.gw, &fresh).await, 200);
}

#[tokio::test]
async fn a_removed_user_token_stops_working_and_a_new_account_of_that_name_is_not_reached() {
    let s = setup("").await;
    let old = s.gw.access_token("alice", "secret-one").await;
    cli(&s.config, &["user", "remove", "alice"], None).await;
    refused_within(&s.gw, &old, PROPAGATION).await;
    s.gw.add_user("alice", "another-secret", &[], &[]).await;
    assert_eq!(status_with(&s.gw, &old).await, 401);
    let new = s.gw.access_token("alice", "another-secret").await;
    assert_eq!(status_with(&s.gw, &new).await, 200);
}

#[tokio::test]
async fn operators_see_sessions_and_end_one_or_all() {
    let s = setup("").await;
    let laptop: Value = client()
        .post(s.gw.url("/auth/token"))
        // U+202E (right-to-left override) in UTF-8: bytes a terminal would act on.
        .header(
            "user-agent",
            http::HeaderValue::from_bytes(b"laptop-browser/1.0 \xe2\x80\xae").unwrap(),
        )
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "secret-one"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let phone = s.gw.login("alice", "secret-one").await;
    let listed = cli(&s.config, &["sessions", "list", "alice"], None).await;
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(listed.contains("127.0.0.1"), "{listed}");
    assert!(
        listed.contains("\tlaptop-browser/1.0 ???\n"),
        "the agent is shown as visible ASCII only: {listed:?}"
    );
    // The laptop's session is the one with its agent; its id is the token's sid.
    let laptop_sid = crate::support::claims(field(&laptop, "access_token"))["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        rows.iter()
            .any(|r| r.starts_with(&laptop_sid) && r.contains("laptop")),
        "{listed}"
    );
    cli(
        &s.config,
        &["sessions", "revoke", "alice", &laptop_sid],
        None,
    )
    .await;
    refused_within(&s.gw, field(&laptop, "access_token"), PROPAGATION).await;
    assert_eq!(
        refresh(&s.gw, field(&laptop, "refresh_token"))
            .await
            .status(),
        400
    );
    assert_eq!(status_with(&s.gw, field(&phone, "access_token")).await, 200);
    let listed = cli(&s.config, &["sessions", "list"], None).await;
    assert_eq!(listed.lines().count(), 2, "{listed}");

    let out = cli(&s.config, &["sessions", "revoke", "alice"], None).await;
    assert!(out.contains("ended 1 sessions"), "{out}");
    refused_within(&s.gw, field(&phone, "access_token"), PROPAGATION).await;
    let listed = cli(&s.config, &["sessions", "list"], None).await;
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

#[tokio::test]
async fn a_logout_on_one_gateway_is_enforced_by_another_on_the_same_store_within_a_second() {
    let s = setup("").await;
    let up = Upstream::start().await;
    let data = s.gw.dir.path().display().to_string();
    let second = GatewayBuilder::route("api", "/api", &up.url(), "")
        .and(&format!(
            "[store]\npath = \"{data}/gatehouse.db\"\n[auth]\nkeys_dir = \"{data}/keys\"\n"
        ))
        .start()
        .await;
    let tokens = s.gw.login("alice", "secret-one").await;
    let access = field(&tokens, "access_token");
    assert_eq!(status_with(&second, access).await, 200);
    let r = client()
        .post(s.gw.url("/auth/logout"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let took = refused_within(&second, access, PROPAGATION).await;
    eprintln!("logout enforced by the other gateway after {took:?}");
    assert_eq!(
        refresh(&second, field(&tokens, "refresh_token"))
            .await
            .status(),
        400
    );
}

/// Twenty refreshes with one token at once, as tabs or retries send them.
async fn twenty_refreshes(gw: &TestGateway, token: &str) -> Vec<reqwest::Response> {
    let sends = (0..20).map(|_| refresh(gw, token));
    futures_util::future::join_all(sends).await
}

#[tokio::test]
async fn concurrent_refreshes_under_strict_rotation_are_treated_as_theft() {
    let s = setup("").await;
    let tokens = s.gw.login("alice", "secret-one").await;
    let answers = twenty_refreshes(&s.gw, field(&tokens, "refresh_token")).await;
    let mut won = Vec::new();
    for r in answers {
        if r.status() == 200 {
            won.push(r.json::<Value>().await.unwrap());
        } else {
            assert_eq!(r.status(), 400);
        }
    }
    assert!(won.len() <= 1, "{won:?}");
    // The reuse revoked the session: the winner's new tokens are dead too.
    for pair in &won {
        assert_eq!(
            refresh(&s.gw, field(pair, "refresh_token")).await.status(),
            400
        );
        assert_eq!(status_with(&s.gw, field(pair, "access_token")).await, 401);
    }
}

#[tokio::test]
async fn concurrent_refreshes_within_the_grace_keep_the_session() {
    let s = setup("[auth]\nrefresh_reuse_grace = \"10s\"").await;
    let tokens = s.gw.login("alice", "secret-one").await;
    let sid = crate::support::claims(field(&tokens, "access_token"))["sid"].clone();
    let answers = twenty_refreshes(&s.gw, field(&tokens, "refresh_token")).await;
    for r in answers {
        assert_eq!(r.status(), 200);
        let pair: Value = r.json().await.unwrap();
        let access = field(&pair, "access_token");
        assert_eq!(
            crate::support::claims(access)["sid"],
            sid,
            "the same session"
        );
        assert_eq!(status_with(&s.gw, access).await, 200);
        assert_eq!(
            refresh(&s.gw, field(&pair, "refresh_token")).await.status(),
            200
        );
    }
}

#[tokio::test]
async fn reuse_after_the_grace_still_ends_the_session() {
    // Unix seconds: with a grace of 2 s a reuse under a second later is always inside it, one
    // 2 s or more later always outside.
    let s = setup("[auth]\nrefresh_reuse_grace = \"2s\"").await;
    let tokens = s.gw.login("alice", "secret-one").await;
    let old = field(&tokens, "refresh_token");
    let next: Value = refresh(&s.gw, old).await.json().await.unwrap();
    // Inside the grace: a sibling pair.
    assert_eq!(refresh(&s.gw, old).await.status(), 200);
    // Past it: a theft.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(refresh(&s.gw, old).await.status(), 400);
    assert_eq!(
        refresh(&s.gw, field(&next, "refresh_token")).await.status(),
        400,
        "the session is revoked"
    );
    assert_eq!(status_with(&s.gw, field(&next, "access_token")).await, 401);
}

/// The audit events a gateway process logged (its `[log] format = "json"`).
fn audit_events(served: &ServedBinary) -> Vec<Value> {
    served
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "gatehouse::audit")
        .map(|v| v["fields"].clone())
        .collect()
}

#[tokio::test]
async fn every_login_refresh_logout_and_lockout_leaves_an_audit_event_naming_user_and_client() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[log]\nformat = \"json\"\n\
             [auth]\nkeys_dir = \"{data}/keys\"\n[auth.limits]\nmax_failures = 2\n\
             [store]\npath = \"{data}/gatehouse.db\"\n{}",
            crate::support::route("api", "/api", &up.url(), "")
        ),
    )
    .unwrap();
    for name in ["alice", "bob"] {
        cli(
            &config,
            &["user", "add", name, "--password-stdin", "--create-store"],
            Some("right-password\n"),
        )
        .await;
    }
    let gw = serve_binary(&config);
    let url = |path: &str| format!("http://{}{path}", gw.addr);
    let login = |user: &'static str, password: &'static str| {
        let url = url("/auth/token");
        async move {
            client()
                .post(url)
                .form(&[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", password),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(login("bob", "wrong-password").await.status(), 400);
    assert_eq!(login("bob", "wrong-password").await.status(), 400);
    assert_eq!(login("bob", "right-password").await.status(), 429);
    let tokens: Value = login("alice", "right-password").await.json().await.unwrap();
    let refresh_token = field(&tokens, "refresh_token").to_owned();
    let rotated: Value = client()
        .post(url("/auth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = client()
        .post(url("/auth/logout"))
        .bearer_auth(field(&rotated, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cli(&config, &["user", "unlock", "bob"], None).await;
    // The log writer is asynchronous: give it a moment.
    let wanted = 7;
    let start = Instant::now();
    while audit_events(&gw).len() < wanted && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = audit_events(&gw);
    let summary: Vec<(String, String, String, String)> = events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (s("event"), s("user"), s("outcome"), s("reason"))
        })
        .collect();
    let has = |event: &str, user: &str, outcome: &str, reason: &str| {
        summary.iter().any(|(e, u, o, r)| {
            e == event && u == user && o == outcome && (reason.is_empty() || r.contains(reason))
        })
    };
    assert!(
        has("login", "bob", "failure", "bad_credentials"),
        "{summary:#?}"
    );
    assert!(
        has("lockout", "bob", "success", "locked for network"),
        "{summary:#?}"
    );
    assert!(has("login", "bob", "refused", "limited"), "{summary:#?}");
    assert!(has("login", "alice", "success", ""), "{summary:#?}");
    assert!(has("refresh", "alice", "success", ""), "{summary:#?}");
    assert!(
        has("logout", "alice", "success", "session ended"),
        "{summary:#?}"
    );
    for e in &events {
        if e["event"] != "unlock" {
            assert_eq!(e["client"], "127.0.0.1", "{e}");
        }
    }
    // The unlock was the CLI's, in its own process: it logs there, not in the gateway's log.
    let log = gw.lines.lock().unwrap().join("\n");
    for secret in ["right-password", "wrong-password", refresh_token.as_str()] {
        assert!(!log.contains(secret), "the log holds a secret: {secret}");
    }
    assert!(!log.contains(field(&tokens, "access_token")));
}
