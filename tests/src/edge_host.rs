//! How the stack serves the edge worker: through Miniflare (`tests/edge.mjs`, its KV
//! persisted on disk, as the demo and the tests run it), or in plain `workerd serve` with
//! a memory KV service, as `bench/workerd.capnp` does. Miniflare costs about 126 µs of
//! workerd CPU per request on top of the worker's 53 (`docs/performance.md`), which sets
//! the ceiling of a full path run through it; plain workerd is for load runs.

use std::path::Path;
use std::process::{Command, Stdio};

use allot_testkit::process::{self, free_port};

/// Who hosts the edge worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EdgeHost {
    /// Miniflare (`tests/edge.mjs`): a KV persisted under the stack's directory.
    #[default]
    Miniflare,
    /// `workerd serve` with a generated config: KV in memory (lost with the process).
    Workerd,
}

/// The command that starts the edge. `env` are the worker's bindings; `dir` holds what
/// the host keeps. The Miniflare script prints `listening <url>`; for workerd the URL is
/// returned, the port chosen here.
pub fn command(host: EdgeHost, env: &[(&str, String)], dir: &Path) -> std::io::Result<(Command, Option<String>)> {
    let root = process::repo_root();
    match host {
        EdgeHost::Miniflare => {
            let mut cmd = Command::new("node");
            cmd.arg(root.join("tests/edge.mjs")).env("ALLOT_EDGE_STATE", dir.join("kv"));
            cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str()))).stdout(Stdio::piped());
            Ok((cmd, None))
        }
        EdgeHost::Workerd => {
            // capnp's `embed` resolves relative to the config: link what it embeds beside it.
            let edge = dir.join("workerd");
            std::fs::create_dir_all(&edge)?;
            for (link, target) in [
                ("index.js", "worker/build/index.js"),
                ("index_bg.wasm", "worker/build/index_bg.wasm"),
                ("kv.js", "bench/kv.js"),
                ("plan.json", "bench/plan.json"),
            ] {
                let _ = std::fs::remove_file(edge.join(link));
                std::os::unix::fs::symlink(root.join(target), edge.join(link))?;
            }
            std::fs::write(edge.join("edge.capnp"), config(env))?;
            let port = free_port();
            let mut cmd = Command::new(root.join("node_modules/.bin/workerd"));
            cmd.arg("serve").arg(edge.join("edge.capnp")).arg("--socket-addr").arg(format!("http=127.0.0.1:{port}"));
            cmd.stdout(Stdio::null());
            Ok((cmd, Some(format!("http://127.0.0.1:{port}"))))
        }
    }
}

/// The workerd config: the worker with `env` as text bindings and `PLANS` on the memory
/// KV service, its outbound fetches (the events to the origin) allowed to loopback.
fn config(env: &[(&str, String)]) -> String {
    let bindings: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("(name = \"{k}\", text = \"{}\")", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .chain(["(name = \"PLANS\", kvNamespace = \"plans-kv\")".to_string()])
        .collect();
    format!(
        r#"using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "edge", worker = .edge),
    (name = "plans-kv", worker = .kv),
    (name = "net", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:0", http = (), service = "edge")],
);
const edge :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "{date}",
  bindings = [{}],
  globalOutbound = "net",
);
const kv :Workerd.Worker = (
  modules = [(name = "kv.js", esModule = embed "kv.js"), (name = "plan.json", text = embed "plan.json")],
  compatibilityDate = "{date}",
);
"#,
        bindings.join(", "),
        date = compatibility_date()
    )
}

/// The date the worker is deployed with (`wrangler.toml`), so the tests run it under
/// the runtime's behaviour of that date.
fn compatibility_date() -> &'static str {
    include_str!("../../wrangler.toml")
        .lines()
        .find_map(|l| l.strip_prefix("compatibility_date = \"")?.strip_suffix('"'))
        .expect("wrangler.toml names a compatibility_date")
}
