//! Settings, read once from the environment at startup.
//!
//! Every setting has a default that works on a fresh machine, so `cargo run` needs no `.env`.
//! A setting that is present but malformed stops startup with a message naming it, rather than
//! being silently replaced by its default.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use crate::{cors::AllowedOrigins, secret::Secret, server::ConnectionLimits};

/// Everything the server reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface to listen on (`BIND_ADDRESS`). Defaults to all interfaces so the server is
    /// reachable from containers and other machines; set `127.0.0.1` to keep it local.
    pub bind_address: IpAddr,
    /// TCP port (`PORT`), 5000 by default like the Node.js app this replaces.
    pub port: u16,
    /// Where the embedded store keeps its database and generated secret (`DATA_DIR`).
    pub data_dir: PathBuf,
    /// HMAC secret for signing tokens (`JWT_SECRET`). When unset, one is generated and kept in
    /// the data directory so tokens survive restarts.
    pub jwt_secret: Option<Secret<String>>,
    /// How long an issued token stays valid (`JWT_TTL`, e.g. `3600`, `90m`, `12h`, `7d`).
    pub jwt_ttl: Duration,
    /// bcrypt work factor (`BCRYPT_COST`, 4 to 31). Each step doubles the cost of a login.
    pub bcrypt_cost: u32,
    /// Header-read timeout and caps on open connections (`HTTP_HEADER_READ_TIMEOUT`,
    /// `MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_ADDRESS`).
    pub connection_limits: ConnectionLimits,
    /// How long a shutdown waits for requests and websockets to finish (`SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,
    /// How long a websocket client has to send `connection_init` (`WS_INIT_TIMEOUT`).
    pub ws_init_timeout: Duration,
    /// How often the server pings websocket clients (`WS_PING_INTERVAL`); a client silent for two
    /// intervals is dropped.
    pub ws_ping_interval: Duration,
    /// Browser origins allowed to call the API cross-origin (`CORS_ALLOWED_ORIGINS`, comma
    /// separated, or `*` for any). Empty means same-origin only.
    pub cors_allowed_origins: AllowedOrigins,
    /// Whether `GET /graphql` serves the GraphiQL playground to browsers (`GRAPHIQL`).
    pub graphiql: bool,
    /// How many reverse proxies in front of the server append to `X-Forwarded-For`
    /// (`TRUST_PROXY`: a number, `true` = 1, `false` = 0). The client is the entry that many
    /// places from the right; with 0 it is the TCP peer.
    pub trusted_proxies: usize,
    /// Abuse limits; see [`Limits`].
    pub limits: Limits,
    /// MongoDB, when `MONGO_URI` is set; otherwise the embedded store is used.
    pub mongo: Option<MongoConfig>,
    /// Whether and how phone numbers are verified; see [`VerificationConfig`].
    pub phone_verification: VerificationConfig,
    /// Redis, when `REDIS_URL` is set: instances share live events through it.
    pub redis: Option<RedisConfig>,
}

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` (`REDIS_URL`); with [`RedisConfig::cluster`],
    /// one or more nodes of the cluster separated by commas. May hold a password, so it is a
    /// [`Secret`].
    pub url: Secret<String>,
    /// Whether `REDIS_URL` names nodes of a Redis Cluster (`REDIS_CLUSTER`): live events then
    /// travel over sharded pub/sub, and every command is routed to the node owning its key.
    pub cluster: bool,
    /// Put before every channel name (`REDIS_CHANNEL_PREFIX`), so deployments can share one
    /// Redis (pub/sub channels are not separated by database number).
    pub channel_prefix: String,
    /// How long a Redis command or connection attempt may take (`REDIS_TIMEOUT`).
    pub timeout: Duration,
    /// How long an instance counts as alive after its last heartbeat (`REDIS_INSTANCE_TTL`):
    /// after a crash, its users stop counting as online, and are announced offline, within
    /// about this long.
    pub instance_ttl: Duration,
    /// PEM file of the certificate authority a `rediss://` server's certificate must chain to
    /// (`REDIS_CA_CERT`), for a private CA; unset, the bundled Mozilla roots are trusted.
    pub ca_cert: Option<PathBuf>,
}

/// Phone verification: new accounts prove they own their number with a one-time code.
#[derive(Debug, Clone)]
pub struct VerificationConfig {
    /// How codes reach phones (`PHONE_VERIFICATION`: `off`, `log` or `webhook`).
    pub delivery: CodeDelivery,
    /// How long a code is accepted (`PHONE_VERIFICATION_CODE_TTL`).
    pub code_ttl: Duration,
    /// How long an unverified account holds its number before anyone may register it again
    /// (`PHONE_VERIFICATION_CLAIM_TTL`).
    pub claim_ttl: Duration,
}

/// How verification codes are delivered.
#[derive(Debug, Clone)]
pub enum CodeDelivery {
    /// No verification: accounts count as verified from registration (the default, so a fresh
    /// machine needs no SMS gateway).
    Off,
    /// Codes are written to the server log (development only).
    Log,
    /// Codes are POSTed as JSON to an SMS gateway or any service that texts them.
    Webhook(WebhookConfig),
}

/// Where and how the webhook sender posts codes.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http` or `https` URL (`PHONE_VERIFICATION_WEBHOOK_URL`).
    pub url: url::Url,
    /// Sent as `Authorization: Bearer <token>` when set (`PHONE_VERIFICATION_WEBHOOK_TOKEN`).
    pub token: Option<Secret<String>>,
    /// How long one attempt may take (`PHONE_VERIFICATION_WEBHOOK_TIMEOUT`).
    pub timeout: Duration,
}

/// Where and how to reach MongoDB.
#[derive(Clone)]
pub struct MongoConfig {
    /// Connection string (`MONGO_URI`), `mongodb://` or `mongodb+srv://`. May hold a password,
    /// so it is never logged or printed by `Debug`.
    pub uri: String,
    /// Database name (`MONGO_DB`); when unset, the URI's path, else `chatapp`.
    pub database: Option<String>,
    /// How long an operation waits for a usable server before failing with
    /// `SERVICE_UNAVAILABLE` (`MONGO_TIMEOUT`); also the connect timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &"***")
            .field("database", &self.database)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Every limit that protects the server from hostile or runaway clients. All are settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `register`/`login` attempts per minute from one client address
    /// (`RATE_LIMIT_AUTH_PER_ADDRESS`).
    pub auth_per_minute_per_address: u32,
    /// `register`/`login` attempts per minute for one phone number
    /// (`RATE_LIMIT_AUTH_PER_PHONE`).
    pub auth_per_minute_per_phone: u32,
    /// Consecutive failed logins for one phone number after which each further attempt must
    /// wait, doubling from one second up to 15 minutes (`LOGIN_FAILURES_BEFORE_BACKOFF`).
    pub login_failures_before_backoff: u32,
    /// `sendMessage` calls per second per user, also the burst (`RATE_LIMIT_MESSAGES_PER_USER`).
    pub messages_per_second_per_user: u32,
    /// `userByPhoneNumber` look-ups per minute per user (`RATE_LIMIT_LOOKUPS_PER_USER`).
    pub lookups_per_minute_per_user: u32,
    /// `setTyping` calls per second per user (`RATE_LIMIT_TYPING_PER_USER`).
    pub typing_per_second_per_user: u32,
    /// Account changes (`updateProfile`, `changePassword`, `blockUser`, `unblockUser`,
    /// `deleteAccount`, `setPresenceVisible`, `verifyPhone`) per minute per user
    /// (`RATE_LIMIT_ACCOUNT_CHANGES_PER_USER`).
    pub account_changes_per_minute_per_user: u32,
    /// Verification codes sent per hour to one phone number
    /// (`RATE_LIMIT_VERIFICATION_PER_PHONE`): the cap on texts anyone can make us send to
    /// someone else's phone.
    pub verification_sends_per_hour_per_phone: u32,
    /// Verification codes sent per hour at the request of one client address
    /// (`RATE_LIMIT_VERIFICATION_PER_ADDRESS`): the cap on texts one client can cost us.
    pub verification_sends_per_hour_per_address: u32,
    /// bcrypt hashes running at once (`BCRYPT_CONCURRENCY`, one per core by default); the rest
    /// queue. The hashing threads run at low priority (nice 10), so a login storm gets the CPU
    /// delivery leaves idle; one thread on 2 cores kept delivery p99 at 1.06x in a storm but
    /// capped sign-ins at 4.6/s, two threads give 8.1-8.3/s at 1.47x (BENCHMARKS.md).
    pub bcrypt_concurrency: usize,
    /// Password hashes running or queued at most (`BCRYPT_MAX_QUEUE`); past it, sign-ins are
    /// refused at once with `SERVICE_UNAVAILABLE` and `retryAfter`.
    pub bcrypt_max_queue: usize,
    /// Deepest query nesting (`GRAPHQL_MAX_DEPTH`).
    pub graphql_max_depth: usize,
    /// Highest query complexity (`GRAPHQL_MAX_COMPLEXITY`): one point per field, ten more for
    /// a field that reads the store, and a page's items counted once each.
    pub graphql_max_complexity: usize,
    /// Operations in one batched HTTP request (`GRAPHQL_MAX_BATCH`).
    pub graphql_max_batch: usize,
    /// Whether introspection queries are answered (`GRAPHQL_INTROSPECTION`).
    pub graphql_introspection: bool,
    /// Largest HTTP request body in bytes (`MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Largest websocket message in bytes (`WS_MAX_MESSAGE_BYTES`).
    pub ws_max_message_bytes: usize,
    /// Operations running at once on one websocket (`WS_MAX_SUBSCRIPTIONS`).
    pub ws_max_subscriptions: usize,
    /// Open websockets per user (`WS_MAX_CONNECTIONS_PER_USER`).
    pub ws_max_connections_per_user: usize,
}

/// A setting that is present but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}={value:?}: {reason}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can supply their own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let bind_address =
            parse_or(get("BIND_ADDRESS"), "BIND_ADDRESS", "0.0.0.0".parse().unwrap())?;
        let port = parse_or(get("PORT"), "PORT", 5000)?;
        let bcrypt_cost = parse_or(get("BCRYPT_COST"), "BCRYPT_COST", 12u32)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(ConfigError::new(
                "BCRYPT_COST",
                bcrypt_cost.to_string(),
                "must be 4 to 31",
            ));
        }
        let duration = |name: &'static str, default: Duration| match get(name) {
            Some(value) => parse_duration(&value).ok_or_else(|| {
                ConfigError::new(name, value, "expected seconds or a number with ms, s, m, h or d")
            }),
            None => Ok(default),
        };
        let jwt_ttl = duration("JWT_TTL", Duration::from_secs(7 * 24 * 3600))?;
        let ws_init_timeout = duration("WS_INIT_TIMEOUT", Duration::from_secs(3))?;
        let ws_ping_interval = duration("WS_PING_INTERVAL", Duration::from_secs(15))?;
        let positive = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
            let value = parse_or(get(name), name, default)?;
            if value == 0 {
                return Err(ConfigError::new(name, "0", "must be at least 1"));
            }
            Ok(value)
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let limits = Limits {
            auth_per_minute_per_address: positive("RATE_LIMIT_AUTH_PER_ADDRESS", 30)? as u32,
            auth_per_minute_per_phone: positive("RATE_LIMIT_AUTH_PER_PHONE", 10)? as u32,
            login_failures_before_backoff: positive("LOGIN_FAILURES_BEFORE_BACKOFF", 5)? as u32,
            messages_per_second_per_user: positive("RATE_LIMIT_MESSAGES_PER_USER", 20)? as u32,
            lookups_per_minute_per_user: positive("RATE_LIMIT_LOOKUPS_PER_USER", 60)? as u32,
            typing_per_second_per_user: positive("RATE_LIMIT_TYPING_PER_USER", 5)? as u32,
            account_changes_per_minute_per_user: positive(
                "RATE_LIMIT_ACCOUNT_CHANGES_PER_USER",
                10,
            )? as u32,
            verification_sends_per_hour_per_phone: positive("RATE_LIMIT_VERIFICATION_PER_PHONE", 5)?
                as u32,
            verification_sends_per_hour_per_address: positive(
                "RATE_LIMIT_VERIFICATION_PER_ADDRESS",
                20,
            )? as u32,
            bcrypt_concurrency: positive("BCRYPT_CONCURRENCY", cores)?,
            bcrypt_max_queue: positive("BCRYPT_MAX_QUEUE", 32)?,
            graphql_max_depth: positive("GRAPHQL_MAX_DEPTH", 10)?,
            graphql_max_complexity: positive("GRAPHQL_MAX_COMPLEXITY", 2000)?,
            graphql_max_batch: positive("GRAPHQL_MAX_BATCH", 10)?,
            graphql_introspection: parse_or(
                get("GRAPHQL_INTROSPECTION"),
                "GRAPHQL_INTROSPECTION",
                true,
            )?,
            max_body_bytes: positive("MAX_BODY_BYTES", 64 * 1024)?,
            ws_max_message_bytes: positive("WS_MAX_MESSAGE_BYTES", 64 * 1024)?,
            ws_max_subscriptions: positive("WS_MAX_SUBSCRIPTIONS", 20)?,
            ws_max_connections_per_user: positive("WS_MAX_CONNECTIONS_PER_USER", 20)?,
        };
        let mongo = match get("MONGO_URI").filter(|uri| !uri.trim().is_empty()) {
            Some(uri) => Some(MongoConfig {
                uri,
                database: get("MONGO_DB").filter(|name| !name.is_empty()),
                timeout: duration("MONGO_TIMEOUT", Duration::from_secs(3))?,
            }),
            None => None,
        };
        let phone_verification = VerificationConfig {
            delivery: code_delivery(&get, &duration)?,
            code_ttl: duration("PHONE_VERIFICATION_CODE_TTL", Duration::from_secs(10 * 60))?,
            claim_ttl: duration("PHONE_VERIFICATION_CLAIM_TTL", Duration::from_secs(3600))?,
        };
        if phone_verification.claim_ttl < phone_verification.code_ttl {
            return Err(ConfigError::new(
                "PHONE_VERIFICATION_CLAIM_TTL",
                format!("{:?}", phone_verification.claim_ttl),
                "must be at least PHONE_VERIFICATION_CODE_TTL, or codes would outlive accounts",
            ));
        }
        let redis = match get("REDIS_URL") {
            Some(url) => Some(RedisConfig {
                url: Secret::new(url.trim().to_string()),
                cluster: parse_or(get("REDIS_CLUSTER"), "REDIS_CLUSTER", false)?,
                channel_prefix: get("REDIS_CHANNEL_PREFIX").unwrap_or_else(|| "chatapp:".into()),
                timeout: duration("REDIS_TIMEOUT", Duration::from_secs(2))?,
                ca_cert: get("REDIS_CA_CERT").map(PathBuf::from),
                instance_ttl: duration("REDIS_INSTANCE_TTL", Duration::from_secs(30))?,
            }),
            None => None,
        };
        Ok(Config {
            mongo,
            redis,
            phone_verification,
            trusted_proxies: match get("TRUST_PROXY").map(|v| v.trim().to_ascii_lowercase()) {
                None => 0,
                Some(value) if value == "false" => 0,
                Some(value) if value == "true" => 1,
                Some(value) => value.parse().map_err(|_| {
                    ConfigError::new(
                        "TRUST_PROXY",
                        value,
                        "expected the number of proxies, true or false",
                    )
                })?,
            },
            graphiql: parse_or(get("GRAPHIQL"), "GRAPHIQL", true)?,
            limits,
            ws_init_timeout,
            ws_ping_interval,
            shutdown_timeout: duration("SHUTDOWN_TIMEOUT", Duration::from_secs(10))?,
            connection_limits: ConnectionLimits {
                header_read_timeout: duration("HTTP_HEADER_READ_TIMEOUT", Duration::from_secs(10))?,
                max_connections: positive("MAX_CONNECTIONS", 100_000)?,
                max_connections_per_address: parse_or(
                    get("MAX_CONNECTIONS_PER_ADDRESS"),
                    "MAX_CONNECTIONS_PER_ADDRESS",
                    0,
                )?,
            },
            bind_address,
            port,
            data_dir: get("DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("./data")),
            jwt_secret: get("JWT_SECRET").map(Secret::new),
            jwt_ttl,
            bcrypt_cost,
            cors_allowed_origins: AllowedOrigins::parse(
                &get("CORS_ALLOWED_ORIGINS").unwrap_or_default(),
            )
            .map_err(|error| ConfigError::new("CORS_ALLOWED_ORIGINS", error.value, error.reason))?,
        })
    }
}

/// `PHONE_VERIFICATION` and, for `webhook`, where to post.
fn code_delivery(
    get: &impl Fn(&str) -> Option<String>,
    duration: &impl Fn(&'static str, Duration) -> Result<Duration, ConfigError>,
) -> Result<CodeDelivery, ConfigError> {
    let mode = get("PHONE_VERIFICATION").map(|mode| mode.trim().to_ascii_lowercase());
    match mode.as_deref() {
        None | Some("off") => Ok(CodeDelivery::Off),
        Some("log") => Ok(CodeDelivery::Log),
        Some("webhook") => {
            const URL: &str = "PHONE_VERIFICATION_WEBHOOK_URL";
            let raw = get(URL).ok_or_else(|| {
                ConfigError::new(URL, "", "is required when PHONE_VERIFICATION=webhook")
            })?;
            let url = url::Url::parse(raw.trim())
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                .ok_or_else(|| ConfigError::new(URL, raw.clone(), "expected an http(s) URL"))?;
            Ok(CodeDelivery::Webhook(WebhookConfig {
                url,
                token: get("PHONE_VERIFICATION_WEBHOOK_TOKEN").map(Secret::new),
                timeout: duration("PHONE_VERIFICATION_WEBHOOK_TIMEOUT", Duration::from_secs(5))?,
            }))
        }
        Some(other) => {
            Err(ConfigError::new("PHONE_VERIFICATION", other, "expected off, log or webhook"))
        }
    }
}

impl ConfigError {
    fn new(name: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { name, value: value.into(), reason: reason.into() }
    }
}

fn parse_or<T: std::str::FromStr>(
    value: Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match value {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|error: T::Err| ConfigError::new(name, raw, error.to_string())),
    }
}

/// Parses `90`, `90s`, `500ms`, `15m`, `12h` or `7d` into a non-zero duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => number,
        "" | "s" => number.checked_mul(1000)?,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        "d" => number.checked_mul(86_400_000)?,
        _ => return None,
    };
    (millis > 0).then(|| Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| env.get(name).cloned())
    }

    #[test]
    fn defaults_work_on_an_empty_environment() {
        let config = config(&[]).unwrap();
        assert_eq!(config.port, 5000);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.bcrypt_cost, 12);
        assert_eq!(config.jwt_ttl, Duration::from_secs(7 * 86_400));
        assert!(config.jwt_secret.is_none());
        assert_eq!(config.cors_allowed_origins, AllowedOrigins::SameOrigin);
        assert_eq!(config.ws_init_timeout, Duration::from_secs(3));
        assert_eq!(config.ws_ping_interval, Duration::from_secs(15));
    }

    #[test]
    fn mongo_uri_selects_mongodb_and_is_never_printed() {
        assert!(config(&[]).unwrap().mongo.is_none());
        let config = config(&[("MONGO_URI", "mongodb://app:s3cret@db:27017/chat")]).unwrap();
        let mongo = config.mongo.as_ref().unwrap();
        assert_eq!(mongo.timeout, Duration::from_secs(3));
        assert_eq!(mongo.database, None);
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn the_token_secret_is_never_printed() {
        let secret = "a-very-long-signing-secret-of-forty-bytes!";
        let config = config(&[("JWT_SECRET", secret)]).unwrap();
        assert_eq!(config.jwt_secret.as_ref().unwrap().expose(), secret);
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains(secret) && printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn malformed_settings_are_refused_by_name() {
        let error = config(&[("PORT", "eighty")]).unwrap_err();
        assert!(error.to_string().contains("PORT"), "{error}");
        assert!(config(&[("BCRYPT_COST", "3")]).is_err());
        assert!(config(&[("JWT_TTL", "5 weeks")]).is_err());
        assert!(config(&[("GRAPHQL_MAX_DEPTH", "0")]).is_err());
        assert!(config(&[("GRAPHQL_INTROSPECTION", "maybe")]).is_err());
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("1w"), None);
    }

    #[test]
    fn phone_verification_is_off_unless_asked_and_needs_a_webhook_url() {
        assert!(matches!(config(&[]).unwrap().phone_verification.delivery, CodeDelivery::Off));
        let log = config(&[("PHONE_VERIFICATION", "log")]).unwrap();
        assert!(matches!(log.phone_verification.delivery, CodeDelivery::Log));
        let missing = config(&[("PHONE_VERIFICATION", "webhook")]).unwrap_err();
        assert!(missing.to_string().contains("PHONE_VERIFICATION_WEBHOOK_URL"), "{missing}");
        let ftp =
            [("PHONE_VERIFICATION", "webhook"), ("PHONE_VERIFICATION_WEBHOOK_URL", "ftp://x")];
        assert!(config(&ftp).is_err());
        assert!(config(&[("PHONE_VERIFICATION", "sms")]).is_err());
        let token = "gateway-token-that-must-not-print";
        let webhook = config(&[
            ("PHONE_VERIFICATION", "webhook"),
            ("PHONE_VERIFICATION_WEBHOOK_URL", "https://sms.example/send"),
            ("PHONE_VERIFICATION_WEBHOOK_TOKEN", token),
        ])
        .unwrap();
        let CodeDelivery::Webhook(hook) = &webhook.phone_verification.delivery else {
            panic!("webhook expected")
        };
        assert_eq!(hook.url.as_str(), "https://sms.example/send");
        assert_eq!(hook.timeout, Duration::from_secs(5));
        assert!(!format!("{webhook:?}").contains(token));
        let short_claim = [("PHONE_VERIFICATION_CLAIM_TTL", "1m")];
        assert!(config(&short_claim).is_err(), "a claim shorter than a code");
    }

    #[test]
    fn redis_is_off_unless_set_and_its_url_is_never_printed() {
        assert!(config(&[]).unwrap().redis.is_none());
        let url = "redis://:s3cret-redis-password@cache.internal:6379/0";
        let single = config(&[("REDIS_URL", url), ("REDIS_TIMEOUT", "500ms")]).unwrap();
        let redis = single.redis.as_ref().unwrap();
        assert_eq!(redis.url.expose(), url);
        assert_eq!(redis.channel_prefix, "chatapp:");
        assert_eq!(redis.timeout, Duration::from_millis(500));
        assert!(!redis.cluster);
        assert!(!format!("{single:?}").contains("s3cret"));
        let nodes = "redis://r1:6379,redis://r2:6379";
        let cluster = config(&[("REDIS_URL", nodes), ("REDIS_CLUSTER", "true")]).unwrap();
        assert!(cluster.redis.unwrap().cluster);
        let error = config(&[("REDIS_URL", nodes), ("REDIS_CLUSTER", "yes")]).unwrap_err();
        assert!(error.to_string().contains("REDIS_CLUSTER"), "{error}");
    }

    #[test]
    fn cors_origins_are_a_list() {
        let listed = config(&[("CORS_ALLOWED_ORIGINS", "http://a.test, http://b.test")]).unwrap();
        assert!(listed.cors_allowed_origins.allows("http://b.test"));
        let error = config(&[("CORS_ALLOWED_ORIGINS", "http://localhost:3000/")]).unwrap_err();
        assert!(error.to_string().contains("CORS_ALLOWED_ORIGINS"), "{error}");
    }
}
