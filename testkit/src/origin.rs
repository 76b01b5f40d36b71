//! The origin as tests run it: one configuration ([`OriginConfig`]), one launcher of the
//! real binary ([`OriginProcess`]), one client of its HTTP API ([`OriginApi`]), and,
//! with the `in-process` feature, the origin as a library in the test's own process
//! (`TestApp`), for tests that look inside it.
//!
//! Every test origin shares the keys and tokens below, so a test signs events and calls
//! the admin API without setting anything up.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use allot_core::signature;
use anyhow::Context;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::process::{Proc, http_client, workspace_bin};
use crate::redis::RedisServer;
use crate::s3::{self, S3Server};

/// The key the edge signs event batches with.
pub const INGEST_KEY: &str = "allot-test-ingest-key-0123456789";
/// The key the origin signs plan pushes to the edge with.
pub const PUSH_KEY: &str = "allot-test-push-key-0123456789ab";
/// The bearer token of the `manager` role (named `mia` in the audit trail).
pub const MANAGER_TOKEN: &str = "allot-test-manager-token";
/// The bearer token of the `viewer` role (named `vic`).
pub const VIEWER_TOKEN: &str = "allot-test-viewer-token";

/// See [`OriginConfig::new`]; the body limit is small so a test exceeds it cheaply.
const BASE: &str = r#"
listen = "127.0.0.1:0"

[ingest]
max_body_bytes = 65536

[aggregate]
block_ms = 100
claim_min_idle_ms = 300

[control]
period_ms = 1000
lease_ms = 1500
recent_windows = 3

[log]
level = "warn"
format = "json"
"#;

/// An origin configuration file, as TOML: the tests' base, with sections merged in.
#[derive(Debug, Clone)]
pub struct OriginConfig(toml::Table);

impl Default for OriginConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl OriginConfig {
    /// The base: the test key and tokens, JSON logs at `warn`, a 64 KiB body limit, and
    /// timings short enough for tests (a 1 s control period, a 100 ms stream block,
    /// entries claimed after 300 ms idle), listening on any free loopback port.
    pub fn new() -> Self {
        let mut table: toml::Table = BASE.parse().expect("the base config is TOML");
        set(&mut table, "ingest.keys", toml::Value::Array(vec![INGEST_KEY.into()]));
        let token = |name: &str, role: &str, token: &str| {
            let mut t = toml::Table::new();
            t.insert("name".into(), name.into());
            t.insert("role".into(), role.into());
            t.insert("sha256".into(), signature::hex(&Sha256::digest(token.as_bytes())).into());
            toml::Value::Table(t)
        };
        let tokens = vec![token("mia", "manager", MANAGER_TOKEN), token("vic", "viewer", VIEWER_TOKEN)];
        set(&mut table, "admin.tokens", toml::Value::Array(tokens));
        Self(table)
    }

    /// Merges `toml` in: its tables into the base's, its values over the base's.
    /// Panics if it is not TOML (a test's own typo).
    pub fn merge(mut self, toml: &str) -> Self {
        let other: toml::Table = toml.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{toml}"));
        merge(&mut self.0, other);
        self
    }

    /// Listens on `port` (the base takes any free one).
    pub fn listen_port(mut self, port: u16) -> Self {
        set(&mut self.0, "listen", format!("127.0.0.1:{port}").into());
        self
    }

    /// Uses the Redis at `url` (a seed list with `redis.cluster = true`).
    pub fn redis(mut self, url: &str) -> Self {
        set(&mut self.0, "redis.url", url.into());
        self
    }

    /// Archives to `s3` (the archiver's other settings keep their defaults; merge them).
    pub fn archive(mut self, s3: &S3Server) -> Self {
        set(&mut self.0, "archive.endpoint", s3.endpoint().into());
        set(&mut self.0, "archive.bucket", s3::BUCKET.into());
        set(&mut self.0, "archive.access_key_id", s3::ACCESS_KEY.into());
        set(&mut self.0, "archive.secret_access_key", s3::SECRET_KEY.into());
        set(&mut self.0, "archive.path_style", true.into());
        self
    }

    pub fn to_toml(&self) -> String {
        self.0.to_string()
    }

    /// Writes the file the binary (and `allot-report --config`) reads.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_toml())
    }

    /// The configuration an in-process origin starts with, `env` overriding the file as
    /// `ALLOT_*` variables override it for the binary.
    #[cfg(feature = "in-process")]
    pub fn load(&self, env: &[(&str, &str)]) -> allot_origin::Config {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        allot_origin::Config::from_sources(&self.to_toml(), &env).expect("a valid test config")
    }
}

/// Sets a dotted `path`, creating tables on the way.
fn set(table: &mut toml::Table, path: &str, value: toml::Value) {
    let (parents, key) = path.rsplit_once('.').map_or((None, path), |(p, k)| (Some(p), k));
    let mut at = table;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        let entry = at.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().unwrap_or_else(|| panic!("{part} is not a table"));
    }
    at.insert(key.into(), value);
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// An origin's HTTP API, as the edge, a manager and a metrics scraper use it.
#[derive(Debug, Clone)]
pub struct OriginApi {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl OriginApi {
    pub fn new(addr: impl fmt::Display) -> Self {
        Self { http: http_client(Duration::from_secs(10)), base: format!("http://{addr}") }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `/readyz` until it answers 200 (Redis reachable); panics after `secs`.
    pub async fn wait_ready(&self, secs: u64) {
        crate::process::wait_http(&self.url("/readyz"), secs).await
    }

    /// POSTs `body` to `/v1/events`, signed now with [`INGEST_KEY`].
    pub async fn post_signed(&self, body: &str) -> reqwest::Response {
        post_signed(&self.http, &self.url("/v1/events"), body).await
    }

    /// A metric's value from `/metrics` (`name{labels}` exactly as printed; 0 if absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        metric(&self.http, &self.url("/metrics"), name_and_labels).await
    }

    /// The sum of every series of metric `name` from `/metrics` (0 if it has none); see
    /// [`parse_metric_sum`].
    pub async fn metric_sum(&self, name: &str) -> f64 {
        parse_metric_sum(&self.metrics_text().await, name).unwrap_or(0.0)
    }

    /// The whole `/metrics` page, for tests that read several series of one moment.
    pub async fn metrics_text(&self) -> String {
        self.http.get(self.url("/metrics")).send().await.expect("GET metrics").text().await.expect("metrics text")
    }

    /// The control shards this origin acts on, as `/readyz` shows them (its `control`
    /// object); `None` while it is not ready or runs no control loop.
    pub async fn control(&self) -> Option<Value> {
        let r = self.http.get(self.url("/readyz")).timeout(Duration::from_secs(2)).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        Some(v.get("control")?.clone())
    }

    /// `PUT /v1/placements/{placement}` with `spec`, as the holder of `token`.
    pub async fn put_targets(&self, placement: &str, spec: &Value, token: &str) -> reqwest::Response {
        let url = self.url(&format!("/v1/placements/{placement}"));
        self.http.put(url).bearer_auth(token).json(spec).send().await.expect("PUT targets")
    }

    /// GETs `path` as the holder of `token`: the status and the JSON body (null if none).
    pub async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(token).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// POSTs `body` to `url`, signed now with [`INGEST_KEY`], as the edge does.
pub async fn post_signed(http: &reqwest::Client, url: &str, body: &str) -> reqwest::Response {
    signed_post(http, url, body).send().await.expect("POST events")
}

/// The request [`post_signed`] sends, for tests that expect it may fail (an origin
/// being killed).
pub fn signed_post(http: &reqwest::Client, url: &str, body: &str) -> reqwest::RequestBuilder {
    let sig = signature::sign(INGEST_KEY.as_bytes(), crate::events::now_ms() / 1000, body.as_bytes());
    http.post(url).header(signature::HEADER, sig).body(body.to_string())
}

/// A metric's value from a Prometheus text page at `url` (`name{labels}` exactly as
/// printed; 0 if absent).
pub async fn metric(http: &reqwest::Client, url: &str, name_and_labels: &str) -> f64 {
    let text = http.get(url).send().await.expect("GET metrics").text().await.expect("metrics text");
    let line = find_metric(&text, name_and_labels);
    line.map_or(0.0, |v| v.trim().parse().expect("a metric value"))
}

/// A metric's value in a Prometheus text page, if the page has it and it is a number.
pub fn parse_metric(text: &str, name_and_labels: &str) -> Option<f64> {
    find_metric(text, name_and_labels)?.trim().parse().ok()
}

/// The sum of every series of metric `name` in a Prometheus text page, whatever its
/// labels; `None` if the page has none. A counter split by a label (plans by why) is
/// summed to compare its total with a count that knows no labels.
pub fn parse_metric_sum(text: &str, name: &str) -> Option<f64> {
    let values = text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let rest = l.strip_prefix(name)?;
        // `name{…} v` or `name v`; not a longer name that starts with `name`.
        let value = if rest.starts_with('{') { rest.rsplit_once("} ")?.1 } else { rest.strip_prefix(' ')? };
        value.trim().parse::<f64>().ok()
    });
    values.reduce(|a, b| a + b)
}

fn find_metric<'a>(text: &'a str, name_and_labels: &str) -> Option<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
}

/// The real `allot-origin` binary, killed on drop. Dereferences to its [`OriginApi`].
#[derive(Debug)]
pub struct OriginProcess {
    pub child: Proc,
    pub addr: SocketAddr,
    api: OriginApi,
    /// The config file of [`OriginProcess::start`].
    _dir: Option<tempfile::TempDir>,
}

impl OriginProcess {
    /// Starts the binary (built next to the test, see [`workspace_bin`]) on
    /// `config_file`, `env` overriding it (`ALLOT_*`), and returns once it has bound its
    /// port. It may not be ready yet ([`OriginApi::wait_ready`]), and a process told to
    /// fail may already have.
    ///
    /// The origin's log goes to stdout, where its `listening` line carries the address;
    /// the launcher asks for JSON at `info` so the line is there (`env` may override).
    pub fn spawn(config_file: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(workspace_bin("allot-origin")?);
        cmd.args(["serve", "--config"])
            .arg(config_file)
            .env("ALLOT_LOG_LEVEL", "info")
            .env("ALLOT_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Proc::spawn("allot-origin", &mut cmd)?;
        let addr = child
            .watch_stdout(Duration::from_secs(30), |line| {
                let v: Value = serde_json::from_str(line).ok()?;
                (v["message"] == "listening").then(|| v["addr"].as_str()?.parse::<SocketAddr>().ok()).flatten()
            })
            .context("the origin did not log its address")?;
        Ok(Self { child, addr, api: OriginApi::new(addr), _dir: None })
    }

    /// The tests' shorthand: the base config on `redis` with `extra` merged in, in a
    /// temporary file the process owns. Panics if it does not start.
    pub fn start(redis: &RedisServer, extra: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new().prefix("allot-origin-").tempdir().expect("a temporary directory");
        let path = dir.path().join("origin.toml");
        OriginConfig::new().redis(&redis.url()).merge(extra).write(&path).expect("write the config");
        let mut origin = Self::spawn(&path, env).expect("the origin starts");
        origin._dir = Some(dir);
        origin
    }

    /// Waits for the process to exit on its own; its exit code. Panics after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        self.child.wait_exit(secs)
    }

    /// `kill -9`: no graceful shutdown, nothing flushed.
    pub fn kill9(&mut self) {
        self.child.kill();
    }

    /// SIGTERM: the graceful shutdown; see [`wait_exit`](Self::wait_exit).
    pub fn sigterm(&self) {
        self.child.signal("-TERM");
    }
}

impl std::ops::Deref for OriginProcess {
    type Target = OriginApi;

    fn deref(&self) -> &OriginApi {
        &self.api
    }
}

#[cfg(feature = "in-process")]
pub use in_process::{TestApp, config};

#[cfg(feature = "in-process")]
mod in_process {
    use std::net::SocketAddr;

    use allot_origin::{Config, Running};

    use super::{OriginApi, OriginConfig};
    use crate::redis::RedisServer;

    /// The tests' shorthand: the base config on `redis` with `extra` merged in and `env`
    /// overriding it.
    pub fn config(redis: &RedisServer, extra: &str, env: &[(&str, &str)]) -> Config {
        OriginConfig::new().redis(&redis.url()).merge(extra).load(env)
    }

    /// An origin running in this process, on a free port: its internals
    /// ([`TestApp::app`]) are at hand, and a graceful [`TestApp::shutdown`] is a call.
    /// Dereferences to its [`OriginApi`].
    #[derive(Debug)]
    pub struct TestApp {
        pub addr: SocketAddr,
        pub running: Option<Running>,
        api: OriginApi,
    }

    impl TestApp {
        pub async fn start(config: Config) -> Self {
            allot_origin::telemetry::install_crypto();
            let running = allot_origin::start(config).await.expect("the origin starts");
            Self { addr: running.addr, api: OriginApi::new(running.addr), running: Some(running) }
        }

        pub fn app(&self) -> &allot_origin::startup::App {
            &self.running.as_ref().expect("the origin is running").app
        }

        /// Stops it gracefully (what SIGTERM does to the binary).
        pub async fn shutdown(&mut self) {
            if let Some(r) = self.running.take() {
                r.shutdown().await;
            }
        }
    }

    impl std::ops::Deref for TestApp {
        type Target = OriginApi;

        fn deref(&self) -> &OriginApi {
            &self.api
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_counts_every_labelled_series_of_one_name_only() {
        let text = "# TYPE allot_x_total counter\nallot_x_total{why=\"first\"} 1\nallot_x_total{why=\"age\"} 2\n\
                    allot_x_total_more 40\nallot_x_totals 50\n";
        assert_eq!(parse_metric_sum(text, "allot_x_total"), Some(3.0));
        assert_eq!(parse_metric_sum("allot_y 4\n", "allot_y"), Some(4.0));
        assert_eq!(parse_metric_sum(text, "allot_y"), None);
    }
}
