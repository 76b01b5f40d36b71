//! A throwaway S3-compatible server (`s3s-fs`, signature-checking, plain files on disk)
//! on a free port, for the archive's tests and the stack.
//!
//! The bucket is a directory under the server's root, so tests can look at objects as
//! files. [`S3Server::stop`] and [`S3Server::restart`] (same port, same files) simulate
//! an outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::process::{TempDir, free_port, tool, wait_for_port};

pub const ACCESS_KEY: &str = "AKIAALLOTTEST";
pub const SECRET_KEY: &str = "allot-test-secret-key";
pub const BUCKET: &str = "archive";

/// An `s3s-fs` process over a temporary directory with [`BUCKET`] created, killed on drop.
#[derive(Debug)]
pub struct S3Server {
    pub port: u16,
    root: TempDir,
    child: Option<Child>,
}

impl S3Server {
    /// Starts one. Panics if `s3s-fs` is not installed (`scripts/tools.sh s3`).
    pub fn start() -> Self {
        let root = TempDir::new("s3").expect("a temporary directory");
        std::fs::create_dir(root.path().join(BUCKET)).expect("the bucket directory");
        let mut s3 = Self { port: free_port().expect("a free port"), root, child: None };
        s3.restart();
        s3
    }

    /// Starts (again) on the same port and directory.
    pub fn restart(&mut self) {
        let bin = tool("s3s-fs");
        assert!(bin.exists(), "{} is missing: run `bash scripts/tools.sh s3`", bin.display());
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        wait_for_port(self.port, "s3s-fs");
    }

    /// Kills the server; objects stay on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
