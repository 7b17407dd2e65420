//! Several instances on one store and one Redis behave as one server: messages cross instances
//! live, replay hands over to live without a gap or a duplicate while other instances send,
//! logging out on one instance closes sockets on the others, and a Redis restart mid-traffic
//! loses and duplicates nothing; the same over a Redis Cluster. Skipped, with a notice, without
//! Redis.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Incoming, TestApp, TestUser, spawn_instances};

#[path = "../support/redis.rs"]
mod redis_server;

use redis_server::RedisServer;

async fn three_instances(test: &str) -> Option<(RedisServer, Vec<TestApp>)> {
    instances_on(RedisServer::start(test)?, &[]).await
}

/// Three instances on `redis` (a single server or a cluster), with `settings`.
async fn instances_on(
    redis: RedisServer,
    settings: &[(&str, &str)],
) -> Option<(RedisServer, Vec<TestApp>)> {
    let mut all = vec![("REDIS_CLUSTER", if redis.is_cluster() { "true" } else { "false" })];
    all.extend_from_slice(settings);
    let apps = spawn_instances(3, redis.url(), &all).await;
    Some((redis, apps))
}

/// Message ids in the order `count` of them arrive on `client`'s "inbox" subscription.
async fn receive(client: &mut crate::helpers::WsClient, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < count {
        let message = client.next_message("inbox").await;
        ids.push(message["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn a_message_sent_through_one_instance_arrives_live_on_another() {
    let Some((_redis, apps)) = three_instances("scale_out: live across instances").await else {
        return;
    };
    let (a, b) = (&apps[0], &apps[1]);
    let alice = a.register("+12025550143", "alice").await;
    let bob = b.register("+12025550144", "bob").await;
    let mut bobs = b.ws(&bob).await;
    b.subscribe_listening(&mut [(&mut bobs, "inbox")], &alice, &bob).await;

    let sent = a.send_ok(&alice, &bob, "through A, to B").await;
    let received = bobs.next_message("inbox").await;
    assert_eq!(received["id"], sent["id"]);
    assert_eq!(received["content"], "through A, to B");
}

#[tokio::test]
async fn replay_hands_over_to_live_without_gap_or_duplicate_while_others_send() {
    let Some((_redis, apps)) = three_instances("scale_out: replay then live").await else {
        return;
    };
    let alice = apps[0].register("+12025550143", "alice").await;
    let bob = apps[1].register("+12025550144", "bob").await;
    const TOTAL: usize = 200;
    // Alice sends through A and C in turn while Bob connects to B part-way through.
    let senders = [apps[0].url("/graphql"), apps[2].url("/graphql")];
    let sending = {
        let (alice, bob, http) = (alice.clone(), bob.clone(), apps[0].http.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..TOTAL {
                let body = send_via(&http, &senders[n % 2], &alice, &bob, n).await;
                ids.push(body["data"]["sendMessage"]["id"].as_str().unwrap().to_string());
            }
            ids
        })
    };
    crate::helpers::wait_until("some messages were sent before Bob connects", || async {
        let backlog = apps[1].store.undelivered_messages(&bob.user_id(), 0, 100).await.unwrap();
        backlog.len() >= 20
    })
    .await;
    let mut bobs = apps[1].ws(&bob).await;
    bobs.subscribe_messages("inbox").await;
    let received = receive(&mut bobs, TOTAL).await;
    let sent = sending.await.unwrap();
    assert_eq!(received, sent, "every message once, in the order sent");
    bobs.expect_silence(Duration::from_millis(200)).await;
}

async fn send_via(
    http: &reqwest::Client,
    url: &str,
    from: &TestUser,
    to: &TestUser,
    n: usize,
) -> Value {
    let query = "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }";
    let input = json!({ "recipientId": to.id, "content": format!("message {n}") });
    let body = json!({ "query": query, "variables": { "input": input } });
    let response = http.post(url).bearer_auth(&from.token).json(&body).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(body["errors"].is_null(), "send {n} failed: {body}");
    body
}

#[tokio::test]
async fn logging_out_everywhere_on_one_instance_closes_sockets_on_the_others() {
    let Some((_redis, apps)) = three_instances("scale_out: logout everywhere").await else {
        return;
    };
    let alice = apps[0].register("+12025550143", "alice").await;
    let on_b = TestUser { token: apps[1].login(&alice).await, ..alice.clone() };
    let on_c = TestUser { token: apps[2].login(&alice).await, ..alice.clone() };
    let mut socket_b = apps[1].ws(&on_b).await;
    let mut socket_c = apps[2].ws(&on_c).await;

    let started = Instant::now();
    let logout = "mutation { logout(allSessions: true) { message } }";
    let body = apps[0].graphql(logout, json!({}), Some(&alice.token)).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(socket_b.recv().await, Incoming::Closed(Some(4401)));
    assert_eq!(socket_c.recv().await, Incoming::Closed(Some(4401)));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");
    // And the tokens are dead on every instance.
    for (app, user) in [(&apps[1], &on_b), (&apps[2], &on_c)] {
        let me = app.graphql("{ me { id } }", json!({}), Some(&user.token)).await;
        assert_eq!(crate::helpers::error_code(&me), "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn a_redis_restart_mid_traffic_loses_and_duplicates_nothing() {
    restart_mid_traffic_loses_and_duplicates_nothing(RedisServer::start("scale_out: restart"))
        .await;
}

/// The same when every node of a Redis Cluster restarts.
#[tokio::test]
async fn a_redis_cluster_restart_mid_traffic_loses_and_duplicates_nothing() {
    let cluster = RedisServer::start_cluster("scale_out: cluster restart");
    restart_mid_traffic_loses_and_duplicates_nothing(cluster).await;
}

async fn restart_mid_traffic_loses_and_duplicates_nothing(redis: Option<RedisServer>) {
    let Some(redis) = redis else { return };
    let Some((mut redis, apps)) = instances_on(redis, &[]).await else { return };
    if !redis.is_owned() {
        eprintln!("NOTICE: Redis restart test skipped: a TEST_ server cannot be restarted here");
        return;
    }
    let alice = apps[0].register("+12025550143", "alice").await;
    let bob = apps[1].register("+12025550144", "bob").await;
    let mut bobs = apps[1].ws(&bob).await;
    apps[1].subscribe_listening(&mut [(&mut bobs, "inbox")], &alice, &bob).await;

    const TOTAL: usize = 300;
    let mut sent = Vec::new();
    for n in 0..TOTAL {
        if n == 100 {
            redis.stop();
            // The instances say so, and keep serving.
            crate::helpers::wait_until("B reports the bus down", || async {
                let health = apps[1].http.get(apps[1].url("/healthz")).send().await.unwrap();
                let status = health.status();
                let health: Value = health.json().await.unwrap();
                status == 200 && health["status"] == "degraded" && health["bus"]["up"] == false
            })
            .await;
        }
        if n == 200 {
            redis.restart();
        }
        // Sends go on while Redis is down: the store is the truth.
        let body = send_via(&apps[0].http, &apps[0].url("/graphql"), &alice, &bob, n).await;
        sent.push(body["data"]["sendMessage"]["id"].as_str().unwrap().to_string());
    }
    let mut received = receive(&mut bobs, TOTAL).await;
    bobs.expect_silence(Duration::from_millis(300)).await;
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), TOTAL, "no duplicates");
    received.sort();
    sent.sort();
    assert_eq!(received, sent, "nothing lost");
    for app in &apps {
        crate::helpers::wait_until("every instance reports the bus up again", || async {
            let health = app.http.get(app.url("/healthz")).send().await.unwrap();
            let health: Value = health.json().await.unwrap();
            health["bus"] == json!({ "kind": "redis", "up": true }) && health["status"] == "ok"
        })
        .await;
    }
}

/// Over a Redis Cluster (sharded pub/sub, commands routed by slot), instances still act as one:
/// messages cross live, a logout everywhere closes sockets on other instances, limits and the
/// connection cap count every instance, presence is known everywhere.
#[tokio::test]
async fn instances_behave_as_one_over_a_redis_cluster() {
    let Some(cluster) = RedisServer::start_cluster("scale_out: Redis Cluster") else { return };
    let settings = [("RATE_LIMIT_LOOKUPS_PER_USER", "4"), ("WS_MAX_CONNECTIONS_PER_USER", "2")];
    let Some((_cluster, apps)) = instances_on(cluster, &settings).await else { return };
    let alice = apps[0].register("+12025550143", "alice").await;
    let bob = apps[1].register("+12025550144", "bob").await;

    // Live across instances, and presence: Bob listens on B.
    let mut bobs = apps[1].ws(&bob).await;
    apps[1].subscribe_listening(&mut [(&mut bobs, "inbox")], &alice, &bob).await;
    let sent = apps[0].send_ok(&alice, &bob, "through A, to B").await;
    assert_eq!(bobs.next_message("inbox").await["id"], sent["id"]);
    assert_eq!(apps[2].presence_of(&alice, &bob).await["online"], true);

    // The connection cap counts every instance: Bob has one on B, a second on C, no third.
    let _second = apps[2].ws(&bob).await;
    let mut third =
        crate::helpers::WsClient::connect(&apps[0], "graphql-transport-ws").await.unwrap();
    third.send_json(json!({ "type": "connection_init", "payload": { "token": bob.token } })).await;
    assert_eq!(third.recv().await, Incoming::Closed(Some(1008)));

    // Four look-ups a minute in all, wherever they land.
    let lookup = "{ userByPhoneNumber(phoneNumber: \"+12025550199\") { id } }";
    for n in 0..4 {
        let body = apps[n % 3].graphql(lookup, json!({}), Some(&alice.token)).await;
        assert!(body["errors"].is_null(), "look-up {n}: {body}");
    }
    let limited = apps[1].graphql(lookup, json!({}), Some(&alice.token)).await;
    assert_eq!(crate::helpers::error_code(&limited), "RATE_LIMITED", "{limited}");

    // Logging out everywhere on A closes Bob's sockets on B and C within a second.
    let started = Instant::now();
    let logout = "mutation { logout(allSessions: true) { message } }";
    let body = apps[0].graphql(logout, json!({}), Some(&bob.token)).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(bobs.recv().await, Incoming::Closed(Some(4401)));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");
}

#[tokio::test]
async fn limits_hold_across_instances() {
    let Some(redis) = RedisServer::start("scale_out: shared limits") else { return };
    let settings = [("RATE_LIMIT_LOOKUPS_PER_USER", "4"), ("LOGIN_FAILURES_BEFORE_BACKOFF", "2")];
    let apps = spawn_instances(3, redis.url(), &settings).await;
    let alice = apps[0].register("+12025550143", "alice").await;

    // Four look-ups a minute in all, wherever they land: not four per instance.
    let lookup = "{ userByPhoneNumber(phoneNumber: \"+12025550199\") { id } }";
    for n in 0..4 {
        let body = apps[n % 3].graphql(lookup, json!({}), Some(&alice.token)).await;
        assert!(body["errors"].is_null(), "look-up {n}: {body}");
    }
    let limited = apps[1].graphql(lookup, json!({}), Some(&alice.token)).await;
    assert_eq!(crate::helpers::error_code(&limited), "RATE_LIMITED", "{limited}");

    // Wrong passwords on A and on B put the guesser in backoff on C too.
    let wrong =
        json!({ "input": { "phoneNumber": "+12025550143", "password": "not-the-password" } });
    for app in &apps[..2] {
        let body = app.operation("Login", wrong.clone(), None).await;
        assert_eq!(crate::helpers::error_code(&body), "UNAUTHENTICATED", "{body}");
    }
    let body = apps[2].operation("Login", wrong, None).await;
    assert_eq!(crate::helpers::error_code(&body), "RATE_LIMITED", "{body}");
}

#[tokio::test]
async fn presence_and_the_connection_cap_count_every_instance() {
    let Some(redis) = RedisServer::start("scale_out: presence and connection cap") else { return };
    let apps = spawn_instances(3, redis.url(), &[("WS_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let alice = apps[0].register("+12025550143", "alice").await;
    let bob = apps[1].register("+12025550144", "bob").await;
    // Bob listens for events on B (the set-up gives Alice and Bob a conversation).
    let mut bobs = apps[1].events_connection(&bob, &alice).await;
    assert_eq!(apps[2].presence_of(&bob, &alice).await["online"], false);

    // Alice connects on A: Bob hears it on B, and C knows it.
    let on_a = apps[0].ws(&alice).await;
    let event = bobs.next_event("events").await;
    assert_eq!(
        (event["__typename"].as_str(), &event["online"]),
        (Some("PresenceChanged"), &json!(true))
    );
    assert_eq!(apps[2].presence_of(&bob, &alice).await["online"], true);

    // Two connections at most, counted over every instance: the third, on C, is refused.
    let on_b = apps[1].ws(&alice).await;
    let mut third =
        crate::helpers::WsClient::connect(&apps[2], "graphql-transport-ws").await.unwrap();
    third
        .send_json(json!({ "type": "connection_init", "payload": { "token": alice.token } }))
        .await;
    assert_eq!(third.recv().await, Incoming::Closed(Some(1008)));

    // Closing one keeps her online; closing the last one takes her offline everywhere.
    on_a.close().await;
    on_b.close().await;
    let event = bobs.next_event("events").await;
    assert_eq!(event["online"], false, "one offline event, after the last connection: {event}");
    assert_eq!(apps[2].presence_of(&bob, &alice).await["online"], false);
    // And her places are free again.
    let _again = apps[2].ws(&alice).await;
}

/// With Redis, processes on one host may share one SQLite data directory (each opens the
/// database itself, as separate processes would); without Redis a second one is still refused.
#[tokio::test]
async fn processes_with_redis_may_share_one_sqlite_data_directory() {
    use std::sync::Arc;

    let Some(redis) = RedisServer::start("scale_out: shared data directory") else { return };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let prefix = format!("it{}:", uuid::Uuid::new_v4().simple());
    let settings = [
        ("REDIS_URL", redis.url()),
        ("REDIS_CHANNEL_PREFIX", prefix.as_str()),
        ("JWT_SECRET", "a-secret-every-instance-of-this-test-shares"),
    ];
    let a = crate::helpers::spawn_app_with(dir.clone(), &settings).await;
    if a.store.kind() != "sqlite" {
        return; // MongoDB is shared by design
    }
    let b = crate::helpers::spawn_app_with(dir.clone(), &settings).await;
    let refused = crate::helpers::startup_refusal(dir.path(), &[]).await;
    assert!(refused.contains("REDIS_URL"), "a process without Redis joined: {refused}");

    let alice = a.register("+12025550143", "alice").await;
    let bob = b.register("+12025550144", "bob").await;
    let mut bobs = b.ws(&bob).await;
    b.subscribe_listening(&mut [(&mut bobs, "inbox")], &alice, &bob).await;
    // Both processes write to the one database at once.
    let url_a = a.url("/graphql");
    let url_b = b.url("/graphql");
    let sends = (0..40).map(|n| {
        let (http, url, alice, bob) = (
            a.http.clone(),
            if n % 2 == 0 { url_a.clone() } else { url_b.clone() },
            alice.clone(),
            bob.clone(),
        );
        async move { send_via(&http, &url, &alice, &bob, n).await }
    });
    futures::future::join_all(sends).await;
    let mut received = receive(&mut bobs, 40).await;
    received.sort();
    received.dedup();
    assert_eq!(received.len(), 40, "every message once, whichever process stored it");
}

/// Typing refreshes land on any instance: a refresh through B keeps an indicator started
/// through A going past A's timer, and the end is announced once.
#[tokio::test]
async fn typing_indicators_hold_across_instances() {
    let Some((_redis, apps)) = three_instances("scale_out: typing").await else { return };
    let alice = apps[0].register("+12025550143", "alice").await;
    let bob = apps[1].register("+12025550144", "bob").await;
    let mut bobs = apps[2].events_connection(&bob, &alice).await;
    let started = Instant::now();
    set_typing(&apps[0], &alice, &bob, true).await;
    assert_eq!(bobs.next_event("events").await["typing"], true);
    // Half-way through, the refresh goes to B: no second "typing", and A's timer must not end it.
    tokio::time::sleep(chatapp::typing::TYPING_LASTS / 2).await;
    set_typing(&apps[1], &alice, &bob, true).await;
    let ended = bobs.next_event("events").await;
    assert_eq!(ended["typing"], false, "{ended}");
    let lasted = started.elapsed();
    assert!(
        lasted >= chatapp::typing::TYPING_LASTS * 3 / 2 - Duration::from_millis(500),
        "ended after {lasted:?}: the refresh through B did not count"
    );
    // Stopping through C is announced once.
    set_typing(&apps[0], &alice, &bob, true).await;
    assert_eq!(bobs.next_event("events").await["typing"], true);
    set_typing(&apps[2], &alice, &bob, false).await;
    set_typing(&apps[1], &alice, &bob, false).await;
    assert_eq!(bobs.next_event("events").await["typing"], false);
    bobs.expect_silence(Duration::from_millis(300)).await;
}

async fn set_typing(app: &TestApp, from: &TestUser, to: &TestUser, typing: bool) {
    let query =
        "mutation($with: ID!, $typing: Boolean!) { setTyping(withUserId: $with, typing: $typing) }";
    let variables = json!({ "with": to.id, "typing": typing });
    let body = app.graphql(query, variables, Some(&from.token)).await;
    assert!(body["errors"].is_null(), "{body}");
}

#[tokio::test]
async fn redis_without_a_shared_token_secret_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("REDIS_URL", "redis://127.0.0.1:1")];
    let message = crate::helpers::startup_refusal(dir.path(), &settings).await;
    assert!(message.contains("JWT_SECRET") && message.contains("REDIS_URL"), "{message}");
}

/// `rediss://` with `REDIS_CA_CERT`, through the settings: instances over TLS behave as one.
#[tokio::test]
async fn instances_share_a_redis_over_tls() {
    let Some((redis, ca, _dir)) = RedisServer::start_tls("scale_out: TLS") else { return };
    let ca = ca.display().to_string();
    let apps = spawn_instances(2, redis.url(), &[("REDIS_CA_CERT", ca.as_str())]).await;
    let alice = apps[0].register("+12025550143", "alice").await;
    let bob = apps[1].register("+12025550144", "bob").await;
    let mut bobs = apps[1].ws(&bob).await;
    apps[1].subscribe_listening(&mut [(&mut bobs, "inbox")], &alice, &bob).await;
    let sent = apps[0].send_ok(&alice, &bob, "over TLS").await;
    assert_eq!(bobs.next_message("inbox").await["id"], sent["id"]);
}

#[tokio::test]
async fn a_certificate_authority_for_a_plain_redis_url_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("REDIS_CA_CERT", "/etc/ssl/certs/ca.pem"),
        ("JWT_SECRET", "a-secret-every-instance-of-this-test-shares"),
    ];
    let error = crate::helpers::startup_refusal(dir.path(), &settings).await;
    assert!(error.contains("rediss://"), "{error}");
}

/// An instance that crashes (SIGKILL: its sockets never say goodbye, its counts stay in Redis)
/// leaves nobody online for good: once its heartbeat runs out, a live instance claims it,
/// announces its users offline and records when they were last seen. B is a real process (the
/// server binary) on A's data directory and Redis.
#[tokio::test]
async fn users_of_a_crashed_instance_are_announced_offline() {
    use std::sync::Arc;

    let Some(redis) = RedisServer::start("scale_out: crashed instance") else { return };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let prefix = format!("it{}:", uuid::Uuid::new_v4().simple());
    let secret = "a-secret-every-instance-of-this-test-shares";
    let settings = [
        ("REDIS_URL", redis.url()),
        ("REDIS_CHANNEL_PREFIX", prefix.as_str()),
        ("JWT_SECRET", secret),
        ("REDIS_INSTANCE_TTL", "1500ms"),
    ];
    let a = crate::helpers::spawn_app_with(dir.clone(), &settings).await;
    if a.store.kind() != "sqlite" {
        return; // B shares A's store through the data directory
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut b = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatapp"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("DATA_DIR", dir.path())
        .envs(settings)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let b_address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    crate::helpers::wait_until("B answers", || async {
        let health = a.http.get(format!("http://{b_address}/healthz")).send().await;
        health.is_ok_and(|response| response.status() == 200)
    })
    .await;

    let alice = a.register("+12025550143", "alice").await;
    let bob = a.register("+12025550144", "bob").await;
    let mut bobs = a.events_connection(&bob, &alice).await;
    let mut on_b =
        crate::helpers::WsClient::connect_to(b_address, "graphql-transport-ws").await.unwrap();
    assert_eq!(
        on_b.init(json!({ "token": alice.token })).await,
        Incoming::Json(json!({ "type": "connection_ack" }))
    );
    let came = bobs.next_event("events").await;
    assert_eq!(
        (came["__typename"].as_str(), &came["online"]),
        (Some("PresenceChanged"), &json!(true))
    );
    assert_eq!(a.presence_of(&bob, &alice).await["online"], true);

    b.start_kill().unwrap();
    b.wait().await.unwrap();
    let offline = bobs.next_event("events").await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["lastSeenAt"].is_string(), "{offline}");
    assert_eq!(a.presence_of(&bob, &alice).await["online"], false);
    drop(on_b);
}
