//! The accuracy promises, checked on short runs of every scenario (less traffic and
//! fewer seeds than `docs/accuracy.md`; same code and criteria where a short run can
//! show them).

use allot_sim::metrics::{self, Summary};
use allot_sim::scenarios::{self, Knobs};
use allot_sim::world::{self, Settings};

fn simulate(key: &str, minutes: u64, traffic: f64, seeds: u64) -> Summary {
    let knobs = Knobs { minutes: Some(minutes), traffic, ..Knobs::default() };
    let built: Vec<_> = (1..=seeds).map(|s| scenarios::build(key, knobs, s).expect("known scenario")).collect();
    let runs: Vec<_> =
        built.iter().zip(1..).map(|(sc, seed)| world::run(sc, Settings { seed, ..Settings::default() })).collect();
    metrics::summarize(&built, &runs)
}

#[test]
fn steady_traffic_is_met_near_the_minimum_sample() {
    let s = simulate("steady", 30, 0.3, 2);
    assert!(s.within.value >= 0.95, "{s:#?}");
    assert!(s.p95_error.value <= 0.006, "{s:#?}");
    assert!(s.samples_vs_minimum >= 1.0 && s.samples_vs_minimum <= 1.3, "{s:#?}");
    assert!((0.9..=0.995).contains(&s.coverage.value), "{s:#?}");
}

#[test]
fn a_campaign_infeasible_at_night_is_flagged_and_the_others_met() {
    // The first hours of the day: DE/FR asleep, B (30 %, DE/FR only) cannot be met.
    let s = simulate("diurnal", 60, 0.3, 1);
    assert!(s.infeasible_windows > 20, "{s:#?}");
    assert_eq!(s.infeasible_flagged, 1.0, "{s:#?}");
    assert!(s.near_miss_within.is_none_or(|(within, _)| within >= 0.95), "{s:#?}");
    assert!(s.within.value >= 0.9, "{s:#?}");
}

/// Ads that fail to show (by platform), an app that reports no impressions and an
/// unexplained shortfall: the published intervals still cover the truth, so neither
/// the silent app nor the late reports read as ads that did not render.
#[test]
fn render_failures_silent_apps_and_late_reports_are_measured_right() {
    let s = simulate("bias", 40, 0.3, 2);
    assert!(s.within.value >= 0.95, "{s:#?}");
    assert!(s.p95_error.value <= 0.006, "{s:#?}");
    assert!((0.9..=0.99).contains(&s.coverage.value), "{s:#?}");
    assert_eq!(s.false_flags, 0, "{s:#?}");
}

/// Apps that report impressions or not by platform (most web apps not, most iOS apps
/// do), and ads that fail more on the web: A (iOS only) is read as shown on all the
/// traffic, not as over-represented among the reporting apps (it ran about 4 pp under
/// target then), and B (every platform) by each platform's render ratio, not by one
/// over mostly iOS and Android apps (it ran 1.7–1.8 pp under then).
#[test]
fn which_apps_report_reads_no_campaign_off_their_mix() {
    let s = simulate("reporting", 40, 0.3, 2);
    assert!(s.outside.is_empty(), "{s:#?}");
    assert!(s.max_error <= 0.01 && s.p95_error.value <= 0.005, "{s:#?}");
    assert!((0.9..=0.99).contains(&s.coverage.value), "{s:#?}");
}

#[test]
fn faults_cost_little_and_heal() {
    let s = simulate("faults", 120, 0.3, 1);
    assert_eq!(s.faults.len(), 3, "{s:#?}");
    for f in &s.faults {
        assert!(f.recovery_windows <= 3, "{f:?}");
    }
    assert!(s.within.value >= 0.9, "{s:#?}");
}

/// Target changes, a new campaign, a rule changed, a pause, a burst and a lasting
/// shift of the traffic mix: each followed within two windows.
#[test]
fn changes_reconverge() {
    let s = simulate("changes", 180, 0.3, 1);
    let (p50, p95, _, n) = s.reconverge.expect("the scenario changes things");
    assert!(n >= 6 && p50 <= 1.0 && p95 <= 2.0, "{:?}\n{s:#?}", s.reconverge);
}

/// Plans that reach 50 colos over a minute or two, and one colo stale for 10 minutes:
/// changes are still followed within two windows; one made while the colo is stale is
/// followed within three, its requests made up for by the others (uncompensated, until
/// the colo had the plan: six here); and once it has the plan, the overshoot of that
/// make-up is gone within two windows.
#[test]
fn gradual_propagation_and_a_stale_colo() {
    let s = simulate("edge", 60, 0.3, 1);
    let (_, p95, _, n) = s.reconverge.expect("targets change at 20 min");
    assert!(n >= 1 && p95 <= 2.0, "{:?}\n{s:#?}", s.reconverge);
    let (_, p95, _, n) = s.reconverge_in_faults.expect("targets change at 40 min, the colo stale");
    assert!(n == 1 && p95 <= 3.0, "{:?}\n{s:#?}", s.reconverge_in_faults);
    assert!(s.within.value >= 0.95, "{s:#?}");
    assert!(s.faults.iter().all(|f| f.recovery_windows <= 2), "{s:#?}");
}

#[test]
fn many_small_placements_sample_at_census_and_joint_infeasibility_is_flagged() {
    let s = simulate("scale", 12, 0.2, 1);
    assert!(s.unattainable_windows > 0 && s.unattainable_at_census >= 0.95, "{s:#?}");
    assert!(s.infeasible_windows > 0 && s.infeasible_flagged == 1.0, "{s:#?}");
}
