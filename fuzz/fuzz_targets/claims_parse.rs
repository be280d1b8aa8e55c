//! Fuzzes the strict JSON object parser and the typed claims built from it. Invariants: an
//! accepted object survives a serialise-and-parse round trip with the same members at every depth
//! (no duplicate member was silently dropped, nothing was reordered into a different object), and
//! typed claims never panic on any member type.
//!
//! Numbers are compared by kind only: serde_json's default float parsing is not exact, so a float
//! may change in its last digit on a round trip (regressions/claims_parse/float-round-trip). Token
//! times are integers and are never read from floats, so that imprecision cannot reach a decision.
#![no_main]

use gatehouse::auth::claims::{AccessClaims, parse_object};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The value with every float replaced by 0.0, integers kept exactly.
fn shape(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => Value::from(0.0),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        other => other.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(object) = parse_object(data) else {
        return;
    };
    let text = serde_json::to_vec(&object).expect("a parsed object serialises");
    let again = parse_object(&text).expect("what we serialise we parse");
    assert_eq!(
        shape(&Value::Object(object.clone())),
        shape(&Value::Object(again))
    );
    if let Ok(claims) = AccessClaims::from_object(object) {
        let _ = claims.scopes();
    }
});
