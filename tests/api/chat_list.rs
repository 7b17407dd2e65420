//! The chat list (`conversations`) and read receipts (`markRead`, `Message.status`).

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, error_code, spawn_app};

const CHAT_LIST: &str = "query($first: Int, $after: String) {
    conversations(first: $first, after: $after) {
        edges { cursor node { id with { id username } lastMessage { id content status } unreadCount updatedAt } }
        pageInfo { hasNextPage endCursor }
    }
}";

const MARK_READ: &str = "mutation($with: ID!, $upTo: ID!) {
    markRead(withUserId: $with, upTo: $upTo) { id unreadCount lastMessage { id status readAt } }
}";

async fn chat_list(
    app: &TestApp,
    user: &TestUser,
    first: Option<i32>,
    after: Option<&str>,
) -> Value {
    let body =
        app.graphql(CHAT_LIST, json!({ "first": first, "after": after }), Some(&user.token)).await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["conversations"].clone()
}

/// (other user's id, last message content, unread count) per line.
fn lines(list: &Value) -> Vec<(String, String, u64)> {
    list["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| {
            let node = &edge["node"];
            (
                node["with"]["id"].as_str().unwrap().to_string(),
                node["lastMessage"]["content"].as_str().unwrap().to_string(),
                node["unreadCount"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_chat_list_is_newest_first_with_last_message_and_unread_count() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let carol = app.register("+12025550145", "carol").await;
    app.send_ok(&bob, &alice, "hi alice").await;
    app.send_ok(&bob, &alice, "are you there?").await;
    app.send_ok(&carol, &alice, "lunch?").await;
    app.send_ok(&alice, &bob, "yes!").await;

    let line = |user: &TestUser, last: &str, unread| (user.id.clone(), last.to_string(), unread);
    let list = chat_list(&app, &alice, None, None).await;
    assert_eq!(lines(&list), vec![line(&bob, "yes!", 2), line(&carol, "lunch?", 1)]);
    assert_eq!(list["edges"][0]["node"]["with"]["username"], "bob");
    assert_eq!(list["pageInfo"]["hasNextPage"], false);
    let bobs = chat_list(&app, &bob, None, None).await;
    assert_eq!(lines(&bobs), vec![line(&alice, "yes!", 1)]);
    assert_eq!(
        bobs["edges"][0]["node"]["id"], list["edges"][0]["node"]["id"],
        "both participants see the same conversation id"
    );
    // Nobody else's conversations show up.
    let dave = app.register("+12025550146", "dave").await;
    assert!(lines(&chat_list(&app, &dave, None, None).await).is_empty());
}

#[tokio::test]
async fn the_chat_list_pages_forward_and_new_activity_moves_to_the_top() {
    let app = spawn_app().await;
    let owner = app.register("+12025550100", "owner").await;
    let mut others = Vec::new();
    for n in 0..5 {
        let other = app.register(&format!("+1202555011{n}"), "friend").await;
        app.send_ok(&other, &owner, &format!("from {n}")).await;
        others.push(other);
    }
    let first = chat_list(&app, &owner, Some(2), None).await;
    let contents = |list: &Value| -> Vec<String> { lines(list).into_iter().map(|l| l.1).collect() };
    assert_eq!(contents(&first), ["from 4", "from 3"]);
    assert_eq!(first["pageInfo"]["hasNextPage"], true);
    app.send_ok(&others[0], &owner, "bump").await;
    let cursor = first["pageInfo"]["endCursor"].as_str().unwrap();
    let second = chat_list(&app, &owner, Some(2), Some(cursor)).await;
    assert_eq!(contents(&second), ["from 2", "from 1"]);
    let cursor = second["pageInfo"]["endCursor"].as_str().unwrap();
    let third = chat_list(&app, &owner, Some(2), Some(cursor)).await;
    assert!(contents(&third).is_empty(), "the bumped conversation is not repeated");
    assert_eq!(third["pageInfo"]["hasNextPage"], false);
    assert_eq!(contents(&chat_list(&app, &owner, Some(1), None).await), ["bump"]);

    for bad in [json!({ "first": 0 }), json!({ "first": 101 }), json!({ "after": "garbage" })] {
        let body = app.graphql(CHAT_LIST, bad.clone(), Some(&owner.token)).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{bad}");
    }
    let anonymous = app.graphql(CHAT_LIST, json!({}), None).await;
    assert_eq!(error_code(&anonymous), "UNAUTHENTICATED");
}

#[tokio::test]
async fn reading_updates_ticks_and_unread_counts_and_never_goes_back() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let first = app.send_ok(&alice, &bob, "one").await;
    let second = app.send_ok(&alice, &bob, "two").await;
    let third = app.send_ok(&alice, &bob, "three").await;
    assert_eq!(message_status(&app, &alice, &bob, &first).await, "SENT");
    app.mark_delivered(&bob, &[third["id"].as_str().unwrap()]).await;
    assert_eq!(message_status(&app, &alice, &bob, &third).await, "DELIVERED");

    let read = mark_read(&app, &bob, &alice, &second).await;
    assert_eq!(read["data"]["markRead"]["unreadCount"], 1, "{read}");
    assert_eq!(message_status(&app, &alice, &bob, &first).await, "READ", "the sender sees it");
    assert_eq!(message_status(&app, &alice, &bob, &second).await, "READ");
    assert_eq!(message_status(&app, &alice, &bob, &third).await, "DELIVERED");

    // Marking an older message again changes nothing; the newest reads everything.
    let again = mark_read(&app, &bob, &alice, &first).await;
    assert_eq!(again["data"]["markRead"]["unreadCount"], 1);
    let all = mark_read(&app, &bob, &alice, &third).await;
    assert_eq!(all["data"]["markRead"]["unreadCount"], 0);
    assert_eq!(all["data"]["markRead"]["lastMessage"]["status"], "READ");
    let list = chat_list(&app, &bob, None, None).await;
    assert_eq!(lines(&list)[0].2, 0);
    // Reading implies delivery: nothing is replayed any more.
    let backlog = app.store.undelivered_messages(&bob.user_id(), 0, 10).await.unwrap();
    assert!(backlog.is_empty(), "{backlog:?}");
}

#[tokio::test]
async fn only_a_message_of_that_conversation_can_be_read_up_to() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let carol = app.register("+12025550145", "carol").await;
    let to_carol = app.send_ok(&alice, &carol, "private").await;
    let to_bob = app.send_ok(&alice, &bob, "hello").await;
    for (reader, with, message) in [
        (&bob, &alice, &to_carol), // someone else's conversation
        (&bob, &carol, &to_carol), // bob is not in it
        (&bob, &bob, &to_bob),     // with yourself
    ] {
        let body = mark_read(&app, reader, with, message).await;
        assert_eq!(error_code(&body), "NOT_FOUND", "{body}");
    }
    let garbage =
        app.graphql(MARK_READ, json!({ "with": alice.id, "upTo": "nope" }), Some(&bob.token)).await;
    assert_eq!(error_code(&garbage), "NOT_FOUND");
    assert_eq!(message_status(&app, &alice, &carol, &to_carol).await, "SENT", "nothing changed");
    assert_eq!(message_status(&app, &alice, &bob, &to_bob).await, "SENT");
}

async fn mark_read(app: &TestApp, reader: &TestUser, with: &TestUser, up_to: &Value) -> Value {
    let variables = json!({ "with": with.id, "upTo": up_to["id"] });
    app.graphql(MARK_READ, variables, Some(&reader.token)).await
}

/// `message`'s status as `viewer` sees it in their history with `other`.
async fn message_status(
    app: &TestApp,
    viewer: &TestUser,
    other: &TestUser,
    message: &Value,
) -> String {
    let query = "query($with: ID!) { conversation(withUserId: $with) { edges { node { id status readAt } } } }";
    let body = app.graphql(query, json!({ "with": other.id }), Some(&viewer.token)).await;
    let edges =
        body["data"]["conversation"]["edges"].as_array().unwrap_or_else(|| panic!("{body}"));
    let node =
        edges.iter().map(|edge| &edge["node"]).find(|node| node["id"] == message["id"]).unwrap();
    assert_eq!(node["readAt"].is_null(), node["status"] != "READ", "{node}");
    node["status"].as_str().unwrap().to_string()
}
