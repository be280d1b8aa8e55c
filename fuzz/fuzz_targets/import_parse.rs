//! Fuzzes `auth::import::parse` (JSON lines or CSV user imports). Invariant: no panic, and every
//! imported user has a canonical username and a hash of a kind the importer claims to accept.
#![no_main]

use gatehouse::auth::import::parse;
use gatehouse::auth::password::HashParams;
use gatehouse::auth::username::Username;
use libfuzzer_sys::fuzz_target;

const PARAMS: HashParams = HashParams {
    m_kib: 19_456,
    t: 2,
    p: 1,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for entry in parse(text, &PARAMS).users {
        let user = entry.user;
        let name = user.username.as_str();
        assert_eq!(
            Username::parse(name)
                .map(|u| u.as_str().to_owned())
                .as_deref(),
            Ok(name)
        );
        let hash = &user.password_hash;
        assert!(
            hash.starts_with("$argon2")
                || hash.starts_with("$2a$")
                || hash.starts_with("$2b$")
                || hash.starts_with("$2y$"),
            "{hash:?}"
        );
    }
});
