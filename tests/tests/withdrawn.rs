//! A deleted placement under traffic, over the real stack: once the edge holds the
//! withdrawn plan it answers the placement like an unknown one and samples nothing,
//! so no event of it reaches the origin again, while the other placements carry on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use allot_e2e::stack::{Options, Stack};
use allot_testkit::origin::MANAGER_TOKEN;
use allot_testkit::poll::eventually;
use allot_testkit::redis::stream_batches;
use allot_testkit::scenario;
use serde_json::json;

async fn ad(stack: &Stack, placement: &str, i: u32) -> reqwest::StatusCode {
    let url = format!("{}/v1/ad?placement={placement}&platform=ios&request_id=req-{placement}-{i:08}", stack.edge_url);
    stack.client.get(url).send().await.unwrap().status()
}

fn events_of(stack: &Stack, placement: &str) -> usize {
    stream_batches(stack.redis(), placement).iter().map(|b| b.events.len()).sum()
}

async fn edge_queued(stack: &Stack) -> u64 {
    stack.edge_events().await.unwrap()["queued"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_placement_under_traffic_sends_no_events() {
    let stack = Stack::start(Options { period_ms: 2_000, ..Options::default() }).await.unwrap();
    let placements = scenario::placements();
    for (id, targets) in &placements {
        stack.put_placement(id, targets).await.unwrap();
    }
    for id in ["home_feed", "sidebar"] {
        eventually(20, &format!("a plan for {id} at the edge"), async || stack.edge_plan_version(id).await.unwrap())
            .await;
    }

    // Traffic to both; the first plans sample every request, so events flow.
    for i in 0..200 {
        assert_eq!(ad(&stack, "home_feed", i).await, 200);
        assert_eq!(ad(&stack, "sidebar", i).await, 200);
    }
    eventually(20, "home_feed events at the origin", async || events_of(&stack, "home_feed") > 0).await;

    let deleted =
        stack.client.delete(stack.api.url("/v1/placements/home_feed")).bearer_auth(MANAGER_TOKEN).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    // Requests keep arriving while the tombstone travels; then the edge refuses them.
    let mut i = 200;
    eventually(30, "the edge to withdraw home_feed", async || {
        i += 1;
        ad(&stack, "home_feed", i).await == reqwest::StatusCode::NOT_FOUND
    })
    .await;
    // Whatever was sampled before the tombstone arrived has been flushed by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = events_of(&stack, "home_feed");
    let sidebar_before = events_of(&stack, "sidebar");
    let queued_before = edge_queued(&stack).await;

    for j in 0..300 {
        assert_eq!(ad(&stack, "home_feed", 10_000 + j).await, 404);
        assert_eq!(ad(&stack, "sidebar", 10_000 + j).await, 200);
    }
    let impression = stack
        .client
        .post(format!("{}/v1/impression", stack.edge_url))
        .json(&json!({"request_id": "req-home_feed-00000001", "placement": "home_feed", "ad_id": "A"}))
        .send()
        .await
        .unwrap();
    assert!(impression.status().is_client_error(), "{}", impression.status());

    eventually(20, "sidebar events to keep flowing", async || events_of(&stack, "sidebar") > sidebar_before).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events_of(&stack, "home_feed"), before, "no event of the deleted placement was stored");
    let queued = edge_queued(&stack).await - queued_before;
    assert!(queued <= 300, "only sidebar requests were sampled at the edge: {queued} queued for 300 of them");
}
