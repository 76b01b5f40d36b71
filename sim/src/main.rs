//! `allot-sim`: see `--help`.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use allot_sim::scenarios::{self, KEYS, Knobs};
use allot_sim::world::{self, Run, Settings};
use allot_sim::{metrics, report};
use clap::Parser;

/// Runs allot's control loop in simulated worlds — traffic that swings and shifts, many
/// colos that see plans late, events that arrive late, twice or never, managers who
/// change targets — over many seeds, and prints per scenario how close the realized
/// shares stay to target, whether the published intervals cover them, how fast changes
/// converge, what faults cost, and whether infeasible and unattainable placements are
/// flagged, with block-bootstrap intervals.
#[derive(Debug, Parser)]
#[command(name = "allot-sim", version)]
struct Args {
    /// Scenarios (comma-separated): steady, diurnal, scale, edge, faults, changes, bias,
    /// reporting.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Seeds per scenario (1..=N).
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Simulated minutes (default: each scenario's own).
    #[arg(long)]
    minutes: Option<u64>,
    /// Multiplies every scenario's traffic.
    #[arg(long, default_value_t = 1.0)]
    traffic: f64,
    /// Control period (= window length), seconds.
    #[arg(long, default_value_t = 60)]
    period: u64,
    /// Seconds after a window ends before it counts as complete and its round runs
    /// (the origin's `control.lateness_ms`; at most a quarter period).
    #[arg(long, default_value_t = 10)]
    lateness: u64,
    /// Seconds after a window ends before its impressions count as complete (the
    /// origin's `control.impression_lateness_ms`; at most a period past the lateness).
    #[arg(long, default_value_t = 60)]
    impression_lateness: u64,
    /// Seconds after a plan is replaced before the requests it still decides are taken
    /// for a stuck colo and made up for (the origin's `control.lag_after_ms`).
    #[arg(long, default_value_t = 90)]
    lag_after: u64,
    /// Decide every request through the sampler on its id (exact, slow).
    #[arg(long)]
    per_request: bool,
    /// Sample every request.
    #[arg(long)]
    census: bool,
    /// Isolates per colo, each with its own spread of the picks, sharing the colo's
    /// requests at random (Cloudflare runs many per colo).
    #[arg(long, default_value = "1")]
    isolates: NonZeroUsize,
    /// Runs in parallel (default: one per core). The figures do not depend on it.
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys: Vec<String> =
        if args.scenario.is_empty() { KEYS.iter().map(|k| k.to_string()).collect() } else { args.scenario.clone() };
    let knobs = Knobs { minutes: args.minutes, traffic: args.traffic, period_s: args.period };
    let settings = Settings {
        per_request: args.per_request,
        census: args.census,
        lateness_s: args.lateness,
        impression_lateness_s: args.impression_lateness,
        lag_after_s: args.lag_after,
        isolates: args.isolates,
        ..Settings::default()
    };
    let threads = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let seeds: Vec<u64> = (args.first_seed..args.first_seed + args.seeds).collect();
    println!(
        "seeds {}–{}, traffic × {}, period {} s, rounds {} s after a window ends (impressions: {} s){}{}{}\n",
        seeds[0],
        seeds[seeds.len() - 1],
        args.traffic,
        args.period,
        args.lateness,
        args.impression_lateness,
        if args.per_request { ", every request through the sampler" } else { "" },
        if args.census { ", census" } else { "" },
        if args.isolates.get() > 1 { format!(", {} isolates per colo", args.isolates) } else { String::new() },
    );
    for key in keys {
        let started = Instant::now();
        let built: Vec<_> = seeds
            .iter()
            .map(|&s| scenarios::build(&key, knobs, s).ok_or_else(|| anyhow::anyhow!("unknown scenario {key:?}")))
            .collect::<anyhow::Result<_>>()?;
        let runs = run_all(&built, &seeds, settings, threads);
        let summary = metrics::summarize(&built, &runs);
        println!("{}", report::render(&built[0], &summary));
        eprintln!("{key}: simulated in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// One run per seed on `threads` threads; runs in seed order.
fn run_all(built: &[allot_sim::scenario::Scenario], seeds: &[u64], settings: Settings, threads: usize) -> Vec<Run> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<Run>>> = Mutex::new((0..seeds.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, seeds.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let run = world::run(&built[i], Settings { seed, ..settings });
                    done.lock().expect("no worker panicked")[i] = Some(run);
                }
            });
        }
    });
    done.into_inner().expect("no worker panicked").into_iter().map(|r| r.expect("every seed ran")).collect()
}
