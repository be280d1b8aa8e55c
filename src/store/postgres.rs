//! The shared [`Store`] backend: PostgreSQL, for several gateways on one state.
//!
//! Connections: a bounded pool (deadpool over tokio-postgres) and one dedicated connection that
//! `LISTEN`s for the change feed's notifications. Every wait is bounded: the TCP connect, the
//! whole connection set-up (TLS and authentication), a wait for a free pooled connection, each
//! statement on the server (`statement_timeout`, and `idle_in_transaction_session_timeout` so a
//! stalled client cannot hold locks), and each operation on the client (a connection that stops
//! answering is dropped from the pool, not reused). A server that cannot be reached is
//! [`StoreError::Unavailable`], never a panic.
//!
//! TLS: with [`PgTls`] the connection must use TLS (rustls, aws-lc-rs), the server's certificate
//! must chain to the configured CA and name the configured host (libpq's `verify-full`).
//!
//! Schema: versioned migrations ([`MIGRATIONS`]) applied at open inside one transaction that
//! first takes a transaction-scoped advisory lock, so gateways starting at once migrate one
//! after the other and the later ones find the work done. A database whose schema is newer than
//! this build is refused. Refresh tokens are stored only as 32-byte digests; revoked ids and the
//! feed's subjects as bytes, so any id a token can carry can be revoked.
//!
//! Concurrency: PostgreSQL runs writers in parallel (READ COMMITTED), so what SQLite gets from
//! its single writer is taken here with locks, each held until commit:
//! - every write to a user's refresh tokens or sessions first locks the user's row
//!   (`FOR NO KEY UPDATE`): a login, a rotation, a logout and a cut of one user run one after
//!   the other, and a cut sees every token committed before it (a row lock wait ends after the
//!   holder's commit is visible, and each later statement reads a fresh snapshot);
//! - login admissions and verdicts of one name take a transaction-scoped advisory lock on the
//!   name (hashed by the server), so no two of them read a budget at once;
//! - the change feed's sequence numbers come from a one-row counter; see [`record_change`] for
//!   why that gives commit order.
//!
//! Locks are taken in one order (user row, then token rows, then the feed counter, which is
//! always the last statement before commit); a deadlock or serialization failure that happens
//! anyway (the purge deletes tokens without a user lock) is retried a few times.
//!
//! Change notifications: every feed write also `NOTIFY`s in its transaction, so the server
//! announces it on commit. The listening connection turns each announcement into a wake-up for
//! followers ([`Revocations::change_signal`]); it reconnects with a bounded backoff and wakes
//! followers after each reconnection, since changes made meanwhile were announced to nobody.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures_util::StreamExt;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{AsyncMessage, NoTls, Row, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

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

pub mod settings;
#[cfg(test)]
pub(crate) mod testing;

/// PostgreSQL's port unless configured otherwise.
pub const DEFAULT_PORT: u16 = 5432;
/// Pooled connections per gateway: rotations and logins hold one for a few milliseconds.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Connecting (TCP, TLS, authentication) gives up after this.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server cancels a statement running (or waiting for a lock) longer than this.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// An operation waits this long for a free pooled connection, then fails.
pub const DEFAULT_POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most pooled connections a configuration may ask for (a server allows ~100 by default).
pub const MAX_POOL_SIZE: usize = 256;
/// The longest statement timeout accepted: a store call is on a request's path.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// Feed writes notify one channel (per database) and the listener listens on it.
const NOTIFY: &str = "NOTIFY gatehouse_changes";
const LISTEN: &str = "LISTEN gatehouse_changes";

/// Advisory lock key held while migrating (the bigint key space; "gatehous" in ASCII).
const MIGRATION_LOCK: i64 = 0x6761_7465_686f_7573;
/// First key of the two-key advisory locks on login names (a key space apart from the
/// migration lock's); the second key is the server's `hashtext` of the name. Two names that
/// share a hash only wait for each other.
const LOGIN_LOCK_CLASS: i32 = 0x6768_6c6f;
/// Advisory lock key held by every write to the signing keys ("gh keys!"), so "is the table
/// empty?" and the insert that follows are one step for concurrent first starts.
const KEYS_LOCK: i64 = 0x6768_206b_6579_7321;

/// Deadlocks and serialization failures are retried this many times after the first attempt.
const RETRIES: u32 = 4;
/// The listener's reconnection backoff: from the first pause, doubling, up to the last.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How often the listening connection is checked with an empty query: a connection that died
/// silently must not leave followers on polling alone for long.
const LISTEN_CHECK_EVERY: Duration = Duration::from_secs(30);
/// TCP keepalive on every connection: probes after this idle time, then every interval.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(30), Duration::from_secs(5), 3);

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgHost {
    /// A host name or IP address, over TCP (the name TLS verifies).
    Tcp(String),
    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    Socket(PathBuf),
}

/// TLS to the server, with `verify-full` semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// PEM file of the CA certificates the server's certificate must chain to.
    pub ca_file: PathBuf,
}

/// How to reach the database, and the bounds on every wait.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    pub host: PgHost,
    pub port: u16,
    pub user: String,
    /// `None`: the server decides (peer or trust authentication, a client certificate).
    pub password: Option<String>,
    pub dbname: String,
    /// `None`: no TLS (a unix socket, or a network the operator trusts).
    pub tls: Option<PgTls>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub pool_wait_timeout: Duration,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .finish()
    }
}

impl PgConfig {
    /// A configuration with the default port, pool size and timeouts, no password, no TLS.
    pub fn new(host: PgHost, user: impl Into<String>, dbname: impl Into<String>) -> Self {
        Self {
            host,
            port: DEFAULT_PORT,
            user: user.into(),
            password: None,
            dbname: dbname.into(),
            tls: None,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            pool_wait_timeout: DEFAULT_POOL_WAIT_TIMEOUT,
        }
    }

    /// Where, for messages (never the password).
    pub(crate) fn target(&self) -> String {
        match &self.host {
            PgHost::Tcp(host) => format!("{host}:{}/{}", self.port, self.dbname),
            PgHost::Socket(dir) => format!("{}:{}/{}", dir.display(), self.port, self.dbname),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        let bad = |why: String| Err(StoreError::Unavailable(format!("PostgreSQL store: {why}")));
        if self.user.is_empty() || self.dbname.is_empty() {
            return bad("user and database name must not be empty".into());
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return bad(format!("pool size must be 1 to {MAX_POOL_SIZE}"));
        }
        for (what, wait) in [
            ("connect timeout", self.connect_timeout),
            ("statement timeout", self.statement_timeout),
            ("pool wait timeout", self.pool_wait_timeout),
        ] {
            if wait < Duration::from_millis(1) || wait > MAX_STATEMENT_TIMEOUT {
                return bad(format!(
                    "{what} must be 1 ms to {} s",
                    MAX_STATEMENT_TIMEOUT.as_secs()
                ));
            }
        }
        if self.tls.is_some() && matches!(self.host, PgHost::Socket(_)) {
            return bad("TLS does not apply to a unix socket".into());
        }
        Ok(())
    }

    /// The client's connection settings, the server-side timeouts sent at start-up.
    fn client_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        match &self.host {
            PgHost::Tcp(host) => config.host(host),
            PgHost::Socket(dir) => config.host_path(dir),
        };
        let statement_ms = self.statement_timeout.as_millis();
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("gatehouse")
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE.0)
            .keepalives_interval(KEEPALIVE.1)
            .keepalives_retries(KEEPALIVE.2)
            .options(format!(
                "-c statement_timeout={statement_ms} \
                 -c idle_in_transaction_session_timeout={}",
                statement_ms.saturating_mul(4)
            ));
        if let Some(password) = &self.password {
            config.password(password.as_bytes());
        }
        config.ssl_mode(match self.tls {
            Some(_) => tokio_postgres::config::SslMode::Require,
            None => tokio_postgres::config::SslMode::Disable,
        });
        config
    }

    /// The longest one operation may take once it has a connection: its statements each run
    /// within the statement timeout; a deadlock retry adds one more.
    fn operation_timeout(&self) -> Duration {
        self.statement_timeout.saturating_mul(3)
    }
}

/// The TLS connector a configuration asks for.
#[derive(Clone)]
enum Tls {
    Off,
    Rustls(MakeRustlsConnect),
}

impl Tls {
    fn of(config: &PgConfig) -> Result<Self, StoreError> {
        let Some(tls) = &config.tls else {
            return Ok(Self::Off);
        };
        let path = tls.ca_file.display();
        let bad =
            |why: String| StoreError::Unavailable(format!("PostgreSQL CA file {path}: {why}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&tls.ca_file).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        // The provider named here, not the process default: this is the only one compiled in.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::Rustls(MakeRustlsConnect::new(client)))
    }

    fn manager(&self, config: tokio_postgres::Config) -> Manager {
        let manager = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        match self {
            Self::Off => Manager::from_config(config, NoTls, manager),
            Self::Rustls(tls) => Manager::from_config(config, tls.clone(), manager),
        }
    }
}

/// Schema migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4];

/// The version this build writes (a handful of migrations always fits in `i32`).
const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Version 1: the state SQLite's version 5 holds. Times are unix seconds; roles and scopes are
/// text arrays; a user's tokens and sessions go with the user.
const SCHEMA_V1: &str = "
CREATE TABLE users (
    username      text PRIMARY KEY,
    password_hash text NOT NULL,
    roles         text[] NOT NULL,
    scopes        text[] NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL
);

CREATE TABLE refresh_tokens (
    digest     bytea PRIMARY KEY CHECK (octet_length(digest) = 32),
    family     text NOT NULL,
    username   text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    scopes     text[] NOT NULL,
    issued_at  bigint NOT NULL,
    expires_at bigint NOT NULL,
    used_at    bigint,
    revoked_at bigint
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_username ON refresh_tokens (username);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

CREATE TABLE sessions (
    family       text PRIMARY KEY,
    username     text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    created_at   bigint NOT NULL,
    last_used_at bigint NOT NULL,
    client_addr  text,
    user_agent   text
);
CREATE INDEX sessions_username ON sessions (username);

CREATE TABLE revoked_ids (
    id         bytea PRIMARY KEY,
    expires_at bigint NOT NULL
);
CREATE INDEX revoked_ids_expires_at ON revoked_ids (expires_at);

CREATE TABLE session_cuts (
    username   text PRIMARY KEY,
    not_before bigint NOT NULL
);

CREATE TABLE change_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint NOT NULL CHECK (seq >= 0)
);
INSERT INTO change_counter (seq) VALUES (0);

CREATE TABLE changes (
    seq        bigint PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('revoked', 'cut')),
    subject    bytea NOT NULL,
    value      bigint NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE login_failures (
    username         text NOT NULL,
    scope            text NOT NULL,
    failures         bigint NOT NULL,
    first_failure_at bigint NOT NULL,
    locked_until     bigint,
    PRIMARY KEY (username, scope)
);

CREATE TABLE login_attempts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username   text NOT NULL,
    network    text NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX login_attempts_username_network ON login_attempts (username, network);
CREATE INDEX login_attempts_expires_at ON login_attempts (expires_at);
";

/// Version 2: the signing keys gateways share (SQLite's version 6); the feed announces key
/// changes too.
const SCHEMA_V2: &str = "
CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    alg         text NOT NULL,
    sealed      bytea NOT NULL,
    created_at  bigint NOT NULL,
    active_from bigint NOT NULL,
    retired_at  bigint
);

ALTER TABLE changes DROP CONSTRAINT changes_kind_check,
    ADD CONSTRAINT changes_kind_check CHECK (kind IN ('revoked', 'cut', 'keys'));
";

/// Version 3: the client registry (SQLite's version 7).
const SCHEMA_V3: &str = "
CREATE TABLE clients (
    name          text PRIMARY KEY,
    secret_digest bytea NOT NULL CHECK (octet_length(secret_digest) = 32),
    scopes        text[] NOT NULL,
    audiences     text[] NOT NULL,
    grants        text[] NOT NULL,
    jwks_url      text,
    disabled      boolean NOT NULL DEFAULT false,
    epoch         text NOT NULL,
    created_at    bigint NOT NULL,
    rotated_at    bigint NOT NULL
);
";

/// Version 4: `private_key_jwt` clients (SQLite's version 8): one authentication method per
/// client, public keys inline, and the ids of assertions already used until they expire.
const SCHEMA_V4: &str = "
ALTER TABLE clients
    ADD COLUMN auth_method text NOT NULL DEFAULT 'client_secret'
        CHECK (auth_method IN ('client_secret', 'private_key_jwt')),
    ADD COLUMN jwks text;

CREATE TABLE client_assertions (
    client     text NOT NULL,
    jti        text NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (client, jti)
);
CREATE INDEX client_assertions_expiry ON client_assertions (expires_at);
";

/// Where the schema version lives (created by the first migration run, outside the versions).
const SCHEMA_TABLE: &str = "
CREATE TABLE gatehouse_schema (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  integer NOT NULL
)";

/// The scope of a name's failures and lockout across every network (never a network's text).
const EVERYWHERE: &str = "*";

/// Failure rows untouched for this long are purged (longer than any sensible find_time).
const FAILURE_ROW_TTL: i64 = 86_400;

const USER_COLUMNS: &str =
    "username, password_hash, roles, scopes, disabled, created_at, updated_at";
const CLIENT_COLUMNS: &str = "name, secret_digest, scopes, audiences, grants, jwks_url, disabled, \
     epoch, created_at, rotated_at, auth_method, jwks";

/// The PostgreSQL store; share it behind an `Arc`. Dropping it stops its listener.
pub struct PgStore {
    pool: Pool,
    target: String,
    operation_timeout: Duration,
    wake: Arc<watch::Sender<()>>,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Why a body failed: the database (maybe worth a retry), or an answer to pass on.
#[derive(Debug)]
enum Fail {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Db(err)
    }
}

impl From<StoreError> for Fail {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl From<Fail> for StoreError {
    fn from(fail: Fail) -> Self {
        match fail {
            Fail::Db(e) => Self::Unavailable(describe(&e)),
            Fail::Store(e) => e,
        }
    }
}

/// An error for a message: the server's message and code, never its DETAIL (which quotes the
/// values of a violated key, e.g. a refresh digest).
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => format!("PostgreSQL: {err}"),
    }
}

fn has_code(err: &Fail, code: &SqlState) -> bool {
    matches!(err, Fail::Db(e) if e.code() == Some(code))
}

/// Whether a transaction that failed with `err` was rolled back by the server for a reason that
/// another attempt may not meet.
fn retryable(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

/// The pause before retry `attempt` (1-based): short, growing, a little spread so two
/// transactions that deadlocked do not meet again at once.
fn retry_pause(attempt: u32) -> Duration {
    let spread = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros() % 5000);
    Duration::from_millis(5 * u64::from(attempt)) + Duration::from_micros(u64::from(spread))
}

/// Evaluates `$body`, an async block yielding `Result<_, Fail>`, again while it fails with a
/// deadlock or a serialization failure (its transaction was rolled back), at most [`RETRIES`]
/// more times.
macro_rules! retrying {
    ($body:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $body.await {
                Err(Fail::Db(e)) if attempt < RETRIES && retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(retry_pause(attempt)).await;
                }
                outcome => break outcome,
            }
        }
    }};
}

/// Runs `$body` (an expression using `$c: &mut Object`, yielding `Result<_, Fail>`) on a
/// pooled connection within the operation timeout, as `Result<_, StoreError>`; a connection
/// whose operation timed out is taken out of the pool and closed.
macro_rules! on_connection {
    ($store:expr, |$c:ident| $body:expr) => {{
        let store: &PgStore = $store;
        match store.connection().await {
            Ok(mut client) => {
                let outcome = tokio::time::timeout(store.operation_timeout, async {
                    let $c = &mut client;
                    let outcome: Result<_, Fail> = $body;
                    outcome
                })
                .await;
                store.settle(client, outcome)
            }
            Err(e) => Err(e),
        }
    }};
}

/// Statements through the connection's statement cache (one round trip each once prepared).
trait Sql {
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>;

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error>;

    async fn opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        Ok(self.rows(sql, params).await?.into_iter().next())
    }
}

impl Sql for deadpool_postgres::Transaction<'_> {
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl Sql for Object {
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Column `i` of `row`; a value of another type or shape was written behind our back.
fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
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

fn stored_text(bytes: Vec<u8>, what: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Corrupt(format!("{what} is not UTF-8")))
}

fn seq_of(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative sequence number {n}")))
}

fn read_user(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        username: stored_username(col(row, 0)?)?,
        password_hash: col(row, 1)?,
        roles: col(row, 2)?,
        scopes: col(row, 3)?,
        disabled: col(row, 4)?,
        created_at: col(row, 5)?,
        updated_at: col(row, 6)?,
    })
}

fn read_refresh(row: &Row) -> Result<(RefreshRecord, RefreshState), StoreError> {
    let digest: &[u8] = col(row, 0)?;
    let digest = <[u8; 32]>::try_from(digest)
        .map_err(|_| StoreError::Corrupt("refresh digest is not 32 bytes".into()))?;
    let record = RefreshRecord {
        digest,
        family: col(row, 1)?,
        username: stored_username(col(row, 2)?)?,
        scopes: col(row, 3)?,
        issued_at: col(row, 4)?,
        expires_at: col(row, 5)?,
    };
    let state = RefreshState {
        used_at: col(row, 6)?,
        revoked_at: col(row, 7)?,
    };
    Ok((record, state))
}

fn read_client(row: &Row) -> Result<Client, StoreError> {
    let digest: &[u8] = col(row, 1)?;
    Ok(Client {
        name: stored_username(col(row, 0)?)?,
        secret_digest: <[u8; 32]>::try_from(digest)
            .map_err(|_| StoreError::Corrupt("client secret digest is not 32 bytes".into()))?,
        scopes: col(row, 2)?,
        audiences: col(row, 3)?,
        grants: col(row, 4)?,
        auth_method: ClientAuthMethod::parse(col(row, 10)?)?,
        jwks: col(row, 11)?,
        jwks_url: col(row, 5)?,
        disabled: col(row, 6)?,
        epoch: col(row, 7)?,
        created_at: col(row, 8)?,
        rotated_at: col(row, 9)?,
    })
}

/// Denylists a client's epoch inside `tx`, as [`Revocations::revoke_id`] does.
async fn revoke_epoch_in(tx: &Tx<'_>, epoch: &str, until: i64) -> Result<(), Fail> {
    let kept = tx
        .opt(
            "INSERT INTO revoked_ids (id, expires_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE \
             SET expires_at = GREATEST(revoked_ids.expires_at, excluded.expires_at) \
             RETURNING expires_at",
            &[&epoch.as_bytes(), &until],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("revocation not returned".into()))?;
    let kept: i64 = col(&kept, 0)?;
    record_change(tx, "revoked", epoch.as_bytes(), kept).await
}

/// Locks client `name`'s row; its current epoch.
async fn lock_client(tx: &Tx<'_>, name: &Username) -> Result<String, Fail> {
    let row = tx
        .opt(
            "SELECT epoch FROM clients WHERE name = $1 FOR UPDATE",
            &[&name.as_str()],
        )
        .await?
        .ok_or_else(|| StoreError::ClientNotFound(name.as_str().to_owned()))?;
    Ok(col(&row, 0)?)
}

#[async_trait]
impl Clients for PgStore {
    async fn create_client(&self, client: NewClient, now: i64) -> Result<Client, StoreError> {
        let inserted = on_connection!(self, |c| {
            let sql = format!(
                "INSERT INTO clients ({CLIENT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, false, $7, $8, $8, $9, $10)"
            );
            match c
                .exec(
                    &sql,
                    &[
                        &client.name.as_str(),
                        &&client.secret_digest[..],
                        &client.scopes,
                        &client.audiences,
                        &client.grants,
                        &client.jwks_url,
                        &client.epoch,
                        &now,
                        &client.auth_method.as_str(),
                        &client.jwks,
                    ],
                )
                .await
                .map_err(Fail::from)
            {
                Err(e) if has_code(&e, &SqlState::UNIQUE_VIOLATION) => {
                    Err(StoreError::ClientConflict(client.name.as_str().to_owned()).into())
                }
                other => other.map(drop),
            }
        });
        inserted?;
        Ok(Client {
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
        })
    }

    async fn client(&self, name: &Username) -> Result<Option<Client>, StoreError> {
        on_connection!(self, |c| {
            let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE name = $1");
            match c.opt(&sql, &[&name.as_str()]).await? {
                Some(row) => Ok(Some(read_client(&row)?)),
                None => Ok(None),
            }
        })
    }

    async fn list_clients(&self) -> Result<Vec<Client>, StoreError> {
        on_connection!(self, |c| {
            let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY name COLLATE \"C\"");
            let rows = c.rows(&sql, &[]).await?;
            rows.iter()
                .map(|row| read_client(row).map_err(Fail::from))
                .collect()
        })
    }

    async fn rotate_client_secret(
        &self,
        name: &Username,
        secret_digest: [u8; 32],
        now: i64,
    ) -> Result<(), StoreError> {
        on_connection!(self, |c| {
            let changed = c
                .exec(
                    "UPDATE clients SET secret_digest = $1, rotated_at = $2 WHERE name = $3",
                    &[&&secret_digest[..], &now, &name.as_str()],
                )
                .await?;
            match changed {
                0 => Err(StoreError::ClientNotFound(name.as_str().to_owned()).into()),
                _ => Ok(()),
            }
        })
    }

    async fn set_client_disabled(
        &self,
        name: &Username,
        disabled: bool,
        epoch: &str,
        revoke_until: i64,
    ) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            let current = lock_client(&tx, name).await?;
            if disabled {
                tx.exec(
                    "UPDATE clients SET disabled = true WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?;
                revoke_epoch_in(&tx, &current, revoke_until).await?;
            } else {
                tx.exec(
                    "UPDATE clients SET disabled = false, epoch = $1 \
                     WHERE name = $2 AND disabled",
                    &[&epoch, &name.as_str()],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }))
    }

    async fn remove_client(&self, name: &Username, revoke_until: i64) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            let current = lock_client(&tx, name).await?;
            tx.exec("DELETE FROM clients WHERE name = $1", &[&name.as_str()])
                .await?;
            revoke_epoch_in(&tx, &current, revoke_until).await?;
            tx.commit().await?;
            Ok(())
        }))
    }

    async fn spend_assertion(
        &self,
        client: &Username,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_connection!(self, |c| retrying!(async {
            let spent = c
                .exec(
                    "INSERT INTO client_assertions (client, jti, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (client, jti) DO UPDATE SET expires_at = excluded.expires_at \
                     WHERE client_assertions.expires_at <= $4",
                    &[&client.as_str(), &jti, &expires_at, &now],
                )
                .await?;
            Ok(spent == 1)
        }))
    }
}

impl PgStore {
    /// Connects, brings the schema up to date and starts the listener (waiting, within the
    /// connect timeout, for it to listen). Unreachable, refusing or newer databases are
    /// `Unavailable`. Call it inside a tokio runtime, which its connections then run on.
    pub async fn open(config: &PgConfig) -> Result<Self, StoreError> {
        config.check()?;
        let tls = Tls::of(config)?;
        let client_config = config.client_config();
        let pool = Pool::builder(tls.manager(client_config.clone()))
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.pool_wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.statement_timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let (wake, _) = watch::channel(());
        let wake = Arc::new(wake);
        let (listening, ready) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listen(
            client_config,
            tls,
            config.connect_timeout,
            config.target(),
            Arc::clone(&wake),
            listening,
        ));
        let store = Self {
            pool,
            target: config.target(),
            operation_timeout: config.operation_timeout(),
            wake,
            listener,
        };
        on_connection!(&store, |c| migrate(c).await)?;
        // The listener's first answer (listening, or why not) comes within its connect timeout
        // and one statement; without it followers only poll until it reconnects.
        let first = tokio::time::timeout(config.operation_timeout(), ready).await;
        if !matches!(first, Ok(Ok(()))) {
            tracing::warn!(
                target = %store.target,
                "not listening for PostgreSQL change notifications yet: following by polling"
            );
        }
        Ok(store)
    }

    /// A pooled connection, within the pool's wait and connect timeouts.
    async fn connection(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            StoreError::Unavailable(match e {
                PoolError::Timeout(what) => format!(
                    "PostgreSQL {}: no connection in time ({what:?})",
                    self.target
                ),
                PoolError::Backend(e) => format!("{} ({})", describe(&e), self.target),
                other => format!("PostgreSQL {}: {other}", self.target),
            })
        })
    }

    /// The result of an operation run under the operation timeout.
    fn settle<T>(
        &self,
        client: Object,
        outcome: Result<Result<T, Fail>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        match outcome {
            Ok(done) => done.map_err(StoreError::from),
            Err(_) => {
                // Mid-statement or mid-transaction: this connection is not reused.
                drop(Object::take(client));
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL {}: no answer within {} ms",
                    self.target,
                    self.operation_timeout.as_millis()
                )))
            }
        }
    }
}

/// Applies the migrations this database lacks, under the migration lock, in one transaction.
async fn migrate(c: &mut Object) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    tx.exec("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Only a first start creates anything: a database user without CREATE rights runs
    // migrated databases.
    let exists = tx
        .opt("SELECT to_regclass('gatehouse_schema') IS NOT NULL", &[])
        .await?;
    if !matches!(
        exists.as_ref().map(|row| col(row, 0)).transpose()?,
        Some(true)
    ) {
        tx.batch_execute(SCHEMA_TABLE).await?;
    }
    let current: i32 = match tx.opt("SELECT version FROM gatehouse_schema", &[]).await? {
        Some(row) => col(&row, 0)?,
        None => 0,
    };
    let applied = usize::try_from(current)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {current}")))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "database schema version {current} is newer than this build supports ({SCHEMA_VERSION})"
        ))
        .into());
    }
    if applied == MIGRATIONS.len() {
        return Ok(());
    }
    for sql in &MIGRATIONS[applied..] {
        tx.batch_execute(sql).await?;
    }
    tx.exec(
        "INSERT INTO gatehouse_schema (version) VALUES ($1) \
         ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
        &[&SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Keeps one connection listening for the feed's notifications and wakes followers on each
/// and after each (re)connection; reconnects with a bounded backoff. Runs until aborted.
async fn listen(
    config: tokio_postgres::Config,
    tls: Tls,
    connect_timeout: Duration,
    target: String,
    wake: Arc<watch::Sender<()>>,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut listener = Listener {
        wake,
        connect_timeout,
        target,
        listening: Some(listening),
        failing: false,
    };
    let mut pause = LISTEN_BACKOFF.0;
    loop {
        let listened = match &tls {
            Tls::Off => listener.once(&config, NoTls).await,
            Tls::Rustls(t) => listener.once(&config, t.clone()).await,
        };
        match listened {
            Ok(why) => {
                pause = LISTEN_BACKOFF.0;
                tracing::warn!(target = %listener.target, reason = %why,
                    "PostgreSQL listener disconnected; reconnecting");
            }
            Err(why) => {
                // Dropping the sender tells `open` not to wait longer.
                listener.listening = None;
                if !std::mem::replace(&mut listener.failing, true) {
                    tracing::warn!(target = %listener.target, reason = %why,
                        "cannot listen for PostgreSQL change notifications; retrying");
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LISTEN_BACKOFF.1);
    }
}

/// The listening connection's state across reconnections.
struct Listener {
    wake: Arc<watch::Sender<()>>,
    connect_timeout: Duration,
    target: String,
    /// Told once, when listening first starts.
    listening: Option<tokio::sync::oneshot::Sender<()>>,
    /// Whether the last attempt failed (logged once until one succeeds).
    failing: bool,
}

impl Listener {
    /// One listening connection: connects, `LISTEN`s, then wakes followers on every
    /// notification until the connection fails. Why it ended: `Ok` after listening, `Err`
    /// before.
    async fn once<T>(&mut self, config: &tokio_postgres::Config, tls: T) -> Result<String, String>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let wait = self.connect_timeout;
        let (client, mut connection) = match tokio::time::timeout(wait, config.connect(tls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(describe(&e)),
            Err(_) => return Err(format!("no connection within {} ms", wait.as_millis())),
        };
        let wake = Arc::clone(&self.wake);
        let mut driver = AbortOnDrop(tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        wake.send_replace(());
                    }
                    Ok(_) => {}
                    Err(e) => return describe(&e),
                }
            }
            "connection closed".to_owned()
        }));
        let simple = |sql: &'static str| {
            let client = &client;
            async move {
                match tokio::time::timeout(wait, client.batch_execute(sql)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err(format!("no answer within {} ms", wait.as_millis())),
                }
            }
        };
        simple(LISTEN).await?;
        if std::mem::take(&mut self.failing) {
            tracing::info!(target = %self.target, "listening for PostgreSQL change notifications again");
        }
        if let Some(ready) = self.listening.take() {
            let _ = ready.send(());
        }
        // Changes made while nobody listened were announced to nobody.
        self.wake.send_replace(());
        let mut check = tokio::time::interval_at(
            tokio::time::Instant::now() + LISTEN_CHECK_EVERY,
            LISTEN_CHECK_EVERY,
        );
        loop {
            tokio::select! {
                ended = &mut driver.0 => {
                    return Ok(ended.unwrap_or_else(|e| format!("listener task: {e}")));
                }
                _ = check.tick() => {
                    if let Err(why) = simple("").await {
                        return Ok(why);
                    }
                }
            }
        }
    }
}

/// A task that ends with its handle.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Appends one change to the feed, inside the transaction that made it, as its last statement
/// before commit.
///
/// Commit order: the number comes from a one-row counter, `UPDATE ... SET seq = seq + 1`, whose
/// row lock is held until this transaction ends. A second writer's `UPDATE` waits for that lock,
/// and a row lock wait ends only after the holder's commit is visible to every new snapshot; it
/// then reads the committed value and takes the next number. So numbers are handed out in the
/// order transactions commit, and a reader that has seen `n` committed can never later find a
/// smaller number committing. A sequence (`BIGSERIAL`) would not do: `nextval` is taken without
/// waiting, so number 11 can commit before 10, a reader sees 11, moves past 10 and never reads
/// it. An advisory lock taken before `nextval` would serialize writers too, but the counter also
/// keeps the last number across purges without a second source. The price is that feed writers
/// run one at a time across all gateways, for the few statements from the counter to commit:
/// revocations and cuts are rare, and the counter is taken last so the lock is held briefly.
///
/// The `NOTIFY` is delivered when (and only if) the transaction commits.
async fn record_change(tx: &Tx<'_>, kind: &str, subject: &[u8], value: i64) -> Result<(), Fail> {
    tx.exec(
        "WITH next AS (UPDATE change_counter SET seq = seq + 1 RETURNING seq) \
         INSERT INTO changes (seq, kind, subject, value, created_at) \
         SELECT seq, $1, $2, $3, $4 FROM next",
        &[&kind, &subject, &value, &unix_now()],
    )
    .await?;
    tx.batch_execute(NOTIFY).await?;
    Ok(())
}

/// Locks the row of user `name` for a write to its tokens or sessions (see the module doc);
/// whether the user exists and is disabled.
async fn lock_user(tx: &Tx<'_>, name: &Username) -> Result<Option<bool>, Fail> {
    let row = tx
        .opt(
            "SELECT disabled FROM users WHERE username = $1 FOR NO KEY UPDATE",
            &[&name.as_str()],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(col(&row, 0)?),
        None => None,
    })
}

/// Cuts every session of `name` at `now` (see [`RefreshFamilies::end_sessions`]); returns the
/// families that had a token not yet revoked. Call inside a transaction, then commit.
async fn cut_sessions_in(tx: &Tx<'_>, name: &Username, now: i64) -> Result<u64, Fail> {
    lock_user(tx, name).await?;
    let families = tx
        .opt(
            "WITH revoked AS (UPDATE refresh_tokens SET revoked_at = $1 \
             WHERE username = $2 AND revoked_at IS NULL RETURNING family) \
             SELECT count(DISTINCT family) FROM revoked",
            &[&now, &name.as_str()],
        )
        .await?;
    let families: i64 = match families {
        Some(row) => col(&row, 0)?,
        None => 0,
    };
    let mark = tx
        .opt(
            "INSERT INTO session_cuts (username, not_before) VALUES ($1, $2) \
             ON CONFLICT (username) DO UPDATE \
             SET not_before = GREATEST(session_cuts.not_before, excluded.not_before) \
             RETURNING not_before",
            &[&name.as_str(), &now.saturating_add(1)],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("session cut not returned".into()))?;
    let not_before: i64 = col(&mark, 0)?;
    record_change(tx, "cut", name.as_str().as_bytes(), not_before).await?;
    Ok(u64::try_from(families).unwrap_or(0))
}

/// Revokes every token of `family` not yet revoked; returns how many.
async fn revoke_family_in(tx: &Tx<'_>, family: &str, now: i64) -> Result<u64, Fail> {
    Ok(tx
        .exec(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
            &[&now, &family],
        )
        .await?)
}

async fn find_refresh(
    c: &impl Sql,
    digest: &[u8; 32],
    lock: bool,
) -> Result<Option<(RefreshRecord, RefreshState)>, Fail> {
    let sql = if lock {
        "SELECT digest, family, username, scopes, issued_at, expires_at, used_at, revoked_at \
         FROM refresh_tokens WHERE digest = $1 FOR UPDATE"
    } else {
        "SELECT digest, family, username, scopes, issued_at, expires_at, used_at, revoked_at \
         FROM refresh_tokens WHERE digest = $1"
    };
    match c.opt(sql, &[&digest.as_slice()]).await? {
        Some(row) => Ok(Some(read_refresh(&row)?)),
        None => Ok(None),
    }
}

/// The rotation transaction (see [`RefreshFamilies::rotate_refresh`]). The outer `Result` is
/// the database failing; the inner one is the answer about the token. Commits on success and
/// on reuse (the family's revocation must stick); otherwise the caller drops the transaction.
async fn rotate_in(
    tx: &Tx<'_>,
    old: &[u8; 32],
    next: &RefreshSuccessor,
    now: i64,
    grace: i64,
) -> Result<Result<RefreshRecord, RotateError>, Fail> {
    // The user's row first (the lock order), found through the token.
    let owner = tx
        .opt(
            "SELECT username FROM users WHERE username = \
             (SELECT username FROM refresh_tokens WHERE digest = $1) FOR NO KEY UPDATE",
            &[&old.as_slice()],
        )
        .await?;
    if owner.is_none() {
        return Ok(Err(RotateError::Unknown));
    }
    let Some((record, state)) = find_refresh(tx, old, true).await? else {
        return Ok(Err(RotateError::Unknown));
    };
    if let Some(used_at) = state.used_at {
        let retried = state.revoked_at.is_none()
            && now < record.expires_at
            && now < used_at.saturating_add(grace);
        if !retried {
            revoke_family_in(tx, &record.family, now).await?;
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
        tx.exec(
            "UPDATE refresh_tokens SET used_at = $1 WHERE digest = $2 AND used_at IS NULL",
            &[&now, &old.as_slice()],
        )
        .await?;
    }
    tx.exec(
        "UPDATE sessions SET last_used_at = GREATEST(last_used_at, $1) WHERE family = $2",
        &[&now, &record.family],
    )
    .await?;
    let inserted = tx
        .exec(
            "INSERT INTO refresh_tokens (digest, family, username, scopes, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &next.digest.as_slice(),
                &record.family,
                &record.username.as_str(),
                &record.scopes,
                &next.issued_at,
                &next.expires_at,
            ],
        )
        .await
        .map_err(Fail::from);
    match inserted {
        Ok(_) => Ok(Ok(record)),
        Err(e) if has_code(&e, &SqlState::UNIQUE_VIOLATION) => {
            Ok(Err(RotateError::Store(StoreError::DuplicateRefresh)))
        }
        Err(e) => Err(e),
    }
}

/// Takes the advisory lock on login name `name` for the rest of the transaction.
async fn lock_name(tx: &Tx<'_>, name: &str) -> Result<(), Fail> {
    tx.exec(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOGIN_LOCK_CLASS, &name],
    )
    .await?;
    Ok(())
}

/// A failure row: (failures, first failure, locked until).
type FailureRow = (i64, i64, Option<i64>);

/// The failure rows of `name` in `scopes`, by scope.
async fn failure_rows(
    tx: &Tx<'_>,
    name: &str,
    network: &str,
) -> Result<(Option<FailureRow>, Option<FailureRow>), Fail> {
    let rows = tx
        .rows(
            "SELECT scope, failures, first_failure_at, locked_until FROM login_failures \
             WHERE username = $1 AND scope IN ($2, $3)",
            &[&name, &EVERYWHERE, &network],
        )
        .await?;
    let (mut everywhere, mut here) = (None, None);
    for row in &rows {
        let scope: &str = col(row, 0)?;
        let values = (col(row, 1)?, col(row, 2)?, col(row, 3)?);
        if scope == EVERYWHERE {
            everywhere = Some(values);
        } else {
            here = Some(values);
        }
    }
    Ok((everywhere, here))
}

/// Failures in the window at `now`, or the end of the running lockout.
fn window_failures(row: Option<FailureRow>, now: i64, policy: LockoutPolicy) -> Result<i64, i64> {
    match row {
        Some((_, _, Some(until))) if until > now => Err(until),
        Some((n, first, _)) if first + policy.find_time > now => Ok(n),
        _ => Ok(0),
    }
}

/// One more failure for `name` in `scope` inside `tx` (holding the name's lock); the
/// lockout's end when it reaches `max`.
async fn count_failure(
    tx: &Tx<'_>,
    name: &str,
    scope: &str,
    max: u32,
    now: i64,
    policy: LockoutPolicy,
) -> Result<Option<i64>, Fail> {
    let row = tx
        .opt(
            "SELECT failures, first_failure_at FROM login_failures \
             WHERE username = $1 AND scope = $2",
            &[&name, &scope],
        )
        .await?;
    let row: Option<(i64, i64)> = match row {
        Some(row) => Some((col(&row, 0)?, col(&row, 1)?)),
        None => None,
    };
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
    tx.exec(
        "INSERT INTO login_failures (username, scope, failures, first_failure_at, locked_until) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username, scope) DO UPDATE SET \
         failures = excluded.failures, first_failure_at = excluded.first_failure_at, \
         locked_until = coalesce(excluded.locked_until, login_failures.locked_until)",
        &[&name, &scope, &failures, &first, &locked_until],
    )
    .await?;
    Ok(locked_until)
}

/// Runs `$sql` alone (its own transaction) and turns "no row changed" into `NotFound`.
async fn update_user(
    c: &Object,
    name: &Username,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), Fail> {
    match c.exec(sql, params).await? {
        0 => Err(StoreError::NotFound(name.clone()).into()),
        _ => Ok(()),
    }
}

#[async_trait]
impl Users for PgStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let now = unix_now();
        let inserted = on_connection!(self, |c| {
            let sql = format!(
                "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, false, $5, $5)"
            );
            match c
                .exec(
                    &sql,
                    &[
                        &user.username.as_str(),
                        &user.password_hash,
                        &user.roles,
                        &user.scopes,
                        &now,
                    ],
                )
                .await
                .map_err(Fail::from)
            {
                Err(e) if has_code(&e, &SqlState::UNIQUE_VIOLATION) => {
                    Err(StoreError::Conflict(user.username.clone()).into())
                }
                other => other.map(drop),
            }
        });
        inserted?;
        Ok(User {
            username: user.username,
            password_hash: user.password_hash,
            roles: user.roles,
            scopes: user.scopes,
            disabled: false,
            created_at: now,
            updated_at: now,
        })
    }

    async fn import_users(
        &self,
        users: Vec<NewUser>,
        skip_existing: bool,
    ) -> Result<Imported, StoreError> {
        let now = unix_now();
        // ON CONFLICT: a unique violation would abort the whole transaction, so a taken name is
        // passed over by the statement itself; any other failure aborts it.
        let sql = format!(
            "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, false, $5, $5) \
             ON CONFLICT (username) DO NOTHING"
        );
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            let mut imported = Imported::default();
            for user in &users {
                let inserted = tx
                    .exec(
                        &sql,
                        &[
                            &user.username.as_str(),
                            &user.password_hash,
                            &user.roles,
                            &user.scopes,
                            &now,
                        ],
                    )
                    .await?;
                if inserted == 0 {
                    imported.existing.push(user.username.clone());
                } else {
                    imported.added += 1;
                }
            }
            if !skip_existing && !imported.existing.is_empty() {
                tx.rollback().await?;
                imported.added = 0;
                return Ok(imported);
            }
            tx.commit().await?;
            Ok(imported)
        }))
    }

    async fn user(&self, name: &Username) -> Result<Option<User>, StoreError> {
        on_connection!(self, |c| {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
            match c.opt(&sql, &[&name.as_str()]).await? {
                Some(row) => Ok(Some(read_user(&row)?)),
                None => Ok(None),
            }
        })
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        on_connection!(self, |c| {
            // Byte order, as SQLite sorts: the database's collation is not ours to rely on.
            let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username COLLATE \"C\"");
            let rows = c.rows(&sql, &[]).await?;
            rows.iter()
                .map(|row| read_user(row).map_err(Fail::from))
                .collect()
        })
    }

    async fn set_password(&self, name: &Username, hash: &str) -> Result<(), StoreError> {
        on_connection!(self, |c| {
            update_user(
                c,
                name,
                "UPDATE users SET password_hash = $1, updated_at = $2 WHERE username = $3",
                &[&hash, &unix_now(), &name.as_str()],
            )
            .await
        })
    }

    async fn set_disabled(
        &self,
        name: &Username,
        disabled: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            let updated = tx
                .exec(
                    "UPDATE users SET disabled = $1, updated_at = $2 WHERE username = $3",
                    &[&disabled, &unix_now(), &name.as_str()],
                )
                .await?;
            if updated == 0 {
                return Err(StoreError::NotFound(name.clone()).into());
            }
            if disabled {
                cut_sessions_in(&tx, name, now).await?;
            }
            tx.commit().await?;
            Ok(())
        }))
    }

    async fn set_roles_scopes(
        &self,
        name: &Username,
        roles: Vec<String>,
        scopes: Vec<String>,
    ) -> Result<(), StoreError> {
        on_connection!(self, |c| {
            update_user(
                c,
                name,
                "UPDATE users SET roles = $1, scopes = $2, updated_at = $3 WHERE username = $4",
                &[&roles, &scopes, &unix_now(), &name.as_str()],
            )
            .await
        })
    }

    async fn remove_user(&self, name: &Username, now: i64) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            // ON DELETE CASCADE removes the user's refresh tokens and sessions with it; the
            // delete also holds the user's row for the cut.
            let deleted = tx
                .exec("DELETE FROM users WHERE username = $1", &[&name.as_str()])
                .await?;
            if deleted == 0 {
                // Dropping the transaction rolls back: nothing changed, nothing is cut.
                return Err(StoreError::NotFound(name.clone()).into());
            }
            cut_sessions_in(&tx, name, now).await?;
            tx.commit().await?;
            Ok(())
        }))
    }
}

#[async_trait]
impl RefreshFamilies for PgStore {
    async fn insert_refresh(
        &self,
        record: RefreshRecord,
        origin: SessionOrigin,
    ) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            match lock_user(&tx, &record.username).await? {
                None => return Err(StoreError::NotFound(record.username.clone()).into()),
                Some(true) => return Err(StoreError::Disabled(record.username.clone()).into()),
                Some(false) => {}
            }
            let token = tx
                .exec(
                    "INSERT INTO refresh_tokens \
                     (digest, family, username, scopes, issued_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &record.digest.as_slice(),
                        &record.family,
                        &record.username.as_str(),
                        &record.scopes,
                        &record.issued_at,
                        &record.expires_at,
                    ],
                )
                .await;
            let session = match token {
                Ok(_) => {
                    tx.exec(
                        "INSERT INTO sessions \
                         (family, username, created_at, last_used_at, client_addr, user_agent) \
                         VALUES ($1, $2, $3, $3, $4, $5)",
                        &[
                            &record.family,
                            &record.username.as_str(),
                            &record.issued_at,
                            &origin.client_addr,
                            &origin.user_agent,
                        ],
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match session.map_err(Fail::from) {
                Ok(_) => {}
                // A digest or a family id stored twice: the caller reused random bytes.
                Err(e) if has_code(&e, &SqlState::UNIQUE_VIOLATION) => {
                    return Err(StoreError::DuplicateRefresh.into());
                }
                Err(e) => return Err(e),
            }
            tx.commit().await?;
            Ok(())
        }))
    }

    async fn rotate_refresh(
        &self,
        old: &[u8; 32],
        next: RefreshSuccessor,
        now: i64,
        grace: i64,
    ) -> Result<RefreshRecord, RotateError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            let answer = rotate_in(&tx, old, &next, now, grace).await?;
            if matches!(answer, Ok(_) | Err(RotateError::Reused { .. })) {
                tx.commit().await?;
            }
            Ok(answer)
        }))?
    }

    async fn refresh(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<(RefreshRecord, RefreshState)>, StoreError> {
        on_connection!(self, |c| find_refresh(&*c, digest, false).await)
    }

    async fn revoke_family(&self, family: &str) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            tx.exec(
                "SELECT 1 FROM users WHERE username IN \
                 (SELECT username FROM refresh_tokens WHERE family = $1) FOR NO KEY UPDATE",
                &[&family],
            )
            .await?;
            revoke_family_in(&tx, family, unix_now()).await?;
            tx.commit().await?;
            Ok(())
        }))
    }

    async fn revoke_session(
        &self,
        name: &Username,
        family: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            lock_user(&tx, name).await?;
            let revoked = tx
                .exec(
                    "UPDATE refresh_tokens SET revoked_at = $1 \
                     WHERE family = $2 AND username = $3 AND revoked_at IS NULL",
                    &[&now, &family, &name.as_str()],
                )
                .await?;
            tx.commit().await?;
            Ok(revoked > 0)
        }))
    }

    async fn end_sessions(&self, name: &Username, now: i64) -> Result<u64, StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            let families = cut_sessions_in(&tx, name, now).await?;
            tx.commit().await?;
            Ok(families)
        }))
    }

    async fn sessions(
        &self,
        name: Option<&Username>,
        now: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let name = name.map(Username::as_str);
        on_connection!(self, |c| {
            let rows = c
                .rows(
                    "SELECT s.family, s.username, s.created_at, s.last_used_at, \
                            max(t.expires_at), s.client_addr, s.user_agent \
                     FROM sessions s JOIN refresh_tokens t ON t.family = s.family \
                     WHERE t.used_at IS NULL AND t.revoked_at IS NULL AND t.expires_at > $1 \
                       AND ($2::text IS NULL OR s.username = $2) \
                     GROUP BY s.family \
                     ORDER BY s.username COLLATE \"C\", s.created_at, s.family COLLATE \"C\"",
                    &[&now, &name],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(Session {
                        family: col(row, 0)?,
                        username: stored_username(col(row, 1)?)?,
                        created_at: col(row, 2)?,
                        last_used_at: col(row, 3)?,
                        expires_at: col(row, 4)?,
                        origin: SessionOrigin {
                            client_addr: col(row, 5)?,
                            user_agent: col(row, 6)?,
                        },
                    })
                })
                .collect()
        })
    }
}

#[async_trait]
impl Revocations for PgStore {
    async fn revoke_id(&self, id: &str, expires_at: i64) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            let kept = tx
                .opt(
                    "INSERT INTO revoked_ids (id, expires_at) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE \
                     SET expires_at = GREATEST(revoked_ids.expires_at, excluded.expires_at) \
                     RETURNING expires_at",
                    &[&id.as_bytes(), &expires_at],
                )
                .await?
                .ok_or_else(|| StoreError::Corrupt("revocation not returned".into()))?;
            let kept: i64 = col(&kept, 0)?;
            record_change(&tx, "revoked", id.as_bytes(), kept).await?;
            tx.commit().await?;
            Ok(())
        }))
    }

    async fn revoked_ids(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        on_connection!(self, |c| {
            c.exec("DELETE FROM revoked_ids WHERE expires_at <= $1", &[&now])
                .await?;
            let rows = c
                .rows(
                    "SELECT id, expires_at FROM revoked_ids WHERE expires_at > $1 \
                     ORDER BY expires_at, id",
                    &[&now],
                )
                .await?;
            rows.iter()
                .map(|row| Ok((stored_text(col(row, 0)?, "revoked id")?, col(row, 1)?)))
                .collect()
        })
    }

    async fn session_cuts(&self) -> Result<Vec<(Username, i64)>, StoreError> {
        on_connection!(self, |c| {
            let rows = c
                .rows(
                    "SELECT username, not_before FROM session_cuts \
                     ORDER BY username COLLATE \"C\"",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| Ok((stored_username(col(row, 0)?)?, col(row, 1)?)))
                .collect()
        })
    }

    async fn change_seq(&self) -> Result<u64, StoreError> {
        on_connection!(self, |c| {
            let row = c
                .opt("SELECT seq FROM change_counter", &[])
                .await?
                .ok_or_else(|| StoreError::Corrupt("the change counter is missing".into()))?;
            Ok(seq_of(col(&row, 0)?)?)
        })
    }

    async fn changes_since(&self, seq: u64, max: usize) -> Result<ChangeBatch, StoreError> {
        let since = i64::try_from(seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        on_connection!(self, |c| {
            // One statement, so one snapshot: the counter, the oldest change kept and the page
            // agree. Every gateway asks several times a second; usually the page is empty.
            let rows = c
                .rows(
                    "SELECT (SELECT seq FROM change_counter), (SELECT min(seq) FROM changes), \
                            c.seq, c.kind, c.subject, c.value \
                     FROM (SELECT 1) AS one LEFT JOIN LATERAL \
                         (SELECT seq, kind, subject, value FROM changes WHERE seq > $1 \
                          ORDER BY seq LIMIT $2) AS c ON true \
                     ORDER BY c.seq",
                    &[&since, &limit],
                )
                .await?;
            let mut batch = ChangeBatch {
                changes: Vec::new(),
                last: seq,
                complete: true,
            };
            for (i, row) in rows.iter().enumerate() {
                if i == 0 {
                    let latest: Option<i64> = col(row, 0)?;
                    let oldest: Option<i64> = col(row, 1)?;
                    let latest = latest.ok_or_else(|| {
                        StoreError::Corrupt("the change counter is missing".into())
                    })?;
                    // Purging removes the oldest rows first: changes after `seq` are all still
                    // here unless the oldest one kept is further on than the next one asked for.
                    batch.complete = match oldest {
                        Some(oldest) => oldest <= since.saturating_add(1),
                        None => since >= latest,
                    };
                }
                let Some(n) = col::<Option<i64>>(row, 2)? else {
                    continue;
                };
                let kind: &str = col(row, 3)?;
                let subject = stored_text(col(row, 4)?, "change subject")?;
                let value: i64 = col(row, 5)?;
                batch.changes.push(match kind {
                    "revoked" => Change::Revoked {
                        id: subject,
                        expires_at: value,
                    },
                    "cut" => Change::SessionsCut {
                        username: stored_username(&subject)?,
                        not_before: value,
                    },
                    "keys" => Change::KeysChanged,
                    _ => {
                        return Err(StoreError::Corrupt(format!("change of kind {kind:?}")).into());
                    }
                });
                batch.last = seq_of(n)?;
            }
            Ok(batch)
        })
    }

    fn change_signal(&self) -> Option<watch::Receiver<()>> {
        Some(self.wake.subscribe())
    }
}

#[async_trait]
impl LoginFailures for PgStore {
    async fn admit_login(
        &self,
        name: &Username,
        network: ClientNetwork,
        now: i64,
        policy: LockoutPolicy,
    ) -> Result<LoginAdmission, StoreError> {
        let (name, network) = (name.as_str(), network.to_string());
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            // The name's lock before the counts are read: two admissions can never both see
            // the last free place of either budget.
            lock_name(&tx, name).await?;
            tx.exec(
                "DELETE FROM login_attempts WHERE username = $1 AND expires_at <= $2",
                &[&name, &now],
            )
            .await?;
            let locked = |until, scope| Ok(LoginAdmission::Locked(Lockout { until, scope }));
            let (everywhere, here) = failure_rows(&tx, name, &network).await?;
            let everywhere = match window_failures(everywhere, now, policy) {
                Ok(n) => n,
                Err(until) => return locked(until, LockScope::Everywhere),
            };
            let here = match window_failures(here, now, policy) {
                Ok(n) => n,
                Err(until) => return locked(until, LockScope::Network),
            };
            let counts = tx
                .opt(
                    "SELECT count(*), count(*) FILTER (WHERE network = $2) \
                     FROM login_attempts WHERE username = $1",
                    &[&name, &network],
                )
                .await?
                .ok_or_else(|| StoreError::Corrupt("no count of attempts".into()))?;
            let (in_flight, in_flight_here): (i64, i64) = (col(&counts, 0)?, col(&counts, 1)?);
            if here + in_flight_here >= i64::from(policy.max_failures)
                || everywhere + in_flight >= i64::from(policy.max_failures_per_user)
            {
                return Ok(LoginAdmission::Exhausted);
            }
            let id = tx
                .opt(
                    "INSERT INTO login_attempts (username, network, expires_at) \
                     VALUES ($1, $2, $3) RETURNING id",
                    &[&name, &network, &now.saturating_add(LOGIN_ATTEMPT_TTL)],
                )
                .await?
                .ok_or_else(|| StoreError::Corrupt("reservation not returned".into()))?;
            let id: i64 = col(&id, 0)?;
            tx.commit().await?;
            Ok(LoginAdmission::Admitted(id))
        }))
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
        let (name, network) = (name.as_str(), network.to_string());
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            lock_name(&tx, name).await?;
            tx.exec("DELETE FROM login_attempts WHERE id = $1", &[&id])
                .await?;
            let lockout = match verdict {
                LoginVerdict::Abandoned => None,
                LoginVerdict::Succeeded => {
                    // A lockout another attempt started meanwhile stays; so does the count
                    // across networks (see `LoginVerdict::Succeeded`).
                    tx.exec(
                        "DELETE FROM login_failures WHERE username = $1 AND scope = $2 \
                         AND coalesce(locked_until, 0) <= $3",
                        &[&name, &network, &now],
                    )
                    .await?;
                    None
                }
                LoginVerdict::Failed => {
                    let max = policy.max_failures;
                    let here = count_failure(&tx, name, &network, max, now, policy).await?;
                    let max = policy.max_failures_per_user;
                    let everywhere = count_failure(&tx, name, EVERYWHERE, max, now, policy).await?;
                    let lockout = |scope| move |until| Lockout { until, scope };
                    everywhere
                        .map(lockout(LockScope::Everywhere))
                        .or(here.map(lockout(LockScope::Network)))
                }
            };
            tx.commit().await?;
            Ok(lockout)
        }))
    }

    async fn lockouts(&self, name: &Username, now: i64) -> Result<Lockouts, StoreError> {
        on_connection!(self, |c| {
            let rows = c
                .rows(
                    "SELECT scope, locked_until FROM login_failures \
                     WHERE username = $1 AND locked_until > $2 ORDER BY scope COLLATE \"C\"",
                    &[&name.as_str(), &now],
                )
                .await?;
            let mut lockouts = Lockouts::default();
            for row in &rows {
                let (scope, until): (String, i64) = (col(row, 0)?, col(row, 1)?);
                if scope == EVERYWHERE {
                    lockouts.everywhere = Some(until);
                } else {
                    lockouts.networks.push((scope, until));
                }
            }
            Ok(lockouts)
        })
    }

    async fn unlock(&self, name: &Username, now: i64) -> Result<bool, StoreError> {
        let name = name.as_str();
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            lock_name(&tx, name).await?;
            let locked = tx
                .opt(
                    "SELECT 1 FROM login_failures WHERE username = $1 AND locked_until > $2 \
                     LIMIT 1",
                    &[&name, &now],
                )
                .await?
                .is_some();
            tx.exec("DELETE FROM login_failures WHERE username = $1", &[&name])
                .await?;
            tx.commit().await?;
            Ok(locked)
        }))
    }
}

const KEY_COLUMNS: &str = "kid, alg, sealed, created_at, active_from, retired_at";

fn read_key(row: &Row) -> Result<StoredKey, StoreError> {
    let kid: String = col(row, 0)?;
    let alg: &str = col(row, 1)?;
    let alg = alg
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("signing key {kid}: algorithm {alg:?}")))?;
    Ok(StoredKey {
        alg,
        sealed: col(row, 2)?,
        created_at: col(row, 3)?,
        active_from: col(row, 4)?,
        retired_at: col(row, 5)?,
        kid,
    })
}

/// Stores `key` inside a transaction that holds [`KEYS_LOCK`]; `DuplicateKey` when its kid is
/// taken.
async fn insert_key(tx: &Tx<'_>, key: &StoredKey) -> Result<(), Fail> {
    let inserted = tx
        .exec(
            &format!(
                "INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (kid) DO NOTHING"
            ),
            &[
                &key.kid,
                &key.alg.name(),
                &key.sealed,
                &key.created_at,
                &key.active_from,
                &key.retired_at,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::DuplicateKey(key.kid.clone()).into());
    }
    Ok(())
}

#[async_trait]
impl SigningKeys for PgStore {
    async fn signing_keys(&self, retired_after: i64) -> Result<Vec<StoredKey>, StoreError> {
        on_connection!(self, |c| {
            let rows = c
                .rows(
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM signing_keys \
                         WHERE retired_at IS NULL OR retired_at > $1 \
                         ORDER BY active_from, kid COLLATE \"C\""
                    ),
                    &[&retired_after],
                )
                .await?;
            Ok(rows.iter().map(read_key).collect::<Result<_, _>>()?)
        })
    }

    async fn insert_first_if_empty(&self, key: StoredKey) -> Result<bool, StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            // Held to commit; READ COMMITTED gives the next statement a snapshot taken after
            // the lock, so it sees the key a gateway that held the lock before committed.
            tx.exec("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
                .await?;
            let any = tx
                .opt("SELECT EXISTS (SELECT 1 FROM signing_keys)", &[])
                .await?
                .ok_or_else(|| StoreError::Corrupt("EXISTS returned no row".into()))?;
            if col::<bool>(&any, 0)? {
                return Ok(false);
            }
            insert_key(&tx, &key).await?;
            record_change(&tx, "keys", key.kid.as_bytes(), key.active_from).await?;
            tx.commit().await?;
            Ok(true)
        }))
    }

    async fn add_and_retire(&self, key: StoredKey, forget_before: i64) -> Result<(), StoreError> {
        on_connection!(self, |c| retrying!(async {
            let tx = c.transaction().await?;
            tx.exec("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
                .await?;
            tx.exec(
                "DELETE FROM signing_keys WHERE retired_at <= $1",
                &[&forget_before],
            )
            .await?;
            tx.exec(
                "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL",
                &[&key.active_from],
            )
            .await?;
            insert_key(&tx, &key).await?;
            record_change(&tx, "keys", key.kid.as_bytes(), key.active_from).await?;
            tx.commit().await?;
            Ok(())
        }))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        // Each delete on its own: none needs another's, and short transactions hold few locks.
        let deletes: [(&str, &[i64]); 7] = [
            ("DELETE FROM refresh_tokens WHERE expires_at <= $1", &[now]),
            ("DELETE FROM revoked_ids WHERE expires_at <= $1", &[now]),
            (
                "DELETE FROM client_assertions WHERE expires_at <= $1",
                &[now],
            ),
            (
                "DELETE FROM login_failures WHERE coalesce(locked_until, 0) <= $1 \
                 AND first_failure_at <= $2",
                &[now, now.saturating_sub(FAILURE_ROW_TTL)],
            ),
            ("DELETE FROM login_attempts WHERE expires_at <= $1", &[now]),
            (
                "DELETE FROM sessions s WHERE NOT EXISTS \
                 (SELECT 1 FROM refresh_tokens t WHERE t.family = s.family)",
                &[],
            ),
            // By sequence, oldest first, so what is kept is always a suffix of the feed.
            (
                "DELETE FROM changes WHERE seq <= \
                 (SELECT max(seq) FROM changes WHERE created_at <= $1)",
                &[now.saturating_sub(CHANGE_RETENTION)],
            ),
        ];
        let mut deleted = 0u64;
        for (sql, values) in deletes {
            let params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            deleted += on_connection!(self, |c| retrying!(async {
                Ok(c.exec(sql, &params).await?)
            }))?;
        }
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        on_connection!(self, |c| {
            c.exec("SELECT 1", &[]).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::testing::{SUPERUSER, Server};
    use super::*;
    use crate::store::contract::{Fixture, NOW, contract_tests, name, new_user};

    /// A handle's settings for database `db` of the test server, over TCP with the password.
    fn config_for(server: &Server, db: &str) -> PgConfig {
        PgConfig {
            port: server.port,
            password: Some(server.password.clone()),
            pool_size: 8,
            ..PgConfig::new(PgHost::Tcp("127.0.0.1".into()), SUPERUSER, db)
        }
    }

    /// A fresh database on the test server; every `open` is another gateway's handle on it.
    struct PgFixture {
        config: PgConfig,
    }

    impl Fixture for PgFixture {
        async fn open(&self) -> Arc<dyn Store> {
            Arc::new(PgStore::open(&self.config).await.unwrap())
        }
    }

    async fn fixture() -> Option<PgFixture> {
        let server = testing::server()?;
        let db = server.create_database().await;
        Some(PgFixture {
            config: config_for(server, &db),
        })
    }

    contract_tests!(fixture());

    /// A superuser connection to the fixture's database, behind the store's back.
    async fn raw(config: &PgConfig) -> tokio_postgres::Client {
        let (client, connection) = config.client_config().connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn gateways_starting_at_once_migrate_once() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let config = fixture.config.clone();
                tokio::spawn(async move { PgStore::open(&config).await })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            stores.push(open.await.unwrap().unwrap());
        }
        stores[0].create_user(new_user("alice")).await.unwrap();
        assert_eq!(stores[5].list_users().await.unwrap().len(), 1);
        let version: i32 = raw(&fixture.config)
            .await
            .query_one("SELECT version FROM gatehouse_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, SCHEMA_VERSION);
        // Reopening applies nothing and keeps the data.
        drop(stores);
        let again = PgStore::open(&fixture.config).await.unwrap();
        assert_eq!(again.list_users().await.unwrap().len(), 1);
    }

    /// A database of schema 1 (before shared keys) is upgraded in place: its feed goes on
    /// where it was and announces key changes from then on.
    #[tokio::test]
    async fn a_schema_v1_database_is_upgraded_with_its_feed() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let client = raw(&fixture.config).await;
        client.batch_execute(SCHEMA_TABLE).await.unwrap();
        client.batch_execute(SCHEMA_V1).await.unwrap();
        client
            .batch_execute(
                "INSERT INTO gatehouse_schema (version) VALUES (1); \
                 UPDATE change_counter SET seq = 7; \
                 INSERT INTO changes VALUES (7, 'revoked', 'jti-7', 1, 1);",
            )
            .await
            .unwrap();
        let store = PgStore::open(&fixture.config).await.unwrap();
        assert_eq!(store.change_seq().await.unwrap(), 7);
        let key = StoredKey {
            kid: "k".into(),
            alg: crate::auth::keys::KeyAlg::EdDSA,
            sealed: vec![1],
            created_at: NOW,
            active_from: NOW,
            retired_at: None,
        };
        assert!(store.insert_first_if_empty(key).await.unwrap());
        let batch = store.changes_since(6, 10).await.unwrap();
        assert_eq!(batch.last, 8);
        assert_eq!(batch.changes[1], Change::KeysChanged);
        let version: i32 = client
            .query_one("SELECT version FROM gatehouse_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn database_from_a_newer_build_is_refused() {
        let Some(fixture) = fixture().await else {
            return;
        };
        drop(PgStore::open(&fixture.config).await.unwrap());
        raw(&fixture.config)
            .await
            .execute("UPDATE gatehouse_schema SET version = 99", &[])
            .await
            .unwrap();
        let err = PgStore::open(&fixture.config).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("99")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_or_refusing_server_is_unavailable_not_a_panic() {
        let Some(server) = testing::server() else {
            return;
        };
        // Nothing listens on a port just found free.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let closed = PgConfig {
            port,
            connect_timeout: Duration::from_secs(2),
            ..config_for(server, "postgres")
        };
        let started = std::time::Instant::now();
        let err = PgStore::open(&closed).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let wrong = PgConfig {
            password: Some("not the password".into()),
            ..config_for(server, "postgres")
        };
        let err = PgStore::open(&wrong).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if !m.contains("not the password")),
            "{err}"
        );
        let missing = config_for(server, "no_such_database");
        let err = PgStore::open(&missing).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }

    #[tokio::test]
    async fn settings_out_of_bounds_are_refused_and_the_password_is_never_shown() {
        let base = PgConfig {
            password: Some("hunter2".into()),
            ..PgConfig::new(PgHost::Tcp("127.0.0.1".into()), "u", "d")
        };
        assert!(!format!("{base:?}").contains("hunter2"));
        let bad = [
            PgConfig {
                pool_size: 0,
                ..base.clone()
            },
            PgConfig {
                statement_timeout: Duration::ZERO,
                ..base.clone()
            },
            PgConfig {
                pool_wait_timeout: Duration::from_secs(3600),
                ..base.clone()
            },
            PgConfig {
                host: PgHost::Socket("/tmp".into()),
                tls: Some(PgTls {
                    ca_file: "/dev/null".into(),
                }),
                ..base.clone()
            },
        ];
        for config in bad {
            assert!(
                matches!(
                    PgStore::open(&config).await,
                    Err(StoreError::Unavailable(_))
                ),
                "{config:?}"
            );
        }
    }

    #[tokio::test]
    async fn server_side_timeouts_are_set_on_every_connection() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let store = PgStore::open(&PgConfig {
            statement_timeout: Duration::from_millis(1500),
            ..fixture.config.clone()
        })
        .await
        .unwrap();
        let settings = on_connection!(&store, |c| {
            let row = c
                .opt(
                    "SELECT current_setting('statement_timeout'), \
                     current_setting('idle_in_transaction_session_timeout')",
                    &[],
                )
                .await?
                .unwrap();
            Ok((row.get::<_, String>(0), row.get::<_, String>(1)))
        })
        .unwrap();
        assert_eq!(settings, ("1500ms".to_owned(), "6s".to_owned()));
        // A statement past the timeout is cancelled by the server: unavailable, not a hang.
        let slow = on_connection!(&store, |c| {
            c.exec("SELECT pg_sleep(5)", &[]).await?;
            Ok(())
        });
        assert!(
            matches!(&slow, Err(StoreError::Unavailable(m)) if m.contains("57014")),
            "{slow:?}"
        );
    }

    #[tokio::test]
    async fn a_unix_socket_is_a_way_in() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let server = testing::server().unwrap();
        let store = PgStore::open(&PgConfig {
            host: PgHost::Socket(server.dir.clone()),
            password: None,
            ..fixture.config.clone()
        })
        .await
        .unwrap();
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn tls_verifies_the_servers_certificate_and_name() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let server = testing::server().unwrap();
        let tls = |host: &str, ca_file: &Path| PgConfig {
            host: PgHost::Tcp(host.into()),
            tls: Some(PgTls {
                ca_file: ca_file.to_owned(),
            }),
            connect_timeout: Duration::from_secs(3),
            ..fixture.config.clone()
        };
        for host in ["localhost", "127.0.0.1"] {
            let store = PgStore::open(&tls(host, &server.ca_file)).await.unwrap();
            let ssl: bool = on_connection!(&store, |c| {
                let row = c
                    .opt(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await?
                    .unwrap();
                Ok(row.get(0))
            })
            .unwrap();
            assert!(ssl, "{host}");
        }
        // Another CA: the certificate does not chain to it.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other-ca.pem");
        let stranger = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&other, stranger.cert.pem()).unwrap();
        let err = PgStore::open(&tls("localhost", &other)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        // The right CA, a name the certificate does not carry (127.0.0.2 reaches the same
        // server only where the loopback range is routed; the name check fails first either way).
        let err = PgStore::open(&tls("127.0.0.2", &server.ca_file))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        // A CA file that holds no certificate is refused before connecting.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = PgStore::open(&tls("localhost", &empty)).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("no certificate")),
            "{err}"
        );
    }

    /// A change made through one handle wakes a follower of another at its commit: the signal
    /// itself is what is awaited (the poll never runs here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_through_one_handle_wakes_the_other_at_once() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let writer = fixture.open().await;
        let follower = fixture.open().await;
        let mut signal = follower
            .change_signal()
            .expect("PostgreSQL announces changes");
        signal.mark_unchanged();
        let start = follower.change_seq().await.unwrap();
        writer.revoke_id("jti-1", NOW + 100).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), signal.changed())
            .await
            .expect("woken by the commit")
            .unwrap();
        let batch = follower.changes_since(start, 10).await.unwrap();
        assert_eq!(batch.changes.len(), 1);
        // A failed write (its transaction rolled back) announces nothing.
        signal.mark_unchanged();
        assert!(writer.remove_user(&name("nobody"), NOW).await.is_err());
        let quiet = tokio::time::timeout(Duration::from_millis(300), signal.changed()).await;
        assert!(quiet.is_err(), "a rolled-back cut woke the follower");
    }

    /// Gateways on PostgreSQL: a rotation through one handle wakes the other's follower at its
    /// commit, and the ring that gateway rebuilds then publishes the new key while the old one
    /// still signs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotation_through_one_handle_reaches_the_others_ring_at_its_commit() {
        use crate::auth::keys::KeyAlg;
        use crate::auth::keystore::{self, Kek};
        use crate::auth::revocation::Revocation;

        let Some(fixture) = fixture().await else {
            return;
        };
        let retain = Duration::from_secs(900);
        let dir = tempfile::tempdir().unwrap();
        Kek::write_new(&dir.path().join("kek")).unwrap();
        let kek = Kek::load(&dir.path().join("kek")).unwrap();
        let writer = fixture.open().await;
        let follower = fixture.open().await;
        let ring = keystore::load_or_create_ring(&*follower, &kek, KeyAlg::EdDSA, retain, NOW)
            .await
            .unwrap();
        let mirror = Revocation::load(&*follower, NOW).await.unwrap();
        let mut signal = follower.change_signal().unwrap();
        signal.mark_unchanged();
        let new = keystore::rotate(
            &*writer,
            &kek,
            KeyAlg::EdDSA,
            Duration::from_secs(600),
            retain,
            NOW,
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), signal.changed())
            .await
            .expect("woken by the commit")
            .unwrap();
        mirror.catch_up(&*follower, NOW).await.unwrap();
        assert!(mirror.take_keys_changed());
        let rebuilt = keystore::load_ring(&*follower, &kek, retain, NOW)
            .await
            .unwrap();
        assert_eq!(rebuilt.signing().kid, ring.signing().kid);
        assert!(rebuilt.verification_key(&new.kid).is_some());
    }

    /// The listening connection is killed by the server; the listener reconnects (waking
    /// followers, since changes in between were announced to nobody) and announces again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listener_reconnects_and_wakes_followers() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let writer = fixture.open().await;
        let follower = fixture.open().await;
        let mut signal = follower.change_signal().unwrap();
        signal.mark_unchanged();
        let killed: i64 = raw(&fixture.config)
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query = $1",
                &[&LISTEN],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 2, "one listener per handle");
        tokio::time::timeout(Duration::from_secs(10), signal.changed())
            .await
            .expect("woken on reconnection")
            .unwrap();
        // Listening again: wait until the new connection has run LISTEN, then write.
        let mut listening = false;
        for _ in 0..100 {
            let n: i64 = raw(&fixture.config)
                .await
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND query = $1",
                    &[&LISTEN],
                )
                .await
                .unwrap()
                .get(0);
            if n == 2 {
                listening = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(listening, "the listeners did not come back");
        signal.mark_unchanged();
        writer.revoke_id("jti-2", NOW + 100).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), signal.changed())
            .await
            .expect("woken by the commit after reconnecting")
            .unwrap();
    }

    #[tokio::test]
    async fn tampered_rows_are_reported_as_corrupt() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let store = fixture.open().await;
        // A non-canonical name written behind the store's back must not be served as "Eve".
        raw(&fixture.config)
            .await
            .execute(
                "INSERT INTO users VALUES ('Eve', 'h', '{}', '{}', false, 1, 1)",
                &[],
            )
            .await
            .unwrap();
        assert!(matches!(
            store.list_users().await,
            Err(StoreError::Corrupt(_))
        ));
        raw(&fixture.config)
            .await
            .execute("INSERT INTO session_cuts VALUES ('Mallory', 1)", &[])
            .await
            .unwrap();
        assert!(matches!(
            store.session_cuts().await,
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Ids are stored as bytes: any id a token can carry can be revoked (text columns refuse NUL).
    #[tokio::test]
    async fn an_id_with_a_nul_is_revocable() {
        let Some(fixture) = fixture().await else {
            return;
        };
        let store = fixture.open().await;
        store.revoke_id("a\0b", NOW + 10).await.unwrap();
        assert_eq!(
            store.revoked_ids(NOW).await.unwrap(),
            [("a\0b".to_owned(), NOW + 10)]
        );
    }
}
