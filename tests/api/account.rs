//! The caller's own account: `updateProfile` and `changePassword`.

use serde_json::{Value, json};

use crate::helpers::{
    Incoming, PASSWORD, TestApp, TestUser, error_code, spawn_app, spawn_app_configured,
};

const UPDATE_PROFILE: &str =
    "mutation($name: String!) { updateProfile(username: $name) { id username } }";
const CHANGE_PASSWORD: &str = "mutation($current: String!, $new: String!) {
    changePassword(currentPassword: $current, newPassword: $new) { message endedSessions } }";

async fn me(app: &TestApp, token: &str) -> Value {
    app.graphql("{ me { id username } }", json!({}), Some(token)).await
}

async fn login(app: &TestApp, user: &TestUser, password: &str) -> Value {
    let input = json!({ "phoneNumber": user.phone_number, "password": password });
    app.operation("Login", json!({ "input": input }), None).await
}

#[tokio::test]
async fn a_new_name_shows_everywhere_and_reaches_partners_live() {
    let app = spawn_app_configured(&[("RATE_LIMIT_ACCOUNT_CHANGES_PER_USER", "2")]).await;
    let (alice, bob) = app.two_users().await;
    // (Its marker message also starts a conversation, so Bob hears about Alice.)
    let mut bobs = app.events_connection(&bob, &alice).await;

    let renamed =
        app.graphql(UPDATE_PROFILE, json!({ "name": "  Alice B. " }), Some(&alice.token)).await;
    assert_eq!(renamed["data"]["updateProfile"]["username"], "Alice B.", "{renamed}");
    loop {
        let event = bobs.next_event("events").await;
        if event["__typename"] == "ProfileChanged" {
            assert_eq!(event["user"]["id"], alice.id.as_str());
            assert_eq!(event["user"]["username"], "Alice B.");
            break;
        }
    }
    assert_eq!(me(&app, &alice.token).await["data"]["me"]["username"], "Alice B.");

    let bad = app.graphql(UPDATE_PROFILE, json!({ "name": "x" }), Some(&alice.token)).await;
    assert_eq!(error_code(&bad), "BAD_USER_INPUT");
    let rename = |name: &'static str| {
        app.graphql(UPDATE_PROFILE, json!({ "name": name }), Some(&alice.token))
    };
    assert!(rename("Alice C.").await["errors"].is_null());
    let limited = rename("Alice D.").await;
    assert_eq!(error_code(&limited), "RATE_LIMITED", "two changes a minute: {limited}");
    assert_eq!(me(&app, &alice.token).await["data"]["me"]["username"], "Alice C.", "unchanged");
}

#[tokio::test]
async fn a_password_change_ends_every_other_session() {
    let app = spawn_app().await;
    let alice = app.register("+12025550143", "alice").await;
    let laptop = TestUser { token: app.login(&alice).await, ..alice.clone() };
    let mut laptop_socket = app.ws(&laptop).await;

    let wrong = app
        .graphql(
            CHANGE_PASSWORD,
            json!({ "current": "not-my-password", "new": "a-brand-new-secret" }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(error_code(&wrong), "BAD_USER_INPUT", "{wrong}");
    let weak = app
        .graphql(
            CHANGE_PASSWORD,
            json!({ "current": PASSWORD, "new": "short" }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(error_code(&weak), "BAD_USER_INPUT");
    assert!(me(&app, &laptop.token).await["errors"].is_null(), "nothing changed yet");

    let changed = app
        .graphql(
            CHANGE_PASSWORD,
            json!({ "current": PASSWORD, "new": "a-brand-new-secret" }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(changed["data"]["changePassword"]["endedSessions"], 1, "{changed}");
    assert_eq!(laptop_socket.recv().await, Incoming::Closed(Some(4401)));
    assert_eq!(error_code(&me(&app, &laptop.token).await), "UNAUTHENTICATED");
    assert!(me(&app, &alice.token).await["errors"].is_null(), "this session stays signed in");
    assert_eq!(error_code(&login(&app, &alice, PASSWORD).await), "UNAUTHENTICATED");
    assert!(login(&app, &alice, "a-brand-new-secret").await["data"]["login"]["token"].is_string());

    let anonymous = app
        .graphql(CHANGE_PASSWORD, json!({ "current": PASSWORD, "new": "x-long-enough-1" }), None)
        .await;
    assert_eq!(error_code(&anonymous), "UNAUTHENTICATED");
}
