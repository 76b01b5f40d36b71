//! `allot-full-path`: the whole path under open-loop load on this machine, reported as
//! Markdown tables (and JSON with `--json`). `scripts/bench-full.sh` builds and runs it.

use std::time::Duration;

use allot_e2e::edge_host::EdgeHost;
use allot_e2e::fullpath::{FullPath, Options};
use allot_e2e::render;
use allot_testkit::events::now_ms;
use clap::Parser;

/// Starts Redis (append-only file), an S3 server, the origin (control loop live, the
/// archiver embedded) and the edge worker in workerd with a local KV, sets the demo's
/// placements, then sends app requests to the edge at constant rates, one step per rate,
/// and reports latency from each request's scheduled time, errors, CPU per process,
/// Redis's work, the shares the apps saw against the targets, the plans and sample rates
/// window by window, and the archive's rows.
#[derive(Debug, Parser)]
#[command(name = "allot-full-path", version)]
struct Args {
    /// Requests per second of each step, e.g. `4000,6000,8000,10000`.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    rates: Vec<f64>,
    /// Measured seconds of each step.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Unmeasured seconds at each step's rate before it.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Control period (= window length), seconds.
    #[arg(long, default_value_t = 5)]
    period: u64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// A request not answered this many seconds after its scheduled time is an error.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// The shares are judged over each step's last this many seconds.
    #[arg(long, default_value_t = 120)]
    judge: u64,
    /// Copies of the demo's two placements.
    #[arg(long, default_value_t = 1)]
    copies: usize,
    /// After the steps, this many requests per second …
    #[arg(long, default_value_t = 25.0)]
    quiet_rate: f64,
    /// … for this many seconds (0: no quiet stretch): how the sample rate follows traffic down.
    #[arg(long, default_value_t = 60)]
    quiet_seconds: u64,
    /// Who serves the edge worker: Miniflare (as the demo and the tests) or plain workerd
    /// with a memory KV (without Miniflare's cost per request).
    #[arg(long, value_enum, default_value_t = EdgeHost::Miniflare)]
    edge: EdgeHost,
    /// Also write the whole report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let options = Options {
        period_ms: a.period.max(1) * 1000,
        concurrency: a.concurrency,
        timeout: Duration::from_secs(a.timeout.max(1)),
        warmup: Duration::from_secs(a.warmup),
        judge: Duration::from_secs(a.judge),
        copies: a.copies,
        redis_fsync_always: false,
        edge_host: a.edge,
    };
    eprintln!("starting redis-server (AOF), s3s-fs, the origin and the edge worker …");
    let mut run = FullPath::start(options).await?;
    let started_ms = now_ms();
    let mut steps = Vec::new();
    for &rate in &a.rates {
        eprintln!("step: {rate} requests/s for {} s (after {} s of warm-up) …", a.seconds, a.warmup);
        let step = run.step(rate, Duration::from_secs(a.seconds), None).await?;
        eprintln!("{}", render::steps(std::slice::from_ref(&step)));
        steps.push(step);
    }
    let quiet = match a.quiet_seconds {
        0 => None,
        s => {
            eprintln!("quiet: {} requests/s for {s} s …", a.quiet_rate);
            Some(run.quiet(a.quiet_rate, Duration::from_secs(s)).await?)
        }
    };
    // The windows the quiet stretch ended in are recorded by the next rounds.
    tokio::time::sleep(Duration::from_millis(2 * run.options.period_ms)).await;
    let observed: Vec<_> = steps.iter().map(|s| &s.observed).chain(quiet.as_ref()).collect();
    let windows = run.windows(started_ms, &observed).await?;
    eprintln!("draining the edge's outbox and the archive …");
    let drained = run.drain(Duration::from_secs(120)).await?;

    println!("## Steps\n\n{}", render::steps(&steps));
    println!("## CPU by process\n\n{}", render::cpu(&steps));
    println!("## Shares the apps observed\n\n{}", render::shares(&steps, FullPath::margin()));
    println!("## Plans and sample rates by window\n\n{}", render::windows(&windows));
    println!("## Archive\n\n{}", render::drained(&drained));
    if let Some(path) = a.json {
        let json = serde_json::json!({"steps": steps, "windows": windows, "drained": drained});
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    }
    run.stack.stop();
    Ok(())
}
