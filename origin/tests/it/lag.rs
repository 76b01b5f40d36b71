//! A colo stuck on an old plan (its KV or isolate cache behind) goes on deciding by it,
//! and its events name that version. The origin makes up for its requests with the rest
//! of the traffic while it lasts, and stops once the colo has the plan in force.

use allot_core::{CampaignId, Decision, EventBatch, Feasibility, Plan};
use allot_testkit::events::xadd;
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use serde_json::json;

use crate::learning::{stored_record, traffic};

const PERIOD: u64 = 1000;
/// What operators see of it.
const GAUGE: &str = "allot_placement_lagging_share{placement=\"home_feed\"}";

fn spec(a: f64) -> serde_json::Value {
    json!({"campaigns": [{"id": "A", "rate": a}], "confidence": {"margin": 0.1, "level": 0.9}})
}

/// A's share of the requests `plan` decides (one campaign, eligible everywhere).
fn share_of_a(plan: &Plan) -> f64 {
    let a = plan.campaigns[0].weight;
    a / (a + plan.no_ad_weight)
}

/// Sleeps into the next window.
async fn next_window() {
    let now = allot_origin::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis((now / PERIOD + 1) * PERIOD - now + 20)).await;
}

/// Posts the current window's requests: `stuck` decided by `old`, 320 by the plan in
/// force, each plan giving A its share. Returns the plan in force.
fn post_window(redis: &RedisServer, old: &Plan, stuck: usize) -> Plan {
    let in_force = stored_record(redis).expect("a plan is stored").plan;
    let index = allot_origin::now_ms() / PERIOD;
    // One body from the stuck colo, one from the rest, as edges send them.
    let stuck = traffic(old, index, PERIOD, stuck, share_of_a(old), &format!("stuck{index}"));
    let fresh = traffic(&in_force, index, PERIOD, 320, share_of_a(&in_force), &format!("fresh{index}"));
    for events in [stuck, fresh].into_iter().filter(|e| !e.is_empty()) {
        xadd(&mut redis.conn(), &EventBatch { events }, allot_origin::now_ms());
    }
    in_force
}

/// Posts windows of `stuck` requests decided by `old` (and the rest by the plan in
/// force), at most `windows` of them, until the stored plan's decision is `done`: that
/// plan and its decision.
async fn windows_until(
    redis: &RedisServer,
    old: &Plan,
    stuck: usize,
    windows: usize,
    done: impl Fn(&Decision) -> bool,
) -> Option<(Plan, Decision)> {
    for _ in 0..windows {
        post_window(redis, old, stuck);
        next_window().await;
        let record = stored_record(redis).expect("a plan is stored");
        if let Some(decision) = record.decision.filter(|d| done(d)) {
            return Some((record.plan, decision));
        }
    }
    None
}

/// An origin on its own Redis, at census (so that each event is one request whatever
/// plan decided it), after A's target went from `from` to `to`; the plan for `from`, the
/// one a colo will stay stuck on.
async fn after_a_change(from: f64, to: f64) -> (RedisServer, TestApp, Plan) {
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_LAG_AFTER_MS", "1000"), ("ALLOT_CONTROL_MIN_SAMPLE_RATE", "1")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    assert_eq!(app.put_targets("home_feed", &spec(from), MANAGER_TOKEN).await.status(), 201);
    let v1 = eventually(5, "v1", || async { stored_record(&redis).map(|r| r.plan) }).await;
    assert!((share_of_a(&v1) - from).abs() < 1e-9);
    assert_eq!(app.put_targets("home_feed", &spec(to), MANAGER_TOKEN).await.status(), 200);
    eventually(5, "the plan for the new target", || async {
        stored_record(&redis).filter(|r| r.plan.version > v1.version && (share_of_a(&r.plan) - to).abs() < 1e-6)
    })
    .await;
    (redis, app, v1)
}

#[tokio::test]
async fn a_colo_stuck_on_an_old_plan_is_made_up_for_until_it_takes_the_new_one() {
    let (redis, app, v1) = after_a_change(0.5, 0.3).await;

    // One colo keeps v1, which gives A half: 80 requests of every window.
    let (plan, decision) = windows_until(&redis, &v1, 80, 20, |d| d.lag.share > 0.05)
        .await
        .expect("the stuck colo was made up for within 20 windows");
    let lag = &decision.lag;
    assert!(lag.share <= 80.0 / 400.0 + 1e-9, "at most the share v1 decided: {lag:?}");
    assert!((lag.delivered[&CampaignId::parse("A").unwrap()] - 0.5).abs() < 1e-9, "{lag:?}");
    // The rest gives A less, so that all the traffic gets its target (within the 1 %
    // by which a round keeps the weights in force rather than publish new ones).
    let own = (0.3 - lag.share * 0.5) / (1.0 - lag.share);
    assert!((share_of_a(&plan) - own).abs() <= 0.01 * own + 1e-6, "{} vs {own}", share_of_a(&plan));
    assert!(share_of_a(&plan) < 0.29, "{plan:?}");
    assert!((decision.campaigns[0].predicted_share - 0.3).abs() < 1e-6, "{:?}", decision.campaigns[0]);
    assert!(decision.state.corrections.is_empty(), "nothing for feedback: {:?}", decision.state);
    // Operators see it (a later round may have forecast a little more).
    assert!(app.metric(GAUGE).await >= lag.share - 1e-9, "{}", app.metric(GAUGE).await);

    // The colo takes the plan in force up: once a round sees a window without v1, the
    // plan gives A its target again.
    let (plan, _) = windows_until(&redis, &v1, 0, 10, |d| d.lag.is_none())
        .await
        .expect("made up for no more within 10 windows of the colo's recovery");
    assert!((share_of_a(&plan) - 0.3).abs() < 0.01, "{plan:?}");
    assert_eq!(app.metric(GAUGE).await, 0.0);
}

/// Anyone holding the ingest key can sign events naming an old version for most of the
/// traffic. The plan in force makes up for at most a quarter of it: A's weight does not
/// chase the rest (made up for whole, A would need 90 % of the fresh requests), and what
/// the rest leaves A short is reported, as A's own infeasibility, with the whole stuck
/// share on the gauge.
#[tokio::test]
async fn events_naming_an_old_version_for_most_traffic_move_the_plan_no_further_than_the_cap() {
    let (redis, app, v1) = after_a_change(0.1, 0.3).await;

    // Three requests in four name v1, which gives A a tenth.
    let (plan, decision) = windows_until(&redis, &v1, 960, 20, |d| d.lag.beyond > 0.0)
        .await
        .expect("the old version's share passed the cap within 20 windows");
    let lag = &decision.lag;
    assert!((lag.share - 0.25).abs() < 1e-9, "made up for up to the cap: {lag:?}");
    assert!(lag.stuck() <= 960.0 / 1280.0 + 1e-9, "at most the share v1 decided: {lag:?}");
    let capped = (0.3 - 0.25 * 0.1) / 0.75;
    assert!(share_of_a(&plan) <= capped * 1.01 + 1e-6, "{} vs at most {capped}", share_of_a(&plan));
    let a = &decision.campaigns[0];
    assert!(matches!(a.feasibility, Feasibility::Infeasible { .. }), "{a:?}");
    assert!(!a.jointly_infeasible(), "no other campaign to blame: {a:?}");
    assert!(a.predicted_share < 0.3 - 0.01, "the whole stuck share predicted: {a:?}");
    assert!(app.metric(GAUGE).await >= lag.stuck() - 1e-9, "{} vs {lag:?}", app.metric(GAUGE).await);
}
