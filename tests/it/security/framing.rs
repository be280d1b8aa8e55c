//! Framing: Content-Length / Transfer-Encoding conflicts and obfuscations, chunk anomalies, bodies
//! on GET/HEAD/OPTIONS, pipelining, early responses that leave a body half-read on a kept-alive
//! connection, and request trailers.
//!
//! Every hostile message carries a second request inside the bytes a confused parser would read
//! as a new message (`GET /pub/smuggled`), followed by a legitimate `GET /pub/after` that closes
//! the connection. A smuggled request that reaches the upstream as a request of its own is the
//! failure each test looks for, next to the status the client gets.

use std::time::Duration;

use super::{Recorder, exchange, gateway};

const WAIT: Duration = Duration::from_secs(5);
const SMUGGLED: &str = "GET /pub/smuggled HTTP/1.1\r\nHost: x\r\nX-User: admin\r\n\r\n";
const AFTER: &str = "GET /pub/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// No request the upstream received is the smuggled one, and every one it received is a request
/// the test sent on purpose.
fn assert_nothing_smuggled(up: &Recorder, allowed: &[&str], case: &str) {
    for seen in up.seen() {
        assert!(
            allowed.contains(&seen.target.as_str()),
            "{case}: the upstream received {:?} as a request: {seen:#?}",
            seen.target
        );
        assert!(
            !String::from_utf8_lossy(&seen.body).contains("/pub/smuggled") || seen.body_error,
            "{case}: a complete body carried the smuggled request to the upstream: {seen:#?}"
        );
    }
}

/// RFC 9112 §6.3 allows two answers to a message with both Content-Length and
/// Transfer-Encoding: refuse it, or read it by Transfer-Encoding alone, drop the Content-Length
/// before forwarding and close the connection after responding. Anything else is a desync.
async fn assert_refused_or_read_as_chunked_then_closed(
    gw: &crate::support::TestGateway,
    up: &Recorder,
    headers: &str,
    body: &str,
    chunked_reading: &[u8],
) {
    let before = up.seen().len();
    let request = format!("POST /pub/a HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n{body}{AFTER}");
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    let statuses = out.statuses();
    assert!(
        out.closed && statuses.len() <= 1,
        "{headers:?}: the connection must close after the first response: {}",
        out.text
    );
    let new: Vec<_> = up.seen().into_iter().skip(before).collect();
    match statuses.first() {
        Some(400 | 501) | None => assert!(new.is_empty(), "{headers:?}: {new:#?}"),
        Some(200) => {
            assert_eq!(new.len(), 1, "{headers:?}: {new:#?}");
            let seen = &new[0];
            assert_eq!(seen.target, "/pub/a");
            assert_eq!(seen.body, chunked_reading, "{headers:?}: {seen:#?}");
            assert!(
                seen.header("content-length")
                    .is_none_or(|l| l == chunked_reading.len().to_string()),
                "{headers:?}: the client's Content-Length was forwarded next to a chunked body: {seen:#?}"
            );
        }
        Some(other) => panic!("{headers:?}: unexpected {other}: {}", out.text),
    }
}

#[tokio::test]
async fn cl_te_and_te_cl_desync_cannot_smuggle_a_request() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // Each message reads differently by Content-Length and by Transfer-Encoding.
    let chunked_then_smuggled = format!("0\r\n\r\n{SMUGGLED}");
    let smuggled_as_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let cases: Vec<(String, String, &[u8])> = vec![
        (
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked",
                chunked_then_smuggled.len()
            ),
            chunked_then_smuggled.clone(),
            b"",
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 4".to_owned(),
            smuggled_as_chunk.clone(),
            SMUGGLED.as_bytes(),
        ),
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked".to_owned(),
            chunked_then_smuggled.clone(),
            b"",
        ),
    ];
    for (headers, body, chunked_reading) in cases {
        assert_refused_or_read_as_chunked_then_closed(&gw, &up, &headers, &body, chunked_reading)
            .await;
    }
    assert!(
        !up.targets().iter().any(|t| t == "/pub/smuggled"),
        "{:?}",
        up.targets()
    );
}

#[tokio::test]
async fn obfuscated_transfer_encoding_next_to_content_length_cannot_smuggle() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // A Content-Length sits next to each spelling, so a parser that ignores the spelling reads the
    // body by length and one that honours it reads chunks.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let spellings = [
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding:  chunked",
        "Transfer-Encoding:\tchunked",
        "Transfer-Encoding: CHUNKED",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding\t: chunked",
        "Transfer-Encoding: \"chunked\"",
        "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding:\r\n chunked",
        " Transfer-Encoding: chunked",
        "X: y\r\n Transfer-Encoding: chunked",
    ];
    for te in spellings {
        let headers = format!("Content-Length: {}\r\n{te}", body.len());
        assert_refused_or_read_as_chunked_then_closed(&gw, &up, &headers, &body, b"").await;
    }
    assert!(
        !up.targets().iter().any(|t| t == "/pub/smuggled"),
        "{:?}",
        up.targets()
    );
}

#[tokio::test]
async fn unknown_or_misplaced_transfer_codings_are_refused() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // Without any Content-Length: chunked must be the last coding (RFC 9112 §6.3), and a coding
    // the gateway does not implement is not passed on for the upstream to interpret.
    let mut accepted = Vec::new();
    for te in [
        "xchunked",
        "chunked, identity",
        "identity",
        "gzip",
        "chunked, chunked",
        "identity, chunked",
        "gzip, chunked",
    ] {
        let before = up.seen().len();
        let request = format!(
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}{AFTER}"
        );
        let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
        let first = out.statuses().first().copied();
        let reached: Vec<String> = up.targets().into_iter().skip(before).collect();
        if !matches!(first, Some(400 | 501) | None) || !out.closed || !reached.is_empty() {
            accepted.push(format!(
                "{te:?}: statuses {:?}, closed {}, upstream saw {reached:?}",
                out.statuses(),
                out.closed
            ));
        }
    }
    assert!(
        accepted.is_empty(),
        "transfer codings the gateway cannot decode were accepted:\n{}",
        accepted.join("\n")
    );
    // HTTP/1.0 has no chunked coding at all (RFC 9112 §6.1).
    let request = format!(
        "POST /pub/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    assert!(
        matches!(out.statuses().first(), Some(400) | None),
        "{}",
        out.text
    );
    up.assert_untouched();
}

#[tokio::test]
async fn conflicting_or_malformed_content_length_is_refused() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let body = format!("hello{SMUGGLED}");
    let cases = [
        "Content-Length: 5\r\nContent-Length: 6".to_owned(),
        format!("Content-Length: 5\r\nContent-Length: {}", body.len()),
        format!("Content-Length: 5, {}", body.len()),
        "Content-Length: +5".to_owned(),
        "Content-Length: -5".to_owned(),
        "Content-Length: 0x5".to_owned(),
        "Content-Length: 5.0".to_owned(),
        "Content-Length: 5 5".to_owned(),
        "Content-Length: ".to_owned(),
        "Content-Length: 99999999999999999999999".to_owned(),
        "Content-Length : 5".to_owned(),
    ];
    for cl in &cases {
        let request = format!("POST /pub/a HTTP/1.1\r\nHost: x\r\n{cl}\r\n\r\n{body}{AFTER}");
        let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
        assert!(
            matches!(out.statuses().first(), Some(400) | None),
            "{cl:?}: expected 400, got {}",
            out.text
        );
        assert!(
            out.closed && out.statuses().len() <= 1,
            "{cl:?}: {}",
            out.text
        );
        assert_nothing_smuggled(&up, &[], cl);
    }
    up.assert_untouched();

    // Identical repeats are one length (RFC 9110 §8.6): the upstream gets exactly that body, with
    // one Content-Length, and the bytes after it are the next request, not part of this one.
    let request = format!(
        "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{AFTER}"
    );
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    if out.statuses().first() == Some(&200) {
        let seen = up.seen();
        assert_eq!(seen[0].body, b"hello");
        assert_eq!(
            seen[0].headers.get_all("content-length").iter().count(),
            1,
            "{:?}",
            seen[0].headers
        );
    } else {
        assert_eq!(out.statuses().first(), Some(&400), "{}", out.text);
    }
}

#[tokio::test]
async fn chunk_size_anomalies_never_complete_a_request() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let bodies = [
        // Size overflow: a parser that wraps reads zero and takes the rest as a new request.
        format!("10000000000000000\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        format!("fffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        format!("-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        format!("0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        format!("+5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        format!("5 5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        // Data longer than its size, or no CRLF after the data.
        format!("3\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        format!("5\r\nhelloXX0\r\n\r\n{SMUGGLED}"),
        // Bare LF and bare CR line endings (RFC 9112 §2.2 allows neither in chunk framing).
        format!("5\nhello\n0\n\n{SMUGGLED}"),
        format!("5\rhello\r0\r\r{SMUGGLED}"),
        // A chunk extension carrying a line break.
        format!("5;x=\"a\nb\"\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        // No size at all.
        format!("\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
    ];
    for body in &bodies {
        let request = format!(
            "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{AFTER}"
        );
        let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
        let case = body.lines().next().unwrap_or_default();
        assert!(
            !out.statuses().contains(&200),
            "{case:?}: a malformed chunked body was answered 200: {}",
            out.text
        );
        assert!(out.closed, "{case:?}: connection left open: {}", out.text);
        // The request line and headers were fine, so the gateway may have started forwarding;
        // the upstream must then see the body fail, never complete.
        for seen in up.seen() {
            assert_eq!(seen.target, "/pub/a", "{case:?}: {seen:#?}");
            assert!(seen.body_error, "{case:?}: the body completed: {seen:#?}");
        }
    }
}

#[tokio::test]
async fn cl0_bodies_on_get_head_and_options_are_refused_and_not_parsed_as_requests() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // CL.0: a front end that ignores a GET's body passes the smuggled bytes on as a request.
    let cases = [
        format!(
            "GET /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
        format!(
            "HEAD /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
        format!(
            "OPTIONS /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
        format!(
            "GET /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
            SMUGGLED.len()
        ),
    ];
    for request in &cases {
        let out = exchange(gw.addr, format!("{request}{AFTER}").as_bytes(), WAIT).await;
        let line = request.lines().next().unwrap_or_default();
        assert_eq!(out.statuses().first(), Some(&400), "{line}: {}", out.text);
        // Either the body was drained as a body and the next request served, or the connection
        // closed; never a response to the smuggled request.
        assert!(out.statuses().len() <= 2, "{line}: {}", out.text);
        assert_nothing_smuggled(&up, &["/pub/after"], line);
    }
}

#[tokio::test]
async fn early_401_with_unread_body_does_not_turn_the_body_into_a_request() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // The protected route refuses before reading the body; the body holds a whole request.
    let request = format!(
        "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}{AFTER}",
        SMUGGLED.len()
    );
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    assert_eq!(out.statuses().first(), Some(&401), "{}", out.text);
    assert!(out.statuses().len() <= 2, "{}", out.text);
    if let Some(second) = out.statuses().get(1) {
        assert_eq!(*second, 200, "{}", out.text);
        assert_eq!(up.targets(), vec!["/pub/after"]);
    }
    assert_nothing_smuggled(&up, &["/pub/after"], "401");

    // The same with a chunked body, and with a no-route 404.
    let chunked = format!(
        "POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n{AFTER}",
        SMUGGLED.len()
    );
    let out = exchange(gw.addr, chunked.as_bytes(), WAIT).await;
    assert_eq!(out.statuses().first(), Some(&401), "{}", out.text);
    let no_route = format!(
        "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}{AFTER}",
        SMUGGLED.len()
    );
    let out = exchange(gw.addr, no_route.as_bytes(), WAIT).await;
    assert_eq!(out.statuses().first(), Some(&404), "{}", out.text);
    assert_nothing_smuggled(&up, &["/pub/after"], "404");
}

#[tokio::test]
async fn early_413_leaves_no_half_read_body_to_be_parsed_as_a_request() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "[server]\nmax_body_bytes = 1000").await;
    // A declared length over the limit is answered at once; the bytes that follow are still body
    // bytes of that request, however much they look like a request.
    let request =
        format!("POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{SMUGGLED}{AFTER}");
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    assert_eq!(out.statuses(), vec![413], "{}", out.text);
    assert!(out.closed, "{}", out.text);
    up.assert_untouched();

    // A chunked body that crosses the limit mid-stream, then a smuggled request in the same bytes.
    let big = "a".repeat(1500);
    let request = format!(
        "POST /pub/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n{AFTER}",
        big.len(),
        SMUGGLED.len()
    );
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    assert_eq!(out.statuses().first(), Some(&413), "{}", out.text);
    for seen in up.seen() {
        assert!(seen.body.len() <= 1000, "{seen:#?}");
        assert!(seen.body_error, "a truncated body completed: {seen:#?}");
    }
    assert_nothing_smuggled(&up, &["/pub/a", "/pub/after"], "chunked 413");
}

#[tokio::test]
async fn pipelined_requests_with_mixed_auth_never_share_identity() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let token = gw.access_token("alice", "secret").await;
    // One connection: an authenticated request, an unauthenticated one spoofing the identity, a
    // refused one, an optional-route one without a token, and a public one; each is judged alone.
    let pipeline = format!(
        "GET /api/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-User: mallory\r\n\r\n\
         GET /opt/2 HTTP/1.1\r\nHost: x\r\nX-User: alice\r\nX-User-Roles: admin\r\n\r\n\
         GET /api/3 HTTP/1.1\r\nHost: x\r\nX_User: alice\r\n\r\n\
         GET /admin/4 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-User-Roles: admin\r\n\r\n\
         GET /pub/5 HTTP/1.1\r\nHost: x\r\nX.User: alice\r\nConnection: close\r\n\r\n"
    );
    let out = exchange(gw.addr, pipeline.as_bytes(), WAIT).await;
    assert_eq!(
        out.statuses(),
        vec![200, 200, 401, 403, 200],
        "{}",
        out.text
    );
    let seen = up.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/api/1", "/opt/2", "/pub/5"]);
    let mut expected_first = vec![
        ("x-user".to_owned(), "alice".to_owned()),
        ("x-user-roles".to_owned(), "user".to_owned()),
        ("x-user-scopes".to_owned(), "read".to_owned()),
    ];
    let mut first = seen[0].identity_headers();
    first.sort();
    expected_first.sort();
    assert_eq!(first, expected_first);
    assert!(
        seen[1].identity_headers().is_empty(),
        "{:?}",
        seen[1].headers
    );
    assert!(
        seen[2].identity_headers().is_empty(),
        "{:?}",
        seen[2].headers
    );
}

#[tokio::test]
async fn request_trailers_are_never_forwarded() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    let token = gw.access_token("alice", "secret").await;
    // Trailers arrive after the gateway injected the identity: forwarding them would let a client
    // append an identity (or a framing header) the upstream merges into the header section.
    let request = format!(
        "POST /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTE: trailers\r\nTrailer: X-User, X-User-Roles\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nX-User: admin\r\nX-User-Roles: admin\r\nContent-Length: 999\r\nAuthorization: Bearer forged\r\n\r\n"
    );
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    assert_eq!(out.statuses(), vec![200], "{}", out.text);
    let seen = up.only();
    assert_eq!(seen.body, b"hello");
    assert!(
        seen.trailers.is_none(),
        "trailers reached the upstream: {:?}",
        seen.trailers
    );
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(seen.header("x-user-roles"), Some("user"));
    for gone in ["trailer", "te"] {
        assert!(seen.header(gone).is_none(), "{gone}: {:?}", seen.headers);
    }
}

#[tokio::test]
async fn framing_header_aliases_never_reach_the_upstream() {
    let up = Recorder::start().await;
    let gw = gateway(&up, "").await;
    // CGI-style upstreams fold `_` and `.` into `-`: these would become a second Content-Length or
    // a Transfer-Encoding at the upstream, next to the framing the gateway wrote.
    let request = "POST /pub/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent_Length: 500\r\nContent.Length: 500\r\nTransfer_Encoding: chunked\r\nTransfer.Encoding: chunked\r\nConnection: close\r\n\r\nhello";
    let out = exchange(gw.addr, request.as_bytes(), WAIT).await;
    let seen = up.seen();
    if out.statuses().first() == Some(&400) {
        assert!(seen.is_empty(), "{seen:#?}");
        return;
    }
    assert_eq!(out.statuses(), vec![200], "{}", out.text);
    let seen = up.only();
    assert_eq!(seen.body, b"hello");
    let names = seen.folded_names();
    assert_eq!(
        names.iter().filter(|n| *n == "content-length").count(),
        1,
        "an alias of Content-Length reached the upstream: {:?}",
        seen.headers
    );
    assert!(
        !names.iter().any(|n| n == "transfer-encoding"),
        "an alias of Transfer-Encoding reached the upstream: {:?}",
        seen.headers
    );
}
