//! Fencing the control loop: a lease holder that pauses past its grant cannot undo its
//! successor's work; versions are allocated once per placement; stored plans only move
//! forward; a change is stored with its audit entry whatever follows fails; a `PUT`
//! racing a withdrawal is not left out of the registry.

use allot_core::contract::{PlanSnapshot, keys, stream};
use allot_core::{PlacementId, Plan};
use allot_origin::store::{Fenced, PlanRecord};
use allot_testkit::origin::{MANAGER_TOKEN, TestApp, VIEWER_TOKEN, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use serde_json::json;

fn home_feed() -> PlacementId {
    PlacementId::parse("home_feed").unwrap()
}

fn history(redis: &RedisServer) -> Vec<u64> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(keys::PlacementKeys::new(&home_feed()).plans())
        .arg(0)
        .arg(-1)
        .query(&mut redis.conn())
        .unwrap();
    raw.iter().map(|p| Plan::parse(p.as_bytes()).unwrap().version).collect()
}

fn logged_versions(redis: &RedisServer) -> Vec<u64> {
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream::PLAN_LOG).arg("-").arg("+").query(&mut redis.conn()).unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            let json: String = e.get(stream::SNAPSHOT).unwrap();
            PlanSnapshot::parse(json.as_bytes()).unwrap().version
        })
        .collect()
}

#[tokio::test]
async fn versions_are_allocated_once_and_stored_plans_only_move_forward() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let store = &app.app().store;
    let p = home_feed();
    assert_eq!(store.allocate_version(&p, 2, 0).await.unwrap(), Fenced::Done(1));
    assert_eq!(store.allocate_version(&p, 2, 0).await.unwrap(), Fenced::Done(2), "never the same version twice");
    assert_eq!(store.allocate_version(&p, 1, 0).await.unwrap(), Fenced::Epoch, "an older epoch is refused");
    assert_eq!(store.allocate_version(&p, 3, 7).await.unwrap(), Fenced::Done(8), "above the stored plan");
    assert_eq!(store.allocate_version(&p, 2, 0).await.unwrap(), Fenced::Epoch, "epoch 3 has written since");

    let record = |version| PlanRecord {
        plan: Plan::withdrawn(p.clone(), version, 1_000, 1.0),
        decision: None,
        targets_rev: 1,
        published_at_ms: 1_000,
    };
    assert_eq!(store.issue_plan(&p, &record(8).plan, 10, 3).await.unwrap(), Fenced::Done(()));
    assert_eq!(store.issue_plan(&p, &record(9).plan, 10, 2).await.unwrap(), Fenced::Epoch, "an older epoch");
    assert_eq!(history(&redis), [8], "what ingest learns versions from");
    assert_eq!(store.save_plan(&p, &record(8), 3).await.unwrap(), Fenced::Done(()));
    assert_eq!(store.save_plan(&p, &record(8), 3).await.unwrap(), Fenced::Stale, "the same version again");
    assert_eq!(store.save_plan(&p, &record(5), 3).await.unwrap(), Fenced::Stale, "an older version");
    assert_eq!(store.save_plan(&p, &record(9), 2).await.unwrap(), Fenced::Epoch, "an older epoch");
    assert_eq!(store.plan_record(&p).await.unwrap().unwrap().plan.version, 8);
}

#[tokio::test]
async fn a_placement_leaves_the_registry_only_under_the_stamp_it_was_judged_by() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let (store, p) = (&app.app().store, home_feed());
    let judged = store.register(&p).await.unwrap();
    // A PUT registers it again between the round's reads and its removal.
    let renewed = store.register(&p).await.unwrap();
    assert!(renewed > judged);
    assert!(!store.unregister(&p, judged).await.unwrap(), "a newer registration keeps it in");
    assert_eq!(store.placements().await.unwrap(), std::slice::from_ref(&p));
    assert!(store.unregister(&p, renewed).await.unwrap());
    assert_eq!(store.registration(&p).await.unwrap(), None);
}

/// The leader pauses (renewals included) between publishing a plan and storing it, for
/// three lease times; the other origin takes the lease and publishes its own plan. When
/// the first wakes up, its write is refused: the stored plan stays the successor's, and
/// no version was used twice.
#[tokio::test]
async fn a_leader_that_stalls_past_its_lease_is_fenced() {
    let redis = RedisServer::start();
    // Rounds only on changes and at takeover, so the plans are the ones this test makes.
    let env = [("ALLOT_CONTROL_PERIOD_MS", "60000"), ("ALLOT_CONTROL_LEASE_MS", "600")];
    let stall = [env[0], env[1], ("ALLOT_CONTROL_FAILPOINT", "stall_before_save")];
    let a = TestApp::start(config(&redis, "", &stall)).await;
    // a holds every shard; b is new to the membership (not settled for two lease times),
    // so a keeps them, and runs the round.
    eventually(5, "a leads", || async { (a.metric("allot_control_shards_held").await == 64.0).then_some(()) }).await;
    let a_epoch = a.metric("allot_control_epoch").await;
    let b = TestApp::start(config(&redis, "", &env)).await;

    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    assert_eq!(a.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    // a publishes version 1 and pauses; b takes over (a new epoch) and makes version 2.
    // Both were issued (the edge may have served either), so ingest knows both.
    eventually(5, "b's plan", || async {
        (b.metric("allot_control_leader").await == 1.0 && history(&redis) == [2, 1]).then_some(())
    })
    .await;
    eventually(5, "a's save refused", || async {
        (a.metric("allot_control_fenced_total{step=\"save\"}").await == 1.0).then_some(())
    })
    .await;
    let stored = b.app().store.plan_record(&home_feed()).await.unwrap().unwrap();
    assert_eq!(stored.plan.version, 2, "the stalled leader did not set the stored plan back");
    let (_, status) = b.get_json("/v1/placements/home_feed/status", VIEWER_TOKEN).await;
    assert_eq!(status["plan_version"], 2, "{status}");
    let mut logged = logged_versions(&redis);
    logged.sort_unstable();
    assert_eq!(logged, [1, 2], "each published version once: two plans, two versions");
    assert!(a.metric("allot_control_shard_changes_total{change=\"lost\"}").await >= 1.0, "a stepped down");
    let fence: std::collections::HashMap<String, u64> =
        redis::cmd("HGETALL").arg(keys::PlacementKeys::new(&home_feed()).fence()).query(&mut redis.conn()).unwrap();
    assert!(fence["epoch"] as f64 > a_epoch, "b wrote under a newer epoch: {fence:?}, a had {a_epoch}");
}

/// A stored change answers success and keeps its audit entry even when what follows it
/// fails: here the global audit feed and the dirty set are keys of the wrong type.
#[tokio::test]
async fn a_change_is_stored_with_its_audit_entry_whatever_follows_fails() {
    let redis = RedisServer::start();
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_PERIOD_MS", "300")])).await;
    let mut c = redis.conn();
    redis::cmd("SET").arg(keys::AUDIT).arg("not a stream").query::<()>(&mut c).unwrap();
    redis::cmd("SET").arg(keys::DIRTY).arg("not a set").query::<()>(&mut c).unwrap();

    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    assert_eq!(app.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    assert_eq!(app.metric("allot_audit_feed_failures_total").await, 1.0);
    let (status, trail) = app.get_json("/v1/audit?placement=home_feed", VIEWER_TOKEN).await;
    assert_eq!(status, 200);
    let entries = trail["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{trail}");
    assert_eq!((entries[0]["action"].as_str(), entries[0]["who"].as_str()), (Some("put"), Some("mia")));
    assert_eq!(entries[0]["after"]["campaigns"][0]["rate"], 0.5, "the stored targets: {trail}");
    // Without the wake-up mark, the next full round still solves it.
    eventually(5, "a plan from a full round", || async { (history(&redis) == [1]).then_some(()) }).await;
}

/// The round that withdraws a deleted placement takes it out of the registry; a `PUT`
/// that registered it again just before must not be lost. The state such a race leaves
/// (targets back, the withdrawn plan stored, the placement out of the registry, its
/// round asked for) is set up with the control loop off; an origin then heals it.
#[tokio::test]
async fn a_put_racing_a_withdrawal_stays_controlled() {
    let redis = RedisServer::start();
    let admin = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    let p = home_feed();
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    assert_eq!(admin.put_targets("home_feed", &spec, MANAGER_TOKEN).await.status(), 201);
    let withdrawn = PlanRecord {
        plan: Plan::withdrawn(p.clone(), 4, 1_000, 1.0),
        decision: None,
        targets_rev: 1,
        published_at_ms: 0,
    };
    assert_eq!(admin.app().store.issue_plan(&p, &withdrawn.plan, 10, 0).await.unwrap(), Fenced::Done(()));
    assert_eq!(admin.app().store.save_plan(&p, &withdrawn, 0).await.unwrap(), Fenced::Done(()));
    let stamp = admin.app().store.registration(&p).await.unwrap().unwrap();
    assert!(admin.app().store.unregister(&p, stamp).await.unwrap());
    assert!(admin.app().store.placements().await.unwrap().is_empty());

    let controller = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_PERIOD_MS", "300")])).await;
    eventually(5, "a plan with ads again", || async { (history(&redis).first() == Some(&5)).then_some(()) }).await;
    assert_eq!(controller.app().store.placements().await.unwrap(), std::slice::from_ref(&p), "registered again");
    // The plan's history is written before it is published, its record after.
    let stored = eventually(5, "version 5 or later recorded", || async {
        controller.app().store.plan_record(&p).await.unwrap().filter(|r| r.plan.version >= 5)
    })
    .await;
    assert!(!stored.plan.withdrawn && stored.plan.campaigns.len() == 1, "{:?}", stored.plan);
}

#[tokio::test]
async fn fences_above_every_epoch_issued_move_the_counter_past_them_and_control_goes_on() {
    let redis = RedisServer::start();
    let env = [("ALLOT_CONTROL_PERIOD_MS", "60000"), ("ALLOT_CONTROL_LEASE_MS", "1500")];
    let app = TestApp::start(config(&redis, "", &env)).await;
    // Two placements in two shards.
    let shard = |id: &str| allot_core::shard::shard_of(id, app.app().config.control.shards);
    let other = (0..).map(|i| format!("p{i}")).find(|id| shard(id) != shard("home_feed")).unwrap();
    let placements = ["home_feed", other.as_str()];
    let mut spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    for p in placements {
        assert_eq!(app.put_targets(p, &spec, MANAGER_TOKEN).await.status(), 201);
    }
    let versions = || async {
        let mut v = Vec::new();
        for p in placements {
            let (_, s) = app.get_json(&format!("/v1/placements/{p}/status"), VIEWER_TOKEN).await;
            v.push(s["plan_version"].as_u64());
        }
        v
    };
    eventually(10, "the first plans", || async { (versions().await == [Some(1), Some(1)]).then_some(()) }).await;

    // What a Redis restored from an older copy leaves: its epoch counter went back, below
    // the epochs holders still acting on grants from before wrote into the placements'
    // fences since, different in each. (A key holder could write the same.)
    let mut c = redis.conn();
    let counter: u64 = redis::cmd("GET").arg(keys::LEASE_EPOCH).query(&mut c).unwrap();
    let fence = |p: &str| keys::PlacementKeys::new(&PlacementId::parse(p).unwrap()).fence();
    let seen = [counter + 1000, counter + 500];
    for (p, e) in placements.iter().zip(seen) {
        let _: () = redis::cmd("HSET").arg(fence(p)).arg("epoch").arg(e).query(&mut c).unwrap();
    }

    // The changes' rounds are refused by the fences, and the next renewals grant both
    // shards above them: the changes are published without any shard changing hands.
    spec["campaigns"][0]["rate"] = json!(0.4);
    for p in placements {
        assert_eq!(app.put_targets(p, &spec, MANAGER_TOKEN).await.status(), 200);
    }
    eventually(15, "the changes published", || async { (versions().await == [Some(2), Some(2)]).then_some(()) }).await;
    assert!(app.metric_sum("allot_control_fenced_total").await >= 2.0, "refused first");
    let raised: u64 = redis::cmd("GET").arg(keys::LEASE_EPOCH).query(&mut c).unwrap();
    for (p, e) in placements.iter().zip(seen) {
        let written: u64 = redis::cmd("HGET").arg(fence(p)).arg("epoch").query(&mut c).unwrap();
        assert!(written > e && written <= raised, "{p} written under a new grant ({written}, fence {e})");
    }
    for change in ["lost", "released"] {
        let n = app.metric(&format!("allot_control_shard_changes_total{{change=\"{change}\"}}")).await;
        assert_eq!(n, 0.0, "no shard {change}");
    }
    assert_eq!(app.metric_sum("allot_control_garbage_total").await, 0.0, "nothing taken for forged");
}

/// A release names the epoch its origin knows. When the reply to a reissue was lost,
/// Redis holds the shard for that origin under a later epoch it never learnt, and
/// would keep it from every origin for a lease time; the release gives it back. Only
/// the origin's own grants go: a later one to another origin, or one below the named
/// epoch, stays.
#[test]
fn a_release_gives_back_the_reissue_whose_reply_was_lost_and_nothing_else() {
    let redis = RedisServer::start();
    let mut c = redis.conn();
    let lease = |shard| keys::shard_lease(shard);
    let held = [(3, "2000000 me"), (4, "2000001 them"), (5, "999 me")];
    redis::cmd("SET").arg(keys::LEASE_EPOCH).arg(2_000_001).exec(&mut c).unwrap();
    for (shard, value) in held {
        redis::cmd("SET").arg(lease(shard)).arg(value).arg("PX").arg(10_000).exec(&mut c).unwrap();
    }
    let script = redis::Script::new(allot_origin::shards::SYNC);
    let mut sync = script.key(keys::MEMBERS);
    sync.key(keys::MEMBER_INFO).key(keys::LEASE_EPOCH).arg("me").arg(10_000).arg("0").arg(64);
    for shard in [3, 4, 5] {
        // The origin believes it holds each under 1,000: its grant before the reissue.
        sync.key(lease(shard)).arg("r").arg(1_000);
    }
    type Raw = (u64, u64, u64, u64, Vec<String>, Vec<i64>);
    let (_, _, forged, broken, _, outcomes): Raw = sync.invoke(&mut c).unwrap();
    assert_eq!((forged, broken, outcomes), (0, 0, vec![-1, -1, -1]));
    let mut left = |shard| -> Option<String> { redis::cmd("GET").arg(lease(shard)).query(&mut c).unwrap() };
    assert_eq!(left(3), None, "its own later grant is given back");
    assert_eq!(left(4).as_deref(), Some("2000001 them"), "another origin's stays");
    assert_eq!(left(5).as_deref(), Some("999 me"), "a grant below the one named stays");
}
