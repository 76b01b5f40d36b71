//! Real servers for the tests: s3s-fs, redis-server and moto_server, each on a free port
//! with its own temporary state, killed on drop; DuckDB through the tools virtualenv.
//!
//! The binaries come from the project's tool caches (`scripts/tools.sh s3`,
//! `scripts/py-tools.sh`); a missing one fails the test with the command that installs it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use allot_archive::ArchiveConfig;
use allot_core::{CampaignId, Event, EventBatch, EventKind, PlacementId, RequestId};
use redis::TypedCommands;

pub use allot_e2e::process::{repo_root, wait_for_port};

fn need(path: PathBuf, install: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: run `{install}` first", path.display());
    path
}

pub fn venv_bin(name: &str) -> PathBuf {
    need(allot_e2e::process::cache_dir().join("venv/bin").join(name), "bash scripts/py-tools.sh")
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub use allot_e2e::redis_server::RedisServer as Redis;
pub use allot_e2e::s3_server::{ACCESS_KEY, BUCKET, S3Server as S3, SECRET_KEY};

/// The archive configuration for a test S3 server.
pub trait S3Config {
    fn config(&self) -> ArchiveConfig;
    fn keys(&self) -> Vec<String>;
}

impl S3Config for S3 {
    fn config(&self) -> ArchiveConfig {
        let mut cfg = ArchiveConfig::new(BUCKET);
        cfg.endpoint = Some(self.endpoint());
        cfg.prefix = "test/".into();
        cfg.access_key_id = Some(ACCESS_KEY.into());
        cfg.secret_access_key = Some(SECRET_KEY.into());
        cfg.path_style = true;
        cfg.flush_max_age_secs = 1;
        cfg.retry_max_backoff_ms = 400;
        cfg
    }

    fn keys(&self) -> Vec<String> {
        self.parquet_keys()
    }
}

/// Appends one batch to the event stream the way the origin's ingest does.
pub fn xadd(conn: &mut redis::Connection, batch: &EventBatch, received_ms: u64) -> String {
    let placement = batch.events[0].placement.as_str().to_string();
    let fields = [("p", placement), ("e", batch.to_json()), ("r", received_ms.to_string())];
    conn.xadd("allot:events", "*", &fields).expect("xadd").expect("id")
}

/// A moto_server (with Athena result paging, see moto_paged.py).
#[derive(Debug)]
pub struct Moto {
    pub port: u16,
    _proc: Proc,
}

impl Moto {
    pub fn start() -> Self {
        let port = allot_e2e::process::free_port().expect("a free port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/moto_paged.py");
        let child = Command::new(venv_bin("python"))
            .arg(script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        wait_for_port(port, "moto_server");
        Self { port, _proc: Proc(child) }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// POSTs JSON to moto's control API and returns the status code.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> u16 {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect moto");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }
}

/// Runs a DuckDB query (from PyPI, a third-party Parquet reader) and returns its rows.
pub fn duckdb(sql: &str) -> Vec<Vec<serde_json::Value>> {
    let script = "import duckdb, json, sys\n\
                  rows = duckdb.sql(sys.argv[1]).fetchall()\n\
                  print(json.dumps([list(r) for r in rows], default=str))";
    let out = Command::new(venv_bin("python")).args(["-c", script, sql]).output().expect("run python");
    assert!(out.status.success(), "duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("duckdb json")
}

/// A deterministic event.
#[allow(clippy::too_many_arguments)]
pub fn event(
    kind: EventKind,
    request: &str,
    placement: &str,
    time_ms: u64,
    ad: Option<&str>,
    eligible: &[&str],
    version: u64,
    rate: f64,
) -> Event {
    Event {
        kind,
        event_time_ms: time_ms,
        request_id: RequestId::parse(request).expect("request id"),
        placement: PlacementId::parse(placement).expect("placement"),
        ad_id: ad.map(|a| CampaignId::parse(a).expect("campaign")),
        plan_version: version,
        sample_rate: rate,
        eligible: eligible.iter().map(|c| CampaignId::parse(*c).expect("campaign")).collect(),
        platform: Some("ios".into()),
        country: Some("DE".into()),
        colo: Some("FRA".into()),
    }
}
