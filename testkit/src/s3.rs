//! A throwaway S3-compatible server (`s3s-fs`, signature-checking, plain files on disk)
//! on a free port: the archive's S3 in its tests, the stack and the bench.
//!
//! The bucket is a directory under the server's root, so tests can look at objects as
//! files. [`S3Server::stop`] and [`S3Server::restart`] (same port, same files) simulate
//! an outage.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use allot_archive::ArchiveConfig;
use tempfile::TempDir;

use crate::process::{Proc, cache_dir, free_port, need, wait_for_port};

pub const ACCESS_KEY: &str = "AKIAALLOTTEST";
pub const SECRET_KEY: &str = "allot-test-secret-key";
pub const BUCKET: &str = "archive";

/// An `s3s-fs` process over a temporary directory with [`BUCKET`] created, killed on drop.
#[derive(Debug)]
pub struct S3Server {
    pub port: u16,
    // Declared before the directory, so the server dies before its files go.
    proc: Option<Proc>,
    root: TempDir,
}

impl S3Server {
    /// Starts one. Panics if `s3s-fs` is not installed (`scripts/tools.sh s3`).
    pub fn start() -> Self {
        let root = tempfile::Builder::new().prefix("allot-s3-").tempdir().expect("a temporary directory");
        std::fs::create_dir(root.path().join(BUCKET)).expect("the bucket directory");
        let mut s3 = Self { port: free_port(), proc: None, root };
        s3.restart();
        s3
    }

    /// Starts (again) on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        let bin = need(cache_dir().join("tools/bin/s3s-fs"), "bash scripts/tools.sh s3");
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.proc = Some(Proc::spawn("s3s-fs", &mut cmd).expect("spawn s3s-fs"));
        wait_for_port(self.port, "s3s-fs");
    }

    /// Kills the server; objects stay on disk.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// The server's process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::id)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The archive writer's configuration for this server: objects under `test/`, and a
    /// flush age and retry backoff short enough for tests.
    pub fn archive_config(&self) -> ArchiveConfig {
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

    /// The bucket as plain files.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// Every `.parquet` object in the bucket, as keys, sorted.
    pub fn parquet_keys(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if p.extension().is_some_and(|e| e == "parquet")
                    && let Ok(rel) = p.strip_prefix(base)
                {
                    out.push(rel.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.bucket_dir(), &self.bucket_dir(), &mut out);
        out.sort();
        out
    }

    /// The stored bytes of each object.
    pub fn object_bytes(&self, keys: &[String]) -> Vec<Vec<u8>> {
        keys.iter().map(|k| std::fs::read(self.bucket_dir().join(k)).expect("a stored object")).collect()
    }
}
