//! A throwaway `redis-server` on a free port, for every crate's tests.
//!
//! Synchronous on purpose: tests of sync and async code alike start one in a line and
//! forget it; it is killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// A `redis-server` process (no persistence), killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`. Panics if it cannot: a test without
    /// Redis cannot run (`scripts/tools.sh redis` installs it).
    pub fn start() -> Self {
        let port = free_port().expect("a free port");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/tools.sh redis)");
        let server = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.try_conn().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// A synchronous connection.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
