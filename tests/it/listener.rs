//! The listener itself: its accept queue (`[server] listen_backlog`) and the answers hyper writes
//! on its own for request heads it refuses, which must carry `X-Request-Id`, be logged and be
//! counted like every other response.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::GatewayBuilder;

/// Connects that complete within this were queued by the kernel; one that is not queued waits
/// for a SYN retransmit, 1 s at the earliest.
const QUEUED_WITHIN: Duration = Duration::from_millis(700);

fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Opens `count` connections at once to a listener that accepts none of them; returns how many
/// the kernel completed (queued) before the first SYN retransmit could have happened.
async fn burst(addr: SocketAddr, count: usize) -> usize {
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..count {
        connects.spawn(tokio::time::timeout(
            QUEUED_WITHIN,
            TcpStream::connect(addr),
        ));
    }
    // Held until all are counted, so that none leaves the queue early.
    let mut queued = Vec::new();
    while let Some(joined) = connects.join_next().await {
        if let Ok(Ok(Ok(stream))) = joined {
            queued.push(stream);
        }
    }
    queued.len()
}

#[tokio::test]
async fn connect_burst_beyond_128_is_queued_up_to_the_configured_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let config = GatewayBuilder::new("[server]\nlisten_backlog = 600").config(dir.path());
    let listener =
        gatehouse::server::bind("127.0.0.1:0".parse().unwrap(), config.server.listen_backlog)
            .unwrap();
    let addr = listener.local_addr().unwrap();
    // Linux queues backlog + 1 connections; tokio's own `bind` (backlog 128) queued 129 here.
    let expected = somaxconn().map_or(600, |cap| cap.min(600)) as usize;
    let queued = burst(addr, 600).await;
    assert!(
        queued >= expected,
        "only {queued} of 600 connects were queued at once (expected {expected})"
    );
    drop(listener);
}

/// The real binary, stopped by its PID when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gatehouse serve` on 127.0.0.1:0 with `server_keys` added to `[server]`.
fn serve_binary(dir: &std::path::Path, server_keys: &str) -> Served {
    let data = dir.display().to_string();
    let file = dir.join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_keys}\n[admin]\nenabled = false\n[auth]\nkeys_dir = \"{data}/keys\"\n[store]\npath = \"{data}/db\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env_remove("GATEHOUSE_CONFIG")
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
    let mut served = Served {
        child,
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway did not start");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split(['"', ' ', '\\']).next().unwrap();
            served.addr = addr.parse().unwrap();
            return served;
        }
    }
}

/// The backlog of the listening socket on `port` as `ss` reports it (Send-Q of a LISTEN socket);
/// `None` when `ss` (iproute2) is not installed.
fn listen_backlog_of(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    // State Recv-Q Send-Q Local Peer
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn the_binary_listens_with_the_configured_backlog() {
    if Command::new("ss").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ss (iproute2) is needed to read a listener's backlog"
        );
        eprintln!("skipped: ss (iproute2) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let served = serve_binary(dir.path(), "listen_backlog = 700");
    let expected = somaxconn().map_or(700, |cap| cap.min(700));
    assert_eq!(listen_backlog_of(served.addr.port()), Some(expected));

    let dir = tempfile::tempdir().unwrap();
    let served = serve_binary(dir.path(), "");
    let expected = somaxconn().map_or(1024, |cap| cap.min(1024));
    assert_eq!(listen_backlog_of(served.addr.port()), Some(expected));
}
