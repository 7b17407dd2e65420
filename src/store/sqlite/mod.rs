//! The embedded store: SQLite in one file under the data directory.
//!
//! Writes go to one writer thread that commits whatever is waiting as one transaction (see
//! [`writer`]): SQLite allows one writer at a time anyway, the commit order is the `seq` order
//! of messages, and under load one fsync serves many senders. WAL mode with `synchronous=FULL`
//! makes every commit durable before any write in it is answered.
//!
//! Reads use a small pool of read-only connections and run inline on the calling task: they
//! are indexed lookups that WAL mode never makes wait for the writer, so they take microseconds,
//! less than handing each one to another thread would.

mod rows;
mod wal;
mod writer;

use std::{
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params, params_from_iter, types::Value};

use self::{
    rows::{
        AFTER_USER_COLUMNS, JOINED_MESSAGE_COLUMNS, MESSAGE_COLUMNS, MIGRATIONS, SESSION_COLUMNS,
        USER_COLUMNS, conversation_key, message_from_row, millis, new_id, new_time_ordered_id,
        session_from_row, time, user_from_row,
    },
    writer::Writer,
};
use super::{Constraint, Inserted, Store, StoreError, StoreResult};
use crate::domain::{
    Conversation, Message, MessageId, NewMessage, NewSession, NewUser, PasswordHash, PendingCode,
    PhoneNumber, Session, SessionId, User, UserCredentials, UserId, Username,
};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: Writer,
    readers: Vec<Mutex<Connection>>,
    /// Round-robin start for picking a reader.
    next_reader: AtomicUsize,
    /// Keeps the background checkpoint running while the store exists.
    _checkpointer: mpsc::Sender<()>,
    /// The data directory's lock, held for as long as the store is open.
    _lock: Option<crate::data_dir::DirLock>,
}

impl SqliteStore {
    /// Holds `lock` for as long as the store is open.
    pub fn holding(mut self, lock: crate::data_dir::DirLock) -> Self {
        self._lock = Some(lock);
        self
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let unavailable = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
        let connection = Connection::open(path).map_err(unavailable)?;
        // `temp_store = MEMORY`: each write in a batch runs in a savepoint, whose journal of
        // original pages SQLite spills to a temporary file past 64 KiB. Under load that file
        // took 2.5 times the bytes the WAL did (152 MB in 2 s), opened and closed per batch.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA wal_autocheckpoint = 0;
                 PRAGMA temp_store = MEMORY;",
            )
            .and_then(|()| connection.busy_timeout(BUSY_TIMEOUT))
            .and_then(|()| {
                connection.pragma_update(None, "journal_size_limit", wal::SIZE_LIMIT_BYTES)
            })
            .map_err(internal)?;
        migrate(&connection)?;
        // No connection maps the file (`mmap_size` stays 0): while messages are written the
        // file grows at every checkpoint, and each connection then unmapped and remapped it on
        // its next read, a TLB shootdown across every core each time: without it, 8-11% more
        // messages per second at saturation and the same replay speed.
        let count = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let readers = (0..count.max(4))
            .map(|_| {
                let reader = Connection::open(path).map_err(unavailable)?;
                reader
                    .execute_batch("PRAGMA query_only = ON;")
                    .and_then(|()| reader.busy_timeout(BUSY_TIMEOUT))
                    .map_err(internal)?;
                Ok(Mutex::new(reader))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let restart = wal::RestartRequest::default();
        let checkpointer = wal::checkpoint_in_background(
            Connection::open(path).map_err(unavailable)?,
            wal::Upkeep::default(),
            restart.clone(),
        )
        .map_err(internal)?;
        let writer = Writer::start(connection, restart).map_err(internal)?;
        Ok(SqliteStore {
            writer,
            readers,
            next_reader: AtomicUsize::new(0),
            _checkpointer: checkpointer,
            _lock: None,
        })
    }

    /// Runs one statement in the next write batch; returns how many rows it changed.
    async fn execute(&self, statement: &'static str, params: Vec<Value>) -> StoreResult<usize> {
        self.writer
            .write(move |c| {
                c.prepare_cached(statement)
                    .and_then(|mut prepared| prepared.execute(params_from_iter(params)))
                    .map_err(sql)
            })
            .await
    }

    /// Runs `work` on a free read connection.
    fn read<T>(&self, work: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let count = self.readers.len();
        for offset in 0..count {
            if let Ok(reader) = self.readers[(start + offset) % count].try_lock() {
                return work(&reader);
            }
        }
        // All busy: wait for the one this call started at (each is held for microseconds).
        let reader = self.readers[start % count].lock().unwrap_or_else(|p| p.into_inner());
        work(&reader)
    }
}

/// How long a connection waits for a lock another holds (a write in another process sharing
/// the data directory, a checkpoint) before giving up with "database is locked".
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Applies the migrations not yet applied, one transaction each. Each takes the write lock
/// before it reads the version, so processes starting together on one database (sharing it
/// with `REDIS_URL`) apply each migration once: the others wait, then see it done.
fn migrate(connection: &Connection) -> StoreResult<()> {
    loop {
        connection.execute_batch("BEGIN IMMEDIATE").map_err(internal)?;
        let applied = connection
            .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
            .map_err(internal)
            .and_then(|version| {
                let Some(migration) = MIGRATIONS.get(version.max(0) as usize) else {
                    return Ok(false);
                };
                let next = version.max(0) + 1;
                connection
                    .execute_batch(&format!("{migration}; PRAGMA user_version = {next};"))
                    .map_err(internal)?;
                Ok(true)
            });
        match applied {
            Ok(more) => {
                connection.execute_batch("COMMIT").map_err(internal)?;
                if !more {
                    return Ok(());
                }
            }
            Err(error) => {
                let _ = connection.execute_batch("ROLLBACK");
                return Err(error);
            }
        }
    }
}

fn internal(error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(error.to_string())
}

/// Maps SQLite errors: a busy or unopenable database is unavailable, the rest is internal.
fn sql(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull,
        ) => StoreError::Unavailable(error.to_string()),
        _ => internal(error),
    }
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// Chat-list lines matching `condition` (on `conversations c`), each with its newest message
/// and its unread count (counted on the `messages_unread` index).
/// Ends every session of user `user_id` inside the current write; returns their ids.
fn delete_sessions_of(c: &Connection, user_id: &str) -> StoreResult<Vec<SessionId>> {
    query_rows(c, "DELETE FROM sessions WHERE user_id = ?1 RETURNING id", [user_id], |row| {
        row.get::<_, String>(0).map(SessionId::new)
    })
}

fn query_conversations(
    connection: &Connection,
    condition: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<Conversation>> {
    let sql_text = format!(
        "SELECT {JOINED_MESSAGE_COLUMNS}, c.other_id,
                (SELECT COUNT(*) FROM messages u
                  WHERE u.recipient_id = c.owner_id AND u.conversation = m.conversation
                    AND u.read_at IS NULL)
         FROM conversations c JOIN messages m ON m.seq = c.last_seq
         WHERE {condition}"
    );
    query_rows(connection, &sql_text, params, |row| {
        Ok(Conversation {
            last_message: message_from_row(row)?,
            with: UserId::new(row.get::<_, String>(9)?),
            unread_count: row.get::<_, i64>(10)?.max(0) as u64,
        })
    })
}

fn query_messages(
    connection: &Connection,
    sql_text: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<Message>> {
    query_rows(connection, sql_text, params, message_from_row)
}

/// Every row `sql_text` returns with `params`, each made by `row_to` (the statement is cached).
fn query_rows<T>(
    connection: &Connection,
    sql_text: &str,
    params: impl rusqlite::Params,
    row_to: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut statement = connection.prepare_cached(sql_text).map_err(sql)?;
    let rows = statement.query_map(params, row_to).map_err(sql)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(sql))
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        self.writer
            .write(move |c| {
                let stored = User {
                    id: UserId::new(new_id()),
                    phone_number: user.phone_number,
                    username: user.username,
                    created_at: time(millis(Utc::now())),
                    last_seen_at: None,
                    shows_presence: true,
                    deleted_at: None,
                    phone_verified: user.phone_verified,
                };
                c.prepare_cached(
                    "INSERT INTO users
                         (id, phone_number, username, password_hash, created_at, phone_verified)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut insert| {
                    insert.execute(params![
                        stored.id.as_str(),
                        stored.phone_number.as_str(),
                        stored.username.as_str(),
                        user.password_hash.as_str(),
                        millis(stored.created_at),
                        stored.phone_verified
                    ])
                })
                .map_err(|error| {
                    if is_unique_violation(&error) {
                        StoreError::Conflict(Constraint::PhoneNumber)
                    } else {
                        sql(error)
                    }
                })?;
                Ok(stored)
            })
            .await
    }

    async fn user_by_id(&self, id: &UserId) -> StoreResult<Option<User>> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
                .and_then(|mut query| query.query_row([id.as_str()], user_from_row).optional())
                .map_err(sql)
        })
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> StoreResult<Vec<User>> {
        match ids {
            [] => Ok(Vec::new()),
            [id] => Ok(self.user_by_id(id).await?.into_iter().collect()),
            // One statement for any number of ids (a JSON array bound to one parameter), so it
            // is compiled once per connection: an `IN (?, ?, ...)` list is new SQL for each
            // batch size, and compiling it was 2% of the server's CPU at saturation (the user
            // loader batches the senders of live messages through here).
            ids => {
                let ids =
                    serde_json::to_string(&ids.iter().map(UserId::as_str).collect::<Vec<_>>())
                        .map_err(|error| StoreError::Internal(error.to_string()))?;
                let sql_text = format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id IN (SELECT value FROM json_each(?1))"
                );
                self.read(|c| query_rows(c, &sql_text, [&ids], user_from_row))
            }
        }
    }

    async fn credentials_by_phone(
        &self,
        phone_number: &PhoneNumber,
    ) -> StoreResult<Option<UserCredentials>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, password_hash FROM users WHERE phone_number = ?1"
            ))
            .and_then(|mut query| {
                query
                    .query_row([phone_number.as_str()], |row| {
                        Ok(UserCredentials {
                            user: user_from_row(row)?,
                            password_hash: PasswordHash::new(row.get(AFTER_USER_COLUMNS)?),
                        })
                    })
                    .optional()
            })
            .map_err(sql)
        })
    }

    async fn set_username(
        &self,
        user_id: &UserId,
        username: Username,
    ) -> StoreResult<Option<User>> {
        let user_id = user_id.to_string();
        self.writer
            .write(move |c| {
                c.prepare_cached(&format!(
                    "UPDATE users SET username = ?1 WHERE id = ?2 RETURNING {USER_COLUMNS}"
                ))
                .and_then(|mut update| {
                    update.query_row(params![username.as_str(), user_id], user_from_row).optional()
                })
                .map_err(sql)
            })
            .await
    }

    async fn set_password_hash(&self, user_id: &UserId, hash: PasswordHash) -> StoreResult<()> {
        let params = vec![hash.as_str().to_string().into(), user_id.to_string().into()];
        self.execute("UPDATE users SET password_hash = ?1 WHERE id = ?2", params).await.map(drop)
    }

    async fn block(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let params =
            vec![blocker.to_string().into(), blocked.to_string().into(), millis(at).into()];
        let insert = "INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES (?1, ?2, ?3)
                      ON CONFLICT DO NOTHING";
        self.execute(insert, params).await.map(drop)
    }

    async fn unblock(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool> {
        let params = vec![blocker.to_string().into(), blocked.to_string().into()];
        let delete = "DELETE FROM blocks WHERE blocker_id = ?1 AND blocked_id = ?2";
        Ok(self.execute(delete, params).await? > 0)
    }

    async fn blocks(&self, blocker: &UserId, blocked: &UserId) -> StoreResult<bool> {
        self.read(|c| {
            c.prepare_cached("SELECT 1 FROM blocks WHERE blocker_id = ?1 AND blocked_id = ?2")
                .and_then(|mut query| query.exists(params![blocker.as_str(), blocked.as_str()]))
                .map_err(sql)
        })
    }

    async fn blocked_users(&self, blocker: &UserId) -> StoreResult<Vec<UserId>> {
        self.read(|c| {
            let sql_text = "SELECT blocked_id FROM blocks WHERE blocker_id = ?1
                            ORDER BY created_at DESC, blocked_id";
            query_rows(c, sql_text, [blocker.as_str()], |row| {
                row.get::<_, String>(0).map(UserId::new)
            })
        })
    }

    async fn delete_account(
        &self,
        user_id: &UserId,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionId>> {
        let id = user_id.to_string();
        self.writer
            .write(move |c| {
                let ended = delete_sessions_of(c, &id)?;
                // The phone number column is unique and required: a placeholder that no parsed
                // number can equal frees the real one.
                c.execute(
                    "UPDATE users SET phone_number = 'deleted:' || id, username = ?2,
                         password_hash = '', last_seen_at = NULL,
                         deleted_at = COALESCE(deleted_at, ?3)
                     WHERE id = ?1",
                    params![id, User::DELETED_NAME, millis(at)],
                )
                .map_err(sql)?;
                c.execute(
                    "DELETE FROM messages WHERE recipient_id = ?1 AND delivered_at IS NULL",
                    [&id],
                )
                .map_err(sql)?;
                c.execute("DELETE FROM conversations WHERE owner_id = ?1", [&id]).map_err(sql)?;
                // Partners' lines may have pointed at a message just removed.
                c.execute(
                    "UPDATE conversations SET last_seq = COALESCE((
                         SELECT MAX(m.seq) FROM messages m
                         WHERE m.conversation = CASE WHEN owner_id <= other_id
                             THEN owner_id || '|' || other_id ELSE other_id || '|' || owner_id END
                     ), -1)
                     WHERE other_id = ?1",
                    [&id],
                )
                .map_err(sql)?;
                c.execute("DELETE FROM conversations WHERE other_id = ?1 AND last_seq = -1", [&id])
                    .map_err(sql)?;
                c.execute("DELETE FROM blocks WHERE blocker_id = ?1 OR blocked_id = ?1", [&id])
                    .map_err(sql)?;
                c.execute("DELETE FROM verification_codes WHERE user_id = ?1", [&id])
                    .map_err(sql)?;
                Ok(ended)
            })
            .await
    }

    async fn save_verification_code(&self, user_id: &UserId, code: PendingCode) -> StoreResult<()> {
        let params = vec![
            user_id.to_string().into(),
            code.code_hash.into(),
            millis(code.expires_at).into(),
            i64::from(code.attempts).into(),
        ];
        let upsert = "INSERT OR REPLACE INTO verification_codes
                          (user_id, code_hash, expires_at, attempts) VALUES (?1, ?2, ?3, ?4)";
        self.execute(upsert, params).await.map(drop)
    }

    async fn count_verification_attempt(
        &self,
        user_id: &UserId,
    ) -> StoreResult<Option<PendingCode>> {
        let id = user_id.to_string();
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE verification_codes SET attempts = attempts + 1 WHERE user_id = ?1
                     RETURNING code_hash, expires_at, attempts",
                )
                .and_then(|mut update| {
                    update
                        .query_row([&id], |row| {
                            Ok(PendingCode {
                                code_hash: row.get(0)?,
                                expires_at: time(row.get(1)?),
                                attempts: row.get(2)?,
                            })
                        })
                        .optional()
                })
                .map_err(sql)
            })
            .await
    }

    async fn mark_phone_verified(&self, user_id: &UserId) -> StoreResult<bool> {
        let id = user_id.to_string();
        self.writer
            .write(move |c| {
                c.execute("DELETE FROM verification_codes WHERE user_id = ?1", [&id])
                    .map_err(sql)?;
                let updated = c
                    .execute(
                        "UPDATE users SET phone_verified = 1 WHERE id = ?1 AND deleted_at IS NULL",
                        [&id],
                    )
                    .map_err(sql)?;
                Ok(updated > 0)
            })
            .await
    }

    async fn release_unverified(
        &self,
        created_before: DateTime<Utc>,
        phone_number: Option<&PhoneNumber>,
    ) -> StoreResult<Vec<SessionId>> {
        let phone = phone_number.map(|number| number.as_str().to_string());
        self.writer
            .write(move |c| {
                let unverified = "SELECT id FROM users WHERE phone_verified = 0 AND created_at < ?1
                                  AND (?2 IS NULL OR phone_number = ?2)";
                let params = params![millis(created_before), phone];
                let users: Vec<String> = query_rows(c, unverified, params, |row| row.get(0))?;
                let mut ended = Vec::new();
                for id in users {
                    ended.extend(delete_sessions_of(c, &id)?);
                    for statement in [
                        "DELETE FROM verification_codes WHERE user_id = ?1",
                        "DELETE FROM conversations WHERE owner_id = ?1 OR other_id = ?1",
                        "DELETE FROM blocks WHERE blocker_id = ?1 OR blocked_id = ?1",
                        "DELETE FROM users WHERE id = ?1",
                    ] {
                        c.prepare_cached(statement)
                            .and_then(|mut delete| delete.execute([&id]))
                            .map_err(sql)?;
                    }
                }
                Ok(ended)
            })
            .await
    }

    async fn record_last_seen(&self, user_id: &UserId, at: DateTime<Utc>) -> StoreResult<()> {
        let params = vec![millis(at).into(), user_id.to_string().into()];
        let update = "UPDATE users SET last_seen_at = ?1 WHERE id = ?2 AND deleted_at IS NULL";
        self.execute(update, params).await.map(drop)
    }

    async fn set_shows_presence(&self, user_id: &UserId, shows: bool) -> StoreResult<()> {
        let params = vec![shows.into(), user_id.to_string().into()];
        self.execute("UPDATE users SET shows_presence = ?1 WHERE id = ?2", params).await.map(drop)
    }

    async fn create_session(&self, session: NewSession) -> StoreResult<Session> {
        self.writer
            .write(move |c| {
                let created_at = time(millis(session.created_at));
                let stored = Session {
                    id: SessionId::new(new_id()),
                    user_id: session.user_id,
                    created_at,
                    last_seen_at: created_at,
                    expires_at: time(millis(session.expires_at)),
                };
                c.prepare_cached(&format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
                ))
                .and_then(|mut insert| {
                    insert.execute(params![
                        stored.id.as_str(),
                        stored.user_id.as_str(),
                        millis(stored.created_at),
                        millis(stored.last_seen_at),
                        millis(stored.expires_at)
                    ])
                })
                .map_err(sql)?;
                Ok(stored)
            })
            .await
    }

    async fn session(&self, id: &SessionId) -> StoreResult<Option<Session>> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"))
                .and_then(|mut query| query.query_row([id.as_str()], session_from_row).optional())
                .map_err(sql)
        })
    }

    async fn delete_session(&self, id: &SessionId) -> StoreResult<bool> {
        let params = vec![id.to_string().into()];
        Ok(self.execute("DELETE FROM sessions WHERE id = ?1", params).await? > 0)
    }

    async fn delete_user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<SessionId>> {
        let user_id = user_id.to_string();
        self.writer.write(move |c| delete_sessions_of(c, &user_id)).await
    }

    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>> {
        self.read(|c| {
            let sql_text = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 ORDER BY created_at"
            );
            query_rows(c, &sql_text, [user_id.as_str()], session_from_row)
        })
    }

    async fn touch_session(&self, id: &SessionId, at: DateTime<Utc>) -> StoreResult<()> {
        let params = vec![millis(at).into(), id.to_string().into()];
        self.execute("UPDATE sessions SET last_seen_at = ?1 WHERE id = ?2", params).await.map(drop)
    }

    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let params = vec![millis(before).into()];
        let deleted = self.execute("DELETE FROM sessions WHERE expires_at < ?1", params).await?;
        Ok(deleted as u64)
    }

    async fn insert_message(&self, message: NewMessage) -> StoreResult<Inserted> {
        self.writer
            .write(move |c| {
                if let Some(client_id) = &message.client_message_id {
                    let existing = c
                        .prepare_cached(&format!(
                            "SELECT {MESSAGE_COLUMNS} FROM messages
                             WHERE sender_id = ?1 AND client_message_id = ?2"
                        ))
                        .and_then(|mut query| {
                            query
                                .query_row(
                                    params![message.sender_id.as_str(), client_id.as_str()],
                                    message_from_row,
                                )
                                .optional()
                        })
                        .map_err(sql)?;
                    if let Some(existing) = existing {
                        return Ok(Inserted::Existing(existing));
                    }
                }
                let id = MessageId::new(new_time_ordered_id());
                c.prepare_cached(
                    "INSERT INTO messages (id, sender_id, recipient_id, conversation, content,
                                           client_message_id, sent_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut insert| {
                    insert.execute(params![
                        id.as_str(),
                        message.sender_id.as_str(),
                        message.recipient_id.as_str(),
                        conversation_key(&message.sender_id, &message.recipient_id),
                        message.content.as_str(),
                        message.client_message_id.as_ref().map(|key| key.as_str()),
                        millis(message.sent_at),
                    ])
                })
                .map_err(sql)?;
                let seq = c.last_insert_rowid();
                // Both chat lists, in the same transaction as the message.
                c.prepare_cached(
                    "INSERT INTO conversations (owner_id, other_id, last_seq)
                     VALUES (?1, ?2, ?3), (?2, ?1, ?3)
                     ON CONFLICT (owner_id, other_id)
                     DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
                )
                .and_then(|mut upsert| {
                    upsert.execute(params![
                        message.sender_id.as_str(),
                        message.recipient_id.as_str(),
                        seq
                    ])
                })
                .map_err(sql)?;
                Ok(Inserted::Created(Message {
                    id,
                    seq,
                    sender_id: message.sender_id,
                    recipient_id: message.recipient_id,
                    content: message.content,
                    client_message_id: message.client_message_id,
                    sent_at: time(millis(message.sent_at)),
                    delivered_at: None,
                    read_at: None,
                }))
            })
            .await
    }

    async fn undelivered_messages(
        &self,
        recipient_id: &UserId,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.read(|c| {
            query_messages(
                c,
                &format!("SELECT {MESSAGE_COLUMNS} {UNDELIVERED_BACKLOG}"),
                params![recipient_id.as_str(), after_seq, limit as i64],
            )
        })
    }

    /// From the `messages_undelivered` index alone: it holds `recipient_id` and `seq` (the
    /// rowid) of every undelivered message, so no row is read.
    async fn undelivered_seqs(
        &self,
        recipient_id: &UserId,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<i64>> {
        self.read(|c| {
            let params = params![recipient_id.as_str(), after_seq, limit as i64];
            query_rows(c, &format!("SELECT seq {UNDELIVERED_BACKLOG}"), params, |row| row.get(0))
        })
    }

    async fn messages_by_ids(&self, ids: &[MessageId]) -> StoreResult<Vec<Message>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        self.read(|c| {
            query_messages(
                c,
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({placeholders})"),
                params_from_iter(ids.iter().map(MessageId::as_str)),
            )
        })
    }

    async fn mark_delivered(
        &self,
        recipient_id: &UserId,
        ids: &[MessageId],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let recipient_id = recipient_id.to_string();
        let ids: Vec<String> = ids.iter().map(MessageId::to_string).collect();
        self.writer
            .write(move |c| {
                let mut statement = c
                    .prepare_cached(
                        "UPDATE messages SET delivered_at = ?1
                         WHERE id = ?2 AND recipient_id = ?3 AND delivered_at IS NULL",
                    )
                    .map_err(sql)?;
                for id in &ids {
                    statement.execute(params![millis(at), id, recipient_id]).map_err(sql)?;
                }
                Ok(())
            })
            .await
    }

    async fn mark_read(
        &self,
        reader: &UserId,
        other: &UserId,
        up_to_seq: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<MessageId>> {
        let key = conversation_key(reader, other);
        let reader = reader.to_string();
        self.writer
            .write(move |c| {
                let update =
                    "UPDATE messages SET read_at = ?1, delivered_at = COALESCE(delivered_at, ?1)
                     WHERE conversation = ?2 AND recipient_id = ?3 AND seq <= ?4
                       AND read_at IS NULL
                     RETURNING id";
                let params = params![millis(at), key, reader, up_to_seq];
                query_rows(c, update, params, |row| row.get::<_, String>(0).map(MessageId::new))
            })
            .await
    }

    async fn conversations(
        &self,
        owner: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Conversation>> {
        self.read(|c| {
            query_conversations(
                c,
                "c.owner_id = ?1 AND c.last_seq < ?2 ORDER BY c.last_seq DESC LIMIT ?3",
                params![owner.as_str(), before_seq.unwrap_or(i64::MAX), limit as i64],
            )
        })
    }

    async fn conversation_with(
        &self,
        owner: &UserId,
        other: &UserId,
    ) -> StoreResult<Option<Conversation>> {
        let found = self.read(|c| {
            query_conversations(
                c,
                "c.owner_id = ?1 AND c.other_id = ?2",
                params![owner.as_str(), other.as_str()],
            )
        })?;
        Ok(found.into_iter().next())
    }

    async fn conversation(
        &self,
        user_a: &UserId,
        user_b: &UserId,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let key = conversation_key(user_a, user_b);
        self.read(|c| {
            query_messages(
                c,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE conversation = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
                ),
                params![key, before_seq.unwrap_or(i64::MAX), limit as i64],
            )
        })
    }
}

/// A recipient's unacknowledged messages after a `seq`, oldest first, at most a limit: one
/// clause for [`Store::undelivered_messages`] and [`Store::undelivered_seqs`], which must select
/// the same messages.
const UNDELIVERED_BACKLOG: &str = "FROM messages
     WHERE recipient_id = ?1 AND delivered_at IS NULL AND seq > ?2 ORDER BY seq LIMIT ?3";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undelivered_seqs_are_read_from_the_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        drop(SqliteStore::open(&path).unwrap());
        let connection = Connection::open(&path).unwrap();
        let plan: Vec<String> = connection
            .prepare(&format!("EXPLAIN QUERY PLAN SELECT seq {UNDELIVERED_BACKLOG}"))
            .unwrap()
            .query_map(params!["u", 0, 10], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(plan[0].contains("COVERING INDEX messages_undelivered"), "{plan:?}");
    }

    #[test]
    fn processes_opening_one_new_database_together_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let opening: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&path).map(drop))
            })
            .collect();
        for opened in opening {
            opened.join().unwrap().expect("every opener succeeds");
        }
        let connection = Connection::open(&path).unwrap();
        let version: i64 =
            connection.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open(&path).unwrap();
        let user = store
            .create_user(NewUser {
                phone_number: PhoneNumber::parse("+12025550143").unwrap(),
                username: crate::domain::Username::parse("alice").unwrap(),
                password_hash: PasswordHash::new("hash".into()),
                phone_verified: true,
            })
            .await
            .unwrap();
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.user_by_id(&user.id).await.unwrap(), Some(user));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_in_a_batch_does_not_undo_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("chat.db")).unwrap());
        let register = |n: usize| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_user(NewUser {
                        // Every other registration reuses a number: those must fail alone.
                        phone_number: PhoneNumber::parse(&format!(
                            "+1202555{:04}",
                            if n.is_multiple_of(2) { n } else { 0 }
                        ))
                        .unwrap(),
                        username: crate::domain::Username::parse("someone").unwrap(),
                        password_hash: PasswordHash::new("hash".into()),
                        phone_verified: true,
                    })
                    .await
            })
        };
        let tasks: Vec<_> = (0..64).map(register).collect();
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(user) => {
                    created += 1;
                    assert!(store.user_by_id(&user.id).await.unwrap().is_some());
                }
                Err(error) => assert!(matches!(error, StoreError::Conflict(_)), "{error:?}"),
            }
        }
        assert_eq!(created, 32, "one per distinct number");
    }

    /// SQLite reports a full disk as `SQLITE_FULL`; `max_page_count` makes it happen for real,
    /// without filling a disk. Writes are unavailable (retryable), reads go on, and writes work
    /// again once there is room.
    #[tokio::test]
    async fn a_full_database_refuses_writes_as_unavailable_and_keeps_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("chat.db")).unwrap();
        let new_user = |phone: &str| NewUser {
            phone_number: PhoneNumber::parse(phone).unwrap(),
            username: crate::domain::Username::parse("alice").unwrap(),
            password_hash: PasswordHash::new("hash".into()),
            phone_verified: true,
        };
        let alice = store.create_user(new_user("+12025550143")).await.unwrap();
        let message = |n: usize| NewMessage {
            sender_id: alice.id.clone(),
            recipient_id: alice.id.clone(),
            content: crate::domain::MessageContent::parse(format!("{n}: {}", "x".repeat(3000)))
                .unwrap(),
            client_message_id: None,
            sent_at: Utc::now(),
        };
        let pages: i64 = store
            .read(|c| c.pragma_query_value(None, "page_count", |r| r.get(0)).map_err(sql))
            .unwrap();
        store.writer.write(move |c| set_max_pages(c, pages)).await.unwrap();

        let mut refused = None;
        for n in 0..100 {
            if let Err(error) = store.insert_message(message(n)).await {
                refused = Some(error);
                break;
            }
        }
        let refused = refused.expect("a write beyond max_page_count was accepted");
        assert!(
            matches!(&refused, StoreError::Unavailable(text) if text.contains("full")),
            "{refused:?}"
        );
        assert_eq!(store.user_by_id(&alice.id).await.unwrap(), Some(alice.clone()));
        let readable = store.undelivered_messages(&alice.id, 0, 500).await.unwrap().len();

        store.writer.write(|c| set_max_pages(c, 1 << 30)).await.unwrap();
        store.insert_message(message(1000)).await.unwrap();
        let after = store.undelivered_messages(&alice.id, 0, 500).await.unwrap().len();
        assert_eq!(after, readable + 1);
    }

    fn set_max_pages(connection: &Connection, pages: i64) -> StoreResult<()> {
        connection.pragma_update(None, "max_page_count", pages).map_err(sql)
    }

    /// A database from before the chat list gets one from its messages, and messages already
    /// acknowledged count as read.
    #[tokio::test]
    async fn upgrading_builds_the_chat_list_from_existing_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        {
            let old = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..2] {
                old.execute_batch(migration).unwrap();
            }
            old.execute_batch(
                "PRAGMA user_version = 2;
                 INSERT INTO users VALUES ('a', '+12025550143', 'alice', 'h', 0),
                                          ('b', '+12025550144', 'bob', 'h', 0),
                                          ('c', '+12025550145', 'carol', 'h', 0);
                 INSERT INTO messages (id, sender_id, recipient_id, conversation, content,
                                       sent_at, delivered_at)
                 VALUES ('m1', 'a', 'b', 'a|b', 'acknowledged', 1, 2),
                        ('m2', 'a', 'b', 'a|b', 'pending', 3, NULL),
                        ('m3', 'c', 'a', 'a|c', 'to alice', 4, NULL);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let lines = |owner: &str| {
            let store = &store;
            let owner = UserId::new(owner);
            async move {
                let list = store.conversations(&owner, None, 10).await.unwrap();
                list.into_iter()
                    .map(|c| (c.with.to_string(), c.last_message.id.to_string(), c.unread_count))
                    .collect::<Vec<_>>()
            }
        };
        let pair = |with: &str, last: &str, unread| (with.to_string(), last.to_string(), unread);
        assert_eq!(lines("a").await, vec![pair("c", "m3", 1), pair("b", "m2", 0)]);
        assert_eq!(lines("b").await, vec![pair("a", "m2", 1)]);
        assert_eq!(lines("c").await, vec![pair("a", "m3", 0)]);
    }
}
