//! Sign-in limits that an attacker must not get around: over the websocket, behind proxies,
//! from a fresh IPv6 address per request, or by locking an owner out with wrong guesses.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::helpers::{Incoming, TestApp, WsClient, spawn_app_configured};

async fn app_with(settings: &[(&str, &str)]) -> TestApp {
    spawn_app_configured(settings).await
}

const LOGIN: &str = "mutation($input: LoginInput!) { login(input: $input) { token } }";
const REGISTER: &str = "mutation($input: RegisterInput!) { register(input: $input) { token } }";

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("none")
}

/// A login over HTTP from `forwarded_for`, as a proxy would pass it on.
async fn login_from(app: &TestApp, forwarded_for: &str, phone: &str, password: &str) -> Value {
    let input = json!({ "phoneNumber": phone, "password": password });
    app.http
        .post(app.url("/graphql"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "query": LOGIN, "variables": { "input": input } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Before: sign-ins sent as websocket operations carried no address and were never limited.
#[tokio::test]
async fn websocket_sign_ins_count_against_the_client_address() {
    let app = app_with(&[("RATE_LIMIT_AUTH_PER_ADDRESS", "3")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let mut ws = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
    assert!(matches!(ws.init(json!({ "token": alice.token })).await, Incoming::Json(_)));
    let input = json!({ "phoneNumber": alice.phone_number, "password": "correct-horse-battery" });
    let mut codes = Vec::new();
    for id in 1..=3 {
        let payload = json!({ "query": LOGIN, "variables": { "input": input } });
        ws.send_json(json!({ "id": id.to_string(), "type": "subscribe", "payload": payload }))
            .await;
        let Incoming::Json(message) = ws.recv().await else { panic!("socket closed") };
        // A result is `next` then `complete`; a refused operation is one `error` message.
        if message["type"] == "error" {
            codes.push(code(&json!({ "errors": message["payload"] })).to_string());
        } else {
            codes.push(code(&message["payload"]).to_string());
            assert!(matches!(ws.recv().await, Incoming::Json(done) if done["type"] == "complete"));
        }
    }
    // The HTTP registration was the first attempt; the third websocket login is the fourth.
    assert_eq!(codes, ["none", "none", "RATE_LIMITED"]);
    let input = json!({ "phoneNumber": "+12025550142", "username": "bob", "password": "correct-horse-battery" });
    let body = app.graphql(REGISTER, json!({ "input": input }), None).await;
    assert_eq!(code(&body), "RATE_LIMITED", "HTTP shares the budget: {body}");
}

/// Before: eight wrong passwords from anyone locked the owner out.
#[tokio::test]
async fn a_strangers_wrong_guesses_do_not_lock_the_owner_out() {
    let app = app_with(&[("TRUST_PROXY", "1"), ("LOGIN_FAILURES_BEFORE_BACKOFF", "3")]).await;
    let owner = app.register("+12025550141", "alice").await;
    for _ in 0..3 {
        let body = login_from(&app, "198.51.100.7", &owner.phone_number, "guess1234").await;
        assert_eq!(code(&body), "UNAUTHENTICATED");
    }
    let body = login_from(&app, "198.51.100.7", &owner.phone_number, "correct-horse-battery").await;
    assert_eq!(code(&body), "RATE_LIMITED", "the guesser is slowed down: {body}");
    let body = login_from(&app, "192.0.2.1", &owner.phone_number, "correct-horse-battery").await;
    assert!(body["data"]["login"]["token"].is_string(), "the owner signs in: {body}");
}

/// The error code of a login (to an unknown number) from each `X-Forwarded-For` value in turn,
/// on a server behind one proxy that allows two sign-ins per client.
async fn codes_behind_one_proxy(forwarded_for: &[&str]) -> Vec<String> {
    let app = app_with(&[("TRUST_PROXY", "1"), ("RATE_LIMIT_AUTH_PER_ADDRESS", "2")]).await;
    let mut codes = Vec::new();
    for forwarded in forwarded_for {
        let body = login_from(&app, forwarded, "+12025550141", "correct-horse-battery").await;
        codes.push(code(&body).to_string());
    }
    codes
}

/// Before: the left-most X-Forwarded-For entry, which the client writes, was the address.
#[tokio::test]
async fn forwarded_for_is_trusted_only_as_far_as_the_proxies() {
    // The client makes up a new first entry each time; the proxy appends the real one.
    let codes = codes_behind_one_proxy(&[
        "10.9.8.1, 203.0.113.9",
        "10.9.8.2, 203.0.113.9",
        "10.9.8.3, 203.0.113.9",
        "10.9.8.1, 203.0.113.10",
    ])
    .await;
    let expected = ["UNAUTHENTICATED", "UNAUTHENTICATED", "RATE_LIMITED", "UNAUTHENTICATED"];
    assert_eq!(codes, expected, "the last one is another client with its own budget");
}

/// Before: every IPv6 address got a fresh bucket, and a client holds billions of them.
#[tokio::test]
async fn ipv6_clients_are_limited_per_64() {
    let codes = codes_behind_one_proxy(&[
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2::3",
        "2001:db8:1:3::1",
    ])
    .await;
    let expected = ["UNAUTHENTICATED", "UNAUTHENTICATED", "RATE_LIMITED", "UNAUTHENTICATED"];
    assert_eq!(codes, expected, "the next /64 is another client");
}

/// Before: forty logins in flight made a normal login wait 13 s; now a full queue answers at
/// once and says when to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_flood_is_refused_at_once_instead_of_queued() {
    let app = Arc::new(
        app_with(&[("BCRYPT_COST", "10"), ("BCRYPT_CONCURRENCY", "1"), ("BCRYPT_MAX_QUEUE", "2")])
            .await,
    );
    let attempts: Vec<_> = (0..12)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                let input = json!({ "phoneNumber": format!("+120255501{n:02}"), "password": "correct-horse-battery" });
                app.graphql(LOGIN, json!({ "input": input }), None).await
            })
        })
        .collect();
    let mut refused = 0;
    for attempt in attempts {
        let body = attempt.await.unwrap();
        match code(&body) {
            "UNAUTHENTICATED" => {}
            "SERVICE_UNAVAILABLE" => {
                refused += 1;
                assert!(
                    body["errors"][0]["extensions"]["retryAfter"].as_u64().is_some_and(|s| s >= 1),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!((1..12).contains(&refused), "{refused} of 12 refused");
}
