//! The control loop: a target change is solved and stored at once, and logged with its
//! targets for the archive; status shows the decision and the measured shares; among two
//! origins exactly one runs a placement's rounds, and the other takes over when it stops.

use allot_core::Event;
use allot_core::contract::{PlanSnapshot, keys, stream};
use allot_testkit::events::{allocation, campaign, xadd};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use serde_json::{Value, json};

/// An allocation event in the last complete window of `period_ms`.
fn last_window_event(i: usize, ad: Option<&str>, platform: &str, period_ms: u64) -> Event {
    let now = allot_origin::now_ms();
    let mut e = allocation(&format!("r{i}"), "home_feed", ad, &["A", "B"], 1.0);
    e.event_time_ms = (now / period_ms) * period_ms - period_ms / 2;
    e.platform = Some(platform.into());
    e
}

#[tokio::test]
async fn a_target_change_gets_a_plan_at_once_and_status_reports_it() {
    // The events sit in the minute before; the status must read that same window.
    crate::learning::early_in_a_minute().await;
    let redis = RedisServer::start();
    // A long period: only the change itself can trigger the round in time.
    let app =
        TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_PERIOD_MS", "60000"), ("ALLOT_CONTROL_LATENESS_MS", "0")]))
            .await;

    // 200 sampled requests in the last complete window: A 50 %, B 30 %, none 20 %.
    let events = (0..200)
        .map(|i| {
            let ad = match i % 10 {
                0..5 => Some("A"),
                5..8 => Some("B"),
                _ => None,
            };
            let mut e = last_window_event(i, ad, "ios", 60_000);
            if ad.is_none() {
                e.eligible = vec![campaign("A"), campaign("B")];
            }
            e
        })
        .collect();
    // Traffic from before these targets: straight into the stream (the ingest counts
    // events only under published plans, and there is none yet).
    xadd(&mut redis.conn(), &allot_core::EventBatch { events }, allot_origin::now_ms());
    eventually(10, "aggregation", || async { (total_counts(&redis, "home_feed").requests.n == 200).then_some(()) })
        .await;

    let started = std::time::Instant::now();
    let spec = json!({
        "campaigns": [
            {"id": "A", "rate": 0.5},
            {"id": "B", "rate": 0.3},
            {"id": "C", "rate": 0.1, "eligibility": {"platforms": ["android"]}}
        ],
        "confidence": {"margin": 0.05, "level": 0.9}
    });
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    let status = eventually(5, "first plan", || async {
        let (code, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (code == 200 && v["plan_version"] == 1).then_some(v)
    })
    .await;
    assert!(started.elapsed().as_secs() < 5, "the round ran well before the 60 s period");

    assert!(status["sample_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(status["window"]["samples"], 200);
    let campaigns = status["campaigns"].as_array().unwrap();
    let a = &campaigns[0];
    assert_eq!(a["id"], "A");
    assert_eq!(a["target"], 0.5);
    assert!(a["weight"].as_f64().unwrap() > 0.0);
    assert_eq!(a["feasibility"]["status"], "feasible");
    assert_eq!(a["samples"], 100);
    let est = &a["estimate"];
    assert!((est["share"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    // Every request was sampled: the interval for the realized share is the share itself.
    assert!((est["low"].as_f64().unwrap() - 0.5).abs() < 1e-9 && (est["high"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(est["level"], 0.9);
    // No android traffic was seen: C cannot get its 10 %.
    let c = &campaigns[2];
    assert_eq!(c["feasibility"]["status"], "infeasible", "{c}");
    assert_eq!(c["feasibility"]["max_share"], 0.0);

    // Stored: the plan, its history, and the controller state.
    let mut conn = redis.conn();
    let plan: String = redis::cmd("GET").arg(home_feed_keys().plan()).query(&mut conn).unwrap();
    let record: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(record["plan"]["version"], 1);
    assert_eq!(record["plan"]["campaigns"].as_array().unwrap().len(), 3);
    assert_eq!(record["plan"]["platforms"], json!(["android", "ios", "web"]), "the default vocabulary");
    let history: Vec<String> =
        redis::cmd("LRANGE").arg(home_feed_keys().plans()).arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(history.len(), 1);
    allot_core::Plan::parse(history[0].as_bytes()).unwrap();
    let exists: i64 = redis::cmd("EXISTS").arg(home_feed_keys().state()).query(&mut conn).unwrap();
    assert_eq!(exists, 1);

    // Another change: version 2 at once. A delete publishes a withdrawn plan (a tombstone).
    let mut spec2 = spec.clone();
    spec2["campaigns"][0]["rate"] = json!(0.4);
    assert_eq!(app.put_targets("home_feed", &spec2, MANAGER_TOKEN).await.status(), 200);
    eventually(5, "second plan", || async {
        let (_, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (v["plan_version"] == 2).then_some(())
    })
    .await;
    let r = app.http.delete(app.url("/v1/placements/home_feed")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let record = eventually(5, "withdrawal plan", || async {
        let mut conn = redis.conn();
        let plan: String = redis::cmd("GET").arg(home_feed_keys().plan()).query(&mut conn).unwrap();
        let v: Value = serde_json::from_str(&plan).unwrap();
        (v["plan"]["version"] == 3).then_some(v)
    })
    .await;
    assert_eq!(record["plan"]["campaigns"], json!([]));
    assert_eq!(record["plan"]["withdrawn"], json!(true));
    // Unregistered just after the withdrawal is stored.
    eventually(5, "the placement out of the registry", || async {
        let registered: Vec<String> = redis::cmd("HKEYS").arg(keys::REGISTRY).query(&mut redis.conn()).unwrap();
        registered.is_empty()
    })
    .await;

    // Every published plan is in the plan log, with the targets it was made for.
    let log: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream::PLAN_LOG).arg("-").arg("+").query(&mut conn).unwrap();
    let snapshots: Vec<PlanSnapshot> = log
        .ids
        .iter()
        .map(|e| {
            let s: String = e.get(stream::SNAPSHOT).unwrap();
            serde_json::from_str(&s).unwrap()
        })
        .collect();
    let versions: Vec<u64> = snapshots.iter().map(|s| s.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    let targets = |s: &PlanSnapshot| -> Vec<(String, f64)> {
        s.campaigns.iter().map(|c| (c.id.to_string(), c.target_rate)).collect()
    };
    assert_eq!(targets(&snapshots[0]), [("A".into(), 0.5), ("B".into(), 0.3), ("C".into(), 0.1)]);
    assert_eq!(targets(&snapshots[1]), [("A".into(), 0.4), ("B".into(), 0.3), ("C".into(), 0.1)]);
    assert!(snapshots[1].targets_rev > snapshots[0].targets_rev);
    let c = &snapshots[0].campaigns[2];
    assert_eq!((c.feasible, c.max_share), (false, Some(0.0)));
    assert!(snapshots[0].campaigns[0].feasible && snapshots[0].campaigns[0].weight > 0.0);
    assert!(snapshots[2].campaigns.is_empty(), "the withdrawal plan aims for nothing");
}

/// Two origins share the control shards; the placement's rounds run on the one holding
/// its shard only, and the other takes the shard over when that one stops.
#[tokio::test]
async fn two_origins_one_controller_per_placement_and_failover() {
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_PERIOD_MS", "300")];
    let mut a = TestApp::start(config(&redis, "", &env)).await;
    let mut b = TestApp::start(config(&redis, "", &env)).await;
    let shard = allot_core::shard::shard_of("home_feed", a.app().config.control.shards);
    let holds = |c: Option<Value>| {
        c.and_then(|c| c["held"].as_array().cloned()).is_some_and(|h| h.iter().any(|x| x["shard"] == shard))
    };
    // Both hold a share once settled, and the shard stays put from then on.
    eventually(10, "shared shards", || async {
        let (ha, hb) = (a.metric("allot_control_shards_held").await, b.metric("allot_control_shards_held").await);
        (ha == 32.0 && hb == 32.0).then_some(())
    })
    .await;
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    assert_eq!(b.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    eventually(5, "a plan", || async {
        let (_, v) = a.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        v["plan_version"].as_u64()
    })
    .await;
    let a_holds = holds(a.control().await);
    assert_ne!(a_holds, holds(b.control().await), "exactly one holds the shard");
    let (leader, follower) = if a_holds { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let (leader_before, follower_before) =
        (leader.metric("allot_control_rounds_total").await, follower.metric("allot_control_rounds_total").await);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let leader_rounds = leader.metric("allot_control_rounds_total").await - leader_before;
    assert!(leader_rounds >= 3.0, "the holder ran every period ({leader_rounds})");
    assert_eq!(follower.metric("allot_control_rounds_total").await, follower_before, "only one controller");
    let mut conn = redis.conn();
    let holder: String = redis::cmd("GET").arg(keys::shard_lease(shard)).query(&mut conn).unwrap();
    assert_eq!(holder.split_once(' ').map(|(_, h)| h), Some(leader.app().instance.as_str()), "<epoch> <holder>");

    // The holder stops (giving its shards back); the other one takes over.
    leader.shutdown().await;
    let spec2 = json!({"campaigns": [{"id": "A", "rate": 0.6}]});
    assert_eq!(follower.put_targets("home_feed", &spec2, MANAGER_TOKEN).await.status(), 200);
    eventually(5, "failover plan", || async {
        let (_, v) = follower.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (v["plan_version"] == 2).then_some(())
    })
    .await;
    assert!(follower.metric("allot_control_rounds_total").await > follower_before);
    assert_eq!(follower.metric("allot_control_shards_held").await, 64.0);
    let history: Vec<String> =
        redis::cmd("LRANGE").arg(home_feed_keys().plans()).arg(0).arg(-1).query(&mut conn).unwrap();
    let versions: Vec<u64> = history.iter().map(|p| allot_core::Plan::parse(p.as_bytes()).unwrap().version).collect();
    assert_eq!(versions, [2, 1], "versions increase by one, no competing plans");
    follower.shutdown().await;
}

fn home_feed_keys() -> keys::PlacementKeys {
    keys::PlacementKeys::of_raw("home_feed")
}

/// A document an earlier version stored past bounds added since (a rule of 65
/// platforms, a creative past 8 KiB) is still read: its placement gets plans and a
/// status, and only a new write of it is held to the bounds.
#[tokio::test]
async fn a_document_stored_before_its_bounds_keeps_its_placement_controlled() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[])).await;
    let platforms: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    let spec = json!({"campaigns": [
        {"id": "A", "rate": 0.3, "creative": {"t": "x".repeat(9 * 1024)}, "eligibility": {"platforms": platforms}},
        {"id": "B", "rate": 0.2}
    ]});
    redis::pipe()
        .hset_multiple(home_feed_keys().targets(), &[("spec", spec.to_string().as_str()), ("rev", "1")])
        .hincr(keys::REGISTRY, "home_feed", 1)
        .sadd(keys::DIRTY, "home_feed")
        .query::<()>(&mut redis.conn())
        .unwrap();
    let status = eventually(10, "a plan for the stored document", || async {
        let (code, v) = app.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
        (code == 200 && v["plan_version"].as_u64().is_some()).then_some(v)
    })
    .await;
    assert_eq!(status["campaigns"].as_array().unwrap().len(), 2, "{status}");
    let r = app.put_targets("home_feed", &spec, MANAGER_TOKEN).await;
    assert_eq!(r.status(), 422, "written anew, the document is held to the bounds");
}
