//! A replica that vanished with entries pending: another claims them once they are idle
//! and writes exactly the objects the vanished one wrote, so nothing is lost or doubled.

use std::time::{Duration, Instant};

use allot_core::EventBatch;
use allot_core::contract::stream;
use allot_testkit::events::xadd;
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;
use serde_json::json;

use crate::archiver::{
    Running, create_group, get, group_backlog, parquet_glob, read_as, redeliver_all, sample_batches, start,
};
use allot_testkit::duckdb;

/// Servers, and `sample_batches()` in the event stream.
fn seeded() -> (RedisServer, S3Server, redis::Connection, Vec<EventBatch>) {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let mut conn = redis.conn();
    let batches = sample_batches();
    for (i, b) in batches.iter().enumerate() {
        xadd(&mut conn, b, 1_795_600_900_000 + i as u64);
    }
    (redis, s3, conn, batches)
}

/// Replica "archiver-gone" archives the stream, then, as if it had died between storing
/// and acknowledging, its entries are pending again and it never comes back. Returns
/// the keys it stored and their bytes.
async fn interrupted_flush(
    redis: &RedisServer,
    s3: &S3Server,
    conn: &mut redis::Connection,
    entries: usize,
) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut gone = s3.archive_config();
    gone.consumer = "archiver-gone".into();
    let run = start(redis, gone).await;
    eventually(60, "the first replica's flush", async || get(&run.metrics.events.entries_archived) == entries as u64)
        .await;
    run.shutdown().await;
    let keys = s3.parquet_keys();
    let before = s3.object_bytes(&keys);
    redeliver_all(conn, "archiver-gone");
    assert_eq!(group_backlog(conn), entries);
    (keys, before)
}

/// Another replica that claims entries idle for 2 s.
async fn claimer(redis: &RedisServer, s3: &S3Server) -> Running {
    let mut other = s3.archive_config();
    other.consumer = "archiver-2".into();
    other.claim_idle_secs = 2;
    start(redis, other).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replicas_pending_entries_are_claimed_and_rewritten_in_place() {
    let (redis, s3, mut conn, batches) = seeded();
    let total: usize = batches.iter().map(|b| b.events.len()).sum();

    let (keys, before) = interrupted_flush(&redis, &s3, &mut conn, batches.len()).await;
    let run = claimer(&redis, &s3).await;
    eventually(60, "the claim", async || get(&run.metrics.events.claimed_entries) == batches.len() as u64).await;
    eventually(60, "the claimed entries archived", async || {
        get(&run.metrics.events.entries_archived) == batches.len() as u64
    })
    .await;
    run.shutdown().await;

    assert_eq!(group_backlog(&mut conn), 0, "every entry acknowledged");
    assert_eq!(s3.parquet_keys(), keys, "the same keys");
    assert!(before == s3.object_bytes(&keys), "the same bytes");
    let counts = duckdb::query(&format!("SELECT count(*), count(DISTINCT request_id) FROM {}", parquet_glob(&s3)));
    assert_eq!(counts, vec![vec![json!(total), json!(total)]], "no loss, no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_keeps_stored_objects_whole_when_entries_were_trimmed() {
    let (redis, s3, mut conn, batches) = seeded();
    let total: usize = batches.iter().map(|b| b.events.len()).sum();
    let (keys, before) = interrupted_flush(&redis, &s3, &mut conn, batches.len()).await;
    // The stream was trimmed under the flush's first entry meanwhile.
    let first: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(&[stream::EVENTS, "-", "+", "COUNT", "1"]).query(&mut conn).unwrap();
    let _: usize = redis::cmd("XDEL").arg(stream::EVENTS).arg(&first.ids[0].id).query(&mut conn).unwrap();
    let run = claimer(&redis, &s3).await;
    eventually(60, "the claim", async || get(&run.metrics.events.claimed_entries) == batches.len() as u64 - 1).await;
    eventually(60, "the claimed entries archived", async || {
        get(&run.metrics.events.entries_archived) == batches.len() as u64
    })
    .await;
    assert_eq!(get(&run.metrics.events.lost_entries), 1, "the trimmed entry counted as lost");
    run.shutdown().await;
    assert_eq!(group_backlog(&mut conn), 0);
    assert_eq!(s3.parquet_keys(), keys, "the keys of the interrupted flush, not new ones");
    assert!(before == s3.object_bytes(&keys), "the stored objects kept whole");
    let counts = duckdb::query(&format!("SELECT count(*), count(DISTINCT request_id) FROM {}", parquet_glob(&s3)));
    assert_eq!(counts, vec![vec![json!(total), json!(total)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_claimed_only_once_idle_for_the_claim_time() {
    let (redis, s3, mut conn, batches) = seeded();
    // "slow" read the entries just now: they may be its buffer, or a flush in progress.
    create_group(&mut conn);
    read_as(&mut conn, "slow", 1000);
    let read_at = Instant::now();
    let mut other = s3.archive_config();
    other.consumer = "archiver-2".into();
    other.claim_idle_secs = 3;
    let run = start(&redis, other).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&run.metrics.events.claimed_entries), 0, "younger than the claim time: left alone");
    assert_eq!(group_backlog(&mut conn), batches.len());
    eventually(60, "the claim", async || get(&run.metrics.events.claimed_entries) == batches.len() as u64).await;
    assert!(read_at.elapsed() >= Duration::from_secs(3));
    eventually(60, "the claimed entries archived", async || {
        get(&run.metrics.events.entries_archived) == batches.len() as u64
    })
    .await;
    run.shutdown().await;
    assert_eq!(group_backlog(&mut conn), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_delivered_to_a_lane_but_never_seen_are_archived() {
    let (redis, s3, mut conn, batches) = seeded();
    let mut cfg = s3.archive_config();
    cfg.claim_idle_secs = 2;
    let me = cfg.consumer.clone();
    let run = start(&redis, cfg).await;
    eventually(60, "the backlog archived", async || get(&run.metrics.events.entries_archived) == batches.len() as u64)
        .await;
    // A read whose reply was lost: delivered to this lane's consumer, in no buffer.
    let id = xadd(&mut conn, &batches[0], 1_795_600_999_000);
    read_as(&mut conn, &me, 10);
    assert_eq!(group_backlog(&mut conn), 1);
    eventually(60, "the stray entry archived", async || {
        get(&run.metrics.events.entries_archived) == batches.len() as u64 + 1
    })
    .await;
    run.shutdown().await;
    assert_eq!(group_backlog(&mut conn), 0);
    assert!(s3.parquet_keys().iter().any(|k| k.ends_with(&format!("/{id}-{id}.parquet"))), "{:?}", s3.parquet_keys());
}
