//! Load-test helper, not a measurement: mints many distinct, valid access tokens with a running
//! gateway's own keys, so `benches/load.sh` can send more distinct tokens than the verification
//! cache holds and measure every request as a cache miss. Uses `auth::tokens::mint_access`, the
//! gateway's own minting. Usage: `mint_tokens mint KEYS_DIR COUNT SUB OUT_FILE` (issuer and
//! audience "gatehouse", 15-minute lifetime, role "user", scope "read"). Run by `cargo bench` it
//! exits at once.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse::auth::keys::KeyRing;
use gatehouse::auth::tokens::{AccessTokenSpec, TokenSubject, mint_access};

const LIFETIME: Duration = Duration::from_secs(900);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mint, dir, count, sub, out] = args.as_slice() else {
        eprintln!("mint_tokens: load-test helper for benches/load.sh; nothing to benchmark");
        return ExitCode::SUCCESS;
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("mint_tokens: COUNT must be a number");
        return ExitCode::FAILURE;
    };
    if mint != "mint" {
        eprintln!("mint_tokens: usage: mint_tokens mint KEYS_DIR COUNT SUB OUT_FILE");
        return ExitCode::FAILURE;
    }
    match run(Path::new(dir), count, sub, Path::new(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mint_tokens: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, count: usize, sub: &str, out: &Path) -> Result<(), String> {
    let ring = KeyRing::load(dir, LIFETIME + Duration::from_secs(70)).map_err(|e| e.to_string())?;
    let spec = AccessTokenSpec {
        issuer: "gatehouse".into(),
        audience: "gatehouse".into(),
        lifetime: LIFETIME,
        max_bytes: gatehouse::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let roles = ["user".to_owned()];
    let scopes = ["read".to_owned()];
    // RSA signing is the slow part (about a millisecond a token): use every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = count.div_ceil(threads);
    let chunks: Vec<Result<Vec<String>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = per_thread.min(count.saturating_sub(t * per_thread));
                let (ring, spec) = (&ring, &spec);
                let (roles, scopes) = (&roles, &scopes);
                scope.spawn(move || {
                    (0..n)
                        .map(|_| {
                            mint_access(
                                ring,
                                spec,
                                &TokenSubject {
                                    sub,
                                    roles,
                                    scopes,
                                    client_id: "gatehouse",
                                    sid: None,
                                },
                                now,
                            )
                            .map(|m| m.token)
                            .map_err(|e| e.to_string())
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("minting thread panicked".into()))
            })
            .collect()
    });
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut file = std::io::BufWriter::new(file);
    for chunk in chunks {
        for token in chunk? {
            writeln!(file, "{token}").map_err(|e| e.to_string())?;
        }
    }
    file.flush().map_err(|e| e.to_string())
}
