//! Impressions against a real Redis: at most one counted per request, whatever arrives
//! (a retry, a replay through another edge, a second beacon), and each campaign's basis
//! decided by its own evidence, so stray impressions move no other campaign.

use allot_core::contract::keys::PlacementKeys;
use allot_core::{CampaignId, EventKind, WindowStats};
use allot_origin::aggregate::impression_marker_ttl_secs;
use allot_testkit::events::{batch, event, now_ms, plan, record_published};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::{eventually, into_period};
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::{Value, json};

const HOUR_MS: u64 = 3_600_000;

/// An origin with targets for home_feed and, its control loop being off, plan 1 of
/// home_feed at `rate` recorded as published (ingest counts only published plans).
/// Hour-long windows: the "last complete window" cannot roll over mid-test. Not in an
/// hour's first two minutes: the last hour is not yet complete for impressions then,
/// and the status would read the one before.
async fn origin(redis: &RedisServer, rate: f64) -> TestApp {
    into_period(HOUR_MS, 120_000, HOUR_MS).await;
    origin_with_period(redis, rate, HOUR_MS).await
}

pub(crate) async fn origin_with_period(redis: &RedisServer, rate: f64, period_ms: u64) -> TestApp {
    origin_with(redis, rate, period_ms, &[]).await
}

pub(crate) async fn origin_with(redis: &RedisServer, rate: f64, period_ms: u64, env: &[(&str, &str)]) -> TestApp {
    let period = period_ms.to_string();
    let mut env = env.to_vec();
    env.extend([("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_PERIOD_MS", period.as_str())]);
    let app = TestApp::start(config(redis, "", &env)).await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.4}, {"id": "B", "rate": 0.3}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    record_published(&mut redis.conn(), &plan("home_feed", 1, rate, &["A", "B"]));
    app
}

pub(crate) async fn post(app: &TestApp, events: Vec<allot_core::Event>) {
    let r = app.post_signed(&batch(events)).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

/// A second into the last complete hour: the window the status reads.
fn last_hour() -> u64 {
    (now_ms() / HOUR_MS - 1) * HOUR_MS + 1000
}

/// A window's events as the edges send them: allocations before impressions, in
/// bodies of at most 100 events (64 KiB).
async fn post_window(app: &TestApp, events: Vec<allot_core::Event>) {
    let (requests, shown): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.kind == EventKind::Allocation);
    for part in requests.chunks(100).chain(shown.chunks(100)) {
        post(app, part.to_vec()).await;
    }
}

pub(crate) fn id(s: &str) -> CampaignId {
    CampaignId::parse(s).unwrap()
}

#[tokio::test]
async fn one_impression_per_request_is_counted() {
    let redis = RedisServer::start();
    let app = origin(&redis, 0.5).await;
    let t = now_ms();
    let alloc = |r: &str, ad: &str| event(EventKind::Allocation, r, "home_feed", t, Some(ad), &["A", "B"], 1, 0.5);
    let imp = |r: &str, ad: &str| event(EventKind::Impression, r, "home_feed", t, Some(ad), &[], 1, 0.5);
    post(&app, vec![alloc("r1", "A"), alloc("r2", "B"), alloc("r3", "A")]).await;
    // r1's impression twice in one body, again in a later body (a retry, or a replay
    // at another edge), and alongside r3's; r2's once.
    post(&app, vec![imp("r1", "A"), imp("r1", "A")]).await;
    post(&app, vec![imp("r1", "A"), imp("r2", "B")]).await;
    post(&app, vec![imp("r3", "A"), imp("r1", "A")]).await;
    eventually(10, "every entry applied", || async {
        (app.metric("allot_aggregate_entries_total{result=\"applied\"}").await >= 4.0).then_some(())
    })
    .await;
    let s = total_counts(&redis, "home_feed");
    assert_eq!(s.requests.n, 3);
    let a = &s.campaigns[&id("A")];
    assert_eq!((a.impressions.n, a.impressions.ht), (2, 4.0), "r1 and r3, once each");
    assert_eq!((s.campaigns[&id("B")].impressions.n, s.campaigns[&id("B")].impressions.ht), (1, 2.0));

    // The marker outlives any token and the window the impression counted in.
    let mut c = redis.conn();
    let marker = PlacementKeys::of_raw("home_feed").impression("r1", t, "A");
    let ttl: i64 = redis::cmd("TTL").arg(marker).query(&mut c).unwrap();
    let window_ttl = app.app().config.control.window_ttl_secs();
    let window = PlacementKeys::of_raw("home_feed").window(WindowStats::window_index(t, HOUR_MS));
    let wttl: i64 = redis::cmd("TTL").arg(&window).query(&mut c).unwrap();
    assert!(ttl as u64 > impression_marker_ttl_secs(window_ttl) - 30, "marker TTL {ttl}");
    assert!(ttl > wttl + 300, "marker TTL {ttl} vs window TTL {wttl}");
}

#[tokio::test]
async fn an_app_repeating_a_request_id_has_each_decisions_impression_counted_once() {
    let redis = RedisServer::start();
    let app = origin(&redis, 0.5).await;
    let t = now_ms();
    let at = |kind, t, ad: &str, eligible: &[&str]| event(kind, "again", "home_feed", t, Some(ad), eligible, 1, 0.5);
    // Three requests under one id: two decisions of A, a millisecond apart, and one of B.
    let decisions = [(t, "A"), (t + 1, "A"), (t + 1, "B")];
    post(&app, decisions.iter().map(|&(t, ad)| at(EventKind::Allocation, t, ad, &["A", "B"])).collect()).await;
    // Each decision's impression, and each again in another body (a retry).
    let shown: Vec<_> = decisions.iter().map(|&(t, ad)| at(EventKind::Impression, t, ad, &[])).collect();
    post(&app, shown.clone()).await;
    post(&app, shown.into_iter().rev().collect()).await;
    eventually(10, "every entry applied", || async {
        (app.metric("allot_aggregate_entries_total{result=\"applied\"}").await >= 3.0).then_some(())
    })
    .await;
    let s = total_counts(&redis, "home_feed");
    assert_eq!(s.requests.n, 3);
    let (a, b) = (&s.campaigns[&id("A")], &s.campaigns[&id("B")]);
    assert_eq!((a.allocations.n, a.impressions.n), (2, 2), "both of A's decisions, once each");
    assert_eq!((b.allocations.n, b.impressions.n), (1, 1));
}

/// The status API's estimate of each campaign: (basis, share).
async fn estimates(app: &TestApp) -> Vec<(String, String, f64)> {
    let (status, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    assert_eq!(status, 200, "{v}");
    v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c: &Value| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["basis"].as_str().unwrap().to_string(),
                c["estimate"]["share"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Waits until `requests` allocations and at least `imps` impressions are counted.
async fn settled(redis: &RedisServer, requests: u64, imps: u64) {
    eventually(10, "aggregation", || async {
        let s = total_counts(redis, "home_feed");
        let n: u64 = s.campaigns.values().map(|c| c.impressions.n).sum();
        (s.requests.n == requests && n >= imps).then_some(())
    })
    .await
}

#[tokio::test]
async fn stray_impressions_move_no_other_campaign() {
    let redis = RedisServer::start();
    let app = origin(&redis, 1.0).await;
    // 100 requests in the last complete window at rate 1: A 40, B 30, none 30.
    let t = last_hour();
    let alloc = |i: usize| {
        let ad = match i % 10 {
            0..4 => Some("A"),
            4..7 => Some("B"),
            _ => None,
        };
        event(EventKind::Allocation, &format!("q{i}"), "home_feed", t, ad, &["A", "B"], 1, 1.0)
    };
    post(&app, (0..100).map(alloc).collect()).await;
    let imp = |r: String, ad: &str| event(EventKind::Impression, &r, "home_feed", t, Some(ad), &[], 1, 1.0);
    settled(&redis, 100, 0).await;
    let plain = estimates(&app).await;
    assert_eq!(plain, [("A".into(), "allocations".into(), 0.4), ("B".into(), "allocations".into(), 0.3)],);

    // A stray impression for a campaign that does not exist (dropped at ingest: not in
    // the plan), and one for B from a request never allocated: no estimate moves.
    post(&app, vec![imp("stray-1".into(), "Z"), imp("stray-2".into(), "B")]).await;
    settled(&redis, 100, 1).await;
    assert_eq!(app.metric("allot_ingest_dropped_events_total{reason=\"unknown_campaign\"}").await, 1.0);
    assert_eq!(estimates(&app).await, plain);

    // A's apps report impressions for 36 of its 40 ads (90 %): A is measured on
    // impressions; B, with no impressions of its own, keeps its estimate.
    post(&app, (0..100).filter(|i| i % 10 < 4).take(36).map(|i| imp(format!("q{i}"), "A")).collect()).await;
    settled(&redis, 100, 37).await;
    let now = estimates(&app).await;
    assert_eq!(now[0].1, "impressions");
    assert!((now[0].2 - 0.36).abs() < 1e-9, "{now:?}");
    assert_eq!(now[1], plain[1]);
}

/// 100 requests in the last complete window at rate 1 (A 40, B 30, none 30), the first
/// 30 from an app that says it reports no impressions; the other apps report every A.
pub(crate) fn quiet_and_loud(t: u64) -> Vec<allot_core::Event> {
    (0..100)
        .map(|i| {
            let ad = match i % 10 {
                0..4 => Some("A"),
                4..7 => Some("B"),
                _ => None,
            };
            let mut e = event(EventKind::Allocation, &format!("q{i}"), "home_feed", t, ad, &["A", "B"], 1, 1.0);
            e.unreported = i < 30;
            e
        })
        .collect()
}

#[tokio::test]
async fn requests_of_apps_that_report_no_impressions_leave_the_base_of_shown_shares() {
    let redis = RedisServer::start();
    let app = origin(&redis, 1.0).await;
    let t = last_hour();
    post(&app, quiet_and_loud(t)).await;
    let imp = |r: String| event(EventKind::Impression, &r, "home_feed", t, Some("A"), &[], 1, 1.0);
    // Every A of the reporting apps (28 of them) is shown and reported.
    post(&app, (30..100).filter(|i| i % 10 < 4).map(|i| imp(format!("q{i}"))).collect()).await;
    settled(&redis, 100, 28).await;
    let s = total_counts(&redis, "home_feed");
    assert_eq!((s.unreported.n, s.campaigns[&id("A")].unreported.n), (30, 12));
    // A is measured on impressions at its true shown share, 28 of 70, not 28 of 100.
    let now = estimates(&app).await;
    assert_eq!(now[0].1, "impressions");
    assert!((now[0].2 - 0.4).abs() < 1e-9, "{now:?}");
    assert_eq!(now[1], ("B".into(), "allocations".into(), 0.3));

    // Hostile: what only a key holder could send. An impression claiming to come from an
    // app that reports none, or a flag that is not a boolean, refuses the body whole.
    let mut bad = imp("q31".into());
    bad.unreported = true;
    let body = batch(vec![bad]);
    assert!(body.contains("\"unreported\":true"));
    let r = app.post_signed(&body).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_events");
    let odd = batch(vec![quiet_and_loud(t).remove(0)]).replace("\"unreported\":true", "\"unreported\":\"yes\"");
    assert_eq!(app.post_signed(&odd).await.status(), 400);
    assert_eq!(total_counts(&redis, "home_feed"), s, "nothing of either body was counted");
}

/// Hostile: which apps say they report no impressions is the apps' to choose, and it
/// follows their platform. 100 requests: 50 iOS, A given 30 of them and 24 shown and
/// reported; 50 web, 40 of them from apps that report none, A given none. Among the
/// reporting apps' 60 requests A has 24 impressions (0.4); on the whole traffic its
/// shown share is its 30 % of the allocations times its render ratio, 0.8: 0.24.
#[tokio::test]
async fn silent_apps_on_one_platform_move_no_share_on_impressions() {
    let redis = RedisServer::start();
    let app = origin(&redis, 1.0).await;
    let t = last_hour();
    let requests = (0..100)
        .map(|i| {
            let ios = i < 50;
            let ad = (ios && i < 30).then_some("A");
            let mut e = event(EventKind::Allocation, &format!("s{i}"), "home_feed", t, ad, &["A", "B"], 1, 1.0);
            e.platform = Some(if ios { "ios" } else { "web" }.into());
            e.unreported = i >= 60;
            e
        })
        .collect();
    post(&app, requests).await;
    let imp = |i: u32| event(EventKind::Impression, &format!("s{i}"), "home_feed", t, Some("A"), &[], 1, 1.0);
    post(&app, (0..24).map(imp).collect()).await;
    settled(&redis, 100, 24).await;
    let now = estimates(&app).await;
    assert_eq!(now[0].1, "impressions");
    assert!((now[0].2 - 0.24).abs() < 1e-9, "{now:?}");
}

/// A window of 200 requests at time `t` on three platforms, each event carrying its
/// platform as the edge sends it: iOS, A given 40 and 36 shown (0.9); web, A given 60,
/// 30 of them to reporting apps and 18 shown (0.6); "mine", A given 10, all "shown";
/// 90 more without A. Each allocation is followed by its impression, if any.
fn three_platforms(t: u64) -> Vec<allot_core::Event> {
    let mut events = Vec::new();
    for i in 0..200u32 {
        let (platform, given, silent, renders) = match i {
            0..60 => ("ios", i < 40, false, i < 36),
            60..160 => ("web", i < 120, i >= 90, i < 78),
            160..170 => ("mine", true, false, true),
            _ => ("ios", false, false, false),
        };
        let id = format!("p{i}");
        let mut e = event(EventKind::Allocation, &id, "home_feed", t, given.then_some("A"), &["A", "B"], 1, 1.0);
        e.platform = Some(platform.into());
        e.unreported = silent;
        events.push(e);
        if given && !silent && renders {
            let mut imp = event(EventKind::Impression, &id, "home_feed", t, Some("A"), &[], 1, 1.0);
            imp.platform = Some(platform.into());
            events.push(imp);
        }
    }
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::Impression).count(), 64);
    events
}

/// Ads render worse on the web, where most apps report none, so each platform's silent
/// ads are read by that platform's render ratio; an app on a platform of its own,
/// reporting every ad it was given as shown, has its ratio weigh as far as its 10
/// samples go (half of the 20 that make a ratio count fully). In [`three_platforms`]'
/// window A's shown share is (40·0.9 + 60·0.6 + 10·(½·1 + ½·ρ))/200 with ρ = 64/80 the
/// campaign's ratio over all its reporting apps: 0.405. One ratio for all of them read
/// 0.44; "mine" read by its own, 0.41.
#[tokio::test]
async fn each_platform_reads_its_silent_ads_and_a_thin_one_sways_little() {
    let redis = RedisServer::start();
    let app = origin(&redis, 1.0).await;
    let t = last_hour();
    post_window(&app, three_platforms(t)).await;
    settled(&redis, 200, 64).await;
    let now = estimates(&app).await;
    assert_eq!(now[0].1, "impressions");
    assert!((now[0].2 - 0.405).abs() < 1e-9, "{now:?}");
}

/// During a rolling upgrade an older aggregator replica applies some of a window's
/// events without counting platforms: those counts are one part, read by their own
/// ratio as far as they have enough, next to the platforms counted. [`three_platforms`]'
/// window with the web's events applied as an older replica writes them: the web's 60
/// ads, counted on no platform, by their own ratio (0.6), the platforms counted as
/// before: A reads 0.405, as with every platform counted, and the status answers.
#[tokio::test]
async fn a_window_counted_partly_by_an_older_replica_reads_that_part_by_its_ratio() {
    let redis = RedisServer::start();
    let app = origin(&redis, 1.0).await;
    let t = last_hour();
    let (web, counted): (Vec<_>, Vec<_>) =
        three_platforms(t).into_iter().partition(|e| e.platform.as_deref() == Some("web"));
    let mut older = WindowStats::default();
    web.iter().for_each(|e| older.fold(e));
    post(&app, counted).await;
    let key = PlacementKeys::of_raw("home_feed").window(t / HOUR_MS);
    let mut c = redis.conn();
    for (field, v) in
        older.to_fields().into_iter().filter(|(f, _)| !["pa.", "pu.", "pi."].iter().any(|p| f.starts_with(p)))
    {
        let _: f64 = redis::cmd("HINCRBYFLOAT").arg(&key).arg(field).arg(v).query(&mut c).unwrap();
    }
    settled(&redis, 200, 64).await;
    let now = estimates(&app).await;
    assert_eq!(now[0].1, "impressions");
    assert!((now[0].2 - 0.405).abs() < 1e-9, "{now:?}");
}

/// `count` requests at time `t` on `platform`, all given A, from `from` on; `reporting`
/// of them from apps that report, of which `shown` were shown.
fn given_a(t: u64, platform: &str, from: u32, count: u32, reporting: u32, shown: u32) -> Vec<allot_core::Event> {
    let mut events = Vec::new();
    for i in from..from + count {
        let id = format!("h{i}");
        let mut e = event(EventKind::Allocation, &id, "home_feed", t, Some("A"), &["A", "B"], 1, 1.0);
        e.platform = Some(platform.into());
        e.unreported = i - from >= reporting;
        if i - from < shown {
            let mut imp = event(EventKind::Impression, &id, "home_feed", t, Some("A"), &[], 1, 1.0);
            imp.platform = Some(platform.into());
            events.push(imp);
        }
        events.push(e);
    }
    events
}

/// Hostile: an app sends requests that say `impressions=none` on the web, where ads
/// render at half the rate they do on iOS, to have the web's silent ads read by the
/// campaign's ratio. iOS: A given 200, all reporting, 180 shown; web: A given 100, 50
/// reporting, 25 shown; 100 requests without A. With 100 silent web requests more, the
/// web's reporting apps hold exactly a quarter of its allocations: A reads
/// (180 + 200·0.5)/500 = 0.56. Twenty more weigh the web's own ratio 50/(¼·220) and the
/// campaign's, 205/250, the rest: (180 + 220·0.529)/520 = 0.570. The threshold this
/// replaced read the web by the campaign's ratio there, 0.693: twenty requests moving
/// A by 13 pp. Now they move it by less than their own twenty ads.
#[tokio::test]
async fn silent_requests_tip_no_platform_to_the_campaigns_ratio() {
    let redis = RedisServer::start();
    let app = origin(&redis, 1.0).await;
    let t = last_hour();
    let mut events = given_a(t, "ios", 0, 200, 200, 180);
    events.extend(given_a(t, "web", 1_000, 100, 50, 25));
    events.extend(given_a(t, "web", 2_000, 100, 0, 0));
    for i in 0..100 {
        let mut e = event(EventKind::Allocation, &format!("n{i}"), "home_feed", t, None, &["A", "B"], 1, 1.0);
        e.platform = Some("ios".into());
        events.push(e);
    }
    post_window(&app, events).await;
    settled(&redis, 500, 205).await;
    let before = estimates(&app).await;
    assert_eq!(before[0].1, "impressions");
    assert!((before[0].2 - 0.56).abs() < 1e-9, "{before:?}");
    post(&app, given_a(t, "web", 3_000, 20, 0, 0)).await;
    settled(&redis, 520, 205).await;
    let after = estimates(&app).await;
    let web = (50.0 / (0.25 * 220.0)) * 0.5 + (1.0 - 50.0 / (0.25 * 220.0)) * (205.0 / 250.0);
    assert!((after[0].2 - (180.0 + 220.0 * web) / 520.0).abs() < 1e-9, "{after:?}");
    assert!((after[0].2 - before[0].2).abs() < 20.0 / 520.0, "{before:?} → {after:?}");
}
