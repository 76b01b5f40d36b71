//! The plan log is trimmed as the event stream is: below what the archiver's plans lane
//! has read and acknowledged. An S3 outage keeps every snapshot the lane has not
//! archived; past the memory guard a reader that is behind loses the oldest, counted;
//! an origin without an archive keeps the log to its cap and loses nothing anyone reads.

use allot_core::contract::stream;
use allot_testkit::origin::{MANAGER_TOKEN, OriginConfig, TestApp};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;
use serde_json::json;

fn plan_log_len(redis: &RedisServer) -> usize {
    redis::cmd("XLEN").arg(stream::PLAN_LOG).query(&mut redis.conn()).unwrap()
}

/// Registers `n` placements, each of which gets its first plan, and so one snapshot.
async fn register(app: &TestApp, n: usize) {
    let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
    for i in 0..n {
        assert_eq!(app.put_targets(&format!("p{i}"), &spec, MANAGER_TOKEN).await.status(), 201);
    }
    eventually(30, &format!("{n} plans published"), || async {
        (app.metric("allot_plans_published_total{why=\"first\"}").await == n as f64).then_some(())
    })
    .await;
}

// A long period: only the registrations run rounds, one publish each.
const ONE_ROUND_EACH: [(&str, &str); 1] = [("ALLOT_CONTROL_PERIOD_MS", "600000")];

/// An origin without an archive whose plan log holds at most `cap` snapshots, with
/// `placements` registered (and as many snapshots appended).
async fn without_archive(redis: &RedisServer, cap: u64, placements: usize) -> TestApp {
    let toml = OriginConfig::new()
        .redis(&redis.url())
        .merge(&format!("[redis]\nplan_log_max_len = {cap}\ntrim_every_ms = 50\nstream_retain_secs = 0\n"))
        .load(&ONE_ROUND_EACH);
    let app = TestApp::start(toml).await;
    register(&app, placements).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_kept_until_archived_and_trimmed_once_archived() {
    let redis = RedisServer::start();
    let mut s3 = S3Server::start();
    let toml = OriginConfig::new()
        .redis(&redis.url())
        .archive(&s3)
        .merge(
            "[redis]\ntrim_every_ms = 50\nstream_retain_secs = 0\n\
             [archive]\nprefix = \"t/\"\nflush_max_age_secs = 1\nretry_max_backoff_ms = 300\n",
        )
        .load(&ONE_ROUND_EACH);
    s3.stop();
    let app = TestApp::start(toml).await;
    register(&app, 12).await;
    eventually(30, "a failed upload of the plans", || async {
        (app.metric("allot_archive_put_failures_total{dataset=\"plans\"}").await > 0.0).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(plan_log_len(&redis), 12, "not archived: nothing trimmed");

    s3.restart();
    eventually(60, "the snapshots archived and trimmed", || async { (plan_log_len(&redis) == 0).then_some(()) }).await;
    assert_eq!(app.metric("allot_archive_entries_total{dataset=\"plans\"}").await, 12.0, "each snapshot once");
    assert_eq!(app.metric("allot_stream_trimmed_entries_total{stream=\"plans\"}").await, 12.0);
    assert_eq!(app.metric("allot_stream_trimmed_unread_entries_total{stream=\"plans\"}").await, 0.0);
}

#[tokio::test]
async fn past_its_cap_the_plan_log_is_cut_and_the_cut_counted() {
    let redis = RedisServer::start();
    // A group that reads nothing, as an archiver whose process is down.
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", stream::PLAN_LOG, "stuck", "0", "MKSTREAM"])
        .query(&mut redis.conn())
        .unwrap();
    let app = without_archive(&redis, 8, 12).await;
    eventually(30, "the cut counted", || async {
        (app.metric("allot_stream_trimmed_unread_entries_total{stream=\"plans\"}").await == 4.0).then_some(())
    })
    .await;
    assert_eq!(plan_log_len(&redis), 8, "unread snapshots kept to the cap");
    assert_eq!(app.metric("allot_stream_trimmed_entries_total{stream=\"plans\"}").await, 0.0);
    assert_eq!(app.metric("allot_stream_trimmed_unread_entries_total{stream=\"events\"}").await, 0.0);
}

#[tokio::test]
async fn without_an_archive_the_plan_log_is_kept_to_its_cap_and_nothing_counts_as_lost() {
    let redis = RedisServer::start();
    let app = without_archive(&redis, 3, 5).await;
    eventually(30, "the log cut to its cap", || async {
        (app.metric("allot_stream_trimmed_entries_total{stream=\"plans\"}").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(plan_log_len(&redis), 3, "the newest snapshots kept");
    assert_eq!(
        app.metric("allot_stream_trimmed_unread_entries_total{stream=\"plans\"}").await,
        0.0,
        "no reader, no loss"
    );
}
