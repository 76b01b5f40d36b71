//! Child processes that die with their owner, free ports, and waiting for readiness.
//!
//! Every server the stack starts is a real process on a free loopback port. A
//! [`Proc`] kills its child on drop (and, for Node, closes its stdin so it exits even if
//! this process is killed first), so a failing test never leaves servers behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process in a process group of its own; the whole group is killed on drop,
/// so helpers it started (Node's workerd) die with it even when this process panics.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .process_group(0)
            .kill_on_drop(true)
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.as_std().get_program()))?;
        Ok(Self { name, child })
    }

    fn kill_group(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Reads the child's stdout until a line starts with `prefix`; returns the rest.
    pub async fn read_line_starting(&mut self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let out = self.child.stdout.take().context("stdout is not piped")?;
        let mut lines = BufReader::new(out).lines();
        let found = tokio::time::timeout(within, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok::<_, anyhow::Error>(rest.trim().to_string());
                }
            }
            bail!("{} exited before printing {prefix:?}", self.name)
        })
        .await
        .with_context(|| format!("{} did not print {prefix:?} within {within:?}", self.name))??;
        // Keep draining so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(found)
    }

    /// `kill -9` (the whole group): no shutdown hooks, no flushing.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.kill_group();
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit (or kill after `grace`).
    pub async fn terminate(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        self.kill_group();
        let _ = self.child.kill().await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// An HTTP client (plain HTTP on loopback; a TLS provider is installed in case the
/// build enabled TLS).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(timeout).pool_max_idle_per_host(64).build().unwrap_or_default()
}

/// Polls `url` until it answers 2xx.
pub async fn wait_http(url: &str, within: Duration) -> anyhow::Result<()> {
    let client = http_client(Duration::from_secs(2));
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocks until a TCP port on loopback accepts connections; panics after 30 s (a test
/// server that never listens cannot be tested against).
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "allot-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A binary of this workspace, built next to the running executable (tests run from
/// `target/<profile>/deps/`, binaries from `target/<profile>/`). `ALLOT_<NAME>_BIN`
/// overrides, e.g. `ALLOT_ORIGIN_BIN`.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("ALLOT_{}_BIN", name.trim_start_matches("allot-").to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} is not built next to {}: run `cargo build --bins` first (or set {var})", exe.display())
}

/// The tool cache (`$ALLOT_CACHE`, default `~/.cache/allot`) the install scripts fill.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ALLOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/allot"))
}

/// A cached tool (`~/.cache/allot/tools/bin`), installed by `scripts/tools.sh`.
pub fn tool(name: &str) -> PathBuf {
    cache_dir().join("tools/bin").join(name)
}
