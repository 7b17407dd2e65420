//! Sending, acknowledging and reading history over HTTP.

use serde_json::json;

use crate::helpers::{TestUser, error_code, spawn_app};

#[tokio::test]
async fn a_sent_message_has_sender_recipient_and_no_delivery_yet() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let message = app.send_ok(&alice, &bob, "hello bob").await;
    assert_eq!(message["content"], "hello bob");
    assert_eq!(message["senderId"], alice.id.as_str());
    assert_eq!(message["recipientId"], bob.id.as_str());
    assert_eq!(message["sender"]["username"], "alice");
    assert_eq!(message["recipient"]["id"], bob.id.as_str());
    assert!(message["deliveredAt"].is_null());
    assert!(message["sentAt"].as_str().unwrap().contains('T'), "sentAt is an ISO date-time");
}

#[tokio::test]
async fn a_retry_with_the_same_client_message_id_returns_the_original() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let first =
        app.send(&alice, &bob, "only once", Some("client-1")).await["data"]["sendMessage"].clone();
    let retry =
        app.send(&alice, &bob, "only once", Some("client-1")).await["data"]["sendMessage"].clone();
    assert_eq!(first["id"], retry["id"]);
    assert_eq!(retry["clientMessageId"], "client-1");
    // The same key from another sender is a different message.
    let from_bob =
        app.send(&bob, &alice, "mine", Some("client-1")).await["data"]["sendMessage"].clone();
    assert_ne!(from_bob["id"], first["id"]);
    let history = app
        .graphql(
            "query($with: ID!) { conversation(withUserId: $with) { edges { node { id } } } }",
            json!({ "with": bob.id }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(history["data"]["conversation"]["edges"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_sends_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let ghost =
        TestUser { id: "no-such-user".into(), token: String::new(), phone_number: String::new() };
    assert_eq!(error_code(&app.send(&alice, &ghost, "hi", None).await), "NOT_FOUND");
    assert_eq!(error_code(&app.send(&alice, &alice, "hi", None).await), "BAD_USER_INPUT");
    assert_eq!(error_code(&app.send(&alice, &bob, "   ", None).await), "BAD_USER_INPUT");
    assert_eq!(
        error_code(&app.send(&alice, &bob, &"x".repeat(4001), None).await),
        "BAD_USER_INPUT"
    );
    assert_eq!(error_code(&app.send(&alice, &bob, "nul\u{0}", None).await), "BAD_USER_INPUT");
    let anonymous = TestUser { token: "garbage".into(), ..alice.clone() };
    assert_eq!(error_code(&app.send(&anonymous, &bob, "hi", None).await), "UNAUTHENTICATED");
    let backlog = app.store.undelivered_messages(&bob.user_id(), 0, 10).await.unwrap();
    assert!(backlog.is_empty(), "a refused send stored a message");
}

#[tokio::test]
async fn only_the_recipient_can_acknowledge_and_twice_is_harmless() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let message = app.send_ok(&alice, &bob, "ack me").await;
    let id = message["id"].as_str().unwrap();

    assert_eq!(error_code(&app.mark_delivered(&alice, &[id]).await), "FORBIDDEN");
    assert_eq!(error_code(&app.mark_delivered(&bob, &[id, "missing"]).await), "NOT_FOUND");
    assert!(
        app.store.messages_by_ids(&[chatapp::domain::MessageId::new(id)]).await.unwrap()[0]
            .delivered_at
            .is_none()
    );

    let first = app.mark_delivered(&bob, &[id]).await;
    let delivered_at = first["data"]["markDelivered"][0]["deliveredAt"].clone();
    assert!(delivered_at.is_string(), "{first}");
    let again = app.mark_delivered(&bob, &[id, id]).await;
    assert_eq!(again["data"]["markDelivered"].as_array().unwrap().len(), 1);
    assert_eq!(
        again["data"]["markDelivered"][0]["deliveredAt"], delivered_at,
        "the first acknowledgement stands"
    );
}

#[tokio::test]
async fn history_pages_walk_every_message_newest_page_first() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let carol = app.register("+12025550145", "carol").await;
    for i in 0..23 {
        let (from, to) = if i % 2 == 0 { (&alice, &bob) } else { (&bob, &alice) };
        app.send_ok(from, to, &format!("m{i}")).await;
    }
    app.send_ok(&carol, &alice, "not in this conversation").await;

    let query = "query($with: ID!, $before: String) { conversation(withUserId: $with, last: 10, before: $before) {
        edges { cursor node { content } } pageInfo { hasPreviousPage startCursor } } }";
    let mut before: Option<String> = None;
    let mut pages: Vec<Vec<String>> = Vec::new();
    loop {
        let body = app
            .graphql(query, json!({ "with": bob.id, "before": before }), Some(&alice.token))
            .await;
        let connection = &body["data"]["conversation"];
        let page: Vec<String> = connection["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|edge| edge["node"]["content"].as_str().unwrap().to_string())
            .collect();
        pages.push(page);
        if connection["pageInfo"]["hasPreviousPage"] != true {
            break;
        }
        before = connection["pageInfo"]["startCursor"].as_str().map(String::from);
        // A message arriving mid-walk must not shift the pages still to come.
        if pages.len() == 1 {
            app.send_ok(&alice, &bob, "late").await;
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 3]);
    assert_eq!(pages[0].first().unwrap(), "m13");
    assert_eq!(pages[0].last().unwrap(), "m22");
    let all: Vec<String> = pages.into_iter().rev().flatten().collect();
    let expected: Vec<String> = (0..23).map(|i| format!("m{i}")).collect();
    assert_eq!(all, expected);

    // Bob sees the same conversation from his side.
    let from_bob =
        app.graphql(query, json!({ "with": alice.id, "before": null }), Some(&bob.token)).await;
    assert_eq!(from_bob["data"]["conversation"]["edges"][9]["node"]["content"], "late");
}

#[tokio::test]
async fn history_rejects_bad_paging_arguments() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    for (last, before) in
        [(json!(0), json!(null)), (json!(101), json!(null)), (json!(5), json!("not-a-cursor"))]
    {
        let body = app
            .graphql(
                "query($with: ID!, $last: Int, $before: String) { conversation(withUserId: $with, last: $last, before: $before) { edges { cursor } } }",
                json!({ "with": bob.id, "last": last, "before": before }),
                Some(&alice.token),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "last={last} before={before}");
    }
}
