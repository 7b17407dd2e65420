//! Sessions end for real: logout, revocation and expiry close websockets; forged tokens are
//! refused everywhere.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chatapp::sessions::tokens::TokenService;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{
    Incoming, TestApp, TestUser, WsClient, error_code, spawn_app, spawn_app_configured,
    startup_refusal,
};

async fn me(app: &TestApp, token: &str) -> Value {
    app.graphql("{ me { id } }", json!({}), Some(token)).await
}

/// Waits for the close and checks it came within a second.
async fn expect_close_within_a_second(client: &mut WsClient, code: u16) {
    let started = Instant::now();
    assert_eq!(client.recv().await, Incoming::Closed(Some(code)));
    assert!(started.elapsed() < Duration::from_secs(1), "closed after {:?}", started.elapsed());
}

async fn ws_refused(app: &TestApp, token: &str) {
    let mut client = WsClient::connect(app, "graphql-transport-ws").await.unwrap();
    assert_eq!(client.init(json!({ "token": token })).await, Incoming::Closed(Some(4401)));
}

#[tokio::test]
async fn logout_closes_the_sessions_sockets_and_spares_the_other_session() {
    let app = spawn_app().await;
    let alice = app.register("+12025550143", "alice").await;
    let bob = app.register("+12025550144", "bob").await;
    let other_session = TestUser { token: app.login(&bob).await, ..bob.clone() };

    let mut first = app.ws(&bob).await;
    let mut second = app.ws(&bob).await;
    let mut elsewhere = app.ws(&other_session).await;
    let mut clients = [(&mut first, "a"), (&mut second, "b"), (&mut elsewhere, "c")];
    app.subscribe_listening(&mut clients, &alice, &bob).await;

    let body = app.graphql("mutation { logout { message } }", json!({}), Some(&bob.token)).await;
    assert!(body["errors"].is_null(), "{body}");
    expect_close_within_a_second(&mut first, 4401).await;
    expect_close_within_a_second(&mut second, 4401).await;

    let message = app.send_ok(&alice, &bob, "still here?").await;
    assert_eq!(elsewhere.next_message("c").await["id"], message["id"]);
    assert_eq!(error_code(&me(&app, &bob.token).await), "UNAUTHENTICATED");
    assert_eq!(me(&app, &other_session.token).await["data"]["me"]["id"], bob.id.as_str());
    ws_refused(&app, &bob.token).await;
}

#[tokio::test]
async fn logout_of_all_sessions_closes_every_socket_and_token() {
    let app = spawn_app().await;
    let bob = app.register("+12025550144", "bob").await;
    let second_token = app.login(&bob).await;
    let mut phone = app.ws(&bob).await;
    let mut laptop = app.ws_with_token(&second_token).await;
    phone.subscribe_messages("p").await;

    let body = app
        .graphql("mutation { logout(allSessions: true) { message } }", json!({}), Some(&bob.token))
        .await;
    assert_eq!(body["data"]["logout"]["message"], "Logged out of all sessions");
    expect_close_within_a_second(&mut phone, 4401).await;
    expect_close_within_a_second(&mut laptop, 4401).await;
    for token in [&bob.token, &second_token] {
        assert_eq!(error_code(&me(&app, token).await), "UNAUTHENTICATED");
        ws_refused(&app, token).await;
    }
}

#[tokio::test]
async fn sessions_are_listed_and_another_device_can_be_revoked() {
    let app = spawn_app().await;
    let alice = app.register("+12025550143", "alice").await;
    let bob = app.register("+12025550144", "bob").await;
    let lost_phone = app.login(&bob).await;
    let mut lost_socket = app.ws_with_token(&lost_phone).await;

    let body = app
        .graphql(
            "{ sessions { id current createdAt lastSeenAt expiresAt } }",
            json!({}),
            Some(&bob.token),
        )
        .await;
    let sessions = body["data"]["sessions"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let other = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Alice cannot revoke Bob's session, and cannot tell it exists.
    let body = app
        .graphql(
            "mutation($id: ID!) { revokeSession(id: $id) { message } }",
            json!({ "id": other }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    assert_eq!(me(&app, &lost_phone).await["data"]["me"]["id"], bob.id.as_str());

    let body = app
        .graphql(
            "mutation($id: ID!) { revokeSession(id: $id) { message } }",
            json!({ "id": other }),
            Some(&bob.token),
        )
        .await;
    assert_eq!(body["data"]["revokeSession"]["message"], "Session revoked");
    expect_close_within_a_second(&mut lost_socket, 4401).await;
    assert_eq!(error_code(&me(&app, &lost_phone).await), "UNAUTHENTICATED");
    let body = app.graphql("{ sessions { id } }", json!({}), Some(&bob.token)).await;
    assert_eq!(body["data"]["sessions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_socket_closes_4403_when_its_token_expires() {
    let app = spawn_app_configured(&[("JWT_TTL", "2s")]).await;
    let bob = app.register("+12025550144", "bob").await;
    let mut client = app.ws(&bob).await;
    client.subscribe_messages("1").await;
    let started = Instant::now();
    assert_eq!(client.recv().await, Incoming::Closed(Some(4403)));
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    assert_eq!(error_code(&me(&app, &bob.token).await), "UNAUTHENTICATED");
    // A new socket with the expired (but genuine) token: 4403, which clients retry with a fresh
    // token from `connectionParams`.
    let mut again = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
    assert_eq!(again.init(json!({ "token": bob.token })).await, Incoming::Closed(Some(4403)));
}

#[tokio::test]
async fn forged_tokens_are_refused_everywhere() {
    let app = spawn_app().await;
    let bob = app.register("+12025550144", "bob").await;
    let claims: Value = {
        let body = bob.token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
    };
    let sid = claims["sid"].as_str().unwrap();

    let other_secret =
        TokenService::new(b"some other secret, at least 32 bytes long", Duration::from_secs(600))
            .issue(
                &bob.user_id(),
                &chatapp::domain::SessionId::new(sid),
                chrono::Utc::now() + chrono::Duration::minutes(10),
            )
            .unwrap();
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let unsigned =
        format!("{}.{}.", encode(&json!({ "alg": "none", "typ": "JWT" })), encode(&claims));
    let tampered = {
        let mut parts: Vec<String> = bob.token.split('.').map(String::from).collect();
        let mut changed = claims.clone();
        changed["exp"] = json!(claims["exp"].as_i64().unwrap() + 1_000_000);
        parts[1] = encode(&changed);
        parts.join(".")
    };
    let hs512 = {
        let mut parts: Vec<String> = bob.token.split('.').map(String::from).collect();
        parts[0] = encode(&json!({ "alg": "HS512", "typ": "JWT" }));
        parts.join(".")
    };
    for forged in [other_secret, unsigned, tampered, hs512] {
        assert_eq!(error_code(&me(&app, &forged).await), "UNAUTHENTICATED", "{forged}");
        ws_refused(&app, &forged).await;
    }
    // The genuine token still works.
    assert_eq!(me(&app, &bob.token).await["data"]["me"]["id"], bob.id.as_str());
}

#[tokio::test]
async fn a_short_jwt_secret_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let error = startup_refusal(dir.path(), &[("JWT_SECRET", "too short")]).await;
    assert!(error.contains("JWT_SECRET"), "{error}");
}
