//! The GraphQL face of sessions: `register`, `login` and `logout`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::{Timestamp, context::ContextExt, users::UserNode};
use crate::{
    accounts::{Accounts, Registration, SignedIn},
    domain::{InvalidInput, Password, PhoneNumber, SessionId, Username},
    sessions::Sessions,
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

impl TryFrom<RegisterInput> for Registration {
    type Error = InvalidInput;

    fn try_from(input: RegisterInput) -> Result<Self, InvalidInput> {
        Ok(Registration {
            phone_number: PhoneNumber::parse(&input.phone_number)?,
            username: Username::parse(&input.username)?,
            password: Password::parse(&input.password)?,
        })
    }
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

/// Account and session mutations.
#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Creates an account and signs it in. Fails with `CONFLICT` if the phone number is taken
    /// and `BAD_USER_INPUT` if a field breaks its rule.
    ///
    /// When the server verifies phone numbers, the new account's `user.phoneVerified` is false
    /// and a code has been texted to the number: pass it to `verifyPhone`. Until then the
    /// account cannot send (`PHONE_NOT_VERIFIED`), be found by number, or be written to; if it
    /// is not verified within the claim period it is removed and the number is free again.
    /// Codes are limited per number and per address (`RATE_LIMITED`); if the code cannot be
    /// handed to the SMS gateway, no account is created (`SERVICE_UNAVAILABLE`).
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: RegisterInput,
    ) -> async_graphql::Result<AuthPayload> {
        let registration = Registration::try_from(input)?;
        let accounts = ctx.service::<Accounts>()?;
        let signed_in = accounts.register(ctx.client_network(), registration).await?;
        let message = if signed_in.user.phone_verified {
            "User registered successfully"
        } else {
            "User registered; enter the code texted to your phone"
        };
        Ok(AuthPayload::new(signed_in, message))
    }

    /// Signs in with phone number and password. A wrong password and an unknown number give the
    /// same `UNAUTHENTICATED` error.
    async fn login(
        &self,
        ctx: &Context<'_>,
        input: LoginInput,
    ) -> async_graphql::Result<AuthPayload> {
        let phone_number = PhoneNumber::parse(&input.phone_number)?;
        let password = Password::presented(&input.password);
        let accounts = ctx.service::<Accounts>()?;
        let signed_in = accounts.login(ctx.client_network(), phone_number, password).await?;
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
        let viewer = ctx.viewer().await?;
        ctx.service::<Sessions>()?.logout(&viewer, all_sessions).await?;
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
        let viewer = ctx.viewer().await?;
        ctx.service::<Sessions>()?.revoke(&viewer, &SessionId::new(id.0)).await?;
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
        let viewer = ctx.viewer().await?;
        let sessions = ctx.service::<Sessions>()?.list(&viewer).await?;
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
