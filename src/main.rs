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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
