//! Changes and faults: how long a placement takes to be within the margin again.
//!
//! A change (new targets, a rule, a burst) or a fault (an outage, a stuck colo) moves
//! the shares for a while; these figures say for how long, over every seed. Each change
//! is also kept whole ([`ChangeWait`]), so that the slow ones can be listed and looked
//! into rather than read off a percentile.

use crate::metrics::quantile;
use crate::scenario::{Fault, Scenario};
use crate::world::{CampaignWindow, Run, WindowRecord};

/// Re-convergence the bar allows, in windows (p95).
pub const BAR_WINDOWS: f64 = 2.0;

/// How long one change took.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeWait {
    /// The seed of the run it is in.
    pub seed: u64,
    /// When it was made, in simulated seconds, and the window length.
    pub at_s: u64,
    pub period_s: u64,
    /// Made while a fault lasted.
    pub in_fault: bool,
    /// Windows after the one it was made in until the first within the margin (0: the
    /// first full window after it already was).
    pub windows: usize,
    /// The largest error of a feasible campaign in each of those windows and the first
    /// one within the margin.
    pub errors: Vec<f64>,
}

/// What rounding may add to an error that is exactly the margin.
const TOLERANCE: f64 = 1e-12;

/// Every feasible campaign of `w` within its margin.
pub fn within(w: &WindowRecord) -> bool {
    worst_error(w) <= w.margin + TOLERANCE
}

/// `c` delivered within `margin` of its target; a campaign whose error is NaN never is.
pub fn delivered_within(c: &CampaignWindow, margin: f64) -> bool {
    (c.realized - c.target).abs() <= margin + TOLERANCE
}

/// The largest error of `w`'s feasible campaigns; NaN if any campaign's is, so that
/// a window nothing could be scored on is never taken for one within the margin.
fn worst_error(w: &WindowRecord) -> f64 {
    w.campaigns
        .iter()
        .filter(|c| c.feasible)
        .map(|c| (c.realized - c.target).abs())
        .fold(0.0, |worst, e| if worst.is_nan() || e.is_nan() { f64::NAN } else { worst.max(e) })
}

/// Every change of every run (`built[i]` is run `i`'s scenario).
pub fn waits(built: &[Scenario], runs: &[Run]) -> Vec<ChangeWait> {
    let mut out = Vec::new();
    for (run, sc) in runs.iter().zip(built) {
        for ch in &sc.changes {
            let first = ch.at_s / sc.period_s + 1;
            let after = run.windows.iter().filter(|w| w.placement == ch.placement && w.index >= first);
            let (mut errors, mut windows) = (Vec::new(), 0);
            for w in after {
                errors.push(worst_error(w));
                if within(w) {
                    break;
                }
                windows += 1;
            }
            out.push(ChangeWait {
                seed: run.seed,
                at_s: ch.at_s,
                period_s: sc.period_s,
                in_fault: sc.faults.iter().any(|f| (f.from_s..f.until_s).contains(&ch.at_s)),
                windows,
                errors,
            });
        }
    }
    out
}

/// p50, p95 and max of the windows to re-converge, and how many changes, of the changes
/// made during a fault or of the others.
pub fn reconvergence(waits: &[ChangeWait], in_faults: bool) -> Option<(f64, f64, usize, usize)> {
    let w: Vec<f64> = waits.iter().filter(|c| c.in_fault == in_faults).map(|c| c.windows as f64).collect();
    if w.is_empty() {
        return None;
    }
    let max = w.iter().copied().fold(0.0, f64::max) as usize;
    Some((quantile(w.clone(), 0.5), quantile(w.clone(), 0.95), max, w.len()))
}

/// The changes that took longer than the bar allows, slowest first.
pub fn slow(waits: &[ChangeWait]) -> Vec<ChangeWait> {
    let mut out: Vec<ChangeWait> = waits.iter().filter(|c| c.windows as f64 > BAR_WINDOWS).cloned().collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.windows));
    out
}

/// One fault's figures (over seeds).
#[derive(Debug, Clone)]
pub struct FaultFigures {
    pub what: String,
    pub peak_error: f64,
    pub peak_rate: f64,
    /// Windows after the fault ended until every feasible campaign was within the
    /// margin again (worst seed).
    pub recovery_windows: usize,
}

pub fn fault(sc: &Scenario, runs: &[Run], f: &Fault) -> FaultFigures {
    let p = sc.period_s;
    let (first, last) = (f.from_s / p, f.until_s.div_ceil(p));
    let mut peak_error: f64 = 0.0;
    let mut peak_rate: f64 = 0.0;
    let mut recovery = 0;
    for run in runs {
        for w in run.windows.iter().filter(|w| w.index >= first && w.index <= last + 2) {
            peak_error = peak_error.max(worst_error(w));
            peak_rate = peak_rate.max(w.max_rate);
        }
        let wait = run.windows.iter().filter(|w| w.index >= last).take_while(|w| !within(w)).count();
        recovery = recovery.max(wait);
    }
    FaultFigures { what: f.what.clone(), peak_error, peak_rate, recovery_windows: recovery }
}

#[cfg(test)]
mod tests {
    use allot_core::CampaignId;

    use super::*;
    use crate::scenario::Change;
    use crate::scenarios::{Knobs, build};

    fn window(index: u64, error: f64) -> WindowRecord {
        let campaign = CampaignWindow {
            id: CampaignId::parse("A").unwrap(),
            target: 0.3,
            realized: 0.3 + error,
            expected: 0.3,
            feasible: true,
            published: None,
            flagged: false,
            eligible_estimated: 1.0,
            eligible: 1.0,
        };
        WindowRecord {
            placement: 0,
            index,
            requests: 1_000,
            sampled: 100,
            campaigns: vec![campaign],
            needed: 100.0,
            max_rate: 0.1,
            unattainable: false,
            margin: 0.01,
            short: 0.0,
            decided: true,
            counted: 100,
            allowance: 0.0,
        }
    }

    #[test]
    fn each_change_is_kept_with_its_errors_and_the_slow_ones_listed() {
        let mut sc = build("steady", Knobs::default(), 1).unwrap();
        let change = |at_s| Change { at_s, placement: 0, targets: None, what: String::new() };
        // One change in window 2 (back within in window 6), one during a fault in window 7
        // (within at once), one in window 9 that never comes back within.
        sc.changes = vec![change(130), change(430), change(545)];
        sc.faults = vec![Fault { what: "f".into(), from_s: 420, until_s: 480 }];
        let errors = [0.0, 0.0, 0.2, 0.03, 0.02, 0.011, 0.001, 0.0, 0.0, 0.2, 0.05, 0.02];
        let run = Run {
            seed: 7,
            windows: errors.iter().enumerate().map(|(i, e)| window(i as u64, *e)).collect(),
            ..Run::default()
        };
        let waits = waits(std::slice::from_ref(&sc), std::slice::from_ref(&run));
        assert_eq!(
            waits.iter().map(|c| (c.windows, c.in_fault)).collect::<Vec<_>>(),
            [(3, false), (0, true), (2, false)]
        );
        assert_eq!(waits[0].errors.len(), 4, "three out and the first back within: {:?}", waits[0]);
        assert!((waits[0].errors[0] - 0.03).abs() < 1e-12 && waits[0].errors[3] <= 0.01);
        assert_eq!(waits[2].errors.len(), 2, "the run ended before it was back");
        assert_eq!(reconvergence(&waits, false), Some((2.0, 3.0, 3, 2)));
        assert_eq!(reconvergence(&waits, true), Some((0.0, 0.0, 0, 1)));
        assert_eq!(slow(&waits), [waits[0].clone()]);
        assert_eq!(slow(&waits)[0].seed, 7);
    }

    #[test]
    fn an_error_of_exactly_the_margin_is_within_and_a_nan_never_is() {
        let at = |error| window(0, error);
        assert!(within(&at(0.01)) && delivered_within(&at(0.01).campaigns[0], 0.01));
        assert!(!within(&at(0.0101)) && !delivered_within(&at(-0.0101).campaigns[0], 0.01));
        assert!(!within(&at(f64::NAN)) && !delivered_within(&at(f64::NAN).campaigns[0], 0.01));
    }
}
