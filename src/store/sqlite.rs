//! The embedded [`Store`] backend: one SQLite file, WAL, fully synchronous commits.
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL` fsyncs the WAL on every commit, so a
//! committed rotation or revocation survives `kill -9` and power loss. The file is created
//! `0600` in a `0700` directory because it holds password hashes.
//!
//! Concurrency: one connection behind a `std::sync::Mutex`, used only on `spawn_blocking`
//! threads. Writes that read first (rotation, conditional inserts) run in `BEGIN IMMEDIATE`
//! transactions, which take SQLite's write lock up front, so they are serialised even between
//! processes sharing the file (e.g. the CLI next to a running gateway).
//!
//! Schema versions are tracked in `PRAGMA user_version`; [`MIGRATIONS`] entry `i` upgrades
//! version `i` to `i + 1`. A file newer than this build is refused, never downgraded.

use std::fs::{DirBuilder, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
    ffi, params,
};

use super::{
    CHANGE_RETENTION, Change, ChangeBatch, Client, ClientAuthMethod, Clients, Imported,
    LOGIN_ATTEMPT_TTL, LockScope, Lockout, LockoutPolicy, Lockouts, LoginAdmission, LoginFailures,
    LoginVerdict, NewClient, NewUser, RefreshFamilies, RefreshRecord, RefreshState,
    RefreshSuccessor, Revocations, RotateError, Session, SessionOrigin, SigningKeys, Store,
    StoreError, StoredKey, User, Users,
};
use crate::auth::username::Username;
use crate::clock::unix_now;
use crate::limits::ClientNetwork;

/// How long a statement waits for another connection's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
];

/// The version this build writes (a handful of migrations always fits in `u32`).
const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Version 1: users, refresh-token families, revoked access-token ids.
/// Roles and scopes are JSON arrays of strings.
const SCHEMA_V1: &str = "
CREATE TABLE users (
    username      TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE refresh_tokens (
    digest     BLOB PRIMARY KEY NOT NULL CHECK (length(digest) = 32),
    family     TEXT NOT NULL,
    username   TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    scopes     TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
) STRICT;
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_username ON refresh_tokens (username);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

CREATE TABLE revoked_jtis (
    jti        TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX revoked_jtis_expires_at ON revoked_jtis (expires_at);
";

/// Version 2: consecutive login failures and lockouts per canonical username (names that belong
/// to no user count too, so lockouts reveal nothing about which accounts exist).
const SCHEMA_V2: &str = "
CREATE TABLE login_failures (
    username         TEXT PRIMARY KEY NOT NULL,
    failures         INTEGER NOT NULL,
    first_failure_at INTEGER NOT NULL,
    locked_until     INTEGER
) STRICT;
";

/// Version 3: login attempts admitted and not yet finished, each holding a place in its name's
/// failure budget until it is finished or expires.
const SCHEMA_V3: &str = "
CREATE TABLE login_attempts (
    id         INTEGER PRIMARY KEY,
    username   TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX login_attempts_username ON login_attempts (username);
";

/// Version 4: failures and lockouts per (username, scope), where the scope is a client network
/// (`192.0.2.0/24`, `2001:db8::/64`) or [`EVERYWHERE`] for the name's count across networks;
/// reservations record their network. A name's failures and lockout from before (one count per
/// name, from anywhere) carry over to its scope everywhere, so a running lockout stays; a
/// reservation from before counts only there and expires within seconds.
const SCHEMA_V4: &str = "
CREATE TABLE login_failures_v4 (
    username         TEXT NOT NULL,
    scope            TEXT NOT NULL,
    failures         INTEGER NOT NULL,
    first_failure_at INTEGER NOT NULL,
    locked_until     INTEGER,
    PRIMARY KEY (username, scope)
) STRICT;
INSERT INTO login_failures_v4 (username, scope, failures, first_failure_at, locked_until)
    SELECT username, '*', failures, first_failure_at, locked_until FROM login_failures;
DROP TABLE login_failures;
ALTER TABLE login_failures_v4 RENAME TO login_failures;
ALTER TABLE login_attempts ADD COLUMN network TEXT NOT NULL DEFAULT '*';
CREATE INDEX login_attempts_username_network ON login_attempts (username, network);
";

/// The scope of a name's failures and lockout across every network (never a network's text).
const EVERYWHERE: &str = "*";

/// Version 5: sessions (one row per refresh family: where it started, when last used), session
/// cuts per name, and the change feed gateways follow (revoked ids and cuts, in commit order).
/// Families already stored become sessions of unknown origin.
const SCHEMA_V5: &str = "
CREATE TABLE sessions (
    family       TEXT PRIMARY KEY NOT NULL,
    username     TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    client_addr  TEXT,
    user_agent   TEXT
) STRICT;
CREATE INDEX sessions_username ON sessions (username);
INSERT INTO sessions (family, username, created_at, last_used_at)
    SELECT family, min(username), min(issued_at), max(issued_at)
    FROM refresh_tokens GROUP BY family;

CREATE TABLE session_cuts (
    username   TEXT PRIMARY KEY NOT NULL,
    not_before INTEGER NOT NULL
) STRICT;

CREATE TABLE changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('revoked', 'cut')),
    subject    TEXT NOT NULL,
    value      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
";

/// Version 6: the signing keys gateways share (private keys sealed by the caller), and a feed
/// that also announces key changes. The feed table is rebuilt to widen its `kind` check; its
/// last sequence number is carried over first (AUTOINCREMENT keeps it in `sqlite_sequence`),
/// so a follower that had seen it, even with every row purged since, misses nothing after.
const SCHEMA_V6: &str = "
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    alg         TEXT NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    active_from INTEGER NOT NULL,
    retired_at  INTEGER
) STRICT;

CREATE TABLE changes_v6 (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('revoked', 'cut', 'keys')),
    subject    TEXT NOT NULL,
    value      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'changes_v6', seq FROM sqlite_sequence WHERE name = 'changes';
INSERT INTO changes_v6 (seq, kind, subject, value, created_at)
    SELECT seq, kind, subject, value, created_at FROM changes;
DROP TABLE changes;
ALTER TABLE changes_v6 RENAME TO changes;
";

/// Version 7: the client registry. Lists are JSON arrays of strings, as for users.
const SCHEMA_V7: &str = "
CREATE TABLE clients (
    name          TEXT PRIMARY KEY NOT NULL,
    secret_digest BLOB NOT NULL CHECK (length(secret_digest) = 32),
    scopes        TEXT NOT NULL,
    audiences     TEXT NOT NULL,
    grants        TEXT NOT NULL,
    jwks_url      TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0,
    epoch         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    rotated_at    INTEGER NOT NULL
) STRICT;
";

/// Version 8: `private_key_jwt` clients. Each client has one authentication method (existing
/// clients keep their secrets) and may hold its public keys inline (a JWKS document); the ids of
/// assertions already used are kept until they expire, so a replay is refused by every gateway
/// of the store.
const SCHEMA_V8: &str = "
ALTER TABLE clients ADD COLUMN auth_method TEXT NOT NULL DEFAULT 'client_secret'
    CHECK (auth_method IN ('client_secret', 'private_key_jwt'));
ALTER TABLE clients ADD COLUMN jwks TEXT;

CREATE TABLE client_assertions (
    client     TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client, jti)
) STRICT;
CREATE INDEX client_assertions_expiry ON client_assertions (expires_at);
";

/// Failure rows untouched for this long are purged (longer than any sensible find_time).
const FAILURE_ROW_TTL: i64 = 86_400;

const USER_COLUMNS: &str =
    "username, password_hash, roles, scopes, disabled, created_at, updated_at";
const REFRESH_COLUMNS: &str =
    "digest, family, username, scopes, issued_at, expires_at, used_at, revoked_at";

const CLIENT_COLUMNS: &str = "name, secret_digest, scopes, audiences, grants, jwks_url, disabled, \
     epoch, created_at, rotated_at, auth_method, jwks";

/// The SQLite store; cheap to share behind an `Arc`.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One more failure for `name` in `scope` inside `tx`; the lockout's end when it reaches `max`.
fn count_failure(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    scope: &str,
    max: u32,
    now: i64,
    policy: LockoutPolicy,
) -> Result<Option<i64>, StoreError> {
    let row: Option<(i64, i64)> = tx
        .query_row(
            "SELECT failures, first_failure_at FROM login_failures \
             WHERE username = ?1 AND scope = ?2",
            [name, scope],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (failures, first) = match row {
        Some((n, first)) if first + policy.find_time > now => (n + 1, first),
        _ => (1, now),
    };
    let locked_until = (failures >= i64::from(max)).then(|| now + policy.ban_time);
    // A lockout starts a fresh count: the next window begins when the ban ends.
    let (failures, first) = if locked_until.is_some() {
        (0, now)
    } else {
        (failures, first)
    };
    tx.execute(
        "INSERT INTO login_failures (username, scope, failures, first_failure_at, locked_until) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (username, scope) DO UPDATE SET \
         failures = excluded.failures, first_failure_at = excluded.first_failure_at, \
         locked_until = coalesce(excluded.locked_until, locked_until)",
        params![name, scope, failures, first, locked_until],
    )?;
    Ok(locked_until)
}

/// Failures of `name` in `scope` within the window at `now`, or the end of its running lockout.
fn scope_failures(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    scope: &str,
    now: i64,
    policy: LockoutPolicy,
) -> Result<Result<i64, i64>, StoreError> {
    let row: Option<(i64, i64, Option<i64>)> = tx
        .query_row(
            "SELECT failures, first_failure_at, locked_until FROM login_failures \
             WHERE username = ?1 AND scope = ?2",
            [name, scope],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        Some((_, _, Some(until))) if until > now => Err(until),
        Some((n, first, _)) if first + policy.find_time > now => Ok(n),
        _ => Ok(0),
    })
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        match &err {
            E::SqliteFailure(e, _)
                if matches!(e.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
            {
                Self::Corrupt(err.to_string())
            }
            E::FromSqlConversionFailure(..)
            | E::InvalidColumnType(..)
            | E::IntegralValueOutOfRange(..) => Self::Corrupt(err.to_string()),
            _ => Self::Unavailable(err.to_string()),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// Blocking: call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        prepare_file(path)?;
        // No SQLITE_OPEN_URI: a configured path is a path, never a `file:` URI with options.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// Opens the database at `path` like [`SqliteStore::open`], but only when the file is
    /// already there: for the operator's commands, which must never leave an empty store behind
    /// a forgotten `--config`.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "{} does not exist (`gatehouse serve` creates it, or `gatehouse user add \
                 --create-store`)",
                path.display()
            )));
        }
        Self::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` on a blocking thread with the connection.
    async fn call<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while the lock was held unwound through rusqlite's `Transaction` drop,
            // which rolls back, so the connection is consistent and safe to keep using.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            job(&mut guard)
        })
        .await
        .map_err(|e| E::from(StoreError::Unavailable(format!("store task failed: {e}"))))?
    }
}

#[cfg(unix)]
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    let io = |what: &str, e: std::io::Error| {
        StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io("cannot create the directory of", e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("cannot open", e))?;
    let mode = file
        .metadata()
        .map_err(|e| io("cannot stat", e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        // An existing file others can read exposes password hashes; tighten it if we may.
        match file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                was = format_args!("{:o}", mode & 0o777),
                "store file was accessible to other users; restricted to 0600"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                error = %e,
                "store file is accessible to other users and could not be restricted"
            ),
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .create(parent)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot create the directory of {}: {e}",
                    path.display()
                ))
            })?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    Ok(())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "cannot enable WAL (journal_mode is {mode}); is the file on a network filesystem?"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows (old hashes, removed users) are overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // The schema is ours; never run functions a tampered schema might reference.
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    if !fk {
        return Err(StoreError::Unavailable(
            "SQLite build does not enforce foreign keys".into(),
        ));
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a fresh file at once must not both apply v1.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = usize::try_from(current)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {current}")))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "database schema version {current} is newer than this build supports ({})",
            MIGRATIONS.len()
        )));
    }
    for sql in &MIGRATIONS[current..] {
        tx.execute_batch(sql)?;
    }
    if current < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// The feed's last sequence number: AUTOINCREMENT keeps it in `sqlite_sequence` even after
/// every row was purged.
fn latest_change(conn: &Connection) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(seq.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

fn is_constraint(err: &rusqlite::Error, extended: i32) -> bool {
    err.sqlite_extended_error_code() == Some(extended)
}

fn to_json(list: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(list).map_err(|e| StoreError::Corrupt(format!("list encoding: {e}")))
}

fn from_json(text: &str, what: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A stored name must already be canonical; anything else was written behind our back.
fn stored_username(text: &str) -> Result<Username, StoreError> {
    match Username::parse(text) {
        Ok(name) if name.as_str() == text => Ok(name),
        _ => Err(StoreError::Corrupt(format!(
            "non-canonical username {:?}",
            text.escape_debug().to_string()
        ))),
    }
}

struct UserRow {
    username: String,
    password_hash: String,
    roles: String,
    scopes: String,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
}

impl UserRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            username: row.get(0)?,
            password_hash: row.get(1)?,
            roles: row.get(2)?,
            scopes: row.get(3)?,
            disabled: row.get(4)?,
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
        })
    }

    fn into_user(self) -> Result<User, StoreError> {
        Ok(User {
            username: stored_username(&self.username)?,
            password_hash: self.password_hash,
            roles: from_json(&self.roles, "user roles")?,
            scopes: from_json(&self.scopes, "user scopes")?,
            disabled: self.disabled,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

struct RefreshRow {
    digest: Vec<u8>,
    family: String,
    username: String,
    scopes: String,
    issued_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl RefreshRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            digest: row.get(0)?,
            family: row.get(1)?,
            username: row.get(2)?,
            scopes: row.get(3)?,
            issued_at: row.get(4)?,
            expires_at: row.get(5)?,
            used_at: row.get(6)?,
            revoked_at: row.get(7)?,
        })
    }

    fn into_parts(self) -> Result<(RefreshRecord, RefreshState), StoreError> {
        let digest = <[u8; 32]>::try_from(self.digest.as_slice())
            .map_err(|_| StoreError::Corrupt("refresh digest is not 32 bytes".into()))?;
        let record = RefreshRecord {
            digest,
            family: self.family,
            username: stored_username(&self.username)?,
            scopes: from_json(&self.scopes, "refresh scopes")?,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
        };
        let state = RefreshState {
            used_at: self.used_at,
            revoked_at: self.revoked_at,
        };
        Ok((record, state))
    }
}

fn find_refresh(
    conn: &Connection,
    digest: &[u8; 32],
) -> Result<Option<(RefreshRecord, RefreshState)>, StoreError> {
    conn.query_row(
        &format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE digest = ?1"),
        [&digest[..]],
        RefreshRow::read,
    )
    .optional()?
    .map(RefreshRow::into_parts)
    .transpose()
}

fn revoke_family_in(conn: &Connection, family: &str, now: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE refresh_tokens SET revoked_at = ?1 WHERE family = ?2 AND revoked_at IS NULL",
        params![now, family],
    )?)
}

fn revoke_user_in(conn: &Connection, name: &Username, now: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE refresh_tokens SET revoked_at = ?1 WHERE username = ?2 AND revoked_at IS NULL",
        params![now, name.as_str()],
    )?)
}

/// Appends one change to the feed, inside the transaction that made it.
fn record_change(
    conn: &Connection,
    kind: &str,
    subject: &str,
    value: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO changes (kind, subject, value, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![kind, subject, value, unix_now()],
    )?;
    Ok(())
}

/// Cuts every session of `name` at `now` (see [`RefreshFamilies::end_sessions`]); returns the
/// families that had a token not yet revoked. Call inside a transaction.
fn cut_sessions_in(conn: &Connection, name: &Username, now: i64) -> Result<u64, StoreError> {
    let families: i64 = conn.query_row(
        "SELECT count(DISTINCT family) FROM refresh_tokens \
         WHERE username = ?1 AND revoked_at IS NULL",
        [name.as_str()],
        |r| r.get(0),
    )?;
    revoke_user_in(conn, name, now)?;
    let not_before: i64 = conn.query_row(
        "INSERT INTO session_cuts (username, not_before) VALUES (?1, ?2) \
         ON CONFLICT (username) DO UPDATE SET not_before = max(not_before, excluded.not_before) \
         RETURNING not_before",
        params![name.as_str(), now.saturating_add(1)],
        |r| r.get(0),
    )?;
    record_change(conn, "cut", name.as_str(), not_before)?;
    Ok(u64::try_from(families).unwrap_or(0))
}

/// Runs one `UPDATE ... WHERE username = ?` and turns "no row" into `NotFound`.
fn update_user(
    conn: &Connection,
    name: &Username,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<(), StoreError> {
    match conn.execute(sql, values)? {
        0 => Err(StoreError::NotFound(name.clone())),
        _ => Ok(()),
    }
}

/// The rotation transaction. The outer `Result` is the database failing; the inner one is the
/// answer about the token.
fn rotate_in(
    tx: &Transaction<'_>,
    old: &[u8; 32],
    next: &RefreshSuccessor,
    now: i64,
    grace: i64,
) -> Result<Result<RefreshRecord, RotateError>, StoreError> {
    let Some((record, state)) = find_refresh(tx, old)? else {
        return Ok(Err(RotateError::Unknown));
    };
    if let Some(used_at) = state.used_at {
        let retried = state.revoked_at.is_none()
            && now < record.expires_at
            && now < used_at.saturating_add(grace);
        if !retried {
            revoke_family_in(tx, &record.family, now)?;
            return Ok(Err(RotateError::Reused {
                family: record.family,
                username: record.username,
            }));
        }
    } else {
        if state.revoked_at.is_some() {
            return Ok(Err(RotateError::Revoked));
        }
        if now >= record.expires_at {
            return Ok(Err(RotateError::Expired));
        }
        tx.execute(
            "UPDATE refresh_tokens SET used_at = ?1 WHERE digest = ?2 AND used_at IS NULL",
            params![now, &old[..]],
        )?;
    }
    tx.execute(
        "UPDATE sessions SET last_used_at = max(last_used_at, ?1) WHERE family = ?2",
        params![now, record.family],
    )?;
    let inserted = tx.execute(
        &format!(
            "INSERT INTO refresh_tokens ({REFRESH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL)"
        ),
        params![
            &next.digest[..],
            record.family,
            record.username.as_str(),
            to_json(&record.scopes)?,
            next.issued_at,
            next.expires_at,
        ],
    );
    match inserted {
        Ok(_) => Ok(Ok(record)),
        Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
            Ok(Err(RotateError::Store(StoreError::DuplicateRefresh)))
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Users for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        self.call(move |conn| {
            let now = unix_now();
            let inserted = conn.execute(
                &format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)"),
                params![
                    user.username.as_str(),
                    user.password_hash,
                    to_json(&user.roles)?,
                    to_json(&user.scopes)?,
                    now,
                ],
            );
            match inserted {
                Ok(_) => Ok(User {
                    username: user.username,
                    password_hash: user.password_hash,
                    roles: user.roles,
                    scopes: user.scopes,
                    disabled: false,
                    created_at: now,
                    updated_at: now,
                }),
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                    Err(StoreError::Conflict(user.username))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn import_users(
        &self,
        users: Vec<NewUser>,
        skip_existing: bool,
    ) -> Result<Imported, StoreError> {
        self.call(move |conn| {
            let now = unix_now();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut imported = Imported::default();
            {
                // Only a taken name is passed over; any other failure aborts the transaction.
                let mut insert = tx.prepare(&format!(
                    "INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5) \
                     ON CONFLICT (username) DO NOTHING"
                ))?;
                for user in users {
                    let inserted = insert.execute(params![
                        user.username.as_str(),
                        user.password_hash,
                        to_json(&user.roles)?,
                        to_json(&user.scopes)?,
                        now,
                    ])?;
                    if inserted == 0 {
                        imported.existing.push(user.username);
                    } else {
                        imported.added += 1;
                    }
                }
            }
            if !skip_existing && !imported.existing.is_empty() {
                // Dropping the transaction rolls every insert back.
                imported.added = 0;
                return Ok(imported);
            }
            tx.commit()?;
            Ok(imported)
        })
        .await
    }

    async fn user(&self, name: &Username) -> Result<Option<User>, StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            conn.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
                [name.as_str()],
                UserRow::read,
            )
            .optional()?
            .map(UserRow::into_user)
            .transpose()
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {USER_COLUMNS} FROM users ORDER BY username"
            ))?;
            let rows = stmt.query_map([], UserRow::read)?;
            rows.map(|row| row.map_err(StoreError::from).and_then(UserRow::into_user))
                .collect()
        })
        .await
    }

    async fn set_password(&self, name: &Username, hash: &str) -> Result<(), StoreError> {
        let (name, hash) = (name.clone(), hash.to_owned());
        self.call(move |conn| {
            update_user(
                conn,
                &name,
                "UPDATE users SET password_hash = ?1, updated_at = ?2 WHERE username = ?3",
                params![hash, unix_now(), name.as_str()],
            )
        })
        .await
    }

    async fn set_disabled(
        &self,
        name: &Username,
        disabled: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            update_user(
                &tx,
                &name,
                "UPDATE users SET disabled = ?1, updated_at = ?2 WHERE username = ?3",
                params![disabled, unix_now(), name.as_str()],
            )?;
            if disabled {
                cut_sessions_in(&tx, &name, now)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn set_roles_scopes(
        &self,
        name: &Username,
        roles: Vec<String>,
        scopes: Vec<String>,
    ) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            update_user(
                conn,
                &name,
                "UPDATE users SET roles = ?1, scopes = ?2, updated_at = ?3 WHERE username = ?4",
                params![
                    to_json(&roles)?,
                    to_json(&scopes)?,
                    unix_now(),
                    name.as_str()
                ],
            )
        })
        .await
    }

    async fn remove_user(&self, name: &Username, now: i64) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            cut_sessions_in(&tx, &name, now)?;
            // ON DELETE CASCADE removes the user's refresh tokens and sessions with it.
            match tx.execute("DELETE FROM users WHERE username = ?1", [name.as_str()])? {
                // Dropping the transaction rolls the cut back: nothing changed.
                0 => Err(StoreError::NotFound(name)),
                _ => {
                    tx.commit()?;
                    Ok(())
                }
            }
        })
        .await
    }
}

#[async_trait]
impl RefreshFamilies for SqliteStore {
    async fn insert_refresh(
        &self,
        record: RefreshRecord,
        origin: SessionOrigin,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let disabled: Option<bool> = tx
                .query_row(
                    "SELECT disabled FROM users WHERE username = ?1",
                    [record.username.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            match disabled {
                None => return Err(StoreError::NotFound(record.username)),
                Some(true) => return Err(StoreError::Disabled(record.username)),
                Some(false) => {}
            }
            let inserted = tx.execute(
                &format!(
                    "INSERT INTO refresh_tokens ({REFRESH_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL)"
                ),
                params![
                    &record.digest[..],
                    record.family,
                    record.username.as_str(),
                    to_json(&record.scopes)?,
                    record.issued_at,
                    record.expires_at,
                ],
            );
            let session = inserted.and_then(|_| {
                tx.execute(
                    "INSERT INTO sessions \
                     (family, username, created_at, last_used_at, client_addr, user_agent) \
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                    params![
                        record.family,
                        record.username.as_str(),
                        record.issued_at,
                        origin.client_addr,
                        origin.user_agent,
                    ],
                )
            });
            match session {
                Ok(_) => {}
                // A digest or a family id stored twice: the caller reused random bytes.
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                    return Err(StoreError::DuplicateRefresh);
                }
                Err(e) => return Err(e.into()),
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        old: &[u8; 32],
        next: RefreshSuccessor,
        now: i64,
        grace: i64,
    ) -> Result<RefreshRecord, RotateError> {
        let old = *old;
        self.call(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::from)?;
            let answer = rotate_in(&tx, &old, &next, now, grace)?;
            // Commit on success and on reuse (the family revocation must stick); other refusals
            // changed nothing, and dropping the transaction rolls back a failed successor insert.
            if matches!(answer, Ok(_) | Err(RotateError::Reused { .. })) {
                tx.commit().map_err(StoreError::from)?;
            }
            answer
        })
        .await
    }

    async fn refresh(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<(RefreshRecord, RefreshState)>, StoreError> {
        let digest = *digest;
        self.call(move |conn| find_refresh(conn, &digest)).await
    }

    async fn revoke_family(&self, family: &str) -> Result<(), StoreError> {
        let family = family.to_owned();
        self.call(move |conn| revoke_family_in(conn, &family, unix_now()).map(drop))
            .await
    }

    async fn revoke_session(
        &self,
        name: &Username,
        family: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (name, family) = (name.clone(), family.to_owned());
        self.call(move |conn| {
            let revoked = conn.execute(
                "UPDATE refresh_tokens SET revoked_at = ?1 \
                 WHERE family = ?2 AND username = ?3 AND revoked_at IS NULL",
                params![now, family, name.as_str()],
            )?;
            Ok(revoked > 0)
        })
        .await
    }

    async fn end_sessions(&self, name: &Username, now: i64) -> Result<u64, StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let families = cut_sessions_in(&tx, &name, now)?;
            tx.commit()?;
            Ok(families)
        })
        .await
    }

    async fn sessions(
        &self,
        name: Option<&Username>,
        now: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let name = name.map(|n| n.as_str().to_owned());
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT s.family, s.username, s.created_at, s.last_used_at, max(t.expires_at), \
                        s.client_addr, s.user_agent \
                 FROM sessions s JOIN refresh_tokens t ON t.family = s.family \
                 WHERE t.used_at IS NULL AND t.revoked_at IS NULL AND t.expires_at > ?1 \
                   AND (?2 IS NULL OR s.username = ?2) \
                 GROUP BY s.family ORDER BY s.username, s.created_at, s.family",
            )?;
            let rows = stmt.query_map(params![now, name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?;
            rows.map(|row| {
                let (family, username, created_at, last_used_at, expires_at, addr, agent) = row?;
                Ok(Session {
                    family,
                    username: stored_username(&username)?,
                    created_at,
                    last_used_at,
                    expires_at,
                    origin: SessionOrigin {
                        client_addr: addr,
                        user_agent: agent,
                    },
                })
            })
            .collect()
        })
        .await
    }
}

#[async_trait]
impl Revocations for SqliteStore {
    async fn revoke_id(&self, id: &str, expires_at: i64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The table keeps its first name; it holds session ids as well as jtis.
            let expires_at: i64 = tx.query_row(
                "INSERT INTO revoked_jtis (jti, expires_at) VALUES (?1, ?2) \
                 ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at) \
                 RETURNING expires_at",
                params![id, expires_at],
                |r| r.get(0),
            )?;
            record_change(&tx, "revoked", &id, expires_at)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn session_cuts(&self) -> Result<Vec<(Username, i64)>, StoreError> {
        self.call(|conn| {
            let mut stmt =
                conn.prepare("SELECT username, not_before FROM session_cuts ORDER BY username")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
            rows.map(|row| {
                let (name, not_before) = row?;
                Ok((stored_username(&name)?, not_before))
            })
            .collect()
        })
        .await
    }

    async fn change_seq(&self) -> Result<u64, StoreError> {
        self.call(|conn| latest_change(conn)).await
    }

    async fn changes_since(&self, seq: u64, max: usize) -> Result<ChangeBatch, StoreError> {
        self.call(move |conn| {
            // Every gateway asks several times a second and there is usually nothing new: one
            // cached statement answers that.
            if latest_change(conn)? <= seq {
                return Ok(ChangeBatch {
                    changes: Vec::new(),
                    last: seq,
                    complete: true,
                });
            }
            let tx = conn.transaction()?;
            let since = i64::try_from(seq).unwrap_or(i64::MAX);
            let oldest: Option<i64> =
                tx.query_row("SELECT min(seq) FROM changes", [], |r| r.get(0))?;
            let latest = latest_change(&tx)?;
            // Purging removes the oldest rows first: changes after `seq` are all still here
            // unless the oldest one kept is further on than the next one asked for.
            let complete = match oldest {
                Some(oldest) => oldest <= since.saturating_add(1),
                None => seq >= latest,
            };
            let mut stmt = tx.prepare_cached(
                "SELECT seq, kind, subject, value FROM changes WHERE seq > ?1 \
                 ORDER BY seq LIMIT ?2",
            )?;
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![since, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut batch = ChangeBatch {
                changes: Vec::new(),
                last: seq,
                complete,
            };
            for row in rows {
                let (n, kind, subject, value) = row?;
                batch.changes.push(match kind.as_str() {
                    "revoked" => Change::Revoked {
                        id: subject,
                        expires_at: value,
                    },
                    "cut" => Change::SessionsCut {
                        username: stored_username(&subject)?,
                        not_before: value,
                    },
                    "keys" => Change::KeysChanged,
                    _ => return Err(StoreError::Corrupt(format!("change of kind {kind:?}"))),
                });
                batch.last = u64::try_from(n).unwrap_or(0);
            }
            Ok(batch)
        })
        .await
    }

    async fn revoked_ids(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM revoked_jtis WHERE expires_at <= ?1", [now])?;
            let live = {
                let mut stmt = tx.prepare(
                    "SELECT jti, expires_at FROM revoked_jtis WHERE expires_at > ?1 \
                     ORDER BY expires_at, jti",
                )?;
                let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<Vec<(String, i64)>, _>>()?
            };
            tx.commit()?;
            Ok(live)
        })
        .await
    }
}

#[async_trait]
impl LoginFailures for SqliteStore {
    async fn admit_login(
        &self,
        name: &Username,
        network: ClientNetwork,
        now: i64,
        policy: LockoutPolicy,
    ) -> Result<LoginAdmission, StoreError> {
        let name = name.as_str().to_owned();
        let network = network.to_string();
        self.call(move |conn| {
            // IMMEDIATE: the write lock is taken before the counts are read, so two admissions
            // can never both see the last free place of either budget.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM login_attempts WHERE username = ?1 AND expires_at <= ?2",
                params![name, now],
            )?;
            let locked = |until, scope| Ok(LoginAdmission::Locked(Lockout { until, scope }));
            let everywhere = match scope_failures(&tx, &name, EVERYWHERE, now, policy)? {
                Ok(n) => n,
                Err(until) => return locked(until, LockScope::Everywhere),
            };
            let here = match scope_failures(&tx, &name, &network, now, policy)? {
                Ok(n) => n,
                Err(until) => return locked(until, LockScope::Network),
            };
            let (in_flight, in_flight_here): (i64, i64) = tx.query_row(
                "SELECT count(*), count(*) FILTER (WHERE network = ?2) FROM login_attempts \
                 WHERE username = ?1",
                [&name, &network],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if here + in_flight_here >= i64::from(policy.max_failures)
                || everywhere + in_flight >= i64::from(policy.max_failures_per_user)
            {
                return Ok(LoginAdmission::Exhausted);
            }
            tx.execute(
                "INSERT INTO login_attempts (username, network, expires_at) VALUES (?1, ?2, ?3)",
                params![name, network, now.saturating_add(LOGIN_ATTEMPT_TTL)],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(LoginAdmission::Admitted(id))
        })
        .await
    }

    async fn finish_login(
        &self,
        name: &Username,
        network: ClientNetwork,
        id: i64,
        now: i64,
        policy: LockoutPolicy,
        verdict: LoginVerdict,
    ) -> Result<Option<Lockout>, StoreError> {
        let name = name.as_str().to_owned();
        let network = network.to_string();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM login_attempts WHERE id = ?1", [id])?;
            let lockout = match verdict {
                LoginVerdict::Abandoned => None,
                LoginVerdict::Succeeded => {
                    // A lockout another attempt started meanwhile stays; so does the count
                    // across networks (see `LoginVerdict::Succeeded`).
                    tx.execute(
                        "DELETE FROM login_failures WHERE username = ?1 AND scope = ?2 \
                         AND coalesce(locked_until, 0) <= ?3",
                        params![name, network, now],
                    )?;
                    None
                }
                LoginVerdict::Failed => {
                    let here =
                        count_failure(&tx, &name, &network, policy.max_failures, now, policy)?;
                    let max = policy.max_failures_per_user;
                    let everywhere = count_failure(&tx, &name, EVERYWHERE, max, now, policy)?;
                    let lockout = |scope| move |until| Lockout { until, scope };
                    everywhere
                        .map(lockout(LockScope::Everywhere))
                        .or(here.map(lockout(LockScope::Network)))
                }
            };
            tx.commit()?;
            Ok(lockout)
        })
        .await
    }

    async fn lockouts(&self, name: &Username, now: i64) -> Result<Lockouts, StoreError> {
        let name = name.as_str().to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT scope, locked_until FROM login_failures \
                 WHERE username = ?1 AND locked_until > ?2 ORDER BY scope",
            )?;
            let rows = stmt.query_map(params![name, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let mut lockouts = Lockouts::default();
            for row in rows {
                let (scope, until): (String, i64) = row?;
                if scope == EVERYWHERE {
                    lockouts.everywhere = Some(until);
                } else {
                    lockouts.networks.push((scope, until));
                }
            }
            Ok(lockouts)
        })
        .await
    }

    async fn unlock(&self, name: &Username, now: i64) -> Result<bool, StoreError> {
        let name = name.as_str().to_owned();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let locked = tx
                .query_row(
                    "SELECT 1 FROM login_failures WHERE username = ?1 AND locked_until > ?2 \
                     LIMIT 1",
                    params![name, now],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            tx.execute("DELETE FROM login_failures WHERE username = ?1", [&name])?;
            tx.commit()?;
            Ok(locked)
        })
        .await
    }
}

const KEY_COLUMNS: &str = "kid, alg, sealed, created_at, active_from, retired_at";

struct KeyRow {
    kid: String,
    alg: String,
    sealed: Vec<u8>,
    created_at: i64,
    active_from: i64,
    retired_at: Option<i64>,
}

impl KeyRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            kid: row.get(0)?,
            alg: row.get(1)?,
            sealed: row.get(2)?,
            created_at: row.get(3)?,
            active_from: row.get(4)?,
            retired_at: row.get(5)?,
        })
    }

    fn into_key(self) -> Result<StoredKey, StoreError> {
        let alg = self.alg.parse().map_err(|_| {
            StoreError::Corrupt(format!(
                "signing key {}: algorithm {:?}",
                self.kid, self.alg
            ))
        })?;
        Ok(StoredKey {
            kid: self.kid,
            alg,
            sealed: self.sealed,
            created_at: self.created_at,
            active_from: self.active_from,
            retired_at: self.retired_at,
        })
    }
}

/// Stores `key` inside a transaction; `DuplicateKey` when its kid is taken.
fn insert_key(conn: &Connection, key: &StoredKey) -> Result<(), StoreError> {
    let inserted = conn.execute(
        &format!("INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            key.kid,
            key.alg.name(),
            key.sealed,
            key.created_at,
            key.active_from,
            key.retired_at
        ],
    );
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
            Err(StoreError::DuplicateKey(key.kid.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl SigningKeys for SqliteStore {
    async fn signing_keys(&self, retired_after: i64) -> Result<Vec<StoredKey>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM signing_keys \
                 WHERE retired_at IS NULL OR retired_at > ?1 ORDER BY active_from, kid"
            ))?;
            let rows = stmt.query_map([retired_after], KeyRow::read)?;
            rows.map(|row| row?.into_key()).collect()
        })
        .await
    }

    async fn insert_first_if_empty(&self, key: StoredKey) -> Result<bool, StoreError> {
        self.call(move |conn| {
            // IMMEDIATE: the count and the insert under one write lock, across processes.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let any: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM signing_keys)", [], |r| {
                    r.get(0)
                })?;
            if any {
                return Ok(false);
            }
            insert_key(&tx, &key)?;
            record_change(&tx, "keys", &key.kid, key.active_from)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn add_and_retire(&self, key: StoredKey, forget_before: i64) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM signing_keys WHERE retired_at <= ?1",
                [forget_before],
            )?;
            tx.execute(
                "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
                [key.active_from],
            )?;
            insert_key(&tx, &key)?;
            record_change(&tx, "keys", &key.kid, key.active_from)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

fn read_client(row: &Row<'_>) -> rusqlite::Result<Result<Client, StoreError>> {
    let name: String = row.get(0)?;
    let digest: Vec<u8> = row.get(1)?;
    let scopes: String = row.get(2)?;
    let audiences: String = row.get(3)?;
    let grants: String = row.get(4)?;
    let jwks_url: Option<String> = row.get(5)?;
    let disabled: bool = row.get(6)?;
    let epoch: String = row.get(7)?;
    let created_at: i64 = row.get(8)?;
    let rotated_at: i64 = row.get(9)?;
    let auth_method: String = row.get(10)?;
    let jwks: Option<String> = row.get(11)?;
    Ok((|| {
        Ok(Client {
            name: stored_username(&name)?,
            secret_digest: <[u8; 32]>::try_from(digest.as_slice())
                .map_err(|_| StoreError::Corrupt("client secret digest is not 32 bytes".into()))?,
            scopes: from_json(&scopes, "client scopes")?,
            audiences: from_json(&audiences, "client audiences")?,
            grants: from_json(&grants, "client grants")?,
            auth_method: ClientAuthMethod::parse(&auth_method)?,
            jwks,
            jwks_url,
            disabled,
            epoch,
            created_at,
            rotated_at,
        })
    })())
}

/// Denylists a client's epoch inside `tx`, as [`Revocations::revoke_id`] does.
fn revoke_epoch_in(tx: &Transaction<'_>, epoch: &str, until: i64) -> Result<(), StoreError> {
    let until: i64 = tx.query_row(
        "INSERT INTO revoked_jtis (jti, expires_at) VALUES (?1, ?2) \
         ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at) \
         RETURNING expires_at",
        params![epoch, until],
        |r| r.get(0),
    )?;
    record_change(tx, "revoked", epoch, until)
}

fn client_epoch(tx: &Transaction<'_>, name: &Username) -> Result<String, StoreError> {
    tx.query_row(
        "SELECT epoch FROM clients WHERE name = ?1",
        [name.as_str()],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| StoreError::ClientNotFound(name.as_str().to_owned()))
}

#[async_trait]
impl Clients for SqliteStore {
    async fn create_client(&self, client: NewClient, now: i64) -> Result<Client, StoreError> {
        self.call(move |conn| {
            let inserted = conn.execute(
                &format!(
                    "INSERT INTO clients ({CLIENT_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?8, ?9, ?10)"
                ),
                params![
                    client.name.as_str(),
                    &client.secret_digest[..],
                    to_json(&client.scopes)?,
                    to_json(&client.audiences)?,
                    to_json(&client.grants)?,
                    client.jwks_url,
                    client.epoch,
                    now,
                    client.auth_method.as_str(),
                    client.jwks,
                ],
            );
            match inserted {
                Ok(_) => Ok(Client {
                    name: client.name,
                    secret_digest: client.secret_digest,
                    scopes: client.scopes,
                    audiences: client.audiences,
                    grants: client.grants,
                    auth_method: client.auth_method,
                    jwks: client.jwks,
                    jwks_url: client.jwks_url,
                    disabled: false,
                    epoch: client.epoch,
                    created_at: now,
                    rotated_at: now,
                }),
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                    Err(StoreError::ClientConflict(client.name.as_str().to_owned()))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn client(&self, name: &Username) -> Result<Option<Client>, StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            conn.query_row(
                &format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE name = ?1"),
                [name.as_str()],
                read_client,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_clients(&self) -> Result<Vec<Client>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {CLIENT_COLUMNS} FROM clients ORDER BY name"
            ))?;
            let rows = stmt.query_map([], read_client)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
        .await
    }

    async fn rotate_client_secret(
        &self,
        name: &Username,
        secret_digest: [u8; 32],
        now: i64,
    ) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            let changed = conn.execute(
                "UPDATE clients SET secret_digest = ?1, rotated_at = ?2 WHERE name = ?3",
                params![&secret_digest[..], now, name.as_str()],
            )?;
            match changed {
                0 => Err(StoreError::ClientNotFound(name.as_str().to_owned())),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn set_client_disabled(
        &self,
        name: &Username,
        disabled: bool,
        epoch: &str,
        revoke_until: i64,
    ) -> Result<(), StoreError> {
        let (name, epoch) = (name.clone(), epoch.to_owned());
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = client_epoch(&tx, &name)?;
            if disabled {
                tx.execute(
                    "UPDATE clients SET disabled = 1 WHERE name = ?1",
                    [name.as_str()],
                )?;
                revoke_epoch_in(&tx, &current, revoke_until)?;
            } else {
                tx.execute(
                    "UPDATE clients SET disabled = 0, epoch = ?1 WHERE name = ?2 AND disabled = 1",
                    params![epoch, name.as_str()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_client(&self, name: &Username, revoke_until: i64) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = client_epoch(&tx, &name)?;
            tx.execute("DELETE FROM clients WHERE name = ?1", [name.as_str()])?;
            revoke_epoch_in(&tx, &current, revoke_until)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn spend_assertion(
        &self,
        client: &Username,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (client, jti) = (client.clone(), jti.to_owned());
        self.call(move |conn| {
            let spent = conn.execute(
                "INSERT INTO client_assertions (client, jti, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (client, jti) DO UPDATE SET expires_at = excluded.expires_at \
                 WHERE client_assertions.expires_at <= ?4",
                params![client.as_str(), jti, expires_at, now],
            )?;
            Ok(spent == 1)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let tokens = tx.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?1", [now])?;
            let jtis = tx.execute("DELETE FROM revoked_jtis WHERE expires_at <= ?1", [now])?;
            let assertions = tx.execute(
                "DELETE FROM client_assertions WHERE expires_at <= ?1",
                [now],
            )?;
            let failures = tx.execute(
                "DELETE FROM login_failures WHERE coalesce(locked_until, 0) <= ?1 \
                 AND first_failure_at <= ?1 - ?2",
                params![now, FAILURE_ROW_TTL],
            )?;
            let attempts =
                tx.execute("DELETE FROM login_attempts WHERE expires_at <= ?1", [now])?;
            let sessions = tx.execute(
                "DELETE FROM sessions WHERE NOT EXISTS \
                 (SELECT 1 FROM refresh_tokens t WHERE t.family = sessions.family)",
                [],
            )?;
            // By sequence, oldest first, so what is kept is always a suffix of the feed.
            let changes = tx.execute(
                "DELETE FROM changes WHERE seq <= \
                 (SELECT max(seq) FROM changes WHERE created_at <= ?1)",
                [now.saturating_sub(CHANGE_RETENTION)],
            )?;
            tx.commit()?;
            let deleted = tokens + jtis + assertions + failures + attempts + sessions + changes;
            Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The open connection keeps working on an unlinked file; everything written from then on
        // would be lost at the next restart.
        if !self.path.exists() {
            return Err(StoreError::Unavailable(format!(
                "database file {} is gone",
                self.path.display()
            )));
        }
        self.call(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{Fixture, NOW, contract_tests, digest, name, new_user, token};

    fn open_in(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("state.db")).unwrap()
    }

    /// A fresh database file in a temporary directory, removed with it.
    struct TempSqlite(tempfile::TempDir);

    impl Fixture for TempSqlite {
        async fn open(&self) -> Arc<dyn Store> {
            Arc::new(open_in(&self.0))
        }
    }

    contract_tests!(async { Some(TempSqlite(tempfile::tempdir().unwrap())) });

    fn raw(store: &SqliteStore) -> Connection {
        Connection::open(store.path()).unwrap()
    }

    #[test]
    fn open_applies_durability_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir);
        let conn = store.conn.lock().unwrap();
        let get = |p: &str| -> String {
            conn.pragma_query_value(None, p, |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(get("journal_mode"), r#"Text("wal")"#);
        assert_eq!(get("synchronous"), "Integer(2)", "FULL");
        assert_eq!(get("foreign_keys"), "Integer(1)");
        assert_eq!(get("secure_delete"), "Integer(1)");
        assert_eq!(get("busy_timeout"), "Integer(5000)");
        assert_eq!(
            get("user_version"),
            format!("Integer({})", MIGRATIONS.len())
        );
    }

    #[cfg(unix)]
    #[test]
    fn open_creates_private_dirs_and_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.db");
        SqliteStore::open(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_store_file_is_restricted_on_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        SqliteStore::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn migrations_are_idempotent_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir);
        store.create_user(new_user("alice")).await.unwrap();
        drop(store);
        for _ in 0..2 {
            let store = open_in(&dir);
            let version: i64 = raw(&store)
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, i64::from(SCHEMA_VERSION));
            assert_eq!(store.list_users().await.unwrap().len(), 1);
        }
    }

    /// A name locked before failures were counted per network stays locked, everywhere, and
    /// its failures still count towards the ceiling.
    #[tokio::test]
    async fn a_lockout_from_schema_v3_carries_over_as_a_lockout_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..3] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 3).unwrap();
            tx.execute(
                "INSERT INTO login_failures VALUES ('alice', 0, ?1, ?2), ('bob', 4, ?1, NULL)",
                params![NOW, NOW + 900],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO login_attempts (username, expires_at) VALUES ('bob', ?1)",
                [NOW + 60],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let alice = store.lockouts(&name("alice"), NOW).await.unwrap();
        assert_eq!(alice.everywhere, Some(NOW + 900));
        assert!(alice.networks.is_empty());
        let policy = LockoutPolicy {
            max_failures: 5,
            max_failures_per_user: 6,
            find_time: 600,
            ban_time: 900,
        };
        let network = ClientNetwork::of(std::net::IpAddr::from([192, 0, 2, 1]));
        // Bob's four old failures and his old reservation count towards the ceiling of six.
        let LoginAdmission::Admitted(_) = store
            .admit_login(&name("bob"), network, NOW, policy)
            .await
            .unwrap()
        else {
            panic!("bob refused");
        };
        assert_eq!(
            store
                .admit_login(&name("bob"), network, NOW, policy)
                .await
                .unwrap(),
            LoginAdmission::Exhausted
        );
    }

    /// Version 6 rebuilds the feed table: a follower that had seen change 3 of a feed since
    /// purged empty must find the next change numbered 4, not 1 (it would never read 1 to 3).
    #[tokio::test]
    async fn the_feed_rebuilt_by_schema_v6_keeps_its_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..5] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 5).unwrap();
            for id in ["a", "b", "c"] {
                record_change(&tx, "revoked", id, NOW).unwrap();
            }
            tx.execute("DELETE FROM changes", []).unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.change_seq().await.unwrap(), 3);
        store.revoke_id("d", NOW + 10).await.unwrap();
        assert_eq!(store.change_seq().await.unwrap(), 4);
        let batch = store.changes_since(3, 10).await.unwrap();
        assert!(batch.complete);
        assert_eq!(batch.last, 4);
    }

    /// Version 8: clients registered before it keep authenticating by their secret.
    #[tokio::test]
    async fn clients_from_before_schema_v8_keep_their_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..7] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 7).unwrap();
            tx.execute(
                "INSERT INTO clients (name, secret_digest, scopes, audiences, grants, jwks_url, \
                 disabled, epoch, created_at, rotated_at) \
                 VALUES ('ci', ?1, '[]', '[]', '[\"client_credentials\"]', NULL, 0, 'c.e', 1, 1)",
                [&[7u8; 32][..]],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let ci = store.client(&name("ci")).await.unwrap().unwrap();
        assert_eq!(ci.auth_method, ClientAuthMethod::Secret);
        assert_eq!(ci.jwks, None);
        assert_eq!(ci.secret_digest, [7u8; 32]);
    }

    #[test]
    fn database_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir);
        raw(&store).pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        let err = SqliteStore::open(&dir.path().join("state.db")).unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("99")),
            "{err}"
        );
    }

    #[test]
    fn file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(SqliteStore::open(&path).is_err());
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir);
        store.create_user(new_user("alice")).await.unwrap();
        store
            .insert_refresh(token(1, "f1", "alice"), SessionOrigin::default())
            .await
            .unwrap();
        store.revoke_id("jti-1", NOW + 60).await.unwrap();
        drop(store);

        let store = open_in(&dir);
        let alice = store.user(&name("alice")).await.unwrap().unwrap();
        assert_eq!(alice.roles, ["admin", "ops"]);
        let (record, state) = store.refresh(&digest(1)).await.unwrap().unwrap();
        assert_eq!(record, token(1, "f1", "alice"));
        assert!(state.is_live(&record, NOW));
        assert_eq!(
            store.revoked_ids(NOW).await.unwrap(),
            [("jti-1".to_owned(), NOW + 60)]
        );
    }

    #[tokio::test]
    async fn tampered_rows_are_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir);
        let conn = raw(&store);
        conn.execute(
            "INSERT INTO users VALUES ('bob', 'h', 'not json', '[]', 0, 1, 1)",
            [],
        )
        .unwrap();
        // A non-canonical name written behind the store's back must not be served as "Eve".
        conn.execute(
            "INSERT INTO users VALUES ('Eve', 'h', '[]', '[]', 0, 1, 1)",
            [],
        )
        .unwrap();
        assert!(matches!(
            store.user(&name("bob")).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.list_users().await,
            Err(StoreError::Corrupt(_))
        ));
    }
}
