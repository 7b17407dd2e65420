//! Messages: sending, acknowledging and reading history.
//!
//! A message is stored before anyone hears of it: [`send`] writes it durably, then publishes it
//! on the bus for live subscribers. The store is the source of truth; the bus is only a wake-up
//! call, so a subscriber that misses a bus event still gets the message from the store.

pub mod delivery;
pub mod graphql;

use std::{collections::HashSet, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};

use crate::{
    error::{AppError, AppResult},
    services::Services,
    sessions::Viewer,
    store::Inserted,
};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Opaque, store-assigned id.
    pub id: String,
    /// Position in the store's commit order; the backlog is replayed in this order and history
    /// cursors point at it.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: String,
    /// Who it is for.
    pub recipient_id: String,
    /// The text, as sent.
    pub content: String,
    /// The sender's idempotency key, if it gave one.
    pub client_message_id: Option<String>,
    /// When the server accepted it.
    pub sent_at: DateTime<Utc>,
    /// When the recipient acknowledged it; `None` while it is still to be replayed.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A message about to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The sender, already authenticated.
    pub sender_id: String,
    /// The recipient, already known to exist.
    pub recipient_id: String,
    /// Validated content.
    pub content: String,
    /// Optional idempotency key, unique per sender.
    pub client_message_id: Option<String>,
    /// Acceptance time.
    pub sent_at: DateTime<Utc>,
}

/// Longest accepted message, in characters.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Longest accepted `clientMessageId`, in characters.
pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 128;
/// Most message ids one `markDelivered` call may acknowledge.
pub const MAX_ACK_BATCH: usize = 500;
/// Largest history page.
pub const MAX_PAGE_SIZE: usize = 100;
/// History page size when the client does not say.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// What a client asked to send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The recipient's user id.
    pub recipient_id: String,
    /// The text.
    pub content: String,
    /// Optional idempotency key.
    pub client_message_id: Option<String>,
}

/// Checks the content rules: not blank, not too long, no NUL.
pub fn validate_content(content: &str) -> AppResult<()> {
    if content.trim().is_empty() {
        return Err(AppError::BadUserInput("content must not be empty".into()));
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(AppError::BadUserInput(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters long"
        )));
    }
    if content.contains('\0') {
        return Err(AppError::BadUserInput("content must not contain NUL characters".into()));
    }
    Ok(())
}

/// Checks an idempotency key: 1 to 128 characters, no control characters.
pub fn validate_client_message_id(id: &str) -> AppResult<()> {
    let length = id.chars().count();
    if length == 0 || length > MAX_CLIENT_MESSAGE_ID_CHARS || id.chars().any(char::is_control) {
        return Err(AppError::BadUserInput(format!(
            "clientMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID_CHARS} characters, without control characters"
        )));
    }
    Ok(())
}

/// Stores a message from `viewer` and wakes the recipient's live subscriptions.
///
/// A retry with the same `client_message_id` returns the first message and publishes nothing.
#[tracing::instrument(skip_all, fields(sender = %viewer.user_id))]
pub async fn send(
    services: &Services,
    viewer: &Viewer,
    request: SendRequest,
) -> AppResult<Message> {
    services.rate_limits.check_send(&viewer.user_id)?;
    validate_content(&request.content)?;
    if let Some(id) = &request.client_message_id {
        validate_client_message_id(id)?;
    }
    if request.recipient_id == viewer.user_id {
        return Err(AppError::BadUserInput("you cannot send a message to yourself".into()));
    }
    if services.store.user_by_id(&request.recipient_id).await?.is_none() {
        return Err(AppError::NotFound("recipient not found".into()));
    }
    let inserted = services
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
            services.bus.publish(message.clone()).await;
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
    services: &Services,
    viewer: &Viewer,
    ids: Vec<String>,
) -> AppResult<Vec<Message>> {
    if ids.len() > MAX_ACK_BATCH {
        return Err(AppError::BadUserInput(format!(
            "at most {MAX_ACK_BATCH} messages can be acknowledged at once"
        )));
    }
    let mut unique = Vec::with_capacity(ids.len());
    let mut seen = HashSet::new();
    for id in &ids {
        if seen.insert(id.as_str()) {
            unique.push(id.clone());
        }
    }
    let found = services.store.messages_by_ids(&unique).await?;
    if found.len() != unique.len() {
        return Err(AppError::NotFound("one or more messages were not found".into()));
    }
    if found.iter().any(|message| message.recipient_id != viewer.user_id) {
        return Err(AppError::Forbidden("only the recipient can acknowledge a message".into()));
    }
    services.store.mark_delivered(&viewer.user_id, &unique, Utc::now()).await?;
    let updated = services.store.messages_by_ids(&unique).await?;
    let mut ordered = Vec::with_capacity(unique.len());
    for id in &unique {
        if let Some(message) = updated.iter().find(|message| &message.id == id) {
            ordered.push(message.clone());
        }
    }
    Ok(ordered)
}

/// One page of a conversation, oldest first within the page.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The messages, in the order they were sent.
    pub messages: Vec<Message>,
    /// Whether older messages exist before this page.
    pub has_older: bool,
}

/// Reads the `last` messages between `viewer` and `other_user_id` sent before the cursor.
#[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
pub async fn history(
    services: &Services,
    viewer: &Viewer,
    other_user_id: &str,
    last: Option<i32>,
    before: Option<&str>,
) -> AppResult<HistoryPage> {
    let limit = match last {
        None => DEFAULT_PAGE_SIZE,
        Some(n) if n >= 1 && n as usize <= MAX_PAGE_SIZE => n as usize,
        Some(_) => {
            return Err(AppError::BadUserInput(format!(
                "last must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
    };
    let before_seq = before.map(decode_cursor).transpose()?;
    if services.store.user_by_id(other_user_id).await?.is_none() {
        return Err(AppError::NotFound("user not found".into()));
    }
    let mut messages =
        services.store.conversation(&viewer.user_id, other_user_id, before_seq, limit + 1).await?;
    let has_older = messages.len() > limit;
    messages.truncate(limit);
    messages.reverse();
    Ok(HistoryPage { messages, has_older })
}

const CURSOR_PREFIX: &str = "msg:";

/// An opaque cursor for a message's position in history.
pub fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{seq}"))
}

/// Reads a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> AppResult<i64> {
    let invalid = || AppError::BadUserInput("the cursor is not valid".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.strip_prefix(CURSOR_PREFIX)
        .and_then(|seq| seq.parse::<i64>().ok())
        .filter(|seq| *seq >= 0)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = encode_cursor(42);
        assert_eq!(decode_cursor(&cursor).unwrap(), 42);
        for bad in
            ["", "!!!", "bXNnOg", &URL_SAFE_NO_PAD.encode("msg:-1"), &URL_SAFE_NO_PAD.encode("x:1")]
        {
            assert_eq!(decode_cursor(bad).unwrap_err().code(), "BAD_USER_INPUT", "{bad:?}");
        }
    }

    #[test]
    fn content_rules() {
        assert!(validate_content("hello").is_ok());
        assert!(validate_content("   \n").is_err());
        assert!(validate_content("a\0b").is_err());
        assert!(validate_content(&"é".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert!(validate_content(&"é".repeat(MAX_CONTENT_CHARS + 1)).is_err());
    }

    #[test]
    fn client_message_id_rules() {
        assert!(validate_client_message_id("c-1").is_ok());
        assert!(validate_client_message_id("").is_err());
        assert!(validate_client_message_id(&"x".repeat(129)).is_err());
        assert!(validate_client_message_id("a\nb").is_err());
    }
}
