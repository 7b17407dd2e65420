//! The SQLite schema and how rows map to domain types.

use chrono::{DateTime, Utc};
use rusqlite::Row;

use crate::domain::{
    ClientMessageId, Message, MessageContent, MessageId, PhoneNumber, Session, SessionId, User,
    UserId, Username,
};

/// The schema, applied in order; `PRAGMA user_version` records how many have run.
pub const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    r#"
    CREATE INDEX sessions_by_expiry ON sessions(expires_at);
"#,
    // Chat list and read receipts. Messages acknowledged before read receipts existed count as
    // read, so an upgrade does not light up every old conversation as unread.
    r#"
    ALTER TABLE messages ADD COLUMN read_at INTEGER;
    UPDATE messages SET read_at = delivered_at WHERE delivered_at IS NOT NULL;
    CREATE INDEX messages_unread ON messages(recipient_id, conversation) WHERE read_at IS NULL;
    CREATE TABLE conversations (
        owner_id TEXT NOT NULL,
        other_id TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (owner_id, other_id)
    ) WITHOUT ROWID;
    CREATE INDEX conversations_by_activity ON conversations(owner_id, last_seq);
    INSERT INTO conversations (owner_id, other_id, last_seq)
        SELECT owner, other, MAX(seq) FROM (
            SELECT sender_id AS owner, recipient_id AS other, seq FROM messages
            UNION ALL
            SELECT recipient_id, sender_id, seq FROM messages
        ) GROUP BY owner, other;
"#,
    // Presence: when a user was last seen, and whether they show it.
    r#"
    ALTER TABLE users ADD COLUMN last_seen_at INTEGER;
    ALTER TABLE users ADD COLUMN shows_presence INTEGER NOT NULL DEFAULT 1;
"#,
    // Blocking.
    r#"
    CREATE TABLE blocks (
        blocker_id TEXT NOT NULL,
        blocked_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (blocker_id, blocked_id)
    ) WITHOUT ROWID;
"#,
    // Account deletion: a deleted account is a tombstone.
    r#"
    ALTER TABLE users ADD COLUMN deleted_at INTEGER;
"#,
    // Phone verification: accounts created before it existed count as verified.
    r#"
    ALTER TABLE users ADD COLUMN phone_verified INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX users_unverified ON users(created_at) WHERE phone_verified = 0;
    CREATE TABLE verification_codes (
        user_id    TEXT PRIMARY KEY,
        code_hash  TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        attempts   INTEGER NOT NULL
    ) WITHOUT ROWID;
"#,
    // The undelivered index also carries `delivered_at` (always null in it), so that a delivery
    // stream's compaction pass reads the `seq`s of a backlog from the index alone: SQLite does
    // not count a partial index as covering a column its own condition names.
    r#"
    DROP INDEX messages_undelivered;
    CREATE INDEX messages_undelivered ON messages(recipient_id, seq, delivered_at)
        WHERE delivered_at IS NULL;
"#,
];

pub const SESSION_COLUMNS: &str = "id, user_id, created_at, last_seen_at, expires_at";
pub const USER_COLUMNS: &str = "id, phone_number, username, created_at, last_seen_at, \
     shows_presence, deleted_at, phone_verified";
/// Index of the first column after [`USER_COLUMNS`] in a query that selects more.
pub const AFTER_USER_COLUMNS: usize = 8;
pub const MESSAGE_COLUMNS: &str =
    "seq, id, sender_id, recipient_id, content, client_message_id, sent_at, delivered_at, read_at";
/// [`MESSAGE_COLUMNS`] of the `messages` table aliased as `m`, for joins.
pub const JOINED_MESSAGE_COLUMNS: &str = "m.seq, m.id, m.sender_id, m.recipient_id, m.content, \
     m.client_message_id, m.sent_at, m.delivered_at, m.read_at";

/// Times are stored as Unix milliseconds.
pub fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or(DateTime::UNIX_EPOCH)
}

pub fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId::new(row.get::<_, String>(0)?),
        phone_number: PhoneNumber::from_stored(row.get(1)?),
        username: Username::from_stored(row.get(2)?),
        created_at: time(row.get(3)?),
        last_seen_at: row.get::<_, Option<i64>>(4)?.map(time),
        shows_presence: row.get(5)?,
        deleted_at: row.get::<_, Option<i64>>(6)?.map(time),
        phone_verified: row.get(7)?,
    })
}

pub fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        seq: row.get(0)?,
        id: MessageId::new(row.get::<_, String>(1)?),
        sender_id: UserId::new(row.get::<_, String>(2)?),
        recipient_id: UserId::new(row.get::<_, String>(3)?),
        content: MessageContent::from_stored(row.get(4)?),
        client_message_id: row.get::<_, Option<String>>(5)?.map(ClientMessageId::from_stored),
        sent_at: time(row.get(6)?),
        delivered_at: row.get::<_, Option<i64>>(7)?.map(time),
        read_at: row.get::<_, Option<i64>>(8)?.map(time),
    })
}

pub fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::new(row.get::<_, String>(0)?),
        user_id: UserId::new(row.get::<_, String>(1)?),
        created_at: time(row.get(2)?),
        last_seen_at: time(row.get(3)?),
        expires_at: time(row.get(4)?),
    })
}

/// The key both directions of a conversation share, so one index serves its history.
pub fn conversation_key(a: &UserId, b: &UserId) -> String {
    let (a, b) = (a.as_str(), b.as_str());
    if a <= b { format!("{a}|{b}") } else { format!("{b}|{a}") }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// An id that sorts by creation time (UUID v7: a millisecond timestamp, then random bits), for
/// rows written at message rate: each new key lands at the end of the `id` index, where a random
/// one landed on a random page and every message dirtied (and logged to the WAL) a page of its
/// own. Still unguessable enough for an identifier that is never a credential.
pub fn new_time_ordered_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_keys_ignore_direction() {
        let [a, b, c] = ["a", "b", "c"].map(UserId::new);
        assert_eq!(conversation_key(&a, &b), conversation_key(&b, &a));
        assert_ne!(conversation_key(&a, &b), conversation_key(&a, &c));
    }

    #[test]
    fn message_ids_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..10_000).map(|_| new_time_ordered_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "ids out of creation order");
        // The same shape as every other id: 32 lowercase hex digits.
        assert!(ids.iter().all(|id| {
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }));
    }
}
