//! The HTTP/1.1 upgrade handshake (RFC 6455 §4.2): validating the client's
//! request, deriving `Sec-WebSocket-Accept`, and writing the 101 response or
//! the refusal.
//!
//! The caller parses the request head with httparse and passes the method,
//! version and headers in; this file never sees the socket.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

/// The fixed GUID that RFC 6455 appends to the client key.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Result of a valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Value for the Sec-WebSocket-Accept response header.
    pub accept: String,
    /// Sec-WebSocket-Protocol values offered by the client, trimmed, in order
    /// (comma-separated lists and repeated headers both flattened).
    pub protocols: Vec<String>,
}

/// A refused upgrade: the HTTP status and a short human reason for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeError {
    /// HTTP status code: 400, 405 or 426.
    pub status: u16,
    /// Short plain-text explanation, suitable as the response body.
    pub reason: &'static str,
}

impl UpgradeError {
    const fn bad_request(reason: &'static str) -> Self {
        Self {
            status: 400,
            reason,
        }
    }

    /// A complete plain-text HTTP response for this refusal, closing the
    /// connection. Carries the headers the status calls for: `Allow` for
    /// 405, and for 426 the `Sec-WebSocket-Version` that RFC 6455 §4.4
    /// requires so the client can retry with a version we speak.
    pub fn response(&self) -> Vec<u8> {
        let phrase = match self.status {
            400 => "Bad Request",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            _ => "Error",
        };
        let extra = match self.status {
            405 => "Allow: GET\r\n",
            426 => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        format!(
            "HTTP/1.1 {} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n{extra}\r\n{}",
            self.status,
            self.reason.len(),
            self.reason,
        )
        .into_bytes()
    }
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upgrade refused ({}): {}", self.status, self.reason)
    }
}

impl std::error::Error for UpgradeError {}

/// The elements of an HTTP comma-separated header value, whitespace
/// trimmed, empty elements skipped (RFC 9110 §5.6.1 allows them).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// An HTTP token (RFC 9110 §5.6.2), the grammar of a subprotocol name.
/// Checking it also guarantees the name is safe to echo in a header.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Validate an upgrade request (RFC 6455 §4.2.1). `version` is httparse's minor
/// version (1 for HTTP/1.1). Header names are case-insensitive, and
/// `Connection` may be a token list ("keep-alive, Upgrade").
/// 405 for a method other than GET; 400 for HTTP/1.0, a missing/incorrect
/// `Upgrade: websocket`, a `Connection` without `upgrade`, a missing
/// `Sec-WebSocket-Key` or one that is not base64 of exactly 16 bytes;
/// 426 when `Sec-WebSocket-Version` is not 13 (the caller then adds
/// `Sec-WebSocket-Version: 13` to the response).
///
/// A repeated `Sec-WebSocket-Key`, or a subprotocol that is not an HTTP
/// token, is also refused with 400.
pub fn check_upgrade(
    method: &str,
    version: u8,
    headers: &[httparse::Header<'_>],
) -> Result<Upgrade, UpgradeError> {
    if method != "GET" {
        return Err(UpgradeError {
            status: 405,
            reason: "only GET can be upgraded to a WebSocket",
        });
    }
    if version != 1 {
        return Err(UpgradeError::bad_request("WebSocket requires HTTP/1.1"));
    }

    // One pass over the headers; repeated headers are merged as HTTP list
    // headers, except the key, which must be unique (RFC 6455 §11.3.1).
    let mut upgrade = false;
    let mut connection = false;
    let mut ws_version = false;
    let mut key: Option<&[u8]> = None;
    let mut key_repeated = false;
    let mut bad_protocol = false;
    let mut protocols = Vec::new();
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= list_items(h.value).any(|t| t.eq_ignore_ascii_case(b"websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= list_items(h.value).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version |= list_items(h.value).any(|t| t == b"13");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key_repeated |= key.is_some();
            key = Some(h.value.trim_ascii());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            for item in list_items(h.value) {
                match std::str::from_utf8(item) {
                    Ok(p) if is_token(item) => protocols.push(p.to_owned()),
                    _ => bad_protocol = true,
                }
            }
        }
    }

    if !upgrade {
        return Err(UpgradeError::bad_request("missing or wrong Upgrade header"));
    }
    if !connection {
        return Err(UpgradeError::bad_request("Connection header lacks upgrade"));
    }
    let Some(key) = key else {
        return Err(UpgradeError::bad_request("missing Sec-WebSocket-Key"));
    };
    if key_repeated {
        return Err(UpgradeError::bad_request("repeated Sec-WebSocket-Key"));
    }

    // 16 random bytes encode to exactly 24 base64 characters; checking the
    // length first keeps a hostile megabyte-long key from being decoded.
    let decoded_ok = key.len() == 24 && STANDARD.decode(key).is_ok_and(|k| k.len() == 16);
    if !decoded_ok {
        return Err(UpgradeError::bad_request(
            "Sec-WebSocket-Key is not base64 of 16 bytes",
        ));
    }
    if !ws_version {
        return Err(UpgradeError {
            status: 426,
            reason: "Sec-WebSocket-Version must be 13",
        });
    }
    if bad_protocol {
        return Err(UpgradeError::bad_request("invalid Sec-WebSocket-Protocol"));
    }

    Ok(Upgrade {
        accept: accept_key(key),
        protocols,
    })
}

/// base64(SHA-1(key + GUID)).
#[must_use]
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// The complete `101 Switching Protocols` response head (ends with \r\n\r\n),
/// with `Sec-WebSocket-Protocol: <p>` when `protocol` is Some. No extension is
/// ever offered (hubbub implements none).
#[must_use]
pub fn response_101(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    // The protocol must be one the client offered, and `check_upgrade` only
    // accepts tokens, so it cannot smuggle a CRLF into the response.
    debug_assert!(protocol.is_none_or(|p| is_token(p.as_bytes())));

    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    fn good() -> Vec<httparse::Header<'static>> {
        vec![
            h("Host", "chat.example"),
            h("Upgrade", "websocket"),
            h("Connection", "Upgrade"),
            h("Sec-WebSocket-Key", KEY),
            h("Sec-WebSocket-Version", "13"),
        ]
    }

    /// `good()` with the named header removed (when `value` is None) or
    /// replaced.
    fn with(name: &str, value: Option<&'static str>) -> Vec<httparse::Header<'static>> {
        let mut hs = good();
        hs.retain(|x| !x.name.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
            hs.push(h(name, v));
        }
        hs
    }

    fn status(headers: &[httparse::Header<'_>]) -> u16 {
        check_upgrade("GET", 1, headers).unwrap_err().status
    }

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_a_real_parsed_request() {
        let raw = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\n\
            upgrade: WebSocket\r\nCONNECTION: keep-alive, Upgrade\r\n\
            sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Protocol: chat, , superchat\r\n\
            Sec-WebSocket-Protocol:  v2.hubbub \r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        let up = check_upgrade(req.method.unwrap(), req.version.unwrap(), req.headers).unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.protocols, ["chat", "superchat", "v2.hubbub"]);
    }

    #[test]
    fn no_protocol_offered_gives_empty_list() {
        let up = check_upgrade("GET", 1, &good()).unwrap();
        assert!(up.protocols.is_empty());
    }

    #[test]
    fn refuses_wrong_method_and_http_version() {
        assert_eq!(check_upgrade("POST", 1, &good()).unwrap_err().status, 405);
        assert_eq!(check_upgrade("get", 1, &good()).unwrap_err().status, 405);
        assert_eq!(check_upgrade("GET", 0, &good()).unwrap_err().status, 400);
    }

    #[test]
    fn refuses_bad_upgrade_and_connection() {
        assert_eq!(status(&with("Upgrade", None)), 400);
        assert_eq!(status(&with("Upgrade", Some("h2c"))), 400);
        assert_eq!(status(&with("Upgrade", Some("websockets"))), 400);
        assert_eq!(status(&with("Connection", None)), 400);
        assert_eq!(status(&with("Connection", Some("keep-alive"))), 400);
        assert_eq!(status(&with("Connection", Some("upgraded"))), 400);
        assert!(check_upgrade("GET", 1, &with("Connection", Some("keep-alive,upgrade"))).is_ok());
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(status(&with("Sec-WebSocket-Key", None)), 400);
        for bad in [
            "",
            "not base64 at all!!!!!!!",
            "dGhlIHNhbXBsZSBub25jZQ",       // padding missing
            "dGhlIHNhbXBsZSBub25j",         // 15 bytes
            "dGhlIHNhbXBsZSBub25jZTEy",     // 18 bytes
            "dGhlIHNhbXBsZSBub25jZR==",     // non-canonical trailing bits
            "dGhlIHNhbXBsZSBub25jZQ==dGhl", // too long
        ] {
            let err = check_upgrade("GET", 1, &with("Sec-WebSocket-Key", Some(bad)));
            assert_eq!(err.unwrap_err().status, 400, "{bad:?}");
        }
        let mut twice = good();
        twice.push(h("sec-websocket-key", KEY));
        assert_eq!(status(&twice), 400);
    }

    #[test]
    fn refuses_other_websocket_versions_with_426() {
        assert_eq!(status(&with("Sec-WebSocket-Version", None)), 426);
        assert_eq!(status(&with("Sec-WebSocket-Version", Some("8"))), 426);
        assert_eq!(status(&with("Sec-WebSocket-Version", Some("130"))), 426);
        let resp = String::from_utf8(
            UpgradeError {
                status: 426,
                reason: "x",
            }
            .response(),
        )
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn refuses_invalid_subprotocol() {
        let hs = with("Sec-WebSocket-Protocol", Some("chat, bad name"));
        assert_eq!(status(&hs), 400);
    }

    #[test]
    fn error_response_is_well_formed() {
        let err = check_upgrade("PUT", 1, &good()).unwrap_err();
        let raw = err.response();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let body_at = match resp.parse(&raw).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete response"),
        };
        assert_eq!(resp.code, Some(405));
        assert!(resp
            .headers
            .iter()
            .any(|h| h.name == "Allow" && h.value == b"GET"));
        assert_eq!(&raw[body_at..], err.reason.as_bytes());
        assert!(err.to_string().contains("405"));
    }

    #[test]
    fn switching_protocols_response() {
        let accept = accept_key(KEY.as_bytes());
        let plain = response_101(&accept, None);
        assert_eq!(
            plain,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );

        let with_proto = response_101(&accept, Some("chat"));
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        assert_eq!(
            resp.parse(&with_proto).unwrap(),
            httparse::Status::Complete(with_proto.len())
        );
        assert_eq!(resp.code, Some(101));
        let proto = resp
            .headers
            .iter()
            .find(|h| h.name == "Sec-WebSocket-Protocol");
        assert_eq!(proto.unwrap().value, b"chat");
        assert!(!resp.headers.iter().any(|h| h.name.contains("Extensions")));
    }
}
