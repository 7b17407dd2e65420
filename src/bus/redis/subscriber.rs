//! The task that owns this instance's pub/sub connection: it subscribes Redis to the hub's
//! topics, feeds the hub what Redis sends, and after any break reconnects, re-subscribes and
//! tells every subscriber to re-read the store. On a single server this is one `SUBSCRIBE`
//! connection, here; on a Redis Cluster, [`super::sharded`].

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use redis::Client;
use tokio::sync::mpsc;

use super::{super::hub::Hub, sharded, wire};
use crate::{
    bus::BusEvent,
    cluster::{Cluster, Nodes},
};

/// How often the pub/sub connection is pinged; a connection that does not answer within the
/// timeout is treated as lost (a dead peer sends no FIN).
pub(super) const PING_EVERY: Duration = Duration::from_secs(5);
/// First and longest wait between reconnection attempts.
const RECONNECT_DELAYS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// A connection lost within this long of the previous loss is flapping: it is not remade at
/// once.
const FLAPPING_WITHIN: Duration = Duration::from_secs(10);

/// A change to the pub/sub connection's subscriptions; the topic's key.
pub(super) enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// Owns the pub/sub connection.
pub(super) struct Subscriber {
    nodes: Nodes,
    pub(super) hub: Hub,
    prefix: Arc<str>,
    pub(super) up: Arc<AtomicBool>,
    pub(super) timeout: Duration,
    /// Whether subscribers may have missed events since the connection was last up (it was
    /// lost, or subscriptions were accepted while Redis was unreachable).
    missed: AtomicBool,
}

impl Subscriber {
    /// The subscriber for `hub`, on `cluster`'s Redis; `up` tells whether it is subscribed.
    pub(super) fn new(cluster: &Cluster, hub: Hub, up: Arc<AtomicBool>) -> Self {
        Subscriber {
            nodes: cluster.nodes.clone(),
            hub,
            prefix: cluster.prefix.as_str().into(),
            up,
            timeout: cluster.timeout,
            missed: AtomicBool::new(false),
        }
    }

    pub(super) async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut delay = RECONNECT_DELAYS.0;
        let mut last_lost: Option<Instant> = None;
        loop {
            match self.connect_and_serve(&mut commands).await {
                Served::Stopped => return,
                Served::Lost => {
                    if self.up.swap(false, Ordering::SeqCst) {
                        tracing::warn!("lost the Redis subscription connection; reconnecting");
                    }
                    self.missed.store(true, Ordering::SeqCst);
                    self.hub.send_all(BusEvent::Lagged);
                    // Lost again soon after the last loss (a flapping node or network): wait,
                    // longer each time, so subscribers are not sent to the store over and over.
                    let flapping = last_lost.is_some_and(|at| at.elapsed() < FLAPPING_WITHIN);
                    last_lost = Some(Instant::now());
                    if !flapping {
                        delay = RECONNECT_DELAYS.0;
                    } else if self.pause(delay, &mut commands).await {
                        delay = (delay * 2).min(RECONNECT_DELAYS.1);
                    } else {
                        return;
                    }
                }
                Served::Unreachable(error) => {
                    if self.up.swap(false, Ordering::SeqCst) {
                        tracing::warn!(%error, "Redis is unreachable; live events wait for it");
                    }
                    self.missed.store(true, Ordering::SeqCst);
                    if !self.pause(delay, &mut commands).await {
                        return;
                    }
                    delay = (delay * 2).min(RECONNECT_DELAYS.1);
                }
            }
        }
    }

    /// Waits `delay` before the next attempt, degraded: subscriptions are accepted meanwhile and
    /// told to re-read later. False if the bus stopped.
    async fn pause(
        &self,
        delay: Duration,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        self.hub.mark_all_ready();
        let pause = tokio::time::sleep(delay);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => return true,
                command = commands.recv() => match command {
                    None => return false,
                    Some(_) => self.hub.mark_all_ready(),
                },
            }
        }
    }

    async fn connect_and_serve(&self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Served {
        match &self.nodes {
            Nodes::Single(client) => self.serve(client, commands).await,
            Nodes::Sharded(client) => sharded::serve(self, client, commands).await,
        }
    }

    /// Listening has begun on every topic in `keys` (the hub's topics when the connection was
    /// made): marks them ready, and after a break tells every subscriber to re-read the store.
    pub(super) fn subscribed(&self, keys: &[String]) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!("subscribed to Redis; live events flow between instances");
        }
        // Only the topics just subscribed: one created since `keys` was read is not listened
        // to yet; its queued command subscribes it and marks it then.
        for key in keys {
            self.hub.mark_ready(key);
        }
        if self.missed.swap(false, Ordering::SeqCst) {
            self.hub.send_all(BusEvent::Lagged);
        }
    }

    /// Serves a connection to a single server.
    async fn serve(
        &self,
        client: &Client,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Served {
        let pubsub = match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
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
        self.subscribed(&keys);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(first) = command else { return Served::Stopped };
                    let (wanted, unwanted) = self.changes(first, commands);
                    if !self.apply(&mut sink, wanted, unwanted).await {
                        return Served::Lost;
                    }
                }
                message = stream.next() => match message {
                    Some(message) => {
                        if let Some(key) = self.key(message.get_channel_name()) {
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

    /// The keys `first` and every other queued command name, split into those the hub still
    /// has (to subscribe) and those it has not (to unsubscribe): the hub decides, so a topic
    /// unsubscribed and subscribed again stays subscribed.
    pub(super) fn changes(
        &self,
        first: Command,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> (Vec<String>, Vec<String>) {
        let mut wanted = Vec::new();
        let mut unwanted = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(first);
        while let Some(command) = next.take().or_else(|| commands.try_recv().ok()) {
            let (Command::Subscribe(key) | Command::Unsubscribe(key)) = command;
            if seen.insert(key.clone()) {
                if self.hub.contains(&key) { wanted.push(key) } else { unwanted.push(key) }
            }
        }
        (wanted, unwanted)
    }

    /// Brings Redis in line with the hub for `wanted` and `unwanted` keys. Returns false if
    /// the connection failed.
    async fn apply(
        &self,
        sink: &mut redis::aio::PubSubSink,
        wanted: Vec<String>,
        unwanted: Vec<String>,
    ) -> bool {
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

    pub(super) fn channels(&self, keys: &[String]) -> Vec<String> {
        keys.iter().map(|key| format!("{}{key}", self.prefix)).collect()
    }

    /// The topic key of Redis channel `channel`, if it is one of this deployment's.
    pub(super) fn key<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&*self.prefix)
    }
}

/// How a pub/sub connection ended.
pub(super) enum Served {
    /// The bus was dropped.
    Stopped,
    /// It was up and broke.
    Lost,
    /// It could not be made.
    Unreachable(String),
}
