//! The end-to-end browser test: headless Chromium from the distribution's packages, driven by
//! Selenium (`tests/python/browser_e2e.py`) through a private chromedriver, against a gateway
//! with browser sessions on. Open a protected page, land on the sign-in page, sign in, see the
//! upstream's page, the cookie unreadable by page script, a reload after the access token
//! expired, a cross-site POST from a page on another origin refused before the upstream, sign
//! out, the page protected again.
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

use crate::support::{GatewayBuilder, Upstream, route};

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

/// A page on another origin whose script makes a credentialed, preflight-free cross-site POST
/// to the gateway, then writes what it saw into the title.
async fn attacker_origin(
    target: String,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let page = format!(
        "<!DOCTYPE html><html><head><title>attack</title></head><body><script>\
         fetch({target:?}, {{method: 'POST', credentials: 'include', body: 'x', \
         headers: {{'Content-Type': 'text/plain'}}}})\
         .then(r => {{ document.title = 'done:' + r.status; }}, \
         e => {{ document.title = 'done:blocked'; }});\
         </script></body></html>"
    );
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = &mut stopped => return,
            };
            let page = page.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let page = page.clone();
                    async move {
                        let mut r = http::Response::new(gatehouse::body::full(page));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_signs_in_renews_signs_out_and_cannot_post_cross_site() {
    let Some(python) = prerequisites() else {
        return;
    };
    let up = Upstream::start().await;
    let gw = GatewayBuilder::new(&route("app", "/app", &up.url(), "login_redirect = true"))
        .and(&route("api", "/api", &up.url(), ""))
        .and(&format!(
            "[auth]\naccess_token_lifetime = \"{TOKEN_SECONDS}s\"\nleeway = \"0s\"\n\
             [auth.session]\nenabled = true\n"
        ))
        .start()
        .await;
    gw.add_user("alice", "correct-horse", &["staff"], &[]).await;
    let gateway = format!("http://127.0.0.1:{}", gw.addr.port());
    let (other, _stop_other) = attacker_origin(format!("{gateway}/api/transfer")).await;
    let profile = tempfile::tempdir().unwrap();
    let args = vec![
        String::new(),
        CHROMIUM.to_owned(),
        profile.path().join("chromium").display().to_string(),
        gateway,
        format!("http://{other}"),
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
    assert!(ok, "the browser script failed:\n{output}");
    let seen = up.seen();
    assert!(
        seen.iter().all(|s| s.method != "POST"),
        "the cross-site POST reached the upstream: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.target == "/app/page" && s.header("x-user") == Some("alice")),
        "{seen:#?}"
    );
}
