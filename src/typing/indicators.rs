//! Which typing indicators are on: in this process, or in Redis so that a refresh landing on
//! another instance keeps the indicator going instead of being ended by this one's timer.
//!
//! In Redis each indicator is a key (`typing:<from>:<to>`) holding the token of its latest
//! refresh. When an instance's timer runs out it ends the indicator only if its own refresh is
//! still the latest (an atomic compare-and-delete), so exactly one instance announces the end.
//! The key outlives the indicator by a grace period, so an instance that dies before its timer
//! fires leaves no indicator on for good. While Redis fails, this process's own map serves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::Script;
use tokio::time::Instant;

use crate::{cluster::Cluster, domain::UserId};

/// Who types to whom.
pub type Key = (UserId, UserId);

/// How long a key in Redis outlives its indicator.
const GRACE: Duration = Duration::from_secs(5);

/// Returns whether the indicator was on, and turns it on with refresh token ARGV[1].
const START: &str = r"
local was = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return was
";
/// Returns whether the indicator was on, and turns it off.
const STOP: &str = "return redis.call('DEL', KEYS[1])";
/// Ends the indicator if refresh ARGV[1] is still its latest; returns whether it did.
const EXPIRE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// How an indicator that was turned on will be checked when its time runs out.
pub enum Ending {
    /// Against this refresh's token in Redis.
    Shared(String),
    /// Against this process's map.
    Local,
}

/// The indicators that are on.
#[derive(Clone)]
pub struct Indicators {
    /// When each indicator ends unless refreshed. A std mutex: held only for map updates.
    local: Arc<Mutex<HashMap<Key, Instant>>>,
    shared: Option<Arc<Shared>>,
}

struct Shared {
    cluster: Cluster,
    start: Script,
    stop: Script,
    expire: Script,
}

impl Indicators {
    /// Kept in this process, or in `cluster`'s Redis when given.
    pub fn new(cluster: Option<Cluster>) -> Self {
        let shared = cluster.map(|cluster| {
            Arc::new(Shared {
                cluster,
                start: Script::new(START),
                stop: Script::new(STOP),
                expire: Script::new(EXPIRE),
            })
        });
        Indicators { local: Arc::default(), shared }
    }

    /// Turns `key`'s indicator on for `lasts`, or off; returns whether it was on, and how its
    /// end is to be checked.
    pub async fn set(&self, key: &Key, typing: bool, lasts: Duration) -> (bool, Ending) {
        if let Some(shared) = &self.shared {
            let redis_key = shared.cluster.key(&format!("typing:{}:{}", key.0, key.1));
            let token = uuid::Uuid::new_v4().simple().to_string();
            let ran = if typing {
                let ttl = (lasts + GRACE).as_millis().to_string();
                shared.cluster.run::<i64>(&shared.start, &[redis_key], &[token.clone(), ttl]).await
            } else {
                shared.cluster.run::<i64>(&shared.stop, &[redis_key], &[]).await
            };
            // On failure (logged once per outage by `Cluster::run`), this process's map serves.
            if let Ok(was) = ran {
                return (was > 0, Ending::Shared(token));
            }
        }
        let mut until = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let was_typing = until.get(key).is_some_and(|end| *end > Instant::now());
        if typing {
            until.insert(key.clone(), Instant::now() + lasts);
        } else {
            until.remove(key);
        }
        (was_typing, Ending::Local)
    }

    /// Once an indicator's time has run out: ends it unless it was refreshed since (or turned
    /// off); returns whether it ended now (and so must be announced).
    pub async fn expire(&self, key: &Key, ending: Ending) -> bool {
        match (ending, &self.shared) {
            (Ending::Shared(token), Some(shared)) => {
                let redis_key = shared.cluster.key(&format!("typing:{}:{}", key.0, key.1));
                match shared.cluster.run::<i64>(&shared.expire, &[redis_key], &[token]).await {
                    Ok(ended) => ended > 0,
                    // Better an indicator ended twice than one left on.
                    Err(_) => true,
                }
            }
            _ => {
                let mut until = self.local.lock().unwrap_or_else(|p| p.into_inner());
                match until.get(key) {
                    Some(end) if *end <= Instant::now() => until.remove(key).is_some(),
                    _ => false,
                }
            }
        }
    }
}
