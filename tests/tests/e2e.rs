//! End to end over the real stack: a manager sets targets through the admin API, app
//! traffic flows through the edge worker in workerd, sampled events reach the origin,
//! and the plans it publishes bring the shares the apps observe to target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use allot_e2e::stack::{Options, Stack};
use allot_e2e::traffic::{Mix, Traffic};
use allot_testkit::events::{allocation, batch, now_ms};
use allot_testkit::origin::signed_post;
use allot_testkit::poll::{self, eventually};
use allot_testkit::redis::total_counts;
use allot_testkit::scenario::{self, MARGIN};
use serde_json::Value;

/// The stacks are heavy for two cores: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PERIOD_MS: u64 = 5_000;

async fn wait_for_edge_plan(stack: &Stack, placement: &str) {
    let what = format!("the edge to get a plan for {placement}");
    eventually(20, &what, async || stack.edge_plan_version(placement).await.unwrap()).await;
}

fn campaign<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["campaigns"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_converge_to_targets_and_the_origin_knows_it() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(Options { period_ms: PERIOD_MS, ..Options::default() }).await.unwrap();
    for (id, targets) in scenario::placements() {
        stack.put_placement(id, &targets).await.unwrap();
    }
    wait_for_edge_plan(&stack, "home_feed").await;
    wait_for_edge_plan(&stack, "sidebar").await;

    let traffic = Traffic {
        edge_url: stack.edge_url.clone(),
        placements: vec![("home_feed".into(), Mix::scenario()), ("sidebar".into(), Mix::scenario())],
        rps: 400.0,
        concurrency: 16,
        period_ms: PERIOD_MS,
        timeout: Duration::from_secs(10),
    };
    let load = traffic.start(Duration::from_secs(120));

    // Let the controller see traffic and its plans reach the edge, then judge the
    // next windows.
    let first = now_ms() / PERIOD_MS;
    let judged = first + 5..=first + 8;
    while now_ms() / PERIOD_MS <= *judged.end() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status_home = stack.status("home_feed").await.unwrap();
    let status_side = stack.status("sidebar").await.unwrap();
    let obs = load.finish().await.unwrap();
    // Genuine traffic under changing plans: the origin dropped none of the edge's events.
    for reason in allot_core::DropReason::ALL {
        let name = format!("allot_ingest_dropped_events_total{{reason=\"{}\"}}", reason.as_str());
        assert_eq!(stack.api.metric(&name).await, 0.0, "{name}");
    }

    // 1. What the apps observed is within the manager's margin for every feasible campaign.
    let home = obs.range("home_feed", *judged.start(), *judged.end());
    assert!(home.requests > 2_000, "too little traffic to judge: {home:?}");
    assert_eq!(home.errors, 0);
    for (id, target) in [("A", 0.2), ("B", 0.3), ("C", 0.25)] {
        let share = home.share(id);
        assert!((share - target).abs() <= MARGIN, "home_feed {id}: observed {share:.4}, target {target} ({home:?})");
    }
    let side = obs.range("sidebar", *judged.start(), *judged.end());
    assert!((side.share("Y") - 0.3).abs() <= MARGIN, "sidebar Y: {side:?}");

    // 2. The infeasible campaign is reported, with about the 40 % it is eligible for,
    //    and it gets that.
    let x = campaign(&status_side, "X");
    assert_eq!(x["feasibility"]["status"], "infeasible", "{x}");
    let max = x["feasibility"]["max_share"].as_f64().unwrap();
    assert!((max - 0.4).abs() < MARGIN, "max_share {max}");
    assert!((side.share("X") - 0.4).abs() < MARGIN, "X observed {}", side.share("X"));
    assert_eq!(campaign(&status_side, "Y")["feasibility"]["status"], "feasible");

    // 3. The origin's estimates, from sampled events only, agree with what the apps saw
    //    in the same window. (Slack: the interval's own width again, ≈ 4σ, so the check
    //    is not a coin toss across five campaigns.)
    for status in [&status_home, &status_side] {
        let placement = status["placement"].as_str().unwrap();
        let w = status["window"]["index"].as_u64().unwrap();
        let seen = obs.range(placement, w, w);
        assert!(seen.requests > 300, "{placement} window {w}: {seen:?}");
        let rate = status["sample_rate"].as_f64().unwrap();
        assert!(rate < 1.0, "{placement} samples below census: {rate}");
        for c in status["campaigns"].as_array().unwrap() {
            let id = c["id"].as_str().unwrap();
            let (low, high) = (c["estimate"]["low"].as_f64().unwrap(), c["estimate"]["high"].as_f64().unwrap());
            let truth = seen.share(id);
            let slack = high - low;
            assert!(
                truth >= low - slack && truth <= high + slack,
                "{placement}/{id} window {w}: observed {truth:.4}, estimated [{low:.4}, {high:.4}]"
            );
        }
    }

    // 4. Every sampled request the origin counted reached the S3 archive, and the
    //    analysts' report over it (the real CLI, local engine) agrees with what the apps
    //    saw over the whole run.
    let counted_home = settled_count(&stack, "home_feed").await;
    let mut archived = 0;
    poll::until(Duration::from_secs(30), async || {
        let rows = stack.report("sampling").await.unwrap();
        archived = rows
            .iter()
            .filter(|r| r["placement"] == "home_feed")
            .map(|r| r["sampled_requests"].as_u64().unwrap_or(0))
            .sum();
        archived >= counted_home
    })
    .await;
    assert_eq!(archived, counted_home, "sampled requests archived vs counted");
    let truth = obs.range("home_feed", 0, u64::MAX - 1);
    let rows: Vec<Value> =
        stack.report("delivery").await.unwrap().into_iter().filter(|r| r["placement"] == "home_feed").collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        let id = r["campaign"].as_str().unwrap();
        let est_requests = r["est_requests"].as_f64().unwrap();
        assert!(
            (est_requests - truth.requests as f64).abs() < 0.05 * truth.requests as f64,
            "estimated {est_requests} requests, the apps made {}",
            truth.requests
        );
        let (low, high) = (r["share_low"].as_f64().unwrap(), r["share_high"].as_f64().unwrap());
        let slack = high - low;
        let seen = truth.share(id);
        assert!(seen >= low - slack && seen <= high + slack, "{id}: report [{low:.4}, {high:.4}], observed {seen:.4}");
        // The targets come from the archived plan snapshots, joined on plan version.
        let target = scenario::target("home_feed", id).unwrap();
        assert!((r["target"].as_f64().unwrap() - target).abs() < 1e-6, "{id}: {r}");
    }
    let x = stack
        .report("delivery")
        .await
        .unwrap()
        .into_iter()
        .find(|r| r["placement"] == "sidebar" && r["campaign"] == "X");
    let x = x.expect("sidebar X in the delivery report");
    assert_eq!((x["target"].as_f64(), x["vs_target"].as_str()), (Some(0.5), Some("under")), "infeasible X: {x}");
    stack.stop();
}

/// The origin's count once the edge has flushed and the aggregator caught up: two reads
/// half a second apart agree.
async fn settled_count(stack: &Stack, placement: &str) -> u64 {
    // Every event the edge sampled has left it (a batch it is retrying would be
    // counted later), then the count has stopped moving.
    poll::eventually(30, "an idle outbox", async || {
        let e = stack.edge_events().await.unwrap();
        (e["waiting"] == 0 && e["sent"] == e["queued"]).then_some(())
    })
    .await;
    let mut last = counted(stack, placement);
    poll::until(Duration::from_secs(20), async || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counted(stack, placement);
        let settled = now == last;
        last = now;
        settled
    })
    .await;
    last
}

/// Sampled requests counted in Redis for `placement`, over all windows.
fn counted(stack: &Stack, placement: &str) -> u64 {
    total_counts(stack.redis(), placement).requests.n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_origin_loses_nothing_it_acknowledged() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(Options { period_ms: PERIOD_MS, ..Options::default() }).await.unwrap();
    let client = allot_testkit::process::http_client(Duration::from_secs(2));
    let url = format!("{}/v1/events", stack.origin_url);
    // The origin counts events only under a plan it published: the placement first.
    stack.put_placement("crashy", &serde_json::json!({"campaigns": [{"id": "A", "rate": 0.5}]})).await.unwrap();
    let status = eventually(20, "the first plan", async || {
        let s = stack.status("crashy").await.unwrap();
        (s["plan_version"] == 1).then_some(s)
    })
    .await;
    let rate = status["sample_rate"].as_f64().unwrap();

    let (mut acked, mut attempted, mut next) = (0u64, 0u64, 0u64);
    let send = async |next: &mut u64, attempted: &mut u64, acked: &mut u64| {
        let events = (*next..*next + 20).map(|i| allocation(&format!("crash-{i}"), "crashy", Some("A"), &["A"], rate));
        let body = batch(events.collect());
        *next += 20;
        *attempted += 20;
        // The origin may be down: a refused connection is an unacknowledged batch.
        let r = signed_post(&client, &url, &body).send().await;
        if r.is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED) {
            *acked += 20;
        }
    };
    for _ in 0..50 {
        send(&mut next, &mut attempted, &mut acked).await;
    }
    // Mid-stream: kill -9, keep sending into the void, restart, send more.
    let killer = async {
        stack.kill_origin().unwrap();
    };
    let ((), ()) = tokio::join!(killer, async {
        for _ in 0..20 {
            send(&mut next, &mut attempted, &mut acked).await;
        }
    });
    stack.start_origin().await.unwrap();
    for _ in 0..50 {
        send(&mut next, &mut attempted, &mut acked).await;
    }
    assert!(acked >= 2_000, "the origin acknowledged too little to judge: {acked}");

    // Everything acknowledged is counted, nothing twice.
    let mut n = 0;
    poll::until(Duration::from_secs(20), async || {
        n = counted(&stack, "crashy");
        n >= acked
    })
    .await;
    assert!(n >= acked, "acknowledged {acked}, counted {n}");
    assert!(n <= attempted, "counted {n} of {attempted} sent: double counting");
    stack.stop();
}
