//! The strategies compared, and the baselines' rules.
//!
//! allot's strategies are core's round itself (`Policy::run`, called by the simulated
//! control loop exactly as the origin calls it); only the baselines' weight rules live
//! here, so the comparison is with something simpler, never with a copy of allot.

use std::fmt;

use allot_core::estimate::{self, DeliveryBasis};
use allot_core::{Plan, Round, SampleRatePlanner};

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

    /// The sample-rate planner the strategy's rounds use: a census samples everything.
    pub fn planner(self, min_rate: f64) -> SampleRatePlanner {
        match self {
            Self::Census => SampleRatePlanner { min_rate: 1.0, ..Default::default() },
            _ => SampleRatePlanner { min_rate, ..Default::default() },
        }
    }

    /// Whether the strategy is allot's own round (`Policy::run`), rather than a baseline.
    pub fn is_allot(self) -> bool {
        matches!(self, Self::Ours | Self::Census)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Exponent of the feedback-only baseline's step.
const FEEDBACK_GAIN: f64 = 0.5;

/// A baseline's plan for a round: the same inputs the origin gives `Policy::run`, a
/// simpler rule for the weights (every round publishes). Not for allot's strategies.
pub fn baseline(strategy: Strategy, planner: &SampleRatePlanner, r: &Round<'_>) -> Plan {
    let rate =
        planner.rate(r.targets, r.last.map_or(0.0, |w| w.requests.ht), r.previous.map_or(1.0, |p| p.sample_rate));
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
        withdrawn: false,
    };
    if strategy == Strategy::Feedback
        && !r.targets_changed
        && let (Some(prev), Some(last)) = (r.previous, r.last)
    {
        let z = r.targets.confidence.z();
        for c in &mut plan.campaigns {
            let target = r.targets.campaign(&c.id).map_or(0.0, |t| t.rate.get());
            let old = prev.campaign(&c.id).map_or(target, |p| p.weight);
            let measured = estimate::share(last, &c.id, DeliveryBasis::of(last, &c.id), z).share;
            c.weight = if target > 0.0 && measured > 0.0 {
                (old * (target / measured).powf(FEEDBACK_GAIN)).clamp(target / 100.0, target * 100.0)
            } else {
                old
            };
        }
    }
    plan
}
