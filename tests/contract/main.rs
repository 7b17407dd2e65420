//! The storage contract: what the server relies on from any [`Store`], checked against every
//! implementation. Each test gets a fresh store.
//!
//! The embedded SQLite store always runs. The MongoDB store runs when `TEST_MONGO_URI` points at
//! a server (`mongodb://localhost:27017`); each test then gets its own freshly named database,
//! dropped afterwards. Without it the MongoDB tests print a notice and pass without running.

use std::{io::Write, sync::Arc, time::Duration as StdDuration};

use chatapp::{
    config::MongoConfig,
    domain::{
        ClientMessageId, Message, MessageContent, MessageId, NewMessage, NewSession, NewUser,
        PasswordHash, PendingCode, PhoneNumber, Session, SessionId, User, UserId, Username,
    },
    store::{Constraint, Inserted, Store, StoreError, mongo::MongoStore, sqlite::SqliteStore},
};
use chrono::{DateTime, Duration, Utc};

/// Runs each contract test against every store implementation.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::SqliteStore::open(&dir.path().join("chat.db")).unwrap();
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test]
                async fn $name() {
                    super::on_mongo(stringify!($name), super::$name).await;
                }
            )*
        }
    };
}

/// Runs `test` on a fresh MongoDB database when `TEST_MONGO_URI` is set, dropping the database
/// afterwards whether the test passed or not.
async fn on_mongo<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(store) = fresh_mongo(name).await else { return };
    let store = Arc::new(store);
    let outcome = tokio::spawn(test(store.clone())).await;
    store.drop_database().await.expect("test database dropped");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// A store on a freshly named database, or `None` (with a notice) without `TEST_MONGO_URI`.
async fn fresh_mongo(name: &str) -> Option<MongoStore> {
    let Some(uri) = std::env::var("TEST_MONGO_URI").ok().filter(|uri| !uri.is_empty()) else {
        // Straight to stderr, past the test harness's output capture, so the skip is seen.
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: MongoDB contract test {name} skipped: set TEST_MONGO_URI to run it"
        );
        return None;
    };
    let config = MongoConfig {
        uri,
        database: Some(format!("chatapp_contract_{}", uuid::Uuid::new_v4().simple())),
        timeout: StdDuration::from_secs(10),
    };
    Some(MongoStore::connect(&config).await.expect("TEST_MONGO_URI is usable"))
}

/// MongoDB only: a database dropped (or restored from a dump without indexes) under a running
/// server gets its unique indexes back, so concurrent duplicates are still refused. Before, the
/// indexes were created once per process and 5-7 copies got through.
#[tokio::test]
async fn mongo_unique_indexes_come_back_after_the_database_is_dropped() {
    let name = "mongo_unique_indexes_come_back_after_the_database_is_dropped";
    let Some(store) = fresh_mongo(name).await else { return };
    let store = Arc::new(store.recheck_indexes_every(StdDuration::from_millis(50)));
    let outcome = tokio::spawn(duplicates_are_refused_after_a_drop(store.clone())).await;
    store.drop_database().await.expect("test database dropped");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn duplicates_are_refused_after_a_drop(store: Arc<MongoStore>) {
    user(&*store, "+12025550143").await;
    store.drop_database().await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(100)).await;

    let registrations = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_user(NewUser {
                    phone_number: PhoneNumber::parse("+12025550144").unwrap(),
                    username: Username::parse("twin").unwrap(),
                    password_hash: PasswordHash::new("$2b$04$hash".into()),
                    phone_verified: true,
                })
                .await
        })
    });
    let created = futures::future::join_all(registrations)
        .await
        .into_iter()
        .filter(|outcome| outcome.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(created, 1, "one account per phone number after the drop");

    let alice = store.user_by_phone(&phone("+12025550144")).await.unwrap().unwrap();
    let bob = user(&*store, "+12025550145").await;
    let sends = (0..8).map(|_| {
        let store = store.clone();
        let new = message(&alice, &bob, "once", Some("k1"));
        tokio::spawn(async move { store.insert_message(new).await.unwrap() })
    });
    let copies = futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(|outcome| matches!(outcome, Ok(Inserted::Created(_))))
        .count();
    assert_eq!(copies, 1, "one message per clientMessageId after the drop");
}

contract_tests!(
    phone_numbers_are_unique,
    users_are_found_by_id_and_phone,
    users_are_found_in_batches,
    backlog_is_undelivered_messages_in_send_order,
    acknowledgement_only_touches_the_recipients_messages,
    a_client_message_id_is_stored_once_per_sender,
    concurrent_sends_get_distinct_seqs_and_one_copy_per_client_id,
    conversation_pages_newest_first,
    sessions_can_be_created_read_and_deleted,
    every_session_of_a_user_can_be_listed_touched_and_ended,
    ids_that_cannot_be_the_stores_name_nothing,
    the_store_answers_pings,
    expired_sessions_can_be_purged,
    the_chat_list_shows_the_newest_message_first_with_unread_counts,
    the_chat_list_pages_by_activity,
    reading_is_monotonic_and_implies_delivery,
    last_seen_and_presence_visibility_are_kept,
    usernames_and_password_hashes_can_be_changed,
    blocks_are_kept_per_direction,
    a_deleted_account_keeps_a_tombstone_only,
    verification_codes_count_every_try_and_go_with_verification,
    stale_unverified_accounts_are_released_whole,
);

fn phone(number: &str) -> PhoneNumber {
    PhoneNumber::parse(number).unwrap()
}

async fn user(store: &dyn Store, number: &str) -> User {
    store
        .create_user(NewUser {
            phone_number: phone(number),
            username: Username::parse("someone").unwrap(),
            password_hash: PasswordHash::new("$2b$04$hash".into()),
            phone_verified: true,
        })
        .await
        .unwrap()
}

/// A session of `user` created at `now`, lasting a day.
async fn day_session(store: &dyn Store, user: &User, now: DateTime<Utc>) -> Session {
    let session = NewSession {
        user_id: user.id.clone(),
        created_at: now,
        expires_at: now + Duration::days(1),
    };
    store.create_session(session).await.unwrap()
}

fn message(from: &User, to: &User, content: &str, client_id: Option<&str>) -> NewMessage {
    NewMessage {
        sender_id: from.id.clone(),
        recipient_id: to.id.clone(),
        content: MessageContent::parse(content.into()).unwrap(),
        client_message_id: client_id.map(|key| ClientMessageId::parse(key.into()).unwrap()),
        sent_at: Utc::now(),
    }
}

async fn send(store: &dyn Store, from: &User, to: &User, content: &str) -> Message {
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
            password_hash: PasswordHash::new("x".into()),
            phone_verified: true,
        })
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(Constraint::PhoneNumber))),
        "{duplicate:?}"
    );
}

async fn users_are_found_by_id_and_phone(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    assert_eq!(store.user_by_id(&alice.id).await.unwrap().as_ref(), Some(&alice));
    assert_eq!(store.user_by_phone(&phone("+12025550143")).await.unwrap().as_ref(), Some(&alice));
    let credentials = store.credentials_by_phone(&phone("+12025550143")).await.unwrap().unwrap();
    assert_eq!(credentials.user, alice);
    assert_eq!(credentials.password_hash.as_str(), "$2b$04$hash");
    assert!(store.user_by_id(&UserId::new("missing")).await.unwrap().is_none());
    assert!(store.user_by_phone(&phone("+12025550100")).await.unwrap().is_none());
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
        .map(|m| m.content.as_str().to_string())
        .collect();
    assert_eq!(remaining, ["m0", "m2", "m3", "m4", "m5", "m6"]);

    // The seqs alone, page by page, are those of the same messages.
    let seq = |n: usize| sent[n].seq;
    assert_eq!(store.undelivered_seqs(&bob.id, 0, 100).await.unwrap(), [0, 2, 3, 4, 5, 6].map(seq));
    assert_eq!(store.undelivered_seqs(&bob.id, seq(2), 2).await.unwrap(), [seq(3), seq(4)]);
    let alices = store.undelivered_seqs(&alice.id, 0, 100).await.unwrap();
    assert!(matches!(alices.as_slice(), [only] if *only > seq(6)), "{alices:?}");
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
    let by_id = |id: &MessageId| found.iter().find(|m| &m.id == id).unwrap().clone();
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
    assert!(store.messages_by_ids(&[MessageId::new("missing")]).await.unwrap().is_empty());
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
    let session = day_session(&*store, &alice, now).await;
    let other = day_session(&*store, &alice, now).await;
    assert_ne!(session.id, other.id);
    assert_eq!(store.session(&session.id).await.unwrap(), Some(session.clone()));
    assert!(store.delete_session(&session.id).await.unwrap());
    assert!(!store.delete_session(&session.id).await.unwrap());
    assert!(store.session(&session.id).await.unwrap().is_none());
    assert!(store.session(&other.id).await.unwrap().is_some());
}

async fn every_session_of_a_user_can_be_listed_touched_and_ended(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let now = Utc::now();
    let first = day_session(&*store, &alice, now).await;
    let second = day_session(&*store, &alice, now).await;
    let bobs = day_session(&*store, &bob, now).await;
    let mut listed: Vec<SessionId> =
        store.user_sessions(&alice.id).await.unwrap().into_iter().map(|s| s.id).collect();
    listed.sort();
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    let later = now + Duration::minutes(5);
    store.touch_session(&first.id, later).await.unwrap();
    let touched = store.session(&first.id).await.unwrap().unwrap();
    assert!((touched.last_seen_at - later).num_milliseconds().abs() < 2);
    assert_eq!(touched.created_at, first.created_at);

    let mut ended = store.delete_user_sessions(&alice.id).await.unwrap();
    ended.sort();
    assert_eq!(ended, expected);
    assert!(store.user_sessions(&alice.id).await.unwrap().is_empty());
    assert!(store.delete_user_sessions(&alice.id).await.unwrap().is_empty());
    assert_eq!(store.session(&bobs.id).await.unwrap(), Some(bobs), "other users keep theirs");
}

async fn concurrent_sends_get_distinct_seqs_and_one_copy_per_client_id(store: Arc<dyn Store>) {
    let alice = Arc::new(user(&*store, "+12025550143").await);
    let bob = Arc::new(user(&*store, "+12025550144").await);
    let spawn_send = |client_id: Option<String>, content: String| {
        let (store, alice, bob) = (store.clone(), alice.clone(), bob.clone());
        tokio::spawn(async move {
            let message = message(&alice, &bob, &content, client_id.as_deref());
            match store.insert_message(message).await.unwrap() {
                Inserted::Created(message) | Inserted::Existing(message) => message,
            }
        })
    };
    let retries: Vec<_> =
        (0..10).map(|_| spawn_send(Some("same".into()), "retry".into())).collect();
    let distinct: Vec<_> = (0..30).map(|i| spawn_send(None, format!("m{i}"))).collect();
    let mut retried_ids = Vec::new();
    for task in retries {
        retried_ids.push(task.await.unwrap().id);
    }
    retried_ids.dedup();
    assert_eq!(retried_ids.len(), 1, "every retry got the one stored message");
    let mut seqs = Vec::new();
    for task in distinct {
        seqs.push(task.await.unwrap().seq);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 30, "no two messages share a seq");
    let backlog = store.undelivered_messages(&bob.id, 0, 100).await.unwrap();
    assert_eq!(backlog.len(), 31);
    assert!(backlog.windows(2).all(|pair| pair[0].seq < pair[1].seq), "backlog in seq order");
}

async fn users_are_found_in_batches(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let carol = user(&*store, "+12025550145").await;
    assert_eq!(store.users_by_ids(std::slice::from_ref(&carol.id)).await.unwrap(), vec![carol]);
    assert!(store.users_by_ids(&[UserId::new("not-an-id")]).await.unwrap().is_empty());
    let ids = [alice.id.clone(), bob.id.clone(), bob.id.clone(), UserId::new("not-an-id")];
    let mut found = store.users_by_ids(&ids).await.unwrap();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = vec![alice, bob];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(found, expected);
    assert!(store.users_by_ids(&[]).await.unwrap().is_empty());
}

async fn ids_that_cannot_be_the_stores_name_nothing(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let sent = send(&*store, &alice, &bob, "hello").await;
    for foreign in ["", "not-an-id", "0", "'; DROP TABLE users; --", "{\"$ne\": null}"] {
        let (user, session) = (UserId::new(foreign), SessionId::new(foreign));
        assert!(store.user_by_id(&user).await.unwrap().is_none(), "{foreign:?}");
        assert!(store.session(&session).await.unwrap().is_none(), "{foreign:?}");
        assert!(!store.delete_session(&session).await.unwrap(), "{foreign:?}");
        assert!(store.user_sessions(&user).await.unwrap().is_empty(), "{foreign:?}");
        assert!(store.messages_by_ids(&[MessageId::new(foreign)]).await.unwrap().is_empty());
        assert!(store.conversation(&alice.id, &user, None, 10).await.unwrap().is_empty());
        store.mark_delivered(&user, std::slice::from_ref(&sent.id), Utc::now()).await.unwrap();
    }
    let unchanged = store.messages_by_ids(std::slice::from_ref(&sent.id)).await.unwrap();
    assert_eq!(unchanged, vec![sent], "nothing was acknowledged through a foreign id");
}

async fn the_store_answers_pings(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(["sqlite", "mongodb"].contains(&store.kind()));
}

async fn expired_sessions_can_be_purged(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let now = Utc::now();
    let session = |created: chrono::DateTime<Utc>, expires: chrono::DateTime<Utc>| NewSession {
        user_id: alice.id.clone(),
        created_at: created,
        expires_at: expires,
    };
    let old = store
        .create_session(session(now - Duration::days(10), now - Duration::days(3)))
        .await
        .unwrap();
    let recent = store
        .create_session(session(now - Duration::days(2), now - Duration::hours(1)))
        .await
        .unwrap();
    let live = store.create_session(session(now, now + Duration::days(1))).await.unwrap();
    // At most one: MongoDB's TTL index may already have removed it.
    assert!(store.delete_expired_sessions(now - Duration::days(1)).await.unwrap() <= 1);
    assert!(store.session(&old.id).await.unwrap().is_none());
    assert!(store.session(&recent.id).await.unwrap().is_some(), "kept for the retention day");
    assert!(store.session(&live.id).await.unwrap().is_some());
}

async fn the_chat_list_shows_the_newest_message_first_with_unread_counts(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let carol = user(&*store, "+12025550145").await;
    send(&*store, &bob, &alice, "b1").await;
    send(&*store, &bob, &alice, "b2").await;
    send(&*store, &carol, &alice, "c1").await;
    let reply = send(&*store, &alice, &bob, "reply").await;

    let list = store.conversations(&alice.id, None, 10).await.unwrap();
    let lines: Vec<_> = list.iter().map(|c| (c.with.clone(), c.unread_count)).collect();
    assert_eq!(lines, vec![(bob.id.clone(), 2), (carol.id.clone(), 1)]);
    assert_eq!(list[0].last_message, reply, "the newest message in either direction");
    let bobs = store.conversations(&bob.id, None, 10).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!((bobs[0].with.clone(), bobs[0].unread_count), (alice.id.clone(), 1));
    assert_eq!(
        store.conversation_with(&alice.id, &carol.id).await.unwrap().map(|c| c.unread_count),
        Some(1)
    );
    assert!(store.conversation_with(&bob.id, &carol.id).await.unwrap().is_none());
    assert!(store.conversations(&UserId::new("nobody"), None, 10).await.unwrap().is_empty());
}

async fn the_chat_list_pages_by_activity(store: Arc<dyn Store>) {
    let owner = user(&*store, "+12025550100").await;
    let mut others = Vec::new();
    for n in 0..5 {
        let other = user(&*store, &format!("+1202555011{n}")).await;
        send(&*store, &other, &owner, "hello").await;
        others.push(other);
    }
    let first = store.conversations(&owner.id, None, 2).await.unwrap();
    let ids = |page: &[chatapp::domain::Conversation]| -> Vec<UserId> {
        page.iter().map(|c| c.with.clone()).collect()
    };
    assert_eq!(ids(&first), vec![others[4].id.clone(), others[3].id.clone()]);
    // New activity in an older conversation moves it to the top without disturbing the cursor.
    send(&*store, &owner, &others[0], "back to you").await;
    let cursor = first[1].last_message.seq;
    let second = store.conversations(&owner.id, Some(cursor), 2).await.unwrap();
    assert_eq!(ids(&second), vec![others[2].id.clone(), others[1].id.clone()]);
    let rest = store.conversations(&owner.id, Some(second[1].last_message.seq), 2).await.unwrap();
    assert!(rest.is_empty(), "others[0] moved to the top: {:?}", ids(&rest));
    let top = store.conversations(&owner.id, None, 1).await.unwrap();
    assert_eq!(ids(&top), vec![others[0].id.clone()]);
}

async fn reading_is_monotonic_and_implies_delivery(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let sent: Vec<_> = futures::future::join_all((0..3).map(|n| {
        let store = store.clone();
        let (alice, bob) = (alice.clone(), bob.clone());
        async move { send(&*store, &alice, &bob, &format!("m{n}")).await }
    }))
    .await;
    let mut sent = sent;
    sent.sort_by_key(|m| m.seq);
    let mine = send(&*store, &bob, &alice, "not alice's to read").await;

    let first = Utc::now();
    let mut marked = store.mark_read(&bob.id, &alice.id, sent[1].seq, first).await.unwrap();
    marked.sort();
    let mut expected = vec![sent[0].id.clone(), sent[1].id.clone()];
    expected.sort();
    assert_eq!(marked, expected);
    let read = store.messages_by_ids(&[sent[0].id.clone(), sent[2].id.clone()]).await.unwrap();
    let by_id = |id: &MessageId| read.iter().find(|m| &m.id == id).unwrap().clone();
    let early = by_id(&sent[0].id);
    assert!(early.read_at.is_some() && early.delivered_at.is_some(), "read implies delivered");
    assert!(by_id(&sent[2].id).read_at.is_none());
    assert_eq!(store.conversation_with(&bob.id, &alice.id).await.unwrap().unwrap().unread_count, 1);

    // Marking an older message again changes nothing, and keeps the first read time.
    let later = first + Duration::hours(1);
    assert!(store.mark_read(&bob.id, &alice.id, sent[0].seq, later).await.unwrap().is_empty());
    let again = store.messages_by_ids(std::slice::from_ref(&sent[0].id)).await.unwrap();
    assert_eq!(again[0].read_at, early.read_at);
    // Only messages to the reader are marked: bob's own message stays unread for alice.
    let marked = store.mark_read(&bob.id, &alice.id, mine.seq, later).await.unwrap();
    assert_eq!(marked, vec![sent[2].id.clone()]);
    let bobs_own = store.messages_by_ids(std::slice::from_ref(&mine.id)).await.unwrap();
    assert!(bobs_own[0].read_at.is_none());
    assert_eq!(store.conversation_with(&alice.id, &bob.id).await.unwrap().unwrap().unread_count, 1);
    assert_eq!(store.conversation_with(&bob.id, &alice.id).await.unwrap().unwrap().unread_count, 0);
}

async fn last_seen_and_presence_visibility_are_kept(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    assert_eq!((alice.last_seen_at, alice.shows_presence), (None, true), "new users show presence");
    let at = Utc::now();
    store.record_last_seen(&alice.id, at).await.unwrap();
    store.set_shows_presence(&alice.id, false).await.unwrap();
    let read = store.user_by_id(&alice.id).await.unwrap().unwrap();
    let seen = read.last_seen_at.expect("last seen is kept");
    assert!((seen - at).num_milliseconds().abs() < 2);
    assert!(!read.shows_presence);
    let by_phone = store.credentials_by_phone(&alice.phone_number).await.unwrap().unwrap();
    assert_eq!(by_phone.user, read, "every read returns the same user");
    assert_eq!(by_phone.password_hash.as_str(), "$2b$04$hash");
    // Ids that name nothing change nothing.
    store.record_last_seen(&UserId::new("nobody"), at).await.unwrap();
}

async fn usernames_and_password_hashes_can_be_changed(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let renamed =
        store.set_username(&alice.id, Username::parse("Alice B.").unwrap()).await.unwrap();
    assert_eq!(renamed.as_ref().map(|u| u.username.as_str()), Some("Alice B."));
    assert_eq!(store.user_by_id(&alice.id).await.unwrap(), renamed);
    store.set_password_hash(&alice.id, PasswordHash::new("$2b$04$new".into())).await.unwrap();
    let credentials = store.credentials_by_phone(&alice.phone_number).await.unwrap().unwrap();
    assert_eq!(credentials.password_hash.as_str(), "$2b$04$new");
    let untouched = store.credentials_by_phone(&bob.phone_number).await.unwrap().unwrap();
    assert_eq!(
        (untouched.user.username.as_str(), untouched.password_hash.as_str()),
        ("someone", "$2b$04$hash")
    );
    let nobody = UserId::new("nobody");
    assert_eq!(store.set_username(&nobody, Username::parse("ghost").unwrap()).await.unwrap(), None);
}

async fn blocks_are_kept_per_direction(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let carol = user(&*store, "+12025550145").await;
    let now = Utc::now();
    store.block(&alice.id, &bob.id, now).await.unwrap();
    store.block(&alice.id, &bob.id, now).await.unwrap();
    store.block(&alice.id, &carol.id, now + Duration::seconds(1)).await.unwrap();
    assert!(store.blocks(&alice.id, &bob.id).await.unwrap());
    assert!(!store.blocks(&bob.id, &alice.id).await.unwrap(), "one direction only");
    assert_eq!(
        store.blocked_users(&alice.id).await.unwrap(),
        vec![carol.id.clone(), bob.id.clone()]
    );
    assert!(store.unblock(&alice.id, &bob.id).await.unwrap());
    assert!(!store.unblock(&alice.id, &bob.id).await.unwrap());
    assert!(!store.blocks(&alice.id, &bob.id).await.unwrap());
    assert_eq!(store.blocked_users(&alice.id).await.unwrap(), vec![carol.id.clone()]);
    assert!(store.blocked_users(&bob.id).await.unwrap().is_empty());
    assert!(!store.blocks(&UserId::new("nobody"), &bob.id).await.unwrap());
}

async fn a_deleted_account_keeps_a_tombstone_only(store: Arc<dyn Store>) {
    let alice = user(&*store, "+12025550143").await;
    let bob = user(&*store, "+12025550144").await;
    let delivered = send(&*store, &alice, &bob, "delivered").await;
    store.mark_delivered(&bob.id, std::slice::from_ref(&delivered.id), Utc::now()).await.unwrap();
    let on_its_way = send(&*store, &alice, &bob, "not yet delivered").await;
    let waiting = send(&*store, &bob, &alice, "waiting for alice").await;
    store.block(&alice.id, &bob.id, Utc::now()).await.unwrap();
    let now = Utc::now();
    let session = day_session(&*store, &alice, now).await;
    store.record_last_seen(&alice.id, now).await.unwrap();
    store.save_verification_code(&alice.id, pending("a1b2", now)).await.unwrap();

    let ended = store.delete_account(&alice.id, now).await.unwrap();
    assert_eq!(ended, vec![session.id.clone()]);
    assert!(store.delete_account(&alice.id, now).await.unwrap().is_empty(), "idempotent");
    assert!(store.user_by_phone(&alice.phone_number).await.unwrap().is_none(), "number freed");
    let tombstone = store.user_by_id(&alice.id).await.unwrap().unwrap();
    assert!(tombstone.is_deleted() && tombstone.last_seen_at.is_none());
    assert_eq!(tombstone.username.as_str(), chatapp::domain::User::DELETED_NAME);
    let credentials = store.credentials_by_phone(&tombstone.phone_number).await.unwrap().unwrap();
    assert_eq!(credentials.password_hash.as_str(), "");
    store.record_last_seen(&alice.id, now).await.unwrap();
    assert!(store.user_by_id(&alice.id).await.unwrap().unwrap().last_seen_at.is_none());
    assert!(store.session(&session.id).await.unwrap().is_none());
    assert!(store.messages_by_ids(std::slice::from_ref(&waiting.id)).await.unwrap().is_empty());
    let kept = store.messages_by_ids(&[delivered.id.clone(), on_its_way.id.clone()]).await.unwrap();
    assert_eq!(kept.len(), 2, "what others received, or will, stays");
    assert!(store.conversations(&alice.id, None, 10).await.unwrap().is_empty());
    assert_eq!(store.conversations(&bob.id, None, 10).await.unwrap().len(), 1);
    assert!(store.blocked_users(&alice.id).await.unwrap().is_empty());
    assert!(store.count_verification_attempt(&alice.id).await.unwrap().is_none(), "code erased");
    // The number can be registered again.
    user(&*store, "+12025550143").await;
}

/// A user whose number is not verified yet.
async fn unverified(store: &dyn Store, number: &str) -> User {
    let new = NewUser {
        phone_number: phone(number),
        username: Username::parse("claimant").unwrap(),
        password_hash: PasswordHash::new("$2b$04$hash".into()),
        phone_verified: false,
    };
    store.create_user(new).await.unwrap()
}

fn pending(hash: &str, now: DateTime<Utc>) -> PendingCode {
    PendingCode { code_hash: hash.into(), expires_at: now + Duration::minutes(10), attempts: 0 }
}

async fn verification_codes_count_every_try_and_go_with_verification(store: Arc<dyn Store>) {
    let now = Utc::now();
    let claimant = unverified(&*store, "+12025550143").await;
    assert!(!claimant.phone_verified);
    assert!(!store.user_by_id(&claimant.id).await.unwrap().unwrap().phone_verified);
    assert!(store.count_verification_attempt(&claimant.id).await.unwrap().is_none(), "no code");

    store.save_verification_code(&claimant.id, pending("first", now)).await.unwrap();
    let counted = store.count_verification_attempt(&claimant.id).await.unwrap().unwrap();
    assert_eq!((counted.code_hash.as_str(), counted.attempts), ("first", 1));
    let expiry = pending("first", now).expires_at;
    assert_eq!(counted.expires_at.timestamp_millis(), expiry.timestamp_millis(), "to the ms");
    assert_eq!(store.count_verification_attempt(&claimant.id).await.unwrap().unwrap().attempts, 2);

    // A new code replaces the old one, tries and all.
    store.save_verification_code(&claimant.id, pending("second", now)).await.unwrap();
    let tries = (0..10).map(|_| {
        let (store, id) = (store.clone(), claimant.id.clone());
        tokio::spawn(async move { store.count_verification_attempt(&id).await })
    });
    let mut counts: Vec<u32> = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|outcome| outcome.unwrap().unwrap().unwrap().attempts)
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=10).collect::<Vec<_>>(), "concurrent tries each count once");

    assert!(store.mark_phone_verified(&claimant.id).await.unwrap());
    assert!(store.user_by_id(&claimant.id).await.unwrap().unwrap().phone_verified);
    assert!(store.count_verification_attempt(&claimant.id).await.unwrap().is_none(), "used up");
    assert!(!store.mark_phone_verified(&UserId::new("nobody")).await.unwrap());
}

async fn stale_unverified_accounts_are_released_whole(store: Arc<dyn Store>) {
    let verified = user(&*store, "+12025550140").await;
    let squatter = unverified(&*store, "+12025550143").await;
    let other_claim = unverified(&*store, "+12025550144").await;
    let now = Utc::now();
    let session = day_session(&*store, &squatter, now).await;
    store.save_verification_code(&squatter.id, pending("hash", now)).await.unwrap();
    store.block(&squatter.id, &verified.id, now).await.unwrap();
    let later = now + Duration::seconds(1);

    // Claims younger than the cut-off stay.
    let too_early = now - Duration::hours(1);
    assert!(store.release_unverified(too_early, None).await.unwrap().is_empty());
    assert!(store.user_by_id(&squatter.id).await.unwrap().is_some());

    // One number's claim goes, with everything hanging off it.
    let ended = store.release_unverified(later, Some(&squatter.phone_number)).await.unwrap();
    assert_eq!(ended, vec![session.id.clone()]);
    assert!(store.user_by_id(&squatter.id).await.unwrap().is_none());
    assert!(store.user_by_phone(&squatter.phone_number).await.unwrap().is_none());
    assert!(store.session(&session.id).await.unwrap().is_none());
    assert!(store.count_verification_attempt(&squatter.id).await.unwrap().is_none());
    assert!(store.blocked_users(&squatter.id).await.unwrap().is_empty());
    assert!(store.user_by_id(&other_claim.id).await.unwrap().is_some(), "other numbers stay");
    // The number is free for its owner.
    user(&*store, "+12025550143").await;

    // Without a number, every stale claim goes, and verified accounts never do.
    store.release_unverified(later, None).await.unwrap();
    assert!(store.user_by_id(&other_claim.id).await.unwrap().is_none());
    assert!(store.user_by_id(&verified.id).await.unwrap().is_some());
    assert!(store.user_by_phone(&phone("+12025550143")).await.unwrap().is_some());
}
