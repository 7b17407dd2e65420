//! Graceful shutdown: on SIGTERM the server stops accepting, tells every websocket to go
//! (close 1012, Service Restart, which `graphql-ws` clients reconnect after, to this server once
//! it is back or to another instance), lets in-flight requests finish, and exits within
//! `SHUTDOWN_TIMEOUT` whatever clients do.

use std::{
    future::Ready,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::Either;
use tokio::sync::{Notify, futures::OwnedNotified};

/// Shared between the serve loop (which starts the shutdown) and every websocket (which
/// watches for it and is counted until it has said goodbye). One pointer: every open
/// connection holds a copy.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<State>);

#[derive(Default)]
struct State {
    started: AtomicBool,
    /// Woken once, when the shutdown begins. In an `Arc` of its own so that a waiting
    /// websocket holds a `Notified` that borrows nothing.
    starting: Arc<Notify>,
    open_connections: AtomicUsize,
    connection_closed: Notify,
}

impl Shutdown {
    /// Starts the shutdown; every [`Shutdown::started`] resolves.
    pub fn begin(&self) {
        self.0.started.store(true, Ordering::SeqCst);
        self.0.starting.notify_waiters();
    }

    /// Resolves once the shutdown has begun. Borrows nothing, so a loop that also needs its
    /// owner mutably can hold it; 72 bytes (a `watch` receiver's `wait_for` was 168), which
    /// every idle websocket keeps for its whole life.
    pub fn started(&self) -> Either<Ready<()>, OwnedNotified> {
        // A `Notified` hears every `notify_waiters` from its creation on, polled or not, so
        // checking the flag after creating it cannot miss a shutdown begun in between.
        let starting = self.0.starting.clone().notified_owned();
        if self.0.started.load(Ordering::SeqCst) {
            Either::Left(std::future::ready(()))
        } else {
            Either::Right(starting)
        }
    }

    /// Counts a connection (an HTTP connection, or a websocket after its upgrade) as open until
    /// the returned guard is dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.0.open_connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    /// Resolves when no connection is open.
    pub async fn connections_closed(&self) {
        loop {
            let closed = self.0.connection_closed.notified();
            if self.0.open_connections.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Waits for `server` (which stops accepting once the shutdown has begun) and for every
    /// connection to close, but no longer than `drain` after the shutdown began.
    pub async fn drain<T>(&self, server: impl Future<Output = T>, drain: Duration) -> Option<T> {
        let everything = async {
            let result = server.await;
            self.connections_closed().await;
            result
        };
        let deadline = async {
            self.started().await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            result = everything => Some(result),
            () = deadline => {
                tracing::warn!(?drain, "shutdown timeout: exiting with connections still open");
                None
            }
        }
    }
}

/// An open connection, for [`Shutdown::connections_closed`].
pub struct ConnectionGuard(Shutdown);

impl ConnectionGuard {
    /// [`Shutdown::started`], for a connection that holds nothing else of the shutdown.
    pub fn shutdown_started(&self) -> Either<Ready<()>, OwnedNotified> {
        self.0.started()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let state = &(self.0).0;
        state.open_connections.fetch_sub(1, Ordering::AcqRel);
        state.connection_closed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn started_resolves_for_waiters_made_before_and_after_the_shutdown_began() {
        let shutdown = Shutdown::default();
        let mut early = Box::pin(shutdown.started());
        let unpolled = shutdown.started();
        assert!(futures::poll!(early.as_mut()).is_pending(), "nothing has begun");
        shutdown.begin();
        early.await;
        unpolled.await;
        shutdown.started().await;
    }

    #[tokio::test]
    async fn drain_waits_for_websockets_but_not_forever() {
        let shutdown = Shutdown::default();
        let guard = shutdown.connection_opened();
        shutdown.begin();
        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.drain(async { 7 }, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "an open connection holds the drain");
        drop(guard);
        assert_eq!(waiting.await.unwrap(), Some(7));

        let _stuck = shutdown.connection_opened();
        let gave_up = shutdown.drain(async { 7 }, Duration::from_millis(50)).await;
        assert_eq!(gave_up, None);
    }
}
