//! The websocket opening handshake (RFC 6455 section 4.2), answered here so that the upgraded
//! connection comes back as the plain `TcpStream` our frame layer ([`crate::websocket::Socket`])
//! runs on, without hyper's boxed stream around it.

use axum::{
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an upgrade request was refused: the status and the message for the client.
pub type Refusal = (StatusCode, &'static str);

/// An accepted upgrade: send `response` (101), then the connection arrives through `pending`.
pub struct Accepted {
    pub response: Response,
    pub pending: OnUpgrade,
}

/// Checks an upgrade request and takes its pending connection; `protocol` is the subprotocol
/// chosen from the client's offer.
pub fn accept(parts: &mut Parts, protocol: &'static str) -> Result<Accepted, Refusal> {
    if parts.method != Method::GET {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "a websocket upgrade must be a GET"));
    }
    if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
        return Err((StatusCode::BAD_REQUEST, "the Connection header must include `upgrade`"));
    }
    if !header_is(&parts.headers, header::UPGRADE, "websocket") {
        return Err((StatusCode::BAD_REQUEST, "the Upgrade header must be `websocket`"));
    }
    if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing"));
    };
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Some(pending) = parts.extensions.remove::<OnUpgrade>() else {
        return Err((StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
    };
    let headers = [
        (header::CONNECTION, HeaderValue::from_static("upgrade")),
        (header::UPGRADE, HeaderValue::from_static("websocket")),
        (header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol)),
    ];
    let mut response = (StatusCode::SWITCHING_PROTOCOLS, headers).into_response();
    if let Ok(accept) = HeaderValue::from_str(&accept_key) {
        response.headers_mut().insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(Accepted { response, pending })
}

/// The upgraded connection and what hyper read past the request, once the 101 is sent; `None`
/// if the client went away first.
pub async fn connection(pending: OnUpgrade) -> Option<(TcpStream, bytes::Bytes)> {
    let upgraded = pending.await.ok()?;
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Some((parts.io.into_inner(), parts.read_buf)),
        Err(_) => {
            // Every connection is accepted by our own loop over a `TcpStream` (server.rs).
            tracing::error!("an upgraded connection was not a TCP stream");
            None
        }
    }
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|found| found.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|item| item.trim().eq_ignore_ascii_case(token)))
}
