//! How a window reads one campaign's share, and how precisely: the arithmetic behind
//! [`crate::estimate::share`].
//!
//! On allocations a share is a ratio of Horvitz–Thompson totals, `A/N`. On impressions
//! it is `Σ_g (A_g/N)·ρ_g`: the campaign's share of all allocations in each *part* of
//! its traffic, scaled by the render ratio `ρ_g` of that part (impressions over
//! allocations to the apps that report them).
//!
//! **Why impressions are scaled, not divided by the reporting apps' requests.** Only
//! apps that report impressions can show one; the others' impressions are unknown. The
//! reporting apps' requests would stand for the placement only if those apps were a
//! fair sample of its traffic, and they seldom are: reporting depends on the app, so on
//! its platform and countries, and so on which campaigns it is eligible for. An iOS-only
//! campaign on a placement whose iOS apps report and whose web apps do not would read
//! about as many times too high as iOS is over-represented among the reporting apps. A
//! render ratio does not depend on that mix, and allocations are counted on every app.
//!
//! **Why a render ratio per platform.** The silent apps' ads are taken to render as the
//! reporting apps' do. Over the whole campaign that holds only if both kinds of apps are
//! spread alike over platforms, and they seldom are: web SDKs report less often, and
//! ads fail more often on the web. So each platform is a part (and what was counted on
//! no platform, events folded by a replica that did not count platforms, one more),
//! read by its own ratio as far as its reporting allocations allow ([`Part::weigh`]),
//! and by the campaign's ratio over all its reporting apps for the rest.
//!
//! **Why a weight, not a threshold.** A part's own ratio weighs `λ = min(1, c/¼, n/20)`,
//! `c` being the share of its allocations that went to reporting apps and `n` their
//! samples; the campaign's ratio weighs `1 − λ`. Below a quarter, `λ·A_g` is four times
//! the part's reporting allocations, so one reported (or withheld) impression moves the
//! share by at most four ads, as it does above. And the reading is continuous in every
//! count: an app cannot tip a platform from one ratio to the other with a few requests
//! (the threshold this replaced let requests saying `impressions=none` do that, moving
//! the share by the platform's whole difference between the two ratios).

use crate::estimate::MIN_IMPRESSION_SAMPLES;
use crate::stats::Tally;
use crate::{CampaignId, DeliveryBasis, WindowStats};

/// A part's own render ratio weighs fully once at least this share of its allocations
/// went to apps that report impressions (and at least [`MIN_IMPRESSION_SAMPLES`] were
/// sampled), and in proportion below ([`Part::weigh`]): an app holding a part `f` of a
/// platform's reporting allocations moves that platform's ratio by at most `f`, and the
/// campaign's share by at most `f·λ` times the platform's share of allocations, so by at
/// most four times its own reporting allocations.
pub const MIN_PLATFORM_REPORTING: f64 = 0.25;

/// A campaign's counts on part of its traffic: HT totals, their `Σw²` and the samples
/// behind the reporting allocations (a platform's in proportion to the campaign's:
/// [`crate::stats::PlatformCounts`]).
#[derive(Debug, Clone, Copy, Default)]
struct Part {
    a: f64,
    s_a: f64,
    ra: f64,
    ra_n: f64,
    s_ra: f64,
    i: f64,
    s_i: f64,
    /// How much its own render ratio weighs against the campaign's ([`Part::weigh`]).
    own: f64,
    /// `own` is under 1 for want of coverage, and so moves with the part's allocations.
    by_coverage: bool,
}

/// What a platform's HT sums are scaled by to give its `Σw²` and samples: the
/// campaign's own, per HT unit.
struct PerUnit {
    allocation_sq: f64,
    allocation_samples: f64,
    impression_sq: f64,
}

impl Part {
    fn of(a: f64, ra: f64, i: f64, per: &PerUnit) -> Self {
        Self {
            a,
            s_a: a * per.allocation_sq,
            ra,
            ra_n: ra * per.allocation_samples,
            s_ra: ra * per.allocation_sq,
            i,
            s_i: i * per.impression_sq,
            own: 1.0,
            by_coverage: false,
        }
    }

    fn add(&mut self, o: &Part) {
        self.a += o.a;
        self.s_a += o.s_a;
        self.ra += o.ra;
        self.ra_n += o.ra_n;
        self.s_ra += o.s_ra;
        self.i += o.i;
        self.s_i += o.s_i;
    }

    fn ratio(&self) -> f64 {
        if self.ra > 0.0 { (self.i / self.ra).clamp(0.0, 1.0) } else { 0.0 }
    }

    /// Weighs its own ratio by its reporting allocations: `λ = min(1, c/¼, n/20)`. Below
    /// a quarter's coverage `λ·A` is `4·RA`, so a silent allocation more reads at the
    /// campaign's ratio and a reported impression counts four; below 20 samples, the
    /// ratio of a few reports is trusted as far as they go.
    fn weigh(mut self) -> Self {
        let coverage = if self.a > 0.0 { self.ra / (MIN_PLATFORM_REPORTING * self.a) } else { 1.0 };
        let samples = self.ra_n / MIN_IMPRESSION_SAMPLES as f64;
        self.own = if self.ra > 0.0 { coverage.min(samples).clamp(0.0, 1.0) } else { 0.0 };
        self.by_coverage = self.own < 1.0 && coverage <= samples;
        self
    }

    /// The unseen `Σw(w − 1)` (realized) or the `Σw²` of allocations, reporting
    /// allocations and impressions, nested as the sets are.
    fn sums(&self, realized: bool) -> (f64, f64, f64) {
        let t = |s: f64, x: f64| if realized { (s - x).max(0.0) } else { s };
        let t_a = t(self.s_a, self.a);
        let t_ra = t(self.s_ra, self.ra).min(t_a);
        (t_a, t_ra, t(self.s_i, self.i).min(t_ra))
    }
}

/// A campaign's share as the window reads it.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    /// All requests: HT total and `Σw²`.
    n: Tally,
    s_n: f64,
    /// The campaign's counts; its render ratio over all its reporting apps.
    whole: Part,
    /// On impressions: the parts it is read by, each by its own render ratio and the
    /// whole's, weighed.
    parts: Option<Vec<Part>>,
    /// `Σ (1 − λ_g)·A_g / N`: how much of the share the campaign's ratio scales,
    /// computed once, since every part's coefficients need it (a window may hold as
    /// many platforms as apps made up, so nothing per part may walk the parts).
    pooled: f64,
}

impl Reading {
    pub(crate) fn of(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis) -> Self {
        let c = stats.campaigns.get(campaign).copied().unwrap_or_default();
        let (n, s_n) = (stats.requests, stats.requests_sq);
        let reporting = c.reporting_allocations();
        let per_unit = |sum: f64, total: f64| if total > 0.0 { sum / total } else { 0.0 };
        let per = PerUnit {
            allocation_sq: per_unit(c.allocations_sq, c.allocations.ht),
            allocation_samples: per_unit(c.allocations.n as f64, c.allocations.ht),
            impression_sq: per_unit(c.impressions_sq, c.impressions.ht),
        };
        let whole = Part {
            ra_n: reporting.n as f64,
            s_a: c.allocations_sq,
            s_i: c.impressions_sq,
            ..Part::of(c.allocations.ht, reporting.ht, c.impressions.ht, &per)
        };
        let parts = (basis == DeliveryBasis::Impressions).then(|| Self::parts(stats, campaign, &whole, &per));
        let pooled_a: f64 = parts.iter().flatten().map(|p| (1.0 - p.own) * p.a).sum();
        let pooled = if n.ht > 0.0 { pooled_a / n.ht } else { 0.0 };
        Self { n, s_n, whole, parts, pooled }
    }

    /// Each platform a part, and what was counted on no platform one part more, each
    /// weighed by its reporting allocations.
    fn parts(stats: &WindowStats, campaign: &CampaignId, whole: &Part, per: &PerUnit) -> Vec<Part> {
        let platforms =
            stats.platforms.range((campaign.clone(), String::new())..).take_while(|((id, _), _)| id == campaign);
        let mut counted = Part::default();
        let mut parts = Vec::new();
        for ((_, platform), p) in platforms {
            let part = Part::of(p.allocations, p.reporting(), p.impressions, per);
            // Impressions counted on no platform that its reporting allocations cannot
            // hold are those of tokens issued before tokens carried the platform (or of
            // edges that did not send it): their allocations are counted on their
            // platforms, so only one ratio reads them right.
            if platform.is_empty() && part.i > part.ra * (1.0 + 1e-9) {
                return vec![*whole];
            }
            counted.add(&part);
            parts.push(part.weigh());
        }
        // What the window counted on no platform (events folded by a replica that did
        // not count platforms); rounding leaves dust where every event was counted.
        let left = |all: f64, part: f64| Some(all - part).filter(|x| *x > 1e-9 * all).unwrap_or(0.0);
        let uncounted = Part::of(left(whole.a, counted.a), left(whole.ra, counted.ra), left(whole.i, counted.i), per);
        if uncounted.a > 0.0 {
            parts.push(uncounted.weigh());
        }
        parts
    }

    /// The part's render ratio: its own and the campaign's, weighed.
    fn part_ratio(&self, p: &Part) -> f64 {
        p.own * p.ratio() + (1.0 - p.own) * self.whole.ratio()
    }

    fn allocated(&self) -> f64 {
        if self.n.ht > 0.0 { (self.whole.a / self.n.ht).clamp(0.0, 1.0) } else { 0.0 }
    }

    pub(crate) fn share(&self) -> f64 {
        match &self.parts {
            None => self.allocated(),
            Some(parts) if self.n.ht > 0.0 => {
                parts.iter().map(|p| p.a / self.n.ht * self.part_ratio(p)).sum::<f64>().clamp(0.0, 1.0)
            }
            Some(_) => 0.0,
        }
    }

    /// On impressions, the share of the campaign's ads shown: each part's allocations
    /// scaled by its ratio, over all of them.
    pub(crate) fn render_ratio(&self) -> Option<f64> {
        let parts = self.parts.as_ref().filter(|_| self.whole.a > 0.0)?;
        let shown: f64 = parts.iter().map(|p| p.a * self.part_ratio(p)).sum();
        Some((shown / self.whole.a).clamp(0.0, 1.0))
    }

    /// The share's linearized variance: `Σ w²·z²` over the sampled requests (`w(w − 1)`
    /// for the share realized over the window's requests), `z` being how much one
    /// request of weight 1 moves the share. For a request of part `g`:
    /// `z = a·ρ_a/N − s/N + r·c_R + i·c_I`, where `a`, `r`, `i` say whether it was
    /// allocated the campaign, to a reporting app, and shown, `ρ_a` is what one of the
    /// part's allocations reads as ([`Self::allocation_ratio`]), and `c_R`, `c_I` are
    /// the share's derivatives in the ratios' bases and numerators: the part's own, as
    /// far as it weighs, and the campaign's (`−ρ·P/RA`, `P/RA`, `P` being
    /// [`Self::pooled`]; [`Self::coefficients`]). Taken whole, so every covariance is
    /// in it: a reporting app's allocation raises `A` and lowers `ρ`.
    /// Plus, for the `U_g` allocations to silent apps, whose ads' fate no event tells
    /// even at census: `ρ(1 − ρ)·U_g/N²` each, and for the error of each part's ratio,
    /// learnt from its `RA_h` reporting allocations, `c_h²·ρ_h(1 − ρ_h)/(RA_h·N²)`, with
    /// `c_h` the silent ads it scales: `λ_h·U_h` of its own part, plus `Σ (1 − λ_g)·U_g`
    /// in proportion `RA_h/RA` (the campaign's ratio is made of all).
    pub(crate) fn variance(&self, realized: bool) -> Option<f64> {
        let (n, whole) = (self.n.ht, &self.whole);
        let unseen_n = if realized { (self.s_n - n).max(0.0) } else { self.s_n };
        let allocated_sums = n > 0.0 && self.s_n > 0.0;
        let Some(parts) = &self.parts else {
            if !allocated_sums || (whole.a > 0.0 && whole.s_a <= 0.0) {
                return None;
            }
            let r = self.allocated();
            let t_a = if realized { (whole.s_a - whole.a).max(0.0) } else { whole.s_a }.min(unseen_n);
            return Some(((1.0 - r).powi(2) * t_a + r * r * (unseen_n - t_a)) / (n * n));
        };
        if !allocated_sums || whole.ra <= 0.0 || whole.s_ra <= 0.0 || (whole.i > 0.0 && whole.s_i <= 0.0) {
            return None;
        }
        if whole.a <= 0.0 {
            return Some(0.0);
        }
        let s = self.share();
        let (sampled, allocated_sq) = parts.iter().fold((0.0, 0.0), |(sum, t), p| {
            let (c_i, c_r) = self.coefficients(p);
            let given = self.allocation_ratio(p) / n - s / n;
            let (t_a, t_ra, t_i) = p.sums(realized);
            let z =
                (t_a - t_ra) * given * given + (t_ra - t_i) * (given + c_r).powi(2) + t_i * (given + c_r + c_i).powi(2);
            (sum + z, t + t_a)
        });
        let requests = (unseen_n - allocated_sq).max(0.0) * (s / n).powi(2);
        // The silent apps' ads: each a coin of its part's ratio; and the error of each
        // part's own ratio, carried by the silent ads it scales (its own part's as far
        // as its ratio weighs, and, in proportion to its reporting allocations, those
        // the campaign's ratio scales).
        let silent = |p: &Part| (p.a - p.ra).max(0.0);
        let pooled_silent: f64 = parts.iter().map(|p| (1.0 - p.own) * silent(p)).sum();
        let coins: f64 = parts.iter().map(|p| self.part_ratio(p) * (1.0 - self.part_ratio(p)) * silent(p)).sum();
        let ratios: f64 = parts
            .iter()
            .filter(|p| p.ra > 0.0)
            .map(|p| {
                let carried = p.own * silent(p) + pooled_silent * p.ra / whole.ra;
                carried * carried * p.ratio() * (1.0 - p.ratio()) / p.ra
            })
            .sum();
        Some(sampled + requests + (coins + ratios) / (n * n))
    }

    /// What one allocation of part `p` reads as: its ratio; where its weight is set by
    /// its coverage, the campaign's (`λ·A_g = 4·RA_g` does not move with `A_g`).
    fn allocation_ratio(&self, p: &Part) -> f64 {
        if p.by_coverage { self.whole.ratio() } else { self.part_ratio(p) }
    }

    /// How much one shown ad (`c_I`) and one allocation to a reporting app (`c_R`) of
    /// part `p` move the share: through its own ratio as far as it weighs, and through
    /// the campaign's. Where the weight is short of 1 it grows with the part's
    /// reporting allocations, so a reporting allocation lowers the own ratio's part by
    /// the campaign's ratio, not its own: `λ·A_g·(ρ_g − ρ)` is `k·A_g·(I_g − ρ·RA_g)`.
    fn coefficients(&self, p: &Part) -> (f64, f64) {
        let (n, whole) = (self.n.ht, &self.whole);
        let inv = |x: f64| if x > 0.0 { 1.0 / x } else { 0.0 };
        let pooled = self.pooled;
        let own_i = p.own * p.a / n * inv(p.ra);
        let own_r = own_i * if p.own < 1.0 { whole.ratio() } else { p.ratio() };
        (own_i + pooled * inv(whole.ra), -own_r - whole.ratio() * pooled * inv(whole.ra))
    }

    /// `Σ c_I²·Σw²` over the shown ads: how uncertain the share is per unit of
    /// uncertainty in which of its impressions were counted
    /// ([`crate::estimate::published`] allows for those still to come with it).
    pub(crate) fn shown_spread(&self) -> f64 {
        if self.n.ht <= 0.0 {
            return 0.0;
        }
        self.parts.iter().flatten().map(|p| self.coefficients(p).0.powi(2) * p.s_i).sum()
    }

    /// The number of equally weighted samples as precise as the reading: `s(1 − s)/V`;
    /// where that does not apply (a share of 0 or 1, a window stored without its sums),
    /// the Kish size of the smaller part that has its sums. `realized`: for the share
    /// realized over the window's requests, infinite at census.
    pub(crate) fn samples(&self, realized: bool) -> f64 {
        let allocated_sums = self.n.ht > 0.0 && self.s_n > 0.0;
        if realized && !allocated_sums {
            return self.samples(false);
        }
        let s = self.share();
        match self.variance(realized) {
            Some(v) if v > 0.0 && s > 0.0 && s < 1.0 => s * (1.0 - s) / v,
            _ => {
                let kish = |x: f64, sq: f64, has: bool| match if realized { (sq - x).max(0.0) } else { sq } {
                    t if t > 0.0 => x * x / t,
                    _ if realized && has => f64::INFINITY,
                    _ => 0.0,
                };
                let requests = kish(self.n.ht, self.s_n, allocated_sums);
                let w = &self.whole;
                let render = match &self.parts {
                    Some(_) if w.ra > 0.0 && w.s_ra > 0.0 => kish(w.ra, w.s_ra, true),
                    _ => f64::INFINITY,
                };
                requests.min(render)
            }
        }
    }
}

#[cfg(test)]
#[path = "reading_tests.rs"]
mod tests;
