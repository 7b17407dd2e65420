//! The local half of every bus: one [`Fanout`] per topic that has subscribers in this
//! process. [`InProcessBus`](super::InProcessBus) is a hub alone; the Redis bus feeds a hub
//! from Redis and keeps its Redis subscriptions to the hub's topics.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::Stream;
use tokio::sync::watch;

use super::{BusEvent, BusSubscription, fanout::Fanout};

/// Called with a topic's key when its last local subscriber has gone.
pub type OnEmpty = Arc<dyn Fn(&str) + Send + Sync>;

/// A topic with local subscribers.
struct Entry {
    fanout: Arc<Fanout>,
    /// Set while events published elsewhere do not reach `sender` yet (with Redis, until it
    /// confirmed the subscription); turns true, then goes. `None` for a fed topic: a watch
    /// channel is some 400 bytes, and idle connections hold two topics each.
    ready: Option<watch::Sender<bool>>,
}

impl Entry {
    /// Tells whoever waits that the topic is fed; later subscribers need not wait.
    fn mark_ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            ready.send_replace(true);
        }
    }
}

/// Keyed by shared text: each subscription's cleanup holds the same key rather than a copy.
type Entries = Arc<Mutex<HashMap<Arc<str>, Entry>>>;

/// Topics by key (`inbox:<user>`, `events:<user>`, `sessions`). A std mutex: held only for
/// map operations, never across an `.await`. An entry goes when its last subscriber does.
#[derive(Clone)]
pub struct Hub {
    entries: Entries,
    on_empty: Option<OnEmpty>,
}

/// A new local subscription, and how to wait until it hears everything published.
pub struct Listening {
    /// The subscriber's stream.
    pub subscription: BusSubscription,
    /// Becomes true once the topic is fed; `None` if it already is.
    pub ready: Option<watch::Receiver<bool>>,
    /// Whether this subscription created the topic (the first local subscriber).
    pub created: bool,
}

impl Hub {
    /// An empty hub; `on_empty` hears of every topic whose last subscriber left.
    pub fn new(on_empty: Option<OnEmpty>) -> Self {
        Hub { entries: Arc::default(), on_empty }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to `key`, creating the topic (not yet ready unless `ready`) if needed.
    pub fn listen(&self, key: &str, capacity: usize, ready: bool) -> Listening {
        let (key, fanout, reader, ready, created) = {
            let mut entries = self.entries();
            let existing = entries.get_key_value(key).map(|(key, _)| key.clone());
            let created = existing.is_none();
            let key = existing.unwrap_or_else(|| Arc::from(key));
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                fanout: Fanout::new(capacity),
                ready: (!ready).then(|| watch::channel(false).0),
            });
            let ready = entry.ready.as_ref().map(watch::Sender::subscribe);
            (key, entry.fanout.clone(), entry.fanout.join(), ready, created)
        };
        let subscription = Box::pin(HubSubscription {
            fanout,
            reader,
            _cleanup: Cleanup { hub: self.clone(), key },
        });
        Listening { subscription, ready, created }
    }

    /// Hands `event` to `key`'s local subscribers, if any.
    pub fn send(&self, key: &str, event: BusEvent) {
        if let Some(entry) = self.entries().get(key) {
            entry.fanout.send(event);
        }
    }

    /// Hands `event` to every topic's subscribers (a [`BusEvent::Lagged`] after events may
    /// have been missed).
    pub fn send_all(&self, event: BusEvent) {
        for entry in self.entries().values() {
            entry.fanout.send(event.clone());
        }
    }

    /// Every topic with local subscribers.
    pub fn keys(&self) -> Vec<String> {
        self.entries().keys().map(|key| key.to_string()).collect()
    }

    /// Whether `key` has local subscribers.
    pub fn contains(&self, key: &str) -> bool {
        self.entries().contains_key(key)
    }

    /// Marks `key` as fed.
    pub fn mark_ready(&self, key: &str) {
        if let Some(entry) = self.entries().get_mut(key) {
            entry.mark_ready();
        }
    }

    /// Marks every topic as fed.
    pub fn mark_all_ready(&self) {
        for entry in self.entries().values_mut() {
            entry.mark_ready();
        }
    }

    /// Number of topics with local subscribers.
    pub fn topic_count(&self) -> usize {
        self.entries().len()
    }

    fn release(&self, key: &str) {
        let removed = {
            let mut entries = self.entries();
            let empty = entries.get(key).is_some_and(|entry| entry.fanout.readers() == 0);
            empty && entries.remove(key).is_some()
        };
        if removed && let Some(on_empty) = &self.on_empty {
            on_empty(key);
        }
    }
}

/// One subscriber's end of a topic.
struct HubSubscription {
    fanout: Arc<Fanout>,
    /// This subscriber's place among the topic's readers.
    reader: u64,
    /// Dropped after [`HubSubscription`]'s own `drop` has left the topic, so it counts readers
    /// without this one.
    _cleanup: Cleanup,
}

impl Drop for HubSubscription {
    fn drop(&mut self) {
        self.fanout.leave(self.reader);
    }
}

impl Stream for HubSubscription {
    type Item = BusEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        // Each event spends the task's tokio budget, as tokio's own channels do: a subscriber
        // that always has an event ready still yields now and then. So "not ready" does not
        // mean "nothing buffered" (delivery asks that unconstrained).
        let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let event = std::task::ready!(self.fanout.poll(self.reader, cx));
        budget.made_progress();
        Poll::Ready(Some(event))
    }
}

/// Removes a topic once its last subscriber has gone, so the map does not grow with every
/// user who ever connected.
struct Cleanup {
    hub: Hub,
    key: Arc<str>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.hub.release(&self.key);
    }
}
