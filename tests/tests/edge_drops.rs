//! End to end: the edge cut off from the origin with an outbox too small for the
//! outage drops new events, and reports every one it dropped to the origin, which
//! counts the report once in `allot_edge_dropped_events_total` however often the batch
//! carrying it is sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use allot_e2e::delay::Mode;
use allot_e2e::stack::{Options, Stack};
use allot_testkit::poll::{self, eventually};
use allot_testkit::scenario;

const METRIC: &str = "allot_edge_dropped_events_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_edge_drops_reach_the_origin_as_a_metric_once() {
    let options = Options {
        period_ms: 60_000,
        min_sample_rate: 1.0,
        edge_via_proxy: true,
        edge_batch_max: Some(10),
        edge_outbox_max_bytes: Some(8_192),
        ..Options::default()
    };
    let stack = Stack::start(options).await.unwrap();
    stack.put_placement("home_feed", &scenario::home_feed()).await.unwrap();
    // The first plan comes from the holder of the placement's control shard, once its
    // first shard sync (a third of the 120 s lease here) has granted it.
    eventually(90, "the edge's plan", async || stack.edge_plan_version("home_feed").await.unwrap()).await;
    let ad = async |id: &str| {
        let url = format!("{}/v1/ad?placement=home_feed&request_id={id}", stack.edge_url);
        assert_eq!(stack.client.get(url).send().await.unwrap().status(), 200, "the edge answers whatever happens");
    };

    stack.proxy().unwrap().set_mode(Mode::Refuse);
    for i in 0..200 {
        ad(&format!("cut-{i}")).await;
    }
    let cut = stack.edge_events().await.unwrap();
    let dropped = cut["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "the outbox filled: {cut}");
    assert_eq!(stack.api.metric(METRIC).await, 0.0, "nothing reported while cut off");

    // Retries of the batches sealed during the outage, then one more batch: whichever
    // carries the report, it is counted once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.proxy().unwrap().set_mode(Mode::Pass);
    let drained = poll::until(Duration::from_secs(40), async || {
        stack.edge_events().await.unwrap()["waiting"].as_u64() == Some(0)
    })
    .await;
    assert!(drained.is_some(), "the outbox emptied: {}", stack.edge_events().await.unwrap());
    ad("after").await;
    let reported = eventually(20, "the report", async || {
        let m = stack.api.metric(METRIC).await;
        (m > 0.0 && stack.edge_events().await.unwrap()["waiting"].as_u64() == Some(0)).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let edge = stack.edge_events().await.unwrap();
    assert_eq!(reported as u64, dropped, "{edge}");
    assert_eq!(stack.api.metric(METRIC).await as u64, dropped, "counted once");
    assert_eq!(edge["dropped"].as_u64(), Some(dropped), "nothing dropped since");
    assert_eq!(edge["sent"], edge["queued"], "{edge}");
    assert_eq!(stack.api.metric("allot_ingest_events_total").await as u64, edge["sent"].as_u64().unwrap());
    stack.stop();
}
