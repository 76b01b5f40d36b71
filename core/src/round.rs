//! One control round for one placement: controller, sample-rate planner, and the
//! decision whether to publish.
//!
//! The origin's control loop and the simulator both run exactly this, so what the
//! simulator proves is what the origin does.

use crate::evidence::Evidence;
use crate::{
    ControlInput, ControlState, Controller, Decision, PlacementId, Plan, SampleRatePlanner, Targets, WindowStats,
};

/// Everything a round looks at.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    pub placement: &'a PlacementId,
    pub targets: &'a Targets,
    /// The windows it looks at ([`Policy::evidence`]).
    pub evidence: &'a Evidence,
    /// The plan published last (in force at the edge, or about to be).
    pub previous: Option<&'a Plan>,
    pub state: &'a ControlState,
    /// The targets changed since `previous` was made: publish regardless.
    pub targets_changed: bool,
    pub now_ms: u64,
    /// Republish an unchanged plan when `previous` is older than this, so a KV
    /// expiry or a lost write heals itself.
    pub republish_after_ms: u64,
}

/// What a round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    /// The plan to publish, or `None` when the one in force is still right.
    pub publish: Option<Published>,
}

/// A plan a round publishes (version + 1), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub plan: Plan,
    /// The first reason that applies, in [`Publish`]'s order.
    pub why: Publish,
}

/// Why a round publishes a plan. Every publish is a KV write and a new version the edge
/// must take up, so operators and the simulator count them by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Publish {
    /// No plan was published before.
    First,
    /// The manager changed the targets.
    Targets,
    /// The solved weights moved by more than [`REPUBLISH_THRESHOLD`].
    Weights,
    /// Only the sample rate changed.
    Rate,
    /// Nothing changed, but the plan in force is older than the republish age.
    Age,
}

impl Publish {
    /// Every reason, in order.
    pub const ALL: [Publish; 5] = [Publish::First, Publish::Targets, Publish::Weights, Publish::Rate, Publish::Age];

    pub fn as_str(self) -> &'static str {
        match self {
            Publish::First => "first",
            Publish::Targets => "targets",
            Publish::Weights => "weights",
            Publish::Rate => "rate",
            Publish::Age => "age",
        }
    }
}

/// Tuning for rounds.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub controller: Controller,
    pub planner: SampleRatePlanner,
    /// The window length and how long after its end a window counts as complete, when
    /// the caller reads windows that way (the origin does): the last complete window's
    /// index is then known, and feedback counts each window once by it. 0: unknown
    /// (feedback tells windows apart by their content).
    pub period_ms: u64,
    pub lateness_ms: u64,
    /// How long after a window ends its impressions count as complete, for placements
    /// measured on them ([`crate::evidence`]).
    pub impression_lateness_ms: u64,
    /// The platforms every plan lists besides its rules' ([`Plan::platforms`]).
    pub platforms: Option<Vec<String>>,
}

/// Relative weight change below which a plan is not republished.
pub const REPUBLISH_THRESHOLD: f64 = 0.01;

impl Policy {
    /// The index of the last window complete at `now_ms`, if the period is known.
    pub fn last_window(&self, now_ms: u64) -> Option<u64> {
        self.last_complete(now_ms, self.lateness_ms)
    }

    /// The index of the last window complete at `now_ms` for a lateness of `lateness_ms`.
    pub(crate) fn last_complete(&self, now_ms: u64, lateness_ms: u64) -> Option<u64> {
        (self.period_ms > 0)
            .then(|| WindowStats::window_index(now_ms.saturating_sub(lateness_ms), self.period_ms))
            .and_then(|i| i.checked_sub(1))
    }

    /// Whether requests of window `index` counted at `now_ms` came too late for the
    /// round that reads it (the window was complete by then): the aggregator marks them
    /// ([`WindowStats::mark_late`]), so the windows after tell how complete a window is
    /// when read. A placement measured on impressions reads a window later still, so
    /// for it this overstates what its round missed, never understates it.
    pub fn is_late(&self, index: u64, now_ms: u64) -> bool {
        self.last_window(now_ms).is_some_and(|last| index <= last)
    }

    pub fn run(&self, r: Round<'_>) -> Outcome {
        // The traffic mix since it last shifted; the sample rate wants all the volume.
        let (recent, last) = (&r.evidence.mix(r.targets), r.evidence.last());
        let last_index = last.and(r.evidence.last_index);
        let mut decision = self.controller.decide(ControlInput {
            targets: r.targets,
            recent,
            last,
            last_index,
            last_window_ms: last_index.filter(|_| self.period_ms > 0).map(|i| {
                let start = i.saturating_mul(self.period_ms);
                (start, start.saturating_add(self.period_ms))
            }),
            previous: r.previous,
            state: r.state,
        });
        // Kept every round, as the controller's own state is.
        decision.state.stragglers = r.state.stragglers.learnt(r.evidence);
        let current_rate = r.previous.map_or(1.0, |p| p.sample_rate);
        let rate = self.planner.rate_for(r.targets, last, &r.evidence.recent, current_rate);
        // The weights in force are still right: a republish (for its age or a new
        // rate) carries them unchanged, so feedback keeps learning under them.
        let same = r
            .previous
            .filter(|prev| !r.targets_changed && !decision.differs_from(prev, r.targets, REPUBLISH_THRESHOLD));
        if let Some(prev) = same {
            decision.adopt_weights(prev, recent);
        }
        let why = match r.previous {
            None => Some(Publish::First),
            Some(_) if r.targets_changed => Some(Publish::Targets),
            Some(_) if same.is_none() => Some(Publish::Weights),
            Some(prev) if rate != prev.sample_rate => Some(Publish::Rate),
            Some(prev) if r.now_ms.saturating_sub(prev.issued_at_ms) >= r.republish_after_ms => Some(Publish::Age),
            Some(_) => None,
        };
        let publish = why.map(|why| {
            let version = r.previous.map_or(1, |p| p.version + 1);
            let mut plan = match same {
                Some(prev) => Plan { version, issued_at_ms: r.now_ms, sample_rate: rate, ..prev.clone() },
                None => decision.to_plan(r.targets, r.placement.clone(), version, rate, r.now_ms),
            };
            plan.platforms.clone_from(&self.platforms);
            Published { plan, why }
        });
        Outcome { decision, publish }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::TargetsSpec;

    #[test]
    fn every_reason_is_listed_once_with_its_own_name() {
        let names: std::collections::BTreeSet<&str> = Publish::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), Publish::ALL.len());
        assert!(Publish::ALL.is_sorted(), "in the order rounds check them");
    }

    #[test]
    fn publishes_first_then_only_on_change() {
        let targets = Targets::parse(
            serde_json::from_value::<TargetsSpec>(json!({"campaigns": [{"id": "A", "rate": 0.5}]})).unwrap(),
        )
        .unwrap();
        let placement = PlacementId::parse("p").unwrap();
        let empty = Evidence::default();
        let state = ControlState::default();
        let round = |previous, targets_changed, now_ms| Round {
            placement: &placement,
            targets: &targets,
            evidence: &empty,
            previous,
            state: &state,
            targets_changed,
            now_ms,
            republish_after_ms: 600_000,
        };
        let policy = Policy::default();
        let run = |r| policy.run(r).publish;
        let Published { plan: first, why } = run(round(None, false, 1_000)).expect("first round publishes");
        assert_eq!((first.version, first.sample_rate, why), (1, 1.0, Publish::First));
        assert!(run(round(Some(&first), false, 2_000)).is_none());
        let o = run(round(Some(&first), true, 2_000)).unwrap();
        assert_eq!((o.plan.version, o.why), (2, Publish::Targets));
        // Other weights in force: the decision's are published; another rate alone: the
        // weights in force go out again at the new rate.
        let mut skewed = first.clone();
        skewed.no_ad_weight = first.no_ad_weight + 1.0;
        assert_eq!(run(round(Some(&skewed), false, 2_000)).map(|o| o.why), Some(Publish::Weights));
        let halved = Plan { sample_rate: 0.5, ..first.clone() };
        let o = run(round(Some(&halved), false, 2_000)).unwrap();
        assert_eq!(o.why, Publish::Rate);
        assert_eq!((o.plan.sample_rate, o.plan.campaigns), (1.0, first.campaigns.clone()));
        let Published { plan: aged, why } = run(round(Some(&first), false, 601_000)).expect("republished when old");
        assert_eq!(why, Publish::Age);
        // Only its version and issue time are new: the edge does exactly what it did.
        assert_eq!((aged.version, aged.issued_at_ms), (2, 601_000));
        assert_eq!(Plan { version: 1, issued_at_ms: 1_000, ..aged.clone() }, first);
    }

    #[test]
    fn the_last_complete_window_follows_the_lateness() {
        let p = Policy { period_ms: 60_000, lateness_ms: 10_000, ..Policy::default() };
        assert_eq!(p.last_window(129_999), Some(0));
        assert_eq!(p.last_window(130_000), Some(1));
        assert_eq!(p.last_window(5_000), None);
        assert_eq!(Policy::default().last_window(130_000), None);
    }

    #[test]
    fn a_window_is_late_once_its_round_could_read_it() {
        let p = Policy { period_ms: 60_000, lateness_ms: 10_000, ..Policy::default() };
        // Window 1 ends at 120 s and is read at 130 s.
        assert!(!p.is_late(1, 129_999));
        assert!(p.is_late(1, 130_000));
        assert!(p.is_late(0, 130_000));
        assert!(!p.is_late(2, 130_000), "a window not yet complete");
        assert!(!Policy::default().is_late(0, u64::MAX), "no period, no rounds by window");
    }
}
