//! The accept loop: HTTP/1.1 connections (and their upgrades to websockets) with the limits
//! `axum::serve` cannot set. It gives hyper a timer, so a connection that does not finish its
//! request headers (or, kept alive, does not start the next request) within
//! `HTTP_HEADER_READ_TIMEOUT` is closed: silent and slowloris connections no longer pile up.
//! It caps open connections, globally and per client address, and stops accepting when the
//! shutdown begins, letting each connection finish its request in flight.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// Limits on HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a request's headers, and for the next request on a kept-alive
    /// connection (`HTTP_HEADER_READ_TIMEOUT`).
    pub header_read_timeout: Duration,
    /// Most connections open at once, websockets included (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Most connections open at once from one address (`MAX_CONNECTIONS_PER_ADDRESS`); 0 for
    /// no limit (behind a proxy every connection has the proxy's address).
    pub max_connections_per_address: usize,
}

/// Open connections, in total and per address.
#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Accepts connections on `listener` and serves `router` on them until `shutdown` begins.
pub async fn accept(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut last_warning: Option<std::time::Instant> = None;
    let stopping = shutdown.clone();
    let stopping = stopping.started();
    tokio::pin!(stopping);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, usually: wait for some to be freed rather than spin,
                    // and say so every ten seconds rather than ten times a second.
                    if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(%error, "cannot accept connections");
                        last_warning = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopping => return,
        };
        let Some(slot) = ConnectionSlot::take(&open, peer.ip(), &limits) else {
            tracing::debug!(%peer, "connection refused: too many open");
            continue;
        };
        let hold = ConnectionHold { _slot: Arc::new(slot) };
        let guard = shutdown.connection_opened();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _counted = guard;
            serve_connection(stream, peer, hold, router, limits, shutdown).await;
        });
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    hold: ConnectionHold,
    router: Router,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Resolvers read the client address through axum's ConnectInfo; a websocket upgrade
        // takes the connection's place under the caps along (see `ConnectionHold`).
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(hold.clone());
        router.clone().oneshot(request.map(Body::new))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        }
        () = shutdown.started() => {
            // Finish the request in flight, then close.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// A connection's place under the caps, shared by its HTTP task and, after an upgrade, its
/// websocket (which outlives the HTTP task): the place is given back when both are done.
#[derive(Clone)]
pub struct ConnectionHold {
    _slot: Arc<ConnectionSlot>,
}

/// A connection's place under the caps, given back when it closes.
struct ConnectionSlot {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl ConnectionSlot {
    fn take(open: &Arc<Mutex<Open>>, address: IpAddr, limits: &ConnectionLimits) -> Option<Self> {
        let mut counts = open.lock().unwrap_or_else(|p| p.into_inner());
        let from_address = counts.by_address.get(&address).copied().unwrap_or(0);
        let per_address = limits.max_connections_per_address;
        if counts.total >= limits.max_connections
            || (per_address > 0 && from_address >= per_address)
        {
            return None;
        }
        counts.total += 1;
        *counts.by_address.entry(address).or_default() += 1;
        Some(ConnectionSlot { open: open.clone(), address })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

/// Warns when the process may open fewer files than the connection cap needs.
pub fn warn_if_descriptors_are_short(limits: &ConnectionLimits) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct it is given and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            let needed =
                libc::rlim_t::try_from(limits.max_connections).unwrap_or(libc::rlim_t::MAX);
            if limit.rlim_cur < needed.saturating_add(256) {
                tracing::warn!(
                    open_files = limit.rlim_cur,
                    max_connections = limits.max_connections,
                    "the open-file limit is below MAX_CONNECTIONS (+256 for the store and logs): raise it (ulimit -n, LimitNOFILE=) or lower MAX_CONNECTIONS, or connections will fail with 'Too many open files' before the cap refuses them"
                );
            }
        }
    }
}
