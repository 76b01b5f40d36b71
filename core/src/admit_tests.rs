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
        platforms: None,
    }
}

fn home() -> PlacementId {
    PlacementId::parse("home_feed").unwrap()
}

/// An event of no ad on `placement` under `version` at rate 0.5.
fn with(placement: &str, version: u64) -> Event {
    let mut e = at(allocation("r", None, &[], 0.5), NOW);
    e.placement = PlacementId::parse(placement).unwrap();
    e.plan_version = version;
    e
}

/// `c` has read `plans` as `p`'s whole history, outside any body's reads.
fn learn(c: &mut Catalogue, p: &PlacementId, plans: &[Plan]) {
    c.reads += 1;
    let read = PlansRead {
        placement: p.clone(),
        first: 0,
        last: c.keep - 1,
        floor: None,
        newest: None,
        seq: c.reads,
        charged: false,
        whole: true,
    };
    let mut body = c.body();
    assert_eq!(c.learn_plans(&read, plans, &mut body), None);
}

/// Makes `read` against `list` (a history as Redis holds it, newest first), page after
/// page as the catalogue asks: the pages read.
fn serve(c: &mut Catalogue, read: &PlansRead, list: &[Plan], body: &mut BodyReads) -> Vec<(usize, usize)> {
    let mut pages = Vec::new();
    let mut page = Some(read.clone());
    while let Some(r) = page {
        pages.push((r.first(), r.last()));
        let plans: Vec<Plan> = list.iter().skip(r.first()).take(r.last() + 1 - r.first()).cloned().collect();
        page = c.learn_plans(&r, &plans, body);
    }
    pages
}

/// Makes every read `c` wants for `events` until it wants none: the pages read.
fn serve_all(
    c: &mut Catalogue,
    events: &[Event],
    lists: &HashMap<PlacementId, Vec<Plan>>,
    body: &mut BodyReads,
    now_ms: u64,
) -> Vec<(usize, usize)> {
    let mut pages = Vec::new();
    loop {
        let reads = c.wants_plans(events, body, now_ms);
        if reads.is_empty() {
            return pages;
        }
        for r in &reads {
            pages.extend(serve(c, r, &lists[r.placement()], body));
        }
    }
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
    assert!(Limits::new(1e-10, 1, 1).is_err(), "a sum of squared weights could overflow");
    assert!(Limits::new(MIN_RATE_FLOOR, 1, 1).is_ok());
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
    let mut body = c.body();
    let reads = c.wants_plans([genuine.event()], &mut body, NOW);
    assert_eq!(reads.iter().map(PlansRead::placement).collect::<Vec<_>>(), [&home()]);
    let history = [plan("home_feed", 3, 0.25, &["A", "B"]), plan("home_feed", 2, 0.5, &["A"])];
    assert_eq!(c.learn_plans(&reads[0], &history, &mut body), None);

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
    learn(&mut c, &home(), &[Plan::withdrawn(home(), 4, NOW, 0.25)]);
    assert_eq!(c.judge(&ev(4, None, &[], 0.25)), Err(DropReason::UnknownVersion));
}

/// An edge names only its plan's platforms, so a made-up one under a plan with a
/// vocabulary is a key holder's; under a plan from before vocabularies, any goes.
#[test]
fn the_catalogue_admits_only_the_platforms_a_version_knows() {
    let mut c = Catalogue::new(1000, 100);
    c.learn_registry([home()]);
    let mut listing = plan("home_feed", 3, 0.5, &["A"]);
    listing.platforms = Some(vec!["web".into()]);
    listing.campaigns[0].eligibility.platforms = vec!["tv".into()];
    learn(&mut c, &home(), &[listing, plan("home_feed", 2, 0.5, &["A"])]);
    let ev = |version, platform: Option<&str>| {
        let mut e = with("home_feed", version);
        e.platform = platform.map(str::to_owned);
        limits().admit(e, NOW).unwrap()
    };
    for known in [None, Some("web"), Some("tv"), Some("other")] {
        assert_eq!(c.judge(&ev(3, known)), Ok(()), "{known:?}");
    }
    for made_up in ["ios", "x0", "webx"] {
        assert_eq!(c.judge(&ev(3, Some(made_up))), Err(DropReason::UnknownPlatform), "{made_up}");
        assert_eq!(c.judge(&ev(2, Some(made_up))), Ok(()), "version 2 has no vocabulary");
    }
}

#[test]
fn reads_are_throttled_so_made_up_versions_and_placements_cost_little() {
    let mut c = Catalogue::new(1000, 100);
    assert!(c.wants_registry(NOW));
    c.learn_registry([home()]);
    let mut lists = HashMap::from([(home(), vec![plan("home_feed", 1, 0.5, &["A"])])]);
    let mut first = c.body();
    assert_eq!(serve_all(&mut c, &[with("home_feed", 1)], &lists, &mut first, NOW), [(0, 99)], "read whole");

    // Known versions, older versions and unregistered placements never cause a read.
    let flood: Vec<Event> =
        (0..1000).map(|i| with("home_feed", i % 2)).chain((0..1000).map(|i| with(&format!("p{i}"), 1))).collect();
    let mut body = c.body();
    assert!(c.wants_plans(&flood, &mut body, NOW + 10).is_empty());
    assert!(c.ready(&flood, &body, NOW + 10), "judged at once");
    assert!(!c.wants_registry(NOW + 10), "the registry was read moments ago");
    // Made-up newer versions: one read per interval, however many there are.
    let made_up: Vec<Event> = (2..1002).map(|v| with("home_feed", v)).collect();
    assert!(c.wants_plans(&made_up, &mut body, NOW + 10).is_empty(), "read moments ago");
    assert!(!c.ready(&made_up, &body, NOW + 10));
    assert_eq!(c.next_read_ms(&made_up, &body, NOW + 10), Some(NOW + 1000), "when waiting would help");
    assert_eq!(c.next_read_ms(&flood[..1000], &body, NOW + 10), None, "known and older versions never wait");
    assert_eq!(c.next_read_ms(&flood[1000..], &body, NOW + 10), None, "unregistered placements never wait");
    assert_eq!(serve_all(&mut c, &made_up, &lists, &mut body, NOW + 1000), [(0, 0)], "the newest entry alone");
    // Read since the body arrived: its versions still unknown were never issued.
    assert_eq!(c.next_read_ms(&made_up, &body, NOW + 1000), None);
    assert!(c.wants_plans(&made_up, &mut body, NOW + 5000).is_empty());
    // A body that arrived after that read began waits for the next.
    let mut later = c.body();
    assert!(c.wants_plans(&made_up, &mut later, NOW + 1001).is_empty());
    assert_eq!(c.next_read_ms(&made_up, &later, NOW + 1001), Some(NOW + 2000));
    // A version issued since the last read is learnt at the next, from its new entries.
    lists.get_mut(&home()).unwrap().insert(0, plan("home_feed", 2, 0.25, &["A"]));
    let mut v2 = with("home_feed", 2);
    v2.sample_rate = 0.25;
    assert_eq!(serve_all(&mut c, &[v2.clone()], &lists, &mut later, NOW + 2000), [(0, 0), (1, 1)]);
    assert_eq!(c.judge(&limits().admit(v2, NOW).unwrap()), Ok(()));
    assert!(c.wants_registry(NOW + 1000), "once per interval");
    assert!(!c.wants_registry(NOW + 1999));
    // A failed read is retried by the next caller.
    assert_eq!(c.wants_plans([&with("home_feed", 7)], &mut c.body(), NOW + 3000).len(), 1);
    c.plans_read_failed(&home());
    assert_eq!(c.wants_plans([&with("home_feed", 7)], &mut c.body(), NOW + 3001).len(), 1);
    c.registry_read_failed();
    assert!(c.wants_registry(NOW + 1002));
    // A placement that leaves the registry (deleted) is forgotten.
    c.learn_registry([]);
    assert_eq!(c.judge(&limits().admit(with("home_feed", 1), NOW).unwrap()), Err(DropReason::UnknownPlacement));
    learn(&mut c, &home(), &[plan("home_feed", 3, 0.5, &["A"])]);
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
    learn(&mut c, &home(), &[plan("home_feed", 1, 0.5, &["A"])]);
    for v in 2..=50 {
        // Edges still serve version 1 (the newer ones never reached them).
        assert_eq!(c.judge(&named(1)), Ok(()), "v{v}");
        learn(&mut c, &home(), &[plan("home_feed", v, 0.5, &["A"])]);
        assert!(c.versions_known() <= 3);
    }
    assert_eq!(c.versions_known(), 3);
    assert_eq!(c.judge(&named(1)), Ok(()));
    assert_eq!(c.judge(&named(50)), Ok(()));
    assert_eq!(c.judge(&named(49)), Ok(()));
    assert_eq!(c.judge(&named(48)), Err(DropReason::UnknownVersion));
    // A history read that returns the old versions again changes nothing it knows.
    learn(&mut c, &home(), &[plan("home_feed", 50, 0.5, &["A"]), plan("home_feed", 1, 0.5, &["A"])]);
    assert_eq!(c.versions_known(), 3);
    assert_eq!(c.judge(&named(1)), Ok(()));
}

/// A publisher failing for long issues more plans than the history keeps: the plan
/// edges serve falls off its end, and an origin started then learns it from the plan
/// stored as in force, read with its first whole read.
#[test]
fn an_origin_started_after_the_version_in_force_left_the_history_still_knows_it() {
    let named = |v: u64| {
        let mut e = at(allocation("r", Some("A"), &["A"], 0.5), NOW);
        e.plan_version = v;
        limits().admit(e, NOW).unwrap()
    };
    let fresh = || {
        let mut c = Catalogue::new(1000, 3);
        c.learn_registry([home()]);
        let mut body = c.body();
        let wanted = c.wants_plans([named(1).event()], &mut body, NOW);
        assert!(wanted.len() == 1 && wanted[0].is_whole(), "{wanted:?}");
        let trimmed: Vec<Plan> = (8..=10).rev().map(|v| plan("home_feed", v, 0.5, &["A"])).collect();
        assert_eq!(c.learn_plans(&wanted[0], &trimmed, &mut body), None);
        c
    };
    let mut without = fresh();
    assert_eq!(without.judge(&named(1)), Err(DropReason::UnknownVersion), "what the history alone says");
    let mut c = fresh();
    c.learn_in_force(&plan("home_feed", 1, 0.5, &["A"]));
    assert_eq!(c.judge(&named(1)), Ok(()));
    assert_eq!(c.judge(&named(10)), Ok(()));
    // Events naming it keep it, whatever is issued next.
    for v in 11..=20 {
        learn(&mut c, &home(), &[plan("home_feed", v, 0.5, &["A"])]);
        assert_eq!(c.judge(&named(1)), Ok(()), "v{v}");
    }
    // Only a registered placement's plan is learnt.
    c.learn_in_force(&plan("elsewhere", 1, 0.5, &["A"]));
    assert_eq!(c.versions_known(), 3);
    // A refresh is not a whole read.
    let mut body = c.body();
    let refresh = c.wants_plans([named(21).event()], &mut body, NOW + 10_000);
    assert!(refresh.iter().all(|r| !r.is_whole()), "{refresh:?}");
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
    learn(&mut c, &home(), &(1..=3).map(|v| plan("home_feed", v, 0.5, &["A"])).collect::<Vec<_>>());
    // Edges serve version 3; a key holder names 1 and 2 with a rate they never had.
    assert_eq!(c.judge(&named(3, 0.5)), Ok(()));
    assert_eq!(c.judge(&named(1, 0.25)), Err(DropReason::RateMismatch));
    assert_eq!(c.judge(&named(2, 0.25)), Err(DropReason::RateMismatch));
    learn(&mut c, &home(), &[plan("home_feed", 4, 0.5, &["A"])]);
    assert_eq!(c.judge(&named(3, 0.5)), Ok(()), "the version in use stays");
    assert_eq!(c.judge(&named(1, 0.5)), Err(DropReason::UnknownVersion));
    // Even accepted events naming old versions cannot evict the newest two.
    assert_eq!(c.judge(&named(2, 0.5)), Ok(()));
    learn(&mut c, &home(), &[plan("home_feed", 5, 0.5, &["A"])]);
    assert_eq!(c.judge(&named(4, 0.5)), Ok(()));
    assert_eq!(c.judge(&named(5, 0.5)), Ok(()));
}

/// Newest first, as the control loop leaves a history: `versions` of `placement`.
fn history(placement: &str, versions: impl DoubleEndedIterator<Item = u64>) -> Vec<Plan> {
    versions.rev().map(|v| plan(placement, v, 0.5, &["A"])).collect()
}

#[test]
fn a_refresh_reads_the_newest_entry_and_then_only_the_new_ones() {
    let mut c = Catalogue::new(1000, 100);
    c.learn_registry([home()]);
    let mut lists = HashMap::from([(home(), history("home_feed", 1..=100))]);
    let mut body = c.body();
    assert_eq!(serve_all(&mut c, &[with("home_feed", 100)], &lists, &mut body, NOW), [(0, 99)], "first: whole");
    // Nothing issued since: the head alone, however long the history.
    let made_up = [with("home_feed", u64::MAX)];
    let mut body = c.body();
    assert_eq!(serve_all(&mut c, &made_up, &lists, &mut body, NOW + 1000), [(0, 0)]);
    // Five issued since: the head, then pages of one, two and four entries, up to one
    // it held; every new version learnt.
    let list = lists.get_mut(&home()).unwrap();
    *list = history("home_feed", 6..=105);
    let mut body = c.body();
    let pages = serve_all(&mut c, &[with("home_feed", 103)], &lists, &mut body, NOW + 2000);
    assert_eq!(pages, [(0, 0), (1, 1), (2, 3), (4, 7)]);
    for v in 101..=105 {
        assert_eq!(c.judge(&limits().admit(with("home_feed", v), NOW).unwrap()), Ok(()), "v{v}");
    }
    assert_eq!(c.versions_known(), 100, "as many as the history holds");
}

/// A body naming a made-up version of each of 1,000 placements with 100 plans each:
/// eight reads of one entry, then the rest are unknown without a read, and the next
/// body reads eight others; the genuine events of both are judged as before.
#[test]
fn one_body_causes_at_most_eight_refreshes_that_teach_nothing() {
    let mut c = Catalogue::new(1000, 100);
    assert!(c.wants_registry(NOW));
    let names: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    let lists: HashMap<PlacementId, Vec<Plan>> =
        names.iter().map(|n| (PlacementId::parse(n.as_str()).unwrap(), history(n, 1..=100))).collect();
    c.learn_registry(lists.keys().cloned());
    for (p, list) in &lists {
        learn(&mut c, p, list);
    }
    let mut events = vec![with("p0", 100), with("p999", 50)];
    events.extend(names.iter().map(|n| with(n, u64::MAX)));
    for n in 0..2 {
        let mut body = c.body();
        let pages = serve_all(&mut c, &events, &lists, &mut body, NOW);
        assert_eq!(pages, [(0, 0); REFRESHES_PER_BODY], "body {n}");
        assert_eq!(c.next_read_ms(&events, &body, NOW), None, "nothing to wait for");
        assert!(c.ready(&events, &body, NOW), "judged at once");
        let judged: Vec<_> = events.iter().map(|e| c.judge(&limits().admit(e.clone(), NOW).unwrap())).collect();
        assert_eq!(judged[..2], [Ok(()), Ok(())]);
        assert!(judged[2..].iter().all(|j| *j == Err(DropReason::UnknownVersion)));
    }
    let read = c.histories.values().filter(|h| h.read_ms.is_some()).count();
    assert_eq!(read, 2 * REFRESHES_PER_BODY, "the second body read other placements");
}

/// A round issues a version of many placements at once, and an edge's body names them
/// all: every refresh learns its placement's new plan, so none counts against the body.
#[test]
fn refreshes_that_learn_a_plan_issued_since_do_not_count() {
    let mut c = Catalogue::new(1000, 100);
    let names: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let mut lists: HashMap<PlacementId, Vec<Plan>> =
        names.iter().map(|n| (PlacementId::parse(n.as_str()).unwrap(), history(n, 1..=10))).collect();
    c.learn_registry(lists.keys().cloned());
    for (p, list) in &lists {
        learn(&mut c, p, list);
    }
    for (p, list) in &mut lists {
        *list = history(p.as_str(), 1..=11);
    }
    let events: Vec<Event> = names.iter().map(|n| with(n, 11)).collect();
    let mut body = c.body();
    let pages = serve_all(&mut c, &events, &lists, &mut body, NOW);
    assert_eq!(pages.len(), 2 * 50, "the head and the entry under it, for each");
    assert_eq!(body.refreshes_left, REFRESHES_PER_BODY);
    assert!(events.iter().all(|e| c.judge(&limits().admit(e.clone(), NOW).unwrap()).is_ok()));
}

/// A refresh that fails after its first page has learnt that page; the next one starts
/// again from the head, so the versions under it are still learnt.
#[test]
fn a_read_that_fails_part_way_is_made_again_from_the_head() {
    let mut c = Catalogue::new(1000, 100);
    c.learn_registry([home()]);
    learn(&mut c, &home(), &history("home_feed", 1..=3));
    let list = history("home_feed", 1..=6);
    let v4 = [with("home_feed", 4)];
    let mut body = c.body();
    let reads = c.wants_plans(&v4, &mut body, NOW);
    let next = c.learn_plans(&reads[0], &list[..1], &mut body).expect("the page under the head");
    assert_eq!((next.first(), next.last()), (1, 1));
    c.plans_read_failed(&home());
    assert_eq!(c.judge(&limits().admit(with("home_feed", 6), NOW).unwrap()), Ok(()), "the head was learnt");
    assert_eq!(c.judge(&limits().admit(v4[0].clone(), NOW).unwrap()), Err(DropReason::UnknownVersion));
    let lists = HashMap::from([(home(), list)]);
    let mut retry = c.body();
    assert_eq!(serve_all(&mut c, &v4, &lists, &mut retry, NOW + 1), [(0, 0), (1, 1), (2, 3)]);
    for v in 4..=5 {
        assert_eq!(c.judge(&limits().admit(with("home_feed", v), NOW).unwrap()), Ok(()), "v{v}");
    }
}

/// A body with nothing to read does not wait for another caller's reads; one whose
/// placement is being read, or whose registry is due, does.
#[test]
fn only_a_body_that_needs_a_read_waits_for_one() {
    let mut c = Catalogue::new(1000, 100);
    let known = [with("home_feed", 1)];
    assert!(!c.ready(&known, &c.body(), NOW), "nothing is known before the registry is read");
    assert!(c.wants_registry(NOW));
    assert!(!c.ready(&known, &c.body(), NOW), "nor while it is being read");
    c.learn_registry([home()]);
    let mut first = c.body();
    let reads = c.wants_plans(&known, &mut first, NOW);
    assert!(!c.ready(&known, &c.body(), NOW + 1), "a first read is being made");
    assert_eq!(c.learn_plans(&reads[0], &[plan("home_feed", 1, 0.5, &["A"])], &mut first), None);
    assert!(c.ready(&known, &c.body(), NOW + 1));
    assert!(!c.ready(&[with("home_feed", 2)], &c.body(), NOW + 1), "a newer version waits for a read");
    assert!(!c.ready(&known, &c.body(), NOW + 1000), "the registry is due");
}
