//! Fuzzes `proxy::path::normalize` and the prefix helpers. Invariants on every accepted path: it
//! starts with `/`, holds no `//`, `.` or `..` segment, no raw byte outside printable ASCII, is a
//! valid `PathAndQuery` path, and normalising it again returns it unchanged.
#![no_main]

use gatehouse::proxy::path::{join_base, normalize, strip_prefix, under_prefix};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = normalize(raw) else {
        return;
    };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(!path.contains("//"), "{raw:?} -> {path:?}");
    for segment in path.split('/') {
        assert!(segment != "." && segment != "..", "{raw:?} -> {path:?}");
    }
    assert!(
        path.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'\\' | b';')),
        "{raw:?} -> {path:?}"
    );
    assert_eq!(
        normalize(&path).as_deref(),
        Ok(path.as_str()),
        "not idempotent: {raw:?}"
    );
    let parsed: http::uri::PathAndQuery = path.parse().expect("a valid path");
    assert_eq!(parsed.path(), path);
    assert!(parsed.query().is_none());

    // The prefix helpers agree with each other for every prefix of the path itself.
    for (at, _) in path.match_indices('/') {
        let prefix = if at == 0 { "/" } else { &path[..at] };
        assert!(under_prefix(&path, prefix), "{path:?} not under {prefix:?}");
        let rest = strip_prefix(&path, prefix);
        assert!(rest.starts_with('/'), "{path:?} - {prefix:?} = {rest:?}");
        let rejoined = join_base(prefix, &rest);
        assert!(
            rejoined.eq_ignore_ascii_case(&path) || prefix == "/" || rest == "/",
            "{prefix:?} + {rest:?} = {rejoined:?}, not {path:?}"
        );
    }
});
