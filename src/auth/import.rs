//! `gatehouse user import`: users with existing password hashes (argon2 PHC strings, or bcrypt
//! `$2a$`/`$2b$`/`$2y$` as written by passlib in FastAPI apps) from JSON lines or CSV.

use std::path::Path;

use serde::Deserialize;

use crate::auth::claims::check_account_values;
use crate::auth::username::{Username, UsernameError};
use crate::store::NewUser;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonUser {
    username: String,
    password_hash: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Reads every user of the file, or fails naming the first bad line; nothing is half-imported.
pub fn read_file(path: &Path) -> Result<Vec<NewUser>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// JSON lines when the first non-empty line starts with `{`, CSV otherwise (a header line
/// starting with `username` is skipped).
pub fn parse(text: &str) -> Result<Vec<NewUser>, ImportError> {
    let json = text.trim_start().starts_with('{');
    let mut users = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') || (!json && raw.starts_with("username")) {
            continue;
        }
        let err = |reason: String| ImportError::Line { line, reason };
        let user = if json {
            serde_json::from_str::<JsonUser>(raw).map_err(|e| err(e.to_string()))?
        } else {
            let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
            if fields.len() < 2 || fields.len() > 4 {
                return Err(err(
                    "expected username,password_hash[,roles[,scopes]]".into()
                ));
            }
            let list = |i: usize| -> Vec<String> {
                fields
                    .get(i)
                    .map(|f| f.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default()
            };
            JsonUser {
                username: fields[0].to_owned(),
                password_hash: fields[1].to_owned(),
                roles: list(2),
                scopes: list(3),
            }
        };
        let username = Username::parse(&user.username)
            .map_err(|e: UsernameError| err(format!("username {:?}: {e}", user.username)))?;
        check_hash(&user.password_hash).map_err(|r| err(r.to_owned()))?;
        check_account_values(&user.roles, &user.scopes).map_err(|e| err(e.to_string()))?;
        users.push(NewUser {
            username,
            password_hash: user.password_hash,
            roles: user.roles,
            scopes: user.scopes,
        });
    }
    Ok(users)
}

/// Accepts only hash formats the login path can verify.
fn check_hash(hash: &str) -> Result<(), &'static str> {
    if hash.starts_with("$argon2") {
        return argon2::password_hash::phc::PasswordHash::new(hash)
            .map(|_| ())
            .map_err(|_| "malformed argon2 PHC string");
    }
    let bcrypt_prefix = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    if bcrypt_prefix && hash.len() == 60 && hash[4..6].bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    Err("password_hash must be an argon2 PHC string or a $2a$/$2b$/$2y$ bcrypt hash")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2b$12$EixZaYVK1fsbw1ZfbX3OXePaWxn96p36WQoeG6Lruj3vjPGga31lW";

    #[test]
    fn csv_and_json_lines_import() {
        let csv = format!("username,password_hash,roles,scopes\nAlice,{BCRYPT},admin user,read\n");
        let users = parse(&csv).unwrap();
        assert_eq!(users[0].username.as_str(), "alice");
        assert_eq!(users[0].roles, vec!["admin", "user"]);
        let jsonl = format!("{{\"username\":\"bob\",\"password_hash\":\"{BCRYPT}\"}}\n");
        assert_eq!(parse(&jsonl).unwrap()[0].username.as_str(), "bob");
    }

    #[test]
    fn imported_roles_no_token_can_carry_are_refused() {
        let roles: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
        let csv = format!("bob,{BCRYPT},{}\n", roles.join(" "));
        let e = parse(&csv).unwrap_err();
        assert!(e.to_string().contains("at most 64 roles"), "{e}");
    }

    #[test]
    fn unknown_hash_format_is_refused_with_its_line() {
        let e = parse("username,password_hash\nbob,plaintext\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
