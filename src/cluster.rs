//! What the instances of one deployment share besides the store: one Redis (`REDIS_URL`).
//!
//! One [`Cluster`] per process holds the Redis client and one multiplexed, self-reconnecting
//! connection that the bus's publishing, the rate limits, the connection counts and the typing
//! indicators all use (the bus's subscriptions need a connection of their own). Every call
//! through it has a timeout, so a Redis that hangs costs a request at most that long; callers
//! fall back to this process's own state while Redis fails.

use std::time::Duration;

use redis::{Client, TlsCertificates, aio::ConnectionManager, aio::ConnectionManagerConfig};

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
        })
    }

    /// `name` with the deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `script` with `keys` and `args`, within the timeout.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, String> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}
