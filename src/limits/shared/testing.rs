//! Private `redis-server`s for tests: each on a free 127.0.0.1 port with a temporary directory
//! of its own, `--save '' --appendonly no`, gone when the test process ends, however it ends.
//!
//! Each server runs under a keeper shell spawned in a process group of its own (a Ctrl-C to the
//! tests does not reach it) whose stdin is a pipe only this process holds. The keeper obeys one
//! command per line (`stop`, `start`, `pause`, `resume`), answering `ok`; at end of input (this
//! process exited, panicked or was killed) it stops the server and removes the directory. The
//! server stays the keeper's unwaited child until the keeper waits for it, so its PID cannot be
//! reused meanwhile: the keeper only ever signals the process it started, by its PID.
//!
//! Where `redis-server` is missing, [`Server::start`] prints `skipped: redis-server is not
//! installed` and returns `None`, unless `CI` is set: then it panics.
//!
//! Only `std` and the `redis` crate are used, so an integration test can include this file with
//! `#[path]`.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The keeper: `$1` the directory, `$2` the server binary, the rest its arguments. SIGPIPE is
/// ignored so that a last `echo ok` to a dead test process cannot kill the keeper before it
/// stops the server.
const KEEPER: &str = r#"
trap '' PIPE
dir=$1; bin=$2; shift 2
server=
start() { "$bin" "$@" --dir "$dir" >>"$dir/redis.log" 2>&1 & server=$!; }
stop() {
  if [ -n "$server" ]; then
    kill -CONT "$server" 2>/dev/null
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null
    server=
  fi
}
start "$@"
while read -r command; do
  case $command in
    stop) stop ;;
    start) [ -n "$server" ] || start "$@" ;;
    pause) [ -z "$server" ] || kill -STOP "$server" ;;
    resume) [ -z "$server" ] || kill -CONT "$server" ;;
  esac
  echo ok
done
stop
rm -rf -- "$dir"
"#;

/// How long a server may take to listen after starting.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// How a server listens.
#[derive(Clone, Debug)]
pub(crate) enum Listen {
    Plain,
    /// TLS only, with this certificate and key (PEM files); clients need no certificate.
    Tls {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// A redis-server this process started, under its keeper.
pub(crate) struct Server {
    pub(crate) port: u16,
    dir: PathBuf,
    keeper: Mutex<Keeper>,
}

struct Keeper {
    child: Child,
    /// `None` once closed.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// The server most tests share (each keeps to a key prefix of its own); `None` as for
/// [`Server::start`]. Tests that stop, pause or restart a server start one of their own.
pub(crate) fn shared() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(Listen::Plain)).as_ref()
}

/// The `redis-server` binary: `PATH` first, then where Debian puts it.
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

/// The binary, or `None` after saying the test is skipped; panics under CI.
fn installed() -> Option<PathBuf> {
    let found = binary();
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "redis-server is not installed, and CI must run its tests (.ci/run installs it)"
            );
        }
        println!("skipped: redis-server is not installed");
    }
    found
}

/// Whether the tests that need a redis-server can run; prints the skip notice when not.
pub(crate) fn available() -> bool {
    installed().is_some()
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A directory name nobody else picks in this run.
fn unique_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "gatehouse-redis-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Server {
    /// A server on a free port; `None` (after saying so) when redis-server is not installed and
    /// `CI` is unset. Panics when it cannot be started.
    pub(crate) fn start(listen: Listen) -> Option<Self> {
        let bin = installed()?;
        let mut last = String::new();
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..5 {
            match Self::start_on(&bin, free_port(), &listen) {
                Ok(server) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start:\n{last}");
    }

    fn start_on(bin: &Path, port: u16, listen: &Listen) -> Result<Self, String> {
        use std::os::unix::process::CommandExt as _;
        let dir = unique_dir();
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let port_arg = port.to_string();
        let mut args: Vec<std::ffi::OsString> = vec!["--bind".into(), "127.0.0.1".into()];
        match listen {
            Listen::Plain => args.extend(["--port".into(), port_arg.into()]),
            Listen::Tls { cert, key } => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port_arg.into(),
                "--tls-cert-file".into(),
                cert.into(),
                "--tls-key-file".into(),
                key.into(),
                "--tls-ca-cert-file".into(),
                cert.into(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
        }
        args.extend([
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
        ]);
        // From the spawn on, the directory is the keeper's to remove, whatever happens next.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(KEEPER)
            .arg("gatehouse-redis-keeper")
            .arg(&dir)
            .arg(bin)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("keeper: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the keeper has no pipes".into());
        };
        let server = Self {
            port,
            dir,
            keeper: Mutex::new(Keeper {
                child,
                stdin: Some(stdin),
                stdout: BufReader::new(stdout),
            }),
        };
        match server.wait_listening() {
            Ok(()) => Ok(server),
            Err(e) => Err(format!("{e}\n{}", server.log())),
        }
    }

    fn wait_listening(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "redis-server did not listen on {} within {READY_WITHIN:?}",
            self.port
        ))
    }

    /// The server's log so far (for assertion messages).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Sends the keeper one command and waits for its answer.
    fn tell(&self, command: &str) {
        let mut keeper = self.keeper.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stdin) = keeper.stdin.as_mut() else {
            return;
        };
        if writeln!(stdin, "{command}").is_err() {
            return;
        }
        let mut answer = String::new();
        let _ = keeper.stdout.read_line(&mut answer);
    }

    /// Stops the server (SIGTERM) and waits until it is gone; the port is free again and the
    /// data gone (nothing is saved).
    pub(crate) fn stop(&self) {
        self.tell("stop");
    }

    /// Starts the server again on the same port after [`stop`](Self::stop), and waits until it
    /// listens. Panics when it does not.
    pub(crate) fn restart(&self) {
        self.tell("start");
        if let Err(e) = self.wait_listening() {
            panic!("{e}\n{}", self.log());
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn pause(&self) {
        self.tell("pause");
    }

    pub(crate) fn resume(&self) {
        self.tell("resume");
    }

    /// `redis://127.0.0.1:PORT` (a plain server's URL).
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection for looking at what the tests stored.
    pub(crate) async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("the test server's URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test server")
    }
}

impl Drop for Server {
    /// Closes the keeper's pipe, so it stops the server and removes its directory, and waits
    /// for it: the port is free when this returns.
    fn drop(&mut self) {
        let keeper = self.keeper.get_mut().unwrap_or_else(|e| e.into_inner());
        drop(keeper.stdin.take());
        let _ = keeper.child.wait();
    }
}

/// A TCP listener that accepts connections and never answers: a Redis whose host is up but
/// whose server hangs, or a firewall that blackholes replies. Lives until dropped.
pub(crate) struct Blackhole {
    pub(crate) port: u16,
    _listener: TcpListener,
}

impl Blackhole {
    pub(crate) fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a blackhole");
        let port = listener.local_addr().expect("blackhole address").port();
        // The kernel completes handshakes into the backlog; nobody ever reads.
        Self {
            port,
            _listener: listener,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
