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

use crate::Targets;
use crate::estimate::required_samples;

#[derive(Debug, Clone, Copy)]
pub struct SampleRatePlanner {
    pub min_rate: f64,
    /// Relative width of the hysteresis band.
    pub band: f64,
}

impl Default for SampleRatePlanner {
    fn default() -> Self {
        Self { min_rate: 1e-4, band: 0.08 }
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

    /// The rate for the next plan, given the requests one window is expected to see
    /// (the last window's estimate) and the rate in force.
    pub fn rate(&self, targets: &Targets, requests_per_window: f64, current: f64) -> f64 {
        let min_rate = self.min_rate.clamp(f64::MIN_POSITIVE, 1.0);
        if !(requests_per_window.is_finite() && requests_per_window > 0.0) {
            // No traffic seen: keep what we have (a new placement starts at 1).
            return if current.is_finite() && current > 0.0 { current.clamp(min_rate, 1.0) } else { 1.0 };
        }
        let raw = Self::required_samples(targets) / requests_per_window;
        let at = |factor: f64| (raw * factor).clamp(min_rate, 1.0);
        if current >= at(1.0) && current <= at(1.0 + self.band) {
            return current;
        }
        at(1.0 + self.band / 2.0)
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

    #[test]
    fn clamps() {
        let p = SampleRatePlanner { min_rate: 0.01, band: 0.08 };
        assert_eq!(p.rate(&targets(), 1e12, 0.5), 0.01);
        assert_eq!(p.rate(&targets(), 10.0, 0.5), 1.0);
        assert_eq!(p.rate(&targets(), 0.0, 0.3), 0.3);
        assert_eq!(p.rate(&targets(), f64::NAN, f64::NAN), 1.0);
    }
}
