//! A private PostgreSQL server for tests: one per test process, started on first use, gone when
//! the process ends, however it ends.
//!
//! `initdb` into a temporary directory and `pg_ctl start` on a free 127.0.0.1 port, its unix
//! socket in that directory, `fsync=off` (nothing waits for the disk) but `synchronous_commit=on`
//! (a commit is in the kernel's page cache before it is acknowledged, so the outage tests'
//! `stop -m immediate`, a crash of the server and not of the machine, loses no acknowledged
//! commit, as in production; with it off, a login made just before the stop was lost and its
//! refresh token later `Unknown`), TLS on with a CA made here; as the unprivileged
//! `postgres` user when the tests run as root (PostgreSQL refuses root). TCP logins need the
//! superuser's password (SCRAM), logins on the socket are trusted. Each test gets a database of
//! its own ([`Server::create_database`]).
//!
//! Stopping: before anything starts, a watchdog shell is spawned in a process group of its own
//! (a Ctrl-C to the tests does not reach it) holding the read end of a pipe whose write end
//! only this process holds. When this process exits, panics or is killed, the pipe closes, and
//! the watchdog runs `pg_ctl stop -m immediate` on this server's data directory (the server
//! this process started, found by the PID file in that directory) and removes the directory.
//!
//! Where the binaries are missing (neither on `PATH` nor in `/usr/lib/postgresql/*/bin`), tests
//! print `skipped: PostgreSQL is not installed` and pass, unless `CI` is set: then they fail.
//!
//! Only `std`, `tokio_postgres` and `rcgen` are used, so an integration test can include this
//! file with `#[path]`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The superuser `initdb` creates, whom tests connect as.
pub(crate) const SUPERUSER: &str = "gatehouse";

/// The running server of this test process.
pub(crate) struct Server {
    /// The temporary directory: data directory, socket, certificates, log.
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    /// The superuser's password, for TCP logins.
    pub(crate) password: String,
    /// PEM file of the CA that issued the server's certificate (for `localhost` and
    /// `127.0.0.1`).
    pub(crate) ca_file: PathBuf,
    /// Where `pg_ctl` is, for [`Server::stop`] and [`Server::start_again`].
    #[allow(dead_code)] // The fault tests that stop a server are in tests/it/cluster.rs.
    bin: PathBuf,
    /// The watchdog's pipe: held, never written, closed by the kernel when this process ends
    /// (or when a [`private_server`] is dropped).
    _watchdog: ChildStdin,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The server, started on the first call; `None` (after saying so) when PostgreSQL is not
/// installed and `CI` is unset. Panics when it is missing under CI or cannot be started.
pub(crate) fn server() -> Option<&'static Server> {
    let Some(bin) = binaries() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "PostgreSQL is not installed (initdb, pg_ctl, postgres), and CI must run its tests"
            );
        }
        println!("skipped: PostgreSQL is not installed");
        return None;
    };
    match SERVER.get_or_init(|| Server::start(&bin)) {
        Ok(server) => Some(server),
        Err(e) => panic!("cannot start a private PostgreSQL server: {e}"),
    }
}

/// A server of its own, apart from the process-wide one, for a test that stops and restarts
/// it; stopped and removed when dropped. `None` (after saying so) as [`server`].
#[allow(dead_code)] // Used by tests/it/cluster.rs.
pub(crate) fn private_server() -> Option<Server> {
    let Some(bin) = binaries() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "PostgreSQL is not installed (initdb, pg_ctl, postgres), and CI must run its tests"
            );
        }
        println!("skipped: PostgreSQL is not installed");
        return None;
    };
    match Server::start(&bin) {
        Ok(server) => Some(server),
        Err(e) => panic!("cannot start a private PostgreSQL server: {e}"),
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `PATH` first, then Debian's
/// versioned directories, newest first.
fn binaries() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(found) = on_path.iter().find(|dir| complete(dir)) {
        // pg_ctl looks for postgres beside its resolved self; so do we.
        return std::fs::canonicalize(found.join("initdb"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|dir| complete(dir))
            .or_else(|| Some(found.clone()));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// Runs PostgreSQL's programs, as `postgres` when this process is root.
struct Runner {
    bin: PathBuf,
    /// uid and gid of `postgres` when running as root.
    as_postgres: Option<(u32, u32)>,
}

impl Runner {
    fn new(bin: &Path) -> Result<Self, String> {
        let as_postgres = if is_root() {
            Some((id("-u")?, id("-g")?))
        } else {
            None
        };
        Ok(Self {
            bin: bin.to_owned(),
            as_postgres,
        })
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match self.as_postgres {
            Some(_) => {
                // Where util-linux puts it; root's PATH may lack the sbin directories.
                let runuser = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
                    .into_iter()
                    .find(|p| Path::new(p).is_file())
                    .unwrap_or("runuser");
                let mut command = Command::new(runuser);
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// Gives `path` to `postgres` (when root), so the server can use it.
    fn hand_over(&self, path: &Path) -> Result<(), String> {
        match self.as_postgres {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display())),
            None => Ok(()),
        }
    }

    fn run(&self, mut command: Command, what: &str) -> Result<(), String> {
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{what} ({}): {e}", command.get_program().display()))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn id(flag: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .map_err(|e| format!("id {flag} postgres: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "running as root, and there is no `postgres` user to run PostgreSQL".into())
}

/// A value nobody else guesses for this run (a test password on 127.0.0.1).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut hasher = state.build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}{:016x}", hasher.finish(), state.hash_one(7u8))
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// The watchdog: waits for the pipe on its stdin to close, then stops the server in `data` and
/// removes `dir`.
fn watchdog(runner: &Runner, dir: &Path) -> Result<(Child, ChildStdin), String> {
    use std::os::unix::process::CommandExt as _;
    let stop = runner.command("pg_ctl");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"read -r _; dir="$1"; shift; "$@" >/dev/null 2>&1; rm -rf -- "$dir""#)
        .arg("gatehouse-pg-watchdog")
        .arg(dir)
        .arg(stop.get_program())
        .args(stop.get_args())
        .args(["-D"])
        .arg(dir.join("data"))
        .args(["stop", "-m", "immediate", "-w", "-t", "30"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = command.spawn().map_err(|e| format!("watchdog: {e}"))?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| "watchdog has no stdin".to_owned())?;
    Ok((child, pipe))
}

impl Server {
    fn start(bin: &Path) -> Result<Self, String> {
        let runner = Runner::new(bin)?;
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-pg-{}-{}",
            std::process::id(),
            &random_hex()[..8]
        ));
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        // From here on the directory is the watchdog's to remove, whatever happens next.
        let (_child, pipe) = watchdog(&runner, &dir)?;
        runner.hand_over(&dir)?;

        let password = random_hex();
        let pwfile = dir.join("pwfile");
        write(&pwfile, &password)?;
        runner.hand_over(&pwfile)?;
        let data = dir.join("data");
        let mut initdb = runner.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]);
        runner.run(initdb, "initdb")?;

        let ca_file = tls_files(&runner, &dir)?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        writeln!(
            conf,
            "\n# gatehouse tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = on\nfull_page_writes = off\n\
             max_connections = 300\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
            dir.display(),
            dir.join("server.crt").display(),
            dir.join("server.key").display(),
        )
        .map_err(|e| format!("postgresql.conf: {e}"))?;

        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            writeln!(conf, "port = {port}").map_err(|e| format!("postgresql.conf: {e}"))?;
            let mut start = runner.command("pg_ctl");
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]);
            {
                use std::os::unix::process::CommandExt as _;
                start.process_group(0);
            }
            match runner.run(start, "pg_ctl start") {
                Ok(()) => {
                    return Ok(Self {
                        dir,
                        port,
                        password,
                        ca_file,
                        bin: bin.to_owned(),
                        _watchdog: pipe,
                    });
                }
                Err(e) => {
                    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                    last = format!("{e}\n{log}");
                }
            }
        }
        Err(last)
    }

    /// Stops the server at once (`-m immediate`: connections dropped, as in a crash); the data
    /// directory stays for [`Server::start_again`].
    #[allow(dead_code)] // Used by tests/it/cluster.rs.
    pub(crate) fn stop(&self) {
        self.pg_ctl(
            &["-m", "immediate", "-w", "-t", "30", "stop"],
            "pg_ctl stop",
        );
    }

    /// Starts the stopped server again on the same port and data.
    #[allow(dead_code)] // Used by tests/it/cluster.rs.
    pub(crate) fn start_again(&self) {
        self.pg_ctl(&["-w", "-t", "60", "start"], "pg_ctl start");
    }

    #[allow(dead_code)] // Used by tests/it/cluster.rs.
    fn pg_ctl(&self, args: &[&str], what: &str) {
        let runner = Runner::new(&self.bin).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut command = runner.command("pg_ctl");
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(args);
        {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        runner.run(command, what).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A new, empty database with a name of its own; returns the name.
    pub(crate) async fn create_database(&self) -> String {
        let name = format!("gh_test_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname("postgres");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the test server's socket");
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        drop(client);
        let _ = driver.await;
        name
    }
}

/// A CA and the server's certificate and key (for `localhost` and `127.0.0.1`) in `dir`;
/// returns the CA's file.
fn tls_files(runner: &Runner, dir: &Path) -> Result<PathBuf, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let bad = |e: rcgen::Error| format!("test certificates: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca.distinguished_name
        .push(DnType::CommonName, "gatehouse PostgreSQL test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(bad)?).map_err(bad)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(bad)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(bad)?;
    let cert = leaf.signed_by(&key, &ca).map_err(bad)?;
    let ca_file = dir.join("ca.pem");
    write(&ca_file, &ca.pem())?;
    write(&dir.join("server.crt"), &cert.pem())?;
    let key_file = dir.join("server.key");
    write(&key_file, &key.serialize_pem())?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod server.key: {e}"))?;
    }
    for file in ["server.crt", "server.key"] {
        runner.hand_over(&dir.join(file))?;
    }
    Ok(ca_file)
}
