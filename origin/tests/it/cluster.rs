//! The origin unchanged on a three-node Redis Cluster: ingest, exactly-once aggregation,
//! the control loop and the archiver, with placements living on different nodes.

use allot_core::contract::keys::PlacementKeys;
use allot_testkit::events::{allocation, batch};
use allot_testkit::origin::{MANAGER_TOKEN, OriginConfig, TestApp, VIEWER_TOKEN};
use allot_testkit::poll::eventually;
use allot_testkit::redis::RedisCluster;
use allot_testkit::s3::S3Server;
use serde_json::json;

#[tokio::test]
async fn ingest_aggregation_and_control_on_a_cluster() {
    let cluster = RedisCluster::start();
    let s3 = S3Server::start();
    let placements = ["home_feed", "sidebar", "footer", "search", "detail"];
    let nodes: std::collections::BTreeSet<u16> =
        placements.iter().map(|p| cluster.node_of(&PlacementKeys::of_raw(p).targets())).collect();
    assert!(nodes.len() >= 2, "the placements are spread over several nodes");

    let env = [("ALLOT_REDIS_CLUSTER", "true"), ("ALLOT_CONTROL_PERIOD_MS", "60000")];
    let config = OriginConfig::new().redis(&cluster.url()).archive(&s3).merge("[archive]\nflush_max_age_secs = 1");
    let mut app = TestApp::start(config.load(&env)).await;
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);

    // Events in the last complete window, every placement in every body.
    let now = allot_origin::now_ms();
    let t = (now / 60_000) * 60_000 - 30_000;
    for i in 0..20 {
        let events = placements
            .iter()
            .map(|p| {
                let mut e = allocation(&format!("{p}-{i}"), p, if i % 2 == 0 { Some("A") } else { None }, &["A"], 0.5);
                e.event_time_ms = t;
                e
            })
            .collect();
        assert_eq!(app.post_signed(&batch(events)).await.status(), 202);
    }
    for p in placements {
        let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
        assert_eq!(app.put_targets(p, &spec, MANAGER_TOKEN).await.status(), 201);
    }
    for p in placements {
        let status = eventually(10, "plan and counts", || async {
            let (_, v) = app.get_json(&format!("/v1/placements/{p}/status"), VIEWER_TOKEN).await;
            (v["plan_version"] == 1 && v["window"]["samples"] == 20).then_some(v)
        })
        .await;
        assert_eq!(status["window"]["requests"], 40.0, "{p}");
        assert_eq!(status["campaigns"][0]["samples"], 10, "{p}");
    }
    let (_, audit) = app.get_json("/v1/audit", VIEWER_TOKEN).await;
    assert_eq!(audit.as_array().unwrap().len(), placements.len());
    assert_eq!(app.metric("allot_aggregate_entries_total{result=\"applied\"}").await, 100.0);

    // The archiver reads both streams through the cluster: every event and every plan
    // snapshot reaches S3.
    eventually(20, "the archive", || async {
        let events = app.metric("allot_archive_rows_total{dataset=\"events\"}").await;
        let plans = app.metric("allot_archive_rows_total{dataset=\"plans\"}").await;
        (events == 100.0 && plans == placements.len() as f64).then_some(())
    })
    .await;
    assert_eq!(app.metric("allot_archive_redis_failures_total{dataset=\"events\"}").await, 0.0);
    let keys = s3.parquet_keys();
    assert!(keys.iter().any(|k| k.starts_with("events/dt=")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("plans/dt=")), "{keys:?}");
    app.shutdown().await;
}
