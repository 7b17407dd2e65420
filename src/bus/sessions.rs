//! Who watches which session, in this process: the websockets that must close when their
//! session ends.
//!
//! Session endings travel on one topic for all sessions ([`Topic::Sessions`](super::Topic)),
//! not a topic per session: a logout is rare, and an idle connection then holds a small entry
//! here (~160 bytes) instead of a broadcast channel and its subscription (~700 bytes), and a
//! Redis instance one channel instead of one per open connection.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures::{Stream, task::AtomicWaker};

use super::{BusEvent, BusSubscription};
use crate::domain::SessionId;

/// The session watches of this process.
#[derive(Clone, Default)]
pub struct SessionWatchers(Arc<Mutex<HashMap<SessionId, Vec<Arc<Watch>>>>>);

/// What one watcher is told.
#[derive(Default)]
struct Watch {
    ended: AtomicBool,
    /// How many times endings may have been missed.
    lags: AtomicU64,
    waker: AtomicWaker,
}

impl SessionWatchers {
    fn watches(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Vec<Arc<Watch>>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts watching `session_id`: the stream yields [`BusEvent::SessionEnded`] once it ends,
    /// and [`BusEvent::Lagged`] whenever an ending may have been missed.
    pub fn watch(&self, session_id: &SessionId) -> BusSubscription {
        let watch = Arc::new(Watch::default());
        // Most sessions have one connection: room for one, not the four a first push makes.
        self.watches()
            .entry(session_id.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(watch.clone());
        Box::pin(Watching {
            watch,
            lags_seen: 0,
            told_ended: false,
            watchers: self.clone(),
            session_id: session_id.clone(),
        })
    }

    /// Tells the watchers of these sessions that they ended.
    pub fn end(&self, session_ids: &[SessionId]) {
        let watches = self.watches();
        for watch in session_ids.iter().filter_map(|id| watches.get(id)).flatten() {
            watch.ended.store(true, Ordering::SeqCst);
            watch.waker.wake();
        }
    }

    /// Tells every watcher that endings may have been missed.
    pub fn lag_all(&self) {
        for watch in self.watches().values().flatten() {
            watch.lags.fetch_add(1, Ordering::SeqCst);
            watch.waker.wake();
        }
    }

    /// Number of sessions watched (for tests).
    pub fn watched(&self) -> usize {
        self.watches().len()
    }

    fn forget(&self, session_id: &SessionId, watch: &Arc<Watch>) {
        let mut watches = self.watches();
        if let Some(list) = watches.get_mut(session_id) {
            list.retain(|other| !Arc::ptr_eq(other, watch));
            if list.is_empty() {
                watches.remove(session_id);
            }
        }
    }
}

/// One watcher's stream; leaving it removes the watch.
struct Watching {
    watch: Arc<Watch>,
    lags_seen: u64,
    told_ended: bool,
    watchers: SessionWatchers,
    session_id: SessionId,
}

impl Stream for Watching {
    type Item = BusEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        self.watch.waker.register(cx.waker());
        if !self.told_ended && self.watch.ended.load(Ordering::SeqCst) {
            self.told_ended = true;
            return Poll::Ready(Some(BusEvent::SessionEnded));
        }
        let lags = self.watch.lags.load(Ordering::SeqCst);
        if lags != self.lags_seen {
            self.lags_seen = lags;
            return Poll::Ready(Some(BusEvent::Lagged));
        }
        Poll::Pending
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.watchers.forget(&self.session_id, &self.watch);
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn ready(stream: &mut BusSubscription) -> Option<BusEvent> {
        stream.next().now_or_never().flatten()
    }

    #[test]
    fn an_ending_reaches_its_own_watchers_only_and_a_lag_reaches_all() {
        let watchers = SessionWatchers::default();
        let (s1, s2) = (SessionId::new("s1"), SessionId::new("s2"));
        let mut first = watchers.watch(&s1);
        let mut second = watchers.watch(&s1);
        let mut other = watchers.watch(&s2);
        assert!(ready(&mut first).is_none());

        watchers.end(std::slice::from_ref(&s1));
        assert!(matches!(ready(&mut first), Some(BusEvent::SessionEnded)));
        assert!(matches!(ready(&mut second), Some(BusEvent::SessionEnded)));
        assert!(ready(&mut other).is_none());
        assert!(ready(&mut first).is_none(), "an ending is told once");

        watchers.lag_all();
        watchers.lag_all();
        assert!(matches!(ready(&mut other), Some(BusEvent::Lagged)));
        assert!(ready(&mut other).is_none(), "lags since the last poll are told once");
    }

    #[test]
    fn a_dropped_watch_is_forgotten() {
        let watchers = SessionWatchers::default();
        let session = SessionId::new("s1");
        let first = watchers.watch(&session);
        let second = watchers.watch(&session);
        drop(first);
        assert_eq!(watchers.watched(), 1);
        drop(second);
        assert_eq!(watchers.watched(), 0);
    }
}
