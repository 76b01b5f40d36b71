//! End to end: the origin's answers reach the edge late, after the `XADD` (a proxy holds
//! them beyond the worker's send timeout). The worker gives up on each try and keeps
//! retrying the same signed body; the origin stores every batch exactly once, and once
//! the answers are on time again the outbox empties.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use allot_core::contract::stream;
use allot_e2e::stack::{Options, Stack};
use allot_testkit::poll::{self, eventually};
use allot_testkit::scenario;
use serde_json::Value;

/// The worker's send timeout, and how long the proxy holds each answer beyond it.
const TIMEOUT_MS: u64 = 500;
const HOLD: Duration = Duration::from_millis(1_500);

async fn edge_events(stack: &Stack) -> Value {
    stack.edge_events().await.unwrap()
}

fn stream_len(stack: &Stack) -> u64 {
    redis::cmd("XLEN").arg(stream::EVENTS).query(&mut stack.redis().conn()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_held_past_the_edge_timeout_leave_one_stream_entry_per_batch() {
    let options = Options {
        period_ms: 60_000,
        edge_via_proxy: true,
        edge_event_timeout_ms: Some(TIMEOUT_MS),
        ..Options::default()
    };
    let stack = Stack::start(options).await.unwrap();
    stack.put_placement("home_feed", &scenario::home_feed()).await.unwrap();
    eventually(20, "the edge's plan", async || stack.edge_plan_version("home_feed").await.unwrap()).await;
    // The origin pushes a plan to the edge before it records it, so the edge may hold
    // it a moment before the status shows it.
    let rate =
        eventually(20, "the recorded plan", async || stack.status("home_feed").await.unwrap()["sample_rate"].as_f64())
            .await;
    assert!(rate > 0.5, "the first plan samples most requests: {rate}");

    // The probes above may have queued events of their own: baselines once they are
    // stored.
    eventually(20, "an idle outbox", async || {
        let e = edge_events(&stack).await;
        (e["waiting"] == 0 && e["sent"] == e["queued"]).then_some(())
    })
    .await;
    let accepted_before = stack.api.metric("allot_ingest_accepted_total").await as u64;
    stack.proxy().unwrap().hold_answers(HOLD);
    let (before, entries_before) = (edge_events(&stack).await, stream_len(&stack));
    for i in 0..300 {
        let url = format!("{}/v1/ad?placement=home_feed&request_id=late-{i}", stack.edge_url);
        assert_eq!(stack.client.get(url).send().await.unwrap().status(), 200);
        if i % 100 == 99 {
            // Several batches (the edge flushes a batch 200 ms after its first event).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let queued = edge_events(&stack).await["queued"].as_u64().unwrap() - before["queued"].as_u64().unwrap();
    assert!(queued > 150, "sampled events: {queued}");
    // Every batch: sent, stored, answered late; resent (same body, same header), found
    // stored, answered late again; kept in the edge's outbox while the answers are late.
    let retried = poll::until(Duration::from_secs(30), async || {
        let e = edge_events(&stack).await;
        let d = stack.api.metric("allot_ingest_duplicate_bodies_total").await;
        (e["retried_batches"].as_u64().unwrap() > before["retried_batches"].as_u64().unwrap() + 2 && d >= 2.0)
            .then_some(e)
    })
    .await;
    let Some(retried) = retried else {
        panic!("no retries found stored: {}, stream {} entries", edge_events(&stack).await, stream_len(&stack))
    };
    assert_eq!(retried["failed"], before["failed"], "a late answer loses nothing: {retried}");
    assert_eq!(retried["sent"], before["sent"], "no answer arrived in time");

    // Answers on time again: every waiting batch is acknowledged, none stored twice.
    stack.proxy().unwrap().hold_answers(Duration::ZERO);
    let held = edge_events(&stack).await["queued"].as_u64().unwrap();
    // Probes keep a driver running in the edge; the outbox backs off up to 30 s between
    // tries, so a busy machine may need two. Each probe may queue an event of its own,
    // so they stop once everything queued while answers were held is sent, and the
    // probes' own events then leave within the batching delay.
    let delivered = poll::until(Duration::from_secs(90), async || {
        let _ = stack.client.get(format!("{}/v1/ad?placement=home_feed", stack.edge_url)).send().await;
        (edge_events(&stack).await["sent"].as_u64().unwrap() >= held).then_some(())
    })
    .await;
    let after = match delivered {
        Some(()) => {
            poll::until(Duration::from_secs(10), async || {
                let e = edge_events(&stack).await;
                (e["waiting"] == 0).then_some(e)
            })
            .await
        }
        None => None,
    };
    let Some(after) = after else {
        let accepted = stack.api.metric("allot_ingest_accepted_total").await;
        let duplicates = stack.api.metric("allot_ingest_duplicate_bodies_total").await;
        panic!(
            "the outbox never emptied: edge {}, origin accepted {accepted} bodies ({duplicates} again), stream {} entries",
            edge_events(&stack).await,
            stream_len(&stack)
        )
    };
    assert_eq!(after["failed"], before["failed"]);
    assert_eq!(after["sent"], after["queued"], "{after}");
    let bodies = stack.api.metric("allot_ingest_accepted_total").await as u64 - accepted_before;
    assert_eq!(stream_len(&stack) - entries_before, bodies, "exactly one stream entry per stored body");
    let stored = stack.api.metric("allot_ingest_events_total").await as u64;
    assert_eq!(stored, after["queued"].as_u64().unwrap(), "every sampled event stored once");
    let mut lost = 0.0;
    for reason in allot_core::DropReason::ALL {
        lost += stack.api.metric(&format!("allot_ingest_dropped_events_total{{reason=\"{}\"}}", reason.as_str())).await;
    }
    assert_eq!(lost, 0.0, "the edge's events match what the origin published");
    stack.stop();
}
