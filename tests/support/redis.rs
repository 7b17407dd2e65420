//! A Redis server for the tests that need one: `TEST_REDIS_URL` when set, else a private
//! `redis-server` started on a free port (no persistence), stopped when dropped. Without
//! either, [`RedisServer::start`] prints a notice and returns `None`, and the test skips.
//! [`RedisServer::start_cluster`] does the same for a Redis Cluster (`TEST_REDIS_CLUSTER_URL`,
//! or three private nodes joined with `redis-cli --cluster create`).

use std::{
    io::Write,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A Redis the test may use.
pub struct RedisServer {
    url: String,
    /// The server processes, with their ports and how they listen, when this test started them
    /// (and may restart them): one, or a cluster's nodes.
    owned: Vec<(Child, u16, Vec<String>)>,
    /// The cluster nodes' state files (`nodes.conf`), kept across restarts.
    _files: Option<tempfile::TempDir>,
    /// Whether this is a Redis Cluster (`REDIS_CLUSTER=true`).
    cluster: bool,
}

impl RedisServer {
    /// A Redis to use, or `None` (with a notice naming `test`) when there is none.
    pub fn start(test: &str) -> Option<RedisServer> {
        if let Some(url) = std::env::var("TEST_REDIS_URL").ok().filter(|url| !url.is_empty()) {
            return Some(RedisServer { url, owned: Vec::new(), _files: None, cluster: false });
        }
        let port = free_port();
        match spawn(port, &plain(port)) {
            Some(child) => Some(RedisServer {
                url: format!("redis://127.0.0.1:{port}"),
                owned: vec![(child, port, plain(port))],
                _files: None,
                cluster: false,
            }),
            None => {
                let _ = writeln!(
                    std::io::stderr(),
                    "NOTICE: {test} skipped: no redis-server on PATH and no TEST_REDIS_URL"
                );
                None
            }
        }
    }

    /// A private `redis-server` that speaks only TLS, its certificate (for 127.0.0.1) issued by
    /// a fresh certificate authority whose certificate is the returned file. `None` (with a
    /// notice) without a `redis-server` binary; `TEST_REDIS_URL` is not used.
    pub fn start_tls(test: &str) -> Option<(RedisServer, std::path::PathBuf, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(path("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(path("server.key"), server_key.serialize_pem()).unwrap();
        let port = free_port();
        let file = |name: &str| path(name).display().to_string();
        let listen: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let Some(child) = spawn(port, &listen) else {
            let _ = writeln!(std::io::stderr(), "NOTICE: {test} skipped: no redis-server on PATH");
            return None;
        };
        let url = format!("rediss://127.0.0.1:{port}");
        let server =
            RedisServer { url, owned: vec![(child, port, listen)], _files: None, cluster: false };
        Some((server, path("ca.pem"), dir))
    }

    /// A Redis Cluster to use (its `url` lists every node, for `REDIS_URL` with
    /// `REDIS_CLUSTER=true`): `TEST_REDIS_CLUSTER_URL` when set, else three private primaries
    /// owning a third of the slots each. `None` (with a notice) without `redis-server` and
    /// `redis-cli`.
    pub fn start_cluster(test: &str) -> Option<RedisServer> {
        if let Some(url) = std::env::var("TEST_REDIS_CLUSTER_URL").ok().filter(|u| !u.is_empty()) {
            return Some(RedisServer { url, owned: Vec::new(), _files: None, cluster: true });
        }
        let skip = |why: &str| {
            let _ = writeln!(std::io::stderr(), "NOTICE: {test} skipped: {why}");
            None
        };
        let files = tempfile::tempdir().unwrap();
        let mut owned = Vec::new();
        for node in 0..3 {
            let port = free_port();
            let state = files.path().join(format!("nodes-{node}.conf")).display().to_string();
            let listen: Vec<String> = [
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &state,
                "--cluster-node-timeout",
                "2000",
            ]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
            let Some(child) = spawn(port, &listen) else {
                return skip("no redis-server on PATH and no TEST_REDIS_CLUSTER_URL");
            };
            owned.push((child, port, listen));
        }
        let addresses: Vec<String> =
            owned.iter().map(|(_, port, _)| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let url = addresses.iter().map(|a| format!("redis://{a}")).collect::<Vec<_>>().join(",");
        let server = RedisServer { url, owned, _files: Some(files), cluster: true };
        match created {
            Ok(status) if status.success() => {}
            Ok(status) => panic!("redis-cli --cluster create failed: {status}"),
            Err(_) => return skip("no redis-cli on PATH"),
        }
        server.wait_until_cluster_is_ok();
        Some(server)
    }

    /// Waits until every node says the cluster is ok (all slots served and agreed on).
    fn wait_until_cluster_is_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (_, port, _) in &self.owned {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The ports of the nodes this test started.
    #[allow(dead_code)] // The bus suite's; the API suite does not move slots.
    pub fn ports(&self) -> Vec<u16> {
        self.owned.iter().map(|(_, port, _)| *port).collect()
    }

    /// The URL to give `REDIS_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a Redis Cluster (for `REDIS_CLUSTER`).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Whether this test owns the server (and so may stop and restart it).
    pub fn is_owned(&self) -> bool {
        !self.owned.is_empty()
    }

    /// Stops the server, or every node of the cluster (as a crash would: SIGKILL).
    pub fn stop(&mut self) {
        for (child, _, _) in &mut self.owned {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server, or every node, again on the same ports (a cluster's nodes find
    /// each other again from their state files).
    pub fn restart(&mut self) {
        for (child, port, listen) in &mut self.owned {
            *child = spawn(*port, listen).expect("redis-server restarts");
        }
        if self.cluster {
            self.wait_until_cluster_is_ok();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `redis-server` listening as `listen` says (its port options), on `port`, and waits
/// until that port accepts connections.
fn spawn(port: u16, listen: &[String]) -> Option<Child> {
    let child = Command::new("redis-server")
        .args(listen)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(child)
}

fn plain(port: u16) -> Vec<String> {
    vec!["--port".to_string(), port.to_string()]
}
