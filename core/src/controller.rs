//! The controller: from targets and what was measured, the next plan's weights.
//!
//! Three layers, each correcting what the previous cannot see:
//! 1. **Model.** Pattern frequencies come from recent windows (per attribute profile,
//!    mapped through the *current* eligibility rules); the [solver](crate::solver)
//!    finds weights that deliver the targets exactly under them.
//! 2. **Render ratio.** Where apps report impressions, an allocated ad is not always
//!    shown. The measured impressions/allocations ratio `ρ_c` is known per campaign, so
//!    the solver is asked to allocate `r_c / ρ_c`. Whether a campaign is measured on
//!    impressions at all is its own [`DeliveryBasis`]: a campaign without enough
//!    impressions of its own keeps `ρ_c = 1`, whatever other campaigns report.
//! 3. **Damped feedback** for whatever the model still misses (bias, effects outside
//!    the model): the last window's measured share `m_c` is compared with what the
//!    model predicts for the plan that was actually in force, `p_c`. Only the
//!    unexplained part `p_c/m_c` feeds a bounded multiplicative correction `g_c`
//!    (geometric smoothing with `gain`), and only when the window was decided (≥ 90 %)
//!    under that plan. A gap within the window's noise band counts as explained, so
//!    `g_c` decays back to 1 once its cause is gone. So a plan made before the traffic
//!    mix was known does not look like a bias, noise alone rarely moves `g_c`, a
//!    persistent bias is tracked, and nothing can run away.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::choose::EligibilityIndex;
use crate::estimate::{self, DeliveryBasis};
use crate::solver::{self, Patterns, SolveOptions};
use crate::stats::parse_profile_key;
use crate::{
    CampaignId, Eligibility, PLAN_FORMAT, PlacementId, Plan, PlanCampaign, RequestAttrs, Targets, WindowStats,
};

/// The controller's memory between rounds (stored by the shell next to the plan).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    /// Feedback corrections `g_c` (absent = 1).
    #[serde(default)]
    pub corrections: BTreeMap<CampaignId, f64>,
}

/// Tuning. The defaults are what the simulator validates (`docs/accuracy.md`).
#[derive(Debug, Clone, Copy)]
pub struct Controller {
    /// Exponent of the feedback step, `0 < gain ≤ 1`.
    pub feedback_gain: f64,
    /// Feedback ignores gaps within this many standard errors: at the manager's own
    /// level (1.96 at 95 %) one window in twenty would nudge the weights for nothing,
    /// and those nudges add up to a random walk.
    pub feedback_sigmas: f64,
    /// Corrections stay within `[1/max, max]`.
    pub max_correction: f64,
    /// Feedback only learns from windows decided at least this much under the
    /// previous plan.
    pub min_version_share: f64,
    /// Feedback and render ratios need at least this many sampled requests.
    pub min_samples: f64,
    /// Targets missed by more than this (absolute share) are reported infeasible.
    pub feasibility_tolerance: f64,
    pub solve: SolveOptions,
}

impl Default for Controller {
    fn default() -> Self {
        Self {
            feedback_gain: 0.5,
            feedback_sigmas: 3.0,
            max_correction: 2.0,
            min_version_share: 0.9,
            min_samples: 200.0,
            feasibility_tolerance: 1e-4,
            solve: SolveOptions::default(),
        }
    }
}

/// What the controller is given.
#[derive(Debug, Clone, Copy)]
pub struct ControlInput<'a> {
    pub targets: &'a Targets,
    /// Recent windows merged: traffic mix and render ratios.
    pub recent: &'a WindowStats,
    /// The last complete window: feedback.
    pub last: Option<&'a WindowStats>,
    /// The plan in force (published last round).
    pub previous: Option<&'a Plan>,
    pub state: &'a ControlState,
}

/// Whether a campaign's target can be met.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Feasibility {
    Feasible,
    /// It gets `max_share`, the most it can be given.
    Infeasible {
        max_share: f64,
    },
}

/// One campaign's part of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignDecision {
    pub id: CampaignId,
    pub target: f64,
    pub weight: f64,
    /// The delivered share the model predicts for `weight`.
    pub predicted_share: f64,
    /// Share of requests this campaign is eligible for.
    pub eligible_share: f64,
    /// What this campaign's delivery is measured on.
    pub basis: DeliveryBasis,
    /// Impressions per allocation (1 where delivery is measured on allocations).
    pub render_ratio: f64,
    pub correction: f64,
    pub feasibility: Feasibility,
}

/// The controller's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub no_ad_weight: f64,
    pub campaigns: Vec<CampaignDecision>,
    pub state: ControlState,
    pub solver_iterations: usize,
}

impl Controller {
    pub fn decide(&self, input: ControlInput<'_>) -> Decision {
        let targets = input.targets;
        let n = targets.campaigns.len();
        // Each campaign's basis from recent windows (the most evidence), applied to the
        // render ratio and to feedback alike.
        let basis: Vec<DeliveryBasis> =
            targets.campaigns.iter().map(|c| DeliveryBasis::of(input.recent, &c.id)).collect();
        let patterns = patterns_of(targets, input.recent);
        let mass = patterns.eligible_mass(n);

        let render: Vec<f64> = targets
            .campaigns
            .iter()
            .zip(&basis)
            .map(|(c, b)| match (b, input.recent.campaigns.get(&c.id)) {
                (DeliveryBasis::Impressions, Some(k)) if k.allocations.n as f64 >= self.min_samples / 10.0 => {
                    (k.impressions.ht / k.allocations.ht).clamp(0.05, 1.0)
                }
                _ => 1.0,
            })
            .collect();

        let state = self.feedback(&input, &basis, &mass, &render);
        let corr = |id: &CampaignId| state.corrections.get(id).copied().unwrap_or(1.0);

        let mut alloc_targets: Vec<f64> =
            targets.campaigns.iter().zip(&render).map(|(c, rho)| c.rate.get() * corr(&c.id) / rho).collect();
        let sum: f64 = alloc_targets.iter().sum();
        if sum > 1.0 {
            alloc_targets.iter_mut().for_each(|t| *t /= sum);
        }
        let sol = solver::solve(&alloc_targets, &patterns, self.solve);

        let campaigns = targets
            .campaigns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let predicted = sol.delivered[i] * render[i] / corr(&c.id);
                let r = c.rate.get();
                let feasibility = if predicted < r - self.feasibility_tolerance {
                    Feasibility::Infeasible { max_share: predicted.min(mass[i] * render[i]) }
                } else {
                    Feasibility::Feasible
                };
                CampaignDecision {
                    id: c.id.clone(),
                    target: r,
                    weight: sol.weights[i],
                    predicted_share: predicted,
                    eligible_share: mass[i],
                    basis: basis[i],
                    render_ratio: render[i],
                    correction: corr(&c.id),
                    feasibility,
                }
            })
            .collect();
        Decision { no_ad_weight: sol.no_ad_weight, campaigns, state, solver_iterations: sol.iterations }
    }

    /// The next feedback corrections.
    fn feedback(
        &self,
        input: &ControlInput<'_>,
        basis: &[DeliveryBasis],
        mass: &[f64],
        render: &[f64],
    ) -> ControlState {
        let mut state = ControlState::default();
        // Keep corrections of campaigns that still exist.
        for c in &input.targets.campaigns {
            if let Some(g) = input.state.corrections.get(&c.id) {
                state.corrections.insert(c.id.clone(), *g);
            }
        }
        let (Some(last), Some(prev)) = (input.last, input.previous) else { return state };
        let n_eff = last.effective_samples();
        if n_eff < self.min_samples || last.version_share(prev.version) < self.min_version_share {
            return state;
        }
        // What the model says the plan in force should have delivered.
        let prev_patterns = patterns_for(prev.campaigns.iter().map(|c| &c.eligibility), input.recent);
        let prev_weights: Vec<f64> = prev.campaigns.iter().map(|c| c.weight).collect();
        let mut predicted = vec![0.0; prev_weights.len()];
        solver::delivered(&prev_weights, prev.no_ad_weight, &prev_patterns, &mut predicted);
        let z = input.targets.confidence.z();
        let threshold = z.max(self.feedback_sigmas);
        for (i, c) in input.targets.campaigns.iter().enumerate() {
            let r = c.rate.get();
            // Feedback cannot help a campaign that lacks the traffic, or one the
            // previous plan did not contain.
            let Some(j) = prev.campaigns.iter().position(|p| p.id == c.id) else { continue };
            if r <= 0.0 || r >= mass[i] * render[i] {
                continue;
            }
            let p = predicted[j] * render[i];
            if p <= 0.0 {
                continue;
            }
            let m = estimate::share(last, &c.id, basis[i], z).share;
            let half_width = threshold * (p * (1.0 - p) / n_eff).sqrt();
            // A gap within the noise counts as "explained", which also lets an old
            // correction decay once whatever caused it is gone.
            let unexplained = if (m - p).abs() <= half_width {
                1.0
            } else {
                (p / m.max(p / self.max_correction)).min(self.max_correction)
            };
            let g = state.corrections.get(&c.id).copied().unwrap_or(1.0);
            let g = (g.powf(1.0 - self.feedback_gain) * unexplained.powf(self.feedback_gain))
                .clamp(1.0 / self.max_correction, self.max_correction);
            if (g - 1.0).abs() < 1e-3 {
                state.corrections.remove(&c.id);
                continue;
            }
            state.corrections.insert(c.id.clone(), g);
        }
        state
    }
}

/// Pattern frequencies of the current targets: each observed attribute profile is
/// mapped through today's eligibility rules.
pub fn patterns_of(targets: &Targets, stats: &WindowStats) -> Patterns {
    patterns_for(targets.campaigns.iter().map(|c| &c.eligibility), stats)
}

/// Pattern frequencies for campaigns with the given eligibility rules (in order).
fn patterns_for<'a>(rules: impl Iterator<Item = &'a Eligibility>, stats: &WindowStats) -> Patterns {
    let rules: Vec<&Eligibility> = rules.collect();
    let index = EligibilityIndex::new(rules.iter().copied());
    let counts = stats.profiles.iter().map(|(key, &count)| {
        let (platform, country) = parse_profile_key(key);
        (index.eligible(RequestAttrs { platform, country }), count)
    });
    Patterns::new(counts, rules.len())
}

impl Decision {
    /// The plan carrying this decision.
    pub fn to_plan(
        &self,
        targets: &Targets,
        placement: PlacementId,
        version: u64,
        sample_rate: f64,
        issued_at_ms: u64,
    ) -> Plan {
        Plan {
            format: PLAN_FORMAT,
            placement,
            version,
            issued_at_ms,
            sample_rate,
            no_ad_weight: self.no_ad_weight,
            campaigns: targets
                .campaigns
                .iter()
                .zip(&self.campaigns)
                .map(|(t, d)| PlanCampaign {
                    id: t.id.clone(),
                    weight: d.weight,
                    creative: t.creative.clone(),
                    eligibility: t.eligibility.clone(),
                })
                .collect(),
            withdrawn: false,
        }
    }

    /// Whether publishing this decision would change what the edge does by more than
    /// `rel` (relative share of any weight) compared with `plan`. Unchanged plans are
    /// not republished, which keeps windows "pure" for feedback and KV writes rare.
    pub fn differs_from(&self, plan: &Plan, targets: &Targets, rel: f64) -> bool {
        if plan.campaigns.len() != self.campaigns.len() {
            return true;
        }
        let total_new = self.no_ad_weight + self.campaigns.iter().map(|c| c.weight).sum::<f64>();
        let total_old = plan.no_ad_weight + plan.campaigns.iter().map(|c| c.weight).sum::<f64>();
        if total_new <= 0.0 || total_old <= 0.0 {
            return true;
        }
        let close = |a: f64, b: f64| (a / total_new - b / total_old).abs() <= rel * (a / total_new).max(1e-6);
        if !close(self.no_ad_weight, plan.no_ad_weight) {
            return true;
        }
        self.campaigns.iter().zip(&plan.campaigns).zip(&targets.campaigns).any(|((d, p), t)| {
            d.id != p.id || !close(d.weight, p.weight) || p.creative != t.creative || p.eligibility != t.eligibility
        })
    }
}

#[cfg(test)]
mod tests;
