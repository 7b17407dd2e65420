//! What crosses a multi-instance bus: each event as JSON.
//!
//! The whole message travels (a few hundred bytes plus its content), not only its id: the
//! recipient's server then delivers it without a store read per message per connection.
//! Anything that does not decode (a newer server's event during a rolling upgrade, a stranger
//! publishing on our channels) becomes [`BusEvent::Lagged`]: the subscriber re-reads the store,
//! which is always right.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::BusEvent;
use crate::domain::{ChatEvent, Message, SessionId};

/// The serialized form of a [`BusEvent`].
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire<M, E> {
    Message { message: M },
    SessionEnded,
    SessionsEnded { sessions: Vec<SessionId> },
    Chat { event: E },
    Lagged,
}

/// `event` as bytes to publish.
pub fn encode(event: &BusEvent) -> Vec<u8> {
    let wire: Wire<&Message, &ChatEvent> = match event {
        BusEvent::Message(message) => Wire::Message { message },
        BusEvent::SessionEnded => Wire::SessionEnded,
        BusEvent::SessionsEnded(ids) => Wire::SessionsEnded { sessions: ids.to_vec() },
        BusEvent::Chat(event) => Wire::Chat { event },
        BusEvent::Lagged => Wire::Lagged,
    };
    serde_json::to_vec(&wire).unwrap_or_else(|_| br#"{"type":"lagged"}"#.to_vec())
}

/// The event in `bytes`; [`BusEvent::Lagged`] if they are not one.
pub fn decode(bytes: &[u8]) -> BusEvent {
    match serde_json::from_slice::<Wire<Message, ChatEvent>>(bytes) {
        Ok(Wire::Message { message }) => BusEvent::Message(Arc::new(message)),
        Ok(Wire::SessionEnded) => BusEvent::SessionEnded,
        Ok(Wire::SessionsEnded { sessions }) => BusEvent::SessionsEnded(sessions.into()),
        Ok(Wire::Chat { event }) => BusEvent::Chat(Arc::new(event)),
        Ok(Wire::Lagged) => BusEvent::Lagged,
        Err(error) => {
            tracing::warn!(%error, "undecodable bus event; treated as a lag");
            BusEvent::Lagged
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::{MessageContent, MessageId, UserId};

    #[test]
    fn events_survive_the_round_trip_and_garbage_is_a_lag() {
        let message = Message {
            id: MessageId::new("m1"),
            seq: 7,
            sender_id: UserId::new("a"),
            recipient_id: UserId::new("b"),
            content: MessageContent::from_stored("héllo \"quoted\" 🚀".into()),
            client_message_id: None,
            sent_at: Utc::now(),
            delivered_at: None,
            read_at: None,
        };
        match decode(&encode(&BusEvent::Message(Arc::new(message.clone())))) {
            BusEvent::Message(back) => assert_eq!(*back, message),
            other => panic!("{other:?}"),
        }
        let typing = ChatEvent::TypingChanged { from: UserId::new("a"), typing: true };
        match decode(&encode(&BusEvent::Chat(Arc::new(typing.clone())))) {
            BusEvent::Chat(back) => assert_eq!(*back, typing),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(&encode(&BusEvent::SessionEnded)), BusEvent::SessionEnded));
        let ended: Arc<[SessionId]> = vec![SessionId::new("s1"), SessionId::new("s2")].into();
        match decode(&encode(&BusEvent::SessionsEnded(ended.clone()))) {
            BusEvent::SessionsEnded(back) => assert_eq!(back, ended),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(b"{\"type\":\"from_the_future\"}"), BusEvent::Lagged));
        assert!(matches!(decode(b"\xff"), BusEvent::Lagged));
    }
}
