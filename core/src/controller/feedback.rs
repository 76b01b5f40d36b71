//! Feedback: what the model still misses, learnt from the windows measured under the
//! plan in force.
//!
//! For each campaign, a window's measured share `m` is compared with what the model
//! predicts for the weights that were actually in force, `p`; their ratio `u = p/m` is
//! the unexplained factor, and the correction that makes the next plan deliver the
//! target is `g = u` (the model is asked for `r·g`).
//!
//! **Evidence accumulates across plans.** Each window is predicted for the plans it
//! was actually decided under: the weights and rules of every version in its requests
//! (the last few are remembered), applied to the window's own traffic mix, and mixed
//! in proportion to the requests each decided. So `u` does not depend on the weights:
//! a window under new weights, or split between two plans while the edges pick up the
//! new one, is as good evidence as any, and learning does not restart when the weights
//! are re-solved. Each window adds its requests `X`, `X·m`, `X·p` and `X²·Var(m)` (the
//! ratio estimator's variance, [`estimate::effective_samples`]) to sums that older
//! windows fade out of by [`Controller::evidence_decay`], so the merged gap's band
//! shrinks with evidence (≈ ⅓ of one window's after a handful) while a drift is still
//! followed.
//!
//! **Shares are compared in the model's units: allocations of all the traffic.** A
//! campaign measured on impressions is compared on its allocations too
//! ([`allocated_share`]), on every app, as the model predicts them. Its render ratio,
//! which the plan divides its target by, is measured apart, over the recent windows;
//! new weights move its ads between apps that show them more or less often, so a gap on
//! impressions would mix the render ratio's lag into the bias, and its evidence would
//! have to start over with every new weights. At 10,000 requests/s the weights are
//! re-solved nearly every window: evidence that starts over is one window, whose
//! doubled band cannot undo a wrong step of `g` for twenty windows and more. Nor is it
//! compared among the apps that report impressions: their mix is not the traffic's
//! (reporting depends on the app, so on its platform and countries), and a campaign
//! eligible on fewer or more of them than the rest would read a gap that is only that
//! mix, and be driven off target by it.
//!
//! **A sequential test decides.** The current correction `g` predicts the merged
//! measured share `P/g`. Only when the merged share is further from it than
//! `max(z, feedback_sigmas)` standard errors does `g` move, to the merged estimate
//! `P/M` (geometrically weighted by `feedback_gain`), within `[1/max, max]`; a single
//! window needs twice that band (a gross model failure still moves at once). So a
//! persistent bias of 1 pp at ±1 pp settings is found in about two windows and
//! corrected in one step; noise seldom crosses the band, and when it does the step is
//! no larger than the band; a correction whose cause is gone is contradicted by the
//! evidence in the same way and returns to 1.
//!
//! **A window counts once.** Two rounds may see the same last window (a round for a
//! target change within the window, a new lease holder's first round); its index (or,
//! where the caller does not know it, a fingerprint of its counts) is remembered, so
//! it is not added again.
//!
//! **A stored state is parsed, not trusted.** The state comes back from Redis, where a
//! bug, an older version or anyone with write access may have left anything. A
//! [`Learning`] deserializes only with values the controller could have written:
//! finite, non-negative numbers, merged shares within `[0, 1]`, at most [`MAX_PLANS`]
//! remembered plans in version order (the last, in force, not replaced), at most [`MAX_CAMPAIGNS`] campaigns; anything
//! else is refused, and the shell starts learning afresh. What a parse cannot see is
//! checked against the plan in force as a round follows it: with remembered versions
//! newer than it, or its fingerprint on other weights, nothing remembered is trusted.
//! Corrections are kept within the controller's `[1/max, max]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ControlInput, ControlState, Controller, patterns_for};
use crate::estimate::{self, DeliveryBasis};
use crate::{CampaignId, Eligibility, MAX_CAMPAIGNS, Plan, WindowStats, solver};

/// What feedback has learnt, and the plans it learnt under.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredLearning")]
pub struct Learning {
    /// The weights of the last few plans, oldest first; the last is the one in force.
    pub plans: Vec<PlanWeights>,
    /// The last window counted: its index + 1 where the caller knows it, else a
    /// fingerprint of its counts.
    pub last_window: u64,
    pub evidence: BTreeMap<CampaignId, Evidence>,
}

/// How many of the newest sets of weights are remembered: a window is decided under at
/// most two or three plans (the edges take a new one up over a minute or two).
pub const PLANS_KEPT: usize = 4;

/// Older plans are remembered too while they decide at least this share of a window (a
/// stuck colo's: [`super::lag`]), up to [`MAX_PLANS`] in all.
pub const LAGGING_KEPT: f64 = 0.005;

/// The most sets of weights remembered.
pub const MAX_PLANS: usize = 8;

/// A [`Learning`] as stored, before its values are checked.
#[derive(Deserialize)]
struct StoredLearning {
    #[serde(default)]
    plans: Vec<PlanWeights>,
    last_window: u64,
    evidence: BTreeMap<CampaignId, Evidence>,
}

impl TryFrom<StoredLearning> for Learning {
    type Error = String;

    fn try_from(s: StoredLearning) -> Result<Self, String> {
        if s.plans.len() > MAX_PLANS {
            return Err(format!("{} plans remembered, at most {MAX_PLANS} are kept", s.plans.len()));
        }
        for (i, p) in s.plans.iter().enumerate() {
            p.check().map_err(|e| format!("plans[{i}]: {e}"))?;
        }
        if s.plans.windows(2).any(|w| w[0].until_version >= w[1].since_version) {
            return Err("remembered plans out of version order".into());
        }
        // Each replaced by the next one's first publish; the last is the one in force.
        if s.plans.last().is_some_and(|p| p.replaced_ms.is_some()) {
            return Err("the plan in force remembered as replaced".into());
        }
        if s.evidence.len() > MAX_CAMPAIGNS {
            return Err(format!("evidence for {} campaigns, at most {MAX_CAMPAIGNS}", s.evidence.len()));
        }
        for (id, e) in &s.evidence {
            e.check().map_err(|m| format!("evidence of {id}: {m}"))?;
        }
        Ok(Self { plans: s.plans, last_window: s.last_window, evidence: s.evidence })
    }
}

/// What decides delivery in a plan, from the first version that carried it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanWeights {
    pub since_version: u64,
    /// The last version seen carrying them: versions in between belong to these weights.
    pub until_version: u64,
    /// [`weights_fingerprint`] of those plans.
    pub fingerprint: u64,
    pub no_ad_weight: f64,
    pub campaigns: Vec<(CampaignId, f64, Eligibility)>,
    /// When the next weights were first published (absent for the plan in force, and
    /// in states stored before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_ms: Option<u64>,
}

impl PlanWeights {
    fn of(plan: &Plan) -> Self {
        Self {
            since_version: plan.version,
            until_version: plan.version,
            fingerprint: weights_fingerprint(plan),
            no_ad_weight: plan.no_ad_weight,
            campaigns: plan.campaigns.iter().map(|c| (c.id.clone(), c.weight, c.eligibility.clone())).collect(),
            replaced_ms: None,
        }
    }

    /// What [`PlanWeights::of`] could have made: versions in order, at most
    /// [`MAX_CAMPAIGNS`] campaigns, finite weights ≥ 0 (as [`Plan::check`] asks).
    fn check(&self) -> Result<(), String> {
        if self.since_version > self.until_version {
            return Err(format!("versions {}..={}", self.since_version, self.until_version));
        }
        if self.campaigns.len() > MAX_CAMPAIGNS {
            return Err(format!("{} campaigns", self.campaigns.len()));
        }
        let mut weights = std::iter::once(self.no_ad_weight).chain(self.campaigns.iter().map(|(_, w, _)| *w));
        match weights.find(|w| !(w.is_finite() && *w >= 0.0)) {
            Some(w) => Err(format!("weight {w}")),
            None => Ok(()),
        }
    }

    /// Whether these are `plan`'s weights and rules (a weight read back from JSON may
    /// differ in its last bit).
    fn same_as(&self, plan: &Plan) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
        close(self.no_ad_weight, plan.no_ad_weight)
            && self.campaigns.len() == plan.campaigns.len()
            && self
                .campaigns
                .iter()
                .zip(&plan.campaigns)
                .all(|((id, w, e), c)| *id == c.id && close(*w, c.weight) && *e == c.eligibility)
    }

    /// The shares these weights deliver for the traffic mix of `mix`, by campaign.
    pub(super) fn delivered(&self, mix: &WindowStats) -> Vec<f64> {
        let patterns = patterns_for(self.campaigns.iter().map(|(_, _, e)| e), mix);
        let weights: Vec<f64> = self.campaigns.iter().map(|(_, w, _)| *w).collect();
        let mut out = vec![0.0; weights.len()];
        solver::delivered(&weights, self.no_ad_weight, &patterns, &mut out);
        out
    }
}

impl Learning {
    /// The first version with the weights in force.
    pub fn since_version(&self) -> Option<u64> {
        self.plans.last().map(|p| p.since_version)
    }

    /// Takes note of the plan in force.
    fn follow(&mut self, plan: &Plan) {
        let key = weights_fingerprint(plan);
        // Versions the plan in force has not reached, or its fingerprint on other
        // weights: not this placement's history (another origin's state, a forgery).
        let newer = self.plans.iter().any(|p| p.until_version > plan.version);
        if newer || self.plans.last().is_some_and(|p| p.fingerprint == key && !p.same_as(plan)) {
            *self = Self::default();
        }
        match self.plans.last_mut() {
            Some(p) if p.fingerprint == key && p.since_version <= plan.version => {
                p.until_version = p.until_version.max(plan.version);
            }
            _ => {
                // A plan older than what is remembered (another origin's state):
                // nothing remembered can be trusted.
                if self.plans.iter().any(|p| p.until_version >= plan.version) {
                    *self = Self::default();
                }
                // Each plan's own time: one origin's clock ahead, or a forged time, then
                // bears on that plan only, never on the ones replaced after it.
                if let Some(last) = self.plans.last_mut() {
                    last.replaced_ms = Some(plan.issued_at_ms);
                }
                self.plans.push(PlanWeights::of(plan));
                let excess = self.plans.len().saturating_sub(MAX_PLANS);
                self.plans.drain(..excess);
            }
        }
    }

    /// The share of `w`'s requests decided under each remembered plan's versions, in
    /// the order of `plans`. Counts read back from Redis: a NaN or an infinity among
    /// them is no share.
    pub(super) fn shares_decided(&self, w: &WindowStats) -> Vec<Option<f64>> {
        let total: f64 = w.versions.values().sum();
        let counted = total.is_finite() && total > 0.0;
        self.plans
            .iter()
            .map(|plan| {
                let decided: f64 = w.versions.range(plan.since_version..=plan.until_version).map(|(_, n)| n).sum();
                let share = decided / total;
                (counted && share.is_finite()).then_some(share)
            })
            .collect()
    }

    /// Forgets plans older than the newest [`PLANS_KEPT`] that decided less than
    /// [`LAGGING_KEPT`] of `w`.
    fn keep_deciding(&mut self, w: &WindowStats) {
        let old = self.plans.len().saturating_sub(PLANS_KEPT);
        let shares = self.shares_decided(w);
        let mut kept = shares.iter().enumerate().map(|(i, s)| i >= old || s.is_some_and(|s| s >= LAGGING_KEPT));
        self.plans.retain(|_| kept.next().unwrap_or(true));
    }

    /// What the model predicts `w` delivered, by campaign: each version's weights on
    /// `mix`, in proportion to the requests it decided. `None` when less than
    /// `min_known` of them were decided under a remembered plan.
    fn predict(&self, w: &WindowStats, mix: &WindowStats, min_known: f64) -> Option<BTreeMap<CampaignId, f64>> {
        let total: f64 = w.versions.values().sum();
        let mut by_plan = vec![0.0; self.plans.len()];
        for (&v, &n) in &w.versions {
            if let Some(k) = self.plans.iter().position(|p| (p.since_version..=p.until_version).contains(&v)) {
                by_plan[k] += n;
            }
        }
        let known: f64 = by_plan.iter().sum();
        if total <= 0.0 || known / total < min_known {
            return None;
        }
        let mut out: BTreeMap<CampaignId, f64> = BTreeMap::new();
        for (plan, n) in self.plans.iter().zip(by_plan).filter(|(_, n)| *n > 0.0) {
            for ((id, ..), d) in plan.campaigns.iter().zip(plan.delivered(mix)) {
                *out.entry(id.clone()).or_default() += d * n / known;
            }
        }
        Some(out)
    }
}

/// One campaign's merged evidence (faded sums over windows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// `Σ X`: estimated requests.
    pub requests: f64,
    /// `Σ X·m`: measured deliveries.
    pub measured: f64,
    /// `Σ X·p`: deliveries the model predicts for the weights in force.
    pub predicted: f64,
    /// `Σ X²·Var(m)`.
    pub variance: f64,
    pub windows: u32,
}

impl Evidence {
    fn add(&mut self, decay: f64, x: f64, m: f64, p: f64, var: f64) {
        self.requests = self.requests * decay + x;
        self.measured = self.measured * decay + x * m;
        self.predicted = self.predicted * decay + x * p;
        self.variance = self.variance * decay * decay + x * x * var;
        self.windows = self.windows.saturating_add(1);
    }

    /// What [`Evidence::add`] could have made: finite sums ≥ 0, merged shares (measured
    /// and predicted, each at most 1) within `[0, 1]`, a standard error of at most 1.
    fn check(&self) -> Result<(), String> {
        let sums = [self.requests, self.measured, self.predicted, self.variance];
        if let Some(x) = sums.into_iter().find(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(format!("sum {x}"));
        }
        let most = self.requests * (1.0 + 1e-9);
        if self.measured > most || self.predicted > most || self.variance.sqrt() > most {
            return Err(format!("shares beyond 1 of {} requests", self.requests));
        }
        Ok(())
    }

    /// Merged measured share, predicted share and the standard error of the former.
    fn merged(&self) -> Option<(f64, f64, f64)> {
        (self.requests > 0.0).then(|| {
            (self.measured / self.requests, self.predicted / self.requests, self.variance.sqrt() / self.requests)
        })
    }
}

/// FNV-1a over a stream of 64-bit words: a fingerprint stable across builds.
fn fnv(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn str_words(s: &str) -> impl Iterator<Item = u64> + '_ {
    s.bytes().map(u64::from).chain(std::iter::once(u64::MAX))
}

/// What decides delivery in a plan: its weights and eligibility rules (not its
/// version, issue time, sample rate or creatives).
pub fn weights_fingerprint(plan: &Plan) -> u64 {
    let mut words = vec![plan.no_ad_weight.to_bits()];
    for c in &plan.campaigns {
        words.extend(str_words(c.id.as_str()));
        words.push(c.weight.to_bits());
        words.extend(str_words(&serde_json::to_string(&c.eligibility).unwrap_or_default()));
    }
    fnv(words)
}

fn window_fingerprint(w: &WindowStats) -> u64 {
    let mut words = Vec::new();
    for (k, v) in w.to_fields() {
        words.extend(str_words(&k));
        words.push(v.to_bits());
    }
    fnv(words)
}

/// What `w` measured of `campaign`'s share of allocations, the model's units: of all
/// requests, whatever the campaign is measured on. `None` when there are none.
fn allocated_share(w: &WindowStats, campaign: &CampaignId) -> Option<f64> {
    let c = w.campaigns.get(campaign).copied().unwrap_or_default();
    (w.requests.ht > 0.0).then(|| (c.allocations.ht / w.requests.ht).min(1.0))
}

impl Controller {
    /// The next corrections and learning state.
    pub(super) fn feedback(&self, input: &ControlInput<'_>, mass: &[f64], render: &[f64]) -> ControlState {
        let mut state = ControlState::default();
        // Keep corrections of campaigns that still exist, within this controller's bounds.
        for c in &input.targets.campaigns {
            if let Some(g) = input.state.corrections.get(&c.id) {
                state.corrections.insert(c.id.clone(), g.clamp(1.0 / self.max_correction, self.max_correction));
            }
        }
        let Some(prev) = input.previous else { return state };
        let mut learning = input.state.learning.clone().unwrap_or_default();
        learning.follow(prev);
        learning.evidence.retain(|id, _| input.targets.campaign(id).is_some());
        let Some(last) = input.last else {
            state.learning = Some(learning);
            return state;
        };
        learning.keep_deciding(last);
        // The window's index where known (+1, so 0 stays "none"); else its content.
        let seen = input.last_index.map_or_else(|| window_fingerprint(last), |i| i.wrapping_add(1));
        // Predicted on the window's own traffic mix where it has one; only for a window
        // not yet counted and with enough samples (the prediction solves per plan).
        let mix = if last.profiles.is_empty() { input.recent } else { last };
        let fresh = learning.last_window != seen && last.effective_samples() >= self.min_samples;
        let predicted = match fresh.then(|| learning.predict(last, mix, self.min_version_share)).flatten() {
            Some(p) => p,
            _ => {
                state.learning = Some(learning);
                return state;
            }
        };
        learning.last_window = seen;
        let z = input.targets.confidence.z();
        let threshold = z.max(self.feedback_sigmas);
        let x = last.requests.ht;
        for (i, c) in input.targets.campaigns.iter().enumerate() {
            let r = c.rate.get();
            // Feedback cannot help a campaign that lacks the traffic, or one the plan
            // in force does not contain.
            if !prev.campaigns.iter().any(|p| p.id == c.id) {
                continue;
            }
            if r <= 0.0 || r >= mass[i] * render[i] {
                learning.evidence.remove(&c.id);
                continue;
            }
            let p = predicted.get(&c.id).copied().unwrap_or(0.0);
            let Some(m) = allocated_share(last, &c.id).filter(|_| p > 0.0) else { continue };
            // The spread of m around p: at p, on the window's effective size for this
            // campaign (which accounts for a rate change within the window).
            let n_eff = estimate::effective_samples(last, &c.id, DeliveryBasis::Allocations).max(1.0);
            let var = p * (1.0 - p) / n_eff;
            let ev = learning.evidence.entry(c.id.clone()).or_default();
            ev.add(self.evidence_decay, x, m, p, var);
            let Some((merged_m, merged_p, se)) = ev.merged() else { continue };
            let g = state.corrections.get(&c.id).copied().unwrap_or(1.0);
            // Under the correction in force, the merged share should be P/g. One window
            // alone moves g only for twice the band (a model failure rather than a
            // bias): acting on one window's 3σ would, now and then, move g by 1.5 pp
            // of noise.
            let band = if ev.windows < 2 { 2.0 * threshold } else { threshold };
            if (merged_m - merged_p / g).abs() <= band * se {
                continue;
            }
            let unexplained = (merged_p / merged_m.max(merged_p / self.max_correction)).min(self.max_correction);
            let g = (g.powf(1.0 - self.feedback_gain) * unexplained.powf(self.feedback_gain))
                .clamp(1.0 / self.max_correction, self.max_correction);
            if (g - 1.0).abs() < 1e-3 {
                state.corrections.remove(&c.id);
            } else {
                state.corrections.insert(c.id.clone(), g);
            }
        }
        state.learning = Some(learning);
        state
    }
}

#[cfg(test)]
mod tests;
