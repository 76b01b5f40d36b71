//! The origin's side: the aggregator's window counts and the control loop's rounds,
//! with Redis replaced by maps.
//!
//! [`Windows`] is what `origin/src/aggregate.rs` and the store do with an event body:
//! parse it as a stream entry is parsed (`EventBatch::parse`), fold it into one delta
//! per window with `WindowStats::fold_windows`, mark the deltas of windows whose round
//! has already read them as late (`Policy::is_late`), and add each delta to the
//! window's hash field by field (`to_fields`, the apply script's `HINCRBYFLOAT`s); a
//! round reads windows back with `WindowStats::from_fields`, as the store does.
//!
//! [`ControlLoop`] is what `origin/src/control.rs` does per placement and round: the
//! last `recent_windows` complete windows merged, the last one (if it saw anything),
//! the plan in force, the stored control state, "targets changed" from the targets'
//! revision, into core's `Policy::run`. As in the origin, the state is kept after every
//! round and the decision with a published plan.
//!
//! [`Inbox`] is the way from the edges to the aggregator: bodies arrive after their
//! latency, the ingest's replay memory turns a body sent twice away, and the
//! aggregator may lag.

use std::collections::{BTreeMap, HashMap};

use allot_core::{
    CampaignId, ControlState, Decision, EventBatch, EventError, Evidence, Feasibility, PlacementId, Plan, Policy,
    Publish, Published, Round, Targets, WindowStats,
};

/// Per-window counts as the origin stores them: one hash of fields per placement and
/// window index.
#[derive(Debug)]
pub struct Windows {
    /// The window length and latenesses, for telling late deltas.
    policy: Policy,
    hashes: BTreeMap<(PlacementId, u64), HashMap<String, f64>>,
}

impl Windows {
    pub fn new(period_ms: u64, lateness_ms: u64, impression_lateness_ms: u64) -> Self {
        let policy = Policy { period_ms, lateness_ms, impression_lateness_ms, ..Policy::default() };
        Self { policy, hashes: BTreeMap::new() }
    }

    /// Applies one event body received at `received_ms` at `now_ms`, as the aggregator
    /// applies a stream entry (allocations are late by when they are applied,
    /// impressions by when they were received). Returns the number of events it carried.
    pub fn apply(&mut self, body: &[u8], received_ms: u64, now_ms: u64) -> Result<usize, EventError> {
        let batch = EventBatch::parse(body)?;
        let mut placements: Vec<&PlacementId> = batch.events.iter().map(|e| &e.placement).collect();
        placements.sort();
        placements.dedup();
        for placement in placements {
            let events = batch.events.iter().filter(|e| &e.placement == placement);
            for (index, mut delta) in WindowStats::fold_windows(events, self.policy.period_ms) {
                if self.policy.is_late(index, now_ms) {
                    delta.mark_late();
                }
                if self.policy.is_late_for_impressions(index, received_ms) {
                    delta.mark_impressions_late();
                }
                let hash = self.hashes.entry((placement.clone(), index)).or_default();
                for (field, value) in delta.to_fields() {
                    *hash.entry(field).or_default() += value;
                }
            }
        }
        Ok(batch.events.len())
    }

    /// The counts of `placement`'s windows `indices` (missing windows are empty), as the
    /// store reads them.
    pub fn read(&self, placement: &PlacementId, indices: &[u64]) -> Vec<WindowStats> {
        indices
            .iter()
            .map(|i| match self.hashes.get(&(placement.clone(), *i)) {
                Some(h) => WindowStats::from_fields(h.iter().map(|(k, v)| (k, *v))).expect("fields the fold wrote"),
                None => WindowStats::default(),
            })
            .collect()
    }

    /// Every `(placement, window index)` that has counts.
    pub fn indices(&self) -> Vec<(PlacementId, u64)> {
        self.hashes.keys().cloned().collect()
    }
}

/// Event bodies on their way to the aggregator.
#[derive(Debug, Default)]
pub struct Inbox {
    /// By the second they are applied: the bodies.
    due: BTreeMap<u64, Vec<std::sync::Arc<String>>>,
    /// The ingest's replay memory: bodies already accepted.
    seen: std::collections::HashSet<u64>,
    pub duplicates_refused: u64,
}

impl Inbox {
    pub fn push(&mut self, at_s: u64, body: std::sync::Arc<String>) {
        self.due.entry(at_s).or_default().push(body);
    }

    /// Applies every body due by `t` to `windows` at `now_ms`, each body once. Returns
    /// the events applied.
    pub fn deliver(&mut self, t: u64, now_ms: u64, windows: &mut Windows) -> u64 {
        let due: Vec<u64> = self.due.range(..=t).map(|(k, _)| *k).collect();
        let mut applied = 0;
        for k in due {
            for body in self.due.remove(&k).unwrap_or_default() {
                if !self.seen.insert(fingerprint(&body)) {
                    self.duplicates_refused += 1;
                    continue;
                }
                let received_ms = (k + 1) * 1000 - 1;
                applied +=
                    windows.apply(body.as_bytes(), received_ms, now_ms).expect("the edge's events are valid") as u64;
            }
        }
        applied
    }
}

fn fingerprint(body: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

/// The plan in force and what it was made from (the origin's `PlanRecord`).
#[derive(Debug)]
struct Record {
    plan: Plan,
    decision: Decision,
    targets_rev: u64,
}

/// One placement's control loop.
#[derive(Debug)]
pub struct ControlLoop {
    placement: PlacementId,
    policy: Policy,
    config: ControlConfig,
    record: Option<Record>,
    state: ControlState,
    /// The decision of the last round, published or not.
    pub last_decision: Option<Decision>,
    /// The window the last round looked at as its newest (for a placement measured on
    /// impressions, the newest complete for them).
    pub last_index: Option<u64>,
    /// What the round looked at, which the status publishes from
    /// (`Evidence::last_reading`, `estimate::published`).
    pub last_evidence: Evidence,
    /// Plans the controller made that fail `Plan::check` (the origin refuses them).
    pub invalid_plans: u64,
    /// Plans published, by why.
    pub published: BTreeMap<Publish, u64>,
}

/// How the control loop is configured (the origin's `[control]` section).
#[derive(Debug, Clone, Copy)]
pub struct ControlConfig {
    pub period_ms: u64,
    pub recent_windows: u64,
    pub min_sample_rate: f64,
    pub republish_after_ms: u64,
    /// How long after a window ends it counts as complete (`control.lateness_ms`).
    pub lateness_ms: u64,
    /// … and complete for impressions (`control.impression_lateness_ms`, clamped as
    /// the origin clamps it).
    pub impression_lateness_ms: u64,
    /// Sample every request (a census), whatever the planner says.
    pub census: bool,
    /// When a replaced plan still deciding means a stuck colo (`control.lag_after_ms`).
    pub lag_after_ms: u64,
}

impl ControlLoop {
    pub fn new(placement: PlacementId, config: ControlConfig) -> Self {
        let mut policy = Policy {
            period_ms: config.period_ms,
            lateness_ms: config.lateness_ms,
            impression_lateness_ms: config.impression_lateness_ms,
            // The origin's default list: a platform no rule names and not in it is `other`.
            platforms: Some(allot_core::plan::COMMON_PLATFORMS.map(String::from).to_vec()),
            ..Policy::default()
        };
        policy.planner.min_rate = if config.census { 1.0 } else { config.min_sample_rate };
        policy.controller.lag_after_ms = config.lag_after_ms;
        Self {
            placement,
            policy,
            config,
            record: None,
            state: ControlState::default(),
            last_decision: None,
            last_index: None,
            last_evidence: Evidence::default(),
            invalid_plans: 0,
            published: BTreeMap::new(),
        }
    }

    /// A round at `now_ms` for `targets` (revision `targets_rev`); the plan to publish,
    /// if any. A published plan is taken as in force from now on, as the origin stores
    /// it once the publish succeeded.
    pub fn round(&mut self, targets: &Targets, targets_rev: u64, windows: &Windows, now_ms: u64) -> Option<Plan> {
        // The windows complete by `now − lateness` (for impressions, later), as the
        // origin reads them.
        let recent_windows = self.config.recent_windows;
        let read = windows.read(&self.placement, &self.policy.windows_to_read(now_ms, recent_windows));
        let evidence = self.policy.evidence(now_ms, recent_windows, read);
        self.last_index = evidence.last_index;
        self.last_evidence = evidence.clone();
        let round = Round {
            placement: &self.placement,
            targets,
            evidence: &evidence,
            previous: self.record.as_ref().map(|r| &r.plan),
            state: &self.state,
            targets_changed: self.record.as_ref().is_none_or(|r| r.targets_rev != targets_rev),
            now_ms,
            republish_after_ms: self.config.republish_after_ms,
        };
        let outcome = self.policy.run(round);
        self.last_decision = Some(outcome.decision.clone());
        // As the origin: the state is kept after every round, published or not.
        self.state = outcome.decision.state.clone();
        let Published { plan, why } = outcome.publish?;
        if let Err(e) = plan.check() {
            // As the origin: never published, the plan in force stays.
            self.invalid_plans += 1;
            if std::env::var_os("ALLOT_SIM_DEBUG").is_some() {
                eprintln!("invalid plan {e}: {plan:?}\nrecent {:?}\ndecision {:?}", evidence.recent, outcome.decision);
            }
            return None;
        }
        *self.published.entry(why).or_default() += 1;
        self.record = Some(Record { plan: plan.clone(), decision: outcome.decision, targets_rev });
        Some(plan)
    }

    /// The controller's state after the last round (kept every round, as the origin does).
    pub fn state(&self) -> &ControlState {
        &self.state
    }

    /// The decision stored with the plan in force.
    pub fn decision_in_force(&self) -> Option<&Decision> {
        self.record.as_ref().map(|r| &r.decision)
    }

    /// Campaigns the decision in force reports infeasible, with their maximum share.
    pub fn infeasible(&self) -> Vec<(CampaignId, f64)> {
        let Some(d) = self.decision_in_force() else { return vec![] };
        d.campaigns
            .iter()
            .filter_map(|c| match c.feasibility {
                Feasibility::Infeasible { max_share } => Some((c.id.clone(), max_share)),
                Feasibility::Feasible => None,
            })
            .collect()
    }
}
