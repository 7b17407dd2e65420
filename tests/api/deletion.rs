//! `deleteAccount`: what is erased and what is kept, read back from the store.

use serde_json::{Value, json};

use chatapp::domain::{MessageId, PhoneNumber};

use crate::helpers::{Incoming, PASSWORD, TestApp, TestUser, error_code, spawn_app};

const DELETE: &str = "mutation($password: String!) { deleteAccount(password: $password) }";

async fn delete(app: &TestApp, user: &TestUser, password: &str) -> Value {
    app.graphql(DELETE, json!({ "password": password }), Some(&user.token)).await
}

#[tokio::test]
async fn deleting_an_account_erases_it_frees_the_number_and_keeps_what_others_received() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let delivered = app.send_ok(&alice, &bob, "from alice, delivered").await;
    app.mark_delivered(&bob, &[delivered["id"].as_str().unwrap()]).await;
    let waiting = app.send_ok(&bob, &alice, "to alice, never delivered").await;
    let mut socket = app.ws(&alice).await;

    let wrong = delete(&app, &alice, "not-my-password").await;
    assert_eq!(error_code(&wrong), "BAD_USER_INPUT", "{wrong}");
    assert!(app.graphql("{ me { id } }", json!({}), Some(&alice.token)).await["errors"].is_null());

    assert_eq!(delete(&app, &alice, PASSWORD).await["data"]["deleteAccount"], true);
    assert_eq!(socket.recv().await, Incoming::Closed(Some(4401)));
    let me = app.graphql("{ me { id } }", json!({}), Some(&alice.token)).await;
    assert_eq!(error_code(&me), "UNAUTHENTICATED");
    let input = json!({ "phoneNumber": alice.phone_number, "password": PASSWORD });
    let login = app.operation("Login", json!({ "input": input }), None).await;
    assert_eq!(error_code(&login), "UNAUTHENTICATED");

    // Read back from the store: no number, no hash, no name, nothing waiting.
    let phone = PhoneNumber::parse(&alice.phone_number).unwrap();
    assert!(app.store.user_by_phone(&phone).await.unwrap().is_none(), "the number is free");
    let tombstone = app.store.user_by_id(&alice.user_id()).await.unwrap().unwrap();
    assert!(tombstone.is_deleted());
    assert_eq!(tombstone.username.as_str(), "Deleted account");
    assert!(!tombstone.phone_number.as_str().contains(&alice.phone_number[1..]));
    let credentials =
        app.store.credentials_by_phone(&tombstone.phone_number).await.unwrap().unwrap();
    assert_eq!(credentials.password_hash.as_str(), "", "the hash is gone");
    let gone = app.store.messages_by_ids(&[MessageId::new(waiting["id"].as_str().unwrap())]).await;
    assert!(gone.unwrap().is_empty(), "messages waiting for the deleted account are removed");
    assert!(app.store.user_sessions(&alice.user_id()).await.unwrap().is_empty());

    // Bob keeps what he received, from a "Deleted account" with no number.
    let history = app
        .graphql(
            "query($with: ID!) { conversation(withUserId: $with) { edges { node { id content sender { username phoneNumber } } } } }",
            json!({ "with": alice.id }),
            Some(&bob.token),
        )
        .await;
    let edges =
        history["data"]["conversation"]["edges"].as_array().unwrap_or_else(|| panic!("{history}"));
    assert_eq!(edges.len(), 1, "{history}");
    assert_eq!(edges[0]["node"]["id"], delivered["id"]);
    assert_eq!(
        edges[0]["node"]["sender"],
        json!({ "username": "Deleted account", "phoneNumber": null })
    );
    // The account cannot be reached any more; the number can be registered again.
    assert_eq!(error_code(&app.send(&bob, &alice, "hello?", None).await), "NOT_FOUND");
    let user = app
        .graphql(
            "query($id: ID!) { user(id: $id) { id } }",
            json!({ "id": alice.id }),
            Some(&bob.token),
        )
        .await;
    assert_eq!(user["data"]["user"], Value::Null);
    let again = app.register(&alice.phone_number, "new alice").await;
    assert_ne!(again.id, alice.id);
}
