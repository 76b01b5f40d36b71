//! What anyone with write access to Redis (or a bug, or an older version) may leave under
//! a placement's control state key, against a real Redis and the origin's real control
//! loop: bytes that are not a state at all, and well-formed states with values the
//! controller could never have written. Rounds go on (none is skipped for good, nothing
//! panics), every plan published meanwhile is valid with weights that follow from the
//! targets, the state a refused one is replaced with parses, and each refusal is logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use allot_core::controller::feedback::{MAX_PLANS, PlanWeights};
use allot_core::controller::{Evidence, Learning};
use allot_core::{CampaignId, ControlState, Plan};
use allot_testkit::events::{newest_published, xadd};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::json;

use crate::learning::{
    ask_for_a_round, early_in_a_minute, keys, start_with_a_plan, stored_record, stored_state, traffic,
};

/// The line the origin logs for a stored state it discards.
const DISCARDED: &str = "stored control state discarded; learning starts afresh";

/// The origin's log lines at `warn` and above, as JSON. The test's runtime has one
/// thread, so every task of its origin logs here, and no other test's origin does.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let log = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || log.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// How many states of `home_feed` were discarded so far.
    fn discarded(&self) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == DISCARDED && v["placement"] == "home_feed")
            .count()
    }
}

/// What every plan must be, whatever was stored: valid, a sample rate in (0, 1], every
/// weight finite and within [0, 1], together at most 1.
fn assert_sane(plan: &Plan, what: &str) {
    plan.check().unwrap_or_else(|e| panic!("{what}: {e}: {plan:?}"));
    assert!(plan.sample_rate > 0.0 && plan.sample_rate <= 1.0, "{what}: {plan:?}");
    let weights: Vec<f64> = std::iter::once(plan.no_ad_weight).chain(plan.campaigns.iter().map(|c| c.weight)).collect();
    assert!(weights.iter().all(|w| w.is_finite() && (0.0..=1.0).contains(w)), "{what}: {plan:?}");
    assert!(weights.iter().sum::<f64>() <= 1.0 + 1e-9, "{what}: {plan:?}");
}

/// The plan in force (stored) after a round, the same as the newest issued, and sane.
fn plan_in_force(redis: &RedisServer, what: &str) -> Plan {
    let record = stored_record(redis).expect("a plan is stored");
    assert_sane(&record.plan, what);
    let newest = newest_published(&mut redis.conn(), "home_feed").expect("a plan was issued");
    assert_eq!(newest.version, record.plan.version, "{what}: the newest issued plan is the one stored");
    assert_sane(&newest, what);
    record.plan
}

fn a() -> CampaignId {
    CampaignId::parse("A").unwrap()
}

fn weight_of_a(plan: &Plan) -> f64 {
    plan.campaigns.iter().find(|c| c.id == a()).expect("A is in the plan").weight
}

/// Leaves `bytes` under the state key, or, for `None`, a hash (a key of another type).
fn forge(redis: &RedisServer, bytes: Option<&[u8]>) {
    let mut c = redis.conn();
    let _: () = redis::cmd("DEL").arg(keys().state()).query(&mut c).unwrap();
    let _: () = match bytes {
        Some(b) => redis::cmd("SET").arg(keys().state()).arg(b).query(&mut c).unwrap(),
        None => redis::cmd("HSET").arg(keys().state()).arg("corrections").arg("2").query(&mut c).unwrap(),
    };
}

/// Saves A's target `rate` (a change, so its round publishes) and waits for the plan.
async fn new_targets(app: &TestApp, redis: &RedisServer, rate: f64, what: &str) -> Plan {
    let before = stored_record(redis).map_or(0, |r| r.plan.version);
    let spec = json!({"campaigns": [{"id": "A", "rate": rate}], "confidence": {"margin": 0.1, "level": 0.9}});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 200, "{what}");
    eventually(10, &format!("a plan for the new targets after {what}"), || async {
        stored_record(redis).filter(|r| r.plan.version > before).map(|_| ())
    })
    .await;
    plan_in_force(redis, what)
}

#[tokio::test]
async fn bytes_that_are_not_a_state_are_discarded_and_rounds_go_on() {
    early_in_a_minute().await;
    let log = Log::default();
    let _log = log.capture();
    let redis = RedisServer::start();
    let (app, _) = start_with_a_plan(&redis).await;

    let forgeries: [(&str, Option<&[u8]>); 12] = [
        ("bytes that are not UTF-8", Some(b"\xff\xfe\x00 not a state")),
        ("truncated JSON", Some(br#"{"corrections": {"A": 1.5}, "learning": {"plans": [{"since_version": 1,"#)),
        ("JSON that is not a state", Some(b"[1, 2, 3]")),
        ("an empty array (serde would fill a struct from it)", Some(b"[]")),
        ("a correction that was NaN (null in JSON)", Some(br#"{"corrections": {"A": null}}"#)),
        ("a correction beyond f64", Some(br#"{"corrections": {"A": 1e999}}"#)),
        ("an empty string", Some(b"")),
        (
            "more late windows than windows",
            Some(br#"{"stragglers": {"windows": 1, "windows_sq": 1, "late_windows": 5, "late": 1, "requests": 9, "last_window": 3}}"#),
        ),
        (
            "negative late requests",
            Some(br#"{"stragglers": {"windows": 9, "windows_sq": 9, "late_windows": 1, "late": -1, "requests": 9, "last_window": 3}}"#),
        ),
        (
            "late bodies' sizes of a histogram too short",
            Some(br#"{"stragglers": {"windows": 9, "windows_sq": 9, "late_windows": 1, "late": 1, "requests": 9, "last_window": 3, "bodies": [1, 2]}}"#),
        ),
        (
            "more late bodies than windows",
            Some(br#"{"stragglers": {"windows": 1, "windows_sq": 1, "late_windows": 1, "late": 1, "requests": 9, "last_window": 3, "bodies": [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,9]}}"#),
        ),
        ("a key of another type", None),
    ];
    for (i, (what, bytes)) in forgeries.into_iter().enumerate() {
        let discarded = log.discarded();
        forge(&redis, bytes);
        let rate = 0.45 - 0.04 * i as f64;
        let plan = new_targets(&app, &redis, rate, what).await;
        // Nothing of the forged state reached the plan: A's weight is its target.
        assert!((weight_of_a(&plan) - rate).abs() < 1e-6, "{what}: {plan:?}");
        let state = stored_state(&redis).expect("the round stored its state");
        assert!(state.corrections.is_empty() && state.stragglers.check().is_ok(), "{what}: {state:?}");
        assert_eq!(log.discarded(), discarded + 1, "{what}: the discarded state is logged once");
        assert_eq!(app.app().metrics.control_state_discarded.get(), i as u64 + 1, "{what}: and counted");
    }
}

/// The stored plan record holds the decision that made the plan; a NaN a bug let into
/// it is `null` in JSON. The plan in force must still read: rounds go on, the status
/// answers.
#[tokio::test]
async fn a_stored_decision_that_does_not_parse_leaves_the_plan_in_force_readable() {
    early_in_a_minute().await;
    let redis = RedisServer::start();
    let (app, _) = start_with_a_plan(&redis).await;
    let mut c = redis.conn();
    let raw: String = redis::cmd("GET").arg(keys().plan()).query(&mut c).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&raw).unwrap();
    record["decision"]["campaigns"][0]["target"] = serde_json::Value::Null;
    let _: () = redis::cmd("SET").arg(keys().plan()).arg(record.to_string()).query(&mut c).unwrap();

    let broken = stored_record(&redis).expect("the record still reads");
    assert!(broken.decision.is_none(), "the broken decision reads as none");
    let (status, body) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let plan = new_targets(&app, &redis, 0.25, "a broken decision").await;
    assert!((weight_of_a(&plan) - 0.25).abs() < 1e-6, "{plan:?}");
    assert!(stored_record(&redis).and_then(|r| r.decision).is_some(), "the next round stores a whole decision");
}

#[tokio::test]
async fn impossible_corrections_are_refused_or_bounded() {
    early_in_a_minute().await;
    let log = Log::default();
    let _log = log.capture();
    let redis = RedisServer::start();
    let (app, _) = start_with_a_plan(&redis).await;

    let junk: serde_json::Map<String, serde_json::Value> =
        (0..1000).map(|i| (format!("junk{i}"), json!(1.0))).collect();
    // The forged corrections; the correction of A they leave (1: refused); whether refused.
    let forgeries = [
        ("a zero correction", json!({"A": 0.0}), 1.0, true),
        ("a negative correction", json!({"A": -1.0}), 1.0, true),
        ("corrections for a thousand campaigns", serde_json::Value::Object(junk), 1.0, true),
        ("a huge correction", json!({"A": 1e300}), 2.0, false),
        ("a tiny correction", json!({"A": 1e-300}), 0.5, false),
        ("a correction of a campaign not in the targets", json!({"Z": 1.7}), 1.0, false),
    ];
    for (i, (what, corrections, g, refused)) in forgeries.into_iter().enumerate() {
        let discarded = log.discarded();
        let forged = json!({"corrections": corrections}).to_string();
        forge(&redis, Some(forged.as_bytes()));
        let rate = 0.3 - 0.04 * i as f64;
        let plan = new_targets(&app, &redis, rate, what).await;
        // Uniform eligibility, no traffic yet: A's weight is its target times the
        // correction in force, which stays within the controller's [1/2, 2].
        assert!((weight_of_a(&plan) - rate * g).abs() < 1e-6, "{what}: {plan:?}");
        let state = stored_state(&redis).expect("the round stored its state");
        let expected: BTreeMap<CampaignId, f64> = if g == 1.0 { BTreeMap::new() } else { [(a(), g)].into() };
        assert_eq!(state.corrections, expected, "{what}");
        let logged = log.discarded() - discarded;
        assert_eq!(logged, usize::from(refused), "{what}: logged {logged} times");
    }
}

/// A forged learning: its name, the state, whether the parse refuses it (logged) rather
/// than the controller setting it aside when it meets the plan in force.
type Forgery = (&'static str, ControlState, bool);

/// `base` changed by `f`, with the window not counted yet (the next round counts it).
fn forged(base: &Learning, f: impl FnOnce(&mut Learning)) -> ControlState {
    let mut l = Learning { last_window: 0, ..base.clone() };
    f(&mut l);
    ControlState { corrections: BTreeMap::new(), learning: Some(l), ..ControlState::default() }
}

/// The remembered weights of the plan in force.
fn last(l: &mut Learning) -> &mut PlanWeights {
    l.plans.last_mut().unwrap()
}

/// `base` with `e` as the evidence of campaign `id`.
fn evidence(base: &Learning, id: &str, e: Evidence) -> ControlState {
    forged(base, |l| {
        l.evidence.insert(CampaignId::parse(id).unwrap(), e);
    })
}

fn sums(requests: f64, measured: f64, predicted: f64, variance: f64, windows: u32) -> Evidence {
    Evidence { requests, measured, predicted, variance, windows }
}

/// Forgeries built on `honest` (a state that learnt one window at A's target).
fn forgeries(honest: &Learning, in_force: u64) -> Vec<Forgery> {
    let h = honest;
    let many: Vec<PlanWeights> =
        (0..2000).map(|_| PlanWeights { since_version: 0, until_version: 0, ..h.plans[0].clone() }).collect();
    vec![
        ("the plan in force's fingerprint on other weights", forged(h, |l| last(l).campaigns[0].1 = 0.9), false),
        ("a huge weight under the plan in force's fingerprint", forged(h, |l| last(l).campaigns[0].1 = 1e300), false),
        ("a negative weight", forged(h, |l| last(l).campaigns[0].1 = -0.5), true),
        ("a fingerprint of no plan", forged(h, |l| last(l).fingerprint ^= 0x5a5a), false),
        ("versions newer than the plan in force", forged(h, |l| last(l).until_version = in_force + 1000), false),
        (
            "versions backwards",
            forged(h, |l| {
                let p = last(l);
                p.since_version = p.until_version + 1;
            }),
            true,
        ),
        ("the plan in force marked replaced", forged(h, |l| last(l).replaced_ms = Some(0)), true),
        (
            "a plan stuck since the epoch, giving A nothing, that decided no request",
            forged(h, |l| {
                let old =
                    PlanWeights { since_version: 0, until_version: 0, replaced_ms: Some(0), ..l.plans[0].clone() };
                let old = PlanWeights { campaigns: vec![(a(), 0.0, Default::default())], no_ad_weight: 1.0, ..old };
                l.plans.insert(0, old);
            }),
            false,
        ),
        ("two thousand remembered plans", forged(h, |l| l.plans.splice(0..0, many).for_each(drop)), true),
        ("measured shares beyond 1", evidence(h, "A", sums(1000.0, 5000.0, 500.0, 10.0, 3)), true),
        ("negative evidence", evidence(h, "A", sums(-400.0, -200.0, 200.0, -1.0, 1)), true),
        ("a window count at its limit", evidence(h, "A", sums(400.0, 200.0, 200.0, 100.0, u32::MAX)), false),
        ("evidence of a campaign not in the targets", evidence(h, "Z", sums(400.0, 400.0, 0.0, 1.0, 5)), false),
    ]
}

#[tokio::test]
async fn forged_learning_never_bends_the_plan_and_learning_starts_afresh() {
    early_in_a_minute().await;
    let log = Log::default();
    let _log = log.capture();
    let redis = RedisServer::start();
    let period = 60_000;
    let (app, v1) = start_with_a_plan(&redis).await;

    // One complete window of 400 requests decided under v1, A exactly at its target:
    // honest learning sees no gap, and makes no correction.
    let last = allot_origin::now_ms() / period - 1;
    let events = traffic(&v1, last, period, 400, 0.5, "w");
    xadd(&mut redis.conn(), &allot_core::EventBatch { events }, allot_origin::now_ms());
    eventually(10, "counted", || async { (total_counts(&redis, "home_feed").requests.n == 400).then_some(()) }).await;
    ask_for_a_round(&app).await;
    let honest = eventually(10, "the window learnt", || async {
        stored_state(&redis).and_then(|s| s.learning).filter(|l| l.evidence.get(&a()).is_some_and(|e| e.windows == 1))
    })
    .await;
    let in_force = plan_in_force(&redis, "honest learning");
    assert!((weight_of_a(&in_force) - 0.5).abs() < 1e-6, "{in_force:?}");

    for (what, forged, refused) in forgeries(&honest, in_force.version) {
        let discarded = log.discarded();
        let json = serde_json::to_string(&forged).unwrap();
        forge(&redis, Some(json.as_bytes()));
        ask_for_a_round(&app).await;
        let raw = |redis: &RedisServer| -> Option<String> {
            redis::cmd("GET").arg(keys().state()).query(&mut redis.conn()).unwrap()
        };
        eventually(10, &format!("a round over {what}"), || async { raw(&redis).filter(|s| *s != json).map(|_| ()) })
            .await;
        let state = stored_state(&redis).expect("the round stored its state");
        let plan = plan_in_force(&redis, what);

        // The window is at A's target: whatever the forged state said, no correction,
        // and the plan keeps the target's weights.
        assert!(state.corrections.is_empty() && state.stragglers.check().is_ok(), "{what}: {state:?}");
        assert!((weight_of_a(&plan) - 0.5).abs() < 1e-6, "{what}: {plan:?}");
        // What is remembered is the placement's own history, within bounds.
        let learning = state.learning.as_ref().expect("learning is kept");
        assert!(learning.plans.len() <= MAX_PLANS, "{what}: {} plans remembered", learning.plans.len());
        for p in &learning.plans {
            assert!(p.since_version <= p.until_version && p.until_version <= plan.version, "{what}: {p:?}");
            let weights = std::iter::once(p.no_ad_weight).chain(p.campaigns.iter().map(|c| c.1));
            assert!(weights.into_iter().all(|w| w.is_finite() && (0.0..=1.0).contains(&w)), "{what}: {p:?}");
        }
        for (id, e) in &learning.evidence {
            assert_eq!(*id, a(), "{what}: evidence of a campaign not in the targets");
            let sums = [e.requests, e.measured, e.predicted, e.variance];
            assert!(sums.iter().all(|x| x.is_finite() && *x >= 0.0) && e.measured <= e.requests, "{what}: {e:?}");
        }
        let logged = log.discarded() - discarded;
        assert_eq!(logged, usize::from(refused), "{what}: logged {logged} times");
    }
}
