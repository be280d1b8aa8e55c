//! Identity: passwords, keys, tokens and their verification.

pub mod claims;
pub mod issuers;
pub mod keys;
pub mod password;
pub mod tokens;
pub mod username;
pub mod verify;
