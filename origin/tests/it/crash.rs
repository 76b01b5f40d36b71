//! Crash recovery with the real binary: a consumer that dies between applying a batch
//! and acknowledging it (a failpoint, then `kill -9` at a random moment) loses nothing
//! and counts nothing twice once a fresh consumer takes over.
//!
//! The failpoint exists only with the `failpoints` feature, which the crate's
//! dev-dependency on itself turns on for its tests and for the binary they run.

use std::time::Duration;

use allot_core::contract::keys::PlacementKeys;
use allot_core::contract::stream;
use allot_testkit::events::{allocation, batch, plan, record_published};
use allot_testkit::origin::{OriginProcess, TestApp, config, metric, post_signed};
use allot_testkit::poll::{self, eventually};
use allot_testkit::redis::{RedisServer, total_counts};

/// Ingests `bodies` single-event bodies through an in-process origin that does not
/// aggregate, so only the processes under test consume the stream.
async fn ingest(redis: &RedisServer, bodies: usize) {
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    let mut app =
        TestApp::start(config(redis, "", &[("ALLOT_AGGREGATE_ENABLED", "false"), ("ALLOT_CONTROL_ENABLED", "false")]))
            .await;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let http = app.http.clone();
        let url = app.url("/v1/events");
        tasks.spawn(async move {
            for i in (chunk..bodies).step_by(8) {
                let ad = if i % 4 == 0 { Some("A") } else { None };
                let body = batch(vec![allocation(&format!("r{i}"), "home_feed", ad, &["A"], 0.5)]);
                assert_eq!(post_signed(&http, &url, &body).await.status(), 202);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    app.shutdown().await;
}

/// `XPENDING key group`: count, smallest id, largest id, per-consumer counts.
type PendingSummary = (usize, Option<String>, Option<String>, Option<Vec<(String, String)>>);

fn pending(redis: &RedisServer) -> usize {
    let mut c = redis.conn();
    // Before the group exists, everything is still to do.
    let summary: Result<PendingSummary, _> =
        redis::cmd("XPENDING").arg(stream::EVENTS).arg(stream::AGGREGATOR_GROUP).query(&mut c);
    summary.map_or(usize::MAX, |s| s.0)
}

fn markers(redis: &RedisServer) -> usize {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg(home_feed_keys().applied("*")).query(&mut c).unwrap();
    keys.len()
}

fn assert_exact(redis: &RedisServer, bodies: usize) {
    let s = total_counts(redis, "home_feed");
    assert_eq!(s.requests.n as usize, bodies, "every event counted exactly once");
    assert_eq!(s.requests.ht, bodies as f64 * 2.0);
    let a = &s.campaigns[&allot_core::CampaignId::parse("A").unwrap()];
    assert_eq!(a.allocations.n as usize, bodies.div_ceil(4));
}

/// Waits for a process started with a failpoint to exit at it; a binary built without
/// the hook would never exit, so that case gets its own message.
fn exit_at_failpoint(origin: &mut OriginProcess, secs: u64) -> Option<i32> {
    let status = poll::until_blocking(Duration::from_secs(secs), || origin.child.try_wait().unwrap());
    let status = status.unwrap_or_else(|| {
        panic!(
            "the origin did not exit at its failpoint within {secs} s: is {} built with `--features failpoints`?",
            env!("CARGO_BIN_EXE_allot-origin")
        )
    });
    status.code()
}

#[tokio::test]
async fn a_consumer_killed_between_apply_and_ack_is_counted_once() {
    const {
        assert!(
            cfg!(feature = "failpoints"),
            "allot-origin's tests need its `failpoints` feature (the dev-dependency on itself enables it)"
        )
    };
    let redis = RedisServer::start();
    ingest(&redis, 100).await;

    // The first consumer applies one batch of 30 and exits before XACK.
    let mut first = OriginProcess::start(
        &redis,
        "",
        &[
            ("ALLOT_AGGREGATE_FAILPOINT", "exit_after_apply"),
            ("ALLOT_AGGREGATE_BATCH", "30"),
            ("ALLOT_AGGREGATE_CONSUMER", "c1"),
            ("ALLOT_CONTROL_ENABLED", "false"),
        ],
    );
    assert_eq!(exit_at_failpoint(&mut first, 20), Some(3), "the failpoint fired");
    assert_eq!(markers(&redis), 30, "a batch was applied");
    assert_eq!(pending(&redis), 30, "and not acknowledged");
    assert_eq!(total_counts(&redis, "home_feed").requests.n, 30);

    // The same consumer restarts: its pending batch comes back, is recognised, and the
    // rest is counted.
    let second = OriginProcess::start(
        &redis,
        "",
        &[("ALLOT_AGGREGATE_CONSUMER", "c1"), ("ALLOT_AGGREGATE_BATCH", "30"), ("ALLOT_CONTROL_ENABLED", "false")],
    );
    let http = reqwest::Client::new();
    eventually(20, "all entries acknowledged", || async {
        (pending(&redis) == 0 && markers(&redis) == 100).then_some(())
    })
    .await;
    assert_exact(&redis, 100);
    let dup = metric(&http, &second.url("/metrics"), "allot_aggregate_entries_total{result=\"duplicate\"}").await;
    assert_eq!(dup, 30.0, "the redelivered batch was recognised");

    // Graceful stop on SIGTERM: exit 0, nothing left pending.
    let mut second = second;
    second.sigterm();
    assert_eq!(second.wait_exit(10), Some(0));
    assert_eq!(pending(&redis), 0);
}

#[tokio::test]
async fn kill_9_mid_stream_then_another_consumer_claims_the_rest() {
    let redis = RedisServer::start();
    let bodies = 3000;
    ingest(&redis, bodies).await;

    let mut victim = OriginProcess::start(
        &redis,
        "",
        &[("ALLOT_AGGREGATE_CONSUMER", "victim"), ("ALLOT_AGGREGATE_BATCH", "20"), ("ALLOT_CONTROL_ENABLED", "false")],
    );
    // Kill it while it is working through the stream.
    eventually(20, "some progress", || async { (markers(&redis) >= 200).then_some(()) }).await;
    victim.kill9();
    let applied_before = markers(&redis);
    assert!(applied_before < bodies, "killed mid-stream ({applied_before})");
    let left_pending = pending(&redis);

    // A differently named consumer claims what the dead one left pending.
    let heir =
        OriginProcess::start(&redis, "", &[("ALLOT_AGGREGATE_CONSUMER", "heir"), ("ALLOT_CONTROL_ENABLED", "false")]);
    eventually(30, "everything counted", || async {
        (pending(&redis) == 0 && markers(&redis) == bodies).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exact(&redis, bodies);
    let claimed = metric(&reqwest::Client::new(), &heir.url("/metrics"), "allot_aggregate_claimed_total").await;
    assert!(claimed >= left_pending as f64, "{claimed} claimed, {left_pending} were pending");
}

#[tokio::test]
async fn a_group_with_some_entries_already_applied_counts_only_the_rest() {
    let redis = RedisServer::start();
    ingest(&redis, 10).await;
    // Mark three entries as applied, as a consumer that died before XACK would have.
    let mut c = redis.conn();
    let ids: Vec<(String, std::collections::HashMap<String, String>)> =
        redis::cmd("XRANGE").arg(stream::EVENTS).arg("-").arg("+").query(&mut c).unwrap();
    for (id, _) in ids.iter().take(3) {
        redis::cmd("SET").arg(home_feed_keys().applied(id)).arg(1).query::<()>(&mut c).unwrap();
    }
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    eventually(10, "acknowledged", || async { (pending(&redis) == 0 && markers(&redis) == 10).then_some(()) }).await;
    eventually(10, "counts", || async { (total_counts(&redis, "home_feed").requests.n == 7).then_some(()) }).await;
    assert_eq!(app.metric("allot_aggregate_entries_total{result=\"duplicate\"}").await, 3.0);
    assert_eq!(app.metric("allot_aggregate_entries_total{result=\"applied\"}").await, 7.0);
}

fn home_feed_keys() -> PlacementKeys {
    PlacementKeys::of_raw("home_feed")
}
