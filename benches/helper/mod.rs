//! What the load-test helpers (`upstream`, `passthrough`, `hyper_floor`) share: the command line
//! `NAME serve ADDR [ARGS...] MAX_SECONDS` (anything else, as `cargo bench` runs them, exits at
//! once with success), the runtime that serves it, and the accept loop that stops by itself.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Parses `serve ADDR ARGS... MAX_SECONDS`, the arguments between the two with `middle` (`None`:
/// the usage line, and failure), then runs `serve` on them on the multi-thread runtime or the
/// current-thread one. An error from either is printed under the helper's `name`.
pub fn main<M, F>(
    name: &str,
    usage: &str,
    multi_thread: bool,
    middle: impl FnOnce(&[String]) -> Option<M>,
    serve: impl FnOnce(SocketAddr, M, Duration) -> F,
) -> ExitCode
where
    F: Future<Output = std::io::Result<()>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(rest) = args.strip_prefix(&["serve".to_owned()]) else {
        eprintln!("{name}: load-test helper for benches/load.sh; nothing to benchmark");
        return ExitCode::SUCCESS;
    };
    let parsed = match rest {
        [addr, between @ .., secs] => addr
            .parse()
            .ok()
            .zip(middle(between))
            .zip(secs.parse().ok().map(Duration::from_secs)),
        _ => None,
    };
    let Some(((addr, between), max)) = parsed else {
        eprintln!("{name}: usage: {name} serve {usage}");
        return ExitCode::FAILURE;
    };
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr, between, max)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `addr`, prints `listening ADDR` once bound, and spawns `connection(stream)` for every
/// connection accepted (with `TCP_NODELAY`) until `max` has passed.
pub async fn accept_until<F>(
    addr: SocketAddr,
    max: Duration,
    mut connection: impl FnMut(TcpStream) -> F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    let deadline = tokio::time::sleep(max);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream));
            }
        }
    }
}
