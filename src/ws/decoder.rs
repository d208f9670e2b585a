//! The server-side frame decoder: client bytes in, whole messages out.
//!
//! It owns the receive-side state of a connection: the frame whose payload
//! is still arriving, the fragmented message being assembled, and the UTF-8
//! state of a text message. Header-level rules live in `header.rs`; the
//! payload-level ones (UTF-8, close bodies, message assembly) live here.

use bytes::{Buf, BytesMut};

use super::frame::{apply_mask, CloseFrame, Message, OpCode, WsError};
use super::header::{self, Context};
use super::utf8::Utf8Validator;

/// A frame whose header has been consumed and whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct Frame {
    fin: bool,
    op: OpCode,
    key: [u8; 4],
    /// Payload length announced by the header.
    len: usize,
    /// Payload bytes at the front of the buffer that are already unmasked
    /// (and, for text, already validated).
    done: usize,
    /// Whether the payload belongs to a text message and needs UTF-8 checks.
    text: bool,
}

/// A fragmented data message whose final frame has not yet arrived.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
}

/// Incremental RFC 6455 decoder for one connection (server side).
///
/// Feed it the connection's read buffer: each call consumes from the front
/// and returns at most one message. After an error the connection must be
/// closed; the decoder keeps returning that error.
#[derive(Debug)]
pub struct Decoder {
    max_frame: usize,
    max_message: usize,
    /// Frame whose header is consumed but whose payload is incomplete.
    frame: Option<Frame>,
    /// Fragmented message in progress.
    partial: Option<Partial>,
    /// UTF-8 state of the text message in progress (single- or multi-frame).
    utf8: Utf8Validator,
    /// Sticky error: a broken stream cannot be resynchronised.
    failed: Option<WsError>,
}

impl Decoder {
    /// `max_frame`: largest single frame payload accepted; `max_message`:
    /// largest complete (possibly fragmented) message. Both in bytes.
    pub fn new(max_frame: usize, max_message: usize) -> Self {
        Self {
            max_frame,
            max_message,
            frame: None,
            partial: None,
            utf8: Utf8Validator::new(),
            failed: None,
        }
    }

    /// Consume bytes from the front of `buf` and return the next complete
    /// message, Ok(None) when more bytes are needed (nothing lost: partial
    /// frames stay in `buf`, or in the decoder's fragment state), or an error,
    /// after which the caller closes the connection with `err.close_code()`.
    ///
    /// Between calls the caller may only append to `buf`: once a frame's
    /// header has been consumed, the bytes at the front of `buf` are its
    /// payload, partly unmasked in place already.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, WsError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let result = self.decode_inner(buf);
        if let Err(err) = result {
            self.failed = Some(err);
        }
        result
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, WsError> {
        // Loop because a non-final fragment completes a frame but not a
        // message; the next frame may already be in the buffer.
        loop {
            let mut frame = match self.frame {
                Some(frame) => frame,
                None => match self.start_frame(buf)? {
                    Some(frame) => frame,
                    None => return Ok(None),
                },
            };

            // Unmask (and validate) whatever payload arrived since last time,
            // so a bad UTF-8 sequence is caught before its frame completes.
            let avail = buf.len().min(frame.len);
            if avail > frame.done {
                let fresh = &mut buf[frame.done..avail];
                apply_mask(fresh, frame.key, frame.done);
                if frame.text && self.utf8.feed(fresh).is_err() {
                    return Err(WsError::InvalidUtf8);
                }
                frame.done = avail;
            }
            if frame.done < frame.len {
                self.frame = Some(frame);
                return Ok(None);
            }

            self.frame = None;
            let payload = buf.split_to(frame.len);
            if let Some(msg) = self.finish_frame(frame, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Parse the next header and consume it from `buf`; `Ok(None)` (with
    /// `buf` untouched) when the header is not complete yet.
    fn start_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WsError> {
        let cx = Context {
            open: self.partial.as_ref().map(|p| p.data.len()),
            max_frame: self.max_frame,
            max_message: self.max_message,
        };
        let Some(h) = header::parse(buf, cx)? else {
            return Ok(None);
        };
        buf.advance(h.size);

        let text = match h.op {
            OpCode::Text => {
                self.utf8.reset();
                true
            }
            OpCode::Continuation => self.partial.as_ref().is_some_and(|p| p.text),
            _ => false,
        };
        Ok(Some(Frame {
            fin: h.fin,
            op: h.op,
            key: h.key,
            len: h.len,
            done: 0,
            text,
        }))
    }

    /// Turn a complete, unmasked frame into a message, or fold it into the
    /// fragmented message in progress (returning `None`).
    fn finish_frame(
        &mut self,
        frame: Frame,
        payload: BytesMut,
    ) -> Result<Option<Message>, WsError> {
        match frame.op {
            OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
            OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
            OpCode::Close => return CloseFrame::parse(&payload).map(|c| Some(Message::Close(c))),
            _ => {}
        }

        // A data frame. `payload` was split off without copying; only
        // fragmented messages pay for joining their pieces.
        let data = match (frame.fin, self.partial.take()) {
            (false, None) => {
                let text = frame.op == OpCode::Text;
                self.partial = Some(Partial {
                    text,
                    data: payload,
                });
                return Ok(None);
            }
            (false, Some(mut partial)) => {
                partial.data.extend_from_slice(&payload);
                self.partial = Some(partial);
                return Ok(None);
            }
            (true, None) => payload,
            (true, Some(mut partial)) => {
                partial.data.extend_from_slice(&payload);
                partial.data
            }
        };

        if !frame.text {
            return Ok(Some(Message::Binary(data)));
        }

        // Every byte was validated on arrival; what remains to catch is a
        // character cut off by the end of the message.
        if !self.utf8.is_complete() {
            return Err(WsError::InvalidUtf8);
        }
        Ok(Some(Message::Text(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    use crate::ws::frame::test_support::{masked, BIN, CLOSE, CONT, FIN, PING, PONG, TEXT};

    fn decoder() -> Decoder {
        Decoder::new(1 << 20, 4 << 20)
    }

    /// Decode everything in `bytes` fed at once; stops at the first error.
    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, WsError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(msg) = dec.decode(&mut buf)? {
            out.push(msg);
        }
        Ok(out)
    }

    /// Feed one byte at a time; on error, report the index of the byte that
    /// triggered it.
    fn decode_bytewise(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, (usize, WsError)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            buf.put_u8(b);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(msg)) => out.push(msg),
                    Ok(None) => break,
                    Err(e) => return Err((i, e)),
                }
            }
        }
        Ok(out)
    }

    fn one(bytes: &[u8]) -> Result<Message, WsError> {
        let mut msgs = decode_all(&mut decoder(), bytes)?;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        Ok(msgs.remove(0))
    }

    fn err(bytes: &[u8]) -> WsError {
        decode_all(&mut decoder(), bytes).expect_err("should fail")
    }

    fn text(s: &str) -> Message {
        Message::Text(BytesMut::from(s))
    }

    fn binary(b: &[u8]) -> Message {
        Message::Binary(BytesMut::from(b))
    }

    #[test]
    fn rfc_masked_hello() {
        let wire = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        assert_eq!(one(wire), Ok(text("Hello")));
    }

    #[test]
    fn single_frame_is_not_copied() {
        for op in [TEXT, BIN] {
            let mut buf = BytesMut::from(&masked(FIN | op, b"payload bytes")[..]);
            let payload_at = buf.as_ptr() as usize + 6;
            let Ok(Some(Message::Text(b) | Message::Binary(b))) = decoder().decode(&mut buf) else {
                panic!("expected a data message");
            };
            assert_eq!(&b[..], b"payload bytes");
            assert_eq!(b.as_ptr() as usize, payload_at, "split off, not copied");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn incomplete_input_loses_nothing() {
        let wire = masked(FIN | TEXT, b"abc");
        let mut dec = decoder();
        let mut buf = BytesMut::from(&wire[..1]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], &wire[..1], "partial header stays in the buffer");
        buf.extend_from_slice(&wire[1..7]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&wire[7..]);
        buf.extend_from_slice(b"\x81"); // the start of the next frame
        assert_eq!(dec.decode(&mut buf), Ok(Some(text("abc"))));
        assert_eq!(&buf[..], b"\x81");
    }

    #[test]
    fn length_forms_7_16_and_64_bit() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(
                one(&masked(FIN | BIN, &payload)),
                Ok(binary(&payload)),
                "{len}"
            );
        }
    }

    #[test]
    fn every_byte_boundary_gives_the_same_messages() {
        let mut wire = Vec::new();
        wire.extend(masked(TEXT, "héllo ".as_bytes()));
        wire.extend(masked(FIN | PING, b"p1"));
        wire.extend(masked(CONT, "wörld €".as_bytes()));
        wire.extend(masked(FIN | CONT, "𝄞!".as_bytes()));
        wire.extend(masked(FIN | BIN, &[9; 300]));
        wire.extend(masked(FIN | TEXT, b""));
        wire.extend(masked(FIN | PONG, b""));
        let big_at = wire.len();
        wire.extend(masked(FIN | BIN, &[3; 65536]));
        wire.extend(masked(FIN | CLOSE, b"\x03\xe8done"));
        let expected = vec![
            Message::Ping("p1".into()),
            text("héllo wörld €𝄞!"),
            binary(&[9; 300]),
            text(""),
            Message::Pong("".into()),
            binary(&[3; 65536]),
            Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "done".into(),
            })),
        ];
        assert_eq!(decode_all(&mut decoder(), &wire), Ok(expected.clone()));
        assert_eq!(decode_bytewise(&mut decoder(), &wire), Ok(expected.clone()));

        // Two pieces, split everywhere except deep inside the big frame
        // (which would only repeat the same case 65 000 times).
        let tail_at = big_at + 14 + 65536;
        let splits = (0..big_at + 20).chain(tail_at - 3..=wire.len());
        for at in splits {
            let mut dec = decoder();
            let mut buf = BytesMut::from(&wire[..at]);
            let mut got = Vec::new();
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                got.push(m);
            }
            buf.extend_from_slice(&wire[at..]);
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                got.push(m);
            }
            assert_eq!(got, expected, "split at {at}");
        }
    }

    #[test]
    fn fragmentation_order_rules() {
        let e = err(&masked(FIN | CONT, b"x"));
        assert_eq!(e, WsError::Protocol("continuation frame without a message"));
        for op in [TEXT, BIN] {
            let mut wire = masked(BIN, b"a");
            wire.extend(masked(FIN | op, b"b"));
            assert!(matches!(err(&wire), WsError::Protocol(_)));
        }
    }

    #[test]
    fn limits_fail_from_the_header_alone() {
        // Only the first two header bytes of a 101-byte frame: refused.
        let mut buf = BytesMut::from(&masked(FIN | BIN, &[0; 101])[..2]);
        assert_eq!(
            Decoder::new(100, 1000).decode(&mut buf),
            Err(WsError::TooBig)
        );

        // Fragments adding up past the message limit: refused at the third
        // header, while the first two were accepted.
        let mut dec = Decoder::new(100, 250);
        let mut wire = masked(BIN, &[0; 100]);
        wire.extend(masked(CONT, &[0; 100]));
        assert_eq!(decode_all(&mut dec, &wire), Ok(vec![]));
        let mut buf = BytesMut::from(&masked(FIN | CONT, &[0; 51])[..2]);
        assert_eq!(dec.decode(&mut buf), Err(WsError::TooBig));

        // Exactly at both limits is fine.
        let mut wire = masked(TEXT, &[b'a'; 100]);
        wire.extend(masked(CONT, &[b'a'; 100]));
        wire.extend(masked(FIN | CONT, &[b'a'; 50]));
        let msgs = decode_all(&mut Decoder::new(100, 250), &wire).unwrap();
        assert_eq!(msgs, vec![text(&"a".repeat(250))]);
    }

    #[test]
    fn control_frames_between_fragments_keep_the_message() {
        let mut wire = masked(TEXT, b"one ");
        wire.extend(masked(FIN | PING, b"are you there"));
        wire.extend(masked(CONT, b"two "));
        wire.extend(masked(FIN | PONG, b"yes"));
        wire.extend(masked(FIN | CONT, b"three"));
        let mut dec = decoder();
        let mut buf = BytesMut::from(&wire[..]);
        let ping = Message::Ping("are you there".into());
        assert_eq!(dec.decode(&mut buf), Ok(Some(ping)));
        assert_eq!(dec.decode(&mut buf), Ok(Some(Message::Pong("yes".into()))));
        assert_eq!(dec.decode(&mut buf), Ok(Some(text("one two three"))));
        assert_eq!(dec.decode(&mut buf), Ok(None));

        // A close in the middle of a message is delivered at once too.
        let mut wire = masked(BIN, b"a");
        wire.extend(masked(FIN | CLOSE, b""));
        assert_eq!(
            decode_all(&mut decoder(), &wire),
            Ok(vec![Message::Close(None)])
        );
    }

    #[test]
    fn utf8_fails_fast_across_a_fragment_boundary() {
        // F4 then 90: impossible (> U+10FFFF). The second fragment is not
        // final and more data would follow, but its first payload byte ends it.
        let mut wire = masked(TEXT, b"ok \xf4");
        let second = masked(CONT, b"\x90\x80\x80 more");
        let proof = wire.len() + 6; // header (2) + key (4), then the 0x90
        wire.extend(&second);
        let got = decode_bytewise(&mut decoder(), &wire);
        assert_eq!(got, Err((proof, WsError::InvalidUtf8)));
    }

    #[test]
    fn utf8_fails_fast_inside_a_partially_received_frame() {
        let mut payload = b"valid start ".to_vec();
        payload.push(0xC0); // never valid
        payload.extend_from_slice(&[b'z'; 50]);
        let wire = masked(FIN | TEXT, &payload);
        let proof = 6 + 12;
        assert_eq!(
            decode_bytewise(&mut decoder(), &wire),
            Err((proof, WsError::InvalidUtf8))
        );
    }

    #[test]
    fn invalid_or_truncated_utf8_in_whole_messages() {
        let mut fragmented = masked(TEXT, b"fine");
        fragmented.extend(masked(FIN | CONT, b"\xff"));
        let mut cut_short = masked(TEXT, b"abc");
        cut_short.extend(masked(FIN | CONT, b"\xf0\x9f"));
        let cases = [
            masked(FIN | TEXT, b"\xed\xa0\x80"), // surrogate
            masked(FIN | TEXT, b"abc\xe2\x82"),  // ends mid-character
            fragmented,
            cut_short,
        ];
        for wire in cases {
            assert_eq!(err(&wire), WsError::InvalidUtf8, "{wire:02x?}");
        }
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let mut wire = masked(BIN, b"\xff\xfe");
        wire.extend(masked(FIN | CONT, b"\xc0"));
        assert_eq!(one(&wire), Ok(binary(b"\xff\xfe\xc0")));
    }

    #[test]
    fn close_frames_are_checked() {
        let bye = Message::Close(Some(CloseFrame {
            code: 4000,
            reason: "bye ✓".into(),
        }));
        let mut body = 4000u16.to_be_bytes().to_vec();
        body.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(one(&masked(FIN | CLOSE, &body)), Ok(bye));
        assert_eq!(one(&masked(FIN | CLOSE, b"")), Ok(Message::Close(None)));
        let bad = [
            (
                &b"\x03"[..],
                WsError::Protocol("close frame body of one byte"),
            ),
            (b"\x03\xed", WsError::Protocol("invalid close code")),
            (b"\x03\xe8\xff", WsError::InvalidUtf8),
        ];
        for (body, e) in bad {
            assert_eq!(err(&masked(FIN | CLOSE, body)), e);
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut dec = decoder();
        let mut buf = BytesMut::from(&b"\x81\x00"[..]);
        let e = dec.decode(&mut buf).unwrap_err();
        let mut good = BytesMut::from(&masked(FIN | TEXT, b"hi")[..]);
        assert_eq!(dec.decode(&mut good), Err(e));
        assert_eq!(e.close_code(), 1002);
    }

    #[test]
    fn fragments_join_in_order() {
        // Binary, with empty fragments, which are legal anywhere.
        let mut wire = masked(BIN, b"");
        wire.extend(masked(CONT, b"ab"));
        wire.extend(masked(CONT, b""));
        wire.extend(masked(FIN | CONT, b"cd"));
        // Text with a character split across three fragments.
        let euro = "€".as_bytes();
        wire.extend(masked(TEXT, &euro[..1]));
        wire.extend(masked(CONT, &euro[1..2]));
        // A ping while the character is half received must not disturb it.
        wire.extend(masked(FIN | PING, b"\xff"));
        wire.extend(masked(FIN | CONT, &euro[2..]));
        let msgs = decode_bytewise(&mut decoder(), &wire).unwrap();
        let ping = Message::Ping(vec![0xFF].into());
        assert_eq!(msgs, vec![binary(b"abcd"), ping, text("€")]);
    }
}
