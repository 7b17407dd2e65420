//! What the instances of one deployment share besides the store: one Redis (`REDIS_URL`).
//!
//! One [`Cluster`] per process holds the Redis client and one multiplexed, self-reconnecting
//! connection that the bus's publishing, the rate limits, the connection counts and the typing
//! indicators all use (the bus's subscriptions need a connection of their own). Every call
//! through it has a timeout, so a Redis that hangs costs a request at most that long; callers
//! fall back to this process's own state while Redis fails. After a failure, calls fail at
//! once for [`PAUSE_AFTER_FAILURE`] without asking Redis (so requests do not each wait for a
//! timeout), and an outage is logged once, not per call.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{
    Client, Script, TlsCertificates, aio::ConnectionManager, aio::ConnectionManagerConfig,
};

use crate::config::RedisConfig;

/// The Redis the instances share.
#[derive(Clone)]
pub struct Cluster {
    /// For connections of their own (pub/sub).
    pub client: Client,
    /// For commands and scripts.
    pub connection: ConnectionManager,
    /// Put before every key and channel name (`REDIS_CHANNEL_PREFIX`).
    pub prefix: String,
    /// Longest any Redis call may take (`REDIS_TIMEOUT`).
    pub timeout: Duration,
    /// Unix milliseconds before which [`Cluster::run`] does not ask Redis (after a failure).
    paused_until: Arc<AtomicU64>,
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
        let client = match &config.ca_cert {
            None => Client::open(url).map_err(unusable)?,
            Some(path) => {
                if !url.starts_with("rediss://") {
                    return Err("REDIS_CA_CERT is set, but REDIS_URL is not a rediss:// URL".into());
                }
                let pem = std::fs::read(path).map_err(|error| {
                    format!("REDIS_CA_CERT {} cannot be read: {error}", path.display())
                })?;
                let certificates = TlsCertificates { client_tls: None, root_cert: Some(pem) };
                Client::build_with_tls(url, certificates).map_err(unusable)?
            }
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(5));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|error| format!("REDIS_URL is not usable: {error}"))?;
        tracing::info!(redis = %client.get_connection_info().addr(), "sharing state through Redis");
        Ok(Cluster {
            client,
            connection,
            prefix: config.channel_prefix.clone(),
            timeout: config.timeout,
            paused_until: Arc::default(),
        })
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
        let mut connection = self.connection.clone();
        let error = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        {
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
