//! `allot-edge-latency`: the latency of two edges at the same constant arrival rate,
//! open-loop. `scripts/bench-worker.sh` runs it (with `OPEN_LOOP_RATES`) against the
//! edge worker and the minimal JS worker in one workerd.
//!
//! wrk's closed loop measures each worker at its own saturation, where its p99 is mostly
//! queueing behind 32 connections and says more about throughput than about latency; at
//! one arrival rate both keep up with, the two p99s compare the workers at equal load.
//! Rounds alternate between the edges, and which goes first, so that background load hits
//! both alike; the summary is the median.
//!
//! Every figure includes the generator's own delays, the same for both edges: tokio's
//! timer wakes it once a millisecond, so requests leave in bursts of `rate / 1000`, and
//! the latency of each runs from its scheduled time. The send lag (scheduled time → sent)
//! is the generator's delay and, once `--concurrency` requests are in flight, the wait
//! for a free connection: an edge that stalls shows in it too. A run is marked when the
//! edge did not keep up (errors, or fewer answers than scheduled); the generator's CPU
//! per request is printed, since it shares the machine with the edges.

use std::time::Duration;

use allot_e2e::traffic::{Mix, Traffic};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "allot-edge-latency", version)]
struct Args {
    /// Edges to measure, `name=http://host:port` (their `/v1/ad` is asked).
    #[arg(long = "edge", value_parser = parse_edge, required = true)]
    edges: Vec<(String, String)>,
    /// Requests per second, one measurement per rate.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000")]
    rates: Vec<f64>,
    /// Measured seconds per edge, rate and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds per rate.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The placement asked for (every request is iOS in DE).
    #[arg(long, default_value = "bench")]
    placement: String,
}

fn parse_edge(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or_else(|| format!("expected name=url, got {s:?}"))?;
    Ok((name.to_string(), url.trim_end_matches('/').to_string()))
}

/// p50, p99 and p99.9 (ms), errors and the generator's p99 send lag (ms) of one run.
type Figures = [f64; 5];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// This process's CPU time so far (user + system), seconds.
fn cpu_seconds() -> f64 {
    allot_testkit::process::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mix = Mix::product(&[("ios", 1.0)], &[("DE", 1.0)]);
    println!(
        "| rate (requests/s) | edge | round | answered/s | p50 (ms) | p99 (ms) | p99.9 (ms) | errors | send lag p99 (ms) | generator CPU/req | |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut medians = Vec::new();
    for &rate in &a.rates {
        let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); a.edges.len()];
        for round in 1..=a.rounds {
            let mut order: Vec<usize> = (0..a.edges.len()).collect();
            order.rotate_left((round - 1) % a.edges.len());
            for i in order {
                let (name, url) = &a.edges[i];
                let traffic = Traffic {
                    edge_url: url.clone(),
                    placements: vec![(a.placement.clone(), mix.clone())],
                    rps: rate,
                    concurrency: a.concurrency,
                    period_ms: 60_000,
                    timeout: Duration::from_secs(10),
                };
                let cpu = cpu_seconds();
                let observed = traffic.start(Duration::from_secs(a.seconds)).join().await?;
                let cpu_us = (cpu_seconds() - cpu) * 1e6 / observed.accounting.scheduled.max(1) as f64;
                let s = observed.accounting.summary(a.seconds as f64);
                let f = [s.latency_ms_p50, s.latency_ms_p99, s.latency_ms_p999, s.errors as f64, s.send_lag_ms_p99];
                let mark = if s.errors > 0 || s.answered < s.scheduled { "edge did not keep up" } else { "" };
                println!(
                    "| {rate:.0} | {name} | {round} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {cpu_us:.1} µs | {mark} |",
                    s.answered_per_sec, f[0], f[1], f[2], s.errors, f[4]
                );
                runs[i].push(f);
            }
        }
        for (i, (name, _)) in a.edges.iter().enumerate() {
            let m: Vec<f64> = (0..5).map(|k| median(runs[i].iter().map(|f| f[k]).collect())).collect();
            medians.push(format!(
                "| {rate:.0} | {name} | median | | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | | |",
                m[0], m[1], m[2], m[3], m[4]
            ));
        }
    }
    for line in medians {
        println!("{line}");
    }
    Ok(())
}
