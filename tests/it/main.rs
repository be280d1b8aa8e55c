//! Integration tests: real gateways, upstreams and clients on 127.0.0.1 port 0.

mod support;

mod browser;
mod chromium;
mod cli;
mod client_assertion;
mod clients;
mod cluster;
mod cors;
mod discovery;
mod fastapi;
mod forward_auth;
mod identity;
mod introspection;
mod issuers;
mod layout;
mod limits;
mod listener;
mod ops;
mod packaging;
mod parking;
mod proxy;
mod redirects;
mod reload;
mod security;
mod sessions;
mod tls;
mod trace_context;
mod verify;
