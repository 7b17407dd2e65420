//! Sessions: one login of one user on one device, and the caller a valid one identifies.

use chrono::{DateTime, Utc};

use super::{SessionId, UserId};

/// A live login of one user on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Opaque id, carried in the token's `sid` claim.
    pub id: SessionId,
    /// Whose session it is.
    pub user_id: UserId,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a request last used it (refreshed at most once a minute).
    pub last_seen_at: DateTime<Utc>,
    /// When its token stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// A session about to be stored.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Whose session it is.
    pub user_id: UserId,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its token stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// The authenticated caller of a request or websocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The caller's user id.
    pub user_id: UserId,
    /// The session the caller's token names.
    pub session_id: SessionId,
    /// When that session (and its token) expires; open websockets close then.
    pub expires_at: DateTime<Utc>,
}
