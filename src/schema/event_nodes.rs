//! The `ChatEvent` union that `chatEvents` streams, and its members: each event carries the
//! `Message` (or `User`) by id, so Apollo and urql caches update it wherever it is shown.

use std::sync::Arc;

use async_graphql::{Context, Object, SimpleObject, Union};
use chrono::{DateTime, Utc};

use super::{
    Timestamp,
    users::{UserNode, known_user},
};
use crate::domain::{ChatEvent, Message, UserId};

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
        known_user(ctx, &self.from).await
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
        known_user(ctx, &self.user).await
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
