//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! A text message may be split across fragments, and each fragment across
//! socket reads, so a multi-byte character can straddle any boundary. The
//! validator carries the unfinished character between calls and reports an
//! error as soon as a byte makes the sequence impossible, rather than at the
//! end of the message (Autobahn's 6.x cases check that fail-fast behaviour).

/// The invalid-input marker returned by [`Utf8Validator::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid;

/// Validates a byte stream chunk by chunk.
///
/// The bulk of each chunk goes through `std::str::from_utf8`, which is
/// vectorised; only the few bytes of a character cut by a chunk boundary are
/// checked one at a time here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Utf8Validator {
    /// Continuation bytes still owed by the character in progress (0 to 3).
    need: u8,
    /// Inclusive range allowed for the next continuation byte. Only the first
    /// continuation byte has a narrowed range (it rules out overlong forms,
    /// surrogates and code points above U+10FFFF); later ones are 80..=BF.
    lo: u8,
    hi: u8,
}

impl Default for Utf8Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Utf8Validator {
    pub(crate) const fn new() -> Self {
        Self {
            need: 0,
            lo: 0x80,
            hi: 0xBF,
        }
    }

    /// Forget any character in progress, ready for a new message.
    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    /// True when the bytes fed so far end on a character boundary.
    pub(crate) fn is_complete(&self) -> bool {
        self.need == 0
    }

    /// Check the next chunk of the stream.
    ///
    /// Returns `Err(Invalid)` as soon as the bytes seen so far cannot be the
    /// prefix of any valid UTF-8 text. A chunk ending mid-character is fine;
    /// the rest of the character is expected from the next call.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), Invalid> {
        // Finish the character left open by the previous chunk first, byte by
        // byte, since at most three bytes are involved.
        while self.need > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            if b < self.lo || b > self.hi {
                return Err(Invalid);
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
            data = rest;
        }

        let Err(err) = std::str::from_utf8(data) else {
            return Ok(());
        };

        // `error_len() == None` means std stopped only because the input ran
        // out: the tail is a valid, incomplete character. std checks the
        // first continuation byte against the lead byte, so a tail such as
        // F4 90 is already reported as invalid and never reaches this point.
        if err.error_len().is_some() {
            return Err(Invalid);
        }
        let tail = &data[err.valid_up_to()..];
        self.start(tail[0]);
        for _ in &tail[1..] {
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
        }
        Ok(())
    }

    /// Set up the state for a character that begins with lead byte `b`.
    /// Only called with lead bytes std has already accepted.
    fn start(&mut self, b: u8) {
        let (need, lo, hi) = match b {
            0xC2..=0xDF => (1, 0x80, 0xBF),
            // E0 needs A0.. to avoid overlong encodings.
            0xE0 => (2, 0xA0, 0xBF),
            // ED stops at 9F to exclude the UTF-16 surrogates.
            0xED => (2, 0x80, 0x9F),
            0xE1..=0xEF => (2, 0x80, 0xBF),
            // F0 needs 90.. to avoid overlong encodings.
            0xF0 => (3, 0x90, 0xBF),
            // F4 stops at 8F so the result stays at or below U+10FFFF.
            0xF4 => (3, 0x80, 0x8F),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            _ => unreachable!("std accepted an invalid lead byte"),
        };
        self.need = need;
        self.lo = lo;
        self.hi = hi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `data` split at `at` and report (error seen, complete at end).
    fn split_feed(data: &[u8], at: usize) -> (bool, bool) {
        let mut v = Utf8Validator::new();
        let bad = v.feed(&data[..at]).is_err() || v.feed(&data[at..]).is_err();
        (bad, v.is_complete())
    }

    fn byte_by_byte(data: &[u8]) -> Result<bool, usize> {
        let mut v = Utf8Validator::new();
        for (i, b) in data.iter().enumerate() {
            if v.feed(std::slice::from_ref(b)).is_err() {
                return Err(i);
            }
        }
        Ok(v.is_complete())
    }

    #[test]
    fn valid_text_at_every_split_point() {
        let text = "κόσμε a€𝄞 \u{10FFFF}\u{FFFF}\u{E000}\u{D7FF}".as_bytes();
        for at in 0..=text.len() {
            assert_eq!(split_feed(text, at), (false, true), "split at {at}");
        }
        assert_eq!(byte_by_byte(text), Ok(true));
    }

    #[test]
    fn incomplete_character_is_not_complete() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[b'a', 0xE2, 0x82]).is_ok());
        assert!(!v.is_complete());
        assert!(v.feed(&[0xAC]).is_ok());
        assert!(v.is_complete());
    }

    #[test]
    fn rejects_invalid_sequences_at_every_split_point() {
        let cases: &[&[u8]] = &[
            &[0x80],                   // lone continuation byte
            &[0xC0, 0x80],             // overlong NUL
            &[0xC1, 0xBF],             // overlong
            &[0xE0, 0x80, 0x80],       // overlong three-byte form
            &[0xED, 0xA0, 0x80],       // surrogate U+D800
            &[0xF0, 0x80, 0x80, 0x80], // overlong four-byte form
            &[0xF4, 0x90, 0x80, 0x80], // above U+10FFFF
            &[0xF5, 0x80, 0x80, 0x80], // invalid lead byte
            &[0xFF],
            &[0xE2, 0x82, b'a'], // truncated character followed by ASCII
            &[0xC2, 0xC2],
        ];
        for case in cases {
            for at in 0..=case.len() {
                assert!(split_feed(case, at).0, "{case:02x?} split at {at}");
            }
        }
    }

    #[test]
    fn fails_at_the_first_byte_that_proves_invalidity() {
        // F4 90: 90 is out of range right after F4, so byte 1 is the culprit.
        assert_eq!(byte_by_byte(&[0xF4, 0x90, 0x80, 0x80]), Err(1));
        assert_eq!(byte_by_byte(&[0xED, 0xA0, 0x80]), Err(1));
        assert_eq!(byte_by_byte(&[0xE0, 0x9F, 0x80]), Err(1));
        assert_eq!(byte_by_byte(&[b'o', b'k', 0xF8]), Err(2));
        assert_eq!(byte_by_byte(&[0xF0, 0x9D, 0x84, b'x']), Err(3));

        // The same through split chunks: the second chunk's first byte fails.
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[b'h', 0xF4]).is_ok());
        assert_eq!(v.feed(&[0x90]), Err(Invalid));
    }

    #[test]
    fn reset_forgets_partial_character() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xE2]).unwrap();
        v.reset();
        assert!(v.is_complete());
        assert!(v.feed(b"plain").is_ok());
    }
}
