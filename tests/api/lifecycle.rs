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
