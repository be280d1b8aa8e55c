//! A private fronting proxy (nginx or Caddy) for the forward-auth tests: its config generated in a
//! temporary directory from the snippet file the README shows, on a free 127.0.0.1 port, waited
//! for until it accepts (bounded), stopped by its PID (SIGTERM, then SIGKILL) and waited for when
//! dropped.
//!
//! Where the program is missing the tests print `skipped: <program> is not installed` and pass,
//! unless `CI` is set: then they fail (`.ci/run` installs both).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fronting proxy may take to accept connections after it was started.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// The examples the README includes verbatim.
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/forward-auth");

pub struct Front {
    child: Child,
    pub addr: SocketAddr,
    /// Holds the config, logs and temporary files; removed after the process is gone.
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Front {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the proxy `command(port, dir)` builds, in a fresh temporary directory and on a
    /// free port, and returns once `ready(dir)` says it has bound its port (a connection alone
    /// could reach another process that took the port) and it accepts there. The port was free
    /// a moment before: should the proxy exit at start (another process took it), it is tried
    /// again on another port, three times in all.
    pub async fn start(
        command: impl Fn(u16, &Path) -> Command,
        ready: impl Fn(&Path) -> bool,
    ) -> Front {
        for attempt in 1..=3 {
            let dir = open_dir();
            let port = free_port();
            let mut command = command(port, dir.path());
            let log = dir.path().join("front.log");
            let output = std::fs::File::create(&log).unwrap();
            let child = command
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
            // Owned (killed on drop) before anything can panic.
            let mut front = Front {
                child,
                addr: ([127, 0, 0, 1], port).into(),
                dir,
                log,
            };
            match front.listening(&ready).await {
                Ok(()) => return front,
                Err(exited) if attempt < 3 => {
                    println!("{command:?} exited at start, trying another port: {exited}");
                }
                Err(exited) => panic!("{command:?} exited at start: {exited}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until the proxy is ready and accepts; `Err` with its log if it exited, a panic if
    /// it was not within [`READY_WITHIN`].
    async fn listening(&mut self, ready: impl Fn(&Path) -> bool) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{status}:\n{}", self.log_text()));
            }
            if ready(self.dir.path()) {
                let attempt = tokio::net::TcpStream::connect(self.addr);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), attempt).await {
                    return Ok(());
                }
            }
            assert!(
                started.elapsed() < READY_WITHIN,
                "did not listen on {} within {READY_WITHIN:?}:\n{}",
                self.addr,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the proxy wrote to its stdout and stderr.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How long a stopped proxy gets to stop its own children (nginx's workers) before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(5);

impl Drop for Front {
    /// By PID: the process this fixture started, never one found by name. SIGTERM first, so
    /// nginx's master stops its worker (killed outright, the master would leave the worker
    /// running, an orphan holding the port); SIGKILL if it is still there after
    /// [`STOP_WITHIN`].
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        let started = Instant::now();
        while started.elapsed() < STOP_WITHIN {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The program, looked up on `PATH` and in the directories Debian puts it in; `None` after
/// printing the skip notice. Panics under CI.
pub fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is not installed, and CI must run its tests (.ci/run installs it)");
        }
        println!("skipped: {name} is not installed");
    }
    found
}

/// A port nothing listens on now (the proxy binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory others may enter: nginx started as root runs its worker as `nobody`.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The example `file` as the README shows it (a test in this module holds the README to it),
/// with each `(from, to)` replaced; each `from` must occur exactly once, so an example that
/// drifts from what the tests run fails here.
pub fn example(file: &str, replacements: &[(&str, String)]) -> String {
    let mut text = read_example(file);
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "examples/forward-auth/{file} must contain {from:?}"
        );
        text = text.replace(from, to);
    }
    text
}

pub fn read_example(file: &str) -> String {
    std::fs::read_to_string(Path::new(EXAMPLES).join(file)).unwrap()
}

#[test]
fn the_readme_shows_the_forward_auth_examples_the_tests_run() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for file in ["nginx.conf", "Caddyfile"] {
        let text = read_example(file);
        assert!(
            readme.contains(&text),
            "README.md must include examples/forward-auth/{file} verbatim"
        );
    }
}
