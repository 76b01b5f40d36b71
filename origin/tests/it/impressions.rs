//! Impressions against a real Redis: at most one counted per request, whatever arrives
//! (a retry, a replay through another edge, a second beacon), and each campaign's basis
//! decided by its own evidence, so stray impressions move no other campaign.

use allot_core::contract::keys::PlacementKeys;
use allot_core::{CampaignId, EventKind, WindowStats};
use allot_origin::aggregate::impression_marker_ttl_secs;
use allot_testkit::events::{batch, event, now_ms, plan, record_published};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::{Value, json};

const HOUR_MS: u64 = 3_600_000;

/// An origin with targets for home_feed and, its control loop being off, plan 1 of
/// home_feed at `rate` recorded as published (ingest counts only published plans).
async fn origin(redis: &RedisServer, rate: f64) -> TestApp {
    // Hour-long windows: the "last complete window" cannot roll over mid-test.
    let app = TestApp::start(config(
        redis,
        "",
        &[("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_PERIOD_MS", &HOUR_MS.to_string())],
    ))
    .await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.4}, {"id": "B", "rate": 0.3}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    record_published(&mut redis.conn(), &plan("home_feed", 1, rate, &["A", "B"]));
    app
}

async fn post(app: &TestApp, events: Vec<allot_core::Event>) {
    let r = app.post_signed(&batch(events)).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

fn id(s: &str) -> CampaignId {
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
    let ttl: i64 = redis::cmd("TTL").arg(PlacementKeys::of_raw("home_feed").impression("r1")).query(&mut c).unwrap();
    let window_ttl = app.app().config.control.window_ttl_secs();
    let window = PlacementKeys::of_raw("home_feed").window(WindowStats::window_index(t, HOUR_MS));
    let wttl: i64 = redis::cmd("TTL").arg(&window).query(&mut c).unwrap();
    assert!(ttl as u64 > impression_marker_ttl_secs(window_ttl) - 30, "marker TTL {ttl}");
    assert!(ttl > wttl + 300, "marker TTL {ttl} vs window TTL {wttl}");
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

/// Waits until the 100 allocations and at least `imps` impressions are counted.
async fn settled(redis: &RedisServer, imps: u64) {
    eventually(10, "aggregation", || async {
        let s = total_counts(redis, "home_feed");
        let n: u64 = s.campaigns.values().map(|c| c.impressions.n).sum();
        (s.requests.n == 100 && n >= imps).then_some(())
    })
    .await
}

#[tokio::test]
async fn stray_impressions_move_no_other_campaign() {
    let redis = RedisServer::start();
    let app = origin(&redis, 1.0).await;
    // 100 requests in the last complete window at rate 1: A 40, B 30, none 30.
    let t = (now_ms() / HOUR_MS - 1) * HOUR_MS + 1000;
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
    settled(&redis, 0).await;
    let plain = estimates(&app).await;
    assert_eq!(plain, [("A".into(), "allocations".into(), 0.4), ("B".into(), "allocations".into(), 0.3)],);

    // A stray impression for a campaign that does not exist (dropped at ingest: not in
    // the plan), and one for B from a request never allocated: no estimate moves.
    post(&app, vec![imp("stray-1".into(), "Z"), imp("stray-2".into(), "B")]).await;
    settled(&redis, 1).await;
    assert_eq!(app.metric("allot_ingest_dropped_events_total{reason=\"unknown_campaign\"}").await, 1.0);
    assert_eq!(estimates(&app).await, plain);

    // A's apps report impressions for 36 of its 40 ads (90 %): A is measured on
    // impressions; B, with no impressions of its own, keeps its estimate.
    post(&app, (0..100).filter(|i| i % 10 < 4).take(36).map(|i| imp(format!("q{i}"), "A")).collect()).await;
    settled(&redis, 37).await;
    let now = estimates(&app).await;
    assert_eq!(now[0].1, "impressions");
    assert!((now[0].2 - 0.36).abs() < 1e-9, "{now:?}");
    assert_eq!(now[1], plain[1]);
}
