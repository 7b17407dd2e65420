//! The HTTP layer: routes, and turning requests into GraphQL executions with the caller's token.
//!
//! `/graphql` serves everything a GraphQL client expects on one path: `POST` (single or
//! batched), `GET` with query parameters, the websocket upgrade for subscriptions (both the
//! `graphql-transport-ws` and the legacy `graphql-ws` subprotocols), and GraphiQL for a browser.

use async_graphql::{BatchRequest, ParseRequestError};
use async_graphql::{
    http::{GraphiQLSource, parse_query_string},
    parser::types::OperationType,
};
use async_graphql_axum::{GraphQLBatchRequest, GraphQLResponse, rejection::GraphQLRejection};
use axum::{
    Json, Router,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State, WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};

use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    limit::RequestBodyLimitLayer,
    trace::TraceLayer,
};

use crate::{
    config::Config,
    schema::AppSchema,
    services::Services,
    sessions::{self, ClientAddress, RequestAuth},
    websocket::{self, ConnectionRegistry, WebsocketSettings, protocol::Protocol},
};

/// Initial websocket read buffer per connection.
const WS_READ_BUFFER_BYTES: usize = 512;
/// Outgoing bytes queued before a websocket write; the serve loop flushes after each burst, so
/// this only lets a burst go out in one write (the buffer grows only as far as a burst needs).
const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// What every handler can reach.
#[derive(Clone)]
struct AppState {
    schema: AppSchema,
    services: Services,
    websocket_settings: WebsocketSettings,
    /// Open websockets per user, for `WS_MAX_CONNECTIONS_PER_USER`.
    connections: ConnectionRegistry,
    /// Whether `X-Forwarded-For` names the client (`TRUST_PROXY`).
    trust_proxy: bool,
    /// Most operations in one batched POST.
    max_batch: usize,
}

/// The app's routes, ready to serve.
pub fn router(schema: AppSchema, services: Services, config: &Config) -> Router {
    let router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(healthz))
        .with_state(AppState {
            schema,
            services,
            websocket_settings: WebsocketSettings {
                init_timeout: config.ws_init_timeout,
                ping_interval: config.ws_ping_interval,
                max_subscriptions: config.limits.ws_max_subscriptions,
                max_message_bytes: config.limits.ws_max_message_bytes,
            },
            connections: ConnectionRegistry::new(config.limits.ws_max_connections_per_user),
            trust_proxy: config.trust_proxy,
            max_batch: config.limits.graphql_max_batch,
        })
        .layer(RequestBodyLimitLayer::new(config.limits.max_body_bytes))
        .layer(axum::middleware::map_response(coded_payload_too_large))
        .layer(TraceLayer::new_for_http());
    match cors_layer(&config.cors_allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers(Any),
    )
}

fn request_auth(headers: &HeaderMap) -> RequestAuth {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(sessions::bearer_token)
        .map(String::from);
    RequestAuth::from_token(token)
}

/// The client's address: the peer address, or with `TRUST_PROXY` the first `X-Forwarded-For`
/// entry.
fn client_address(parts: &Parts, trust_proxy: bool) -> ClientAddress {
    let forwarded = || {
        let header = parts.headers.get("x-forwarded-for")?.to_str().ok()?;
        header.split(',').next()?.trim().parse::<IpAddr>().ok()
    };
    let peer = || parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    ClientAddress(if trust_proxy { forwarded().or_else(peer) } else { peer() })
}

/// The GraphQL data every HTTP request carries: the caller's token and address.
fn request_data(parts: &Parts, trust_proxy: bool) -> (RequestAuth, ClientAddress) {
    (request_auth(&parts.headers), client_address(parts, trust_proxy))
}

async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (auth, address) = request_data(&parts, state.trust_proxy);
    let batch = match GraphQLBatchRequest::<GraphQLRejection>::from_request(
        Request::from_parts(parts, body),
        &state,
    )
    .await
    {
        Ok(batch) => batch.into_inner(),
        // A chunked body that runs over the limit reaches the extractor as an I/O error
        // carrying http-body's message; anything else is a malformed request.
        Err(GraphQLRejection(ParseRequestError::Io(error)))
            if error.to_string().contains("length limit exceeded") =>
        {
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
        Err(rejection) => return rejection.into_response(),
    };
    if let BatchRequest::Batch(requests) = &batch
        && requests.len() > state.max_batch
    {
        let message = format!("at most {} operations per request", state.max_batch);
        return request_error(StatusCode::BAD_REQUEST, &message, "LIMIT_EXCEEDED");
    }
    let batch = batch.data(auth).data(address);
    GraphQLResponse::from(state.schema.execute_batch(batch).await).into_response()
}

/// Gives the body-size refusal (a bare 413 from the limit layer, or the GraphQL extractor's
/// rejection when a chunked body runs over) the same coded JSON shape as every other error.
async fn coded_payload_too_large(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let message = "the request body is larger than the server accepts (see MAX_BODY_BYTES)";
    request_error(StatusCode::PAYLOAD_TOO_LARGE, message, "LIMIT_EXCEEDED")
}

/// A GraphQL-shaped error for a request refused before execution.
fn request_error(status: StatusCode, message: &str, code: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

/// `GET /graphql`: a websocket upgrade, a query in the URL, or GraphiQL for a browser.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    if parts.headers.contains_key(header::UPGRADE) {
        return websocket(state, &mut parts).await;
    }
    let query_string = parts.uri.query().unwrap_or_default();
    if query_string.is_empty() {
        return Html(graphiql()).into_response();
    }
    let mut request = match parse_query_string(query_string) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    // GET must not change anything (GraphQL over HTTP): mutations go through POST.
    let is_mutation = request.parsed_query().ok().is_some_and(|document| {
        document
            .operations
            .iter()
            .any(|(_, operation)| operation.node.ty == OperationType::Mutation)
    });
    if is_mutation {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "mutations must use POST",
        )
            .into_response();
    }
    let (auth, address) = request_data(&parts, state.trust_proxy);
    request = request.data(auth).data(address);
    GraphQLResponse::from(state.schema.execute(request).await).into_response()
}

/// Upgrades to a GraphQL websocket, speaking whichever subprotocol the client offers.
async fn websocket(state: AppState, parts: &mut Parts) -> Response {
    let offer = parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
    let Some(protocol) = offer.and_then(Protocol::negotiate) else {
        return (
            StatusCode::BAD_REQUEST,
            "offer the graphql-transport-ws (or legacy graphql-ws) websocket subprotocol",
        )
            .into_response();
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let settings = state.websocket_settings;
    upgrade
        .protocols([protocol.name()])
        // tungstenite's defaults (128 KiB read and write buffers) are sized for large messages
        // and cost that much per idle subscription; chat frames are small, and the buffers
        // grow on demand for the rare large one.
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(settings.max_message_bytes)
        .max_frame_size(settings.max_message_bytes)
        .on_upgrade(move |socket| {
            websocket::serve(
                socket,
                protocol,
                state.schema,
                state.services,
                state.connections,
                settings,
            )
        })
        .into_response()
}

fn graphiql() -> String {
    GraphiQLSource::build()
        .endpoint("/graphql")
        .subscription_endpoint("/graphql")
        .title("chatapp GraphiQL")
        .finish()
}

/// `GET /healthz`: 200 when the store answers, 503 when it does not.
async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.services.store.kind();
    match state.services.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok", "store": store })).into_response(),
        Err(error) => {
            tracing::warn!(%error, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "store": store })),
            )
                .into_response()
        }
    }
}
