//! Live delivery: the bus that wakes a recipient's open subscriptions when a message is stored.
//!
//! The bus carries no durability promise. A message is in the store before it is published, so a
//! subscriber that falls behind is told so ([`BusEvent::Lagged`]) and catches up from the store.
//! [`InProcessBus`] serves a single server process; a multi-instance bus implements the same
//! trait.

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

use crate::messages::Message;

/// What a subscriber hears from the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A message for the subscribed user was stored.
    Message(Arc<Message>),
    /// Events were dropped because the subscriber was too slow; it must re-read the store.
    Lagged,
}

/// A stream of events for one user, live from the moment it was created.
pub type BusSubscription = Pin<Box<dyn Stream<Item = BusEvent> + Send>>;

/// Fans stored messages out to every live subscription of their recipient.
#[async_trait]
pub trait MessageBus: Send + Sync + 'static {
    /// Announces a stored message to its recipient's subscribers.
    async fn publish(&self, message: Arc<Message>);

    /// Starts listening for `user_id`'s messages. Listening has begun when this returns, so a
    /// caller may read the store afterwards without missing anything published in between.
    fn subscribe(&self, user_id: &str) -> BusSubscription;
}

/// How many undelivered events one user's channel holds before a slow subscriber lags.
const CHANNEL_CAPACITY: usize = 1024;

/// A bus inside one process: one broadcast channel per user with live subscribers.
#[derive(Default, Clone)]
pub struct InProcessBus {
    /// Channels by recipient id. A std mutex: it is held only for map lookups, never across an
    /// `.await`. Entries are removed when their last subscriber goes.
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Message>>>>>,
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of users with at least one live subscription (for tests and metrics).
    pub fn active_users(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[async_trait]
impl MessageBus for InProcessBus {
    async fn publish(&self, message: Arc<Message>) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = channels.get(&message.recipient_id) {
            // An error only means nobody is listening right now; the store has the message.
            let _ = sender.send(message);
        }
    }

    fn subscribe(&self, user_id: &str) -> BusSubscription {
        let receiver = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels
                .entry(user_id.to_string())
                .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
                .subscribe()
        };
        Box::pin(InProcessSubscription {
            inner: BroadcastStream::new(receiver),
            _cleanup: Cleanup {
                channels: self.channels.clone(),
                user_id: user_id.to_string(),
            },
        })
    }
}

/// One subscriber's end of a user's channel.
struct InProcessSubscription {
    /// Declared first so the receiver is dropped before [`Cleanup`] counts receivers.
    inner: BroadcastStream<Arc<Message>>,
    _cleanup: Cleanup,
}

impl Stream for InProcessSubscription {
    type Item = BusEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|event| match event {
                Ok(message) => BusEvent::Message(message),
                Err(BroadcastStreamRecvError::Lagged(_)) => BusEvent::Lagged,
            })
        })
    }
}

/// Removes a user's channel once its last subscriber has gone, so the map does not grow with
/// every user who ever connected.
struct Cleanup {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Message>>>>>,
    user_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels
            .get(&self.user_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(&self.user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use futures::StreamExt;

    fn message(id: &str, recipient: &str) -> Arc<Message> {
        Arc::new(Message {
            id: id.into(),
            seq: 1,
            sender_id: "sender".into(),
            recipient_id: recipient.into(),
            content: "hi".into(),
            client_message_id: None,
            sent_at: Utc::now(),
            delivered_at: None,
        })
    }

    #[tokio::test]
    async fn every_subscription_of_the_recipient_hears_a_message() {
        let bus = InProcessBus::new();
        let mut first = bus.subscribe("bob");
        let mut second = bus.subscribe("bob");
        let mut other = bus.subscribe("carol");
        bus.publish(message("m1", "bob")).await;
        for subscription in [&mut first, &mut second] {
            match subscription.next().await {
                Some(BusEvent::Message(m)) => assert_eq!(m.id, "m1"),
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
        let first = bus.subscribe("bob");
        let second = bus.subscribe("bob");
        assert_eq!(bus.active_users(), 1);
        drop(first);
        assert_eq!(bus.active_users(), 1);
        drop(second);
        assert_eq!(bus.active_users(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let bus = InProcessBus::new();
        let mut slow = bus.subscribe("bob");
        for i in 0..CHANNEL_CAPACITY + 5 {
            bus.publish(message(&format!("m{i}"), "bob")).await;
        }
        assert!(matches!(slow.next().await, Some(BusEvent::Lagged)));
    }
}
