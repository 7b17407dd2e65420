//! Graceful shutdown: on SIGTERM the server stops accepting, tells every websocket to go
//! (close 1012, Service Restart, which `graphql-ws` clients reconnect after, to this server once
//! it is back or to another instance), lets in-flight requests finish, and exits within
//! `SHUTDOWN_TIMEOUT` whatever clients do.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

/// Shared between the serve loop (which starts the shutdown) and every websocket (which
/// watches for it and is counted until it has said goodbye).
#[derive(Clone)]
pub struct Shutdown {
    started: Arc<watch::Sender<bool>>,
    open_connections: Arc<AtomicUsize>,
    connection_closed: Arc<Notify>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            started: Arc::new(watch::channel(false).0),
            open_connections: Arc::default(),
            connection_closed: Arc::default(),
        }
    }
}

impl Shutdown {
    /// Starts the shutdown; every websocket's [`Shutdown::started`] resolves.
    pub fn begin(&self) {
        self.started.send_replace(true);
    }

    /// Resolves once the shutdown has begun.
    pub async fn started(&self) {
        let mut started = self.started.subscribe();
        // Only errs if the sender is gone, which `self` prevents.
        let _ = started.wait_for(|started| *started).await;
    }

    /// [`Shutdown::started`] as a future that borrows nothing, for a loop that also needs its
    /// owner mutably.
    pub fn started_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut started = self.started.subscribe();
        async move {
            // Only errs if every sender is gone: then nobody can start a shutdown.
            if started.wait_for(|started| *started).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Counts a connection (an HTTP connection, or a websocket after its upgrade) as open until
    /// the returned guard is dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.open_connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    /// Resolves when no connection is open.
    pub async fn connections_closed(&self) {
        loop {
            let closed = self.connection_closed.notified();
            if self.open_connections.load(Ordering::Acquire) == 0 {
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

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.0.connection_closed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
