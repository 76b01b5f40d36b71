use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::choose::pick_probabilities;
use crate::choose::tests::plan;
use crate::{CompiledPlan, RequestAttrs};

/// A placement as the controller publishes them: a 0.5 % and a 2 % campaign, two
/// restricted ones, a broad one, and no ad.
fn placement(version: u64) -> CompiledPlan {
    let mut p = plan(
        &[
            ("tiny", 0.005, &[], &[]),
            ("small", 0.02, &[], &["DE"]),
            ("ios", 0.35, &["ios"], &[]),
            ("defr", 0.3, &[], &["DE", "FR"]),
            ("broad", 0.25, &[], &[]),
        ],
        0.2,
    );
    p.version = version;
    CompiledPlan::new(p).unwrap()
}

const PROFILES: [(&str, &str); 6] =
    [("ios", "DE"), ("ios", "US"), ("web", "FR"), ("android", "DE"), ("web", "US"), ("android", "BR")];

/// Per outcome (campaigns, then no ad): `(deliveries, sum of the odds)`.
type Tally = Vec<(f64, f64)>;

/// Serves `n` requests of random profiles (weights `mix`); returns the tally over all
/// requests, and the worst gap seen in any pattern's own tally after any request.
fn serve(plan: &CompiledPlan, spread: &mut Spread, rng: &mut SmallRng, mix: &[f64], n: usize) -> (Tally, f64) {
    let k = plan.plan().campaigns.len();
    let mut tally = vec![(0.0, 0.0); k + 1];
    let mut per_pattern: std::collections::BTreeMap<u64, Tally> = Default::default();
    let mut worst: f64 = 0.0;
    let mut odds = Vec::new();
    let total: f64 = mix.iter().sum();
    for _ in 0..n {
        let mut x = rng.random::<f64>() * total;
        let profile = mix.iter().position(|m| {
            x -= m;
            x < 0.0
        });
        let (platform, country) = PROFILES[profile.unwrap_or(0)];
        let attrs = RequestAttrs { platform: Some(platform), country: Some(country) };
        let choice = plan.choose_spread(attrs, spread, || rng.random());
        assert!(choice.ad.is_none_or(|i| choice.eligible >> i & 1 == 1), "an ineligible campaign was chosen");
        let none = pick_probabilities(plan.plan(), choice.eligible, &mut odds);
        let mine = per_pattern.entry(choice.eligible).or_insert_with(|| vec![(0.0, 0.0); k + 1]);
        for t in [&mut tally, mine] {
            for (t, q) in t.iter_mut().zip(odds.iter().chain([&none])) {
                t.1 += q;
            }
            t[choice.ad.unwrap_or(k)].0 += 1.0;
        }
        worst = per_pattern[&choice.eligible].iter().map(|(d, e)| (d - e).abs()).fold(worst, f64::max);
    }
    (tally, worst)
}

#[test]
fn each_patterns_deliveries_follow_its_odds_to_about_a_request_whatever_the_mix() {
    let mut rng = SmallRng::seed_from_u64(5);
    let plan = placement(1);
    let (mut worst, mut worst_total): (f64, f64) = (0.0, 0.0);
    for _ in 0..20 {
        let mut spread = Spread::new();
        // The mix shifts three times, abruptly, within the run.
        for mix in [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 1.0, 0.1, 3.0, 0.0], [0.0, 2.0, 0.0, 9.0, 0.0, 1.0]] {
            let (tally, w) = serve(&plan, &mut spread, &mut rng, &mix, 20_000);
            worst = worst.max(w);
            worst_total = tally.iter().map(|(d, e)| (d - e).abs()).fold(worst_total, f64::max);
        }
    }
    // Random picks: the 0.5 % campaign alone is off by √(20,000 · 0.005) ≈ 10 requests
    // (one standard deviation) after 20,000 requests, the broad one by ≈ 60.
    assert!(worst <= 2.0, "a campaign strayed {worst} requests from its odds within a pattern");
    // Over the six profiles' five patterns, a request or two each.
    assert!(worst_total <= 5.0, "a campaign strayed {worst_total} requests from its odds");
}

#[test]
fn a_new_plan_keeps_the_credits_of_the_same_campaigns_and_starts_afresh_for_others() {
    let mut rng = SmallRng::seed_from_u64(9);
    let mut spread = Spread::new();
    let mix = [1.0; 6];
    let (before, _) = serve(&placement(1), &mut spread, &mut rng, &mix, 333);
    // Version 2: the same campaigns, other weights.
    let mut p = placement(2).plan().clone();
    for c in &mut p.campaigns {
        c.weight *= 1.5;
    }
    let (after, worst_after) = serve(&CompiledPlan::new(p).unwrap(), &mut spread, &mut rng, &mix, 5_000);
    assert_eq!(spread.streams(), 5, "the streams were kept");
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let (delivered, owed) = (b.0 + a.0, b.1 + a.1);
        assert!((delivered - owed).abs() <= 5.0, "outcome {i}: {delivered} delivered, {owed} owed over both plans");
    }
    assert!(worst_after <= 2.0, "after the change a campaign strayed {worst_after}");
    // Version 3 drops a campaign: patterns now mean other campaigns, the streams restart.
    let mut p = placement(3).plan().clone();
    p.campaigns.remove(1);
    let plan = CompiledPlan::new(p).unwrap();
    plan.choose_spread(RequestAttrs { platform: Some("web"), country: Some("US") }, &mut spread, || 1);
    assert_eq!(spread.streams(), 1);
}

#[test]
fn patterns_past_the_cap_get_plain_picks_and_memory_stays_bounded() {
    let plan = placement(1);
    let mut spread = Spread::new();
    let mut rng = SmallRng::seed_from_u64(3);
    for pattern in 0..10_000u64 {
        let ad = spread.pick(plan.plan(), pattern, || rng.random());
        assert!(ad.is_none_or(|i| i < 5 && pattern >> i & 1 == 1));
    }
    assert_eq!(spread.streams(), MAX_STREAMS);
}

#[test]
fn over_random_starts_the_deliveries_are_unbiased() {
    let mut rng = SmallRng::seed_from_u64(13);
    let plan = placement(1);
    let (runs, n) = (4_000, 50);
    let mut delivered = [0.0; 6];
    let mut owed = [0.0; 6];
    for _ in 0..runs {
        let mut spread = Spread::new();
        let (tally, _) = serve(&plan, &mut spread, &mut rng, &[1.0; 6], n);
        for (i, (d, e)) in tally.iter().enumerate() {
            delivered[i] += d;
            owed[i] += e;
        }
    }
    for (d, e) in delivered.iter().zip(&owed) {
        // What a fresh start costs, per start and outcome: a few hundredths of a request
        // (a start at zero or at random credits costs the 0.5 % campaign 0.2–0.3).
        let per_start = (d - e) / runs as f64;
        assert!(per_start.abs() <= 0.05, "{per_start} requests per start ({d} delivered, {e} owed)");
    }
}

#[test]
fn nobody_eligible_and_no_weight_is_no_ad() {
    let p = CompiledPlan::new(plan(&[("A", 1.0, &["ios"], &[])], 0.0)).unwrap();
    let mut spread = Spread::new();
    for _ in 0..10 {
        let c = p.choose_spread(RequestAttrs { platform: Some("web"), country: None }, &mut spread, || 7);
        assert_eq!(c.ad, None);
    }
    let c = p.choose_spread(RequestAttrs { platform: Some("ios"), country: None }, &mut spread, || 7);
    assert_eq!(c.ad, Some(0));
}

proptest! {
    /// Whatever sequence of eligibility patterns a client sends, every pick is eligible,
    /// no credit strays past its bound, and the streams stay capped.
    #[test]
    fn any_sequence_of_patterns_keeps_picks_eligible_and_credits_bounded(
        patterns in proptest::collection::vec(any::<u64>(), 1..2_000),
        start in any::<u64>(),
    ) {
        let plan = placement(1);
        let mut spread = Spread::new();
        for pattern in patterns {
            let ad = spread.pick(plan.plan(), pattern, || start);
            prop_assert!(ad.is_none_or(|i| i < 5 && pattern >> i & 1 == 1));
        }
        prop_assert!(spread.streams.iter().flat_map(|s| &s.1).all(|c| c.abs() <= CREDIT_BOUND));
        prop_assert!(spread.streams() <= MAX_STREAMS);
    }
}
