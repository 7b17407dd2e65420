//! The bus across server instances: Redis pub/sub feeding each instance's [`Hub`].
//!
//! Each instance keeps one pub/sub connection, subscribed to exactly the topics its local
//! subscribers listen to (the first local subscriber of a topic subscribes it in Redis and
//! waits for Redis to confirm, so "listening has begun" holds across instances; the last one to
//! leave unsubscribes), and one connection for `PUBLISH`. One task owns the pub/sub connection
//! and applies subscription changes in the order they were asked for.
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
use redis::{AsyncCommands, Client, aio::ConnectionManager};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

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

/// How often the pub/sub connection is pinged; a connection that does not answer within the
/// timeout is treated as lost (a dead peer sends no FIN).
const PING_EVERY: Duration = Duration::from_secs(5);
/// First and longest wait between reconnection attempts.
const RECONNECT_DELAYS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How often topics whose events could not be published are retried.
const DEBT_RETRY: Duration = Duration::from_secs(1);

/// A change to the pub/sub connection's subscriptions; the topic's key.
enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

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
        let prefix: Arc<str> = cluster.prefix.as_str().into();
        let up = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            client: cluster.client.clone(),
            hub: hub.clone(),
            prefix: prefix.clone(),
            up: up.clone(),
            timeout: cluster.timeout,
            missed: AtomicBool::new(false),
        };
        let publisher = Arc::new(Publisher {
            connection: cluster.connection.clone(),
            hub: hub.clone(),
            prefix,
            timeout: cluster.timeout,
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
    connection: ConnectionManager,
    /// This instance's subscribers, who get an event directly when it cannot be published.
    hub: Hub,
    /// Put before every topic key to make a Redis channel name (`REDIS_CHANNEL_PREFIX`).
    prefix: Arc<str>,
    timeout: Duration,
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
        let mut connection = self.connection.clone();
        let published = connection.publish::<_, _, i64>(channel(&self.prefix, key), payload);
        matches!(tokio::time::timeout(self.timeout, published).await, Ok(Ok(_)))
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

/// Owns the pub/sub connection.
struct Subscriber {
    client: Client,
    hub: Hub,
    prefix: Arc<str>,
    up: Arc<AtomicBool>,
    timeout: Duration,
    /// Whether subscribers may have missed events since the connection was last up (it was
    /// lost, or subscriptions were accepted while Redis was unreachable).
    missed: AtomicBool,
}

impl Subscriber {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut delay = RECONNECT_DELAYS.0;
        loop {
            match self.connect_and_serve(&mut commands).await {
                Served::Stopped => return,
                Served::Lost => {
                    delay = RECONNECT_DELAYS.0;
                    if self.up.swap(false, Ordering::SeqCst) {
                        tracing::warn!("lost the Redis subscription connection; reconnecting");
                    }
                    self.missed.store(true, Ordering::SeqCst);
                    self.hub.send_all(BusEvent::Lagged);
                }
                Served::Unreachable(error) => {
                    if self.up.swap(false, Ordering::SeqCst) {
                        tracing::warn!(%error, "Redis is unreachable; live events wait for it");
                    }
                    // Degraded: subscriptions are accepted now and told to re-read later.
                    self.missed.store(true, Ordering::SeqCst);
                    self.hub.mark_all_ready();
                    let pause = tokio::time::sleep(delay);
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            () = &mut pause => break,
                            command = commands.recv() => match command {
                                None => return,
                                Some(_) => self.hub.mark_all_ready(),
                            },
                        }
                    }
                    delay = (delay * 2).min(RECONNECT_DELAYS.1);
                }
            }
        }
    }

    async fn connect_and_serve(&self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Served {
        let pubsub = match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await
        {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => return Served::Unreachable(error.to_string()),
            Err(_) => return Served::Unreachable("connection timed out".into()),
        };
        let (mut sink, mut stream) = pubsub.split();
        let keys = self.hub.keys();
        if !keys.is_empty() {
            match tokio::time::timeout(self.timeout, sink.subscribe(self.channels(&keys))).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Served::Unreachable(error.to_string()),
                Err(_) => return Served::Unreachable("subscribing timed out".into()),
            }
        }
        // Listening to every topic again: whatever was published while we were not, the
        // subscribers find in the store.
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!("subscribed to Redis; live events flow between instances");
        }
        // Only the topics just subscribed: one created since `keys` was read is not listened
        // to yet; its queued command subscribes it and marks it then.
        for key in &keys {
            self.hub.mark_ready(key);
        }
        if self.missed.swap(false, Ordering::SeqCst) {
            self.hub.send_all(BusEvent::Lagged);
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(first) = command else { return Served::Stopped };
                    let mut keys = vec![first];
                    while let Ok(command) = commands.try_recv() {
                        keys.push(command);
                    }
                    if !self.apply(&mut sink, keys).await {
                        return Served::Lost;
                    }
                }
                message = stream.next() => match message {
                    Some(message) => {
                        let channel = message.get_channel_name();
                        if let Some(key) = channel.strip_prefix(&*self.prefix) {
                            self.hub.send(key, wire::decode(message.get_payload_bytes()));
                        }
                    }
                    None => return Served::Lost,
                },
                _ = ping.tick() => {
                    // In subscribed mode Redis answers a PING with ["pong", ""], not "PONG": any answer will do.
                    let pong = sink.ping::<redis::Value>();
                    if !matches!(tokio::time::timeout(self.timeout, pong).await, Ok(Ok(_))) {
                        return Served::Lost;
                    }
                }
            }
        }
    }

    /// Brings Redis in line with the hub for every key the commands name (the hub decides:
    /// a topic unsubscribed and subscribed again stays subscribed). Returns false if the
    /// connection failed.
    async fn apply(&self, sink: &mut redis::aio::PubSubSink, commands: Vec<Command>) -> bool {
        let mut wanted = Vec::new();
        let mut unwanted = Vec::new();
        let mut seen = HashSet::new();
        for command in commands {
            let (Command::Subscribe(key) | Command::Unsubscribe(key)) = command;
            if seen.insert(key.clone()) {
                if self.hub.contains(&key) { wanted.push(key) } else { unwanted.push(key) }
            }
        }
        let timeout = self.timeout;
        if !unwanted.is_empty() {
            let channels = self.channels(&unwanted);
            if !matches!(
                tokio::time::timeout(timeout, sink.unsubscribe(channels)).await,
                Ok(Ok(()))
            ) {
                return false;
            }
        }
        if !wanted.is_empty() {
            let channels = self.channels(&wanted);
            if !matches!(tokio::time::timeout(timeout, sink.subscribe(channels)).await, Ok(Ok(())))
            {
                return false;
            }
            for key in &wanted {
                self.hub.mark_ready(key);
            }
        }
        true
    }

    fn channels(&self, keys: &[String]) -> Vec<String> {
        keys.iter().map(|key| channel(&self.prefix, key)).collect()
    }
}

/// The Redis channel of topic `key`.
fn channel(prefix: &str, key: &str) -> String {
    format!("{prefix}{key}")
}

/// How a pub/sub connection ended.
enum Served {
    /// The bus was dropped.
    Stopped,
    /// It was up and broke.
    Lost,
    /// It could not be made.
    Unreachable(String),
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
