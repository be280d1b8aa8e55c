//! Logging setup and its `[log]` settings: human-readable by default, JSON when the config says
//! `[log] format = "json"`; the filter comes from `GATEHOUSE_LOG` (e.g. `info`, `gatehouse=debug`).
//!
//! Lines are formatted on the request's thread but written by a dedicated writer thread, so an
//! access-log line costs no write system call on the request path (BENCHMARKS.md measured
//! +2.9 µs per request for the synchronous writer). When the writer falls behind, request threads
//! wait rather than lines being dropped: an access log with holes is not an audit trail.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::value::ConfigError;

/// The `[log]` section as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The validated `[log]` section.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl RawLog {
    pub fn validate(self) -> Result<LogConfig, ConfigError> {
        Ok(LogConfig {
            format: self.format,
        })
    }
}

/// Installs the global subscriber (once; later calls change nothing). Keep the returned guard
/// alive until the program ends: dropping it flushes the lines still queued.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter =
        EnvFilter::try_from_env("GATEHOUSE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
