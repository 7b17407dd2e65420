//! Live events: the bus that wakes open connections when something they care about happens.
//!
//! Three kinds of topic: a user's inbox (a message addressed to them was stored), a user's
//! events (their own messages were sent from a device, delivered or read) and a session (it
//! was ended, so its websockets must close). The bus carries no durability promise. A message
//! is in the store before it is published, so an inbox subscriber that falls behind is told so
//! ([`BusEvent::Lagged`]) and catches up from the store. [`InProcessBus`] serves a single server
//! process; a multi-instance bus implements the same trait.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::domain::{ChatEvent, Message, SessionId, UserId};

/// What a subscriber hears from the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A message for the subscribed user was stored.
    Message(Arc<Message>),
    /// The subscribed session was ended (logout or revocation).
    SessionEnded,
    /// Something happened to the subscribed user's own messages.
    Chat(Arc<ChatEvent>),
    /// Events were dropped because the subscriber was too slow; it must re-read the store.
    Lagged,
}

/// A stream of events for one topic, live from the moment it was created.
pub type BusSubscription = Pin<Box<dyn Stream<Item = BusEvent> + Send>>;

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
    fn subscribe(&self, user_id: &UserId) -> BusSubscription;

    /// Starts listening to `user_id`'s events. A subscriber that falls behind hears
    /// [`BusEvent::Lagged`]; events are not stored, so it should refetch what it shows.
    fn subscribe_events(&self, user_id: &UserId) -> BusSubscription;

    /// Starts listening for the end of session `session_id`.
    fn watch_session(&self, session_id: &SessionId) -> BusSubscription;
}

/// Events one inbox channel holds before a slow subscriber lags. Kept small because tokio
/// allocates every slot up front, per user with an open subscription; a subscriber that lags
/// catches up from the store, so nothing is lost.
const INBOX_CAPACITY: usize = 16;
/// Events one user's event channel holds before a slow subscriber lags. Larger than an inbox:
/// acknowledging a page of messages announces each of them.
const EVENTS_CAPACITY: usize = 64;
/// A session channel only ever carries one event.
const SESSION_CAPACITY: usize = 1;

type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<BusEvent>>>>;

/// A bus inside one process: one broadcast channel per topic with live subscribers.
#[derive(Default, Clone)]
pub struct InProcessBus {
    /// Channels by topic key (`inbox:<user>`, `session:<id>`). A std mutex: it is held only for
    /// map lookups, never across an `.await`. Entries go when their last subscriber does.
    channels: Channels,
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of topics with at least one live subscriber (for tests and metrics).
    pub fn active_topics(&self) -> usize {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn send(&self, key: &str, event: BusEvent) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = channels.get(key) {
            // An error only means nobody is listening right now.
            let _ = sender.send(event);
        }
    }

    fn listen(&self, key: String, capacity: usize) -> BusSubscription {
        let receiver = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels
                .entry(key.clone())
                .or_insert_with(|| broadcast::channel(capacity).0)
                .subscribe()
        };
        Box::pin(InProcessSubscription {
            inner: BroadcastStream::new(receiver),
            _cleanup: Cleanup { channels: self.channels.clone(), key },
        })
    }
}

fn inbox_key(user_id: &UserId) -> String {
    format!("inbox:{user_id}")
}

fn events_key(user_id: &UserId) -> String {
    format!("events:{user_id}")
}

fn session_key(session_id: &SessionId) -> String {
    format!("session:{session_id}")
}

#[async_trait]
impl MessageBus for InProcessBus {
    async fn publish(&self, message: Arc<Message>) {
        let key = inbox_key(&message.recipient_id);
        self.send(&key, BusEvent::Message(message));
    }

    async fn publish_event(&self, user_id: &UserId, event: Arc<ChatEvent>) {
        self.send(&events_key(user_id), BusEvent::Chat(event));
    }

    async fn end_sessions(&self, session_ids: &[SessionId]) {
        for session_id in session_ids {
            self.send(&session_key(session_id), BusEvent::SessionEnded);
        }
    }

    fn subscribe(&self, user_id: &UserId) -> BusSubscription {
        self.listen(inbox_key(user_id), INBOX_CAPACITY)
    }

    fn subscribe_events(&self, user_id: &UserId) -> BusSubscription {
        self.listen(events_key(user_id), EVENTS_CAPACITY)
    }

    fn watch_session(&self, session_id: &SessionId) -> BusSubscription {
        self.listen(session_key(session_id), SESSION_CAPACITY)
    }
}

/// One subscriber's end of a channel.
struct InProcessSubscription {
    /// Declared first so the receiver is dropped before [`Cleanup`] counts receivers.
    inner: BroadcastStream<BusEvent>,
    _cleanup: Cleanup,
}

impl Stream for InProcessSubscription {
    type Item = BusEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|event| match event {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(_)) => BusEvent::Lagged,
            })
        })
    }
}

/// Removes a channel once its last subscriber has gone, so the map does not grow with every
/// user who ever connected.
struct Cleanup {
    channels: Channels,
    key: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.get(&self.key).is_some_and(|sender| sender.receiver_count() == 0) {
            channels.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageContent, MessageId};
    use chrono::Utc;
    use futures::StreamExt;

    fn message(id: &str, recipient: &str) -> Arc<Message> {
        Arc::new(Message {
            id: MessageId::new(id),
            seq: 1,
            sender_id: UserId::new("sender"),
            recipient_id: UserId::new(recipient),
            content: MessageContent::from_stored("hi".into()),
            client_message_id: None,
            sent_at: Utc::now(),
            delivered_at: None,
            read_at: None,
        })
    }

    #[tokio::test]
    async fn every_subscription_of_the_recipient_hears_a_message() {
        let bus = InProcessBus::new();
        let mut first = bus.subscribe(&UserId::new("bob"));
        let mut second = bus.subscribe(&UserId::new("bob"));
        let mut other = bus.subscribe(&UserId::new("carol"));
        bus.publish(message("m1", "bob")).await;
        for subscription in [&mut first, &mut second] {
            match subscription.next().await {
                Some(BusEvent::Message(m)) => assert_eq!(m.id.as_str(), "m1"),
                other => panic!("unexpected {other:?}"),
            }
        }
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), other.next()).await;
        assert!(nothing.is_err(), "carol must not hear bob's message");
    }

    #[tokio::test]
    async fn channels_are_removed_with_their_last_subscriber() {
        let bus = InProcessBus::new();
        let first = bus.subscribe(&UserId::new("bob"));
        let second = bus.subscribe(&UserId::new("bob"));
        assert_eq!(bus.active_topics(), 1);
        drop(first);
        assert_eq!(bus.active_topics(), 1);
        drop(second);
        assert_eq!(bus.active_topics(), 0);
    }

    #[tokio::test]
    async fn ending_a_session_reaches_only_its_watchers() {
        let bus = InProcessBus::new();
        let mut ended = bus.watch_session(&SessionId::new("s1"));
        let mut other = bus.watch_session(&SessionId::new("s2"));
        bus.end_sessions(&[SessionId::new("s1")]).await;
        assert!(matches!(ended.next().await, Some(BusEvent::SessionEnded)));
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), other.next()).await;
        assert!(nothing.is_err());
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let bus = InProcessBus::new();
        let mut slow = bus.subscribe(&UserId::new("bob"));
        for i in 0..INBOX_CAPACITY + 5 {
            bus.publish(message(&format!("m{i}"), "bob")).await;
        }
        assert!(matches!(slow.next().await, Some(BusEvent::Lagged)));
    }
}
