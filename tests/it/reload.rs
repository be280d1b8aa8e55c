//! Hot reload that cannot take down the gateway: a half-written, empty or truncated file, one
//! without routes, or one changing what only a restart applies is refused, the running routes
//! keep answering and issued tokens keep working; a reload that goes through says what it
//! changed. Real sockets throughout; the SIGHUP test runs the binary.

use std::time::{Duration, Instant};

use crate::support::{GatewayBuilder, TestGateway, Upstream, client, route, serve_binary};

const PASSWORD: &str = "correct horse battery";

/// A gateway started from `file` with a protected route `api` and public routes `a`, `b`,
/// and a token of alice's.
async fn gateway(up: &Upstream) -> (TestGateway, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    let routes = route("api", "/api", &up.url(), "")
        + &route("a", "/a", &up.url(), "auth = \"public\"")
        + &route("b", "/b", &up.url(), "auth = \"public\"");
    let gw = GatewayBuilder::new(&routes)
        .start_from_file(dir, &file)
        .await;
    gw.add_user("alice", PASSWORD, &[], &[]).await;
    let token = gw.access_token("alice", PASSWORD).await;
    (gw, file, token)
}

/// The running configuration still answers: every old route, the old token accepted.
async fn still_running(gw: &TestGateway, token: &str) {
    let status = |path: &str| {
        let url = gw.url(path);
        async move { client().get(url).send().await.unwrap().status() }
    };
    assert_eq!(status("/a/x").await, 200);
    assert_eq!(status("/b/x").await, 200);
    let api = client()
        .get(gw.url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200, "the old token is refused");
}

/// The value of `gatehouse_config_reloads_total{outcome=...}` in this process.
fn reloads(outcome: &str) -> u64 {
    let text = gatehouse::metrics::render().unwrap_or_default();
    let series = format!("gatehouse_config_reloads_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A writer (an editor, a config-management run) is halfway through the file when the reload
/// starts. The first half is valid TOML that drops route `b` and the store and keys settings:
/// taken, it would 404 `b` and start a new key set. The reload waits until the file settles
/// and takes the whole new file.
#[tokio::test]
async fn a_half_written_config_file_is_never_taken() {
    let up = Upstream::start().await;
    let (gw, file, token) = gateway(&up).await;
    // The new file puts the routes last, so that its first half is the old settings with
    // routes `api` and `a` only: valid, and the same store, keys and issuer.
    let old = std::fs::read_to_string(&file).unwrap();
    let (routes, settings) = old.split_at(old.find("\n[store]").unwrap());
    let c = route("c", "/c", &up.url(), "auth = \"public\"");
    let new = format!("{settings}\n{routes}{c}");
    let cut = new.find("[[routes]]\nname = \"b\"").unwrap();
    let (first, second) = new.split_at(cut);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    let writer = {
        let (file, second) = (file.clone(), second.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            f.write_all(second.as_bytes()).unwrap();
        })
    };
    gw.app.reload().await.expect("the settled file is valid");
    writer.await.unwrap();
    still_running(&gw, &token).await;
    let c = client().get(gw.url("/c/x")).send().await.unwrap();
    assert_eq!(c.status(), 200, "the whole new file was taken");
}

/// A file that never stops changing is refused after a bounded wait, and counted.
#[tokio::test]
async fn a_config_file_that_keeps_changing_is_refused_after_a_bounded_wait() {
    let up = Upstream::start().await;
    let (gw, file, token) = gateway(&up).await;
    let before = reloads("unsettled");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (file, stop) = (file.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .unwrap();
                writeln!(f, "# still writing {i}").unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let e = gw.app.reload().await.unwrap_err().to_string();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    assert!(e.contains("kept changing"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "unbounded wait");
    assert!(reloads("unsettled") > before);
    still_running(&gw, &token).await;
}

/// An empty file, a comment-only one and a truncated one (a prefix that still parses) would
/// each answer every route 404, reset issuer and audience (refusing every issued token) and
/// start a new key set under the defaults: all refused.
#[tokio::test]
async fn an_empty_or_truncated_config_file_is_refused_and_old_tokens_still_work() {
    let up = Upstream::start().await;
    let (gw, file, token) = gateway(&up).await;
    let full = std::fs::read_to_string(&file).unwrap();
    let truncated = &full[..full.find("[[routes]]\nname = \"a\"").unwrap()];
    for (text, expected) in [
        ("", "holds no settings"),
        ("# only a comment\n\n", "holds no settings"),
        (truncated, "only a restart applies"),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = gw.app.reload().await.unwrap_err().to_string();
        assert!(e.contains(expected), "{text:?}: {e}");
        still_running(&gw, &token).await;
    }
}

/// Each key only a restart applies is refused by name; the running configuration stays and
/// the refusal is counted. On today's code each of these reloads "succeeded" while keeping
/// the old store and listener, or swapped issuer, audience or keys under live tokens.
#[tokio::test]
async fn a_reload_changing_a_restart_only_key_is_refused_naming_it() {
    let up = Upstream::start().await;
    let (gw, file, token) = gateway(&up).await;
    let original = std::fs::read_to_string(&file).unwrap();
    let data = gw.dir.path().display().to_string();
    let in_auth = |line: &str| original.replacen("[auth]\n", &format!("[auth]\n{line}\n"), 1);
    for (changed, key) in [
        (in_auth("issuer = \"https://other.example\""), "auth.issuer"),
        (in_auth("audience = \"another-api\""), "auth.audience"),
        (
            original.replace(&format!("{data}/keys"), &format!("{data}/other-keys")),
            "auth.keys_dir",
        ),
        (
            in_auth(&format!("kek_file = \"{data}/kek\"")),
            "auth.kek_file",
        ),
        (
            original.replace(&format!("{data}/gatehouse.db"), &format!("{data}/other.db")),
            "store.path",
        ),
        (
            format!("{original}\n[server]\nlisten = \"127.0.0.1:1\"\n"),
            "server.listen",
        ),
        (
            format!("{original}\n[server.tls]\ncert = \"{data}/c.pem\"\nkey = \"{data}/k.pem\"\n"),
            "server.tls",
        ),
        (
            format!("{original}\n[admin]\nlisten = \"127.0.0.1:2\"\n"),
            "admin.listen",
        ),
    ] {
        assert_ne!(changed, original, "{key}: the test changed nothing");
        let before = reloads("needs_restart");
        std::fs::write(&file, &changed).unwrap();
        let e = gw.app.reload().await.unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("restart"), "{key}: {e}");
        assert!(reloads("needs_restart") > before, "{key}: not counted");
        still_running(&gw, &token).await;
    }
    assert!(
        !gw.dir.path().join("other-keys").exists() && !gw.dir.path().join("other.db").exists(),
        "a refused reload created state"
    );
    // Back to the running values, the reload goes through.
    std::fs::write(&file, &original).unwrap();
    gw.app.reload().await.unwrap();
    still_running(&gw, &token).await;
}

/// A file whose routes were all lost is refused unless the operator says it is meant.
#[tokio::test]
async fn a_reload_without_routes_is_refused_unless_allowed() {
    let up = Upstream::start().await;
    let (gw, file, token) = gateway(&up).await;
    let original = std::fs::read_to_string(&file).unwrap();
    let end = original.find("\n[store]").unwrap();
    let start = original.find("[[routes]]").unwrap();
    let no_routes = format!("{}{}", &original[..start], &original[end..]);
    std::fs::write(&file, &no_routes).unwrap();
    let e = gw.app.reload().await.unwrap_err().to_string();
    assert!(e.contains("allow_no_routes"), "{e}");
    still_running(&gw, &token).await;

    std::fs::write(
        &file,
        format!("{no_routes}\n[server]\nallow_no_routes = true\n"),
    )
    .unwrap();
    gw.app.reload().await.unwrap();
    let gone = client().get(gw.url("/a/x")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}

/// Waits up to 10 s for a stderr line of `served` containing every one of `parts`.
fn wait_for_line(lines: &std::sync::Mutex<Vec<String>>, parts: &[&str]) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
        {
            return line.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no line with {parts:?} in {:#?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP to the binary: a refused reload logs the key that needs a restart and the gateway
/// keeps serving; a reload that goes through logs, in one line, what it changed.
#[tokio::test]
async fn sighup_logs_what_a_reload_changed_or_which_key_needs_a_restart() {
    use rustix::process::{Pid, Signal, kill_process};
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let file = dir.path().join("gatehouse.toml");
    let head = |server: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}[admin]\nenabled = false\n\
             watch_config = false\n[store]\npath = \"{data}/db\"\n"
        )
    };
    let a = route("a", "/a", &up.url(), "auth = \"public\"");
    let b = route("b", "/b", &up.url(), "auth = \"public\"");
    let auth = format!("[auth]\nkeys_dir = \"{data}/keys\"\n");
    std::fs::write(&file, format!("{}{a}{b}{auth}", head(""))).unwrap();
    let served = tokio::task::spawn_blocking({
        let file = file.clone();
        move || serve_binary(&file)
    })
    .await
    .unwrap();
    let url = |path: &str| format!("http://{}{path}", served.addr);
    let hangup = || kill_process(Pid::from_child(served.child()), Signal::HUP).unwrap();

    std::fs::write(
        &file,
        format!(
            "{}{a}{b}{auth}issuer = \"https://elsewhere.example\"\n",
            head("")
        ),
    )
    .unwrap();
    hangup();
    let lines = served.lines.clone();
    let refused = tokio::task::spawn_blocking(move || {
        wait_for_line(&lines, &["reload refused", "auth.issuer", "restart"])
    })
    .await
    .unwrap();
    assert!(!refused.contains("configuration reloaded"), "{refused}");
    assert_eq!(
        client().get(url("/b/x")).send().await.unwrap().status(),
        200
    );

    let a_changed = route("a", "/a", &up.url(), "auth = \"public\"\ntimeout = \"7s\"");
    let c = route("c", "/c", &up.url(), "auth = \"public\"");
    std::fs::write(
        &file,
        format!("{}{a_changed}{c}{auth}", head("max_body_bytes = 1000\n")),
    )
    .unwrap();
    hangup();
    let lines = served.lines.clone();
    let reloaded =
        tokio::task::spawn_blocking(move || wait_for_line(&lines, &["configuration reloaded"]))
            .await
            .unwrap();
    for part in [
        "routes_added=c",
        "routes_removed=b",
        "routes_changed=a",
        "settings_changed=server.max_body_bytes",
    ] {
        assert!(reloaded.contains(part), "{part}: {reloaded}");
    }
    assert_eq!(
        client().get(url("/c/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client().get(url("/b/x")).send().await.unwrap().status(),
        404
    );
}

/// `keys rotate` then a reload: the change names the new key as added and the old one as
/// retired (it still verifies the tokens it signed), with the routes and settings changed.
#[tokio::test]
async fn a_reload_after_a_key_rotation_names_the_keys_added_and_retired() {
    use gatehouse::app::reload::Changes;
    let up = Upstream::start().await;
    let (gw, file, token) = gateway(&up).await;
    let old_kid = gw
        .gateway
        .auth()
        .authenticator()
        .keys()
        .ring
        .signing()
        .kid
        .clone();
    let rotated = crate::support::cli(&file, &["keys", "rotate"], None).await;
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replacen("[auth]\n", "[auth]\nleeway = \"3s\"\n", 1)
        + &route("c", "/c", &up.url(), "auth = \"public\"");
    std::fs::write(&file, text).unwrap();
    gw.app.reload().await.unwrap();
    let changes = Changes::between(&gw.gateway, &gw.app.current());
    let new_kid = gw
        .app
        .current()
        .auth()
        .authenticator()
        .keys()
        .ring
        .signing()
        .kid
        .clone();
    assert!(rotated.contains(&new_kid), "{rotated}");
    assert_eq!(changes.keys_added, [new_kid]);
    assert_eq!(changes.keys_retired, [old_kid]);
    assert!(changes.keys_removed.is_empty(), "{changes:?}");
    assert_eq!(changes.routes_added, ["c"]);
    assert!(changes.routes_removed.is_empty() && changes.routes_changed.is_empty());
    assert_eq!(changes.settings, ["auth.leeway"]);
    still_running(&gw, &token).await;
}
