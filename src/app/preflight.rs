//! What `serve`, `check-config` and a reload demand of a valid configuration before it runs:
//! routes (unless `allow_no_routes`), and every file it names readable as the gateway will read
//! it. One function for all three, so `check-config` never passes what `serve` refuses; it
//! collects every problem rather than stopping at the first.

use std::io;
use std::path::Path;

use crate::auth::issuers;
use crate::auth::keys::{KeyError, KeyRing};
use crate::auth::keystore::Kek;
use crate::auth::service::key_retention;
use crate::config::Config;
use crate::proxy;
use crate::server;
use crate::store::StoreConfig;

/// Everything wrong with a configuration that parsed and validated, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", list(.0))]
pub struct Problems(pub Vec<String>);

fn list(problems: &[String]) -> String {
    let mut out = match problems.len() {
        1 => "1 problem:".to_owned(),
        n => format!("{n} problems:"),
    };
    for p in problems {
        out.push_str("\n  - ");
        out.push_str(p);
    }
    out
}

/// Checks `config` as `serve` will use it; `Err` lists every problem found.
pub fn check(config: &Config) -> Result<(), Problems> {
    let mut problems = Vec::new();
    if let Err(e) = config.require_routes() {
        problems.push(e.to_string());
    }
    if let Some(tls) = &config.server.tls {
        for e in server::tls_problems(&tls.cert, &tls.key) {
            problems.push(format!("server.tls: {e}"));
        }
    }
    if let Some(ca) = &config.upstream.ca_file
        && let Err(e) = proxy::ca_roots(ca)
    {
        problems.push(format!("upstream.ca_file: {e}"));
    }
    if let Some(ca) = config.tracing.as_ref().and_then(|t| t.ca_file.as_ref())
        && let Err(e) = proxy::ca_roots(ca)
    {
        problems.push(format!("tracing.ca_file: {e}"));
    }
    for (i, issuer) in config.auth.trusted_issuers.iter().enumerate() {
        if let issuers::JwksSource::File(path) = &issuer.source
            && let Err(e) = issuers::load_file(&issuer.issuer, path)
        {
            problems.push(format!("auth.trusted_issuers[{i}].jwks_file: {e}"));
        }
    }
    match &config.auth.kek_file {
        Some(kek) => {
            if let Err(e) = Kek::load(kek) {
                problems.push(format!("auth.kek_file: {e}"));
            }
        }
        None => {
            if let Err(e) = keys_dir(config) {
                problems.push(format!("auth.keys_dir: {e}"));
            }
        }
    }
    if let StoreConfig::Sqlite { path } = &config.store
        && let Err(e) = store_file(path)
    {
        problems.push(format!("store.path: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems(problems))
    }
}

/// The key directory as `serve` loads it (manifest, every key file private and matching its
/// kid); one that does not exist yet (or holds no key) must be creatable, since `serve` then
/// makes it with a first key.
fn keys_dir(config: &Config) -> Result<(), String> {
    let dir = &config.auth.keys_dir;
    match KeyRing::load(dir, key_retention(&config.auth)) {
        Ok(_) => Ok(()),
        Err(KeyError::NotInitialised { .. }) => creatable(dir),
        Err(e) => Err(e.to_string()),
    }
}

/// The SQLite file: a regular file, or one `serve` can create (its directory included).
fn store_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
            Some(dir) => creatable(dir),
            None => Ok(()),
        },
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// `dir` exists as a directory, or its nearest existing ancestor is one (so that creating the
/// missing part can work).
fn creatable(dir: &Path) -> Result<(), String> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(format!(
                    "{} cannot be created: {} is not a directory",
                    dir.display(),
                    at.display()
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => return Ok(()),
            },
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, extra: &str) -> Config {
        let d = dir.display();
        Config::from_toml(&format!(
            "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n\
             [store]\npath = \"{d}/state/gatehouse.db\"\n{extra}\n[auth]\nkeys_dir = \"{d}/state/keys\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_fresh_data_directory_is_fine_since_serve_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        check(&config(dir.path(), "")).unwrap();
    }

    #[test]
    fn every_missing_file_is_listed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("state"), "a file where a directory goes").unwrap();
        let c = config(
            dir.path(),
            &format!(
                "[server.tls]\ncert = \"{d}/none/cert.pem\"\nkey = \"{d}/none/key.pem\"\n\
                 [upstream]\nca_file = \"{d}/none/ca.pem\"\n"
            ),
        );
        let Problems(problems) = check(&c).unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "cert.pem",
            "key.pem",
            "upstream.ca_file",
            "auth.keys_dir",
            "store.path",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        assert_eq!(problems.len(), 5, "{text}");
    }

    #[test]
    fn no_routes_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let bare = format!("[store]\npath = \"{d}/db\"\n[auth]\nkeys_dir = \"{d}/keys\"\n");
        let Problems(p) = check(&Config::from_toml(&bare).unwrap()).unwrap_err();
        assert!(p[0].contains("allow_no_routes"), "{p:?}");
        let allowed = format!("{bare}[server]\nallow_no_routes = true\n");
        check(&Config::from_toml(&allowed).unwrap()).unwrap();
    }
}
