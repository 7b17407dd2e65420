//! How each collection's documents map to domain types, in one place per collection.
//!
//! Ids are `ObjectId`s (the domain sees their 24-digit hex form, opaque to clients) and times
//! are BSON dates (millisecond precision, like the embedded store). A string that is not an
//! ObjectId can name no document, so [`object_id`] turns it into `None` and lookups find nothing.

use chrono::{DateTime, Utc};
use mongodb::bson::{self, oid::ObjectId};
use serde::{Deserialize, Serialize};

use crate::domain::{
    ClientMessageId, Message, MessageContent, MessageId, NewMessage, NewSession, NewUser,
    PasswordHash, PendingCode, PhoneNumber, Session, SessionId, User, UserCredentials, UserId,
    Username,
};

/// The id a client sent, if it can be one of ours.
pub fn object_id(id: &str) -> Option<ObjectId> {
    ObjectId::parse_str(id).ok()
}

pub fn to_bson_date(time: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(time.timestamp_millis())
}

pub fn from_bson_date(time: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(time.timestamp_millis()).unwrap_or_default()
}

/// The key both directions of a conversation share, so one index serves its history.
pub fn conversation_key(a: &ObjectId, b: &ObjectId) -> String {
    let (a, b) = (a.to_hex(), b.to_hex());
    if a <= b { format!("{a}:{b}") } else { format!("{b}:{a}") }
}

/// The key that makes `clientMessageId` unique per sender; absent when no key was given, so
/// the sparse unique index skips those messages.
pub fn idempotency_key(sender: &ObjectId, client_message_id: &str) -> String {
    format!("{}:{client_message_id}", sender.to_hex())
}

/// `users` collection.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserDocument {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// E.164; unique index `phone_number_unique`.
    pub phone_number: String,
    pub username: String,
    pub password_hash: PasswordHash,
    pub created_at: bson::DateTime,
    /// Absent until the user's last connection first closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<bson::DateTime>,
    /// Absent (true) unless the user hid their presence.
    #[serde(default = "shows_presence_by_default")]
    pub shows_presence: bool,
    /// Set when the account was deleted (a tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<bson::DateTime>,
    /// Absent (true) on accounts made before phone verification existed; index
    /// `users_unverified` finds the false ones.
    #[serde(default = "verified_by_default")]
    pub phone_verified: bool,
}

fn shows_presence_by_default() -> bool {
    true
}

fn verified_by_default() -> bool {
    true
}

impl UserDocument {
    pub fn new(user: NewUser, created_at: DateTime<Utc>) -> Self {
        UserDocument {
            id: ObjectId::new(),
            phone_number: user.phone_number.as_str().to_string(),
            username: user.username.as_str().to_string(),
            password_hash: user.password_hash,
            created_at: to_bson_date(created_at),
            last_seen_at: None,
            shows_presence: true,
            deleted_at: None,
            phone_verified: user.phone_verified,
        }
    }

    pub fn into_user(self) -> User {
        self.into_credentials().user
    }

    pub fn into_credentials(self) -> UserCredentials {
        UserCredentials {
            user: User {
                id: UserId::new(self.id.to_hex()),
                phone_number: PhoneNumber::from_stored(self.phone_number),
                username: Username::from_stored(self.username),
                created_at: from_bson_date(self.created_at),
                last_seen_at: self.last_seen_at.map(from_bson_date),
                shows_presence: self.shows_presence,
                deleted_at: self.deleted_at.map(from_bson_date),
                phone_verified: self.phone_verified,
            },
            password_hash: self.password_hash,
        }
    }
}

/// `verification_codes` collection: one pending code per user, `_id` the user's id.
#[derive(Debug, Serialize, Deserialize)]
pub struct CodeDocument {
    #[serde(rename = "_id")]
    pub user_id: ObjectId,
    pub code_hash: String,
    pub expires_at: bson::DateTime,
    pub attempts: i64,
}

impl CodeDocument {
    pub fn new(user_id: ObjectId, code: PendingCode) -> Self {
        CodeDocument {
            user_id,
            code_hash: code.code_hash,
            expires_at: to_bson_date(code.expires_at),
            attempts: i64::from(code.attempts),
        }
    }

    pub fn into_pending(self) -> PendingCode {
        PendingCode {
            code_hash: self.code_hash,
            expires_at: from_bson_date(self.expires_at),
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
        }
    }
}

/// `sessions` collection.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionDocument {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Index `sessions_by_user`.
    pub user_id: ObjectId,
    pub created_at: bson::DateTime,
    pub last_seen_at: bson::DateTime,
    /// TTL index `sessions_expiry` removes the document a day after this.
    pub expires_at: bson::DateTime,
}

impl SessionDocument {
    /// `None` when the user id cannot be one of ours.
    pub fn new(session: &NewSession) -> Option<Self> {
        Some(SessionDocument {
            id: ObjectId::new(),
            user_id: object_id(session.user_id.as_str())?,
            created_at: to_bson_date(session.created_at),
            last_seen_at: to_bson_date(session.created_at),
            expires_at: to_bson_date(session.expires_at),
        })
    }

    pub fn into_session(self) -> Session {
        Session {
            id: SessionId::new(self.id.to_hex()),
            user_id: UserId::new(self.user_id.to_hex()),
            created_at: from_bson_date(self.created_at),
            last_seen_at: from_bson_date(self.last_seen_at),
            expires_at: from_bson_date(self.expires_at),
        }
    }
}

/// `messages` collection.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageDocument {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// From the `counters` collection; replay and history order.
    pub seq: i64,
    pub sender_id: ObjectId,
    /// With `delivered_at` and `seq`: index `undelivered_by_recipient`.
    pub recipient_id: ObjectId,
    /// [`conversation_key`]; with `seq`: index `history_by_conversation`.
    pub conversation: String,
    pub content: String,
    pub client_message_id: Option<String>,
    /// [`idempotency_key`]; sparse unique index `client_message_id_unique`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub sent_at: bson::DateTime,
    /// Stored as `null` until acknowledged, so the backlog query is an index equality match.
    pub delivered_at: Option<bson::DateTime>,
    /// `null` until read; absent in messages stored before read receipts, which count as
    /// unread until the upgrade step in README.md sets it from `delivered_at`.
    #[serde(default)]
    pub read_at: Option<bson::DateTime>,
}

impl MessageDocument {
    /// `None` when either user id cannot be one of ours.
    pub fn new(message: &NewMessage, seq: i64) -> Option<Self> {
        let sender = object_id(message.sender_id.as_str())?;
        let recipient = object_id(message.recipient_id.as_str())?;
        Some(MessageDocument {
            id: ObjectId::new(),
            seq,
            conversation: conversation_key(&sender, &recipient),
            idempotency_key: message
                .client_message_id
                .as_ref()
                .map(|key| idempotency_key(&sender, key.as_str())),
            sender_id: sender,
            recipient_id: recipient,
            content: message.content.as_str().to_string(),
            client_message_id: message.client_message_id.as_ref().map(|key| key.as_str().into()),
            sent_at: to_bson_date(message.sent_at),
            delivered_at: None,
            read_at: None,
        })
    }

    pub fn into_message(self) -> Message {
        Message {
            id: MessageId::new(self.id.to_hex()),
            seq: self.seq,
            sender_id: UserId::new(self.sender_id.to_hex()),
            recipient_id: UserId::new(self.recipient_id.to_hex()),
            content: MessageContent::from_stored(self.content),
            client_message_id: self.client_message_id.map(ClientMessageId::from_stored),
            sent_at: from_bson_date(self.sent_at),
            delivered_at: self.delivered_at.map(from_bson_date),
            read_at: self.read_at.map(from_bson_date),
        }
    }
}

/// `conversations` collection: one document per chat-list line, `_id` `<owner>:<other>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConversationDocument {
    #[serde(rename = "_id")]
    pub id: String,
    /// With `last_seq`: index `conversations_by_activity`.
    pub owner: ObjectId,
    pub other: ObjectId,
    /// `seq` of the newest message between the two; only ever raised (`$max`).
    pub last_seq: i64,
}

/// The `_id` of `owner`'s chat-list line for the conversation with `other`.
pub fn conversation_document_id(owner: &ObjectId, other: &ObjectId) -> String {
    format!("{}:{}", owner.to_hex(), other.to_hex())
}

/// `counters` collection: `{ _id: "messages", seq }` hands out message sequence numbers.
#[derive(Debug, Serialize, Deserialize)]
pub struct CounterDocument {
    #[serde(rename = "_id")]
    pub id: String,
    pub seq: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::Bson;

    fn at(millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(millis).unwrap()
    }

    #[test]
    fn users_round_trip_with_object_ids_and_bson_dates() {
        let new = NewUser {
            phone_number: PhoneNumber::parse("+12025550143").unwrap(),
            username: Username::parse("alice").unwrap(),
            password_hash: PasswordHash::new("$2b$04$hash".into()),
            phone_verified: true,
        };
        let document = UserDocument::new(new, at(1_700_000_000_123));
        let stored = bson::to_document(&document).unwrap();
        assert!(matches!(stored.get("_id"), Some(Bson::ObjectId(_))));
        assert!(matches!(stored.get("created_at"), Some(Bson::DateTime(_))));
        assert_eq!(stored.get_str("phone_number").unwrap(), "+12025550143");
        let read: UserDocument = bson::from_document(stored).unwrap();
        let credentials = read.into_credentials();
        assert_eq!(credentials.user.id.as_str(), document.id.to_hex());
        assert_eq!(credentials.user.created_at, at(1_700_000_000_123));
        assert_eq!(credentials.password_hash.as_str(), "$2b$04$hash");
    }

    #[test]
    fn sessions_round_trip() {
        let user = ObjectId::new();
        let new = NewSession {
            user_id: UserId::new(user.to_hex()),
            created_at: at(1_000),
            expires_at: at(2_000),
        };
        let document = SessionDocument::new(&new).unwrap();
        let stored = bson::to_document(&document).unwrap();
        assert_eq!(stored.get_object_id("user_id").unwrap(), user);
        assert!(matches!(stored.get("expires_at"), Some(Bson::DateTime(_))));
        let session = bson::from_document::<SessionDocument>(stored).unwrap().into_session();
        assert_eq!(session.user_id.as_str(), user.to_hex());
        assert_eq!(
            (session.created_at, session.last_seen_at, session.expires_at),
            (at(1_000), at(1_000), at(2_000))
        );
        assert!(
            SessionDocument::new(&NewSession { user_id: UserId::new("not-an-id"), ..new })
                .is_none()
        );
    }

    #[test]
    fn messages_round_trip_and_share_a_conversation_key() {
        let (alice, bob) = (ObjectId::new(), ObjectId::new());
        let new = NewMessage {
            sender_id: UserId::new(alice.to_hex()),
            recipient_id: UserId::new(bob.to_hex()),
            content: MessageContent::parse("hi".into()).unwrap(),
            client_message_id: Some(ClientMessageId::parse("k1".into()).unwrap()),
            sent_at: at(5_000),
        };
        let document = MessageDocument::new(&new, 7).unwrap();
        let stored = bson::to_document(&document).unwrap();
        assert_eq!(
            stored.get("delivered_at"),
            Some(&Bson::Null),
            "null, so the backlog index matches"
        );
        assert_eq!(stored.get_str("idempotency_key").unwrap(), format!("{}:k1", alice.to_hex()));
        let message = bson::from_document::<MessageDocument>(stored).unwrap().into_message();
        assert_eq!((message.seq, message.sent_at, message.delivered_at), (7, at(5_000), None));
        assert_eq!(conversation_key(&alice, &bob), conversation_key(&bob, &alice));

        let without_key =
            MessageDocument::new(&NewMessage { client_message_id: None, ..new }, 8).unwrap();
        let stored = bson::to_document(&without_key).unwrap();
        assert!(!stored.contains_key("idempotency_key"), "absent, so the sparse index skips it");
    }

    #[test]
    fn foreign_ids_name_nothing() {
        assert!(object_id("0123456789abcdef01234567").is_some());
        assert!(object_id("5f3c9a1e-uuid").is_none());
        assert!(object_id("").is_none());
    }
}
