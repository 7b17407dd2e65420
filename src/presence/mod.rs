//! Presence: who is online (has a connection open, on any device) and when they were last
//! seen, announced live to the people they chat with.
//!
//! Connections are counted across instances when Redis is configured ([`counts`]); the same
//! count enforces `WS_MAX_CONNECTIONS_PER_USER`. The last-seen time is in the store.

pub mod counts;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use self::counts::{ConnectionCounts, Counted};
use crate::{
    bus::MessageBus,
    domain::{ChatEvent, UserId, Viewer},
    error::AppResult,
    rate_limits::RateLimits,
    store::Store,
};

/// How many of a user's most recent conversation partners hear their presence change. Past
/// it, partners see it when they next look (`User.online`, `lastSeenAt`).
pub const PRESENCE_FANOUT: usize = 200;

/// Counts open connections per user and announces changes of presence.
#[derive(Clone)]
pub struct Presence(Arc<Inner>);

struct Inner {
    /// Where last-seen times and the privacy setting are kept, and who chats with whom.
    store: Arc<dyn Store>,
    /// Carries presence changes to partners' connections.
    bus: Arc<dyn MessageBus>,
    /// The per-user limit on account changes (the privacy setting is one).
    limits: Arc<RateLimits>,
    /// Open connections per user, on every instance.
    counts: ConnectionCounts,
}

/// Held by an open connection; dropping it closes the connection's share of the presence.
pub struct PresenceGuard {
    presence: Presence,
    user: UserId,
    counted: Counted,
}

impl Presence {
    /// The service over `store`, announcing through `bus`, counting in `counts`.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn MessageBus>,
        limits: Arc<RateLimits>,
        counts: ConnectionCounts,
    ) -> Self {
        let presence = Presence(Arc::new(Inner { store, bus, limits, counts }));
        if let Some(every) = presence.0.counts.heartbeat_every() {
            tokio::spawn(heartbeat(Arc::downgrade(&presence.0), every));
        }
        presence
    }

    /// Admits a connection of `user` unless they have `max` open already (on all instances);
    /// the user is online until the returned guard (and every other one of theirs) is dropped.
    pub async fn connect(&self, user: &UserId, max: usize) -> Option<PresenceGuard> {
        let (counted, total) = self.0.counts.open(user, max).await?;
        if total == 1 {
            // Off the connection's path: its acknowledgement does not wait for the partners.
            let (presence, user) = (self.clone(), user.clone());
            tokio::spawn(async move { presence.announce(&user, true, None).await });
        }
        Some(PresenceGuard { presence: self.clone(), user: user.clone(), counted })
    }

    /// Whether `user` has a connection open on any instance.
    pub async fn is_online(&self, user: &UserId) -> bool {
        self.0.counts.is_online(user).await
    }

    /// Sets whether the caller shows their presence to the people they chat with.
    pub async fn set_visible(&self, viewer: &Viewer, visible: bool) -> AppResult<()> {
        self.0.limits.check_account_change(viewer.user_id.as_str()).await?;
        Ok(self.0.store.set_shows_presence(&viewer.user_id, visible).await?)
    }

    fn disconnected(&self, user: &UserId, counted: Counted) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (presence, user) = (self.clone(), user.clone());
        runtime.spawn(async move {
            if presence.0.counts.close(&user, counted).await == 0 {
                presence.went_offline(&user).await;
            }
        });
    }

    /// Records when `user` was last seen and tells their partners they went offline.
    async fn went_offline(&self, user: &UserId) {
        // Milliseconds, as the stores keep it, so the event and a later query agree.
        let now = Utc::now();
        let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        if let Err(error) = self.0.store.record_last_seen(user, now).await {
            tracing::warn!(%error, "cannot record when a user was last seen");
        }
        self.announce(user, false, Some(now)).await;
    }

    /// Tells `user`'s most recent conversation partners, unless the user hides their presence.
    async fn announce(&self, user: &UserId, online: bool, last_seen_at: Option<DateTime<Utc>>) {
        let partners = async {
            let Some(found) = self.0.store.user_by_id(user).await? else { return Ok(Vec::new()) };
            if !found.shows_presence {
                return Ok(Vec::new());
            }
            let blocked = self.0.store.blocked_users(user).await?;
            let mut partners = self.0.store.conversations(user, None, PRESENCE_FANOUT).await?;
            partners.retain(|partner| !blocked.contains(&partner.with));
            Ok::<_, crate::store::StoreError>(partners)
        };
        let partners = match partners.await {
            Ok(partners) => partners,
            Err(error) => {
                tracing::warn!(%error, "cannot announce a presence change");
                return;
            }
        };
        let event =
            Arc::new(ChatEvent::PresenceChanged { user: user.clone(), online, last_seen_at });
        for partner in partners {
            self.0.bus.publish_event(&partner.with, event.clone()).await;
        }
    }
}

/// Renews this instance's heartbeat every `every`, for as long as the service exists, and
/// announces offline the users of instances that died (crashed, or lost their host) who have
/// no connection left anywhere: nobody else would, since their sockets never closed cleanly.
async fn heartbeat(presence: std::sync::Weak<Inner>, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let Some(inner) = presence.upgrade() else { return };
        let presence = Presence(inner);
        let orphans = presence.0.counts.heartbeat().await;
        if !orphans.is_empty() {
            tracing::warn!(users = orphans.len(), "an instance died; announcing its users offline");
        }
        for user in orphans {
            if !presence.is_online(&user).await {
                presence.went_offline(&user).await;
            }
        }
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.disconnected(&self.user, self.counted);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::{bus::BusEvent, testing::World};

    async fn presence_event(events: &mut crate::bus::BusSubscription) -> (UserId, bool, bool) {
        match events.next().await {
            Some(BusEvent::Chat(event)) => match &*event {
                ChatEvent::PresenceChanged { user, online, last_seen_at } => {
                    (user.clone(), *online, last_seen_at.is_some())
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The next presence event if one is ready once the spawned work has run.
    async fn presence_event_or_none(
        events: &mut crate::bus::BusSubscription,
    ) -> Option<(UserId, bool, bool)> {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        futures::FutureExt::now_or_never(presence_event(events))
    }

    #[tokio::test]
    async fn online_while_any_connection_is_open_and_partners_hear_it() {
        let world = World::new();
        let [alice, bob, carol] = [
            world.user("+12025550143").await,
            world.user("+12025550144").await,
            world.user("+12025550145").await,
        ];
        world.message(&alice, &bob, "hi").await;
        let limits = crate::testing::limits(|_| {});
        let counts = ConnectionCounts::local();
        let presence = Presence::new(world.store.clone(), world.bus.clone(), limits, counts);
        let mut bobs = world.bus.subscribe_events(&bob.id).await.unwrap();
        let mut carols = world.bus.subscribe_events(&carol.id).await.unwrap();

        let phone = presence.connect(&alice.id, 2).await.unwrap();
        assert_eq!(presence_event(&mut bobs).await, (alice.id.clone(), true, false));
        let laptop = presence.connect(&alice.id, 2).await.unwrap();
        assert!(presence.connect(&alice.id, 2).await.is_none(), "two connections at most");
        drop(phone);
        assert_eq!(presence_event_or_none(&mut bobs).await, None, "the laptop is still there");
        assert!(presence.is_online(&alice.id).await, "the laptop is still connected");
        drop(laptop);
        assert_eq!(presence_event(&mut bobs).await, (alice.id.clone(), false, true));
        assert!(!presence.is_online(&alice.id).await);
        let seen = world.store.user_by_id(&alice.id).await.unwrap().unwrap().last_seen_at;
        assert!(seen.is_some(), "last seen is stored");
        assert!(futures::FutureExt::now_or_never(carols.next()).is_none(), "only partners hear it");

        // Hidden presence is not announced.
        let as_alice = world.viewer(&alice).await;
        presence.set_visible(&as_alice, false).await.unwrap();
        drop(presence.connect(&alice.id, 2).await);
        // The announcements are spawned; on this single-threaded runtime they have run once
        // the test yields (each is a couple of store reads, no waiting).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(futures::FutureExt::now_or_never(bobs.next()).is_none(), "hidden: no news");
    }
}
