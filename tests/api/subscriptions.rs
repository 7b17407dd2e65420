//! `messageReceived` over graphql-transport-ws: replay, handover, fan-out, restarts, auth.

use std::{collections::HashSet, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{Incoming, WsClient, spawn_app, spawn_app_in, wait_until};

#[tokio::test]
async fn missed_messages_are_replayed_in_order_then_live_ones_follow() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(app.send_ok(&alice, &bob, &format!("offline {i}")).await["id"].clone());
    }

    let mut bob_ws = app.ws(&bob).await;
    bob_ws.subscribe_messages("1").await;
    for (i, id) in sent.iter().enumerate() {
        let message = bob_ws.next_message("1").await;
        assert_eq!(&message["id"], id);
        assert_eq!(message["content"], format!("offline {i}"));
        assert_eq!(message["sender"]["username"], "alice");
    }
    let live = app.send_ok(&alice, &bob, "live one").await;
    let received = bob_ws.next_message("1").await;
    assert_eq!(received["id"], live["id"]);
    assert_eq!(received["content"], "live one");
    bob_ws.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn acknowledged_messages_are_not_replayed_but_the_rest_are() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let first = app.send_ok(&alice, &bob, "first").await;
    let second = app.send_ok(&alice, &bob, "second").await;
    let third = app.send_ok(&alice, &bob, "third").await;
    let body = app
        .mark_delivered(&bob, &[first["id"].as_str().unwrap(), third["id"].as_str().unwrap()])
        .await;
    assert!(body["errors"].is_null(), "{body}");

    let mut bob_ws = app.ws(&bob).await;
    bob_ws.subscribe_messages("s").await;
    assert_eq!(bob_ws.next_message("s").await["id"], second["id"]);
    bob_ws.expect_silence(Duration::from_millis(300)).await;
    bob_ws.close().await;

    // Not acknowledged yet, so a new connection gets it again.
    let mut again = app.ws(&bob).await;
    again.subscribe_messages("s").await;
    assert_eq!(again.next_message("s").await["id"], second["id"]);
}

#[tokio::test]
async fn the_handover_loses_and_repeats_nothing_under_concurrent_sends() {
    const COUNT: usize = 200;
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;

    let sender = {
        let (http, url, token, bob_id) =
            (app.http.clone(), app.url("/graphql"), alice.token.clone(), bob.id.clone());
        tokio::spawn(async move {
            let sends = (0..COUNT).map(|i| {
                let request = http.post(&url).bearer_auth(&token).json(&json!({
                    "query": "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }",
                    "variables": { "input": { "recipientId": bob_id, "content": format!("burst {i}") } },
                }));
                async move {
                    let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
                    body["data"]["sendMessage"]["id"].as_str().expect("send succeeded").to_string()
                }
            });
            futures::future::join_all(sends).await
        })
    };
    // Subscribe once the burst is under way, so some messages are in the backlog and some
    // arrive while the backlog is being read.
    let (store, bob_id) = (&app.store, &bob.user_id());
    wait_until("20 messages are in the backlog", || async move {
        store.undelivered_messages(bob_id, 0, COUNT).await.unwrap().len() >= 20
    })
    .await;
    let mut bob_ws = app.ws(&bob).await;
    bob_ws.subscribe_messages("burst").await;

    let mut received = Vec::new();
    for _ in 0..COUNT {
        received.push(bob_ws.next_message("burst").await["id"].as_str().unwrap().to_string());
    }
    let sent: HashSet<String> = sender.await.unwrap().into_iter().collect();
    let unique: HashSet<String> = received.iter().cloned().collect();
    assert_eq!(unique.len(), COUNT, "a message was delivered twice");
    assert_eq!(unique, sent, "delivered messages differ from sent ones");
    bob_ws.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn every_connection_of_the_recipient_gets_live_messages() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let mut phone = app.ws(&bob).await;
    let mut laptop = app.ws(&bob).await;
    app.subscribe_listening(&mut [(&mut phone, "p"), (&mut laptop, "l")], &alice, &bob).await;
    let message = app.send_ok(&alice, &bob, "to all devices").await;
    assert_eq!(phone.next_message("p").await["id"], message["id"]);
    assert_eq!(laptop.next_message("l").await["id"], message["id"]);
}

#[tokio::test]
async fn a_restart_keeps_the_backlog_and_the_tokens() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let kept = app.send_ok(&alice, &bob, "survives a restart").await;
    let data_dir = app.data_dir.clone();
    app.stop().await;

    let app = spawn_app_in(data_dir).await;
    let me = app.graphql("{ me { id } }", json!({}), Some(&bob.token)).await;
    assert_eq!(me["data"]["me"]["id"], bob.id.as_str(), "{me}");
    let mut bob_ws = app.ws(&bob).await;
    bob_ws.subscribe_messages("1").await;
    let replayed = bob_ws.next_message("1").await;
    assert_eq!(replayed["id"], kept["id"]);
    assert_eq!(replayed["content"], "survives a restart");
}

#[tokio::test]
async fn the_authorization_key_works_in_any_case() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    for key in ["Authorization", "authorization"] {
        let mut client = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
        let reply = client.init(json!({ key: format!("Bearer {}", bob.token) })).await;
        assert_eq!(reply, Incoming::Json(json!({ "type": "connection_ack" })), "key {key}");
        app.subscribe_listening(&mut [(&mut client, "1")], &alice, &bob).await;
        let message = app.send_ok(&alice, &bob, key).await;
        assert_eq!(client.next_message("1").await["id"], message["id"]);
        // Acknowledge it, so the next connection does not get it replayed.
        app.mark_delivered(&bob, &[message["id"].as_str().unwrap()]).await;
        client.close().await;
    }
}

#[tokio::test]
async fn a_websocket_without_a_valid_token_is_refused() {
    let app = spawn_app().await;
    let (_alice, bob) = app.two_users().await;
    let mut logged_out = bob.clone();
    logged_out.token = app.register("+12025550145", "carol").await.token;
    app.graphql("mutation { logout { message } }", json!({}), Some(&logged_out.token)).await;

    for payload in [
        json!({}),
        json!({ "token": "not-a-jwt" }),
        json!({ "Authorization": "Bearer not-a-jwt" }),
        json!({ "token": logged_out.token }),
    ] {
        let mut client = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
        let reply = client.init(payload.clone()).await;
        assert!(matches!(reply, Incoming::Closed(_)), "{payload} was let in: {reply:?}");
    }
    // Subscribing without connection_init at all gets nothing either.
    let mut client = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
    client.subscribe_messages("1").await;
    assert!(matches!(client.recv().await, Incoming::Closed(_)));
}

/// The next `count` messages, by subscription id, in the order each id received them.
async fn payloads_by_id(
    ws: &mut WsClient,
    count: usize,
) -> std::collections::HashMap<String, Vec<Value>> {
    let mut by_id: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for _ in 0..count {
        match ws.recv().await {
            Incoming::Json(value) => {
                let id = value["id"].as_str().expect("message for an operation").to_string();
                by_id.entry(id).or_default().push(value);
            }
            other => panic!("expected a message, got {other:?} after {by_id:?}"),
        }
    }
    by_id
}

/// A subscription that selects exactly `messageReceived` at its root is parked: the server
/// delivers it without async-graphql's subscription stream (see `schema/parked.rs`). One with a
/// directive on its root field runs the usual way. Both must answer alike: aliases, fragments,
/// variables, `@include`, `__typename`, replay and live, and validation errors.
#[tokio::test]
async fn parked_and_usual_subscriptions_answer_alike() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    app.send_ok(&alice, &bob, "from the backlog").await;
    let selection = "{ __typename id content sender { username } ...Extra @include(if: $extra) } }
        fragment Extra on Message { recipient { id } status clientMessageId }";
    let parked = format!("subscription S($extra: Boolean!) {{ inbox: messageReceived {selection}");
    let usual = format!(
        "subscription S($extra: Boolean!) {{ inbox: messageReceived @include(if: true) {selection}"
    );
    let mut ws = app.ws(&bob).await;
    for (id, query) in [("parked", &parked), ("usual", &usual)] {
        let payload = json!({ "query": query, "variables": { "extra": true } });
        ws.send_json(json!({ "type": "subscribe", "id": id, "payload": payload })).await;
    }
    let replayed = payloads_by_id(&mut ws, 2).await;
    app.send_ok(&alice, &bob, "live").await;
    let live = payloads_by_id(&mut ws, 2).await;
    for received in [replayed, live] {
        let (parked, usual) = (&received["parked"][0], &received["usual"][0]);
        assert_eq!(parked["type"], "next", "{parked}");
        assert_eq!(parked["payload"], usual["payload"]);
        let message = &parked["payload"]["data"]["inbox"];
        assert_eq!(message["__typename"], "Message");
        assert_eq!(message["sender"]["username"], "alice");
        assert_eq!(message["recipient"]["id"], bob.id.as_str());
    }

    // The same mistake gets the same refusal either way.
    let broken = "subscription { messageReceived { id noSuchField } }";
    let broken_usual = "subscription { messageReceived @include(if: true) { id noSuchField } }";
    for (id, query) in [("broken", broken), ("broken-usual", broken_usual)] {
        ws.send_json(json!({ "type": "subscribe", "id": id, "payload": { "query": query } })).await;
    }
    let refused = payloads_by_id(&mut ws, 2).await;
    let (parked, usual) = (&refused["broken"][0], &refused["broken-usual"][0]);
    assert_eq!(parked["type"], "error", "{parked}");
    assert_eq!(parked["payload"][0]["message"], usual["payload"][0]["message"]);
    assert!(parked["payload"][0]["message"].as_str().unwrap().contains("noSuchField"), "{parked}");
}

/// `chatEvents` is parked too (a client holds it open beside `messageReceived`): the shared
/// `ChatEvents` document, parked and run the usual way, answers alike.
#[tokio::test]
async fn parked_and_usual_chat_events_answer_alike() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let parked = crate::helpers::operations::operation("ChatEvents");
    let usual = parked.replacen("chatEvents {", "chatEvents @include(if: true) {", 1);
    assert_ne!(parked, usual);
    let mut ws = app.ws(&alice).await;
    for (id, query) in [("parked", parked), ("usual", usual.as_str())] {
        ws.send_json(json!({ "type": "subscribe", "id": id, "payload": { "query": query } })).await;
    }
    // Both are listening once an event reaches both (each may hear several of these).
    let mut heard = std::collections::HashSet::new();
    for attempt in 0..50 {
        app.send_ok(&alice, &bob, &format!("probe {attempt}")).await;
        while let Ok(Incoming::Json(value)) =
            tokio::time::timeout(Duration::from_millis(100), ws.recv()).await
        {
            heard.insert(value["id"].as_str().unwrap().to_string());
        }
        if heard.len() == 2 {
            break;
        }
    }
    assert_eq!(heard.len(), 2, "both subscriptions listen");

    let typing = "mutation($to: ID!) { setTyping(withUserId: $to, typing: true) }";
    app.graphql(typing, json!({ "to": alice.id }), Some(&bob.token)).await;
    let received = payloads_by_id(&mut ws, 2).await;
    let (parked, usual) = (&received["parked"][0], &received["usual"][0]);
    assert_eq!(parked["payload"], usual["payload"]);
    assert_eq!(parked["payload"]["data"]["chatEvents"]["__typename"], "TypingChanged");

    app.send_ok(&alice, &bob, "from another device").await;
    let sent = payloads_by_id(&mut ws, 2).await;
    let (parked, usual) = (&sent["parked"][0], &sent["usual"][0]);
    assert_eq!(parked["payload"], usual["payload"]);
    let event = &parked["payload"]["data"]["chatEvents"];
    assert_eq!(event["__typename"], "MessageSent", "{parked}");
    assert_eq!(event["message"]["content"], "from another device");
}
