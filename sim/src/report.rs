//! Turning runs into the figures `docs/accuracy.md` shows.

use crate::engine::{Run, Settings};
use crate::scenario::Scenario;

/// One scenario × strategy row.
#[derive(Debug, Clone)]
pub struct Summary {
    pub max_error: f64,
    pub p95_error: f64,
    /// Share of evaluated windows where every feasible campaign was within the margin.
    pub within: f64,
    pub sampled_per_s: f64,
    pub events_per_s: f64,
    /// Sampled requests per window ÷ the binomial minimum.
    pub vs_minimum: f64,
    /// Windows out of margin after the target change before staying within it.
    pub converge_windows: Option<usize>,
    pub infeasible: Vec<(String, f64, f64)>,
    pub plans_published: u64,
}

/// Windows skipped at the start: those before the first data-driven plan (made at the
/// end of window 0) has certainly reached the edge.
pub fn warmup_windows(settings: &Settings) -> usize {
    let period = settings.period_s.max(1);
    (period + settings.delay_max_s).div_ceil(period) as usize
}

pub fn summarize(run: &Run, scenario: &Scenario, settings: &Settings) -> Summary {
    let margin = scenario.targets.confidence.margin;
    let eval = &run.windows[warmup_windows(settings).min(run.windows.len())..];
    let mut errors: Vec<f64> = eval.iter().map(|w| w.max_error()).collect();
    errors.sort_by(f64::total_cmp);
    let p95 = errors.get(((errors.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    let within = eval.iter().filter(|w| w.max_error() <= margin).count() as f64 / eval.len().max(1) as f64;
    let secs = (eval.len() as u64 * settings.period_s).max(1) as f64;
    let sampled: u64 = eval.iter().map(|w| w.sampled_requests).sum();
    let events: u64 = eval.iter().map(|w| w.events).sum();
    let required: f64 = eval.iter().map(|w| w.required_samples).sum();
    let converge_windows = scenario.change.as_ref().map(|(at, _)| {
        let after: Vec<&crate::engine::Window> = run.windows.iter().filter(|w| w.start_s >= *at).collect();
        // The first window from which every later one is within the margin.
        let last_bad = after.iter().rposition(|w| w.max_error() > margin);
        last_bad.map_or(0, |i| i + 1)
    });
    let last = run.windows.last();
    let infeasible = run
        .infeasible
        .iter()
        .map(|(id, max)| {
            let realized = last.and_then(|w| w.shares.iter().find(|(c, _)| c == id)).map_or(0.0, |(_, s)| *s);
            (id.to_string(), *max, realized)
        })
        .collect();
    Summary {
        max_error: errors.last().copied().unwrap_or(0.0),
        p95_error: p95,
        within,
        sampled_per_s: sampled as f64 / secs,
        events_per_s: events as f64 / secs,
        vs_minimum: if required > 0.0 { sampled as f64 / required } else { 0.0 },
        converge_windows,
        infeasible,
        plans_published: run.plans_published,
    }
}

pub fn header() -> String {
    "| strategy | max error (pp) | p95 error (pp) | windows within ±margin | sampled req/s | events/s | samples ÷ binomial min | windows to re-converge | plans |\n\
     |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        .to_string()
}

pub fn row(strategy: &str, s: &Summary) -> String {
    format!(
        "| {strategy} | {:.2} | {:.2} | {:.1} % | {:.0} | {:.0} | {:.2} | {} | {} |",
        s.max_error * 100.0,
        s.p95_error * 100.0,
        s.within * 100.0,
        s.sampled_per_s,
        s.events_per_s,
        s.vs_minimum,
        s.converge_windows.map_or("–".to_string(), |w| w.to_string()),
        s.plans_published,
    )
}
