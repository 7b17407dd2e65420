//! What the multi-instance bus carries, measured: a whole message as JSON (what it does) next
//! to the store read per delivery the alternative (carrying only the id) would cost each
//! recipient's instance.

use std::{sync::Arc, time::Instant};

use chatapp::{
    bus::{BusEvent, wire},
    domain::{
        Message, MessageContent, MessageId, NewMessage, NewUser, PasswordHash, PhoneNumber, UserId,
        Username,
    },
    store::{Inserted, Store, sqlite::SqliteStore},
};
use serde::Serialize;

/// Sizes and per-event costs.
#[derive(Debug, Serialize)]
pub struct WireFigures {
    /// Content length, characters.
    pub content_chars: usize,
    /// Bytes one published event takes.
    pub event_bytes: usize,
    /// Encode and decode of one event, microseconds (median of the loop).
    pub encode_decode_micros: f64,
    /// A store read of one message by id on the embedded store, microseconds.
    pub store_read_micros: f64,
}

fn message(content: &str) -> Message {
    Message {
        id: MessageId::new("6f1c2a9e4b7d4c3e8a1f0b2c3d4e5f60"),
        seq: 123_456,
        sender_id: UserId::new("9a8b7c6d5e4f40312a1b2c3d4e5f6a7b"),
        recipient_id: UserId::new("1b2c3d4e5f6a47b8c9d0e1f2a3b4c5d6"),
        content: MessageContent::from_stored(content.to_string()),
        client_message_id: None,
        sent_at: chrono::Utc::now(),
        delivered_at: None,
        read_at: None,
    }
}

/// Measures events of a short (40-character) and a longest (4,000-character) message.
pub async fn measure() -> anyhow::Result<Vec<WireFigures>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("chat.db"))?;
    let user = |phone: &str| NewUser {
        phone_number: PhoneNumber::parse(phone).expect("valid"),
        username: Username::parse("bench").expect("valid"),
        password_hash: PasswordHash::new("$2b$04$x".into()),
        phone_verified: true,
    };
    let alice = store.create_user(user("+12025550143")).await?;
    let bob = store.create_user(user("+12025550144")).await?;
    let mut figures = Vec::new();
    for chars in [40, 4000] {
        let content = "x".repeat(chars);
        let event = BusEvent::Message(Arc::new(message(&content)));
        let rounds = 20_000;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..rounds {
            let encoded = wire::encode(&event);
            bytes = encoded.len();
            std::hint::black_box(wire::decode(&encoded));
        }
        let encode_decode_micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        // The alternative: the recipient's instance reads the message by id.
        let mut ids = Vec::new();
        for _ in 0..1000 {
            let new = NewMessage {
                sender_id: alice.id.clone(),
                recipient_id: bob.id.clone(),
                content: MessageContent::from_stored(content.clone()),
                client_message_id: None,
                sent_at: chrono::Utc::now(),
            };
            if let Inserted::Created(stored) = store.insert_message(new).await? {
                ids.push(stored.id);
            }
        }
        let started = Instant::now();
        for id in ids.iter().cycle().take(rounds as usize) {
            std::hint::black_box(store.messages_by_ids(std::slice::from_ref(id)).await?);
        }
        let store_read_micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        figures.push(WireFigures {
            content_chars: chars,
            event_bytes: bytes,
            encode_decode_micros,
            store_read_micros,
        });
    }
    Ok(figures)
}
