//! Every limit and rate limit, each set low so a test can reach it: the refusal is cheap, coded,
//! says when to retry where that applies, and leaves the store and other users alone.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{Incoming, TestApp, WsClient, error_code, spawn_app_configured};

async fn app_with(settings: &[(&str, &str)]) -> TestApp {
    spawn_app_configured(settings).await
}

/// Asserts a `RATE_LIMITED` error that says how many seconds to wait.
fn assert_rate_limited(body: &Value) {
    assert_eq!(error_code(body), "RATE_LIMITED", "{body}");
    let retry_after = body["errors"][0]["extensions"]["retryAfter"].as_u64();
    assert!(retry_after.is_some_and(|seconds| seconds >= 1), "no retryAfter: {body}");
}

const REGISTER: &str = "mutation($input: RegisterInput!) { register(input: $input) { token } }";
const LOGIN: &str = "mutation($input: LoginInput!) { login(input: $input) { token } }";

async fn try_register(app: &TestApp, phone: &str) -> Value {
    let input =
        json!({ "phoneNumber": phone, "username": "someone", "password": "correct-horse-battery" });
    app.graphql(REGISTER, json!({ "input": input }), None).await
}

async fn try_login(app: &TestApp, phone: &str, password: &str) -> Value {
    let input = json!({ "phoneNumber": phone, "password": password });
    app.graphql(LOGIN, json!({ "input": input }), None).await
}

#[tokio::test]
async fn sign_ins_are_limited_per_client_address() {
    let app = app_with(&[("RATE_LIMIT_AUTH_PER_ADDRESS", "3")]).await;
    for n in 0..3 {
        let body = try_register(&app, &format!("+1202555014{n}")).await;
        assert!(body["errors"].is_null(), "{body}");
    }
    let body = try_register(&app, "+12025550149").await;
    assert_rate_limited(&body);
    let store = &app.store;
    assert!(
        store
            .user_by_phone(&chatapp::domain::PhoneNumber::parse("+12025550149").unwrap())
            .await
            .unwrap()
            .is_none(),
        "nothing stored"
    );
    // Logins from the same address share the budget.
    assert_rate_limited(&try_login(&app, "+12025550140", "correct-horse-battery").await);
}

#[tokio::test]
async fn sign_ins_are_limited_per_phone_number() {
    let app = app_with(&[("RATE_LIMIT_AUTH_PER_PHONE", "3")]).await;
    let user = app.register("+12025550141", "alice").await;
    for _ in 0..2 {
        app.login(&user).await;
    }
    assert_rate_limited(&try_login(&app, &user.phone_number, "correct-horse-battery").await);
    // Another account is untouched, and the limited user's token keeps working.
    app.register("+12025550142", "bob").await;
    let me = app.graphql("{ me { id } }", json!({}), Some(&user.token)).await;
    assert_eq!(me["data"]["me"]["id"], user.id.as_str());
}

#[tokio::test]
async fn repeated_failed_logins_back_off_even_for_the_right_password() {
    let app = app_with(&[("LOGIN_FAILURES_BEFORE_BACKOFF", "3")]).await;
    let user = app.register("+12025550141", "alice").await;
    for _ in 0..3 {
        let body = try_login(&app, &user.phone_number, "wrong password").await;
        assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
    }
    // The guesser is now slowed down, whatever they try next.
    assert_rate_limited(&try_login(&app, &user.phone_number, "correct-horse-battery").await);
    // Other accounts log in as usual.
    let other = app.register("+12025550142", "bob").await;
    app.login(&other).await;
    // After the wait, the right password works and clears the record.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.login(&user).await;
    let body = try_login(&app, &user.phone_number, "wrong password").await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "a success resets the count: {body}");
}

#[tokio::test]
async fn messages_are_limited_per_sender() {
    let app = app_with(&[("RATE_LIMIT_MESSAGES_PER_USER", "3")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    for n in 0..3 {
        app.send_ok(&alice, &bob, &format!("message {n}")).await;
    }
    assert_rate_limited(&app.send(&alice, &bob, "one too many", None).await);
    let stored = app.store.undelivered_messages(&bob.user_id(), 0, 100).await.unwrap();
    assert_eq!(stored.len(), 3, "the refused message was not stored");
    // Bob has his own budget.
    app.send_ok(&bob, &alice, "hello alice").await;
}

#[tokio::test]
async fn batches_are_limited_in_size() {
    let app = app_with(&[("GRAPHQL_MAX_BATCH", "2")]).await;
    let query = json!({ "query": "{ __typename }" });
    let post = |batch: Value| app.http.post(app.url("/graphql")).json(&batch).send();
    let response = post(json!([query, query])).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap().as_array().unwrap().len(), 2);
    let response = post(json!([query, query, query])).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "LIMIT_EXCEEDED", "{body}");
}

#[tokio::test]
async fn deep_queries_are_refused() {
    let app = app_with(&[("GRAPHQL_MAX_DEPTH", "4")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let deep = "query($with: ID!) { conversation(withUserId: $with) { edges { node { sender { id } } } } }";
    let body = app.graphql(deep, json!({ "with": alice.id }), Some(&alice.token)).await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("nested too deep"), "{body}");
}

#[tokio::test]
async fn alias_floods_exceed_the_default_complexity() {
    let app = app_with(&[]).await;
    let alice = app.register("+12025550141", "alice").await;
    let fields: String = (0..300).map(|n| format!("a{n}: me {{ id }} ")).collect();
    let body = app.graphql(&format!("{{ {fields} }}"), json!({}), Some(&alice.token)).await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("complex"), "{body}");
    // An ordinary query is well within it.
    let body =
        app.graphql("{ me { id username phoneNumber } }", json!({}), Some(&alice.token)).await;
    assert!(body["errors"].is_null(), "{body}");
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let app = app_with(&[("GRAPHQL_INTROSPECTION", "false")]).await;
    let body = app
        .graphql("{ __schema { types { name } } __type(name: \"User\") { name } }", json!({}), None)
        .await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("Introspection is disabled"), "{body}");
    assert!(!body.to_string().contains("Message"), "{body}");
    // `__typename` is not introspection of the schema and keeps working.
    let body = app.graphql("{ __typename }", json!({}), None).await;
    assert_eq!(body["data"]["__typename"], "Query");
    let on = app_with(&[]).await;
    let body = on.graphql("{ __schema { queryType { name } } }", json!({}), None).await;
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
}

/// What GraphiQL, graphql-codegen and Apollo tooling send to load the schema.
const INTROSPECTION_QUERY: &str = include_str!("introspection_query.graphql");

#[tokio::test]
async fn tools_can_introspect_on_default_settings() {
    // Even with a far lower depth limit: introspection nests `ofType` deeply, harmlessly.
    for settings in [&[][..], &[("GRAPHQL_MAX_DEPTH", "4")][..]] {
        let app = app_with(settings).await;
        let body = app.graphql(INTROSPECTION_QUERY, json!({}), None).await;
        assert!(body["errors"].is_null(), "{body}");
        let types = body["data"]["__schema"]["types"].as_array().unwrap();
        assert!(types.iter().any(|t| t["name"] == "Message"), "{body}");
    }
}

#[tokio::test]
async fn multiplying_introspection_is_refused() {
    let app = app_with(&[]).await;
    let query =
        "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }";
    let body = app.graphql(query, json!({}), None).await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("nests too many lists"));
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_a_coded_error() {
    let app = app_with(&[("MAX_BODY_BYTES", "2048")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    let big = json!({
        "query": "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }",
        "variables": { "input": { "recipientId": bob.id, "content": "x".repeat(4000) } },
    });
    let response = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&alice.token)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(&response.json().await.unwrap()), "LIMIT_EXCEEDED");
    // A chunked body (no Content-Length) that runs over is refused the same way.
    let chunks = futures::stream::iter(
        (0..8)
            .map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024]))
            .chain([Ok(big.to_string().into_bytes())]),
    );
    let response = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(&response.json().await.unwrap()), "LIMIT_EXCEEDED");
    assert!(app.store.undelivered_messages(&bob.user_id(), 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn oversized_websocket_messages_close_the_socket_with_1009() {
    let app = app_with(&[("WS_MAX_MESSAGE_BYTES", "1024")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let mut ws = app.ws(&alice).await;
    ws.send_json(json!({
        "id": "1",
        "type": "subscribe",
        "payload": { "query": format!("subscription {{ messageReceived {{ id }} }} # {}", "x".repeat(2000)) },
    }))
    .await;
    assert_eq!(ws.recv().await, Incoming::Closed(Some(1009)));
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let app = app_with(&[("WS_MAX_SUBSCRIPTIONS", "2")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    let mut ws = app.ws(&bob).await;
    ws.subscribe_messages("1").await;
    ws.subscribe_messages("2").await;
    ws.subscribe_messages("3").await;
    match ws.recv().await {
        Incoming::Json(value) => {
            assert_eq!(value["type"], "error", "{value}");
            assert_eq!(value["id"], "3");
            assert_eq!(value["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED", "{value}");
        }
        other => panic!("expected an error for the third subscription, got {other:?}"),
    }
    // The connection and its two subscriptions carry on.
    let sent = app.send_ok(&alice, &bob, "still here").await;
    let mut ids = vec![];
    for _ in 0..2 {
        match ws.recv().await {
            Incoming::Json(value) if value["type"] == "next" => {
                assert_eq!(value["payload"]["data"]["messageReceived"]["id"], sent["id"]);
                ids.push(value["id"].as_str().unwrap().to_string());
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    ids.sort();
    assert_eq!(ids, ["1", "2"]);
    // Completing one frees a place: the new subscription starts with the unacknowledged backlog.
    ws.send_json(json!({ "id": "1", "type": "complete" })).await;
    ws.subscribe_messages("4").await;
    assert_eq!(ws.next_message("4").await["id"], sent["id"]);
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let app = app_with(&[("WS_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    let first = app.ws(&alice).await;
    let _second = app.ws(&alice).await;
    let mut third = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
    assert_eq!(third.init(json!({ "token": alice.token })).await, Incoming::Closed(Some(1008)));
    // Other users are not affected, and closing one connection frees a place.
    let _bob = app.ws(&bob).await;
    first.close().await;
    let mut retry = None;
    for _ in 0..50 {
        let mut client = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
        if client.init(json!({ "token": alice.token })).await
            == Incoming::Json(json!({ "type": "connection_ack" }))
        {
            retry = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(retry.is_some(), "a place was freed when a connection closed");
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization, content-type")
            .send()
    };
    let allow = |response: &reqwest::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let app = app_with(&[("CORS_ALLOWED_ORIGINS", "https://chat.example.com")]).await;
    let response = preflight(&app, "https://chat.example.com").await.unwrap();
    assert_eq!(allow(&response).as_deref(), Some("https://chat.example.com"));
    // Browsers may cache the answer instead of preflighting every request.
    assert_eq!(response.headers()["access-control-max-age"], "3600");
    let response = preflight(&app, "https://evil.example.net").await.unwrap();
    assert_eq!(allow(&response), None);
    // Unset: no cross-origin access at all.
    let closed = app_with(&[]).await;
    let response = preflight(&closed, "https://chat.example.com").await.unwrap();
    assert_eq!(allow(&response), None);
}

#[tokio::test]
async fn websocket_upgrades_check_the_origin_list() {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest, http::HeaderValue};
    let app = app_with(&[("CORS_ALLOWED_ORIGINS", "https://chat.example.com")]).await;
    let connect = |origin: String| {
        let mut request = format!("ws://{}/graphql", app.address).into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("graphql-transport-ws"));
        headers.insert("Origin", HeaderValue::from_str(&origin).unwrap());
        tokio_tungstenite::connect_async(request)
    };
    assert!(connect("https://chat.example.com".into()).await.is_ok());
    // GraphiQL served by this server itself.
    assert!(connect(format!("http://{}", app.address)).await.is_ok());
    match connect("https://evil.example.net".into()).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| "a websocket")),
    }
}

/// Logins are hammered with real bcrypt work while a conversation goes on; every message must
/// still arrive promptly. The bound is generous (the benchmark measures the real figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_stays_fast_while_logins_are_hammered() {
    let app = Arc::new(app_with(&[("BCRYPT_COST", "10"), ("BCRYPT_CONCURRENCY", "1")]).await);
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    let mut ws = app.ws(&bob).await;
    ws.subscribe_messages("inbox").await;

    let hammer: Vec<_> = (0..16)
        .map(|_| {
            let app = app.clone();
            let phone = alice.phone_number.clone();
            tokio::spawn(async move {
                loop {
                    try_login(&app, &phone, "correct-horse-battery").await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut worst = Duration::ZERO;
    for n in 0..20 {
        let started = std::time::Instant::now();
        let sent = app.send_ok(&alice, &bob, &format!("during the storm {n}")).await;
        let received = ws.next_message("inbox").await;
        worst = worst.max(started.elapsed());
        assert_eq!(received["id"], sent["id"]);
    }
    let storm_ran_throughout = hammer.iter().all(|task| !task.is_finished());
    for task in hammer {
        task.abort();
    }
    assert!(storm_ran_throughout, "a login task stopped early");
    assert!(worst < Duration::from_secs(1), "slowest delivery took {worst:?} during a login storm");
}
