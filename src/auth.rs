//! Authentication and room access: turns a JWT into a [`User`], and decides
//! which rooms that user may join. No I/O.
//!
//! Only the one algorithm implied by the configured key is accepted (HS256 for
//! a secret; RS256 or ES256 for a public key), so `alg: none` and algorithm
//! swaps (an HS256 token signed with the RSA public key as its secret) fail.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{JwtConfig, JwtKey, RoomPolicy};

/// Tokens longer than this are refused before any parsing (a cheap guard
/// against oversized headers; real tokens are well under 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest room id, in bytes.
pub const MAX_ROOM_BYTES: usize = 128;

/// Longest user id (`sub`), in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Student,
    Teacher,
    Admin,
}

impl Role {
    pub fn parse(role: &str) -> Option<Role> {
        match role {
            "student" => Some(Role::Student),
            "teacher" => Some(Role::Teacher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated user, shared by all of its connections' state.
#[derive(Debug)]
pub struct User {
    pub id: Arc<str>,
    pub name: String,
    pub role: Role,
    /// The `rooms` claim, when the token had one: exact ids or `prefix*`.
    pub rooms: Option<Vec<String>>,
}

/// Why a token was refused. The message is short and safe to show a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token too large")]
    TooLarge,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token algorithm not accepted")]
    BadAlgorithm,
    #[error("wrong token issuer")]
    BadIssuer,
    #[error("wrong token audience")]
    BadAudience,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("invalid role claim")]
    BadRole,
    #[error("malformed token")]
    Malformed,
}

impl AuthError {
    /// A stable label for counters and logs.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::MissingClaim => "missing_claim",
            AuthError::BadRole => "bad_role",
            AuthError::Malformed => "malformed",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    // Defaulted so that a missing `sub` is reported as such, not as malformed.
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
}

/// Verifies tokens and answers room-access questions. Built once at start and
/// shared by every worker.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    policy: RoomPolicy,
}

impl Verifier {
    pub fn new(cfg: &JwtConfig, policy: RoomPolicy) -> anyhow::Result<Verifier> {
        let (key, alg) = match &cfg.key {
            JwtKey::Secret { secret, .. } => (
                DecodingKey::from_secret(secret.as_bytes())?,
                Algorithm::HS256,
            ),
            JwtKey::PublicPem(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (key, Algorithm::ES256)
                } else {
                    anyhow::bail!("--jwt-public-key is neither an RSA nor an EC (P-256) PEM key");
                }
            }
        };

        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        Ok(Verifier {
            key,
            validation,
            policy,
        })
    }

    /// Check a token and build the user it names.
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }

        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(classify)?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_ID_BYTES {
            return Err(AuthError::MissingClaim);
        }

        let role = match claims.role.as_deref() {
            None => Role::Student,
            Some(role) => Role::parse(role).ok_or(AuthError::BadRole)?,
        };
        let name = claims.name.unwrap_or_else(|| claims.sub.clone());
        Ok(User {
            id: Arc::from(claims.sub),
            name,
            role,
            rooms: claims.rooms,
        })
    }

    /// May `user` join (and read the history of) `room`? The room id must
    /// already have passed [`valid_room_id`].
    pub fn may_join(&self, user: &User, room: &str) -> bool {
        match &user.rooms {
            Some(patterns) => patterns.iter().any(|p| room_matches(p, room)),
            None => user.role == Role::Admin || self.policy == RoomPolicy::Open,
        }
    }
}

fn classify(err: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match err.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::BadAlgorithm,
        K::InvalidIssuer => AuthError::BadIssuer,
        K::InvalidAudience => AuthError::BadAudience,
        K::MissingRequiredClaim(_) => AuthError::MissingClaim,
        _ => AuthError::Malformed,
    }
}

/// An exact id, or a pattern ending in `*` that matches by prefix.
fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Room ids are 1 to 128 bytes of `A-Z a-z 0-9 : _ - . @`. The `dm:` prefix is
/// reserved for direct-message pairs, which are addressed by user instead.
pub fn valid_room_id(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_BYTES
        && !room.starts_with("dm:")
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_-.@".contains(&b))
}

/// The pair room of a direct conversation: `dm:<a>:<b>` with the ids sorted,
/// so both users name the same room. `%` and `:` inside ids are escaped, so
/// the pair can always be read back with [`dm_pair`].
pub fn dm_room(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let esc = |s: &str| s.replace('%', "%25").replace(':', "%3A");
    format!("dm:{}:{}", esc(lo), esc(hi))
}

/// The two user ids of a pair room made by [`dm_room`].
pub fn dm_pair(room: &str) -> Option<(String, String)> {
    let (a, b) = room.strip_prefix("dm:")?.split_once(':')?;
    let unesc = |s: &str| s.replace("%3A", ":").replace("%25", "%");
    Some((unesc(a), unesc(b)))
}

/// Options of `hubbub token`.
pub struct MintRequest<'a> {
    pub sub: &'a str,
    pub name: Option<&'a str>,
    pub role: &'a str,
    pub rooms: &'a [String],
    pub ttl: Duration,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

/// Sign an HS256 token, as the application would.
pub fn mint(secret: &str, req: &MintRequest<'_>) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({
        "sub": req.sub,
        "exp": now + req.ttl.as_secs(),
        "iat": now,
        "role": req.role,
    });
    if let Some(name) = req.name {
        claims["name"] = name.into();
    }
    if !req.rooms.is_empty() {
        claims["rooms"] = req.rooms.into();
    }
    if let Some(iss) = req.issuer {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = req.audience {
        claims["aud"] = aud.into();
    }
    let key = EncodingKey::from_secret(secret.as_bytes())?;
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const SECRET: &str = "test-secret";

    fn verifier(policy: RoomPolicy) -> Verifier {
        let cfg = JwtConfig {
            key: JwtKey::Secret {
                secret: SECRET.into(),
                dev: false,
            },
            issuer: None,
            audience: None,
            leeway_secs: 5,
        };
        Verifier::new(&cfg, policy).unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_token_gives_user_with_defaults() {
        let v = verifier(RoomPolicy::Open);
        let user = v
            .verify(&token(serde_json::json!({"sub": "u1", "exp": now() + 60})))
            .unwrap();
        assert_eq!(&*user.id, "u1");
        assert_eq!(user.name, "u1");
        assert_eq!(user.role, Role::Student);
    }

    #[test]
    fn expired_and_immature_tokens_fail() {
        let v = verifier(RoomPolicy::Open);
        let expired = token(serde_json::json!({"sub": "u1", "exp": now() - 60}));
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let early = token(serde_json::json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(v.verify(&early).unwrap_err(), AuthError::NotYetValid);
    }

    #[test]
    fn alg_none_and_missing_claims_fail() {
        let v = verifier(RoomPolicy::Open);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"u1","exp":{}}}"#, now() + 60));
        assert!(v.verify(&format!("{header}.{body}.")).is_err());

        let no_sub = token(serde_json::json!({"exp": now() + 60}));
        assert_eq!(v.verify(&no_sub).unwrap_err(), AuthError::MissingClaim);
        let no_exp = token(serde_json::json!({"sub": "u1"}));
        assert_eq!(v.verify(&no_exp).unwrap_err(), AuthError::MissingClaim);
    }

    #[test]
    fn wrong_secret_and_garbage_fail() {
        let v = verifier(RoomPolicy::Open);
        let claims = serde_json::json!({"sub": "u1", "exp": now() + 60});
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"other").unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&other).unwrap_err(), AuthError::BadSignature);
        assert_eq!(v.verify("garbage").unwrap_err(), AuthError::Malformed);
        assert_eq!(
            v.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
            AuthError::TooLarge
        );
    }

    #[test]
    fn hs512_is_refused_when_hs256_is_configured() {
        let v = verifier(RoomPolicy::Open);
        let claims = serde_json::json!({"sub": "u1", "exp": now() + 60});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&t).unwrap_err(), AuthError::BadAlgorithm);
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let cfg = JwtConfig {
            key: JwtKey::Secret {
                secret: SECRET.into(),
                dev: false,
            },
            issuer: Some("app".into()),
            audience: Some("chat".into()),
            leeway_secs: 5,
        };
        let v = Verifier::new(&cfg, RoomPolicy::Open).unwrap();
        let good = token(serde_json::json!({"sub":"u","exp":now()+60,"iss":"app","aud":"chat"}));
        assert!(v.verify(&good).is_ok());
        let bad_iss = token(serde_json::json!({"sub":"u","exp":now()+60,"iss":"x","aud":"chat"}));
        assert_eq!(v.verify(&bad_iss).unwrap_err(), AuthError::BadIssuer);
        let bad_aud = token(serde_json::json!({"sub":"u","exp":now()+60,"iss":"app","aud":"x"}));
        assert_eq!(v.verify(&bad_aud).unwrap_err(), AuthError::BadAudience);
        let no_iss = token(serde_json::json!({"sub":"u","exp":now()+60,"aud":"chat"}));
        assert_eq!(v.verify(&no_iss).unwrap_err(), AuthError::MissingClaim);
    }

    #[test]
    fn room_claims_and_policy() {
        let open = verifier(RoomPolicy::Open);
        let claims = verifier(RoomPolicy::Claims);
        let free = User {
            id: "u".into(),
            name: "u".into(),
            role: Role::Student,
            rooms: None,
        };
        assert!(open.may_join(&free, "course:1"));
        assert!(!claims.may_join(&free, "course:1"));

        let limited = User {
            id: "u".into(),
            name: "u".into(),
            role: Role::Student,
            rooms: Some(vec!["course:42:*".into(), "lobby".into()]),
        };
        assert!(open.may_join(&limited, "course:42:a"));
        assert!(open.may_join(&limited, "lobby"));
        assert!(!open.may_join(&limited, "lobby2"));
        assert!(!open.may_join(&limited, "course:43:a"));
    }

    #[test]
    fn room_ids_and_dm_rooms() {
        assert!(valid_room_id("course:42:class-a_1.b@x"));
        assert!(!valid_room_id(""));
        assert!(!valid_room_id("dm:a:b"));
        assert!(!valid_room_id("has space"));
        assert!(!valid_room_id(&"r".repeat(MAX_ROOM_BYTES + 1)));
        assert_eq!(dm_room("b", "a"), "dm:a:b");
        assert_eq!(dm_room("a", "b"), "dm:a:b");
        let odd = dm_room("x:1%3A", "a");
        assert_eq!(dm_pair(&odd), Some(("a".to_owned(), "x:1%3A".to_owned())));
    }

    #[test]
    fn minted_tokens_verify() {
        let v = verifier(RoomPolicy::Open);
        let rooms = vec!["course:1".to_owned()];
        let req = MintRequest {
            sub: "u9",
            name: Some("Ana"),
            role: "teacher",
            rooms: &rooms,
            ttl: Duration::from_secs(60),
            issuer: None,
            audience: None,
        };
        let user = v.verify(&mint(SECRET, &req).unwrap()).unwrap();
        assert_eq!(user.name, "Ana");
        assert_eq!(user.role, Role::Teacher);
        assert_eq!(user.rooms.as_deref(), Some(&rooms[..]));
    }
}
