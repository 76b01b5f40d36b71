//! Realized shares with confidence intervals.
//!
//! A campaign's share is `HT(delivered) / HT(requests)`. Sampling is of requests
//! (consistent hashing), so within a window the sampled requests are a Bernoulli sample
//! of the placement's traffic and the share behaves like a binomial proportion. The
//! interval is Wilson's score interval, which stays inside `[0, 1]` and behaves near 0
//! and 1 where the normal approximation does not, computed on the effective sample
//! size so windows where the rate changed are not over-trusted.

use serde::{Deserialize, Serialize};

use crate::{CampaignId, WindowStats};

/// What counts as a campaign's delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryBasis {
    /// Ads allocated by the edge.
    Allocations,
    /// Ads the app reported as shown.
    Impressions,
}

/// A campaign needs this many sampled impressions before it is measured on them: below
/// it, a handful of beacons would set its render ratio.
pub const MIN_IMPRESSION_SAMPLES: u64 = 20;
/// … and the placement's apps must report impressions for at least this share of
/// allocated ads (see [`WindowStats::impression_coverage`]): a placement where only a
/// few apps report impressions is measured on allocations, or every campaign would
/// look as if it rarely rendered.
pub const MIN_COVERAGE: f64 = 0.5;

impl DeliveryBasis {
    /// The basis of `campaign`: impressions when both the placement (coverage) and the
    /// campaign itself (sampled impressions and allocations) give enough evidence, else
    /// allocations. Impressions of other campaigns, and of campaigns that were never
    /// allocated, decide nothing for it.
    pub fn of(stats: &WindowStats, campaign: &CampaignId) -> Self {
        let Some(c) = stats.campaigns.get(campaign) else { return Self::Allocations };
        let enough = c.impressions.n >= MIN_IMPRESSION_SAMPLES && c.allocations.n >= MIN_IMPRESSION_SAMPLES;
        if enough && stats.impression_coverage() >= MIN_COVERAGE { Self::Impressions } else { Self::Allocations }
    }
}

/// An estimated share and its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ShareEstimate {
    pub share: f64,
    pub low: f64,
    pub high: f64,
    /// Sampled events behind the numerator.
    pub samples: u64,
}

impl ShareEstimate {
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

/// Wilson score interval for proportion `p` observed over `n` (effective) samples.
pub fn wilson(p: f64, n: f64, z: f64) -> (f64, f64) {
    if n <= 0.0 || !p.is_finite() {
        return (0.0, 1.0);
    }
    let p = p.clamp(0.0, 1.0);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At p = 0 (or 1) the bound is exactly 0 (or 1); the subtraction leaves rounding dust.
    let low = if p == 0.0 { 0.0 } else { (center - half).max(0.0) };
    let high = if p == 1.0 { 1.0 } else { (center + half).min(1.0) };
    (low, high)
}

/// The delivered share of `campaign` in `stats`, at normal quantile `z`.
pub fn share(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis, z: f64) -> ShareEstimate {
    let counts = stats.campaigns.get(campaign).copied().unwrap_or_default();
    let tally = match basis {
        DeliveryBasis::Allocations => counts.allocations,
        DeliveryBasis::Impressions => counts.impressions,
    };
    let share = if stats.requests.ht > 0.0 { (tally.ht / stats.requests.ht).min(1.0) } else { 0.0 };
    let (low, high) = wilson(share, stats.effective_samples(), z);
    ShareEstimate { share, low, high, samples: tally.n }
}

/// The samples a window needs for a ±`margin` interval at `z` around share `s`: the
/// binomial minimum `z²·s(1−s)/e²`.
pub fn required_samples(s: f64, margin: f64, z: f64) -> f64 {
    z * z * s * (1.0 - s) / (margin * margin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::allocation;

    #[test]
    fn wilson_matches_reference_values() {
        // Reference: p = 0.3, n = 1000, z = 1.96 → [0.2725, 0.3290] (statsmodels
        // proportion_confint(300, 1000, method="wilson")).
        let (lo, hi) = wilson(0.3, 1000.0, 1.96);
        assert!((lo - 0.27246).abs() < 1e-4 && (hi - 0.32913).abs() < 1e-4, "{lo} {hi}");
        assert_eq!(wilson(0.5, 0.0, 1.96), (0.0, 1.0));
        for n in [100.0, 208.3, 1234.5] {
            let (lo, hi) = wilson(0.0, n, 1.959964);
            assert_eq!(lo, 0.0, "n = {n}");
            assert!(hi > 0.0);
            assert_eq!(wilson(1.0, n, 1.959964).1, 1.0, "n = {n}");
        }
    }

    #[test]
    fn share_of_a_window() {
        let mut s = WindowStats::default();
        for i in 0..100 {
            let ad = if i < 30 { Some("A") } else { None };
            s.fold(&allocation(&format!("r{i}"), ad, &["A"], 0.1));
        }
        let a = CampaignId::parse("A").unwrap();
        let e = share(&s, &a, DeliveryBasis::of(&s, &a), 1.96);
        assert!((e.share - 0.3).abs() < 1e-12);
        assert_eq!(e.samples, 30);
        assert!(e.contains(0.3) && e.low > 0.2 && e.high < 0.4);
        let none = share(&s, &CampaignId::parse("Z").unwrap(), DeliveryBasis::Allocations, 1.96);
        assert_eq!(none.share, 0.0);
    }

    fn impression(id: &str, ad: &str) -> crate::Event {
        let mut e = allocation(id, Some(ad), &[], 0.5);
        e.kind = crate::EventKind::Impression;
        e
    }

    /// 100 requests: A allocated 40 times, B 40 times, C never; `shown_a`/`shown_b` of
    /// them reported as impressions.
    fn window(shown_a: usize, shown_b: usize) -> WindowStats {
        let mut s = WindowStats::default();
        for i in 0..100 {
            let ad = match i % 5 {
                0 | 1 => Some("A"),
                2 | 3 => Some("B"),
                _ => None,
            };
            s.fold(&allocation(&format!("r{i}"), ad, &["A", "B", "C"], 0.5));
        }
        (0..shown_a).for_each(|i| s.fold(&impression(&format!("a{i}"), "A")));
        (0..shown_b).for_each(|i| s.fold(&impression(&format!("b{i}"), "B")));
        s
    }

    #[test]
    fn the_basis_is_per_campaign_and_needs_evidence() {
        let [a, b, c] = ["A", "B", "C"].map(|x| CampaignId::parse(x).unwrap());
        // No impressions: allocations everywhere.
        let s = window(0, 0);
        assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Allocations);
        // Apps report impressions for both: both on impressions, each its own ratio.
        let s = window(36, 40);
        assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Impressions);
        assert_eq!(DeliveryBasis::of(&s, &b), DeliveryBasis::Impressions);
        assert!((share(&s, &a, DeliveryBasis::Impressions, 1.96).share - 0.36).abs() < 1e-12);
        // Impressions of A alone never move B off allocations.
        let s = window(40, 0);
        assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Impressions);
        assert_eq!(DeliveryBasis::of(&s, &b), DeliveryBasis::Allocations);
        // A few beacons are not evidence.
        let s = window((MIN_IMPRESSION_SAMPLES - 1) as usize, 0);
        assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Allocations);
        // Impressions of a campaign never allocated (C) add nothing to coverage.
        let mut s = window(0, 0);
        (0..1000).for_each(|i| s.fold(&impression(&format!("c{i}"), "C")));
        assert_eq!(s.impression_coverage(), 0.0);
        assert_eq!(DeliveryBasis::of(&s, &c), DeliveryBasis::Allocations);
        // Apps reporting a fraction of what they show: the placement stays on allocations.
        let s = window(20, 10);
        assert!(s.impression_coverage() < MIN_COVERAGE);
        assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Allocations);
    }

    #[test]
    fn required_samples_is_the_binomial_minimum() {
        // ±1 pp at 95 % for s = 0.5: 9604 samples.
        assert!((required_samples(0.5, 0.01, 1.959_964) - 9603.6).abs() < 0.5);
    }
}
