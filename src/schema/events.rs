//! `chatEvents`: what happens to the caller's own messages, live, on every connection they
//! have open. One stream of a union (not a subscription per kind) so a client holds one
//! subscription beside `messageReceived`, and each event carries the `Message` by id, so Apollo
//! and urql caches update the message wherever it is shown, with no refetch.

use async_graphql::{Context, ID, Object, Subscription};
use futures::{Stream, StreamExt};

use super::{
    context::ContextExt,
    event_nodes::ChatEventNode,
    parked::{Item, hand_over},
};
use crate::{domain::UserId, messages::Messaging, presence::Presence, typing::Typing};

/// Live events about the caller's own messages.
#[derive(Default)]
pub struct EventSubscription;

#[Subscription]
impl EventSubscription {
    /// Events for the caller on every open connection: `MessageSent` when they send from any
    /// device, `MessageStatusChanged` when a message they sent is delivered or read,
    /// `TypingChanged` when someone types to them, `PresenceChanged` when someone they chat
    /// with comes online or goes offline, `ProfileChanged` when such a person changes their
    /// profile, `EventsMissed` if the connection fell behind. Live only: what happened while offline is state on the messages (`status`,
    /// `readAt`), visible by querying.
    async fn chat_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = ChatEventNode> + use<>> {
        let viewer = ctx.viewer().await?;
        let events = ctx.service::<Messaging>()?.events(&viewer).await?.map(ChatEventNode::from);
        // A parked subscription takes the events and delivers them itself (see `parked`).
        Ok(hand_over(ctx, events, Item::Event))
    }
}

/// Typing indicators.
#[derive(Default)]
pub struct TypingMutation;

#[Object]
impl TypingMutation {
    /// Tells `withUserId`'s open connections that the caller is typing to them (`true`), or
    /// stopped (`false`), as a `TypingChanged` on their `chatEvents`. Never stored. A `true`
    /// holds about 6 seconds: refresh it every few seconds while the user types; without a
    /// refresh it ends by itself. Limited per caller (`RATE_LIMITED`). Returns `typing`.
    async fn set_typing(
        &self,
        ctx: &Context<'_>,
        with_user_id: ID,
        typing: bool,
    ) -> async_graphql::Result<bool> {
        let viewer = ctx.viewer().await?;
        let with = UserId::new(with_user_id.0);
        ctx.service::<Typing>()?.set(&viewer, &with, typing).await?;
        Ok(typing)
    }
}

/// Presence privacy.
#[derive(Default)]
pub struct PresenceMutation;

#[Object]
impl PresenceMutation {
    /// Whether the people the caller chats with may see that they are online and when they were
    /// last seen (on by default). Hidden: `User.online` and `User.lastSeenAt` are null for
    /// them, and no `PresenceChanged` is sent. Limited per caller (`RATE_LIMITED`, shared with
    /// the other account changes). Returns `visible`.
    async fn set_presence_visible(
        &self,
        ctx: &Context<'_>,
        visible: bool,
    ) -> async_graphql::Result<bool> {
        let viewer = ctx.viewer().await?;
        ctx.service::<Presence>()?.set_visible(&viewer, visible).await?;
        Ok(visible)
    }
}
