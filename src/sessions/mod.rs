//! Sessions: the server-side half of every sign-in, and working out who is calling.
//!
//! Every registration or login creates a server-side session, and the access token names it.
//! A request is authenticated only while its session exists, so ending the session ends the
//! token, whatever its expiry says. [`Sessions`] is the service that starts, checks and ends
//! them.

pub mod tokens;

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::OnceCell;

use self::tokens::{TokenError, TokenService};
use crate::{
    bus::{BusEvent, BusSubscription, MessageBus},
    domain::{NewSession, Session, SessionId, User, Viewer},
    error::{AppError, AppResult},
    store::Store,
};

/// How long an expired session is kept before it is removed from the store.
pub const EXPIRED_SESSION_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// How stale `last_seen_at` may get before a request refreshes it; keeps authentication from
/// writing to the store on every request.
const LAST_SEEN_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Starts, checks and ends sessions.
#[derive(Clone)]
pub struct Sessions {
    /// Where sessions are kept.
    store: Arc<dyn Store>,
    /// Tells open websockets that their session ended, and lets them listen for it.
    bus: Arc<dyn MessageBus>,
    /// Issues and checks the tokens that name sessions.
    tokens: Arc<TokenService>,
}

/// A session just started, and the token that names it.
#[derive(Debug, Clone)]
pub struct Started {
    /// The access token to present from now on.
    pub token: String,
    /// The session the token names.
    pub session: Session,
}

impl Sessions {
    /// The service over `store`, announcing endings on `bus`.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn MessageBus>, tokens: Arc<TokenService>) -> Self {
        Sessions { store, bus, tokens }
    }

    /// Stores a new session for `user` and issues the token that names it.
    pub async fn start(&self, user: &User) -> AppResult<Started> {
        let now = Utc::now();
        let expires_at = self.tokens.expiry_from(now).map_err(AppError::internal)?;
        let session = self
            .store
            .create_session(NewSession { user_id: user.id.clone(), created_at: now, expires_at })
            .await?;
        let token =
            self.tokens.issue(&user.id, &session.id, expires_at).map_err(AppError::internal)?;
        Ok(Started { token, session })
    }

    /// Turns a presented token into the caller, checking that its session is still live.
    pub async fn authenticate(&self, token: &str) -> Result<Viewer, AuthError> {
        let claims = self.tokens.verify(token)?;
        self.check(&SessionId::new(claims.sid), &claims.sub).await
    }

    /// For a websocket: authenticates `token` and listens for the end of its session. The
    /// listening starts before the store is asked whether the session is live, so a logout
    /// racing with the connect is never missed.
    pub async fn authenticate_and_watch(
        &self,
        token: &str,
    ) -> Result<(Viewer, SessionWatch), AuthError> {
        let claims = self.tokens.verify_once(token)?;
        let session_id = SessionId::new(claims.sid);
        let events =
            self.bus.watch_session(&session_id).await.map_err(|error| {
                AuthError::Store(AppError::ServiceUnavailable(error.to_string()))
            })?;
        let mut viewer = self.check(&session_id, &claims.sub).await?;
        // One copy of the id for both, kept as long as the connection is open.
        viewer.session_id = session_id.clone();
        let watch = SessionWatch { events, session_id, store: self.store.clone() };
        Ok((viewer, watch))
    }

    /// The caller, if session `session_id` exists, belongs to `user_id` and has not expired.
    async fn check(&self, session_id: &SessionId, user_id: &str) -> Result<Viewer, AuthError> {
        let session = self
            .store
            .session(session_id)
            .await
            .map_err(|error| AuthError::Store(error.into()))?
            .ok_or(AuthError::Invalid)?;
        let now = Utc::now();
        if session.user_id.as_str() != user_id {
            return Err(AuthError::Invalid);
        }
        if session.expires_at <= now {
            return Err(AuthError::Expired);
        }
        if now - session.last_seen_at > LAST_SEEN_RESOLUTION {
            // Best effort: a full disk or a read-only replica must not stop reads.
            if let Err(error) = self.store.touch_session(&session.id, now).await {
                tracing::warn!(%error, "cannot record when a session was last used");
            }
        }
        Ok(Viewer {
            user_id: session.user_id,
            session_id: session.id,
            expires_at: session.expires_at,
        })
    }

    /// Ends the caller's session, or with `all_sessions` every session of the caller, and
    /// closes the websockets those sessions hold open. Their tokens stop working at once.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id, all_sessions))]
    pub async fn logout(&self, viewer: &Viewer, all_sessions: bool) -> AppResult<()> {
        let ended = if all_sessions {
            self.store.delete_user_sessions(&viewer.user_id).await?
        } else if self.store.delete_session(&viewer.session_id).await? {
            vec![viewer.session_id.clone()]
        } else {
            Vec::new()
        };
        self.bus.end_sessions(&ended).await;
        Ok(())
    }

    /// Closes the websockets of sessions the store has already ended (an account deletion).
    pub async fn announce_ended(&self, ended: &[SessionId]) {
        self.bus.end_sessions(ended).await;
    }

    /// Ends every session of the caller except the one making the request (after a password
    /// change), closing their websockets; returns how many ended.
    pub async fn end_others(&self, viewer: &Viewer) -> AppResult<usize> {
        let mut ended = Vec::new();
        for session in self.store.user_sessions(&viewer.user_id).await? {
            if session.id != viewer.session_id && self.store.delete_session(&session.id).await? {
                ended.push(session.id);
            }
        }
        self.bus.end_sessions(&ended).await;
        Ok(ended.len())
    }

    /// The caller's sessions that have not ended or expired, newest first.
    pub async fn list(&self, viewer: &Viewer) -> AppResult<Vec<Session>> {
        let mut sessions = self.store.user_sessions(&viewer.user_id).await?;
        let now = Utc::now();
        sessions.retain(|session| session.expires_at > now);
        sessions.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        Ok(sessions)
    }

    /// Ends one of the caller's sessions ("log out that other device"). Someone else's session
    /// id is `NOT_FOUND`, exactly like an unknown one.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn revoke(&self, viewer: &Viewer, session_id: &SessionId) -> AppResult<()> {
        let owned = self.store.session(session_id).await?;
        if owned.is_none_or(|session| session.user_id != viewer.user_id) {
            return Err(AppError::NotFound("session not found".into()));
        }
        if self.store.delete_session(session_id).await? {
            self.bus.end_sessions(std::slice::from_ref(session_id)).await;
        }
        Ok(())
    }
}

/// Listens for the end of one session (for a websocket held open under it).
pub struct SessionWatch {
    events: BusSubscription,
    session_id: SessionId,
    store: Arc<dyn Store>,
}

/// What a [`SessionWatch`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The session's end was announced.
    Ended,
    /// The bus lagged: the announcement may have been lost (say while Redis restarted), so
    /// [`SessionWatch::ended_in_store`] must tell.
    MaybeEnded,
}

impl SessionWatch {
    /// The next thing heard about the session; pending forever if the bus closes (a closed
    /// bus is not a logout). Pollable, so a connection waits on it without holding a future.
    pub fn poll_heard(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Heard> {
        use std::task::Poll;
        loop {
            match self.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(BusEvent::SessionEnded)) => return Poll::Ready(Heard::Ended),
                Poll::Ready(Some(BusEvent::Lagged)) => return Poll::Ready(Heard::MaybeEnded),
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Whether the store says the session is gone (after [`Heard::MaybeEnded`]). A store that
    /// cannot be asked says no: the next lag or announcement asks again.
    pub async fn ended_in_store(&mut self) -> bool {
        match self.store.session(&self.session_id).await {
            Ok(found) => found.is_none(),
            Err(error) => {
                tracing::warn!(%error, "cannot check a session after a lag");
                false
            }
        }
    }

    /// Resolves once the session has ended: its end was announced, or the bus lagged and the
    /// store no longer has it.
    pub async fn ended(&mut self) {
        loop {
            match std::future::poll_fn(|cx| self.poll_heard(cx)).await {
                Heard::Ended => return,
                Heard::MaybeEnded if self.ended_in_store().await => return,
                Heard::MaybeEnded => {}
            }
        }
    }
}

/// Why a presented token does not authenticate anyone.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Genuine but expired (or its session expired): a fresh token will work.
    #[error("token expired")]
    Expired,
    /// Forged, malformed, or its session was ended: no retry with it can work.
    #[error("invalid token")]
    Invalid,
    /// The store could not be asked; the same token may work later.
    #[error(transparent)]
    Store(AppError),
}

impl From<TokenError> for AuthError {
    fn from(error: TokenError) -> Self {
        tracing::debug!(%error, "token refused");
        match error {
            TokenError::Expired => AuthError::Expired,
            TokenError::Invalid(_) => AuthError::Invalid,
        }
    }
}

impl From<AuthError> for AppError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Expired | AuthError::Invalid => {
                AppError::Unauthenticated("invalid or expired token".into())
            }
            AuthError::Store(error) => error,
        }
    }
}

/// Per-request authentication state: the presented token, checked at most once and only when a
/// resolver needs the caller, so `register` and `login` work whatever token a client still sends.
///
/// Cloning shares the state, so every operation of a batched HTTP request checks the token once.
#[derive(Clone)]
pub struct RequestAuth(Caller);

#[derive(Clone)]
enum Caller {
    /// An HTTP request's token, and the caller once it has been checked. Failures are not
    /// cached: they end the request anyway.
    Token { token: Option<String>, viewer: Arc<OnceCell<Viewer>> },
    /// Already authenticated: a websocket, at `connection_init`. Kept by every idle
    /// connection, so without the once-cell's lock (64 bytes instead of 128).
    Known(Arc<Viewer>),
}

impl RequestAuth {
    /// A request that presented `token` (or none).
    pub fn from_token(token: Option<String>) -> Self {
        RequestAuth(Caller::Token { token, viewer: Arc::new(OnceCell::new()) })
    }

    /// A connection whose caller was already authenticated (a websocket, at `connection_init`).
    pub fn authenticated(viewer: Arc<Viewer>) -> Self {
        RequestAuth(Caller::Known(viewer))
    }

    /// The caller, or `UNAUTHENTICATED`.
    pub async fn viewer(&self, sessions: &Sessions) -> AppResult<Viewer> {
        match &self.0 {
            Caller::Known(viewer) => Ok(Viewer::clone(viewer)),
            Caller::Token { token, viewer } => viewer
                .get_or_try_init(|| async {
                    let token = token.as_deref().ok_or_else(AppError::unauthenticated)?;
                    Ok::<_, AppError>(sessions.authenticate(token).await?)
                })
                .await
                .cloned(),
        }
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
    if let Some(token) =
        object.get("token").and_then(|t| t.as_str()).filter(|t| !t.trim().is_empty())
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
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use serde_json::json;

    use super::*;
    use crate::{bus::BusEvent, testing::World};

    fn sessions(world: &World) -> Sessions {
        let tokens =
            TokenService::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        Sessions::new(world.store.clone(), world.bus.clone(), Arc::new(tokens))
    }

    #[tokio::test]
    async fn a_started_session_authenticates_until_it_is_ended() {
        let world = World::new();
        let alice = world.user("+12025550143").await;
        let sessions = sessions(&world);
        let started = sessions.start(&alice).await.unwrap();
        let (viewer, mut watch) = sessions.authenticate_and_watch(&started.token).await.unwrap();
        assert_eq!((&viewer.user_id, &viewer.session_id), (&alice.id, &started.session.id));

        sessions.logout(&viewer, false).await.unwrap();
        watch.ended().await;
        let after = sessions.authenticate(&started.token).await.unwrap_err();
        assert!(matches!(after, AuthError::Invalid), "an ended session is final: {after:?}");
    }

    #[tokio::test]
    async fn after_a_lag_a_watch_asks_the_store_whether_its_session_still_exists() {
        use futures::{FutureExt, StreamExt, stream};
        let world = World::new();
        let alice = world.user("+12025550143").await;
        let started = sessions(&world).start(&alice).await.unwrap();
        let lags = || stream::iter([BusEvent::Lagged, BusEvent::Lagged]).chain(stream::pending());
        let mut watch = SessionWatch {
            events: Box::pin(lags()),
            session_id: started.session.id.clone(),
            store: world.store.clone(),
        };
        assert!(watch.ended().now_or_never().is_none(), "a lag alone is not a logout");
        // Ended while its announcement was lost (say Redis was down): the next lag finds out.
        world.store.delete_session(&started.session.id).await.unwrap();
        watch.events = Box::pin(lags());
        watch.ended().await;
    }

    #[tokio::test]
    async fn logging_out_everywhere_ends_every_session_and_only_the_callers() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let sessions = sessions(&world);
        let phone = sessions.start(&alice).await.unwrap();
        let laptop = sessions.start(&alice).await.unwrap();
        let bobs = sessions.start(&bob).await.unwrap();
        let (viewer, _) = sessions.authenticate_and_watch(&phone.token).await.unwrap();
        let (_, mut laptop_watch) = sessions.authenticate_and_watch(&laptop.token).await.unwrap();

        sessions.logout(&viewer, true).await.unwrap();
        laptop_watch.ended().await;
        assert!(sessions.authenticate(&laptop.token).await.is_err());
        assert!(sessions.authenticate(&bobs.token).await.is_ok(), "bob is still signed in");
    }

    #[tokio::test]
    async fn only_your_own_sessions_can_be_listed_and_revoked() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let sessions = sessions(&world);
        let first = sessions.start(&alice).await.unwrap();
        let second = sessions.start(&alice).await.unwrap();
        let bobs = sessions.start(&bob).await.unwrap();
        let as_alice = sessions.authenticate(&first.token).await.unwrap();
        let listed: Vec<_> =
            sessions.list(&as_alice).await.unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&first.session.id) && listed.contains(&second.session.id));

        let someone_elses = sessions.revoke(&as_alice, &bobs.session.id).await.unwrap_err();
        assert_eq!(someone_elses.code(), "NOT_FOUND");
        assert!(sessions.authenticate(&bobs.token).await.is_ok());
        let mut watch = world.bus.watch_session(&second.session.id).await.unwrap();
        sessions.revoke(&as_alice, &second.session.id).await.unwrap();
        assert!(matches!(watch.next().await, Some(BusEvent::SessionEnded)));
        assert!(sessions.authenticate(&second.token).await.is_err());
        assert!(watch.next().now_or_never().is_none(), "ended once");
    }

    #[tokio::test]
    async fn an_expired_session_asks_for_a_new_token_and_a_foreign_one_is_refused() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let sessions = sessions(&world);
        let expired = world
            .store
            .create_session(NewSession {
                user_id: alice.id.clone(),
                created_at: Utc::now() - chrono::TimeDelta::hours(1),
                expires_at: Utc::now() - chrono::TimeDelta::seconds(1),
            })
            .await
            .unwrap();
        let token = sessions
            .tokens
            .issue(&alice.id, &expired.id, Utc::now() + chrono::TimeDelta::minutes(1))
            .unwrap();
        assert!(matches!(sessions.authenticate(&token).await, Err(AuthError::Expired)));

        // A genuine token naming bob's session but claiming alice.
        let bobs = sessions.start(&bob).await.unwrap();
        let forged = sessions
            .tokens
            .issue(&alice.id, &bobs.session.id, Utc::now() + chrono::TimeDelta::minutes(1))
            .unwrap();
        assert!(matches!(sessions.authenticate(&forged).await, Err(AuthError::Invalid)));
    }

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
        assert_eq!(token_from_init_payload(&json!({"token": "t1"})).as_deref(), Some("t1"));
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
        assert_eq!(token_from_init_payload(&json!({"Authorization": "t6"})), None);
    }
}
