//! What the instances of one deployment share besides the store: one Redis (`REDIS_URL`), a
//! single server or a Redis Cluster (`REDIS_CLUSTER`).
//!
//! One [`Cluster`] per process holds the Redis client and one multiplexed, self-reconnecting
//! connection that the bus's publishing, the rate limits, the connection counts and the typing
//! indicators all use (the bus's subscriptions need a connection of their own). Every call
//! through it has a timeout, so a Redis that hangs costs a request at most that long; callers
//! fall back to this process's own state while Redis fails. After a failure, calls fail at
//! once for [`PAUSE_AFTER_FAILURE`] without asking Redis (so requests do not each wait for a
//! timeout), and an outage is logged once, not per call.
//!
//! With a Redis Cluster every command goes to the node that owns its key's slot, so each script
//! touches keys of one slot only (the connection counts' keys share the `{presence}` hash tag),
//! and live events use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`): an event is handled by the
//! one shard owning its channel, where plain `PUBLISH` is copied to every node of the cluster.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{
    Client, Cmd, Pipeline, RedisFuture, Script, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
};
use tokio::sync::OnceCell;

use crate::config::RedisConfig;

/// The Redis the instances share.
#[derive(Clone)]
pub struct Cluster {
    /// For connections of their own (pub/sub).
    pub nodes: Nodes,
    /// For commands and scripts.
    commands: Commands,
    /// Put before every key and channel name (`REDIS_CHANNEL_PREFIX`).
    pub prefix: String,
    /// Longest any Redis call may take (`REDIS_TIMEOUT`).
    pub timeout: Duration,
    /// Unix milliseconds before which [`Cluster::run`] does not ask Redis (after a failure).
    paused_until: Arc<AtomicU64>,
}

/// Where Redis is.
#[derive(Clone)]
pub enum Nodes {
    /// One server (a primary, perhaps with replicas behind a proxy).
    Single(Box<Client>),
    /// A Redis Cluster, spoken to in RESP3 (its pub/sub messages arrive as pushes).
    Sharded(Box<ClusterClient>),
}

/// The shared connection for commands.
#[derive(Clone)]
enum Commands {
    Single(ConnectionManager),
    /// Made on first use (a cluster connection cannot be made lazily), and again after a
    /// failed attempt; once made, it reconnects to nodes and follows slot moves by itself.
    Sharded(Box<ClusterClient>, Arc<OnceCell<ClusterConnection>>),
}

/// A connection [`Commands`] lends for one call.
enum Connection {
    Single(ConnectionManager),
    Sharded(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Sharded(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Sharded(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Sharded(connection) => connection.get_db(),
        }
    }
}

impl Commands {
    async fn connection(&self) -> redis::RedisResult<Connection> {
        match self {
            Commands::Single(connection) => Ok(Connection::Single(connection.clone())),
            Commands::Sharded(client, connection) => {
                let made = connection.get_or_try_init(|| client.get_async_connection()).await?;
                Ok(Connection::Sharded(made.clone()))
            }
        }
    }
}

/// How long Redis is left alone after a failed call.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Put before every script's body: `now`, Redis's clock in milliseconds, so instances whose
/// clocks disagree still agree on expiry times.
const CLOCK: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
";

/// A script whose body may use `now` (Redis's clock, in milliseconds).
pub fn script(body: &str) -> Script {
    Script::new(&format!("{CLOCK}{body}"))
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// The Redis of `config`; connects lazily, so the server starts while Redis is down.
    /// `rediss://` URLs connect over TLS (rustls), checking the server's certificate against
    /// `REDIS_CA_CERT` when set, else the bundled Mozilla roots.
    pub fn connect(config: &RedisConfig) -> Result<Self, String> {
        let url = config.url.expose().as_str();
        let unusable = |error: redis::RedisError| format!("REDIS_URL is not usable: {error}");
        let root_cert = match &config.ca_cert {
            None => None,
            Some(path) => {
                if !url.starts_with("rediss://") {
                    return Err("REDIS_CA_CERT is set, but REDIS_URL is not a rediss:// URL".into());
                }
                Some(std::fs::read(path).map_err(|error| {
                    format!("REDIS_CA_CERT {} cannot be read: {error}", path.display())
                })?)
            }
        };
        let certificates = |root_cert| TlsCertificates { client_tls: None, root_cert };
        let (nodes, commands) = if config.cluster {
            let seeds: Vec<&str> =
                url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            let mut builder = ClusterClientBuilder::new(seeds.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .retries(2);
            if root_cert.is_some() {
                builder = builder.certs(certificates(root_cert));
            }
            let client = builder.build().map_err(unusable)?;
            tracing::info!(seeds = seeds.len(), "sharing state through a Redis Cluster");
            let commands = Commands::Sharded(Box::new(client.clone()), Arc::default());
            (Nodes::Sharded(Box::new(client)), commands)
        } else {
            let client = match root_cert {
                None => Client::open(url).map_err(unusable)?,
                Some(_) => {
                    Client::build_with_tls(url, certificates(root_cert)).map_err(unusable)?
                }
            };
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(5));
            let connection = ConnectionManager::new_lazy_with_config(client.clone(), manager)
                .map_err(unusable)?;
            let addr = client.get_connection_info().addr().to_string();
            tracing::info!(redis = %addr, "sharing state through Redis");
            (Nodes::Single(Box::new(client)), Commands::Single(connection))
        };
        Ok(Cluster {
            nodes,
            commands,
            prefix: config.channel_prefix.clone(),
            timeout: config.timeout,
            paused_until: Arc::default(),
        })
    }

    /// Publishes `payload` on `channel` (with the prefix already put before it), within the
    /// timeout: `SPUBLISH` on a Redis Cluster, `PUBLISH` on a single server.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), String> {
        let command = match self.nodes {
            Nodes::Single(_) => "PUBLISH",
            Nodes::Sharded(_) => "SPUBLISH",
        };
        let publish = async {
            let mut connection = self.commands.connection().await?;
            redis::cmd(command).arg(channel).arg(payload).query_async::<i64>(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, publish).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// `name` with the deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `script` with `keys` and `args`, within the timeout; fails at once while paused
    /// after a failure.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, String> {
        if unix_millis() < self.paused_until.load(Ordering::Relaxed) {
            return Err("paused after a failed call".into());
        }
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let invoke = async {
            let mut connection = self.commands.connection().await?;
            invocation.invoke_async(&mut connection).await
        };
        let error = match tokio::time::timeout(self.timeout, invoke).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        let until = unix_millis() + PAUSE_AFTER_FAILURE.as_millis() as u64;
        if self.paused_until.swap(until, Ordering::Relaxed) < unix_millis() {
            tracing::warn!(%error, "Redis call failed; limits, counts and typing use this instance's own state until it answers");
        }
        Err(error)
    }
}
