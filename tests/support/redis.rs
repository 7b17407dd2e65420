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
    /// The server process and its port, when this test started it (and may restart it).
    owned: Option<(Child, u16)>,
}

impl RedisServer {
    /// A Redis to use, or `None` (with a notice naming `test`) when there is none.
    pub fn start(test: &str) -> Option<RedisServer> {
        if let Some(url) = std::env::var("TEST_REDIS_URL").ok().filter(|url| !url.is_empty()) {
            return Some(RedisServer { url, owned: None });
        }
        let port = free_port();
        match spawn(port) {
            Some(child) => Some(RedisServer {
                url: format!("redis://127.0.0.1:{port}"),
                owned: Some((child, port)),
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
        if let Some((child, _)) = &mut self.owned {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        if let Some((child, port)) = &mut self.owned {
            *child = spawn(*port).expect("redis-server restarts");
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

/// Starts `redis-server` on `port` and waits until it accepts connections.
fn spawn(port: u16) -> Option<Child> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
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
