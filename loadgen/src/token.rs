//! HS256 JWT minting for the load generator's users.
//!
//! Hand-rolled on `hmac` + `sha2` rather than a JWT crate: the generator only ever signs one
//! fixed header with one algorithm, and this keeps its build small.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// `{"alg":"HS256","typ":"JWT"}` in base64url; a test decodes it to check.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// The role claim of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Student,
    Teacher,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
        }
    }
}

/// Signs tokens with one secret and one expiry for the whole run.
#[derive(Clone)]
pub struct Minter {
    mac: Hmac<Sha256>,
    exp: u64,
    /// The `rooms` claim every token carries, if any.
    rooms: Option<String>,
}

impl Minter {
    /// `exp` is the expiry in seconds since the Unix epoch.
    pub fn new(secret: &[u8], exp: u64) -> Self {
        // HMAC accepts a key of any length, so this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        Minter {
            mac,
            exp,
            rooms: None,
        }
    }

    /// Adds a `rooms` claim holding one pattern (an id, or a prefix ending in `*`), so the
    /// tokens also pass a server that admits users only to the rooms their token lists.
    pub fn with_rooms(mut self, pattern: String) -> Self {
        self.rooms = Some(pattern);
        self
    }

    /// A signed token for user `sub` with display name `name` and `role`.
    pub fn mint(&self, sub: &str, name: &str, role: Role) -> String {
        // A BTreeMap keeps the keys sorted whatever serde_json's features are
        // (a workspace build unifies `preserve_order` in from other crates),
        // so the same claims always give the same token.
        let mut claims = std::collections::BTreeMap::new();
        claims.insert("sub", serde_json::json!(sub));
        claims.insert("name", serde_json::json!(name));
        claims.insert("role", serde_json::json!(role.as_str()));
        claims.insert("exp", serde_json::json!(self.exp));
        if let Some(pattern) = &self.rooms {
            claims.insert("rooms", serde_json::json!([pattern]));
        }
        let json = serde_json::to_string(&claims).expect("claims serialize");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let signing_input = format!("{HEADER_B64}.{payload}");

        // Cloning the keyed state skips re-hashing the padded key for every token.
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn header_constant_matches_its_json() {
        let header = decode_json(HEADER_B64);
        assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    }

    #[test]
    fn claims_round_trip() {
        let token = Minter::new(b"dev-secret", 2_000_000_000).mint("u1", "Ana", Role::Teacher);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = decode_json(parts[1]);
        assert_eq!(claims["sub"], "u1");
        assert_eq!(claims["name"], "Ana");
        assert_eq!(claims["role"], "teacher");
        assert_eq!(claims["exp"], 2_000_000_000u64);
    }

    #[test]
    fn rooms_claim_is_a_list() {
        let minter = Minter::new(b"k", 2_000_000_000).with_rooms("lg1-*".into());
        let token = minter.mint("u1", "Ana", Role::Student);
        let claims = decode_json(token.split('.').nth(1).unwrap());
        assert_eq!(claims["rooms"], serde_json::json!(["lg1-*"]));
    }

    #[test]
    fn token_matches_an_independent_hs256() {
        // The same claims signed separately with Python's standard library (json with
        // sorted keys, base64.urlsafe_b64encode, hmac.new(secret, input, hashlib.sha256)).
        let token = Minter::new(b"dev-secret", 2_000_000_000).mint("u1", "Ana", Role::Teacher);
        assert_eq!(token, EXPECTED);
    }

    #[test]
    fn minted_signature_verifies() {
        let minter = Minter::new(b"s3cret", 2_000_000_000);
        let token = minter.mint("u9", "Bo", Role::Student);
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(input.as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();

        // A different secret must not verify.
        let mut other = Hmac::<Sha256>::new_from_slice(b"other").unwrap();
        other.update(input.as_bytes());
        assert!(other
            .verify_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap())
            .is_err());
    }

    const EXPECTED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\
        .eyJleHAiOjIwMDAwMDAwMDAsIm5hbWUiOiJBbmEiLCJyb2xlIjoidGVhY2hlciIsInN1YiI6InUxIn0\
        .Y8GJA2Ru2b9ze_d0uirmbZosI-AdDi11dtRKpeAjwgM";
}
