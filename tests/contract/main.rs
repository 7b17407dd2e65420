//! The storage contract: what the server relies on from any [`Store`], checked against every
//! implementation. Each test gets a fresh store.
//!
//! The embedded SQLite store always runs. (The MongoDB store joins this suite when it exists.)

use std::sync::Arc;

use chatapp::{
    messages::NewMessage,
    sessions::NewSession,
    store::{Inserted, Store, StoreError},
    users::{NewUser, PhoneNumber, User, Username},
};
use chrono::{Duration, Utc};

/// Runs each contract test against every store implementation.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store: std::sync::Arc<dyn chatapp::store::Store> = std::sync::Arc::new(chatapp::store::sqlite::SqliteStore::open(&dir.path().join("chat.db")).unwrap());
                    super::$name(store).await;
                }
            )*
        }
    };
}

contract_tests!(
    phone_numbers_are_unique,
    users_are_found_by_id_and_phone,
    backlog_is_undelivered_messages_in_send_order,
    acknowledgement_only_touches_the_recipients_messages,
    a_client_message_id_is_stored_once_per_sender,
    conversation_pages_newest_first,
    sessions_can_be_created_read_and_deleted,
);

async fn user(store: &dyn Store, phone: &str) -> User {
    store
        .create_user(NewUser {
            phone_number: PhoneNumber::parse(phone).unwrap(),
            username: Username::parse("someone").unwrap(),
            password_hash: "$2b$04$hash".into(),
        })
        .await
        .unwrap()
}

fn message(from: &User, to: &User, content: &str, client_id: Option<&str>) -> NewMessage {
    NewMessage {
        sender_id: from.id.clone(),
        recipient_id: to.id.clone(),
        content: content.into(),
        client_message_id: client_id.map(String::from),
        sent_at: Utc::now(),
    }
}

async fn send(
    store: &dyn Store,
    from: &User,
    to: &User,
    content: &str,
) -> chatapp::messages::Message {
    match store.insert_message(message(from, to, content, None)).await.unwrap() {
        Inserted::Created(message) => message,
        Inserted::Existing(_) => panic!("a message without client id was deduplicated"),
    }
}

async fn phone_numbers_are_unique(store: Arc<dyn Store>) {
    user(&*store, "+12025550143").await;
    let duplicate = store
        .create_user(NewUser {
            phone_number: PhoneNumber::parse("+12025550143").unwrap(),
            username: Username::parse("other").unwrap(),
            password_hash: "x".into(),
        })
        .await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))), "{duplicate:?}");
}

async fn users_are_found_by_id_and_phone(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    assert_eq!(store.user_by_id(&alice.id).await.unwrap().as_ref(), Some(&alice));
    assert_eq!(store.user_by_phone("+12025550143").await.unwrap().as_ref(), Some(&alice));
    let credentials = store.credentials_by_phone("+12025550143").await.unwrap().unwrap();
    assert_eq!(credentials.user, alice);
    assert_eq!(credentials.password_hash, "$2b$04$hash");
    assert!(store.user_by_id("missing").await.unwrap().is_none());
    assert!(store.user_by_phone("+19999999999").await.unwrap().is_none());
}

async fn backlog_is_undelivered_messages_in_send_order(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(send(&*store, &alice, &bob, &format!("m{i}")).await);
    }
    send(&*store, &bob, &alice, "not for bob").await;
    assert!(sent.windows(2).all(|pair| pair[0].seq < pair[1].seq), "seq grows in send order");

    let all = store.undelivered_messages(&bob.id, 0, 100).await.unwrap();
    assert_eq!(all, sent);
    let first_page = store.undelivered_messages(&bob.id, 0, 3).await.unwrap();
    assert_eq!(first_page, sent[..3]);
    let next_page = store.undelivered_messages(&bob.id, first_page[2].seq, 3).await.unwrap();
    assert_eq!(next_page, sent[3..6]);

    store.mark_delivered(&bob.id, &[sent[1].id.clone()], Utc::now()).await.unwrap();
    let remaining: Vec<String> = store
        .undelivered_messages(&bob.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(remaining, ["m0", "m2", "m3", "m4", "m5", "m6"]);
}

async fn acknowledgement_only_touches_the_recipients_messages(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let to_bob = send(&*store, &alice, &bob, "for bob").await;
    let to_alice = send(&*store, &bob, &alice, "for alice").await;
    let ids = vec![to_bob.id.clone(), to_alice.id.clone()];

    let first = Utc::now();
    store.mark_delivered(&bob.id, &ids, first).await.unwrap();
    let found = store.messages_by_ids(&ids).await.unwrap();
    let by_id = |id: &str| found.iter().find(|m| m.id == id).unwrap().clone();
    let delivered_at = by_id(&to_bob.id).delivered_at.expect("bob's message is acknowledged");
    assert!((delivered_at - first).num_milliseconds().abs() < 1000);
    assert!(by_id(&to_alice.id).delivered_at.is_none(), "bob acknowledged alice's message");

    store.mark_delivered(&bob.id, &ids, first + Duration::hours(1)).await.unwrap();
    let again = store.messages_by_ids(std::slice::from_ref(&to_bob.id)).await.unwrap();
    assert_eq!(
        again[0].delivered_at,
        Some(delivered_at),
        "a second acknowledgement changes nothing"
    );
    assert!(store.messages_by_ids(&["missing".to_string()]).await.unwrap().is_empty());
}

async fn a_client_message_id_is_stored_once_per_sender(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let Inserted::Created(original) =
        store.insert_message(message(&alice, &bob, "once", Some("k1"))).await.unwrap()
    else {
        panic!("first insert must create");
    };
    match store.insert_message(message(&alice, &bob, "changed text", Some("k1"))).await.unwrap() {
        Inserted::Existing(existing) => assert_eq!(existing, original),
        Inserted::Created(_) => panic!("the retry stored a copy"),
    }
    assert!(matches!(
        store.insert_message(message(&bob, &alice, "once", Some("k1"))).await.unwrap(),
        Inserted::Created(_)
    ));
    assert_eq!(store.undelivered_messages(&bob.id, 0, 10).await.unwrap().len(), 1);
}

async fn conversation_pages_newest_first(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let carol = user(&*store, "+12025550145").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let (from, to) = if i % 2 == 0 { (&alice, &bob) } else { (&bob, &alice) };
        sent.push(send(&*store, from, to, &format!("m{i}")).await);
    }
    send(&*store, &carol, &alice, "elsewhere").await;

    let newest = store.conversation(&alice.id, &bob.id, None, 2).await.unwrap();
    assert_eq!(newest, vec![sent[4].clone(), sent[3].clone()]);
    let older = store.conversation(&bob.id, &alice.id, Some(newest[1].seq), 10).await.unwrap();
    assert_eq!(older, vec![sent[2].clone(), sent[1].clone(), sent[0].clone()]);
}

async fn sessions_can_be_created_read_and_deleted(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let now = Utc::now();
    let session = store
        .create_session(NewSession {
            user_id: alice.id.clone(),
            created_at: now,
            expires_at: now + Duration::days(1),
        })
        .await
        .unwrap();
    let other = store
        .create_session(NewSession {
            user_id: alice.id.clone(),
            created_at: now,
            expires_at: now + Duration::days(1),
        })
        .await
        .unwrap();
    assert_ne!(session.id, other.id);
    assert_eq!(store.session(&session.id).await.unwrap(), Some(session.clone()));
    assert!(store.delete_session(&session.id).await.unwrap());
    assert!(!store.delete_session(&session.id).await.unwrap());
    assert!(store.session(&session.id).await.unwrap().is_none());
    assert!(store.session(&other.id).await.unwrap().is_some());
}
