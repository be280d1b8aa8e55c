//! What a reload may take, and what it says it changed: the config file is read only once it
//! has settled (never half-written), refused when it holds no settings or would change what
//! only a restart applies (store, keys, issuer, audience, listeners); a reload that went
//! through logs the routes, keys and settings it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Value};

use crate::config::Config;
use crate::config::source;
use crate::config::value::ConfigError;
use crate::gateway::Gateway;

/// How long the config file must stay byte-for-byte the same before a reload takes it: an
/// editor or a config-management run writing it meanwhile is waited for, not read halfway.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Most settle waits before a file that keeps changing is refused (bounds the wait at
/// `SETTLE * MAX_SETTLE_WAITS`).
pub const MAX_SETTLE_WAITS: u32 = 10;

/// The keys a reload never changes, since only a restart can: the state the gateway holds
/// open (the store; the signing keys, whose directory or KEK would otherwise silently start a
/// new key set), what it vouches for in every token (issuer, audience), and its sockets. A key
/// listed covers the keys under it.
pub const RESTART_ONLY: &[&str] = &[
    "store",
    "auth.keys_dir",
    "auth.kek_file",
    "auth.issuer",
    "auth.audience",
    "server.listen",
    "server.tls",
    "admin.enabled",
    "admin.listen",
];

/// Keys read once when the process starts (the listener's limits and timeouts, the config
/// watcher, the log format): a reload takes the rest of the file and says that these wait for
/// the next start, rather than refusing the whole file as [`RESTART_ONLY`] does.
pub const APPLIED_AT_START: &[&str] = &[
    "server.max_connections",
    "server.max_header_bytes",
    "server.max_headers",
    "server.header_read_timeout",
    "server.tls_handshake_timeout",
    "server.idle_timeout",
    "server.h2_max_concurrent_streams",
    "server.shutdown_grace",
    "server.listen_backlog",
    "admin.watch_config",
    "admin.watch_interval",
    "log",
];

/// Whether dotted `key` is `listed` or lies under one of its sections.
fn listed_in(listed: &[&str], key: &str) -> bool {
    listed.iter().any(|r| {
        key.strip_prefix(r)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "{} kept changing for {waited:?} (is it still being written?): not taken",
        path.display()
    )]
    Unsettled { path: PathBuf, waited: Duration },
    #[error(
        "{} holds no settings (empty, or only comments): refused, a truncated file would drop \
         every route and reset issuer and audience",
        .0.display()
    )]
    Empty(PathBuf),
    #[error(
        "{} changed: only a restart applies {}; restart the gateway, or put the running value back",
        keys.join(", "),
        if keys.len() == 1 { "it" } else { "them" }
    )]
    NeedsRestart { keys: Vec<String> },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ReloadError {
    /// The outcome label of `gatehouse_config_reloads_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ReloadError::Unsettled { .. } => "unsettled",
            ReloadError::NeedsRestart { .. } => "needs_restart",
            ReloadError::Empty(_) | ReloadError::Config(_) => "invalid",
        }
    }
}

/// Loads `path` for a reload: its text once two reads [`SETTLE`] apart agree, refused when it
/// holds no settings at all.
pub async fn load_settled(path: &Path) -> Result<Config, ReloadError> {
    let text = read_settled(path).await?;
    let empty = toml::de::DeTable::parse(&text).is_ok_and(|t| t.get_ref().is_empty());
    if empty {
        return Err(ReloadError::Empty(path.to_owned()));
    }
    Ok(Config::from_file_text(path, &text)?)
}

async fn read_settled(path: &Path) -> Result<String, ReloadError> {
    let mut last = read(path).await?;
    for _ in 0..MAX_SETTLE_WAITS {
        tokio::time::sleep(SETTLE).await;
        let now = read(path).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Err(ReloadError::Unsettled {
        path: path.to_owned(),
        waited: SETTLE * MAX_SETTLE_WAITS,
    })
}

async fn read(path: &Path) -> Result<String, ReloadError> {
    let owned = path.to_owned();
    match tokio::task::spawn_blocking(move || source::read(&owned)).await {
        Ok(read) => Ok(read?),
        Err(e) => Err(ReloadError::Config(crate::config::value::invalid(
            "--config",
            format!("reading {} did not complete: {e}", path.display()),
        ))),
    }
}

/// Refuses `new` when it changes a [`RESTART_ONLY`] key of `running`, naming each such key.
pub fn refuse_restart_only(running: &Config, new: &Config) -> Result<(), ReloadError> {
    let keys: Vec<String> = changed_settings(&running.loaded, &new.loaded)
        .into_iter()
        .filter(|key| listed_in(RESTART_ONLY, key))
        .collect();
    if keys.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::NeedsRestart { keys })
    }
}

/// The dotted keys (routes aside) whose value differs between two loaded configurations.
fn changed_settings(old: &Dict, new: &Dict) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn flatten<'a>(prefix: &str, dict: &'a Dict, out: &mut BTreeMap<String, &'a Value>) {
    for (key, value) in dict {
        if prefix.is_empty() && key == "routes" {
            continue;
        }
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Dict(_, inner) if !inner.is_empty() => flatten(&dotted, inner, out),
            _ => {
                out.insert(dotted, value);
            }
        }
    }
}

/// What a reload changed, for its one log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    /// Kids that verify now and did not before.
    pub keys_added: Vec<String>,
    /// Kids that signed before and only verify now.
    pub keys_retired: Vec<String>,
    /// Kids that no longer verify.
    pub keys_removed: Vec<String>,
    /// Every other key whose value changed, dotted.
    pub settings: Vec<String>,
}

impl Changes {
    pub fn between(old: &Gateway, new: &Gateway) -> Changes {
        let routes = |c: &Config| -> BTreeMap<String, Value> {
            let mut by_name = BTreeMap::new();
            if let Some(Value::Array(_, list)) = c.loaded.get("routes") {
                for route in list {
                    let name = route.find_ref("name").and_then(|n| n.as_str());
                    if let Some(name) = name {
                        by_name.insert(name.to_owned(), route.clone());
                    }
                }
            }
            by_name
        };
        let (a, b) = (routes(old.config()), routes(new.config()));
        let kids = |g: &Gateway| -> (BTreeSet<String>, String) {
            let keys = g.auth().authenticator().keys();
            let kids = keys.ring.lookup().kids().map(str::to_owned).collect();
            (kids, keys.ring.signing().kid.clone())
        };
        let ((old_kids, old_signing), (new_kids, new_signing)) = (kids(old), kids(new));
        Changes {
            routes_added: b.keys().filter(|n| !a.contains_key(*n)).cloned().collect(),
            routes_removed: a.keys().filter(|n| !b.contains_key(*n)).cloned().collect(),
            routes_changed: a
                .iter()
                .filter(|(n, r)| b.get(*n).is_some_and(|s| s != *r))
                .map(|(n, _)| n.clone())
                .collect(),
            keys_added: new_kids.difference(&old_kids).cloned().collect(),
            keys_retired: if old_signing != new_signing && new_kids.contains(&old_signing) {
                vec![old_signing]
            } else {
                Vec::new()
            },
            keys_removed: old_kids.difference(&new_kids).cloned().collect(),
            settings: changed_settings(&old.config().loaded, &new.config().loaded),
        }
    }

    /// The one line a successful reload logs.
    pub fn log(&self) {
        let list = |v: &[String]| v.join(",");
        tracing::info!(
            routes_added = %list(&self.routes_added),
            routes_removed = %list(&self.routes_removed),
            routes_changed = %list(&self.routes_changed),
            keys_added = %list(&self.keys_added),
            keys_retired = %list(&self.keys_retired),
            keys_removed = %list(&self.keys_removed),
            settings_changed = %list(&self.settings),
            "configuration reloaded{}",
            if *self == Changes::default() { ": nothing changed" } else { "" }
        );
        let waiting = self.applied_at_next_start();
        if !waiting.is_empty() {
            tracing::warn!(
                keys = %waiting.join(","),
                "these settings changed but are read only at start: they apply after the next restart"
            );
        }
    }

    /// The changed settings a reload does not apply: [`APPLIED_AT_START`].
    pub fn applied_at_next_start(&self) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|key| listed_in(APPLIED_AT_START, key))
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    #[test]
    fn restart_only_keys_are_named_and_others_are_not() {
        let base = config("[auth]\nissuer = \"a\"\n");
        for (text, key) in [
            ("[auth]\nissuer = \"b\"\n", "auth.issuer"),
            (
                "[auth]\nissuer = \"a\"\naudience = \"x\"\n",
                "auth.audience",
            ),
            (
                "[auth]\nissuer = \"a\"\nkeys_dir = \"/k\"\n",
                "auth.keys_dir",
            ),
            (
                "[auth]\nissuer = \"a\"\n[store]\npath = \"/db\"\n",
                "store.path",
            ),
            (
                "[auth]\nissuer = \"a\"\n[server]\nlisten = \"127.0.0.1:1\"\n",
                "server.listen",
            ),
            (
                "[auth]\nissuer = \"a\"\n[server.tls]\ncert = \"/c\"\nkey = \"/k\"\n",
                "server.tls",
            ),
            (
                "[auth]\nissuer = \"a\"\n[admin]\nlisten = \"127.0.0.1:2\"\n",
                "admin.listen",
            ),
        ] {
            let e = refuse_restart_only(&base, &config(text)).unwrap_err();
            assert!(
                matches!(&e, ReloadError::NeedsRestart { keys } if keys.iter().any(|k| k.starts_with(key))),
                "{key}: {e}"
            );
            assert!(e.to_string().contains(key), "{e}");
        }
        let live =
            config("[auth]\nissuer = \"a\"\nleeway = \"3s\"\n[server]\nmax_body_bytes = 5\n");
        refuse_restart_only(&base, &live).unwrap();
        assert_eq!(
            changed_settings(&base.loaded, &live.loaded),
            ["auth.leeway", "server.max_body_bytes"]
        );
    }

    /// Once, a changed listener timeout was reported as changed and silently not applied:
    /// a reload names the settings that wait for the next start.
    #[test]
    fn settings_read_only_at_start_are_named_as_waiting_for_a_restart() {
        let changes = Changes {
            settings: [
                "server.idle_timeout",
                "server.max_body_bytes",
                "server.max_headers_total",
                "log.format",
                "auth.leeway",
            ]
            .map(String::from)
            .to_vec(),
            ..Changes::default()
        };
        assert_eq!(
            changes.applied_at_next_start(),
            ["server.idle_timeout", "log.format"]
        );
        assert!(Changes::default().applied_at_next_start().is_empty());
    }
}
