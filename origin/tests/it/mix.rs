//! The traffic mix the origin plans for: the windows since it last shifted, not the
//! recent windows merged. A lasting shift is planned for one window later, and a window
//! of strange traffic (a burst, or events a key holder made up) stops counting as soon
//! as the traffic is back to what it was.

use allot_core::{Event, EventBatch, PlacementId, Plan};
use allot_testkit::events::{allocation, under, xadd};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::json;

use crate::learning::stored_record;

/// Two-second windows, complete 100 ms after their end: a round reads a window well
/// before the next one ends.
const PERIOD: u64 = 2_000;

/// 400 requests under `plan` in the window now under way, `ios` of them from iOS (the
/// others from web), the `nth` window written; then waits for that window to end and be
/// counted (the aggregator may lag on a loaded machine), asks for two rounds (the
/// second surely started after it was counted), and returns the iOS share the plan in
/// force was made on.
async fn window(app: &TestApp, redis: &RedisServer, plan: &Plan, ios: usize, nth: u64) -> f64 {
    let index = allot_origin::now_ms() / PERIOD;
    let events: Vec<Event> = (0..400)
        .map(|i| {
            let mut e = under(plan, allocation(&format!("w{nth}-{index}-{i}"), "home_feed", None, &[], 1.0));
            e.platform = Some(if i < ios { "ios" } else { "web" }.into());
            e.event_time_ms = index * PERIOD + PERIOD / 2;
            e
        })
        .collect();
    xadd(&mut redis.conn(), &EventBatch { events }, allot_origin::now_ms());
    let complete = (index + 1) * PERIOD + 100;
    tokio::time::sleep(std::time::Duration::from_millis(complete.saturating_sub(allot_origin::now_ms()) + 10)).await;
    eventually(10, "the window counted", || async {
        (total_counts(redis, "home_feed").requests.n == 400 * nth).then_some(())
    })
    .await;
    for _ in 0..2 {
        let rounds = app.metric("allot_control_rounds_total").await;
        app.app().store.mark_dirty(&PlacementId::parse("home_feed").unwrap()).await.unwrap();
        app.app().control_wake.notify_one();
        eventually(5, "a round", || async { (app.metric("allot_control_rounds_total").await > rounds).then_some(()) })
            .await;
    }
    let record = stored_record(redis).expect("a plan");
    record.decision.expect("a decision").campaigns[0].eligible_share
}

#[tokio::test]
async fn a_lasting_shift_is_planned_for_at_once_and_a_strange_window_is_forgotten_at_once() {
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_PERIOD_MS", &*PERIOD.to_string()), ("ALLOT_CONTROL_LATENESS_MS", "100")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    let spec = json!({"campaigns": [
        {"id": "A", "rate": 0.15, "eligibility": {"platforms": ["ios"]}},
        {"id": "B", "rate": 0.3},
    ], "confidence": {"margin": 0.1, "level": 0.9}});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    let v1 = eventually(5, "first plan", || async { stored_record(&redis).map(|r| r.plan) }).await;

    // Four windows at 30 % iOS: the plan is made on 30 %.
    for w in 0..4 {
        let share = window(&app, &redis, &v1, 120, w + 1).await;
        assert!((0.29..=0.31).contains(&share), "a plan on 30 % iOS: {share}");
    }
    // One window of iOS only (a burst, or a key holder's made-up traffic): the next
    // plan is made on it alone, not on the recent windows merged (about half iOS).
    let share = window(&app, &redis, &v1, 400, 5).await;
    assert!(share > 0.99, "a plan on the burst: {share}");
    // Back to 30 %: the burst window no longer counts.
    let share = window(&app, &redis, &v1, 120, 6).await;
    assert!((0.29..=0.31).contains(&share), "a plan on the traffic after the burst: {share}");
    // iOS at 60 % for good: planned for after its first window, and it stays.
    for w in 0..2 {
        let share = window(&app, &redis, &v1, 240, 7 + w).await;
        assert!((0.59..=0.61).contains(&share), "a plan on the new mix: {share}");
    }
}
