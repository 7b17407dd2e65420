//! The GraphQL schema: the roots merged from each domain module, and how resolvers reach the
//! shared services and the caller. Nothing here knows about HTTP or websockets.

use async_graphql::{Context, MergedObject, MergedSubscription, Schema};

use crate::{
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

/// Builds the schema with `services` as schema data.
pub fn build(services: Services) -> AppSchema {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
        .data(services)
        .finish()
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
