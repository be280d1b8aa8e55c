//! What the load-test helpers (`upstream`, `passthrough`, `hyper_floor`) share: the command line
//! `NAME serve ARGS...` (anything else, as `cargo bench` runs them, exits at once with success)
//! and the runtime that serves it.

use std::future::Future;
use std::process::ExitCode;

/// Parses the arguments after `serve` with `parse` (`None`: the usage line, and failure), then
/// runs `serve` on them on the multi-thread runtime or the current-thread one. An error from
/// either is printed under the helper's `name`.
pub fn main<A, F>(
    name: &str,
    usage: &str,
    multi_thread: bool,
    parse: impl FnOnce(&[String]) -> Option<A>,
    serve: impl FnOnce(A) -> F,
) -> ExitCode
where
    F: Future<Output = std::io::Result<()>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(rest) = args.strip_prefix(&["serve".to_owned()]) else {
        eprintln!("{name}: load-test helper for benches/load.sh; nothing to benchmark");
        return ExitCode::SUCCESS;
    };
    let Some(parsed) = parse(rest) else {
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
    match runtime.block_on(serve(parsed)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
