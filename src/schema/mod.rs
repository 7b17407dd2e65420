//! The GraphQL layer: one module per domain (`users`, `sessions`, `messages`) holding its
//! types and resolvers, merged into one schema here. A resolver parses its input into domain
//! values, asks for the one service it needs and the caller through `context::ContextExt`,
//! and turns the answer into GraphQL types. Nothing here knows about HTTP or websockets.

mod account;
mod context;
mod conversations;
pub mod document_shape;
mod error_codes;
mod event_nodes;
mod events;
mod message_selection;
mod messages;
mod parked;
mod parsed_queries;
mod sessions;
mod timestamp;
mod users;
mod validated_operations;
mod verification;

pub use timestamp::Timestamp;

use std::sync::Arc;

use async_graphql::{
    BatchRequest, BatchResponse, MergedObject, MergedSubscription, Request, Response, Schema,
    SchemaBuilder, futures_util::stream::BoxStream,
};

use self::{
    account::AccountMutation,
    conversations::{ConversationMutation, ConversationQuery},
    events::{EventSubscription, PresenceMutation, TypingMutation},
    messages::{MessageMutation, MessageQuery, MessageSubscription},
    sessions::{AuthMutation, SessionQuery},
    users::{UserLoader, UserQuery},
    verification::VerificationMutation,
};
use self::{
    document_shape::ShapeLimits,
    error_codes::ErrorCodes,
    parked::{Handover, Parking},
    parsed_queries::ParsedQueries,
};
use crate::{
    accounts::Accounts,
    client_address::ClientAddress,
    config::Limits,
    domain::PageSize,
    messages::Messaging,
    presence::Presence,
    sessions::{RequestAuth, Sessions},
    typing::Typing,
    users::Directory,
    verification::PhoneVerification,
};

/// All queries.
#[derive(MergedObject, Default)]
pub struct Query(UserQuery, MessageQuery, ConversationQuery, SessionQuery);

/// All mutations.
#[derive(MergedObject, Default)]
pub struct Mutation(
    AuthMutation,
    MessageMutation,
    ConversationMutation,
    TypingMutation,
    PresenceMutation,
    AccountMutation,
    VerificationMutation,
);

/// All subscriptions.
#[derive(MergedSubscription, Default)]
pub struct Subscription(MessageSubscription, EventSubscription);

/// Complexity of a field that reads the store, on top of its selection: such a field costs far
/// more than one that only formats data already loaded, so alias floods of store reads reach
/// `GRAPHQL_MAX_COMPLEXITY` ten times sooner.
pub const STORE_READ_COMPLEXITY: usize = 10;

/// Complexity of a page of `last` items (default and cap as `conversation` applies them): the
/// selection of one item counts once per item, plus the store read.
pub fn page_complexity(last: Option<i32>, child_complexity: usize) -> usize {
    let items = last.map_or(PageSize::DEFAULT, |last| {
        usize::try_from(last).unwrap_or(1).clamp(1, PageSize::MAX)
    });
    STORE_READ_COMPLEXITY.saturating_add(items.saturating_mul(child_complexity))
}

/// The schema the server executes, over HTTP and websockets alike.
#[derive(Clone)]
pub struct AppSchema {
    schema: Schema<Query, Mutation, Subscription>,
    /// Runs idle-heavy subscriptions in little memory (see [`parked`]).
    parking: Parking,
}

impl AppSchema {
    /// Runs one query or mutation.
    pub async fn execute(&self, request: Request) -> Response {
        self.schema.execute(request).await
    }

    /// Runs the operations of a batched HTTP request.
    pub async fn execute_batch(&self, batch: BatchRequest) -> BatchResponse {
        self.schema.execute_batch(batch).await
    }

    /// Runs any operation sent over a websocket by the authenticated `auth` from `client`: the
    /// results of a subscription as they come, or the one result of a query or mutation.
    pub fn execute_stream(
        &self,
        request: Request,
        auth: RequestAuth,
        client: ClientAddress,
    ) -> BoxStream<'static, Response> {
        let Some(parkable) = self.parking.parkable(&request) else {
            return self.schema.execute_stream(request.data(auth).data(client));
        };
        let handover = Arc::new(Handover::default());
        let variables = request.variables.clone();
        let started = self
            .schema
            .execute_stream(request.data(auth.clone()).data(client).data(handover.clone()));
        self.parking.run(parkable, started, handover, (variables, auth, client))
    }
}

/// The services resolvers call, one per domain; each becomes schema data on its own, so a
/// resolver asks for exactly the one it uses.
pub struct Services {
    /// Registration and login.
    pub accounts: Accounts,
    /// Authentication, logout, the session list.
    pub sessions: Sessions,
    /// Sending, acknowledging, history and the live stream.
    pub messaging: Messaging,
    /// Finding users.
    pub directory: Directory,
    /// Typing indicators.
    pub typing: Typing,
    /// Who is online.
    pub presence: Presence,
    /// Phone number verification codes.
    pub verification: PhoneVerification,
}

/// Builds the schema over `services`, with the query limits of `limits`.
pub fn build(services: Services, limits: &Limits) -> AppSchema {
    let builder = Schema::build(Query::default(), Mutation::default(), Subscription::default());
    let builder = with_services(builder, &services)
        .extension(ErrorCodes)
        .extension(ParsedQueries::new(shape_limits(limits)))
        // Depth is enforced by the shape check, which treats introspection by its own rule.
        .limit_complexity(limits.graphql_max_complexity);
    let schema =
        if limits.graphql_introspection { builder } else { builder.disable_introspection() };
    let delivery = parked::delivery_schema(|builder| with_services(builder, &services));
    let users = UserLoader::data_loader(services.directory.clone());
    AppSchema { schema: schema.finish(), parking: Parking::new(delivery, users) }
}

/// `builder` with every service (and the user loader) as schema data.
fn with_services<Q, M, S>(
    builder: SchemaBuilder<Q, M, S>,
    services: &Services,
) -> SchemaBuilder<Q, M, S> {
    builder
        .data(UserLoader::data_loader(services.directory.clone()))
        .data(services.accounts.clone())
        .data(services.sessions.clone())
        .data(services.messaging.clone())
        .data(services.directory.clone())
        .data(services.typing.clone())
        .data(services.presence.clone())
        .data(services.verification.clone())
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
