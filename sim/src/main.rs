//! `allot-sim`: see `--help`.

use std::time::Instant;

use allot_sim::engine::{self, Settings};
use allot_sim::report;
use allot_sim::scenario;
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
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings {
        rps: args.rps,
        duration_s: args.minutes * 60,
        period_s: args.period,
        delay_min_s: args.delay_min,
        delay_max_s: args.delay_max,
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
        "{} requests/s for {} simulated minutes, control period {} s, plan propagation {}–{} s, seed {}\n",
        settings.rps, args.minutes, settings.period_s, settings.delay_min_s, settings.delay_max_s, settings.seed
    );
    let started = Instant::now();
    for sc in scenario::all() {
        if !args.scenario.is_empty() && !args.scenario.iter().any(|k| k == sc.key) {
            continue;
        }
        println!("### {}\n\n{}", sc.title, report::header());
        let mut notes = Vec::new();
        for &strategy in &strategies {
            let run = engine::run(&sc, strategy, settings);
            let s = report::summarize(&run, &sc, &settings);
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
