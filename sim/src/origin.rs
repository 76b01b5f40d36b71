//! The origin's side: the aggregator's window counts and the control loop's rounds,
//! with Redis replaced by maps.
//!
//! [`Windows`] is what `origin/src/aggregate.rs` and the store do with an event body:
//! parse it as a stream entry is parsed (`EventBatch::parse`), fold it into one delta
//! per window with `WindowStats::fold_windows`, and add the delta to the window's hash
//! field by field (`to_fields`, the apply script's `HINCRBYFLOAT`s); a round reads
//! windows back with `WindowStats::from_fields`, as the store does.
//!
//! [`ControlLoop`] is what `origin/src/control.rs` does per placement and round: the
//! last `recent_windows` complete windows merged, the last one (if it saw anything),
//! the plan in force, the stored control state, "targets changed" from the targets'
//! revision, into core's `Policy::run`. As in the store, the state and the decision
//! are kept only with a published plan.

use std::collections::{BTreeMap, HashMap};

use allot_core::{
    CampaignId, ControlState, Decision, EventBatch, EventError, Feasibility, PlacementId, Plan, Policy, Round, Targets,
    WindowStats,
};

use crate::strategy::{self, Strategy};

/// Per-window counts as the origin stores them: one hash of fields per window index.
#[derive(Debug)]
pub struct Windows {
    period_ms: u64,
    hashes: BTreeMap<u64, HashMap<String, f64>>,
}

impl Windows {
    pub fn new(period_ms: u64) -> Self {
        Self { period_ms, hashes: BTreeMap::new() }
    }

    /// Applies one event body, as the aggregator applies a stream entry. Returns the
    /// number of events it carried.
    pub fn apply(&mut self, body: &[u8]) -> Result<usize, EventError> {
        let batch = EventBatch::parse(body)?;
        for (index, delta) in WindowStats::fold_windows(&batch.events, self.period_ms) {
            let hash = self.hashes.entry(index).or_default();
            for (field, value) in delta.to_fields() {
                *hash.entry(field).or_default() += value;
            }
        }
        Ok(batch.events.len())
    }

    /// The counts of windows `indices` (missing windows are empty), as the store reads them.
    pub fn read(&self, indices: &[u64]) -> Vec<WindowStats> {
        indices
            .iter()
            .map(|i| match self.hashes.get(i) {
                Some(h) => WindowStats::from_fields(h.iter().map(|(k, v)| (k, *v))).expect("fields the fold wrote"),
                None => WindowStats::default(),
            })
            .collect()
    }

    /// Every window index that has counts.
    pub fn indices(&self) -> Vec<u64> {
        self.hashes.keys().copied().collect()
    }
}

/// The plan in force and what it was made from (the origin's `PlanRecord`).
#[derive(Debug)]
struct Record {
    plan: Plan,
    decision: Option<Decision>,
    targets_rev: u64,
}

/// One placement's control loop.
#[derive(Debug)]
pub struct ControlLoop {
    strategy: Strategy,
    placement: PlacementId,
    policy: Policy,
    period_ms: u64,
    recent_windows: u64,
    republish_after_ms: u64,
    record: Option<Record>,
    state: ControlState,
}

/// How the control loop is configured (the origin's `[control]` section).
#[derive(Debug, Clone, Copy)]
pub struct ControlConfig {
    pub period_ms: u64,
    pub recent_windows: u64,
    pub min_sample_rate: f64,
    pub republish_after_ms: u64,
}

impl ControlLoop {
    pub fn new(strategy: Strategy, placement: PlacementId, config: ControlConfig) -> Self {
        Self {
            strategy,
            placement,
            policy: Policy { planner: strategy.planner(config.min_sample_rate), ..Policy::default() },
            period_ms: config.period_ms,
            recent_windows: config.recent_windows,
            republish_after_ms: config.republish_after_ms,
            record: None,
            state: ControlState::default(),
        }
    }

    /// A round at `now_ms` for `targets` (revision `targets_rev`); the plan to publish,
    /// if any. A published plan is taken as in force from now on, as the origin stores
    /// it once the publish succeeded (publishing does not fail here).
    pub fn round(&mut self, targets: &Targets, targets_rev: u64, windows: &Windows, now_ms: u64) -> Option<Plan> {
        let current = WindowStats::window_index(now_ms, self.period_ms);
        let indices: Vec<u64> = (1..=self.recent_windows).filter_map(|i| current.checked_sub(i)).collect();
        let read = windows.read(&indices);
        let mut recent = WindowStats::default();
        for w in &read {
            recent.merge(w);
        }
        let round = Round {
            placement: &self.placement,
            targets,
            recent: &recent,
            last: read.first().filter(|w| w.requests.n > 0 || !w.campaigns.is_empty()),
            previous: self.record.as_ref().map(|r| &r.plan),
            state: &self.state,
            targets_changed: self.record.as_ref().is_none_or(|r| r.targets_rev != targets_rev),
            now_ms,
            republish_after_ms: self.republish_after_ms,
        };
        let (plan, decision) = if self.strategy.is_allot() {
            let outcome = self.policy.run(round);
            (outcome.plan?, Some(outcome.decision))
        } else {
            (strategy::baseline(self.strategy, &self.policy.planner, &round), None)
        };
        if let Some(d) = &decision {
            self.state = d.state.clone();
        }
        self.record = Some(Record { plan: plan.clone(), decision, targets_rev });
        Some(plan)
    }

    /// Campaigns the decision in force reports infeasible, with their maximum share.
    pub fn infeasible(&self) -> Vec<(CampaignId, f64)> {
        let Some(d) = self.record.as_ref().and_then(|r| r.decision.as_ref()) else { return vec![] };
        d.campaigns
            .iter()
            .filter_map(|c| match c.feasibility {
                Feasibility::Infeasible { max_share } => Some((c.id.clone(), max_share)),
                Feasibility::Feasible => None,
            })
            .collect()
    }
}
