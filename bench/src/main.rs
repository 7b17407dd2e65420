//! `loadtest`: how fast chatapp delivers, how much an idle subscription costs, how fast a
//! backlog replays, what a login storm does to delivery, each next to a bare websocket
//! baseline, and how the chat list reads with thousands of conversations. See BENCHMARKS.md
//! for the figures and how to read them.

mod baseline;
mod client;
mod delivery;
mod scenarios;
mod server;
mod wire;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{
    client::Target,
    delivery::{DeliveryFigures, Pairs},
    scenarios::{ChatListFigures, IdleFigures, ReplayFigures, StormFigures},
    server::Server,
};

/// Load generator for chatapp. By default it starts a fresh chatapp server per scenario (the
/// release binary beside this tool, data in a temporary directory) and the baseline server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The chatapp binary to start (default: `chatapp` beside this tool; build it with
    /// `cargo build --release --workspace`).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// A second chatapp binary (an older build, say) to run the delivery scenario against
    /// too, right after the first, so one run compares the two; its rows say `compare`.
    #[arg(long)]
    compare_bin: Option<PathBuf>,
    /// Drive an already running server instead (e.g. http://127.0.0.1:5000). It must allow
    /// the load: raise RATE_LIMIT_* and WS_MAX_CONNECTIONS_PER_USER.
    #[arg(long)]
    server_url: Option<String>,
    /// Process id of the --server-url server, for the idle-connection memory figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Scenarios to run, comma separated: delivery, multi (two instances over Redis: senders
    /// through A, recipients on B; needs redis-server), multi-cluster (the same over a Redis
    /// Cluster of three primaries; also needs redis-cli), wire (what a bus event costs, next to
    /// the store read it saves), baseline, idle, replay, storm, chatlist.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "delivery,multi,wire,baseline,idle,replay,storm,chatlist"
    )]
    scenarios: Vec<String>,
    /// Conversations of the one user whose chat list is read in the chatlist scenario.
    #[arg(long, default_value_t = 10_000)]
    conversations: usize,
    /// Sender/recipient pairs for delivery.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Offered rate for the fixed-rate delivery run, messages per second in all.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Requests in flight per pair at saturation.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Seconds each delivery measurement sends for.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Idle subscriptions to open.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Each idle connection also holds a `chatEvents` subscription, as a chat client does.
    #[arg(long)]
    idle_events: bool,
    /// Seconds to hold the idle connections open before measuring, so that several copies of
    /// the tool driving several instances (a descriptor limit per process caps each) have all
    /// of theirs open at once.
    #[arg(long, default_value_t = 0.0)]
    idle_hold: f64,
    /// Messages queued for each idle user before it subscribes: its connection replays them
    /// in one burst, then idles (what a client reconnecting after a busy hour costs).
    #[arg(long, default_value_t = 0)]
    idle_backlog: usize,
    /// Messages to queue and replay.
    #[arg(long, default_value_t = 100_000)]
    replay: usize,
    /// Clients logging in back to back during the storm.
    #[arg(long, default_value_t = 32)]
    storm_workers: usize,
    /// Offered delivery rate during the storm measurement, messages per second.
    #[arg(long, default_value_t = 500.0)]
    storm_rate: f64,
    /// bcrypt cost of the server in the storm (the production default is 12).
    #[arg(long, default_value_t = 12)]
    storm_bcrypt_cost: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A few seconds at a tiny size, to prove the tool works (what CI runs).
    #[arg(long)]
    smoke: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the baseline fan-out (started by the tool itself).
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Debug, Default, Serialize)]
struct Report {
    delivery: Vec<DeliveryFigures>,
    idle: Option<IdleFigures>,
    replay: Option<ReplayFigures>,
    storm: Option<StormFigures>,
    chat_list: Option<ChatListFigures>,
    wire: Vec<wire::WireFigures>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    raise_descriptor_limit();
    if let Some(Command::BaselineServer { port }) = args.command {
        return baseline::serve(port).await;
    }
    if args.smoke {
        (args.pairs, args.rate, args.in_flight, args.seconds) = (4, 100.0, 2, 1.0);
        (args.idle, args.replay, args.storm_workers, args.storm_rate) = (20, 200, 2, 50.0);
        args.storm_bcrypt_cost = 4;
        args.conversations = 30;
    }
    let wants = |name: &str| args.scenarios.iter().any(|s| s == name);
    if let Some(url) = &args.server_url {
        eprintln!(
            "--server-url {url}: results are labelled {}. This tool neither starts nor configures \
             that server, so --server-bin, --compare-bin and --storm-bcrypt-cost do not apply \
             (the storm runs at the server's own BCRYPT_COST) and the multi scenario is skipped; \
             idle memory needs --server-pid. The server must allow the load: raise RATE_LIMIT_*, \
             WS_MAX_CONNECTIONS_PER_USER and BCRYPT_MAX_QUEUE.",
            server::external_label(url)
        );
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let mut report = Report::default();

    if wants("delivery") {
        eprintln!("delivery: {} pairs", args.pairs);
        let server = chat_server(&args, 4).await?;
        let target = Target::chat(&server.base_url, &server.label);
        report.delivery.extend(fixed_rate_and_saturation(&args, &target).await?);
        server.stop().await;
        if let Some(binary) = &args.compare_bin {
            eprintln!("delivery on {}: {} pairs", binary.display(), args.pairs);
            let server = Server::spawn(binary, &[("BCRYPT_COST", "4".to_string())]).await?;
            let target = Target::chat(&server.base_url, &server.label);
            let mut figures = fixed_rate_and_saturation(&args, &target).await?;
            for figure in &mut figures {
                figure.target = "compare".to_string();
            }
            report.delivery.extend(figures);
            server.stop().await;
        }
    }
    if wants("multi") && args.server_url.is_none() {
        eprintln!("multi-instance: {} pairs, senders through A, recipients on B", args.pairs);
        report.delivery.extend(across_instances(&args, false).await?);
    }
    if wants("multi-cluster") && args.server_url.is_none() {
        eprintln!("multi-instance over a Redis Cluster: {} pairs, A -> B", args.pairs);
        report.delivery.extend(across_instances(&args, true).await?);
    }
    if wants("wire") {
        eprintln!("wire: bus event size and cost, next to a store read by id");
        report.wire = wire::measure().await?;
    }
    if wants("baseline") {
        eprintln!("baseline: {} pairs", args.pairs);
        let server = Server::spawn_baseline().await?;
        let target = Target::baseline(&server.base_url);
        report.delivery.extend(fixed_rate_and_saturation(&args, &target).await?);
        server.stop().await;
    }
    if wants("idle") {
        eprintln!("idle connections: {}", args.idle);
        let server = chat_server(&args, 4).await?;
        let options = scenarios::IdleOptions {
            count: args.idle,
            with_events: args.idle_events,
            hold: Duration::from_secs_f64(args.idle_hold),
            backlog: args.idle_backlog,
        };
        let idle = scenarios::idle_connections(&server, &options).await?;
        report.idle = Some(idle);
        server.stop().await;
    }
    if wants("replay") {
        eprintln!("replay: {} messages", args.replay);
        let server = chat_server(&args, 4).await?;
        report.replay = Some(scenarios::replay(&server, args.replay).await?);
        server.stop().await;
    }
    if wants("storm") {
        let cost = match &args.server_url {
            Some(_) => "the server's own bcrypt cost".to_string(),
            None => format!("bcrypt cost {}", args.storm_bcrypt_cost),
        };
        eprintln!("login storm: {} workers at {cost}", args.storm_workers);
        let server = chat_server(&args, args.storm_bcrypt_cost).await?;
        let storm = scenarios::login_storm(
            &server,
            args.pairs.min(20),
            args.storm_rate,
            args.storm_workers,
            duration,
        );
        let mut storm = storm.await?;
        storm.bcrypt_cost = args.server_url.is_none().then_some(args.storm_bcrypt_cost);
        report.storm = Some(storm);
        server.stop().await;
    }

    if wants("chatlist") {
        eprintln!("chat list: one user with {} conversations", args.conversations);
        let server = chat_server(&args, 4).await?;
        report.chat_list = Some(scenarios::chat_list(&server, args.conversations).await?);
        server.stop().await;
    }

    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("results written to {}", path.display());
    }
    let storm = report.storm.iter().flat_map(|storm| [&storm.quiet, &storm.storm]);
    let idle = report.idle.iter().map(|idle| &idle.live_while_open);
    let lossy: Vec<_> = report
        .delivery
        .iter()
        .chain(storm)
        .chain(idle)
        .filter(|d| d.delivered != d.sent || d.send_errors > 0)
        .collect();
    for d in &lossy {
        eprintln!(
            "WARNING: {}: sent {}, delivered {}, send errors {}",
            d.target, d.sent, d.delivered, d.send_errors
        );
    }
    if !lossy.is_empty() {
        anyhow::bail!("{} measurement(s) lost messages or had send errors", lossy.len());
    }
    Ok(())
}

/// Raises this process's open-file limit: each connection is a descriptor, and the servers
/// this tool starts inherit the limit (they need one per connection too). As far as the kernel
/// allows a process (`/proc/sys/fs/nr_open`) when permitted to raise the hard limit (root,
/// `CAP_SYS_RESOURCE`), else up to the hard limit.
fn raise_descriptor_limit() {
    let kernel_max = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = libc::rlimit { rlim_cur: kernel_max, rlim_max: kernel_max };
        if kernel_max > limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            eprintln!("cannot raise the open-file limit; large idle runs may fail");
        }
    }
}

/// This process's open-file limit now.
pub fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    // `rlim_t` is u64 on Linux x86-64, not on every target.
    #[allow(clippy::unnecessary_cast)]
    let current = limit.rlim_cur as u64;
    current
}

/// The two delivery measurements on `target`: at the fixed `--rate`, then at saturation.
async fn fixed_rate_and_saturation(
    args: &Args,
    target: &Target,
) -> anyhow::Result<[DeliveryFigures; 2]> {
    let duration = Duration::from_secs_f64(args.seconds);
    let pairs = Pairs::open(target, args.pairs).await?;
    let fixed = pairs.measure(Some(args.rate), 1, duration).await;
    let saturated = pairs.measure(None, args.in_flight, duration).await;
    pairs.close();
    Ok([fixed, saturated])
}

/// Delivery between two instances on one data directory and one Redis (started here; a Redis
/// Cluster of three primaries with `cluster`): every message is stored by A, published to
/// Redis, and delivered by B.
async fn across_instances(args: &Args, cluster: bool) -> anyhow::Result<[DeliveryFigures; 2]> {
    let data_dir = tempfile::tempdir()?;
    let redis = match cluster {
        true => server::Redis::spawn_cluster(data_dir.path()).await?,
        false => server::Redis::spawn().await?,
    };
    let binary = args.server_bin.clone().unwrap_or_else(server::default_server_binary);
    let env = [
        ("BCRYPT_COST", "4".to_string()),
        ("REDIS_URL", redis.url.clone()),
        ("REDIS_CLUSTER", cluster.to_string()),
        ("JWT_SECRET", "loadtest-secret-shared-by-both-instances".to_string()),
        ("DATA_DIR", data_dir.path().display().to_string()),
    ];
    let a = Server::spawn(&binary, &env).await?;
    let b = Server::spawn(&binary, &env).await?;
    let target = Target::across(&a.base_url, &b.base_url, cluster);
    let figures = fixed_rate_and_saturation(args, &target).await;
    if cluster {
        let spread = redis.calls_per_node("spublish").await;
        eprintln!("Redis Cluster: SPUBLISH calls per node {spread:?} (each topic on one shard)");
    }
    a.stop().await;
    b.stop().await;
    figures
}

/// A fresh chatapp server with bcrypt at `bcrypt_cost`, or the external one.
async fn chat_server(args: &Args, bcrypt_cost: u32) -> anyhow::Result<Server> {
    if let Some(url) = &args.server_url {
        return Ok(Server::external(url, args.server_pid));
    }
    let binary = args.server_bin.clone().unwrap_or_else(server::default_server_binary);
    Server::spawn(&binary, &[("BCRYPT_COST", bcrypt_cost.to_string())]).await
}

fn print_table(report: &Report) {
    let baseline_saturation = report
        .delivery
        .iter()
        .find(|d| d.target == "baseline" && d.offered_per_second.is_none())
        .map(|d| d.delivered_per_second);
    println!();
    println!(
        "| Scenario | Offered | Delivered/s | p50 ms | p99 ms | max ms | Sent | Delivered | Errors | vs baseline |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for d in &report.delivery {
        let offered =
            d.offered_per_second.map_or("saturation".to_string(), |r| format!("{r:.0}/s"));
        let ratio = match (baseline_saturation, d.offered_per_second) {
            (Some(base), None) if d.target != "baseline" => {
                format!("{:.0}%", 100.0 * d.delivered_per_second / base)
            }
            _ => "".to_string(),
        };
        println!(
            "| delivery ({}) | {offered} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {ratio} |",
            d.target,
            d.delivered_per_second,
            d.p50_ms,
            d.p99_ms,
            d.max_ms,
            d.sent,
            d.delivered,
            d.send_errors
        );
    }
    for wire in &report.wire {
        println!(
            "wire: a {}-character message is a {} B event, encoded and decoded in {:.1} us; reading it by id from the embedded store instead: {:.1} us",
            wire.content_chars, wire.event_bytes, wire.encode_decode_micros, wire.store_read_micros
        );
    }
    if let Some(idle) = &report.idle {
        println!();
        println!(
            "idle: {} {} opened in {:.1} s; server RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per connection ({:.1} KiB each for the second half)",
            idle.connections,
            if idle.with_events {
                "connections (messageReceived + chatEvents)"
            } else {
                "subscriptions"
            },
            idle.open_seconds,
            idle.rss_before_bytes as f64 / 1048576.0,
            idle.rss_after_bytes as f64 / 1048576.0,
            idle.bytes_per_connection / 1024.0,
            idle.bytes_per_connection_second_half / 1024.0
        );
        if idle.backlog > 0 {
            println!("idle: each connection first replayed {} queued messages", idle.backlog);
        }
        let live = &idle.live_while_open;
        println!(
            "idle: meanwhile, live delivery at {:.0} msg/s between 20 other pairs: p50 {:.1} ms, p99 {:.1} ms ({} of {} delivered)",
            live.offered_per_second.unwrap_or_default(),
            live.p50_ms,
            live.p99_ms,
            live.delivered,
            live.sent
        );
    }
    if let Some(replay) = &report.replay {
        println!(
            "replay: {} messages queued at {:.0} msg/s, replayed in {:.2} s = {:.0} msg/s",
            replay.messages,
            replay.queued_per_second,
            replay.replay_seconds,
            replay.replayed_per_second
        );
    }
    if let Some(list) = &report.chat_list {
        println!(
            "chat list: {} conversations built in {:.1} s; first page of 20: p50 {:.2} ms, p99 {:.2} ms; page after {} conversations: p50 {:.2} ms, p99 {:.2} ms; a user with 1 conversation: p50 {:.2} ms",
            list.conversations,
            list.build_seconds,
            list.first_page.p50_ms,
            list.first_page.p99_ms,
            list.deep_offset,
            list.deep_page.p50_ms,
            list.deep_page.p99_ms,
            list.small_list.p50_ms,
        );
    }
    if let Some(storm) = &report.storm {
        let cost = storm
            .bcrypt_cost
            .map_or("the server's own bcrypt cost".to_string(), |c| format!("bcrypt cost {c}"));
        println!(
            "login storm: {} workers at {cost}, {:.1} logins/s; delivery p99 {:.1} ms quiet -> {:.1} ms in the storm ({:.2}x); p50 {:.1} -> {:.1} ms",
            storm.login_workers,
            storm.logins_per_second,
            storm.quiet.p99_ms,
            storm.storm.p99_ms,
            storm.p99_ratio,
            storm.quiet.p50_ms,
            storm.storm.p50_ms
        );
    }
}
