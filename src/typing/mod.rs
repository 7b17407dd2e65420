//! Typing indicators: "Bob is typing…". Never stored; a `true` lasts [`TYPING_LASTS`] unless
//! refreshed, and then ends by itself (the other side hears `typing: false`), so a client that
//! closes its tab mid-sentence does not leave "typing…" on the other screen.

pub mod indicators;

use std::{sync::Arc, time::Duration};

use self::indicators::{Ending, Indicators, Key};
use crate::{
    bus::MessageBus,
    domain::{ChatEvent, UserId, Viewer},
    error::{AppError, AppResult},
    rate_limits::RateLimits,
    store::Store,
};

/// How long a `typing: true` holds without a refresh. Clients refresh every few seconds while
/// the user types (and may send `false` when they stop or send).
pub const TYPING_LASTS: Duration = Duration::from_secs(6);

/// Relays typing indicators to the other participant's connections.
#[derive(Clone)]
pub struct Typing {
    /// To check that the other participant exists.
    store: Arc<dyn Store>,
    /// Carries the indicator to the other participant's connections.
    bus: Arc<dyn MessageBus>,
    /// The per-user `setTyping` limit.
    limits: Arc<RateLimits>,
    /// Which (typist, reader) indicators are on, on every instance.
    indicators: Indicators,
    /// [`TYPING_LASTS`], shorter in tests.
    lasts: Duration,
}

impl Typing {
    /// The service over `store`, relaying through `bus`, keeping indicators in `indicators`.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn MessageBus>,
        limits: Arc<RateLimits>,
        indicators: Indicators,
    ) -> Self {
        Typing { store, bus, limits, indicators, lasts: TYPING_LASTS }
    }

    /// Tells `with`'s connections that the caller is (or stopped) typing to them. A `true`
    /// ends by itself after [`TYPING_LASTS`] without a refresh; only changes are announced.
    pub async fn set(&self, viewer: &Viewer, with: &UserId, typing: bool) -> AppResult<()> {
        self.limits.check_typing(viewer.user_id.as_str()).await?;
        if with == &viewer.user_id {
            return Err(AppError::BadUserInput("you cannot type to yourself".into()));
        }
        if self.store.user_by_id(with).await?.is_none_or(|user| user.is_deleted()) {
            return Err(AppError::NotFound("user not found".into()));
        }
        // Between a blocker and the person they block, typing goes nowhere, without an error
        // that would reveal the block.
        if self.store.blocks(with, &viewer.user_id).await?
            || self.store.blocks(&viewer.user_id, with).await?
        {
            return Ok(());
        }
        let key = (viewer.user_id.clone(), with.clone());
        let (was_typing, ending) = self.indicators.set(&key, typing, self.lasts).await;
        if typing != was_typing {
            self.announce(&key, typing).await;
        }
        if typing {
            self.end_later(key, ending);
        }
        Ok(())
    }

    async fn announce(&self, (from, to): &Key, typing: bool) {
        let event = Arc::new(ChatEvent::TypingChanged { from: from.clone(), typing });
        self.bus.publish_event(to, event).await;
    }

    /// Announces `false` once the indicator runs out, unless a refresh moved its end.
    fn end_later(&self, key: Key, ending: Ending) {
        let typing = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(typing.lasts).await;
            if typing.indicators.expire(&key, ending).await {
                typing.announce(&key, false).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, Stream, StreamExt};

    use super::*;
    use crate::{bus::BusEvent, testing::World};

    fn next(events: &mut (impl Stream<Item = BusEvent> + Unpin)) -> Option<(UserId, bool)> {
        match events.next().now_or_never().flatten()? {
            BusEvent::Chat(event) => match &*event {
                ChatEvent::TypingChanged { from, typing } => Some((from.clone(), *typing)),
                _ => None,
            },
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn typing_is_relayed_once_per_change_and_ends_by_itself() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let as_alice = world.viewer(&alice).await;
        let limits = crate::testing::limits(|_| {});
        let typing =
            Typing::new(world.store.clone(), world.bus.clone(), limits, Indicators::new(None));
        let mut bobs = world.bus.subscribe_events(&bob.id).await.unwrap();

        typing.set(&as_alice, &bob.id, true).await.unwrap();
        assert_eq!(next(&mut bobs), Some((alice.id.clone(), true)));
        // A refresh within the time announces nothing and keeps it going.
        tokio::time::advance(TYPING_LASTS / 2).await;
        typing.set(&as_alice, &bob.id, true).await.unwrap();
        assert_eq!(next(&mut bobs), None);
        tokio::time::advance(TYPING_LASTS / 2 + Duration::from_millis(10)).await;
        tokio::task::yield_now().await;
        assert_eq!(next(&mut bobs), None, "the refresh moved the end");
        // Without another refresh it ends by itself.
        tokio::time::advance(TYPING_LASTS).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(next(&mut bobs), Some((alice.id.clone(), false)));
        // Stopping explicitly is announced at once; stopping twice is not.
        typing.set(&as_alice, &bob.id, true).await.unwrap();
        typing.set(&as_alice, &bob.id, false).await.unwrap();
        typing.set(&as_alice, &bob.id, false).await.unwrap();
        assert_eq!(next(&mut bobs), Some((alice.id.clone(), true)));
        assert_eq!(next(&mut bobs), Some((alice.id.clone(), false)));
        assert_eq!(next(&mut bobs), None);
    }
}
