//! A replica that vanished with entries pending: another claims them once they are idle
//! and writes exactly the objects the vanished one wrote, so nothing is lost or doubled.

use std::time::{Duration, Instant};

use allot_core::EventBatch;
use serde_json::json;

use crate::archiver::{
    get, group_backlog, object_bytes, parquet_glob, redeliver_all, sample_batches, start, wait_until,
};
use crate::support::{self, Redis, S3, S3Config};

/// Servers, and `sample_batches()` in the event stream.
fn seeded() -> (Redis, S3, redis::Connection, Vec<EventBatch>) {
    let redis = Redis::start();
    let s3 = S3::start();
    let mut conn = redis.conn();
    let batches = sample_batches();
    for (i, b) in batches.iter().enumerate() {
        support::xadd(&mut conn, b, 1_795_600_900_000 + i as u64);
    }
    (redis, s3, conn, batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replicas_pending_entries_are_claimed_and_rewritten_in_place() {
    let (redis, s3, mut conn, batches) = seeded();
    let total: usize = batches.iter().map(|b| b.events.len()).sum();

    // Replica "gone" archives everything...
    let mut gone = s3.config();
    gone.consumer = "archiver-gone".into();
    let run = start(&redis, gone).await;
    wait_until("the first replica's flush", || get(&run.metrics.events.entries_archived) == batches.len() as u64).await;
    run.shutdown().await;
    let keys = s3.keys();
    let before = object_bytes(&s3, &keys);
    // ...but, as if it died between storing and acknowledging, its entries are pending
    // again, and it never comes back.
    redeliver_all(&mut conn, "archiver-gone");
    assert_eq!(group_backlog(&mut conn), batches.len());

    let mut other = s3.config();
    other.consumer = "archiver-2".into();
    other.claim_idle_secs = 1;
    let started = Instant::now();
    let run = start(&redis, other).await;
    wait_until("the claim", || get(&run.metrics.events.claimed_entries) == batches.len() as u64).await;
    wait_until("the claimed entries archived", || get(&run.metrics.events.entries_archived) == batches.len() as u64)
        .await;
    assert!(started.elapsed() >= Duration::from_secs(1), "claimed only once idle");
    run.shutdown().await;

    assert_eq!(group_backlog(&mut conn), 0, "every entry acknowledged");
    assert_eq!(s3.keys(), keys, "the same keys");
    assert!(before == object_bytes(&s3, &keys), "the same bytes");
    let counts = support::duckdb(&format!("SELECT count(*), count(DISTINCT request_id) FROM {}", parquet_glob(&s3)));
    assert_eq!(counts, vec![vec![json!(total), json!(total)]], "no loss, no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replicas_entries_are_left_alone() {
    let (redis, s3, mut conn, batches) = seeded();
    // "busy" read the entries a moment ago and is still working on them.
    redis::cmd("XGROUP").arg(&["CREATE", "allot:events", "archiver", "0"]).exec(&mut conn).unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "archiver", "busy", "COUNT", "1000", "STREAMS", "allot:events", ">"])
        .query(&mut conn)
        .unwrap();
    let mut other = s3.config();
    other.consumer = "archiver-2".into();
    other.claim_idle_secs = 60;
    let run = start(&redis, other).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&run.metrics.events.claimed_entries), 0);
    run.shutdown().await;
    assert_eq!(group_backlog(&mut conn), batches.len(), "still pending for their owner");
    assert!(s3.keys().is_empty());
}
