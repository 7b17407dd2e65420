//! Blocking: a blocked user learns nothing they could tell from a deleted account.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, error_code, spawn_app};

async fn block(app: &TestApp, blocker: &TestUser, blocked: &TestUser) -> Value {
    let query = "mutation($id: ID!) { blockUser(id: $id) }";
    app.graphql(query, json!({ "id": blocked.id }), Some(&blocker.token)).await
}

async fn find(app: &TestApp, viewer: &TestUser, user: &TestUser) -> (Value, Value) {
    let query = "query($id: ID!, $phone: String!) { user(id: $id) { id } userByPhoneNumber(phoneNumber: $phone) { id } }";
    let variables = json!({ "id": user.id, "phone": user.phone_number });
    let body = app.graphql(query, variables, Some(&viewer.token)).await;
    assert!(body["errors"].is_null(), "{body}");
    (body["data"]["user"].clone(), body["data"]["userByPhoneNumber"].clone())
}

#[tokio::test]
async fn a_blocked_user_cannot_message_or_find_the_blocker() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    app.send_ok(&bob, &alice, "hello").await;
    assert_eq!(block(&app, &alice, &bob).await["data"]["blockUser"], true);
    assert_eq!(block(&app, &alice, &bob).await["data"]["blockUser"], true, "twice is harmless");

    // Bob's send gets exactly what a send to a nonexistent account gets.
    let refused = app.send(&bob, &alice, "are you there?", None).await;
    let ghost = TestUser { id: "0123456789abcdef".into(), ..alice.clone() };
    let to_nobody = app.send(&bob, &ghost, "are you there?", None).await;
    assert_eq!(error_code(&refused), "NOT_FOUND");
    assert_eq!(refused["errors"][0]["message"], to_nobody["errors"][0]["message"]);
    assert_eq!(find(&app, &bob, &alice).await, (Value::Null, Value::Null));
    let backlog = app.store.undelivered_messages(&alice.user_id(), 0, 10).await.unwrap();
    assert_eq!(backlog.len(), 1, "only the message from before the block");

    // Alice still finds Bob, and sees whom she blocks.
    assert_eq!(find(&app, &alice, &bob).await.0["id"], bob.id.as_str());
    let list = app.graphql("{ blockedUsers { id } }", json!({}), Some(&alice.token)).await;
    assert_eq!(list["data"]["blockedUsers"], json!([{ "id": bob.id }]));

    let lifted = app
        .graphql(
            "mutation($id: ID!) { unblockUser(id: $id) }",
            json!({ "id": bob.id }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(lifted["data"]["unblockUser"], true);
    app.send_ok(&bob, &alice, "hi again").await;
    assert_eq!(find(&app, &bob, &alice).await.0["id"], alice.id.as_str());
}

#[tokio::test]
async fn neither_side_hears_the_others_typing_or_the_blockers_presence() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    app.send_ok(&alice, &bob, "hi").await;
    block(&app, &alice, &bob).await;
    let mut bobs = app.ws(&bob).await;
    bobs.subscribe_events("events").await;
    let mut alices = app.ws(&alice).await;
    alices.subscribe_events("events").await;
    // A message of Bob's own (to someone else: Alice refuses his) proves his events
    // subscription listens.
    let carol = app.register("+12025550145", "carol").await;
    let probe = app.send_ok(&bob, &carol, "probe").await;
    loop {
        let event = bobs.next_event("events").await;
        if event["__typename"] == "MessageSent" && event["message"]["id"] == probe["id"] {
            break;
        }
    }

    let typing = "mutation($id: ID!) { setTyping(withUserId: $id, typing: true) }";
    let from_bob = app.graphql(typing, json!({ "id": alice.id }), Some(&bob.token)).await;
    assert_eq!(from_bob["data"]["setTyping"], true, "no error that would reveal the block");
    let from_alice = app.graphql(typing, json!({ "id": bob.id }), Some(&alice.token)).await;
    assert_eq!(from_alice["data"]["setTyping"], true);
    // Alice is online (her socket above), yet Bob hears nothing, and sees no presence.
    bobs.expect_silence(Duration::from_millis(300)).await;
    let query = "query($id: ID!) { user(id: $id) { online } }";
    let body = app.graphql(query, json!({ "id": alice.id }), Some(&bob.token)).await;
    assert_eq!(body["data"]["user"], Value::Null);
    alices.close().await;
}
