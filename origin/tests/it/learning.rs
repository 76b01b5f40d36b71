//! What the controller learns survives: its state is stored after every round (not only
//! with a published plan), a plan republished for its age or a new rate carries the
//! weights in force so learning goes on under them, a round seeing a window it already
//! counted does not count it again — whether a manager re-saves the targets over and
//! over or Redis fails under the loop and the lease is taken again. Apps that hold
//! back their impression reports move the render ratio they report on, not feedback.

use allot_core::contract::keys::PlacementKeys;
use allot_core::{ControlState, Event, EventKind, PlacementId, Plan};
use allot_origin::store::PlanRecord;
use allot_testkit::events::{allocation, batch, event, under, xadd};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::json;

pub(crate) fn keys() -> PlacementKeys {
    PlacementKeys::new(&PlacementId::parse("home_feed").unwrap())
}

pub(crate) fn stored_state(redis: &RedisServer) -> Option<ControlState> {
    let json: Option<String> = redis::cmd("GET").arg(keys().state()).query(&mut redis.conn()).unwrap();
    json.map(|j| serde_json::from_str(&j).expect("the stored state parses"))
}

pub(crate) fn stored_record(redis: &RedisServer) -> Option<PlanRecord> {
    let json: Option<String> = redis::cmd("GET").arg(keys().plan()).query(&mut redis.conn()).unwrap();
    json.map(|j| serde_json::from_str(&j).expect("the stored plan parses"))
}

fn first_plan(redis: &RedisServer) -> Plan {
    let raw: Vec<String> = redis::cmd("LRANGE").arg(keys().plans()).arg(0).arg(-1).query(&mut redis.conn()).unwrap();
    Plan::parse(raw.last().expect("a plan was issued").as_bytes()).unwrap()
}

/// Sampled windows counted under the weights in force, for campaign A.
fn windows_counted(state: &ControlState) -> u32 {
    state.learning.as_ref().and_then(|l| l.evidence.values().next()).map_or(0, |e| e.windows)
}

/// `n` requests decided under `plan` in window `index`, `share_a` of them given A.
pub(crate) fn traffic(plan: &Plan, index: u64, period: u64, n: usize, share_a: f64, tag: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let ad = ((i as f64) < n as f64 * share_a).then_some("A");
            let mut e = under(plan, allocation(&format!("{tag}-{i}"), "home_feed", ad, &["A"], 1.0));
            e.event_time_ms = index * period + period / 2;
            e
        })
        .collect()
}

fn spec() -> serde_json::Value {
    json!({"campaigns": [{"id": "A", "rate": 0.5}], "confidence": {"margin": 0.1, "level": 0.9}})
}

#[tokio::test]
async fn the_state_is_kept_every_round_and_a_republish_keeps_the_weights() {
    let redis = RedisServer::start();
    let period = 1000;
    let app = TestApp::start(config(&redis, "", &[])).await;
    assert_eq!(app.put_targets("home_feed", &spec(), MANAGER_TOKEN).await.status(), 201);
    eventually(5, "first plan", || async { stored_record(&redis).filter(|r| r.plan.version == 1).map(|_| ()) }).await;
    let v1 = first_plan(&redis);

    // Four windows of 400 requests decided under v1, A at exactly its target.
    let mut conn = redis.conn();
    for w in 0..4 {
        let index = allot_origin::now_ms() / period;
        xadd(
            &mut conn,
            &allot_core::EventBatch { events: traffic(&v1, index, period, 400, 0.5, &format!("w{w}")) },
            allot_origin::now_ms(),
        );
        let until_next = (index + 1) * period - allot_origin::now_ms();
        tokio::time::sleep(std::time::Duration::from_millis(until_next + 10)).await;
    }
    let state =
        eventually(10, "three windows learnt", || async { stored_state(&redis).filter(|s| windows_counted(s) >= 3) })
            .await;
    let record = stored_record(&redis).unwrap();
    // 400 requests need far less than census: a new rate, so a new version…
    assert!(record.plan.version >= 2 && record.plan.sample_rate < 1.0, "{:?}", record.plan);
    // … with the very weights of v1, under which learning goes on.
    assert_eq!(record.plan.no_ad_weight, v1.no_ad_weight);
    assert_eq!(record.plan.campaigns[0].weight, v1.campaigns[0].weight);
    assert_eq!(state.learning.as_ref().unwrap().since_version(), Some(1));
    // Rounds that published nothing kept what they learnt: the state stored with the
    // plan is behind the state of the latest round.
    let with_plan = record.decision.as_ref().map_or(0, |d| windows_counted(&d.state));
    assert!(with_plan < windows_counted(&state), "{with_plan} vs {}", windows_counted(&state));
    assert!(state.corrections.is_empty(), "no bias, no correction: {state:?}");
}

/// Waits, if needed, so that the test runs in the first 40 s of a minute (its windows
/// are a minute long).
pub(crate) async fn early_in_a_minute() {
    allot_testkit::poll::into_period(60_000, 100, 40_000).await;
}

/// A round of `home_feed` now (what a target change asks for).
pub(crate) async fn ask_for_a_round(app: &TestApp) {
    app.app().store.mark_dirty(&PlacementId::parse("home_feed").unwrap()).await.unwrap();
    app.app().control_wake.notify_one();
}

/// An origin on a 60 s period with no lateness: a test's events sit in the window that
/// just ended, and its rounds must count it at once.
pub(crate) async fn start_on_minutes(redis: &RedisServer) -> TestApp {
    start_on_minutes_with(redis, &[]).await
}

/// [`start_on_minutes`] with more settings.
async fn start_on_minutes_with(redis: &RedisServer, more: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("ALLOT_CONTROL_PERIOD_MS", "60000"), ("ALLOT_CONTROL_LATENESS_MS", "0")];
    env.extend_from_slice(more);
    TestApp::start(config(redis, "", &env)).await
}

/// [`start_on_minutes`], `home_feed`'s targets saved, and its first plan.
pub(crate) async fn start_with_a_plan(redis: &RedisServer) -> (TestApp, Plan) {
    plan_on(redis, start_on_minutes(redis).await).await
}

/// `home_feed`'s targets saved through `app`, and its first plan.
async fn plan_on(redis: &RedisServer, app: TestApp) -> (TestApp, Plan) {
    assert_eq!(app.put_targets("home_feed", &spec(), MANAGER_TOKEN).await.status(), 201);
    eventually(5, "first plan", || async { stored_record(redis).filter(|r| r.plan.version == 1).map(|_| ()) }).await;
    let v1 = first_plan(redis);
    (app, v1)
}

/// Window `last` of 400 requests under `plan`, A 4 pp short, counted; then a round.
async fn one_window_a_short(redis: &RedisServer, app: &TestApp, plan: &Plan, last: u64, period: u64) {
    xadd(
        &mut redis.conn(),
        &allot_core::EventBatch { events: traffic(plan, last, period, 400, 0.46, "w") },
        allot_origin::now_ms(),
    );
    eventually(10, "counted", || async { (total_counts(redis, "home_feed").requests.n == 400).then_some(()) }).await;
    ask_for_a_round(app).await;
}

#[tokio::test]
async fn re_saved_targets_and_forged_events_do_not_bend_feedback() {
    early_in_a_minute().await;
    let redis = RedisServer::start();
    let period = 60_000;
    let (app, v1) = start_with_a_plan(&redis).await;

    // One complete window, A 4 pp short: within one window's band (±7.5 pp at 400
    // requests), far outside the band of six windows.
    let last = allot_origin::now_ms() / period - 1;
    one_window_a_short(&redis, &app, &v1, last, period).await;
    let counted =
        eventually(10, "the window learnt", || async { stored_state(&redis).filter(|s| windows_counted(s) == 1) })
            .await;

    // A manager saving the same targets again and again: every save is a round over
    // the same window, which must not count as new evidence each time.
    for _ in 0..6 {
        let rounds = app.metric("allot_control_rounds_total").await;
        assert_eq!(app.put_targets("home_feed", &spec(), MANAGER_TOKEN).await.status(), 200);
        eventually(5, "a round", || async { (app.metric("allot_control_rounds_total").await > rounds).then_some(()) })
            .await;
    }
    // An ingest-key holder forging events for that window: a rate the plan never had,
    // a version never published. Both are refused; the window does not change.
    let mut forged = traffic(&v1, last, period, 50, 0.0, "forged");
    forged.iter_mut().for_each(|e| e.sample_rate = 0.001);
    let mut unknown = traffic(&v1, last, period, 50, 0.0, "unknown");
    unknown.iter_mut().for_each(|e| e.plan_version = 99);
    for body in [batch(forged), batch(unknown)] {
        let r = app.post_signed(&body).await;
        assert!(r.status().is_success(), "the body is accepted, its events judged one by one");
    }
    eventually(5, "forged events dropped", || async {
        let mismatch = app.metric("allot_ingest_dropped_events_total{reason=\"rate_mismatch\"}").await;
        let unknown = app.metric("allot_ingest_dropped_events_total{reason=\"unknown_version\"}").await;
        (mismatch >= 50.0 && unknown >= 50.0).then_some(())
    })
    .await;
    ask_for_a_round(&app).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(total_counts(&redis, "home_feed").requests.n, 400);
    let state = stored_state(&redis).unwrap();
    assert!(windows_counted(&state) <= 1, "{state:?}");
    assert!(state.corrections.is_empty(), "a 4 pp gap in one window is noise: {state:?}");
    if let (Some(a), Some(b)) = (&state.learning, &counted.learning)
        && a.since_version() == b.since_version()
    {
        assert_eq!(a.last_window, b.last_window, "the window counted is still the last one counted");
    }
}

#[tokio::test]
async fn redis_failing_under_the_loop_loses_no_state_and_counts_no_window_twice() {
    early_in_a_minute().await;
    let mut redis = RedisServer::start_with_aof();
    let period = 60_000;
    let (app, v1) = start_with_a_plan(&redis).await;
    let last = allot_origin::now_ms() / period - 1;
    one_window_a_short(&redis, &app, &v1, last, period).await;
    let before =
        eventually(10, "the window learnt", || async { stored_state(&redis).filter(|s| windows_counted(s) == 1) })
            .await;
    let version_before = stored_record(&redis).unwrap().plan.version;

    // Redis goes away under the loop (rounds fail half-way, the lease lapses) and
    // comes back with what it had written.
    redis.stop();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    redis.restart();
    // Once Redis answers again, the loop (its lease renewed or taken again) runs rounds
    // over the same window.
    for _ in 0..2 {
        let rounds = app.metric("allot_control_rounds_total").await;
        eventually(20, "a round after the restart", || async {
            if app.app().store.mark_dirty(&PlacementId::parse("home_feed").unwrap()).await.is_ok() {
                app.app().control_wake.notify_one();
            }
            (app.metric("allot_control_rounds_total").await > rounds).then_some(())
        })
        .await;
    }
    // The last round has stored what it decided.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = stored_state(&redis).expect("the state survived");
    assert_eq!(windows_counted(&after), 1, "the window was counted once: {after:?}");
    assert_eq!(after.learning.as_ref().unwrap().last_window, before.learning.as_ref().unwrap().last_window);
    assert!(after.corrections.is_empty(), "{after:?}");
    let record = stored_record(&redis).expect("the plan survived");
    assert!(record.plan.version >= version_before);
}

/// Window `index` of 400 requests under `plan`, A given exactly the share the plan
/// predicts, and `shown` of A's ads reported as impressions.
fn window_with_impressions(plan: &Plan, index: u64, period: u64, shown: f64, tag: &str) -> Vec<Event> {
    let a = &plan.campaigns[0];
    let predicted = a.weight / (a.weight + plan.no_ad_weight);
    let mut events = traffic(plan, index, period, 400, predicted, tag);
    let given: Vec<Event> = events.iter().filter(|e| e.ad_id.is_some()).cloned().collect();
    let reported = (given.len() as f64 * shown).round() as usize;
    events.extend(given.iter().take(reported).map(|e| {
        let t = e.event_time_ms;
        under(plan, event(EventKind::Impression, e.request_id.as_str(), "home_feed", t, Some("A"), &[], 0, 1.0))
    }));
    events
}

/// Hostile: the apps report 80 % of A's ads as shown for two windows, then hold back
/// all but a fifth of the reports in the window the round learns from. A got exactly
/// what the plan gave it, so there is nothing for feedback to correct: the withheld
/// reports lower A's render ratio (which the plan answers, and the status shows), but
/// no correction. Feedback compares allocations, which come from the edges; compared
/// on impressions, the gap (A's impressions at a fifth against the 60 % the recent
/// windows' ratio predicts) would have doubled A's correction.
#[tokio::test]
async fn impressions_held_back_lower_the_render_ratio_but_bend_no_correction() {
    early_in_a_minute().await;
    let redis = RedisServer::start();
    let period = 60_000;
    let app = start_on_minutes_with(&redis, &[("ALLOT_CONTROL_IMPRESSION_LATENESS_MS", "0")]).await;
    let (app, v1) = plan_on(&redis, app).await;

    let last = allot_origin::now_ms() / period - 1;
    for index in last - 2..=last {
        let shown = if index == last { 0.2 } else { 0.8 };
        let events = window_with_impressions(&v1, index, period, shown, &format!("w{index}"));
        xadd(&mut redis.conn(), &allot_core::EventBatch { events }, allot_origin::now_ms());
    }
    let total = 3 * 400;
    eventually(10, "counted", || async { (total_counts(&redis, "home_feed").requests.n == total).then_some(()) }).await;
    ask_for_a_round(&app).await;
    let state = eventually(10, "the window learnt", || async {
        stored_state(&redis).filter(|s| s.learning.as_ref().is_some_and(|l| l.last_window == last + 1))
    })
    .await;
    assert_eq!(windows_counted(&state), 1, "{state:?}");
    assert!(state.corrections.is_empty(), "reports held back are not a bias of the plan: {state:?}");
    // The plan made in that round: on impressions, A's ratio over the three windows
    // ((2 · 0.8 + 0.2) / 3) is what the held-back reports moved.
    let record =
        eventually(5, "a new plan", || async { stored_record(&redis).filter(|r| r.plan.version > v1.version) }).await;
    let a = &record.decision.as_ref().expect("the plan's decision").campaigns[0];
    assert_eq!(a.basis, allot_core::DeliveryBasis::Impressions, "{a:?}");
    assert!((a.render_ratio - 0.6).abs() < 1e-9, "{a:?}");
    assert_eq!(a.correction, 1.0, "{a:?}");
}
