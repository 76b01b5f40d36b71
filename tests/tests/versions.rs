//! The placement's versions behind the edge's, over the real stack: a plan pushed with
//! the push key under a far higher version, then the version counter rolled back as
//! Redis restored from an older copy leaves it. Each time the edge refuses the origin's
//! next plan and names the version it holds; the origin pushes the plan again above
//! it, the edge serves it, and the events decided under it are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use allot_core::contract::keys::PlacementKeys;
use allot_core::{Plan, signature};
use allot_e2e::stack::{Options, Stack};
use allot_testkit::events::newest_published;
use allot_testkit::origin::PUSH_KEY;
use allot_testkit::poll::eventually;
use allot_testkit::redis::stream_batches;
use allot_testkit::scenario;

/// `home_feed`'s targets with campaign A at `rate`: every change is a new plan.
fn with_a_at(rate: f64) -> serde_json::Value {
    let mut targets = scenario::home_feed();
    targets["campaigns"][0]["rate"] = rate.into();
    targets
}

/// Waits until the edge serves a version above `floor`, the origin's status names the
/// same one, and an event decided under it has been counted; returns it.
async fn served_above(stack: &Stack, floor: u64) -> u64 {
    let version = eventually(30, &format!("the edge above v{floor}"), async || {
        stack.edge_plan_version("home_feed").await.unwrap().filter(|v| *v > floor)
    })
    .await;
    // The origin stores a plan once its push is answered: the edge may serve it a
    // moment before the status names it.
    eventually(10, &format!("the status on v{version}"), async || {
        let status = stack.status("home_feed").await.unwrap();
        (status["plan_version"] == version).then_some(())
    })
    .await;
    // The first plans sample every request: an ad's event reaches the stream once
    // ingest knows its version.
    eventually(30, &format!("an event of v{version} counted"), async || {
        stack.edge_plan_version("home_feed").await.unwrap();
        let batches = stream_batches(stack.redis(), "home_feed");
        batches.iter().flat_map(|b| &b.events).any(|e| e.plan_version == version).then_some(())
    })
    .await;
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_publishes_above_a_version_the_edge_holds() {
    let stack = Stack::start(Options { period_ms: 2_000, ..Options::default() }).await.unwrap();
    stack.put_placement("home_feed", &with_a_at(0.2)).await.unwrap();
    let first = served_above(&stack, 0).await;

    // Someone with the push key pushes the same plan as version 1000.
    let mut pushed: Plan = newest_published(&mut stack.redis().conn(), "home_feed").unwrap();
    pushed.version = 1000;
    let body = pushed.to_json();
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let r = stack
        .client
        .put(format!("{}/internal/plans/home_feed", stack.edge_url))
        .header(signature::HEADER, signature::sign_all(&[PUSH_KEY.as_bytes().to_vec()], now_s, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually(10, "the edge on v1000", async || stack.edge_plan_version("home_feed").await.unwrap() == Some(1000))
        .await;

    // The next plan goes out above it, not refused for good.
    stack.put_placement("home_feed", &with_a_at(0.15)).await.unwrap();
    let above = served_above(&stack, 1000).await;
    assert!(above > first);

    // Redis restored from an older copy: the placement's version counter and stored
    // version are back at the first plan's.
    let fence = PlacementKeys::of_raw("home_feed").fence();
    redis::cmd("HSET")
        .arg(&fence)
        .arg("version")
        .arg(first)
        .arg("saved")
        .arg(first)
        .query::<()>(&mut stack.redis().conn())
        .unwrap();
    stack.put_placement("home_feed", &with_a_at(0.1)).await.unwrap();
    served_above(&stack, above).await;
}
