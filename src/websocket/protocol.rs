//! The wire format of both GraphQL websocket subprotocols, and the close codes we send.
//!
//! - `graphql-transport-ws`, from the `graphql-ws` library (Apollo Client, urql, GraphiQL);
//! - `graphql-ws`, the legacy `subscriptions-transport-ws` protocol of older Apollo clients.

use serde::Deserialize;
use serde_json::{Value, json};

/// The subprotocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws`.
    TransportWs,
    /// `graphql-ws` (subscriptions-transport-ws, deprecated but still in use).
    Legacy,
}

impl Protocol {
    /// The protocol to use for a `Sec-WebSocket-Protocol` offer, preferring the modern one.
    pub fn negotiate(offer: &str) -> Option<Self> {
        let offered: Vec<&str> = offer.split(',').map(str::trim).collect();
        if offered.contains(&"graphql-transport-ws") {
            Some(Protocol::TransportWs)
        } else if offered.contains(&"graphql-ws") {
            Some(Protocol::Legacy)
        } else {
            None
        }
    }

    /// The subprotocol name sent back in the handshake.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::Legacy => "graphql-ws",
        }
    }
}

/// Close codes, as the `graphql-ws` protocol defines them, chosen so that the `graphql-ws`
/// client's own retry decision is the right one: it gives up on 4400, 4401, 4409, 4429 and on
/// 1002–1004, 1007–1011, 1015–1999, and reconnects on everything else.
pub mod close {
    /// The message could not be parsed or is not allowed.
    pub const BAD_REQUEST: u16 = 4400;
    /// Credentials that can never work: no token, a forged or malformed one, or a session that
    /// was ended (logout, revocation); also `subscribe` before `connection_ack`. Final.
    pub const UNAUTHORIZED: u16 = 4401;
    /// A genuine token that expired, at `connection_init` or while connected. Retried, so
    /// `connectionParams` can fetch a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4403;
    /// The store could not be asked about the session; retried.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// No `connection_init` in time.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// `subscribe` with an id that is already running.
    pub const SUBSCRIBER_EXISTS: u16 = 4409;
    /// A second `connection_init`.
    pub const TOO_MANY_INITS: u16 = 4429;
    /// The user already has `WS_MAX_CONNECTIONS_PER_USER` websockets open (policy violation).
    pub const TOO_MANY_CONNECTIONS: u16 = 1008;
    /// A message larger than `WS_MAX_MESSAGE_BYTES`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A frame that breaks the websocket protocol (RFC 6455); also the answer to a client's
    /// Close with a code that may not be sent. Final.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message (or close reason) that is not UTF-8. Final.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer stopped answering keep-alive pings. "Going away" rather than an error code, so a
    /// tab that froze and wakes up reconnects by itself.
    pub const KEEPALIVE_TIMEOUT: u16 = 1001;
    /// The server is shutting down; clients reconnect (to it once it is back, or to another
    /// instance).
    pub const SERVICE_RESTART: u16 = 1012;
    /// Normal closure (legacy `connection_terminate`).
    pub const NORMAL: u16 = 1000;
}

/// A message from the client, of either protocol.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Both: opens the connection; the payload carries the token.
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    /// `graphql-transport-ws`: starts an operation.
    Subscribe { id: String, payload: Box<async_graphql::Request> },
    /// Legacy: starts an operation.
    Start { id: String, payload: Box<async_graphql::Request> },
    /// `graphql-transport-ws`: stops an operation.
    Complete { id: String },
    /// Legacy: stops an operation.
    Stop { id: String },
    /// `graphql-transport-ws`: asks for a `pong`.
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    /// `graphql-transport-ws`: answers our `ping`.
    Pong {
        #[serde(default)]
        payload: Option<Value>,
    },
    /// Legacy: closes the connection.
    ConnectionTerminate,
}

impl ClientMessage {
    /// Parses a text frame; `None` if it is not a valid message of `protocol`.
    pub fn parse(text: &str, protocol: Protocol) -> Option<Self> {
        let message: ClientMessage = serde_json::from_str(text).ok()?;
        let allowed = matches!(
            (&message, protocol),
            (ClientMessage::ConnectionInit { .. }, _)
                | (
                    ClientMessage::Subscribe { .. }
                        | ClientMessage::Complete { .. }
                        | ClientMessage::Ping { .. }
                        | ClientMessage::Pong { .. },
                    Protocol::TransportWs,
                )
                | (
                    ClientMessage::Start { .. }
                        | ClientMessage::Stop { .. }
                        | ClientMessage::ConnectionTerminate,
                    Protocol::Legacy,
                )
        );
        allowed.then_some(message)
    }
}

/// A message to the client, serialized once and sent as one text frame.
pub type Outgoing = String;

/// `connection_ack`.
pub fn ack() -> Outgoing {
    json!({ "type": "connection_ack" }).to_string()
}

/// A result of operation `id`: `next` (or legacy `data`). Serialized straight from the
/// response, not through a `serde_json::Value`: this runs for every delivered message.
pub fn next(protocol: Protocol, id: &str, response: &async_graphql::Response) -> Outgoing {
    #[derive(serde::Serialize)]
    struct Next<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: &'a str,
        payload: &'a async_graphql::Response,
    }
    let kind = match protocol {
        Protocol::TransportWs => "next",
        Protocol::Legacy => "data",
    };
    serde_json::to_string(&Next { kind, id, payload: response })
        .unwrap_or_else(|_| json!({ "type": kind, "id": id, "payload": null }).to_string())
}

/// Operation `id` failed before producing any result (`graphql-transport-ws` `error`).
pub fn error(id: &str, errors: &[async_graphql::ServerError]) -> Outgoing {
    json!({ "type": "error", "id": id, "payload": errors }).to_string()
}

/// Operation `id` is refused with a coded error, without closing the connection.
pub fn refused(protocol: Protocol, id: &str, message: &str, code: &str) -> Outgoing {
    let error = json!({ "message": message, "extensions": { "code": code } });
    match protocol {
        Protocol::TransportWs => json!({ "type": "error", "id": id, "payload": [error] }),
        Protocol::Legacy => json!({ "type": "error", "id": id, "payload": error }),
    }
    .to_string()
}

/// Operation `id` finished.
pub fn complete(id: &str) -> Outgoing {
    json!({ "type": "complete", "id": id }).to_string()
}

/// Keep-alive: `ping` (or the legacy `ka`, which clients do not answer).
pub fn keepalive(protocol: Protocol) -> Outgoing {
    match protocol {
        Protocol::TransportWs => json!({ "type": "ping" }),
        Protocol::Legacy => json!({ "type": "ka" }),
    }
    .to_string()
}

/// The answer to a client `ping`.
pub fn pong() -> Outgoing {
    json!({ "type": "pong" }).to_string()
}

/// Legacy: `connection_init` was refused.
pub fn connection_error(message: &str) -> Outgoing {
    json!({ "type": "connection_error", "payload": { "message": message } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_modern_protocol() {
        assert_eq!(Protocol::negotiate("graphql-transport-ws"), Some(Protocol::TransportWs));
        assert_eq!(Protocol::negotiate("graphql-ws"), Some(Protocol::Legacy));
        assert_eq!(
            Protocol::negotiate("graphql-ws, graphql-transport-ws"),
            Some(Protocol::TransportWs)
        );
        assert_eq!(Protocol::negotiate("mqtt"), None);
    }

    #[test]
    fn messages_are_parsed_per_protocol() {
        let subscribe = r#"{"type":"subscribe","id":"1","payload":{"query":"{ __typename }"}}"#;
        assert!(ClientMessage::parse(subscribe, Protocol::TransportWs).is_some());
        assert!(ClientMessage::parse(subscribe, Protocol::Legacy).is_none());
        let start = r#"{"type":"start","id":"1","payload":{"query":"{ __typename }"}}"#;
        assert!(ClientMessage::parse(start, Protocol::Legacy).is_some());
        assert!(ClientMessage::parse(start, Protocol::TransportWs).is_none());
        assert!(
            ClientMessage::parse(r#"{"type":"connection_init"}"#, Protocol::TransportWs).is_some()
        );
        for bad in ["", "{}", "[]", r#"{"type":"subscribe","id":"1"}"#, r#"{"type":"next"}"#] {
            assert!(ClientMessage::parse(bad, Protocol::TransportWs).is_none(), "{bad}");
        }
    }
}
