//! The server under test: a chatapp (or baseline) child process started per scenario with a
//! fresh data directory, or an already running server given by URL.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A server the tool talks to.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// For memory readings from `/proc`; `None` for an external server without `--server-pid`.
    pub pid: Option<u32>,
    /// What the results call it: `chatapp` for a server this tool started, else the external
    /// server's host and port.
    pub label: String,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// An already running server.
    pub fn external(base_url: &str, pid: Option<u32>) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        Server { label: external_label(&base_url), base_url, pid, child: None, _data_dir: None }
    }

    /// Starts `binary` on a free loopback port with `env` on top of benchmark defaults, and waits
    /// until `/healthz` answers.
    pub async fn spawn(binary: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let data_dir = tempfile::tempdir()?;
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATA_DIR", data_dir.path())
            .env("RUST_LOG", "warn")
            // The tool is one client address sending for many users; production limits would
            // refuse it. Each scenario sets bcrypt's cost itself.
            .env("RATE_LIMIT_AUTH_PER_ADDRESS", "100000000")
            .env("RATE_LIMIT_AUTH_PER_PHONE", "100000000")
            .env("RATE_LIMIT_MESSAGES_PER_USER", "100000000")
            .env("WS_MAX_CONNECTIONS_PER_USER", "100000")
            // Thousands of registrations at once: queue them all rather than refuse the
            // surplus with SERVICE_UNAVAILABLE as production does.
            .env("BCRYPT_MAX_QUEUE", "100000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let child =
            command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let server = Server {
            base_url: format!("http://127.0.0.1:{port}"),
            pid: child.id(),
            label: "chatapp".to_string(),
            child: Some(child),
            _data_dir: Some(data_dir),
        };
        server.wait_until_healthy().await?;
        Ok(server)
    }

    /// Starts this tool's own bare websocket fan-out server (the baseline).
    pub async fn spawn_baseline() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .args(["baseline-server", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let server = Server {
            base_url: format!("http://127.0.0.1:{port}"),
            pid: child.id(),
            label: "baseline".to_string(),
            child: Some(child),
            _data_dir: None,
        };
        server.wait_until_healthy().await?;
        Ok(server)
    }

    async fn wait_until_healthy(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            let response = client.get(format!("{}/healthz", self.base_url)).send().await;
            if response.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server at {} did not become healthy within 30 s", self.base_url)
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid?)
    }

    /// Stops a server this tool started.
    pub async fn stop(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill().await;
        }
    }
}

/// A private `redis-server` for the multi-instance scenario (no persistence), stopped when
/// dropped.
pub struct Redis {
    pub url: String,
    /// The ports of its nodes (one unless a cluster).
    ports: Vec<u16>,
    _children: Vec<Child>,
}

impl Redis {
    /// Starts `redis-server` (it must be on PATH) on a free port and waits until it listens.
    pub async fn spawn() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = redis_server(port, &[], None).await?;
        Ok(Redis {
            url: format!("redis://127.0.0.1:{port}"),
            ports: vec![port],
            _children: vec![child],
        })
    }

    /// Starts a Redis Cluster of three primaries (`redis-server` and `redis-cli` on PATH), each
    /// on a free port, and waits until it serves every slot; `url` lists the nodes.
    pub async fn spawn_cluster(files: &std::path::Path) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for node in 0..3 {
            let port = free_port()?;
            let state = files.join(format!("nodes-{node}.conf"));
            children.push(redis_server(port, &["--cluster-enabled", "yes"], Some(&state)).await?);
            ports.push(port);
        }
        let nodes: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .await
            .context("cannot run redis-cli (install it: apt-get install redis-tools)")?;
        if !created.success() {
            bail!("redis-cli --cluster create failed: {created}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &ports {
            let port = port.to_string();
            loop {
                let info =
                    Command::new("redis-cli").args(["-p", &port, "cluster", "info"]).output();
                if String::from_utf8_lossy(&info.await?.stdout).contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the Redis Cluster did not become ok within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let url = nodes.iter().map(|node| format!("redis://{node}")).collect::<Vec<_>>().join(",");
        Ok(Redis { url, ports, _children: children })
    }

    /// How many times each node has run `command` (from `INFO commandstats`; 0 if unknown).
    pub async fn calls_per_node(&self, command: &str) -> Vec<u64> {
        let mut calls = Vec::new();
        for port in &self.ports {
            let info = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "info", "commandstats"])
                .output()
                .await;
            let stats = info.map(|info| String::from_utf8_lossy(&info.stdout).into_owned());
            let line = format!("cmdstat_{command}:calls=");
            let count = stats.ok().and_then(|stats| {
                let rest = stats.lines().find_map(|l| l.strip_prefix(line.as_str()))?.to_string();
                rest.split(',').next()?.parse().ok()
            });
            calls.push(count.unwrap_or(0));
        }
        calls
    }
}

/// Starts `redis-server` on `port` with `extra` options (and, for a cluster node, its state
/// file), without persistence, and waits until it listens.
async fn redis_server(
    port: u16,
    extra: &[&str],
    state: Option<&std::path::Path>,
) -> anyhow::Result<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no"])
        .args(extra);
    if let Some(state) = state {
        command.arg("--cluster-config-file").arg(state);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start redis-server (install it: apt-get install redis-server)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not listen on port {port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(child)
}

/// `VmRSS` of `pid` from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// An external server's name in the results: its host and port (`http://` and any path
/// dropped), so figures from another stack are not labelled chatapp.
pub fn external_label(base_url: &str) -> String {
    let without_scheme = base_url.split_once("://").map_or(base_url, |(_, rest)| rest);
    without_scheme.split('/').next().unwrap_or(without_scheme).to_string()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the chatapp binary is by default: beside this tool (same cargo target directory).
pub fn default_server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("chatapp")
}
