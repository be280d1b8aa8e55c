//! gatehouse: a reverse-proxy authentication gateway.
//!
//! # Layout
//! Every arrow points down: no module imports one listed above it (a parent and its own
//! submodules excepted). `tests/it/layout.rs` checks this table against the code.
//!
//! | module | owns |
//! |---|---|
//! | `cli` | subcommands: `serve`, `check-config`, `demo`, `user`, `sessions`, `keys`, `client` |
//! | `demo` | the one-command quick start: echo upstream, gateway, seeded user |
//! | `app` | assembles store, auth service, pipeline and listener; signals |
//! | `app::reload` | what a reload may take (a settled file, no restart-only change) and the line saying what it changed |
//! | `app::preflight` | what `serve`, `check-config` and reloads demand beyond validation: routes, every named file usable, all problems at once |
//! | `gateway` | the request pipeline, its stages listed in order; runs them, logs, counts |
//! | `server` | listeners, accept loop, TLS handshake, connection limits, graceful shutdown |
//! | `gateway::forward` | stages 8-9: identity injected, credentials dropped, the upstream's `Host` decided, sent upstream, streamed back |
//! | `gateway::forward_auth` | the forward-auth endpoint: the original request from a trusted fronting proxy's headers, decided by `Router::decide`, answered 200 with identity headers or refused |
//! | `gateway::decide` | stages 1-7 into a `Decision`, for the proxy path and `routes explain` alike |
//! | `gateway::csrf` | stage 6's refusal of cross-site state-changing requests authenticated by a cookie |
//! | `gateway::redirects` | stage 9's rewriting of `Location`, `Content-Location` and `Refresh` from the upstream's address to the public one |
//! | `auth::service` | builds the authenticator and the grants; runs the endpoints apart; key reload |
//! | `auth::keystore` | signing keys shared through the store: the KEK file, sealed private keys, first key, rotation |
//! | `auth::import` | importing users with argon2 or bcrypt hashes |
//! | `store::sqlite` | the embedded SQLite backend |
//! | `store::postgres` | the shared PostgreSQL backend: pool, migrations, locks, change notifications |
//! | `store::postgres::settings` | the `[store.postgres]` settings: a URL without a password, the password from a file or `PGPASSFILE` |
//! | `store::postgres::testing` | a private PostgreSQL server per test process (tests only) |
//! | `store::contract` | the backend-neutral tests every store backend must pass (tests only) |
//! | `limits::tests` | the limits in process and shared through a private `redis-server` (tests only) |
//! | `cors::tests` | the CORS policy and its settings, against the example config too (tests only) |
//! | `trace::tests` | trace-context parsing, the sampling rule and the `[tracing]` settings, against the example config too (tests only) |
//! | `error` | the one mapping from errors to HTTP responses |
//! | `auth::endpoints` | `/auth/*` and JWKS over HTTP: parsing requests, rendering answers |
//! | `auth::discovery` | the RFC 8414 and OpenID discovery documents: what the gateway supports, its endpoints' absolute URLs |
//! | `auth::introspection` | RFC 7662 token introspection: the calling client authenticated and registered for it, the token decided by the proxy path's verification and revocations |
//! | `auth::signin` | the browser's sign-in and sign-out pages: escaped HTML and the headers that keep it out of frames and caches |
//! | `auth::signin::return_to` | where a browser may be sent after signing in (no open redirect) |
//! | `auth::grants` | the endpoint path: password, refresh and client-credentials grants, client authentication, logout, revoke, register, limits |
//! | `auth::authenticator` | the proxy path: the presented token, verify cache, refusals, revocations |
//! | `auth::revocation` | revoked token and session ids and session cuts, following the store's change feed |
//! | `auth::session` | browser sessions: the cookie's value and digest, the access tokens held for them and their renewal |
//! | `config` | raw TOML/env configuration validated into `Config` |
//! | `config::source` | the config file read whole and bounded; the line and column of a key |
//! | `trace` | W3C trace context: `traceparent`/`tracestate` read, decided (sampling is ours) and forwarded; the `[tracing]` settings |
//! | `trace::export` | spans over OTLP/HTTP: a bounded queue, batches, every wait bounded, on the gateway's own client |
//! | `routes` | the route table: the `[[routes]]` settings, their validation, the precedence rule and matching |
//! | `proxy` | forwarding with the pooled upstream client, WebSocket tunnels; the `[upstream]` settings |
//! | `proxy::pool` | the upstream connection pool on hyper's client connections |
//! | `auth::clients` | machine clients' credentials: generated secrets, their digest and check, client epochs, Basic, body and assertion client authentication |
//! | `auth::assertion` | `private_key_jwt`: client assertions verified against the client's registered keys (inline or fetched JWKS), the checks of a registered key set |
//! | `auth::assertion::tests` | the assertion rules, each broken alone (tests only) |
//! | `auth::tokens` | minting access tokens and refresh tokens |
//! | `auth::audit` | the audit trail: one event per login, refresh, logout, revocation, lockout, unlock, cut |
//! | `store` | the state interface, by kind of state; the `[store]` settings |
//! | `auth::settings` | the `[auth]` settings, with the subsections other modules own assembled in |
//! | `auth::paths` | the gateway's endpoints and where they live: the `[auth.paths]` settings, the path table stage 4 looks up |
//! | `auth::username` | canonical usernames |
//! | `cors` | CORS: the `[routes.cors]` and `[auth.cors]` settings, preflight verdicts, `Access-Control-*` response headers |
//! | `auth::session::settings` | the `[auth.session]` settings: on or off, the cookie's name, idle and absolute lifetime |
//! | `gateway::forward_auth::settings` | the `[forward_auth]` settings: trusted fronting proxies, the decision cache's lifetime |
//! | `limits` | login rate limits per address and per user (the lockout state lives in the store); the `[auth.limits]` settings |
//! | `limits::shared` | the same limits shared by several gateways: GCRA in one Redis script |
//! | `limits::shared::testing` | private `redis-server`s for tests, stopped when the test process ends (tests only) |
//! | `limits::shared::tests` | the shared limits against a private `redis-server` (tests only) |
//! | `metrics` | Prometheus recorder and the events it counts; the series of removed routes left out |
//! | `metrics::process` | the standard `process_*` metrics, read from `/proc/self` at each scrape |
//! | `logging` | tracing subscriber setup; the `[log]` settings |
//! | `auth::password` | argon2id/bcrypt hashing on a bounded blocking pool; the `[auth.password]` settings |
//! | `auth::runtime` | the endpoint runtime: its own thread (and priority) for login work |
//! | `proxy::headers` | hop-by-hop removal, identity scrubbing, forwarding headers; the `[auth.identity_headers]` settings |
//! | `proxy::path` | request-path normalisation |
//! | `auth::issuers` | trusted external issuers: their key sets, fetched and refreshed, and their policies; the `[[auth.trusted_issuers]]` settings |
//! | `auth::verify` | the access-token validation policy |
//! | `auth::keys` | signing and verification keys, rotation, JWKS |
//! | `auth::claims` | typed token claims and the verified identity |
//! | `origin` | web origins (`scheme://host[:port]`) parsed and compared in canonical form |
//! | `clock` | unix seconds, and the monotonic clock of the limiters that tests move |
//! | `body` | the response body type and small constructors |
//! | `config::value` | what every settings section is built from: `ConfigError`, durations, shared validators |

pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cors;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod store;
pub mod trace;
