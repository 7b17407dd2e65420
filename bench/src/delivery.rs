//! Delivery: sender/recipient pairs, every send a request, every receipt a websocket frame.
//! Latency is from just before the send request to the moment the recipient reads the frame;
//! each message carries its send time, so nothing has to be matched up afterwards.

use std::{
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::client::{Route, Target, receive};

/// The one clock every send time and receipt is read from.
static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_micros() -> u64 {
    CLOCK.elapsed().as_micros() as u64
}

/// Latency percentiles and counts of one measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryFigures {
    pub target: String,
    /// `None` at saturation.
    pub offered_per_second: Option<f64>,
    pub sent: u64,
    pub delivered: u64,
    pub send_errors: u64,
    pub delivered_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What receivers record into.
struct Receipts {
    latencies: Mutex<Histogram<u64>>,
    received: AtomicU64,
    last_receipt_micros: AtomicU64,
}

impl Receipts {
    fn new() -> Self {
        Receipts {
            latencies: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()),
            received: AtomicU64::new(0),
            last_receipt_micros: AtomicU64::new(0),
        }
    }

    fn record(&self, content: &str) {
        let now = now_micros();
        let Some(sent_at) = content.strip_prefix('t').and_then(|t| t.parse::<u64>().ok()) else {
            return;
        };
        let _ = self.latencies.lock().unwrap().record(now.saturating_sub(sent_at).max(1));
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_receipt_micros.fetch_max(now, Ordering::Relaxed);
    }

    fn reset(&self) {
        self.latencies.lock().unwrap().reset();
        self.received.store(0, Ordering::Relaxed);
    }
}

/// Pairs with their recipients listening.
pub struct Pairs {
    target: Target,
    routes: Vec<Route>,
    receipts: Arc<Receipts>,
    receivers: Vec<JoinHandle<()>>,
}

impl Pairs {
    /// Registers `count` pairs and subscribes every recipient.
    pub async fn open(target: &Target, count: usize) -> anyhow::Result<Self> {
        let receipts = Arc::new(Receipts::new());
        let opened: Vec<_> =
            stream::iter(0..count).map(|n| target.pair(n)).buffer_unordered(16).collect().await;
        let mut routes = Vec::new();
        let mut receivers = Vec::new();
        let baseline = matches!(target, Target::Baseline { .. });
        for pair in opened {
            let (route, ws) = pair?;
            routes.push(route);
            let receipts = receipts.clone();
            receivers.push(tokio::spawn(async move {
                if let Err(error) = receive(ws, baseline, |content| receipts.record(content)).await
                {
                    eprintln!("receiver stopped: {error:#}");
                }
            }));
        }
        // Let every subscription reach the server's live stream before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pairs = Pairs { target: target.clone(), routes, receipts, receivers };
        // Warm up (connection pools, caches, the database file) so the first measurement is not
        // the odd one out; its figures are discarded.
        pairs.measure(None, 1, Duration::from_secs(1)).await;
        Ok(pairs)
    }

    /// Sends at `rate` messages per second in all (open loop: a slow answer does not slow the
    /// offered rate), or with `in_flight` requests per pair back to back when `rate` is `None`.
    pub async fn measure(
        &self,
        rate: Option<f64>,
        in_flight: usize,
        duration: Duration,
    ) -> DeliveryFigures {
        self.receipts.reset();
        let sends = Arc::new(Sends::default());
        let started = Instant::now();
        let start_micros = now_micros();
        let label = match rate {
            Some(rate) => format!("{} at {rate:.0} msg/s", self.target.name()),
            None => format!("{} at saturation", self.target.name()),
        };
        let progress = self.progress(label, sends.clone(), duration);
        let mut senders = Vec::new();
        for route in &self.routes {
            let lanes = if rate.is_some() { 1 } else { in_flight };
            for _ in 0..lanes {
                let (target, route) = (self.target.clone(), route.clone());
                let sends = sends.clone();
                let interval =
                    rate.map(|rate| Duration::from_secs_f64(self.routes.len() as f64 / rate));
                senders.push(tokio::spawn(async move {
                    send_loop(target, route, interval, started + duration, sends).await;
                }));
            }
        }
        for sender in senders {
            let _ = sender.await;
        }
        // Wait for what is still in flight (bounded, so a lost message cannot hang the run).
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.receipts.received.load(Ordering::Relaxed) < sends.sent.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        progress.abort();
        let latencies = self.receipts.latencies.lock().unwrap().clone();
        let delivered = self.receipts.received.load(Ordering::Relaxed);
        let last = self.receipts.last_receipt_micros.load(Ordering::Relaxed);
        let elapsed = Duration::from_micros(last.saturating_sub(start_micros)).max(duration);
        let ms = |micros: u64| micros as f64 / 1000.0;
        DeliveryFigures {
            target: self.target.name().to_string(),
            offered_per_second: rate,
            sent: sends.sent.load(Ordering::Relaxed),
            delivered,
            send_errors: sends.errors.load(Ordering::Relaxed),
            delivered_per_second: delivered as f64 / elapsed.as_secs_f64(),
            p50_ms: ms(latencies.value_at_quantile(0.50)),
            p99_ms: ms(latencies.value_at_quantile(0.99)),
            max_ms: ms(latencies.max()),
        }
    }

    fn progress(&self, label: String, sends: Arc<Sends>, duration: Duration) -> JoinHandle<()> {
        let receipts = self.receipts.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "  [{label}] {:.0}/{:.0} s: sent {}, delivered {}",
                    started.elapsed().as_secs_f64().min(duration.as_secs_f64()),
                    duration.as_secs_f64(),
                    sends.sent.load(Ordering::Relaxed),
                    receipts.received.load(Ordering::Relaxed),
                );
            }
        })
    }

    /// Closes every recipient connection.
    pub fn close(self) {
        for receiver in self.receivers {
            receiver.abort();
        }
    }
}

/// Sends of one measurement: `sent` counts those started and not failed (so the wait for
/// receipts knows what to expect as soon as a send starts), `errors` the failed ones.
#[derive(Default)]
struct Sends {
    sent: AtomicU64,
    errors: AtomicU64,
}

impl Sends {
    /// Counts a send as started, before it is awaited or spawned.
    fn start(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one message stamped with its send time; a failure moves it from sent to errors.
    async fn send(&self, target: &Target, route: &Route) {
        if target.send(route, &format!("t{}", now_micros())).await.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.sent.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn send_loop(
    target: Target,
    route: Route,
    interval: Option<Duration>,
    until: Instant,
    sends: Arc<Sends>,
) {
    let Some(interval) = interval else {
        while Instant::now() < until {
            sends.start();
            sends.send(&target, &route).await;
        }
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Pairs start at random offsets within one interval, not all at once.
    tokio::time::sleep(interval.mul_f64(rand_fraction())).await;
    while Instant::now() < until {
        ticks.tick().await;
        sends.start();
        let (target, route, sends) = (target.clone(), route.clone(), sends.clone());
        tokio::spawn(async move { sends.send(&target, &route).await });
    }
}

fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}
