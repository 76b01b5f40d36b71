use proptest::prelude::*;

use super::*;
use crate::event::tests::allocation;

fn impression(id: &str, ad: &str, rate: f64) -> Event {
    let mut e = allocation(id, Some(ad), &[], rate);
    e.kind = EventKind::Impression;
    e
}

#[test]
fn folds_horvitz_thompson_counts() {
    let mut s = WindowStats::default();
    s.fold(&allocation("r1", Some("A"), &["B", "A"], 0.5));
    s.fold(&allocation("r2", None, &[], 0.25));
    s.fold(&impression("r1", "A", 0.5));
    assert_eq!(s.requests, Tally { ht: 6.0, n: 2 });
    assert_eq!(s.requests_sq, 4.0 + 16.0);
    let a = &s.campaigns[&CampaignId::parse("A").unwrap()];
    assert_eq!(a.allocations, Tally { ht: 2.0, n: 1 });
    assert_eq!(a.impressions, Tally { ht: 2.0, n: 1 });
    assert_eq!(s.profiles["ios:DE"], 6.0);
    assert_eq!(parse_profile_key("ios:DE"), (Some("ios"), Some("DE")));
    assert_eq!(parse_profile_key(":"), (None, None));
    assert_eq!(parse_profile_key(&profile_key(None, Some("FR"))), (None, Some("FR")));
    assert_eq!(s.impression_coverage(), 1.0);
    assert!((s.effective_samples() - 36.0 / 20.0).abs() < 1e-12);
    assert_eq!(s.reporting(), (s.requests, s.requests_sq));
}

/// An app that said it reports no impressions stays a request and an allocation,
/// but leaves the base of shown shares and of the coverage.
#[test]
fn unreported_requests_leave_the_base_of_shown_shares() {
    let a = CampaignId::parse("A").unwrap();
    let mut s = WindowStats::default();
    s.fold(&allocation("r1", Some("A"), &["A"], 0.5));
    s.fold(&impression("r1", "A", 0.5));
    let mut quiet = allocation("r2", Some("A"), &["A"], 0.25);
    quiet.unreported = true;
    s.fold(&quiet);
    assert_eq!(s.requests, Tally { ht: 6.0, n: 2 });
    assert_eq!(s.campaigns[&a].allocations, Tally { ht: 6.0, n: 2 });
    assert_eq!(s.reporting(), (Tally { ht: 2.0, n: 1 }, 4.0));
    assert_eq!(s.campaigns[&a].reporting_allocations(), Tally { ht: 2.0, n: 1 });
    // Every reporting allocation came back: full coverage, not a third.
    assert_eq!(s.impression_coverage(), 1.0);
}

#[test]
fn fields_round_trip() {
    let mut s = WindowStats::default();
    s.fold(&allocation("r1", Some("A"), &["A", "B"], 0.5));
    s.fold(&impression("r1", "A", 0.5));
    s.fold(&allocation("r2", None, &[], 1.0));
    let mut quiet = allocation("r3", Some("A"), &["A"], 0.25);
    quiet.unreported = true;
    s.fold(&quiet);
    let back = WindowStats::from_fields(s.to_fields()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.unreported, Tally { ht: 4.0, n: 1 });
    assert_eq!(back.campaigns[&CampaignId::parse("A").unwrap()].unreported, Tally { ht: 4.0, n: 1 });
    assert_eq!(back.campaigns[&CampaignId::parse("A").unwrap()].allocations_sq, 4.0 + 16.0);
    // A window stored before the squared sums existed still reads, with them at 0.
    let old: Vec<(String, f64)> = s
        .to_fields()
        .into_iter()
        .filter(|(k, _)| (k == "req.sq" || !k.ends_with(".sq")) && !k.starts_with("u."))
        .filter(|(k, _)| !["pa.", "pu.", "pi."].iter().any(|p| k.starts_with(p)))
        .collect();
    let back = WindowStats::from_fields(old).unwrap();
    assert_eq!(back.campaigns[&CampaignId::parse("A").unwrap()].allocations_sq, 0.0);
    assert_eq!(back.requests, s.requests);
    // … and, without the unreported fields, as a window where every app reports.
    assert_eq!(back.reporting(), (s.requests, s.requests_sq));
    // Late requests are kept and merged like the rest.
    let mut late = WindowStats::of_event(&allocation("r4", None, &[], 0.5));
    late.mark_late();
    assert_eq!(late.late, Tally { ht: 2.0, n: 1 });
    let mut merged = s.clone();
    merged.merge(&late);
    assert_eq!(WindowStats::from_fields(merged.to_fields()).unwrap(), merged);
    assert_eq!((merged.late, s.late), (Tally { ht: 2.0, n: 1 }, Tally::default()));
    // So are late impressions.
    let mut shown = allocation("r1", Some("A"), &[], 0.5);
    shown.kind = EventKind::Impression;
    let mut late = WindowStats::of_event(&shown);
    late.mark_impressions_late();
    let a = CampaignId::parse("A").unwrap();
    assert_eq!((late.campaigns[&a].late_impressions, late.late), (Tally { ht: 2.0, n: 1 }, Tally::default()));
    merged.merge(&late);
    assert_eq!(WindowStats::from_fields(merged.to_fields()).unwrap(), merged);
    assert_eq!(merged.campaigns[&a].late_impressions, Tally { ht: 2.0, n: 1 });
}

/// A window written by a newer replica, with fields this build does not know, reads as
/// this build would have written it; a known kind that does not parse is still refused.
#[test]
fn fields_of_unknown_kinds_are_skipped_and_corrupt_known_ones_refused() {
    let mut s = WindowStats::default();
    s.fold(&allocation("r1", Some("A"), &["A"], 0.5));
    s.fold(&impression("r1", "A", 0.5));
    let mut fields = s.to_fields();
    let unknown = [
        "x.y",
        "zz",
        "li.A.sq",
        "u.A.sq",
        "a.A.zz",
        "a.B.zz",
        "i.noid",
        "q.A.ht",
        "pu.A.web.sq",
        "pa.A.web.n",
        "pi.A.ht",
    ];
    for unknown in unknown {
        fields.push((unknown.to_string(), 7.0));
    }
    let (read, mut skipped) = WindowStats::read_fields(fields).unwrap();
    assert_eq!(read, s, "no campaign B, nothing moved");
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "a.A.zz",
            "a.B.zz",
            "i.noid",
            "li.A.sq",
            "pa.A.web.n",
            "pi.A.ht",
            "pu.A.web.sq",
            "q.A.ht",
            "u.A.sq",
            "x.y",
            "zz"
        ]
    );
    for corrupt in ["a.not an id!.ht", "v.x", "li..n", "pa.not an id!.web.ht"] {
        assert!(WindowStats::from_fields([(corrupt, 1.0)]).is_err(), "{corrupt}");
    }
}

/// Each campaign's allocations, reporting allocations and impressions are also counted
/// per platform (none is a platform of its own), and stored and read back as such.
#[test]
fn counts_each_campaign_per_platform() {
    let on = |mut e: Event, platform: Option<&str>| {
        e.platform = platform.map(str::to_string);
        e
    };
    let mut s = WindowStats::default();
    s.fold(&on(allocation("r1", Some("A"), &["A"], 0.5), Some("web")));
    s.fold(&on(impression("r1", "A", 0.5), Some("web")));
    let mut quiet = on(allocation("r2", Some("A"), &["A"], 0.25), Some("web"));
    quiet.unreported = true;
    s.fold(&quiet);
    s.fold(&on(allocation("r3", Some("A"), &["A"], 1.0), None));
    s.fold(&on(allocation("r4", None, &["A"], 1.0), Some("ios")));
    let a = CampaignId::parse("A").unwrap();
    let web = s.platforms[&(a.clone(), "web".to_string())];
    assert_eq!(web, PlatformCounts { allocations: 6.0, unreported: 4.0, impressions: 2.0 });
    assert_eq!(web.reporting(), 2.0);
    assert_eq!(s.platforms[&(a.clone(), String::new())].reporting(), 1.0);
    assert_eq!(s.platforms.len(), 2, "no ad, no platform counts: {:?}", s.platforms);
    assert_eq!(WindowStats::from_fields(s.to_fields()).unwrap(), s);
    assert_eq!(s.with_stragglers(0.5).platforms[&(a.clone(), "web".to_string())].allocations, 12.0);
}

#[test]
fn folds_by_window_of_event_time() {
    let at = |id: &str, ad: Option<&str>, ms: u64| {
        let mut e = allocation(id, ad, &["A"], 0.5);
        e.event_time_ms = ms;
        e
    };
    let events = [at("r1", Some("A"), 59_999), at("r2", None, 60_000), at("r3", Some("A"), 125_000)];
    let windows = WindowStats::fold_windows(&events, 60_000);
    assert_eq!(windows.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(windows[&0], WindowStats::of_event(&events[0]));
    assert_eq!(windows[&1], WindowStats::of_event(&events[1]));
    assert_eq!(windows[&2].requests, Tally { ht: 2.0, n: 1 });
    // A zero period is treated as 1 ms rather than dividing by zero.
    assert_eq!(WindowStats::fold_windows(&events, 0).len(), 3);
    assert!(WindowStats::fold_windows(&[], 60_000).is_empty());
}

fn arb_event() -> impl Strategy<Value = Event> {
    (0u8..4, prop::sample::select(vec![0.125, 0.25, 0.5, 1.0]), 0u8..3, 1u64..4).prop_map(
        |(ad, rate, kind, version)| {
            let ids = ["A", "B", "C"];
            let ad = (ad < 3).then(|| ids[ad as usize]);
            let mut e = allocation("r", ad, &ids, rate);
            e.plan_version = version;
            e.platform = [None, Some("web".to_string())][usize::from(version % 2 == 0)].clone();
            match kind {
                1 if ad.is_some() => e.kind = EventKind::Impression,
                2 => e.unreported = true,
                _ => {}
            }
            e
        },
    )
}

proptest! {
    /// Merging per-event stats in any grouping equals folding all events.
    #[test]
    fn merge_is_associative(events in prop::collection::vec(arb_event(), 0..40), split in 0usize..40) {
        let split = split.min(events.len());
        let mut all = WindowStats::default();
        events.iter().for_each(|e| all.fold(e));
        let mut left = WindowStats::default();
        events[..split].iter().for_each(|e| left.fold(e));
        let mut right = WindowStats::default();
        events[split..].iter().for_each(|e| right.merge(&WindowStats::of_event(e)));
        let mut merged = right.clone();
        merged.merge(&left);
        // Rates are powers of two, so the sums are exact.
        prop_assert_eq!(merged, all);
    }
}

#[test]
fn stragglers_scale_every_count_and_no_share() {
    let mut s = WindowStats::default();
    s.fold(&allocation("r1", Some("A"), &["A"], 0.5));
    s.fold(&allocation("r2", None, &["A"], 1.0));
    let a = CampaignId::parse("A").unwrap();
    let more = s.with_stragglers(0.2);
    assert_eq!(more.requests, Tally { ht: 3.0 / 0.8, n: 2 });
    assert!((more.requests_sq - 5.0 / 0.64).abs() < 1e-12);
    assert_eq!(more.campaigns[&a].allocations.ht / more.requests.ht, 2.0 / 3.0);
    assert_eq!(more.profiles.values().sum::<f64>(), more.requests.ht);
    // Nothing missing, or nonsense: unchanged. Past the cap: the cap.
    assert_eq!(s.with_stragglers(0.0), s);
    assert_eq!(s.with_stragglers(f64::NAN), s);
    assert_eq!(s.with_stragglers(-1.0), s);
    assert_eq!(s.with_stragglers(0.99), s.with_stragglers(MAX_STRAGGLERS));
    assert_eq!(s.with_stragglers(0.99).requests.ht, 6.0);
}
