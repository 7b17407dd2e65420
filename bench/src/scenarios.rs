//! The scenarios besides plain delivery: idle connections, replay, login storm, chat list.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{
    client::{Route, Target, User, receive, subscribe_events},
    delivery::{DeliveryFigures, Pairs},
    server::Server,
};

/// Registers `count` users, `parallel` at a time, reporting progress.
async fn register_many(
    target: &Target,
    count: usize,
    parallel: usize,
) -> anyhow::Result<Vec<User>> {
    let done = AtomicU64::new(0);
    let users: Vec<anyhow::Result<User>> = stream::iter(0..count)
        .map(|_| async {
            let user = target.register().await;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 1000 == 0 {
                eprintln!("  registered {n}/{count} users");
            }
            user
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    users.into_iter().collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleFigures {
    pub connections: usize,
    /// Whether each connection also held a `chatEvents` subscription.
    pub with_events: bool,
    /// Messages each connection replayed on opening.
    pub backlog: usize,
    pub open_seconds: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_connection: f64,
    /// RSS with the first half open (and settled).
    pub rss_half_bytes: u64,
    /// What each connection of the second half added: the first half also pays what grows
    /// with use up to a bound (the store's page caches, the allocator's per-thread heaps), so
    /// this is nearer the cost of one more connection on a server that already holds many.
    pub bytes_per_connection_second_half: f64,
    /// Live delivery between 20 other pairs at 200 msg/s while every idle connection is open.
    pub live_while_open: DeliveryFigures,
}

/// Queues `per_user` messages for each of `users`, from 16 senders, 64 in flight.
async fn queue_backlogs(target: &Target, users: &[User], per_user: usize) -> anyhow::Result<()> {
    let senders = register_many(target, 16, 16).await?;
    let total = users.len() * per_user;
    eprintln!("  queueing {per_user} messages for each of them ({total} in all)");
    let results: Vec<anyhow::Result<()>> = stream::iter(0..total)
        .map(|n| {
            let route = Route {
                token: senders[n % senders.len()].token.clone(),
                recipient: users[n % users.len()].id.clone(),
            };
            async move { target.send(&route, &format!("backlog message {n}")).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Opens one authenticated `messageReceived` subscription (and `chatEvents`, with
/// `with_events`) per user, 128 at a time; `offset` spreads them over loopback sources.
async fn open_idle(
    target: &Target,
    users: &[User],
    offset: usize,
    with_events: bool,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    // Spread over 127.0.0.1..=127.0.0.8 (all loopback on Linux): ~28,000 ports each.
    let source = |n: usize| Some(std::net::IpAddr::from([127, 0, 0, 1 + (n % 8) as u8]));
    let opened: Vec<_> = stream::iter(users.iter().enumerate())
        .map(|(n, user)| async move {
            let mut ws = target.subscribe_from(&user.token, source(offset + n)).await?;
            if with_events {
                subscribe_events(&mut ws).await?;
            }
            // Read (and answer the server's pings) from the moment it is open: when opening
            // them all takes longer than the server's keep-alive, the first ones would
            // otherwise be dropped as silent.
            anyhow::Ok(tokio::spawn(async move {
                let _ = receive(ws, false, |_| {}).await;
            }))
        })
        .buffer_unordered(128)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// What the idle scenario opens.
pub struct IdleOptions {
    /// Connections, one user each.
    pub count: usize,
    /// Each also holds a `chatEvents` subscription.
    pub with_events: bool,
    /// How long to hold them open before measuring.
    pub hold: Duration,
    /// Messages queued for each user before it subscribes (replayed in one burst on opening).
    pub backlog: usize,
}

/// Opens `count` authenticated `messageReceived` subscriptions (one user each) and reads the
/// server's resident memory before, halfway and after.
pub async fn idle_connections(
    server: &Server,
    options: &IdleOptions,
) -> anyhow::Result<IdleFigures> {
    let &IdleOptions { count, with_events, hold, backlog } = options;
    let needed = count as u64 + 1024;
    let limit = crate::open_file_limit();
    if limit < needed {
        bail!(
            "{count} connections need about {needed} open files in this process and in the server; \
             the limit is {limit} and could not be raised (raise the hard limit: `ulimit -Hn`, \
             systemd LimitNOFILE=, or run with CAP_SYS_RESOURCE)"
        );
    }
    let target = Target::chat(&server.base_url, &server.label);
    eprintln!("  registering {count} users");
    let users = register_many(&target, count, 64).await?;
    if backlog > 0 {
        queue_backlogs(&target, &users, backlog).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss_bytes().context("idle memory needs the server's pid")?;
    eprintln!("  opening {count} subscriptions, in two halves");
    let (first, second) = users.split_at(count / 2);
    let started = Instant::now();
    let mut holders = open_idle(&target, first, 0, with_events).await?;
    let mut open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_half = server.rss_bytes().context("server memory")?;
    let started = Instant::now();
    holders.extend(open_idle(&target, second, first.len(), with_events).await?);
    open_time += started.elapsed();
    let open_seconds = open_time.as_secs_f64();
    // Let the server finish starting every subscription and settle (and wait for other copies
    // of this tool, with --idle-hold).
    if !hold.is_zero() {
        eprintln!("  holding them open for {:.0} s", hold.as_secs_f64());
    }
    tokio::time::sleep(Duration::from_secs(2) + hold).await;
    let rss_after = server.rss_bytes().context("server memory")?;
    eprintln!("  live delivery while they are open");
    let pairs = Pairs::open(&target, 20).await?;
    let live_while_open = pairs.measure(Some(200.0), 1, Duration::from_secs(5)).await;
    pairs.close();
    let alive = holders.iter().filter(|holder| !holder.is_finished()).count();
    for holder in holders {
        holder.abort();
    }
    if alive < count {
        bail!("only {alive} of {count} connections stayed open");
    }
    Ok(IdleFigures {
        connections: count,
        with_events,
        backlog,
        open_seconds,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        bytes_per_connection: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        rss_half_bytes: rss_half,
        bytes_per_connection_second_half: rss_after.saturating_sub(rss_half) as f64
            / second.len().max(1) as f64,
        live_while_open,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayFigures {
    pub messages: usize,
    pub queue_seconds: f64,
    pub queued_per_second: f64,
    pub replay_seconds: f64,
    pub replayed_per_second: f64,
}

/// Queues `count` messages for one offline user, then subscribes and times the backlog.
pub async fn replay(server: &Server, count: usize) -> anyhow::Result<ReplayFigures> {
    let target = Target::chat(&server.base_url, &server.label);
    let recipient = target.register().await?;
    let senders = register_many(&target, 16, 16).await?;
    eprintln!("  queueing {count} messages");
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..count)
        .map(|n| {
            let route = Route {
                token: senders[n % senders.len()].token.clone(),
                recipient: recipient.id.clone(),
            };
            let target = target.clone();
            async move { target.send(&route, &format!("backlog {n}")).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let queue_seconds = started.elapsed().as_secs_f64();

    eprintln!("  replaying");
    let received = Arc::new(AtomicU64::new(0));
    let drained = Arc::new(Notify::new());
    let started = Instant::now();
    let ws = target.subscribe(&recipient.token).await?;
    let counter = received.clone();
    let notify = drained.clone();
    let reader = tokio::spawn(async move {
        let _ = receive(ws, false, |_| {
            if counter.fetch_add(1, Ordering::Relaxed) + 1 == count as u64 {
                notify.notify_one();
            }
        })
        .await;
    });
    let finished = tokio::time::timeout(Duration::from_secs(300), drained.notified()).await;
    let replay_seconds = started.elapsed().as_secs_f64();
    reader.abort();
    if finished.is_err() {
        bail!("replay stalled at {} of {count}", received.load(Ordering::Relaxed));
    }
    Ok(ReplayFigures {
        messages: count,
        queue_seconds,
        queued_per_second: count as f64 / queue_seconds,
        replay_seconds,
        replayed_per_second: count as f64 / replay_seconds,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct StormFigures {
    /// The server's bcrypt cost, when this tool set it (`None`: an external server's own).
    pub bcrypt_cost: Option<u32>,
    pub login_workers: usize,
    pub logins_per_second: f64,
    pub quiet: DeliveryFigures,
    pub storm: DeliveryFigures,
    pub p99_ratio: f64,
}

/// Delivery p99 at `rate`, quiet and then while `workers` clients log in back to back.
pub async fn login_storm(
    server: &Server,
    pairs: usize,
    rate: f64,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<StormFigures> {
    let target = Target::chat(&server.base_url, &server.label);
    let pairs = Pairs::open(&target, pairs).await?;
    let quiet = pairs.measure(Some(rate), 1, duration).await;
    let victims = register_many(&target, workers, 8).await?;
    let logins = Arc::new(AtomicU64::new(0));
    let hammer: Vec<_> = victims
        .into_iter()
        .map(|user| {
            let (target, logins) = (target.clone(), logins.clone());
            tokio::spawn(async move {
                loop {
                    if target.login(&user).await.is_ok() {
                        logins.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = logins.load(Ordering::Relaxed);
    let started = Instant::now();
    let storm = pairs.measure(Some(rate), 1, duration).await;
    let logins_per_second =
        (logins.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    for task in hammer {
        task.abort();
    }
    pairs.close();
    Ok(StormFigures {
        bcrypt_cost: None,
        login_workers: workers,
        logins_per_second,
        p99_ratio: storm.p99_ms / quiet.p99_ms.max(0.001),
        quiet,
        storm,
    })
}

/// Latency of one kind of request, over repeated sequential requests.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatListFigures {
    pub conversations: usize,
    pub build_seconds: f64,
    /// `conversations(first: 20)`.
    pub first_page: Latency,
    /// How many conversations precede the deep page.
    pub deep_offset: usize,
    /// `conversations(first: 20, after: <cursor deep in the list>)`.
    pub deep_page: Latency,
    /// The first page of a user with a single conversation, for comparison.
    pub small_list: Latency,
}

/// Gives one user `count` conversations (one message from each of `count` users), then times
/// reading their chat list: the first page, a page deep in the list, and a one-conversation
/// list. If reading is O(page), the three are about the same.
pub async fn chat_list(server: &Server, count: usize) -> anyhow::Result<ChatListFigures> {
    let target = Target::chat(&server.base_url, &server.label);
    let owner = target.register().await?;
    eprintln!("  registering {count} users");
    let friends = register_many(&target, count, 64).await?;
    let started = Instant::now();
    let sent: Vec<anyhow::Result<Value>> = stream::iter(&friends)
        .map(|friend| {
            let input = json!({ "recipientId": owner.id, "content": "hello" });
            target.graphql("SendMessage", json!({ "input": input }), Some(&friend.token))
        })
        .buffer_unordered(64)
        .collect()
        .await;
    sent.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let build_seconds = started.elapsed().as_secs_f64();

    // Walk to a page about nine tenths of the way down.
    let deep_offset = count.saturating_sub(20) * 9 / 10;
    let mut after: Option<String> = None;
    let mut walked = 0;
    while walked < deep_offset {
        let first = (deep_offset - walked).min(100);
        let page = read_chat_list(&target, &owner.token, first, after.as_deref()).await?;
        after = page["pageInfo"]["endCursor"].as_str().map(String::from);
        walked += first;
    }
    let requests = 200;
    let first_page =
        time_requests(requests, || read_chat_list(&target, &owner.token, 20, None)).await?;
    let deep_page =
        time_requests(requests, || read_chat_list(&target, &owner.token, 20, after.as_deref()))
            .await?;
    let small_list =
        time_requests(requests, || read_chat_list(&target, &friends[0].token, 20, None)).await?;
    Ok(ChatListFigures {
        conversations: count,
        build_seconds,
        first_page,
        deep_offset,
        deep_page,
        small_list,
    })
}

async fn read_chat_list(
    target: &Target,
    token: &str,
    first: usize,
    after: Option<&str>,
) -> anyhow::Result<Value> {
    let variables = json!({ "first": first, "after": after });
    let data = target.graphql("ChatList", variables, Some(token)).await?;
    let edges = data["conversations"]["edges"].as_array().map_or(0, Vec::len);
    if edges == 0 {
        bail!("an empty chat-list page");
    }
    Ok(data["conversations"].clone())
}

async fn time_requests<F, Fut>(requests: usize, mut request: F) -> anyhow::Result<Latency>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Value>>,
{
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        request().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Latency { requests, p50_ms: at(0.5), p99_ms: at(0.99) })
}
