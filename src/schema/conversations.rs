//! The GraphQL face of the chat list: the `Conversation` type, the `conversations` query and
//! `markRead`.

use async_graphql::{
    Context, ID, Object,
    connection::{Connection, Edge},
};

use super::{
    Timestamp,
    context::ContextExt,
    users::{UserNode, known_user},
};
use crate::{
    domain::{Conversation, Cursor, Message, MessageId, PageSize, UserId},
    messages::Messaging,
};

/// One line of the caller's chat list.
pub struct ConversationNode(Conversation);

/// A conversation between the caller and one other user, as the chat list shows it.
#[Object(name = "Conversation")]
impl ConversationNode {
    /// Stable id of the conversation (the same for both participants).
    async fn id(&self) -> ID {
        let (a, b) =
            (self.0.last_message.sender_id.as_str(), self.0.last_message.recipient_id.as_str());
        ID(if a <= b { format!("{a}:{b}") } else { format!("{b}:{a}") })
    }

    /// The other participant.
    async fn with(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        known_user(ctx, &self.0.with).await
    }

    /// The newest message, sent or received.
    async fn last_message(&self) -> &Message {
        &self.0.last_message
    }

    /// Messages from the other participant the caller has not read (`markRead`) yet.
    async fn unread_count(&self) -> u64 {
        self.0.unread_count
    }

    /// When the newest message was sent; the chat list is ordered by it, newest first.
    async fn updated_at(&self) -> Timestamp {
        self.0.last_message.sent_at.into()
    }
}

/// The chat list.
#[derive(Default)]
pub struct ConversationQuery;

#[Object]
impl ConversationQuery {
    /// The caller's conversations, newest activity first (the first screen of a chat app).
    /// `first` is 1 to 100 (default 50); pass `pageInfo.endCursor` as `after` for the next
    /// page. A conversation with new activity moves to the top; cursors stay valid meanwhile.
    #[graphql(complexity = "crate::schema::page_complexity(first, child_complexity)")]
    async fn conversations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, ConversationNode>> {
        let viewer = ctx.viewer().await?;
        let page_size = PageSize::parse(first, "first")?;
        let cursor = after.as_deref().map(Cursor::parse).transpose()?;
        let page = ctx.service::<Messaging>()?.chat_list(&viewer, page_size, cursor).await?;
        let mut connection = Connection::new(cursor.is_some(), page.has_more);
        connection.edges.extend(page.conversations.into_iter().map(|conversation| {
            let cursor = Cursor::at(conversation.last_message.seq).encode();
            Edge::new(cursor, ConversationNode(conversation))
        }));
        Ok(connection)
    }
}

/// Read receipts.
#[derive(Default)]
pub struct ConversationMutation;

#[Object]
impl ConversationMutation {
    /// Marks as read every message `withUserId` sent the caller, up to and including `upTo`
    /// (any message of that conversation, usually the newest one on screen). Idempotent, and
    /// it never moves backwards: marking an older message changes nothing. Reading implies
    /// delivery. Returns the conversation with its new `unreadCount`. `NOT_FOUND` if `upTo` is
    /// not a message between the two.
    #[graphql(complexity = "crate::schema::STORE_READ_COMPLEXITY + child_complexity")]
    async fn mark_read(
        &self,
        ctx: &Context<'_>,
        with_user_id: ID,
        up_to: ID,
    ) -> async_graphql::Result<ConversationNode> {
        let viewer = ctx.viewer().await?;
        let (with, up_to) = (UserId::new(with_user_id.0), MessageId::new(up_to.0));
        let conversation = ctx.service::<Messaging>()?.mark_read(&viewer, &with, &up_to).await?;
        Ok(ConversationNode(conversation))
    }
}
