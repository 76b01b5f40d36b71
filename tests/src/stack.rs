//! The whole system on one machine: `redis-server`, `s3s-fs` (the archive's S3), the
//! origin (the real binary), and the edge worker in workerd with a local KV, wired
//! together on free loopback ports.
//!
//! The origin publishes plans to the worker's `/internal/plans` push endpoint and the
//! worker sends sampled events to the origin's `/v1/events`, both signed with one shared
//! key, exactly as a self-hosted deployment runs.

use std::path::{Path, PathBuf};

use std::time::Duration;

use allot_archive::partition::Day;
use allot_testkit::events::now_ms;
use allot_testkit::origin::{INGEST_KEY, MANAGER_TOKEN, OriginApi, OriginConfig, OriginProcess, PUSH_KEY};
use allot_testkit::process::{self, Proc, free_port, wait_http};
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;

use crate::delay::DelayProxy;
use crate::edge_host::{self, EdgeHost};
use anyhow::{Context, bail};

/// The edge's secret (keyed sampling, impression tokens): only the edge holds it.
pub const EDGE_KEY: &str = "allot-test-edge-key-0123456789";
/// Shows the edge's `/healthz` event counters ([`Stack::edge_events`]).
pub const HEALTH_KEY: &str = "allot-test-health-key-0123456789";
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
    /// Origin replicas on one Redis and one archive (at least one). With more than one
    /// the edge reaches them through the proxy, which spreads and fails over.
    pub origins: usize,
    /// Redis persists every write to an append-only file, so [`Stack::restart_redis`]
    /// keeps what it acknowledged.
    pub redis_aof: bool,
    /// Windows the control loop keeps; the windows' TTL grows with it.
    pub recent_windows: u64,
    /// More origin configuration (TOML), merged last.
    pub origin_toml: String,
    /// The edge's `EVENT_BATCH_MAX` (its default when `None`).
    pub edge_batch_max: Option<usize>,
    /// The edge's `EVENT_OUTBOX_MAX_BYTES` (its default when `None`).
    pub edge_outbox_max_bytes: Option<usize>,
    /// Who serves the edge worker.
    pub edge_host: EdgeHost,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            period_ms: 4_000,
            min_sample_rate: 0.001,
            edge_via_proxy: false,
            edge_event_timeout_ms: None,
            origins: 1,
            redis_aof: false,
            recent_windows: 5,
            origin_toml: String::new(),
            edge_batch_max: None,
            edge_outbox_max_bytes: None,
            edge_host: EdgeHost::default(),
        }
    }
}

/// One origin replica: its port and config file survive its restarts.
#[derive(Debug)]
struct Replica {
    port: u16,
    config_path: PathBuf,
    api: OriginApi,
    process: Option<OriginProcess>,
}

/// A running stack; everything stops on drop.
#[derive(Debug)]
pub struct Stack {
    pub options: Options,
    pub redis_url: String,
    pub origin_url: String,
    pub edge_url: String,
    pub client: reqwest::Client,
    /// The (first) origin's API; its address survives restarts (the edge knows it).
    pub api: OriginApi,
    origins: Vec<Replica>,
    proxy: Option<DelayProxy>,
    edge: Proc,
    redis: RedisServer,
    pub s3: S3Server,
    dir: TempDir,
}

impl Stack {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("allot-stack-").tempdir()?;
        let redis = if options.redis_aof { RedisServer::start_with_aof() } else { RedisServer::start() };
        let redis_url = redis.url();
        let s3 = S3Server::start();

        // The two ends need each other's address: pick the origin's port first.
        let ports: Vec<u16> = (0..options.origins.max(1)).map(|_| free_port()).collect();
        let origin_url = format!("http://127.0.0.1:{}", ports[0]);
        let proxy = match options.edge_via_proxy || ports.len() > 1 {
            true => Some(DelayProxy::start_many(ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect()).await?),
            false => None,
        };
        let edge_origin = proxy.as_ref().map_or(origin_url.clone(), |p| format!("http://{}", p.addr));

        let mut env = vec![
            ("ORIGIN_URL", edge_origin.clone()),
            ("INGEST_KEY", INGEST_KEY.to_string()),
            ("PUSH_KEYS", PUSH_KEY.to_string()),
            ("EDGE_KEY", EDGE_KEY.to_string()),
            ("HEALTH_KEY", HEALTH_KEY.to_string()),
            ("PLAN_TTL_SECS", "2".to_string()),
            ("EVENT_BATCH_AGE_MS", "200".to_string()),
        ];
        if let Some(ms) = options.edge_event_timeout_ms {
            env.push(("EVENT_TIMEOUT_MS", ms.to_string()));
        }
        if let Some(n) = options.edge_batch_max {
            env.push(("EVENT_BATCH_MAX", n.to_string()));
        }
        if let Some(n) = options.edge_outbox_max_bytes {
            env.push(("EVENT_OUTBOX_MAX_BYTES", n.to_string()));
        }
        let (mut edge_cmd, url) = edge_host::command(options.edge_host, &env, dir.path())?;
        let mut edge = Proc::spawn("edge worker", &mut edge_cmd)?;
        let edge_url = match url {
            Some(url) => url,
            None => edge.watch_stdout(Duration::from_secs(60), |line| {
                line.strip_prefix("listening ").map(|rest| rest.trim().to_string())
            })?,
        };
        wait_http(&format!("{edge_url}/healthz"), 30).await;

        let mut origins = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            let name = if i == 0 { "origin.toml".to_string() } else { format!("origin-{i}.toml") };
            let config_path = dir.path().join(name);
            origin_config(&options, i, port, &redis_url, &edge_url, &s3).write(&config_path)?;
            origins.push(Replica {
                port,
                config_path,
                api: OriginApi::new(format!("127.0.0.1:{port}")),
                process: None,
            });
        }
        let mut stack = Self {
            options,
            redis_url,
            api: origins[0].api.clone(),
            origin_url,
            edge_url,
            client: process::http_client(Duration::from_secs(10)),
            origins,
            proxy,
            edge,
            redis,
            s3,
            dir,
        };
        for i in 0..stack.origins.len() {
            stack.start_origin_n(i, &[]).await?;
        }
        Ok(stack)
    }

    /// Starts (or restarts) the origin process, and waits until it is ready.
    pub async fn start_origin(&mut self) -> anyhow::Result<()> {
        self.start_origin_n(0, &[]).await
    }

    /// Starts (or restarts) origin replica `i` with `env` (e.g. a failpoint), and waits
    /// until it is ready.
    pub async fn start_origin_n(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let replica = self.origins.get_mut(i).context("no such origin")?;
        if replica.process.is_some() {
            bail!("origin {i} is already running");
        }
        replica.process = Some(OriginProcess::spawn(&replica.config_path, env)?);
        replica.api.wait_ready(30).await;
        Ok(())
    }

    /// Starts origin replica `i` with `env` without waiting for it: for a process that
    /// is expected to exit on its own (a failpoint). See [`Stack::wait_origin_exit`].
    pub fn spawn_origin_n(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let replica = self.origins.get_mut(i).context("no such origin")?;
        if replica.process.is_some() {
            bail!("origin {i} is already running");
        }
        replica.process = Some(OriginProcess::spawn(&replica.config_path, env)?);
        Ok(())
    }

    /// Waits up to `secs` for origin replica `i` to exit on its own; its exit code.
    pub fn wait_origin_exit(&mut self, i: usize, secs: u64) -> anyhow::Result<Option<i32>> {
        let mut process = self.origins.get_mut(i).and_then(|r| r.process.take()).context("not running")?;
        Ok(process.wait_exit(secs))
    }

    /// `kill -9` the origin: no graceful shutdown, nothing flushed.
    pub fn kill_origin(&mut self) -> anyhow::Result<()> {
        self.kill_origin_n(0)
    }

    /// `kill -9` origin replica `i`.
    pub fn kill_origin_n(&mut self, i: usize) -> anyhow::Result<()> {
        self.origins.get_mut(i).and_then(|r| r.process.take()).context("the origin is not running")?.kill9();
        Ok(())
    }

    /// The API of origin replica `i`.
    pub fn origin_api(&self, i: usize) -> &OriginApi {
        &self.origins[i].api
    }

    /// How many origin replicas the stack has.
    pub fn origin_count(&self) -> usize {
        self.origins.len()
    }

    /// `kill -9` of Redis and a start on the same port (with AOF, on the same data).
    pub fn restart_redis(&mut self) {
        self.redis.restart();
    }

    /// Stops everything gracefully (SIGTERM), the origins first.
    pub fn stop(mut self) {
        for replica in &mut self.origins {
            if let Some(mut origin) = replica.process.take() {
                origin.child.terminate(Duration::from_secs(10));
            }
        }
        self.edge.terminate(Duration::from_secs(5));
    }

    /// The stack's processes by name, with their ids: the edge's Node script and its
    /// `workerd`, each origin replica that runs, Redis and the S3 server.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let host = match self.options.edge_host {
            EdgeHost::Miniflare => "edge (node)",
            EdgeHost::Workerd => "edge (workerd)",
        };
        let mut out = vec![(host.to_string(), self.edge.id())];
        out.extend(process::descendants(self.edge.id()).into_iter().map(|(pid, comm)| (format!("edge ({comm})"), pid)));
        for (i, replica) in self.origins.iter().enumerate() {
            if let Some(p) = &replica.process {
                out.push((if i == 0 { "origin".to_string() } else { format!("origin-{i}") }, p.child.id()));
            }
        }
        out.extend(self.redis.pid().map(|pid| ("redis-server".to_string(), pid)));
        out.extend(self.s3.pid().map(|pid| ("s3s-fs".to_string(), pid)));
        out
    }

    /// The proxy between the edge and the origin, with [`Options::edge_via_proxy`].
    pub fn proxy(&self) -> Option<&DelayProxy> {
        self.proxy.as_ref()
    }

    pub fn origin_port(&self) -> u16 {
        self.origins[0].port
    }

    /// The edge worker's `/healthz` event counters (shown with the health key).
    pub async fn edge_events(&self) -> anyhow::Result<Value> {
        let url = format!("{}/healthz", self.edge_url);
        let h: Value = self.client.get(url).bearer_auth(HEALTH_KEY).send().await?.json().await?;
        anyhow::ensure!(h["events"].is_object(), "no event counters in {h}");
        Ok(h["events"].clone())
    }

    pub fn redis(&self) -> &RedisServer {
        &self.redis
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The origin's config file (its `[archive]` section also serves `allot-report`).
    pub fn config_path(&self) -> &Path {
        &self.origins[0].config_path
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
            .arg(self.config_path())
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
/// edge, and the archive in `s3` (also read by `allot-report`). Replica `i` archives
/// as consumer `stack-origin` (`stack-origin-{i}` beyond the first).
fn origin_config(o: &Options, i: usize, port: u16, redis_url: &str, edge_url: &str, s3: &S3Server) -> OriginConfig {
    let stack = format!(
        r#"
[ingest]
# The edge's batches of up to 1,000 events, not the tests' small bodies.
max_body_bytes = 1048576

[aggregate]
block_ms = 100
claim_min_idle_ms = 1000

[control]
period_ms = {period}
recent_windows = {recent}
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
consumer = "{consumer}"
"#,
        period = o.period_ms,
        min_rate = o.min_sample_rate,
        // Twice the period, within the production default's 10 s: shards are granted a
        // third of a lease after an origin starts, and the first plan waits for that.
        lease = (o.period_ms * 2).clamp(2_000, 10_000),
        recent = o.recent_windows,
        consumer = if i == 0 { "stack-origin".to_string() } else { format!("stack-origin-{i}") },
    );
    OriginConfig::new().listen_port(port).redis(redis_url).archive(s3).merge(&stack).merge(&o.origin_toml)
}
