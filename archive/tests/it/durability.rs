//! Consumer names under hostile configurations: replicas that share a configuration
//! never share a name (no duplicate rows), and a name another live process holds is
//! refused until it is free.

use allot_core::contract::stream;
use allot_testkit::events::xadd;
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;
use serde_json::json;

use crate::archiver::{get, group_backlog, parquet_glob, sample_batches, start};
use allot_testkit::duckdb;

/// The consumers of the archiver group on the event stream.
fn consumers(conn: &mut redis::Connection) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply =
        redis::cmd("XINFO").arg(&["CONSUMERS", stream::EVENTS, stream::ARCHIVER_GROUP]).query(conn).unwrap();
    reply.consumers.into_iter().map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_archivers_configured_alike_share_no_name_and_write_no_row_twice() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let (a, b) = (s3.archive_config(), s3.archive_config());
    assert_ne!(a.consumer, b.consumer, "the same configuration, two names");
    let (a, b) = (start(&redis, a).await, start(&redis, b).await);
    let mut conn = redis.conn();
    let batches = sample_batches();
    let total: usize = batches.iter().map(|b| b.events.len()).sum();
    for round in 0..3u64 {
        for (i, batch) in batches.iter().enumerate() {
            xadd(&mut conn, batch, 1_795_600_900_000 + round * 100 + i as u64);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // An archiver counts its entries once their acknowledgement returns, a moment after
    // the group shows them done: wait for both.
    let archived = || get(&a.metrics.events.entries_archived) + get(&b.metrics.events.entries_archived);
    let expected = 3 * batches.len() as u64;
    eventually(60, "everything archived", async || group_backlog(&mut conn) == 0 && archived() >= expected).await;
    assert_eq!(archived(), expected);
    assert_eq!(consumers(&mut conn).len(), 2);
    a.shutdown().await;
    b.shutdown().await;
    // The same batches three times: each request id in exactly three rows, never more.
    let counts = duckdb::query(&format!(
        "SELECT count(*), min(n), max(n) FROM (SELECT request_id, count(*) AS n FROM {} GROUP BY request_id)",
        parquet_glob(&s3)
    ));
    assert_eq!(counts, vec![vec![json!(total), json!(3), json!(3)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_another_live_process_holds_is_refused_until_it_is_free() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let mut cfg = s3.archive_config();
    cfg.consumer = "configured-twice".into();
    cfg.retry_max_backoff_ms = 200;
    let first = start(&redis, cfg.clone()).await;
    eventually(30, "the first archiver's lanes up", async || get(&first.metrics.events.lane_up) == 1).await;
    let key = allot_core::contract::keys::consumer_lock(stream::EVENTS, stream::ARCHIVER_GROUP, "configured-twice");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut redis.conn()).unwrap();
    assert!(ttl > 5_000, "the name is locked ({ttl} ms left)");

    let second = start(&redis, cfg).await;
    eventually(30, "the second refused and retrying", async || get(&second.metrics.events.lane_restarts) >= 2).await;
    assert_eq!(get(&second.metrics.events.lane_up), 0);
    let mut conn = redis.conn();
    let batches = sample_batches();
    for (i, b) in batches.iter().enumerate() {
        xadd(&mut conn, b, 1_795_600_900_000 + i as u64);
    }
    eventually(60, "the first archives everything", async || {
        get(&first.metrics.events.entries_archived) == batches.len() as u64
    })
    .await;
    assert_eq!(get(&second.metrics.events.entries_archived), 0, "the second never read under the name");

    // The first stops and releases the name: the second takes it over.
    first.shutdown().await;
    eventually(30, "the second runs", async || get(&second.metrics.events.lane_up) == 1).await;
    xadd(&mut conn, &batches[0], 1_795_600_999_000);
    eventually(60, "the second archives", async || get(&second.metrics.events.entries_archived) == 1).await;
    second.shutdown().await;
    assert_eq!(group_backlog(&mut conn), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_gone_with_nothing_pending_are_deleted_from_the_group() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let mut conn = redis.conn();
    // The consumer of a process that stopped long ago with nothing pending.
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", stream::EVENTS, stream::ARCHIVER_GROUP, "0", "MKSTREAM"])
        .query(&mut conn)
        .unwrap();
    let _: i64 = redis::cmd("XGROUP")
        .arg(&["CREATECONSUMER", stream::EVENTS, stream::ARCHIVER_GROUP, "ghost"])
        .query(&mut conn)
        .unwrap();
    let mut cfg = s3.archive_config();
    // Claims after 2 s, so consumers idle 8 s with nothing pending are deleted.
    cfg.claim_idle_secs = 2;
    let me = cfg.consumer.clone();
    let run = start(&redis, cfg).await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(consumers(&mut conn).contains(&"ghost".to_string()), "not idle long enough yet");
    eventually(30, "the gone consumer deleted", async || !consumers(&mut conn).contains(&"ghost".to_string())).await;
    assert_eq!(consumers(&mut conn), vec![me], "the live one stays");
    assert_eq!(get(&run.metrics.events.redis_failures), 0, "the deleting script ran cleanly");
    run.shutdown().await;
}
