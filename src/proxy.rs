//! Forwarding requests to upstreams.

pub mod headers;
pub mod path;
