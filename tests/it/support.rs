//! Test fixtures: a recording upstream, a gateway on 127.0.0.1:0 built from TOML, clients (reqwest,
//! raw TCP), users, and logins. Everything binds port 0 and stops when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::body::{self, Body};
use gatehouse::config::Config;
use gatehouse::gateway::Gateway;
use gatehouse::store::NewUser;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every header name the upstream received whose folded form (lowercase, `_`/`.` as `-`)
    /// starts with `prefix`.
    pub fn headers_like(&self, prefix: &str) -> Vec<String> {
        self.headers
            .keys()
            .map(|k| k.as_str().replace(['_', '.'], "-"))
            .filter(|k| k.starts_with(prefix))
            .collect()
    }
}

/// How the recording upstream answers.
#[derive(Clone, Copy, Debug, Default)]
pub enum Behaviour {
    /// 200 with a small JSON body.
    #[default]
    Ok,
    /// Waits this long before answering.
    Delay(Duration),
    /// Streams this many bytes back.
    Download(u64),
    /// Answers with this status and these headers, an empty body; `{upstream}` in a value
    /// stands for the upstream's own address (`127.0.0.1:PORT`).
    Respond(u16, &'static [(&'static str, &'static str)]),
    /// Like `Ok`, with these response headers added.
    Headers(&'static [(&'static str, &'static str)]),
}

/// An HTTP/1.1 + HTTP/2 upstream that records what reaches it.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::with(Behaviour::Ok).await
    }

    pub async fn with(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let record = record.clone();
                        async move { Ok::<_, Infallible>(answer(req, record, behaviour, addr).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The one request the upstream received; fails if it saw none or several.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "upstream saw {} requests: {seen:#?}",
            seen.len()
        );
        seen.into_iter().next().unwrap()
    }

    pub fn assert_untouched(&self) {
        let seen = self.seen();
        assert!(seen.is_empty(), "upstream must see nothing, saw {seen:#?}");
    }
}

async fn answer(
    req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
    behaviour: Behaviour,
    addr: SocketAddr,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // Count the body as it streams, never holding it.
    let mut body = body;
    let mut body_len = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    record.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body_len,
    });
    match behaviour {
        Behaviour::Ok => json_ok(&serde_json::json!({"ok": true, "body_len": body_len})),
        Behaviour::Headers(extra) => {
            let mut r = json_ok(&serde_json::json!({"ok": true, "body_len": body_len}));
            for (name, value) in extra {
                r.headers_mut().append(
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_static(value),
                );
            }
            r
        }
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            json_ok(&serde_json::json!({"ok": true}))
        }
        Behaviour::Download(n) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = n / chunk.len() as u64;
            let stream = futures_util::stream::iter(
                (0..chunks)
                    .map(move |_| Ok::<_, Infallible>(http_body::Frame::data(chunk.clone()))),
            );
            let body = http_body_util::StreamBody::new(stream)
                .map_err(|never| match never {})
                .boxed();
            Response::new(body)
        }
        Behaviour::Respond(status, headers) => {
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                let value = value.replace("{upstream}", &addr.to_string());
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(&value).unwrap(),
                );
            }
            response
        }
    }
}

fn json_ok(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::json(v));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A running gateway with its own data directory.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub app: Arc<gatehouse::app::App>,
    /// The pipeline as first built (`app.current()` after a reload).
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signals shutdown and waits for the server to return.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("gateway did not stop")
                .unwrap();
        }
    }

    pub async fn add_user(&self, name: &str, password: &str, roles: &[&str], scopes: &[&str]) {
        let auth = self.gateway.auth();
        let hash = auth
            .hash_password(zeroize::Zeroizing::new(password.to_owned()))
            .await
            .unwrap();
        auth.store()
            .create_user(NewUser {
                username: gatehouse::auth::username::Username::parse(name).unwrap(),
                password_hash: hash,
                roles: roles.iter().map(|s| s.to_string()).collect(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            })
            .await
            .unwrap();
    }

    /// Password grant; returns the token response JSON.
    pub async fn login(&self, name: &str, password: &str) -> serde_json::Value {
        let response = client()
            .post(self.url("/auth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", name),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login failed");
        response.json().await.unwrap()
    }

    pub async fn access_token(&self, name: &str, password: &str) -> String {
        self.login(name, password).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Builds a gateway from TOML. `{data}` in the text is replaced by the test's data directory; the
/// store and keys go there unless the text says otherwise. `{port}` is replaced by the port the
/// gateway will listen on (bound before the config is read), for settings that name the
/// gateway's own address, such as `[auth] public_url`.
pub struct GatewayBuilder {
    toml: String,
}

impl GatewayBuilder {
    pub fn new(toml: &str) -> Self {
        Self {
            toml: toml.to_owned(),
        }
    }

    /// A gateway with one route `name` at `prefix` to `upstream`, with extra route keys.
    pub fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> Self {
        Self::new(&route(name, prefix, upstream, extra))
    }

    pub fn and(mut self, toml: &str) -> Self {
        self.toml.push('\n');
        self.toml.push_str(toml);
        self
    }

    pub fn config(&self, dir: &std::path::Path) -> Config {
        let text = self.text(dir);
        Config::from_toml(&text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"))
    }

    /// The TOML with `{data}` filled in and the test defaults added.
    pub fn text(&self, dir: &std::path::Path) -> String {
        let data = dir.display().to_string();
        let mut text = self.toml.replace("{data}", &data);
        if !text.contains("[store]") {
            text.push_str(&format!("\n[store]\npath = \"{data}/gatehouse.db\"\n"));
        }
        // Tests about other things must not trip the brute-force limits by accident; the limits
        // tests set their own.
        if !text.contains("[auth.limits]") {
            text.push_str(
                "\n[auth.limits]\nper_address_burst = 100000\nper_address_per_minute = 100000\nper_user_burst = 100000\nper_user_per_minute = 100000\nrefresh_per_address_burst = 100000\nrefresh_per_address_per_minute = 100000\nmax_failures = 100000\nmax_failures_per_user = 100000\n",
            );
        }
        if !text.contains("keys_dir") {
            text = add_auth_key(&text, &format!("keys_dir = \"{data}/keys\""));
        }
        text
    }

    pub async fn start(self) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        self.start_in(dir).await
    }

    /// Starts with an existing data directory (restart tests).
    pub async fn start_in(mut self, dir: tempfile::TempDir) -> TestGateway {
        let listener = self.bind().await;
        let config = self.config(dir.path());
        let app = gatehouse::app::App::new(config, None)
            .await
            .expect("gateway builds");
        self.serve(app, dir, listener).await
    }

    /// The gateway's listener, its port put in for `{port}`.
    async fn bind(&mut self) -> TcpListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        self.toml = self.toml.replace("{port}", &port);
        listener
    }

    /// Starts from a config file in `dir`, so that reloads re-read it.
    pub async fn start_from_file(
        mut self,
        dir: tempfile::TempDir,
        file: &std::path::Path,
    ) -> TestGateway {
        let listener = self.bind().await;
        std::fs::write(file, self.text(dir.path())).unwrap();
        let config =
            Config::load(Some(file)).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let app = gatehouse::app::App::new(config, Some(file.to_owned()))
            .await
            .expect("gateway builds");
        self.serve(app, dir, listener).await
    }

    async fn serve(
        self,
        app: Arc<gatehouse::app::App>,
        dir: tempfile::TempDir,
        listener: TcpListener,
    ) -> TestGateway {
        let gateway = app.current();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let a = app.clone();
        let task = tokio::spawn(async move {
            a.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        TestGateway {
            addr,
            app,
            gateway,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// Inserts a key into the `[auth]` table, creating it when absent.
fn add_auth_key(text: &str, line: &str) -> String {
    if let Some(pos) = text.find("[auth]\n") {
        let at = pos + "[auth]\n".len();
        format!("{}{}\n{}", &text[..at], line, &text[at..])
    } else {
        format!("{text}\n[auth]\n{line}\n")
    }
}

pub fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\n{extra}\n"
    )
}

/// A reqwest client: HTTP/1.1, no proxy, no redirects, short timeout.
/// The claims of a JWT, unverified (to read what the gateway minted).
pub fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// HTTP/2 with prior knowledge (cleartext).
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends raw bytes and reads until the server closes or `wait` passes; returns what came back.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes a private key file as an operator must: readable by its owner only (mode 600).
pub fn write_private(path: impl AsRef<std::path::Path>, contents: impl AsRef<[u8]>) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(contents.as_ref())
        .unwrap();
}

/// The status code of the first response in raw output.
pub fn raw_status(out: &str) -> u16 {
    out.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response in {out:?}"))
}

/// `gatehouse serve --config FILE` as a process of its own, its stderr lines collected; killed and
/// waited for (by its PID) when dropped.
pub struct ServedBinary {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServedBinary {
    /// The process, to signal it by its PID (SIGHUP).
    pub fn child(&self) -> &std::process::Child {
        &self.child
    }
}

impl Drop for ServedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `config` (which should listen on 127.0.0.1:0) and returns once it logs
/// the address it listens on.
pub fn serve_binary(config: &std::path::Path) -> ServedBinary {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env_remove("GATEHOUSE_CONFIG")
        .env_remove("GATEHOUSE_LOG")
        .args(["serve", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            kept.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    // Owned (killed and waited for on drop) before anything can panic.
    let mut served = ServedBinary {
        child,
        addr: "127.0.0.1:0".parse().unwrap(),
        lines,
    };
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway did not start");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            served.addr = rest
                .split(['"', ' ', '\\'])
                .next()
                .unwrap()
                .parse()
                .unwrap();
            return served;
        }
    }
}

/// Runs the `gatehouse` binary on `config` off the runtime (a gateway under test may share it);
/// returns stdout, panicking with stderr when it fails.
pub async fn cli(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .env_remove("GATEHOUSE_CONFIG")
            .arg("--config")
            .arg(&config)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "gatehouse {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    })
    .await
    .unwrap()
}
