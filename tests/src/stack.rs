//! The whole system on one machine: `redis-server`, `s3s-fs` (the archive's S3), the
//! origin (the real binary), and the edge worker in workerd with a local KV, wired
//! together on free loopback ports.
//!
//! The origin publishes plans to the worker's `/internal/plans` push endpoint and the
//! worker sends sampled events to the origin's `/v1/events`, both signed with one shared
//! key, exactly as a self-hosted deployment runs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::process::{self, Proc, TempDir, free_port, wait_http};
use crate::redis_server::RedisServer;
use crate::s3_server::{self, S3Server};

/// The key the edge signs with and the origin verifies.
pub const INGEST_KEY: &str = "allot-local-ingest-key-0123456789";
/// The manager's bearer token.
pub const MANAGER_TOKEN: &str = "allot-local-manager-token";

/// How to run the stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Control period and window length.
    pub period_ms: u64,
    pub min_sample_rate: f64,
    /// Log level of the origin.
    pub log_level: String,
}

impl Default for Options {
    fn default() -> Self {
        Self { period_ms: 4_000, min_sample_rate: 0.001, log_level: "warn".into() }
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
    origin_port: u16,
    config_path: PathBuf,
    origin: Option<Proc>,
    edge: Proc,
    redis: RedisServer,
    pub s3: S3Server,
    dir: TempDir,
}

impl Stack {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let dir = TempDir::new("stack")?;

        let redis = RedisServer::start();
        let redis_url = redis.url();
        let s3 = S3Server::start();

        // The two ends need each other's address: pick the origin's port first.
        let origin_port = free_port()?;
        let origin_url = format!("http://127.0.0.1:{origin_port}");

        let mut edge = Proc::spawn(
            "edge worker",
            Command::new("node")
                .arg(process::repo_root().join("tests/edge.mjs"))
                .env("ORIGIN_URL", &origin_url)
                .env("INGEST_KEY", INGEST_KEY)
                .env("ALLOT_EDGE_STATE", dir.path().join("kv"))
                .stdout(Stdio::piped()),
        )?;
        let edge_url = edge.read_line_starting("listening ", Duration::from_secs(60)).await?;
        wait_http(&format!("{edge_url}/healthz"), Duration::from_secs(30)).await?;

        let config_path = dir.path().join("origin.toml");
        std::fs::write(&config_path, origin_config(&options, origin_port, &redis_url, &edge_url, &s3.endpoint()))?;
        let mut stack = Self {
            options,
            redis_url,
            origin_url,
            edge_url,
            client: process::http_client(Duration::from_secs(10)),
            origin_port,
            config_path,
            origin: None,
            edge,
            redis,
            s3,
            dir,
        };
        stack.start_origin().await?;
        Ok(stack)
    }

    /// Starts (or restarts) the origin process.
    pub async fn start_origin(&mut self) -> anyhow::Result<()> {
        if self.origin.is_some() {
            bail!("the origin is already running");
        }
        let bin = process::workspace_bin("allot-origin")?;
        let proc = Proc::spawn(
            "origin",
            Command::new(bin)
                .args(["serve", "--config"])
                .arg(&self.config_path)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )?;
        self.origin = Some(proc);
        wait_http(&format!("{}/readyz", self.origin_url), Duration::from_secs(30))
            .await
            .context("the origin did not become ready")?;
        Ok(())
    }

    /// `kill -9` the origin: no graceful shutdown, nothing flushed.
    pub async fn kill_origin(&mut self) -> anyhow::Result<()> {
        let mut origin = self.origin.take().context("the origin is not running")?;
        origin.kill().await
    }

    /// Stops everything gracefully (SIGTERM), the origin first.
    pub async fn stop(mut self) {
        if let Some(mut origin) = self.origin.take() {
            origin.terminate(Duration::from_secs(10)).await;
        }
        self.edge.terminate(Duration::from_secs(5)).await;
        drop(self.redis);
    }

    pub fn origin_port(&self) -> u16 {
        self.origin_port
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The origin's config file (its `[archive]` section also serves `allot-report`).
    pub fn config_path(&self) -> &std::path::Path {
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
        let out = Command::new(process::workspace_bin("allot-report")?)
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
        let r = self
            .client
            .put(format!("{}/v1/placements/{id}", self.origin_url))
            .bearer_auth(MANAGER_TOKEN)
            .json(targets)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("PUT /v1/placements/{id}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// `GET /v1/placements/{id}/status` as the manager.
    pub async fn status(&self, id: &str) -> anyhow::Result<Value> {
        let r = self
            .client
            .get(format!("{}/v1/placements/{id}/status", self.origin_url))
            .bearer_auth(MANAGER_TOKEN)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET status of {id}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(r.json().await?)
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

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today_utc() -> String {
    civil_date((crate::traffic::now_ms() / 86_400_000) as i64)
}

/// The date `days` after 1970-01-01 (Hinnant's civil-from-days; no calendar crate needed).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn origin_config(o: &Options, port: u16, redis_url: &str, edge_url: &str, s3_endpoint: &str) -> String {
    let manager_hash = allot_core::signature::hex(&Sha256::digest(MANAGER_TOKEN.as_bytes()));
    format!(
        r#"listen = "127.0.0.1:{port}"

[redis]
url = "{redis_url}"

[ingest]
keys = ["{INGEST_KEY}"]
max_skew_secs = 300

[aggregate]
block_ms = 100
claim_min_idle_ms = 1000

[control]
period_ms = {period}
recent_windows = 5
min_sample_rate = {min_rate}
republish_after_secs = 60
lease_ms = {lease}

[publish]
kind = "worker"

[publish.worker]
url = "{edge_url}"

[admin]
tokens = [{{ name = "manager", role = "manager", sha256 = "{manager_hash}" }}]

[log]
level = "{level}"
format = "json"

[archive]
endpoint = "{s3_endpoint}"
bucket = "{bucket}"
access_key_id = "{access_key}"
secret_access_key = "{secret_key}"
path_style = true
flush_max_age_secs = 2
retry_max_backoff_ms = 1000
consumer = "stack-origin"
"#,
        bucket = s3_server::BUCKET,
        access_key = s3_server::ACCESS_KEY,
        secret_key = s3_server::SECRET_KEY,
        period = o.period_ms,
        min_rate = o.min_sample_rate,
        lease = (o.period_ms * 2).max(2_000),
        level = o.log_level,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_date(0), "1970-01-01");
        assert_eq!(super::civil_date(11_016), "2000-02-29");
        assert_eq!(super::civil_date(20_417), "2025-11-25");
    }
}
