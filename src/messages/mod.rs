//! Messages: sending, acknowledging, reading history, and the live stream.
//!
//! A message is stored before anyone hears of it: [`Messaging::send`] writes it durably, then
//! publishes it on the bus for live subscribers. The store is the source of truth; the bus is
//! only a wake-up call, so a subscriber that misses a bus event still gets the message from the
//! store (see [`delivery`]).

pub mod delivery;

use std::{collections::HashSet, sync::Arc};

use chrono::Utc;
use futures::Stream;

use crate::{
    bus::MessageBus,
    domain::{
        ClientMessageId, Cursor, Message, MessageContent, MessageId, NewMessage, PageSize, UserId,
        Viewer,
    },
    error::{AppError, AppResult},
    rate_limits::RateLimits,
    store::{Inserted, Store, StoreResult},
};

/// Most message ids one `markDelivered` call may acknowledge.
pub const MAX_ACK_BATCH: usize = 500;

/// Sends, acknowledges and reads messages.
#[derive(Clone)]
pub struct Messaging {
    /// Where messages are kept: the source of truth.
    store: Arc<dyn Store>,
    /// Wakes the recipient's open subscriptions once a message is stored.
    bus: Arc<dyn MessageBus>,
    /// The per-sender message limit.
    limits: Arc<RateLimits>,
}

/// What a client asked to send, already parsed.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The recipient's user id.
    pub recipient_id: UserId,
    /// The text.
    pub content: MessageContent,
    /// Optional idempotency key.
    pub client_message_id: Option<ClientMessageId>,
}

/// One page of a conversation, oldest first within the page.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The messages, in the order they were sent.
    pub messages: Vec<Message>,
    /// Whether older messages exist before this page.
    pub has_older: bool,
}

impl Messaging {
    /// The service over `store`, waking subscribers through `bus`.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn MessageBus>, limits: Arc<RateLimits>) -> Self {
        Messaging { store, bus, limits }
    }

    /// Stores a message from `viewer` and wakes the recipient's live subscriptions.
    ///
    /// A retry with the same `client_message_id` returns the first message and publishes
    /// nothing.
    #[tracing::instrument(skip_all, fields(sender = %viewer.user_id))]
    pub async fn send(&self, viewer: &Viewer, request: SendRequest) -> AppResult<Message> {
        self.limits.check_send(viewer.user_id.as_str())?;
        if request.recipient_id == viewer.user_id {
            return Err(AppError::BadUserInput("you cannot send a message to yourself".into()));
        }
        if self.store.user_by_id(&request.recipient_id).await?.is_none() {
            return Err(AppError::NotFound("recipient not found".into()));
        }
        let inserted = self
            .store
            .insert_message(NewMessage {
                sender_id: viewer.user_id.clone(),
                recipient_id: request.recipient_id,
                content: request.content,
                client_message_id: request.client_message_id,
                sent_at: Utc::now(),
            })
            .await?;
        match inserted {
            Inserted::Created(message) => {
                let message = Arc::new(message);
                self.bus.publish(message.clone()).await;
                Ok(Arc::unwrap_or_clone(message))
            }
            Inserted::Existing(message) => Ok(message),
        }
    }

    /// Acknowledges messages on behalf of their recipient, returning them in the order asked.
    ///
    /// Nothing changes unless every id exists and is addressed to `viewer`.
    #[tracing::instrument(skip_all, fields(recipient = %viewer.user_id, count = ids.len()))]
    pub async fn mark_delivered(
        &self,
        viewer: &Viewer,
        ids: Vec<MessageId>,
    ) -> AppResult<Vec<Message>> {
        if ids.len() > MAX_ACK_BATCH {
            return Err(AppError::BadUserInput(format!(
                "at most {MAX_ACK_BATCH} messages can be acknowledged at once"
            )));
        }
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = HashSet::new();
        for id in &ids {
            if seen.insert(id) {
                unique.push(id.clone());
            }
        }
        let found = self.store.messages_by_ids(&unique).await?;
        if found.len() != unique.len() {
            return Err(AppError::NotFound("one or more messages were not found".into()));
        }
        if found.iter().any(|message| message.recipient_id != viewer.user_id) {
            return Err(AppError::Forbidden("only the recipient can acknowledge a message".into()));
        }
        self.store.mark_delivered(&viewer.user_id, &unique, Utc::now()).await?;
        let updated = self.store.messages_by_ids(&unique).await?;
        let mut ordered = Vec::with_capacity(unique.len());
        for id in &unique {
            if let Some(message) = updated.iter().find(|message| &message.id == id) {
                ordered.push(message.clone());
            }
        }
        Ok(ordered)
    }

    /// Reads a page of the messages between `viewer` and `other_user_id` sent before the
    /// cursor.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn history(
        &self,
        viewer: &Viewer,
        other_user_id: &UserId,
        page_size: PageSize,
        before: Option<Cursor>,
    ) -> AppResult<HistoryPage> {
        let limit = page_size.get();
        if self.store.user_by_id(other_user_id).await?.is_none() {
            return Err(AppError::NotFound("user not found".into()));
        }
        let before_seq = before.map(Cursor::seq);
        let mut messages =
            self.store.conversation(&viewer.user_id, other_user_id, before_seq, limit + 1).await?;
        let has_older = messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(HistoryPage { messages, has_older })
    }

    /// Every message for `viewer`: the unacknowledged backlog, then live ones (see
    /// [`delivery`]). Listening starts when this returns.
    pub fn subscribe(&self, viewer: &Viewer) -> impl Stream<Item = StoreResult<Message>> + use<> {
        delivery::replay_then_live(self.store.clone(), self.bus.as_ref(), viewer.user_id.clone())
    }
}
