//! The audit trail: one structured log event per login, refresh, logout, revocation, lockout,
//! unlock and session cut, under the tracing target [`TARGET`], saying who, from where, the
//! outcome and why, so "did alice log in, and from where?" has an answer and fail2ban has a line
//! to match. Never a password or a token: at most a session id, which authorises nothing.
//!
//! Fields: `event` (see [`Event::name`]), `user` (the canonical name, or what the client typed made
//! safe to print, or `-`), `client` (the client address, `cli` for the command line), `outcome`
//! (`success`, `failure`, `refused`, `nothing`) and `reason`, plus `session` where one is known.

use std::fmt;
use std::net::IpAddr;

use crate::auth::username::Username;

/// The tracing target of every audit event (`GATEHOUSE_LOG=gatehouse::audit=info` selects them).
pub const TARGET: &str = "gatehouse::audit";

/// Longest user name written as typed (canonical names are at most 64 bytes too).
const MAX_SHOWN_USER: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Login,
    Refresh,
    Logout,
    Revoke,
    Lockout,
    Unlock,
    /// A user's sessions cut by an operator (disable, remove, passwd, `sessions revoke`).
    SessionsRevoked,
    /// A machine client's token request (`client_credentials`); `user` is the client's name.
    ClientToken,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Login => "login",
            Event::Refresh => "refresh",
            Event::Logout => "logout",
            Event::Revoke => "revoke",
            Event::Lockout => "lockout",
            Event::Unlock => "unlock",
            Event::SessionsRevoked => "sessions_revoked",
            Event::ClientToken => "client_token",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Wrong credentials, an invalid token.
    Failure,
    /// Stopped before the credentials were judged: a limit, a lockout, a busy pool.
    Refused,
    /// Nothing to act on (a logout or revocation of an unknown token).
    Nothing,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Refused => "refused",
            Outcome::Nothing => "nothing",
        }
    }
}

/// Where an audited action came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Client(IpAddr),
    Cli,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Client(addr) => addr.fmt(f),
            Source::Cli => f.write_str("cli"),
        }
    }
}

/// A name as the client typed it, safe for a log line: the canonical form when it parses, else
/// at most [`MAX_SHOWN_USER`] bytes of visible ASCII with anything else as `?` (no line breaks,
/// no escapes a terminal or a log parser would act on).
pub fn shown_user(raw: &str) -> String {
    match Username::parse(raw) {
        Ok(name) => name.as_str().to_owned(),
        Err(_) => raw
            .bytes()
            .take(MAX_SHOWN_USER)
            .map(|b| match b {
                b'!'..=b'~' => char::from(b),
                _ => '?',
            })
            .collect(),
    }
}

/// Writes one audit event.
pub fn record(
    event: Event,
    user: Option<&str>,
    source: Source,
    outcome: Outcome,
    reason: &str,
    session: Option<&str>,
) {
    let user = user.unwrap_or("-");
    let session = session.unwrap_or("-");
    let (event, outcome) = (event.name(), outcome.name());
    match outcome {
        "success" | "nothing" => tracing::info!(
            target: TARGET, event, user, client = %source, outcome, reason, session, "audit"
        ),
        _ => tracing::warn!(
            target: TARGET, event, user, client = %source, outcome, reason, session, "audit"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_name_cannot_forge_a_log_line() {
        assert_eq!(shown_user("Alice"), "alice");
        assert_eq!(
            shown_user("x\n2026 event=login user=admin outcome=success"),
            "x?2026?event=login?user=admin?outcome=success"
        );
        assert_eq!(shown_user("\u{1b}[2J"), "?[2J");
        assert_eq!(shown_user(&"a b".repeat(100)).len(), MAX_SHOWN_USER);
    }
}
