//! The GraphQL face of the caller's own account: profile and password.

use async_graphql::{Context, ID, Object, SimpleObject};

use super::{context::ContextExt, users::UserNode};
use crate::{
    accounts::Accounts,
    domain::{Password, UserId, Username},
    users::Directory,
};

/// The outcome of `changePassword`.
#[derive(SimpleObject)]
pub struct ChangePasswordPayload {
    /// A human-readable outcome.
    pub message: String,
    /// How many other sessions were ended (their websockets closed with 4401).
    pub ended_sessions: u64,
}

/// Changes to the caller's own account.
#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Changes the caller's display name (same rules as at registration: 2 to 32 characters).
    /// The people they chat with see it live (`ProfileChanged` on their `chatEvents`).
    /// Limited per caller (`RATE_LIMITED`).
    async fn update_profile(
        &self,
        ctx: &Context<'_>,
        username: String,
    ) -> async_graphql::Result<UserNode> {
        let viewer = ctx.viewer().await?;
        let username = Username::parse(&username)?;
        let user = ctx.service::<Directory>()?.update_profile(&viewer, username).await?;
        Ok(UserNode::caller(user))
    }

    /// Deletes the caller's account, after checking `password` (`BAD_USER_INPUT` if wrong).
    /// Erased: the phone number (free for a new account at once), the password hash, the
    /// name, the last-seen time, every session (websockets close with 4401), the chat list,
    /// every block by or of the account, and messages still waiting to be delivered to it.
    /// Kept: messages already delivered, in the other person's history, shown as from
    /// "Deleted account" (with no phone number), and messages the account sent that are still
    /// on their way. Limited per caller. Returns true.
    async fn delete_account(
        &self,
        ctx: &Context<'_>,
        password: String,
    ) -> async_graphql::Result<bool> {
        let viewer = ctx.viewer().await?;
        let password = Password::presented(&password);
        let accounts = ctx.service::<Accounts>()?;
        accounts.delete_account(ctx.client_network(), &viewer, password).await?;
        Ok(true)
    }

    /// Blocks a user: their messages to the caller are refused exactly as if the caller's
    /// account did not exist (`NOT_FOUND`, the answer a deleted account gives, so the block is
    /// not revealed), they cannot find the caller by phone number or id, and they no longer see
    /// the caller's presence or typing. Blocking twice is harmless; `NOT_FOUND` for an unknown
    /// id. Limited per caller. Returns true.
    async fn block_user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = ctx.viewer().await?;
        ctx.service::<Directory>()?.block(&viewer, &UserId::new(id.0)).await?;
        Ok(true)
    }

    /// Lifts a block. Returns whether the caller was blocking that user.
    async fn unblock_user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = ctx.viewer().await?;
        Ok(ctx.service::<Directory>()?.unblock(&viewer, &UserId::new(id.0)).await?)
    }

    /// Changes the caller's password: `currentPassword` must be right (`BAD_USER_INPUT`
    /// otherwise, and wrong tries slow down like failed logins), `newPassword` follows the
    /// registration rules. Every other session ends (its token stops working, its websockets
    /// close with 4401); the one making this request stays signed in. Limited per caller.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> async_graphql::Result<ChangePasswordPayload> {
        let viewer = ctx.viewer().await?;
        let new = Password::parse(&new_password)?;
        let current = Password::presented(&current_password);
        let accounts = ctx.service::<Accounts>()?;
        let ended = accounts.change_password(ctx.client_network(), &viewer, current, new).await?;
        Ok(ChangePasswordPayload {
            message: "Password changed".into(),
            ended_sessions: ended as u64,
        })
    }
}
