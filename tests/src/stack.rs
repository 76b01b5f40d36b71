//! The whole system on one machine: `redis-server`, `s3s-fs` (the archive's S3), the
//! origin (the real binary), and the edge worker in workerd with a local KV, wired
//! together on free loopback ports.
//!
//! The origin publishes plans to the worker's `/internal/plans` push endpoint and the
//! worker sends sampled events to the origin's `/v1/events`, both signed with one shared
//! key, exactly as a self-hosted deployment runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use allot_archive::partition::Day;
use allot_testkit::events::now_ms;
use allot_testkit::origin::{INGEST_KEY, MANAGER_TOKEN, OriginApi, OriginConfig, OriginProcess, PUSH_KEY};
use allot_testkit::process::{self, Proc, free_port, wait_http};
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;

use crate::delay::DelayProxy;
use anyhow::{Context, bail};

/// The edge's secret (keyed sampling, impression tokens): only the edge holds it.
pub const EDGE_KEY: &str = "allot-test-edge-key-0123456789";
use serde_json::Value;
use tempfile::TempDir;

/// How to run the stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Control period and window length.
    pub period_ms: u64,
    pub min_sample_rate: f64,
    /// The edge reaches the origin through a [`DelayProxy`] (see [`Stack::proxy`]).
    pub edge_via_proxy: bool,
    /// The edge's `EVENT_TIMEOUT_MS` (its default when `None`).
    pub edge_event_timeout_ms: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self { period_ms: 4_000, min_sample_rate: 0.001, edge_via_proxy: false, edge_event_timeout_ms: None }
    }
}

/// A running stack; everything stops on drop.
#[derive(Debug)]
pub struct Stack {
    pub options: Options,
    pub redis_url: String,
    pub origin_url: String,
    pub edge_url: String,
    pub client: reqwest::Client,
    /// The origin's API; its address survives restarts (the edge knows it).
    pub api: OriginApi,
    origin_port: u16,
    config_path: PathBuf,
    origin: Option<OriginProcess>,
    proxy: Option<DelayProxy>,
    edge: Proc,
    redis: RedisServer,
    pub s3: S3Server,
    dir: TempDir,
}

impl Stack {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("allot-stack-").tempdir()?;
        let redis = RedisServer::start();
        let redis_url = redis.url();
        let s3 = S3Server::start();

        // The two ends need each other's address: pick the origin's port first.
        let origin_port = free_port();
        let origin_url = format!("http://127.0.0.1:{origin_port}");
        let proxy = match options.edge_via_proxy {
            true => Some(DelayProxy::start(([127, 0, 0, 1], origin_port).into()).await?),
            false => None,
        };
        let edge_origin = proxy.as_ref().map_or(origin_url.clone(), |p| format!("http://{}", p.addr));

        let mut edge_cmd = Command::new("node");
        edge_cmd
            .arg(process::repo_root().join("tests/edge.mjs"))
            .env("ORIGIN_URL", &edge_origin)
            .env("INGEST_KEY", INGEST_KEY)
            .env("PUSH_KEYS", PUSH_KEY)
            .env("EDGE_KEY", EDGE_KEY)
            .env("ALLOT_EDGE_STATE", dir.path().join("kv"))
            .stdout(Stdio::piped());
        if let Some(ms) = options.edge_event_timeout_ms {
            edge_cmd.env("EVENT_TIMEOUT_MS", ms.to_string());
        }
        let mut edge = Proc::spawn("edge worker", &mut edge_cmd)?;
        let edge_url = edge.watch_stdout(Duration::from_secs(60), |line| {
            line.strip_prefix("listening ").map(|rest| rest.trim().to_string())
        })?;
        wait_http(&format!("{edge_url}/healthz"), 30).await;

        let config_path = dir.path().join("origin.toml");
        origin_config(&options, origin_port, &redis_url, &edge_url, &s3).write(&config_path)?;
        let mut stack = Self {
            options,
            redis_url,
            api: OriginApi::new(format!("127.0.0.1:{origin_port}")),
            origin_url,
            edge_url,
            client: process::http_client(Duration::from_secs(10)),
            origin_port,
            config_path,
            origin: None,
            proxy,
            edge,
            redis,
            s3,
            dir,
        };
        stack.start_origin().await?;
        Ok(stack)
    }

    /// Starts (or restarts) the origin process, and waits until it is ready.
    pub async fn start_origin(&mut self) -> anyhow::Result<()> {
        if self.origin.is_some() {
            bail!("the origin is already running");
        }
        self.origin = Some(OriginProcess::spawn(&self.config_path, &[])?);
        self.api.wait_ready(30).await;
        Ok(())
    }

    /// `kill -9` the origin: no graceful shutdown, nothing flushed.
    pub fn kill_origin(&mut self) -> anyhow::Result<()> {
        self.origin.take().context("the origin is not running")?.kill9();
        Ok(())
    }

    /// Stops everything gracefully (SIGTERM), the origin first.
    pub fn stop(mut self) {
        if let Some(mut origin) = self.origin.take() {
            origin.child.terminate(Duration::from_secs(10));
        }
        self.edge.terminate(Duration::from_secs(5));
    }

    /// The proxy between the edge and the origin, with [`Options::edge_via_proxy`].
    pub fn proxy(&self) -> Option<&DelayProxy> {
        self.proxy.as_ref()
    }

    pub fn origin_port(&self) -> u16 {
        self.origin_port
    }

    pub fn redis(&self) -> &RedisServer {
        &self.redis
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The origin's config file (its `[archive]` section also serves `allot-report`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Runs `allot-report NAME` for today on the local engine and returns the
    /// rows (JSON).
    pub async fn report(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let out = self.run_report(name, "json").await?;
        serde_json::from_str(&out).context("report output is JSON")
    }

    /// The same, as a table for people.
    pub async fn report_table(&self, name: &str) -> anyhow::Result<String> {
        self.run_report(name, "table").await
    }

    async fn run_report(&self, name: &str, format: &str) -> anyhow::Result<String> {
        let today = today_utc();
        let out = tokio::process::Command::new(process::workspace_bin("allot-report")?)
            .args([name, "--from", &today, "--to", &today, "--engine", "local", "--format", format])
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .await?;
        if !out.status.success() {
            bail!("report {name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `PUT /v1/placements/{id}` as the manager.
    pub async fn put_placement(&self, id: &str, targets: &Value) -> anyhow::Result<()> {
        let r = self.api.put_targets(id, targets, MANAGER_TOKEN).await;
        if !r.status().is_success() {
            bail!("PUT /v1/placements/{id}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// `GET /v1/placements/{id}/status` as the manager.
    pub async fn status(&self, id: &str) -> anyhow::Result<Value> {
        let (code, status) = self.api.get_json(&format!("/v1/placements/{id}/status"), MANAGER_TOKEN).await;
        if code != 200 {
            bail!("GET status of {id}: {code} {status}");
        }
        Ok(status)
    }

    /// The edge's plan version for `placement` (from a `/v1/ad` answer), if it has one.
    pub async fn edge_plan_version(&self, placement: &str) -> anyhow::Result<Option<u64>> {
        let r = self.client.get(format!("{}/v1/ad?placement={placement}", self.edge_url)).send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let v: Value = r.json().await?;
        Ok(v["plan_version"].as_u64())
    }
}

/// Today's date in UTC, `YYYY-MM-DD`: the archive's day partition of now.
pub fn today_utc() -> String {
    Day::of_unix_ms(now_ms()).to_string()
}

/// The test kit's origin configuration, with what the stack changes: the port the edge
/// was given, the edge's batch sizes, the stack's control period, plans pushed to the
/// edge, and the archive in `s3` (also read by `allot-report`).
fn origin_config(o: &Options, port: u16, redis_url: &str, edge_url: &str, s3: &S3Server) -> OriginConfig {
    let stack = format!(
        r#"
[ingest]
max_skew_secs = 300
# The edge's batches of up to 1,000 events, not the tests' small bodies.
max_body_bytes = 1048576

[aggregate]
block_ms = 100
claim_min_idle_ms = 1000

[control]
period_ms = {period}
recent_windows = 5
min_sample_rate = {min_rate:?}
republish_after_secs = 60
lease_ms = {lease}

[publish]
kind = "worker"

[publish.worker]
url = "{edge_url}"
keys = ["{PUSH_KEY}"]

[archive]
flush_max_age_secs = 2
retry_max_backoff_ms = 1000
consumer = "stack-origin"
"#,
        period = o.period_ms,
        min_rate = o.min_sample_rate,
        lease = (o.period_ms * 2).max(2_000),
    );
    OriginConfig::new().listen_port(port).redis(redis_url).archive(s3).merge(&stack)
}
