//! The HTTP surface: GraphiQL, GET queries, health, and the checked-in schema.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_reports_a_reachable_store() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "status": "ok", "store": "sqlite" }));
}

#[tokio::test]
async fn a_browser_gets_graphiql_wired_for_subscriptions() {
    let app = spawn_app().await;
    let response =
        app.http.get(app.url("/graphql")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("GraphiQL"), "not a GraphiQL page");
    assert!(page.contains("subscriptionUrl"), "GraphiQL has no websocket URL");
}

#[tokio::test]
async fn queries_work_over_get_but_mutations_do_not() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/graphql?query=%7B__typename%7D")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["__typename"], "Query");

    let response = app
        .http
        .get(app.url("/graphql?query=mutation%7Blogout%7Bmessage%7D%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn batched_requests_are_answered_in_order() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/graphql"))
        .json(&json!([{ "query": "{ __typename }" }, { "query": "{ me { id } }" }]))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body[0]["data"]["__typename"], "Query");
    assert_eq!(body[1]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
}

/// `schema.graphql` is what frontends generate typed clients from; it must match the server.
/// Regenerate it with `UPDATE_SCHEMA=1 cargo test schema_file`.
#[test]
fn schema_file_is_in_sync() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let served = chatapp::schema::sdl();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &served).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == served,
        "schema.graphql is out of date with the server's schema; regenerate it with `UPDATE_SCHEMA=1 cargo test schema_file`"
    );
}

#[tokio::test]
async fn the_served_schema_matches_the_sdl() {
    let app = spawn_app().await;
    let body =
        app.graphql("{ __type(name: \"Message\") { fields { name } } }", json!({}), None).await;
    let fields: Vec<&str> = body["data"]["__type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field["name"].as_str().unwrap())
        .collect();
    for expected in [
        "id",
        "sender",
        "recipient",
        "senderId",
        "recipientId",
        "content",
        "sentAt",
        "deliveredAt",
        "clientMessageId",
    ] {
        assert!(fields.contains(&expected), "Message lacks {expected}");
    }
}
