//! GraphQL over HTTP: `POST /graphql` and `GET /graphql?query=…`, following the
//! GraphQL-over-HTTP spec (checked by graphql-http's audit in the client suite).

use async_graphql::{
    BatchRequest, BatchResponse, ParseRequestError, http::parse_query_string,
    parser::types::OperationType,
};
use async_graphql_axum::{GraphQLBatchRequest, rejection::GraphQLRejection};
use axum::{
    extract::{FromRequest, Request, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{AppState, negotiation::ResponseFormat, request_data};

/// Codes of errors that mean the request itself was bad (the document did not parse or
/// validate, or its variables did not fit), as opposed to errors while executing it.
const REQUEST_ERROR_CODES: [&str; 2] = ["GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED"];

/// `POST /graphql`: one operation or a batch, as `application/json`.
pub(super) async fn post(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(format) = ResponseFormat::negotiate(&parts.headers) else {
        return not_acceptable();
    };
    if !super::negotiation::is_json_body(&parts.headers) {
        let message = "send the request body as application/json";
        return request_error(format, StatusCode::UNSUPPORTED_MEDIA_TYPE, message, "BAD_REQUEST");
    }
    let (auth, address) = request_data(&parts, state.trusted_proxies);
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
        Err(GraphQLRejection(error)) => {
            let message = format!("the request body is not a GraphQL request: {error}");
            return request_error(format, StatusCode::BAD_REQUEST, &message, "BAD_REQUEST");
        }
    };
    if batch.iter().any(|request| request.query.trim().is_empty()) {
        let message = "the request has no query: send {\"query\": \"…\"}";
        return request_error(format, StatusCode::BAD_REQUEST, message, "BAD_REQUEST");
    }
    if let BatchRequest::Batch(requests) = &batch
        && requests.len() > state.max_batch
    {
        let message = format!("at most {} operations per request", state.max_batch);
        return request_error(format, StatusCode::BAD_REQUEST, &message, "LIMIT_EXCEEDED");
    }
    let batch = batch.data(auth).data(address);
    render(format, state.schema.execute_batch(batch).await)
}

/// `GET /graphql?query=…`: queries only; GET must not change anything.
pub(super) async fn get(state: AppState, parts: &Parts) -> Response {
    let Some(format) = ResponseFormat::negotiate(&parts.headers) else {
        return not_acceptable();
    };
    let query_string = parts.uri.query().unwrap_or_default();
    let mut request = match parse_query_string(query_string) {
        Ok(request) if !request.query.is_empty() => request,
        Ok(_) => {
            let message = "missing the query parameter: GET /graphql?query={…}";
            return request_error(format, StatusCode::BAD_REQUEST, message, "BAD_REQUEST");
        }
        Err(error) => {
            let message = format!("the query string is not a GraphQL request: {error}");
            return request_error(format, StatusCode::BAD_REQUEST, &message, "BAD_REQUEST");
        }
    };
    let is_mutation = request.parsed_query().ok().is_some_and(|document| {
        document
            .operations
            .iter()
            .any(|(_, operation)| operation.node.ty == OperationType::Mutation)
    });
    if is_mutation {
        let mut response = request_error(
            format,
            StatusCode::METHOD_NOT_ALLOWED,
            "mutations must use POST",
            "BAD_REQUEST",
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let (auth, address) = request_data(parts, state.trusted_proxies);
    request = request.data(auth).data(address);
    render(format, BatchResponse::Single(state.schema.execute(request).await))
}

/// The response in the negotiated format. With `application/graphql-response+json`, a request
/// error is a 400 and carries no `data`; everything else is a 200.
fn render(format: ResponseFormat, response: BatchResponse) -> Response {
    let strict = format == ResponseFormat::GraphqlResponseJson;
    let (body, status) = match response {
        BatchResponse::Single(response) if strict && is_request_error(&response) => {
            (without_data(&response), StatusCode::BAD_REQUEST)
        }
        BatchResponse::Batch(responses) if strict && responses.iter().any(is_request_error) => {
            let bodies = responses.iter().map(|response| match is_request_error(response) {
                true => without_data(response),
                false => to_json(response),
            });
            (format!("[{}]", bodies.collect::<Vec<_>>().join(",")), StatusCode::OK)
        }
        // The common case, serialized once, straight to text.
        response => (to_json(&response), StatusCode::OK),
    };
    json_response(format, status, body)
}

/// A JSON body sent as `format`.
fn json_response(format: ResponseFormat, status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// Whether the request itself was bad (its document did not parse or validate), as opposed to
/// failing while it ran.
fn is_request_error(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| {
            let code = error.extensions.as_ref().and_then(|extensions| extensions.get("code"));
            matches!(code, Some(async_graphql::Value::String(code)) if REQUEST_ERROR_CODES.contains(&code.as_str()))
        })
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot serialize a GraphQL response");
        json!({ "errors": [{ "message": "internal error", "extensions": { "code": "INTERNAL_SERVER_ERROR" } }] })
            .to_string()
    })
}

/// A request error's body without its `data` entry (GraphQL over HTTP).
fn without_data(response: &async_graphql::Response) -> String {
    json!({ "errors": response.errors }).to_string()
}

/// A GraphQL-shaped error for a request refused before execution.
pub(super) fn request_error(
    format: ResponseFormat,
    status: StatusCode,
    message: &str,
    code: &str,
) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    json_response(format, status, body.to_string())
}

fn not_acceptable() -> Response {
    let message = "accept application/graphql-response+json or application/json";
    request_error(ResponseFormat::Json, StatusCode::NOT_ACCEPTABLE, message, "BAD_REQUEST")
}
