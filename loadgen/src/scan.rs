//! Reads the few fields the generator needs out of a server frame without parsing its JSON.
//!
//! Every received frame passes through here, so this is the generator's receive hot path:
//! a SIMD substring search (memchr) for a quoted key, then a short walk over the value.
//! It trusts the frame to be the JSON object the server sent and extracts only flat values
//! (numbers, and strings without escapes); frames it cannot read yield `None`, never a panic.
//! Rare frames that need more (welcome, join acks) are parsed in full by their callers.
//!
//! The content mark is the generator's own: senders start `content` with
//! `t=<send time, µs since epoch>;c=<sending connection>;`, so a receiver gets the latency
//! and tells its own echo from others' messages without a lookup.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The frame types of PROTOCOL.md that a client receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    Ack,
    Message,
    Dm,
    Typing,
    Presence,
    History,
    Error,
    Pong,
    Other,
}

/// The sender's mark at the start of a message's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Send time in microseconds since the Unix epoch (see `clock`).
    pub sent_us: u64,
    /// Index of the sending connection.
    pub conn: u32,
}

/// Searchers for the quoted keys, built once. The closing quote keeps `"seq"` from matching
/// inside `"last_seq"` and `"id"` inside longer keys.
struct Keys {
    kind: Finder<'static>,
    seq: Finder<'static>,
    last_seq: Finder<'static>,
    room: Finder<'static>,
    code: Finder<'static>,
    id: Finder<'static>,
    content: Finder<'static>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    kind: Finder::new(b"\"type\""),
    seq: Finder::new(b"\"seq\""),
    last_seq: Finder::new(b"\"last_seq\""),
    room: Finder::new(b"\"room\""),
    code: Finder::new(b"\"code\""),
    id: Finder::new(b"\"id\""),
    content: Finder::new(b"\"content\""),
});

/// The frame's `type`.
pub fn kind(frame: &[u8]) -> Kind {
    match string_after(frame, &KEYS.kind) {
        Some(b"message") => Kind::Message,
        Some(b"ack") => Kind::Ack,
        Some(b"typing") => Kind::Typing,
        Some(b"dm") => Kind::Dm,
        Some(b"error") => Kind::Error,
        Some(b"welcome") => Kind::Welcome,
        Some(b"pong") => Kind::Pong,
        Some(b"presence") => Kind::Presence,
        Some(b"history") => Kind::History,
        _ => Kind::Other,
    }
}

/// The top-level `seq` of a message, dm or ack.
pub fn seq(frame: &[u8]) -> Option<u64> {
    number_after(frame, &KEYS.seq)
}

/// `last_seq`, present only in join acks.
pub fn last_seq(frame: &[u8]) -> Option<u64> {
    number_after(frame, &KEYS.last_seq)
}

/// The `room` of a message, ack or typing frame.
pub fn room(frame: &[u8]) -> Option<&[u8]> {
    string_after(frame, &KEYS.room)
}

/// The `code` of an error frame.
pub fn code(frame: &[u8]) -> Option<&[u8]> {
    string_after(frame, &KEYS.code)
}

/// The first `id` in the frame. Only meaningful for frames with no nested object that has an
/// `id` of its own: acks of message, dm and leave requests, and errors. A message's `from`
/// and a join ack's `members` carry user ids.
pub fn id(frame: &[u8]) -> Option<&[u8]> {
    string_after(frame, &KEYS.id)
}

/// The generator's mark at the start of `content`, if the content carries one.
pub fn mark(frame: &[u8]) -> Option<Mark> {
    let content = value_after(frame, &KEYS.content)?;
    let rest = content.strip_prefix(b"\"t=")?;
    let (sent_us, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix(b";c=")?;
    let (conn, rest) = leading_number(rest)?;
    rest.strip_prefix(b";")?;
    Some(Mark {
        sent_us,
        conn: u32::try_from(conn).ok()?,
    })
}

/// The bytes of the value that follows `"key"` and its colon, leading whitespace skipped.
/// A match not followed by a colon (the key's text inside some other string) is skipped.
fn value_after<'f>(frame: &'f [u8], key: &Finder<'_>) -> Option<&'f [u8]> {
    let mut from = 0;
    while let Some(at) = key.find(&frame[from..]) {
        let after = from + at + key.needle().len();
        let rest = skip_ws(&frame[after..]);
        if let Some(value) = rest.strip_prefix(b":") {
            return Some(skip_ws(value));
        }
        from = after;
    }
    None
}

fn number_after(frame: &[u8], key: &Finder<'_>) -> Option<u64> {
    leading_number(value_after(frame, key)?).map(|(n, _)| n)
}

/// A string value without escapes; `None` for a value that is not a string or has one.
fn string_after<'f>(frame: &'f [u8], key: &Finder<'_>) -> Option<&'f [u8]> {
    let body = value_after(frame, key)?.strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', body)?;
    (body[end] == b'"').then(|| &body[..end])
}

/// Parses the decimal digits at the start of `bytes`; `None` if there are none or they
/// overflow a u64.
pub fn leading_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = bytes[..digits]
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some((value, &bytes[digits..]))
}

fn skip_ws(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &bytes[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = concat!(
        r#"{"type":"message","room":"course:42","seq":1043,"ts":1764800000123,"#,
        r#""from":{"id":"u1","name":"Ana","role":"student"},"#,
        r#""content":"t=1764800000100123;c=17;padding","id":"c7"}"#
    )
    .as_bytes();

    #[test]
    fn reads_a_message() {
        assert_eq!(kind(MESSAGE), Kind::Message);
        assert_eq!(seq(MESSAGE), Some(1043));
        assert_eq!(room(MESSAGE), Some(&b"course:42"[..]));
        assert_eq!(
            mark(MESSAGE),
            Some(Mark {
                sent_us: 1_764_800_000_100_123,
                conn: 17
            })
        );
        assert_eq!(last_seq(MESSAGE), None);
    }

    #[test]
    fn field_order_and_whitespace_do_not_matter() {
        let frame = br#"{ "content" : "t=5;c=2;", "seq" :	7 , "room": "r", "type" : "message" }"#;
        assert_eq!(kind(frame), Kind::Message);
        assert_eq!(seq(frame), Some(7));
        assert_eq!(room(frame), Some(&b"r"[..]));
        assert_eq!(
            mark(frame),
            Some(Mark {
                sent_us: 5,
                conn: 2
            })
        );
    }

    #[test]
    fn seq_is_not_confused_with_last_seq() {
        let join_ack = br#"{"type":"ack","id":"j1","room":"r","members":3,"last_seq":12}"#;
        assert_eq!(seq(join_ack), None);
        assert_eq!(last_seq(join_ack), Some(12));
        let both = br#"{"last_seq":12,"seq":13}"#;
        assert_eq!(seq(both), Some(13));
    }

    #[test]
    fn key_text_inside_a_string_is_skipped() {
        // `"seq"` appears in the content, closed by the string's end quote, not a colon.
        let frame = br#"{"type":"message","content":"x\"seq","seq":9}"#;
        assert_eq!(seq(frame), Some(9));
    }

    #[test]
    fn reads_acks_and_errors() {
        let ack = br#"{"type":"ack","id":"m1764800000100123.4.9","room":"r","seq":5,"ts":1}"#;
        assert_eq!(kind(ack), Kind::Ack);
        assert_eq!(id(ack), Some(&b"m1764800000100123.4.9"[..]));
        assert_eq!(seq(ack), Some(5));

        let err = br#"{"type":"error","id":"m1","code":"rate_limited","message":"slow down"}"#;
        assert_eq!(kind(err), Kind::Error);
        assert_eq!(code(err), Some(&b"rate_limited"[..]));
    }

    #[test]
    fn recognises_every_type() {
        for (name, want) in [
            ("welcome", Kind::Welcome),
            ("dm", Kind::Dm),
            ("typing", Kind::Typing),
            ("presence", Kind::Presence),
            ("history", Kind::History),
            ("pong", Kind::Pong),
            ("nonsense", Kind::Other),
        ] {
            let frame = format!(r#"{{"type":"{name}"}}"#);
            assert_eq!(kind(frame.as_bytes()), want, "{name}");
        }
        assert_eq!(kind(b"not json"), Kind::Other);
        assert_eq!(kind(br#"{"type":5}"#), Kind::Other);
    }

    #[test]
    fn content_without_a_mark_yields_none() {
        assert_eq!(mark(br#"{"content":"hello"}"#), None);
        assert_eq!(mark(br#"{"content":"t=12;c=;"}"#), None);
        assert_eq!(mark(br#"{"content":"t=12;c=3"}"#), None);
        assert_eq!(mark(br#"{"content":5}"#), None);
    }

    #[test]
    fn malformed_numbers_yield_none() {
        assert_eq!(seq(br#"{"seq":-1}"#), None);
        assert_eq!(seq(br#"{"seq":}"#), None);
        assert_eq!(seq(br#"{"seq":99999999999999999999999}"#), None);
        assert_eq!(seq(br#"{"seq""#), None);
    }

    #[test]
    fn strings_with_escapes_yield_none() {
        assert_eq!(room(br#"{"room":"a\"b"}"#), None);
        assert_eq!(room(br#"{"room":"unterminated"#), None);
    }
}
