//! The state interface: users, refresh tokens, revocations.

pub mod sqlite;
