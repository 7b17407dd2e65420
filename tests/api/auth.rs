//! Registering, logging in and out, and who `me` is.

use serde_json::json;

use crate::helpers::{error_code, spawn_app};

const REGISTER: &str = "mutation($input: RegisterInput!) { register(input: $input) { token profileId username message user { id username phoneNumber } } }";
const LOGIN: &str = "mutation($input: LoginInput!) { login(input: $input) { token profileId username message user { id } } }";

#[tokio::test]
async fn register_returns_a_working_token_and_the_user() {
    let app = spawn_app().await;
    let body = app
        .graphql(
            REGISTER,
            json!({ "input": { "phoneNumber": "+1 (202) 555-0143", "username": " alice ", "password": "correct-horse-battery" } }),
            None,
        )
        .await;
    let payload = &body["data"]["register"];
    assert_eq!(payload["username"], "alice");
    assert_eq!(payload["message"], "User registered successfully");
    assert_eq!(payload["user"]["phoneNumber"], "+12025550143");
    assert_eq!(payload["profileId"], payload["user"]["id"]);

    let me = app
        .graphql("{ me { id username phoneNumber } }", json!({}), payload["token"].as_str())
        .await;
    assert_eq!(me["data"]["me"]["id"], payload["profileId"]);
    assert_eq!(me["data"]["me"]["username"], "alice");
}

#[tokio::test]
async fn a_phone_number_can_register_only_once_in_any_formatting() {
    let app = spawn_app().await;
    app.register("+12025550143", "alice").await;
    let body = app
        .graphql(
            REGISTER,
            json!({ "input": { "phoneNumber": "+1 202-555-0143", "username": "mallory", "password": "correct-horse-battery" } }),
            None,
        )
        .await;
    assert_eq!(error_code(&body), "CONFLICT");
    assert!(body["data"].is_null());
}

#[tokio::test]
async fn invalid_registration_details_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    for input in [
        json!({ "phoneNumber": "555-0143", "username": "alice", "password": "correct-horse-battery" }),
        json!({ "phoneNumber": "+12025550143", "username": "a", "password": "correct-horse-battery" }),
        json!({ "phoneNumber": "+12025550143", "username": "alice", "password": "short" }),
        json!({ "phoneNumber": "+12025550143", "username": "alice", "password": "x".repeat(72) }),
    ] {
        let body = app.graphql(REGISTER, json!({ "input": input }), None).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{input}");
    }
    let phone = chatapp::domain::PhoneNumber::parse("+12025550143").unwrap();
    let user = app.store.user_by_phone(&phone).await.unwrap();
    assert!(user.is_none(), "a refused registration stored a user");
}

#[tokio::test]
async fn login_works_with_the_right_password() {
    let app = spawn_app().await;
    let alice = app.register("+12025550143", "alice").await;
    let body = app
        .graphql(
            LOGIN,
            json!({ "input": { "phoneNumber": "+1 (202) 555-0143", "password": "correct-horse-battery" } }),
            None,
        )
        .await;
    let payload = &body["data"]["login"];
    assert_eq!(payload["profileId"], alice.id.as_str());
    assert_eq!(payload["message"], "Login successful");
    let me = app.graphql("{ me { id } }", json!({}), payload["token"].as_str()).await;
    assert_eq!(me["data"]["me"]["id"], alice.id.as_str());
}

#[tokio::test]
async fn wrong_password_and_unknown_number_get_the_same_answer() {
    let app = spawn_app().await;
    app.register("+12025550143", "alice").await;
    let wrong_password = app
        .graphql(
            LOGIN,
            json!({ "input": { "phoneNumber": "+12025550143", "password": "not-the-password" } }),
            None,
        )
        .await;
    let unknown_number = app
        .graphql(
            LOGIN,
            json!({ "input": { "phoneNumber": "+12025550199", "password": "correct-horse-battery" } }),
            None,
        )
        .await;
    assert_eq!(error_code(&wrong_password), "UNAUTHENTICATED");
    assert_eq!(wrong_password["errors"][0]["message"], unknown_number["errors"][0]["message"]);
    assert_eq!(
        wrong_password["errors"][0]["extensions"],
        unknown_number["errors"][0]["extensions"]
    );
}

#[tokio::test]
async fn me_requires_a_valid_token() {
    let app = spawn_app().await;
    let alice = app.register("+12025550143", "alice").await;
    assert_eq!(error_code(&app.graphql("{ me { id } }", json!({}), None).await), "UNAUTHENTICATED");
    assert_eq!(
        error_code(&app.graphql("{ me { id } }", json!({}), Some("not.a.jwt")).await),
        "UNAUTHENTICATED"
    );
    let mut tampered = alice.token.clone();
    tampered.pop();
    tampered.push(if alice.token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        error_code(&app.graphql("{ me { id } }", json!({}), Some(&tampered)).await),
        "UNAUTHENTICATED"
    );
}

#[tokio::test]
async fn logout_makes_the_token_unusable_but_not_other_sessions() {
    let app = spawn_app().await;
    let alice = app.register("+12025550143", "alice").await;
    let second = app
        .graphql(
            LOGIN,
            json!({ "input": { "phoneNumber": "+12025550143", "password": "correct-horse-battery" } }),
            None,
        )
        .await;
    let second_token = second["data"]["login"]["token"].as_str().unwrap();

    let body = app.graphql("mutation { logout { message } }", json!({}), Some(&alice.token)).await;
    assert_eq!(body["data"]["logout"]["message"], "Logged out successfully");
    let after = app.graphql("{ me { id } }", json!({}), Some(&alice.token)).await;
    assert_eq!(error_code(&after), "UNAUTHENTICATED");
    let other = app.graphql("{ me { id } }", json!({}), Some(second_token)).await;
    assert_eq!(other["data"]["me"]["id"], alice.id.as_str());
}

#[tokio::test]
async fn users_can_be_found_by_id_and_phone_number() {
    let app = spawn_app().await;
    let alice = app.register("+12025550143", "alice").await;
    let bob = app.register("+33612345678", "bob").await;
    let body = app
        .graphql(
            "query($id: ID!) { user(id: $id) { username } userByPhoneNumber(phoneNumber: \"+33 6 12 34 56 78\") { id } missing: user(id: \"nope\") { id } }",
            json!({ "id": bob.id }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(body["data"]["user"]["username"], "bob");
    assert_eq!(body["data"]["userByPhoneNumber"]["id"], bob.id.as_str());
    assert!(body["data"]["missing"].is_null());
    let anonymous = app
        .graphql("query($id: ID!) { user(id: $id) { id } }", json!({ "id": bob.id }), None)
        .await;
    assert_eq!(error_code(&anonymous), "UNAUTHENTICATED");
}
