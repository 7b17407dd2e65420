//! Anonymous documents built to cost the server far more than their size: each is refused
//! cheaply, before validation, and the server stays responsive.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, spawn_app};

/// Generous: a refusal takes milliseconds; before the shape check the smallest of these
/// documents took hours of CPU.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// `fragment F0 on Query { ...F1 ...F1 }` and so on: `fan_out` spreads per level.
fn fan_out_query(fan_out: usize, levels: usize) -> String {
    let mut query = String::from("query { ...F0 }\n");
    for level in 0..levels {
        let spreads = format!("...F{} ", level + 1).repeat(fan_out);
        query.push_str(&format!("fragment F{level} on Query {{ {spreads}}}\n"));
    }
    query.push_str(&format!("fragment F{levels} on Query {{ __typename }}\n"));
    query
}

fn first_error(body: &Value) -> (&str, &str) {
    let error = &body["errors"][0];
    let code = error["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no code: {body}"));
    (code, error["message"].as_str().unwrap_or_default())
}

async fn assert_healthy(app: &TestApp) {
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn exponential_fragment_fan_out_is_refused_before_any_work() {
    let app = spawn_app().await;
    for (fan_out, levels) in [(2, 30), (10, 30)] {
        let query = fan_out_query(fan_out, levels);
        let started = Instant::now();
        let body = app.graphql(&query, json!({}), None).await;
        let took = started.elapsed();
        assert_eq!(first_error(&body), ("GRAPHQL_VALIDATION_FAILED", "Query is too complex."));
        assert!(body.get("data").is_none_or(Value::is_null), "{body}");
        assert!(took < REFUSED_WITHIN, "{fan_out}x{levels} took {took:?}");
    }
    // Several at once do not stall anyone else.
    let query = fan_out_query(10, 30);
    let floods: Vec<_> = (0..4).map(|_| app.graphql(&query, json!({}), None)).collect();
    let (_, results) = tokio::join!(assert_healthy(&app), futures::future::join_all(floods));
    for body in results {
        assert_eq!(first_error(&body).0, "GRAPHQL_VALIDATION_FAILED");
    }
    // A small fan-out within the limits still runs.
    let body = app.graphql(&fan_out_query(2, 5), json!({}), None).await;
    assert_eq!(body["data"]["__typename"], "Query", "{body}");
}

#[tokio::test]
async fn fragment_cycles_are_refused() {
    let app = spawn_app().await;
    let query = "{ ...A } fragment A on Query { ...B } fragment B on Query { __typename ...A }";
    let body = app.graphql(query, json!({}), None).await;
    let (code, message) = first_error(&body);
    assert_eq!(code, "GRAPHQL_VALIDATION_FAILED");
    assert!(message.contains("spreads itself"), "{body}");
}

#[tokio::test]
async fn directive_floods_get_a_short_answer() {
    let app = spawn_app().await;
    let query = format!("{{ __typename {} }}", "@a".repeat(20_000));
    let response =
        app.http.post(app.url("/graphql")).json(&json!({ "query": query })).send().await.unwrap();
    let text = response.text().await.unwrap();
    assert!(text.len() < 2048, "{} bytes: {}", text.len(), &text[..200]);
    let body: Value = serde_json::from_str(&text).unwrap();
    let (code, message) = first_error(&body);
    assert_eq!(code, "GRAPHQL_VALIDATION_FAILED");
    assert!(message.contains("directives"), "{body}");
}

#[tokio::test]
async fn validation_errors_are_capped() {
    let app = spawn_app().await;
    let unknown_fields: String = (0..200).map(|n| format!("f{n} ")).collect();
    let body = app.graphql(&format!("{{ {unknown_fields} }}"), json!({}), None).await;
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 21, "{}", errors.len());
    assert!(errors[20]["message"].as_str().unwrap().contains("180 more"), "{}", errors[20]);
    assert!(errors.iter().all(|error| error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"));
}

/// A page's selection counts once per item, so aliased large pages cannot multiply store work
/// (before: 82,410 store reads from one POST under the limit).
#[tokio::test]
async fn large_pages_count_per_item() {
    let app = spawn_app().await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    for n in 0..3 {
        app.send_ok(&alice, &bob, &format!("m{n}")).await;
    }
    let page = "conversation(withUserId: $with, last: 100) { edges { node { content sender { username } recipient { username } } } }";
    let aliased: String = (0..10).map(|n| format!("p{n}: {page} ")).collect();
    let body = app
        .graphql(
            &format!("query($with: ID!) {{ {aliased} }}"),
            json!({ "with": bob.id }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(first_error(&body), ("GRAPHQL_VALIDATION_FAILED", "Query is too complex."));
    // One such page is fine, and its senders and recipients (loaded in one batch) are right.
    let body = app
        .graphql(
            &format!("query($with: ID!) {{ {page} }}"),
            json!({ "with": bob.id }),
            Some(&alice.token),
        )
        .await;
    let edges =
        body["data"]["conversation"]["edges"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(edges.len(), 3);
    for edge in edges {
        assert_eq!(edge["node"]["sender"]["username"], "alice");
        assert_eq!(edge["node"]["recipient"]["username"], "bob");
    }
}

/// A phone number is shown to its owner and to people they talk with, nobody else.
#[tokio::test]
async fn phone_numbers_are_shown_only_to_conversation_partners() {
    let app = spawn_app().await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    let eve = app.register("+12025550149", "eve").await;
    assert_eq!(phone_seen_by(&app, &eve, &alice).await, Value::Null);
    assert_eq!(phone_seen_by(&app, &bob, &alice).await, Value::Null);
    app.send_ok(&alice, &bob, "hi").await;
    assert_eq!(phone_seen_by(&app, &bob, &alice).await, "+12025550141");
    assert_eq!(phone_seen_by(&app, &alice, &bob).await, "+12025550142");
    assert_eq!(phone_seen_by(&app, &eve, &alice).await, Value::Null);
    assert_eq!(phone_seen_by(&app, &alice, &alice).await, "+12025550141");
}

async fn phone_seen_by(app: &TestApp, viewer: &TestUser, of: &TestUser) -> Value {
    let query = "query($id: ID!) { user(id: $id) { phoneNumber } }";
    let body = app.graphql(query, json!({ "id": of.id }), Some(&viewer.token)).await;
    body["data"]["user"]["phoneNumber"].clone()
}

/// Look-ups by phone number are limited per caller, aliases included.
#[tokio::test]
async fn phone_number_lookups_are_limited() {
    let app = crate::helpers::spawn_app_configured(&[("RATE_LIMIT_LOOKUPS_PER_USER", "5")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let lookups: String = (0..8)
        .map(|n| format!("u{n}: userByPhoneNumber(phoneNumber: \"+1202555016{n}\") {{ id }} "))
        .collect();
    let body = app.graphql(&format!("{{ {lookups} }}"), json!({}), Some(&alice.token)).await;
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(errors.len(), 3, "{body}");
    assert!(errors.iter().all(|error| error["extensions"]["code"] == "RATE_LIMITED"));
}

/// Before: the data directory was created 0755 and the database 0644, readable by every user
/// of the machine.
#[cfg(unix)]
#[tokio::test]
async fn data_files_are_private_to_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let data_dir = root.path().join("data");
    let app =
        crate::helpers::spawn_app_with(root.clone(), &[("DATA_DIR", data_dir.to_str().unwrap())])
            .await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    app.send_ok(&alice, &bob, "hello").await;
    let mode = |name: &str| {
        let path = data_dir.join(name);
        std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok()
    };
    assert_eq!(mode(""), Some(0o700), "the directory");
    assert_eq!(mode("jwt_secret"), Some(0o600));
    if app.store.kind() == "sqlite" {
        for file in ["chat.db", "chat.db-wal", "chat.db-shm"] {
            assert_eq!(mode(file), Some(0o600), "{file}");
        }
    }
}
