use super::*;
use crate::event::tests::allocation;
use crate::{Eligibility, PLAN_FORMAT, PlanCampaign};

const NOW: u64 = 1_700_000_000_000;

fn limits() -> Limits {
    Limits::new(1e-4, 480_000, 60_000).unwrap()
}

fn at(mut e: Event, time_ms: u64) -> Event {
    e.event_time_ms = time_ms;
    e
}

fn plan(placement: &str, version: u64, rate: f64, campaigns: &[&str]) -> Plan {
    Plan {
        format: PLAN_FORMAT,
        placement: PlacementId::parse(placement).unwrap(),
        version,
        issued_at_ms: NOW,
        sample_rate: rate,
        no_ad_weight: 1.0,
        campaigns: campaigns
            .iter()
            .map(|c| PlanCampaign {
                id: CampaignId::parse(*c).unwrap(),
                weight: 1.0,
                creative: serde_json::json!({}),
                eligibility: Eligibility::default(),
            })
            .collect(),
        withdrawn: false,
    }
}

fn home() -> PlacementId {
    PlacementId::parse("home_feed").unwrap()
}

#[test]
fn limits_refuse_bad_rates_and_times_and_admit_the_rest() {
    let l = limits();
    let e = |rate| at(allocation("r", Some("A"), &["A"], rate), NOW);
    for (rate, reason) in [
        (0.0, DropReason::RateInvalid),
        (-0.5, DropReason::RateInvalid),
        (1.5, DropReason::RateInvalid),
        (f64::NAN, DropReason::RateInvalid),
        (f64::INFINITY, DropReason::RateInvalid),
        (1e-160, DropReason::RateBelowMinimum),
        (5e-5, DropReason::RateBelowMinimum),
    ] {
        assert_eq!(l.admit(e(rate), NOW), Err(reason), "{rate}");
    }
    let ok = l.admit(e(1e-4), NOW).unwrap();
    let w = ok.event().weight();
    assert!(w.is_finite() && (w * w).is_finite());
    assert!(l.admit(e(1.0), NOW).is_ok());

    let t = |time| l.admit(at(allocation("r", None, &[], 0.5), time), NOW);
    assert!(t(NOW - 480_000).is_ok(), "the oldest window kept");
    assert_eq!(t(NOW - 480_001), Err(DropReason::TooOld));
    assert_eq!(t(0), Err(DropReason::TooOld));
    assert!(t(NOW + 60_000).is_ok(), "within the skew");
    assert_eq!(t(NOW + 60_001), Err(DropReason::TooNew));
    assert_eq!(t(u64::MAX), Err(DropReason::TooNew));
    assert!(Limits::new(0.0, 1, 1).is_err());
    assert!(Limits::new(1e-200, 1, 1).is_err(), "its squared weight overflows");
    assert!(Limits::new(1.5, 1, 1).is_err());
}

#[test]
fn the_catalogue_admits_only_what_was_published() {
    let mut c = Catalogue::new(1000, 100);
    let ev = |v, ad: Option<&str>, eligible: &[&str], rate| {
        let mut e = at(allocation("r", ad, eligible, rate), NOW);
        e.plan_version = v;
        limits().admit(e, NOW).unwrap()
    };
    let genuine = ev(3, Some("A"), &["A", "B"], 0.25);
    assert!(c.wants_registry(NOW));
    c.learn_registry([home()]);
    assert_eq!(c.wants_plans([genuine.event()], NOW), vec![home()]);
    c.learn_plans(&home(), &[plan("home_feed", 3, 0.25, &["A", "B"]), plan("home_feed", 2, 0.5, &["A"])]);

    assert_eq!(c.judge(&genuine), Ok(()));
    assert_eq!(c.judge(&ev(2, Some("A"), &["A"], 0.5)), Ok(()), "an older version still counts");
    assert_eq!(c.judge(&ev(3, None, &["A", "B"], 0.25)), Ok(()), "no ad");
    assert_eq!(c.judge(&ev(2, Some("B"), &["A", "B"], 0.5)), Err(DropReason::UnknownCampaign));
    assert_eq!(c.judge(&ev(3, Some("Z"), &["Z"], 0.25)), Err(DropReason::UnknownCampaign));
    assert_eq!(c.judge(&ev(3, None, &["A", "Z"], 0.25)), Err(DropReason::UnknownCampaign));
    assert_eq!(c.judge(&ev(3, Some("A"), &["A"], 0.5)), Err(DropReason::RateMismatch));
    assert_eq!(c.judge(&ev(9, Some("A"), &["A"], 0.25)), Err(DropReason::UnknownVersion));
    let mut other = ev(3, Some("A"), &["A"], 0.25).into_event();
    other.placement = PlacementId::parse("made_up").unwrap();
    assert_eq!(c.judge(&limits().admit(other, NOW).unwrap()), Err(DropReason::UnknownPlacement));

    let mut impression = ev(3, Some("A"), &[], 0.25).into_event();
    impression.kind = EventKind::Impression;
    assert_eq!(c.judge(&limits().admit(impression, NOW).unwrap()), Ok(()));

    // A deleted placement's tombstone is never served: no event may name its version.
    c.learn_plans(&home(), &[Plan::withdrawn(home(), 4, NOW, 0.25)]);
    assert_eq!(c.judge(&ev(4, None, &[], 0.25)), Err(DropReason::UnknownVersion));
}

#[test]
fn reads_are_throttled_so_made_up_versions_and_placements_cost_little() {
    let mut c = Catalogue::new(1000, 100);
    let with = |p: &str, v: u64| {
        let mut e = at(allocation("r", None, &[], 0.5), NOW);
        e.placement = PlacementId::parse(p).unwrap();
        e.plan_version = v;
        e
    };
    assert!(c.wants_registry(NOW));
    c.learn_registry([home()]);
    assert_eq!(c.wants_plans([&with("home_feed", 1)], NOW).len(), 1);
    c.learn_plans(&home(), &[plan("home_feed", 1, 0.5, &["A"])]);

    // Known versions, older versions and unregistered placements never cause a read.
    let flood: Vec<Event> =
        (0..1000).map(|i| with("home_feed", i % 2)).chain((0..1000).map(|i| with(&format!("p{i}"), 1))).collect();
    assert!(c.wants_plans(&flood, NOW + 10).is_empty());
    assert!(!c.wants_registry(NOW + 10), "the registry was read moments ago");
    // Made-up newer versions: one read per interval, however many there are.
    let made_up: Vec<Event> = (2..1002).map(|v| with("home_feed", v)).collect();
    assert!(c.wants_plans(&made_up, NOW + 10).is_empty(), "read moments ago");
    assert_eq!(c.next_read_ms(&made_up, NOW + 10), Some(NOW + 1000), "when waiting would help");
    assert_eq!(c.next_read_ms(&flood[..1000], NOW + 10), None, "known and older versions never wait");
    assert_eq!(c.next_read_ms(&flood[1000..], NOW + 10), None, "unregistered placements never wait");
    assert_eq!(c.wants_plans(&made_up, NOW + 1000), vec![home()]);
    assert!(c.wants_plans(&made_up, NOW + 1001).is_empty());
    // A version published since the last read is learnt at the next read.
    c.learn_plans(&home(), &[plan("home_feed", 2, 0.25, &["A"])]);
    let mut v2 = with("home_feed", 2);
    v2.sample_rate = 0.25;
    assert_eq!(c.judge(&limits().admit(v2, NOW).unwrap()), Ok(()));
    assert!(c.wants_registry(NOW + 1000), "once per interval");
    assert!(!c.wants_registry(NOW + 1999));
    // A failed read is retried by the next caller.
    c.plans_read_failed(&home());
    assert_eq!(c.wants_plans([&with("home_feed", 7)], NOW + 1002), vec![home()]);
    c.registry_read_failed();
    assert!(c.wants_registry(NOW + 1002));
    // A placement that leaves the registry (deleted) is forgotten.
    c.learn_registry([]);
    assert_eq!(c.judge(&limits().admit(with("home_feed", 1), NOW).unwrap()), Err(DropReason::UnknownPlacement));
    c.learn_plans(&home(), &[plan("home_feed", 3, 0.5, &["A"])]);
    assert!(c.histories.is_empty(), "plans of unregistered placements are not kept");
}

/// A placement publishes tens of versions an hour for months: the catalogue keeps as
/// many as the plan history holds, evicting the one named least recently, so a version
/// edges still serve stays however many were issued since, and an old one is refused.
#[test]
fn the_catalogue_keeps_the_versions_in_use() {
    let mut c = Catalogue::new(1000, 3);
    c.learn_registry([home()]);
    let named = |v: u64| {
        let mut e = at(allocation("r", Some("A"), &["A"], 0.5), NOW);
        e.plan_version = v;
        limits().admit(e, NOW).unwrap()
    };
    c.learn_plans(&home(), &[plan("home_feed", 1, 0.5, &["A"])]);
    for v in 2..=50 {
        // Edges still serve version 1 (the newer ones never reached them).
        assert_eq!(c.judge(&named(1)), Ok(()), "v{v}");
        c.learn_plans(&home(), &[plan("home_feed", v, 0.5, &["A"])]);
        assert!(c.versions_known() <= 3);
    }
    assert_eq!(c.versions_known(), 3);
    assert_eq!(c.judge(&named(1)), Ok(()));
    assert_eq!(c.judge(&named(50)), Ok(()));
    assert_eq!(c.judge(&named(49)), Ok(()));
    assert_eq!(c.judge(&named(48)), Err(DropReason::UnknownVersion));
    // A history read that returns the old versions again changes nothing it knows.
    c.learn_plans(&home(), &[plan("home_feed", 50, 0.5, &["A"]), plan("home_feed", 1, 0.5, &["A"])]);
    assert_eq!(c.versions_known(), 3);
    assert_eq!(c.judge(&named(1)), Ok(()));
}

#[test]
fn refused_events_cannot_push_out_the_version_edges_serve() {
    let mut c = Catalogue::new(1000, 3);
    c.learn_registry([home()]);
    let named = |v: u64, rate: f64| {
        let mut e = at(allocation("r", Some("A"), &["A"], rate), NOW);
        e.plan_version = v;
        limits().admit(e, NOW).unwrap()
    };
    c.learn_plans(&home(), &(1..=3).map(|v| plan("home_feed", v, 0.5, &["A"])).collect::<Vec<_>>());
    // Edges serve version 3; a key holder names 1 and 2 with a rate they never had.
    assert_eq!(c.judge(&named(3, 0.5)), Ok(()));
    assert_eq!(c.judge(&named(1, 0.25)), Err(DropReason::RateMismatch));
    assert_eq!(c.judge(&named(2, 0.25)), Err(DropReason::RateMismatch));
    c.learn_plans(&home(), &[plan("home_feed", 4, 0.5, &["A"])]);
    assert_eq!(c.judge(&named(3, 0.5)), Ok(()), "the version in use stays");
    assert_eq!(c.judge(&named(1, 0.5)), Err(DropReason::UnknownVersion));
    // Even accepted events naming old versions cannot evict the newest two.
    assert_eq!(c.judge(&named(2, 0.5)), Ok(()));
    c.learn_plans(&home(), &[plan("home_feed", 5, 0.5, &["A"])]);
    assert_eq!(c.judge(&named(4, 0.5)), Ok(()));
    assert_eq!(c.judge(&named(5, 0.5)), Ok(()));
}
