//! Fixtures for unit tests of the services: a real SQLite store in a temporary directory, the
//! in-process bus, and users and sessions made straight in the store. Each test gets its own.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use tempfile::TempDir;

use crate::{
    bus::{InProcessBus, MessageBus},
    config::{Config, Limits},
    domain::{
        Message, MessageContent, NewMessage, NewSession, NewUser, PasswordHash, PhoneNumber, User,
        Username, Viewer,
    },
    rate_limits::RateLimits,
    store::{Inserted, Store, sqlite::SqliteStore},
};

/// A store and a bus, alive for as long as the value is.
pub struct World {
    /// Deleted when the world is dropped.
    _dir: TempDir,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn MessageBus>,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("chat.db")).unwrap();
        World { _dir: dir, store: Arc::new(store), bus: Arc::new(InProcessBus::new()) }
    }

    /// A user with this phone number.
    pub async fn user(&self, phone: &str) -> User {
        self.store
            .create_user(NewUser {
                phone_number: PhoneNumber::parse(phone).unwrap(),
                username: Username::parse("someone").unwrap(),
                password_hash: PasswordHash::new("$2b$04$not-a-real-hash".into()),
                phone_verified: true,
            })
            .await
            .unwrap()
    }

    /// A message from `from` to `to`, stored straight in the store.
    pub async fn message(&self, from: &User, to: &User, content: &str) -> Message {
        let message = NewMessage {
            sender_id: from.id.clone(),
            recipient_id: to.id.clone(),
            content: MessageContent::parse(content.into()).unwrap(),
            client_message_id: None,
            sent_at: Utc::now(),
        };
        match self.store.insert_message(message).await.unwrap() {
            Inserted::Created(message) | Inserted::Existing(message) => message,
        }
    }

    /// `user`, signed in on a fresh session.
    pub async fn viewer(&self, user: &User) -> Viewer {
        let now = Utc::now();
        let session = self
            .store
            .create_session(NewSession {
                user_id: user.id.clone(),
                created_at: now,
                expires_at: now + TimeDelta::days(1),
            })
            .await
            .unwrap();
        Viewer { user_id: user.id.clone(), session_id: session.id, expires_at: session.expires_at }
    }
}

/// The limits of an empty environment (the defaults), with `adjust` applied.
pub fn limits(adjust: impl FnOnce(&mut Limits)) -> Arc<RateLimits> {
    let mut limits = Config::from_lookup(|_| None).unwrap().limits;
    adjust(&mut limits);
    Arc::new(RateLimits::new(&limits, None))
}
