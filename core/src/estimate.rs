//! Realized shares with confidence intervals.
//!
//! A campaign's share is `HT(delivered) / HT(requests)`; on impressions, its render
//! ratio among the apps that report them times its share of all allocations
//! ([`Reading`]). Sampling is of requests
//! (consistent hashing), so within a window the sampled requests are a Bernoulli sample
//! of the placement's traffic and the share behaves like a binomial proportion. The
//! interval is Wilson's score interval, which stays inside `[0, 1]` and behaves near 0
//! and 1 where the normal approximation does not, computed on the effective sample
//! size so windows where the rate changed are not over-trusted.

use serde::{Deserialize, Serialize};

use crate::stats::{MAX_STRAGGLERS, Tally};
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
/// On impressions the share is the campaign's render ratio among the apps that report
/// them times its share of all allocations ([`Reading`]).
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
/// spread (`k(k − 1)·Σw²` over the render ratio's base, scaled to the share) adds in
/// quadrature. The interval only widens; and no campaign shows more ads than it was
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
    let spread = z * given * (k * (k - 1.0) * c.impressions_sq).sqrt() / reporting;
    let share = (e.share * k).min(given);
    let half = |h: f64| (h * h * k * k + spread * spread).sqrt();
    let low = (share - half(e.share - e.low)).max(0.0).min(e.low.max(share));
    let high = (share + half(e.high - e.share)).min(given.max(e.high)).max(share);
    ShareEstimate { share, low, high, ..e }
}

/// A campaign's share as the window reads it: its share of all allocations and, on
/// impressions, the render ratio it is scaled by.
///
/// **Why impressions are scaled, not divided by the reporting apps' requests.** Only
/// apps that report impressions can show one; the others' impressions are unknown. The
/// share of the reporting apps' requests would stand for the placement only if those
/// apps were a fair sample of its traffic, and they seldom are: reporting depends on
/// the app, so on its platform and countries, and so on which campaigns it is eligible
/// for. An iOS-only campaign on a placement whose iOS apps report and whose web apps
/// do not would read about as many times too high as iOS is over-represented among the
/// reporting apps. Its render ratio (impressions over its allocations to the reporting
/// apps) does not depend on that mix, and its allocations are counted on every app, so
/// their product stands for the placement as long as each campaign's ads render alike
/// in the apps that report and in those that do not.
#[derive(Debug, Clone, Copy)]
struct Reading {
    allocated: Ratio,
    /// On impressions: impressions over allocations to the reporting apps.
    render: Option<Ratio>,
}

impl Reading {
    fn of(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis) -> Self {
        let c = stats.campaigns.get(campaign).copied().unwrap_or_default();
        let allocated = Ratio { x: stats.requests, s_x: stats.requests_sq, y: c.allocations, s_y: c.allocations_sq };
        let render = (basis == DeliveryBasis::Impressions).then(|| {
            let reporting = c.reporting_allocations();
            // `Σw²` of the reporting apps' allocations, not counted apart: the two kinds
            // of apps are sampled at the same rates, so in proportion.
            let s_x = if c.allocations.ht > 0.0 { c.allocations_sq * reporting.ht / c.allocations.ht } else { 0.0 };
            Ratio { x: reporting, s_x, y: c.impressions, s_y: c.impressions_sq }
        });
        Self { allocated, render }
    }

    fn share(&self) -> f64 {
        self.allocated.value() * self.render.map_or(1.0, |r| r.value())
    }

    /// The share's linearized variance. On impressions, `s = (I/RA)·(A/N)`: a sampled
    /// request of weight `w` adds `w²·s²·(i/I − r/RA + a/A − 1/N)²`, where `i`, `r`,
    /// `a` say whether it was shown, allocated to a reporting app, allocated. Taken
    /// whole, so the two ratios' covariance (a reporting app's allocation raises one
    /// and lowers the other) is in it: the render ratio's part mostly cancels where
    /// most of the campaign's apps report. Plus `ρ(1 − ρ)·U·(1 + U/RA)/N²` for the `U`
    /// allocations to silent apps, whose ads' fate no event tells, even at census.
    fn variance(&self, realized: bool) -> Option<f64> {
        let Some(render) = self.render else { return self.allocated.variance(realized) };
        let (all, base) = (self.allocated, render);
        if !all.has_sums() || !base.has_sums() || base.y_sq_missing() {
            return None;
        }
        let (s_n, s_a) = all.sums(realized);
        let (s_ra, s_i) = base.sums(realized);
        // Nested sets: impressions ⊂ reporting allocations ⊂ allocations ⊂ requests.
        let s_a = s_a.min(s_n);
        let s_ra = s_ra.min(s_a);
        let s_i = s_i.min(s_ra);
        let (n, a, ra, i) = (all.x.ht, all.y.ht, base.x.ht, base.y.ht.min(base.x.ht));
        if a <= 0.0 || ra <= 0.0 {
            return Some(0.0);
        }
        let share = self.share();
        let inv = |x: f64| if x > 0.0 { 1.0 / x } else { 0.0 };
        let requests = -1.0 / n;
        let allocated = requests + 1.0 / a;
        let reporting = allocated - 1.0 / ra;
        let shown = reporting + inv(i);
        let sampled = (s_n - s_a) * requests * requests
            + (s_a - s_ra) * allocated * allocated
            + (s_ra - s_i) * reporting * reporting
            + s_i * shown * shown;
        // Whether the silent apps' ads showed is never seen, sampled or not: each is a
        // coin of the render ratio, and the ratio itself is learnt from `RA` of them.
        let rho = render.value();
        let silent = (a - ra).max(0.0);
        let unseen = rho * (1.0 - rho) * silent * (1.0 + silent / ra) / (n * n);
        Some(share * share * sampled + unseen)
    }

    /// The number of equally weighted samples as precise as the reading: `s(1 − s)/V`;
    /// where that does not apply (a share of 0 or 1, a window stored without its sums),
    /// the Kish size of the smaller part that has its sums. `realized`: for the share realized over the
    /// window's requests, infinite at census.
    fn samples(&self, realized: bool) -> f64 {
        if realized && !self.allocated.has_sums() {
            return self.samples(false);
        }
        let s = self.share();
        match self.variance(realized) {
            Some(v) if v > 0.0 && s > 0.0 && s < 1.0 => s * (1.0 - s) / v,
            _ => {
                let render = self.render.filter(|r| r.has_sums()).map_or(f64::INFINITY, |r| r.kish(realized));
                self.allocated.kish(realized).min(render)
            }
        }
    }
}

/// `Y/X`, a ratio of Horvitz–Thompson totals, with their squared-weight sums.
#[derive(Debug, Clone, Copy)]
struct Ratio {
    x: Tally,
    s_x: f64,
    y: Tally,
    s_y: f64,
}

impl Ratio {
    fn value(&self) -> f64 {
        if self.x.ht > 0.0 { (self.y.ht / self.x.ht).clamp(0.0, 1.0) } else { 0.0 }
    }

    fn has_sums(&self) -> bool {
        self.x.ht > 0.0 && self.s_x > 0.0
    }

    /// A numerator counted without its `Σw²` (a window stored before it was).
    fn y_sq_missing(&self) -> bool {
        self.y.n > 0 && self.s_y <= 0.0
    }

    /// `Σw²` of the base and of the numerator; `realized`: less the HT totals (each
    /// sampled event is one of the `w` it stands for, so `Σw(w − 1)` is what is unseen).
    fn sums(&self, realized: bool) -> (f64, f64) {
        if realized { ((self.s_x - self.x.ht).max(0.0), (self.s_y - self.y.ht).max(0.0)) } else { (self.s_x, self.s_y) }
    }

    /// `None` when the window does not tell: nothing sampled, or stored without `S_y`.
    fn variance(&self, realized: bool) -> Option<f64> {
        if !self.has_sums() || self.y_sq_missing() {
            return None;
        }
        let (s_x, s_y) = self.sums(realized);
        ratio_variance(self.x.ht, self.value(), s_x, s_y)
    }

    /// Kish's effective size of the base, `X²/S_x`: 0 without sums; realized, infinite
    /// when nothing is unseen.
    fn kish(&self, realized: bool) -> f64 {
        match self.sums(realized).0 {
            s if s > 0.0 => self.x.ht * self.x.ht / s,
            _ if realized && self.has_sums() => f64::INFINITY,
            _ => 0.0,
        }
    }
}

/// `[(1 − R)²·S_y + R²·(S_x − S_y)] / X²`: the linearized variance of a ratio `R` of
/// totals with squared-weight sums `S_x` (base) and `S_y` (numerator).
fn ratio_variance(x: f64, r: f64, s_x: f64, s_y: f64) -> Option<f64> {
    if x <= 0.0 {
        return None;
    }
    let s_y = s_y.min(s_x);
    Some(((1.0 - r).powi(2) * s_y + r * r * (s_x - s_y)) / (x * x))
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
/// over the delivered events and `S_x = Σ w²` over the requests; on impressions, the
/// product's, [`Reading`]). `None` when the window does not tell: nothing sampled, or
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

/// The samples a window needs for a ±`margin` interval at `z` around share `s`: the
/// binomial minimum `z²·s(1−s)/e²`.
pub fn required_samples(s: f64, margin: f64, z: f64) -> f64 {
    z * z * s * (1.0 - s) / (margin * margin)
}

#[cfg(test)]
#[path = "estimate_tests.rs"]
mod tests;
