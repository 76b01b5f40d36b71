//! The sample-rate planner: the least traffic that still proves the targets.
//!
//! A window needs `n = z²·s(1−s)/e²` sampled requests for a ±`e` interval at level `z`
//! around share `s` (the binomial minimum); the campaign whose target is closest to
//! ½ needs the most. With `R` requests per window the rate is `n / R`, clamped to
//! `[min_rate, 1]`.
//!
//! Hysteresis: a new rate is set `band/2` above the minimum and kept while it stays
//! within `[minimum, minimum·(1 + band)]`, so ordinary traffic noise does not republish
//! the plan every window, and the rate never falls below what the confidence needs.
//!
//! **Census near the edge of attainable.** A rate of [`CENSUS_FROM`] (½) or more becomes
//! 1 (and stays 1 while the rate needed is above that less the band). Such a placement
//! has at most about twice the requests its confidence needs: sampling saves it a few
//! hundred events a window, while a window with less traffic than the last one would
//! then fall short of the confidence with some requests unsampled, where at census it is
//! at least exact. Planned at a rate `r`, a window is short when its traffic falls by more
//! than `1 − r/1.04` from the window it was planned on: at ½ that is a fall by half
//! between two windows. In the simulator's `scale` scenario, with census from 0.8, the
//! windows left short below census (2 of 105,013 over seeds 11–20) had lost 28 % and
//! 32 % of their traffic and were planned at 0.76–0.77; with census from 0.9, the ones
//! planned at 0.9–0.95.
//!
//! **Few samples.** A window with `k ≥ 1` sampled requests plans from its HT estimate
//! `k·w̄`, which after a burst (traffic fell, the rate stayed low) asks for a high rate at
//! once. A window with *no* sample says nothing by itself: low traffic and an event
//! outage look alike, and raising every placement's rate on an outage would flood
//! ingest when it recovers. So an empty window raises the rate only when the recent
//! windows saw fewer than [`FEW_SAMPLES`] sampled requests in all (traffic is small,
//! not missing): then traffic is at most about `3/rate` per window (the 95 % Poisson
//! bound for zero events), and the rate becomes what that bound needs. Otherwise the
//! rate is kept until a window with samples arrives.

use crate::estimate::required_samples;
use crate::{Targets, WindowStats};

/// Below this many sampled requests (in the recent windows together), a window with
/// none is taken as low traffic rather than as missing events.
pub const FEW_SAMPLES: u64 = 30;

/// Planned rates from here up are census (see the module doc).
pub const CENSUS_FROM: f64 = 0.5;

/// An upper confidence bound (≈ 97.5 %) on a window's requests from its `k` sampled
/// requests: `(k + 2√k + 3)·w̄` with `w̄` the mean weight (`Σw/k`), a Poisson bound that
/// is exact enough for the question it answers ("can this traffic give the confidence
/// at all?") and tends to the HT estimate as `k` grows. `None` without samples.
pub fn requests_upper_bound(w: &WindowStats) -> Option<f64> {
    let k = w.requests.n;
    (k > 0 && w.requests.ht > 0.0).then(|| {
        let k = k as f64;
        (k + 2.0 * k.sqrt() + 3.0) * w.requests.ht / k
    })
}

#[derive(Debug, Clone, Copy)]
pub struct SampleRatePlanner {
    pub min_rate: f64,
    /// The most sampled requests a window is planned for, whatever the confidence asks:
    /// a deployment's bound on what one placement's events may cost (a document asking
    /// for more is refused when set; one stored before is planned for this many).
    pub max_samples: f64,
    /// Relative width of the hysteresis band.
    pub band: f64,
}

impl Default for SampleRatePlanner {
    fn default() -> Self {
        Self { min_rate: 1e-4, max_samples: f64::INFINITY, band: 0.08 }
    }
}

impl SampleRatePlanner {
    /// Sampled requests a window needs for the targets' confidence.
    pub fn required_samples(targets: &Targets) -> f64 {
        let s = targets
            .campaigns
            .iter()
            .map(|c| c.rate.get())
            .fold(None, |best: Option<f64>, r| match best {
                Some(b) if (b - 0.5).abs() <= (r - 0.5).abs() => Some(b),
                _ => Some(r),
            })
            .unwrap_or(0.0);
        required_samples(s, targets.confidence.margin, targets.confidence.z())
    }

    /// The rate for the next plan from the last complete window (`None`: nothing was
    /// counted in it), the recent windows merged, and the rate in force. See the module
    /// doc for windows with few or no samples.
    pub fn rate_for(&self, targets: &Targets, last: Option<&WindowStats>, recent: &WindowStats, current: f64) -> f64 {
        let requests = match last {
            Some(w) if w.requests.n > 0 => w.requests.ht,
            _ if recent.requests.n < FEW_SAMPLES && current.is_finite() && current > 0.0 && current < 1.0 => {
                3.0 / current
            }
            _ => 0.0,
        };
        self.rate(targets, requests, current)
    }

    /// The rate for the next plan, given the requests one window is expected to see
    /// (the last window's estimate) and the rate in force.
    pub fn rate(&self, targets: &Targets, requests_per_window: f64, current: f64) -> f64 {
        let min_rate = self.min_rate.clamp(f64::MIN_POSITIVE, 1.0);
        if !(requests_per_window.is_finite() && requests_per_window > 0.0) {
            // No traffic seen: keep what we have (a new placement starts at 1).
            return if current.is_finite() && current > 0.0 { current.clamp(min_rate, 1.0) } else { 1.0 };
        }
        let raw = Self::required_samples(targets).min(self.max_samples) / requests_per_window;
        let at = |factor: f64| (raw * factor).clamp(min_rate, 1.0);
        if current >= 1.0 && at(1.0 + self.band) >= CENSUS_FROM {
            return 1.0;
        }
        if current < 1.0 && current >= at(1.0) && current <= at(1.0 + self.band) {
            return current;
        }
        let rate = at(1.0 + self.band / 2.0);
        if rate >= CENSUS_FROM { 1.0 } else { rate }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::TargetsSpec;

    fn targets() -> Targets {
        Targets::parse(
            serde_json::from_value::<TargetsSpec>(json!({
                "campaigns": [{"id": "A", "rate": 0.5}, {"id": "B", "rate": 0.3}],
                "confidence": {"margin": 0.01, "level": 0.95}
            }))
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn needs_the_binomial_minimum() {
        let n = SampleRatePlanner::required_samples(&targets());
        assert!((n - 9603.6).abs() < 1.0, "{n}");
        // 600,000 requests per window (10,000/s for 60 s).
        let r = SampleRatePlanner::default().rate(&targets(), 600_000.0, 1.0);
        assert!((r - 9603.6 / 600_000.0 * 1.04).abs() < 1e-5, "{r}");
    }

    #[test]
    fn hysteresis_keeps_a_good_rate() {
        let p = SampleRatePlanner::default();
        let r = p.rate(&targets(), 600_000.0, 1.0);
        // Traffic up 3 %: the rate is still enough, keep it.
        assert_eq!(p.rate(&targets(), 618_000.0, r), r);
        // Traffic down 10 %: not enough any more, raise it at once.
        assert!(p.rate(&targets(), 540_000.0, r) > r);
        // Traffic doubled: far too much sampling, lower it.
        assert!(p.rate(&targets(), 1_200_000.0, r) < r * 0.6);
    }

    fn window(k: u64, rate: f64) -> WindowStats {
        WindowStats { requests: crate::stats::Tally { ht: k as f64 / rate, n: k }, ..WindowStats::default() }
    }

    #[test]
    fn after_a_burst_the_rate_rises_at_once() {
        let p = SampleRatePlanner::default();
        // The burst is over: 25 requests/s, 1,500 a window, and the rate is still 0.008.
        let recent = window(12_000, 0.008);
        // Two samples: the HT estimate (250) is far below the 9,604 needed: census.
        assert_eq!(p.rate_for(&targets(), Some(&window(2, 0.008)), &recent, 0.008), 1.0);
        // None, right after the burst: could be missing events, keep.
        assert_eq!(p.rate_for(&targets(), None, &recent, 0.008), 0.008);
        // None while the recent windows saw almost nothing too: traffic is small.
        assert_eq!(p.rate_for(&targets(), None, &window(3, 0.008), 0.008), 1.0);
        // One campaign at ½, at a 90 % level and the given margin.
        let half = |margin: f64| {
            Targets::parse(
                serde_json::from_value::<TargetsSpec>(json!({
                    "campaigns": [{"id": "A", "rate": 0.5}],
                    "confidence": {"margin": margin, "level": 0.9}
                }))
                .unwrap(),
            )
            .unwrap()
        };
        let loose = half(0.05);
        // 271 samples needed, at most ~375 requests a window (3 / 0.008): a rate of
        // 0.75 at least, so census.
        assert_eq!(p.rate_for(&loose, None, &WindowStats::default(), 0.008), 1.0);
        // A tenth of that need: the bound's own rate, 0.075.
        let tenth = half(0.16);
        let r = p.rate_for(&tenth, None, &WindowStats::default(), 0.008);
        assert!(r > 0.05 && r < 0.1, "{r}");
        // A new placement (rate 1) or a census stays put.
        assert_eq!(p.rate_for(&targets(), None, &WindowStats::default(), 1.0), 1.0);
    }

    #[test]
    fn the_request_bound_is_above_the_estimate_and_tends_to_it() {
        assert_eq!(requests_upper_bound(&WindowStats::default()), None);
        let two = requests_upper_bound(&window(2, 0.008)).unwrap();
        assert!(two > 900.0 && two < 1000.0, "{two}");
        let many = requests_upper_bound(&window(1_000_000, 0.5)).unwrap();
        assert!(many > 2_000_000.0 && many < 2_000_000.0 * 1.003, "{many}");
    }

    #[test]
    fn rates_near_one_are_census_and_census_holds_within_the_band() {
        let p = SampleRatePlanner::default();
        let n = SampleRatePlanner::required_samples(&targets());
        // Traffic for a rate of 0.6: census instead.
        assert_eq!(p.rate(&targets(), n * 1.04 / 0.6, 0.3), 1.0);
        // Traffic for 0.45: sampled.
        let r = p.rate(&targets(), n * 1.04 / 0.45, 1.0);
        assert!((r - 0.45).abs() < 1e-9, "{r}");
        // At census, traffic that a fresh plan would sample at 0.496 keeps census (the
        // top of the band is still above ½) ...
        let held = n * 1.08 / 0.515;
        assert!(p.rate(&targets(), held, 0.3) < CENSUS_FROM);
        assert_eq!(p.rate(&targets(), held, 1.0), 1.0);
        // ... and traffic for 0.3 leaves it.
        assert!((p.rate(&targets(), n * 1.04 / 0.3, 1.0) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn clamps() {
        let p = SampleRatePlanner { min_rate: 0.01, ..SampleRatePlanner::default() };
        assert_eq!(p.rate(&targets(), 1e12, 0.5), 0.01);
        assert_eq!(p.rate(&targets(), 10.0, 0.5), 1.0);
        assert_eq!(p.rate(&targets(), 0.0, 0.3), 0.3);
        assert_eq!(p.rate(&targets(), f64::NAN, f64::NAN), 1.0);
    }

    /// A confidence asking for more samples than the deployment allows is planned for
    /// the bound: the events a placement costs stay bounded whatever its document says.
    #[test]
    fn the_samples_planned_are_bounded() {
        let p = SampleRatePlanner { max_samples: 1_000.0, ..SampleRatePlanner::default() };
        // 9,604 asked for; 600,000 requests a window.
        let r = p.rate(&targets(), 600_000.0, 1.0);
        assert!((r - 1_000.0 / 600_000.0 * 1.04).abs() < 1e-9, "{r}");
    }
}
