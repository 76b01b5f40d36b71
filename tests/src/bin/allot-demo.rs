//! `allot-demo`: the whole system on this machine, converging live. See `--help`.

use std::time::Duration;

use allot_e2e::stack::{Options, Stack, today_utc};
use allot_e2e::traffic::{Mix, Observed, Traffic};
use allot_testkit::events::now_ms;
use allot_testkit::scenario;
use clap::Parser;
use serde_json::Value;

/// Starts Redis, an S3 server, the origin and the edge worker (workerd with a local KV)
/// on free ports, creates two placements whose eligibility is skewed (so the correction is
/// visible) — one with a target that cannot be met — and drives synthetic app traffic
/// through the edge. Every control period it prints, per campaign: the target, the
/// origin's estimate ± its confidence interval, the share the apps really saw, the
/// weight the controller chose, and the placement's sample rate and plan version.
/// Ctrl-C stops everything it started, after printing the delivery report from the
/// archive.
#[derive(Debug, Parser)]
#[command(name = "allot-demo", version)]
struct Args {
    /// App requests per second through the edge.
    #[arg(long, default_value_t = 400.0)]
    rps: f64,
    /// How long to run, in seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Control period (= window length), seconds.
    #[arg(long, default_value_t = 5)]
    period: u64,
    /// Platform mix of the traffic.
    #[arg(long, default_value_t = scenario::shares_arg(scenario::PLATFORMS))]
    platforms: String,
    /// Country mix of the traffic.
    #[arg(long, default_value_t = scenario::shares_arg(scenario::COUNTRIES))]
    countries: String,
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}", x * 100.0))
}

fn print_table(statuses: &[Value], observed: &Observed) {
    println!(
        "\n{:<10} {:<4} {:>7} {:>19} {:>9} {:>8} {:>12}",
        "placement", "ad", "target%", "estimate% [95% CI]", "observed%", "weight", "feasible"
    );
    for s in statuses {
        let placement = s["placement"].as_str().unwrap_or("?");
        let w = s["window"]["index"].as_u64().unwrap_or(0);
        let seen = observed.range(placement, w, w);
        for c in s["campaigns"].as_array().into_iter().flatten() {
            let id = c["id"].as_str().unwrap_or("?");
            let e = &c["estimate"];
            let feasible = match c["feasibility"]["status"].as_str() {
                Some("infeasible") => format!("max {}%", pct(c["feasibility"]["max_share"].as_f64())),
                Some(s) => s.to_string(),
                None => "–".into(),
            };
            println!(
                "{:<10} {:<4} {:>7} {:>19} {:>9} {:>8} {:>12}",
                placement,
                id,
                pct(c["target"].as_f64()),
                format!("{} [{}, {}]", pct(e["share"].as_f64()), pct(e["low"].as_f64()), pct(e["high"].as_f64())),
                pct((seen.requests > 0).then(|| seen.share(id))),
                c["weight"].as_f64().map_or("–".into(), |w| format!("{w:.3}")),
                feasible,
            );
        }
        println!(
            "{:<10} plan v{} · sample rate {} · window {} had {} requests, {} sampled",
            placement,
            s["plan_version"].as_u64().map_or("–".into(), |v| v.to_string()),
            s["sample_rate"].as_f64().map_or("–".into(), |r| format!("{r:.3}")),
            w,
            seen.requests,
            s["window"]["samples"].as_u64().unwrap_or(0),
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mix = {
        let p = Mix::parse_shares(&args.platforms)?;
        let c = Mix::parse_shares(&args.countries)?;
        let p: Vec<(&str, f64)> = p.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let c: Vec<(&str, f64)> = c.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        Mix::product(&p, &c)
    };
    let period_ms = args.period.max(1) * 1000;
    println!("starting redis-server, s3s-fs, the origin and the edge worker …");
    let stack = Stack::start(Options { period_ms, ..Options::default() }).await?;
    println!("origin  {}  (admin API, OpenAPI at /openapi.json)", stack.origin_url);
    println!(
        "console {}/console  (sign in with {} to edit, {} to read)",
        stack.origin_url,
        allot_testkit::origin::MANAGER_TOKEN,
        allot_testkit::origin::VIEWER_TOKEN
    );
    println!("edge    {}  (try {}/v1/ad?placement=home_feed&platform=ios)", stack.edge_url, stack.edge_url);
    for (id, targets) in scenario::placements() {
        stack.put_placement(id, &targets).await?;
    }

    let traffic = Traffic {
        edge_url: stack.edge_url.clone(),
        placements: scenario::placements().into_iter().map(|(id, _)| (id.to_string(), mix.clone())).collect(),
        rps: args.rps,
        concurrency: 16,
        period_ms,
        timeout: Duration::from_secs(10),
    };
    let duration =
        if args.seconds == 0 { Duration::from_secs(u64::MAX / 4) } else { Duration::from_secs(args.seconds) };
    let load = traffic.start(duration);
    println!("driving {} requests/s; a table every {} s; Ctrl-C to stop", args.rps, args.period);

    let deadline = tokio::time::Instant::now() + duration;
    loop {
        // Print just after each window closes.
        let next = (now_ms() / period_ms + 1) * period_ms + 300;
        let wait = Duration::from_millis(next.saturating_sub(now_ms()));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        if tokio::time::Instant::now() >= deadline || load.is_finished() {
            break;
        }
        let mut statuses = Vec::new();
        for (id, _) in scenario::placements() {
            statuses.push(stack.status(id).await?);
        }
        let snapshot = std::mem::take(&mut *load.observed.lock().unwrap_or_else(|e| e.into_inner()));
        print_table(&statuses, &snapshot);
        // Keep only recent windows.
        let keep_from = now_ms() / period_ms - 2;
        let mut obs = load.observed.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in snapshot.windows.into_iter().filter(|((_, w), _)| *w >= keep_from) {
            obs.windows.entry(k).or_default().merge(&v);
        }
    }
    println!("\nstopping traffic …");
    let _ = load.finish().await;
    // Give the archiver one flush, then show what analysts get from the archive.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let today = today_utc();
    println!(
        "\nreport `delivery` over the S3 archive (allot-report delivery --from {today} --to {today} --engine local):"
    );
    if allot_testkit::process::workspace_bin("allot-report").is_err() {
        println!("(allot-report is still building in the background: run the command above once it is built)");
    } else {
        match stack.report_table("delivery").await {
            Ok(table) => println!("{table}"),
            Err(e) => println!("(report failed: {e:#})"),
        }
    }
    stack.stop();
    Ok(())
}
