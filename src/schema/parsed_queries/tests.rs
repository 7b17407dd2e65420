//! The parse step: what it caches, and when it skips validation.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema, Variables};

use super::*;

struct Query;

#[Object]
impl Query {
    async fn value(&self) -> i32 {
        1
    }

    async fn echo(&self, text: String) -> String {
        text
    }

    #[graphql(complexity = "usize::try_from(first).unwrap_or(0) + child_complexity")]
    async fn page(&self, first: i32) -> Vec<i32> {
        (0..first.min(3)).collect()
    }
}

/// Counts the validations that reach async-graphql's rules (it sits between the parse step
/// and them).
struct CountValidations(Arc<AtomicUsize>);

impl ExtensionFactory for CountValidations {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(CountValidations(self.0.clone()))
    }
}

#[async_trait::async_trait]
impl Extension for CountValidations {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(ctx).await
    }
}

const LIMITS: ShapeLimits =
    ShapeLimits { max_inlined_fields: 100, max_depth: 10, introspection: true };

/// A schema with the parse step, a complexity limit of 10, and a count of validations run.
fn counted_schema() -> (Schema<Query, EmptyMutation, EmptySubscription>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
        .extension(ParsedQueries::new(LIMITS))
        .extension(CountValidations(count.clone()))
        .limit_complexity(10)
        .finish();
    (schema, count)
}

fn request(query: &str, variables: serde_json::Value) -> Request {
    Request::new(query).variables(Variables::from_json(variables))
}

#[tokio::test]
async fn an_operation_with_settled_variables_is_validated_once() {
    let (schema, validations) = counted_schema();
    let echo = "query Echo($t: String!) { echo(text: $t) }";
    for text in ["one", "two", "three"] {
        let response = schema.execute(request(echo, serde_json::json!({"t": text}))).await;
        assert_eq!(response.data.to_string(), format!("{{echo: \"{text}\"}}"));
    }
    assert_eq!(validations.load(Ordering::SeqCst), 1);

    // A value the variable's type refuses is still refused by validation, every time.
    for _ in 0..2 {
        let response = schema.execute(request(echo, serde_json::json!({"t": 5}))).await;
        assert!(response.errors[0].message.contains("Invalid value"), "{:?}", response.errors);
    }
    assert_eq!(validations.load(Ordering::SeqCst), 3);
    // A missing one is validated in full and does not settle the operation.
    let response = schema.execute(request(echo, serde_json::json!({}))).await;
    assert!(response.is_err());
    assert_eq!(validations.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn complexity_read_from_a_variable_is_measured_every_time() {
    let (schema, validations) = counted_schema();
    let page = "query($n: Int!) { page(first: $n) }";
    for _ in 0..2 {
        let response = schema.execute(request(page, serde_json::json!({"n": 2}))).await;
        assert!(response.is_ok(), "{:?}", response.errors);
    }
    let response = schema.execute(request(page, serde_json::json!({"n": 1000}))).await;
    assert_eq!(response.errors[0].message, "Query is too complex.");
    assert_eq!(validations.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn each_operation_of_a_document_settles_on_its_own() {
    let (schema, validations) = counted_schema();
    let document = "query A($t: String!) { echo(text: $t) } query B { value }";
    let named = |name: &str| {
        request(document, serde_json::json!({"t": "x"})).operation_name(name.to_owned())
    };
    for name in ["A", "B", "A", "B"] {
        let response = schema.execute(named(name)).await;
        assert!(response.is_ok(), "{name}: {:?}", response.errors);
    }
    assert_eq!(validations.load(Ordering::SeqCst), 2);
    assert!(schema.execute(named("C")).await.is_err());
}

/// Before: every parsed document was cached, so 512 distinct junk queries pinned hundreds
/// of megabytes.
#[tokio::test]
async fn only_documents_that_validate_are_cached() {
    let extension = ParsedQueries::new(LIMITS);
    let cache = extension.cache.clone();
    let schema =
        Schema::build(Query, EmptyMutation, EmptySubscription).extension(extension).finish();
    let cached = || cache.lock().unwrap().documents.len();
    for junk in ["{ nope }", "{ value nope }", "{ value(x: 1) }"] {
        assert!(schema.execute(junk).await.is_err());
    }
    assert_eq!(cached(), 0);
    assert!(schema.execute("{ value }").await.is_ok());
    assert_eq!(cached(), 1);
    // The cached document serves the next request.
    assert_eq!(schema.execute("{ value }").await.data.to_string(), "{value: 1}");
}

#[test]
fn the_cache_is_bounded_by_bytes() {
    let mut cache = Cache::default();
    let document = async_graphql::parser::parse_query("{ __typename }").unwrap();
    let query_bytes = 4000;
    for n in 0..1000 {
        let query = format!("{n:0>query_bytes$}");
        cache.insert(query, document.clone());
        assert!(cache.bytes <= MAX_CACHE_BYTES);
    }
    assert!(
        cache.documents.len() <= MAX_CACHE_BYTES / (query_bytes * DOCUMENT_BYTES_PER_QUERY_BYTE)
    );
    assert!(!cache.documents.is_empty());
}
