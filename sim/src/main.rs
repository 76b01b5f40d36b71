//! `allot-sim`: see `--help`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use allot_sim::engine::{self, Settings};
use allot_sim::report::{self, Summary};
use allot_sim::scenario::{self, Scenario};
use allot_sim::strategy::Strategy;
use clap::Parser;

/// Simulates allot's edge and control loop at production traffic and prints, per
/// scenario and strategy, how close the realized shares stay to target, how many events
/// reach the origin, and how fast a target change converges.
///
/// Scenarios: uniform, skewed, infeasible, change, render. Strategies: static (weights =
/// targets), feedback (no model), model+feedback (allot), census (allot at sample rate 1).
/// Errors are measured on the true delivered shares of feasible campaigns, per control
/// window, after the windows before the first data-driven plan reaches the edge.
#[derive(Debug, Parser)]
#[command(name = "allot-sim", version)]
struct Args {
    /// Requests per second at the edge.
    #[arg(long, default_value_t = 10_000)]
    rps: u32,
    /// Simulated minutes.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Control period (= window length), seconds.
    #[arg(long, default_value_t = 60)]
    period: u64,
    /// Plan propagation delay (KV), seconds: each publish draws from [min, max].
    #[arg(long, default_value_t = 30)]
    delay_min: u64,
    #[arg(long, default_value_t = 60)]
    delay_max: u64,
    /// Only these scenarios (comma-separated keys).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Only these strategies (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    strategy: Vec<String>,
    /// Share of requests that reuse a recent request's id (apps retry).
    #[arg(long, default_value_t = 0.02)]
    reuse: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs in parallel (default: one per core). The figures do not depend on it.
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings {
        rps: args.rps,
        duration_s: args.minutes * 60,
        period_s: args.period,
        delay_min_s: args.delay_min,
        delay_max_s: args.delay_max,
        reuse: args.reuse,
        seed: args.seed,
        ..Settings::default()
    };
    let strategies: Vec<Strategy> = if args.strategy.is_empty() {
        Strategy::ALL.to_vec()
    } else {
        args.strategy
            .iter()
            .map(|s| Strategy::parse(s).ok_or_else(|| anyhow::anyhow!("unknown strategy {s:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    println!(
        "{} requests/s for {} simulated minutes, control period {} s, plan propagation {}–{} s, {} % retried request ids, seed {}\n",
        settings.rps,
        args.minutes,
        settings.period_s,
        settings.delay_min_s,
        settings.delay_max_s,
        settings.reuse * 100.0,
        settings.seed
    );
    let started = Instant::now();
    let scenarios: Vec<Scenario> = scenario::all()
        .into_iter()
        .filter(|sc| args.scenario.is_empty() || args.scenario.iter().any(|k| k == sc.key))
        .collect();
    let jobs: Vec<(&Scenario, Strategy)> =
        scenarios.iter().flat_map(|sc| strategies.iter().map(move |&st| (sc, st))).collect();
    let threads = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut summaries = run_all(&jobs, settings, threads).into_iter();
    for sc in &scenarios {
        println!("### {}\n\n{}", sc.title, report::header());
        let mut notes = Vec::new();
        for &strategy in &strategies {
            let s = summaries.next().expect("one summary per job");
            println!("{}", report::row(strategy.name(), &s));
            for (id, max, realized) in &s.infeasible {
                notes.push(format!(
                    "{strategy}: campaign {id} reported infeasible, maximum deliverable share {:.2} % (realized {:.2} %)",
                    max * 100.0,
                    realized * 100.0
                ));
            }
        }
        for n in notes {
            println!("\n{n}");
        }
        println!();
    }
    eprintln!("simulated in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs every scenario × strategy on `threads` threads; summaries in job order. Each
/// run is seeded on its own, so the figures do not depend on the thread count.
fn run_all(jobs: &[(&Scenario, Strategy)], settings: Settings, threads: usize) -> Vec<Summary> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<Summary>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(sc, strategy)) = jobs.get(i) else { break };
                    let s = report::summarize(&engine::run(sc, strategy, settings), sc, &settings);
                    done.lock().expect("no worker panicked")[i] = Some(s);
                }
            });
        }
    });
    done.into_inner().expect("no worker panicked").into_iter().map(|s| s.expect("every job ran")).collect()
}
