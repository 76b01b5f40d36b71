//! Throwaway `redis-server`s on free ports: a single server configured as the origin
//! requires (an append-only file, `noeviction`), and a three-node Redis Cluster.
//!
//! Synchronous on purpose: tests of sync and async code alike start one in a line and
//! forget it; it is killed on drop.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use allot_core::contract::keys::PlacementKeys;
use allot_core::contract::stream;
use allot_core::{EventBatch, WindowStats};
use tempfile::TempDir;

use crate::poll::eventually_blocking;
use crate::process::{Proc, free_port};

/// A `redis-server` process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    // Declared before the data directory, so the server dies before its files go.
    proc: Option<Proc>,
    /// Its data directory (the append-only file).
    dir: TempDir,
    /// `appendfsync`: `everysec` or `always`.
    fsync: &'static str,
}

impl RedisServer {
    /// Starts one as production runs it (`appendonly yes`, `appendfsync everysec`,
    /// `maxmemory-policy noeviction`, in its own data directory) and waits until it
    /// answers. Panics if it cannot: a test without Redis cannot run
    /// (`scripts/tools.sh redis` installs it).
    pub fn start() -> Self {
        Self::launch("everysec")
    }

    /// Starts one that fsyncs every write before answering (`appendfsync always`), so a
    /// [`restart`](Self::restart), even after `kill -9`, loses nothing it acknowledged.
    pub fn start_with_aof() -> Self {
        Self::launch("always")
    }

    fn launch(fsync: &'static str) -> Self {
        let dir = tempfile::Builder::new().prefix("allot-redis-").tempdir().expect("a temporary directory");
        let mut server = Self { port: free_port(), proc: None, dir, fsync };
        server.run();
        server
    }

    fn run(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", self.fsync, "--maxmemory-policy", "noeviction", "--dir"])
            .arg(self.dir.path());
        let proc = Proc::spawn("redis-server", cmd.stdout(Stdio::null()).stderr(Stdio::null()))
            .expect("redis-server is installed (scripts/tools.sh redis)");
        self.proc = Some(proc);
        let port = self.port;
        eventually_blocking(10, &format!("redis-server on port {port}"), || self.try_conn().ok());
    }

    /// `kill -9`: the server is gone until [`restart`](Self::restart); its data stays
    /// on disk (with `everysec`, up to the last second's writes may be lost).
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Kills the server if it runs and starts it again on the same port and data
    /// directory.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::id)
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// A synchronous connection.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to the test redis-server")
    }

    /// `INFO commandstats`: how many times `command` (lower case) has run: what a
    /// request made the origin ask of Redis.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut self.conn()).expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a count of calls"))
    }

    /// `INFO stats`: the bytes Redis has sent to its clients (this call's own reply
    /// included, a few kilobytes).
    pub fn output_bytes(&self) -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(&mut self.conn()).expect("INFO stats");
        let bytes = info.lines().find_map(|l| l.strip_prefix("total_net_output_bytes:"));
        bytes.map_or(0, |n| n.trim().parse().expect("a count of bytes"))
    }
}

/// A placement's window counts over every window in Redis, merged: what the aggregator
/// has applied so far.
pub fn total_counts(redis: &RedisServer, placement: &str) -> WindowStats {
    let mut c = redis.conn();
    let mut total = WindowStats::default();
    for k in window_keys(redis, placement) {
        let fields: HashMap<String, f64> = redis::cmd("HGETALL").arg(&k).query(&mut c).expect("HGETALL");
        total.merge(&WindowStats::from_fields(fields).expect("window fields"));
    }
    total
}

/// The keys of every window hash of `placement`: the contract's window key, with the
/// index as a glob.
pub fn window_keys(redis: &RedisServer, placement: &str) -> Vec<String> {
    let window = PlacementKeys::of_raw(placement).window(0);
    let pattern = format!("{}*", window.strip_suffix('0').unwrap_or(&window));
    redis::cmd("KEYS").arg(&pattern).query(&mut redis.conn()).expect("KEYS")
}

/// The event batches of `placement` in the event stream, oldest first: what ingest
/// stored, one batch per stream entry.
pub fn stream_batches(redis: &RedisServer, placement: &str) -> Vec<EventBatch> {
    let mut c = redis.conn();
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream::EVENTS).arg("-").arg("+").query(&mut c).expect("XRANGE");
    entries
        .ids
        .iter()
        .filter(|e| e.get::<String>(stream::PLACEMENT).as_deref() == Some(placement))
        .map(|e| {
            let bytes: Vec<u8> = e.get(stream::BATCH).expect("an event entry has a batch");
            EventBatch::parse(&bytes).expect("a stored batch parses")
        })
        .collect()
}

/// A three-node Redis Cluster (no replicas), killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    pub ports: Vec<u16>,
    _nodes: Vec<Proc>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts three nodes and joins them with `redis-cli --cluster create`; returns once
    /// every node reports the cluster healthy.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("allot-cluster-").tempdir().expect("a temporary directory");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|p| {
                let mut cmd = Command::new("redis-server");
                // The cluster bus gets a free port of its own: by default it is the port
                // + 10,000, which another test may hold, or which may not exist at all.
                cmd.args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
                    .args(["--cluster-port", &free_port().to_string()])
                    .args(["--appenddirname", &format!("aof-{p}"), "--maxmemory-policy", "noeviction"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{p}.conf")])
                    .current_dir(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                Proc::spawn("redis cluster node", &mut cmd).expect("redis-server is installed")
            })
            .collect();
        let cluster = Self { ports, _nodes: nodes, _dir: dir };
        for p in &cluster.ports {
            eventually_blocking(10, &format!("cluster node {p}"), || cluster.node(*p).ok());
        }
        let addrs: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(status.success(), "redis-cli --cluster create");
        for p in &cluster.ports {
            eventually_blocking(20, "cluster_state:ok", || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut cluster.node(*p).ok()?).ok()?;
                info.contains("cluster_state:ok").then_some(())
            });
        }
        cluster
    }

    fn node(&self, port: u16) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()
    }

    /// The seed list for `redis.url` with `cluster = true`.
    pub fn url(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Which node serves `key`: the port answering without a MOVED redirect.
    pub fn node_of(&self, key: &str) -> u16 {
        *self
            .ports
            .iter()
            .find(|p| {
                let mut c = self.node(**p).expect("connect to a cluster node");
                redis::cmd("EXISTS").arg(key).query::<i64>(&mut c).is_ok()
            })
            .expect("a node serves every key")
    }
}

#[cfg(test)]
mod tests {
    use super::RedisServer;

    fn set(redis: &RedisServer) {
        redis::cmd("SET").arg("k").arg("v").exec(&mut redis.conn()).expect("SET");
    }

    fn get(redis: &RedisServer) -> Option<String> {
        redis::cmd("GET").arg("k").query(&mut redis.conn()).expect("GET")
    }

    #[test]
    fn an_aof_server_keeps_acknowledged_writes_across_kill_9() {
        let mut redis = RedisServer::start_with_aof();
        set(&redis);
        let port = redis.port;
        redis.restart();
        assert_eq!(redis.port, port);
        assert_eq!(get(&redis).as_deref(), Some("v"));
    }

    #[test]
    fn the_default_server_is_configured_as_the_origin_requires() {
        let mut redis = RedisServer::start();
        let setting = |redis: &RedisServer, key: &str| -> String {
            let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query(&mut redis.conn()).expect("CONFIG");
            pair[1].clone()
        };
        assert_eq!(setting(&redis, "appendonly"), "yes");
        assert_eq!(setting(&redis, "appendfsync"), "everysec");
        assert_eq!(setting(&redis, "maxmemory-policy"), "noeviction");
        // everysec: a write a second old is on disk and survives kill -9.
        set(&redis);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        redis.restart();
        assert_eq!(get(&redis).as_deref(), Some("v"));
    }
}
