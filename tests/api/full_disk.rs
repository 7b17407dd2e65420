//! A store that cannot write (a full disk): reads, sign-in checks and new websockets keep
//! working, sends fail with `SERVICE_UNAVAILABLE`, and everything works again as soon as writes
//! do. The store is wrapped so that every write fails the way the SQLite store reports
//! `SQLITE_FULL` (its own mapping is unit-tested beside it); the wrapper works on either store.
//!
//! Before: authenticating a request wrote the session's `lastSeenAt` and failed with it, so
//! `me`, `conversation` and new websockets failed while the disk was full.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use chatapp::{
    domain::{
        Conversation, Message, MessageId, NewMessage, NewSession, NewUser, PasswordHash,
        PendingCode, PhoneNumber, Session, SessionId, User, UserCredentials, UserId, Username,
    },
    store::{Inserted, Store, StoreError, StoreResult},
};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use crate::helpers::spawn_app_wrapping_store;

/// Delegates to the real store, failing every write while `full` is set.
struct DiskFull {
    inner: Arc<dyn Store>,
    full: Arc<AtomicBool>,
}

impl DiskFull {
    fn check(&self) -> StoreResult<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("database or disk is full".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for DiskFull {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        self.check()?;
        self.inner.create_user(user).await
    }
    async fn user_by_id(&self, id: &UserId) -> StoreResult<Option<User>> {
        self.inner.user_by_id(id).await
    }
    async fn users_by_ids(&self, ids: &[UserId]) -> StoreResult<Vec<User>> {
        self.inner.users_by_ids(ids).await
    }
    async fn credentials_by_phone(
        &self,
        phone: &PhoneNumber,
    ) -> StoreResult<Option<UserCredentials>> {
        self.inner.credentials_by_phone(phone).await
    }
    async fn set_username(&self, user_id: &UserId, name: Username) -> StoreResult<Option<User>> {
        self.check()?;
        self.inner.set_username(user_id, name).await
    }
    async fn set_password_hash(&self, user_id: &UserId, hash: PasswordHash) -> StoreResult<()> {
        self.check()?;
        self.inner.set_password_hash(user_id, hash).await
    }
    async fn block(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.block(blocker, blocked, at).await
    }
    async fn unblock(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool> {
        self.check()?;
        self.inner.unblock(blocker, blocked).await
    }
    async fn blocks(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool> {
        self.inner.blocks(blocker, blocked).await
    }
    async fn blocked_users(&self, blocker: &UserId) -> StoreResult<Vec<UserId>> {
        self.inner.blocked_users(blocker).await
    }
    async fn delete_account(
        &self,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionId>> {
        self.check()?;
        self.inner.delete_account(user, at).await
    }
    async fn save_verification_code(&self, user: &UserId, code: PendingCode) -> StoreResult<()> {
        self.check()?;
        self.inner.save_verification_code(user, code).await
    }
    async fn count_verification_attempt(&self, user: &UserId) -> StoreResult<Option<PendingCode>> {
        self.check()?;
        self.inner.count_verification_attempt(user).await
    }
    async fn mark_phone_verified(&self, user_id: &UserId) -> StoreResult<bool> {
        self.check()?;
        self.inner.mark_phone_verified(user_id).await
    }
    async fn release_unverified(
        &self,
        created_before: DateTime<Utc>,
        phone: Option<&PhoneNumber>,
    ) -> StoreResult<Vec<SessionId>> {
        self.check()?;
        self.inner.release_unverified(created_before, phone).await
    }
    async fn record_last_seen(&self, user_id: &UserId, at: DateTime<Utc>) -> StoreResult<()> {
        self.check()?;
        self.inner.record_last_seen(user_id, at).await
    }
    async fn set_shows_presence(&self, user_id: &UserId, shows: bool) -> StoreResult<()> {
        self.check()?;
        self.inner.set_shows_presence(user_id, shows).await
    }
    async fn create_session(&self, session: NewSession) -> StoreResult<Session> {
        self.check()?;
        self.inner.create_session(session).await
    }
    /// Sessions look an hour old, so every authentication wants to record that it was used
    /// (a write), as it would after a minute of a full disk.
    async fn session(&self, id: &SessionId) -> StoreResult<Option<Session>> {
        let session = self.inner.session(id).await?;
        Ok(session.map(|s| Session { last_seen_at: s.last_seen_at - TimeDelta::hours(1), ..s }))
    }
    async fn delete_session(&self, id: &SessionId) -> StoreResult<bool> {
        self.check()?;
        self.inner.delete_session(id).await
    }
    async fn delete_user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<SessionId>> {
        self.check()?;
        self.inner.delete_user_sessions(user_id).await
    }
    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>> {
        self.inner.user_sessions(user_id).await
    }
    async fn touch_session(&self, id: &SessionId, at: DateTime<Utc>) -> StoreResult<()> {
        self.check()?;
        self.inner.touch_session(id, at).await
    }
    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.check()?;
        self.inner.delete_expired_sessions(before).await
    }
    async fn insert_message(&self, message: NewMessage) -> StoreResult<Inserted> {
        self.check()?;
        self.inner.insert_message(message).await
    }
    async fn undelivered_messages(
        &self,
        recipient_id: &UserId,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.inner.undelivered_messages(recipient_id, after_seq, limit).await
    }
    async fn messages_by_ids(&self, ids: &[MessageId]) -> StoreResult<Vec<Message>> {
        self.inner.messages_by_ids(ids).await
    }
    async fn mark_delivered(
        &self,
        recipient_id: &UserId,
        ids: &[MessageId],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.mark_delivered(recipient_id, ids, at).await
    }
    async fn mark_read(
        &self,
        reader: &UserId,
        other: &UserId,
        up_to_seq: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<MessageId>> {
        self.check()?;
        self.inner.mark_read(reader, other, up_to_seq, at).await
    }
    async fn conversations(
        &self,
        owner: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Conversation>> {
        self.inner.conversations(owner, before_seq, limit).await
    }
    async fn conversation_with(
        &self,
        owner: &UserId,
        other: &UserId,
    ) -> StoreResult<Option<Conversation>> {
        self.inner.conversation_with(owner, other).await
    }
    async fn conversation(
        &self,
        user_a: &UserId,
        user_b: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.inner.conversation(user_a, user_b, before_seq, limit).await
    }
}

#[tokio::test]
async fn a_full_disk_keeps_reads_working_and_sends_recover_when_space_returns() {
    let full = Arc::new(AtomicBool::new(false));
    let switch = full.clone();
    let app =
        spawn_app_wrapping_store(move |inner| Arc::new(DiskFull { inner, full: switch })).await;
    let alice = app.register("+12025550143", "alice").await;
    let bob = app.register("+12025550144", "bob").await;
    let before = app.send_ok(&alice, &bob, "sent before the disk filled").await;

    full.store(true, Ordering::SeqCst);

    let me = app.graphql("{ me { id } }", json!({}), Some(&alice.token)).await;
    assert_eq!(me["data"]["me"]["id"], alice.id.as_str(), "{me}");
    let history = app
        .graphql(
            "query($with: ID!) { conversation(withUserId: $with) { edges { node { content } } } }",
            json!({ "with": bob.id }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        history["data"]["conversation"]["edges"][0]["node"]["content"],
        "sent before the disk filled",
        "{history}"
    );
    // A new websocket authenticates and replays the backlog.
    let mut bob_ws = app.ws(&bob).await;
    bob_ws.subscribe_messages("inbox").await;
    assert_eq!(bob_ws.next_message("inbox").await["id"], before["id"]);

    let refused = app.send(&alice, &bob, "sent while full", Some("retry-me")).await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "SERVICE_UNAVAILABLE", "{refused}");
    assert!(refused["data"].is_null() || refused["data"]["sendMessage"].is_null(), "{refused}");
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(!message.contains("disk"), "the error leaks the store's own words: {message}");

    full.store(false, Ordering::SeqCst);

    // The client's retry with the same clientMessageId now goes through, once, and live.
    let retried = app.send(&alice, &bob, "sent while full", Some("retry-me")).await;
    let sent = &retried["data"]["sendMessage"];
    assert!(sent.is_object(), "{retried}");
    assert_eq!(bob_ws.next_message("inbox").await["id"], sent["id"]);
    let unread = app.store.undelivered_messages(&bob.user_id(), 0, 10).await.unwrap();
    assert_eq!(unread.len(), 2, "one message before the disk filled, one after");
    bob_ws.expect_silence(std::time::Duration::from_millis(200)).await;
}
