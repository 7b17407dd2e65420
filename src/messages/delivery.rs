//! The `messageReceived` stream: replay the undelivered backlog, then go live, with no gap and no
//! duplicate at the seam.
//!
//! The order of operations is what makes the handover safe:
//! 1. subscribe to the bus first, so every message published from now on is buffered;
//! 2. read the backlog from the store, page by page, oldest first;
//! 3. then drain the buffered live events, skipping those the backlog already contained.
//!
//! A message sent during step 2 is either committed before the page that would hold it was read
//! (it is replayed, and its live event is skipped) or after (it is not in the backlog, and its
//! live event delivers it). If the bus reports that this subscriber lagged, the stream goes back
//! to the store and re-reads the unacknowledged backlog, skipping what it already emitted.

use std::collections::{HashSet, VecDeque};

use futures::{Stream, StreamExt};

use crate::{
    bus::{BusEvent, BusSubscription},
    error::AppResult,
    messages::Message,
    services::Services,
};

/// Messages fetched from the store per backlog read.
const REPLAY_PAGE: usize = 500;
/// How many emitted ids are remembered for de-duplication. Only ids that can still come back
/// matter: live events buffered while replaying (bounded by the bus's channel capacity) and
/// messages re-read after a lag.
const REMEMBERED_IDS: usize = 100_000;

/// All messages for `user_id`: first the unacknowledged backlog oldest first, then live ones.
///
/// Listening starts when this function is called, before the stream is first polled.
pub fn replay_then_live(
    services: Services,
    user_id: String,
) -> impl Stream<Item = AppResult<Message>> + Send {
    let live = services.bus.subscribe(&user_id);
    let state = Delivery {
        services,
        user_id,
        live,
        phase: Phase::Replaying,
        read_up_to: 0,
        pending: VecDeque::new(),
        emitted: RecentIds::default(),
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}

enum Phase {
    /// Reading the backlog from the store after `read_up_to`.
    Replaying,
    /// Forwarding bus events.
    Live,
    /// The stream ended (after an error, or when the bus closed).
    Done,
}

struct Delivery {
    services: Services,
    user_id: String,
    /// Subscribed before the backlog is read; buffers live events meanwhile.
    live: BusSubscription,
    phase: Phase,
    /// Highest `seq` read from the store's backlog so far.
    read_up_to: i64,
    /// Backlog messages read but not yet emitted.
    pending: VecDeque<Message>,
    /// Ids already emitted, so neither a live echo of a replayed message nor a re-read after a
    /// lag is sent twice.
    emitted: RecentIds,
}

impl Delivery {
    async fn next(&mut self) -> Option<AppResult<Message>> {
        loop {
            while let Some(message) = self.pending.pop_front() {
                if self.emitted.insert(&message.id) {
                    return Some(Ok(message));
                }
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replaying => {
                    let page = self
                        .services
                        .store
                        .undelivered_messages(&self.user_id, self.read_up_to, REPLAY_PAGE)
                        .await;
                    match page {
                        Ok(page) => {
                            if page.len() < REPLAY_PAGE {
                                self.phase = Phase::Live;
                            }
                            if let Some(last) = page.last() {
                                self.read_up_to = last.seq;
                            }
                            self.pending.extend(page);
                        }
                        Err(error) => {
                            self.phase = Phase::Done;
                            return Some(Err(error.into()));
                        }
                    }
                }
                Phase::Live => match self.live.next().await {
                    Some(BusEvent::Message(message)) => {
                        if self.emitted.insert(&message.id) {
                            return Some(Ok(Message::clone(&message)));
                        }
                    }
                    Some(BusEvent::Lagged) => {
                        tracing::warn!(user = %self.user_id, "subscriber lagged; catching up from the store");
                        // From the start of the backlog, not from `read_up_to`: a message sent
                        // concurrently may have committed with a lower seq after that read.
                        // What was already emitted is skipped by `emitted`.
                        self.read_up_to = 0;
                        self.phase = Phase::Replaying;
                    }
                    // Inbox topics carry only messages; anything else is ignored.
                    Some(BusEvent::SessionEnded) => {}
                    None => self.phase = Phase::Done,
                },
            }
        }
    }
}

/// A set of the most recently inserted ids, bounded to [`REMEMBERED_IDS`].
#[derive(Default)]
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Records `id`; returns false if it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == REMEMBERED_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest_beyond_the_bound() {
        let mut ids = RecentIds::default();
        assert!(ids.insert("a"));
        assert!(!ids.insert("a"));
        for i in 0..REMEMBERED_IDS {
            ids.insert(&i.to_string());
        }
        assert!(ids.insert("a"), "the oldest id was forgotten");
        assert_eq!(ids.set.len(), REMEMBERED_IDS);
    }
}
