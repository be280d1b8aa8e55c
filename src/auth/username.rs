//! Canonical usernames: the one spelling of a name used for lookup, limits, storage and tokens.
//!
//! Canonicalisation is NFKC, then lowercase, then trimming of (non-control) whitespace, so that
//! `ＡＬＩＣＥ`, `Alice` and ` alice ` are the same account and count against the same limits.
//! The result is restricted to `[a-z0-9._@+-]`, which can never break a header value, a log line
//! or a JSON claim.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// Longest accepted username, in characters after canonicalisation and in bytes before it.
pub const MAX_USERNAME_LEN: usize = 64;

/// Why a raw string is not a username.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernameError {
    #[error("username is empty")]
    Empty,
    #[error("username is longer than {max} (got {len})", max = MAX_USERNAME_LEN)]
    TooLong { len: usize },
    #[error("username contains a character that is not allowed: {0:?}")]
    InvalidChar(char),
    #[error("username must start with a letter or digit, not {0:?}")]
    InvalidFirstChar(char),
}

/// A canonical username; holding one proves the string passed [`Username::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    /// Canonicalises `raw` or says why it cannot be a username.
    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        // NFKC can expand a short hostile input many times over: bound the work first.
        if raw.len() > MAX_USERNAME_LEN {
            return Err(UsernameError::TooLong { len: raw.len() });
        }
        let folded: String = raw.nfkc().collect::<String>().to_lowercase();
        // Control characters (tab, CR, LF, ...) are never trimmed: a name that carries them is
        // refused outright rather than quietly repaired.
        let trimmed = folded.trim_matches(|c: char| c.is_whitespace() && !c.is_control());
        let len = trimmed.chars().count();
        if len == 0 {
            return Err(UsernameError::Empty);
        }
        if len > MAX_USERNAME_LEN {
            return Err(UsernameError::TooLong { len });
        }
        if let Some(bad) = trimmed.chars().find(|&c| !is_allowed(c)) {
            return Err(UsernameError::InvalidChar(bad));
        }
        match trimmed.chars().next() {
            Some(first) if first.is_ascii_alphanumeric() => Ok(Self(trimmed.to_owned())),
            Some(first) => Err(UsernameError::InvalidFirstChar(first)),
            None => Err(UsernameError::Empty),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '@' | '+' | '-')
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, UsernameError> {
        Username::parse(raw).map(|u| u.as_str().to_owned())
    }

    #[test]
    fn plain_name_is_kept() {
        assert_eq!(
            canon("alice.smith+ops@example-1_x"),
            Ok("alice.smith+ops@example-1_x".into())
        );
    }

    #[test]
    fn fullwidth_letters_fold_to_ascii() {
        assert_eq!(canon("ａｌｉｃｅ"), Ok("alice".into()));
        assert_eq!(canon("ＡＬＩＣＥ１"), Ok("alice1".into()));
    }

    #[test]
    fn case_folds() {
        assert_eq!(canon("ALICE"), Ok("alice".into()));
        // KELVIN SIGN is NFKC-equivalent to K, so it cannot be used to mint a look-alike account.
        assert_eq!(canon("\u{212A}im"), Ok("kim".into()));
    }

    #[test]
    fn surrounding_spaces_are_trimmed() {
        assert_eq!(canon("  alice "), Ok("alice".into()));
        // NO-BREAK SPACE and IDEOGRAPHIC SPACE become plain spaces under NFKC.
        assert_eq!(canon("\u{00A0}alice\u{3000}"), Ok("alice".into()));
    }

    #[test]
    fn header_injection_characters_are_rejected() {
        assert_eq!(canon("alice,admin"), Err(UsernameError::InvalidChar(',')));
        assert_eq!(
            canon("alice\r\nx-user: root"),
            Err(UsernameError::InvalidChar('\r'))
        );
        assert_eq!(canon("alice\n"), Err(UsernameError::InvalidChar('\n')));
        assert_eq!(canon("\ralice"), Err(UsernameError::InvalidChar('\r')));
        assert_eq!(
            canon("al\u{0}ice"),
            Err(UsernameError::InvalidChar('\u{0}'))
        );
        assert_eq!(
            canon("al\u{7f}ice"),
            Err(UsernameError::InvalidChar('\u{7f}'))
        );
        assert_eq!(canon("al\tice"), Err(UsernameError::InvalidChar('\t')));
        assert_eq!(canon("al ice"), Err(UsernameError::InvalidChar(' ')));
        assert_eq!(canon("al:ice"), Err(UsernameError::InvalidChar(':')));
    }

    #[test]
    fn non_ascii_that_does_not_fold_is_rejected() {
        assert_eq!(canon("alicé"), Err(UsernameError::InvalidChar('é')));
        // Cyrillic a looks like Latin a: refused, not confused with "alice".
        assert_eq!(
            canon("\u{0430}lice"),
            Err(UsernameError::InvalidChar('\u{0430}'))
        );
    }

    #[test]
    fn first_char_must_be_alphanumeric() {
        assert_eq!(canon(".alice"), Err(UsernameError::InvalidFirstChar('.')));
        assert_eq!(canon("-alice"), Err(UsernameError::InvalidFirstChar('-')));
        assert_eq!(canon("9lives"), Ok("9lives".into()));
    }

    #[test]
    fn empty_and_blank_are_rejected() {
        assert_eq!(canon(""), Err(UsernameError::Empty));
        assert_eq!(canon("   "), Err(UsernameError::Empty));
    }

    #[test]
    fn too_long_is_rejected() {
        let max = "a".repeat(MAX_USERNAME_LEN);
        assert_eq!(canon(&max), Ok(max.clone()));
        let over = "a".repeat(MAX_USERNAME_LEN + 1);
        assert_eq!(
            canon(&over),
            Err(UsernameError::TooLong {
                len: MAX_USERNAME_LEN + 1
            })
        );
    }

    #[test]
    fn oversized_input_is_refused_before_normalising() {
        // 22 characters but 66 bytes: refused on bytes even though it would fold to 22 chars.
        let wide = "ａ".repeat(22);
        assert_eq!(wide.len(), 66);
        assert_eq!(canon(&wide), Err(UsernameError::TooLong { len: 66 }));
    }

    #[test]
    fn expansion_by_normalisation_is_bounded() {
        // U+FDFA expands to 18 characters under NFKC; four of them (12 bytes) would give 72.
        let expanding = "\u{FDFA}".repeat(4);
        assert!(expanding.len() <= MAX_USERNAME_LEN);
        assert!(matches!(
            canon(&expanding),
            Err(UsernameError::TooLong { .. })
        ));
    }
}
