//! The GraphQL face of messages: the `Message` type, history, sending, acknowledging, and the
//! `messageReceived` subscription.

use async_graphql::{
    Context, Enum, ID, InputObject, Object, Subscription,
    connection::{Connection, Edge},
};
use futures::{Stream, StreamExt};

use super::{
    Timestamp,
    context::ContextExt,
    message_selection::SentMessage,
    parked::{Item, hand_over},
    users::{UserNode, known_user},
};
use crate::{
    domain::{
        self, ClientMessageId, Cursor, InvalidInput, Message, MessageContent, MessageId, PageSize,
        UserId,
    },
    messages::{Messaging, SendRequest},
};

/// A chat message between two users.
#[Object]
impl Message {
    /// Stable, opaque id; pass it to `markDelivered` once the message is shown.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }

    /// The sender's user id.
    async fn sender_id(&self) -> ID {
        ID(self.sender_id.to_string())
    }

    /// The recipient's user id.
    async fn recipient_id(&self) -> ID {
        ID(self.recipient_id.to_string())
    }

    /// Who sent the message.
    async fn sender(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        known_user(ctx, &self.sender_id).await
    }

    /// Who the message is for.
    async fn recipient(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        known_user(ctx, &self.recipient_id).await
    }

    /// The text, exactly as sent.
    async fn content(&self) -> &str {
        self.content.as_str()
    }

    /// When the server accepted the message.
    async fn sent_at(&self) -> Timestamp {
        self.sent_at.into()
    }

    /// When the recipient acknowledged it with `markDelivered`; null until then.
    async fn delivered_at(&self) -> Option<Timestamp> {
        self.delivered_at.map(Timestamp)
    }

    /// When the recipient read it with `markRead`; null until then.
    async fn read_at(&self) -> Option<Timestamp> {
        self.read_at.map(Timestamp)
    }

    /// The ticks: `SENT` once stored, `DELIVERED` once the recipient's client acknowledged it,
    /// `READ` once the recipient read it.
    #[graphql(name = "status")]
    async fn ticks(&self) -> MessageStatus {
        self.status().into()
    }

    /// The sender's idempotency key, if one was given.
    async fn client_message_id(&self) -> Option<&str> {
        self.client_message_id.as_ref().map(ClientMessageId::as_str)
    }
}

/// How far a message has got.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Stored; not yet acknowledged by the recipient's client.
    Sent,
    /// The recipient's client acknowledged it (`markDelivered`).
    Delivered,
    /// The recipient read it (`markRead`).
    Read,
}

impl From<domain::MessageStatus> for MessageStatus {
    fn from(status: domain::MessageStatus) -> Self {
        match status {
            domain::MessageStatus::Sent => MessageStatus::Sent,
            domain::MessageStatus::Delivered => MessageStatus::Delivered,
            domain::MessageStatus::Read => MessageStatus::Read,
        }
    }
}

/// A message to send.
#[derive(InputObject)]
pub struct SendMessageInput {
    /// The recipient's user id.
    pub recipient_id: ID,
    /// The text: not blank, at most 4000 characters.
    pub content: String,
    /// Optional idempotency key (at most 128 characters). Sending again with the same key
    /// returns the first message instead of storing a copy, so retries after a network error
    /// are safe.
    pub client_message_id: Option<String>,
}

impl TryFrom<SendMessageInput> for SendRequest {
    type Error = InvalidInput;

    fn try_from(input: SendMessageInput) -> Result<Self, InvalidInput> {
        Ok(SendRequest {
            recipient_id: UserId::new(input.recipient_id.0),
            content: MessageContent::parse(input.content)?,
            client_message_id: input.client_message_id.map(ClientMessageId::parse).transpose()?,
        })
    }
}

/// Queries about messages.
#[derive(Default)]
pub struct MessageQuery;

#[Object]
impl MessageQuery {
    /// The history between the caller and another user, newest page first. Within a page,
    /// edges run oldest to newest. To load older messages, pass `pageInfo.startCursor` as
    /// `before`; `pageInfo.hasPreviousPage` says whether there are any. `last` is 1 to 100
    /// (default 50). Cursors stay valid while new messages arrive.
    #[graphql(complexity = "crate::schema::page_complexity(last, child_complexity)")]
    async fn conversation(
        &self,
        ctx: &Context<'_>,
        with_user_id: ID,
        last: Option<i32>,
        before: Option<String>,
    ) -> async_graphql::Result<Connection<String, Message>> {
        let viewer = ctx.viewer().await?;
        let page_size = PageSize::parse(last, "last")?;
        let cursor = before.as_deref().map(Cursor::parse).transpose()?;
        let with_user_id = UserId::new(with_user_id.0);
        let messaging = ctx.service::<Messaging>()?;
        let page = messaging.history(&viewer, &with_user_id, page_size, cursor).await?;
        let mut connection = Connection::new(page.has_older, cursor.is_some());
        connection.edges.extend(
            page.messages
                .into_iter()
                .map(|message| Edge::new(Cursor::at(message.seq).encode(), message)),
        );
        Ok(connection)
    }
}

/// Mutations on messages.
#[derive(Default)]
pub struct MessageMutation;

#[Object]
impl MessageMutation {
    /// Sends a message. It is stored durably before this returns, then delivered live to every
    /// open `messageReceived` subscription of the recipient, or replayed when they next
    /// subscribe.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        input: SendMessageInput,
    ) -> async_graphql::Result<SentMessage> {
        let viewer = ctx.viewer().await?;
        let request = SendRequest::try_from(input)?;
        Ok(SentMessage(ctx.service::<Messaging>()?.send(&viewer, request).await?))
    }

    /// Acknowledges messages the caller has received, so they are not replayed again. Only the
    /// recipient may acknowledge; acknowledging twice is harmless. At most 500 ids per call.
    #[graphql(
        complexity = "crate::schema::STORE_READ_COMPLEXITY + message_ids.len().max(1) * child_complexity"
    )]
    async fn mark_delivered(
        &self,
        ctx: &Context<'_>,
        message_ids: Vec<ID>,
    ) -> async_graphql::Result<Vec<Message>> {
        let viewer = ctx.viewer().await?;
        let ids = message_ids.into_iter().map(|id| MessageId::new(id.0)).collect();
        Ok(ctx.service::<Messaging>()?.mark_delivered(&viewer, ids).await?)
    }
}

/// Live message delivery.
#[derive(Default)]
pub struct MessageSubscription;

#[Subscription]
impl MessageSubscription {
    /// Messages addressed to the caller: first every message not yet acknowledged with
    /// `markDelivered`, oldest first, then new ones as they are sent, with no gap and no
    /// duplicate in between. Every open connection of the user receives live messages.
    async fn message_received(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Message>> + use<>> {
        let viewer = ctx.viewer().await?;
        let stream = ctx.service::<Messaging>()?.subscribe(&viewer).await?;
        let messages = stream.map(|item| item.map_err(Into::into));
        // A parked subscription takes the messages and delivers them itself (see `parked`).
        Ok(hand_over(ctx, messages, Item::Message))
    }
}
