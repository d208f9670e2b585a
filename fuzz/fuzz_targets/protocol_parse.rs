//! Fuzz `hubbub::protocol::parse`, the JSON request parser (simd-json, in
//! place).
//!
//! The server only hands it the payload of a text message, which the
//! WebSocket decoder has already checked to be UTF-8. Each input is parsed
//! twice: as raw bytes (anything at all), and as its UTF-8-lossy form (the
//! kind of input the server really passes, and the same bytes when the input
//! was UTF-8). Both parses share one `simd_json::Buffers`, reused as the
//! shard reuses it, so stale scratch contents must not change a result.
//!
//! Checked: no panic; an id (in a request or an error) is at most
//! `MAX_ID_BYTES`; for UTF-8 input both parses agree.
#![no_main]

use std::borrow::Cow;

use hubbub::protocol::{parse, ClientError, Frame, Request, MAX_ID_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut scratch = simd_json::Buffers::default();

    let mut raw = data.to_vec();
    let first = summary(parse(&mut raw, &mut scratch));

    let text = String::from_utf8_lossy(data);
    let mut utf8 = text.as_bytes().to_vec();
    let second = summary(parse(&mut utf8, &mut scratch));

    if matches!(text, Cow::Borrowed(_)) {
        assert_eq!(
            first, second,
            "same bytes, other result with reused scratch"
        );
    }
});

/// Check one result and turn it into something that outlives the buffer.
fn summary(result: Result<Frame<'_>, (Option<String>, ClientError)>) -> String {
    match &result {
        Ok(frame) => {
            if let Some(id) = frame.id {
                assert!(
                    id.len() <= MAX_ID_BYTES,
                    "accepted an id of {} bytes",
                    id.len()
                );
            }
            if let Request::History { limit, .. } = frame.request {
                assert!((1..=100).contains(&limit), "history limit {limit}");
            }
        }
        Err((Some(id), _)) => {
            assert!(
                id.len() <= MAX_ID_BYTES,
                "error repeats an id of {} bytes",
                id.len()
            );
        }
        Err((None, _)) => {}
    }
    format!("{result:?}")
}
