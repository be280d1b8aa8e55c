//! `gatehouse user import`: users with existing password hashes (argon2 PHC strings, or bcrypt
//! `$2a$`/`$2b$`/`$2y$` as written by passlib in FastAPI apps) from JSON lines or CSV.
//!
//! Every line is judged before anything is stored, and every refusal is kept (with its line
//! number), so an operator sees all that is wrong with a file at once; the store then adds the
//! users in one transaction ([`crate::store::Users::import_users`]).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::auth::claims::check_account_values;
use crate::auth::password::{HashParams, HashProblem, MAX_BCRYPT_COST, check_stored};
use crate::auth::username::{Username, UsernameError};
use crate::store::NewUser;

/// Largest import file read, in bytes: far above [`MAX_IMPORT_USERS`] lines of real hashes.
pub const MAX_IMPORT_BYTES: u64 = 16 * 1024 * 1024;
/// Most users one file may hold. One file is one transaction, which must finish within the
/// store's operation timeout (PostgreSQL: three statement timeouts, 15 s by default); split a
/// larger file (each part is still all or nothing).
pub const MAX_IMPORT_USERS: usize = 10_000;

/// What `gatehouse user import --help` says about the file (the fields [`parse`] accepts).
pub const FORMAT_HELP: &str = "\
Import users with existing password hashes, all or nothing.

Every line is checked first; one refused line, or (without --skip-existing) one name that is
already taken, means nothing is written. The command prints how many users were imported,
skipped and refused, and names each refused line by its number and reason.

Formats, chosen by the first line that is neither empty nor a # comment:
  JSON lines  one object per line, e.g.
              {\"username\": \"alice\", \"password_hash\": \"$2b$12$...\", \"roles\": [\"admin\"], \"scopes\": [\"read\"]}
              username and password_hash are required, roles and scopes are optional lists;
              any other key is refused.
  CSV         username,password_hash[,roles[,scopes]], roles and scopes separated by spaces;
              no quoting; a first line whose first field is `username` is a header.
Empty lines and lines starting with # are skipped.

Fields:
  username       canonicalised as logins are (NFKC, lowercase: Alice is alice), 1-64 of
                 a-z 0-9 . _ @ + -; each name at most once per file
  password_hash  argon2 PHC ($argon2id$v=19$m=19456,t=2,p=1$salt$hash; argon2i, argon2d too)
                 or bcrypt $2a$/$2b$/$2y$ (as passlib and the bcrypt package write it), cost
                 at most 14; other parameters and bcrypt are rehashed to the configured
                 argon2id at the user's first login
  roles, scopes  1-128 printable ASCII characters, no space , \" or \\, at most 64 of each

At most 10000 users and 16 MiB per file.";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_IMPORT_BYTES} bytes: split it")]
    TooLarge { path: String },
    #[error("{path} is not UTF-8 text")]
    NotText { path: String },
}

/// One user to import, with the line it came from.
#[derive(Debug)]
pub struct Entry {
    pub line: usize,
    pub user: NewUser,
}

/// A line that cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Every line of a file judged: the users to import, and the lines refused.
#[derive(Debug, Default)]
pub struct Parsed {
    pub users: Vec<Entry>,
    pub refused: Vec<Refusal>,
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

/// Reads and judges every line of the file (at most [`MAX_IMPORT_BYTES`]).
pub fn read_file(path: &Path, configured: &HashParams) -> Result<Parsed, ImportError> {
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ImportError::Read {
        path: shown(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_IMPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImportError::Read {
            path: shown(),
            source,
        })?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(ImportError::TooLarge { path: shown() });
    }
    let text = String::from_utf8(bytes).map_err(|_| ImportError::NotText { path: shown() })?;
    Ok(parse(&text, configured))
}

/// JSON lines when the first line that is not empty or a `#` comment starts with `{`, CSV
/// otherwise. Hashes are judged as a login would (`configured`: the gateway's argon2 cost,
/// which raises the ceilings a stored argon2 hash may demand).
pub fn parse(text: &str, configured: &HashParams) -> Parsed {
    let mut content = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let first = content.next();
    let json = first.is_some_and(|l| l.starts_with('{'));
    let header =
        !json && first.is_some_and(|l| l.split(',').next().map(str::trim) == Some("username"));
    let mut parsed = Parsed::default();
    let mut seen: HashMap<Username, usize> = HashMap::new();
    let mut header_pending = header;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        if std::mem::take(&mut header_pending) {
            continue;
        }
        if parsed.users.len() == MAX_IMPORT_USERS {
            parsed.refused.push(Refusal {
                line,
                reason: format!(
                    "more than {MAX_IMPORT_USERS} users in one file: split it (each part is \
                     imported all or nothing)"
                ),
            });
            break;
        }
        match judge(raw, json, configured) {
            Ok(user) => {
                if let Some(first) = seen.get(&user.username) {
                    parsed.refused.push(Refusal {
                        line,
                        reason: format!(
                            "username {} is already on line {first}",
                            user.username.as_str()
                        ),
                    });
                    continue;
                }
                seen.insert(user.username.clone(), line);
                parsed.users.push(Entry { line, user });
            }
            Err(reason) => parsed.refused.push(Refusal { line, reason }),
        }
    }
    parsed
}

/// One line as a user, or why not.
fn judge(raw: &str, json: bool, configured: &HashParams) -> Result<NewUser, String> {
    let user = if json {
        serde_json::from_str::<JsonUser>(raw).map_err(|e| e.to_string())?
    } else {
        let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
        if fields.len() < 2 || fields.len() > 4 {
            return Err("expected username,password_hash[,roles[,scopes]]".into());
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
        .map_err(|e: UsernameError| format!("username {:?}: {e}", user.username))?;
    check_stored(&user.password_hash, configured).map_err(hash_refusal)?;
    check_account_values(&user.roles, &user.scopes).map_err(|e| e.to_string())?;
    Ok(NewUser {
        username,
        password_hash: user.password_hash,
        roles: user.roles,
        scopes: user.scopes,
    })
}

/// Why a hash is refused, in the importer's words (never the hash itself).
fn hash_refusal(problem: HashProblem) -> String {
    match problem {
        HashProblem::Malformed => {
            "password_hash must be an argon2 PHC string or a $2a$/$2b$/$2y$ bcrypt hash".into()
        }
        HashProblem::Unsupported => {
            "password_hash uses a scheme gatehouse does not verify (argon2 v19 or bcrypt \
             $2a$/$2b$/$2y$ only)"
                .into()
        }
        HashProblem::TooCostly => format!(
            "password_hash demands more work than a login may spend (bcrypt cost at most \
             {MAX_BCRYPT_COST}; argon2 within the verification ceilings)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2b$12$EixZaYVK1fsbw1ZfbX3OXePaWxn96p36WQoeG6Lruj3vjPGga31lW";
    const CHEAP: HashParams = HashParams {
        m_kib: 8,
        t: 1,
        p: 1,
    };

    fn users(text: &str) -> Vec<NewUser> {
        let parsed = parse(text, &CHEAP);
        assert_eq!(parsed.refused, [], "{text}");
        parsed.users.into_iter().map(|e| e.user).collect()
    }

    fn refusals(text: &str) -> Vec<String> {
        parse(text, &CHEAP)
            .refused
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn csv_and_json_lines_import() {
        let csv = format!("username,password_hash,roles,scopes\nAlice,{BCRYPT},admin user,read\n");
        let got = users(&csv);
        assert_eq!(got[0].username.as_str(), "alice");
        assert_eq!(got[0].roles, vec!["admin", "user"]);
        let jsonl =
            format!("# exported\n{{\"username\":\"bob\",\"password_hash\":\"{BCRYPT}\"}}\n");
        assert_eq!(users(&jsonl)[0].username.as_str(), "bob");
    }

    #[test]
    fn imported_roles_no_token_can_carry_are_refused() {
        let roles: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
        let csv = format!("bob,{BCRYPT},{}\n", roles.join(" "));
        let e = &refusals(&csv)[0];
        assert!(e.contains("at most 64 roles"), "{e}");
    }

    #[test]
    fn unknown_hash_format_is_refused_with_its_line() {
        let e = &refusals("username,password_hash\nbob,plaintext\n")[0];
        assert!(e.starts_with("line 2: "), "{e}");
        assert!(
            !e.contains("plaintext"),
            "a refusal must not echo the hash: {e}"
        );
    }

    #[test]
    fn every_bad_line_is_reported_not_only_the_first() {
        let text = format!(
            "username,password_hash\nalice,{BCRYPT}\nbob,plain\n-x,{BCRYPT}\ncarol,{BCRYPT},a,b,c\n"
        );
        let parsed = parse(&text, &CHEAP);
        assert_eq!(parsed.users.len(), 1);
        let lines: Vec<usize> = parsed.refused.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4, 5]);
    }

    #[test]
    fn a_name_twice_in_one_file_is_refused_naming_the_first_line() {
        let text = format!("alice,{BCRYPT}\n\nAlice,{BCRYPT}\n");
        assert_eq!(
            refusals(&text),
            ["line 3: username alice is already on line 1"]
        );
    }

    /// A hash the login path would refuse as too costly would lock the user out for good.
    #[test]
    fn a_hash_no_login_could_verify_is_refused() {
        let costly = "$2b$15$EixZaYVK1fsbw1ZfbX3OXePaWxn96p36WQoeG6Lruj3vjPGga31lW";
        let e = &refusals(&format!("bob,{costly}\n"))[0];
        assert!(e.contains("cost at most 14"), "{e}");
        let scrypt = "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
        let e = &refusals(&format!("bob,{scrypt}\n"))[0];
        assert!(e.contains("does not verify"), "{e}");
    }

    /// Only a first line naming the `username` field is a header: a user whose name starts
    /// with "username" is imported, not skipped.
    #[test]
    fn a_user_named_like_the_header_is_not_skipped() {
        let got = users(&format!("usernamex,{BCRYPT}\n"));
        assert_eq!(got[0].username.as_str(), "usernamex");
    }

    #[test]
    fn more_users_than_one_file_may_hold_are_refused() {
        let line = format!("{{\"username\":\"u\",\"password_hash\":\"{BCRYPT}\"}}\n");
        let mut text = String::new();
        for i in 0..=MAX_IMPORT_USERS {
            text.push_str(&line.replace("\"u\"", &format!("\"u{i}\"")));
        }
        let parsed = parse(&text, &CHEAP);
        assert_eq!(parsed.users.len(), MAX_IMPORT_USERS);
        assert_eq!(parsed.refused.len(), 1);
        assert!(parsed.refused[0].reason.contains("split it"));
    }
}
