//! `chatEvents`: what happens to the caller's own messages, live, on every connection they
//! have open. One stream of a union (not a subscription per kind) so a client holds one
//! subscription beside `messageReceived`, and each event carries the `Message` by id, so Apollo
//! and urql caches update the message wherever it is shown, with no refetch.

use std::sync::Arc;

use async_graphql::{Context, ID, Object, SimpleObject, Subscription, Union};
use futures::{Stream, StreamExt, future::Either};

use chrono::{DateTime, Utc};

use super::{
    Timestamp,
    context::ContextExt,
    messages::load_user,
    parked::{Handover, Item},
    users::UserNode,
};
use crate::{
    domain::{ChatEvent, Message, UserId},
    messages::Messaging,
    presence::Presence,
    typing::Typing,
};

/// A message the caller sent, from this device or another: a second device shows the
/// conversation the first one is having.
#[derive(SimpleObject)]
pub struct MessageSent {
    /// The message as stored.
    message: Message,
}

/// A message the caller sent was delivered (the recipient's client acknowledged it) or read:
/// the ticks. `message.status`, `deliveredAt` and `readAt` are its state now.
#[derive(SimpleObject)]
pub struct MessageStatusChanged {
    /// The message as it is now.
    message: Message,
}

/// Someone the caller chats with started or stopped typing to them. A `true` ends by itself
/// (a `false` follows) when it is not refreshed within a few seconds.
pub struct TypingChanged {
    from: UserId,
    typing: bool,
}

#[Object]
impl TypingChanged {
    /// Who is typing.
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        load_user(ctx, &self.from).await
    }

    /// Whether they are typing now.
    async fn typing(&self) -> bool {
        self.typing
    }
}

/// Someone the caller chats with came online or went offline (only users who show their
/// presence are announced).
pub struct PresenceChanged {
    user: UserId,
    online: bool,
    last_seen_at: Option<DateTime<Utc>>,
}

#[Object]
impl PresenceChanged {
    /// Whose presence changed.
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        load_user(ctx, &self.user).await
    }

    /// Whether they have a connection open now (on any device).
    async fn online(&self) -> bool {
        self.online
    }

    /// When their last connection closed; set when they go offline.
    async fn last_seen_at(&self) -> Option<Timestamp> {
        self.last_seen_at.map(Timestamp)
    }
}

/// Someone the caller chats with changed their profile (their `username`); caches update the
/// `User` by id.
#[derive(SimpleObject)]
pub struct ProfileChanged {
    /// The user as they are now.
    user: UserNode,
}

/// The connection fell behind and events were dropped: refetch what is on screen (the state
/// itself is on the messages and conversations, so nothing is lost).
#[derive(SimpleObject)]
pub struct EventsMissed {
    /// What happened, for logs.
    reason: String,
}

/// Something that happened to the caller's own messages.
#[derive(Union)]
pub enum ChatEventNode {
    /// Sent from one of the caller's devices.
    MessageSent(MessageSent),
    /// Delivered or read.
    MessageStatusChanged(MessageStatusChanged),
    /// Someone is (or stopped) typing to the caller.
    TypingChanged(TypingChanged),
    /// Someone the caller chats with came online or went offline.
    PresenceChanged(PresenceChanged),
    /// Someone the caller chats with changed their profile.
    ProfileChanged(ProfileChanged),
    /// Events were dropped; refetch.
    EventsMissed(EventsMissed),
}

impl From<Option<Arc<ChatEvent>>> for ChatEventNode {
    fn from(event: Option<Arc<ChatEvent>>) -> Self {
        match event.as_deref() {
            Some(ChatEvent::MessageSent(message)) => {
                ChatEventNode::MessageSent(MessageSent { message: message.clone() })
            }
            Some(ChatEvent::MessageStatusChanged(message)) => {
                ChatEventNode::MessageStatusChanged(MessageStatusChanged {
                    message: message.clone(),
                })
            }
            Some(ChatEvent::ProfileChanged(user)) => {
                ChatEventNode::ProfileChanged(ProfileChanged {
                    user: UserNode::other(user.clone()),
                })
            }
            Some(ChatEvent::PresenceChanged { user, online, last_seen_at }) => {
                ChatEventNode::PresenceChanged(PresenceChanged {
                    user: user.clone(),
                    online: *online,
                    last_seen_at: *last_seen_at,
                })
            }
            Some(ChatEvent::TypingChanged { from, typing }) => {
                ChatEventNode::TypingChanged(TypingChanged { from: from.clone(), typing: *typing })
            }
            None => ChatEventNode::EventsMissed(EventsMissed {
                reason: "the connection fell behind; some events were dropped".into(),
            }),
        }
    }
}

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
        Ok(match ctx.data_opt::<Arc<Handover>>() {
            Some(handover) => {
                handover.put(events.map(Item::Event).boxed());
                Either::Left(futures::stream::empty())
            }
            None => Either::Right(events),
        })
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
