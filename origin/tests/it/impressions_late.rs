//! Impressions that come after their window was read: a placement on impressions is read
//! a window later than one on allocations, and what still comes after that is counted
//! late and allowed for, not lost.

use allot_core::contract::keys::PlacementKeys;
use allot_core::{EventKind, WindowStats};
use allot_testkit::events::{event, now_ms};
use allot_testkit::origin::{TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use serde_json::{Value, json};

use crate::impressions::{id, origin_with, origin_with_period, post, quiet_and_loud};

#[tokio::test]
async fn a_placement_on_impressions_is_read_one_window_later_than_one_on_allocations() {
    // Four-second windows: complete 1 s after their end, complete for impressions at
    // most a period later (5 s), so the status of a placement on impressions always
    // shows the window before the last complete one.
    let redis = RedisServer::start();
    let app = origin_with_period(&redis, 1.0, 4_000).await;
    let cfg = app.app().config.control.clone();
    assert_eq!((cfg.lateness(), cfg.impression_lateness()), (1_000, 5_000));
    // Allocations (and, once, impressions) in every window of the next 40 s.
    let status = async || app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await.1;
    let start = now_ms();
    let (mut on_allocations, mut on_impressions) = (0, 0);
    while now_ms() < start + 40_000 {
        let t = now_ms();
        let mut events = quiet_and_loud(t);
        events.iter_mut().for_each(|e| {
            e.request_id = allot_core::RequestId::parse(format!("{t}-{}", e.request_id)).unwrap();
            e.unreported = false;
        });
        let shown: Vec<_> = events
            .iter()
            .filter(|e| e.ad_id.is_some())
            .map(|e| {
                let mut i = e.clone();
                i.kind = EventKind::Impression;
                i.eligible.clear();
                i
            })
            .collect();
        post(&app, events).await;
        // Impressions from 12 s on: the placement moves to them.
        if t > start + 12_000 {
            post(&app, shown).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let before = cfg.last_complete_window(now_ms());
        let v = status().await;
        if cfg.last_complete_window(now_ms()) != before || v["window"]["requests"].as_f64() == Some(0.0) {
            continue; // A window ended during the read, or none is counted yet.
        }
        let index = v["window"]["index"].as_u64().unwrap();
        let basis = v["campaigns"][0]["basis"].as_str().unwrap();
        // Before any impression: on allocations, the last complete window. Once the
        // window before it lies wholly after the first impression: on impressions, that
        // window. It starts at most 13 s before the read (the last complete window ends
        // 1 s or more before it, and each is 4 s), so from 26 s on it began after 12 s.
        if t < start + 11_000 {
            assert_eq!((basis, index), ("allocations", before), "{v}");
            on_allocations += 1;
        } else if t > start + 26_000 {
            assert_eq!((basis, index), ("impressions", before - 1), "{v}");
            on_impressions += 1;
        }
    }
    assert!(
        on_allocations >= 5 && on_impressions >= 5,
        "{on_allocations} reads on allocations, {on_impressions} on impressions"
    );
}

/// Four-second windows (complete for impressions 5 s after their end), 100 requests
/// each at census: A 50, B 30, none 20. Every B shown, the first `shown_a` of A, of
/// which `held` are left out. The window's allocations, its impressions, and the held.
fn four_second_window(index: u64, shown_a: usize, held: usize) -> [Vec<allot_core::Event>; 3] {
    let t = index * 4_000 + 500;
    let (mut allocations, mut shown, mut late) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..100 {
        let r = format!("w{index}-{i}");
        let ad = match i % 10 {
            0..5 => Some("A"),
            5..8 => Some("B"),
            _ => None,
        };
        allocations.push(event(EventKind::Allocation, &r, "home_feed", t, ad, &["A", "B"], 1, 1.0));
        let imp = |ad| event(EventKind::Impression, &r, "home_feed", t, Some(ad), &[], 1, 1.0);
        match ad {
            Some("A") if i / 10 * 5 + i % 10 >= shown_a => {}
            Some("A") if late.len() < held => late.push(imp("A")),
            Some(ad) => shown.push(imp(ad)),
            None => {}
        }
    }
    [allocations, shown, late]
}

/// Sleeps until the clock reads `ms`.
async fn until(ms: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(ms.saturating_sub(now_ms()))).await;
}

/// Window `index`'s counts in Redis once `ready` holds for them.
async fn window_counts(redis: &RedisServer, index: u64, ready: impl Fn(&WindowStats) -> bool) -> WindowStats {
    let key = PlacementKeys::of_raw("home_feed").window(index);
    eventually(10, "the window's counts", || async {
        let fields: std::collections::HashMap<String, f64> =
            redis::cmd("HGETALL").arg(&key).query(&mut redis.conn()).unwrap();
        let counts = WindowStats::from_fields(fields).unwrap();
        ready(&counts).then_some(counts)
    })
    .await
}

/// Two four-second windows through `app`: in the first A shows 50 ads, of which 5 are
/// held back unless `hold` is false; in the second A shows 40. Returns once the first
/// was read for impressions: its index and the held-back reports.
async fn two_windows(app: &TestApp, hold: bool) -> (u64, Vec<allot_core::Event>) {
    let a = now_ms() / 4_000 + 1;
    until(a * 4_000 + 50).await;
    let [allocations, shown, held] = four_second_window(a, 50, 5);
    post(app, allocations).await;
    post(app, shown).await;
    let held = if hold {
        held
    } else {
        post(app, held).await;
        Vec::new()
    };
    until((a + 1) * 4_000 + 50).await;
    let [allocations, shown, _] = four_second_window(a + 1, 40, 0);
    post(app, allocations).await;
    post(app, shown).await;
    until((a + 1) * 4_000 + 5_100).await;
    (a, held)
}

/// Campaign `i`'s basis must be impressions; its estimate (low, share, high).
fn on_impressions(v: &Value, i: usize) -> (f64, f64, f64) {
    let c = &v["campaigns"][i];
    assert_eq!(c["basis"], "impressions", "{v}");
    let e = &c["estimate"];
    (e["low"].as_f64().unwrap(), e["share"].as_f64().unwrap(), e["high"].as_f64().unwrap())
}

/// An app reports some impressions after the window was read for them (a slow network,
/// an app in the background): the aggregator counts them in their own window, marked
/// late, and the next window's status allows for as many of that campaign's impressions
/// still to come, never past the ads it was given. The other campaign's impressions all
/// came on time: its share is as counted.
#[tokio::test]
async fn impressions_reported_after_their_window_was_read_are_counted_late_and_allowed_for() {
    let redis = RedisServer::start();
    let app = origin_with_period(&redis, 1.0, 4_000).await;
    assert_eq!(app.app().config.control.impression_lateness(), 5_000);
    // Window a has been read for impressions: A's five others come now, three of them
    // twice (a second beacon): counted once, in the counts and in the metric.
    let (a, late) = two_windows(&app, true).await;
    post(&app, late[..3].to_vec()).await;
    post(&app, late).await;
    let counts = window_counts(&redis, a, |c| c.campaigns[&id("A")].impressions.n == 50).await;
    assert_eq!(counts.campaigns[&id("A")].late_impressions.n, 5, "only those received after the read");
    eventually(5, "the late reports counted", || async {
        (app.metric("allot_aggregate_late_impressions_total").await == 5.0).then_some(())
    })
    .await;
    assert_eq!(counts.campaigns[&id("B")].late_impressions.n, 0);
    assert_eq!(counts.late.n, 0, "the allocations came on time");
    // Window a + 1, read for impressions: A showed 40 of its 50 ads, and a tenth of its
    // impressions may still come, as window a showed.
    until((a + 2) * 4_000 + 5_100).await;
    let (_, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    assert_eq!(v["window"]["index"], a + 1, "{v}");
    assert_eq!(v["window"]["impressions_to_come"], json!({"A": 0.1}), "{v}");
    let (low, share, high) = on_impressions(&v, 0);
    assert!((share - 0.4 / 0.9).abs() < 1e-9 && low < 0.42 && high > 0.47 && high <= 0.5, "{v}");
    // B's are as counted; its interval is only as wide as the allowance for requests
    // still to come, one in as many as window a held (the rule of succession).
    let (low, share, high) = on_impressions(&v, 1);
    assert!((share - 0.3).abs() < 1e-9 && low < share && share < high && high - low < 0.025, "{v}");
}

/// Fault: the aggregator is down while a window's impressions come in, and applies them
/// only after the window was read for impressions. They were received on time, so none
/// counts as late, and the next window's shares are as counted: an outage of the
/// aggregator cannot raise published shares.
#[tokio::test]
async fn impressions_applied_late_after_an_aggregator_outage_were_still_on_time() {
    let redis = RedisServer::start();
    let ingest_only = origin_with(&redis, 1.0, 4_000, &[("ALLOT_AGGREGATE_ENABLED", "false")]).await;
    // The aggregator comes back once window a was read for impressions.
    let (a, _) = two_windows(&ingest_only, false).await;
    drop(ingest_only);
    let app =
        TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_PERIOD_MS", "4000")]))
            .await;
    let counts = window_counts(&redis, a, |c| c.campaigns.get(&id("A")).is_some_and(|a| a.impressions.n == 50)).await;
    assert_eq!(counts.campaigns[&id("A")].late_impressions.n, 0, "{counts:?}");
    assert!(counts.late.n > 0, "the allocations were applied after their round: {counts:?}");
    until((a + 2) * 4_000 + 5_100).await;
    let (_, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    assert_eq!(v["window"]["index"], a + 1, "{v}");
    assert_eq!(v["window"]["impressions_to_come"], json!({}), "{v}");
    assert_eq!(app.metric("allot_aggregate_late_impressions_total").await, 0.0, "counted seconds ago");
    let (_, share, _) = on_impressions(&v, 0);
    assert!((share - 0.4).abs() < 1e-9, "{v}");
}
