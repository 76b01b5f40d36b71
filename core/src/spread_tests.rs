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

/// Serves `n` requests of random profiles (weights `mix`); returns, per outcome (campaigns,
/// then no ad), `(deliveries, sum of the odds)` and the worst gap seen after any request.
fn serve(
    plan: &CompiledPlan,
    spread: &mut Spread,
    rng: &mut SmallRng,
    mix: &[f64],
    n: usize,
) -> (Vec<(f64, f64)>, f64) {
    let k = plan.plan().campaigns.len();
    let mut tally = vec![(0.0, 0.0); k + 1];
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
        for (t, q) in tally.iter_mut().zip(odds.iter().chain([&none])) {
            t.1 += q;
        }
        tally[choice.ad.unwrap_or(k)].0 += 1.0;
        worst = tally.iter().map(|(d, e)| (d - e).abs()).fold(worst, f64::max);
    }
    (tally, worst)
}

#[test]
fn deliveries_follow_the_odds_to_about_a_request_whatever_the_mix() {
    let mut rng = SmallRng::seed_from_u64(5);
    let plan = placement(1);
    let mut worst: f64 = 0.0;
    for _ in 0..20 {
        let mut spread = Spread::new();
        // The mix shifts three times, abruptly, within the run.
        for mix in [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 1.0, 0.1, 3.0, 0.0], [0.0, 2.0, 0.0, 9.0, 0.0, 1.0]] {
            worst = worst.max(serve(&plan, &mut spread, &mut rng, &mix, 20_000).1);
        }
    }
    // Random picks: the 0.5 % campaign alone is off by √(60,000 · 0.005) ≈ 17 requests
    // (one standard deviation) after 60,000 requests, the broad one by ≈ 100.
    assert!(worst <= 2.0, "a campaign strayed {worst} requests from its odds");
}

#[test]
fn a_new_plan_keeps_each_campaigns_credit() {
    let mut rng = SmallRng::seed_from_u64(9);
    let mut spread = Spread::new();
    let mix = [1.0; 6];
    let (before, _) = serve(&placement(1), &mut spread, &mut rng, &mix, 333);
    // Version 2 reorders the campaigns, drops one and adds one.
    let mut p = plan(
        &[
            ("broad", 0.3, &[], &[]),
            ("new", 0.1, &[], &[]),
            ("tiny", 0.005, &[], &[]),
            ("ios", 0.35, &["ios"], &[]),
            ("small", 0.02, &[], &["DE"]),
        ],
        0.2,
    );
    p.version = 2;
    let (after, worst_after) = serve(&CompiledPlan::new(p).unwrap(), &mut spread, &mut rng, &mix, 5_000);
    // Over both plans, "tiny" (index 0, then 2) is owed what both gave it together.
    let delivered = before[0].0 + after[2].0;
    let owed = before[0].1 + after[2].1;
    assert!((delivered - owed).abs() <= 1.0, "tiny: {delivered} delivered, {owed} owed");
    assert!(worst_after <= 2.5, "after the change a campaign strayed {worst_after}");
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
        // What a fresh start costs, per start and outcome: about a tenth of a request
        // (an even start costs the 0.5 % campaign 0.18, about 70 % of its odds here).
        let per_start = (d - e) / runs as f64;
        assert!(per_start.abs() <= 0.12, "{per_start} requests per start ({d} delivered, {e} owed)");
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
    /// and no credit strays past its bound.
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
        prop_assert!(spread.credit.iter().all(|c| c.abs() <= CREDIT_BOUND));
    }
}
