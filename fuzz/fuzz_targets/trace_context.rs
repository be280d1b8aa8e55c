//! Fuzzes the W3C trace-context reader. Input: the first byte picks whether the peer is trusted,
//! the rest splits at the first newline into a `traceparent` and a `tracestate` value.
//! Invariants: no panic; what the upstream would receive is always a well-formed version-00
//! `traceparent` (parsed back by the same reader) that keeps the caller's trace id exactly when
//! the caller's header was valid, whose parent-id is never the caller's, and whose sampled flag
//! is the caller's only from a trusted peer (the sampler here samples nothing); a `tracestate`
//! is passed on only with a valid caller and within its bounds.
#![no_main]

use gatehouse::trace::{
    MAX_TRACESTATE_BYTES, Sampler, TRACEPARENT, TRACESTATE, TraceContext, parse_traceparent,
};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let trusted = first & 1 == 1;
    let (parent, state) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::from_bytes(parent) else {
        return;
    };
    headers.insert(&TRACEPARENT, value);
    if let Some(state) = state.and_then(|s| HeaderValue::from_bytes(s).ok()) {
        headers.insert(&TRACESTATE, state);
    }
    let caller = parse_traceparent(parent);
    let ctx = TraceContext::start(&headers, trusted, Sampler::NEVER);
    let mut out = headers.clone();
    ctx.write(&mut out);
    let sent = out.get(&TRACEPARENT).expect("a traceparent is always sent");
    assert_eq!(sent.len(), 55);
    assert!(sent.as_bytes().starts_with(b"00-"));
    let ours = parse_traceparent(sent.as_bytes()).expect("what is sent parses");
    match caller {
        Some(caller) => {
            assert_eq!(ours.trace_id, caller.trace_id);
            assert_ne!(ours.parent_id, caller.parent_id);
            assert_eq!(ours.sampled, trusted && caller.sampled);
        }
        None => {
            assert!(!ours.sampled);
            assert!(out.get(&TRACESTATE).is_none(), "tracestate without a valid parent");
        }
    }
    if let Some(state) = out.get(&TRACESTATE) {
        assert!(state.len() <= MAX_TRACESTATE_BYTES);
    }
});
