//! Identity: passwords, keys, tokens and their verification.

pub mod assertion;
pub mod audit;
pub mod authenticator;
pub mod claims;
pub mod clients;
pub mod discovery;
pub mod endpoints;
pub mod grants;
pub mod import;
pub mod introspection;
pub mod issuers;
pub mod keys;
pub mod keystore;
pub mod password;
pub mod paths;
pub mod revocation;
pub mod runtime;
pub mod service;
pub mod session;
pub mod settings;
pub mod signin;
pub mod tokens;
pub mod username;
pub mod verify;
