//! The configuration file as text: read whole and bounded, and where a key sits in it (line and
//! column), so that an error about a key tells the operator where to look.

use std::io::Read as _;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::value::{ConfigError, invalid};

/// Largest configuration file read; a larger one is refused, never read in part.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The whole file as UTF-8 text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    let unreadable = |why: String| invalid("--config", format!("{}: {why}", path.display()));
    if !path.is_file() {
        return Err(invalid(
            "--config",
            format!("{} is not a readable file", path.display()),
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(unreadable(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| unreadable(format!("not UTF-8 text ({e})")))
}

/// The 1-based line and column where `path` (figment's key path: table keys and array
/// indexes) is written in `text`: the key itself, or for an array element its value. `None`
/// when the text does not parse or does not hold that key (it came from a default or the
/// environment).
pub fn locate(text: &str, path: &[String]) -> Option<(usize, usize)> {
    let document = DeTable::parse(text).ok()?;
    let mut span = document.span();
    let mut table: &DeTable<'_> = document.get_ref();
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    for part in path {
        let value = match array {
            Some(items) => {
                let item = items.get(part.parse::<usize>().ok()?)?;
                span = item.span();
                item
            }
            None => {
                let (key, value) = table.iter().find(|(k, _)| k.get_ref() == part)?;
                span = key.span();
                value
            }
        };
        match value.get_ref() {
            DeValue::Table(t) => {
                table = t;
                array = None;
            }
            DeValue::Array(items) => array = Some(&items[..]),
            _ => array = None,
        }
    }
    Some(line_and_column(text, span.start))
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, path: &[&str]) -> Option<(usize, usize)> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        locate(text, &path)
    }

    #[test]
    fn keys_are_found_at_their_line_and_column() {
        let text = "[server]\nlisten = 3\n\n[[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\n  path_prefx = \"/b\"\n";
        assert_eq!(at(text, &["server", "listen"]), Some((2, 1)));
        assert_eq!(at(text, &["routes", "1", "path_prefx"]), Some((9, 3)));
        assert_eq!(at(text, &["routes", "0", "name"]), Some((5, 1)));
        assert_eq!(at(text, &["server", "max_connections"]), None);
        assert_eq!(at(text, &["routes", "7", "name"]), None);
        assert_eq!(at("[server\n", &["server"]), None);
    }

    #[test]
    fn an_oversized_or_binary_file_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = read(&big).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let binary = dir.path().join("bin.toml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let e = read(&binary).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a readable file"), "{e}");
    }
}
