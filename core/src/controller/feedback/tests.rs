//! Feedback in closed loop: a synthetic world delivers what the model predicts for the
//! plan in force, times a bias; each window is built from the shares it delivered
//! (exactly, or with binomial sampling noise from a fixed seed).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::evidence::Evidence;
use crate::round::{Policy, Round};
use crate::stats::Tally;
use crate::{CampaignId, ControlState, PlacementId, Plan, Targets, TargetsSpec, WindowStats, solver};

fn targets() -> Targets {
    Targets::parse(
        serde_json::from_value::<TargetsSpec>(json!({
            "campaigns": [{"id": "A", "rate": 0.3}, {"id": "B", "rate": 0.2}],
            "confidence": {"margin": 0.01, "level": 0.95}
        }))
        .unwrap(),
    )
    .unwrap()
}

/// Requests per window: 10,000/s for 60 s.
const REQUESTS: f64 = 600_000.0;

/// The true shares `plan` delivers (uniform eligibility), A's multiplied by `bias`.
fn truth(plan: &Plan, bias: f64) -> Vec<f64> {
    let p = solver::Patterns::new([(0b11, 1.0)], 2);
    let w: Vec<f64> = plan.campaigns.iter().map(|c| c.weight).collect();
    let mut d = vec![0.0; 2];
    solver::delivered(&w, plan.no_ad_weight, &p, &mut d);
    d[0] *= bias;
    d
}

/// A window of `requests` decided under `plan`, sampled at its rate, with the given
/// shares; `noise` draws the sampled counts (normal approximation of the binomial).
fn window(plan: &Plan, requests: f64, shares: &[f64], noise: Option<&mut SmallRng>) -> WindowStats {
    let rate = plan.sample_rate;
    let n = (requests * rate).round();
    let w = 1.0 / rate;
    let mut s =
        WindowStats { requests: Tally { ht: n * w, n: n as u64 }, requests_sq: n * w * w, ..WindowStats::default() };
    s.profiles.insert(":".into(), n * w);
    s.versions.insert(plan.version, n * w);
    let mut rng = noise;
    for (c, &share) in plan.campaigns.iter().zip(shares) {
        let mut k = n * share;
        if let Some(rng) = rng.as_deref_mut() {
            // Box–Muller.
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            let g = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            k = (k + g * (n * share * (1.0 - share)).sqrt()).round().max(0.0);
        }
        let counts = s.campaigns.entry(c.id.clone()).or_default();
        counts.allocations = Tally { ht: k * w, n: k as u64 };
        counts.allocations_sq = k * w * w;
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn mk<'a>(
    placement: &'a PlacementId,
    targets: &'a Targets,
    previous: Option<&'a Plan>,
    evidence: &'a Evidence,
    state: &'a ControlState,
    now_ms: u64,
    targets_changed: bool,
) -> Round<'a> {
    Round { placement, targets, evidence, previous, state, targets_changed, now_ms, republish_after_ms: 600_000 }
}

/// Window `w` as the round at `now_ms` sees it: the last complete one.
fn seen(policy: &Policy, w: &WindowStats, now_ms: u64) -> Evidence {
    Evidence { last_index: policy.last_window(now_ms), windows: vec![w.clone()], recent: w.clone() }
}

/// Runs `windows` windows; each plan is in force for the whole of the next window.
/// Returns A's true share and correction after each window.
fn run(windows: usize, bias: f64, start: ControlState, mut noise: Option<SmallRng>) -> Vec<(f64, f64, Plan)> {
    let t = targets();
    let placement = PlacementId::parse("p").unwrap();
    let policy = Policy::default();
    let a = CampaignId::parse("A").unwrap();
    let first = policy.run(mk(&placement, &t, None, &Evidence::default(), &start, 0, true));
    // The traffic is known: start at the rate it needs.
    let mut plan = Plan { sample_rate: 0.014, ..first.plan.unwrap() };
    let mut state = ControlState { learning: None, ..start };
    let mut out = Vec::new();
    for k in 0..windows {
        let shares = truth(&plan, bias);
        // A few requests more each window, so no two windows are alike.
        let w = window(&plan, REQUESTS + k as f64 * 100.0, &shares, noise.as_mut());
        out.push((shares[0], state.corrections.get(&a).copied().unwrap_or(1.0), plan.clone()));
        let o = policy.run(mk(
            &placement,
            &t,
            Some(&plan),
            &seen(&policy, &w, (k as u64 + 1) * 60_000),
            &state,
            (k as u64 + 1) * 60_000,
            false,
        ));
        state = o.decision.state;
        if let Some(p) = o.plan {
            plan = p;
        }
    }
    out
}

#[test]
fn a_persistent_shortfall_is_corrected_within_four_windows() {
    // A delivers 4 % less than the model says: 1.2 pp short at 30 %, inside one
    // window's band (3σ ≈ 1.5 pp) but not two windows'.
    let trace = run(8, 0.96, ControlState::default(), None);
    assert!((trace[0].0 - 0.288).abs() < 1e-9, "{:?}", trace[0]);
    let fixed = trace.iter().position(|(share, ..)| (share - 0.3).abs() < 0.003).expect("corrected");
    assert!(fixed <= 4, "corrected after {fixed} windows: {:?}", trace.iter().map(|t| t.0).collect::<Vec<_>>());
    // And it stays corrected: the evidence agrees with the correction.
    for (share, g, _) in &trace[fixed..] {
        assert!((share - 0.3).abs() < 0.003 && (g - 1.0 / 0.96).abs() < 0.01, "{share} {g}");
    }
}

#[test]
fn a_correction_decays_once_its_cause_is_gone() {
    // A correction for a bias that is no longer there: A is over-delivered by 4 %.
    let start = ControlState {
        corrections: [(CampaignId::parse("A").unwrap(), 1.0 / 0.96)].into_iter().collect(),
        learning: None,
    };
    let trace = run(8, 1.0, start, None);
    assert!(trace[0].0 > 0.31, "{:?}", trace[0]);
    let fixed = trace.iter().position(|(share, g, _)| (share - 0.3).abs() < 0.003 && *g == 1.0).expect("decayed");
    assert!(fixed <= 4, "{fixed}");
}

#[test]
fn noise_alone_barely_moves_the_correction() {
    // 200 windows of pure sampling noise (±1 pp at 95 %), several seeds.
    let mut worst: f64 = 0.0;
    let mut plans = 0;
    for seed in 0..5 {
        let trace = run(200, 1.0, ControlState::default(), Some(SmallRng::seed_from_u64(seed)));
        for (share, g, _) in &trace {
            worst = worst.max((g - 1.0).abs());
            assert!((share - 0.3).abs() < 0.006, "seed {seed}: true share {share}");
        }
        // Plans with new weights (an unchanged plan is republished every 10 windows).
        plans += trace
            .windows(2)
            .filter(|w| super::weights_fingerprint(&w[0].2) != super::weights_fingerprint(&w[1].2))
            .count();
    }
    eprintln!("noise: worst correction {worst:.4}, new weights {plans} in 1,000 windows");
    // A crossing moves g by about the merged band (≈ 0.5 pp at 30 %), and back.
    assert!(worst < 0.025, "correction moved by {worst}");
    assert!(plans < 20, "{plans} new weights in 1,000 windows");
}

#[test]
fn windows_under_a_republished_plan_with_the_same_weights_count_together() {
    let t = targets();
    let placement = PlacementId::parse("p").unwrap();
    let policy = Policy::default();
    let state = ControlState::default();
    let v1 = Plan {
        sample_rate: 0.014,
        ..policy.run(mk(&placement, &t, None, &Evidence::default(), &state, 0, true)).plan.unwrap()
    };
    // Republished for its age: version 2, same weights.
    let v2 = policy.run(mk(&placement, &t, Some(&v1), &Evidence::default(), &state, 600_000, false)).plan.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(super::weights_fingerprint(&v1), super::weights_fingerprint(&v2));
    // A window decided half under each, 1.2 pp short. A state that only knows v2
    // cannot predict the half decided under v1: the window teaches nothing…
    let mut w = window(&v2, REQUESTS, &truth(&v2, 0.96), None);
    w.versions = [(1, REQUESTS / 2.0), (2, REQUESTS / 2.0)].into_iter().collect();
    let o = policy.run(mk(&placement, &t, Some(&v2), &seen(&policy, &w, 660_000), &state, 660_000, false));
    let learning = o.decision.state.learning.clone().unwrap();
    assert_eq!(learning.since_version(), Some(2));
    assert!(learning.evidence.is_empty(), "half of it was decided under a version it does not know");
    // … but one that followed v1 knows these weights started there, and counts it.
    let mut known = ControlState { learning: None, ..ControlState::default() };
    known.learning =
        policy.run(mk(&placement, &t, Some(&v1), &Evidence::default(), &known, 600_000, false)).decision.state.learning;
    let mut w2 = window(&v2, REQUESTS + 1.0, &truth(&v2, 0.96), None);
    w2.versions = [(1, REQUESTS / 2.0), (2, REQUESTS / 2.0)].into_iter().collect();
    let o = policy.run(mk(&placement, &t, Some(&v2), &seen(&policy, &w2, 720_000), &known, 720_000, false));
    assert_eq!(o.decision.state.learning.as_ref().unwrap().since_version(), Some(1));
    let a = CampaignId::parse("A").unwrap();
    assert_eq!(o.decision.state.learning.as_ref().unwrap().evidence[&a].windows, 1);
    // The same window seen again (a second round within it) is not counted twice.
    let again =
        policy.run(mk(&placement, &t, Some(&v2), &seen(&policy, &w2, 730_000), &o.decision.state, 730_000, false));
    assert_eq!(again.decision.state.learning.as_ref().unwrap().evidence[&a].windows, 1);
}

#[test]
fn identical_windows_count_apart_by_their_index() {
    let t = targets();
    let placement = PlacementId::parse("p").unwrap();
    let policy = Policy { period_ms: 60_000, ..Policy::default() };
    let state = ControlState::default();
    let v1 = Plan {
        sample_rate: 0.014,
        ..policy.run(mk(&placement, &t, None, &Evidence::default(), &state, 0, true)).plan.unwrap()
    };
    // Two windows with the very same counts (a steady census of a small placement).
    let w = window(&v1, REQUESTS, &truth(&v1, 1.0), None);
    let a = CampaignId::parse("A").unwrap();
    let counted = |s: &ControlState| s.learning.as_ref().map_or(0, |l| l.evidence.get(&a).map_or(0, |e| e.windows));
    let first =
        policy.run(mk(&placement, &t, Some(&v1), &seen(&policy, &w, 120_000), &state, 120_000, false)).decision.state;
    assert_eq!(counted(&first), 1);
    // Another round in the same period: the same window.
    let again =
        policy.run(mk(&placement, &t, Some(&v1), &seen(&policy, &w, 150_000), &first, 150_000, false)).decision.state;
    assert_eq!(counted(&again), 1);
    // The next period: a new window, though its counts are the same.
    let next =
        policy.run(mk(&placement, &t, Some(&v1), &seen(&policy, &w, 180_000), &again, 180_000, false)).decision.state;
    assert_eq!(counted(&next), 2);
}

#[test]
fn windows_split_between_plans_with_new_weights_still_teach() {
    // The worst case for learning: targets nudged every round, so every plan has new
    // weights, and every window is decided half under the plan before (the edges take
    // a new plan up gradually). A is 4 % short of what the model says.
    let placement = PlacementId::parse("p").unwrap();
    let policy = Policy::default();
    let a = CampaignId::parse("A").unwrap();
    let nudged = |k: usize| {
        let mut t = targets();
        t.campaigns[1].rate = crate::Rate::new(0.2 + 0.002 * (k % 2) as f64).unwrap();
        t
    };
    let t0 = nudged(0);
    let mut state = ControlState::default();
    let mut before = Plan {
        sample_rate: 0.014,
        ..policy.run(mk(&placement, &t0, None, &Evidence::default(), &state, 0, true)).plan.unwrap()
    };
    let mut plan = before.clone();
    let mut shares = Vec::new();
    for k in 0..8 {
        let (old, new) = (truth(&before, 0.96), truth(&plan, 0.96));
        let mixed: Vec<f64> = old.iter().zip(&new).map(|(o, n)| (o + n) / 2.0).collect();
        let mut w = window(&plan, REQUESTS + k as f64 * 100.0, &mixed, None);
        w.versions = [(before.version, REQUESTS / 2.0), (plan.version, REQUESTS / 2.0)].into_iter().collect();
        shares.push(mixed[0]);
        let now = (k as u64 + 1) * 60_000;
        let t = nudged(k + 1);
        let o = policy.run(mk(&placement, &t, Some(&plan), &seen(&policy, &w, now), &state, now, true));
        state = o.decision.state;
        let next = o.plan.expect("new targets, new weights");
        assert_ne!(super::weights_fingerprint(&next), super::weights_fingerprint(&plan));
        before = std::mem::replace(&mut plan, next);
    }
    let g = state.corrections.get(&a).copied().unwrap_or(1.0);
    assert!((g - 1.0 / 0.96).abs() < 0.01, "correction {g}, A's shares {shares:?}");
    assert!((shares[7] - 0.3).abs() < 0.003, "A's shares {shares:?}");
}
