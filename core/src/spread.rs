//! Spreading an edge's picks evenly: each campaign's count follows its weights to a
//! request or two, instead of the binomial spread of independent random picks.
//!
//! **Why.** With an independent uniform per request, the weighted pick gives a campaign
//! of share `s` a binomial count over `n` requests: its realized share is off by
//! `√(s(1−s)/n)` however right the weights are. For small targets on modest traffic that
//! is most of the error: a 0.5 % campaign on 20,000 requests a window is off by ±14 % of
//! its target one time in three. The manager judges the realized share, so this noise is
//! as real as a controller's.
//!
//! **How.** Each campaign (and "no ad") keeps a *credit*: what it is owed. A request adds
//! to every eligible outcome its probability under the plan (its weight over the eligible
//! total, as [`crate::choose::pick`] would use), then goes to the eligible outcome owed
//! the most, which pays one back. This is the largest-deficit rule of the chairman
//! assignment problem (Tijdeman) and of nginx's smooth weighted round robin, with
//! eligibility: the credits always sum to their start, and a campaign's deliveries stay
//! within a request or two of the sum of its probabilities over the requests that came,
//! whatever mix of eligibility patterns they had. The sum over an edge's isolates (one
//! [`Spread`] each) then has a small fraction of the binomial spread.
//!
//! Nothing else changes: whether a request is sampled is decided on its id, independent
//! of the choice, so the origin's estimates stay unbiased for the realized shares and
//! its intervals keep their meaning. A new plan keeps each campaign's credit (matched by
//! id), so a window that straddles plans is delivered as their requests owed.
//!
//! **Hostile input.** A client chooses its attributes, hence which outcomes its requests
//! credit; credits are clamped to `±CREDIT_BOUND`, so no sequence of requests drives one
//! without bound, and every request is served an outcome it is eligible for. No client
//! changes any outcome's total: that follows the odds of all the requests. What a client
//! can do is take, with requests of a pattern where a campaign has high odds, more of
//! that campaign's picks than independent picks would give those requests, leaving fewer
//! for the others. With independent picks the same client gets the same in the end: its
//! requests raise the campaign's realized share, and the controller lowers the
//! campaign's weight for everyone to hold the target; the spread makes the transfer
//! direct. Only telling such traffic apart (bot filtering) stops either. The start is
//! random per isolate and the requests of many clients interleave, so an app cannot
//! tell which ad its next request gets. Memory is one number per campaign of the plan.

use crate::{CampaignId, Plan};

/// How far a credit may stray from zero. Honest traffic keeps credits within about ±1
/// (see the tests); the clamp only bounds what an adversarial sequence could do.
const CREDIT_BOUND: f64 = 8.0;

/// The credits of one placement's outcomes at one isolate. The shell owns it and passes
/// it to [`crate::CompiledPlan::choose_spread`] with every request of the placement.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    /// The plan the credits are indexed by: its version and campaign ids.
    version: Option<u64>,
    ids: Vec<CampaignId>,
    /// Per campaign of the plan, then "no ad" last.
    credit: Vec<f64>,
}

impl Spread {
    pub fn new() -> Self {
        Self::default()
    }

    /// The outcome for a request with eligibility `eligible` under `plan`: a campaign's
    /// index, or `None` for no ad. `fresh` gives 64 random bits for the starting credits;
    /// it is called once, when the first plan is adopted.
    pub fn pick(&mut self, plan: &Plan, eligible: u64, fresh: impl FnOnce() -> u64) -> Option<usize> {
        self.adopt(plan, fresh);
        let weight = |i: usize| plan.campaigns.get(i).map_or(0.0, |c| c.weight.max(0.0));
        let none = plan.campaigns.len();
        let mut total = plan.no_ad_weight.max(0.0);
        let mut bits = eligible;
        while bits != 0 {
            total += weight(bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
        if total.is_nan() || total <= 0.0 {
            return None;
        }
        let mut best = (plan.no_ad_weight > 0.0).then_some(none);
        if best.is_some() {
            self.credit[none] += plan.no_ad_weight / total;
        }
        let mut bits = eligible;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let w = weight(i);
            if w > 0.0 && i < none {
                self.credit[i] += w / total;
                if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                    best = Some(i);
                }
            }
        }
        let b = best?;
        self.credit[b] -= 1.0;
        self.credit[b] = self.credit[b].clamp(-CREDIT_BOUND, CREDIT_BOUND);
        (b < none).then_some(b)
    }

    /// Indexes the credits by `plan`'s campaigns: kept by id across versions, a new
    /// campaign starting at zero; the first plan's credits start at random.
    fn adopt(&mut self, plan: &Plan, fresh: impl FnOnce() -> u64) {
        if self.version == Some(plan.version) && self.ids.len() == plan.campaigns.len() {
            return;
        }
        let n = plan.campaigns.len();
        let mut credit = vec![0.0; n + 1];
        if self.version.is_none() {
            // A start anywhere in a campaign's usual range, `[q − 1, q)` for odds `q`:
            // an even start (or zero) would let a campaign of small odds win the first
            // picks of a fresh isolate as often as a large one.
            let total = plan.no_ad_weight.max(0.0) + plan.campaigns.iter().map(|c| c.weight.max(0.0)).sum::<f64>();
            let odds = |i: usize| {
                let w = plan.campaigns.get(i).map_or(plan.no_ad_weight, |c| c.weight).max(0.0);
                if total > 0.0 { w / total } else { 0.0 }
            };
            let mut bits = fresh();
            for (i, c) in credit.iter_mut().enumerate() {
                // splitmix64: one random word gives every starting credit.
                bits = bits.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = bits;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                *c = odds(i) - ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
            }
        } else {
            for (i, c) in plan.campaigns.iter().enumerate() {
                if let Some(j) = self.ids.iter().position(|id| id == &c.id) {
                    credit[i] = self.credit[j];
                }
            }
            credit[n] = self.credit.last().copied().unwrap_or(0.0);
        }
        self.version = Some(plan.version);
        self.ids = plan.campaigns.iter().map(|c| c.id.clone()).collect();
        self.credit = credit;
    }
}

#[cfg(test)]
#[path = "spread_tests.rs"]
mod tests;
