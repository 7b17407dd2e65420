//! Anonymous documents built to cost the server far more than their size: each is refused
//! cheaply, before validation, and the server stays responsive.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

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
