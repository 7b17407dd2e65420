//! The pub/sub connection on a Redis Cluster: sharded pub/sub, one channel per topic, each
//! subscribed (`SSUBSCRIBE`) on the node that owns its slot, so an event is handled by one
//! shard instead of being copied to every node as plain `PUBLISH` is.
//!
//! The cluster connection would re-subscribe by itself after a node reconnects or a slot
//! moves, but events published in between are gone and it cannot say which topics they were
//! on. So any sign of a break ends the connection as lost: a node's connection closing, the
//! server dropping a channel we still want (it does when the channel's slot moves to another
//! node), an unanswered ping to any primary. The subscriber then does what it does on a single
//! server: every subscriber hears `Lagged`, a new connection subscribes every topic, and every
//! subscriber hears `Lagged` again, re-reading the store once listening has resumed.

use std::collections::HashMap;

use futures::{StreamExt, stream};
use redis::{
    PushInfo, PushKind, Value,
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
};
use tokio::sync::mpsc;

use super::{
    subscriber::{Command, PING_EVERY, Served, Subscriber},
    wire,
};

/// Subscription changes in flight at once (each is a round trip to its channel's node).
const CONCURRENT_CHANGES: usize = 64;

/// Which way a change goes.
#[derive(Clone, Copy)]
enum Change {
    Subscribe,
    Unsubscribe,
}

/// Serves one cluster connection for `subscriber` until it breaks or the bus stops.
pub(super) async fn serve(
    subscriber: &Subscriber,
    client: &ClusterClient,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Served {
    let timeout = subscriber.timeout;
    let (pushes_to, mut pushes) = mpsc::unbounded_channel();
    let config = ClusterConfig::new()
        .set_push_sender(pushes_to)
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    let connect = client.get_async_connection_with_config(config);
    let mut connection = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return Served::Unreachable(error.to_string()),
        Err(_) => return Served::Unreachable("connection timed out".into()),
    };
    let mut session = Session { subscriber, ours: HashMap::new() };
    let keys = subscriber.hub.keys();
    if let Err(error) = session.change(&connection, &keys, Change::Subscribe).await {
        return Served::Unreachable(error);
    }
    subscriber.subscribed(&keys);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(first) = command else { return Served::Stopped };
                let (wanted, unwanted) = subscriber.changes(first, commands);
                if session.change(&connection, &unwanted, Change::Unsubscribe).await.is_err()
                    || session.change(&connection, &wanted, Change::Subscribe).await.is_err()
                {
                    return Served::Lost;
                }
                for key in &wanted {
                    subscriber.hub.mark_ready(key);
                }
            }
            push = pushes.recv() => {
                if !push.is_some_and(|push| session.take(push)) {
                    return Served::Lost;
                }
            }
            _ = ping.tick() => {
                // Routed to every primary: each node holding subscriptions must answer.
                let ping_all = redis::cmd("PING");
                let pong = ping_all.query_async::<Value>(&mut connection);
                if !matches!(tokio::time::timeout(timeout, pong).await, Ok(Ok(_))) {
                    return Served::Lost;
                }
            }
        }
    }
}

/// One connection's state.
struct Session<'a> {
    subscriber: &'a Subscriber,
    /// Unsubscriptions this connection asked for whose confirmation has not been seen, by
    /// channel: any other `SUNSUBSCRIBE` the server sends is a channel taken from us.
    ours: HashMap<String, usize>,
}

impl Session<'_> {
    /// Subscribes or unsubscribes the channels of `keys`, each on its own node, several at
    /// once; each returns once the server confirmed it.
    async fn change(
        &mut self,
        connection: &ClusterConnection,
        keys: &[String],
        change: Change,
    ) -> Result<(), String> {
        let channels = self.subscriber.channels(keys);
        if let Change::Unsubscribe = change {
            for channel in &channels {
                *self.ours.entry(channel.clone()).or_default() += 1;
            }
        }
        let timeout = self.subscriber.timeout;
        let mut changes = stream::iter(channels)
            .map(|channel| {
                let mut connection = connection.clone();
                async move {
                    let request = async {
                        match change {
                            Change::Subscribe => connection.ssubscribe(&channel).await,
                            Change::Unsubscribe => connection.sunsubscribe(&channel).await,
                        }
                    };
                    match tokio::time::timeout(timeout, request).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err(format!("{channel}: no confirmation within {timeout:?}")),
                    }
                }
            })
            .buffer_unordered(CONCURRENT_CHANGES);
        while let Some(changed) = changes.next().await {
            changed?;
        }
        Ok(())
    }

    /// Feeds the hub one push; false if it says events may have been missed.
    fn take(&mut self, push: PushInfo) -> bool {
        let channel = match push.data.first() {
            Some(Value::BulkString(name)) => std::str::from_utf8(name).ok(),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage => {
                if let (Some(key), Some(Value::BulkString(payload))) =
                    (channel.and_then(|channel| self.subscriber.key(channel)), push.data.get(1))
                {
                    self.subscriber.hub.send(key, wire::decode(payload));
                }
                true
            }
            PushKind::Disconnection => false,
            PushKind::SUnsubscribe => {
                let Some(channel) = channel else { return true };
                match self.ours.get_mut(channel) {
                    Some(count) => {
                        *count -= 1;
                        if *count == 0 {
                            self.ours.remove(channel);
                        }
                        true
                    }
                    None => !self
                        .subscriber
                        .key(channel)
                        .is_some_and(|key| self.subscriber.hub.contains(key)),
                }
            }
            _ => true,
        }
    }
}
