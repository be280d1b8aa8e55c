//! What every settings section is built from: the one configuration error, durations as a file
//! writes them, and the validators several sections share. It sits at the bottom of the layout,
//! so the module that owns a section can validate it here without reaching up to `config`.

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read into the settings: every problem, with the
    /// key as an operator writes it (routes by name) and where it came from.
    #[error("{0}")]
    Load(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// The error for `key` (its dotted path, e.g. `server.listen`) and why its value is refused.
pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A duration as written in the config: `"500ms"`, `"10s"`, `"15m"`, `"2h"`, `"7d"`, or a bare
/// number of seconds (environment overrides arrive as numbers).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl From<&str> for RawDuration {
    fn from(s: &str) -> Self {
        RawDuration::Text(s.to_owned())
    }
}

/// A default, written the way a file would say it.
impl From<Duration> for RawDuration {
    fn from(d: Duration) -> Self {
        if d.subsec_nanos() == 0 {
            RawDuration::Seconds(d.as_secs())
        } else {
            RawDuration::Text(format!("{}ms", d.as_millis()))
        }
    }
}

impl RawDuration {
    pub fn parse(&self, key: &str) -> Result<Duration, ConfigError> {
        match self {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            RawDuration::Text(t) => parse_duration(t).ok_or_else(|| {
                invalid(
                    key,
                    format!("{t:?} is not a duration (use e.g. \"500ms\", \"10s\", \"15m\", \"2h\", \"7d\")"),
                )
            }),
        }
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let unit_secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit_secs).map(Duration::from_secs)
}

/// A duration that must be longer than zero.
pub fn nonzero(key: &str, d: &RawDuration) -> Result<Duration, ConfigError> {
    let d = d.parse(key)?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than 0"));
    }
    Ok(d)
}

/// A count that must be greater than zero.
pub fn positive(key: &str, n: u64) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

/// Addresses and CIDR blocks (an address is its own block), truncated to their network.
pub fn parse_cidrs(key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid(key, format!("{s:?} is not an address or CIDR block")))
        })
        .collect()
}

/// The longest secret file read (a password, a key-encryption key): a few lines at most.
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// The secret a file holds, for the setting `key`: refused when group or others may read it
/// (`chmod 600`), when it is empty, not UTF-8 or over [`MAX_SECRET_FILE_BYTES`]. One trailing
/// newline (`\n` or `\r\n`) is not part of it, so `echo secret > file` works.
pub fn read_secret(
    key: &str,
    path: &std::path::Path,
) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    use std::io::Read as _;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| invalid(key, format!("{shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| invalid(key, format!("{shown}: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(invalid(
                key,
                format!("{shown} is readable by group or others (mode {mode:o}); chmod 600 it"),
            ));
        }
    }
    if !meta.is_file() {
        return Err(invalid(key, format!("{shown} is not a regular file")));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(key, format!("{shown}: {e}")))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(invalid(
            key,
            format!("{shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"),
        ));
    }
    let mut text = zeroize::Zeroizing::new(
        String::from_utf8(std::mem::take(&mut *bytes))
            .map_err(|_| invalid(key, format!("{shown} is not UTF-8 text")))?,
    );
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(invalid(key, format!("{shown} is empty")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, refusal as err};

    #[test]
    fn durations_parse_in_every_form() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
        let e = err("[server]\nidle_timeout = \"soon\"\n");
        assert!(e.contains("server.idle_timeout"), "{e}");
        let c = Config::from_toml("[server]\nidle_timeout = 5\n").unwrap();
        assert_eq!(c.server.idle_timeout, Duration::from_secs(5));
    }

    fn secret_file(text: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_secret_file_others_can_read_is_refused() {
        for mode in [0o644, 0o640, 0o604] {
            let (_dir, path) = secret_file("hunter2\n", mode);
            let e = read_secret("x.password_file", &path)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("x.password_file") && e.contains("chmod 600"),
                "{e}"
            );
        }
        let (_dir, path) = secret_file("hunter2\r\n", 0o600);
        assert_eq!(read_secret("k", &path).unwrap().as_str(), "hunter2");
        let (_dir, path) = secret_file("two\n\n", 0o400);
        assert_eq!(read_secret("k", &path).unwrap().as_str(), "two\n");
    }

    #[test]
    fn an_empty_oversized_or_missing_secret_file_is_a_clear_error() {
        let (_dir, path) = secret_file("\n", 0o600);
        assert!(
            read_secret("k", &path)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let big = "x".repeat(MAX_SECRET_FILE_BYTES as usize + 1);
        let (_dir, path) = secret_file(&big, 0o600);
        assert!(
            read_secret("k", &path)
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
        let e = read_secret("k", std::path::Path::new("/nonexistent/secret")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/secret"), "{e}");
    }
}
