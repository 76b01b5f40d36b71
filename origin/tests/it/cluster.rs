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

    // Targets first: the ingest counts events only under published plans.
    for p in placements {
        let spec = json!({"campaigns": [{"id": "A", "rate": 0.5}]});
        assert_eq!(app.put_targets(p, &spec, MANAGER_TOKEN).await.status(), 201);
    }
    // Each placement's first plan's rate, which its events carry.
    let mut rates = Vec::new();
    for p in placements {
        let status = eventually(10, "the first plan", || async {
            let (_, v) = app.get_json(&format!("/v1/placements/{p}/status"), VIEWER_TOKEN).await;
            (v["plan_version"] == 1).then_some(v)
        })
        .await;
        rates.push((p, status["sample_rate"].as_f64().unwrap()));
    }
    // Events in the last complete window, every placement in every body, each under its
    // placement's plan.
    let now = allot_origin::now_ms();
    let t = (now / 60_000) * 60_000 - 30_000;
    for i in 0..20 {
        let events = rates
            .iter()
            .map(|&(p, rate)| {
                let ad = if i % 2 == 0 { Some("A") } else { None };
                let mut e = allocation(&format!("{p}-{i}"), p, ad, &["A"], rate);
                e.event_time_ms = t;
                e
            })
            .collect();
        let r = app.post_signed(&batch(events)).await;
        assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"accepted": 5, "dropped": 0}));
    }
    for &(p, rate) in &rates {
        let status = eventually(10, "plan and counts", || async {
            let (_, v) = app.get_json(&format!("/v1/placements/{p}/status"), VIEWER_TOKEN).await;
            (v["plan_version"] == 1 && v["window"]["samples"] == 20).then_some(v)
        })
        .await;
        assert_eq!(status["window"]["requests"], 20.0 / rate, "{p}");
        assert_eq!(status["campaigns"][0]["samples"], 10, "{p}");
    }
    let (_, audit) = app.get_json("/v1/audit", VIEWER_TOKEN).await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), placements.len());
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
