//! MongoDB going away: requests fail fast with `SERVICE_UNAVAILABLE`, `/healthz` answers 503,
//! and the server stays up. Runs without a MongoDB server: it points at a port nothing listens on.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{spawn_app_configured, spawn_app_with};

/// A MongoDB address where nothing answers.
const NOWHERE: &str = "mongodb://127.0.0.1:9/?directConnection=true";

#[tokio::test]
async fn an_unreachable_mongodb_fails_fast_with_service_unavailable() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = [("MONGO_URI", NOWHERE), ("MONGO_TIMEOUT", "300ms")];
    let app = spawn_app_with(data_dir, &settings).await;

    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.unwrap();
    assert_eq!((&body["status"], &body["store"]), (&json!("unavailable"), &json!("mongodb")));

    for _ in 0..3 {
        let started = Instant::now();
        let body = app
            .graphql(
                "mutation($input: RegisterInput!) { register(input: $input) { token } }",
                json!({ "input": { "phoneNumber": "+12025550143", "username": "alice", "password": "correct-horse-battery" } }),
                None,
            )
            .await;
        assert_eq!(body["errors"][0]["extensions"]["code"], "SERVICE_UNAVAILABLE", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(!message.contains("127.0.0.1"), "the error leaks the database address: {message}");
        // Generous: the point is that it does not hang on the driver's 30 s default.
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_malformed_mongo_uri_stops_startup_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("MONGO_URI", "postgres://localhost/chat")];
    let error = crate::helpers::startup_refusal(dir.path(), &settings).await;
    assert!(error.contains("MONGO_URI"), "{error}");
}

/// Before: an outage during `connection_init` closed the socket with 4403 "Forbidden", as if the
/// token were bad. Now 1013 (try again later), which clients retry.
#[tokio::test]
async fn a_store_outage_at_connection_init_is_retryable() {
    use crate::helpers::{Incoming, WsClient};
    use chatapp::sessions::tokens::TokenService;
    let secret = "a-signing-secret-that-is-long-enough-for-hs256";
    let settings = [("MONGO_URI", NOWHERE), ("MONGO_TIMEOUT", "300ms"), ("JWT_SECRET", secret)];
    let app = spawn_app_configured(&settings).await;
    let tokens = TokenService::new(secret.as_bytes(), Duration::from_secs(3600));
    let expires_at = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let id = "0123456789abcdef01234567";
    let (user, session) = (chatapp::domain::UserId::new(id), chatapp::domain::SessionId::new(id));
    let token = tokens.issue(&user, &session, expires_at).unwrap();
    let mut client = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
    assert_eq!(client.init(json!({ "token": token })).await, Incoming::Closed(Some(1013)));
}
