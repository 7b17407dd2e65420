//! A server process's life: one process per data directory, and what a second one is told.

use crate::helpers::spawn_app;

/// Before: a second process on the same data directory started silently and split live
/// delivery with the first (or, started together, failed with Debug-formatted SQLite errors).
#[tokio::test]
async fn a_second_process_on_one_data_directory_is_refused_clearly() {
    let app = spawn_app().await;
    if app.services.store.kind() != "sqlite" {
        return; // with MongoDB, instances share the database by design
    }
    let path = app.data_dir.path().display().to_string();
    let config = chatapp::config::Config::from_lookup(|name| match name {
        "DATA_DIR" => Some(path.clone()),
        _ => None,
    })
    .unwrap();
    let Err(error) = chatapp::build(&config).await else { panic!("a second process started") };
    let message = error.to_string();
    assert!(message.contains("another chatapp process") && message.contains(&path), "{message}");
    // The first one is untouched.
    let alice = app.register("+12025550141", "alice").await;
    assert!(!alice.token.is_empty());
}

/// Before: on SIGTERM websockets got no close frame (clients saw 1006, and reconnected only
/// after their backoff), and one half-sent HTTP request kept the process alive for 35 s+.
#[tokio::test]
async fn shutdown_says_goodbye_to_websockets_and_ends_in_time() {
    use std::{sync::Arc, time::Instant};

    use tokio::io::AsyncWriteExt;

    use crate::helpers::{Incoming, spawn_app_with};

    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(dir, &[("SHUTDOWN_TIMEOUT", "1s")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let mut ws = app.ws(&alice).await;
    ws.subscribe_messages("1").await;
    // A client stuck halfway through its request headers.
    let mut stuck = tokio::net::TcpStream::connect(app.address).await.unwrap();
    stuck.write_all(b"POST /graphql HTTP/1.1\r\nHost: chat\r\nContent-Le").await.unwrap();

    let started = Instant::now();
    let stopping = tokio::spawn(app.stop());
    assert_eq!(ws.recv().await, Incoming::Closed(Some(1012)), "Service Restart");
    assert!(stopping.await.unwrap(), "the server did not finish by itself");
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "shutdown took {took:?} (SHUTDOWN_TIMEOUT=1s)"
    );
}

/// Before: a peer that stopped reading blocked the server's write with no deadline, so neither
/// the keep-alive check nor anything else ran: the socket, its slot and its unsent megabytes
/// stayed for as long as the peer liked.
#[tokio::test]
async fn a_peer_that_stops_reading_is_dropped() {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use serde_json::json;

    use crate::helpers::{Incoming, WsClient, spawn_app_with};

    let settings = [("WS_PING_INTERVAL", "1s"), ("WS_MAX_CONNECTIONS_PER_USER", "1")];
    let app = spawn_app_with(Arc::new(tempfile::tempdir().unwrap()), &settings).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    // A backlog of about 12 MB, more than the socket buffers between the two hold, written
    // straight to the store (sending it over HTTP would only make the test slow).
    let content = "x".repeat(4000);
    let writes = (0..3000).map(|_| {
        app.services.store.insert_message(chatapp::messages::NewMessage {
            sender_id: alice.id.clone(),
            recipient_id: bob.id.clone(),
            content: content.clone(),
            client_message_id: None,
            sent_at: chrono::Utc::now(),
        })
    });
    for written in futures::future::join_all(writes).await {
        written.unwrap();
    }
    let mut stalled = app.ws(&bob).await;
    stalled.subscribe_messages("1").await;
    // Bob's client now reads nothing. While the server holds that socket, Bob's one allowed
    // connection is taken; once it gives up on it, a new one is admitted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut fresh = WsClient::connect(&app, "graphql-transport-ws").await.unwrap();
        match fresh.init(json!({ "token": bob.token })).await {
            Incoming::Json(ack) if ack["type"] == "connection_ack" => break,
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("the stalled socket was never dropped: {other:?}"),
        }
    }
    drop(stalled);
}
