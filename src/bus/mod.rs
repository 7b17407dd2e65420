//! Live events: the bus that wakes open connections when something they care about happens.
//!
//! Three kinds of topic: a user's inbox (a message addressed to them was stored), a user's
//! events (their own messages were sent from a device, delivered or read; typing; presence;
//! profiles), and one topic for every session ending (its websockets must close), which each
//! process hands to the watchers of those sessions ([`sessions`]).
//!
//! # The contract every bus keeps
//! - The bus carries no durability promise; the store is the truth. A message is stored before
//!   it is published.
//! - `subscribe*` returns once listening has begun: anything published after it returns is
//!   heard (or a [`BusEvent::Lagged`] stands in for it), so a caller may read the store next
//!   without a gap.
//! - Whenever events may have been missed (a slow subscriber, a lost or restarted broker), every
//!   affected subscriber hears [`BusEvent::Lagged`] and re-reads the store: an inbox re-reads
//!   its backlog, an event stream tells its client to refetch, a session watch asks the store
//!   whether the session still exists.
//!
//! [`InProcessBus`] serves one server process. [`redis::RedisBus`] (`REDIS_URL`) joins many:
//! each process keeps a local [`hub::Hub`] fed by Redis pub/sub. What crosses Redis is the
//! event itself, serialized ([`wire`]): a whole message, not its id, so no recipient's server
//! reads the store to deliver it. The contract suite in `tests/bus` runs against both.

mod fanout;
pub mod hub;
pub mod redis;
pub mod sessions;
pub mod wire;

use std::{pin::Pin, sync::Arc};

use async_trait::async_trait;
use futures::Stream;

use self::{hub::Hub, sessions::SessionWatchers};
use crate::domain::{ChatEvent, Message, SessionId, UserId};

/// What a subscriber hears from the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A message for the subscribed user was stored.
    Message(Arc<Message>),
    /// The watched session was ended (logout or revocation).
    SessionEnded,
    /// These sessions were ended (on the sessions topic, read by [`sessions`]).
    SessionsEnded(Arc<[SessionId]>),
    /// Something happened to the subscribed user's own messages.
    Chat(Arc<ChatEvent>),
    /// Events may have been missed; the subscriber must re-read the store.
    Lagged,
}

/// A stream of events for one topic, live from the moment it was created.
pub type BusSubscription = Pin<Box<dyn Stream<Item = BusEvent> + Send>>;

/// Why the bus could not start listening.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the event bus is unavailable: {0}")]
pub struct BusError(pub String);

/// Result of a bus call.
pub type BusResult<T> = Result<T, BusError>;

/// Whether live events flow, for `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusHealth {
    /// `in-process` or `redis`.
    pub kind: &'static str,
    /// Whether events published now reach every instance's subscribers.
    pub up: bool,
}

/// Fans events out to the open connections that subscribed to them.
#[async_trait]
pub trait MessageBus: Send + Sync + 'static {
    /// Announces a stored message to its recipient's inbox subscribers.
    async fn publish(&self, message: Arc<Message>);

    /// Announces an event to `user_id`'s event subscribers (all their connections).
    async fn publish_event(&self, user_id: &UserId, event: Arc<ChatEvent>);

    /// Announces that these sessions were ended.
    async fn end_sessions(&self, session_ids: &[SessionId]);

    /// Starts listening to `user_id`'s inbox. Listening has begun when this returns, so a caller
    /// may read the store afterwards without missing anything published in between.
    async fn subscribe(&self, user_id: &UserId) -> BusResult<BusSubscription>;

    /// Starts listening to `user_id`'s events. A subscriber that falls behind hears
    /// [`BusEvent::Lagged`]; events are not stored, so it should refetch what it shows.
    async fn subscribe_events(&self, user_id: &UserId) -> BusResult<BusSubscription>;

    /// Starts listening for the end of session `session_id`. A [`BusEvent::Lagged`] here means
    /// the end may have been missed: ask the store.
    async fn watch_session(&self, session_id: &SessionId) -> BusResult<BusSubscription>;

    /// Whether events flow right now.
    fn health(&self) -> BusHealth;
}

/// Events one inbox holds for a slow subscriber before it lags (a subscriber that lags catches
/// up from the store, so nothing is lost). Memory is held only while some subscriber has not
/// read an event ([`fanout`]).
pub const INBOX_CAPACITY: usize = 16;
/// Events one user's event channel holds before a slow subscriber lags. Larger than an inbox:
/// acknowledging a page of messages announces each of them.
pub const EVENTS_CAPACITY: usize = 64;
/// Session endings one process may fall behind on before every watch asks the store.
pub const SESSIONS_CAPACITY: usize = 64;

/// A topic: its key (also the Redis channel name, after a prefix) and local capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic<'a> {
    /// A user's inbox.
    Inbox(&'a UserId),
    /// A user's events.
    Events(&'a UserId),
    /// Every session's end.
    Sessions,
}

impl Topic<'_> {
    /// The topic's key.
    pub fn key(&self) -> String {
        match self {
            Topic::Inbox(user) => format!("inbox:{user}"),
            Topic::Events(user) => format!("events:{user}"),
            Topic::Sessions => "sessions".to_string(),
        }
    }

    /// How many events a slow local subscriber may fall behind before it lags.
    pub fn capacity(&self) -> usize {
        match self {
            Topic::Inbox(_) => INBOX_CAPACITY,
            Topic::Events(_) => EVENTS_CAPACITY,
            Topic::Sessions => SESSIONS_CAPACITY,
        }
    }
}

/// A bus inside one process: a [`Hub`], and the session watchers it tells directly.
#[derive(Clone)]
pub struct InProcessBus {
    hub: Hub,
    sessions: SessionWatchers,
}

impl Default for InProcessBus {
    fn default() -> Self {
        InProcessBus { hub: Hub::new(None), sessions: SessionWatchers::default() }
    }
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of topics with at least one live subscriber (for tests and metrics).
    pub fn active_topics(&self) -> usize {
        self.hub.topic_count()
    }

    fn listen(&self, topic: Topic<'_>) -> BusSubscription {
        self.hub.listen(&topic.key(), topic.capacity(), true).subscription
    }
}

#[async_trait]
impl MessageBus for InProcessBus {
    async fn publish(&self, message: Arc<Message>) {
        let key = Topic::Inbox(&message.recipient_id).key();
        self.hub.send(&key, BusEvent::Message(message));
    }

    async fn publish_event(&self, user_id: &UserId, event: Arc<ChatEvent>) {
        self.hub.send(&Topic::Events(user_id).key(), BusEvent::Chat(event));
    }

    async fn end_sessions(&self, session_ids: &[SessionId]) {
        self.sessions.end(session_ids);
    }

    async fn subscribe(&self, user_id: &UserId) -> BusResult<BusSubscription> {
        Ok(self.listen(Topic::Inbox(user_id)))
    }

    async fn subscribe_events(&self, user_id: &UserId) -> BusResult<BusSubscription> {
        Ok(self.listen(Topic::Events(user_id)))
    }

    async fn watch_session(&self, session_id: &SessionId) -> BusResult<BusSubscription> {
        Ok(self.sessions.watch(session_id))
    }

    fn health(&self) -> BusHealth {
        BusHealth { kind: "in-process", up: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn topics_are_removed_with_their_last_subscriber() {
        let bus = InProcessBus::new();
        let first = bus.subscribe(&UserId::new("bob")).await.unwrap();
        let second = bus.subscribe(&UserId::new("bob")).await.unwrap();
        assert_eq!(bus.active_topics(), 1);
        drop(first);
        assert_eq!(bus.active_topics(), 1);
        drop(second);
        assert_eq!(bus.active_topics(), 0);
    }
}
