//! The test stack: a real `redis-server` on a free port and origins on `127.0.0.1:0`,
//! in-process ([`TestApp`]) or as the real binary ([`OriginProcess`]). Everything is
//! killed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allot_core::{PlacementId, WindowStats, signature};
use allot_origin::{Config, Running};
use serde_json::{Value, json};

pub const INGEST_KEY: &str = "test-ingest-key-0123456789";
pub const MANAGER_TOKEN: &str = "manager-secret-token";
pub const VIEWER_TOKEN: &str = "viewer-secret-token";

pub fn free_port() -> u16 {
    allot_e2e::process::free_port().expect("a free port")
}

pub use allot_e2e::redis_server::RedisServer;

fn sha(token: &str) -> String {
    allot_origin::auth::token_hash(token)
}

/// The base config of every test origin; `extra` is appended (TOML), `env` overrides.
pub fn config_text(extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[ingest]
keys = ["{INGEST_KEY}"]
max_body_bytes = 65536
[aggregate]
block_ms = 100
claim_min_idle_ms = 300
[control]
period_ms = 1000
lease_ms = 1500
recent_windows = 3
[admin]
tokens = [
  {{ name = "mia", role = "manager", sha256 = "{}" }},
  {{ name = "vic", role = "viewer", sha256 = "{}" }},
]
[log]
level = "warn"
{extra}
"#,
        sha(MANAGER_TOKEN),
        sha(VIEWER_TOKEN)
    )
}

pub fn config(redis: &RedisServer, extra: &str, env: &[(&str, &str)]) -> Config {
    config_for_url(&redis.url(), extra, env)
}

pub fn config_for_url(url: &str, extra: &str, env: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    map.insert("ALLOT_REDIS_URL".into(), url.to_string());
    Config::from_sources(&config_text(extra), &map).expect("test config")
}

/// A three-node Redis Cluster (no replicas), killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("allot-cluster-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let children = ports
            .iter()
            .map(|p| {
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{p}.conf")])
                    .current_dir(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed")
            })
            .collect();
        let cluster = Self { ports, children, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &cluster.ports {
            let url = format!("redis://127.0.0.1:{p}");
            while redis::Client::open(url.as_str()).and_then(|c| c.get_connection()).is_err() {
                assert!(Instant::now() < deadline, "cluster node did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli --cluster create");
        for p in &cluster.ports {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap().get_connection().unwrap();
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline + Duration::from_secs(10), "cluster not ok: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
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
                let mut c = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap().get_connection().unwrap();
                redis::cmd("EXISTS").arg(key).query::<i64>(&mut c).is_ok()
            })
            .unwrap()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An origin running in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub running: Option<Running>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn start(config: Config) -> Self {
        allot_origin::telemetry::install_crypto();
        let running = allot_origin::start(config).await.expect("origin starts");
        Self { addr: running.addr, running: Some(running), http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn app(&self) -> &allot_origin::startup::App {
        &self.running.as_ref().unwrap().app
    }

    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// POSTs a body signed now with the test key.
    pub async fn post_signed(&self, body: &str) -> reqwest::Response {
        post_signed(&self.http, &self.url("/v1/events"), body).await
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        metric(&self.http, &self.url("/metrics"), name_and_labels).await
    }

    pub async fn put_targets(&self, placement: &str, spec: &Value, token: &str) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/v1/placements/{placement}")))
            .bearer_auth(token)
            .json(spec)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

pub async fn post_signed(http: &reqwest::Client, url: &str, body: &str) -> reqwest::Response {
    let sig = signature::sign(INGEST_KEY.as_bytes(), allot_origin::now_ms() / 1000, body.as_bytes());
    http.post(url).header(signature::HEADER, sig).body(body.to_string()).send().await.unwrap()
}

/// A metric's value from a Prometheus text page (`name{labels}` exactly as printed).
pub async fn metric(http: &reqwest::Client, url: &str, name_and_labels: &str) -> f64 {
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// An allocation event as JSON.
pub fn allocation(request_id: &str, placement: &str, ad: Option<&str>, eligible: &[&str], rate: f64) -> Value {
    json!({
        "kind": "allocation",
        "event_time_ms": allot_origin::now_ms(),
        "request_id": request_id,
        "placement": placement,
        "ad_id": ad,
        "plan_version": 1,
        "sample_rate": rate,
        "eligible": eligible,
        "platform": "ios",
        "country": "DE",
    })
}

pub fn batch(events: Vec<Value>) -> String {
    json!({ "events": events }).to_string()
}

/// All window counts of a placement, merged.
pub fn total_counts(redis: &RedisServer, placement: &str) -> WindowStats {
    let mut c = redis.conn();
    let pattern = format!("allot:{{{placement}}}:w:*");
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut c).unwrap();
    let mut total = WindowStats::default();
    for k in keys {
        let fields: HashMap<String, f64> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
        total.merge(&WindowStats::from_fields(fields).unwrap());
    }
    total
}

/// Polls `f` until it returns `Some`, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn placement(s: &str) -> PlacementId {
    PlacementId::parse(s).unwrap()
}

/// The real `allot-origin` binary, killed on drop.
pub struct OriginProcess {
    pub child: Child,
    pub addr: SocketAddr,
    _config: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl OriginProcess {
    /// Starts the binary with the test config (`extra` TOML, `env` overrides) and waits
    /// for its `listening` log line.
    pub fn start(redis: &RedisServer, extra: &str, env: &[(&str, &str)]) -> Self {
        let path = std::env::temp_dir().join(format!("allot-origin-test-{}-{}.toml", std::process::id(), free_port()));
        std::fs::write(&path, config_text(extra).replace("level = \"warn\"", "level = \"info\"")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_allot-origin"));
        cmd.args(["serve", "--config", path.to_str().unwrap()])
            .env("ALLOT_REDIS_URL", redis.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("origin binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).expect("origin logs its address");
        Self { child, addr: addr.parse().unwrap(), _config: tempfile_path::TempPath(path) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits for the process to exit on its own; its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "origin did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
