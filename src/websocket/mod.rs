//! The GraphQL websocket connection: our own serve loop, so that every close code of the
//! `graphql-ws` protocol is sent exactly when the protocol says, and so that a connection ends
//! when its session does (logout, revocation) or when its token expires.
//!
//! One task per connection runs [`serve`]: it reads client frames, runs operations through the
//! schema, forwards their results, and watches at once three deadlines on one timer (the
//! `connection_init` deadline, the keep-alive interval and the token's expiry: [`clock`]), the
//! bus event that says the session was ended, and the server's shutdown.

mod clock;
pub mod protocol;
mod socket;

pub use self::socket::Socket;

use std::{
    any::Any,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use async_graphql::Response;
use chrono::Utc;
use futures::{FutureExt, StreamExt, stream::BoxStream};
use serde_json::Value;
use tokio::time::Instant;
use tokio_stream::StreamMap;

use self::{
    clock::{Clock, Due},
    protocol::{ClientMessage, Outgoing, Protocol, close},
    socket::{Incoming, ReadError},
};
use crate::{
    client_address::ClientAddress,
    domain::Viewer,
    presence::{Presence, PresenceGuard},
    schema::AppSchema,
    sessions::{self, AuthError, Heard, RequestAuth, SessionWatch, Sessions},
    shutdown::{ConnectionGuard, Shutdown},
};

/// Timings of a websocket connection.
#[derive(Debug, Clone, Copy)]
pub struct WebsocketSettings {
    /// How long a client has to send `connection_init` (`WS_INIT_TIMEOUT`).
    pub init_timeout: Duration,
    /// How often the server pings (`WS_PING_INTERVAL`). A client that sends nothing at all for
    /// two intervals is considered dead and dropped.
    pub ping_interval: Duration,
    /// Operations running at once on one connection (`WS_MAX_SUBSCRIPTIONS`).
    pub max_subscriptions: usize,
    /// Largest message or frame accepted (`WS_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Open websockets per user, on all instances together (`WS_MAX_CONNECTIONS_PER_USER`).
    pub max_connections_per_user: usize,
}

/// Most results written to a websocket in one go.
const MAX_BURST: usize = 64;

/// Why the loop stopped.
enum Stop {
    /// Send `farewell` if any, then close with this code and reason.
    Close { code: u16, reason: &'static str, farewell: Option<Outgoing> },
    /// The peer sent a Close frame (with this code): it gets its answer, or it sees 1006
    /// (abnormal closure) instead of its own clean close.
    ClosedByPeer(Option<u16>),
    /// The peer went away; nothing to send.
    Gone,
}

/// How long the closing handshake may take (our Close written, the client's read) before the
/// socket is dropped anyway.
const CLOSE_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Stop {
    fn close(code: u16, reason: &'static str) -> Self {
        Stop::Close { code, reason, farewell: None }
    }

    /// Why the client's frames could not be read on.
    fn unreadable(error: ReadError) -> Self {
        match error {
            ReadError::TooBig => Stop::close(close::MESSAGE_TOO_BIG, "Message too big"),
            ReadError::Protocol(rule) => Stop::close(close::PROTOCOL_ERROR, rule),
            ReadError::NotUtf8 => Stop::close(close::INVALID_PAYLOAD, "Text must be UTF-8"),
            ReadError::Broken => Stop::Gone,
        }
    }
}

/// Results of one running operation; `None` marks its end.
type Operation = BoxStream<'static, Option<Box<Response>>>;

/// What woke a connection's loop.
enum Wake {
    /// The client sent a message, its frames could not be read, or it hung up (`None`).
    Frame(Option<Result<Incoming, ReadError>>),
    /// An operation produced a result, or ended (`None`).
    Result(String, Option<Box<Response>>),
    Session(Heard),
    Clock(Due),
    Shutdown,
}

/// What every websocket of the server shares.
#[derive(Clone)]
pub struct Shared {
    /// The schema operations run against.
    pub schema: AppSchema,
    /// Authenticates `connection_init` and watches for the session's end.
    pub sessions: Sessions,
    /// Counts the connection towards its user being online.
    pub presence: Presence,
    /// Timeouts and limits.
    pub settings: WebsocketSettings,
    /// Tells every websocket to close with 1012 when the server shuts down.
    pub shutdown: Shutdown,
}

/// Serves one upgraded websocket until it closes; `hold` is dropped when it has.
///
/// Not an `async fn`: everything the connection needs is moved into one [`Connection`] first,
/// so the future holds each piece once. Its size is what every idle connection costs for its
/// whole life (an `async fn` keeps its arguments beside whatever is built from them).
pub fn serve(
    socket: Socket,
    protocol: Protocol,
    shared: Shared,
    client: ClientAddress,
    hold: Box<dyn Any + Send>,
) -> impl Future<Output = ()> + Send + 'static {
    let Shared { schema, sessions, presence, settings, shutdown } = shared;
    let mut connection = Connection {
        // Counted until the goodbye is written, so shutdown waits for it.
        _open: shutdown.connection_opened(),
        _hold: hold,
        socket,
        protocol,
        client,
        schema,
        caller: Caller::Unknown {
            sessions,
            presence,
            max_connections_per_user: settings.max_connections_per_user,
        },
        max_subscriptions: settings.max_subscriptions,
        clock: Clock::new(settings.init_timeout, settings.ping_interval),
        // Most connections run one or two operations: no spare slots.
        operations: StreamMap::with_capacity(1),
    };
    // An `async` block rather than an `async fn` taking the connection by value: such a
    // function moves its argument into a second slot of its future. It captures nothing else
    // (the settings live on in the connection's clock and limits).
    //
    // The loop is written here rather than in an `async fn`: what this future holds while it
    // waits is what every idle connection costs for its whole life (tokio rounds a task up to
    // 128 bytes), and a method's future keeps its arguments twice. So handling a wake is a
    // future of its own, boxed for as long as the handling takes.
    async move {
        // Made here, not passed in: a future moved into this block would be kept twice.
        let mut shutdown = std::pin::pin!(connection._open.shutdown_started());
        let mut last_heard = Instant::now();
        let mut socket_first = true;
        let stop = loop {
            // Polled by hand rather than through `select!`, which keeps a future per branch in
            // every idle connection: each source here is polled in place.
            let wake = std::future::poll_fn(|cx| {
                connection.poll_wake(cx, shutdown.as_mut(), socket_first)
            })
            .await;
            // The socket and the operations take turns at going first, so neither starves.
            socket_first = !socket_first;
            if let Wake::Frame(Some(Ok(_))) = wake {
                last_heard = Instant::now();
            }
            if let Err(stop) = Box::pin(connection.on_wake(wake, last_heard)).await {
                break stop;
            }
        };
        // Boxed: only a closing connection needs it.
        Box::pin(connection.close(stop)).await;
    }
}

/// What the connection knows of its caller. The variants share their space: what
/// `connection_init` needs is dropped once it has come.
enum Caller {
    /// No `connection_init` yet.
    Unknown {
        /// Authenticates `connection_init` and watches for the session's end.
        sessions: Sessions,
        /// Counts the connection towards its user being online.
        presence: Presence,
        /// Open websockets allowed per user, on all instances together.
        max_connections_per_user: usize,
    },
    /// `connection_init` came and is being checked; a second one is refused even if the first
    /// failed (which closes the connection anyway).
    Initialising,
    Authenticated {
        /// Every operation shares it.
        viewer: Arc<Viewer>,
        /// Fires when the caller's session is ended.
        session_watch: SessionWatch,
        /// This connection's place among its user's connections (keeping them online).
        _online: PresenceGuard,
    },
}

/// Everything one connection holds for its whole life: an idle connection costs this (and its
/// socket's buffers), so it holds nothing that only a moment of its life needs.
struct Connection {
    _open: ConnectionGuard,
    _hold: Box<dyn Any + Send>,
    socket: Socket,
    protocol: Protocol,
    /// Where the socket comes from: every operation carries it, so sign-ins sent over the
    /// socket count against the same per-client limits as over HTTP.
    client: ClientAddress,
    schema: AppSchema,
    caller: Caller,
    max_subscriptions: usize,
    /// The `connection_init` deadline, keep-alive pings and the token's expiry.
    clock: Clock,
    /// Running operations by client-chosen id.
    operations: StreamMap<String, Operation>,
}

impl Connection {
    /// Says goodbye as `stop` asks, giving the handshake at most [`CLOSE_REPLY_TIMEOUT`].
    async fn close(&mut self, stop: Stop) {
        let socket = &mut self.socket;
        let goodbye = async {
            match stop {
                Stop::Close { code, reason, farewell } => {
                    if let Some(message) = farewell {
                        socket.queue_text(&message);
                    }
                    socket.close(code, reason).await;
                }
                Stop::ClosedByPeer(code) => socket.answer_close(code).await,
                Stop::Gone => {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, goodbye).await;
    }

    /// Handles what woke the loop: answers, writes the answers, or says why to stop.
    async fn on_wake(&mut self, wake: Wake, last_heard: Instant) -> Result<(), Stop> {
        let replies = match wake {
            // Boxed: handling a frame (authentication above all) needs a large future, and
            // inline it would size the allocation that every delivered message makes.
            Wake::Frame(Some(Ok(frame))) => Box::pin(self.on_frame(frame)).await?,
            Wake::Frame(Some(Err(error))) => return Err(Stop::unreadable(error)),
            Wake::Frame(None) => return Err(Stop::Gone),
            Wake::Result(id, result) => self.ready_results(&id, result),
            Wake::Clock(Due::InitTimeout) => {
                return Err(Stop::close(close::INIT_TIMEOUT, "Connection initialisation timeout"));
            }
            Wake::Session(Heard::Ended) => {
                return Err(Stop::close(close::UNAUTHORIZED, "Session ended"));
            }
            Wake::Session(Heard::MaybeEnded) => {
                let ended = match &mut self.caller {
                    // Boxed, as a frame's handling is.
                    Caller::Authenticated { session_watch, .. } => {
                        Box::pin(session_watch.ended_in_store()).await
                    }
                    _ => false,
                };
                if ended {
                    return Err(Stop::close(close::UNAUTHORIZED, "Session ended"));
                }
                return Ok(());
            }
            Wake::Clock(Due::Expired) => {
                return Err(Stop::close(close::TOKEN_EXPIRED, "Token expired"));
            }
            Wake::Shutdown => {
                return Err(Stop::close(close::SERVICE_RESTART, "Server restarting"));
            }
            Wake::Clock(Due::Ping) => {
                let ping_interval = self.clock.ping_interval();
                if last_heard.elapsed() > ping_interval * 2 {
                    return Err(Stop::close(close::KEEPALIVE_TIMEOUT, "Keep-alive timeout"));
                }
                vec![protocol::keepalive(self.protocol)]
            }
        };
        if replies.is_empty() && !self.socket.has_output() {
            return Ok(());
        }
        // Queued, then written together: one write syscall for a burst. A peer that stops
        // reading blocks the write; it gets as long as a silent peer gets (two ping
        // intervals), then the connection and its memory go.
        let socket = &mut self.socket;
        let burst = async {
            for reply in replies {
                socket.feed_text(&reply).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(self.clock.ping_interval() * 2, burst).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => {
                tracing::debug!("websocket peer stopped reading; dropped");
                Err(Stop::Gone)
            }
        }
    }

    /// The first thing ready: shutdown, the session's end, a deadline (`connection_init`, the
    /// token's expiry, a keep-alive ping), then a client frame and an operation's result (in
    /// the order `socket_first` says).
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        shutdown: Pin<&mut impl Future<Output = ()>>,
        socket_first: bool,
    ) -> Poll<Wake> {
        if shutdown.poll(cx).is_ready() {
            return Poll::Ready(Wake::Shutdown);
        }
        if let Caller::Authenticated { session_watch, .. } = &mut self.caller
            && let Poll::Ready(heard) = session_watch.poll_heard(cx)
        {
            return Poll::Ready(Wake::Session(heard));
        }
        if let Poll::Ready(due) = self.clock.poll(cx) {
            return Poll::Ready(Wake::Clock(due));
        }
        for socket_turn in [socket_first, !socket_first] {
            if socket_turn {
                if let Poll::Ready(frame) = self.socket.poll_next(cx) {
                    return Poll::Ready(Wake::Frame(frame));
                }
            } else if !self.operations.is_empty()
                && let Poll::Ready(Some((id, result))) = self.operations.poll_next_unpin(cx)
            {
                return Poll::Ready(Wake::Result(id, result));
            }
        }
        Poll::Pending
    }

    /// Handles one frame from the client, returning the messages to send back.
    async fn on_frame(&mut self, frame: Incoming) -> Result<Vec<Outgoing>, Stop> {
        let text = match frame {
            Incoming::Text(text) => text,
            Incoming::Close(code) => return Err(Stop::ClosedByPeer(code)),
            Incoming::Binary => {
                return Err(Stop::close(close::BAD_REQUEST, "Binary frames are not supported"));
            }
            // Websocket-level pings and pongs only prove liveness; a ping gets its pong.
            Incoming::Ping(payload) => {
                self.socket.queue_pong(&payload);
                return Ok(Vec::new());
            }
            Incoming::Pong => return Ok(Vec::new()),
        };
        let Some(message) = ClientMessage::parse(&text, self.protocol) else {
            return Err(Stop::close(close::BAD_REQUEST, "Invalid message received"));
        };
        match message {
            ClientMessage::ConnectionInit { payload } => {
                self.on_init(payload.unwrap_or_default()).await
            }
            ClientMessage::Subscribe { id, payload } | ClientMessage::Start { id, payload } => {
                self.on_subscribe(id, *payload)
            }
            ClientMessage::Complete { id } => {
                self.operations.remove(&id);
                Ok(Vec::new())
            }
            ClientMessage::Stop { id } => {
                let stopped = self.operations.remove(&id).is_some();
                Ok(if stopped { vec![protocol::complete(&id)] } else { Vec::new() })
            }
            ClientMessage::Ping { .. } => Ok(vec![protocol::pong()]),
            ClientMessage::Pong { .. } => Ok(Vec::new()),
            ClientMessage::ConnectionTerminate => Err(Stop::close(close::NORMAL, "Terminated")),
        }
    }

    async fn on_init(&mut self, payload: Value) -> Result<Vec<Outgoing>, Stop> {
        let Caller::Unknown { sessions, presence, max_connections_per_user } =
            std::mem::replace(&mut self.caller, Caller::Initialising)
        else {
            return Err(Stop::close(close::TOO_MANY_INITS, "Too many initialisation requests"));
        };
        self.clock.init_received();
        let (viewer, session_watch) = match authenticate(&sessions, &payload).await {
            Ok(authenticated) => authenticated,
            Err(error) => {
                let (code, reason) = match error {
                    AuthError::Invalid => (close::UNAUTHORIZED, "Unauthorized: invalid token"),
                    AuthError::Expired => (close::TOKEN_EXPIRED, "Token expired"),
                    AuthError::Store(_) => (close::TRY_AGAIN_LATER, "Try again later"),
                };
                // Legacy clients expect to be told before the socket closes.
                let farewell =
                    (self.protocol == Protocol::Legacy).then(|| protocol::connection_error(reason));
                return Err(Stop::Close { code, reason, farewell });
            }
        };
        let Some(online) = presence.connect(&viewer.user_id, max_connections_per_user).await else {
            return Err(Stop::close(
                close::TOO_MANY_CONNECTIONS,
                "Too many open connections for this user",
            ));
        };
        let until_expiry = (viewer.expires_at - Utc::now()).to_std().unwrap_or_default();
        self.clock.expire_at(Instant::now() + until_expiry);
        self.caller =
            Caller::Authenticated { viewer: Arc::new(viewer), session_watch, _online: online };
        let mut replies = vec![protocol::ack()];
        if self.protocol == Protocol::Legacy {
            replies.push(protocol::keepalive(Protocol::Legacy));
        }
        Ok(replies)
    }

    fn on_subscribe(
        &mut self,
        id: String,
        request: async_graphql::Request,
    ) -> Result<Vec<Outgoing>, Stop> {
        let Caller::Authenticated { viewer, .. } = &self.caller else {
            return Err(Stop::close(close::UNAUTHORIZED, "Unauthorized"));
        };
        let auth = RequestAuth::authenticated(viewer.clone());
        if self.operations.contains_key(&id) {
            return Err(Stop::close(
                close::SUBSCRIBER_EXISTS,
                "Subscriber for this id already exists",
            ));
        }
        if self.operations.len() >= self.max_subscriptions {
            let message = format!(
                "at most {} operations can run at once on one connection",
                self.max_subscriptions
            );
            return Ok(vec![protocol::refused(self.protocol, &id, &message, "LIMIT_EXCEEDED")]);
        }
        let results = self
            .schema
            .execute_stream(request, auth, self.client)
            // Boxed: a result passes through the connection's select loop, and inline it would
            // size every idle connection's task.
            .map(|response| Some(Box::new(response)))
            .chain(futures::stream::once(async { None }))
            .boxed();
        self.operations.insert(id, results);
        Ok(Vec::new())
    }

    /// The messages for `result` and for every other result already waiting (at most
    /// [`MAX_BURST`]), so a burst of deliveries goes out in one write.
    fn ready_results(&mut self, id: &str, result: Option<Box<Response>>) -> Vec<Outgoing> {
        let mut replies = self.on_result(id, result);
        while replies.len() < MAX_BURST {
            match self.operations.next().now_or_never() {
                Some(Some((id, result))) => replies.extend(self.on_result(&id, result)),
                _ => break,
            }
        }
        replies
    }

    /// Turns an operation's result (or its end) into the message for the client.
    fn on_result(&mut self, id: &str, result: Option<Box<Response>>) -> Vec<Outgoing> {
        match result {
            None => vec![protocol::complete(id)],
            // An operation that failed before executing (validation, auth) gets `error`.
            Some(response)
                if self.protocol == Protocol::TransportWs
                    && response.data == async_graphql::Value::Null
                    && response.is_err() =>
            {
                self.operations.remove(id);
                vec![protocol::error(id, &response.errors)]
            }
            Some(response) => vec![protocol::next(self.protocol, id, &response)],
        }
    }
}

/// Checks the token in `connection_init`'s payload and starts watching for its session's end.
async fn authenticate(
    sessions: &Sessions,
    payload: &Value,
) -> Result<(Viewer, SessionWatch), AuthError> {
    let token = sessions::token_from_init_payload(payload).ok_or(AuthError::Invalid)?;
    sessions.authenticate_and_watch(&token).await.inspect_err(|error| {
        tracing::debug!(%error, "websocket refused");
    })
}
