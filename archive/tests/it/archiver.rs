//! The archiver against a real redis-server and a real S3 server (s3s-fs), read back by
//! a third-party Parquet reader (DuckDB).

use std::sync::Arc;
use std::time::Duration;

use allot_archive::{ArchiveConfig, Archiver, ArchiverMetrics};
use allot_core::contract::stream;
use allot_core::{Event, EventBatch, EventKind};
use allot_testkit::events::{event, xadd};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;
use redis::TypedCommands;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use allot_testkit::duckdb;

/// 2026-11-25T09:59:50Z: the test events straddle the 09/10 hour boundary.
const BASE_MS: u64 = 1_795_600_790_000;

pub struct Running {
    pub metrics: Arc<ArchiverMetrics>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), allot_archive::ArchiveError>>,
}

pub async fn start(redis: &RedisServer, cfg: ArchiveConfig) -> Running {
    let archiver = Archiver::new(cfg).await.unwrap();
    let metrics = archiver.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let client = redis::Client::open(redis.url()).unwrap();
    let task = tokio::spawn(async move {
        archiver
            .run(client, async move {
                let _ = stopped.await;
            })
            .await
    });
    Running { metrics, stop, task }
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("archiver stops").unwrap().unwrap();
    }
}

pub fn get(c: &impl allot_archive::metrics::Reading) -> u64 {
    allot_archive::ArchiverMetrics::get(c)
}

/// Pending + undelivered entries of the archiver group.
pub fn group_backlog(conn: &mut redis::Connection) -> usize {
    let info = conn.xinfo_groups(stream::EVENTS).unwrap();
    let g = info.groups.iter().find(|g| g.name == stream::ARCHIVER_GROUP).expect("archiver group");
    g.pending + g.lag.unwrap_or(0)
}

/// Makes every event entry pending for `consumer` again, as if it had read them and
/// crashed before acknowledging.
pub fn redeliver_all(conn: &mut redis::Connection, consumer: &str) {
    redis::cmd("XGROUP").arg(&["SETID", stream::EVENTS, stream::ARCHIVER_GROUP, "0"]).exec(conn).unwrap();
    let redelivered = read_as(conn, consumer, 1000);
    assert!(matches!(redelivered, redis::Value::Array(ref a) if !a.is_empty()));
}

/// Creates the archiver's group on the event stream from its start, as the archiver
/// would on its first run.
pub fn create_group(conn: &mut redis::Connection) {
    redis::cmd("XGROUP").arg(&["CREATE", stream::EVENTS, stream::ARCHIVER_GROUP, "0"]).exec(conn).unwrap();
}

/// Reads up to `count` new entries of the event stream as the archiver's `consumer`:
/// they are pending for it from then on.
pub fn read_as(conn: &mut redis::Connection, consumer: &str, count: usize) -> redis::Value {
    let count = count.to_string();
    redis::cmd("XREADGROUP")
        .arg(&["GROUP", stream::ARCHIVER_GROUP, consumer, "COUNT", &count, "STREAMS", stream::EVENTS, ">"])
        .query(conn)
        .unwrap()
}

/// 30 batches of 1..=7 events across two hour partitions, with every column varied.
pub fn sample_batches() -> Vec<EventBatch> {
    let mut t = BASE_MS;
    (0..30u64)
        .map(|b| {
            let events = (0..(b % 7 + 1))
                .map(|i| {
                    t += 700;
                    let id = format!("req-{b}-{i}");
                    let rate = [1.0, 0.5, 0.25, 0.125][(b % 4) as usize];
                    let mut e = match i % 3 {
                        0 => event(EventKind::Allocation, &id, "home_feed", t, Some("A"), &["A", "B"], b, rate),
                        1 => event(EventKind::Allocation, &id, "home_feed", t, None, &[], b, rate),
                        _ => event(EventKind::Impression, &id, "home_feed", t, Some("B"), &[], b, rate),
                    };
                    if b % 5 == 0 {
                        e.platform = None;
                        e.country = None;
                        e.colo = None;
                    }
                    e.unreported = b % 3 == 1 && e.kind == EventKind::Allocation;
                    e
                })
                .collect();
            EventBatch { events }
        })
        .collect()
}

pub fn parquet_glob(s3: &S3Server) -> String {
    format!("read_parquet('{}/test/events/*/*/*.parquet', hive_partitioning = true)", s3.bucket_dir().display())
}

/// What DuckDB should read back for an event (same column order as the query below).
fn expected_row(e: &Event, received_ms: u64) -> serde_json::Value {
    let part = allot_archive::partition::Partition::of_unix_ms(e.event_time_ms);
    json!([
        e.request_id.as_str(),
        e.kind.as_str(),
        e.event_time_ms,
        received_ms,
        e.placement.as_str(),
        e.ad_id.as_ref().map(|a| a.as_str()),
        e.plan_version,
        e.sample_rate,
        e.weight(),
        e.eligible.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        e.platform,
        e.country,
        e.colo,
        e.unreported,
        part.day.to_string(),
        part.hour,
    ])
}

const READ_BACK: &str = "SELECT request_id, kind, epoch_ms(event_time), epoch_ms(received_time), placement, ad_id, \
     plan_version, sample_rate, weight, eligible, platform, country, colo, unreported, CAST(dt AS VARCHAR), CAST(hour AS INTEGER)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_events_are_parquet_at_the_right_keys_and_a_retry_overwrites() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let mut conn = redis.conn();
    let batches = sample_batches();
    let mut expected = Vec::new();
    let mut ids = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let received = BASE_MS + 100_000 + i as u64;
        ids.push(xadd(&mut conn, b, received));
        expected.extend(b.events.iter().map(|e| expected_row(e, received)));
    }
    let total = expected.len();

    // All entries are in the stream before the archiver starts, so one read takes them
    // and the age limit (1 s) flushes them together: one object per hour partition.
    let cfg = s3.archive_config();
    let run = start(&redis, cfg.clone()).await;
    eventually(60, "all entries archived", async || get(&run.metrics.events.entries_archived) == batches.len() as u64)
        .await;
    eventually(60, "the lag metric to drain", async || {
        get(&run.metrics.events.lag_entries) == 0 && get(&run.metrics.events.flushes) > 0
    })
    .await;
    assert_eq!(get(&run.metrics.events.rows_written), total as u64);
    assert_eq!(get(&run.metrics.events.malformed_entries), 0);
    assert!(run.metrics.render().contains("allot_archive_lag_entries{dataset=\"events\"} 0\n"));
    run.shutdown().await;
    assert_eq!(group_backlog(&mut conn), 0, "every entry acknowledged");

    let (first, last) = (&ids[0], &ids[ids.len() - 1]);
    let keys = s3.parquet_keys();
    assert_eq!(
        keys,
        vec![
            format!("test/events/dt=2026-11-25/hour=09/{first}-{last}.parquet"),
            format!("test/events/dt=2026-11-25/hour=10/{first}-{last}.parquet"),
        ]
    );

    // A third-party reader gets exactly the rows and values back.
    let glob = parquet_glob(&s3);
    let rows = duckdb::query(&format!("{READ_BACK} FROM {glob} ORDER BY request_id"));
    expected.sort_by(|a, b| a[0].as_str().cmp(&b[0].as_str()));
    assert_eq!(rows.len(), total);
    for (got, want) in rows.iter().zip(&expected) {
        assert_eq!(&serde_json::Value::Array(got.clone()), want);
    }
    let per_hour = duckdb::query(&format!("SELECT CAST(hour AS INTEGER), count(*) FROM {glob} GROUP BY 1 ORDER BY 1"));
    let nine = expected.iter().filter(|r| r[15] == 9).count();
    assert_eq!(per_hour, vec![vec![json!(9), json!(nine)], vec![json!(10), json!(total - nine)]]);
    assert!(nine > 0 && nine < total, "both partitions used");

    // Simulate a crash between storing and acknowledging: make every entry pending for
    // the archiver's consumer again. The restarted archiver rewrites the same keys with
    // the same bytes: no duplicate rows.
    let before = s3.object_bytes(&keys);
    redeliver_all(&mut conn, &cfg.consumer);
    assert_eq!(group_backlog(&mut conn), batches.len());
    let run = start(&redis, cfg).await;
    eventually(60, "the pending entries re-archived", async || {
        get(&run.metrics.events.entries_archived) == batches.len() as u64
    })
    .await;
    run.shutdown().await;
    assert_eq!(group_backlog(&mut conn), 0);
    assert_eq!(s3.parquet_keys(), keys, "same keys");
    assert!(before == s3.object_bytes(&keys), "same bytes");
    let count = duckdb::query(&format!("SELECT count(*), count(DISTINCT request_id) FROM {glob}"));
    assert_eq!(count, vec![vec![json!(total), json!(total)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_and_an_archiver_restart_lose_and_duplicate_nothing() {
    let redis = RedisServer::start();
    let mut s3 = S3Server::start();
    let mut cfg = s3.archive_config();
    cfg.flush_max_rows = 40;
    let url = redis.url();

    // A producer appends 150 batches (1..=5 events each) over about 3 s.
    let producer = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let mut total = 0;
        for b in 0..150u64 {
            let t = BASE_MS + b * 1000;
            let events: Vec<Event> = (0..(b % 5 + 1))
                .map(|i| event(EventKind::Allocation, &format!("r{b}-{i}"), "search", t + i, None, &[], 1, 0.5))
                .collect();
            total += events.len();
            xadd(&mut conn, &EventBatch { events }, t);
            std::thread::sleep(Duration::from_millis(20));
        }
        total
    });

    let run = start(&redis, cfg.clone()).await;
    eventually(60, "a first flush", async || get(&run.metrics.events.flushes) > 0).await;
    s3.stop();
    // Work that must wait for S3, however far the producer has got.
    let mut conn = redis.conn();
    let mut extra = 0;
    for b in 0..5u64 {
        let events = vec![event(EventKind::Allocation, &format!("x{b}"), "search", BASE_MS + b, None, &[], 1, 0.5)];
        extra += events.len();
        xadd(&mut conn, &EventBatch { events }, BASE_MS);
    }
    eventually(60, "a failed upload", async || get(&run.metrics.events.put_failures) > 0).await;
    eventually(60, "the lag to show", async || get(&run.metrics.events.lag_entries) > 0).await;
    // Stop the archiver mid-outage: its flush stays pending in the stream.
    run.shutdown().await;
    assert!(group_backlog(&mut conn) > 0);

    // A new archiver (same consumer) finds S3 still down, retries, then succeeds.
    let run = start(&redis, cfg).await;
    eventually(60, "the restarted archiver to hit the outage", async || get(&run.metrics.events.put_failures) > 0)
        .await;
    s3.restart();
    let total = tokio::task::spawn_blocking(move || producer.join().unwrap()).await.unwrap() + extra;
    eventually(60, "the backlog to drain", async || group_backlog(&mut conn) == 0).await;
    eventually(60, "the lag metric to drain", async || get(&run.metrics.events.lag_entries) == 0).await;
    run.shutdown().await;

    let glob = parquet_glob(&s3);
    let counts = duckdb::query(&format!("SELECT count(*), count(DISTINCT request_id) FROM {glob}"));
    assert_eq!(counts, vec![vec![json!(total), json!(total)]], "no loss, no duplicates");
    assert!(s3.parquet_keys().len() > 2, "several flushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_entry_deleted_from_the_stream_does_not_stall_recovery() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let mut conn = redis.conn();
    let batches = sample_batches();
    for (i, b) in batches.iter().take(3).enumerate() {
        xadd(&mut conn, b, BASE_MS + i as u64);
    }
    // An earlier run read all three; then the stream was trimmed under the middle one.
    create_group(&mut conn);
    let cfg = s3.archive_config();
    let read = read_as(&mut conn, &cfg.consumer, 10);
    let read: redis::streams::StreamReadReply = redis::from_redis_value(read).unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    let _: usize = conn.xdel(stream::EVENTS, &[&ids[1]]).unwrap();

    let run = start(&redis, cfg).await;
    eventually(60, "recovery to finish", async || get(&run.metrics.events.flushes) > 0).await;
    run.shutdown().await;
    assert_eq!(group_backlog(&mut conn), 0);
    let expected = batches[0].events.len() + batches[2].events.len();
    let counts = duckdb::query(&format!("SELECT count(*) FROM {}", parquet_glob(&s3)));
    assert_eq!(counts, vec![vec![json!(expected)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_snapshots_are_archived_to_the_plans_table() {
    use allot_core::contract::{PlanSnapshot, SnapshotCampaign, stream};
    use allot_core::{CampaignId, PlacementId};

    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let mut conn = redis.conn();
    let snapshot = |version: u64, a: f64| PlanSnapshot {
        placement: PlacementId::parse("home_feed").unwrap(),
        version,
        issued_at_ms: BASE_MS + version * 5_000,
        sample_rate: 0.125,
        targets_rev: version + 10,
        campaigns: vec![
            SnapshotCampaign {
                id: CampaignId::parse("A").unwrap(),
                target_rate: a,
                weight: 0.7,
                feasible: true,
                max_share: None,
            },
            SnapshotCampaign {
                id: CampaignId::parse("B").unwrap(),
                target_rate: 0.3,
                weight: 0.2,
                feasible: false,
                max_share: Some(0.25),
            },
        ],
    };
    let mut ids: Vec<String> = Vec::new();
    for (version, a) in [(1, 0.5), (2, 0.45), (3, 0.4)] {
        let json = snapshot(version, a).to_json();
        ids.push(conn.xadd(stream::PLAN_LOG, "*", &stream::plan_entry("home_feed", &json)).unwrap().unwrap());
    }
    ids.push(conn.xadd(stream::PLAN_LOG, "*", &stream::plan_entry("home_feed", "{not json")).unwrap().unwrap());

    let run = start(&redis, s3.archive_config()).await;
    eventually(60, "the plan log archived", async || get(&run.metrics.plans.entries_archived) == 4).await;
    assert_eq!(get(&run.metrics.plans.malformed_entries), 1);
    assert_eq!(get(&run.metrics.plans.rows_written), 6);
    assert_eq!(get(&run.metrics.events.entries_archived), 0);
    run.shutdown().await;

    // Versions 1 and 2 were issued in hour 09, version 3 in hour 10.
    let (first, last) = (&ids[0], &ids[3]);
    assert_eq!(
        s3.parquet_keys(),
        vec![
            format!("test/plans/dt=2026-11-25/hour=09/{first}-{last}.parquet"),
            format!("test/plans/dt=2026-11-25/hour=10/{first}-{last}.parquet"),
        ]
    );
    let glob =
        format!("read_parquet('{}/test/plans/*/*/*.parquet', hive_partitioning = true)", s3.bucket_dir().display());
    let rows = duckdb::query(&format!(
        "SELECT plan_version, campaign, target_rate, weight, feasible, max_share, targets_rev, sample_rate, \
         epoch_ms(issued_time), CAST(hour AS INTEGER) FROM {glob} ORDER BY plan_version, campaign"
    ));
    assert_eq!(rows.len(), 6);
    assert_eq!(
        rows[0],
        vec![
            json!(1),
            json!("A"),
            json!(0.5),
            json!(0.7),
            json!(true),
            json!(null),
            json!(11),
            json!(0.125),
            json!(BASE_MS + 5_000),
            json!(9)
        ]
    );
    assert_eq!(
        rows[5],
        vec![
            json!(3),
            json!("B"),
            json!(0.3),
            json!(0.2),
            json!(false),
            json!(0.25),
            json!(13),
            json!(0.125),
            json!(BASE_MS + 15_000),
            json!(10)
        ]
    );
    assert_eq!(rows[2][2], json!(0.45));
}
