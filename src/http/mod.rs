//! The HTTP layer: routes, and turning requests into GraphQL executions with the caller's token.
//!
//! `/graphql` serves everything a GraphQL client expects on one path: `POST` (single or
//! batched), `GET` with query parameters, the websocket upgrade for subscriptions (both the
//! `graphql-transport-ws` and the legacy `graphql-ws` subprotocols), and GraphiQL for a browser.

mod graphiql;
mod graphql;
pub mod negotiation;
mod upgrade;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    limit::RequestBodyLimitLayer,
    trace::TraceLayer,
};

use self::{graphql::request_error, negotiation::ResponseFormat};
use crate::{
    bus::MessageBus,
    client_address::ClientAddress,
    config::Config,
    cors::AllowedOrigins,
    presence::Presence,
    schema::AppSchema,
    server::ConnectionHold,
    sessions::{self, RequestAuth, Sessions},
    shutdown::Shutdown,
    store::Store,
    websocket::{self, Socket, WebsocketSettings, protocol::Protocol},
};

/// How long browsers may cache a CORS preflight answer (Chrome caps it at two hours).
const CORS_MAX_AGE: Duration = Duration::from_secs(3600);

/// What every handler can reach.
#[derive(Clone)]
struct AppState {
    schema: AppSchema,
    /// Pinged by `/healthz`.
    store: Arc<dyn Store>,
    /// Reported by `/healthz`.
    bus: Arc<dyn MessageBus>,
    /// What every websocket shares: schema, sessions, per-user counts, settings, shutdown.
    websocket: websocket::Shared,
    /// Reverse proxies appending to `X-Forwarded-For` (`TRUST_PROXY`).
    trusted_proxies: usize,
    /// Most operations in one batched POST.
    max_batch: usize,
    /// Browser origins allowed cross-origin; also checked on websocket upgrades.
    allowed_origins: AllowedOrigins,
    /// Whether `GET /graphql` serves GraphiQL to browsers (`GRAPHIQL`).
    graphiql: bool,
}

/// The app's routes, ready to serve.
pub fn router(
    schema: AppSchema,
    sessions: Sessions,
    presence: Presence,
    (store, bus): (Arc<dyn Store>, Arc<dyn MessageBus>),
    shutdown: Shutdown,
    config: &Config,
) -> Router {
    let websocket = websocket::Shared {
        schema: schema.clone(),
        sessions,
        presence,
        settings: WebsocketSettings {
            init_timeout: config.ws_init_timeout,
            ping_interval: config.ws_ping_interval,
            max_subscriptions: config.limits.ws_max_subscriptions,
            max_connections_per_user: config.limits.ws_max_connections_per_user,
            max_message_bytes: config.limits.ws_max_message_bytes,
        },
        shutdown,
    };
    let graphql_routes = get(graphql_get).post(graphql::post).fallback(method_not_allowed);
    let mut router = Router::new().route("/graphql", graphql_routes);
    if config.graphiql {
        router = router.route("/graphiql/{file}", get(graphiql::asset));
    }
    let router = router
        .route("/healthz", get(healthz))
        // Browsers ask for it on every page; an empty answer keeps their consoles clean.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .with_state(AppState {
            schema,
            store,
            bus,
            websocket,
            trusted_proxies: config.trusted_proxies,
            max_batch: config.limits.graphql_max_batch,
            allowed_origins: config.cors_allowed_origins.clone(),
            graphiql: config.graphiql,
        })
        .layer(RequestBodyLimitLayer::new(config.limits.max_body_bytes))
        .layer(axum::middleware::map_response(coded_payload_too_large))
        // Spans name the path only: query strings carry GET queries' variables (phone numbers).
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        }));
    match cors_layer(&config.cors_allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

fn cors_layer(origins: &AllowedOrigins) -> Option<CorsLayer> {
    let allow_origin = match origins {
        AllowedOrigins::SameOrigin => return None,
        AllowedOrigins::Any => AllowOrigin::any(),
        AllowedOrigins::List(origins) => AllowOrigin::list(
            origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(Any)
            .max_age(CORS_MAX_AGE),
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

/// The client's address: the peer address, or behind `TRUST_PROXY` proxies the entry of
/// `X-Forwarded-For` they vouch for.
fn client_address(parts: &Parts, trusted_proxies: usize) -> ClientAddress {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let forwarded: Vec<&str> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    ClientAddress::behind_proxies(peer, &forwarded, trusted_proxies)
}

/// The GraphQL data every HTTP request carries: the caller's token and address.
fn request_data(parts: &Parts, trusted_proxies: usize) -> (RequestAuth, ClientAddress) {
    (request_auth(&parts.headers), client_address(parts, trusted_proxies))
}

/// Gives the body-size refusal (a bare 413 from the limit layer, or the GraphQL extractor's
/// rejection when a chunked body runs over) the same coded JSON shape as every other error.
async fn coded_payload_too_large(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let message = "the request body is larger than the server accepts (see MAX_BODY_BYTES)";
    request_error(ResponseFormat::Json, StatusCode::PAYLOAD_TOO_LARGE, message, "LIMIT_EXCEEDED")
}

/// `GET /graphql`: a websocket upgrade, GraphiQL for a browser, or a query in the URL.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    if parts.headers.contains_key(header::UPGRADE) {
        return websocket(state, &mut parts).await;
    }
    if state.graphiql && parts.uri.query().is_none() && graphiql::wants_html(&parts.headers) {
        return graphiql::page();
    }
    graphql::get(state, &parts).await
}

async fn method_not_allowed() -> Response {
    let mut response = request_error(
        ResponseFormat::Json,
        StatusCode::METHOD_NOT_ALLOWED,
        "/graphql accepts GET and POST",
        "BAD_REQUEST",
    );
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    response
}

async fn not_found() -> Response {
    let message = "not found: the API is at /graphql";
    request_error(ResponseFormat::Json, StatusCode::NOT_FOUND, message, "NOT_FOUND")
}

/// Upgrades to a GraphQL websocket, speaking whichever subprotocol the client offers.
async fn websocket(state: AppState, parts: &mut Parts) -> Response {
    // Browsers do not apply CORS to websockets, so the origin list is checked here. Tokens,
    // never cookies, authenticate a socket, so a foreign page cannot ride a visitor's session
    // anyway; the check keeps the configured list meaning the same thing for both transports.
    let origin = parts.headers.get(header::ORIGIN).and_then(|value| value.to_str().ok());
    if let (AllowedOrigins::List(_), Some(origin)) = (&state.allowed_origins, origin)
        && !state.allowed_origins.allows(origin)
        && !is_same_origin(&parts.headers, origin)
    {
        let message = "this origin is not in CORS_ALLOWED_ORIGINS";
        return request_error(ResponseFormat::Json, StatusCode::FORBIDDEN, message, "FORBIDDEN");
    }
    let offer = parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
    let Some(protocol) = offer.and_then(Protocol::negotiate) else {
        let message = "offer the graphql-transport-ws (or legacy graphql-ws) websocket subprotocol";
        return request_error(
            ResponseFormat::Json,
            StatusCode::BAD_REQUEST,
            message,
            "BAD_REQUEST",
        );
    };
    let upgrade::Accepted { response, pending } = match upgrade::accept(parts, protocol.name()) {
        Ok(accepted) => accepted,
        Err((status, message)) => {
            return request_error(ResponseFormat::Json, status, message, "BAD_REQUEST");
        }
    };
    // The socket keeps its connection's place under MAX_CONNECTIONS for as long as it is open.
    let hold = parts.extensions.remove::<ConnectionHold>();
    // Operations on the socket (sign-ins included) are limited per client like HTTP requests.
    let client = client_address(parts, state.trusted_proxies);
    let shared = state.websocket;
    tokio::spawn(async move {
        let Some((stream, read_ahead)) = upgrade::connection(pending).await else { return };
        let socket = Socket::new(stream, &read_ahead, shared.settings.max_message_bytes);
        // A task of its own, and this one ends here: awaited inside it, the connection would
        // carry this task's state for its whole life.
        let connection = websocket::serve(socket, protocol, shared, client, Box::new(hold));
        tokio::spawn(connection);
    });
    response
}

/// Whether `origin` is this server itself (GraphiQL served from here), by the `Host` header.
fn is_same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    host.is_some_and(|host| origin_host == Some(host))
}

/// `GET /healthz`: 200 when the store answers, 503 when it does not (the instance cannot serve
/// anything). The bus is reported too: with Redis down the instance still serves (sends are
/// stored, subscriptions replay and catch up later), so it is `degraded`, still 200.
async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.store.kind();
    let bus = state.bus.health();
    let bus_report = json!({ "kind": bus.kind, "up": bus.up });
    match state.store.ping().await {
        Ok(()) => {
            let status = if bus.up { "ok" } else { "degraded" };
            Json(json!({ "status": status, "store": store, "bus": bus_report })).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "store": store, "bus": bus_report })),
            )
                .into_response()
        }
    }
}
