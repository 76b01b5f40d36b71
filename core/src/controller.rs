//! The controller: from targets and what was measured, the next plan's weights.
//!
//! Three layers, each correcting what the previous cannot see:
//! 1. **Model.** Pattern frequencies come from recent windows (per attribute profile,
//!    mapped through the *current* eligibility rules); the [`solver`]
//!    finds weights that deliver the targets exactly under them.
//! 2. **Render ratio.** Where apps report impressions, an allocated ad is not always
//!    shown. The measured impressions/allocations ratio `ρ_c` is known per campaign, so
//!    the solver is asked to allocate `r_c / ρ_c`. Whether a campaign is measured on
//!    impressions at all is its own [`DeliveryBasis`]: a campaign without enough
//!    impressions of its own keeps `ρ_c = 1`, whatever other campaigns report.
//! 3. **Feedback** for whatever the model still misses (bias, effects outside the
//!    model): measured shares are compared with what the model predicts for the
//!    weights actually in force; only the unexplained part feeds a bounded
//!    multiplicative correction `g_c`, once the evidence merged over recent windows,
//!    each predicted for the plans it was decided under, says so ([`feedback`]). So a plan made before the
//!    traffic mix was known does not look like a bias, noise alone rarely moves `g_c`,
//!    a persistent bias is found within a few windows, and nothing can run away.
//!
//! **Feasibility** is reported per campaign: one that asks for more than its eligible
//! traffic is infeasible alone; one whose target is feasible alone but not together
//! with the campaigns sharing its traffic (Hall's condition fails for a set of them) is
//! *jointly* infeasible, and the decision names that set ([`CampaignDecision::shared_with`]).
//! Either way `max_share` is what the solver delivers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod feedback;
pub mod lag;
pub use feedback::{Evidence, Learning};
pub use lag::Lag;

use crate::choose::EligibilityIndex;
use crate::estimate::{self, DeliveryBasis};
use crate::solver::{self, Patterns, SolveOptions};
use crate::stats::parse_profile_key;
use crate::stragglers::Stragglers;
use crate::{
    CampaignId, Eligibility, MAX_CAMPAIGNS, PLAN_FORMAT, PlacementId, Plan, PlanCampaign, RequestAttrs, Targets,
    WindowStats,
};

/// The controller's memory between rounds (stored by the shell next to the plan).
///
/// Deserialized only with values the controller could have written (corrections finite
/// and > 0, for at most [`MAX_CAMPAIGNS`] campaigns; [`Learning`]'s own checks): a
/// stored state that fails is refused whole, and the shell starts afresh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct ControlState {
    /// Feedback corrections `g_c` (absent = 1).
    pub corrections: BTreeMap<CampaignId, f64>,
    /// What feedback has learnt under the weights in force (absent in states stored
    /// before it existed: learning starts over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning: Option<Learning>,
    /// How many of a window's requests come after its round, learnt over many windows
    /// (absent in states stored before it existed: learnt afresh).
    #[serde(default, skip_serializing_if = "Stragglers::is_empty")]
    pub stragglers: Stragglers,
}

/// A [`ControlState`] as stored, before its values are checked.
#[derive(Deserialize)]
struct StoredState {
    #[serde(default)]
    corrections: BTreeMap<CampaignId, f64>,
    #[serde(default)]
    learning: Option<Learning>,
    #[serde(default)]
    stragglers: Stragglers,
}

/// Only an object is a state: serde would also take a struct from an array (`[]`, its
/// fields by position, all defaulted), which the controller never writes.
impl TryFrom<serde_json::Map<String, serde_json::Value>> for ControlState {
    type Error = String;

    fn try_from(m: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let s: StoredState = serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| e.to_string())?;
        Self::try_from(s)
    }
}

impl TryFrom<StoredState> for ControlState {
    type Error = String;

    fn try_from(s: StoredState) -> Result<Self, String> {
        if s.corrections.len() > MAX_CAMPAIGNS {
            return Err(format!("corrections for {} campaigns, at most {MAX_CAMPAIGNS}", s.corrections.len()));
        }
        if let Some((id, g)) = s.corrections.iter().find(|(_, g)| !(g.is_finite() && **g > 0.0)) {
            return Err(format!("correction {g} of {id}"));
        }
        s.stragglers.check()?;
        Ok(Self { corrections: s.corrections, learning: s.learning, stragglers: s.stragglers })
    }
}

/// A decision's copy of the state (in the stored plan record) is a record, not the
/// controller's memory: one that no longer parses reads as a fresh state rather than
/// making the plan in force unreadable.
fn state_or_fresh<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ControlState, D::Error> {
    Ok(serde_json::from_value(serde_json::Value::deserialize(d)?).unwrap_or_default())
}

/// Tuning. The defaults are what the simulator validates (`docs/accuracy.md`).
#[derive(Debug, Clone, Copy)]
pub struct Controller {
    /// Exponent of the feedback step, `0 < gain ≤ 1`. 1: a correction moves all the
    /// way to what the merged evidence says, since the evidence must first be
    /// significant (the band below), not one noisy window.
    pub feedback_gain: f64,
    /// Feedback ignores gaps within this many standard errors of the merged evidence:
    /// at the manager's own level (1.96 at 95 %) one test in twenty would nudge the
    /// weights for nothing, and those nudges add up to a random walk.
    pub feedback_sigmas: f64,
    /// Each new window's evidence counts fully; older windows' fade by this factor per
    /// window (≈ 1/(1 − decay) windows of memory), so a drift is still followed.
    pub evidence_decay: f64,
    /// Corrections stay within `[1/max, max]`.
    pub max_correction: f64,
    /// Feedback only learns from windows decided at least this much under plans it
    /// remembers (the last few sets of weights).
    pub min_version_share: f64,
    /// Feedback and render ratios need at least this many sampled requests.
    pub min_samples: f64,
    /// A plan replaced this long before a window began, still deciding requests in it,
    /// is taken to be stuck at the edge, and the rest made up for it ([`lag`]).
    /// Longer than a plan takes to reach every colo (KV propagation and cache TTLs).
    pub lag_after_ms: u64,
    /// At most this share of the traffic is made up for: the rest then moves a campaign
    /// by at most `φ/(1 − φ)` (a third) of how far the old plans are from the targets,
    /// whatever events name them. A stuck colo is one colo; the largest of `edge`'s 50
    /// carries about 15 % of the traffic.
    pub max_lag_share: f64,
    /// Targets missed by more than this (absolute share) are reported infeasible.
    pub feasibility_tolerance: f64,
    /// A campaign asking for less than its estimated eligible traffic, but by fewer
    /// than this many standard errors of that estimate and by less than half the
    /// manager's margin (on the measured scale: so the *estimated* pool never exceeds
    /// the target by more, however few the samples), is given all of it (when no other
    /// campaign loses by it). The estimate cannot tell it from one asking for
    /// more, and a weight fitted to the estimate delivers a fixed fraction of a pool
    /// that may be smaller than thought (or shrinking, at dusk): that falls short by
    /// the estimate's error, while the whole pool, whatever its size at the edge, is
    /// never further from the target than the pool itself. 0 turns it off.
    pub pool_sigmas: f64,
    pub solve: SolveOptions,
}

impl Default for Controller {
    fn default() -> Self {
        Self {
            feedback_gain: 1.0,
            feedback_sigmas: 3.0,
            evidence_decay: 0.8,
            max_correction: 2.0,
            min_version_share: 0.9,
            min_samples: 200.0,
            lag_after_ms: 90_000,
            max_lag_share: 0.25,
            feasibility_tolerance: 1e-4,
            pool_sigmas: 2.0,
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
    /// Its index, when the caller knows it: a window is counted by feedback once,
    /// however many rounds see it. Without it, its content identifies it.
    pub last_index: Option<u64>,
    /// Its start and end (unix milliseconds), when the caller knows them: plans stuck
    /// at the edge are made up for ([`lag`]). Without them, they are not.
    pub last_window_ms: Option<(u64, u64)>,
    /// The plan in force (published last round).
    pub previous: Option<&'a Plan>,
    pub state: &'a ControlState,
}

/// Whether a campaign's target can be met.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Feasibility {
    Feasible,
    /// It gets `max_share`, the most it can be given (what the solver delivers). Alone
    /// or jointly: see [`CampaignDecision::shared_with`].
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
    /// For a campaign infeasible *jointly*: the other campaigns of the set that
    /// together ask for more than the traffic eligible for any of them. Empty when
    /// feasible, or when the campaign alone asks for more than its eligible traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<CampaignId>,
}

impl CampaignDecision {
    /// Infeasible together with others, though feasible alone.
    pub fn jointly_infeasible(&self) -> bool {
        matches!(self.feasibility, Feasibility::Infeasible { .. }) && !self.shared_with.is_empty()
    }
}

/// The controller's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub no_ad_weight: f64,
    pub campaigns: Vec<CampaignDecision>,
    #[serde(deserialize_with = "state_or_fresh")]
    pub state: ControlState,
    pub solver_iterations: usize,
    /// What plans stuck at the edge are forecast to decide in the next window, which
    /// the weights make up for ([`lag`]).
    #[serde(default, skip_serializing_if = "Lag::is_none")]
    pub lag: Lag,
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
            .map(|(c, b)| match (b, input.recent.campaigns.get(&c.id).map(|k| k.reporting_allocations())) {
                // Of the ads given, the share shown: each platform's by the share its
                // reporting apps showed (`estimate::render_ratio`).
                (DeliveryBasis::Impressions, Some(base)) if base.n as f64 >= self.min_samples / 10.0 => {
                    estimate::render_ratio(input.recent, &c.id).unwrap_or(1.0).clamp(0.05, 1.0)
                }
                _ => 1.0,
            })
            .collect();

        let state = self.feedback(&input, &mass, &render);
        let corr = |id: &CampaignId| state.corrections.get(id).copied().unwrap_or(1.0);
        let lag = match (&state.learning, input.last, input.last_window_ms) {
            (Some(learning), Some(last), Some(span)) => self.lag(learning, last, input.recent, span),
            _ => Lag::default(),
        };

        // What the plan in force must give each campaign, stuck requests made up for.
        let made_up: Vec<f64> = targets
            .campaigns
            .iter()
            .zip(&render)
            .map(|(c, rho)| lag.make_up(&c.id, c.rate.get() * corr(&c.id) / rho))
            .collect();
        let sum: f64 = made_up.iter().sum();
        let alloc_targets: Vec<f64> = made_up.iter().map(|t| if sum > 1.0 { t / sum } else { *t }).collect();
        // Half the margin on the scale shares are measured on (`predicted_share`
        // below): a pool above an allocation target by `x` over-delivers by `x·ρ/g`.
        let within: Vec<f64> = targets
            .campaigns
            .iter()
            .zip(&render)
            .map(|(c, rho)| targets.confidence.margin / 2.0 * corr(&c.id) / rho)
            .collect();
        let sol = self.solve(&alloc_targets, &patterns, &mass, input.recent.effective_samples(), &within);
        // A share of the traffic campaign `i` gets, on the scale shares are measured on.
        let measured = |i: usize, share: f64| share * render[i] / corr(&targets.campaigns[i].id);
        // What all the traffic gets, the lagging part with it.
        let predicted: Vec<f64> = targets
            .campaigns
            .iter()
            .enumerate()
            .map(|(i, c)| measured(i, lag.blend(&c.id, sol.delivered[i])))
            .collect();
        let short: Vec<bool> = targets
            .campaigns
            .iter()
            .zip(&predicted)
            .map(|(c, p)| *p < c.rate.get() - self.feasibility_tolerance)
            .collect();
        // Short though feasible alone: the solver could not meet it together with others.
        // What a stuck colo leaves for the rest to make up can be more than the pool, and
        // its requests past the cap are not made up for: neither is another campaign's
        // doing.
        let alone: Vec<bool> = targets
            .campaigns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let met_but_for_the_cap = lag.beyond > 0.0
                    && measured(i, lag.solved_for(&c.id, sol.delivered[i]))
                        >= c.rate.get() - self.feasibility_tolerance;
                c.rate.get() >= mass[i] * render[i] || (!lag.is_none() && made_up[i] >= mass[i]) || met_but_for_the_cap
            })
            .collect();
        let joint_set = solver::hall_set(&patterns, &short, &alone);

        let campaigns = targets
            .campaigns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let predicted = predicted[i];
                let r = c.rate.get();
                let feasibility = if short[i] {
                    Feasibility::Infeasible { max_share: predicted.min(mass[i] * render[i]) }
                } else {
                    Feasibility::Feasible
                };
                let shared_with = if short[i] && !alone[i] && joint_set.contains(&i) {
                    joint_set.iter().filter(|&&j| j != i).map(|&j| targets.campaigns[j].id.clone()).collect()
                } else {
                    Vec::new()
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
                    shared_with,
                }
            })
            .collect();
        Decision { no_ad_weight: sol.no_ad_weight, campaigns, state, solver_iterations: sol.iterations, lag }
    }
}

impl Controller {
    /// The solver's answer for `asked`, with the campaigns within
    /// [`pool_sigmas`](Self::pool_sigmas) of their eligible traffic `mass` given all of
    /// it, when every other campaign still gets what it got without that (`n`: the
    /// effective sampled requests behind `mass`; `within[i]`: the most campaign `i`'s
    /// estimated pool may exceed its target by, on the allocation scale).
    fn solve(&self, asked: &[f64], patterns: &Patterns, mass: &[f64], n: f64, within: &[f64]) -> solver::Solution {
        let sol = solver::solve(asked, patterns, self.solve);
        let near = |i: usize| {
            let (t, m) = (asked[i], mass[i]);
            let se = (m * (1.0 - m) / n).sqrt();
            n > 0.0
                && m > 0.0
                && t < m * (1.0 - self.solve.cap_margin)
                && m - t < (self.pool_sigmas * se).min(within[i])
        };
        let pinned: Vec<usize> = (0..asked.len()).filter(|&i| near(i)).collect();
        if pinned.is_empty() {
            return sol;
        }
        let mut whole = asked.to_vec();
        pinned.iter().for_each(|&i| whole[i] = mass[i]);
        let alt = solver::solve(&whole, patterns, self.solve);
        let others_kept = (0..asked.len())
            .filter(|i| !pinned.contains(i))
            .all(|i| alt.delivered[i] >= sol.delivered[i] - 10.0 * self.solve.tolerance.max(1e-9));
        if alt.converged && others_kept { alt } else { sol }
    }
}

/// Pattern frequencies of the current targets: each observed attribute profile is
/// mapped through today's eligibility rules.
pub fn patterns_of(targets: &Targets, stats: &WindowStats) -> Patterns {
    patterns_for(targets.campaigns.iter().map(|c| &c.eligibility), stats)
}

/// Pattern frequencies for campaigns with the given eligibility rules (in order).
pub(crate) fn patterns_for<'a>(rules: impl Iterator<Item = &'a Eligibility>, stats: &WindowStats) -> Patterns {
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
            platforms: None,
        }
    }

    /// Takes the weights of `plan` (the plan in force, which this decision does not
    /// differ from by more than the republish threshold), with the shares the model
    /// predicts for them on `recent`: a republish then changes nothing the edge does,
    /// and feedback keeps learning under the same weights.
    pub fn adopt_weights(&mut self, plan: &Plan, recent: &WindowStats) {
        let patterns = patterns_for(plan.campaigns.iter().map(|c| &c.eligibility), recent);
        let weights: Vec<f64> = plan.campaigns.iter().map(|c| c.weight).collect();
        let mut delivered = vec![0.0; weights.len()];
        solver::delivered(&weights, plan.no_ad_weight, &patterns, &mut delivered);
        self.no_ad_weight = plan.no_ad_weight;
        for (d, (p, share)) in self.campaigns.iter_mut().zip(plan.campaigns.iter().zip(delivered)) {
            if d.id == p.id {
                d.weight = p.weight;
                d.predicted_share = self.lag.blend(&d.id, share) * d.render_ratio / d.correction;
            }
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
