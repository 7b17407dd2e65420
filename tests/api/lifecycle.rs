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
