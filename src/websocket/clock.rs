//! A connection's deadlines on one timer: `connection_init`, the next keep-alive ping and the
//! token's expiry. A tokio timer is a boxed `Sleep` of about 110 bytes held for the
//! connection's whole life; one serves all three.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// What came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// `connection_init` did not come in time.
    InitTimeout,
    /// The token expired.
    Expired,
    /// Time for a keep-alive ping.
    Ping,
}

pub(super) struct Clock {
    /// Set for the earliest of the three deadlines.
    timer: Pin<Box<Sleep>>,
    /// Until `connection_init` comes.
    init_by: Option<Instant>,
    next_ping: Instant,
    /// Once authenticated.
    expires_at: Option<Instant>,
    ping_interval: Duration,
}

impl Clock {
    /// A clock for a new connection: `connection_init` is due within `init_timeout`, the first
    /// ping after `ping_interval`.
    pub(super) fn new(init_timeout: Duration, ping_interval: Duration) -> Self {
        let now = Instant::now();
        let (init_by, next_ping) = (now + init_timeout, now + ping_interval);
        Clock {
            timer: Box::pin(tokio::time::sleep_until(init_by.min(next_ping))),
            init_by: Some(init_by),
            next_ping,
            expires_at: None,
            ping_interval,
        }
    }

    /// How often a ping is due.
    pub(super) fn ping_interval(&self) -> Duration {
        self.ping_interval
    }

    /// `connection_init` came: its deadline no longer applies.
    pub(super) fn init_received(&mut self) {
        self.init_by = None;
        self.rearm();
    }

    /// The connection must end at `at` (its token's expiry).
    pub(super) fn expire_at(&mut self, at: Instant) {
        self.expires_at = Some(at);
        self.rearm();
    }

    /// The first deadline that has passed, in the order above; pending until one does.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let due = if self.init_by.is_some_and(|at| now >= at) {
                Some(Due::InitTimeout)
            } else if self.expires_at.is_some_and(|at| now >= at) {
                Some(Due::Expired)
            } else if now >= self.next_ping {
                self.next_ping += self.ping_interval;
                if self.next_ping <= now {
                    // Late (a busy runtime): the next one an interval from now, not a burst.
                    self.next_ping = now + self.ping_interval;
                }
                Some(Due::Ping)
            } else {
                None
            };
            // A fired timer stays fired: set it again (for a later deadline once one is due),
            // and poll it again so it wakes this task.
            let earliest = self.earliest();
            self.timer.as_mut().reset(earliest);
            if let Some(due) = due {
                return Poll::Ready(due);
            }
        }
    }

    fn earliest(&self) -> Instant {
        [self.init_by, self.expires_at].into_iter().flatten().fold(self.next_ping, Instant::min)
    }

    /// Sets the timer for the earliest deadline, if that changed.
    fn rearm(&mut self) {
        let earliest = self.earliest();
        if earliest != self.timer.deadline() {
            self.timer.as_mut().reset(earliest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn poll(clock: &mut Clock) -> Poll<Due> {
        clock.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn each_deadline_comes_due_in_its_turn() {
        let mut clock = Clock::new(Duration::from_secs(3), Duration::from_secs(15));
        assert!(poll(&mut clock).is_pending());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(poll(&mut clock), Poll::Ready(Due::InitTimeout));

        let mut clock = Clock::new(Duration::from_secs(3), Duration::from_secs(15));
        clock.init_received();
        clock.expire_at(Instant::now() + Duration::from_secs(40));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(poll(&mut clock).is_pending(), "init came: no timeout");
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(poll(&mut clock), Poll::Ready(Due::Ping));
        assert!(poll(&mut clock).is_pending(), "one ping per interval");
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(poll(&mut clock), Poll::Ready(Due::Ping));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(poll(&mut clock), Poll::Ready(Due::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_ping_is_not_followed_by_a_burst() {
        let mut clock = Clock::new(Duration::from_secs(3), Duration::from_secs(15));
        clock.init_received();
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(poll(&mut clock), Poll::Ready(Due::Ping));
        assert!(poll(&mut clock).is_pending());
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(poll(&mut clock), Poll::Ready(Due::Ping));
    }
}
