//! One topic's fan-out to its local subscribers: a broadcast channel that holds memory only
//! while events are waiting to be read.
//!
//! tokio's `broadcast` allocates every slot of its ring when the channel is made (a 16-event
//! inbox is ~770 bytes, a 64-event events topic ~3 KiB) and keeps them for the channel's life,
//! so every idle connection paid for a burst it was not having. Here a topic holds the events
//! some subscriber has not read yet, at most `capacity` of them, and lets the buffer go once
//! every subscriber has caught up. A subscriber that falls more than `capacity` behind hears
//! [`BusEvent::Lagged`] once and goes on from the oldest event still held, as with tokio's.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use super::BusEvent;

/// A topic's events and readers. A std mutex: held for a few field updates, never across an
/// `.await`.
pub(super) struct Fanout {
    state: Mutex<State>,
}

struct State {
    /// Events not yet read by every reader, oldest first.
    events: VecDeque<BusEvent>,
    /// Sequence number of `events[0]`; the next event sent gets `first + events.len()`.
    first: u64,
    /// Most events held; past it the oldest goes, and readers that had not read it lag.
    capacity: usize,
    readers: Vec<Reader>,
    next_reader: u64,
}

struct Reader {
    id: u64,
    /// Sequence number of the next event this reader takes.
    next: u64,
    waker: Option<Waker>,
}

impl Fanout {
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        let state = State {
            events: VecDeque::new(),
            first: 0,
            capacity: capacity.max(1),
            readers: Vec::new(),
            next_reader: 0,
        };
        Arc::new(Fanout { state: Mutex::new(state) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new reader, hearing events sent from now on; its id for [`Fanout::poll`].
    pub(super) fn join(&self) -> u64 {
        let mut state = self.state();
        let id = state.next_reader;
        state.next_reader += 1;
        let next = state.first + state.events.len() as u64;
        if state.readers.capacity() == 0 {
            // Most topics have one reader (one connection of one user): no spare slots.
            state.readers.reserve_exact(1);
        }
        state.readers.push(Reader { id, next, waker: None });
        id
    }

    /// Removes reader `id`; returns how many readers are left.
    pub(super) fn leave(&self, id: u64) -> usize {
        let mut state = self.state();
        state.readers.retain(|reader| reader.id != id);
        state.trim();
        state.readers.len()
    }

    /// How many readers there are.
    pub(super) fn readers(&self) -> usize {
        self.state().readers.len()
    }

    /// Hands `event` to every reader; nobody listening, nothing kept.
    pub(super) fn send(&self, event: BusEvent) {
        let mut state = self.state();
        if state.readers.is_empty() {
            return;
        }
        state.events.push_back(event);
        if state.events.len() > state.capacity {
            state.events.pop_front();
            state.first += 1;
        }
        for reader in &mut state.readers {
            if let Some(waker) = reader.waker.take() {
                waker.wake();
            }
        }
    }

    /// Reader `id`'s next event, or `Pending` (woken by the next send).
    pub(super) fn poll(&self, id: u64, cx: &mut Context<'_>) -> Poll<BusEvent> {
        let mut state = self.state();
        let (first, end) = (state.first, state.first + state.events.len() as u64);
        let Some(reader) = state.readers.iter_mut().find(|reader| reader.id == id) else {
            // Not joined (cannot happen): nothing will come.
            return Poll::Pending;
        };
        if reader.next < first {
            reader.next = first;
            return Poll::Ready(BusEvent::Lagged);
        }
        if reader.next == end {
            if !reader.waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                reader.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let index = (reader.next - first) as usize;
        reader.next += 1;
        let event = state.events[index].clone();
        state.trim();
        Poll::Ready(event)
    }
}

impl State {
    /// Drops the events every reader has read, and the buffer once it is empty.
    fn trim(&mut self) {
        let end = self.first + self.events.len() as u64;
        let read_by_all = self.readers.iter().map(|reader| reader.next).min().unwrap_or(end);
        while self.first < read_by_all && self.events.pop_front().is_some() {
            self.first += 1;
        }
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::domain::SessionId;

    fn event(n: usize) -> BusEvent {
        BusEvent::SessionsEnded(vec![SessionId::new(format!("s{n}"))].into())
    }

    fn label(event: Poll<BusEvent>) -> String {
        match event {
            Poll::Ready(BusEvent::SessionsEnded(ids)) => ids[0].as_str().to_string(),
            Poll::Ready(BusEvent::Lagged) => "lagged".to_string(),
            Poll::Ready(other) => format!("{other:?}"),
            Poll::Pending => "pending".to_string(),
        }
    }

    fn next(fanout: &Fanout, reader: u64) -> String {
        label(fanout.poll(reader, &mut Context::from_waker(Waker::noop())))
    }

    #[test]
    fn every_reader_hears_what_was_sent_after_it_joined_in_order() {
        let fanout = Fanout::new(4);
        let early = fanout.join();
        fanout.send(event(1));
        let late = fanout.join();
        fanout.send(event(2));
        assert_eq!([next(&fanout, early), next(&fanout, early)], ["s1", "s2"]);
        assert_eq!(next(&fanout, early), "pending");
        assert_eq!([next(&fanout, late), next(&fanout, late)], ["s2", "pending"]);
    }

    #[test]
    fn a_reader_that_falls_behind_lags_once_then_goes_on_from_the_oldest_held() {
        let fanout = Fanout::new(2);
        let slow = fanout.join();
        let fast = fanout.join();
        for n in 1..=3 {
            fanout.send(event(n));
            assert_eq!(next(&fanout, fast), format!("s{n}"));
        }
        assert_eq!(next(&fanout, slow), "lagged");
        assert_eq!([next(&fanout, slow), next(&fanout, slow)], ["s2", "s3"]);
        assert_eq!(next(&fanout, slow), "pending");
    }

    #[test]
    fn memory_is_held_only_while_some_reader_has_not_read() {
        let fanout = Fanout::new(16);
        let (a, b) = (fanout.join(), fanout.join());
        fanout.send(event(1));
        assert_eq!(next(&fanout, a), "s1");
        assert_eq!(fanout.state().events.len(), 1, "b has not read it");
        assert_eq!(next(&fanout, b), "s1");
        assert_eq!(fanout.state().events.capacity(), 0, "read by all: the buffer is gone");
        fanout.send(event(2));
        assert_eq!(fanout.leave(b), 1);
        assert_eq!(fanout.state().events.len(), 1);
        assert_eq!(fanout.leave(a), 0);
        assert_eq!(fanout.state().events.capacity(), 0, "nobody left to read it");
        fanout.send(event(3));
        assert_eq!(fanout.state().events.len(), 0, "nobody listening, nothing kept");
    }

    #[test]
    fn a_send_wakes_a_waiting_reader() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let fanout = Fanout::new(4);
        let reader = fanout.join();
        assert!(fanout.poll(reader, &mut Context::from_waker(&waker)).is_pending());
        fanout.send(event(1));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(next(&fanout, reader), "s1");
    }
}
