//! The tables `docs/accuracy.md` shows, and the bar they are held to.

use crate::changes::BAR_WINDOWS;
use crate::metrics::{Figure, Misflagged, Summary};
use crate::scenario::Scenario;

fn pp(f: Figure) -> String {
    format!("{:.2} ({:.2}–{:.2})", f.value * 100.0, f.low * 100.0, f.high * 100.0)
}

fn pct(f: Figure) -> String {
    format!("{:.1} % ({:.1}–{:.1})", f.value * 100.0, f.low * 100.0, f.high * 100.0)
}

/// The bar a feasible scenario is held to; each failed line is returned.
pub fn misses(s: &Summary, level: f64) -> Vec<String> {
    let mut out = Vec::new();
    if s.p95_error.value > 0.005 {
        out.push(format!("p95 error {:.2} pp > 0.5 pp", s.p95_error.value * 100.0));
    }
    if let Some(r) = s.p95_relative_small
        && r.value > 0.2
    {
        out.push(format!("p95 error of targets under 5 % is {:.0} % of the target > 20 %", r.value * 100.0));
    }
    if s.within.value < 0.95 || s.within.low < 0.93 {
        out.push(format!("windows within the margin {}: below 95 % (lower bound 93 %)", pct(s.within)));
    }
    if (s.coverage.value - level).abs() > 0.01 {
        out.push(format!("interval coverage {} is not within 1 pp of {:.0} %", pct(s.coverage), level * 100.0));
    }
    if let Some((_, p95, _, _)) = s.reconverge
        && p95 > BAR_WINDOWS
    {
        out.push(format!("re-convergence p95 {p95} windows > {BAR_WINDOWS}"));
    }
    if s.samples_vs_minimum > 1.3 {
        out.push(format!("samples {:.2}× the minimum > 1.3×", s.samples_vs_minimum));
    }
    if s.invalid_plans > 0 {
        out.push(format!("{} plans the origin would refuse as invalid", s.invalid_plans));
    }
    if s.infeasible_flagged < 1.0 {
        out.push(format!("{:.1} % of infeasible windows flagged", s.infeasible_flagged * 100.0));
    }
    if let Some((within, _)) = s.near_miss_within
        && within < 0.95
    {
        out.push(format!(
            "{:.1} % of campaigns infeasible by at most the margin delivered within it < 95 %",
            within * 100.0
        ));
    }
    if s.unattainable_at_census < 1.0 {
        out.push(format!("{:.1} % of unattainable windows sampled at census", s.unattainable_at_census * 100.0));
    }
    out
}

pub fn render(sc: &Scenario, s: &Summary) -> String {
    let level = sc.placements.first().map_or(0.95, |p| p.targets.confidence.level);
    let mut out = format!("### {}\n\n", sc.title);
    out += &format!(
        "{} seeds × {} min, period {} s; {} scored window × placement pairs (95 % block-bootstrap intervals in brackets)\n\n",
        s.seeds,
        sc.duration_s / 60,
        sc.period_s,
        s.windows
    );
    out += "| figure | value |\n|---|---:|\n";
    let mut row = |k: &str, v: String| out += &format!("| {k} | {v} |\n");
    row("error p50 (pp)", pp(s.p50_error));
    row("error p95 (pp)", pp(s.p95_error));
    row("error max (pp)", format!("{:.2}", s.max_error * 100.0));
    if let Some(r) = s.p95_relative_small {
        row("error p95, targets < 5 % (of target)", pct(r));
    }
    if let Some(r) = s.p95_relative_small_expected {
        row("… of the expected share under the plans (without the pick's randomness)", pct(r));
    }
    row("windows within ±margin", pct(s.within));
    row("interval coverage, per campaign", pct(s.coverage));
    row("interval coverage, all campaigns at once", pct(s.joint_coverage));
    if let Some((covered, cells)) = s.census_coverage {
        row("interval coverage at census (scored apart)", of_cells(covered, cells));
    }
    if let Some((windows, covered)) = s.census_incomplete {
        let covered = if windows > 0.0 { format!(", covered {:.1} %", covered * 100.0) } else { String::new() };
        row("… census windows read with events still to come", format!("{:.1} % of them{covered}", windows * 100.0));
    }
    if let Some(((allowed, a), (exact, e))) = s.census_allowed {
        row("… read with an allowance for late bodies, covered", of_cells(allowed, a));
        row("… read as exact (late bodies rarer than 1 − level), covered", of_cells(exact, e));
    }
    if let Some(((small, a), (large, b))) = s.census_by_target {
        row("… targets under 5 %, covered", of_cells(small, a));
        row("… targets of 5 % and more, covered", of_cells(large, b));
    }
    row("samples ÷ binomial minimum", format!("{:.2}", s.samples_vs_minimum));
    if let Some((p50, p95, max, n)) = s.reconverge {
        row("windows to re-converge (p50 / p95 / max)", format!("{p50} / {p95} / {max} over {n} changes"));
    }
    if let Some((p50, p95, max, n)) = s.reconverge_in_faults {
        row("… after changes made during a fault (p50 / p95 / max)", format!("{p50} / {p95} / {max} over {n} changes"));
    }
    for c in &s.slow_changes {
        let errors: Vec<String> = c.errors.iter().map(|e| format!("{:.2}", e * 100.0)).collect();
        row(
            &format!("change slower than {BAR_WINDOWS} windows"),
            format!(
                "seed {}, {}at {}:{:02} ({} s into window {}): {} windows, worst error {} pp",
                c.seed,
                if c.in_fault { "during a fault, " } else { "" },
                c.at_s / 60,
                c.at_s % 60,
                c.at_s % c.period_s,
                c.at_s / c.period_s,
                c.windows,
                errors.join(" → ")
            ),
        );
    }
    for f in &s.faults {
        row(
            &format!("fault: {}", f.what),
            format!(
                "peak error {:.2} pp, peak rate {:.4}, recovered after {} windows",
                f.peak_error * 100.0,
                f.peak_rate,
                f.recovery_windows
            ),
        );
    }
    if s.infeasible_windows > 0 || s.false_flags > 0 {
        row(
            "infeasible windows flagged (short by more than the margin)",
            format!(
                "{:.1} % of {} ({} feasible flagged)",
                s.infeasible_flagged * 100.0,
                s.infeasible_windows,
                s.false_flags
            ),
        );
    }
    if s.marginal_windows > 0 {
        row(
            "… short by ½–1 margin, flagged",
            format!("{:.1} % of {} flagged", s.marginal_flagged * 100.0, s.marginal_windows),
        );
    }
    if let Some((within, n)) = s.near_miss_within {
        row(
            "… campaigns infeasible by at most the margin, delivered within it",
            format!("{:.1} % of {}", within * 100.0, n),
        );
    }
    for b in &s.below_census {
        row(
            "unattainable, below census",
            format!(
                "seed {}, placement {}, window {}: {} requests ({} the window before), highest rate {:.3}",
                b.seed,
                b.placement,
                b.index,
                b.requests,
                b.requests_before.map_or("none".into(), |n| n.to_string()),
                b.max_rate
            ),
        );
    }
    for o in &s.outside {
        let c = &o.campaign;
        row(
            "outside the margin",
            format!(
                "seed {}, placement {}, window {}, {} ({}): target {:.2} %, realized {:.2} %, expected {:.2} %, eligible {:.2} % (estimated {:.2} %), {} of {} requests sampled",
                o.seed,
                o.placement,
                o.index,
                c.id,
                if c.feasible { "feasible" } else { "near miss" },
                c.target * 100.0,
                c.realized * 100.0,
                c.expected * 100.0,
                c.eligible * 100.0,
                c.eligible_estimated * 100.0,
                o.sampled,
                o.requests
            ),
        );
    }
    for u in &s.unflagged {
        row("unflagged window short by > ½ margin", misflagged(u));
    }
    for f in &s.false_flagged {
        let flagged: Vec<&str> = f.flagged.iter().map(|c| c.as_str()).collect();
        row("feasible window flagged", format!("{}; flagged: {}", misflagged(f), flagged.join(", ")));
    }
    if s.unattainable_windows > 0 {
        row(
            "unattainable windows at census",
            format!("{:.1} % of {}", s.unattainable_at_census * 100.0, s.unattainable_windows),
        );
    }
    let per_placement = sc.placements.len().max(1) as f64;
    let by: Vec<String> =
        s.plans_per_hour_by.iter().map(|(why, n)| format!("{} {:.1}", why.as_str(), n / per_placement)).collect();
    row("plans per hour", format!("{:.1} ({})", s.plans_per_hour / per_placement, by.join(", ")));
    row("sampled requests/s per placement", format!("{:.1}", s.sampled_per_s));
    let missed = misses(s, level);
    out += if missed.is_empty() {
        "\nBar: met.\n".to_string()
    } else {
        format!("\nBar: **missed** — {}.\n", missed.join("; "))
    }
    .as_str();
    out
}

/// A wrongly flagged window: where it is, how short the truth says it was, and per
/// campaign its target of the eligible share the controller estimated (and the true one).
fn misflagged(m: &Misflagged) -> String {
    let campaigns: Vec<String> = m
        .estimated
        .iter()
        .map(|(id, target, estimated, eligible)| {
            format!("{id} {:.1} % of {:.2} % ({:.2} % true)", target * 100.0, estimated * 100.0, eligible * 100.0)
        })
        .collect();
    format!(
        "seed {}, placement {}, window {}: short {:.2} pp; target of estimated eligible share: {}",
        m.seed,
        m.placement,
        m.index,
        m.short * 100.0,
        campaigns.join(", ")
    )
}

/// A share of cells, as "96.7 % of 30385" ("none" where there are none).
fn of_cells(covered: f64, cells: usize) -> String {
    if cells > 0 { format!("{:.1} % of {cells}", covered * 100.0) } else { "none".to_string() }
}
