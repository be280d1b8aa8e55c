//! Subcommands: `serve`, `check-config`, `demo`, `user ...`, `sessions ...`, `routes ...`,
//! `keys ...`, `client ...`, and `completions SHELL` and `man`, which render this one definition
//! for shells and `man` (every subcommand and option has a help text; a test holds that).

use std::future::Future as _;
use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use zeroize::Zeroizing;

use crate::app;
use crate::auth::audit::{Event, Outcome, Source};
use crate::auth::claims::check_account_values;
use crate::auth::keys::KeyRing;
use crate::auth::keystore::{self, Kek};
use crate::auth::password::{HashParams, PasswordPool, PoolLimits};
use crate::auth::service::key_retention;
use crate::auth::username::Username;
use crate::config::Config;
use crate::routes::AuthMode;
use crate::store::{ClientAuthMethod, Lockouts, NewUser, Store};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A reverse-proxy authentication gateway"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The TOML configuration file (GATEHOUSE_* variables override it). Without it the first
    /// of $GATEHOUSE_CONFIG, ./gatehouse.toml and /etc/gatehouse/gatehouse.toml is used.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

/// The variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "GATEHOUSE_CONFIG";
/// Where the configuration file is looked for, in order, after `--config` and
/// [`CONFIG_ENV`].
pub const CONFIG_SEARCH_PATH: &[&str] = &["./gatehouse.toml", "/etc/gatehouse/gatehouse.toml"];

/// The configuration file a command reads and how it was found.
#[derive(Debug)]
pub struct Located {
    /// `None`: no file anywhere; built-in defaults and `GATEHOUSE_` variables only.
    pub path: Option<PathBuf>,
    /// How it was found, for the one line on stderr.
    pub how: String,
}

impl ConfigArg {
    /// `--config`, else `GATEHOUSE_CONFIG`, else the first of [`CONFIG_SEARCH_PATH`] that is
    /// a file. A file named by the option or the variable is used (and fails to load) even
    /// when it does not exist.
    pub fn locate(&self) -> Located {
        if let Some(path) = &self.config {
            return Located {
                path: Some(path.clone()),
                how: "from --config".into(),
            };
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            return Located {
                path: Some(PathBuf::from(path)),
                how: format!("from {CONFIG_ENV}"),
            };
        }
        for candidate in CONFIG_SEARCH_PATH {
            let path = Path::new(candidate);
            if path.is_file() {
                return Located {
                    path: Some(path.to_owned()),
                    how: "found".into(),
                };
            }
        }
        Located {
            path: None,
            how: format!(
                "no configuration file: no --config, {CONFIG_ENV} unset, and none of {} exists",
                CONFIG_SEARCH_PATH.join(", ")
            ),
        }
    }
}

impl Located {
    /// The one line saying which configuration is used.
    fn announce(&self) {
        match &self.path {
            Some(path) => eprintln!("gatehouse: configuration {} ({})", path.display(), self.how),
            None => eprintln!("gatehouse: {}; using the built-in defaults", self.how),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Validate a configuration file and summarise it.
    CheckConfig,
    /// The quick start: a demo upstream behind the gateway, with user alice / secret.
    Demo {
        /// Gateway address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo keeps its store and keys.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// See and end login sessions (each login is one, until logout, expiry or a cut).
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Explain how the gateway would handle a request.
    Routes {
        #[command(subcommand)]
        action: RoutesAction,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Manage machine clients (OAuth2 clients with a secret or with their own keys for
    /// private_key_jwt: `client_credentials`, and the password grant under `[auth]
    /// password_grant_clients`).
    Client {
        #[command(subcommand)]
        action: ClientAction,
    },
    /// Print a completion script for SHELL, generated from this command line's definition
    /// (e.g. `gatehouse completions bash > /etc/bash_completion.d/gatehouse`).
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Print the manual page gatehouse(1) (roff), or write it and one page per subcommand
    /// into a directory; generated from this command line's definition.
    Man {
        /// Write gatehouse.1 and gatehouse-SUBCOMMAND.1 (e.g. gatehouse-user-import.1) into
        /// this directory instead of printing gatehouse.1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientAction {
    /// Register a client. Without keys its secret is generated and printed once (only a digest
    /// is stored); with `--jwks-file` or `--jwks-url` it authenticates only by private_key_jwt
    /// (RFC 7523), with assertions signed by one of those keys, and has no secret.
    Add {
        /// The client_id: 1-64 characters from a-z 0-9 . _ @ + -.
        name: String,
        /// A scope the client may ask for (repeat for several); none: its tokens carry none.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An audience (RFC 8707 resource) its tokens may be for, the first being the default
        /// (repeat for several); none: only the gateway's own `[auth] audience`.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// A grant type it may use: client_credentials or password, or introspection to call
        /// the token introspection endpoint (repeat for several; default client_credentials).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// private_key_jwt: a file with the client's public keys (a JWKS, or one JWK), stored
        /// in the store.
        #[arg(long, conflicts_with = "jwks_url")]
        jwks_file: Option<PathBuf>,
        /// private_key_jwt: the URL where the client publishes its JWKS (fetched, bounded in
        /// size and time, and cached).
        #[arg(long)]
        jwks_url: Option<String>,
        /// Create the configured SQLite store if it does not exist yet; without it a missing
        /// store is an error.
        #[arg(long)]
        create_store: bool,
    },
    /// Clients with their scopes, audiences, grants, state and times (RFC 3339, UTC).
    List {
        /// One JSON object per client, one per line (times as unix seconds).
        #[arg(long)]
        json: bool,
    },
    /// Generate and print a new secret; the old one stops working at once (tokens already
    /// issued live on, and a later disable still ends them).
    RotateSecret {
        /// The client_id.
        name: String,
    },
    /// Refuse the client's authentication and, within a second on every gateway of the store,
    /// every access token it was issued.
    Disable {
        /// The client_id.
        name: String,
    },
    /// Accept the client again (tokens refused by the disable stay refused).
    Enable {
        /// The client_id.
        name: String,
    },
    /// Remove the client; its access tokens are refused as for a disable.
    Remove {
        /// The client_id.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a user; the password is read from the terminal (twice) or stdin.
    Add {
        /// The username (canonicalised: NFKC, lowercase; 1-64 of a-z 0-9 . _ @ + -).
        name: String,
        /// A role its tokens carry (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A scope its tokens may carry (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Create the configured SQLite store if it does not exist yet (the first user of a
        /// new installation); without it a missing store is an error.
        #[arg(long)]
        create_store: bool,
    },
    /// Replace a user's roles and scopes (the password stays); no flag clears the list.
    Update {
        /// The username.
        name: String,
        /// A role its tokens carry (repeat for several; none clears them).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A scope its tokens may carry (repeat for several; none clears them).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Set a new password; ends the user's sessions and lifts a lockout.
    Passwd {
        /// The username.
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End every login lockout of a name (from every network, and everywhere) and forget the
    /// failures that led to them.
    Unlock {
        /// The username (it need not exist: unknown names lock out too).
        name: String,
    },
    /// Refuse the user's logins and end its sessions, access tokens included.
    Disable {
        /// The username.
        name: String,
    },
    /// Accept the user's logins again (sessions ended by the disable stay ended).
    Enable {
        /// The username.
        name: String,
    },
    /// Users with their state, roles, scopes, times and lockouts (RFC 3339, UTC).
    List {
        /// One JSON object per user, one per line (times as unix seconds), as `client list`.
        #[arg(long)]
        json: bool,
    },
    /// Remove the user; its sessions end, access tokens included.
    Remove {
        /// The username.
        name: String,
    },
    /// Import users with existing password hashes (argon2 or bcrypt) from JSON lines or CSV,
    /// all or nothing.
    #[command(long_about = crate::auth::import::FORMAT_HELP)]
    Import {
        /// The JSON lines or CSV file (formats above).
        file: PathBuf,
        /// Leave users whose name is already taken as they are and import the others; without
        /// it one taken name means nothing is imported.
        #[arg(long)]
        skip_existing: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsAction {
    /// Live sessions, of USER or of everyone: id, user, started, last refreshed, expiry, client
    /// address and user agent at login.
    List {
        /// Only this user's sessions.
        user: Option<String>,
    },
    /// End USER's session FAMILY, or every session of USER; their access tokens are refused by
    /// every gateway on this store within a second.
    Revoke {
        /// The username.
        user: String,
        /// A session id as `sessions list` shows it; one in eight starts with `-` (base64url).
        #[arg(allow_hyphen_values = true)]
        family: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoutesAction {
    /// Which route matches, the path and URL that would be forwarded, and the auth policy.
    Explain {
        /// The request's method, e.g. GET.
        method: String,
        /// The request's URL, e.g. http://api.example.com/api/items?x=1 (the host selects
        /// host-specific routes).
        url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create the first signing key if there is none.
    Generate {
        /// With `[auth] kek_file`: create the configured SQLite store if it does not exist yet;
        /// without it a missing store is an error.
        #[arg(long)]
        create_store: bool,
    },
    /// Make a new signing key; the old ones verify until their tokens expire. With
    /// `[auth] kek_file`, in the store: published at once, signing after `publish_ahead`.
    Rotate,
    /// Signing keys with their algorithm, times (RFC 3339, UTC) and state.
    List {
        /// One JSON object per key, one per line (times as unix seconds), as `client list`.
        #[arg(long)]
        json: bool,
    },
    /// Write a new key-encryption key (for `[auth] kek_file`) to PATH, mode 0600; an existing
    /// file is never overwritten.
    NewKek {
        /// Where to write it (a new file).
        path: PathBuf,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let _log = match cli.command {
        Command::Serve => None,
        _ => Some(crate::logging::init(crate::logging::LogFormat::Text)),
    };
    // Only the commands that read a configuration look for one (and say which they use).
    let c = &match &cli.command {
        Command::Demo { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Keys {
            action: KeysAction::NewKek { .. },
        } => Located {
            path: None,
            how: String::new(),
        },
        _ => {
            let located = cli.config.locate();
            located.announce();
            located
        }
    };
    match cli.command {
        Command::Serve => {
            let config = load(c)?;
            let _log = crate::logging::init(config.log.format);
            app::run(config, c.path.clone()).await?;
            Ok(())
        }
        Command::CheckConfig => check_config(c),
        Command::Demo { listen, data_dir } => crate::demo::run(listen, &data_dir).await,
        Command::User { action } => user(load(c)?, action).await,
        Command::Sessions { action } => sessions(load(c)?, action).await,
        Command::Keys {
            action: KeysAction::NewKek { path },
        } => {
            Kek::write_new(&path)?;
            println!(
                "wrote a new key-encryption key to {}; give every gateway on the store a copy (mode 0600) and set [auth] kek_file",
                path.display()
            );
            Ok(())
        }
        Command::Keys { action } => keys(load(c)?, action).await,
        Command::Client { action } => client(load(c)?, action).await,
        Command::Completions { shell } => {
            std::io::Write::write_all(&mut std::io::stdout().lock(), &completions(shell))?;
            Ok(())
        }
        Command::Man { dir: Some(dir) } => write_man_pages(&dir),
        Command::Man { dir: None } => {
            std::io::Write::write_all(&mut std::io::stdout().lock(), &man_page()?)?;
            Ok(())
        }
        Command::Routes {
            action: RoutesAction::Explain { method, url },
        } => {
            let report = explain(&load(c)?, &method, &url)?;
            print!("{report}");
            Ok(())
        }
    }
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "gatehouse", &mut out);
    out
}

/// `gatehouse(1)`: the synopsis, the global options and the list of subcommands.
pub fn man_page() -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}

/// `gatehouse.1` and one page per subcommand (`gatehouse-user-import.1`, ...) into `dir`.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<()> {
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing manual pages to {}", dir.display()))
}

fn load(c: &Located) -> anyhow::Result<Config> {
    Config::load(c.path.as_deref()).with_context(|| match &c.path {
        Some(p) => format!("invalid configuration {}", p.display()),
        None => "invalid configuration (defaults and GATEHOUSE_ variables)".into(),
    })
}

fn check_config(c: &Located) -> anyhow::Result<()> {
    if c.path.is_none() {
        // "OK" about the built-in defaults would pass a forgotten --config.
        bail!("nothing checked: {}", c.how);
    }
    let config = load(c)?;
    // What `serve` demands beyond validation (routes, every file it names), all listed at once.
    if let Err(problems) = app::preflight::check(&config) {
        bail!("configuration not usable: {problems}");
    }
    println!("configuration OK");
    for warning in config.warnings() {
        println!("warning   {warning}");
    }
    print!("{}", summary(&config));
    Ok(())
}

/// A one-screen summary of listeners and routes.
pub fn summary(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &config.server;
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    let _ = writeln!(out, "listen    {scheme}://{}", s.listen);
    let keys = match &config.auth.kek_file {
        Some(kek) => format!("the store, sealed under {}", kek.display()),
        None => config.auth.keys_dir.display().to_string(),
    };
    let _ = writeln!(
        out,
        "auth      endpoints under {}, issuer {:?}, audience {:?}, {:?} keys in {keys}",
        if config.auth.prefix.is_empty() {
            "/ (exact paths only)"
        } else {
            &config.auth.prefix
        },
        config.auth.issuer,
        config.auth.audience,
        config.auth.algorithm,
    );
    let paths: Vec<String> = config
        .auth
        .paths
        .iter()
        .map(|(endpoint, path)| format!("{}={path}", endpoint.name()))
        .collect();
    let _ = writeln!(out, "  paths   {}", paths.join(" "));
    let fa = &config.forward_auth;
    if fa.enabled() {
        let peers: Vec<String> = fa.trusted_peers.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "forward   {} for {}, decisions cacheable {}s",
            config.auth.paths.path(crate::auth::paths::Endpoint::Verify),
            peers.join(", "),
            fa.max_age.as_secs()
        );
    }
    if let Some(t) = &config.tracing {
        let _ = writeln!(
            out,
            "tracing   spans to {}, sampling ratio {}{}",
            t.endpoint,
            t.sampling_ratio,
            match &t.ca_file {
                Some(ca) => format!(", collector verified against {}", ca.display()),
                None => String::new(),
            }
        );
    }
    let _ = writeln!(out, "store     {}", config.store);
    let _ = writeln!(out, "routes    {}", config.routes.len());
    for r in &config.routes {
        let methods = r
            .methods
            .as_ref()
            .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "*".into());
        let auth = match r.auth {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::Public => "public",
        };
        let _ = writeln!(
            out,
            "  {:<16} {}{} [{}] -> {}://{}{}{} auth={}",
            r.name,
            r.host.as_deref().unwrap_or(""),
            r.path_prefix,
            methods,
            r.upstream.scheme,
            r.upstream.authority,
            r.upstream.base_path,
            if r.strip_prefix {
                " (prefix stripped)"
            } else {
                ""
            },
            auth
        );
    }
    out
}

/// What the gateway would do with `METHOD URL`: the route, the forwarded path and URL, and the
/// policy; or why no route takes it (which the gateway answers with 400 or 404).
pub fn explain(config: &Config, method: &str, url: &str) -> anyhow::Result<String> {
    use std::fmt::Write;
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("{method:?} is not an HTTP method"))?;
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL (e.g. http://host/path)"))?;
    let (Some(authority), Some(path_and_query)) = (uri.authority(), uri.path_and_query()) else {
        anyhow::bail!("{url:?} is not a URL with a host (e.g. http://host/path)");
    };
    let mut out = String::new();
    // The request the gateway would see, decided by the gateway's own stages 1-5.
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(path_and_query.as_str())
        .header(http::header::HOST, authority.as_str())
        .body(())
        .with_context(|| format!("{url:?} cannot be sent as a request"))?;
    let router = crate::gateway::Router::new(config)?;
    let rejected = |out: &mut String, rejection: &crate::error::Rejection| {
        let status = crate::error::respond(rejection).status().as_u16();
        let _ = writeln!(out, "rejected   {status}: {rejection}");
    };
    let table = router.routes();
    let mut trail = crate::gateway::Trail::default();
    // Without an authenticator nothing in decide waits, so one poll finishes it.
    let decided = {
        let decide = std::pin::pin!(router.decide(
            &mut req,
            crate::gateway::Authentication::Skip,
            &mut trail,
        ));
        match decide.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(decided) => decided,
            std::task::Poll::Pending => anyhow::bail!("deciding the request waited for I/O"),
        }
    };
    let (normalised, host, route) = match decided {
        Ok(decision) => {
            let normalised = decision.target.path.clone();
            let host = decision.target.host().to_ascii_lowercase();
            match decision.choice {
                crate::gateway::Choice::Route(index) => {
                    let route = table
                        .get(index)
                        .context("the router chose a route outside its table")?;
                    (normalised, host, route)
                }
                choice @ crate::gateway::Choice::Endpoint(endpoint) => {
                    let paths = router.endpoints();
                    if endpoint == crate::auth::endpoints::Endpoint::Unknown {
                        let _ = writeln!(
                            out,
                            "endpoint   none at {normalised}: under the auth prefix {}, answered 404 by gatehouse; never proxied",
                            paths.prefix()
                        );
                    } else {
                        let _ = writeln!(
                            out,
                            "endpoint   gatehouse's own {} at {} (auth.paths.{}); never proxied",
                            endpoint.name(),
                            paths.path(endpoint),
                            endpoint.name()
                        );
                    }
                    // A route that would have taken it, had the endpoint not come first.
                    let method = req.method().clone();
                    if let Some(r) = table
                        .fitting(Some(&host), &method, &normalised)
                        .min_by(|a, b| crate::routes::precedence(a, b))
                    {
                        let _ = writeln!(
                            out,
                            "  over     route {} ({}{}): endpoints are decided before routes",
                            r.name,
                            r.host.as_deref().unwrap_or(""),
                            r.path_prefix
                        );
                    }
                    let _ = writeln!(out, "cors       {}", cors_text(router.cors(choice)));
                    return Ok(out);
                }
            }
        }
        Err(crate::error::Rejection::NoRoute) => {
            let normalised = trail.path.unwrap_or_default();
            let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
            let _ = writeln!(
                out,
                "no route   404: nothing matches host {host}, method {method}, path {normalised}"
            );
            for r in table
                .iter()
                .filter(|r| crate::proxy::path::under_prefix(&normalised, &r.path_prefix))
            {
                let _ = writeln!(
                    out,
                    "  near     {} ({}{}) serves only host {:?} and methods {:?}",
                    r.name,
                    r.host.as_deref().unwrap_or(""),
                    r.path_prefix,
                    r.host,
                    r.methods
                );
            }
            return Ok(out);
        }
        Err(rejection) => {
            rejected(&mut out, &rejection);
            return Ok(out);
        }
    };
    let upstream =
        crate::routes::upstream_uri(route, &normalised, uri.query(), uri.path_and_query())
            .map(|u| u.to_string())
            .unwrap_or_else(|| "(cannot be built: 400)".into());
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(" ")
        }
    };
    let _ = writeln!(out, "route      {}", route.name);
    for other in table
        .fitting(Some(&host), &method, &normalised)
        .filter(|r| !std::sync::Arc::ptr_eq(r, route))
    {
        let why = if other.path_prefix.len() < route.path_prefix.len() {
            "a shorter prefix"
        } else {
            "no host at the same prefix"
        };
        let _ = writeln!(
            out,
            "otherwise  {} ({}{}, {}) would match; loses by {why}",
            other.name,
            other.host.as_deref().unwrap_or(""),
            other.path_prefix,
            crate::routes::policy_text(other),
        );
    }
    if normalised != uri.path() {
        let _ = writeln!(
            out,
            "path       {normalised} (normalised from {})",
            uri.path()
        );
    } else {
        let _ = writeln!(out, "path       {normalised}");
    }
    let _ = writeln!(out, "upstream   {upstream}");
    let mode = match route.auth {
        AuthMode::Required => "required (401 without a valid token)",
        AuthMode::Optional => "optional (identity injected when a valid token is sent)",
        AuthMode::Public => "public (no token; identity headers still removed)",
    };
    let _ = writeln!(out, "auth       {mode}");
    let _ = writeln!(
        out,
        "requires   scopes: {}; roles: {}; any role of: {}",
        list(&route.require_scopes),
        list(&route.require_roles),
        list(&route.require_any_role)
    );
    let _ = writeln!(
        out,
        "token      {}",
        if route.forward_token {
            "forwarded to the upstream"
        } else {
            "not forwarded"
        }
    );
    let _ = writeln!(out, "cors       {}", cors_text(route.cors.as_ref()));
    let _ = writeln!(
        out,
        "timeouts   connect {:?}, response {:?}",
        route.connect_timeout, route.timeout
    );
    Ok(out)
}

/// The `cors` line of `routes explain`.
fn cors_text(policy: Option<&crate::cors::CorsPolicy>) -> String {
    match policy {
        Some(policy) => policy.describe(),
        None => "none (a preflight is handled like any OPTIONS request)".to_owned(),
    }
}

fn pool(config: &Config) -> anyhow::Result<PasswordPool> {
    let p = &config.auth.password;
    Ok(PasswordPool::new(
        HashParams {
            m_kib: p.memory_kib,
            t: p.iterations,
            p: p.parallelism,
        },
        PoolLimits {
            workers: 1,
            queue: 1,
        },
    )?)
}

async fn user(config: Config, action: UserAction) -> anyhow::Result<()> {
    let create = matches!(
        action,
        UserAction::Add {
            create_store: true,
            ..
        }
    );
    let store: Arc<dyn Store> = app::open_store_with(&config, create).await?;
    match action {
        UserAction::Add {
            name,
            roles,
            scopes,
            password_stdin,
            create_store: _,
        } => {
            let username = Username::parse(&name)?;
            check_account_values(&roles, &scopes)?;
            let password = read_password(password_stdin, config.auth.min_password_chars)?;
            let hash = pool(&config)?.hash(password).await?;
            store
                .create_user(NewUser {
                    username: username.clone(),
                    password_hash: hash,
                    roles,
                    scopes,
                })
                .await?;
            println!("added {}", username.as_str());
        }
        UserAction::Update {
            name,
            roles,
            scopes,
        } => {
            let username = Username::parse(&name)?;
            check_account_values(&roles, &scopes)?;
            store.set_roles_scopes(&username, roles, scopes).await?;
            println!("updated {}", username.as_str());
        }
        UserAction::Passwd {
            name,
            password_stdin,
        } => {
            let username = Username::parse(&name)?;
            let password = read_password(password_stdin, config.auth.min_password_chars)?;
            let hash = pool(&config)?.hash(password).await?;
            store.set_password(&username, &hash).await?;
            // After the new password is in place: a login with the old one in between is
            // ended too.
            let ended = store
                .end_sessions(&username, crate::clock::unix_now())
                .await?;
            // A new password is the usual answer to a lockout; keeping the lock would leave
            // the owner shut out of the account just reset for them.
            store.unlock(&username, crate::clock::unix_now()).await?;
            audit_cli(
                Event::SessionsRevoked,
                &username,
                Outcome::Success,
                "password changed",
            );
            println!(
                "password changed for {}; {ended} sessions ended",
                username.as_str()
            );
        }
        UserAction::Unlock { name } => {
            let username = Username::parse(&name)?;
            let unlocked = store.unlock(&username, crate::clock::unix_now()).await?;
            audit_cli(
                Event::Unlock,
                &username,
                if unlocked {
                    Outcome::Success
                } else {
                    Outcome::Nothing
                },
                "operator",
            );
            if unlocked {
                println!("unlocked {}", username.as_str());
            } else {
                println!("{} was not locked", username.as_str());
            }
        }
        UserAction::Disable { name } => {
            let username = Username::parse(&name)?;
            let now = crate::clock::unix_now();
            store.set_disabled(&username, true, now).await?;
            audit_cli(
                Event::SessionsRevoked,
                &username,
                Outcome::Success,
                "user disabled",
            );
            println!("disabled {name}; its sessions ended");
        }
        UserAction::Enable { name } => {
            let now = crate::clock::unix_now();
            store
                .set_disabled(&Username::parse(&name)?, false, now)
                .await?;
            println!("enabled {name}");
        }
        UserAction::List { json } => {
            let now = crate::clock::unix_now();
            for u in store.list_users().await? {
                let lockouts = store.lockouts(&u.username, now).await?;
                if json {
                    println!("{}", user_json(&u, &lockouts));
                    continue;
                }
                println!(
                    "{}\t{}\troles={}\tscopes={}\tcreated={}\tupdated={}{}",
                    u.username.as_str(),
                    if u.disabled { "disabled" } else { "enabled" },
                    u.roles.join(","),
                    u.scopes.join(","),
                    rfc3339_utc(u.created_at),
                    rfc3339_utc(u.updated_at),
                    lock_summary(&lockouts),
                );
            }
        }
        UserAction::Remove { name } => {
            let username = Username::parse(&name)?;
            let now = crate::clock::unix_now();
            store.remove_user(&username, now).await?;
            audit_cli(
                Event::SessionsRevoked,
                &username,
                Outcome::Success,
                "user removed",
            );
            println!("removed {name}; its sessions ended");
        }
        UserAction::Import {
            file,
            skip_existing,
        } => import_users(&*store, &config, &file, skip_existing).await?,
    }
    Ok(())
}

async fn keys(config: Config, action: KeysAction) -> anyhow::Result<()> {
    if config.auth.kek_file.is_some() {
        return stored_keys(config, action).await;
    }
    let a = &config.auth;
    let retain = key_retention(a);
    match action {
        KeysAction::Generate { .. } => {
            let ring = KeyRing::load_or_generate(&a.keys_dir, a.algorithm, retain)?;
            println!("current key {}", ring.signing().kid);
        }
        KeysAction::Rotate => {
            let kid = KeyRing::rotate(&a.keys_dir, a.algorithm, retain)?;
            println!("new signing key {kid}; send SIGHUP to running gateways to use it");
        }
        KeysAction::List { json } => {
            for k in KeyRing::list(&a.keys_dir)? {
                let state = match k.retired {
                    None if k.current => KeyState::Current,
                    None => KeyState::Active,
                    Some(t) => KeyState::Retired(t),
                };
                print_key(&k.kid, k.alg, k.created, None, state, json);
            }
        }
        KeysAction::NewKek { .. } => unreachable!("handled before the configuration is read"),
    }
    Ok(())
}

/// `keys ...` with the keys in the store (`[auth] kek_file`).
async fn stored_keys(config: Config, action: KeysAction) -> anyhow::Result<()> {
    let a = &config.auth;
    let retain = key_retention(a);
    let kek_file = a.kek_file.as_deref().context("no kek_file")?;
    let kek = Kek::load(kek_file)?;
    let create = matches!(action, KeysAction::Generate { create_store: true });
    let store: Arc<dyn Store> = app::open_store_with(&config, create).await?;
    let now = crate::clock::unix_now();
    match action {
        KeysAction::Generate { .. } => {
            let ring =
                keystore::load_or_create_ring(&*store, &kek, a.algorithm, retain, now).await?;
            println!("current key {}", ring.signing().kid);
        }
        KeysAction::Rotate => {
            // Every stored key must open with this KEK: a rotation under another one would
            // store a key the gateways cannot read.
            keystore::load_ring(&*store, &kek, retain, now).await?;
            let key =
                keystore::rotate(&*store, &kek, a.algorithm, a.publish_ahead, retain, now).await?;
            println!(
                "new signing key {}: published now, signs from {} (gateways on the store follow by themselves)",
                key.kid,
                rfc3339_utc(key.active_from)
            );
        }
        KeysAction::List { json } => {
            let ring = keystore::load_ring(&*store, &kek, retain, now).await?;
            let signing = &ring.signing().kid;
            for k in store
                .signing_keys(now.saturating_sub(retain.as_secs() as i64))
                .await?
            {
                let state = match k.retired_at {
                    _ if k.kid == *signing => KeyState::Current,
                    None if k.active_from > now => KeyState::Published(k.active_from),
                    None => KeyState::Active,
                    Some(t) if t > now => KeyState::SignsUntil(t),
                    Some(t) => KeyState::Retired(t),
                };
                print_key(
                    &k.kid,
                    k.alg,
                    k.created_at,
                    Some(k.active_from),
                    state,
                    json,
                );
            }
        }
        KeysAction::NewKek { .. } => unreachable!("handled before the configuration is read"),
    }
    Ok(())
}

/// Where a key is in its life, as `keys list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyState {
    /// The key the gateways sign with.
    Current,
    /// In the JWKS, signing from the time given.
    Published(i64),
    /// Verifies (and would sign, were it current).
    Active,
    /// Signs until the time given (a rotation's successor takes over then).
    SignsUntil(i64),
    /// Verifies only, retired at the time given.
    Retired(i64),
}

impl KeyState {
    /// The word `keys list --json` gives.
    fn name(self) -> &'static str {
        match self {
            KeyState::Current => "current",
            KeyState::Published(_) => "published",
            KeyState::Active => "active",
            KeyState::SignsUntil(_) => "retiring",
            KeyState::Retired(_) => "retired",
        }
    }

    fn retired_at(self) -> Option<i64> {
        match self {
            KeyState::SignsUntil(t) | KeyState::Retired(t) => Some(t),
            _ => None,
        }
    }
}

/// One line of `keys list`: tab-separated with RFC 3339 times, or a JSON object.
fn key_line(
    kid: &str,
    alg: crate::auth::keys::KeyAlg,
    created_at: i64,
    active_from: Option<i64>,
    state: KeyState,
    json: bool,
) -> String {
    if json {
        return serde_json::json!({
            "kid": kid,
            "alg": alg.name(),
            "state": state.name(),
            "created_at": created_at,
            "active_from": active_from,
            "retired_at": state.retired_at(),
        })
        .to_string();
    }
    let state = match state {
        KeyState::Current => "current".to_owned(),
        KeyState::Published(t) => format!("published, signs from {}", rfc3339_utc(t)),
        KeyState::Active => "active".to_owned(),
        KeyState::SignsUntil(t) => format!("signs until {}", rfc3339_utc(t)),
        KeyState::Retired(t) => format!("retired at {}", rfc3339_utc(t)),
    };
    format!("{kid}\t{alg}\tcreated {}\t{state}", rfc3339_utc(created_at))
}

fn print_key(
    kid: &str,
    alg: crate::auth::keys::KeyAlg,
    created_at: i64,
    active_from: Option<i64>,
    state: KeyState,
    json: bool,
) {
    println!(
        "{}",
        key_line(kid, alg, created_at, active_from, state, json)
    );
}

/// One user of `user list --json`: the fields `client list --json` has for a client, and the
/// lockouts running now.
fn user_json(u: &crate::store::User, lockouts: &Lockouts) -> serde_json::Value {
    let networks: Vec<serde_json::Value> = lockouts
        .networks
        .iter()
        .map(|(network, until)| serde_json::json!({"network": network, "until": until}))
        .collect();
    serde_json::json!({
        "username": u.username.as_str(),
        "roles": u.roles,
        "scopes": u.scopes,
        "disabled": u.disabled,
        "created_at": u.created_at,
        "updated_at": u.updated_at,
        "locked_everywhere_until": lockouts.everywhere,
        "locked_networks": networks,
    })
}

/// `user import`: every line judged first, then one transaction; a refused line or (without
/// `--skip-existing`) a taken name writes nothing.
async fn import_users(
    store: &dyn Store,
    config: &Config,
    file: &Path,
    skip_existing: bool,
) -> anyhow::Result<()> {
    let p = &config.auth.password;
    let configured = HashParams {
        m_kib: p.memory_kib,
        t: p.iterations,
        p: p.parallelism,
    };
    let parsed = crate::auth::import::read_file(file, &configured)?;
    if !parsed.refused.is_empty() {
        for refusal in &parsed.refused {
            println!("refused   {refusal}");
        }
        let n = parsed.refused.len();
        println!("imported 0, skipped 0, refused {n}");
        bail!(
            "{n} lines of {} refused; nothing was imported",
            file.display()
        );
    }
    let lines: std::collections::HashMap<Username, usize> = parsed
        .users
        .iter()
        .map(|e| (e.user.username.clone(), e.line))
        .collect();
    let line_of = |name: &Username| lines.get(name).copied().unwrap_or(0);
    let users = parsed.users.into_iter().map(|e| e.user).collect();
    let outcome = store.import_users(users, skip_existing).await?;
    if !skip_existing && !outcome.existing.is_empty() {
        for name in &outcome.existing {
            println!(
                "refused   line {}: user {} already exists",
                line_of(name),
                name.as_str()
            );
        }
        let n = outcome.existing.len();
        println!("imported 0, skipped 0, refused {n}");
        bail!(
            "{n} users of {} already exist; nothing was imported (--skip-existing imports the others and leaves those as they are)",
            file.display()
        );
    }
    for name in &outcome.existing {
        println!(
            "skipped   line {}: user {} already exists, left as it is",
            line_of(name),
            name.as_str()
        );
    }
    println!(
        "imported {}, skipped {}, refused 0",
        outcome.added,
        outcome.existing.len()
    );
    Ok(())
}

/// An operator's action in the audit trail (client `cli`).
fn audit_cli(event: Event, user: &Username, outcome: Outcome, reason: &str) {
    crate::auth::audit::record(
        event,
        Some(user.as_str()),
        Source::Cli,
        outcome,
        reason,
        None,
    );
}

/// A client name in canonical form (the CLI refuses to silently fold one, as it would name
/// another client than the operator typed).
fn client_name(name: &str) -> anyhow::Result<Username> {
    let parsed = Username::parse(name)?;
    if parsed.as_str() != name {
        bail!(
            "client name {name:?} is not canonical: use {:?}",
            parsed.as_str()
        );
    }
    Ok(parsed)
}

/// The public keys in `path` for a private_key_jwt client, checked (see
/// [`crate::auth::assertion::check_client_jwks`]): a JWKS, or one JWK made into one.
fn read_client_jwks(path: &std::path::Path) -> anyhow::Result<String> {
    use crate::auth::assertion::check_client_jwks;
    use crate::auth::issuers::MAX_JWKS_BYTES;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_JWKS_BYTES as u64 + 1).read_to_string(&mut text))
        .with_context(|| format!("reading --jwks-file {}", path.display()))?;
    // Strict (duplicate members refused) before anything is re-serialised.
    let value = crate::auth::claims::parse_object(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("--jwks-file {}: not a JSON object: {e}", path.display()))?;
    let text = match value.contains_key("kty") {
        true => serde_json::json!({ "keys": [value] }).to_string(),
        false => serde_json::Value::Object(value).to_string(),
    };
    let keys =
        check_client_jwks(&text).with_context(|| format!("--jwks-file {}", path.display()))?;
    tracing::debug!(keys, "client key set checked");
    Ok(text)
}

async fn client(config: Config, action: ClientAction) -> anyhow::Result<()> {
    use crate::auth::clients;
    use crate::auth::settings::MAX_CLIENT_TOKEN_TTL;
    let create = matches!(
        action,
        ClientAction::Add {
            create_store: true,
            ..
        }
    );
    let store: Arc<dyn Store> = app::open_store_with(&config, create).await?;
    let now = crate::clock::unix_now();
    // Every token a client was issued has expired by then (client_token_ttl is at most this).
    let revoke_until = now.saturating_add(MAX_CLIENT_TOKEN_TTL.as_secs() as i64);
    match action {
        ClientAction::Add {
            name,
            scopes,
            audiences,
            mut grants,
            jwks_file,
            jwks_url,
            create_store: _,
        } => {
            let name = client_name(&name)?;
            check_account_values(&[], &scopes)?;
            check_account_values(&[], &audiences).context("invalid --audience")?;
            if grants.is_empty() {
                grants.push(clients::GRANT_CLIENT_CREDENTIALS.to_owned());
            }
            for g in &grants {
                if !clients::GRANTS.contains(&g.as_str()) {
                    bail!("--grant {g:?}: use client_credentials, password or introspection");
                }
            }
            grants.dedup();
            let jwks = jwks_file.as_deref().map(read_client_jwks).transpose()?;
            if let Some(url) = &jwks_url {
                crate::auth::assertion::check_jwks_url(url).context("invalid --jwks-url")?;
            }
            let auth_method = match (&jwks, &jwks_url) {
                (None, None) => ClientAuthMethod::Secret,
                _ => ClientAuthMethod::PrivateKeyJwt,
            };
            // A key client's digest is of a secret nobody is shown, and is never checked.
            let secret = clients::new_secret();
            store
                .create_client(
                    crate::store::NewClient {
                        secret_digest: clients::secret_digest(&name, &secret),
                        name: name.clone(),
                        scopes,
                        audiences,
                        grants,
                        auth_method,
                        jwks,
                        jwks_url,
                        epoch: clients::new_epoch(),
                    },
                    now,
                )
                .await?;
            println!("added client {}", name.as_str());
            match auth_method {
                ClientAuthMethod::Secret => {
                    println!("client_secret: {}", secret.as_str());
                    println!("(shown once: only a digest is stored)");
                }
                ClientAuthMethod::PrivateKeyJwt => {
                    println!("authenticates by private_key_jwt with its registered keys");
                }
            }
        }
        ClientAction::List { json } => {
            for c in store.list_clients().await? {
                if json {
                    let line = serde_json::json!({
                        "client_id": c.name.as_str(),
                        "scopes": c.scopes,
                        "audiences": c.audiences,
                        "grants": c.grants,
                        "auth_method": c.auth_method.as_str(),
                        "token_endpoint_auth_methods": c.auth_method.rfc7591_names(),
                        "jwks": c.jwks.is_some(),
                        "jwks_url": c.jwks_url,
                        "disabled": c.disabled,
                        "created_at": c.created_at,
                        "rotated_at": c.rotated_at,
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{}\t{}\tauth={}\tscopes={}\taudiences={}\tgrants={}\tcreated={}\trotated={}",
                        c.name.as_str(),
                        if c.disabled { "disabled" } else { "enabled" },
                        c.auth_method.as_str(),
                        c.scopes.join(","),
                        c.audiences.join(","),
                        c.grants.join(","),
                        rfc3339_utc(c.created_at),
                        rfc3339_utc(c.rotated_at),
                    );
                }
            }
        }
        ClientAction::RotateSecret { name } => {
            let name = client_name(&name)?;
            if let Some(c) = store.client(&name).await?
                && c.auth_method == ClientAuthMethod::PrivateKeyJwt
            {
                bail!(
                    "client {} authenticates by private_key_jwt and has no secret",
                    name.as_str()
                );
            }
            let secret = clients::new_secret();
            store
                .rotate_client_secret(&name, clients::secret_digest(&name, &secret), now)
                .await?;
            println!("new secret for client {}", name.as_str());
            println!("client_secret: {}", secret.as_str());
            println!("(shown once: the old secret no longer works)");
        }
        ClientAction::Disable { name } => {
            let name = client_name(&name)?;
            store
                .set_client_disabled(&name, true, "", revoke_until)
                .await?;
            println!(
                "disabled client {}; its access tokens are refused",
                name.as_str()
            );
        }
        ClientAction::Enable { name } => {
            let name = client_name(&name)?;
            store
                .set_client_disabled(&name, false, &clients::new_epoch(), revoke_until)
                .await?;
            println!("enabled client {}", name.as_str());
        }
        ClientAction::Remove { name } => {
            let name = client_name(&name)?;
            store.remove_client(&name, revoke_until).await?;
            println!(
                "removed client {}; its access tokens are refused",
                name.as_str()
            );
        }
    }
    Ok(())
}

async fn sessions(config: Config, action: SessionsAction) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = app::open_store_with(&config, false).await?;
    let now = crate::clock::unix_now();
    match action {
        SessionsAction::List { user } => {
            let user = user.as_deref().map(Username::parse).transpose()?;
            let sessions = store.sessions(user.as_ref(), now).await?;
            println!("session\tuser\tstarted\tlast refreshed\texpires\tclient\tuser agent");
            for s in sessions {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    s.family,
                    s.username.as_str(),
                    rfc3339_utc(s.created_at),
                    rfc3339_utc(s.last_used_at),
                    rfc3339_utc(s.expires_at),
                    s.origin.client_addr.as_deref().unwrap_or("-"),
                    s.origin.user_agent.as_deref().unwrap_or("-"),
                );
            }
        }
        SessionsAction::Revoke { user, family } => {
            let user = Username::parse(&user)?;
            match family {
                Some(family) => {
                    if !store.revoke_session(&user, &family, now).await? {
                        bail!("{} has no live session {family}", user.as_str());
                    }
                    let until = now + crate::auth::revocation::token_horizon(&config.auth);
                    store.revoke_id(&family, until).await?;
                    crate::auth::audit::record(
                        Event::SessionsRevoked,
                        Some(user.as_str()),
                        Source::Cli,
                        Outcome::Success,
                        "operator: one session",
                        Some(&family),
                    );
                    println!("ended session {family} of {}", user.as_str());
                }
                None => {
                    let ended = store.end_sessions(&user, now).await?;
                    audit_cli(
                        Event::SessionsRevoked,
                        &user,
                        Outcome::Success,
                        "operator: every session",
                    );
                    println!(
                        "ended {ended} sessions of {}; its access tokens issued until now are refused",
                        user.as_str()
                    );
                }
            }
        }
    }
    Ok(())
}

/// The lockouts `user list` shows: the one everywhere, and how many client networks are locked
/// out (the last of their ends; `user unlock` lifts them all).
fn lock_summary(lockouts: &Lockouts) -> String {
    let mut shown = String::new();
    if let Some(until) = lockouts.everywhere {
        shown.push_str(&format!("\tlocked everywhere until {}", rfc3339_utc(until)));
    }
    if let Some(last) = lockouts.networks.iter().map(|(_, until)| *until).max() {
        let n = lockouts.networks.len();
        let networks = if n == 1 { "network" } else { "networks" };
        shown.push_str(&format!(
            "\t{n} {networks} locked until {}",
            rfc3339_utc(last)
        ));
    }
    shown
}

/// Unix seconds as RFC 3339 in UTC. UTC rather than local time: no time crate is a dependency,
/// and the zone database is not worth one for a column in `user list`.
fn rfc3339_utc(unix: i64) -> String {
    // Days to civil date: H. Hinnant, "chrono-Compatible Low-Level Date Algorithms".
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// From the terminal (asked twice, not echoed) or the first line of stdin; never from argv.
fn read_password(from_stdin: bool, min_chars: usize) -> anyhow::Result<Zeroizing<String>> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(4096)
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        let first = Zeroizing::new(rpassword::prompt_password("Password: ")?);
        let second = Zeroizing::new(rpassword::prompt_password("Again: ")?);
        if first != second {
            bail!("the passwords differ");
        }
        first
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    // The same floor registration applies: an operator-set password is no weaker.
    if password.chars().count() < min_chars {
        bail!("the password is shorter than {min_chars} characters (auth.min_password_chars)");
    }
    if password.len() > crate::auth::password::MAX_PASSWORD_BYTES {
        bail!("the password is longer than 1024 bytes");
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_session_id_starting_with_a_dash_is_an_id_not_an_option() {
        use clap::Parser as _;
        let cli =
            super::Cli::try_parse_from(["gatehouse", "sessions", "revoke", "alice", "-TCZN5Hg"])
                .expect("parses");
        let super::Command::Sessions { action } = cli.command else {
            panic!("not a sessions command");
        };
        let super::SessionsAction::Revoke { family, .. } = action else {
            panic!("not a revoke");
        };
        assert_eq!(family.as_deref(), Some("-TCZN5Hg"));
    }

    /// Every subcommand (at any depth) and every argument, positional ones included, has a
    /// help text: `--help`, the completions and the man pages are generated from them.
    #[test]
    fn every_subcommand_and_argument_has_a_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if command.get_about().is_none() && command.get_long_about().is_none() {
                missing.push(format!("{path}: subcommand without about"));
            }
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: argument {} without help", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut command = <super::Cli as clap::CommandFactory>::command();
        command.build();
        let mut missing = Vec::new();
        walk(&command, "gatehouse", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    fn subcommand_names() -> Vec<String> {
        let command = <super::Cli as clap::CommandFactory>::command();
        command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect()
    }

    #[test]
    fn completions_name_every_subcommand_in_every_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
            clap_complete::Shell::Elvish,
            clap_complete::Shell::PowerShell,
        ] {
            let script = String::from_utf8(super::completions(shell)).unwrap();
            for name in subcommand_names()
                .iter()
                .map(String::as_str)
                .chain(["import", "skip-existing"])
            {
                assert!(script.contains(name), "{shell}: no {name}");
            }
        }
    }

    #[test]
    fn the_man_page_names_every_subcommand_and_each_gets_a_page() {
        let page = String::from_utf8(super::man_page().unwrap()).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH gatehouse"),
            "{page}"
        );
        for name in subcommand_names() {
            let roff = name.replace('-', "\\-");
            assert!(page.contains(&roff), "no {name} in\n{page}");
        }
        let dir = tempfile::tempdir().unwrap();
        super::write_man_pages(dir.path()).unwrap();
        let import = std::fs::read_to_string(dir.path().join("gatehouse-user-import.1")).unwrap();
        assert!(import.contains("password_hash"), "{import}");
        assert!(import.contains("skip\\-existing"), "{import}");
        assert!(dir.path().join("gatehouse.1").is_file());
    }

    /// The limits `user import --help` states are the ones the importer applies.
    #[test]
    fn the_import_help_states_the_importers_limits() {
        use crate::auth::import::{FORMAT_HELP, MAX_IMPORT_BYTES, MAX_IMPORT_USERS};
        use crate::auth::password::MAX_BCRYPT_COST;
        assert!(FORMAT_HELP.contains(&format!("At most {MAX_IMPORT_USERS} users")));
        assert!(FORMAT_HELP.contains(&format!("{} MiB", MAX_IMPORT_BYTES / 1024 / 1024)));
        assert!(FORMAT_HELP.contains(&format!("cost\n                 at most {MAX_BCRYPT_COST}")));
    }

    #[test]
    fn keys_list_lines_have_rfc3339_times_and_json_has_them_as_numbers() {
        use super::{KeyState, key_line};
        use crate::auth::keys::KeyAlg;
        let text = key_line(
            "k1",
            KeyAlg::EdDSA,
            0,
            None,
            KeyState::Retired(86_400),
            false,
        );
        assert_eq!(
            text,
            "k1\tEdDSA\tcreated 1970-01-01T00:00:00Z\tretired at 1970-01-02T00:00:00Z"
        );
        let json: serde_json::Value = serde_json::from_str(&key_line(
            "k2",
            KeyAlg::ES256,
            5,
            Some(60),
            KeyState::Published(60),
            true,
        ))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kid": "k2", "alg": "ES256", "state": "published", "created_at": 5, "active_from": 60, "retired_at": null})
        );
    }

    use super::{lock_summary, rfc3339_utc, summary};
    use crate::config::Config;
    use crate::store::Lockouts;

    #[test]
    fn the_summary_names_the_forward_auth_endpoint_only_when_it_is_on() {
        let off = Config::from_toml("").unwrap();
        assert!(!summary(&off).contains("forward"));
        let on = Config::from_toml(
            "[forward_auth]\ntrusted_peers = [\"10.0.0.0/8\", \"::1\"]\nmax_age = \"30s\"\n",
        )
        .unwrap();
        assert!(
            summary(&on).contains(
                "forward   /auth/verify for 10.0.0.0/8, ::1/128, decisions cacheable 30s"
            ),
            "{}",
            summary(&on)
        );
    }

    #[test]
    fn the_summary_names_the_span_collector_and_sampling_ratio_only_when_tracing_is_on() {
        let off = Config::from_toml("").unwrap();
        assert!(!summary(&off).contains("tracing"), "{}", summary(&off));
        let on = Config::from_toml(
            "[tracing]\nendpoint = \"http://otel.internal:4318/v1/traces\"\nsampling_ratio = 0.25\n",
        )
        .unwrap();
        assert!(
            summary(&on).contains(
                "tracing   spans to http://otel.internal:4318/v1/traces, sampling ratio 0.25\n"
            ),
            "{}",
            summary(&on)
        );
    }

    #[test]
    fn lock_times_print_as_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn user_list_shows_the_lock_everywhere_and_how_many_networks_are_locked() {
        assert_eq!(lock_summary(&Lockouts::default()), "");
        let one = Lockouts {
            everywhere: None,
            networks: vec![("192.0.2.0/24".into(), 0)],
        };
        assert_eq!(
            lock_summary(&one),
            "\t1 network locked until 1970-01-01T00:00:00Z"
        );
        let both = Lockouts {
            everywhere: Some(86_400),
            networks: vec![("192.0.2.0/24".into(), 60), ("2001:db8::/64".into(), 0)],
        };
        assert_eq!(
            lock_summary(&both),
            "\tlocked everywhere until 1970-01-02T00:00:00Z\
             \t2 networks locked until 1970-01-01T00:01:00Z"
        );
    }
}
