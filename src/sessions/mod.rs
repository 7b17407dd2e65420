//! Sessions: registering, logging in and out, and working out who is calling.
//!
//! Every registration or login creates a server-side session, and the access token names it.
//! A request is authenticated only while its session exists, so ending the session ends the
//! token, whatever its expiry says.

pub mod graphql;
pub mod passwords;
pub mod tokens;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;

use crate::{
    error::{AppError, AppResult},
    services::Services,
    users::{NewUser, Password, PhoneNumber, User, Username},
};

/// A live login of one user on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Opaque id, carried in the token's `sid` claim.
    pub id: String,
    /// Whose session it is.
    pub user_id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its token stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// A session about to be stored.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Whose session it is.
    pub user_id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its token stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// The authenticated caller of a request or websocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The caller's user id.
    pub user_id: String,
    /// The session the caller's token names.
    pub session_id: String,
}

/// What a successful registration or login hands back.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The access token to present from now on.
    pub token: String,
    /// The signed-in user.
    pub user: User,
    /// The session the token names.
    pub session: Session,
}

/// The same answer for an unknown phone number and a wrong password, so accounts cannot be
/// discovered through the login form.
fn bad_credentials() -> AppError {
    AppError::Unauthenticated("invalid phone number or password".into())
}

/// Creates an account and signs it in.
#[tracing::instrument(skip_all)]
pub async fn register(
    services: &Services,
    phone_number: &str,
    username: &str,
    password: &str,
) -> AppResult<SignedIn> {
    let phone_number = PhoneNumber::parse(phone_number)?;
    let username = Username::parse(username)?;
    let password = Password::parse(password)?;
    if services
        .store
        .user_by_phone(phone_number.as_str())
        .await?
        .is_some()
    {
        return Err(AppError::Conflict(
            "this phone number is already registered".into(),
        ));
    }
    let password_hash = services.passwords.hash(&password).await?;
    let user = services
        .store
        .create_user(NewUser {
            phone_number,
            username,
            password_hash,
        })
        .await?;
    tracing::info!(user = %user.id, "user registered");
    start_session(services, user).await
}

/// Checks a phone number and password and signs the user in.
#[tracing::instrument(skip_all)]
pub async fn login(services: &Services, phone_number: &str, password: &str) -> AppResult<SignedIn> {
    let phone_number = PhoneNumber::parse(phone_number)?;
    let credentials = services
        .store
        .credentials_by_phone(phone_number.as_str())
        .await?;
    let Some(credentials) = credentials else {
        services.passwords.verify_decoy(password).await?;
        return Err(bad_credentials());
    };
    if !services
        .passwords
        .verify(password, &credentials.password_hash)
        .await?
    {
        return Err(bad_credentials());
    }
    start_session(services, credentials.user).await
}

/// Ends the caller's own session; its token stops working at once.
#[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
pub async fn logout(services: &Services, viewer: &Viewer) -> AppResult<()> {
    services.store.delete_session(&viewer.session_id).await?;
    Ok(())
}

async fn start_session(services: &Services, user: User) -> AppResult<SignedIn> {
    let now = Utc::now();
    let expires_at =
        now + chrono::Duration::from_std(services.tokens.ttl()).map_err(AppError::internal)?;
    let session = services
        .store
        .create_session(NewSession {
            user_id: user.id.clone(),
            created_at: now,
            expires_at,
        })
        .await?;
    let (token, _) = services
        .tokens
        .issue(&user.id, &session.id)
        .map_err(AppError::internal)?;
    Ok(SignedIn {
        token,
        user,
        session,
    })
}

/// Turns a presented token into the caller, checking that its session is still live.
pub async fn authenticate(services: &Services, token: &str) -> AppResult<Viewer> {
    let refused = || AppError::Unauthenticated("invalid or expired token".into());
    let claims = services.tokens.verify(token).map_err(|error| {
        tracing::debug!(%error, "token refused");
        refused()
    })?;
    let session = services
        .store
        .session(&claims.sid)
        .await?
        .ok_or_else(refused)?;
    if session.user_id != claims.sub || session.expires_at <= Utc::now() {
        return Err(refused());
    }
    Ok(Viewer {
        user_id: session.user_id,
        session_id: session.id,
    })
}

/// Per-request authentication state: the presented token, checked at most once and only when a
/// resolver needs the caller, so `register` and `login` work whatever token a client still sends.
///
/// Cloning shares the state, so every operation of a batched HTTP request checks the token once.
#[derive(Clone)]
pub struct RequestAuth {
    token: Option<String>,
    /// The caller, once known. Failures are not cached: they end the request anyway.
    viewer: Arc<OnceCell<Viewer>>,
}

impl RequestAuth {
    /// A request that presented `token` (or none).
    pub fn from_token(token: Option<String>) -> Self {
        RequestAuth {
            token,
            viewer: Arc::new(OnceCell::new()),
        }
    }

    /// A connection whose caller was already authenticated (a websocket, at `connection_init`).
    pub fn authenticated(viewer: Viewer) -> Self {
        RequestAuth {
            token: None,
            viewer: Arc::new(OnceCell::new_with(Some(viewer))),
        }
    }

    /// The caller, or `UNAUTHENTICATED`.
    pub async fn viewer(&self, services: &Services) -> AppResult<Viewer> {
        self.viewer
            .get_or_try_init(|| async {
                let token = self
                    .token
                    .as_deref()
                    .ok_or_else(AppError::unauthenticated)?;
                authenticate(services, token).await
            })
            .await
            .cloned()
    }
}

/// The token in an `Authorization` value of the form `Bearer <token>` (scheme in any case).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The token in a websocket `connection_init` payload.
///
/// Accepts `{ "token": "<jwt>" }` (what Apollo and urql users put in `connectionParams`) and
/// `{ "Authorization": "Bearer <jwt>" }` with the key in any case (what GraphiQL sends from its
/// headers editor), also nested under `headers`.
pub fn token_from_init_payload(payload: &serde_json::Value) -> Option<String> {
    let object = payload.as_object()?;
    if let Some(token) = object
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.trim().is_empty())
    {
        return Some(token.trim().to_string());
    }
    let authorization = |map: &serde_json::Map<String, serde_json::Value>| {
        map.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, value)| value.as_str())
            .and_then(bearer_token)
            .map(String::from)
    };
    authorization(object).or_else(|| object.get("headers")?.as_object().and_then(authorization))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bearer_tokens_are_read_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn init_payload_tokens() {
        assert_eq!(
            token_from_init_payload(&json!({"token": "t1"})).as_deref(),
            Some("t1")
        );
        assert_eq!(
            token_from_init_payload(&json!({"Authorization": "Bearer t2"})).as_deref(),
            Some("t2")
        );
        assert_eq!(
            token_from_init_payload(&json!({"authorization": "Bearer t3"})).as_deref(),
            Some("t3")
        );
        assert_eq!(
            token_from_init_payload(&json!({"AUTHORIZATION": "Bearer t4"})).as_deref(),
            Some("t4")
        );
        assert_eq!(
            token_from_init_payload(&json!({"headers": {"Authorization": "Bearer t5"}})).as_deref(),
            Some("t5")
        );
        assert_eq!(token_from_init_payload(&json!({})), None);
        assert_eq!(token_from_init_payload(&json!(null)), None);
        assert_eq!(token_from_init_payload(&json!({"token": 42})), None);
        assert_eq!(
            token_from_init_payload(&json!({"Authorization": "t6"})),
            None
        );
    }
}
