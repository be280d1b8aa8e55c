//! The end-to-end browser test: headless Chromium from the distribution's packages, driven by
//! Selenium (`tests/python/browser_e2e.py`) through a private chromedriver, against a gateway
//! with browser sessions on. Open a protected page, land on the sign-in page, sign in, see the
//! upstream's page, the cookie unreadable by page script, a reload after the access token
//! expired; then pages on two other origins of the same site (so the cookie goes along): a
//! cross-site POST to a route without CORS refused before the upstream, though its origin is
//! trusted elsewhere; a single-page app on the origin the `/data` route lists with credentials
//! reading a credentialed GET, a JSON POST after the preflight the gateway answered, and a
//! `text/plain` POST, all reaching the upstream as the signed-in user; the same app on an
//! unlisted origin reading none of them and its POSTs stopped at the gateway. Sign out, the
//! page protected again.
//!
//! Needs `/usr/bin/chromium`, `/usr/bin/chromedriver` and `INTEROP_PYTHON` with selenium (all
//! installed by `.ci/run`). Outside CI a missing one skips the test with a notice; under CI it
//! fails. chromedriver, and anything still running under the test's own `--user-data-dir`, are
//! killed by PID when the test ends, however it ends.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::{GatewayBuilder, Seen, Upstream, route};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The access tokens' lifetime in this test: the script waits past it and reloads.
const TOKEN_SECONDS: u64 = 2;
/// Longest the whole browser script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

/// What the test needs, or `None` (with a notice) outside CI; under CI a missing piece fails.
fn prerequisites() -> Option<String> {
    let missing = |what: String| {
        if std::env::var_os("CI").is_some() {
            panic!("{what} (CI is set: .ci/run installs it)");
        }
        eprintln!("skipping the Chromium test: {what} (see .ci/run)");
        None
    };
    for program in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(program).exists() {
            return missing(format!("{program} is missing"));
        }
    }
    let Ok(python) = std::env::var("INTEROP_PYTHON") else {
        return missing("INTEROP_PYTHON is not set".into());
    };
    let selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !selenium {
        return missing(format!("{python} has no selenium"));
    }
    Some(python)
}

/// A child process killed and waited for (by its PID) when dropped; with a user-data
/// directory, every process whose command line names that directory (the browser chromedriver
/// started, its helpers) is killed too.
struct Guard {
    child: Child,
    profile: Option<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(profile) = &self.profile {
            for pid in processes_naming(profile) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// PIDs of processes whose command line contains `dir` (unique to this test run).
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts chromedriver on a free loopback port and waits (bounded) until it answers.
fn start_chromedriver(profile: &Path) -> (Guard, String) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard {
        child,
        profile: Some(profile.to_owned()),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, format!("http://127.0.0.1:{port}"))
}

/// The page on another origin (same site: another port of 127.0.0.1, so `SameSite=Lax` sends
/// the cookie) that makes a credentialed, preflight-free cross-site POST to the route `/api`,
/// which trusts no other origin. The gateway's address comes in the query (`?gw=`).
const ATTACK_PAGE: &str = "<!DOCTYPE html><html><head><title>attack</title></head><body><script>\
     const gw = new URLSearchParams(location.search).get('gw');\
     fetch(gw + '/api/transfer', {method: 'POST', credentials: 'include', body: 'x', \
     headers: {'Content-Type': 'text/plain'}})\
     .then(r => { document.title = 'done:' + r.status; }, \
     e => { document.title = 'done:' + e.name; });\
     </script></body></html>";

/// The single-page app: credentialed calls to the CORS route `/data`, a GET, a JSON POST (which
/// needs a preflight) and a `text/plain` POST (which does not), each recorded in
/// `window.results` as `{status, body}` when page script could read the response, or `{error}`
/// with the exception's name (`TypeError` when CORS withholds it); then the title is `done`.
/// Served on the listed origin every call must be read, on an unlisted one none.
const SPA_PAGE: &str = "<!DOCTYPE html><html><head><title>spa</title></head><body><script>\
     const gw = new URLSearchParams(location.search).get('gw');\
     async function call(path, init) {\
       try { const r = await fetch(gw + path, Object.assign({credentials: 'include'}, init)); \
       return {status: r.status, body: await r.text()}; } \
       catch (e) { return {error: e.name}; } }\
     (async () => { const results = {};\
       results.get = await call('/data/profile', {});\
       results.json = await call('/data/items', {method: 'POST', \
         headers: {'Content-Type': 'application/json'}, body: JSON.stringify({item: 'spa'})});\
       results.plain = await call('/data/notes', {method: 'POST', body: 'note', \
         headers: {'Content-Type': 'text/plain'}});\
       window.results = results; document.title = 'done'; })();\
     </script></body></html>";

/// A loopback origin serving `pages` (path, HTML); 404 for any other path.
async fn page_origin(
    pages: &'static [(&'static str, &'static str)],
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = &mut stopped => return,
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let page = pages
                        .iter()
                        .find(|(path, _)| *path == req.uri().path())
                        .map(|(_, page)| *page);
                    async move {
                        let found = page.is_some();
                        let mut r =
                            http::Response::new(gatehouse::body::full(page.unwrap_or_default()));
                        if !found {
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/html; charset=utf-8"),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, stop)
}

/// Runs the script to its end or [`SCRIPT_TIMEOUT`], killing it then; returns (ok, output).
fn run_script(python: &str, args: &[String]) -> (bool, String) {
    let script = format!("{}/tests/python/browser_e2e.py", env!("CARGO_MANIFEST_DIR"));
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(python)
        .arg(script)
        .args(args)
        .stdout(out_file.reopen().unwrap())
        .stderr(out_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut guard = Guard {
        child,
        profile: None,
    };
    let started = Instant::now();
    let ok = loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            break status.success();
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            eprintln!("the browser script ran past {SCRIPT_TIMEOUT:?}; killed");
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(guard);
    (
        ok,
        std::fs::read_to_string(out_file.path()).unwrap_or_default(),
    )
}

/// Both pages, on every page origin.
const PAGES: &[(&str, &str)] = &[("/attack.html", ATTACK_PAGE), ("/spa.html", SPA_PAGE)];

/// A failed run's report: its `Debug` (what the test harness prints for an `Err`) is the text
/// as written, so the browser script's steps read line by line at the end of the output.
pub struct Report(String);

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One line per request: method, target, and the headers that tell who sent it.
fn summary<'a>(seen: impl IntoIterator<Item = &'a Seen>) -> String {
    seen.into_iter()
        .map(|s| {
            format!(
                "  {} {} origin={:?} x-user={:?} user-agent={:?}\n",
                s.method,
                s.target,
                s.header("origin"),
                s.header("x-user"),
                s.header("user-agent"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_signs_in_renews_signs_out_calls_cors_and_cannot_post_cross_site()
-> Result<(), Report> {
    let Some(python) = prerequisites() else {
        return Ok(());
    };
    let up = Upstream::start().await;
    // Every route forwards under this base path: what the upstream saw came through this
    // gateway only if its target starts with it (another test's client that still addresses a
    // port this upstream now holds cannot make this test fail, nor pass).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let base = format!("/via-gateway-{nanos}");
    let upstream = format!("{}{base}", up.url());
    // `listed` is the single-page app's origin, trusted with credentials on `/data` only;
    // `unlisted` is any other page on the same site.
    let (listed, _stop_listed) = page_origin(PAGES).await;
    let (unlisted, _stop_unlisted) = page_origin(PAGES).await;
    let listed = format!("http://{listed}");
    let unlisted = format!("http://{unlisted}");
    let cors = format!(
        "[routes.cors]\nallow_origins = [\"{listed}\"]\nallow_methods = [\"GET\", \"POST\"]\n\
         allow_headers = [\"content-type\"]\nallow_credentials = true\n"
    );
    let gw = GatewayBuilder::new(&route("app", "/app", &upstream, "login_redirect = true"))
        .and(&route("api", "/api", &upstream, ""))
        .and(&route("data", "/data", &upstream, &cors))
        .and(&format!(
            "[auth]\naccess_token_lifetime = \"{TOKEN_SECONDS}s\"\nleeway = \"0s\"\n\
             [auth.session]\nenabled = true\n"
        ))
        .start()
        .await;
    gw.add_user("alice", "correct-horse", &["staff"], &[]).await;
    let gateway = format!("http://127.0.0.1:{}", gw.addr.port());
    let profile = tempfile::tempdir().unwrap();
    let args = vec![
        String::new(),
        CHROMIUM.to_owned(),
        profile.path().join("chromium").display().to_string(),
        gateway,
        listed.clone(),
        unlisted.clone(),
        TOKEN_SECONDS.to_string(),
    ];
    let (ok, output) = tokio::task::spawn_blocking(move || {
        let (driver, url) = start_chromedriver(profile.path());
        let mut args = args;
        args[0] = url;
        let result = run_script(&python, &args);
        drop(driver);
        drop(profile);
        result
    })
    .await
    .unwrap();
    // An error rather than a panic: the script's short report (the steps it passed, what failed)
    // is then the end of the test's output, not buried under a backtrace.
    let fail = |what: String| {
        Err(Report(format!(
            "{what}\nthe browser script said:\n{output}"
        )))
    };
    if !ok {
        return fail("the browser script failed".into());
    }
    let (mut seen, foreign): (Vec<_>, Vec<_>) = up
        .seen()
        .into_iter()
        .partition(|s| s.target.starts_with(&base));
    if !foreign.is_empty() {
        eprintln!(
            "not through this gateway, so not counted:\n{}",
            summary(&foreign)
        );
    }
    for s in &mut seen {
        s.target.drain(..base.len());
    }
    if !seen
        .iter()
        .any(|s| s.target == "/app/page" && s.header("x-user") == Some("alice"))
    {
        return fail(format!(
            "alice's page did not reach the upstream; it saw:\n{}",
            summary(&seen)
        ));
    }
    // The cross-site POST to the route without CORS, and every POST from the unlisted origin,
    // stopped at the gateway; no preflight was forwarded.
    let stopped = |s: &&Seen| {
        (s.method == "POST"
            && (s.target.starts_with("/api") || s.header("origin") == Some(&unlisted)))
            || s.method == "OPTIONS"
    };
    let leaked: Vec<_> = seen.iter().filter(stopped).collect();
    if !leaked.is_empty() {
        return fail(format!(
            "reached the upstream:\n{}of all it saw:\n{}",
            summary(leaked),
            summary(&seen)
        ));
    }
    // The listed origin's credentialed calls reached it as alice, the JSON POST with its body.
    for (method, target) in [
        ("GET", "/data/profile"),
        ("POST", "/data/items"),
        ("POST", "/data/notes"),
    ] {
        if !seen.iter().any(|s| {
            s.method == method
                && s.target == target
                && s.header("origin") == Some(&listed)
                && s.header("x-user") == Some("alice")
                && (method == "GET" || s.body_len > 0)
        }) {
            return fail(format!(
                "{method} {target} from {listed} as alice did not reach the upstream; it saw:\n{}",
                summary(&seen)
            ));
        }
    }
    Ok(())
}
