//! A server process's life: one process per data directory, and what a second one is told.

use crate::helpers::{spawn_app, spawn_app_configured};

/// Before: a second process on the same data directory started silently and split live
/// delivery with the first (or, started together, failed with Debug-formatted SQLite errors).
#[tokio::test]
async fn a_second_process_on_one_data_directory_is_refused_clearly() {
    let app = spawn_app().await;
    if app.store.kind() != "sqlite" {
        return; // with MongoDB, instances share the database by design
    }
    let path = app.data_dir.path().display().to_string();
    let message = crate::helpers::startup_refusal(app.data_dir.path(), &[]).await;
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
    use std::time::{Duration, Instant};

    use serde_json::json;

    use crate::helpers::{Incoming, WsClient};

    let settings = [("WS_PING_INTERVAL", "1s"), ("WS_MAX_CONNECTIONS_PER_USER", "1")];
    let app = spawn_app_configured(&settings).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    // A backlog of about 12 MB, more than the socket buffers between the two hold, written
    // straight to the store (sending it over HTTP would only make the test slow).
    let content = chatapp::domain::MessageContent::parse("x".repeat(4000)).unwrap();
    let writes = (0..3000).map(|_| {
        app.store.insert_message(chatapp::domain::NewMessage {
            sender_id: alice.user_id(),
            recipient_id: bob.user_id(),
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

/// Reads from `stream` until the server closes it; panics if it does not within `within`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. a 408 before the close
            }
        }
    });
    read.await.expect("the server kept the connection open");
}

/// Before: `axum::serve` gave hyper no timer, so silent and slowloris connections stayed open
/// (2,000 of them for 45 s+), and 1,100 against a 1,024-descriptor limit locked `/healthz` out.
#[tokio::test]
async fn silent_and_slow_connections_are_closed_and_capped() {
    use std::time::Duration;

    use tokio::{io::AsyncWriteExt, net::TcpStream};

    let settings = [("HTTP_HEADER_READ_TIMEOUT", "500ms"), ("MAX_CONNECTIONS", "50")];
    let app = spawn_app_configured(&settings).await;
    // A silent connection, and one dripping its headers, are both closed.
    let mut silent = TcpStream::connect(app.address).await.unwrap();
    let mut slow = TcpStream::connect(app.address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: chat\r\n").await.unwrap();
    closed_by_server(&mut silent, Duration::from_secs(5)).await;
    closed_by_server(&mut slow, Duration::from_secs(5)).await;

    // Fill the cap with silent connections: the next one is turned away at once...
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(app.address).await.unwrap());
    }
    let mut refused = TcpStream::connect(app.address).await.unwrap();
    closed_by_server(&mut refused, Duration::from_millis(400)).await;
    // ...and once they are gone, the server answers again.
    drop(held);
    healthy_again(&app).await;
}

/// Waits until `/healthz` answers 200 (the server notices closed connections asynchronously).
async fn healthy_again(app: &crate::helpers::TestApp) {
    crate::helpers::wait_until("/healthz answers again", || async {
        let response = app.http.get(app.url("/healthz")).send().await;
        response.is_ok_and(|response| response.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn connections_can_be_capped_per_address() {
    use std::time::Duration;

    use tokio::net::TcpStream;

    let settings = [("MAX_CONNECTIONS_PER_ADDRESS", "3")];
    let app = spawn_app_configured(&settings).await;
    let held: Vec<_> =
        futures::future::join_all((0..3).map(|_| TcpStream::connect(app.address))).await;
    let mut fourth = TcpStream::connect(app.address).await.unwrap();
    closed_by_server(&mut fourth, Duration::from_secs(2)).await;
    drop(held);
    healthy_again(&app).await;
}

/// An upgraded websocket keeps its place under MAX_CONNECTIONS for as long as it is open.
#[tokio::test]
async fn websockets_count_against_the_connection_cap() {
    use std::time::Duration;

    // Three: the test's HTTP client keeps its connection alive, and two websockets.
    let settings = [("MAX_CONNECTIONS", "3")];
    let app = spawn_app_configured(&settings).await;
    let alice = app.register("+12025550141", "alice").await;
    let first = app.ws(&alice).await;
    let second = app.ws(&alice).await;
    let mut third = tokio::net::TcpStream::connect(app.address).await.unwrap();
    closed_by_server(&mut third, Duration::from_secs(2)).await;
    first.close().await;
    second.close().await;
    healthy_again(&app).await;
}
