//! The bus across server instances: Redis pub/sub feeding each instance's [`Hub`].
//!
//! Each instance keeps one pub/sub connection, subscribed to exactly the topics its local
//! subscribers listen to (the first local subscriber of a topic subscribes it in Redis and
//! waits for Redis to confirm, so "listening has begun" holds across instances; the last one to
//! leave unsubscribes), and publishes through the shared command connection. One task owns the
//! pub/sub connection and applies subscription changes in the order they were asked for
//! ([`subscriber`]). On a Redis Cluster the same happens over sharded pub/sub ([`sharded`]).
//!
//! Redis is never the truth, so its failures cost liveness, not messages:
//! - the pub/sub connection drops (Redis restarts, the network breaks): every local subscriber
//!   hears [`BusEvent::Lagged`] at once, the task reconnects with backoff, re-subscribes every
//!   topic, and then sends every subscriber another `Lagged`: they re-read the store after
//!   listening has resumed, so nothing sent meanwhile is missed;
//! - while it is down, new subscriptions are accepted (they read the store and hear a `Lagged`
//!   when Redis is back) and `/healthz` reports the bus down;
//! - a `PUBLISH` fails: the event goes to this instance's own subscribers directly, and its
//!   topic is remembered; once publishing works again, each remembered topic gets a `Lagged`
//!   on every instance (checked every second), so another instance's subscriber that never lost
//!   its own connection still re-reads the store.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use self::subscriber::{Command, Subscriber};
use super::{
    BusError, BusEvent, BusHealth, BusResult, BusSubscription, MessageBus, Topic,
    hub::{Hub, OnEmpty},
    sessions::SessionWatchers,
    wire,
};
use crate::{
    cluster::Cluster,
    domain::{ChatEvent, Message, SessionId, UserId},
};

mod sharded;
mod subscriber;

/// How often topics whose events could not be published are retried.
const DEBT_RETRY: Duration = Duration::from_secs(1);

/// Live events shared by every instance through Redis.
pub struct RedisBus {
    hub: Hub,
    /// This instance's session watchers, fed from the sessions topic.
    sessions: SessionWatchers,
    /// Whether Redis confirmed the sessions topic.
    sessions_ready: watch::Receiver<bool>,
    commands: mpsc::UnboundedSender<Command>,
    publisher: Arc<Publisher>,
    /// Whether the pub/sub connection is up and subscribed.
    up: Arc<AtomicBool>,
    /// How long a subscription waits for Redis's confirmation.
    timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisBus {
    /// A bus on `cluster`'s Redis. Does not wait for Redis: the subscription connection is
    /// made in the background, and the bus works (degraded, see the module docs) until it is.
    pub fn new(cluster: &Cluster) -> Self {
        let (commands, queue) = mpsc::unbounded_channel();
        let unsubscribe = commands.clone();
        let on_empty: OnEmpty = Arc::new(move |key: &str| {
            let _ = unsubscribe.send(Command::Unsubscribe(key.to_string()));
        });
        let hub = Hub::new(Some(on_empty));
        let up = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber::new(cluster, hub.clone(), up.clone());
        let publisher = Arc::new(Publisher {
            cluster: cluster.clone(),
            hub: hub.clone(),
            debt: Mutex::default(),
            publishing: AtomicBool::new(true),
        });
        // The sessions topic is listened to for the bus's whole life; its events go to the
        // watchers here.
        let sessions = SessionWatchers::default();
        let key = Topic::Sessions.key();
        let listening = hub.listen(&key, Topic::Sessions.capacity(), false);
        let _ = commands.send(Command::Subscribe(key));
        // Always set for a new topic; a bus whose topic is already fed needs no wait.
        let sessions_ready = listening.ready.unwrap_or_else(|| watch::channel(true).1);
        let tasks = vec![
            tokio::spawn(subscriber.run(queue)),
            tokio::spawn(settle_debt_periodically(publisher.clone())),
            tokio::spawn(hand_out_session_endings(listening.subscription, sessions.clone())),
        ];
        RedisBus {
            hub,
            sessions,
            sessions_ready,
            commands,
            publisher,
            up,
            timeout: cluster.timeout,
            tasks,
        }
    }

    async fn listen(&self, topic: Topic<'_>) -> BusResult<BusSubscription> {
        let key = topic.key();
        let listening = self.hub.listen(&key, topic.capacity(), false);
        if listening.created {
            self.commands
                .send(Command::Subscribe(key))
                .map_err(|_| BusError("the Redis subscriber has stopped".into()))?;
        }
        let Some(mut ready) = listening.ready else {
            return Ok(listening.subscription);
        };
        match tokio::time::timeout(self.timeout, ready.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => Ok(listening.subscription),
            _ => Err(BusError("Redis did not confirm the subscription in time".into())),
        }
    }
}

/// Publishes events, and pays off the topics owed a `Lagged` after publishing failed.
struct Publisher {
    /// Publishes through its command connection; its prefix makes channel names.
    cluster: Cluster,
    /// This instance's subscribers, who get an event directly when it cannot be published.
    hub: Hub,
    /// Topics whose events could not be published; each gets a `Lagged` once publishing works.
    debt: Mutex<HashSet<String>>,
    /// Whether publishing works (false from a failure until the settler gets through).
    publishing: AtomicBool,
}

impl Publisher {
    /// Publishes `event` on `key`; on failure delivers it locally and remembers the topic.
    /// While publishing is failing, it is not tried at all (the settler probes every second),
    /// so a send waits for no Redis timeout.
    async fn publish_to(&self, key: String, event: BusEvent) {
        if self.publishing.load(Ordering::SeqCst) {
            if self.publish(&key, wire::encode(&event)).await {
                return;
            }
            if self.publishing.swap(false, Ordering::SeqCst) {
                tracing::warn!("cannot publish to Redis; other instances catch up when it is back");
            }
        }
        self.hub.send(&key, event);
        self.owed().insert(key);
    }

    async fn publish(&self, key: &str, payload: Vec<u8>) -> bool {
        self.cluster.publish(&self.cluster.key(key), &payload).await.is_ok()
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.debt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a `Lagged` to every topic owed one; those that still fail stay owed.
    async fn settle(&self) {
        let owed: Vec<String> = self.owed().drain().collect();
        if owed.is_empty() {
            return;
        }
        // Publishing reopens only once every topic owed a lag has had it, so none is passed by
        // a newer event that would hide the gap.
        let lagged = wire::encode(&BusEvent::Lagged);
        let mut unpaid = Vec::new();
        for key in owed {
            if !unpaid.is_empty() || !self.publish(&key, lagged.clone()).await {
                unpaid.push(key);
            }
        }
        let paid = unpaid.is_empty();
        self.owed().extend(unpaid);
        if paid && !self.publishing.swap(true, Ordering::SeqCst) {
            tracing::info!("publishing to Redis works again; missed topics told to catch up");
        }
    }
}

/// Tells this instance's session watchers what the sessions topic says, until the bus is
/// dropped (which aborts this task).
async fn hand_out_session_endings(mut endings: BusSubscription, sessions: SessionWatchers) {
    while let Some(event) = endings.next().await {
        match event {
            BusEvent::SessionsEnded(ids) => sessions.end(&ids),
            BusEvent::Lagged => sessions.lag_all(),
            BusEvent::SessionEnded | BusEvent::Message(_) | BusEvent::Chat(_) => {}
        }
    }
}

/// Settles the debt every [`DEBT_RETRY`], until the bus is dropped (which aborts this task).
async fn settle_debt_periodically(publisher: Arc<Publisher>) {
    let mut every = tokio::time::interval(DEBT_RETRY);
    loop {
        every.tick().await;
        publisher.settle().await;
    }
}

#[async_trait]
impl MessageBus for RedisBus {
    async fn publish(&self, message: Arc<Message>) {
        let key = Topic::Inbox(&message.recipient_id).key();
        self.publisher.publish_to(key, BusEvent::Message(message)).await;
    }

    async fn publish_event(&self, user_id: &UserId, event: Arc<ChatEvent>) {
        self.publisher.publish_to(Topic::Events(user_id).key(), BusEvent::Chat(event)).await;
    }

    async fn end_sessions(&self, session_ids: &[SessionId]) {
        if session_ids.is_empty() {
            return;
        }
        let ended = BusEvent::SessionsEnded(session_ids.into());
        self.publisher.publish_to(Topic::Sessions.key(), ended).await;
    }

    async fn subscribe(&self, user_id: &UserId) -> BusResult<BusSubscription> {
        self.listen(Topic::Inbox(user_id)).await
    }

    async fn subscribe_events(&self, user_id: &UserId) -> BusResult<BusSubscription> {
        self.listen(Topic::Events(user_id)).await
    }

    async fn watch_session(&self, session_id: &SessionId) -> BusResult<BusSubscription> {
        // Listening has begun once Redis confirmed the sessions topic (subscribed at start).
        let mut ready = self.sessions_ready.clone();
        match tokio::time::timeout(self.timeout, ready.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => Ok(self.sessions.watch(session_id)),
            _ => Err(BusError("Redis did not confirm the sessions topic in time".into())),
        }
    }

    fn health(&self) -> BusHealth {
        let publishing = self.publisher.publishing.load(Ordering::SeqCst);
        BusHealth { kind: "redis", up: self.up.load(Ordering::SeqCst) && publishing }
    }
}
