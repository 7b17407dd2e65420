//! chatapp: a real-time chat backend with a GraphQL API.
//!
//! Users register and log in with a phone number, send messages with a mutation, and receive
//! them over the `messageReceived` subscription, which first replays what they missed and then
//! streams live messages without a gap or a duplicate.
//!
//! # Layers
//! Dependencies run one way, top to bottom; nothing imports a layer above it.
//!
//! ```text
//! lib.rs (wiring: build, serve)
//!   http ──────────► websocket          axum routes, GraphiQL, /healthz; graphql-ws, websocket frames
//!     └──────┬──────────┘
//!          schema                        GraphQL types and resolvers, one module per domain
//!            │
//!   accounts sessions messages users     services: one per domain, each holding what it uses
//!   typing presence verification
//!            │
//!   store     bus     rate_limits        storage trait (SQLite, MongoDB); live fan-out; limits
//!            │         │         │
//!            │       cluster ────┘         the Redis instances share (`REDIS_URL`), if any
//!            │
//!          domain                        ids, phone numbers, content, cursors: imports nothing
//! ```
//! Beside them, used from any layer: [`config`], [`error`] (the client-facing error and its
//! `extensions.code`), [`client_address`], [`secret`], [`data_dir`], and the connection
//! plumbing [`server`] (accept loop, header-read timeout, connection caps) and [`shutdown`].
//!
//! With `REDIS_URL`, several instances act as one: [`bus::redis`] carries live events between
//! them, and the limits ([`rate_limits::redis`]), connection counts ([`presence::counts`]) and
//! typing indicators ([`typing::indicators`]) keep their state in Redis, each falling back to
//! this process's own while Redis fails. The store stays the only truth: whatever the bus
//! misses, subscribers re-read from it.
//!
//! # Life of a message
//! 1. `sendMessage` arrives over HTTP ([`http`], `http/graphql.rs`) or a websocket
//!    ([`websocket`]) and is executed by the schema ([`schema`]).
//! 2. Its resolver (`schema/messages.rs`) parses the input into a [`messages::SendRequest`]
//!    (`TryFrom<SendMessageInput>`: content and key rules from [`domain`]).
//! 3. [`messages::Messaging::send`] checks the sender's rate limit and the recipient, and
//!    stores the message ([`store::Store::insert_message`], `store/sqlite` or `store/mongo`):
//!    durable before anyone hears of it.
//! 4. It publishes the stored message on the [`bus`]; the sender gets its answer.
//! 5. Each of the recipient's `messageReceived` streams ([`messages::delivery`]), subscribed
//!    to the bus before it read the backlog, emits it unless it already did.
//! 6. The websocket loop (`websocket/mod.rs`) turns it into the subscription's payload (a
//!    parked `messageReceived` runs its selection on the message, `schema/parked.rs`) and
//!    writes a `next` frame to the recipient's socket.
//!
//! [`build`] assembles the app from a [`config::Config`] and [`serve`] runs it on a listener
//! until a shutdown future resolves; `main` and the integration tests both use exactly these.

pub mod accounts;
pub mod bus;
pub mod client_address;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod data_dir;
pub mod domain;
pub mod error;
pub mod http;
pub mod messages;
pub mod presence;
pub mod rate_limits;
pub mod schema;
pub mod secret;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod store;
#[cfg(test)]
mod testing;
pub mod typing;
pub mod users;
pub mod verification;
pub mod websocket;

use std::{future::Future, sync::Arc};

use axum::Router;
use tokio::net::TcpListener;

use crate::{
    accounts::{Accounts, passwords::PasswordHasher},
    bus::{InProcessBus, MessageBus, redis::RedisBus},
    cluster::Cluster,
    config::{CodeDelivery, Config},
    error::StartupError,
    messages::Messaging,
    presence::{Presence, counts::ConnectionCounts},
    rate_limits::{RateLimits, redis::RedisLimits},
    sessions::{Sessions, tokens::TokenService},
    shutdown::Shutdown,
    store::{Store, mongo::MongoStore, sqlite::SqliteStore},
    typing::{Typing, indicators::Indicators},
    users::Directory,
    verification::{
        PhoneVerification,
        sender::{CodeSender, LogSender, WebhookSender},
    },
};

/// A built application: its routes and the services behind them.
pub struct App {
    /// The HTTP routes, ready for [`serve`].
    pub router: Router,
    /// The store behind the routes (tests read it to check what a request changed).
    pub store: Arc<dyn Store>,
    /// Tells websockets to close when [`serve`]'s shutdown future resolves.
    pub shutdown: Shutdown,
    /// How long [`serve`] waits for connections to finish after the shutdown begins
    /// (`SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: std::time::Duration,
    /// Header-read timeout and caps on open connections.
    pub connection_limits: server::ConnectionLimits,
}

/// File name of the embedded database inside the data directory.
const DATABASE_FILE: &str = "chat.db";

/// Builds the app described by `config`: opens the store, loads the signing secret, and wires
/// the schema and routes.
pub async fn build(config: &Config) -> Result<App, StartupError> {
    data_dir::prepare(&config.data_dir).map_err(|source| StartupError::Io {
        context: format!("cannot create data directory {}", config.data_dir.display()),
        source,
    })?;
    // The store first: for SQLite it takes the data directory's lock, so of two processes
    // started on one directory the second stops here, before it creates or migrates anything.
    let store = open_store(config).await?;
    build_with_store(config, store)
}

/// Builds the app on a store opened by the caller (one wrapped to inject faults, in tests);
/// `config`'s store settings are ignored.
pub fn build_with_store(config: &Config, store: Arc<dyn Store>) -> Result<App, StartupError> {
    let secret = signing_secret(config)?;
    let cluster = match &config.redis {
        Some(redis) => Some(Cluster::connect(redis).map_err(StartupError::Invalid)?),
        None => None,
    };
    let bus: Arc<dyn MessageBus> = match &cluster {
        Some(cluster) => Arc::new(RedisBus::new(cluster)),
        None => Arc::new(InProcessBus::new()),
    };
    let tokens = Arc::new(TokenService::new(&secret, config.jwt_ttl));
    let shared_limits = cluster.clone().map(RedisLimits::new);
    let limits = Arc::new(RateLimits::new(&config.limits, shared_limits));
    let passwords = PasswordHasher::new(
        config.bcrypt_cost,
        config.limits.bcrypt_concurrency,
        config.limits.bcrypt_max_queue,
    );
    let sessions = Sessions::new(store.clone(), bus.clone(), tokens);
    let counts = match (&cluster, &config.redis) {
        (Some(cluster), Some(redis)) => {
            ConnectionCounts::shared(cluster.clone(), redis.instance_ttl)
        }
        _ => ConnectionCounts::local(),
    };
    let presence = Presence::new(store.clone(), bus.clone(), limits.clone(), counts);
    let verification = PhoneVerification::new(
        store.clone(),
        limits.clone(),
        code_sender(&config.phone_verification.delivery)?,
        &secret,
        &config.phone_verification,
    );
    let accounts = Accounts::new(
        store.clone(),
        passwords,
        limits.clone(),
        sessions.clone(),
        verification.clone(),
    );
    release_stale_claims_periodically(&store, &bus, config.phone_verification.claim_ttl);
    let services = schema::Services {
        accounts,
        sessions: sessions.clone(),
        messaging: Messaging::new(store.clone(), bus.clone(), limits.clone()),
        directory: Directory::new(store.clone(), limits.clone(), bus.clone()),
        typing: Typing::new(store.clone(), bus.clone(), limits.clone(), Indicators::new(cluster)),
        presence: presence.clone(),
        verification,
    };
    prune_rate_limits_periodically(&limits);
    purge_expired_sessions_periodically(&store);
    let schema = schema::build(services, &config.limits);
    let shutdown = Shutdown::default();
    let backends = (store.clone(), bus.clone());
    let router = http::router(schema, sessions, presence, backends, shutdown.clone(), config);
    Ok(App {
        router,
        store,
        shutdown,
        shutdown_timeout: config.shutdown_timeout,
        connection_limits: config.connection_limits,
    })
}

/// MongoDB when `MONGO_URI` is set, else the embedded SQLite store in the data directory.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    let Some(mongo) = &config.mongo else {
        let io_error = |source| StartupError::Io {
            context: format!("cannot lock the data directory {}", config.data_dir.display()),
            source,
        };
        let lock = data_dir::lock(&config.data_dir, config.redis.is_some())
            .map_err(io_error)?
            .map_err(StartupError::Invalid)?;
        let database = config.data_dir.join(DATABASE_FILE);
        data_dir::create_private_file(&database).map_err(|source| StartupError::Io {
            context: format!("cannot create {}", database.display()),
            source,
        })?;
        let store = SqliteStore::open(&database)?.holding(lock);
        for suffix in ["", "-wal", "-shm"] {
            data_dir::warn_if_exposed(&config.data_dir.join(format!("{DATABASE_FILE}{suffix}")));
        }
        tracing::info!(store = store.kind(), path = %database.display(), "using the embedded store");
        return Ok(Arc::new(store));
    };
    let store = Arc::new(MongoStore::connect(mongo).await?);
    tracing::info!(store = store.kind(), database = store.database_name(), "using MongoDB");
    // Creating the indexes also proves the connection; if MongoDB is not up yet the server
    // starts anyway, answers SERVICE_UNAVAILABLE, and creates them on first use.
    if let Err(error) = store.ensure_indexes().await {
        tracing::warn!(%error, "MongoDB is not reachable yet; requests fail until it is");
    }
    Ok(store)
}

/// The sender `PHONE_VERIFICATION` asks for; `None` when numbers are not verified.
fn code_sender(delivery: &CodeDelivery) -> Result<Option<Arc<dyn CodeSender>>, StartupError> {
    Ok(match delivery {
        CodeDelivery::Off => None,
        CodeDelivery::Log => {
            tracing::warn!("PHONE_VERIFICATION=log: verification codes are written to the log");
            Some(Arc::new(LogSender))
        }
        CodeDelivery::Webhook(webhook) => {
            Some(Arc::new(WebhookSender::new(webhook).map_err(StartupError::Invalid)?))
        }
    })
}

/// Removes unverified accounts whose claim ran out, every minute, and closes their websockets,
/// for as long as the app exists (a registration of the same number does it at once; this
/// frees the rest). Holds the store weakly, like the session purge.
fn release_stale_claims_periodically(
    store: &Arc<dyn Store>,
    bus: &Arc<dyn MessageBus>,
    claim_ttl: std::time::Duration,
) {
    let (store, bus) = (Arc::downgrade(store), bus.clone());
    let claim_ttl = chrono::TimeDelta::from_std(claim_ttl).unwrap_or(chrono::TimeDelta::MAX);
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every_minute.tick().await;
            let Some(store) = store.upgrade() else { return };
            match store.release_unverified(chrono::Utc::now() - claim_ttl, None).await {
                Ok(ended) if ended.is_empty() => {}
                Ok(ended) => {
                    bus.end_sessions(&ended).await;
                    tracing::info!(ended = ended.len(), "stale unverified accounts removed");
                }
                Err(error) => tracing::warn!(%error, "cannot remove stale unverified accounts"),
            }
        }
    });
}

/// Prunes idle rate-limit keys every minute, for as long as the app exists.
fn prune_rate_limits_periodically(rate_limits: &Arc<RateLimits>) {
    let rate_limits = Arc::downgrade(rate_limits);
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every_minute.tick().await;
            match rate_limits.upgrade() {
                Some(rate_limits) => rate_limits.prune(),
                None => return,
            }
        }
    });
}

/// Removes sessions a day after they expired, every hour, for as long as the app exists (they
/// are refused from expiry on; the day keeps them visible to anyone investigating a login).
/// Holds the store weakly, so a stopped app releases it (and the data directory's lock).
fn purge_expired_sessions_periodically(store: &Arc<dyn Store>) {
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut every_hour = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            every_hour.tick().await;
            let Some(store) = store.upgrade() else { return };
            let before = chrono::Utc::now() - sessions::EXPIRED_SESSION_RETENTION;
            match store.delete_expired_sessions(before).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "expired sessions removed"),
                Err(error) => tracing::warn!(%error, "cannot remove expired sessions"),
            }
        }
    });
}

fn signing_secret(config: &Config) -> Result<Vec<u8>, StartupError> {
    if config.redis.is_some() && config.jwt_secret.is_none() {
        // Each instance would generate its own secret and refuse the others' tokens.
        return Err(StartupError::Invalid(
            "REDIS_URL is set, so several instances may serve these clients: set the same \
             JWT_SECRET on every one (generate one with `openssl rand -base64 48`)"
                .into(),
        ));
    }
    if let Some(secret) = &config.jwt_secret {
        if secret.expose().len() < TokenService::MIN_SECRET_BYTES {
            return Err(StartupError::Invalid(format!(
                "JWT_SECRET must be at least {} bytes long; generate one with `openssl rand -base64 48`",
                TokenService::MIN_SECRET_BYTES
            )));
        }
        return Ok(secret.expose().as_bytes().to_vec());
    }
    let (secret, created) =
        sessions::tokens::load_or_create_secret(&config.data_dir).map_err(|source| {
            StartupError::Io { context: "cannot read or create the token secret".into(), source }
        })?;
    if created {
        tracing::warn!(dir = %config.data_dir.display(), "JWT_SECRET is unset: generated a secret and saved it in the data directory");
    } else {
        tracing::info!(dir = %config.data_dir.display(), "JWT_SECRET is unset: using the secret saved in the data directory");
    }
    Ok(secret)
}

/// Serves `app` on `listener` until `signal` resolves; then stops accepting, closes every
/// websocket with 1012 (Service Restart), lets in-flight requests finish, and returns within
/// the app's `shutdown_timeout` whatever the clients do.
pub async fn serve(
    listener: TcpListener,
    app: App,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let App { router, shutdown, shutdown_timeout, connection_limits, .. } = app;
    server::warn_if_descriptors_are_short(&connection_limits);
    let begin = shutdown.clone();
    tokio::spawn(async move {
        signal.await;
        begin.begin();
    });
    let server = server::accept(listener, router, connection_limits, shutdown.clone());
    shutdown.drain(server, shutdown_timeout).await;
    Ok(())
}

/// Crates whose detailed logs would carry secrets or personal data (websocket frames with the
/// `connection_init` token; MongoDB commands with phone numbers and password hashes): capped at
/// `info` whatever `RUST_LOG` asks for.
const LOG_CAPS: [&str; 3] = ["tungstenite=info", "tokio_tungstenite=info", "mongodb::command=info"];

/// The log filter: `RUST_LOG`, else `chatapp=info,tower_http=info`, with [`LOG_CAPS`] on top.
pub fn log_filter() -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{}=info,tower_http=info", env!("CARGO_CRATE_NAME")).into());
    LOG_CAPS
        .iter()
        .filter_map(|cap| cap.parse().ok())
        .fold(filter, |filter, cap| filter.add_directive(cap))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
