//! The GraphQL face of users: the `User` type and the queries that find users.

use async_graphql::{Context, ID, Object};

use super::{PhoneNumber, User};
use crate::schema::{services, viewer};

/// Someone who can send and receive messages.
#[Object]
impl User {
    /// Stable, opaque id. Use it as `recipientId` when sending a message.
    async fn id(&self) -> ID {
        ID(self.id.clone())
    }

    /// Display name chosen at registration.
    async fn username(&self) -> &str {
        &self.username
    }

    /// Phone number in E.164 form, for example `+12025550143`.
    async fn phone_number(&self) -> &str {
        &self.phone_number
    }
}

/// Queries about users.
#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The signed-in user. Requires a token.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let services = services(ctx)?;
        let viewer = viewer(ctx).await?;
        let user = services.store.user_by_id(&viewer.user_id).await?;
        user.ok_or_else(|| crate::error::AppError::unauthenticated().into())
    }

    /// A user by id, or null if there is none. Requires a token.
    async fn user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<User>> {
        let services = services(ctx)?;
        viewer(ctx).await?;
        Ok(services.store.user_by_id(&id).await?)
    }

    /// Finds a user by phone number (any common formatting), to start a conversation. Null if
    /// nobody registered that number. Requires a token.
    async fn user_by_phone_number(
        &self,
        ctx: &Context<'_>,
        phone_number: String,
    ) -> async_graphql::Result<Option<User>> {
        let services = services(ctx)?;
        viewer(ctx).await?;
        let phone_number = PhoneNumber::parse(&phone_number)?;
        Ok(services.store.user_by_phone(phone_number.as_str()).await?)
    }
}
