use serde_json::json;

use super::*;
use crate::controller::feedback::{MAX_PLANS, PLANS_KEPT};
use crate::{ControlInput, ControlState, Decision, PlacementId, Plan, Targets, TargetsSpec};

const MINUTE: u64 = 60_000;

fn targets(a: f64) -> Targets {
    Targets::parse(serde_json::from_value::<TargetsSpec>(json!({"campaigns": [{"id": "A", "rate": a}]})).unwrap())
        .unwrap()
}

fn a() -> CampaignId {
    CampaignId::parse("A").unwrap()
}

/// 100 requests on one profile, too few for feedback to learn from (so only the lag
/// moves the weights), decided `n` per version as given.
fn window(versions: &[(u64, f64)]) -> WindowStats {
    let mut w = WindowStats::default();
    w.profiles.insert("ios|".into(), 100.0);
    w.requests = crate::stats::Tally { ht: 100.0, n: 100 };
    w.requests_sq = 100.0;
    w.versions = versions.iter().copied().collect();
    w
}

/// A chain of rounds on a 60 s period: each publishes what it decided, at its time.
struct Rounds {
    controller: Controller,
    plan: Option<Plan>,
    state: ControlState,
}

impl Rounds {
    fn new() -> Self {
        // Stuck a minute after a plan is replaced (the default allows more).
        let controller = Controller { lag_after_ms: MINUTE, ..Controller::default() };
        Self { controller, plan: None, state: ControlState::default() }
    }

    /// A round at `now` for target `a`, after window `index` decided as `last` says.
    fn round(&mut self, a: f64, index: u64, last: &WindowStats, now: u64) -> Decision {
        self.round_for(&targets(a), index, last, now)
    }

    fn round_for(&mut self, t: &Targets, index: u64, last: &WindowStats, now: u64) -> Decision {
        let d = self.controller.decide(ControlInput {
            targets: t,
            recent: last,
            last: Some(last),
            last_index: Some(index),
            last_window_ms: Some((index * MINUTE, (index + 1) * MINUTE)),
            previous: self.plan.as_ref(),
            state: &self.state,
        });
        let version = self.plan.as_ref().map_or(1, |p| p.version + 1);
        self.plan = Some(d.to_plan(t, PlacementId::parse("p").unwrap(), version, 1.0, now));
        self.state = d.state.clone();
        d
    }
}

/// v1 gives A half, v2 (published at 1:10) 30 %; then rounds for the windows from
/// `index` on, a fifth of each decided by v1 still.
fn stuck_on_v1() -> Rounds {
    let mut r = Rounds::new();
    r.round(0.5, 0, &window(&[(1, 100.0)]), 10_000);
    r.round(0.3, 0, &window(&[(1, 100.0)]), MINUTE + 10_000);
    r
}

#[test]
fn a_plan_stuck_at_the_edge_is_made_up_for_by_the_rest() {
    let mut r = stuck_on_v1();
    // Window 2 began 50 s after v1 was replaced, so 10 s before the lag's minute was up:
    // whatever share v1 decided in it may be the ordinary tail of a publish.
    let d = r.round(0.3, 2, &window(&[(1, 20.0), (2, 80.0)]), 3 * MINUTE + 10_000);
    assert!(d.lag.is_none(), "{:?}", d.lag);
    // Window 3 began 50 s past it: by its end v1 was seen stuck for 110 s, n = 11/6
    // windows, so its fifth is forecast to stay with odds (n + 1)/(n + 2).
    let d = r.round(0.3, 3, &window(&[(1, 20.0), (2, 80.0)]), 4 * MINUTE + 10_000);
    let n = 11.0 / 6.0;
    let share = 0.2 * (n + 1.0) / (n + 2.0);
    assert!((d.lag.share - share).abs() < 1e-12, "{:?}", d.lag);
    assert!((d.lag.delivered[&a()] - 0.5).abs() < 1e-9, "v1 gives A half: {:?}", d.lag);
    let own = (0.3 - share * 0.5) / (1.0 - share);
    assert!((d.campaigns[0].weight - own).abs() < 1e-9, "{} vs {own}", d.campaigns[0].weight);
    assert!((d.campaigns[0].predicted_share - 0.3).abs() < 1e-9, "all the traffic gets the target");
    assert_eq!(d.campaigns[0].feasibility, crate::Feasibility::Feasible);

    // Four windows later (the rest decided by v4, made in the last round), with
    // n = 35/6: nearly all of it.
    let d = r.round(0.3, 7, &window(&[(1, 20.0), (4, 80.0)]), 8 * MINUTE + 10_000);
    let n = 35.0 / 6.0;
    assert!((d.lag.share - 0.2 * (n + 1.0) / (n + 2.0)).abs() < 1e-12, "{:?}", d.lag);
    assert!((d.campaigns[0].predicted_share - 0.3).abs() < 1e-9);

    // The colo takes the plan up: nothing is made up for.
    let d = r.round(0.3, 8, &window(&[(5, 100.0)]), 9 * MINUTE + 10_000);
    assert!(d.lag.is_none(), "{:?}", d.lag);
    assert!((d.campaigns[0].weight - 0.3).abs() < 1e-9);
}

#[test]
fn the_ordinary_tail_of_a_publish_is_not_a_stuck_colo() {
    let mut r = stuck_on_v1();
    // Window 1 began 10 s before v1 was replaced, window 2 50 s after: within the
    // lag's minute, whatever share v1 still decides.
    for (index, share) in [(1, 70.0), (2, 40.0)] {
        let d = r.round(0.3, index, &window(&[(1, share), (2, 100.0 - share)]), (index + 1) * MINUTE + 10_000);
        assert!(d.lag.is_none(), "window {index}: {:?}", d.lag);
        assert!((d.campaigns[0].weight - 0.3).abs() < 1e-9);
    }
}

#[test]
fn a_stuck_plan_is_remembered_while_it_decides_and_forgotten_after() {
    let mut r = stuck_on_v1();
    // Weights re-solved every round (a new target each time): v1 falls behind the
    // newest four, and is remembered while it still decides a notable share.
    let mut index = 3;
    for (i, a) in [0.31, 0.32, 0.33, 0.34, 0.35, 0.36].into_iter().enumerate() {
        let newest = i as u64 + 2;
        let d = r.round(a, index, &window(&[(1, 20.0), (newest, 80.0)]), (index + 1) * MINUTE + 10_000);
        assert!(d.lag.share > 0.0, "round {i}: {:?}", d.lag);
        let plans = &d.state.learning.as_ref().unwrap().plans;
        assert!(plans.len() <= MAX_PLANS);
        assert_eq!(plans[0].since_version, 1, "round {i}: v1 still decides a fifth");
        index += 1;
    }
    // Once it decides less than half a percent, only the newest plans are kept.
    let d = r.round(0.36, index, &window(&[(1, 0.4), (8, 99.6)]), (index + 1) * MINUTE + 10_000);
    let plans = &d.state.learning.as_ref().unwrap().plans;
    assert!(plans.len() <= PLANS_KEPT && plans[0].since_version > 1, "{plans:?}");
}

#[test]
fn what_no_plan_remembered_decided_is_not_made_up_for_and_the_share_is_bounded() {
    // Hostile: versions never published, or long forgotten, count for nothing (the
    // requests are there; by whatever plan, it is not one the controller can predict).
    let mut r = stuck_on_v1();
    let d = r.round(0.3, 5, &window(&[(0, 30.0), (2, 40.0), (u64::MAX, 30.0)]), 6 * MINUTE + 10_000);
    assert!(d.lag.is_none(), "{:?}", d.lag);
    assert!((d.campaigns[0].weight - 0.3).abs() < 1e-9);

    // Nearly all of a window on the replaced plan is made up for up to a quarter: A's
    // weight moves by a third of the 20 pp between v1 and its target, no more.
    let mut r = stuck_on_v1();
    let d = r.round(0.3, 30, &window(&[(1, 99.0), (2, 1.0)]), 31 * MINUTE + 10_000);
    assert_eq!(d.lag.share, 0.25);
    let own = (0.3 - 0.25 * 0.5) / 0.75;
    assert!((d.campaigns[0].weight - own).abs() < 1e-9, "{}", d.campaigns[0].weight);
    assert!((d.campaigns[0].weight - (0.3 - 0.2 / 3.0)).abs() < 1e-9);
    // The rest is not made up for, and the prediction says what all the traffic gets:
    // v1's half on the stuck part, far over the target.
    let n = (31.0 * 60.0 - 130.0) / 60.0;
    let stuck = 0.99 * (n + 1.0) / (n + 2.0);
    assert!((d.lag.beyond - (stuck - 0.25)).abs() < 1e-12, "{:?}", d.lag);
    let all = (1.0 - stuck) * own + stuck * 0.5;
    assert!((d.campaigns[0].predicted_share - all).abs() < 1e-9, "{:?}", d.campaigns[0]);
}

#[test]
fn what_the_cap_leaves_short_is_reported_and_blamed_on_no_other_campaign() {
    // v1 gives A and B a tenth each; they now ask for 50 % and 25 %, and 40 % of the
    // traffic stays on v1. A quarter is made up for and the rest met, but the part past
    // the cap gives them a tenth: both are predicted short, each for itself, not for
    // sharing a pool with the other.
    let two = |a: f64, b: f64| {
        let spec = json!({"campaigns": [{"id": "A", "rate": a}, {"id": "B", "rate": b}]});
        Targets::parse(serde_json::from_value::<TargetsSpec>(spec).unwrap()).unwrap()
    };
    let mut r = Rounds::new();
    r.round_for(&two(0.1, 0.1), 0, &window(&[(1, 100.0)]), 10_000);
    r.round_for(&two(0.5, 0.25), 0, &window(&[(1, 100.0)]), MINUTE + 10_000);
    let d = r.round_for(&two(0.5, 0.25), 30, &window(&[(1, 40.0), (2, 60.0)]), 31 * MINUTE + 10_000);
    assert_eq!(d.lag.share, 0.25, "{:?}", d.lag);
    assert!(d.lag.stuck() > 0.38, "{:?}", d.lag);
    for (c, target) in d.campaigns.iter().zip([0.5, 0.25]) {
        let own = (target - 0.25 * 0.1) / 0.75;
        assert!((c.weight - own).abs() < 1e-9, "{c:?}");
        let all = (1.0 - d.lag.stuck()) * own + d.lag.stuck() * 0.1;
        assert!((c.predicted_share - all).abs() < 1e-9 && all < target - 0.02, "{c:?}");
        assert!(matches!(c.feasibility, crate::Feasibility::Infeasible { .. }), "{c:?}");
        assert!(!c.jointly_infeasible(), "{c:?}");
    }
}

#[test]
fn a_make_up_beyond_the_pool_is_reported_infeasible() {
    // v1 gave A nothing; A now asks for 80 % and 40 % of the traffic is stuck on v1 (a
    // quarter made up for): the rest would have to give A 107 %. The plan gives it all
    // it can, and the decision says the target will not be met, by no other's doing.
    let mut r = Rounds::new();
    r.round(0.0001, 0, &window(&[(1, 100.0)]), 10_000);
    r.round(0.8, 0, &window(&[(1, 100.0)]), MINUTE + 10_000);
    let d = r.round(0.8, 20, &window(&[(1, 40.0), (2, 60.0)]), 21 * MINUTE + 10_000);
    assert_eq!(d.lag.share, 0.25, "{:?}", d.lag);
    assert!(matches!(d.campaigns[0].feasibility, crate::Feasibility::Infeasible { .. }), "{:?}", d.campaigns[0]);
    assert!(d.campaigns[0].predicted_share < 0.8 - 1e-3);
    assert!(!d.campaigns[0].jointly_infeasible());
}

#[test]
fn a_forged_replacement_time_bears_on_its_own_plan_only() {
    let mut r = stuck_on_v1();
    r.round(0.31, 3, &window(&[(1, 20.0), (2, 80.0)]), 4 * MINUTE + 10_000);
    r.round(0.32, 4, &window(&[(1, 20.0), (3, 80.0)]), 5 * MINUTE + 10_000);
    let mut json = serde_json::to_value(r.state.learning.as_ref().unwrap()).unwrap();
    // The plan in force is not replaced: a state saying so is refused.
    let last = json["plans"].as_array().unwrap().len() - 1;
    let mut forged = json.clone();
    forged["plans"][last]["replaced_ms"] = json!(1);
    let err = serde_json::from_value::<Learning>(forged).unwrap_err().to_string();
    assert!(err.contains("plan in force remembered as replaced"), "{err}");
    // v1 replaced at the end of time (a clock far ahead, or a forgery): v1 is never
    // taken for stuck, and the plans replaced after it keep their own times.
    json["plans"][0]["replaced_ms"] = json!(u64::MAX);
    r.state.learning = Some(serde_json::from_value::<Learning>(json).unwrap());
    let d = r.round(0.33, 5, &window(&[(1, 20.0), (4, 80.0)]), 6 * MINUTE + 10_000);
    assert!(d.lag.is_none(), "{:?}", d.lag);
    let plans = &d.state.learning.as_ref().unwrap().plans;
    assert_eq!(plans[plans.len() - 2].replaced_ms, Some(5 * MINUTE + 10_000), "v4's publish: {plans:?}");
}

#[test]
fn a_window_whose_counts_are_not_numbers_is_no_forecast() {
    // Hostile: a version count of NaN or infinity (Redis holds what anyone wrote).
    for bad in [f64::NAN, f64::INFINITY] {
        let mut r = stuck_on_v1();
        let d = r.round(0.3, 5, &window(&[(1, 20.0), (2, 80.0), (7, bad)]), 6 * MINUTE + 10_000);
        assert!(d.lag.is_none(), "{bad}: {:?}", d.lag);
        assert!((d.campaigns[0].weight - 0.3).abs() < 1e-9, "{bad}: {:?}", d.campaigns[0]);
    }
}
