//! The bus contract: what delivery relies on from any [`MessageBus`], checked against the
//! in-process bus and the Redis bus. Each test gets two "instances" of one deployment: for the
//! in-process bus, the same bus twice; for Redis, two buses on one Redis under a fresh channel
//! prefix, as two servers would be.
//!
//! The Redis tests use `TEST_REDIS_URL`, or start their own `redis-server`; without either they
//! print a notice and pass without running. Tests that restart Redis need their own server.
//! The Redis Cluster tests (sharded pub/sub) do the same with `TEST_REDIS_CLUSTER_URL` or three
//! private cluster nodes.

use std::{sync::Arc, time::Duration};

use chatapp::{
    bus::{
        BusEvent, BusSubscription, INBOX_CAPACITY, InProcessBus, MessageBus, Topic, redis::RedisBus,
    },
    cluster::Cluster,
    config::RedisConfig,
    domain::{ChatEvent, Message, MessageContent, MessageId, SessionId, UserId},
    secret::Secret,
};
use chrono::Utc;
use futures::StreamExt;

#[path = "../support/redis.rs"]
mod redis_server;

use redis_server::RedisServer;

/// How long a test waits for anything a bus should deliver.
const PATIENCE: Duration = Duration::from_secs(10);

/// Two instances of one deployment's bus.
type Pair = (Arc<dyn MessageBus>, Arc<dyn MessageBus>);

macro_rules! bus_tests {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    let bus: std::sync::Arc<dyn super::MessageBus> =
                        std::sync::Arc::new(super::InProcessBus::new());
                    super::$name((bus.clone(), bus)).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(server) = super::RedisServer::start(stringify!($name)) else { return };
                    let prefix = super::fresh_prefix();
                    let pair = (super::redis_bus(&server, &prefix), super::redis_bus(&server, &prefix));
                    super::$name(pair).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(server) = super::RedisServer::start_cluster(stringify!($name)) else {
                        return;
                    };
                    let prefix = super::fresh_prefix();
                    let pair = (super::redis_bus(&server, &prefix), super::redis_bus(&server, &prefix));
                    super::$name(pair).await;
                }
            )*
        }
    };
}

bus_tests!(
    every_subscription_of_the_recipient_hears_a_message_and_no_one_else,
    events_reach_every_connection_of_their_user,
    ending_a_session_reaches_only_its_watchers,
    listening_has_begun_when_subscribe_returns_even_for_concurrent_first_subscribers,
    a_slow_subscriber_is_told_it_lagged,
);

fn fresh_prefix() -> String {
    format!("test{}:", uuid::Uuid::new_v4().simple())
}

fn redis_config(server: &RedisServer, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: Secret::new(server.url().to_string()),
        cluster: server.is_cluster(),
        channel_prefix: prefix.to_string(),
        timeout: Duration::from_secs(2),
        ca_cert: None,
        instance_ttl: Duration::from_secs(30),
    }
}

fn redis_bus(server: &RedisServer, prefix: &str) -> Arc<dyn MessageBus> {
    Arc::new(connect(&redis_config(server, prefix)))
}

/// One instance's bus on the Redis of `config`.
fn connect(config: &RedisConfig) -> RedisBus {
    RedisBus::new(&Cluster::connect(config).expect("a usable REDIS_URL"))
}

fn message(id: &str, recipient: &str) -> Arc<Message> {
    Arc::new(Message {
        id: MessageId::new(id),
        seq: 1,
        sender_id: UserId::new("sender"),
        recipient_id: UserId::new(recipient),
        content: MessageContent::from_stored(format!("content of {id}")),
        client_message_id: None,
        sent_at: Utc::now(),
        delivered_at: None,
        read_at: None,
    })
}

async fn next(subscription: &mut BusSubscription) -> BusEvent {
    tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("an event in time")
        .expect("the subscription is open")
}

/// The next event that is not a lag (a bus may report a lag at any time; it is never wrong).
async fn next_event(subscription: &mut BusSubscription) -> BusEvent {
    loop {
        match next(subscription).await {
            BusEvent::Lagged => continue,
            event => return event,
        }
    }
}

async fn next_message_id(subscription: &mut BusSubscription) -> String {
    match next_event(subscription).await {
        BusEvent::Message(message) => message.id.as_str().to_string(),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn every_subscription_of_the_recipient_hears_a_message_and_no_one_else((a, b): Pair) {
    let bob = UserId::new("bob");
    let carol = UserId::new("carol");
    let mut first = b.subscribe(&bob).await.unwrap();
    let mut second = a.subscribe(&bob).await.unwrap();
    let mut carols = b.subscribe(&carol).await.unwrap();
    a.publish(message("m1", "bob")).await;
    // Carol's own message follows Bob's from the same publisher: if Bob's reached her, she
    // would hear it first.
    a.publish(message("m2", "carol")).await;
    assert_eq!(next_message_id(&mut first).await, "m1");
    assert_eq!(next_message_id(&mut second).await, "m1");
    assert_eq!(next_message_id(&mut carols).await, "m2", "carol hears only her own");
}

async fn events_reach_every_connection_of_their_user((a, b): Pair) {
    let alice = UserId::new("alice");
    let mut phone = a.subscribe_events(&alice).await.unwrap();
    let mut laptop = b.subscribe_events(&alice).await.unwrap();
    let typing = ChatEvent::TypingChanged { from: UserId::new("bob"), typing: true };
    a.publish_event(&alice, Arc::new(typing.clone())).await;
    for subscription in [&mut phone, &mut laptop] {
        match next_event(subscription).await {
            BusEvent::Chat(event) => assert_eq!(*event, typing),
            other => panic!("expected the typing event, got {other:?}"),
        }
    }
}

async fn ending_a_session_reaches_only_its_watchers((a, b): Pair) {
    let mut ended = b.watch_session(&SessionId::new("s1")).await.unwrap();
    let mut other = b.watch_session(&SessionId::new("s2")).await.unwrap();
    a.end_sessions(&[SessionId::new("s1")]).await;
    assert!(matches!(next_event(&mut ended).await, BusEvent::SessionEnded));
    a.end_sessions(&[SessionId::new("s2")]).await;
    assert!(matches!(next_event(&mut other).await, BusEvent::SessionEnded), "its own end only");
}

async fn listening_has_begun_when_subscribe_returns_even_for_concurrent_first_subscribers(
    (a, b): Pair,
) {
    let dave = UserId::new("dave");
    let subscribing = (0..20).map(|_| {
        let (b, dave) = (b.clone(), dave.clone());
        tokio::spawn(async move { b.subscribe(&dave).await.unwrap() })
    });
    let mut subscriptions = Vec::new();
    for subscribed in futures::future::join_all(subscribing).await {
        subscriptions.push(subscribed.unwrap());
    }
    // Published by the other instance the moment every subscribe returned.
    a.publish(message("m1", "dave")).await;
    for subscription in &mut subscriptions {
        assert_eq!(next_message_id(subscription).await, "m1");
    }
}

async fn a_slow_subscriber_is_told_it_lagged((a, b): Pair) {
    let erin = UserId::new("erin");
    let mut slow = b.subscribe(&erin).await.unwrap();
    let mut keeping_up = b.subscribe(&erin).await.unwrap();
    let count = INBOX_CAPACITY * 4;
    for i in 0..count {
        a.publish(message(&format!("m{i}"), "erin")).await;
        assert_eq!(next_message_id(&mut keeping_up).await, format!("m{i}"));
    }
    let mut lagged = false;
    let mut heard = 0;
    while heard < INBOX_CAPACITY && !lagged {
        match next(&mut slow).await {
            BusEvent::Lagged => lagged = true,
            _ => heard += 1,
        }
    }
    assert!(lagged, "a subscriber that fell {count} events behind must hear Lagged");
}

/// Redis only: a restart of Redis under open subscriptions. Each subscriber hears a lag when
/// the connection goes and another once it is subscribed again (so it re-reads the store after
/// listening resumed), then live events flow again. A publish while Redis is down still
/// reaches the publishing instance's own subscribers, and the other instance's subscribers
/// hear a lag once publishing works again.
#[tokio::test]
async fn redis_restarts_cost_lags_never_silence() {
    restarts_cost_lags_never_silence(RedisServer::start("redis_restarts_cost_lags")).await;
}

/// The same when every node of a Redis Cluster restarts.
#[tokio::test]
async fn redis_cluster_restarts_cost_lags_never_silence() {
    restarts_cost_lags_never_silence(RedisServer::start_cluster("redis_cluster_restarts")).await;
}

async fn restarts_cost_lags_never_silence(server: Option<RedisServer>) {
    let Some(mut server) = server else { return };
    if !server.is_owned() {
        eprintln!("NOTICE: restart test skipped: TEST_REDIS_URL's server cannot be restarted here");
        return;
    }
    let prefix = fresh_prefix();
    let config = redis_config(&server, &prefix);
    let a = connect(&config);
    let b = connect(&config);
    let bob = UserId::new("bob");
    let mut on_a = a.subscribe(&bob).await.unwrap();
    let mut on_b = b.subscribe(&bob).await.unwrap();
    let mut session_on_b = b.watch_session(&SessionId::new("s1")).await.unwrap();
    wait_until("both buses report up", || a.health().up && b.health().up).await;
    a.publish(message("before", "bob")).await;
    assert_eq!(next_message_id(&mut on_b).await, "before");
    assert_eq!(next_message_id(&mut on_a).await, "before");

    server.stop();
    assert!(matches!(next(&mut on_b).await, BusEvent::Lagged), "the loss is a lag");
    // A logout may be missed too: the session watch is told to ask the store.
    assert!(matches!(next(&mut session_on_b).await, BusEvent::Lagged), "for sessions too");
    wait_until("the buses report down", || !a.health().up && !b.health().up).await;
    // Sent while Redis is down: the sender's own instance delivers it.
    a.publish(message("during", "bob")).await;
    loop {
        match next(&mut on_a).await {
            BusEvent::Message(message) if message.id.as_str() == "during" => break,
            BusEvent::Lagged => continue,
            other => panic!("unexpected {other:?}"),
        }
    }

    server.restart();
    wait_until("both buses report up again", || a.health().up && b.health().up).await;
    // B heard a lag after resubscribing (and one from A's settled debt): it re-reads the store,
    // where "during" is. Then live events flow again, both ways.
    b.publish(message("after", "bob")).await;
    let mut lagged = false;
    loop {
        match next(&mut on_b).await {
            BusEvent::Lagged => lagged = true,
            BusEvent::Message(message) if message.id.as_str() == "after" => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(lagged, "B must be told to re-read what it missed");
    assert_eq!(next_message_id(&mut on_a).await, "after");
}

/// Redis only: a new subscription while Redis is down is accepted (it can replay the store),
/// and hears a lag once Redis is back, then live events.
#[tokio::test]
async fn subscribing_while_redis_is_down_works_once_it_is_back() {
    subscribing_while_down_works_once_it_is_back(RedisServer::start("subscribing_while_down"))
        .await;
}

#[tokio::test]
async fn subscribing_while_a_redis_cluster_is_down_works_once_it_is_back() {
    let server = RedisServer::start_cluster("subscribing_while_cluster_down");
    subscribing_while_down_works_once_it_is_back(server).await;
}

async fn subscribing_while_down_works_once_it_is_back(server: Option<RedisServer>) {
    let Some(mut server) = server else { return };
    if !server.is_owned() {
        return;
    }
    let config = redis_config(&server, &fresh_prefix());
    let a = connect(&config);
    let b = connect(&config);
    wait_until("b is up", || b.health().up).await;
    server.stop();
    wait_until("b sees Redis down", || !b.health().up).await;
    let mut late = b.subscribe(&UserId::new("frank")).await.expect("accepted while down");
    server.restart();
    assert!(matches!(next(&mut late).await, BusEvent::Lagged), "told to re-read on return");
    wait_until("a is up", || a.health().up).await;
    a.publish(message("m1", "frank")).await;
    assert_eq!(next_message_id(&mut late).await, "m1");
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Redis only: a quiet subscription outlives the keep-alive pings without a lag. (Before: the
/// reply to a PING in subscribed mode failed to parse, every ping counted as a lost connection,
/// and every subscriber re-read the store every five seconds.)
#[tokio::test]
async fn quiet_subscriptions_survive_keepalive_pings() {
    quiet_subscriptions_survive_pings(RedisServer::start("quiet_subscriptions")).await;
}

/// The same on a Redis Cluster, whose pings go to every primary over the RESP3 connection.
#[tokio::test]
async fn quiet_subscriptions_on_a_redis_cluster_survive_keepalive_pings() {
    quiet_subscriptions_survive_pings(RedisServer::start_cluster("quiet_cluster_subscriptions"))
        .await;
}

async fn quiet_subscriptions_survive_pings(server: Option<RedisServer>) {
    let Some(server) = server else { return };
    let config = redis_config(&server, &fresh_prefix());
    let (a, b) = (connect(&config), connect(&config));
    let mut quiet = b.subscribe(&UserId::new("gina")).await.unwrap();
    wait_until("b is up", || b.health().up).await;
    // Past the first keep-alive ping (every 5 s), with one second to spare.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(b.health().up);
    a.publish(message("m1", "gina")).await;
    match next(&mut quiet).await {
        BusEvent::Message(message) => assert_eq!(message.id.as_str(), "m1"),
        other => panic!("the first event after a quiet spell must be the message: {other:?}"),
    }
}

/// Redis over TLS (`rediss://`): with the server's certificate authority in `REDIS_CA_CERT`
/// the bus works; without it the certificate is refused (the bundled public roots do not
/// include this private CA), so nothing is sent to an unverified server and the bus says down.
#[tokio::test]
async fn redis_over_tls_checks_the_servers_certificate() {
    let Some((server, ca, _dir)) = RedisServer::start_tls("redis_over_tls") else { return };
    let trusted = RedisConfig { ca_cert: Some(ca), ..redis_config(&server, &fresh_prefix()) };
    let (a, b) = (connect(&trusted), connect(&trusted));
    let mut on_b = b.subscribe(&UserId::new("hana")).await.unwrap();
    wait_until("b is up over TLS", || b.health().up).await;
    a.publish(message("m1", "hana")).await;
    assert_eq!(next_message_id(&mut on_b).await, "m1");

    let untrusted = connect(&redis_config(&server, &fresh_prefix()));
    let _subscription = untrusted.subscribe(&UserId::new("ivan")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!untrusted.health().up, "connected to a server whose certificate nobody trusts");
}

/// Redis Cluster only: when the slot of a subscribed channel moves to another node (as in a
/// resharding), the old owner drops the subscription. The subscriber hears a lag (it re-reads
/// the store) and live events flow again, from the new owner.
#[tokio::test]
async fn a_moved_slot_costs_a_lag_never_silence() {
    let Some(server) = RedisServer::start_cluster("a_moved_slot") else { return };
    if !server.is_owned() {
        eprintln!("NOTICE: slot test skipped: TEST_REDIS_CLUSTER_URL's slots are not moved here");
        return;
    }
    let prefix = fresh_prefix();
    let config = redis_config(&server, &prefix);
    let (a, b) = (connect(&config), connect(&config));
    let bob = UserId::new("bob");
    let mut on_b = b.subscribe(&bob).await.unwrap();
    wait_until("both buses report up", || a.health().up && b.health().up).await;
    a.publish(message("before", "bob")).await;
    assert_eq!(next_message_id(&mut on_b).await, "before");

    let channel = format!("{prefix}{}", Topic::Inbox(&bob).key());
    move_slot_of(&server.ports(), &channel);
    assert!(matches!(next(&mut on_b).await, BusEvent::Lagged), "the dropped channel is a lag");
    wait_until("both buses report up", || a.health().up && b.health().up).await;
    a.publish(message("after", "bob")).await;
    assert_eq!(next_message_id(&mut on_b).await, "after");
}

/// Moves the slot of `key` from its owner to another of the nodes on `ports`, as a resharding
/// does (the slot holds no keys here, so there is nothing to migrate).
fn move_slot_of(ports: &[u16], key: &str) {
    let cli = |port: u16, args: &[&str]| -> String {
        let output = std::process::Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let slot: u16 = cli(ports[0], &["cluster", "keyslot", key]).parse().unwrap();
    let owns = |port: u16| {
        let nodes = cli(port, &["cluster", "nodes"]);
        let mine = nodes.lines().find(|line| line.contains("myself")).unwrap().to_string();
        mine.split_whitespace().skip(8).any(|range| {
            let (from, to) = range.split_once('-').unwrap_or((range, range));
            (from.parse().unwrap()..=to.parse().unwrap()).contains(&slot)
        })
    };
    let source = *ports.iter().find(|port| owns(**port)).expect("an owner");
    let target = *ports.iter().find(|port| **port != source).unwrap();
    let (source_id, target_id) =
        (cli(source, &["cluster", "myid"]), cli(target, &["cluster", "myid"]));
    let slot = slot.to_string();
    assert_eq!(cli(target, &["cluster", "setslot", &slot, "importing", &source_id]), "OK");
    assert_eq!(cli(source, &["cluster", "setslot", &slot, "migrating", &target_id]), "OK");
    for port in [target, source] {
        assert_eq!(cli(port, &["cluster", "setslot", &slot, "node", &target_id]), "OK");
    }
}
