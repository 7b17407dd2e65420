//! `chatEvents`: a user's other devices see what they send, and senders see their messages
//! delivered and read, live.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestUser, WsClient, error_code, spawn_app, spawn_app_configured};

/// The next event on "events" that is not a presence change (people connecting in the test
/// announce themselves to those they chat with).
async fn next_event(client: &mut WsClient) -> Value {
    loop {
        let event = client.next_event("events").await;
        if event["__typename"] != "PresenceChanged" {
            return event;
        }
    }
}

fn kind_and_id(event: &Value) -> (String, String) {
    let kind = event["__typename"].as_str().unwrap().to_string();
    (kind, event["message"]["id"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_message_sent_from_one_device_shows_on_the_others() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let laptop_session = TestUser { token: app.login(&alice).await, ..alice.clone() };
    let mut phone = app.events_connection(&alice, &bob).await;
    let mut laptop = app.events_connection(&laptop_session, &bob).await;
    let mut bobs = app.events_connection(&bob, &alice).await;
    // Setting up Bob's connection sent him a marker from Alice, which he acknowledged: both
    // of her devices saw it sent, then delivered.
    for device in [&mut phone, &mut laptop] {
        assert_eq!(next_event(device).await["__typename"], "MessageSent");
        let delivered = next_event(device).await;
        assert_eq!(delivered["__typename"], "MessageStatusChanged");
        assert_eq!(delivered["message"]["status"], "DELIVERED");
    }

    let sent = app.send_ok(&alice, &bob, "sent from the phone").await;
    for device in [&mut phone, &mut laptop] {
        let event = next_event(device).await;
        assert_eq!(
            kind_and_id(&event),
            ("MessageSent".into(), sent["id"].as_str().unwrap().into())
        );
        assert_eq!(event["message"]["content"], "sent from the phone");
        assert_eq!(event["message"]["status"], "SENT");
    }
    // The recipient's events are about his own messages only.
    bobs.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_sender_sees_delivery_and_read_live() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let mut phone = app.events_connection(&alice, &bob).await;
    let first = app.send_ok(&alice, &bob, "one").await;
    let second = app.send_ok(&alice, &bob, "two").await;
    for sent in [&first, &second] {
        let event = next_event(&mut phone).await;
        assert_eq!(kind_and_id(&event).1, sent["id"].as_str().unwrap());
    }

    app.mark_delivered(&bob, &[first["id"].as_str().unwrap()]).await;
    let delivered = next_event(&mut phone).await;
    assert_eq!(kind_and_id(&delivered), ("MessageStatusChanged".into(), id(&first)));
    assert_eq!(delivered["message"]["status"], "DELIVERED");
    assert!(delivered["message"]["deliveredAt"].is_string());
    // Acknowledging again changes nothing, so it announces nothing.
    app.mark_delivered(&bob, &[first["id"].as_str().unwrap()]).await;

    let read = app
        .graphql(
            "mutation($with: ID!, $upTo: ID!) { markRead(withUserId: $with, upTo: $upTo) { unreadCount } }",
            json!({ "with": alice.id, "upTo": second["id"] }),
            Some(&bob.token),
        )
        .await;
    assert_eq!(read["data"]["markRead"]["unreadCount"], 0, "{read}");
    let mut read_events = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut phone).await;
        assert_eq!(event["message"]["status"], "READ");
        assert!(event["message"]["readAt"].is_string());
        read_events.push(kind_and_id(&event));
    }
    assert_eq!(
        read_events,
        vec![
            ("MessageStatusChanged".into(), id(&first)),
            ("MessageStatusChanged".into(), id(&second))
        ],
        "one event per message read, oldest first"
    );
    phone.expect_silence(Duration::from_millis(200)).await;
}

fn id(message: &Value) -> String {
    message["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn typing_reaches_the_other_persons_connections_and_is_limited() {
    let app = spawn_app_configured(&[("RATE_LIMIT_TYPING_PER_USER", "2")]).await;
    let (alice, bob) = app.two_users().await;
    let mut bobs = app.events_connection(&bob, &alice).await;
    let set_typing = |typing: bool| {
        let variables = json!({ "withUserId": bob.id, "typing": typing });
        app.operation("SetTyping", variables, Some(&alice.token))
    };
    assert_eq!(set_typing(true).await["data"]["setTyping"], true);
    let event = next_event(&mut bobs).await;
    assert_eq!(event["__typename"], "TypingChanged");
    assert_eq!(
        (event["typing"].clone(), event["user"]["username"].clone()),
        (json!(true), json!("alice"))
    );
    assert_eq!(set_typing(false).await["data"]["setTyping"], false);
    assert_eq!(next_event(&mut bobs).await["typing"], false);

    // Two per second: a third change right away is refused, and not announced.
    let limited = set_typing(true).await;
    assert_eq!(error_code(&limited), "RATE_LIMITED", "{limited}");
    assert!(limited["errors"][0]["extensions"]["retryAfter"].as_u64() >= Some(1));
    bobs.expect_silence(Duration::from_millis(200)).await;

    for (with, code) in [("nobody", "NOT_FOUND"), (bob.id.as_str(), "BAD_USER_INPUT")] {
        let body = app
            .operation("SetTyping", json!({ "withUserId": with, "typing": true }), Some(&bob.token))
            .await;
        assert_eq!(error_code(&body), code, "{body}");
    }
    let anonymous =
        app.operation("SetTyping", json!({ "withUserId": bob.id, "typing": true }), None).await;
    assert_eq!(error_code(&anonymous), "UNAUTHENTICATED");
}

#[tokio::test]
async fn people_you_chat_with_see_you_online_and_when_you_were_last_seen() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let carol = app.register("+12025550145", "carol").await;
    // Bob's connection (its set-up gives Alice and Bob a conversation).
    let mut bobs = app.events_connection(&bob, &alice).await;
    assert_eq!(app.presence_of(&bob, &alice).await, json!({ "online": false, "lastSeenAt": null }));

    let alices = app.ws(&alice).await;
    let online = bobs.next_event("events").await;
    assert_eq!(online["__typename"], "PresenceChanged", "{online}");
    assert_eq!(
        (online["user"]["id"].as_str(), online["online"].clone()),
        (Some(alice.id.as_str()), json!(true))
    );
    assert_eq!(app.presence_of(&bob, &alice).await["online"], true);
    assert_eq!(app.presence_of(&alice, &alice).await["online"], true, "one's own");
    // Carol has never talked to Alice: nothing.
    assert_eq!(
        app.presence_of(&carol, &alice).await,
        json!({ "online": null, "lastSeenAt": null })
    );

    alices.close().await;
    let offline = bobs.next_event("events").await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["lastSeenAt"].is_string());
    let seen = app.presence_of(&bob, &alice).await;
    assert_eq!(seen["online"], false);
    assert_eq!(seen["lastSeenAt"], offline["lastSeenAt"]);
}

#[tokio::test]
async fn hidden_presence_shows_nothing_and_announces_nothing() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let mut bobs = app.events_connection(&bob, &alice).await;
    let hide = app
        .graphql("mutation { setPresenceVisible(visible: false) }", json!({}), Some(&alice.token))
        .await;
    assert_eq!(hide["data"]["setPresenceVisible"], false, "{hide}");
    let alices = app.ws(&alice).await;
    assert_eq!(app.presence_of(&bob, &alice).await, json!({ "online": null, "lastSeenAt": null }));
    assert_eq!(app.presence_of(&alice, &alice).await["online"], true, "still visible to oneself");
    alices.close().await;
    bobs.expect_silence(Duration::from_millis(300)).await;
}
