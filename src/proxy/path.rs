//! Request-path normalisation: the one canonical path the gateway both authorises and forwards.
//!
//! Every bypass of a path-based gateway is a disagreement between the path the gateway checked
//! and the path the upstream served. [`normalize`] removes the room for disagreement: input that
//! upstreams are known to read in more than one way is rejected, and everything else is rewritten
//! to a single canonical form that is forwarded as-is, so the upstream never has to decode or
//! resolve anything the gateway did not see.
//!
//! Order of work (RFC 3986 §6.2.2):
//! 1. Byte pass: reject raw bytes with no single meaning (controls, space, non-ASCII, `\`, `;`,
//!    `?`, `#`) and percent-encodings of delimiters (`/`, `\`, `.`, `;`, controls); decode encoded
//!    unreserved characters (§6.2.2.2); uppercase the hex of every kept encoding (§6.2.2.1);
//!    percent-encode the printable ASCII that RFC 3986 does not allow raw in a path.
//! 2. Reject double encoding (`%25` followed by two hex digits), judged on the output of step 1 so
//!    that `%25%32%65` cannot assemble `%252e` out of decoded digits.
//! 3. Reject encoded bytes that are not UTF-8 (overlong `%C0%AE` is `.` to some decoders) or whose
//!    compatibility form (NFKC) is a delimiter (fullwidth `%EF%BC%8E` is `.` after NFKC).
//! 4. Collapse `//` and remove dot segments (RFC 3986 §5.2.4), keeping a trailing slash.

use unicode_normalization::UnicodeNormalization;

/// Why a request path was refused. Offsets are byte offsets into the raw path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("request target is not in origin-form: the path must start with '/'")]
    NotOriginForm,
    #[error("path contains a NUL byte at offset {at}")]
    Nul { at: usize },
    #[error("path contains the control byte {byte:#04x} at offset {at}")]
    ControlChar { at: usize, byte: u8 },
    #[error("path contains a raw space at offset {at}")]
    Space { at: usize },
    #[error("path contains the raw non-ASCII byte {byte:#04x} at offset {at}")]
    NonAscii { at: usize, byte: u8 },
    #[error("path contains a backslash at offset {at}")]
    Backslash { at: usize },
    #[error("path contains ';' (a matrix parameter) at offset {at}")]
    MatrixParameter { at: usize },
    #[error("path contains {ch:?} at offset {at}; query and fragment are not part of the path")]
    QueryOrFragment { at: usize, ch: char },
    #[error("'%' at offset {at} is not followed by two hex digits")]
    MalformedPercent { at: usize },
    #[error("path contains an encoded slash (%2F) at offset {at}")]
    EncodedSlash { at: usize },
    #[error("path contains an encoded backslash (%5C) at offset {at}")]
    EncodedBackslash { at: usize },
    #[error("path contains an encoded NUL (%00) at offset {at}")]
    EncodedNul { at: usize },
    #[error("path contains the encoded control byte %{byte:02X} at offset {at}")]
    EncodedControl { at: usize, byte: u8 },
    #[error("path contains an encoded dot (%2E) at offset {at}")]
    EncodedDot { at: usize },
    #[error("path contains an encoded ';' (%3B) at offset {at}")]
    EncodedSemicolon { at: usize },
    #[error(
        "path contains a double percent-encoding (%25 followed by two hex digits) at offset {at}"
    )]
    DoubleEncoded { at: usize },
    #[error(
        "percent-encoded bytes from offset {at} are not valid UTF-8 (overlong, truncated or stray)"
    )]
    InvalidEncodedUtf8 { at: usize },
    #[error("percent-encoded character {ch:?} at offset {at} is a look-alike of a path delimiter")]
    EncodedDelimiterLookalike { at: usize, ch: char },
}

/// Normalises the path of an origin-form request target (path only, without the query).
///
/// The result starts with `/`, contains no `//`, no `.` or `..` segment, no percent-encoded
/// unreserved character, only uppercase percent-encodings, and is a valid
/// [`http::uri::PathAndQuery`] with no query. Normalising it again returns it unchanged.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if is_canonical(raw.as_bytes()) {
        return Ok(raw.to_owned());
    }
    let canonical = canonicalize_bytes(raw.as_bytes())?;
    Ok(remove_dot_segments(&canonical))
}

/// Printable ASCII that step 1 keeps as it is, indexed by byte: not `%`, not refused by
/// [`reject_raw`], not rewritten by [`needs_encoding`].
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0x21;
    while byte < 0x7F {
        let b = byte as u8;
        table[byte] = !(matches!(b, b'%' | b'\\' | b';' | b'?' | b'#') || needs_encoding(b));
        byte += 1;
    }
    table
};

/// Whether `raw` is already what [`normalize`] would return: one pass that most requests end in
/// (the full normalisation allocates twice and walks the path twice). Only bytes that step 1
/// keeps, and no empty (`//`), `.` or `..` segment except an empty last one (a trailing slash).
fn is_canonical(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 1;
    for (at, &byte) in raw.iter().enumerate().skip(1) {
        if byte == b'/' {
            if matches!(&raw[segment_start..at], b"" | b"." | b"..") {
                return false;
            }
            segment_start = at + 1;
        } else if !PLAIN[usize::from(byte)] {
            return false;
        }
    }
    !matches!(&raw[segment_start..], b"." | b"..")
}

/// Whether `path` lies under `prefix` on a segment boundary: "/admin" covers "/admin",
/// "/admin/", "/admin/x", never "/administrator". Prefix "/" covers every path.
///
/// A trailing slash on `prefix` is ignored ("/admin/" covers "/admin" too). Letters compare
/// ASCII-case-insensitively on purpose: many upstreams (IIS, case-insensitive filesystems and
/// routers) serve `/ADMIN` as `/admin`, so a protected prefix must cover every case variant or
/// `/ADMIN` would fall through to a less protected route. Both arguments are expected to be
/// outputs of [`normalize`].
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    rest_after_prefix(path, prefix).is_some()
}

/// `path` with `prefix` removed (segment-aware, same matching as [`under_prefix`]), always
/// starting with '/': ("/api/v1/x", "/api") -> "/v1/x", ("/api", "/api") -> "/".
///
/// A `path` that is not under `prefix` is returned unchanged; callers strip only after a route
/// matched, so that case is a caller bug, not a client input.
pub fn strip_prefix<'p>(path: &'p str, prefix: &str) -> &'p str {
    match rest_after_prefix(path, prefix) {
        Some("") => "/",
        Some(rest) => rest,
        None => path,
    }
}

/// Joins an upstream base path ("/base", "/base/" or "") with a forwarded path without doubling
/// or losing slashes: ("/base", "/x") -> "/base/x", ("", "/x") -> "/x", ("/base/", "/") -> "/base/".
/// The result always starts with '/'.
pub fn join_base(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let mut joined = String::with_capacity(base.len() + path.len() + 2);
    if !base.is_empty() && !base.starts_with('/') {
        joined.push('/');
    }
    joined.push_str(base);
    if !path.starts_with('/') {
        joined.push('/');
    }
    joined.push_str(path);
    joined
}

/// The part of `path` after `prefix` ("" or starting with '/'), if `prefix` covers `path`.
fn rest_after_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let prefix = prefix.trim_end_matches('/');
    let head = path.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &path[prefix.len()..];
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Step 1-3 of the module docs: one pass over the raw bytes producing the canonical spelling.
fn canonicalize_bytes(raw: &[u8]) -> Result<String, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut out = Canonical {
        text: String::with_capacity(raw.len()),
        double: None,
        utf8_run: None,
    };
    let mut at = 0;
    while let Some(&byte) = raw.get(at) {
        if byte == b'%' {
            let decoded = decode_percent(raw, at)?;
            reject_encoded_delimiter(decoded, at)?;
            if is_unreserved(decoded) {
                out.push_plain(decoded)?;
            } else {
                out.push_encoded(decoded, at)?;
            }
            at += 3;
        } else {
            reject_raw(byte, at)?;
            if needs_encoding(byte) {
                out.push_encoded(byte, at)?;
            } else {
                out.push_plain(byte)?;
            }
            at += 1;
        }
    }
    out.finish()
}

/// The canonical path being built, with the state of the two checks that span several bytes.
struct Canonical {
    text: String,
    /// Raw offset of the last emitted `%25` and how many hex digits were emitted right after it.
    double: Option<(usize, u8)>,
    /// Where the current run of encoded non-ASCII bytes starts: (index in `text`, raw offset).
    utf8_run: Option<(usize, usize)>,
}

impl Canonical {
    fn push_plain(&mut self, byte: u8) -> Result<(), PathError> {
        self.end_utf8_run()?;
        if let Some((at, digits)) = self.double {
            self.double = None;
            if byte.is_ascii_hexdigit() {
                if digits == 1 {
                    return Err(PathError::DoubleEncoded { at });
                }
                self.double = Some((at, 1));
            }
        }
        self.text.push(char::from(byte));
        Ok(())
    }

    fn push_encoded(&mut self, byte: u8, at: usize) -> Result<(), PathError> {
        if byte.is_ascii() {
            self.end_utf8_run()?;
        } else if self.utf8_run.is_none() {
            self.utf8_run = Some((self.text.len(), at));
        }
        self.double = (byte == b'%').then_some((at, 0));
        self.text.push('%');
        self.text
            .push(char::from(UPPER_HEX[usize::from(byte >> 4)]));
        self.text
            .push(char::from(UPPER_HEX[usize::from(byte & 0x0F)]));
        Ok(())
    }

    /// Checks the encoded non-ASCII bytes emitted since the run started: they must be UTF-8 and
    /// no character may be a compatibility form of a delimiter.
    fn end_utf8_run(&mut self) -> Result<(), PathError> {
        let Some((start, at)) = self.utf8_run.take() else {
            return Ok(());
        };
        // The run holds only "%XX" triples that this module wrote, so the hex is known-good.
        let bytes: Vec<u8> = self.text.as_bytes()[start..]
            .chunks_exact(3)
            .map(|triple| (hex_value(triple[1]) << 4) | hex_value(triple[2]))
            .collect();
        let text = std::str::from_utf8(&bytes).map_err(|_| PathError::InvalidEncodedUtf8 { at })?;
        match text.chars().find(|&ch| is_delimiter_lookalike(ch)) {
            Some(ch) => Err(PathError::EncodedDelimiterLookalike { at, ch }),
            None => Ok(()),
        }
    }

    fn finish(mut self) -> Result<String, PathError> {
        self.end_utf8_run()?;
        Ok(self.text)
    }
}

/// Whether an upstream that applies Unicode compatibility normalisation (NFKC) after decoding
/// would turn `ch` into something that changes how the path splits or decodes.
fn is_delimiter_lookalike(ch: char) -> bool {
    std::iter::once(ch)
        .nfkc()
        .any(|c| matches!(c, '/' | '\\' | '.' | ';' | '%' | '?' | '#') || c.is_ascii_control())
}

/// The byte encoded by the `%XX` at `at`.
fn decode_percent(raw: &[u8], at: usize) -> Result<u8, PathError> {
    match (raw.get(at + 1), raw.get(at + 2)) {
        (Some(&high), Some(&low)) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
            Ok((hex_value(high) << 4) | hex_value(low))
        }
        _ => Err(PathError::MalformedPercent { at }),
    }
}

/// Value of an ASCII hex digit; callers check `is_ascii_hexdigit` first.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Encodings that some upstream decodes before splitting or resolving the path, where the gateway
/// would not: each is a way to make the two see different paths.
fn reject_encoded_delimiter(decoded: u8, at: usize) -> Result<(), PathError> {
    match decoded {
        0x00 => Err(PathError::EncodedNul { at }),
        0x01..=0x1F | 0x7F => Err(PathError::EncodedControl { at, byte: decoded }),
        b'/' => Err(PathError::EncodedSlash { at }),
        b'\\' => Err(PathError::EncodedBackslash { at }),
        b'.' => Err(PathError::EncodedDot { at }),
        b';' => Err(PathError::EncodedSemicolon { at }),
        _ => Ok(()),
    }
}

/// Raw bytes with no single meaning across upstreams.
fn reject_raw(byte: u8, at: usize) -> Result<(), PathError> {
    match byte {
        0x00 => Err(PathError::Nul { at }),
        0x01..=0x1F | 0x7F => Err(PathError::ControlChar { at, byte }),
        b' ' => Err(PathError::Space { at }),
        0x80..=0xFF => Err(PathError::NonAscii { at, byte }),
        // Windows servers and some frameworks treat `\` as `/`.
        b'\\' => Err(PathError::Backslash { at }),
        // Servlet containers cut `;params` from each segment before routing: `/admin;x`,
        // `/public/..;/admin`.
        b';' => Err(PathError::MatrixParameter { at }),
        b'?' | b'#' => Err(PathError::QueryOrFragment {
            at,
            ch: char::from(byte),
        }),
        _ => Ok(()),
    }
}

/// RFC 3986 §2.3 unreserved characters except `.`, whose encoded form is rejected instead.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~')
}

/// Printable ASCII that RFC 3986 §3.3 does not allow raw in a path. Clients differ on whether
/// they encode these, so they are encoded here to give each path a single spelling.
const fn needs_encoding(byte: u8) -> bool {
    matches!(
        byte,
        b'"' | b'<' | b'>' | b'[' | b']' | b'^' | b'`' | b'{' | b'|' | b'}'
    )
}

/// RFC 3986 §5.2.4 on a canonical path, with empty segments dropped (`//` collapses). `..` at
/// the root stays at the root. A path whose last segment is empty, `.` or `..` ends in '/'.
fn remove_dot_segments(canonical: &str) -> String {
    let mut out = String::with_capacity(canonical.len());
    let mut trailing_slash = false;
    for segment in canonical.split('/').skip(1) {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                if let Some(parent_end) = out.rfind('/') {
                    out.truncate(parent_end);
                }
                trailing_slash = true;
            }
            name => {
                out.push('/');
                out.push_str(name);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full normalisation, without the [`is_canonical`] shortcut.
    fn normalize_in_full(raw: &str) -> Result<String, PathError> {
        Ok(remove_dot_segments(&canonicalize_bytes(raw.as_bytes())?))
    }

    #[test]
    fn shortcut_agrees_with_the_full_normalisation_for_every_byte() {
        for byte in 0..=u8::MAX {
            let raw = [b'/', b'a', byte, b'b'];
            let Ok(text) = std::str::from_utf8(&raw) else {
                assert!(!is_canonical(&raw), "{raw:?}");
                continue;
            };
            let full = normalize_in_full(text);
            assert_eq!(is_canonical(&raw), full.as_deref() == Ok(text), "{text:?}");
            assert_eq!(normalize(text), full, "{text:?}");
        }
    }

    #[test]
    fn shortcut_agrees_with_the_full_normalisation_on_every_short_path() {
        // Every string of up to 6 bytes over the bytes that matter to segments and encodings.
        let alphabet = b"/.a%2E;\"";
        let mut checked = 0;
        let mut shortcut = 0;
        let mut stack = vec![Vec::new()];
        while let Some(raw) = stack.pop() {
            let text = std::str::from_utf8(&raw).unwrap();
            let full = normalize_in_full(text);
            if is_canonical(&raw) {
                shortcut += 1;
                assert_eq!(full.as_deref(), Ok(text), "{text:?}");
            }
            assert_eq!(normalize(text), full, "{text:?}");
            checked += 1;
            if raw.len() < 6 {
                for &byte in alphabet {
                    let mut longer = raw.clone();
                    longer.push(byte);
                    stack.push(longer);
                }
            }
        }
        assert!(
            checked > 100_000 && shortcut > 1_000,
            "{checked} {shortcut}"
        );
    }
    use http::uri::PathAndQuery;

    fn assert_normalizes(cases: &[(&str, &str)]) {
        for &(raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "normalize({raw:?})");
        }
    }

    fn assert_rejects(cases: &[(&str, PathError)]) {
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_ref(), Err(want), "normalize({raw:?})");
        }
    }

    /// Every accepted input used in these tests, for the properties checked over all of them.
    const ACCEPTED: &[&str] = &[
        "/",
        "/a/b/",
        "//admin",
        "/a//b///c",
        "/a/./b/../c/",
        "/../../etc/passwd",
        "/%61dmin",
        "/a%3fb",
        "/caf%c3%a9",
        "/a|b{c}",
        "/100%25",
        "/100%25-off",
        "/%25zz",
        "/a:b@c!$&'()*+,=",
        "/.well-known/x",
        "/a/.../b",
    ];

    #[test]
    fn plain_paths_are_unchanged() {
        assert_normalizes(&[
            ("/", "/"),
            ("/a", "/a"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/api/v1/users/42", "/api/v1/users/42"),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
            ("/~user/-_", "/~user/-_"),
            ("/.well-known/x", "/.well-known/x"),
        ]);
    }

    #[test]
    fn non_origin_form_target_is_rejected() {
        for raw in [
            "",
            "a",
            "*",
            "http://evil/x",
            "evil.example:443",
            "%2Fadmin",
            "./a",
            "../a",
        ] {
            assert_eq!(normalize(raw), Err(PathError::NotOriginForm), "{raw:?}");
        }
    }

    #[test]
    fn nul_byte_truncation_is_rejected() {
        assert_rejects(&[("/admin\0.json", PathError::Nul { at: 6 })]);
    }

    #[test]
    fn control_characters_and_header_injection_are_rejected() {
        assert_rejects(&[
            (
                "/a\r\nX-User: x",
                PathError::ControlChar { at: 2, byte: b'\r' },
            ),
            ("/a\nb", PathError::ControlChar { at: 2, byte: b'\n' }),
            ("/a\tb", PathError::ControlChar { at: 2, byte: b'\t' }),
            ("/a\x7f", PathError::ControlChar { at: 2, byte: 0x7F }),
            ("/\x1b", PathError::ControlChar { at: 1, byte: 0x1B }),
        ]);
    }

    #[test]
    fn raw_space_is_rejected() {
        assert_rejects(&[("/admin /x", PathError::Space { at: 6 })]);
    }

    #[test]
    fn raw_non_ascii_is_rejected() {
        assert_rejects(&[
            ("/caf\u{e9}", PathError::NonAscii { at: 4, byte: 0xC3 }),
            // Fullwidth full stops: `..` after NFKC.
            (
                "/\u{ff0e}\u{ff0e}/admin",
                PathError::NonAscii { at: 1, byte: 0xEF },
            ),
        ]);
    }

    #[test]
    fn backslash_traversal_is_rejected() {
        assert_rejects(&[
            ("/public\\..\\admin", PathError::Backslash { at: 7 }),
            ("/\\admin", PathError::Backslash { at: 1 }),
        ]);
    }

    #[test]
    fn matrix_param_prefix_bypass_is_rejected() {
        assert_rejects(&[
            ("/admin;x", PathError::MatrixParameter { at: 6 }),
            ("/public/..;/admin", PathError::MatrixParameter { at: 10 }),
            (
                "/admin;jsessionid=1/users",
                PathError::MatrixParameter { at: 6 },
            ),
            ("/;/admin", PathError::MatrixParameter { at: 1 }),
        ]);
    }

    #[test]
    fn query_or_fragment_inside_path_is_rejected() {
        assert_rejects(&[
            ("/a?b", PathError::QueryOrFragment { at: 2, ch: '?' }),
            ("/a#b", PathError::QueryOrFragment { at: 2, ch: '#' }),
        ]);
    }

    #[test]
    fn malformed_percent_encoding_is_rejected() {
        assert_rejects(&[
            ("/%", PathError::MalformedPercent { at: 1 }),
            ("/%2", PathError::MalformedPercent { at: 1 }),
            ("/a%", PathError::MalformedPercent { at: 2 }),
            ("/%zz", PathError::MalformedPercent { at: 1 }),
            ("/%2g", PathError::MalformedPercent { at: 1 }),
            ("/%g2", PathError::MalformedPercent { at: 1 }),
            // Partial encodings that a lenient double decoder reads as `%2e`.
            ("/%%32%65", PathError::MalformedPercent { at: 1 }),
            ("/%2%65", PathError::MalformedPercent { at: 1 }),
        ]);
    }

    #[test]
    fn encoded_slash_is_rejected() {
        assert_rejects(&[
            ("/admin%2Fusers", PathError::EncodedSlash { at: 6 }),
            ("/admin%2fusers", PathError::EncodedSlash { at: 6 }),
            ("/%2F%2Fevil", PathError::EncodedSlash { at: 1 }),
            ("/public/..%2Fadmin", PathError::EncodedSlash { at: 10 }),
        ]);
    }

    #[test]
    fn encoded_backslash_is_rejected() {
        assert_rejects(&[
            ("/public/..%5Cadmin", PathError::EncodedBackslash { at: 10 }),
            ("/public/..%5cadmin", PathError::EncodedBackslash { at: 10 }),
        ]);
    }

    #[test]
    fn encoded_nul_truncation_is_rejected() {
        assert_rejects(&[("/admin%00.json", PathError::EncodedNul { at: 6 })]);
    }

    #[test]
    fn encoded_control_characters_are_rejected() {
        for byte in (0x01u8..=0x1F).chain([0x7F]) {
            for raw in [format!("/a%{byte:02X}"), format!("/a%{byte:02x}")] {
                assert_eq!(
                    normalize(&raw),
                    Err(PathError::EncodedControl { at: 2, byte }),
                    "{raw:?}"
                );
            }
        }
    }

    #[test]
    fn encoded_dot_traversal_is_rejected() {
        assert_rejects(&[
            ("/%2e%2e/admin", PathError::EncodedDot { at: 1 }),
            ("/%2E%2E/admin", PathError::EncodedDot { at: 1 }),
            ("/public/.%2e/admin", PathError::EncodedDot { at: 9 }),
            ("/public/%2e./admin", PathError::EncodedDot { at: 8 }),
            ("/%2E/admin", PathError::EncodedDot { at: 1 }),
            ("/admin%2ejson", PathError::EncodedDot { at: 6 }),
        ]);
    }

    #[test]
    fn encoded_semicolon_matrix_param_is_rejected() {
        assert_rejects(&[
            ("/admin%3bx", PathError::EncodedSemicolon { at: 6 }),
            (
                "/public/..%3B/admin",
                PathError::EncodedSemicolon { at: 10 },
            ),
        ]);
    }

    #[test]
    fn double_encoded_dot_is_rejected() {
        assert_rejects(&[
            ("/%252e%252e/admin", PathError::DoubleEncoded { at: 1 }),
            ("/%252E%252E/admin", PathError::DoubleEncoded { at: 1 }),
            (
                "/public/%252e%252e/admin",
                PathError::DoubleEncoded { at: 8 },
            ),
        ]);
    }

    #[test]
    fn double_encoded_delimiters_are_rejected() {
        assert_rejects(&[
            ("/admin%252fusers", PathError::DoubleEncoded { at: 6 }),
            ("/admin%252Fusers", PathError::DoubleEncoded { at: 6 }),
            ("/public/..%255cadmin", PathError::DoubleEncoded { at: 10 }),
            ("/admin%2500.json", PathError::DoubleEncoded { at: 6 }),
            ("/admin%253bx", PathError::DoubleEncoded { at: 6 }),
            ("/admin%253Bx", PathError::DoubleEncoded { at: 6 }),
        ]);
    }

    #[test]
    fn double_encoding_assembled_from_decoded_digits_is_rejected() {
        // `%32` is `2` and `%65` is `e`: decoding them must not assemble a `%2e` for the upstream.
        assert_rejects(&[
            ("/%25%32%65", PathError::DoubleEncoded { at: 1 }),
            ("/%25%32e", PathError::DoubleEncoded { at: 1 }),
            ("/%252%65", PathError::DoubleEncoded { at: 1 }),
            ("/%25%32F", PathError::DoubleEncoded { at: 1 }),
        ]);
    }

    #[test]
    fn triple_encoded_dot_is_rejected() {
        assert_rejects(&[("/%25252e%25252e/admin", PathError::DoubleEncoded { at: 1 })]);
    }

    #[test]
    fn double_encoded_unreserved_letter_is_rejected() {
        // A double-decoding upstream would read `/admin` where the gateway saw `/%2561dmin`.
        assert_rejects(&[("/%2561dmin", PathError::DoubleEncoded { at: 1 })]);
    }

    #[test]
    fn literal_percent_sign_not_followed_by_hex_is_kept() {
        assert_normalizes(&[
            ("/100%25", "/100%25"),
            ("/100%25-off", "/100%25-off"),
            ("/%25zz", "/%25zz"),
            ("/%25a", "/%25a"),
            ("/%25%20", "/%25%20"),
        ]);
    }

    #[test]
    fn overlong_utf8_dot_and_slash_are_rejected() {
        assert_rejects(&[
            (
                "/%c0%ae%c0%ae/admin",
                PathError::InvalidEncodedUtf8 { at: 1 },
            ),
            (
                "/public/%C0%AF../admin",
                PathError::InvalidEncodedUtf8 { at: 8 },
            ),
            ("/%e0%80%ae", PathError::InvalidEncodedUtf8 { at: 1 }),
            ("/%f0%80%80%af", PathError::InvalidEncodedUtf8 { at: 1 }),
        ]);
    }

    #[test]
    fn truncated_or_stray_encoded_utf8_is_rejected() {
        assert_rejects(&[
            ("/%C3", PathError::InvalidEncodedUtf8 { at: 1 }),
            ("/a%C3%20", PathError::InvalidEncodedUtf8 { at: 2 }),
            ("/%C3a", PathError::InvalidEncodedUtf8 { at: 1 }),
            ("/%80", PathError::InvalidEncodedUtf8 { at: 1 }),
            // Latin-1 `é` has no single meaning: decoders guess the charset.
            ("/caf%E9", PathError::InvalidEncodedUtf8 { at: 4 }),
            ("/%ED%A0%80", PathError::InvalidEncodedUtf8 { at: 1 }),
        ]);
    }

    #[test]
    fn fullwidth_delimiter_lookalikes_are_rejected() {
        assert_rejects(&[
            (
                "/%EF%BC%8E%EF%BC%8E/admin",
                PathError::EncodedDelimiterLookalike {
                    at: 1,
                    ch: '\u{ff0e}',
                },
            ),
            (
                "/a%EF%BC%8Fb",
                PathError::EncodedDelimiterLookalike {
                    at: 2,
                    ch: '\u{ff0f}',
                },
            ),
            (
                "/a%ef%bc%bcb",
                PathError::EncodedDelimiterLookalike {
                    at: 2,
                    ch: '\u{ff3c}',
                },
            ),
            (
                "/%E2%80%A5/x",
                PathError::EncodedDelimiterLookalike {
                    at: 1,
                    ch: '\u{2025}',
                },
            ),
            (
                "/a%EF%BC%9Bx",
                PathError::EncodedDelimiterLookalike {
                    at: 2,
                    ch: '\u{ff1b}',
                },
            ),
            (
                "/%EF%BC%85%32e",
                PathError::EncodedDelimiterLookalike {
                    at: 1,
                    ch: '\u{ff05}',
                },
            ),
            (
                "/caf%C3%A9%EF%BC%8E",
                PathError::EncodedDelimiterLookalike {
                    at: 4,
                    ch: '\u{ff0e}',
                },
            ),
        ]);
    }

    #[test]
    fn valid_encoded_utf8_is_kept_with_uppercase_hex() {
        assert_normalizes(&[
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%e6%97%a5/x", "/%E6%97%A5/x"),
            ("/%F0%9F%A6%80", "/%F0%9F%A6%80"),
        ]);
    }

    #[test]
    fn percent_encoded_unreserved_letters_are_decoded_for_matching() {
        assert_normalizes(&[
            ("/%61dmin", "/admin"),
            ("/%61%64%6d%69%6e/x", "/admin/x"),
            ("/%41DMIN", "/ADMIN"),
            ("/%7euser", "/~user"),
            ("/%7Euser", "/~user"),
            ("/a%2db%5fc", "/a-b_c"),
            ("/v%31", "/v1"),
        ]);
        assert!(under_prefix(
            &normalize("/%61dmin/users").unwrap(),
            "/admin"
        ));
    }

    #[test]
    fn other_percent_encodings_are_kept_with_uppercase_hex() {
        assert_normalizes(&[
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%23b", "/a%23b"),
            ("/a%2ab", "/a%2Ab"),
            ("/a%3ab", "/a%3Ab"),
            ("/a%40b", "/a%40b"),
            ("/a%7cb", "/a%7Cb"),
            ("/a%25", "/a%25"),
        ]);
    }

    #[test]
    fn characters_outside_rfc3986_get_one_encoded_spelling() {
        assert_normalizes(&[
            ("/a|b", "/a%7Cb"),
            ("/a%7Cb", "/a%7Cb"),
            ("/{x}", "/%7Bx%7D"),
            ("/a\"b", "/a%22b"),
            ("/[x]", "/%5Bx%5D"),
            ("/a^b", "/a%5Eb"),
            ("/a`b", "/a%60b"),
            ("/<x>", "/%3Cx%3E"),
        ]);
    }

    #[test]
    fn repeated_slashes_are_collapsed() {
        assert_normalizes(&[
            ("//admin", "/admin"),
            ("//evil.example/x", "/evil.example/x"),
            ("/a//b///c", "/a/b/c"),
            ("//", "/"),
            ("///a//", "/a/"),
        ]);
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_normalizes(&[
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/./a", "/a"),
            ("/.", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a/./", "/a/"),
            ("/a/../", "/"),
        ]);
    }

    #[test]
    fn traversal_above_root_stays_at_root() {
        assert_normalizes(&[
            ("/..", "/"),
            ("/../a", "/a"),
            ("/../../../etc/passwd", "/etc/passwd"),
            ("/a/../../b", "/b"),
        ]);
    }

    #[test]
    fn dot_dot_traversal_out_of_public_prefix_is_authorised_as_its_target() {
        let path = normalize("/public/../admin/users").unwrap();
        assert_eq!(path, "/admin/users");
        assert!(!under_prefix(&path, "/public"));
        assert!(under_prefix(&path, "/admin"));
    }

    #[test]
    fn empty_segment_before_dot_dot_is_collapsed_first() {
        // Collapsing first means `//..` climbs out of `a`, as upstreams that merge slashes see it.
        assert_normalizes(&[("/a//../b", "/b"), ("/a/b//..//c", "/a/c")]);
    }

    #[test]
    fn dotted_names_are_not_dot_segments() {
        assert_normalizes(&[
            ("/a/.../b", "/a/.../b"),
            ("/a../b", "/a../b"),
            ("/..a", "/..a"),
            ("/a/.b/", "/a/.b/"),
        ]);
    }

    #[test]
    fn trailing_slash_is_preserved() {
        assert_normalizes(&[
            ("/a/", "/a/"),
            ("/a", "/a"),
            ("/a//", "/a/"),
            ("/a/b/./", "/a/b/"),
        ]);
    }

    #[test]
    fn normalized_output_is_a_valid_path_without_query() {
        for raw in ACCEPTED {
            let path = normalize(raw).unwrap();
            let parsed = PathAndQuery::try_from(path.as_str()).unwrap();
            assert_eq!(parsed.path(), path, "{raw:?}");
            assert_eq!(parsed.query(), None, "{raw:?}");
        }
    }

    #[test]
    fn normalize_is_idempotent() {
        for raw in ACCEPTED {
            let once = normalize(raw).unwrap();
            assert_eq!(normalize(&once).as_ref(), Ok(&once), "{raw:?}");
        }
    }

    /// Properties that must hold for any accepted path: nothing left for an upstream to decode
    /// or resolve differently.
    fn assert_canonical(raw: &str, path: &str) {
        assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
        assert!(!path.contains("//"), "{raw:?} -> {path:?}");
        assert!(
            path.split('/')
                .all(|segment| segment != "." && segment != ".."),
            "{raw:?} -> {path:?}"
        );
        let bytes = path.as_bytes();
        for (i, _) in path.match_indices('%') {
            let encoded = &path[i + 1..i + 3];
            assert_eq!(encoded, encoded.to_ascii_uppercase(), "{raw:?} -> {path:?}");
            let byte = u8::from_str_radix(encoded, 16).unwrap();
            assert!(!is_unreserved(byte), "{raw:?} -> {path:?}");
            assert!(
                reject_encoded_delimiter(byte, 0).is_ok(),
                "{raw:?} -> {path:?}"
            );
            if byte == b'%' {
                let next_two = bytes.get(i + 3..i + 5).unwrap_or_default();
                assert!(
                    !(next_two.len() == 2 && next_two.iter().all(u8::is_ascii_hexdigit)),
                    "{raw:?} -> {path:?}"
                );
            }
        }
        assert_eq!(
            normalize(path).as_deref(),
            Ok(path),
            "not idempotent: {raw:?}"
        );
        assert!(PathAndQuery::try_from(path).is_ok(), "{raw:?} -> {path:?}");
    }

    #[test]
    fn exhaustive_short_paths_never_leave_anything_to_resolve() {
        const ALPHABET: &[u8] = b"/.%25eFca;";
        let mut accepted = 0;
        let mut raw = Vec::with_capacity(8);
        for len in 0..=5u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                raw.clear();
                raw.push(b'/');
                for _ in 0..len {
                    raw.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                let raw = std::str::from_utf8(&raw).unwrap();
                if let Ok(path) = normalize(raw) {
                    assert_canonical(raw, &path);
                    accepted += 1;
                }
            }
        }
        // Guards against a generator or normalizer that rejects everything.
        assert!(accepted > 10_000, "only {accepted} accepted");
    }

    #[test]
    fn prefix_does_not_cover_sibling_sharing_leading_characters() {
        for path in ["/administrator", "/admin-panel", "/admin.json", "/adminx/y"] {
            assert!(!under_prefix(path, "/admin"), "{path:?}");
            assert!(!under_prefix(path, "/admin/"), "{path:?}");
        }
    }

    #[test]
    fn prefix_covers_itself_and_its_subtree() {
        for path in ["/admin", "/admin/", "/admin/x", "/admin/x/y/"] {
            assert!(under_prefix(path, "/admin"), "{path:?}");
            assert!(under_prefix(path, "/admin/"), "{path:?}");
        }
        assert!(under_prefix("/api/v1/x", "/api/v1"));
        assert!(!under_prefix("/api/v2/x", "/api/v1"));
        assert!(!under_prefix("/api", "/api/v1"));
        assert!(!under_prefix("/", "/admin"));
    }

    #[test]
    fn root_prefix_covers_every_path() {
        for path in ["/", "/a", "/admin/x", "/a/b/"] {
            assert!(under_prefix(path, "/"), "{path:?}");
        }
    }

    #[test]
    fn uppercase_path_cannot_escape_protected_prefix() {
        for path in ["/ADMIN", "/Admin/users", "/aDmIn/"] {
            assert!(under_prefix(path, "/admin"), "{path:?}");
        }
        assert!(under_prefix(&normalize("/%41dmin/x").unwrap(), "/admin"));
    }

    #[test]
    fn prefix_is_stripped_on_segment_boundary() {
        let cases = [
            ("/api/v1/x", "/api", "/v1/x"),
            ("/api", "/api", "/"),
            ("/api/", "/api", "/"),
            ("/api/x/", "/api/", "/x/"),
            ("/API/x", "/api", "/x"),
            ("/a/b", "/", "/a/b"),
            ("/", "/", "/"),
            // Not under the prefix: unchanged, never "/istrator".
            ("/administrator", "/admin", "/administrator"),
            ("/other", "/api", "/other"),
        ];
        for (path, prefix, want) in cases {
            assert_eq!(
                strip_prefix(path, prefix),
                want,
                "strip_prefix({path:?}, {prefix:?})"
            );
        }
    }

    #[test]
    fn base_path_joins_without_doubling_or_losing_slashes() {
        let cases = [
            ("/base", "/x", "/base/x"),
            ("/base/", "/x", "/base/x"),
            ("/base//", "/x", "/base/x"),
            ("", "/x", "/x"),
            ("/", "/x", "/x"),
            ("/base/", "/", "/base/"),
            ("/base", "/", "/base/"),
            ("", "/", "/"),
            ("/", "/", "/"),
            ("/base", "/x/", "/base/x/"),
            ("base", "x", "/base/x"),
            ("", "", "/"),
        ];
        for (base, path, want) in cases {
            assert_eq!(join_base(base, path), want, "join_base({base:?}, {path:?})");
        }
    }
}
