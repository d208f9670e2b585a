//! Fuzz the request head parser and the WebSocket upgrade built on it.
//!
//! The input is the raw bytes a client sends before the upgrade. When
//! `parse_head` finds a complete head, the upgrade is checked exactly as the
//! server does it, and every response the server could send back must be a
//! well-formed HTTP head: no CR or LF from the request may get into it
//! (header injection), and it must parse back to the expected fields.
#![no_main]

use hubbub::http::{parse_head, Head, HeadError};
use hubbub::ws::{check_upgrade, response_101, UpgradeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, used) = match parse_head(data) {
        Ok(Some(parsed)) => parsed,
        Ok(None) | Err(HeadError::TooLarge | HeadError::Malformed) => return,
        Err(HeadError::Closed) => panic!("parse_head reported Closed: only reads may"),
    };
    assert!(
        used > 0 && used <= data.len(),
        "head length {used} of {}",
        data.len()
    );
    check_prefix_alone(data, &head, used);

    // What the routes read from a head; must not panic on any input.
    let _ = head.param("token");
    let _ = head.header("authorization");

    let headers: Vec<httparse::Header<'_>> = head
        .headers
        .iter()
        .map(|(name, value)| httparse::Header {
            name: name.as_str(),
            value: value.as_slice(),
        })
        .collect();
    match check_upgrade(&head.method, head.version, &headers) {
        Ok(upgrade) => {
            assert_eq!(upgrade.accept.len(), 28, "accept key {:?}", upgrade.accept);
            // The server echoes the first offer (or none); any offer must be safe.
            check_101(&upgrade.accept, None);
            for protocol in &upgrade.protocols {
                check_101(&upgrade.accept, Some(protocol));
            }
        }
        Err(refusal) => check_refusal(&refusal),
    }
});

/// The head ends at `used`: parsing only those bytes gives the same head.
fn check_prefix_alone(data: &[u8], head: &Head, used: usize) {
    let Ok(Some((again, used_again))) = parse_head(&data[..used]) else {
        panic!("the first {used} bytes alone are not a complete head");
    };
    assert_eq!(used_again, used);
    assert_eq!(again.method, head.method);
    assert_eq!(again.path, head.path);
    assert_eq!(again.query, head.query);
    assert_eq!(again.version, head.version);
    assert_eq!(again.headers, head.headers);
}

/// `response_101` must be a head of CRLF-terminated lines whose only CR and
/// LF bytes are those line endings, and must parse back to what was put in.
fn check_101(accept: &str, protocol: Option<&str>) {
    let resp = response_101(accept, protocol);
    assert!(resp.ends_with(b"\r\n\r\n"), "unterminated 101: {resp:?}");

    let lines: Vec<&[u8]> = split_crlf(&resp[..resp.len() - 2]);
    let expected_lines = 4 + usize::from(protocol.is_some());
    assert_eq!(
        lines.len(),
        expected_lines,
        "101 has injected lines: {:?}",
        String::from_utf8_lossy(&resp)
    );
    for line in &lines {
        assert!(!line.is_empty(), "blank line inside the 101 head");
        assert!(
            !line.iter().any(|&b| b == b'\r' || b == b'\n'),
            "bare CR or LF in the 101 head: {:?}",
            String::from_utf8_lossy(&resp)
        );
    }

    let mut parsed = [httparse::EMPTY_HEADER; 8];
    let mut response = httparse::Response::new(&mut parsed);
    let status = response.parse(&resp).expect("101 head does not parse");
    assert_eq!(status, httparse::Status::Complete(resp.len()));
    assert_eq!(response.code, Some(101));
    assert_eq!(response.headers.len(), expected_lines - 1);
    let value = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    assert_eq!(value("sec-websocket-accept"), Some(accept.as_bytes()));
    assert_eq!(value("sec-websocket-protocol"), protocol.map(str::as_bytes));
}

/// A refusal is a complete response whose body is the reason.
fn check_refusal(refusal: &UpgradeError) {
    assert!(
        matches!(refusal.status, 400 | 405 | 426),
        "status {}",
        refusal.status
    );
    let raw = refusal.response();
    let mut parsed = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut parsed);
    let Ok(httparse::Status::Complete(body_at)) = response.parse(&raw) else {
        panic!(
            "refusal is not a complete head: {:?}",
            String::from_utf8_lossy(&raw)
        );
    };
    assert_eq!(response.code, Some(refusal.status));
    assert_eq!(&raw[body_at..], refusal.reason.as_bytes());
}

/// Split on CRLF; a trailing CRLF does not make an empty last line.
fn split_crlf(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\r' && bytes[i + 1] == b'\n' {
            lines.push(&bytes[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < bytes.len() {
        lines.push(&bytes[start..]);
    }
    lines
}
