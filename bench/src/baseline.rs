//! The baseline: the least a websocket fan-out server can do on this machine. `POST /send/{user}`
//! with a text body pushes that text to every websocket `GET /ws?user={user}` has open. No
//! GraphQL, no auth, no storage; the same axum and tokio as chatapp, so chatapp's figures read
//! as a ratio to what the machine and the stack underneath can do.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{
        Path, Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::Response,
    routing::{get, post},
};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

type Inboxes = Arc<Mutex<HashMap<String, Vec<UnboundedSender<String>>>>>;

/// Serves the baseline on `port` until the process is killed.
pub async fn serve(port: u16) -> anyhow::Result<()> {
    let inboxes = Inboxes::default();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/ws", get(connect))
        .route("/send/{user}", post(send))
        .with_state(inboxes);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn connect(
    State(inboxes): State<Inboxes>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let user = params.get("user").cloned().unwrap_or_default();
    upgrade.on_upgrade(move |socket| relay(socket, user, inboxes))
}

async fn relay(mut socket: WebSocket, user: String, inboxes: Inboxes) {
    let (sender, mut inbox) = unbounded_channel();
    inboxes.lock().unwrap().entry(user).or_default().push(sender);
    loop {
        tokio::select! {
            text = inbox.recv() => match text {
                Some(text) => if socket.send(Message::Text(text.into())).await.is_err() { return },
                None => return,
            },
            frame = socket.recv() => if !matches!(frame, Some(Ok(_))) { return },
        }
    }
}

async fn send(
    State(inboxes): State<Inboxes>,
    Path(user): Path<String>,
    body: String,
) -> StatusCode {
    let mut inboxes = inboxes.lock().unwrap();
    if let Some(senders) = inboxes.get_mut(&user) {
        senders.retain(|sender| sender.send(body.clone()).is_ok());
    }
    StatusCode::OK
}
