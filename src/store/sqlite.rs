//! The embedded store: SQLite in one file under the data directory.
//!
//! One connection behind a mutex, used from the blocking pool. SQLite allows one writer at a
//! time anyway, and a single connection makes the commit order (and so the `seq` order of
//! messages) the order in which calls take the lock. WAL mode with `synchronous=FULL` makes every
//! commit durable before the call returns.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params, params_from_iter};

use super::{Inserted, Store, StoreError, StoreResult};
use crate::{
    messages::{Message, NewMessage},
    sessions::{NewSession, Session},
    users::{NewUser, User, UserCredentials},
};

/// The schema, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        phone_number  TEXT NOT NULL UNIQUE,
        username      TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        id         TEXT PRIMARY KEY,
        user_id    TEXT NOT NULL REFERENCES users(id),
        created_at   INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions(user_id);
    CREATE TABLE messages (
        seq               INTEGER PRIMARY KEY AUTOINCREMENT,
        id                TEXT NOT NULL UNIQUE,
        sender_id         TEXT NOT NULL REFERENCES users(id),
        recipient_id      TEXT NOT NULL REFERENCES users(id),
        conversation      TEXT NOT NULL,
        content           TEXT NOT NULL,
        client_message_id TEXT,
        sent_at           INTEGER NOT NULL,
        delivered_at      INTEGER
    );
    CREATE UNIQUE INDEX messages_by_client_id ON messages(sender_id, client_message_id)
        WHERE client_message_id IS NOT NULL;
    CREATE INDEX messages_undelivered ON messages(recipient_id, seq) WHERE delivered_at IS NULL;
    CREATE INDEX messages_by_conversation ON messages(conversation, seq);
"#];

const SESSION_COLUMNS: &str = "id, user_id, created_at, last_seen_at, expires_at";
const USER_COLUMNS: &str = "id, phone_number, username, created_at";
const MESSAGE_COLUMNS: &str =
    "seq, id, sender_id, recipient_id, content, client_message_id, sent_at, delivered_at";

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    /// A std mutex, not a tokio one: it is only ever locked inside `spawn_blocking`.
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let connection =
            Connection::open(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Self::prepare(connection)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> StoreResult<Self> {
        Self::prepare(Connection::open_in_memory().map_err(internal)?)
    }

    fn prepare(connection: Connection) -> StoreResult<Self> {
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(internal)?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(internal)?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            connection
                .execute_batch(&format!(
                    "BEGIN; {migration}; PRAGMA user_version = {}; COMMIT;",
                    index + 1
                ))
                .map_err(internal)?;
        }
        Ok(SqliteStore { connection: Arc::new(Mutex::new(connection)) })
    }

    /// Runs `work` on the connection on the blocking pool.
    async fn call<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| StoreError::Internal("connection lock poisoned".into()))?;
            work(&mut connection)
        })
        .await
        .map_err(internal)?
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

fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or(DateTime::UNIX_EPOCH)
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        phone_number: row.get(1)?,
        username: row.get(2)?,
        created_at: time(row.get(3)?),
    })
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        seq: row.get(0)?,
        id: row.get(1)?,
        sender_id: row.get(2)?,
        recipient_id: row.get(3)?,
        content: row.get(4)?,
        client_message_id: row.get(5)?,
        sent_at: time(row.get(6)?),
        delivered_at: row.get::<_, Option<i64>>(7)?.map(time),
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: row.get(0)?,
        user_id: row.get(1)?,
        created_at: time(row.get(2)?),
        last_seen_at: time(row.get(3)?),
        expires_at: time(row.get(4)?),
    })
}

/// The key both directions of a conversation share, so one index serves its history.
fn conversation_key(a: &str, b: &str) -> String {
    if a <= b { format!("{a}|{b}") } else { format!("{b}|{a}") }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn query_messages(
    connection: &Connection,
    sql_text: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<Message>> {
    let mut statement = connection.prepare_cached(sql_text).map_err(sql)?;
    let rows = statement.query_map(params, message_from_row).map_err(sql)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.call(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(sql)).await
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        self.call(move |c| {
            let stored = User {
                id: new_id(),
                phone_number: user.phone_number.as_str().to_string(),
                username: user.username.as_str().to_string(),
                created_at: time(millis(Utc::now())),
            };
            c.execute(
                "INSERT INTO users (id, phone_number, username, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![stored.id, stored.phone_number, stored.username, user.password_hash, millis(stored.created_at)],
            )
            .map_err(|error| {
                if is_unique_violation(&error) {
                    StoreError::Conflict("this phone number is already registered".into())
                } else {
                    sql(error)
                }
            })?;
            Ok(stored)
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [id],
                user_from_row,
            )
            .optional()
            .map_err(sql)
        })
        .await
    }

    async fn user_by_phone(&self, phone_number: &str) -> StoreResult<Option<User>> {
        let phone_number = phone_number.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE phone_number = ?1"),
                [phone_number],
                user_from_row,
            )
            .optional()
            .map_err(sql)
        })
        .await
    }

    async fn credentials_by_phone(
        &self,
        phone_number: &str,
    ) -> StoreResult<Option<UserCredentials>> {
        let phone_number = phone_number.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE phone_number = ?1"),
                [phone_number],
                |row| Ok(UserCredentials { user: user_from_row(row)?, password_hash: row.get(4)? }),
            )
            .optional()
            .map_err(sql)
        })
        .await
    }

    async fn create_session(&self, session: NewSession) -> StoreResult<Session> {
        self.call(move |c| {
            let created_at = time(millis(session.created_at));
            let stored = Session {
                id: new_id(),
                user_id: session.user_id,
                created_at,
                last_seen_at: created_at,
                expires_at: time(millis(session.expires_at)),
            };
            c.execute(
                &format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    stored.id,
                    stored.user_id,
                    millis(stored.created_at),
                    millis(stored.last_seen_at),
                    millis(stored.expires_at)
                ],
            )
            .map_err(sql)?;
            Ok(stored)
        })
        .await
    }

    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
                [id],
                session_from_row,
            )
            .optional()
            .map_err(sql)
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.call(move |c| {
            Ok(c.execute("DELETE FROM sessions WHERE id = ?1", [id]).map_err(sql)? > 0)
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let user_id = user_id.to_string();
        self.call(move |c| {
            let mut statement = c
                .prepare_cached("DELETE FROM sessions WHERE user_id = ?1 RETURNING id")
                .map_err(sql)?;
            let ids = statement.query_map([user_id], |row| row.get(0)).map_err(sql)?;
            ids.collect::<rusqlite::Result<Vec<String>>>().map_err(sql)
        })
        .await
    }

    async fn user_sessions(&self, user_id: &str) -> StoreResult<Vec<Session>> {
        let user_id = user_id.to_string();
        self.call(move |c| {
            let mut statement = c
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1"
                ))
                .map_err(sql)?;
            let sessions = statement.query_map([user_id], session_from_row).map_err(sql)?;
            sessions.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
        })
        .await
    }

    async fn touch_session(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE sessions SET last_seen_at = ?1 WHERE id = ?2",
                params![millis(at), id],
            )
            .map(drop)
            .map_err(sql)
        })
        .await
    }

    async fn insert_message(&self, message: NewMessage) -> StoreResult<Inserted> {
        self.call(move |c| {
            let transaction = c.transaction().map_err(sql)?;
            if let Some(client_id) = &message.client_message_id {
                let existing = transaction
                    .query_row(
                        &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = ?1 AND client_message_id = ?2"),
                        params![message.sender_id, client_id],
                        message_from_row,
                    )
                    .optional()
                    .map_err(sql)?;
                if let Some(existing) = existing {
                    return Ok(Inserted::Existing(existing));
                }
            }
            let id = new_id();
            transaction
                .execute(
                    "INSERT INTO messages (id, sender_id, recipient_id, conversation, content, client_message_id, sent_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        id,
                        message.sender_id,
                        message.recipient_id,
                        conversation_key(&message.sender_id, &message.recipient_id),
                        message.content,
                        message.client_message_id,
                        millis(message.sent_at),
                    ],
                )
                .map_err(sql)?;
            let seq = transaction.last_insert_rowid();
            transaction.commit().map_err(sql)?;
            Ok(Inserted::Created(Message {
                id,
                seq,
                sender_id: message.sender_id,
                recipient_id: message.recipient_id,
                content: message.content,
                client_message_id: message.client_message_id,
                sent_at: time(millis(message.sent_at)),
                delivered_at: None,
            }))
        })
        .await
    }

    async fn undelivered_messages(
        &self,
        recipient_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let recipient_id = recipient_id.to_string();
        self.call(move |c| {
            query_messages(
                c,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE recipient_id = ?1 AND delivered_at IS NULL AND seq > ?2 ORDER BY seq LIMIT ?3"
                ),
                params![recipient_id, after_seq, limit as i64],
            )
        })
        .await
    }

    async fn messages_by_ids(&self, ids: &[String]) -> StoreResult<Vec<Message>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.call(move |c| {
            let placeholders = vec!["?"; ids.len()].join(", ");
            query_messages(
                c,
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({placeholders})"),
                params_from_iter(ids.iter()),
            )
        })
        .await
    }

    async fn mark_delivered(
        &self,
        recipient_id: &str,
        ids: &[String],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let recipient_id = recipient_id.to_string();
        let ids = ids.to_vec();
        self.call(move |c| {
            let transaction = c.transaction().map_err(sql)?;
            {
                let mut statement = transaction
                    .prepare_cached(
                        "UPDATE messages SET delivered_at = ?1
                         WHERE id = ?2 AND recipient_id = ?3 AND delivered_at IS NULL",
                    )
                    .map_err(sql)?;
                for id in &ids {
                    statement.execute(params![millis(at), id, recipient_id]).map_err(sql)?;
                }
            }
            transaction.commit().map_err(sql)
        })
        .await
    }

    async fn conversation(
        &self,
        user_a: &str,
        user_b: &str,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let key = conversation_key(user_a, user_b);
        self.call(move |c| {
            query_messages(
                c,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE conversation = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
                ),
                params![key, before_seq.unwrap_or(i64::MAX), limit as i64],
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_keys_ignore_direction() {
        assert_eq!(conversation_key("a", "b"), conversation_key("b", "a"));
        assert_ne!(conversation_key("a", "b"), conversation_key("a", "c"));
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open(&path).unwrap();
        let user = store
            .create_user(NewUser {
                phone_number: crate::users::PhoneNumber::parse("+12025550143").unwrap(),
                username: crate::users::Username::parse("alice").unwrap(),
                password_hash: "hash".into(),
            })
            .await
            .unwrap();
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.user_by_id(&user.id).await.unwrap(), Some(user));
    }
}
