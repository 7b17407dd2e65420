//! The MongoDB store, on the official driver: the production store when `MONGO_URI` is set.
//!
//! Collections: `users`, `sessions`, `messages`, `conversations` (chat-list lines: the newest
//! `seq` per owner and partner) and `counters` (message sequence numbers).
//! Indexes are created on first use, idempotently, and again after a failure, so a server
//! started while MongoDB is down begins working when it comes back; the unique ones are looked
//! for again every [`INDEX_RECHECK`] before writes that rely on them, because a database dropped
//! or restored under a running server loses them. Every write waits for the
//! journal on a majority of the replica set (`w: "majority", j: true`), so a message
//! acknowledged to its sender survives a crash or failover. Operations fail fast with
//! [`StoreError::Unavailable`] when no server can be selected within `MONGO_TIMEOUT`.

mod documents;
mod errors;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{Document, doc, oid::ObjectId},
    options::{Acknowledgment, ClientOptions, IndexOptions, ReturnDocument, WriteConcern},
};
use tokio::sync::Mutex;

use self::{
    documents::{
        CodeDocument, ConversationDocument, CounterDocument, MessageDocument, SessionDocument,
        UserDocument, conversation_document_id, conversation_key, idempotency_key, object_id,
        to_bson_date,
    },
    errors::{is_duplicate_key, store_error},
};
use super::{Constraint, Inserted, Store, StoreError, StoreResult};
use crate::{
    config::MongoConfig,
    domain::{
        Conversation, Message, MessageId, NewMessage, NewSession, NewUser, PasswordHash,
        PendingCode, PhoneNumber, Session, SessionId, User, UserCredentials, UserId, Username,
    },
};

/// Database used when neither `MONGO_DB` nor the URI names one.
pub const DEFAULT_DATABASE: &str = "chatapp";
/// How long after expiry the TTL index removes a session document (the same as the server's
/// own purge, `sessions::EXPIRED_SESSION_RETENTION`).
const SESSION_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Longest a write waits for majority acknowledgement before failing as unavailable.
const WRITE_CONCERN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the unique indexes are trusted to exist after they were last seen. Between a drop
/// of the database and the next check, uniqueness rests on the reads each write does first.
pub const INDEX_RECHECK: Duration = Duration::from_secs(30);
/// The indexes that uniqueness depends on, by collection.
const UNIQUE_INDEXES: [(&str, &str); 2] =
    [("users", "phone_number_unique"), ("messages", "client_message_id_unique")];

/// Users, sessions and messages in MongoDB.
pub struct MongoStore {
    database: Database,
    users: Collection<UserDocument>,
    sessions: Collection<SessionDocument>,
    messages: Collection<MessageDocument>,
    counters: Collection<CounterDocument>,
    conversations: Collection<ConversationDocument>,
    blocks: Collection<Document>,
    codes: Collection<CodeDocument>,
    /// When every index was last seen in place (`None` until they have been created).
    indexes_seen: Mutex<Option<Instant>>,
    /// How long that sighting is trusted ([`INDEX_RECHECK`]).
    index_recheck: Duration,
}

impl MongoStore {
    /// A store for `config`. Parses the URI (resolving `mongodb+srv` records) but does not wait
    /// for a server: the driver connects in the background and every operation waits at most
    /// `config.timeout` for one.
    pub async fn connect(config: &MongoConfig) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(&config.uri)
            .await
            .map_err(|error| StoreError::Internal(format!("MONGO_URI is not usable: {error}")))?;
        options.app_name.get_or_insert_with(|| "chatapp".to_string());
        options.server_selection_timeout = Some(config.timeout);
        options.connect_timeout = Some(config.timeout);
        options.write_concern = Some(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .w_timeout(WRITE_CONCERN_TIMEOUT)
                .build(),
        );
        let name = config
            .database
            .clone()
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(options).map_err(store_error)?;
        Ok(Self::on(client.database(&name)))
    }

    fn on(database: Database) -> Self {
        MongoStore {
            users: database.collection("users"),
            sessions: database.collection("sessions"),
            messages: database.collection("messages"),
            counters: database.collection("counters"),
            conversations: database.collection("conversations"),
            blocks: database.collection("blocks"),
            codes: database.collection("verification_codes"),
            database,
            indexes_seen: Mutex::new(None),
            index_recheck: INDEX_RECHECK,
        }
    }

    /// Looks for the unique indexes every `interval` instead of every [`INDEX_RECHECK`].
    pub fn recheck_indexes_every(mut self, interval: Duration) -> Self {
        self.index_recheck = interval;
        self
    }

    /// The database's name.
    pub fn database_name(&self) -> &str {
        self.database.name()
    }

    /// Drops the whole database (for tests that made their own).
    pub async fn drop_database(&self) -> StoreResult<()> {
        self.database.drop().await.map_err(store_error)
    }

    /// Creates every index the store relies on, and makes sure the unique ones still exist
    /// when they were last seen more than `index_recheck` ago. A failure is retried by the next
    /// call. Concurrent callers wait for one check.
    pub async fn ensure_indexes(&self) -> StoreResult<()> {
        let mut seen = self.indexes_seen.lock().await;
        match *seen {
            Some(at) if at.elapsed() < self.index_recheck => return Ok(()),
            Some(_) => {
                if self.unique_indexes_missing().await? {
                    tracing::warn!(
                        database = self.database.name(),
                        "unique indexes are missing (was the database dropped or restored?); recreating them"
                    );
                    self.create_indexes().await?;
                }
            }
            None => self.create_indexes().await?,
        }
        *seen = Some(Instant::now());
        Ok(())
    }

    /// Whether any index that uniqueness depends on is gone.
    async fn unique_indexes_missing(&self) -> StoreResult<bool> {
        for (collection, index) in UNIQUE_INDEXES {
            let names = self.database.collection::<Document>(collection).list_index_names().await;
            match names {
                Ok(names) if names.iter().any(|name| name == index) => {}
                Ok(_) => return Ok(true),
                // The collection itself is gone (NamespaceNotFound).
                Err(error) if errors::is_namespace_not_found(&error) => return Ok(true),
                Err(error) => return Err(store_error(error)),
            }
        }
        Ok(false)
    }

    async fn create_indexes(&self) -> StoreResult<()> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        let unique = |keys: Document, name: &str, sparse: bool| {
            let options = IndexOptions::builder()
                .name(name.to_string())
                .unique(true)
                .sparse(sparse.then_some(true))
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        };
        let expiring = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("sessions_expiry".to_string())
                    .expire_after(SESSION_RETENTION)
                    .build(),
            )
            .build();
        let unverified = IndexModel::builder()
            .keys(doc! { "created_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("users_unverified".to_string())
                    .partial_filter_expression(doc! { "phone_verified": false })
                    .build(),
            )
            .build();
        self.users
            .create_indexes([
                unique(doc! { "phone_number": 1 }, "phone_number_unique", false),
                unverified,
            ])
            .await
            .map_err(store_error)?;
        self.sessions
            .create_indexes([index(doc! { "user_id": 1 }, "sessions_by_user")])
            .await
            .map_err(store_error)?;
        self.messages
            .create_indexes([
                index(
                    doc! { "recipient_id": 1, "delivered_at": 1, "seq": 1 },
                    "undelivered_by_recipient",
                ),
                index(doc! { "conversation": 1, "seq": -1 }, "history_by_conversation"),
                unique(doc! { "idempotency_key": 1 }, "client_message_id_unique", true),
                index(doc! { "seq": 1 }, "messages_by_seq"),
                index(
                    doc! { "recipient_id": 1, "read_at": 1, "conversation": 1 },
                    "unread_by_recipient",
                ),
            ])
            .await
            .map_err(store_error)?;
        self.conversations
            .create_indexes([index(
                doc! { "owner": 1, "last_seq": -1 },
                "conversations_by_activity",
            )])
            .await
            .map_err(store_error)?;
        self.blocks
            .create_indexes([index(doc! { "blocker": 1, "created_at": -1 }, "blocks_by_blocker")])
            .await
            .map_err(store_error)?;
        // Housekeeping only (expired sessions are refused either way), so a server that cannot
        // build TTL indexes still runs.
        if let Err(error) = self.sessions.create_index(expiring).await {
            match store_error(error) {
                unavailable @ StoreError::Unavailable(_) => return Err(unavailable),
                other => tracing::warn!(error = %other, "expired sessions will not be purged"),
            }
        }
        tracing::info!(database = self.database.name(), "MongoDB indexes are in place");
        Ok(())
    }

    /// The next message sequence number. `findAndModify` with `$inc` is atomic, so concurrent
    /// senders (on any number of server instances) never share a number.
    async fn next_seq(&self) -> StoreResult<i64> {
        for _ in 0..2 {
            let counter = self
                .counters
                .find_one_and_update(doc! { "_id": "messages" }, doc! { "$inc": { "seq": 1_i64 } })
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match counter {
                Ok(Some(counter)) => return Ok(counter.seq),
                Ok(None) => {}
                // Two first-ever upserts raced; the loser retries and finds the document.
                Err(error) if is_duplicate_key(&error) => {}
                Err(error) => return Err(store_error(error)),
            }
        }
        Err(StoreError::Internal("the message counter could not be incremented".into()))
    }

    async fn find_messages(
        &self,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let cursor = self
            .messages
            .find(filter)
            .sort(sort)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?;
        let documents: Vec<MessageDocument> = cursor.try_collect().await.map_err(store_error)?;
        Ok(documents.into_iter().map(MessageDocument::into_message).collect())
    }

    async fn message_by_client_id(
        &self,
        sender: &ObjectId,
        client_message_id: &str,
    ) -> StoreResult<Option<Message>> {
        let found = self.message_by_client_id_document(sender, client_message_id).await?;
        Ok(found.map(MessageDocument::into_message))
    }

    async fn message_by_client_id_document(
        &self,
        sender: &ObjectId,
        client_message_id: &str,
    ) -> StoreResult<Option<MessageDocument>> {
        let filter = doc! { "idempotency_key": idempotency_key(sender, client_message_id) };
        self.messages.find_one(filter).await.map_err(store_error)
    }

    /// `owner`'s chat-list lines matching `filter`, newest activity first, at most `limit`,
    /// each with its newest message (one `$in` read) and unread count (one aggregation over
    /// the `unread_by_recipient` index).
    async fn find_conversations(
        &self,
        owner: ObjectId,
        filter: Document,
        limit: usize,
    ) -> StoreResult<Vec<Conversation>> {
        let lines: Vec<ConversationDocument> = self
            .conversations
            .find(filter)
            .sort(doc! { "last_seq": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = lines.iter().map(|line| line.last_seq).collect();
        let keys: Vec<String> =
            lines.iter().map(|line| conversation_key(&owner, &line.other)).collect();
        let newest =
            self.find_messages(doc! { "seq": { "$in": &seqs } }, doc! { "seq": 1 }, seqs.len());
        let counting = [
            doc! { "$match": {
                "recipient_id": owner, "read_at": null, "conversation": { "$in": &keys },
            } },
            doc! { "$group": { "_id": "$conversation", "unread": { "$sum": 1 } } },
        ];
        let counts = async {
            let cursor = self.messages.aggregate(counting).await.map_err(store_error)?;
            cursor.try_collect::<Vec<Document>>().await.map_err(store_error)
        };
        let (newest, counts) = futures::try_join!(newest, counts)?;
        let unread = |key: &str| {
            counts
                .iter()
                .find(|count| count.get_str("_id").is_ok_and(|id| id == key))
                .and_then(|count| count.get("unread"))
                .and_then(|n| n.as_i64().or_else(|| n.as_i32().map(i64::from)))
                .map_or(0, |n| n.max(0) as u64)
        };
        Ok(lines
            .iter()
            .zip(&keys)
            .filter_map(|(line, key)| {
                let last_message = newest.iter().find(|m| m.seq == line.last_seq)?.clone();
                Some(Conversation {
                    with: UserId::new(line.other.to_hex()),
                    last_message,
                    unread_count: unread(key),
                })
            })
            .collect())
    }

    /// Applies `update` to user `user_id` if it also matches `condition`; an id that cannot be
    /// ours names nobody, so nothing changes.
    async fn update_user(
        &self,
        user_id: &UserId,
        condition: Document,
        update: Document,
    ) -> StoreResult<()> {
        let Some(id) = object_id(user_id.as_str()) else { return Ok(()) };
        let mut filter = doc! { "_id": id };
        filter.extend(condition);
        self.users.update_one(filter, update).await.map_err(store_error)?;
        Ok(())
    }

    /// Shows `message` as the newest of its conversation in both participants' chat lists.
    /// Idempotent (`$max`), so repeating it after a failure is harmless. Not atomic with the
    /// message insert (that would need a transaction, which a standalone server lacks): a
    /// crash between the two leaves the lists one message behind until the next message, or
    /// the sender's retry with its clientMessageId, raises them.
    async fn raise_conversations(&self, message: &MessageDocument) -> StoreResult<()> {
        let pairs =
            [(message.sender_id, message.recipient_id), (message.recipient_id, message.sender_id)];
        for (owner, other) in pairs {
            let id = conversation_document_id(&owner, &other);
            let update = doc! {
                "$max": { "last_seq": message.seq },
                "$setOnInsert": { "owner": owner, "other": other },
            };
            self.conversations
                .update_one(doc! { "_id": id }, update)
                .upsert(true)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }
}

/// Both ids as ObjectIds, or `None` if either cannot be ours.
fn object_id_pair(a: &UserId, b: &UserId) -> Option<(ObjectId, ObjectId)> {
    Some((object_id(a.as_str())?, object_id(b.as_str())?))
}

/// Parses ids a client sent; ids that cannot be ours are left out (they name nothing).
fn object_ids(ids: &[impl AsRef<str>]) -> Vec<ObjectId> {
    ids.iter().filter_map(|id| object_id(id.as_ref())).collect()
}

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.database.run_command(doc! { "ping": 1 }).await.map_err(store_error)?;
        self.ensure_indexes().await
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        self.ensure_indexes().await?;
        // The unique index decides; this read only covers the moments it may be missing (a
        // dropped database, until the next index check).
        let taken = doc! { "phone_number": user.phone_number.as_str() };
        if self.users.find_one(taken).await.map_err(store_error)?.is_some() {
            return Err(StoreError::Conflict(Constraint::PhoneNumber));
        }
        let document = UserDocument::new(user, Utc::now());
        match self.users.insert_one(&document).await {
            Ok(_) => Ok(document.into_user()),
            Err(error) if is_duplicate_key(&error) => {
                Err(StoreError::Conflict(Constraint::PhoneNumber))
            }
            Err(error) => Err(store_error(error)),
        }
    }

    async fn user_by_id(&self, id: &UserId) -> StoreResult<Option<User>> {
        let Some(id) = object_id(id.as_str()) else { return Ok(None) };
        let found = self.users.find_one(doc! { "_id": id }).await.map_err(store_error)?;
        Ok(found.map(UserDocument::into_user))
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> StoreResult<Vec<User>> {
        let ids = object_ids(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let cursor = self.users.find(doc! { "_id": { "$in": ids } }).await.map_err(store_error)?;
        let documents: Vec<UserDocument> = cursor.try_collect().await.map_err(store_error)?;
        Ok(documents.into_iter().map(UserDocument::into_user).collect())
    }

    async fn credentials_by_phone(
        &self,
        phone_number: &PhoneNumber,
    ) -> StoreResult<Option<UserCredentials>> {
        let filter = doc! { "phone_number": phone_number.as_str() };
        let found = self.users.find_one(filter).await.map_err(store_error)?;
        Ok(found.map(UserDocument::into_credentials))
    }

    async fn set_username(
        &self,
        user_id: &UserId,
        username: Username,
    ) -> StoreResult<Option<User>> {
        let Some(id) = object_id(user_id.as_str()) else { return Ok(None) };
        let update = doc! { "$set": { "username": username.as_str() } };
        let updated = self
            .users
            .find_one_and_update(doc! { "_id": id }, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?;
        Ok(updated.map(UserDocument::into_user))
    }

    async fn set_password_hash(&self, user_id: &UserId, hash: PasswordHash) -> StoreResult<()> {
        self.update_user(user_id, doc! {}, doc! { "$set": { "password_hash": hash.as_str() } })
            .await
    }

    async fn block(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let Some((blocker, blocked)) = object_id_pair(blocker, blocked) else { return Ok(()) };
        let id = conversation_document_id(&blocker, &blocked);
        let update = doc! { "$setOnInsert": {
            "blocker": blocker, "blocked": blocked, "created_at": to_bson_date(at),
        } };
        self.blocks
            .update_one(doc! { "_id": id }, update)
            .upsert(true)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn unblock(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool> {
        let Some((blocker, blocked)) = object_id_pair(blocker, blocked) else { return Ok(false) };
        let id = conversation_document_id(&blocker, &blocked);
        let deleted = self.blocks.delete_one(doc! { "_id": id }).await.map_err(store_error)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn blocks(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool> {
        let Some((blocker, blocked)) = object_id_pair(blocker, blocked) else { return Ok(false) };
        let id = conversation_document_id(&blocker, &blocked);
        Ok(self.blocks.find_one(doc! { "_id": id }).await.map_err(store_error)?.is_some())
    }

    async fn blocked_users(&self, blocker: &UserId) -> StoreResult<Vec<UserId>> {
        let Some(blocker) = object_id(blocker.as_str()) else { return Ok(Vec::new()) };
        let found: Vec<Document> = self
            .blocks
            .find(doc! { "blocker": blocker })
            .sort(doc! { "created_at": -1, "blocked": 1 })
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        Ok(found
            .iter()
            .filter_map(|block| block.get_object_id("blocked").ok())
            .map(|id| UserId::new(id.to_hex()))
            .collect())
    }

    async fn delete_account(
        &self,
        user_id: &UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionId>> {
        let Some(id) = object_id(user_id.as_str()) else { return Ok(Vec::new()) };
        // Each step is idempotent, so a retry after a failure part-way finishes the job.
        let ended = self.delete_user_sessions(user_id).await?;
        let tombstone = doc! {
            "$set": {
                "phone_number": format!("deleted:{}", id.to_hex()),
                "username": User::DELETED_NAME,
                "password_hash": "",
            },
            "$unset": { "last_seen_at": "" },
            "$min": { "deleted_at": to_bson_date(at) },
        };
        self.users.update_one(doc! { "_id": id }, tombstone).await.map_err(store_error)?;
        let waiting = doc! { "recipient_id": id, "delivered_at": null };
        self.messages.delete_many(waiting).await.map_err(store_error)?;
        self.conversations.delete_many(doc! { "owner": id }).await.map_err(store_error)?;
        // Partners' lines may have pointed at a message just removed: point them at the newest
        // one left, or drop them.
        let lines: Vec<ConversationDocument> = self
            .conversations
            .find(doc! { "other": id })
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        for line in lines {
            let key = conversation_key(&line.owner, &id);
            let newest =
                self.find_messages(doc! { "conversation": key }, doc! { "seq": -1 }, 1).await?;
            match newest.first() {
                Some(message) => {
                    let update = doc! { "$set": { "last_seq": message.seq } };
                    self.conversations
                        .update_one(doc! { "_id": &line.id }, update)
                        .await
                        .map_err(store_error)?;
                }
                None => {
                    self.conversations
                        .delete_one(doc! { "_id": &line.id })
                        .await
                        .map_err(store_error)?;
                }
            }
        }
        let blocks = doc! { "$or": [{ "blocker": id }, { "blocked": id }] };
        self.blocks.delete_many(blocks).await.map_err(store_error)?;
        self.codes.delete_one(doc! { "_id": id }).await.map_err(store_error)?;
        Ok(ended)
    }

    async fn save_verification_code(&self, user_id: &UserId, code: PendingCode) -> StoreResult<()> {
        let Some(id) = object_id(user_id.as_str()) else { return Ok(()) };
        let document = CodeDocument::new(id, code);
        self.codes
            .replace_one(doc! { "_id": id }, &document)
            .upsert(true)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn count_verification_attempt(
        &self,
        user_id: &UserId,
    ) -> StoreResult<Option<PendingCode>> {
        let Some(id) = object_id(user_id.as_str()) else { return Ok(None) };
        let counted = self
            .codes
            .find_one_and_update(doc! { "_id": id }, doc! { "$inc": { "attempts": 1 } })
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?;
        Ok(counted.map(CodeDocument::into_pending))
    }

    async fn mark_phone_verified(&self, user_id: &UserId) -> StoreResult<bool> {
        let Some(id) = object_id(user_id.as_str()) else { return Ok(false) };
        self.codes.delete_one(doc! { "_id": id }).await.map_err(store_error)?;
        let live = doc! { "_id": id, "deleted_at": { "$exists": false } };
        let update = doc! { "$set": { "phone_verified": true } };
        let updated = self.users.update_one(live, update).await.map_err(store_error)?;
        Ok(updated.matched_count > 0)
    }

    async fn release_unverified(
        &self,
        created_before: DateTime<Utc>,
        phone_number: Option<&PhoneNumber>,
    ) -> StoreResult<Vec<SessionId>> {
        let mut filter =
            doc! { "phone_verified": false, "created_at": { "$lt": to_bson_date(created_before) } };
        if let Some(number) = phone_number {
            filter.insert("phone_number", number.as_str());
        }
        let claims: Vec<UserDocument> = self
            .users
            .find(filter)
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        let mut ended = Vec::new();
        for claim in claims {
            let id = claim.id;
            // The user goes first, and only if still unverified: a verification racing with
            // this keeps its account whole. The rest is idempotent clean-up after it.
            let unverified = doc! { "_id": id, "phone_verified": false };
            let removed = self.users.delete_one(unverified).await.map_err(store_error)?;
            if removed.deleted_count == 0 {
                continue;
            }
            ended.extend(self.delete_user_sessions(&UserId::new(id.to_hex())).await?);
            self.codes.delete_one(doc! { "_id": id }).await.map_err(store_error)?;
            let lines = doc! { "$or": [{ "owner": id }, { "other": id }] };
            self.conversations.delete_many(lines).await.map_err(store_error)?;
            let blocks = doc! { "$or": [{ "blocker": id }, { "blocked": id }] };
            self.blocks.delete_many(blocks).await.map_err(store_error)?;
        }
        Ok(ended)
    }

    async fn record_last_seen(&self, user_id: &UserId, at: DateTime<Utc>) -> StoreResult<()> {
        let live = doc! { "deleted_at": { "$exists": false } };
        self.update_user(user_id, live, doc! { "$set": { "last_seen_at": to_bson_date(at) } }).await
    }

    async fn set_shows_presence(&self, user_id: &UserId, shows: bool) -> StoreResult<()> {
        self.update_user(user_id, doc! {}, doc! { "$set": { "shows_presence": shows } }).await
    }

    async fn create_session(&self, session: NewSession) -> StoreResult<Session> {
        self.ensure_indexes().await?;
        let document = SessionDocument::new(&session)
            .ok_or_else(|| StoreError::Internal("session for a user id that is not ours".into()))?;
        self.sessions.insert_one(&document).await.map_err(store_error)?;
        Ok(document.into_session())
    }

    async fn session(&self, id: &SessionId) -> StoreResult<Option<Session>> {
        let Some(id) = object_id(id.as_str()) else { return Ok(None) };
        let found = self.sessions.find_one(doc! { "_id": id }).await.map_err(store_error)?;
        Ok(found.map(SessionDocument::into_session))
    }

    async fn delete_session(&self, id: &SessionId) -> StoreResult<bool> {
        let Some(id) = object_id(id.as_str()) else { return Ok(false) };
        let deleted = self.sessions.delete_one(doc! { "_id": id }).await.map_err(store_error)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn delete_user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<SessionId>> {
        let sessions = self.user_sessions(user_id).await?;
        let ids: Vec<ObjectId> = sessions.iter().filter_map(|s| object_id(s.id.as_str())).collect();
        if !ids.is_empty() {
            // By id, so a session created meanwhile is neither ended nor reported as ended.
            self.sessions
                .delete_many(doc! { "_id": { "$in": &ids } })
                .await
                .map_err(store_error)?;
        }
        Ok(sessions.into_iter().map(|session| session.id).collect())
    }

    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>> {
        let Some(user_id) = object_id(user_id.as_str()) else { return Ok(Vec::new()) };
        let cursor = self
            .sessions
            .find(doc! { "user_id": user_id })
            .sort(doc! { "created_at": 1 })
            .await
            .map_err(store_error)?;
        let documents: Vec<SessionDocument> = cursor.try_collect().await.map_err(store_error)?;
        Ok(documents.into_iter().map(SessionDocument::into_session).collect())
    }

    async fn touch_session(&self, id: &SessionId, at: DateTime<Utc>) -> StoreResult<()> {
        let Some(id) = object_id(id.as_str()) else { return Ok(()) };
        let update = doc! { "$set": { "last_seen_at": to_bson_date(at) } };
        self.sessions.update_one(doc! { "_id": id }, update).await.map_err(store_error)?;
        Ok(())
    }

    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        // The TTL index does this too; this keeps the behaviour the same where TTL indexes are
        // not supported, and uses the same index.
        let filter = doc! { "expires_at": { "$lt": to_bson_date(before) } };
        let deleted = self.sessions.delete_many(filter).await.map_err(store_error)?;
        Ok(deleted.deleted_count)
    }

    async fn insert_message(&self, message: NewMessage) -> StoreResult<Inserted> {
        self.ensure_indexes().await?;
        let sender = object_id(message.sender_id.as_str()).ok_or_else(|| {
            StoreError::Internal("message from a user id that is not ours".into())
        })?;
        if let Some(key) = &message.client_message_id
            && let Some(existing) =
                self.message_by_client_id_document(&sender, key.as_str()).await?
        {
            // A retry after a failure between the two writes repairs the chat lists.
            self.raise_conversations(&existing).await?;
            return Ok(Inserted::Existing(existing.into_message()));
        }
        let seq = self.next_seq().await?;
        let document = MessageDocument::new(&message, seq)
            .ok_or_else(|| StoreError::Internal("message to a user id that is not ours".into()))?;
        match self.messages.insert_one(&document).await {
            Ok(_) => {
                self.raise_conversations(&document).await?;
                Ok(Inserted::Created(document.into_message()))
            }
            // A concurrent retry with the same clientMessageId won the race: return its message.
            Err(error) if is_duplicate_key(&error) => {
                let key = message.client_message_id.as_ref().map_or("", |key| key.as_str());
                match self.message_by_client_id(&sender, key).await? {
                    Some(existing) => Ok(Inserted::Existing(existing)),
                    None => Err(store_error(error)),
                }
            }
            Err(error) => Err(store_error(error)),
        }
    }

    async fn undelivered_messages(
        &self,
        recipient_id: &UserId,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let Some(recipient) = object_id(recipient_id.as_str()) else { return Ok(Vec::new()) };
        let filter =
            doc! { "recipient_id": recipient, "delivered_at": null, "seq": { "$gt": after_seq } };
        self.find_messages(filter, doc! { "seq": 1 }, limit).await
    }

    async fn messages_by_ids(&self, ids: &[MessageId]) -> StoreResult<Vec<Message>> {
        let ids = object_ids(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let count = ids.len();
        self.find_messages(doc! { "_id": { "$in": ids } }, doc! { "seq": 1 }, count).await
    }

    async fn mark_delivered(
        &self,
        recipient_id: &UserId,
        ids: &[MessageId],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (Some(recipient), ids) = (object_id(recipient_id.as_str()), object_ids(ids)) else {
            return Ok(());
        };
        if ids.is_empty() {
            return Ok(());
        }
        let filter =
            doc! { "_id": { "$in": ids }, "recipient_id": recipient, "delivered_at": null };
        let update = doc! { "$set": { "delivered_at": to_bson_date(at) } };
        self.messages.update_many(filter, update).await.map_err(store_error)?;
        Ok(())
    }

    async fn mark_read(
        &self,
        reader: &UserId,
        other: &UserId,
        up_to_seq: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<MessageId>> {
        let (Some(reader), Some(other)) = (object_id(reader.as_str()), object_id(other.as_str()))
        else {
            return Ok(Vec::new());
        };
        let unread = doc! {
            "conversation": conversation_key(&reader, &other),
            "recipient_id": reader,
            "seq": { "$lte": up_to_seq },
            "read_at": null,
        };
        let found: Vec<Document> = self
            .database
            .collection::<Document>("messages")
            .find(unread)
            .projection(doc! { "_id": 1 })
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        let ids: Vec<ObjectId> = found.iter().filter_map(|d| d.get_object_id("_id").ok()).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let at = to_bson_date(at);
        // Reading implies delivery: the undelivered ones get both times, then the rest their
        // read time. (A concurrent markRead may report some of the same ids; the state is the
        // same either way.)
        let undelivered = doc! { "_id": { "$in": &ids }, "delivered_at": null, "read_at": null };
        let both = doc! { "$set": { "delivered_at": at, "read_at": at } };
        self.messages.update_many(undelivered, both).await.map_err(store_error)?;
        let still_unread = doc! { "_id": { "$in": &ids }, "read_at": null };
        let read = doc! { "$set": { "read_at": at } };
        self.messages.update_many(still_unread, read).await.map_err(store_error)?;
        Ok(ids.iter().map(|id| MessageId::new(id.to_hex())).collect())
    }

    async fn conversations(
        &self,
        owner: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Conversation>> {
        let Some(owner) = object_id(owner.as_str()) else { return Ok(Vec::new()) };
        let filter = doc! { "owner": owner, "last_seq": { "$lt": before_seq.unwrap_or(i64::MAX) } };
        self.find_conversations(owner, filter, limit).await
    }

    async fn conversation_with(
        &self,
        owner: &UserId,
        other: &UserId,
    ) -> StoreResult<Option<Conversation>> {
        let (Some(owner), Some(other)) = (object_id(owner.as_str()), object_id(other.as_str()))
        else {
            return Ok(None);
        };
        let filter = doc! { "_id": conversation_document_id(&owner, &other) };
        Ok(self.find_conversations(owner, filter, 1).await?.into_iter().next())
    }

    async fn conversation(
        &self,
        user_a: &UserId,
        user_b: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let (Some(a), Some(b)) = (object_id(user_a.as_str()), object_id(user_b.as_str())) else {
            return Ok(Vec::new());
        };
        let mut filter = doc! { "conversation": conversation_key(&a, &b) };
        if let Some(before) = before_seq {
            filter.insert("seq", doc! { "$lt": before });
        }
        self.find_messages(filter, doc! { "seq": -1 }, limit).await
    }
}
