//! A real server on 127.0.0.1:0 per test, with an HTTP client and a graphql-transport-ws client.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Once},
    time::Duration,
};

use chatapp::config::Config;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message as WsMessage, client::IntoClientRequest, http::HeaderValue},
};

/// How long a test waits for anything the server should send.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The password every test user registers with.
pub const PASSWORD: &str = "correct-horse-battery";

/// The `extensions.code` of a response's first error; fails the test when there is none.
pub fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`]: tests wait for what
/// they need, never for a fixed time.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The selection every test reads from a message.
#[path = "../operations/mod.rs"]
pub mod operations;

static TRACING: Once = Once::new();

/// Test logs are quiet unless `TEST_LOG=1`.
fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("chatapp=debug,tower_http=debug")
                .with_test_writer()
                .init();
        }
    });
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub address: SocketAddr,
    pub http: reqwest::Client,
    /// The data directory; shared so a restarted server can open the same one.
    pub data_dir: Arc<TempDir>,
    /// The store behind the server, to check what a request changed.
    pub store: Arc<dyn chatapp::store::Store>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub token: String,
    pub phone_number: String,
}

impl TestUser {
    /// The id as the store takes it.
    pub fn user_id(&self) -> chatapp::domain::UserId {
        chatapp::domain::UserId::new(self.id.clone())
    }
}

/// Starts a server with a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_in(Arc::new(tempfile::tempdir().expect("temp dir"))).await
}

/// Starts a server with a fresh data directory and extra settings.
pub async fn spawn_app_configured(settings: &[(&str, &str)]) -> TestApp {
    spawn_app_with(Arc::new(tempfile::tempdir().expect("temp dir")), settings).await
}

/// Starts a server on an existing data directory (to test restarts).
pub async fn spawn_app_in(data_dir: Arc<TempDir>) -> TestApp {
    spawn_app_with(data_dir, &[]).await
}

/// Starts a server with extra settings, e.g. `[("JWT_TTL", "2s")]`.
pub async fn spawn_app_with(data_dir: Arc<TempDir>, settings: &[(&str, &str)]) -> TestApp {
    let config = test_config(&data_dir, settings);
    let app = chatapp::build(&config).await.expect("app builds");
    serve_app(app, data_dir).await
}

/// `count` servers on one store and one Redis, as instances behind a load balancer would be:
/// they share the token secret and Redis (under a channel prefix of their own), nothing else.
pub async fn spawn_instances(
    count: usize,
    redis_url: &str,
    settings: &[(&str, &str)],
) -> Vec<TestApp> {
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let prefix = format!("it{}:", uuid::Uuid::new_v4().simple());
    let mut all = vec![
        ("REDIS_URL", redis_url),
        ("REDIS_CHANNEL_PREFIX", prefix.as_str()),
        ("JWT_SECRET", "a-secret-every-instance-of-this-test-shares"),
    ];
    all.extend_from_slice(settings);
    let config = test_config(&data_dir, &all);
    let first = chatapp::build(&config).await.expect("app builds");
    let store = first.store.clone();
    let mut apps = vec![serve_app(first, data_dir.clone()).await];
    for _ in 1..count {
        let app = chatapp::build_with_store(&config, store.clone()).expect("app builds");
        apps.push(serve_app(app, data_dir.clone()).await);
    }
    apps
}

/// What stops a server from starting in `data_dir` with exactly `settings` (nothing else from
/// the suite's defaults): the startup error's text. Fails the test if it starts.
pub async fn startup_refusal(data_dir: &std::path::Path, settings: &[(&str, &str)]) -> String {
    let path = data_dir.display().to_string();
    let config = Config::from_lookup(|name| match name {
        "DATA_DIR" => Some(path.clone()),
        _ => settings.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string()),
    })
    .expect("well-formed settings");
    match chatapp::build(&config).await {
        Ok(_) => panic!("the server started with {settings:?}"),
        Err(error) => error.to_string(),
    }
}

/// Starts a server on the store the suite would use, as `wrap` returns it (to inject faults).
pub async fn spawn_app_wrapping_store(
    wrap: impl FnOnce(Arc<dyn chatapp::store::Store>) -> Arc<dyn chatapp::store::Store>,
) -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let config = test_config(&data_dir, &[]);
    let store = chatapp::build(&config).await.expect("app builds").store;
    let app = chatapp::build_with_store(&config, wrap(store)).expect("app builds");
    serve_app(app, data_dir).await
}

fn test_config(data_dir: &TempDir, settings: &[(&str, &str)]) -> Config {
    init_tracing();
    let path = data_dir.path().display().to_string();
    let mongo = test_mongo_database(data_dir);
    Config::from_lookup(|name| {
        if let Some((_, value)) = settings.iter().find(|(key, _)| *key == name) {
            return Some(value.to_string());
        }
        if settings.iter().all(|(key, _)| *key != "MONGO_URI")
            && let Some((uri, database)) = &mongo
        {
            match name {
                "MONGO_URI" => return Some(uri.clone()),
                "MONGO_DB" => return Some(database.clone()),
                _ => {}
            }
        }
        match name {
            "DATA_DIR" => Some(path.clone()),
            "BCRYPT_COST" => Some("4".into()),
            // Tests send and sign in far faster than any person; limits get their own tests.
            "RATE_LIMIT_AUTH_PER_ADDRESS" | "RATE_LIMIT_AUTH_PER_PHONE" => Some("100000".into()),
            "RATE_LIMIT_MESSAGES_PER_USER" => Some("100000".into()),
            _ => None,
        }
    })
    .expect("test config")
}

async fn serve_app(app: chatapp::App, data_dir: Arc<TempDir>) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    let store = app.store.clone();
    let server = tokio::spawn(chatapp::serve(listener, app, async {
        let _ = stop.await;
    }));
    TestApp {
        address,
        http: reqwest::Client::new(),
        data_dir,
        store,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// With `TEST_MONGO_URI` set, the whole suite runs on MongoDB: each data directory gets its own
/// database, named after it so a restarted server finds the same data. Tests leave these
/// `chatapp_it_*` databases behind; drop them when done.
fn test_mongo_database(data_dir: &TempDir) -> Option<(String, String)> {
    use std::hash::{Hash, Hasher};
    let uri = std::env::var("TEST_MONGO_URI").ok().filter(|uri| !uri.is_empty())?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.path().hash(&mut hasher);
    Some((uri, format!("chatapp_it_{:016x}", hasher.finish())))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// Stops the server as SIGTERM would; returns whether it finished by itself within 5 s.
    pub async fn stop(mut self) -> bool {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let Some(mut server) = self.server.take() else { return true };
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(result) => result.is_ok_and(|served| served.is_ok()),
            Err(_) => {
                server.abort();
                false
            }
        }
    }

    /// POSTs a GraphQL operation and returns the whole response body.
    pub async fn graphql(&self, query: &str, variables: Value, token: Option<&str>) -> Value {
        self.post_graphql(json!({ "query": query, "variables": variables }), token).await
    }

    /// POSTs one of the shared operations (`tests/operations/operations.graphql`) by name and returns the
    /// whole response body.
    pub async fn operation(&self, name: &str, variables: Value, token: Option<&str>) -> Value {
        let query = operations::operation(name);
        let body = json!({ "query": query, "operationName": name, "variables": variables });
        self.post_graphql(body, token).await
    }

    async fn post_graphql(&self, body: Value, token: Option<&str>) -> Value {
        let mut request = self.http.post(self.url("/graphql")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        assert!(response.status().is_success(), "HTTP {}", response.status());
        response.json().await.expect("JSON body")
    }

    /// Registers a user, asserting success.
    pub async fn register(&self, phone_number: &str, username: &str) -> TestUser {
        let input =
            json!({ "phoneNumber": phone_number, "username": username, "password": PASSWORD });
        let body = self.operation("Register", json!({ "input": input }), None).await;
        let payload = &body["data"]["register"];
        assert!(payload.is_object(), "register failed: {body}");
        TestUser {
            id: payload["profileId"].as_str().unwrap().to_string(),
            token: payload["token"].as_str().unwrap().to_string(),
            phone_number: phone_number.to_string(),
        }
    }

    /// Alice and Bob, registered.
    pub async fn two_users(&self) -> (TestUser, TestUser) {
        (self.register("+12025550143", "alice").await, self.register("+12025550144", "bob").await)
    }

    /// Subscribes each client (all of `user`) to `messageReceived` under its id and returns once
    /// every subscription is listening: a marker message from `from`, sent first, has been
    /// replayed to each, and is then acknowledged so it does not come back.
    pub async fn subscribe_listening(
        &self,
        clients: &mut [(&mut WsClient, &str)],
        from: &TestUser,
        user: &TestUser,
    ) {
        let marker = self.send_ok(from, user, "marker: subscription is listening").await;
        for (client, id) in clients.iter_mut() {
            client.subscribe_messages(id).await;
            assert_eq!(client.next_message(id).await["id"], marker["id"]);
        }
        self.mark_delivered(user, &[marker["id"].as_str().unwrap()]).await;
    }

    /// A connection of `user` with `chatEvents` under "events", listening once this returns:
    /// a `messageReceived` subscription started after it on the same socket has replayed a
    /// marker message from `from` (the socket handles subscriptions in order); that one is then
    /// completed, so only events arrive on this connection.
    pub async fn events_connection(&self, user: &TestUser, from: &TestUser) -> WsClient {
        let mut client = self.ws(user).await;
        client.subscribe_events("events").await;
        self.subscribe_listening(&mut [(&mut client, "inbox")], from, user).await;
        client.send_json(json!({ "type": "complete", "id": "inbox" })).await;
        client
    }

    /// `user`'s `online` and `lastSeenAt` as `viewer` sees them.
    pub async fn presence_of(&self, viewer: &TestUser, user: &TestUser) -> Value {
        let query = "query($id: ID!) { user(id: $id) { online lastSeenAt } }";
        let body = self.graphql(query, json!({ "id": user.id }), Some(&viewer.token)).await;
        assert!(body["errors"].is_null(), "{body}");
        body["data"]["user"].clone()
    }

    /// Logs `user` in again, returning the new session's token.
    pub async fn login(&self, user: &TestUser) -> String {
        let input = json!({ "phoneNumber": user.phone_number, "password": PASSWORD });
        let body = self.operation("Login", json!({ "input": input }), None).await;
        body["data"]["login"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("login failed: {body}"))
            .to_string()
    }

    /// Sends a message, returning the response body.
    pub async fn send(
        &self,
        from: &TestUser,
        to: &TestUser,
        content: &str,
        client_message_id: Option<&str>,
    ) -> Value {
        let input = json!({ "recipientId": to.id, "content": content, "clientMessageId": client_message_id });
        self.operation("SendMessage", json!({ "input": input }), Some(&from.token)).await
    }

    /// Sends a message, asserting success, and returns it.
    pub async fn send_ok(&self, from: &TestUser, to: &TestUser, content: &str) -> Value {
        let body = self.send(from, to, content, None).await;
        let message = body["data"]["sendMessage"].clone();
        assert!(message.is_object(), "send failed: {body}");
        message
    }

    /// Acknowledges messages, returning the response body.
    pub async fn mark_delivered(&self, user: &TestUser, ids: &[&str]) -> Value {
        self.operation("MarkDelivered", json!({ "ids": ids }), Some(&user.token)).await
    }

    /// Opens a graphql-transport-ws connection authenticated with `{ "token": ... }`.
    pub async fn ws(&self, user: &TestUser) -> WsClient {
        self.ws_with_token(&user.token).await
    }

    /// Opens a graphql-transport-ws connection authenticated with `token`.
    pub async fn ws_with_token(&self, token: &str) -> WsClient {
        let mut client =
            WsClient::connect(self, "graphql-transport-ws").await.expect("websocket connects");
        let reply = client.init(json!({ "token": token })).await;
        assert_eq!(reply, Incoming::Json(json!({ "type": "connection_ack" })));
        client
    }
}

/// Anything a test reads from a websocket.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Json(Value),
    Closed(Option<u16>),
}

/// A minimal graphql-transport-ws client.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `/graphql` offering `protocol`.
    pub async fn connect(
        app: &TestApp,
        protocol: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        Self::connect_to(app.address, protocol).await
    }

    /// Connects to `/graphql` at `address` (a server this suite did not start in-process).
    pub async fn connect_to(
        address: SocketAddr,
        protocol: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{address}/graphql").into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol).unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { socket })
    }

    pub async fn send_json(&mut self, value: Value) {
        self.socket.send(WsMessage::text(value.to_string())).await.expect("websocket send");
    }

    /// Sends `connection_init` and returns the server's answer.
    pub async fn init(&mut self, payload: Value) -> Incoming {
        self.send_json(json!({ "type": "connection_init", "payload": payload })).await;
        self.recv().await
    }

    /// The next protocol message (answering server pings), or the close; panics after
    /// [`PATIENCE`].
    pub async fn recv(&mut self) -> Incoming {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("server answered in time");
            match frame {
                None => return Incoming::Closed(None),
                Some(Err(_)) => return Incoming::Closed(None),
                Some(Ok(WsMessage::Close(frame))) => {
                    return Incoming::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(WsMessage::Text(text))) => {
                    let value: Value =
                        serde_json::from_str(text.as_str()).expect("server sends JSON");
                    if value["type"] == "ping" {
                        self.send_json(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Incoming::Json(value);
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Starts `messageReceived` under `id`.
    pub async fn subscribe_messages(&mut self, id: &str) {
        self.subscribe_operation(id, "MessageReceived").await;
    }

    /// The next `messageReceived` payload on subscription `id`.
    pub async fn next_message(&mut self, id: &str) -> Value {
        self.next_data(id, "messageReceived").await
    }

    /// The next result of subscription `id`, its `field` of `data`.
    async fn next_data(&mut self, id: &str, field: &str) -> Value {
        match self.recv().await {
            Incoming::Json(value) if value["type"] == "next" && value["id"] == id => {
                assert!(value["payload"]["errors"].is_null(), "subscription error: {value}");
                value["payload"]["data"][field].clone()
            }
            other => panic!("expected {field} on {id}, got {other:?}"),
        }
    }

    /// Starts `chatEvents` under `id`.
    pub async fn subscribe_events(&mut self, id: &str) {
        self.subscribe_operation(id, "ChatEvents").await;
    }

    /// Starts the shared subscription `operation` under `id`.
    async fn subscribe_operation(&mut self, id: &str, operation: &str) {
        let payload =
            json!({ "query": operations::operation(operation), "operationName": operation });
        self.send_json(json!({ "id": id, "type": "subscribe", "payload": payload })).await;
    }

    /// The next `chatEvents` payload on subscription `id`.
    pub async fn next_event(&mut self, id: &str) -> Value {
        self.next_data(id, "chatEvents").await
    }

    /// Reads for `wait`, answering pings as a live client does; panics on anything else.
    pub async fn answer_pings_for(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(frame) = tokio::time::timeout_at(deadline, self.socket.next()).await {
            match frame {
                Some(Ok(WsMessage::Text(text))) if text.as_str().contains(r#""type":"ping""#) => {
                    self.send_json(json!({ "type": "pong" })).await;
                }
                other => panic!("expected only pings, got {other:?}"),
            }
        }
    }

    /// Writes `bytes` to the socket as they are, under the websocket layer (for frames no
    /// client library would send).
    pub async fn send_raw_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.socket.get_mut().write_all(bytes).await.expect("raw write");
    }

    /// Sends a websocket ping frame and returns the payload of the pong that answers it.
    pub async fn ping_frame(&mut self, payload: &[u8]) -> Vec<u8> {
        self.socket.send(WsMessage::Ping(payload.to_vec().into())).await.expect("ping sent");
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("server answered in time");
            match frame {
                Some(Ok(WsMessage::Pong(payload))) => return payload.to_vec(),
                Some(Ok(WsMessage::Text(_))) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        }
    }

    /// Sends a raw text frame (for malformed-message tests).
    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(WsMessage::text(text.to_string())).await.expect("websocket send");
    }

    /// The next frame exactly as sent, without answering pings (for keep-alive tests).
    pub async fn recv_raw(&mut self) -> Incoming {
        let frame = tokio::time::timeout(PATIENCE, self.socket.next())
            .await
            .expect("server answered in time");
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                Incoming::Json(serde_json::from_str(text.as_str()).expect("JSON"))
            }
            Some(Ok(WsMessage::Close(frame))) => Incoming::Closed(frame.map(|f| u16::from(f.code))),
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            _ => Incoming::Closed(None),
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.socket.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// Starts a clean close with `code` and returns the code of the server's answering Close
    /// frame, or `None` if the connection just dropped.
    pub async fn close_with(mut self, code: u16) -> Option<u16> {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        let frame = CloseFrame { code: CloseCode::from(code), reason: "bye".into() };
        self.socket.send(WsMessage::Close(Some(frame))).await.expect("close sent");
        match tokio::time::timeout(PATIENCE, self.socket.next()).await.expect("an answer in time") {
            Some(Ok(WsMessage::Close(Some(frame)))) => Some(u16::from(frame.code)),
            _ => None,
        }
    }
}
