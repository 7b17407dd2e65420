//! The websocket protocol, to the letter: every close code, pings, and the legacy protocol,
//! driven by a raw websocket client.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Incoming, TestApp, TestUser, WsClient, spawn_app, spawn_app_configured};

async fn raw(app: &TestApp) -> WsClient {
    WsClient::connect(app, "graphql-transport-ws").await.expect("websocket connects")
}

async fn user(app: &TestApp) -> TestUser {
    app.register("+12025550143", "alice").await
}

/// A connection `user` has initialised (acknowledged).
async fn initialised(app: &TestApp, user: &TestUser) -> WsClient {
    let mut ws = raw(app).await;
    assert!(matches!(ws.init(json!({ "token": user.token })).await, Incoming::Json(_)));
    ws
}

fn closed_with(code: u16) -> Incoming {
    Incoming::Closed(Some(code))
}

#[tokio::test]
/// Credentials that can never work close with 4401, which clients treat as final (before: 4403,
/// which `graphql-ws` retries for half a minute before the app learns it must sign in).
async fn init_without_a_valid_token_closes_4401() {
    let app = spawn_app().await;
    for payload in [
        json!(null),
        json!({}),
        json!({ "token": "nope" }),
        json!({ "Authorization": "Basic abc" }),
    ] {
        let mut client = raw(&app).await;
        assert_eq!(client.init(payload.clone()).await, closed_with(4401), "{payload}");
    }
}

#[tokio::test]
async fn no_init_in_time_closes_4408() {
    let app = spawn_app_configured(&[("WS_INIT_TIMEOUT", "300ms")]).await;
    let mut client = raw(&app).await;
    assert_eq!(client.recv().await, closed_with(4408));
}

#[tokio::test]
async fn subscribe_before_ack_closes_4401() {
    let app = spawn_app().await;
    let mut client = raw(&app).await;
    client.subscribe_messages("1").await;
    assert_eq!(client.recv().await, closed_with(4401));
}

#[tokio::test]
async fn a_second_init_closes_4429() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let mut client = app.ws(&alice).await;
    assert_eq!(client.init(json!({ "token": alice.token })).await, closed_with(4429));
}

#[tokio::test]
async fn reusing_a_running_subscription_id_closes_4409() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let mut client = app.ws(&alice).await;
    client.subscribe_messages("same").await;
    client.subscribe_messages("same").await;
    assert_eq!(client.recv().await, closed_with(4409));
}

#[tokio::test]
async fn a_completed_id_can_be_reused() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let bob = app.register("+12025550144", "bob").await;
    let mut client = app.ws(&bob).await;
    client.subscribe_messages("1").await;
    client.send_json(json!({ "type": "complete", "id": "1" })).await;
    // The server handles a socket's frames in order: once it answers this ping, the first
    // subscription is gone, so the marker below cannot reach it (a result already on its way
    // when `complete` is read may still arrive, as the protocol allows).
    client.send_json(json!({ "type": "ping" })).await;
    match client.recv().await {
        Incoming::Json(pong) => assert_eq!(pong["type"], "pong"),
        other => panic!("expected a pong, got {other:?}"),
    }
    app.subscribe_listening(&mut [(&mut client, "1")], &alice, &bob).await;
    let message = app.send_ok(&alice, &bob, "after reuse").await;
    assert_eq!(client.next_message("1").await["id"], message["id"]);
    client.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn malformed_messages_close_4400() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    for text in ["not json", "{}", r#"{"type":"start","id":"1","payload":{"query":"{me{id}}"}}"#] {
        let mut client = app.ws(&alice).await;
        client.send_text(text).await;
        assert_eq!(client.recv().await, closed_with(4400), "{text}");
    }
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let mut client = app.ws(&alice).await;
    client.send_json(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await, Incoming::Json(json!({ "type": "pong" })));
}

#[tokio::test]
async fn the_server_pings_and_drops_clients_that_never_answer() {
    let app = spawn_app_configured(&[("WS_PING_INTERVAL", "200ms")]).await;
    let alice = user(&app).await;

    // A live client answers pings (the helper does) and stays connected.
    let mut live = app.ws(&alice).await;
    live.answer_pings_for(Duration::from_millis(900)).await;
    live.send_json(json!({ "type": "ping" })).await;
    assert_eq!(live.recv().await, Incoming::Json(json!({ "type": "pong" })));

    // A dead one is pinged, then dropped.
    let mut dead = app.ws(&alice).await;
    assert_eq!(dead.recv_raw().await, Incoming::Json(json!({ "type": "ping" })));
    let mut last = dead.recv_raw().await;
    while last == Incoming::Json(json!({ "type": "ping" })) {
        last = dead.recv_raw().await;
    }
    // "Going away", which clients reconnect after (before: 1011, which they treat as final).
    assert_eq!(last, closed_with(1001));
}

#[tokio::test]
async fn an_invalid_operation_gets_an_error_message() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let mut client = app.ws(&alice).await;
    client
        .send_json(json!({ "id": "bad", "type": "subscribe", "payload": { "query": "subscription { nope }" } }))
        .await;
    match client.recv().await {
        Incoming::Json(message) => {
            assert_eq!(message["type"], "error");
            assert_eq!(message["id"], "bad");
            assert!(message["payload"][0]["message"].is_string(), "{message}");
        }
        other => panic!("expected an error message, got {other:?}"),
    }
    // The connection survives a bad operation.
    client.send_json(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await, Incoming::Json(json!({ "type": "pong" })));
}

#[tokio::test]
async fn queries_and_mutations_work_over_the_socket_and_complete() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let mut client = app.ws(&alice).await;
    client.send_json(json!({ "id": "q", "type": "subscribe", "payload": { "query": "{ me { username } }" } })).await;
    match client.recv().await {
        Incoming::Json(message) => {
            assert_eq!(message["payload"]["data"]["me"]["username"], "alice")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.recv().await, Incoming::Json(json!({ "type": "complete", "id": "q" })));
}

#[tokio::test]
async fn the_legacy_protocol_still_works_with_the_same_auth() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let bob = app.register("+12025550144", "bob").await;

    let mut refused = WsClient::connect(&app, "graphql-ws").await.unwrap();
    match refused.init(json!({ "token": "nope" })).await {
        Incoming::Json(message) => assert_eq!(message["type"], "connection_error"),
        other => panic!("expected connection_error, got {other:?}"),
    }
    assert_eq!(refused.recv().await, closed_with(4401));

    let mut legacy = WsClient::connect(&app, "graphql-ws").await.unwrap();
    assert_eq!(
        legacy.init(json!({ "authToken": "ignored", "token": bob.token })).await,
        Incoming::Json(json!({ "type": "connection_ack" }))
    );
    assert_eq!(legacy.recv().await, Incoming::Json(json!({ "type": "ka" })));
    legacy
        .send_json(json!({ "id": "1", "type": "start", "payload": { "query": "subscription { messageReceived { id content } }" } }))
        .await;
    // Live or replayed (if the start is not processed yet), it arrives as a legacy `data`.
    let message = app.send_ok(&alice, &bob, "old apollo").await;
    match legacy.recv().await {
        Incoming::Json(data) => {
            assert_eq!(data["type"], "data");
            assert_eq!(data["payload"]["data"]["messageReceived"]["id"], message["id"]);
        }
        other => panic!("{other:?}"),
    }
    legacy.send_json(json!({ "id": "1", "type": "stop" })).await;
    assert_eq!(legacy.recv().await, Incoming::Json(json!({ "type": "complete", "id": "1" })));
}

#[tokio::test]
async fn an_unknown_subprotocol_is_refused_at_the_handshake() {
    let app = spawn_app().await;
    assert!(WsClient::connect(&app, "mqtt").await.is_err());
}

/// A client that closes cleanly gets the close handshake answered (before, it saw 1006).
#[tokio::test]
async fn the_clients_close_is_answered() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let mut ws = initialised(&app, &alice).await;
    ws.subscribe_messages("1").await;
    assert_eq!(ws.close_with(1000).await, Some(1000));
}

/// Frames no client library sends, written raw: the server closes with the websocket
/// protocol's own codes rather than dropping the connection.
#[tokio::test]
async fn frames_that_break_the_websocket_protocol_close_with_its_codes() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    // FIN + text, masked (key 0), two bytes that are not UTF-8.
    let not_utf8 = [0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe];
    // FIN + text, unmasked: a server must refuse it.
    let unmasked = [0x81, 0x02, b'h', b'i'];
    // A ping without FIN: control frames may not be fragmented.
    let fragmented_ping = [0x09, 0x80, 0, 0, 0, 0];
    for (bytes, code) in
        [(&not_utf8[..], 1007), (&unmasked[..], 1002), (&fragmented_ping[..], 1002)]
    {
        let mut ws = initialised(&app, &alice).await;
        ws.send_raw_bytes(bytes).await;
        assert_eq!(ws.recv().await, Incoming::Closed(Some(code)), "{bytes:?}");
    }
}

/// A websocket ping frame gets its pong, and the connection carries on.
#[tokio::test]
async fn websocket_pings_are_answered() {
    let app = spawn_app().await;
    let alice = user(&app).await;
    let mut ws = initialised(&app, &alice).await;
    assert_eq!(ws.ping_frame(b"still there?").await, b"still there?".to_vec());
    ws.send_json(json!({ "type": "ping" })).await;
    assert_eq!(ws.recv().await, Incoming::Json(json!({ "type": "pong" })));
}
