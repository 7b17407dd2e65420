//! The GraphQL face of users: the `User` type and the queries that find users.

use std::{collections::HashMap, time::Duration};

use async_graphql::{
    Context, ID, Object,
    dataloader::{DataLoader, Loader},
};
use tokio::sync::OnceCell;

use super::{Timestamp, context::ContextExt};
use crate::{
    domain::{PhoneNumber, User, UserId},
    error::AppError,
    presence::Presence,
    users::Directory,
};

/// A user as the GraphQL schema shows them (the `User` type): the user, and whether the caller
/// is already known to be allowed their phone number.
pub struct UserNode {
    user: User,
    /// Set when the user is the caller (a sign-in's own payload); otherwise the caller's right
    /// to the phone number is looked up when asked for.
    is_caller: bool,
    /// Whether the caller may see this user's presence, once looked up: `online` and
    /// `lastSeenAt` both need it, and it costs store reads.
    presence_visible: OnceCell<bool>,
}

impl UserNode {
    /// Someone other than (or not known to be) the caller.
    pub fn other(user: User) -> Self {
        UserNode { user, is_caller: false, presence_visible: OnceCell::new() }
    }

    /// The caller themself.
    pub fn caller(user: User) -> Self {
        UserNode { user, is_caller: true, presence_visible: OnceCell::new() }
    }
}

/// Someone who can send and receive messages.
#[Object(name = "User")]
impl UserNode {
    /// Stable, opaque id. Use it as `recipientId` when sending a message.
    async fn id(&self) -> ID {
        ID(self.user.id.to_string())
    }

    /// Display name chosen at registration.
    async fn username(&self) -> &str {
        self.user.username.as_str()
    }

    /// Phone number in E.164 form, for example `+12025550143`. Shown only to the user
    /// themself and to users who share a conversation with them (have sent or received a
    /// message to or from them); null for everyone else, so numbers cannot be harvested.
    async fn phone_number(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<&str>> {
        if self.user.is_deleted() {
            return Ok(None);
        }
        let phone_number = Some(self.user.phone_number.as_str());
        if self.is_caller {
            return Ok(phone_number);
        }
        let Ok(viewer) = ctx.viewer().await else { return Ok(None) };
        let directory = ctx.service::<Directory>()?;
        let allowed = directory.may_see_phone_number(&viewer, &self.user.id).await?;
        Ok(if allowed { phone_number } else { None })
    }

    /// Whether the user proved they own their phone number (`verifyPhone`). Always true when
    /// the server does not verify numbers, and for anyone the caller can find or write to;
    /// false only on the caller's own account between `register` and `verifyPhone`.
    async fn phone_verified(&self) -> bool {
        self.user.phone_verified
    }

    /// Whether the user has a connection open (on any device). Visible to the user and to
    /// users who share a conversation with them, unless they hide their presence
    /// (`setPresenceVisible`); null for everyone else.
    async fn online(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<bool>> {
        if !self.shows_presence_to_caller(ctx).await? {
            return Ok(None);
        }
        Ok(Some(ctx.service::<Presence>()?.is_online(&self.user.id).await))
    }

    /// When the user's last connection closed (null if it never did). Visible under the same
    /// rule as `online`.
    async fn last_seen_at(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Timestamp>> {
        if !self.shows_presence_to_caller(ctx).await? {
            return Ok(None);
        }
        Ok(self.user.last_seen_at.map(Timestamp))
    }
}

impl UserNode {
    /// Whether the caller may see this user's presence.
    async fn shows_presence_to_caller(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let visible = self.presence_visible.get_or_try_init(|| async {
            if self.is_caller {
                return Ok(true);
            }
            let Ok(viewer) = ctx.viewer().await else { return Ok(false) };
            let directory = ctx.service::<Directory>()?;
            Ok::<_, async_graphql::Error>(directory.may_see_presence(&viewer, &self.user).await?)
        });
        Ok(*visible.await?)
    }
}

/// Loads users by id in batches: the senders and recipients of a page of messages (or of
/// every page in a request) cost one store query, not one per message.
pub struct UserLoader {
    directory: Directory,
}

/// How long a load waits for more ids to batch with. Short, because a live message's
/// `sender` is loaded on the delivery path.
const BATCH_DELAY: Duration = Duration::from_micros(200);

impl UserLoader {
    /// A request-independent loader (it batches but does not cache, so it never serves stale
    /// users), for schema data.
    pub fn data_loader(directory: Directory) -> DataLoader<UserLoader> {
        DataLoader::new(UserLoader { directory }, tokio::spawn).delay(BATCH_DELAY)
    }
}

impl Loader<UserId> for UserLoader {
    type Value = User;
    type Error = AppError;

    async fn load(&self, ids: &[UserId]) -> Result<HashMap<UserId, User>, Self::Error> {
        let users = self.directory.by_ids(ids).await?;
        Ok(users.into_iter().map(|user| (user.id.clone(), user)).collect())
    }
}

/// The user with this id, through the request's batching loader.
pub async fn load_user(ctx: &Context<'_>, id: &UserId) -> async_graphql::Result<Option<User>> {
    let loader = ctx.data::<DataLoader<UserLoader>>()?;
    Ok(loader.load_one(id.clone()).await?)
}

/// A user that a stored record (a message, a conversation, an event) refers to, so must exist.
pub(super) async fn known_user(ctx: &Context<'_>, id: &UserId) -> async_graphql::Result<UserNode> {
    let user = load_user(ctx, id).await?;
    let user =
        user.ok_or_else(|| AppError::internal(format!("record refers to missing user {id}")))?;
    Ok(UserNode::other(user))
}

/// Queries about users.
#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The signed-in user. Requires a token.
    #[graphql(complexity = "crate::schema::STORE_READ_COMPLEXITY + child_complexity")]
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        let viewer = ctx.viewer().await?;
        Ok(UserNode::caller(ctx.service::<Directory>()?.me(&viewer).await?))
    }

    /// A user by id, or null if there is none. Requires a token.
    #[graphql(complexity = "crate::schema::STORE_READ_COMPLEXITY + child_complexity")]
    async fn user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<UserNode>> {
        let viewer = ctx.viewer().await?;
        let user = ctx.service::<Directory>()?.by_id(&viewer, &UserId::new(id.0)).await?;
        Ok(user.map(UserNode::other))
    }

    /// Everyone the caller blocks, most recently blocked first. Requires a token.
    #[graphql(complexity = "crate::schema::STORE_READ_COMPLEXITY + child_complexity")]
    async fn blocked_users(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<UserNode>> {
        let viewer = ctx.viewer().await?;
        let users = ctx.service::<Directory>()?.blocked(&viewer).await?;
        Ok(users.into_iter().map(UserNode::other).collect())
    }

    /// Finds a user by phone number (any common formatting), to start a conversation. Null if
    /// nobody registered that number. Requires a token. Limited per caller (every alias and
    /// batch entry counts): `RATE_LIMITED` past the limit.
    #[graphql(complexity = "crate::schema::STORE_READ_COMPLEXITY + child_complexity")]
    async fn user_by_phone_number(
        &self,
        ctx: &Context<'_>,
        phone_number: String,
    ) -> async_graphql::Result<Option<UserNode>> {
        let viewer = ctx.viewer().await?;
        let phone_number = PhoneNumber::parse(&phone_number)?;
        let user = ctx.service::<Directory>()?.by_phone(&viewer, &phone_number).await?;
        Ok(user.map(UserNode::other))
    }
}
