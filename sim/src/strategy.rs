//! How the next plan is made: allot's controller, and the baselines it is compared with.

use std::fmt;

use allot_core::estimate::{self, DeliveryBasis};
use allot_core::{
    CampaignId, ControlState, Outcome, PlacementId, Plan, Policy, Round, SampleRatePlanner, Targets, WindowStats,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Weights = targets, never corrected.
    Static,
    /// No model: each weight is nudged by the last window's measured error.
    Feedback,
    /// allot: the eligibility model, render ratios and damped feedback, adaptive rate.
    Ours,
    /// allot's controller with every request sampled.
    Census,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [Strategy::Static, Strategy::Feedback, Strategy::Ours, Strategy::Census];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Feedback => "feedback",
            Self::Ours => "model+feedback",
            Self::Census => "census",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a strategy sees at a round.
#[derive(Debug)]
pub struct RoundInput<'a> {
    pub placement: &'a PlacementId,
    pub targets: &'a Targets,
    pub recent: &'a WindowStats,
    pub last: Option<&'a WindowStats>,
    pub previous: Option<&'a Plan>,
    pub targets_changed: bool,
    pub now_ms: u64,
}

/// A strategy's memory.
#[derive(Debug)]
pub struct Controller {
    strategy: Strategy,
    policy: Policy,
    state: ControlState,
    /// The last decision (allot's strategies only), for feasibility reporting.
    pub last_outcome: Option<Outcome>,
}

/// Exponent of the feedback-only baseline's step.
const FEEDBACK_GAIN: f64 = 0.5;

impl Controller {
    pub fn new(strategy: Strategy, min_rate: f64) -> Self {
        let planner = match strategy {
            Strategy::Census => SampleRatePlanner { min_rate: 1.0, ..Default::default() },
            _ => SampleRatePlanner { min_rate, ..Default::default() },
        };
        Self {
            strategy,
            policy: Policy { planner, ..Default::default() },
            state: ControlState::default(),
            last_outcome: None,
        }
    }

    /// The plan to publish, if any.
    pub fn round(&mut self, r: RoundInput<'_>) -> Option<Plan> {
        match self.strategy {
            Strategy::Ours | Strategy::Census => {
                let outcome = self.policy.run(Round {
                    placement: r.placement,
                    targets: r.targets,
                    recent: r.recent,
                    last: r.last,
                    previous: r.previous,
                    state: &self.state,
                    targets_changed: r.targets_changed,
                    now_ms: r.now_ms,
                    republish_after_ms: u64::MAX,
                });
                self.state = outcome.decision.state.clone();
                let plan = outcome.plan.clone();
                self.last_outcome = Some(outcome);
                plan
            }
            Strategy::Static | Strategy::Feedback => Some(self.baseline(&r)),
        }
    }

    fn baseline(&self, r: &RoundInput<'_>) -> Plan {
        let rate = self.policy.planner.rate(
            r.targets,
            r.last.map_or(0.0, |w| w.requests.ht),
            r.previous.map_or(1.0, |p| p.sample_rate),
        );
        let version = r.previous.map_or(1, |p| p.version + 1);
        let mut plan = Plan {
            format: allot_core::PLAN_FORMAT,
            placement: r.placement.clone(),
            version,
            issued_at_ms: r.now_ms,
            sample_rate: rate,
            no_ad_weight: r.targets.no_ad_rate(),
            campaigns: r
                .targets
                .campaigns
                .iter()
                .map(|c| allot_core::PlanCampaign {
                    id: c.id.clone(),
                    weight: c.rate.get(),
                    creative: c.creative.clone(),
                    eligibility: c.eligibility.clone(),
                })
                .collect(),
        };
        if self.strategy == Strategy::Feedback
            && !r.targets_changed
            && let (Some(prev), Some(last)) = (r.previous, r.last)
        {
            let basis = DeliveryBasis::of(last);
            let z = r.targets.confidence.z();
            for c in &mut plan.campaigns {
                let target = r.targets.campaign(&c.id).map_or(0.0, |t| t.rate.get());
                let old = prev.campaign(&c.id).map_or(target, |p| p.weight);
                let measured = estimate::share(last, &c.id, basis, z).share;
                c.weight = if target > 0.0 && measured > 0.0 {
                    (old * (target / measured).powf(FEEDBACK_GAIN)).clamp(target / 100.0, target * 100.0)
                } else {
                    old
                };
            }
        }
        plan
    }

    pub fn infeasible(&self) -> Vec<(CampaignId, f64)> {
        let Some(o) = &self.last_outcome else { return vec![] };
        o.decision
            .campaigns
            .iter()
            .filter_map(|c| match c.feasibility {
                allot_core::Feasibility::Infeasible { max_share } => Some((c.id.clone(), max_share)),
                allot_core::Feasibility::Feasible => None,
            })
            .collect()
    }
}
