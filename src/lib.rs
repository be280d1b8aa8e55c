//! gatehouse: a reverse-proxy authentication gateway.
//!
//! # Layout
//! Every arrow points down: no module imports one listed above it.
//!
//! | module | owns |
//! |---|---|
//! | `app` | assembles store, auth service, pipeline and listener; signals |
//! | `cli` | subcommands: `serve`, `check-config`, `demo`, `user`, `keys` |
//! | `demo` | the one-command quick start: echo upstream, gateway, seeded user |
//! | `server` | listeners, accept loop, TLS handshake, connection limits, graceful shutdown |
//! | `gateway` | the request pipeline, its stages listed in order; runs them, logs, counts |
//! | `gateway::forward` | stages 8-9: identity injected, credentials dropped, sent upstream, streamed back |
//! | `gateway::decide` | stages 1-7 into a `Decision`, for the proxy path and `routes explain` alike |
//! | `auth::service` | builds the authenticator and the grants; runs the endpoints apart; key reload |
//! | `auth::endpoints` | `/auth/*` and JWKS over HTTP: parsing requests, rendering answers |
//! | `auth::grants` | the endpoint path: password and refresh grants, logout, revoke, register, limits |
//! | `auth::authenticator` | the proxy path: the presented token, verify cache, refusals, revocations |
//! | `auth::import` | importing users with argon2 or bcrypt hashes |
//! | `proxy` | forwarding with the pooled upstream client, WebSocket tunnels |
//! | `proxy::headers` | hop-by-hop removal, identity scrubbing, forwarding headers |
//! | `proxy::path` | request-path normalisation |
//! | `routes` | the route table and matching |
//! | `auth::verify` | the access-token validation policy |
//! | `auth::tokens` | minting access tokens and refresh tokens |
//! | `auth::keys` | signing and verification keys, rotation, JWKS |
//! | `auth::claims` | typed token claims and the verified identity |
//! | `auth::password` | argon2id/bcrypt hashing on a bounded blocking pool |
//! | `auth::username` | canonical usernames |
//! | `store` | the state interface; `store::sqlite` the embedded backend |
//! | `limits` | login rate limits and lockout |
//! | `config` | raw TOML/env configuration validated into `Config` |
//! | `error` | the one mapping from errors to HTTP responses |
//! | `metrics` | Prometheus recorder and the events it counts |
//! | `logging` | tracing subscriber setup |
//! | `clock` | unix seconds, and the monotonic clock of the limiters that tests move |
//! | `body` | the response body type and small constructors |

pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod store;
