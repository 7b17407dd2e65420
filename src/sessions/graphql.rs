//! The GraphQL face of sessions: `register`, `login` and `logout`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::SignedIn;
use crate::{
    client_address::{ClientAddress, ClientNetwork},
    domain::SessionId,
    schema::{Timestamp, services, viewer},
    users::graphql::UserNode,
};

/// Details for a new account.
#[derive(InputObject)]
pub struct RegisterInput {
    /// International phone number, for example `+12025550143`; spaces, dashes and brackets
    /// are ignored. One account per number.
    pub phone_number: String,
    /// Display name, 2 to 32 characters.
    pub username: String,
    /// At least 8 characters and at most 71 bytes.
    pub password: String,
}

/// Credentials of an existing account.
#[derive(InputObject)]
pub struct LoginInput {
    /// The phone number the account was registered with, in any common formatting.
    pub phone_number: String,
    /// The account's password.
    pub password: String,
}

/// A signed-in session: send `token` as `Authorization: Bearer <token>` over HTTP, and as
/// `{ "token": "<token>" }` in the websocket `connection_init` payload.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// The access token (a JWT).
    pub token: String,
    /// The user's id (same as `user.id`).
    pub profile_id: ID,
    /// The user's display name.
    pub username: String,
    /// A human-readable outcome.
    pub message: String,
    /// The signed-in user.
    pub user: UserNode,
}

impl AuthPayload {
    fn new(signed_in: SignedIn, message: &str) -> Self {
        AuthPayload {
            token: signed_in.token,
            profile_id: ID(signed_in.user.id.to_string()),
            username: signed_in.user.username.as_str().to_string(),
            message: message.to_string(),
            user: UserNode::caller(signed_in.user),
        }
    }
}

/// The outcome of `logout`.
#[derive(SimpleObject)]
pub struct LogoutPayload {
    /// A human-readable outcome.
    pub message: String,
}

/// Where the caller connects from, for the per-client sign-in limits (HTTP and websocket
/// requests carry it; anything else shares the bucket of unknown addresses).
fn client_network(ctx: &Context<'_>) -> ClientNetwork {
    ctx.data_opt::<ClientAddress>().copied().unwrap_or_default().network()
}

/// Account and session mutations.
#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Creates an account and signs it in. Fails with `CONFLICT` if the phone number is taken
    /// and `BAD_USER_INPUT` if a field breaks its rule.
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: RegisterInput,
    ) -> async_graphql::Result<AuthPayload> {
        let services = services(ctx)?;
        let signed_in = super::register(
            services,
            client_network(ctx),
            &input.phone_number,
            &input.username,
            &input.password,
        )
        .await?;
        Ok(AuthPayload::new(signed_in, "User registered successfully"))
    }

    /// Signs in with phone number and password. A wrong password and an unknown number give the
    /// same `UNAUTHENTICATED` error.
    async fn login(
        &self,
        ctx: &Context<'_>,
        input: LoginInput,
    ) -> async_graphql::Result<AuthPayload> {
        let services = services(ctx)?;
        let signed_in =
            super::login(services, client_network(ctx), &input.phone_number, &input.password)
                .await?;
        Ok(AuthPayload::new(signed_in, "Login successful"))
    }

    /// Ends the session of the token this request carries, or with `allSessions: true` every
    /// session of the caller. The tokens are refused from then on, and websockets opened with
    /// them are closed with code 4401.
    async fn logout(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = false)] all_sessions: bool,
    ) -> async_graphql::Result<LogoutPayload> {
        let services = services(ctx)?;
        let viewer = viewer(ctx).await?;
        super::logout(services, &viewer, all_sessions).await?;
        let message =
            if all_sessions { "Logged out of all sessions" } else { "Logged out successfully" };
        Ok(LogoutPayload { message: message.into() })
    }

    /// Ends one of the caller's sessions, for example a lost phone's; its websockets are closed
    /// with code 4401. `NOT_FOUND` if the caller has no such session.
    async fn revoke_session(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<LogoutPayload> {
        let services = services(ctx)?;
        let viewer = viewer(ctx).await?;
        super::revoke(services, &viewer, &SessionId::new(id.0)).await?;
        Ok(LogoutPayload { message: "Session revoked".into() })
    }
}

/// One signed-in device or browser of the caller.
#[derive(SimpleObject)]
#[graphql(name = "Session")]
pub struct SessionInfo {
    /// Pass to `revokeSession` to end it.
    pub id: ID,
    /// When the user signed in.
    pub created_at: Timestamp,
    /// When the session was last used (to within a minute).
    pub last_seen_at: Timestamp,
    /// When its token expires.
    pub expires_at: Timestamp,
    /// Whether this is the session making the request.
    pub current: bool,
}

/// Queries about the caller's sessions.
#[derive(Default)]
pub struct SessionQuery;

#[Object]
impl SessionQuery {
    /// The caller's live sessions, newest first.
    #[graphql(complexity = "crate::schema::STORE_READ_COMPLEXITY + child_complexity")]
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SessionInfo>> {
        let services = services(ctx)?;
        let viewer = viewer(ctx).await?;
        let sessions = super::list(services, &viewer).await?;
        Ok(sessions
            .into_iter()
            .map(|session| SessionInfo {
                current: session.id == viewer.session_id,
                id: ID(session.id.into_string()),
                created_at: session.created_at.into(),
                last_seen_at: session.last_seen_at.into(),
                expires_at: session.expires_at.into(),
            })
            .collect())
    }
}
