//! Fuzz `hubbub::ws::Decoder`: client bytes, fed whole and in pieces.
//!
//! Input layout (see README.md):
//!
//! ```text
//! byte 0        bits 0-2: limits, an index into LIMITS
//!               bits 3-5: k, how many chunk-length bytes follow (0..=7)
//! bytes 1..=k   chunk lengths, used in a cycle to cut the stream (0 = an
//!               empty append, i.e. decode called again with nothing new)
//! the rest      the byte stream a client sends after the upgrade
//! ```
//!
//! Checked: no panic; the stream decoded in one piece and in chunks yields
//! exactly the same sequence of messages and errors; an error is sticky;
//! the messages never hold more bytes than the stream carried; and each
//! message respects what the decoder promises (limits, UTF-8, close codes).
#![no_main]

use bytes::BytesMut;
use hubbub::ws::{
    is_valid_close_code, Decoder, Message, WsError, MAX_CLOSE_REASON, MAX_CONTROL_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;

/// (max_frame, max_message) pairs. Small ones make the limit checks
/// reachable with short inputs; the last one probes length arithmetic.
const LIMITS: [(usize, usize); 8] = [
    (0, 0),
    (16, 40),
    (125, 125),
    (126, 300),
    (65_535, 65_536),
    (1 << 20, 1 << 20), // what the server uses: max_frame == max_message
    (1 << 20, 4 << 20),
    (usize::MAX, usize::MAX),
];

/// Smallest frame on the wire: 2 header bytes + 4 mask-key bytes.
const MIN_FRAME: usize = 6;

type Outcome = Result<Message, WsError>;

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let (max_frame, max_message) = LIMITS[usize::from(cfg & 0x07)];
    let k = usize::from((cfg >> 3) & 0x07).min(rest.len());
    let (lengths, stream) = rest.split_at(k);

    let whole = decode_whole(max_frame, max_message, stream);
    check_messages(&whole, stream.len(), max_frame, max_message);

    let chunked = decode_chunked(max_frame, max_message, stream, lengths);
    assert_eq!(
        whole, chunked,
        "split into chunks of {lengths:?}, the decoder gave other results"
    );
});

/// Decode `stream` appended in one go.
fn decode_whole(max_frame: usize, max_message: usize, stream: &[u8]) -> Vec<Outcome> {
    let mut dec = Decoder::new(max_frame, max_message);
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    if let Some(err) = drain(&mut dec, &mut buf, &mut out) {
        // Sticky: more calls, with or without new bytes, repeat the error.
        assert_eq!(dec.decode(&mut buf), Err(err));
        buf.extend_from_slice(b"\x82\x80\0\0\0\0"); // a valid empty binary frame
        assert_eq!(dec.decode(&mut buf), Err(err));
        assert_eq!(dec.decode(&mut BytesMut::new()), Err(err));
    }
    out
}

/// Decode `stream` appended piece by piece, cut by the cycle of `lengths`.
fn decode_chunked(
    max_frame: usize,
    max_message: usize,
    stream: &[u8],
    lengths: &[u8],
) -> Vec<Outcome> {
    // Without a non-zero length the cycle would never advance.
    let lengths: &[u8] = if lengths.iter().any(|&n| n > 0) {
        lengths
    } else {
        &[]
    };
    let mut dec = Decoder::new(max_frame, max_message);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut failed = None;
    let mut at = 0;
    let mut cycle = lengths.iter().cycle();
    loop {
        let take = match cycle.next() {
            Some(&n) => usize::from(n).min(stream.len() - at),
            None => stream.len() - at,
        };
        buf.extend_from_slice(&stream[at..at + take]);
        at += take;
        match failed {
            // Keep feeding after the error: it must stay the same.
            Some(err) => assert_eq!(dec.decode(&mut buf), Err(err)),
            None => failed = drain(&mut dec, &mut buf, &mut out),
        }
        if at == stream.len() {
            break;
        }
    }
    out
}

/// Call `decode` until it wants more bytes or fails; returns the error.
fn drain(dec: &mut Decoder, buf: &mut BytesMut, out: &mut Vec<Outcome>) -> Option<WsError> {
    loop {
        match dec.decode(buf) {
            Ok(Some(msg)) => out.push(Ok(msg)),
            Ok(None) => return None,
            Err(err) => {
                out.push(Err(err));
                return Some(err);
            }
        }
    }
}

/// What every returned message must satisfy on its own, and the byte
/// budget of the whole stream.
fn check_messages(outcomes: &[Outcome], stream_len: usize, max_frame: usize, max_message: usize) {
    let mut data_bytes = 0usize;
    let mut wire_bytes = 0usize;
    for (i, outcome) in outcomes.iter().enumerate() {
        let msg = match outcome {
            Ok(msg) => msg,
            Err(_) => {
                assert_eq!(i + 1, outcomes.len(), "an error must be the last outcome");
                continue;
            }
        };
        let payload = match msg {
            Message::Text(b) => {
                assert!(std::str::from_utf8(b).is_ok(), "text message is not UTF-8");
                assert!(b.len() <= max_message, "message over max_message");
                data_bytes += b.len();
                b.len()
            }
            Message::Binary(b) => {
                assert!(b.len() <= max_message, "message over max_message");
                data_bytes += b.len();
                b.len()
            }
            Message::Ping(b) | Message::Pong(b) => {
                assert!(
                    b.len() <= MAX_CONTROL_PAYLOAD.min(max_frame),
                    "control payload too big"
                );
                b.len()
            }
            Message::Close(None) => 0,
            Message::Close(Some(close)) => {
                assert!(is_valid_close_code(close.code), "close code {}", close.code);
                assert!(
                    close.reason.len() <= MAX_CLOSE_REASON,
                    "close reason too long"
                );
                assert!(
                    2 + close.reason.len() <= max_frame,
                    "close frame over max_frame"
                );
                2 + close.reason.len()
            }
        };
        // Each message took at least one frame header off the wire.
        wire_bytes += MIN_FRAME + payload;
    }
    assert!(
        data_bytes <= stream_len,
        "{data_bytes} data bytes out of {stream_len}"
    );
    assert!(
        wire_bytes <= stream_len,
        "{wire_bytes} bytes of messages out of {stream_len}"
    );
}
