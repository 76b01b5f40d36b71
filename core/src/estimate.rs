//! Realized shares with confidence intervals.
//!
//! A campaign's share is `HT(delivered) / HT(requests)`; on impressions, on each
//! platform its render ratio among the apps that report them times its share of all
//! allocations there ([`Reading`]). Sampling is of requests
//! (consistent hashing), so within a window the sampled requests are a Bernoulli sample
//! of the placement's traffic and the share behaves like a binomial proportion. The
//! interval is Wilson's score interval, which stays inside `[0, 1]` and behaves near 0
//! and 1 where the normal approximation does not, computed on the effective sample
//! size so windows where the rate changed are not over-trusted.

use serde::{Deserialize, Serialize};

use crate::reading::Reading;
use crate::stats::MAX_STRAGGLERS;
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
    ///
    /// The campaign's render ratio stands for all its ads ([`share`]), so at least
    /// [`MIN_COVERAGE`] of them must have gone to apps that report impressions: else a
    /// few reporting requests (one app's, say) would set the shown share of every ad.
    pub fn of(stats: &WindowStats, campaign: &CampaignId) -> Self {
        let Some(c) = stats.campaigns.get(campaign) else { return Self::Allocations };
        let reporting = c.reporting_allocations();
        let enough = c.impressions.n >= MIN_IMPRESSION_SAMPLES && reporting.n >= MIN_IMPRESSION_SAMPLES;
        let reported = reporting.ht >= MIN_COVERAGE * c.allocations.ht;
        if enough && reported && stats.impression_coverage() >= MIN_COVERAGE {
            Self::Impressions
        } else {
            Self::Allocations
        }
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

/// The delivered share of `campaign` in `stats`, at normal quantile `z`, with an
/// interval for the share *realized* over the window's requests: what the manager's
/// margin is about. A sampled request stands for `w = 1/rate` requests, itself among
/// them, so only the `w − 1` unseen ones are uncertain (the finite-population
/// correction): at a low rate the interval is the binomial one, at a high rate it is
/// narrower, and at census it is the realized share itself.
///
/// On impressions the share is, summed over platforms, the campaign's render ratio
/// among the apps that report them times its share of all allocations there
/// ([`Reading`]).
pub fn share(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis, z: f64) -> ShareEstimate {
    let reading = Reading::of(stats, campaign, basis);
    let share = reading.share();
    let (low, high) = wilson(share, reading.samples(true), z);
    ShareEstimate { share, low, high, samples: delivered_samples(stats, campaign, basis) }
}

/// What the status publishes for `campaign` from a window's reading
/// ([`Evidence::last_reading`](crate::Evidence::last_reading)): its basis, and its share
/// with an interval at `z`; for a share measured on impressions, the interval allows for
/// the share `impressions_to_come` of the campaign's impressions still to come
/// ([`Evidence::impressions_to_come`](crate::Evidence::impressions_to_come)).
pub fn published(
    reading: &WindowStats,
    campaign: &CampaignId,
    impressions_to_come: f64,
    z: f64,
) -> (DeliveryBasis, ShareEstimate) {
    let basis = DeliveryBasis::of(reading, campaign);
    let e = share(reading, campaign, basis, z);
    match basis {
        DeliveryBasis::Impressions => {
            (basis, allow_for_impressions_to_come(e, reading, campaign, impressions_to_come, z))
        }
        DeliveryBasis::Allocations => (basis, e),
    }
}

/// `e`, a share measured on impressions, allowing for a share `missing` of the
/// campaign's impressions still to come: each counted impression stands for
/// `k = 1/(1 − missing)` of them, so the share and its interval's half-widths grow by
/// `k`, and which of them come is a further sample of the campaign's impressions, whose
/// spread (`k(k − 1)·Σ c²w²` over the impressions, `c` how much one moves the share
/// through its platform's render ratio) adds in quadrature. The interval only widens; and no campaign shows more ads than it was
/// given, so the share and the high end stop at its share of allocations (or where
/// they already were).
///
/// The allowance is learnt from earlier windows, so an app carrying a fraction `f` of
/// the campaign's impressions there, and delaying them all, makes the share read
/// `1/(1 − f)` times the counted one (at most double, `missing` being capped at ½, and
/// never past the allocations); the controller never sees it.
fn allow_for_impressions_to_come(
    e: ShareEstimate,
    stats: &WindowStats,
    campaign: &CampaignId,
    missing: f64,
    z: f64,
) -> ShareEstimate {
    let missing = if missing.is_finite() { missing.clamp(0.0, MAX_STRAGGLERS) } else { 0.0 };
    let c = stats.campaigns.get(campaign).copied().unwrap_or_default();
    let reporting = c.reporting_allocations().ht;
    if missing == 0.0 || reporting <= 0.0 || stats.requests.ht <= 0.0 {
        return e;
    }
    let given = (c.allocations.ht / stats.requests.ht).min(1.0);
    if given <= e.share {
        // Every ad given was counted shown: none can still come.
        return e;
    }
    let k = 1.0 / (1.0 - missing);
    let spread = z * (k * (k - 1.0) * Reading::of(stats, campaign, DeliveryBasis::Impressions).shown_spread()).sqrt();
    let share = (e.share * k).min(given);
    let half = |h: f64| (h * h * k * k + spread * spread).sqrt();
    let low = (share - half(e.share - e.low)).max(0.0).min(e.low.max(share));
    let high = (share + half(e.high - e.share)).min(given.max(e.high)).max(share);
    ShareEstimate { share, low, high, ..e }
}

/// Sampled events behind the share's numerator: impressions or allocations.
fn delivered_samples(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis) -> u64 {
    let c = stats.campaigns.get(campaign).copied().unwrap_or_default();
    match basis {
        DeliveryBasis::Allocations => c.allocations.n,
        DeliveryBasis::Impressions => c.impressions.n,
    }
}

/// The variance of the campaign's share estimate, linearized (for a ratio `R̂ = Y/X`:
/// `Σ w²(y − R̂)² / X² = [(1 − R̂)²·S_y + R̂²·(S_x − S_y)] / X²`, where `S_y = Σ w²`
/// over the delivered events and `S_x = Σ w²` over the requests; on impressions, that
/// of the sum over platforms, [`Reading`]). `None` when the window does not tell: nothing sampled, or
/// stored without `S_y`.
pub fn share_variance(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis) -> Option<f64> {
    Reading::of(stats, campaign, basis).variance(false)
}

/// The number of equally weighted samples as precise as the window's estimate of the
/// campaign's share: `R̂(1 − R̂)/V` from [`share_variance`]; the Kish size
/// `(Σw)²/Σw²` where that does not apply (a share of 0 or 1, an old window).
pub fn effective_samples(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis) -> f64 {
    Reading::of(stats, campaign, basis).samples(false)
}

/// The share of `campaign`'s allocated ads that were shown, as [`share`] reads it on
/// impressions: each platform's allocations scaled by that platform's render ratio
/// ([`Reading`]). What the controller divides a target by to ask for allocations.
/// `None` where the campaign was not allocated.
pub fn render_ratio(stats: &WindowStats, campaign: &CampaignId) -> Option<f64> {
    Reading::of(stats, campaign, DeliveryBasis::Impressions).render_ratio()
}

/// The samples a window needs for a ±`margin` interval at `z` around share `s`: the
/// binomial minimum `z²·s(1−s)/e²`.
pub fn required_samples(s: f64, margin: f64, z: f64) -> f64 {
    z * z * s * (1.0 - s) / (margin * margin)
}

#[cfg(test)]
#[path = "estimate_tests.rs"]
mod tests;
