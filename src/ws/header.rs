//! Client frame headers (RFC 6455 §5.2): parsing, and every rule that can be
//! decided from the header alone, before any payload is read.
//!
//! Keeping these checks ahead of the payload is what lets the decoder refuse
//! an oversized or malformed frame without buffering it.

use super::frame::{OpCode, WsError, MAX_CONTROL_PAYLOAD};

/// A parsed, checked client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub fin: bool,
    pub op: OpCode,
    /// The masking key (client frames are always masked).
    pub key: [u8; 4],
    /// Payload length in bytes.
    pub len: usize,
    /// Bytes the header itself occupies: 6, 8 or 14.
    pub size: usize,
}

/// What the header checks need to know about the decoder's state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// Bytes gathered so far by the open fragmented data message, or None
    /// when no message is open.
    pub open: Option<usize>,
    pub max_frame: usize,
    pub max_message: usize,
}

/// Parse the header at the front of `buf` without consuming anything.
///
/// `Ok(None)` means more bytes are needed. The rules that the first two
/// bytes decide are checked as soon as those two bytes are present, so a
/// garbage stream fails at once rather than after 14 bytes.
pub(crate) fn parse(buf: &[u8], cx: Context) -> Result<Option<FrameHeader>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };

    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let op = OpCode::from_u8(b0 & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("client frame is not masked"));
    }
    let len7 = b1 & 0x7F;
    check_placement(op, fin, len7, cx.open)?;

    let (len, len_size) = match len7 {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if len >> 63 != 0 {
        return Err(WsError::Protocol("64-bit length with the high bit set"));
    }

    // Size limits come from the announced length, before the mask key or
    // any payload has arrived.
    let len = usize::try_from(len).map_err(|_| WsError::TooBig)?;
    if len > cx.max_frame {
        return Err(WsError::TooBig);
    }
    if !op.is_control() && cx.open.unwrap_or(0).saturating_add(len) > cx.max_message {
        return Err(WsError::TooBig);
    }

    let key_at = 2 + len_size;
    let Some(key) = buf.get(key_at..key_at + 4) else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin,
        op,
        key: key.try_into().expect("4 bytes"),
        len,
        size: key_at + 4,
    }))
}

/// Control frames must be short and whole; data frames must respect the
/// fragmentation order (RFC 6455 §5.4, §5.5).
fn check_placement(op: OpCode, fin: bool, len7: u8, open: Option<usize>) -> Result<(), WsError> {
    if op.is_control() {
        if !fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(WsError::Protocol("control frame payload over 125 bytes"));
        }
        return Ok(());
    }
    match (op, open.is_some()) {
        (OpCode::Continuation, false) => {
            Err(WsError::Protocol("continuation frame without a message"))
        }
        (OpCode::Text | OpCode::Binary, true) => Err(WsError::Protocol(
            "new data frame inside a fragmented message",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::test_support::{masked, CONT, FIN, KEY, PING};

    const IDLE: Context = Context {
        open: None,
        max_frame: 1 << 20,
        max_message: 4 << 20,
    };

    fn protocol(wire: &[u8], cx: Context) -> bool {
        matches!(parse(wire, cx), Err(WsError::Protocol(_)))
    }

    #[test]
    fn length_forms() {
        for (len, size) in [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let wire = masked(FIN | 0x2, &vec![0; len]);
            let h = parse(&wire, IDLE).unwrap().unwrap();
            assert_eq!((h.len, h.size, h.key, h.fin), (len, size, KEY, true));
            assert_eq!(h.op, OpCode::Binary);

            // Every strict prefix of the header asks for more bytes.
            for cut in 0..size {
                assert_eq!(parse(&wire[..cut], IDLE), Ok(None), "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        let wire = [FIN | 0x1, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4];
        let h = parse(&wire, IDLE).unwrap().unwrap();
        assert_eq!((h.len, h.size), (5, 14));
    }

    #[test]
    fn unmasked_is_rejected_from_two_bytes() {
        let e = parse(&[FIN | 0x1, 0x05], IDLE);
        assert_eq!(e, Err(WsError::Protocol("client frame is not masked")));
    }

    #[test]
    fn reserved_bits_and_opcodes_are_rejected_from_two_bytes() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            assert!(protocol(&[FIN | rsv | 0x1, 0x80], IDLE), "rsv {rsv:#x}");
        }
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let e = parse(&[FIN | op, 0x80], IDLE);
            assert_eq!(e, Err(WsError::Protocol("reserved opcode")), "op {op:#x}");
        }
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        for op in [0x8, PING, 0xA] {
            let e = parse(&[op, 0x80], IDLE);
            assert_eq!(e, Err(WsError::Protocol("fragmented control frame")));
            for len7 in [126, 127] {
                assert!(protocol(&[FIN | op, 0x80 | len7], IDLE));
            }
            assert!(parse(&masked(FIN | op, &[0; 125]), IDLE).unwrap().is_some());
        }
    }

    #[test]
    fn control_frames_are_allowed_inside_a_message() {
        let open = Context {
            open: Some(10),
            ..IDLE
        };
        assert!(parse(&masked(FIN | PING, b""), open).unwrap().is_some());
    }

    #[test]
    fn fragmentation_order() {
        let open = Context {
            open: Some(0),
            ..IDLE
        };
        assert!(protocol(&[FIN | CONT, 0x80], IDLE));
        assert!(protocol(&[CONT, 0x80], IDLE));
        assert!(protocol(&[0x1, 0x80], open));
        assert!(protocol(&[FIN | 0x2, 0x80], open));
        assert!(parse(&masked(CONT, b"x"), open).unwrap().is_some());
    }

    #[test]
    fn high_bit_length_is_rejected() {
        let wire = [FIN | 0x2, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(protocol(&wire, IDLE));
    }

    #[test]
    fn limits_are_enforced_before_the_mask_key() {
        let cx = Context {
            open: None,
            max_frame: 100,
            max_message: 150,
        };
        // 101 bytes announced; only the first two header bytes present.
        assert_eq!(parse(&[FIN | 0x2, 0x80 | 101], cx), Err(WsError::TooBig));
        let huge = [
            FIN | 0x2,
            0x80 | 127,
            0x7F,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
        ];
        assert_eq!(parse(&huge, cx), Err(WsError::TooBig));
        assert!(parse(&masked(FIN | 0x2, &[0; 100]), cx).unwrap().is_some());

        // The message limit counts what the open message already holds.
        let open = Context {
            open: Some(100),
            ..cx
        };
        assert_eq!(parse(&[FIN | CONT, 0x80 | 51], open), Err(WsError::TooBig));
        assert!(parse(&masked(FIN | CONT, &[0; 50]), open)
            .unwrap()
            .is_some());

        // Control frames do not count towards the message.
        let full = Context {
            open: Some(150),
            ..cx
        };
        assert!(parse(&masked(FIN | PING, b"p"), full).unwrap().is_some());
    }
}
