use std::collections::BTreeMap;

use allot_core::estimate::DeliveryBasis;
use prometheus::Registry;
use serde_json::json;

use super::*;
use crate::status::Estimate;

/// Campaign `id` with `target`, measured at `share` in `[low, high]`.
fn campaign(id: &str, target: f64, (low, share, high): (f64, f64, f64), feasible: bool) -> CampaignStatus {
    CampaignStatus {
        id: id.into(),
        target,
        weight: None,
        predicted_share: None,
        eligible_share: None,
        estimate: Estimate { share, low, high, level: 0.95 },
        basis: DeliveryBasis::Allocations,
        samples: 100,
        feasibility: if feasible {
            json!({"status": "feasible"})
        } else {
            json!({"status": "infeasible", "joint": false})
        },
    }
}

/// Campaigns `ids`, each on target.
fn on_target(ids: &[&str]) -> Vec<CampaignStatus> {
    ids.iter().map(|id| campaign(id, 0.1, (0.05, 0.1, 0.15), true)).collect()
}

/// The margin of [`reading`]'s placement.
const MARGIN: f64 = 0.01;

fn reading(campaigns: &[CampaignStatus]) -> PlacementReading<'_> {
    PlacementReading {
        campaigns,
        sample_rate: Some(0.5),
        published_at_ms: Some(1_000),
        attainable: Some(true),
        margin: MARGIN,
        lagging_share: 0.0,
    }
}

/// `placement`'s off-target count and worst gap.
fn off_target(r: &Registry, placement: &str) -> (f64, f64) {
    (series(r, "allot_placement_campaigns_off_target")[placement], series(r, "allot_placement_worst_gap")[placement])
}

fn observe(g: &DeliveryGauges, placement: &str, ids: &[&str]) {
    g.observe(placement, &reading(&on_target(ids)));
}

/// The series of `name`, by `placement/campaign` (or `placement`, or ``).
fn series(r: &Registry, name: &str) -> BTreeMap<String, f64> {
    let Some(family) = r.gather().into_iter().find(|f| f.name() == name) else { return BTreeMap::new() };
    family
        .get_metric()
        .iter()
        .map(|m| {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string());
            let key = [label("placement"), label("campaign")].into_iter().flatten().collect::<Vec<_>>().join("/");
            (key, m.get_gauge().get_value())
        })
        .collect()
}

fn keys(r: &Registry, name: &str) -> Vec<String> {
    series(r, name).into_keys().collect()
}

fn omitted(r: &Registry) -> f64 {
    series(r, "allot_campaign_series_omitted_placements")[""]
}

fn gauges(limit: usize) -> (Registry, DeliveryGauges) {
    let r = Registry::new();
    let g = DeliveryGauges::register(&r, limit);
    (r, g)
}

#[test]
fn placements_past_the_limit_get_placement_level_gauges_only() {
    let (r, g) = gauges(3);
    observe(&g, "p1", &["A", "B"]);
    // 2 + 2 pairs would pass 3.
    observe(&g, "p2", &["A", "B"]);
    // p3 would fit, but p2 came first: the limit fills in the order placements appear.
    observe(&g, "p3", &["A"]);
    for name in ["allot_campaign_target_share", "allot_campaign_estimated_share_high", "allot_campaign_feasible"] {
        assert_eq!(keys(&r, name), ["p1/A", "p1/B"], "{name}");
    }
    for name in [
        "allot_placement_campaigns_off_target",
        "allot_placement_campaigns_infeasible",
        "allot_placement_worst_gap",
        "allot_placement_margin",
        "allot_placement_lagging_share",
    ] {
        assert_eq!(keys(&r, name), ["p1", "p2", "p3"], "{name}");
    }
    assert_eq!(keys(&r, "allot_placement_sample_rate"), ["p1", "p2", "p3"]);
    assert_eq!(omitted(&r), 2.0);
    // Observed again, nothing moves.
    observe(&g, "p3", &["A"]);
    observe(&g, "p2", &["A", "B"]);
    assert_eq!(keys(&r, "allot_campaign_target_share"), ["p1/A", "p1/B"]);
    assert_eq!(omitted(&r), 2.0);
}

#[test]
fn forgetting_a_placement_frees_its_room() {
    let (r, g) = gauges(3);
    observe(&g, "p1", &["A", "B"]);
    observe(&g, "p2", &["A", "B"]);
    observe(&g, "p3", &["A"]);
    g.forget("p1");
    assert!(keys(&r, "allot_campaign_target_share").is_empty());
    assert_eq!(keys(&r, "allot_placement_campaigns_off_target"), ["p2", "p3"]);
    assert_eq!(keys(&r, "allot_placement_sample_rate"), ["p2", "p3"]);
    // The room goes to the first in line, at its next round.
    observe(&g, "p3", &["A"]);
    assert!(keys(&r, "allot_campaign_target_share").is_empty());
    observe(&g, "p2", &["A", "B"]);
    observe(&g, "p3", &["A"]);
    assert_eq!(keys(&r, "allot_campaign_target_share"), ["p2/A", "p2/B", "p3/A"]);
    assert_eq!(omitted(&r), 0.0);
    // A waiting placement forgotten leaves the count too.
    observe(&g, "p4", &["A"]);
    assert_eq!(omitted(&r), 1.0);
    g.forget("p4");
    assert_eq!(omitted(&r), 0.0);
    assert_eq!(keys(&r, "allot_placement_worst_gap"), ["p2", "p3"]);
    assert_eq!(keys(&r, "allot_placement_margin"), ["p2", "p3"]);
    assert_eq!(keys(&r, "allot_placement_lagging_share"), ["p2", "p3"]);
}

#[test]
fn the_share_made_up_for_a_stuck_colo_is_each_placements_own() {
    let (r, g) = gauges(10);
    let campaigns = on_target(&["A"]);
    g.observe("p1", &PlacementReading { lagging_share: 0.12, ..reading(&campaigns) });
    observe(&g, "p2", &["A"]);
    let lagging = series(&r, "allot_placement_lagging_share");
    assert_eq!((lagging["p1"], lagging["p2"]), (0.12, 0.0));
    // The colo caught up: the next round says so.
    observe(&g, "p1", &["A"]);
    assert_eq!(series(&r, "allot_placement_lagging_share")["p1"], 0.0);
}

#[test]
fn an_admitted_placement_keeps_its_series_when_its_campaigns_change() {
    let (r, g) = gauges(2);
    observe(&g, "p1", &["A", "B"]);
    observe(&g, "p2", &["C"]);
    // Past the limit with a campaign more: p1 keeps its series, none are added elsewhere.
    observe(&g, "p1", &["A", "B", "D"]);
    assert_eq!(keys(&r, "allot_campaign_target_share"), ["p1/A", "p1/B", "p1/D"]);
    // A campaign gone: its series go.
    observe(&g, "p1", &["A", "D"]);
    assert_eq!(keys(&r, "allot_campaign_estimated_share"), ["p1/A", "p1/D"]);
    assert_eq!(keys(&r, "allot_campaign_jointly_infeasible"), ["p1/A", "p1/D"]);
    // Still no room for p2 (2 + 1 > 2) until p1 shrinks.
    observe(&g, "p2", &["C"]);
    assert_eq!(omitted(&r), 1.0);
    observe(&g, "p1", &["A"]);
    observe(&g, "p2", &["C"]);
    assert_eq!(keys(&r, "allot_campaign_target_share"), ["p1/A", "p2/C"]);
    assert_eq!(omitted(&r), 0.0);
}

#[test]
fn a_limit_of_zero_keeps_only_placement_level_gauges() {
    let (r, g) = gauges(0);
    observe(&g, "p1", &["A"]);
    assert!(keys(&r, "allot_campaign_target_share").is_empty());
    assert_eq!(keys(&r, "allot_placement_campaigns_off_target"), ["p1"]);
    assert_eq!(omitted(&r), 1.0);
}

#[test]
fn placement_level_gauges_summarise_the_campaigns() {
    let (r, g) = gauges(0);
    let campaigns = [
        // Feasible, the interval below target − margin by 0.04; feasible, above
        // target + margin by 0.01.
        campaign("A", 0.5, (0.40, 0.42, 0.45), true),
        campaign("B", 0.1, (0.12, 0.15, 0.18), true),
        // On target.
        campaign("C", 0.3, (0.28, 0.30, 0.32), true),
        // Infeasible, far off: counted as infeasible, not as off target.
        campaign("D", 0.2, (0.0, 0.0, 0.01), false),
    ];
    g.observe("p", &reading(&campaigns));
    assert_eq!(series(&r, "allot_placement_campaigns_off_target")["p"], 2.0);
    assert_eq!(series(&r, "allot_placement_campaigns_infeasible")["p"], 1.0);
    assert!((series(&r, "allot_placement_worst_gap")["p"] - 0.04).abs() < 1e-12);
    assert_eq!(series(&r, "allot_placement_margin")["p"], MARGIN);
    // Back on target.
    g.observe("p", &reading(&on_target(&["A", "B"])));
    assert_eq!(series(&r, "allot_placement_campaigns_off_target")["p"], 0.0);
    assert_eq!(series(&r, "allot_placement_campaigns_infeasible")["p"], 0.0);
    assert_eq!(series(&r, "allot_placement_worst_gap")["p"], 0.0);
}

#[test]
fn clear_removes_every_series() {
    let (r, g) = gauges(1);
    observe(&g, "p1", &["A"]);
    observe(&g, "p2", &["A"]);
    g.clear();
    let left: Vec<String> = r
        .gather()
        .iter()
        .filter(|f| !f.get_metric().is_empty() && f.name() != "allot_campaign_series_omitted_placements")
        .map(|f| f.name().to_string())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(omitted(&r), 0.0);
    // And the room is free again.
    observe(&g, "p2", &["A"]);
    assert_eq!(keys(&r, "allot_campaign_target_share"), ["p2/A"]);
}

/// The interval is one for the realized share, so missing the target is no fault: only
/// an interval wholly beyond target ± margin breaks the promise.
#[test]
fn off_target_means_the_interval_beyond_the_margin() {
    let (r, g) = gauges(0);
    let campaigns = [
        // The target below the interval, and above one, each within the margin.
        campaign("A", 0.5, (0.505, 0.506, 0.508), true),
        campaign("B", 0.3, (0.292, 0.294, 0.296), true),
        // At census: zero width, the realized share, 0.008 off and within the margin.
        campaign("C", 0.1, (0.108, 0.108, 0.108), true),
        // At census, 0.005 beyond target + margin.
        campaign("D", 0.1, (0.115, 0.115, 0.115), true),
        // Sampled, the interval 0.02 below target − margin.
        campaign("E", 0.3, (0.25, 0.26, 0.27), true),
    ];
    g.observe("p", &reading(&campaigns));
    let (off, worst) = off_target(&r, "p");
    assert_eq!(off, 2.0);
    assert!((worst - 0.02).abs() < 1e-12, "{worst}");
    // The same intervals under a wider margin: all within it.
    g.observe("p", &PlacementReading { margin: 0.05, ..reading(&campaigns) });
    assert_eq!(off_target(&r, "p"), (0.0, 0.0));
    assert_eq!(series(&r, "allot_placement_margin")["p"], 0.05);
}

#[test]
fn a_zero_width_interval_within_the_margin_is_not_off_target() {
    let (r, g) = gauges(0);
    // Values exact in binary, so the edges are hit exactly: on either edge of
    // [0.375, 0.625] is within it, just past it is not.
    let census = |id: &str, share: f64| campaign(id, 0.5, (share, share, share), true);
    let margin = 0.125;
    let within = [census("A", 0.5), census("B", 0.625), census("C", 0.375)];
    g.observe("p", &PlacementReading { margin, ..reading(&within) });
    assert_eq!(off_target(&r, "p"), (0.0, 0.0));
    let past = [census("A", 0.625 + 1.0 / 1024.0), census("B", 0.375)];
    g.observe("p", &PlacementReading { margin, ..reading(&past) });
    assert_eq!(off_target(&r, "p"), (1.0, 1.0 / 1024.0));
}
