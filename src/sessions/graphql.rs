//! The GraphQL face of sessions: `register`, `login` and `logout`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::SignedIn;
use crate::{
    schema::{services, viewer},
    users::User,
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
    pub user: User,
}

impl AuthPayload {
    fn new(signed_in: SignedIn, message: &str) -> Self {
        AuthPayload {
            token: signed_in.token,
            profile_id: ID(signed_in.user.id.clone()),
            username: signed_in.user.username.clone(),
            message: message.to_string(),
            user: signed_in.user,
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
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: RegisterInput,
    ) -> async_graphql::Result<AuthPayload> {
        let services = services(ctx)?;
        let signed_in = super::register(
            services,
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
        let signed_in = super::login(services, &input.phone_number, &input.password).await?;
        Ok(AuthPayload::new(signed_in, "Login successful"))
    }

    /// Ends the session of the token this request carries; the token stops working at once.
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<LogoutPayload> {
        let services = services(ctx)?;
        let viewer = viewer(ctx).await?;
        super::logout(services, &viewer).await?;
        Ok(LogoutPayload {
            message: "Logged out successfully".into(),
        })
    }
}
