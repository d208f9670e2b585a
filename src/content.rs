//! Message content: what a client sends becomes what every member renders.
//!
//! Line endings are normalised to `\n`, control characters other than newline
//! and tab are removed, and HTML is neutralised under the configured
//! [`ContentPolicy`]. The result is what gets acked, stored and delivered.
//! (Invalid UTF-8 never gets here: the WebSocket layer closes with 1007.)

use std::borrow::Cow;

use crate::config::ContentPolicy;
use crate::protocol::{ClientError, Code};

/// Clean `raw` for storage and delivery, or say why it cannot be sent.
pub fn sanitize(raw: &str, policy: ContentPolicy, max_bytes: usize) -> Result<String, ClientError> {
    // Refuse before any work when even the raw text is far too long; escaping
    // only grows text, so anything over the limit now stays over it.
    if raw.len() > max_bytes && policy != ContentPolicy::Strip {
        return Err(too_large(max_bytes));
    }

    let plain = strip_controls(raw);
    let safe = match policy {
        ContentPolicy::Escape => html_escape::encode_safe(&plain).into_owned(),
        ContentPolicy::Strip => ammonia::Builder::empty().clean(&plain).to_string(),
        ContentPolicy::None => plain.into_owned(),
    };

    if safe.trim().is_empty() {
        return Err(ClientError::new(Code::BadRequest, "empty content"));
    }
    if safe.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(safe)
}

fn too_large(max: usize) -> ClientError {
    ClientError::new(Code::TooLarge, format!("content exceeds {max} bytes"))
}

/// `\r\n` and lone `\r` become `\n`; other control characters (C0 except tab
/// and newline, DEL, C1) are dropped. Borrowed when nothing changes, which is
/// the common case.
fn strip_controls(s: &str) -> Cow<'_, str> {
    let clean = |c: char| c == '\n' || c == '\t' || !c.is_control();
    if s.chars().all(clean) {
        return Cow::Borrowed(s);
    }

    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else if clean(c) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_policy_neutralises_markup() {
        let out = sanitize(
            "<script>alert(1)</script> & 'x'",
            ContentPolicy::Escape,
            4096,
        )
        .unwrap();
        assert!(!out.contains('<') && !out.contains('\''), "{out}");
        assert!(out.contains("&lt;script&gt;"));
    }

    #[test]
    fn strip_policy_removes_tags_and_keeps_text() {
        let out = sanitize(
            "<b>bold</b><img src=x onerror=alert(1)>",
            ContentPolicy::Strip,
            4096,
        )
        .unwrap();
        assert_eq!(out, "bold");
    }

    #[test]
    fn controls_are_removed_and_line_endings_normalised() {
        let out = sanitize(
            "a\r\nb\rc\u{0}\u{7}\u{1b}[31m\td\u{85}",
            ContentPolicy::None,
            4096,
        )
        .unwrap();
        assert_eq!(out, "a\nb\nc[31m\td");
    }

    #[test]
    fn size_is_checked_after_sanitising() {
        // 1000 `<` become 4000 bytes of `&lt;`.
        let err = sanitize(&"<".repeat(1000), ContentPolicy::Escape, 3000).unwrap_err();
        assert_eq!(err.code, Code::TooLarge);
        assert!(sanitize(&"<".repeat(1000), ContentPolicy::None, 3000).is_ok());
        let err = sanitize(&"a".repeat(3001), ContentPolicy::None, 3000).unwrap_err();
        assert_eq!(err.code, Code::TooLarge);
    }

    #[test]
    fn empty_after_cleaning_is_refused() {
        let err = sanitize("\u{0}\u{1}  ", ContentPolicy::Escape, 100).unwrap_err();
        assert_eq!(err.code, Code::BadRequest);
    }
}
