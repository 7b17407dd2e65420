//! Storage: the one trait every backing store implements.
//!
//! The server only talks to [`Store`]; the embedded SQLite store lives in [`sqlite`], and the
//! MongoDB store beside it in [`mongo`]. Anything the server relies on (uniqueness, the order of
//! the undelivered backlog, idempotent sends) is part of this contract and is checked by the
//! contract tests in `tests/contract`, which run against every implementation.

pub mod mongo;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Conversation, Message, MessageId, NewMessage, NewSession, NewUser, PasswordHash, PendingCode,
    PhoneNumber, Session, SessionId, User, UserCredentials, UserId, Username,
};

/// A uniqueness rule the store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// One user per phone number.
    PhoneNumber,
}

/// What a store can fail with, as storage facts; the layers above word them for clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken.
    #[error("uniqueness rule broken: {0:?}")]
    Conflict(Constraint),
    /// The store cannot be reached; the request may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else; logged, never shown.
    #[error("store failure: {0}")]
    Internal(String),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// What [`Store::insert_message`] did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new message was stored.
    Created(Message),
    /// The sender had already sent a message with this `client_message_id`; this is that one,
    /// unchanged.
    Existing(Message),
}

/// Durable storage of users, sessions and messages.
///
/// Implementations must make every write durable before returning, assign each message a
/// unique `seq` that grows with the order messages are sent (a message may commit after one
/// with a higher `seq` when both are sent at once; delivery does not rely on commit order),
/// and treat message ids as opaque: an id that cannot be theirs simply names nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and `/healthz` (`sqlite`, `mongodb`).
    fn kind(&self) -> &'static str;

    /// Succeeds when the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a new user; a taken phone number is a [`StoreError::Conflict`].
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    /// The user with this id.
    async fn user_by_id(&self, id: &UserId) -> StoreResult<Option<User>>;
    /// The users with these ids that exist, in no particular order (one query, for batching
    /// the senders and recipients of a page of messages).
    async fn users_by_ids(&self, ids: &[UserId]) -> StoreResult<Vec<User>>;
    /// The user with this phone number.
    async fn user_by_phone(&self, phone_number: &PhoneNumber) -> StoreResult<Option<User>> {
        Ok(self.credentials_by_phone(phone_number).await?.map(|found| found.user))
    }
    /// The user with this phone number, with the password hash, for logging in.
    async fn credentials_by_phone(
        &self,
        phone_number: &PhoneNumber,
    ) -> StoreResult<Option<UserCredentials>>;

    /// Changes `user_id`'s display name; returns the user as now stored, if they exist.
    async fn set_username(&self, user_id: &UserId, username: Username)
    -> StoreResult<Option<User>>;
    /// Replaces `user_id`'s password hash.
    async fn set_password_hash(&self, user_id: &UserId, hash: PasswordHash) -> StoreResult<()>;
    /// Records that `blocker` blocks `blocked` (again is harmless).
    async fn block(&self, blocker: &UserId, blocked: &UserId, at: DateTime<Utc>)
    -> StoreResult<()>;
    /// Lifts a block; returns whether there was one.
    async fn unblock(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool>;
    /// Whether `blocker` blocks `blocked`.
    async fn blocks(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool>;
    /// Everyone `blocker` blocks, most recently blocked first.
    async fn blocked_users(&self, blocker: &UserId) -> StoreResult<Vec<UserId>>;
    /// Deletes `user_id`'s account, keeping a tombstone: erases the phone number (freeing it),
    /// the password hash, the name, the last-seen time, every session, the pending verification
    /// code, the chat list, every block by or of them, and the messages still waiting for them; keeps the messages they
    /// exchanged that were delivered (the other side's history) and those they sent that are
    /// still on their way. Returns the ended sessions. Idempotent.
    async fn delete_account(
        &self,
        user_id: &UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionId>>;
    /// Keeps `code` as `user_id`'s one pending verification code, replacing any earlier one
    /// (with its attempts).
    async fn save_verification_code(&self, user_id: &UserId, code: PendingCode) -> StoreResult<()>;
    /// Counts one try against `user_id`'s pending code and returns it as it is after the count,
    /// if there is one. Atomic: concurrent tries each count, so the limit on tries holds.
    async fn count_verification_attempt(
        &self,
        user_id: &UserId,
    ) -> StoreResult<Option<PendingCode>>;
    /// Marks `user_id`'s phone number as proven and discards their pending code (a code is
    /// good for one verification). Returns whether the user exists.
    async fn mark_phone_verified(&self, user_id: &UserId) -> StoreResult<bool>;
    /// Removes, entirely, the accounts whose phone number was never verified and that were
    /// created before `created_before` (only the one holding `phone_number`, when given):
    /// the user, their sessions, pending code, chat list and blocks. Such accounts never sent
    /// or received a message. Frees their numbers; returns the ended sessions.
    async fn release_unverified(
        &self,
        created_before: DateTime<Utc>,
        phone_number: Option<&PhoneNumber>,
    ) -> StoreResult<Vec<SessionId>>;
    /// Records that `user_id`'s last open connection closed at `at`.
    async fn record_last_seen(&self, user_id: &UserId, at: DateTime<Utc>) -> StoreResult<()>;
    /// Sets whether `user_id` shows their presence (online, last seen) to others.
    async fn set_shows_presence(&self, user_id: &UserId, shows: bool) -> StoreResult<()>;

    /// Stores a new session.
    async fn create_session(&self, session: NewSession) -> StoreResult<Session>;
    /// The session with this id, if it has not been ended.
    async fn session(&self, id: &SessionId) -> StoreResult<Option<Session>>;
    /// Ends a session; returns whether it existed.
    async fn delete_session(&self, id: &SessionId) -> StoreResult<bool>;
    /// Ends every session of a user; returns the ids that were ended.
    async fn delete_user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<SessionId>>;
    /// Every session of a user that has not been ended (expired ones included).
    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>>;
    /// Records that a session was used at `at`.
    async fn touch_session(&self, id: &SessionId, at: DateTime<Utc>) -> StoreResult<()>;
    /// Removes sessions that expired before `before`; returns how many.
    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    /// Stores a message, or returns the sender's earlier one with the same
    /// `client_message_id`. Both participants' chat lists show it as their conversation's
    /// newest message from then on.
    async fn insert_message(&self, message: NewMessage) -> StoreResult<Inserted>;
    /// Messages to `recipient_id` not yet acknowledged, with `seq > after_seq`, oldest first,
    /// at most `limit`.
    async fn undelivered_messages(
        &self,
        recipient_id: &UserId,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;
    /// The `seq`s of [`Store::undelivered_messages`] for the same arguments: what a delivery
    /// stream's compaction pass needs of the messages it has already sent (a store answers it
    /// from its index alone; this default reads the messages).
    async fn undelivered_seqs(
        &self,
        recipient_id: &UserId,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<i64>> {
        let messages = self.undelivered_messages(recipient_id, after_seq, limit).await?;
        Ok(messages.iter().map(|message| message.seq).collect())
    }
    /// The messages with these ids that exist, in no particular order.
    async fn messages_by_ids(&self, ids: &[MessageId]) -> StoreResult<Vec<Message>>;
    /// Sets `delivered_at` on those of `ids` addressed to `recipient_id` that have none yet.
    async fn mark_delivered(
        &self,
        recipient_id: &UserId,
        ids: &[MessageId],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Marks read every message from `other` to `reader` with `seq <= up_to_seq` that is not
    /// read yet (delivering it too, if it was not); returns the ids it marked. Never moves a
    /// message back: what is read stays read, with its first `read_at`.
    async fn mark_read(
        &self,
        reader: &UserId,
        other: &UserId,
        up_to_seq: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<MessageId>>;
    /// `owner`'s chat list, newest activity first: the conversations whose newest message has
    /// `seq < before_seq` when given, at most `limit`. Costs O(limit) reads plus the unread
    /// messages counted, never a scan of the owner's messages.
    async fn conversations(
        &self,
        owner: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Conversation>>;
    /// `owner`'s chat-list line for the conversation with `other`, if they have one.
    async fn conversation_with(
        &self,
        owner: &UserId,
        other: &UserId,
    ) -> StoreResult<Option<Conversation>>;
    /// Messages between two users, newest first, with `seq < before_seq` when given, at most
    /// `limit`.
    async fn conversation(
        &self,
        user_a: &UserId,
        user_b: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;
}
