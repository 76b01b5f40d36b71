//! A full-path run as Markdown tables, as `allot-full-path` prints it and
//! `docs/performance.md` records it.

use std::fmt::Write as _;

use crate::fullpath::{Drained, StepReport, WindowRow, short_windows};

/// The step table: rate, latency, errors, events, Redis, load average.
pub fn steps(steps: &[StepReport]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scheduled rps | achieved rps | answered / scheduled | p50 | p99 | p99.9 | max | errors | send lag p99 | \
         events/s sampled | events/s accepted | Redis ops/s | Redis memory | load avg (start → end) |\n",
    );
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in steps {
        let t = &r.traffic;
        let u = &r.usage;
        let per_s = |n: Option<f64>| n.map_or("–".into(), |n| format!("{:.0}", n / u.seconds));
        let _ = writeln!(
            s,
            "| {:.0} | {:.0} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} → {:.2} |",
            t.scheduled_per_sec,
            t.answered_per_sec,
            t.answered,
            t.scheduled,
            ms(t.latency_ms_p50),
            ms(t.latency_ms_p99),
            ms(t.latency_ms_p999),
            ms(t.latency_ms_max),
            errors(r),
            ms(t.send_lag_ms_p99),
            per_s(u.edge_sampled.map(|n| n as f64)),
            per_s(u.origin_events),
            u.redis_ops_per_sec.map_or("–".into(), |n| format!("{n:.0}")),
            u.redis_used_memory_mb.map_or("–".into(), |m| format!("{m:.1} MB")),
            u.load_average_start.0,
            u.load_average_end.0,
        );
    }
    s
}

/// CPU seconds per process and step, with each process's share of the total and the
/// cores it kept busy.
pub fn cpu(steps: &[StepReport]) -> String {
    let mut s = String::from(
        "| scheduled rps | process | CPU s | share | cores | CPU µs per request |\n|---:|---|---:|---:|---:|---:|\n",
    );
    for r in steps {
        let total = r.usage.cpu_total();
        let mut rows: Vec<_> = r.usage.cpu_seconds.iter().collect();
        rows.sort_by(|a, b| b.1.total_cmp(a.1));
        for (name, secs) in rows.into_iter().chain([(&"all".to_string(), &total)]) {
            let _ = writeln!(
                s,
                "| {:.0} | {name} | {secs:.1} | {:.0} % | {:.2} | {:.0} |",
                r.traffic.scheduled_per_sec,
                100.0 * secs / total.max(1e-9),
                secs / r.usage.seconds.max(1e-9),
                1e6 * secs / (r.traffic.answered.max(1) as f64),
            );
        }
    }
    s
}

/// The observed shares of each step's judged windows against the targets.
pub fn shares(steps: &[StepReport], margin: f64) -> String {
    let mut s = String::from(
        "| scheduled rps | windows | placement | campaign | target | reachable | observed | requests | within ±margin |\n\
         |---:|---|---|---|---:|---:|---:|---:|---|\n",
    );
    for r in steps {
        for sh in &r.shares {
            let _ = writeln!(
                s,
                "| {:.0} | {}–{} | {} | {} | {:.1} % | {:.1} % | {:.2} % | {} | {} |",
                r.traffic.scheduled_per_sec,
                r.judged_windows.0,
                r.judged_windows.1,
                sh.placement,
                sh.campaign,
                100.0 * sh.target,
                100.0 * sh.reachable,
                100.0 * sh.observed,
                sh.requests,
                if sh.within(margin) { "yes" } else { "**no**" },
            );
        }
    }
    s
}

/// The plans each placement ran under, window by window: version, sample rate, the
/// samples the origin got against the samples the confidence needs.
pub fn windows(rows: &[WindowRow]) -> String {
    let mut s = String::from(
        "| placement | window | plan | sample rate | requests (apps) | requests (origin's estimate) | samples | needed |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for w in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {:.0} |",
            w.placement,
            w.index,
            w.plan_version.map_or("–".into(), |v| format!("v{v}")),
            w.sample_rate.map_or("–".into(), |r| format!("{r:.4}")),
            w.observed,
            w.requests,
            w.samples,
            w.required,
        );
    }
    let short = short_windows(rows);
    if short.is_empty() {
        s.push_str("\nNo window got fewer than half the samples its confidence needs at a sample rate below 1.\n");
    }
    for (placement, ws) in short {
        let _ = writeln!(
            s,
            "\n{placement}: {} window(s) got fewer than half the samples the confidence needs under a sample \
             rate below 1: {}",
            ws.len(),
            ws.iter()
                .map(|w| format!("{} ({} samples at {:.4})", w.index, w.samples, w.sample_rate.unwrap_or(1.0)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

/// The counts after the drain.
pub fn drained(d: &Drained) -> String {
    let n = |k: &str| d.edge[k].as_u64().unwrap_or(0);
    format!(
        "Edge events since it started (warm-ups included): {} sampled, {} acknowledged by the origin, {} waiting, \
         {} dropped, {} failed, {} expired, {} batches retried. Archive (read back with DuckDB): {} event rows, \
         {} plan rows; the origin published {} plans.\n",
        n("queued"),
        n("sent"),
        n("waiting"),
        n("dropped"),
        n("failed"),
        n("expired"),
        n("retried_batches"),
        d.archived_events,
        d.archived_plans,
        d.plans_published,
    )
}

fn ms(x: f64) -> String {
    if x >= 1000.0 { format!("{:.2} s", x / 1000.0) } else { format!("{x:.1} ms") }
}

fn errors(r: &StepReport) -> String {
    if r.traffic.errors == 0 {
        return "0".into();
    }
    let reasons: Vec<String> = r.traffic.error_reasons.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!("{} ({})", r.traffic.errors, reasons.join(", "))
}
