//! The GraphQL schema: the roots merged from each domain module, and how resolvers reach the
//! shared services and the caller. Nothing here knows about HTTP or websockets.

pub mod document_shape;
mod error_codes;
mod parsed_queries;
mod timestamp;

pub use timestamp::Timestamp;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema};

use self::{document_shape::ShapeLimits, error_codes::ErrorCodes, parsed_queries::ParsedQueries};
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
        .extension(ParsedQueries::new(shape_limits(limits)))
        // Depth is enforced by the shape check, which treats introspection by its own rule.
        .limit_complexity(limits.graphql_max_complexity);
    if limits.graphql_introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// The shape limits that follow from the configured query limits.
fn shape_limits(limits: &Limits) -> ShapeLimits {
    let complexity = u64::try_from(limits.graphql_max_complexity).unwrap_or(u64::MAX);
    ShapeLimits {
        max_inlined_fields: complexity
            .saturating_mul(document_shape::INLINED_FIELDS_PER_COMPLEXITY_POINT),
        max_depth: u32::try_from(limits.graphql_max_depth).unwrap_or(u32::MAX),
        introspection: limits.graphql_introspection,
    }
}

/// The schema in SDL, exactly as the server serves it; `schema.graphql` must match it.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
        .finish()
        .sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
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
