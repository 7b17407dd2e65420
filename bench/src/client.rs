//! Talking to the server the way a frontend does: GraphQL over HTTP for mutations, a
//! graphql-transport-ws websocket for `messageReceived`. The baseline target speaks the same
//! shape with nothing in between: `POST /send/{user}` in, a bare websocket frame out.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The operations the integration tests send too (`tests/operations/operations.graphql`). Sends and live
/// messages select the sender and recipient, as a chat screen does.
#[path = "../../tests/operations/mod.rs"]
mod operations;
pub const PASSWORD: &str = "benchmark-password";

/// A registered user.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub token: String,
    pub phone_number: String,
}

/// A random valid US number (+1 202 2xx xxxx … 9xx). Several copies of the tool may register
/// into one store at once (`bench/idle_100k.sh`), so a number can be taken:
/// [`Target::register`] then draws another.
fn random_phone_number() -> String {
    use std::hash::{BuildHasher, Hasher};
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Randomly keyed per process; the counter makes each draw differ.
    let mut hasher = STATE.get_or_init(Default::default).build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!("+1202{}", 2_000_000 + hasher.finish() % 8_000_000)
}

/// An error a GraphQL response carried.
#[derive(Debug)]
pub struct GraphqlError(Value);

impl std::fmt::Display for GraphqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraphQL error: {}", self.0)
    }
}

impl std::error::Error for GraphqlError {}

/// Whether `error` is the server saying the phone number is taken.
fn is_conflict(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<GraphqlError>()
        .is_some_and(|GraphqlError(error)| error["extensions"]["code"] == "CONFLICT")
}

/// Where a send goes and how it travels.
#[derive(Clone)]
pub enum Target {
    /// A chatapp: messages are sent and users registered through `base_url`, recipients
    /// subscribe through `receive_url` (the same server, or another instance of it).
    Chat {
        http: reqwest::Client,
        base_url: String,
        receive_url: String,
        label: String,
    },
    Baseline {
        http: reqwest::Client,
        base_url: String,
    },
}

/// One sender's way to reach one recipient.
#[derive(Clone)]
pub struct Route {
    /// The sender's token (chat only).
    pub token: String,
    /// The recipient's id.
    pub recipient: String,
}

impl Target {
    /// A chatapp at `base_url`, named `label` in the results.
    pub fn chat(base_url: &str, label: &str) -> Self {
        Target::Chat {
            http: http_client(),
            base_url: base_url.to_string(),
            receive_url: base_url.to_string(),
            label: label.to_string(),
        }
    }

    /// Two instances of one deployment: senders through `send_url`, recipients on
    /// `receive_url`, so every message crosses the shared bus (a Redis Cluster with `cluster`).
    pub fn across(send_url: &str, receive_url: &str, cluster: bool) -> Self {
        let label = if cluster { "chatapp A->B, Redis Cluster" } else { "chatapp A->B" };
        Target::Chat {
            http: http_client(),
            base_url: send_url.to_string(),
            receive_url: receive_url.to_string(),
            label: label.to_string(),
        }
    }

    pub fn baseline(base_url: &str) -> Self {
        Target::Baseline { http: http_client(), base_url: base_url.to_string() }
    }

    pub fn name(&self) -> &str {
        match self {
            Target::Chat { label, .. } => label,
            Target::Baseline { .. } => "baseline",
        }
    }

    /// Sends one message along `route`.
    pub async fn send(&self, route: &Route, content: &str) -> anyhow::Result<()> {
        match self {
            Target::Chat { http, base_url, .. } => {
                // Only success matters here, so the answer is not parsed unless it is an error
                // (parsing costs the load generator CPU the server under test would not get).
                let input = json!({ "recipientId": route.recipient, "content": content });
                let body = json!({
                    "query": operations::operation("SendMessage"),
                    "variables": { "input": input },
                });
                let response = http
                    .post(format!("{base_url}/graphql"))
                    .bearer_auth(&route.token)
                    .json(&body)
                    .send()
                    .await?;
                let status = response.status();
                let text = response.bytes().await?;
                if !status.is_success() || text.windows(8).any(|w| w == b"\"errors\"") {
                    bail!("sendMessage failed: HTTP {status}: {}", String::from_utf8_lossy(&text));
                }
                Ok(())
            }
            Target::Baseline { http, base_url } => {
                let url = format!("{base_url}/send/{}", route.recipient);
                let response = http.post(url).body(content.to_string()).send().await?;
                if !response.status().is_success() {
                    bail!("baseline send: HTTP {}", response.status());
                }
                Ok(())
            }
        }
    }

    /// A fresh recipient and a route to it from a fresh sender.
    pub async fn pair(&self, baseline_id: usize) -> anyhow::Result<(Route, Ws)> {
        match self {
            Target::Chat { .. } => {
                let sender = self.register().await?;
                let recipient = self.register().await?;
                let ws = self.subscribe(&recipient.token).await?;
                Ok((Route { token: sender.token, recipient: recipient.id }, ws))
            }
            Target::Baseline { base_url, .. } => {
                let url = format!("{}/ws?user={baseline_id}", base_url.replacen("http", "ws", 1));
                let (ws, _) = tokio_tungstenite::connect_async(url).await?;
                Ok((Route { token: String::new(), recipient: baseline_id.to_string() }, ws))
            }
        }
    }

    fn receive_url(&self) -> &str {
        match self {
            Target::Chat { receive_url, .. } => receive_url,
            Target::Baseline { base_url, .. } => base_url,
        }
    }

    /// Posts a GraphQL operation; a response with errors is an error.
    pub async fn graphql(
        &self,
        operation: &str,
        variables: Value,
        token: Option<&str>,
    ) -> anyhow::Result<Value> {
        let Target::Chat { http, base_url, .. } = self else {
            bail!("GraphQL needs the chat target")
        };
        let body = json!({ "query": operations::operation(operation), "variables": variables });
        let mut request = http.post(format!("{base_url}/graphql")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let body: Value = request.send().await?.json().await?;
        if let Some(error) = body["errors"].get(0) {
            return Err(GraphqlError(error.clone()).into());
        }
        Ok(body["data"].clone())
    }

    /// Registers a new user; a phone number already taken is drawn again.
    pub async fn register(&self) -> anyhow::Result<User> {
        let mut attempts = 0;
        let (phone_number, data) = loop {
            let phone_number = random_phone_number();
            let input =
                json!({ "phoneNumber": phone_number, "username": "bench", "password": PASSWORD });
            match self.graphql("Register", json!({ "input": input }), None).await {
                Ok(data) => break (phone_number, data),
                Err(error) if attempts < 16 && is_conflict(&error) => attempts += 1,
                Err(error) => return Err(error),
            }
        };
        let payload = &data["register"];
        Ok(User {
            id: payload["profileId"].as_str().context("no profileId")?.to_string(),
            token: payload["token"].as_str().context("no token")?.to_string(),
            phone_number,
        })
    }

    /// Logs `user` in (a new session each time).
    pub async fn login(&self, user: &User) -> anyhow::Result<()> {
        let input = json!({ "phoneNumber": user.phone_number, "password": PASSWORD });
        self.graphql("Login", json!({ "input": input }), None).await.map(drop)
    }

    /// Opens a graphql-transport-ws connection for `token` and starts `messageReceived`.
    pub async fn subscribe(&self, token: &str) -> anyhow::Result<Ws> {
        self.subscribe_from(token, None).await
    }

    /// [`Target::subscribe`] from local address `source` (another 127.0.0.x: one source
    /// address has only about 28,000 ephemeral ports towards one server port).
    pub async fn subscribe_from(
        &self,
        token: &str,
        source: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Ws> {
        let url = format!("{}/graphql", self.receive_url().replacen("http", "ws", 1));
        let mut request = url.clone().into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("graphql-transport-ws"));
        let mut ws = match source {
            None => tokio_tungstenite::connect_async(request).await?.0,
            Some(source) => {
                let host = url.trim_start_matches("ws://").split('/').next().unwrap_or_default();
                let server: std::net::SocketAddr = host.parse().context("server address")?;
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind((source, 0).into())?;
                let stream = socket.connect(server).await?;
                let plain = MaybeTlsStream::Plain(stream);
                tokio_tungstenite::client_async(request, plain).await?.0
            }
        };
        let init = json!({ "type": "connection_init", "payload": { "token": token } });
        ws.send(Message::text(init.to_string())).await?;
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str().contains("connection_ack") => {}
            other => bail!("no connection_ack: {other:?}"),
        }
        let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": operations::operation("MessageReceived") } });
        ws.send(Message::text(subscribe.to_string())).await?;
        Ok(ws)
    }
}

/// Starts a `chatEvents` subscription (id `2`) on `ws`, beside its `messageReceived`.
pub async fn subscribe_events(ws: &mut Ws) -> anyhow::Result<()> {
    let query = operations::operation("ChatEvents");
    let subscribe = json!({ "id": "2", "type": "subscribe", "payload": { "query": query } });
    ws.send(Message::text(subscribe.to_string())).await?;
    Ok(())
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(1024).build().expect("HTTP client")
}

/// Reads `ws` until it closes, answering protocol pings, and hands each delivered message's
/// content to `on_content`.
pub async fn receive(
    mut ws: Ws,
    baseline: bool,
    mut on_content: impl FnMut(&str),
) -> anyhow::Result<()> {
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else { continue };
        if baseline {
            on_content(text.as_str());
            continue;
        }
        let message: Incoming = serde_json::from_str(text.as_str())
            .map_err(|error| anyhow!("unexpected message {text}: {error}"))?;
        match message.kind {
            "next" => {
                let content = message
                    .payload
                    .and_then(|payload| payload.data)
                    .map(|data| data.message_received.content)
                    .ok_or_else(|| anyhow!("unexpected payload: {text}"))?;
                on_content(&content);
            }
            "ping" => ws.send(Message::text(r#"{"type":"pong"}"#)).await?,
            "pong" => {}
            _ => bail!("unexpected message: {text}"),
        }
    }
    Ok(())
}

/// The parts of a graphql-transport-ws message the receiver reads, borrowed from the frame.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    payload: Option<Payload<'a>>,
}

#[derive(serde::Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    data: Option<Data<'a>>,
}

#[derive(serde::Deserialize)]
struct Data<'a> {
    #[serde(rename = "messageReceived", borrow)]
    message_received: Received<'a>,
}

#[derive(serde::Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    content: std::borrow::Cow<'a, str>,
}
