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
//! ads fail more often on the web. So each platform where the campaign has enough
//! reporting allocations ([`Part::stands_alone`]) is a part with its own ratio, and the
//! rest of its traffic (thin platforms, events counted before platforms were) is one
//! more part: scaled by its own ratio where it has enough, else by the campaign's
//! ratio over all its reporting apps.

use crate::estimate::MIN_IMPRESSION_SAMPLES;
use crate::stats::{PlatformCounts, Tally};
use crate::{CampaignId, DeliveryBasis, WindowStats};

/// A platform has its own render ratio only if at least this share of the campaign's
/// allocations there went to apps that report impressions (and at least
/// [`MIN_IMPRESSION_SAMPLES`] were sampled): an app holding a part `f` of a platform's
/// reporting allocations moves the campaign's share by at most `f` times the
/// platform's share of allocations, so by at most four times its own allocations.
pub const MIN_PLATFORM_REPORTING: f64 = 0.25;

/// A campaign's counts on part of its traffic: HT totals and their `Σw²`.
#[derive(Debug, Clone, Copy, Default)]
struct Part {
    a: f64,
    s_a: f64,
    ra: Tally,
    s_ra: f64,
    i: f64,
    s_i: f64,
    /// Scaled by its own render ratio; else by the campaign's over all its apps.
    own: bool,
}

impl Part {
    fn of(p: &PlatformCounts) -> Self {
        Self::new(p.allocations.ht, p.allocations_sq, p.reporting(), p.impressions, p.impressions_sq)
    }

    /// The `Σw²` of the reporting allocations is taken in proportion to the
    /// allocations': the two kinds of apps are sampled at the same rates.
    fn new(a: f64, s_a: f64, ra: Tally, i: f64, s_i: f64) -> Self {
        let s_ra = if a > 0.0 { s_a * ra.ht / a } else { 0.0 };
        Self { a, s_a, ra, s_ra, i, s_i, own: true }
    }

    fn add(&mut self, o: &Part) {
        self.a += o.a;
        self.s_a += o.s_a;
        self.ra.ht += o.ra.ht;
        self.ra.n += o.ra.n;
        self.s_ra += o.s_ra;
        self.i += o.i;
        self.s_i += o.s_i;
    }

    fn ratio(&self) -> f64 {
        if self.ra.ht > 0.0 { (self.i / self.ra.ht).clamp(0.0, 1.0) } else { 0.0 }
    }

    fn stands_alone(&self) -> bool {
        self.ra.n >= MIN_IMPRESSION_SAMPLES && self.ra.ht >= MIN_PLATFORM_REPORTING * self.a && self.ra.ht > 0.0
    }

    /// The unseen `Σw(w − 1)` (realized) or the `Σw²` of allocations, reporting
    /// allocations and impressions, nested as the sets are.
    fn sums(&self, realized: bool) -> (f64, f64, f64) {
        let t = |s: f64, x: f64| if realized { (s - x).max(0.0) } else { s };
        let t_a = t(self.s_a, self.a);
        let t_ra = t(self.s_ra, self.ra.ht).min(t_a);
        (t_a, t_ra, t(self.s_i, self.i).min(t_ra))
    }
}

/// A campaign's share as the window reads it.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    /// All requests: HT total and `Σw²`.
    n: Tally,
    s_n: f64,
    /// The campaign's allocations, with the `Σw²` of those to reporting apps taken in
    /// proportion where they were not counted apart; its render ratio over all of them.
    whole: Part,
    /// On impressions: the parts it is read by, each its own render ratio or the whole's.
    parts: Option<Vec<Part>>,
}

impl Reading {
    pub(crate) fn of(stats: &WindowStats, campaign: &CampaignId, basis: DeliveryBasis) -> Self {
        let c = stats.campaigns.get(campaign).copied().unwrap_or_default();
        let (n, s_n) = (stats.requests, stats.requests_sq);
        let by_platform: Vec<Part> = stats
            .platforms
            .range((campaign.clone(), String::new())..)
            .take_while(|((id, _), _)| id == campaign)
            .map(|(_, p)| Part::of(p))
            .collect();
        let counted = by_platform.iter().fold(Part::default(), |mut t, p| {
            t.add(p);
            t
        });
        // What the window counted without a platform (events folded before platforms
        // were): the `Σw²` of its reporting allocations in proportion to its allocations.
        let reporting = c.reporting_allocations();
        // Rounding leaves dust where every event was counted per platform.
        let a = Some(c.allocations.ht - counted.a).filter(|a| *a > 1e-9 * c.allocations.ht).unwrap_or(0.0);
        let s_a = (c.allocations_sq - counted.s_a).max(0.0);
        let ra = Tally { ht: (reporting.ht - counted.ra.ht).max(0.0), n: reporting.n.saturating_sub(counted.ra.n) };
        let uncounted =
            Part::new(a, s_a, ra, (c.impressions.ht - counted.i).max(0.0), (c.impressions_sq - counted.s_i).max(0.0));
        let whole = Part {
            a: c.allocations.ht,
            s_a: c.allocations_sq,
            ra: reporting,
            s_ra: counted.s_ra + uncounted.s_ra,
            i: c.impressions.ht,
            s_i: c.impressions_sq,
            own: true,
        };
        let parts = (basis == DeliveryBasis::Impressions).then(|| {
            let (mut parts, thin): (Vec<Part>, Vec<Part>) = by_platform.into_iter().partition(Part::stands_alone);
            let mut rest = thin.iter().fold(uncounted, |mut t, p| {
                t.add(p);
                t
            });
            if rest.a > 0.0 {
                rest.own = rest.stands_alone();
                parts.push(rest);
            }
            parts
        });
        Self { n, s_n, whole, parts }
    }

    fn part_ratio(&self, p: &Part) -> f64 {
        if p.own { p.ratio() } else { self.whole.ratio() }
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
    /// `z = a·ρ_g/N − s/N + r·c_R + i·c_I`, where `a`, `r`, `i` say whether it was
    /// allocated the campaign, to a reporting app, and shown, and `c_R`, `c_I` are the
    /// share's derivatives in the render ratio's base and numerator (`−ρ·A_g/(N·RA)`,
    /// `A_g/(N·RA)` summed over the parts the ratio scales). Taken whole, so every
    /// covariance is in it: a reporting app's allocation raises `A` and lowers `ρ`.
    /// Plus, for the `U_g` allocations to silent apps, whose ads' fate no event tells
    /// even at census: `ρ(1 − ρ)·U_g/N²` each, and `ρ(1 − ρ)·U²/(RA·N²)` for the ratio
    /// learnt from `RA` of them, `U` summed over the parts that share it.
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
        let s_ra_whole = whole.s_ra;
        if !allocated_sums || whole.ra.ht <= 0.0 || s_ra_whole <= 0.0 || (whole.i > 0.0 && whole.s_i <= 0.0) {
            return None;
        }
        if whole.a <= 0.0 {
            return Some(0.0);
        }
        let s = self.share();
        let inv = |x: f64| if x > 0.0 { 1.0 / x } else { 0.0 };
        // The whole's ratio scales the parts that have none of their own.
        let pooled: f64 = parts.iter().filter(|p| !p.own).map(|p| p.a).sum::<f64>() / n;
        let (rho_w, pooled_silent) =
            (whole.ratio(), parts.iter().filter(|p| !p.own).map(|p| (p.a - p.ra.ht).max(0.0)).sum::<f64>());
        let mut sampled = 0.0;
        let mut allocated_sq = 0.0;
        let mut silent = rho_w * (1.0 - rho_w) * pooled_silent * pooled_silent * inv(whole.ra.ht);
        for p in parts {
            let rho = self.part_ratio(p);
            let (own_i, own_r) =
                if p.own { (p.a / n * inv(p.ra.ht), rho * p.a / n * inv(p.ra.ht)) } else { (0.0, 0.0) };
            let c_i = own_i + pooled * inv(whole.ra.ht);
            let c_r = -own_r - rho_w * pooled * inv(whole.ra.ht);
            let given = rho / n - s / n;
            let (t_a, t_ra, t_i) = p.sums(realized);
            sampled +=
                (t_a - t_ra) * given * given + (t_ra - t_i) * (given + c_r).powi(2) + t_i * (given + c_r + c_i).powi(2);
            allocated_sq += t_a;
            let u = (p.a - p.ra.ht).max(0.0);
            silent += rho * (1.0 - rho) * u;
            if p.own {
                silent += rho * (1.0 - rho) * u * u * inv(p.ra.ht);
            }
        }
        let requests = (unseen_n - allocated_sq).max(0.0) * (s / n).powi(2);
        Some(sampled + requests + silent / (n * n))
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
                    Some(_) if w.ra.ht > 0.0 && w.s_ra > 0.0 => kish(w.ra.ht, w.s_ra, true),
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
