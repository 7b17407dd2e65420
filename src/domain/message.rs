//! Messages and the rules their content and idempotency keys follow.

use chrono::{DateTime, Utc};

use super::{InvalidInput, MessageId, User, UserId};

/// A stored message. Serializable so a multi-instance bus can carry it between servers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Opaque, store-assigned id.
    pub id: MessageId,
    /// Position in the order messages were sent; the backlog is replayed in this order and
    /// history cursors point at it.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: UserId,
    /// Who it is for.
    pub recipient_id: UserId,
    /// The text, as sent.
    pub content: MessageContent,
    /// The sender's idempotency key, if it gave one.
    pub client_message_id: Option<ClientMessageId>,
    /// When the server accepted it.
    pub sent_at: DateTime<Utc>,
    /// When the recipient acknowledged it; `None` while it is still to be replayed.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the recipient read it (`markRead`); reading implies delivery.
    pub read_at: Option<DateTime<Utc>>,
}

impl Message {
    /// How far the message has got: sent, delivered (acknowledged) or read.
    pub fn status(&self) -> MessageStatus {
        match (self.read_at, self.delivered_at) {
            (Some(_), _) => MessageStatus::Read,
            (None, Some(_)) => MessageStatus::Delivered,
            (None, None) => MessageStatus::Sent,
        }
    }
}

/// The ticks of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Stored; the recipient has not acknowledged it yet.
    Sent,
    /// The recipient's client acknowledged it.
    Delivered,
    /// The recipient read it.
    Read,
}

/// Something a user's open connections hear live: what happened to their own messages (state
/// on the message, visible by querying later) and who is typing to them (never stored).
/// Serializable so a multi-instance bus can carry it between servers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChatEvent {
    /// The user sent this message (from any of their devices).
    MessageSent(Message),
    /// A message the user sent was delivered or read; this is it now.
    MessageStatusChanged(Message),
    /// Someone the user chats with changed their profile; this is them now.
    ProfileChanged(User),
    /// Someone the user chats with came online or went offline.
    PresenceChanged {
        /// Whose presence changed.
        user: UserId,
        /// Whether they have a connection open now.
        online: bool,
        /// When their last connection closed (set when they go offline).
        last_seen_at: Option<DateTime<Utc>>,
    },
    /// Someone the user chats with started or stopped typing to them.
    TypingChanged {
        /// Who is typing.
        from: UserId,
        /// Whether they are typing now.
        typing: bool,
    },
}

/// One line of a user's chat list: the other person, the newest message between them, and how
/// many messages to the owner in it are not read yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The other participant.
    pub with: UserId,
    /// The newest message, in either direction.
    pub last_message: Message,
    /// Messages from `with` to the owner not yet read.
    pub unread_count: u64,
}

/// A message about to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The sender, already authenticated.
    pub sender_id: UserId,
    /// The recipient, already known to exist.
    pub recipient_id: UserId,
    /// The text.
    pub content: MessageContent,
    /// Optional idempotency key, unique per sender.
    pub client_message_id: Option<ClientMessageId>,
    /// Acceptance time.
    pub sent_at: DateTime<Utc>,
}

/// The text of a message: not blank, at most [`MessageContent::MAX_CHARS`] characters, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct MessageContent(String);

impl MessageContent {
    /// Longest accepted message, in characters.
    pub const MAX_CHARS: usize = 4000;

    /// Checks `input` against the content rules; the text is kept exactly as sent.
    pub fn parse(input: String) -> Result<Self, InvalidInput> {
        if input.trim().is_empty() {
            return Err(InvalidInput("content must not be empty".into()));
        }
        if input.chars().count() > Self::MAX_CHARS {
            return Err(InvalidInput(format!(
                "content must be at most {} characters long",
                Self::MAX_CHARS
            )));
        }
        if input.contains('\0') {
            return Err(InvalidInput("content must not contain NUL characters".into()));
        }
        Ok(MessageContent(input))
    }

    /// Content read back from the store, which only holds parsed content.
    pub fn from_stored(content: String) -> Self {
        MessageContent(content)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes (for sizing pages).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for parsed content; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A sender's idempotency key for a message: 1 to [`ClientMessageId::MAX_CHARS`] characters,
/// no control characters. Sending again with the same key returns the first message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ClientMessageId(String);

impl ClientMessageId {
    /// Longest accepted key, in characters.
    pub const MAX_CHARS: usize = 128;

    /// Checks `input` against the key rules.
    pub fn parse(input: String) -> Result<Self, InvalidInput> {
        let length = input.chars().count();
        if length == 0 || length > Self::MAX_CHARS || input.chars().any(char::is_control) {
            return Err(InvalidInput(format!(
                "clientMessageId must be 1 to {} characters, without control characters",
                Self::MAX_CHARS
            )));
        }
        Ok(ClientMessageId(input))
    }

    /// A key read back from the store, which only holds parsed keys.
    pub fn from_stored(key: String) -> Self {
        ClientMessageId(key)
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        let parse = |s: &str| MessageContent::parse(s.to_string());
        assert_eq!(parse("hello").unwrap().as_str(), "hello");
        assert_eq!(parse(" keeps spaces ").unwrap().as_str(), " keeps spaces ");
        assert!(parse("   \n").is_err());
        assert!(parse("a\0b").is_err());
        assert!(parse(&"é".repeat(MessageContent::MAX_CHARS)).is_ok());
        assert!(parse(&"é".repeat(MessageContent::MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn client_message_id_rules() {
        let parse = |s: &str| ClientMessageId::parse(s.to_string());
        assert!(parse("c-1").is_ok());
        assert!(parse("").is_err());
        assert!(parse(&"x".repeat(129)).is_err());
        assert!(parse("a\nb").is_err());
    }
}
