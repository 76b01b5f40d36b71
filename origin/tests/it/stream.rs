//! The event stream under faults: the aggregator's connection killed or its Redis
//! restarted, an archiver held back while the ingest goes on, a lane that dies, and
//! markers that must outlive long windows. Every accepted event is counted exactly once
//! and archived exactly once, and what is lost on purpose (the memory guard) is counted.

use std::time::Duration;

use allot_core::WindowStats;
use allot_core::contract::keys::PlacementKeys;
use allot_core::contract::stream;
use allot_testkit::events::{allocation, batch, now_ms, plan, record_published};
use allot_testkit::origin::{OriginConfig, TestApp, config};
use allot_testkit::poll::eventually;
use allot_testkit::redis::{RedisServer, total_counts};
use allot_testkit::s3::S3Server;

/// Posts `n` single-event bodies for home_feed, numbered from `from`; retries a body
/// until it is accepted (Redis may be coming back), which its replay memory makes safe.
async fn post(app: &TestApp, from: usize, n: usize) {
    for i in from..from + n {
        let body = batch(vec![allocation(&format!("r{i}"), "home_feed", Some("A"), &["A"], 0.5)]);
        eventually(30, "the body accepted", || async { (app.post_signed(&body).await.status() == 202).then_some(()) })
            .await;
    }
}

async fn counted(redis: &RedisServer, n: u64) {
    eventually(30, &format!("{n} requests counted"), || async {
        (total_counts(redis, "home_feed").requests.n == n).then_some(())
    })
    .await;
}

/// `INFO stats` `total_connections_received`.
fn connections_received(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(&mut redis.conn()).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix("total_connections_received:")).unwrap();
    line.trim().parse().unwrap()
}

fn xlen(redis: &RedisServer) -> usize {
    redis::cmd("XLEN").arg(stream::EVENTS).query(&mut redis.conn()).unwrap()
}

#[tokio::test]
async fn the_aggregator_recovers_from_client_kill_and_a_redis_restart_counting_once() {
    let mut redis = RedisServer::start_with_aof();
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    post(&app, 0, 20).await;
    counted(&redis, 20).await;

    // Every client connection killed, the aggregator's blocking one among them.
    let killed: i64 = redis::cmd("CLIENT").arg(&["KILL", "TYPE", "normal"]).query(&mut redis.conn()).unwrap();
    assert!(killed >= 2, "the origin's connections were killed ({killed})");
    post(&app, 20, 20).await;
    counted(&redis, 40).await;

    // The server itself restarts (its data on disk): the connections are gone for good.
    redis.restart();
    post(&app, 40, 20).await;
    counted(&redis, 60).await;

    // A server that stops answering without closing the socket (a pause longer than the
    // block and its margin): the read times out, and the connection is replaced, not
    // kept waiting on (a half-open socket would never answer).
    let before = connections_received(&redis);
    redis::cmd("CLIENT").arg(&["PAUSE", "7000", "ALL"]).query::<()>(&mut redis.conn()).unwrap();
    tokio::time::sleep(Duration::from_millis(7500)).await;
    let opened = connections_received(&redis) - before;
    // This test's own two (the pause, the count), and the aggregator's new connection.
    assert!(opened >= 3, "the timed-out blocking connection was replaced ({opened} opened)");
    post(&app, 60, 20).await;
    counted(&redis, 80).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = total_counts(&redis, "home_feed");
    assert_eq!(s.requests.n, 80, "every event counted exactly once");
    assert_eq!(s.requests.ht, 160.0);
}

#[tokio::test]
async fn the_stream_is_trimmed_behind_the_slowest_group_and_the_cap_counts_its_cut() {
    let redis = RedisServer::start();
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    // A second group that reads nothing, as an archiver stuck on S3 would.
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", stream::EVENTS, "stuck", "0", "MKSTREAM"])
        .query(&mut redis.conn())
        .unwrap();
    let cfg = config(
        &redis,
        "[redis]\nstream_max_len = 30\ntrim_every_ms = 50\nstream_retain_secs = 0\n",
        &[("ALLOT_CONTROL_ENABLED", "false")],
    );
    let app = TestApp::start(cfg).await;
    post(&app, 0, 20).await;
    counted(&redis, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(xlen(&redis), 20, "the aggregator is done, the stuck group is not: nothing trimmed");
    assert_eq!(app.metric("allot_stream_trimmed_unread_entries_total{stream=\"events\"}").await, 0.0);

    // Past the memory guard: cut to it, and the cut counted as a loss.
    post(&app, 20, 20).await;
    counted(&redis, 40).await;
    eventually(10, "the cut counted", || async {
        (app.metric("allot_stream_trimmed_unread_entries_total{stream=\"events\"}").await == 10.0).then_some(())
    })
    .await;
    assert_eq!(xlen(&redis), 30);

    // The stuck group reads and acknowledges everything: the stream empties.
    let mut c = redis.conn();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "stuck", "me", "COUNT", "1000", "STREAMS", stream::EVENTS, ">"])
        .query(&mut c)
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 30);
    let _: usize = redis::cmd("XACK").arg(stream::EVENTS).arg("stuck").arg(&ids).query(&mut c).unwrap();
    eventually(10, "the stream trimmed", || async { (xlen(&redis) == 0).then_some(()) }).await;
    assert_eq!(app.metric("allot_stream_trimmed_entries_total{stream=\"events\"}").await, 30.0);
    assert_eq!(
        app.metric("allot_stream_trimmed_unread_entries_total{stream=\"events\"}").await,
        10.0,
        "no more losses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_held_back_by_s3_loses_nothing_while_the_ingest_goes_on() {
    let redis = RedisServer::start();
    let mut s3 = S3Server::start();
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    // The old cap was `XADD MAXLEN ~ stream_max_len`; 100 bodies go well past 40.
    let toml = OriginConfig::new()
        .redis(&redis.url())
        .archive(&s3)
        .merge(
            "[redis]\nstream_max_len = 100000\ntrim_every_ms = 50\nstream_retain_secs = 0\n\
             [archive]\nprefix = \"t/\"\nflush_max_age_secs = 1\nretry_max_backoff_ms = 300\n",
        )
        .load(&[("ALLOT_CONTROL_ENABLED", "false")]);
    s3.stop();
    let app = TestApp::start(toml).await;
    post(&app, 0, 100).await;
    counted(&redis, 100).await;
    eventually(30, "a failed upload", || async {
        (app.metric("allot_archive_put_failures_total{dataset=\"events\"}").await > 0.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(xlen(&redis), 100, "counted by the aggregator but not archived: nothing trimmed");
    assert!(app.metric("allot_archive_lag_entries{dataset=\"events\"}").await >= 100.0);

    s3.restart();
    eventually(60, "everything archived and the stream trimmed", || async { (xlen(&redis) == 0).then_some(()) }).await;
    assert_eq!(app.metric("allot_archive_rows_total{dataset=\"events\"}").await, 100.0, "each event once");
    assert_eq!(app.metric("allot_archive_entries_total{dataset=\"events\"}").await, 100.0);
    assert_eq!(app.metric("allot_stream_trimmed_unread_entries_total{stream=\"events\"}").await, 0.0);
    assert_eq!(app.metric("allot_archive_lost_entries_total{dataset=\"events\"}").await, 0.0);
    assert_eq!(total_counts(&redis, "home_feed").requests.n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lane_is_restarted_and_readyz_names_it_meanwhile() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    // The events lane fails its first 4 runs: with restarts backing off from 100 ms, it
    // is down for a good part of a second.
    let cfg = OriginConfig::new()
        .redis(&redis.url())
        .archive(&s3)
        .merge(
            "[archive]\nprefix = \"t/\"\nflush_max_age_secs = 1\nretry_max_backoff_ms = 2000\n\
             lane_down_grace_secs = 0\nfailpoint = { dataset = \"events\", times = 4 }\n",
        )
        .load(&[("ALLOT_CONTROL_ENABLED", "false")]);
    let app = TestApp::start(cfg).await;
    let http = reqwest::Client::new();
    let body = eventually(10, "readyz to report the lane", || async {
        let r = http.get(app.url("/readyz")).send().await.unwrap();
        if r.status() == 503 { Some(r.json::<serde_json::Value>().await.unwrap()) } else { None }
    })
    .await;
    assert_eq!(body["error"]["code"], "not_ready");
    assert!(body["error"]["message"].as_str().unwrap().contains("events"), "{body}");
    eventually(10, "the other lane to run on", || async {
        (app.metric("allot_archive_lane_up{dataset=\"plans\"}").await == 1.0).then_some(())
    })
    .await;

    eventually(30, "the lane restarted and up", || async {
        (app.metric("allot_archive_lane_up{dataset=\"events\"}").await == 1.0
            && app.metric("allot_archive_lane_restarts_total{dataset=\"events\"}").await == 4.0)
            .then_some(())
    })
    .await;
    let r = http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // And it archives.
    post(&app, 0, 5).await;
    eventually(30, "the events archived", || async {
        (app.metric("allot_archive_rows_total{dataset=\"events\"}").await == 5.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_a_long_period_markers_outlive_their_windows_and_a_late_redelivery_counts_nothing() {
    let redis = RedisServer::start();
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    // A 10-minute period: windows are kept 80 minutes, far past the old fixed 900 s
    // marker lifetime.
    let period = 600_000u64;
    let app = TestApp::start(config(
        &redis,
        "",
        &[("ALLOT_CONTROL_ENABLED", "false"), ("ALLOT_CONTROL_PERIOD_MS", &period.to_string())],
    ))
    .await;
    let t = now_ms();
    post(&app, 0, 10).await;
    counted(&redis, 10).await;

    let mut c = redis.conn();
    let keys = PlacementKeys::of_raw("home_feed");
    let window = keys.window(WindowStats::window_index(t, period));
    let window_ttl: i64 = redis::cmd("PTTL").arg(&window).query(&mut c).unwrap();
    assert!(window_ttl > 900_000, "the window is kept past 900 s ({window_ttl} ms)");
    let ids: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
        redis::cmd("XRANGE").arg(stream::EVENTS).arg("-").arg("+").query(&mut c).unwrap();
    assert_eq!(ids.len(), 10);
    for (id, _) in &ids {
        let marker_ttl: i64 = redis::cmd("PTTL").arg(keys.applied(id)).query(&mut c).unwrap();
        assert!(marker_ttl >= window_ttl - 1000, "marker {id}: {marker_ttl} ms, window {window_ttl} ms");
    }

    // Every entry delivered again, as a late claim would: recognised, not counted.
    let _: () =
        redis::cmd("XGROUP").arg(&["SETID", stream::EVENTS, stream::AGGREGATOR_GROUP, "0"]).query(&mut c).unwrap();
    eventually(20, "the redelivered entries recognised", || async {
        (app.metric("allot_aggregate_entries_total{result=\"duplicate\"}").await == 10.0).then_some(())
    })
    .await;
    assert_eq!(total_counts(&redis, "home_feed").requests.n, 10);
}

#[tokio::test]
async fn a_claimed_entry_trimmed_before_it_was_counted_is_counted_as_lost() {
    let redis = RedisServer::start();
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    let mut ingest =
        TestApp::start(config(&redis, "", &[("ALLOT_AGGREGATE_ENABLED", "false"), ("ALLOT_CONTROL_ENABLED", "false")]))
            .await;
    post(&ingest, 0, 3).await;
    ingest.shutdown().await;
    // A consumer read all three and died; one of them was deleted from the stream since.
    let mut c = redis.conn();
    let _: () =
        redis::cmd("XGROUP").arg(&["CREATE", stream::EVENTS, stream::AGGREGATOR_GROUP, "0"]).query(&mut c).unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg(&["GROUP", stream::AGGREGATOR_GROUP, "dead", "COUNT", "10", "STREAMS", stream::EVENTS, ">"])
        .query(&mut c)
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    let _: usize = redis::cmd("XDEL").arg(stream::EVENTS).arg(&ids[1]).query(&mut c).unwrap();

    let app = TestApp::start(config(&redis, "", &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    eventually(20, "the claim counted", || async {
        (app.metric("allot_stream_lost_entries_total{group=\"aggregator\"}").await == 1.0).then_some(())
    })
    .await;
    counted(&redis, 2).await;
    assert_eq!(app.metric("allot_aggregate_claimed_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_only_replica_trims_nothing_the_aggregators_have_not_read() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    record_published(&mut redis.conn(), &plan("home_feed", 1, 0.5, &["A"]));
    let trim = "[redis]\ntrim_every_ms = 50\nstream_retain_secs = 0\n";
    let toml = OriginConfig::new()
        .redis(&redis.url())
        .archive(&s3)
        .merge(&format!("{trim}[archive]\nprefix = \"t/\"\nflush_max_age_secs = 1\n"))
        .load(&[("ALLOT_AGGREGATE_ENABLED", "false"), ("ALLOT_CONTROL_ENABLED", "false")]);
    let ingest = TestApp::start(toml).await;
    post(&ingest, 0, 10).await;
    eventually(30, "the events archived", || async {
        (ingest.metric("allot_archive_entries_total{dataset=\"events\"}").await == 10.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(xlen(&redis), 10, "archived, but no aggregator has read them: kept");

    // An aggregator starts: it reads them from the start, and then they go.
    let _aggregator = TestApp::start(config(&redis, trim, &[("ALLOT_CONTROL_ENABLED", "false")])).await;
    counted(&redis, 10).await;
    eventually(10, "the stream trimmed", || async { (xlen(&redis) == 0).then_some(()) }).await;
}
