//! Rate limits kept in Redis, so every instance draws on the same budgets.
//!
//! Each check is one atomic script (no read-modify-write race between instances), using
//! Redis's own clock so instances' clocks need not agree. Buckets are GCRA, the algorithm
//! `governor` uses locally: a key holds the "theoretical arrival time" of the next token and
//! expires when the bucket would be full again. Failed logins are one hash per phone number
//! (`n:<network>` and `u:<network>` per network, `n` and `u` for the number), expiring an hour
//! after the last failure, so a successful login clears them with one `DEL`.
//!
//! Redis failing must not stop sign-ins: a call that fails or times out answers `None` and the
//! caller uses its own in-process state ([`Cluster::run`] leaves Redis alone for a second
//! after a failure, so requests do not each wait for a timeout).

use std::time::Duration;

use redis::Script;

use super::{FAILURE_MEMORY, Limit, MAX_BACKOFF, MAX_CONSECUTIVE_FAILURES};
use crate::{
    client_address::ClientNetwork,
    cluster::{Cluster, script},
};

/// Takes a token from bucket KEYS[1] (ARGV: interval and burst, ms and count); returns 0, or
/// the milliseconds to wait.
const TAKE: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local allowed_at = tat - (burst - 1) * interval
if now < allowed_at then
  return allowed_at - now
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now + 1000)
return 0
";

/// Records a failed login for network ARGV[1] in number hash KEYS[1] (ARGV: threshold,
/// ceiling, longest backoff ms, memory ms).
const FAIL: &str = r"
local net = ARGV[1]
local threshold = tonumber(ARGV[2])
local ceiling = tonumber(ARGV[3])
local longest = tonumber(ARGV[4])
local keep = tonumber(ARGV[5])
local count = redis.call('HINCRBY', KEYS[1], 'n:' .. net, 1)
if count >= threshold then
  local wait = math.min(1000 * 2 ^ math.min(count - threshold, 20), longest)
  redis.call('HSET', KEYS[1], 'u:' .. net, now + wait)
  keep = math.max(keep, wait)
end
if redis.call('HINCRBY', KEYS[1], 'n', 1) >= ceiling then
  redis.call('HSET', KEYS[1], 'n', 0, 'u', now + longest)
  keep = math.max(keep, longest)
end
redis.call('PEXPIRE', KEYS[1], math.max(keep, redis.call('PTTL', KEYS[1])))
return 0
";

/// Forgets number KEYS[1]'s failed logins.
const CLEAR: &str = "return redis.call('DEL', KEYS[1])";

/// Milliseconds until network ARGV[1] may try number KEYS[1] again (0: now).
const BACKOFF: &str = r"
local blocked = redis.call('HMGET', KEYS[1], 'u:' .. ARGV[1], 'u')
local latest = math.max(tonumber(blocked[1] or 0), tonumber(blocked[2] or 0))
return math.max(latest - now, 0)
";

/// Rate-limit state in Redis.
pub struct RedisLimits {
    cluster: Cluster,
    take: Script,
    fail: Script,
    backoff: Script,
    clear: Script,
}

impl RedisLimits {
    /// Limits kept in `cluster`'s Redis.
    pub fn new(cluster: Cluster) -> Self {
        RedisLimits {
            cluster,
            take: script(TAKE),
            fail: script(FAIL),
            backoff: script(BACKOFF),
            clear: Script::new(CLEAR),
        }
    }

    /// Runs `script`; `None` if Redis is paused, fails or is too slow.
    async fn run(&self, script: &Script, key: String, args: &[String]) -> Option<u64> {
        self.cluster.run(script, &[key], args).await.ok()
    }

    /// Takes a token from `limit`'s bucket for `key`: `Some(None)` if allowed, `Some(wait)` if
    /// not, `None` if Redis could not be asked.
    pub async fn take(&self, limit: &Limit, key: &str) -> Option<Option<Duration>> {
        let args = [limit.interval.as_millis().max(1).to_string(), limit.burst.to_string()];
        let wait =
            self.run(&self.take, self.cluster.key(&format!("limit:{}:{key}", limit.name)), &args);
        wait.await.map(|ms| (ms > 0).then(|| Duration::from_millis(ms)))
    }

    /// Records a failed login; false if Redis could not be told.
    pub async fn record_failure(&self, phone: &str, client: ClientNetwork, threshold: u32) -> bool {
        let args = [
            client.to_string(),
            threshold.to_string(),
            MAX_CONSECUTIVE_FAILURES.to_string(),
            MAX_BACKOFF.as_millis().to_string(),
            FAILURE_MEMORY.as_millis().to_string(),
        ];
        self.run(&self.fail, self.failures_key(phone), &args).await.is_some()
    }

    /// How long `client` must wait before trying `phone` again: `Some(None)` for not at all,
    /// `None` if Redis could not be asked.
    pub async fn backoff(&self, phone: &str, client: ClientNetwork) -> Option<Option<Duration>> {
        let wait = self.run(&self.backoff, self.failures_key(phone), &[client.to_string()]).await;
        wait.map(|ms| (ms > 0).then(|| Duration::from_millis(ms)))
    }

    /// Forgets `phone`'s failed logins (after a successful one).
    pub async fn clear_failures(&self, phone: &str) {
        self.run(&self.clear, self.failures_key(phone), &[]).await;
    }

    fn failures_key(&self, phone: &str) -> String {
        self.cluster.key(&format!("limit:failures:{phone}"))
    }
}
