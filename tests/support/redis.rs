//! A Redis server for the tests that need one: `TEST_REDIS_URL` when set, else a private
//! `redis-server` started on a free port (no persistence), stopped when dropped. Without
//! either, [`RedisServer::start`] prints a notice and returns `None`, and the test skips.

use std::{
    io::Write,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A Redis the test may use.
pub struct RedisServer {
    url: String,
    /// The server process, its port and how it listens, when this test started it (and may
    /// restart it).
    owned: Option<(Child, u16, Vec<String>)>,
}

impl RedisServer {
    /// A Redis to use, or `None` (with a notice naming `test`) when there is none.
    pub fn start(test: &str) -> Option<RedisServer> {
        if let Some(url) = std::env::var("TEST_REDIS_URL").ok().filter(|url| !url.is_empty()) {
            return Some(RedisServer { url, owned: None });
        }
        let port = free_port();
        match spawn(port, &plain(port)) {
            Some(child) => Some(RedisServer {
                url: format!("redis://127.0.0.1:{port}"),
                owned: Some((child, port, plain(port))),
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
        Some((RedisServer { url, owned: Some((child, port, listen)) }, path("ca.pem"), dir))
    }

    /// The URL to give `REDIS_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this test owns the server (and so may stop and restart it).
    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }

    /// Stops the server (as a crash would: SIGKILL).
    pub fn stop(&mut self) {
        if let Some((child, _, _)) = &mut self.owned {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        if let Some((child, port, listen)) = &mut self.owned {
            *child = spawn(*port, listen).expect("redis-server restarts");
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
