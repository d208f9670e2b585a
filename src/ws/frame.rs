//! Frame-level vocabulary of RFC 6455 §5: opcodes, the messages the decoder
//! yields, its errors, payload masking, and the server-side frame encoder.
//!
//! The decoder state machine lives in `decoder.rs` and the header rules in
//! `header.rs`; this file holds what they share (including close-body
//! validation) plus the much simpler encoding direction.

use bytes::{BufMut, Bytes, BytesMut};

/// Largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest close reason that fits in a control frame beside the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// One complete message (or control frame) received from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A complete text message (all fragments joined), UTF-8 already validated.
    /// Mutable because the caller parses JSON in place with simd-json.
    Text(BytesMut),
    /// A complete binary message (all fragments joined).
    Binary(BytesMut),
    /// A ping; the caller answers with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong, solicited or not.
    Pong(Bytes),
    /// A close frame from the peer: None when it had no body.
    Close(Option<CloseFrame>),
}

/// The body of a close frame: status code and UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Status code, already checked against the codes allowed on the wire.
    pub code: u16,
    /// Reason text, already checked to be UTF-8 (may be empty).
    pub reason: String,
}

impl CloseFrame {
    /// Parse and validate a received close body (RFC 6455 §5.5.1, §7.4):
    /// empty, or a valid status code followed by a UTF-8 reason.
    pub fn parse(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
        match payload {
            [] => Ok(None),
            [_] => Err(WsError::Protocol("close frame body of one byte")),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !is_valid_close_code(code) {
                    return Err(WsError::Protocol("invalid close code"));
                }
                let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
                Ok(Some(CloseFrame {
                    code,
                    reason: reason.to_owned(),
                }))
            }
        }
    }
}

/// Why the decoder gave up on the connection. Each maps to a close code.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// The peer broke the framing rules (close 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason was not UTF-8 (close 1007).
    #[error("invalid utf-8 in text message")]
    InvalidUtf8,
    /// A frame or message exceeded the configured limits (close 1009).
    #[error("message too big")]
    TooBig,
}

impl WsError {
    /// The status code to send in the close frame that ends the connection.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 => 1007,
            WsError::TooBig => 1009,
        }
    }
}

/// Opcodes for the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a later fragment of a data message.
    Continuation,
    /// 0x1: a UTF-8 text message.
    Text,
    /// 0x2: a binary message.
    Binary,
    /// 0x8: the closing handshake.
    Close,
    /// 0x9: a keep-alive probe.
    Ping,
    /// 0xA: the answer to a ping.
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Parse a wire value; `None` for the reserved opcodes 3-7 and B-F.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong: short, never fragmented, allowed mid-message.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Whether a received close code may legitimately appear on the wire.
///
/// 1004-1006 and 1015 are reserved for local use and must never be sent;
/// 1016-2999 are unassigned; 3000-4999 belong to libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XOR `data` with the 4-byte masking key, as if `data` began `offset` bytes
/// into the payload (so a payload can be unmasked in several pieces).
///
/// Works on 8-byte words: the key repeats every 4 bytes, so a word-wide key
/// lines up with every 8-byte chunk taken from the start of `data`. The
/// compiler turns the fixed-size chunk loop into SIMD code.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);

    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("chunk of 8"));
        chunk.copy_from_slice(&(word ^ wide).to_ne_bytes());
    }

    // The remainder starts at a multiple of 8, hence of 4: key phase 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Size of the header of an unmasked (server) frame with this payload length.
fn server_header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Write the header of an unmasked final frame.
fn put_server_header(out: &mut BytesMut, op: OpCode, payload_len: usize) {
    out.put_u8(0x80 | op.as_u8());
    match payload_len {
        0..=125 => out.put_u8(payload_len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(payload_len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(payload_len as u64);
        }
    }
}

/// One unmasked, final server frame: header + payload, ready to write. This is
/// the hot path of a broadcast (encoded once, the same Bytes written to every
/// recipient), so: one allocation, exact capacity.
#[must_use]
pub fn encode(op: OpCode, payload: &[u8]) -> Bytes {
    debug_assert!(
        !op.is_control() || payload.len() <= MAX_CONTROL_PAYLOAD,
        "control frame payload over 125 bytes"
    );

    // Exact capacity matters beyond memory: when a Vec-backed buffer is full
    // to capacity, `freeze` hands it to `Bytes` without a second allocation.
    let mut out = BytesMut::with_capacity(server_header_len(payload.len()) + payload.len());
    put_server_header(&mut out, op, payload.len());
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len(), out.capacity());
    out.freeze()
}

/// A close frame with a status code and a reason (truncated to fit 123 bytes
/// on a char boundary).
#[must_use]
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];

    let len = 2 + reason.len();
    let mut out = BytesMut::with_capacity(server_header_len(len) + len);
    put_server_header(&mut out, OpCode::Close, len);
    out.put_u16(code);
    out.extend_from_slice(reason);
    out.freeze()
}

/// Builders for client frames, shared by the decoder and header tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::apply_mask;
    use bytes::BufMut;

    pub const FIN: u8 = 0x80;
    pub const CONT: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BIN: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
    pub const KEY: [u8; 4] = [0xA1, 0xB2, 0xC3, 0xD4];

    /// A masked client frame with the shortest length form; `b0` carries
    /// FIN, the RSV bits and the opcode.
    pub fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.put_u16(n as u16);
            }
            n => {
                out.push(0x80 | 127);
                out.put_u64(n as u64);
            }
        }
        out.extend_from_slice(&KEY);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], KEY, 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        assert_eq!(WsError::Protocol("x").close_code(), 1002);
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        assert_eq!(WsError::TooBig.close_code(), 1009);
        assert_eq!(WsError::Protocol("bad").to_string(), "protocol error: bad");

        for ok in [1000, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 4999] {
            assert!(is_valid_close_code(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(bad), "{bad}");
        }
    }

    #[test]
    fn close_bodies() {
        assert_eq!(CloseFrame::parse(b""), Ok(None));
        let one_byte = Err(WsError::Protocol("close frame body of one byte"));
        assert_eq!(CloseFrame::parse(b"\x03"), one_byte);

        for code in [1000u16, 1003, 1007, 1014, 3000, 4999] {
            let mut body = code.to_be_bytes().to_vec();
            body.extend_from_slice("ciao ✓".as_bytes());
            let reason = "ciao ✓".to_owned();
            assert_eq!(
                CloseFrame::parse(&body),
                Ok(Some(CloseFrame { code, reason }))
            );
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let e = CloseFrame::parse(&code.to_be_bytes());
            assert_eq!(e, Err(WsError::Protocol("invalid close code")), "{code}");
        }
        assert_eq!(
            CloseFrame::parse(b"\x03\xe8bad \xff"),
            Err(WsError::InvalidUtf8)
        );
        assert_eq!(
            CloseFrame::parse(b"\x03\xe8\xe2\x82"),
            Err(WsError::InvalidUtf8)
        );

        let mut longest = vec![0x03, 0xE8];
        longest.extend_from_slice(&[b'r'; MAX_CLOSE_REASON]);
        assert!(matches!(CloseFrame::parse(&longest), Ok(Some(_))));
    }

    #[test]
    fn opcode_round_trip() {
        for v in 0..16u8 {
            match OpCode::from_u8(v) {
                Some(op) => assert_eq!(op.as_u8(), v),
                None => assert!(matches!(v, 3..=7 | 0xB..=0xF), "{v}"),
            }
        }
        assert!(OpCode::Ping.is_control());
        assert!(!OpCode::Continuation.is_control());
    }

    #[test]
    fn mask_matches_bytewise_reference_at_every_offset() {
        let key = [0x37, 0xFA, 0x21, 0x3D];
        let original: Vec<u8> = (0..67u8).map(|i| i.wrapping_mul(31)).collect();
        for offset in 0..8 {
            for len in [0, 1, 3, 7, 8, 9, 16, 17, 67] {
                let mut fast = original[..len].to_vec();
                apply_mask(&mut fast, key, offset);
                let slow: Vec<u8> = original[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn mask_in_pieces_equals_mask_at_once() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..40).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let (a, rest) = pieces.split_at_mut(5);
        let (b, c) = rest.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 5);
        apply_mask(c, key, 18);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn encode_uses_the_shortest_length_form() {
        let f = encode(OpCode::Text, b"Hello");
        assert_eq!(&f[..], b"\x81\x05Hello");

        let f = encode(OpCode::Binary, &[7; 125]);
        assert_eq!(&f[..2], &[0x82, 125]);
        assert_eq!(f.len(), 127);

        let f = encode(OpCode::Binary, &[7; 126]);
        assert_eq!(&f[..4], &[0x82, 126, 0, 126]);
        assert_eq!(f.len(), 4 + 126);

        let f = encode(OpCode::Binary, &[7; 65535]);
        assert_eq!(&f[..4], &[0x82, 126, 0xFF, 0xFF]);
        assert_eq!(f.len(), 4 + 65535);

        let f = encode(OpCode::Binary, &[7; 65536]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(f.len(), 10 + 65536);
        assert!(f[10..].iter().all(|&b| b == 7));
    }

    #[test]
    fn encode_control_and_empty_frames() {
        assert_eq!(&encode(OpCode::Ping, b"")[..], &[0x89, 0]);
        assert_eq!(&encode(OpCode::Pong, b"ab")[..], b"\x8a\x02ab");
        assert_eq!(&encode(OpCode::Close, b"")[..], &[0x88, 0]);
        assert_eq!(&encode(OpCode::Continuation, b"x")[..], b"\x80\x01x");
    }

    #[test]
    fn encode_close_with_reason() {
        assert_eq!(&encode_close(1000, "")[..], &[0x88, 2, 0x03, 0xE8]);
        assert_eq!(&encode_close(1001, "bye")[..], b"\x88\x05\x03\xe9bye");
    }

    #[test]
    fn encode_close_truncates_on_char_boundary() {
        let long = "x".repeat(200);
        let f = encode_close(1000, &long);
        assert_eq!(f.len(), 2 + 125);
        assert_eq!(f[1] as usize, 125);

        // 122 ASCII bytes then a 3-byte char: only 122 bytes of reason fit.
        let tricky = format!("{}€", "a".repeat(122));
        let f = encode_close(1000, &tricky);
        assert_eq!(f[1] as usize, 2 + 122);
        assert!(std::str::from_utf8(&f[4..]).is_ok());

        // Exactly 123 bytes fits untouched.
        let exact = format!("{}€", "a".repeat(120));
        let f = encode_close(1008, &exact);
        assert_eq!(&f[4..], exact.as_bytes());
    }
}
