//! The GraphQL schema: the roots merged from each domain module, and how resolvers reach the
//! shared services and the caller. Nothing here knows about HTTP or websockets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Context, MergedObject, MergedSubscription, Response, Schema, ServerError, ServerResult,
    ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextValidation,
    },
    parser::types::ExecutableDocument,
};

use crate::{
    config::Limits,
    error::AppError,
    messages::graphql::{MessageMutation, MessageQuery, MessageSubscription},
    services::Services,
    sessions::{
        RequestAuth, Viewer,
        graphql::{AuthMutation, SessionQuery},
    },
    users::graphql::UserQuery,
};

/// All queries.
#[derive(MergedObject, Default)]
pub struct Query(UserQuery, MessageQuery, SessionQuery);

/// All mutations.
#[derive(MergedObject, Default)]
pub struct Mutation(AuthMutation, MessageMutation);

/// All subscriptions.
#[derive(MergedSubscription, Default)]
pub struct Subscription(MessageSubscription);

/// The schema type the server executes.
pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Builds the schema with `services` as schema data and the query limits of `limits`.
pub fn build(services: Services, limits: &Limits) -> AppSchema {
    let builder = Schema::build(Query::default(), Mutation::default(), Subscription::default())
        .data(services)
        .extension(ErrorCodes)
        .extension(ParsedQueries::default())
        .limit_depth(limits.graphql_max_depth)
        .limit_complexity(limits.graphql_max_complexity);
    if limits.graphql_introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// The schema in SDL, exactly as the server serves it; `schema.graphql` must match it.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), Subscription::default()).finish().sdl()
}

/// The shared services, for resolvers.
pub(crate) fn services<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Services> {
    ctx.data::<Services>()
}

/// The authenticated caller, or an `UNAUTHENTICATED` error.
pub(crate) async fn viewer(ctx: &Context<'_>) -> async_graphql::Result<Viewer> {
    let services = services(ctx)?;
    let auth = ctx.data_opt::<RequestAuth>().ok_or_else(AppError::unauthenticated)?;
    Ok(auth.viewer(services).await?)
}

/// Gives every error an `extensions.code`, so clients can branch on codes alone: syntax errors
/// are `GRAPHQL_PARSE_FAILED`, documents the schema rejects (unknown fields, wrong argument
/// types, depth and complexity limits) are `GRAPHQL_VALIDATION_FAILED`, and values that fail
/// to convert while executing are `BAD_USER_INPUT`. Errors already coded keep their code.
struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables)
            .await
            .map_err(|error| with_code(error, "GRAPHQL_PARSE_FAILED"))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors.into_iter().map(|error| with_code(error, "GRAPHQL_VALIDATION_FAILED")).collect()
        })
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        response.errors =
            response.errors.into_iter().map(|error| with_code(error, "BAD_USER_INPUT")).collect();
        response
    }
}

fn with_code(mut error: ServerError, code: &str) -> ServerError {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    error
}

/// Parsed documents by query text. Clients send the same few operations again and again (every
/// `sendMessage` has the same text, only its variables differ), and parsing was about 5% of the
/// server's CPU under load. Bounded: when full it starts over, so a flood of distinct queries
/// costs nothing but cache misses.
#[derive(Default)]
struct ParsedQueries {
    documents: Arc<Mutex<HashMap<String, ExecutableDocument>>>,
}

/// Most documents [`ParsedQueries`] keeps.
const MAX_CACHED_QUERIES: usize = 512;
/// Longer queries are parsed each time (they are rare, and would make the cache large).
const MAX_CACHED_QUERY_BYTES: usize = 4096;

impl ExtensionFactory for ParsedQueries {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ParsedQueries { documents: self.documents.clone() })
    }
}

#[async_trait::async_trait]
impl Extension for ParsedQueries {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let lock = || self.documents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(document) = lock().get(query) {
            return Ok(document.clone());
        }
        let document = next.run(ctx, query, variables).await?;
        if query.len() <= MAX_CACHED_QUERY_BYTES {
            let mut documents = lock();
            if documents.len() >= MAX_CACHED_QUERIES {
                documents.clear();
            }
            documents.insert(query.to_string(), document.clone());
        }
        Ok(document)
    }
}
