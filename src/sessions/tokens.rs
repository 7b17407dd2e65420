//! Access tokens: HS256 JWTs that name a user and a server-side session.
//!
//! A token alone is never enough: the session it names must still exist in the store, which is
//! what lets `logout` make a token useless before it expires.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{SessionId, UserId};

/// The claims every token carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The session id; the session must still exist for the token to work.
    pub sid: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// Signs and checks tokens with one secret.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Pinned to HS256 so a token cannot pick its own algorithm (`none`, or an asymmetric one).
    validation: Validation,
    ttl: Duration,
    /// Tokens whose signature this service has checked, with their claims. Checking a token
    /// (decoding its header and claims, and the HMAC) was 3% of the server's CPU per
    /// `sendMessage`, repeated for the same few tokens on every request; what it proves never
    /// changes for a given token text, so only the expiry is checked again. Tokens are secrets:
    /// this map is never printed. Bounded by [`MAX_VERIFIED_TOKENS`].
    verified: Mutex<HashMap<String, Claims>>,
}

/// Most checked tokens remembered; when full the map starts over (a miss only costs a check).
/// Each entry is a few hundred bytes.
const MAX_VERIFIED_TOKENS: usize = 10_000;

/// Why a token was refused; an HTTP client only ever sees "invalid or expired token", while a
/// websocket is closed with a code that tells expiry (get a fresh token) from forgery (sign in).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Genuine, but past its expiry.
    #[error("token expired")]
    Expired,
    /// Not a token this server signed, or not one at all.
    #[error("token refused: {0}")]
    Invalid(String),
}

impl TokenService {
    /// Shortest secret accepted, in bytes: HS256 is only as strong as its key.
    pub const MIN_SECRET_BYTES: usize = 32;

    /// A service signing with `secret`; tokens live for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        TokenService {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            verified: Mutex::default(),
        }
    }

    /// When a token issued at `now` expires.
    pub fn expiry_from(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, TokenError> {
        chrono::Duration::from_std(self.ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .ok_or_else(|| TokenError::Invalid("JWT_TTL is out of range".into()))
    }

    /// Issues a token for `user_id`'s session `session_id` that expires with the session.
    pub fn issue(
        &self,
        user_id: &UserId,
        session_id: &SessionId,
        expires_at: DateTime<Utc>,
    ) -> Result<String, TokenError> {
        let now = Utc::now();
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks the signature, algorithm and expiry of `token`, and remembers it checked: for a
    /// token presented with every request.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp(), true)
    }

    /// [`Self::verify`] without remembering `token` (it may already be remembered): for a token
    /// presented once for a long time, as a websocket's is. Remembering those would add a few
    /// hundred bytes to every idle connection, for nothing.
    pub fn verify_once(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp(), false)
    }

    /// Checks `token`, with `now` (seconds since the epoch) for a token checked before.
    fn verify_at(&self, token: &str, now: u64, remember: bool) -> Result<Claims, TokenError> {
        let known = self.verified().get(token).cloned();
        if let Some(claims) = known {
            // jsonwebtoken's rule, leeway 0: expired once `exp` is in the past.
            if u64::try_from(claims.exp).is_ok_and(|exp| exp >= now) {
                return Ok(claims);
            }
            self.verified().remove(token);
            return Err(TokenError::Expired);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        if remember {
            let mut verified = self.verified();
            if verified.len() >= MAX_VERIFIED_TOKENS {
                verified.clear();
            }
            verified.insert(token.to_owned(), claims.clone());
        }
        Ok(claims)
    }

    fn verified(&self) -> MutexGuard<'_, HashMap<String, Claims>> {
        self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where a generated secret is kept inside the data directory.
const SECRET_FILE: &str = "jwt_secret";

/// Reads the secret kept in `data_dir`, creating a random one on first use.
///
/// Used when `JWT_SECRET` is unset, so a fresh checkout has strong, stable tokens without any
/// setup. Returns the secret and whether it was just created.
pub fn load_or_create_secret(data_dir: &Path) -> std::io::Result<(Vec<u8>, bool)> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= TokenService::MIN_SECRET_BYTES => {
            return Ok((text.trim().as_bytes().to_vec(), false));
        }
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is shorter than {} bytes; delete it to have a new one generated",
                path.display(),
                TokenService::MIN_SECRET_BYTES
            )));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut random = [0u8; 48];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let secret = STANDARD_NO_PAD.encode(random);
    write_private(&path, secret.as_bytes())?;
    Ok((secret.into_bytes(), true))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn issued_tokens_verify() {
        let service = TokenService::new(SECRET, Duration::from_secs(60));
        let token = service
            .issue(
                &UserId::new("user-1"),
                &SessionId::new("session-1"),
                service.expiry_from(Utc::now()).unwrap(),
            )
            .unwrap();
        let claims = service.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.sid.as_str()), ("user-1", "session-1"));
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn tokens_from_another_secret_or_tampered_are_refused() {
        let service = TokenService::new(SECRET, Duration::from_secs(60));
        let other =
            TokenService::new(b"another secret that is long enough!!", Duration::from_secs(60));
        let expires_at = service.expiry_from(Utc::now()).unwrap();
        let token =
            other.issue(&UserId::new("user-1"), &SessionId::new("session-1"), expires_at).unwrap();
        assert!(service.verify(&token).is_err());

        let token = service
            .issue(&UserId::new("user-1"), &SessionId::new("session-1"), expires_at)
            .unwrap();
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let forged = STANDARD_NO_PAD
            .encode(br#"{"sub":"user-2","sid":"session-1","iat":1,"exp":99999999999}"#)
            .replace('+', "-")
            .replace('/', "_");
        parts[1] = forged;
        assert!(service.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let service = TokenService::new(SECRET, Duration::from_secs(60));
        let token = service
            .issue(
                &UserId::new("user-1"),
                &SessionId::new("session-1"),
                Utc::now() - chrono::Duration::seconds(1),
            )
            .unwrap();
        assert!(service.verify(&token).is_err());
    }

    /// A token checked once is remembered, but its expiry is checked on every use, on the same
    /// rule as the first check (valid through the second `exp` names).
    #[test]
    fn a_remembered_token_still_expires() {
        let service = TokenService::new(SECRET, Duration::from_secs(60));
        let expires_at = service.expiry_from(Utc::now()).unwrap();
        let token = service
            .issue(&UserId::new("user-1"), &SessionId::new("session-1"), expires_at)
            .unwrap();
        let claims = service.verify(&token).unwrap();
        assert!(service.verified().contains_key(&token));
        let exp = u64::try_from(claims.exp).unwrap();
        assert_eq!(service.verify_at(&token, exp, true).unwrap(), claims);
        assert!(matches!(service.verify_at(&token, exp + 1, true), Err(TokenError::Expired)));
        // Forgotten once expired; a fresh check (at the real time) still accepts it.
        assert!(!service.verified().contains_key(&token));
        assert_eq!(service.verify(&token).unwrap(), claims);
    }

    #[test]
    fn only_accepted_tokens_are_remembered_and_the_memory_is_bounded() {
        let service = TokenService::new(SECRET, Duration::from_secs(60));
        assert!(service.verify("not.a.token").is_err());
        assert!(service.verified().is_empty());
        let once = service
            .issue(
                &UserId::new("u"),
                &SessionId::new("s"),
                service.expiry_from(Utc::now()).unwrap(),
            )
            .unwrap();
        assert!(service.verify_once(&once).is_ok());
        assert!(service.verified().is_empty());
        let expires_at = service.expiry_from(Utc::now()).unwrap();
        for n in 0..MAX_VERIFIED_TOKENS + 10 {
            let session = SessionId::new(format!("session-{n}"));
            let token = service.issue(&UserId::new("user-1"), &session, expires_at).unwrap();
            service.verify(&token).unwrap();
            assert!(service.verified().len() <= MAX_VERIFIED_TOKENS);
        }
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let service = TokenService::new(SECRET, Duration::from_secs(60));
        let header = STANDARD_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = STANDARD_NO_PAD.encode(br#"{"sub":"u","sid":"s","iat":1,"exp":99999999999}"#);
        assert!(service.verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn a_generated_secret_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = load_or_create_secret(dir.path()).unwrap();
        assert!(created);
        assert!(first.len() >= TokenService::MIN_SECRET_BYTES);
        let (second, created) = load_or_create_secret(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first, second);
    }
}
