//! Child processes that die with their owner, free ports, and where the binaries are.
//!
//! Every server a test starts is a real process on a free loopback port. A [`Proc`] runs
//! in a process group of its own and the whole group is killed on drop, so a failing test
//! never leaves servers behind, not even the helpers a server started itself (Node's
//! workerd).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::poll::eventually_blocking;

/// A loopback port that was free a moment ago. The servers under test take their port
/// on the command line, so the port is picked here, and another process could take it
/// before the server binds it.
///
/// Not a port the kernel hands out for `:0`: those come from the ephemeral range
/// (32768–60999 on Linux), the same ports outgoing connections take, and a test that
/// makes thousands of connections (the full path's load, the benches) takes the port
/// just freed often enough that a server fails to start. So the port is drawn at random
/// below that range, in 20000–32767, and checked free; `:0` only if none is found.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    const LOW: u16 = 20_000;
    const SPAN: u64 = 32_768 - LOW as u64;
    let draw = RandomState::new();
    (0u32..200)
        .map(|i| LOW + (draw.hash_one(i) % SPAN) as u16)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .or_else(|| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).ok())
        .expect("a free loopback port")
}

/// Blocks until a TCP port on loopback accepts connections; panics after 30 s (a server
/// that never listens cannot be tested against).
pub fn wait_for_port(port: u16, what: &str) {
    eventually_blocking(30, &format!("{what} to listen on {port}"), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
    });
}

/// A child process in a process group of its own, killed with its group on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    child: Child,
    /// Reaped: its id may be another process's now, so it is signalled no more.
    reaped: bool,
}

impl Proc {
    /// Starts `cmd`. Its stdin is a pipe held until the drop, so a child that exits when
    /// its stdin closes (the edge's Node script) dies with this process even when this
    /// process is killed first.
    pub fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self { name, child, reaped: false })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Reads the child's stdout (spawned piped) until `find` recognises a line; returns
    /// what it made of it. The rest of the output is drained in the background, so the
    /// child never blocks on a full pipe.
    pub fn watch_stdout<T: Send + 'static>(
        &mut self,
        within: Duration,
        mut find: impl FnMut(&str) -> Option<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let out = self.child.stdout.take().with_context(|| format!("{}'s stdout is not piped", self.name))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(found) = tx.as_ref().and_then(|_| find(&line))
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(found);
                }
            }
        });
        match rx.recv_timeout(within) {
            Ok(found) => Ok(found),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("{} printed nothing expected within {within:?}", self.name),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{} exited before printing what was expected", self.name)
            }
        }
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        self.reaped |= status.is_some();
        Ok(status)
    }

    /// Waits for the child to exit on its own; its exit code. Panics after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let name = self.name;
        eventually_blocking(secs, &format!("{name} to exit"), || self.try_wait().ok().flatten()).code()
    }

    /// `kill -9` of the whole group: no shutdown hooks, nothing flushed. A child that
    /// exited on its own is still a zombie holding its id until reaped here, so its
    /// group is signalled safely.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        self.signal_group("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// SIGTERM to the child alone (it shuts down its own helpers), then waits `grace` for
    /// a clean exit before killing the group.
    pub fn terminate(&mut self, grace: Duration) {
        self.signal("-TERM");
        if crate::poll::until_blocking(grace, || self.try_wait().ok().flatten()).is_none() {
            self.kill();
        }
    }

    /// Sends `signal` (e.g. `-TERM`) to the child alone, unless it has been reaped.
    pub fn signal(&self, signal: &str) {
        if self.reaped {
            return;
        }
        signal_pid(self.child.id(), signal);
    }

    fn signal_group(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args([signal, "--", &group]).stderr(Stdio::null()).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The repository root (this crate lives in `testkit/`).
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

/// `path`, which `install` puts there; panics with that command if it is missing, so a
/// machine without the tools fails with what to run rather than an obscure spawn error.
pub fn need(path: PathBuf, install: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: run `{install}` first", path.display());
    path
}

/// A program of the tools virtualenv (python with moto, DuckDB, cfn-lint, checkov),
/// installed by `scripts/py-tools.sh`.
pub fn venv_bin(name: &str) -> PathBuf {
    need(cache_dir().join("venv/bin").join(name), "bash scripts/py-tools.sh")
}

/// schemathesis, the property-based API tester, in its own virtualenv (its dependencies
/// and the other tools' need not agree), installed by `scripts/py-tools.sh`.
pub fn schemathesis() -> PathBuf {
    need(cache_dir().join("venv-schemathesis/bin/schemathesis"), "bash scripts/py-tools.sh")
}

/// The Python that drives a real headless Chromium (Playwright, in its own virtualenv;
/// the browser is Debian's `chromium`), installed by `scripts/py-tools.sh` and
/// `scripts/tools.sh browser`.
pub fn browser_python() -> PathBuf {
    need(PathBuf::from("/usr/bin/chromium"), "bash scripts/tools.sh browser");
    need(cache_dir().join("venv-browser/bin/python"), "bash scripts/py-tools.sh")
}

/// An HTTP client for servers on loopback. reqwest may be built with TLS but no crypto
/// provider (feature unification with the origin), so one is installed first.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    http_client_pooled(timeout, 64)
}

/// [`http_client`] keeping up to `idle` idle connections per host: a load generator
/// with many requests in flight would otherwise close and reopen connections.
pub fn http_client_pooled(timeout: Duration, idle: usize) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(idle)
        // Below every server's keep-alive timeout (Node's, under the local edge, is 5 s):
        // a connection the server may be closing is never reused, so a request is not
        // lost to that race, which says nothing about the system under test.
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

/// Polls `url` until it answers 2xx; panics after `secs`.
pub async fn wait_http(url: &str, secs: u64) {
    let client = http_client(Duration::from_secs(2));
    crate::poll::eventually(secs, &format!("{url} to answer"), async || {
        let r = client.get(url).timeout(Duration::from_secs(1)).send().await;
        r.is_ok_and(|r| r.status().is_success())
    })
    .await
}

/// Sends `signal` (e.g. `-STOP`, `-CONT`) to process `pid`: for a server's helper that
/// is not a [`Proc`] itself (the edge's `workerd`). Only for processes this test started.
pub fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status();
}

/// CPU time a process has used so far (user + system, all its threads), in seconds, as
/// `/proc/{pid}/stat` counts it; `None` once it is gone. Benchmarks take differences.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// The machine's load average over 1, 5 and 15 minutes (zeros if `/proc` cannot say).
pub fn load_average() -> (f32, f32, f32) {
    use procfs::Current;
    procfs::LoadAverage::current().map(|l| (l.one, l.five, l.fifteen)).unwrap_or_default()
}

/// The processes below `pid` (children, their children, …) with their command names:
/// a server's helpers, e.g. the `workerd` that the edge's Node script runs.
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    let parents: Vec<(u32, u32, String)> = all
        .flatten()
        .filter_map(|p| p.stat().ok())
        .filter_map(|s| Some((u32::try_from(s.pid).ok()?, u32::try_from(s.ppid).ok()?, s.comm)))
        .collect();
    let mut out: Vec<(u32, String)> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (child, _, comm) in parents.iter().filter(|(_, ppid, _)| *ppid == parent) {
            out.push((*child, comm.clone()));
            frontier.push(*child);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_and_children_come_from_proc() {
        let mut child = Proc::spawn("sleep", Command::new("sleep").arg("30")).expect("spawn sleep");
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some_and(|s| s >= 0.0));
        let below = descendants(me);
        assert!(below.iter().any(|(pid, comm)| *pid == child.id() && comm == "sleep"), "{below:?}");
        child.kill();
        assert_eq!(cpu_seconds(child.id()), None, "a reaped process has no CPU time");
    }
}
