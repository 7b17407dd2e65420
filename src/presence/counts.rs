//! Open connections per user, across every instance: what `WS_MAX_CONNECTIONS_PER_USER` and
//! `User.online` count.
//!
//! Always counted in this process. With Redis, also in one hash per user (`conn:<user>`: a
//! field per instance holding that instance's count) beside a hash of instance heartbeats
//! (`instances`: id -> alive-until, renewed every third of `REDIS_INSTANCE_TTL`) and a set per
//! instance of the users it has connections for (`users-of:<instance>`). A total only adds the
//! fields of live instances and drops the others, so an instance that dies (`kill -9`, a lost
//! host) stops counting once its heartbeat runs out; and the first live instance to notice
//! claims the dead one's set ([`ConnectionCounts::heartbeat`]), so its users who are now
//! offline everywhere can be announced offline and their last-seen time recorded.
//! Each change is one atomic script on Redis's clock. While Redis fails, counts are this
//! process's (the limit then holds per instance; online is still true wherever the user is
//! connected here).
//!
//! Redis Cluster: a script touches the user's key, the heartbeat hash and an instance's set
//! (REAP names sets it finds, inside the script), so every key here carries the hash tag
//! `{presence}` and lives in one slot. That puts all counts on one shard: one small script per
//! connection opened or closed, well within one node's capacity (see README, "Scaling out").

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::Script;

use crate::{
    cluster::{self, Cluster},
    domain::UserId,
};

/// Sums the live instances' counts in KEYS[1] (dropping dead ones), given heartbeats KEYS[2].
/// Shared by the scripts below; `now` comes from [`cluster::script`].
const SUM_LIVE: &str = r"
local function live_total()
  local fields = redis.call('HGETALL', KEYS[1])
  local total = 0
  for i = 1, #fields, 2 do
    local alive = tonumber(redis.call('HGET', KEYS[2], fields[i]) or 0)
    if alive > now then
      total = total + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[1], fields[i])
    end
  end
  return total
end
";

/// ARGV: instance id, alive-for ms, user, most allowed. Returns the total after admitting, or
/// -1. KEYS[3]: this instance's set of users.
const OPEN: &str = r"
local total = live_total()
if total >= tonumber(ARGV[4]) then
  return -1
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[3], ARGV[3])
return total + 1
";

/// ARGV: instance id, alive-for ms, user. Returns the total after closing.
const CLOSE: &str = r"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[3])
end
return live_total()
";

/// Renews this instance's heartbeat (KEYS[1]: the heartbeats; ARGV: instance id, alive-for ms,
/// the `users-of:` key prefix), claims every instance whose heartbeat ran out (removing it, so
/// exactly one live instance claims each) and returns the users those had connections for.
const REAP: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local beats = redis.call('HGETALL', KEYS[1])
local orphans = {}
for i = 1, #beats, 2 do
  if tonumber(beats[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], beats[i])
    local set = ARGV[3] .. beats[i]
    for _, user in ipairs(redis.call('SMEMBERS', set)) do
      table.insert(orphans, user)
    end
    redis.call('DEL', set)
  end
end
return orphans
";

/// ARGV: instance id, alive-for ms. Returns the total.
const COUNT: &str = r"
return live_total()
";

/// Every count script first renews this instance's heartbeat (so its own counts are never
/// dropped as dead, even before the first periodic renewal).
fn count_script(body: &str) -> Script {
    let renew = "redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[2]))";
    cluster::script(&format!("{renew}\n{SUM_LIVE}{body}"))
}

/// Open connections per user.
#[derive(Clone)]
pub struct ConnectionCounts {
    /// This process's connections. A std mutex: held only for map updates.
    local: Arc<Mutex<HashMap<UserId, usize>>>,
    shared: Option<Arc<RedisCounts>>,
}

/// Where a connection was counted, so its close goes to the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Here and in Redis.
    Shared,
    /// Here only (no Redis, or Redis failed at the time).
    Local,
}

impl ConnectionCounts {
    /// Counts kept in this process only.
    pub fn local() -> Self {
        ConnectionCounts { local: Arc::default(), shared: None }
    }

    /// Counts shared through `cluster`'s Redis; an instance that has not renewed its heartbeat
    /// for `instance_ttl` counts as dead. [`ConnectionCounts::heartbeat`] must be called every
    /// [`ConnectionCounts::heartbeat_every`].
    pub fn shared(cluster: Cluster, instance_ttl: Duration) -> Self {
        let shared = Arc::new(RedisCounts::new(cluster, instance_ttl));
        ConnectionCounts { local: Arc::default(), shared: Some(shared) }
    }

    /// How often [`ConnectionCounts::heartbeat`] must run; `None` without Redis.
    pub fn heartbeat_every(&self) -> Option<Duration> {
        self.shared.as_ref().map(|shared| shared.instance_ttl / 3)
    }

    /// Renews this instance's heartbeat and returns the users of instances found dead
    /// (claimed by this call alone): each may have gone offline without anyone announcing it.
    pub async fn heartbeat(&self) -> Vec<UserId> {
        let Some(shared) = &self.shared else { return Vec::new() };
        let keys = [shared.key("instances")];
        let args = [
            shared.instance.clone(),
            shared.instance_ttl.as_millis().to_string(),
            shared.key("users-of:"),
        ];
        let users = shared.cluster.run::<Vec<String>>(&shared.reap, &keys, &args).await;
        users.unwrap_or_default().into_iter().map(UserId::new).collect()
    }

    /// Counts a new connection of `user` unless they already have `max` open; returns where it
    /// was counted and the user's total after it.
    pub async fn open(&self, user: &UserId, max: usize) -> Option<(Counted, usize)> {
        if let Some(shared) = &self.shared
            && let Some(total) = shared.run(&shared.open, user, Some(max)).await
        {
            // -1: refused.
            let total = usize::try_from(total).ok()?;
            self.add_local(user);
            return Some((Counted::Shared, total));
        }
        let mut local = self.lock();
        let count = local.entry(user.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some((Counted::Local, *count))
    }

    /// Uncounts a connection; returns the user's total after it (0: they went offline).
    pub async fn close(&self, user: &UserId, counted: Counted) -> usize {
        let local_left = {
            let mut local = self.lock();
            match local.get_mut(user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    *count
                }
                Some(_) => {
                    local.remove(user);
                    0
                }
                None => 0,
            }
        };
        if counted == Counted::Shared
            && let Some(shared) = &self.shared
            && let Some(total) = shared.run(&shared.close, user, None).await
        {
            return usize::try_from(total).unwrap_or(0).max(local_left);
        }
        local_left
    }

    /// Whether `user` has a connection open on any instance.
    pub async fn is_online(&self, user: &UserId) -> bool {
        if self.lock().contains_key(user) {
            return true;
        }
        match &self.shared {
            Some(shared) => shared.run(&shared.count, user, None).await.is_some_and(|n| n > 0),
            None => false,
        }
    }

    fn add_local(&self, user: &UserId) {
        *self.lock().entry(user.clone()).or_insert(0) += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The Redis half of the counts.
struct RedisCounts {
    cluster: Cluster,
    /// This process's field in every user's hash.
    instance: String,
    /// How long a heartbeat keeps an instance alive (`REDIS_INSTANCE_TTL`).
    instance_ttl: Duration,
    open: Script,
    close: Script,
    count: Script,
    reap: Script,
}

impl RedisCounts {
    fn new(cluster: Cluster, instance_ttl: Duration) -> Self {
        RedisCounts {
            cluster,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            instance_ttl,
            open: count_script(OPEN),
            close: count_script(CLOSE),
            count: count_script(COUNT),
            reap: cluster::script(REAP),
        }
    }

    /// The Redis key `name`, in the slot every key of the counts shares.
    fn key(&self, name: &str) -> String {
        self.cluster.key(&format!("{{presence}}{name}"))
    }

    /// Runs `script` for `user` (with `max` for admission); `None` if Redis fails or is too
    /// slow (logged once per outage by [`Cluster::run`]).
    async fn run(&self, script: &Script, user: &UserId, max: Option<usize>) -> Option<i64> {
        let keys = [
            self.key(&format!("conn:{user}")),
            self.key("instances"),
            self.key(&format!("users-of:{}", self.instance)),
        ];
        let mut args = vec![
            self.instance.clone(),
            self.instance_ttl.as_millis().to_string(),
            user.to_string(),
        ];
        args.extend(max.map(|max| max.to_string()));
        self.cluster.run(script, &keys, &args).await.ok()
    }
}
