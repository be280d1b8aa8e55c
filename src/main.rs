//! The `gatehouse` binary: parses the command line, hands over to `cli::run` (which sets up
//! logging once the configuration is known),
//! and turns an error into a message with its causes and a non-zero exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: the proxy path allocates a few dozen small objects per
/// request, and glibc's per-request malloc/free cost was measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = gatehouse::cli::Cli::parse();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gatehouse::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A current-thread runtime when the process may run on one CPU only (`taskset`, a cpuset, a
/// CPU quota of one), else tokio's multi-thread runtime with a worker per allowed CPU. With one
/// CPU the multi-thread runtime still runs two threads of async work on it, the `block_on`
/// future (the accept loops) on the main thread and every spawned task on the one worker, and
/// hands wakeups between them; on one thread the same work cost 0.9k fewer instructions per
/// proxied request and 0.09 instead of 0.21-0.39 wakeups issued per request (BENCHMARKS.md,
/// issue 19).
fn runtime_builder() -> tokio::runtime::Builder {
    match std::thread::available_parallelism() {
        Ok(cpus) if cpus.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}
