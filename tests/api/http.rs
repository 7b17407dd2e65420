//! The HTTP surface: GraphiQL, GET queries, health, and the checked-in schema.

use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app, spawn_app_configured};

#[tokio::test]
async fn healthz_reports_a_reachable_store() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    // The store in use: SQLite by default, MongoDB when the suite runs with TEST_MONGO_URI.
    let bus = json!({ "kind": "in-process", "up": true });
    assert_eq!(body, json!({ "status": "ok", "store": app.store.kind(), "bus": bus }));
}

#[tokio::test]
async fn a_browser_gets_graphiql_served_from_the_binary() {
    let app = spawn_app().await;
    let response =
        app.http.get(app.url("/graphql")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    let page = response.text().await.unwrap();
    assert!(page.contains("GraphiQL"), "not a GraphiQL page");
    // Every script and stylesheet comes from this server, and each one is there.
    let sources: Vec<&str> =
        page.split(['"', '\'']).filter(|part| part.starts_with("/graphiql/")).collect();
    assert_eq!(sources.len(), 5, "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "{page}");
    for source in sources {
        let response = app.http.get(app.url(source)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{source}");
        let length = response.bytes().await.unwrap().len();
        assert!(length > 500, "{source} is {length} bytes");
    }
    let start = app.http.get(app.url("/graphiql/start.js")).send().await.unwrap();
    assert!(start.text().await.unwrap().contains("subscriptionUrl"), "no websocket URL");
}

#[tokio::test]
async fn graphiql_can_be_switched_off() {
    let app = spawn_app_configured(&[("GRAPHIQL", "false")]).await;
    let response =
        app.http.get(app.url("/graphql")).header("accept", "text/html").send().await.unwrap();
    // No page, and HTML is not something the API answers in.
    assert_eq!(response.status(), 406);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST");
    let response = app.http.get(app.url("/graphiql/graphiql.min.js")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

/// Bodies a web page can make a visitor's browser send to any site without a CORS preflight
/// are refused before anything runs (415), so no page can register accounts or burn someone's
/// login attempts from its visitors' browsers.
#[tokio::test]
async fn simple_cross_site_posts_are_refused() {
    let app = spawn_app().await;
    let register = json!({
        "query": "mutation { register(input: { phoneNumber: \"+12025550150\", username: \"csrf\", password: \"correct-horse-battery\" }) { token } }"
    })
    .to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = app.http.post(app.url("/graphql")).body(register.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST", "{body}");
    }
    // Nothing ran: the number is still free.
    let user = app.register("+12025550150", "owner").await;
    assert!(!user.token.is_empty());
}

#[tokio::test]
async fn responses_follow_graphql_over_http() {
    let app = spawn_app().await;
    let post = |accept: &'static str, query: &'static str| {
        app.http
            .post(app.url("/graphql"))
            .header("accept", accept)
            .json(&json!({ "query": query }))
            .send()
    };
    // application/graphql-response+json: a document that does not validate is a 400, no data.
    let response = post("application/graphql-response+json", "{ nope }").await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/graphql-response+json")
    );
    let body: Value = response.json().await.unwrap();
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
    // ...while an error during execution is still a 200 with data.
    let response = post("application/graphql-response+json", "{ me { id } }").await.unwrap();
    assert_eq!(response.status(), 200);
    // application/json (and */*): always 200, in the legacy content type.
    for accept in ["application/json", "*/*"] {
        let response = post(accept, "{ nope }").await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"].to_str().unwrap().starts_with("application/json")
        );
    }
    // Neither acceptable: 406, still a coded JSON body.
    let response = post("image/png", "{ __typename }").await.unwrap();
    assert_eq!(response.status(), 406);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST");
}

#[tokio::test]
async fn every_refusal_is_coded_json() {
    let app = spawn_app().await;
    let url = app.url("/graphql");
    let requests = [
        (app.http.post(&url).header("content-type", "application/json").body("{not json"), 400),
        (app.http.post(&url).json(&json!({ "qeury": "{ __typename }" })), 400),
        (app.http.put(&url).json(&json!({ "query": "{ __typename }" })), 405),
        (app.http.get(app.url("/graphql?query=mutation%7Blogout%7Bmessage%7D%7D")), 405),
        (app.http.get(app.url("/graphql?variables=%7B")), 400),
        (app.http.get(app.url("/nowhere")), 404),
        (
            app.http
                .get(&url)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            400,
        ),
    ];
    for (request, status) in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        let code = body["errors"][0]["extensions"]["code"].as_str();
        assert!(code.is_some(), "{status}: {body}");
    }
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

/// Limits quoted in the schema's descriptions are the limits the code enforces.
#[test]
fn schema_descriptions_quote_the_real_limits() {
    use chatapp::{
        domain::{ClientMessageId, MessageContent, PageSize, Password, Username},
        messages::MAX_ACK_BATCH,
    };
    let sdl = chatapp::schema::sdl();
    for phrase in [
        format!("`last` is 1 to {}", PageSize::MAX),
        format!("`first` is 1 to {} (default {})", PageSize::MAX, PageSize::DEFAULT),
        format!("(default {})", PageSize::DEFAULT),
        format!("At most {MAX_ACK_BATCH} ids per call"),
        format!("at most {} characters", MessageContent::MAX_CHARS),
        format!("at most {} characters", ClientMessageId::MAX_CHARS),
        format!("{} to {} characters", Username::MIN_CHARS, Username::MAX_CHARS),
        format!(
            "At least {} characters and at most {} bytes",
            Password::MIN_CHARS,
            Password::MAX_BYTES
        ),
    ] {
        let flat = sdl.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&phrase), "the schema does not say {phrase:?}");
    }
}

/// The SDL carries what introspection serves about scalars, `@specifiedBy` included.
#[test]
fn the_date_time_scalar_is_documented_for_clients() {
    let sdl = chatapp::schema::sdl();
    assert!(
        sdl.contains(
            "scalar DateTime @specifiedBy(url: \"https://datatracker.ietf.org/doc/html/rfc3339\")"
        ),
        "{sdl}"
    );
    assert!(sdl.contains("RFC 3339 timestamp"), "{sdl}");
    assert!(!sdl.contains("DateTime<Utc>"), "a Rust type leaks into the schema");
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

/// A document with several operations (a GraphiQL tab, a shared operations file) runs the one
/// `operationName` picks, whatever variables the others declare. Before: "Variable ids is not
/// defined", because every operation was validated against the chosen one's variables.
#[tokio::test]
async fn the_named_operation_of_a_multi_operation_document_runs() {
    let app = spawn_app().await;
    let (alice, bob) = app.two_users().await;
    let document = "
        fragment Who on User { id username }
        fragment Unused on User { id }
        query Me { me { ...Who } }
        query Other($id: ID!) { user(id: $id) { ...Who } }
        mutation Ack($ids: [ID!]!) { markDelivered(messageIds: $ids) { id } }";
    let run = |name: &'static str, variables: Value| {
        let body = json!({ "query": document, "operationName": name, "variables": variables });
        let request = app.http.post(app.url("/graphql")).bearer_auth(&alice.token).json(&body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let me = run("Me", json!({})).await;
    assert_eq!(me["data"]["me"]["username"], "alice", "{me}");
    let other = run("Other", json!({ "id": bob.id })).await;
    assert_eq!(other["data"]["user"]["username"], "bob", "{other}");
    let unknown = run("Nope", json!({})).await;
    assert!(unknown["errors"][0]["message"].as_str().unwrap().contains("Nope"), "{unknown}");
    // A single operation is still held to every rule, unused fragments included.
    let single = json!({ "query": "fragment Unused on User { id } query Me { me { id } }" });
    let request = app.http.post(app.url("/graphql")).bearer_auth(&alice.token).json(&single);
    let body: Value = request.send().await.unwrap().json().await.unwrap();
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}
