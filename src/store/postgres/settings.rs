//! The `[store.postgres]` settings: where the shared database is (a libpq URL that carries no
//! password), where the password comes from (a file of its own, or the `PGPASSFILE` that libpq
//! tools read), TLS, and the bounds on every wait; validated into a [`PgConfig`].

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::Host;
use zeroize::Zeroizing;

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_POOL_WAIT_TIMEOUT, DEFAULT_PORT,
    DEFAULT_STATEMENT_TIMEOUT, MAX_POOL_SIZE, PgConfig, PgHost, PgTls,
};
use crate::config::value::{ConfigError, RawDuration, invalid, nonzero, read_secret};

/// The environment variable naming a libpq password file (`host:port:db:user:password` lines).
pub const PGPASSFILE: &str = "PGPASSFILE";

/// The `[store.postgres]` section as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// `postgresql://user@host[:port]/dbname`, or `postgresql://user@/dbname?host=/run/postgresql`
    /// for a unix socket. Never a password: that comes from `password_file` or `PGPASSFILE`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates: with it the connection is TLS, verified (libpq's `verify-full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: RawDuration,
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: RawDuration,
    #[serde(default = "default_pool_wait_timeout")]
    pub pool_wait_timeout: RawDuration,
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}
fn default_connect_timeout() -> RawDuration {
    DEFAULT_CONNECT_TIMEOUT.into()
}
fn default_statement_timeout() -> RawDuration {
    DEFAULT_STATEMENT_TIMEOUT.into()
}
fn default_pool_wait_timeout() -> RawDuration {
    DEFAULT_POOL_WAIT_TIMEOUT.into()
}

const URL_KEY: &str = "store.postgres.url";

impl RawPostgres {
    /// Validates the section and reads the password (from `password_file`, else from the file
    /// `PGPASSFILE` names, else none: the server decides, e.g. peer authentication on a socket).
    pub fn validate(self) -> Result<PgConfig, ConfigError> {
        self.validate_with(std::env::var_os(PGPASSFILE).map(PathBuf::from).as_deref())
    }

    fn validate_with(self, passfile: Option<&Path>) -> Result<PgConfig, ConfigError> {
        let (host, port, user, dbname) = parse_url(&self.url)?;
        let password = match (&self.password_file, passfile) {
            (Some(file), _) => Some(read_secret("store.postgres.password_file", file)?),
            (None, Some(passfile)) => lookup_passfile(passfile, &host, port, &dbname, &user)?,
            (None, None) => None,
        };
        let tls = self.ca_file.map(|ca_file| PgTls { ca_file });
        if tls.is_some() && matches!(host, PgHost::Socket(_)) {
            return Err(invalid(
                "store.postgres.ca_file",
                "TLS does not apply to a unix socket",
            ));
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return Err(invalid(
                "store.postgres.pool_size",
                format!("must be 1 to {MAX_POOL_SIZE}"),
            ));
        }
        let config = PgConfig {
            host,
            port,
            user,
            password: password.map(|p| p.to_string()),
            dbname,
            tls,
            pool_size: self.pool_size,
            connect_timeout: nonzero("store.postgres.connect_timeout", &self.connect_timeout)?,
            statement_timeout: nonzero(
                "store.postgres.statement_timeout",
                &self.statement_timeout,
            )?,
            pool_wait_timeout: nonzero(
                "store.postgres.pool_wait_timeout",
                &self.pool_wait_timeout,
            )?,
        };
        config
            .check()
            .map_err(|e| invalid("store.postgres", e.to_string()))?;
        Ok(config)
    }
}

/// Host, port, user and database of a libpq URL; refuses what the gateway decides itself (the
/// password, TLS, timeouts) and what it cannot honour (several hosts).
fn parse_url(url: &str) -> Result<(PgHost, u16, String, String), ConfigError> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(invalid(
            URL_KEY,
            "must be a URL like postgresql://gatehouse@db.internal:5432/gatehouse",
        ));
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            if name != "host" {
                return Err(invalid(
                    URL_KEY,
                    format!(
                        "the parameter {name:?} is not taken: TLS is store.postgres.ca_file, \
                         the timeouts are store.postgres.*_timeout; only host= (a socket \
                         directory) may be given"
                    ),
                ));
            }
        }
    }
    let parsed = tokio_postgres::Config::from_str(url)
        .map_err(|e| invalid(URL_KEY, format!("does not parse: {e}")))?;
    if parsed.get_password().is_some() {
        return Err(invalid(
            URL_KEY,
            "must not carry a password (it would show in process lists and logs): \
             use store.postgres.password_file or PGPASSFILE",
        ));
    }
    let host = match parsed.get_hosts() {
        [Host::Tcp(name)] => PgHost::Tcp(name.clone()),
        #[cfg(unix)]
        [Host::Unix(dir)] => PgHost::Socket(dir.clone()),
        [] => return Err(invalid(URL_KEY, "names no host")),
        _ => return Err(invalid(URL_KEY, "must name exactly one host")),
    };
    let port = match parsed.get_ports() {
        [] => DEFAULT_PORT,
        [port] => *port,
        _ => return Err(invalid(URL_KEY, "must name at most one port")),
    };
    let user = parsed
        .get_user()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            invalid(
                URL_KEY,
                "must name the user, as in postgresql://USER@host/db",
            )
        })?
        .to_owned();
    let dbname = parsed
        .get_dbname()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            invalid(
                URL_KEY,
                "must name the database, as in postgresql://user@host/DB",
            )
        })?
        .to_owned();
    Ok((host, port, user, dbname))
}

/// The password of the first line of a libpq password file that fits (each of `host:port:db:user`
/// equal or `*`; `\:` and `\\` escape), `None` when no line does. The file must be private, as
/// libpq requires.
fn lookup_passfile(
    path: &Path,
    host: &PgHost,
    port: u16,
    dbname: &str,
    user: &str,
) -> Result<Option<Zeroizing<String>>, ConfigError> {
    let text = read_secret(PGPASSFILE, path)?;
    let host = match host {
        PgHost::Tcp(name) => name.clone(),
        // libpq matches a socket connection against `localhost`.
        PgHost::Socket(_) => "localhost".to_owned(),
    };
    let port = port.to_string();
    let wanted = [host.as_str(), port.as_str(), dbname, user];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, want)| field.as_str() == "*" || field.as_str() == want)
        {
            return Ok(Some(Zeroizing::new(fields[4].to_string())));
        }
    }
    Ok(None)
}

/// The `:`-separated fields of a password-file line, unescaped.
fn split_passfile_line(line: &str) -> Vec<Zeroizing<String>> {
    let mut fields = Vec::new();
    let mut field = Zeroizing::new(String::new());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    field.push(next);
                }
            }
            // The fifth field (the password) takes the rest of the line, colons included.
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn raw(url: &str) -> RawPostgres {
        RawPostgres {
            url: url.into(),
            password_file: None,
            ca_file: None,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.into(),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT.into(),
            pool_wait_timeout: DEFAULT_POOL_WAIT_TIMEOUT.into(),
        }
    }

    fn refusal(raw: RawPostgres) -> String {
        raw.validate_with(None).unwrap_err().to_string()
    }

    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn a_url_names_host_port_user_and_database() {
        let c = raw("postgresql://gh@db.internal:6432/auth")
            .validate_with(None)
            .unwrap();
        assert_eq!(c.host, PgHost::Tcp("db.internal".into()));
        assert_eq!(
            (c.port, c.user.as_str(), c.dbname.as_str()),
            (6432, "gh", "auth")
        );
        assert_eq!(c.password, None);
        let c = raw("postgres://gh@/auth?host=/run/postgresql")
            .validate_with(None)
            .unwrap();
        assert_eq!(c.host, PgHost::Socket("/run/postgresql".into()));
        assert_eq!(c.port, DEFAULT_PORT);
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        let e = refusal(raw("postgresql://gh:hunter2@db/auth"));
        assert!(e.contains(URL_KEY) && e.contains("password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = refusal(raw("postgresql://gh@db/auth?password=hunter2"));
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn tls_and_timeouts_in_the_url_are_refused_rather_than_ignored() {
        for url in [
            "postgresql://gh@db/auth?sslmode=disable",
            "postgresql://gh@db/auth?sslmode=verify-full",
            "postgresql://gh@db/auth?connect_timeout=100",
        ] {
            let e = refusal(raw(url));
            assert!(e.contains("is not taken"), "{url}: {e}");
        }
    }

    #[test]
    fn a_url_without_user_database_or_with_two_hosts_is_refused() {
        for (url, why) in [
            ("postgresql://db/auth", "user"),
            ("postgresql://gh@db", "database"),
            ("postgresql://gh@a,b/auth", "one host"),
            ("host=db user=gh dbname=auth", "URL like"),
            ("mysql://gh@db/auth", "URL like"),
        ] {
            let e = refusal(raw(url));
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn the_password_comes_from_its_file_before_pgpassfile() {
        let dir = tempfile::tempdir().unwrap();
        let own = private_file(dir.path(), "pw", "from-file\n");
        let pass = private_file(dir.path(), "pgpass", "*:*:*:*:from-pgpass\n");
        let mut r = raw("postgresql://gh@db/auth");
        r.password_file = Some(own);
        let c = r.validate_with(Some(&pass)).unwrap();
        assert_eq!(c.password.as_deref(), Some("from-file"));
        let c = raw("postgresql://gh@db/auth")
            .validate_with(Some(&pass))
            .unwrap();
        assert_eq!(c.password.as_deref(), Some("from-pgpass"));
    }

    #[test]
    fn pgpassfile_lines_match_field_by_field_with_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let pass = private_file(
            dir.path(),
            "pgpass",
            "# comment\n\
             other:5432:auth:gh:wrong-host\n\
             db:5433:auth:gh:wrong-port\n\
             db:5432:auth:gh:p\\:w\\\\d:tail\n\
             *:*:*:*:fallback\n",
        );
        let c = raw("postgresql://gh@db/auth")
            .validate_with(Some(&pass))
            .unwrap();
        assert_eq!(c.password.as_deref(), Some("p:w\\d:tail"));
        let c = raw("postgresql://someone@elsewhere/x")
            .validate_with(Some(&pass))
            .unwrap();
        assert_eq!(c.password.as_deref(), Some("fallback"));
        let only = private_file(dir.path(), "only", "db:5432:auth:gh:x\n");
        let c = raw("postgresql://gh@db/other")
            .validate_with(Some(&only))
            .unwrap();
        assert_eq!(c.password, None);
    }

    #[test]
    fn a_readable_password_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pass = private_file(dir.path(), "pgpass", "*:*:*:*:pw\n");
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = raw("postgresql://gh@db/auth")
            .validate_with(Some(&pass))
            .unwrap_err()
            .to_string();
        assert!(e.contains(PGPASSFILE) && e.contains("chmod 600"), "{e}");
        let mut r = raw("postgresql://gh@db/auth");
        r.password_file = Some(pass);
        let e = refusal(r);
        assert!(e.contains("store.postgres.password_file"), "{e}");
    }

    #[test]
    fn tls_on_a_socket_and_out_of_range_bounds_are_refused() {
        let mut r = raw("postgresql://gh@/auth?host=/run/postgresql");
        r.ca_file = Some("/etc/ca.pem".into());
        assert!(refusal(r).contains("unix socket"));
        let mut r = raw("postgresql://gh@db/auth");
        r.pool_size = 0;
        assert!(refusal(r).contains("pool_size"));
        let mut r = raw("postgresql://gh@db/auth");
        r.statement_timeout = "0s".into();
        assert!(refusal(r).contains("statement_timeout"));
        let mut r = raw("postgresql://gh@db/auth");
        r.pool_wait_timeout = "1h".into();
        assert!(refusal(r).contains("store.postgres"));
    }
}
