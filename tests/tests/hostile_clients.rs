//! Hostile apps against the real stack (workerd, origin, Redis): 1 % of the traffic uses
//! request ids chosen offline to be always sampled under the old unkeyed hash, with a
//! made-up platform, and reports impressions it may not (a campaign it was not given,
//! its own impressions again). The genuine apps' shares stay within the manager's margin,
//! and every illegitimate report is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_e2e::stack::{Options, Stack};
use allot_e2e::traffic::{Mix, Traffic};
use allot_testkit::events::now_ms;
use allot_testkit::poll::eventually;
use allot_testkit::scenario::{self, MARGIN};
use serde_json::{Value, json};

const PERIOD_MS: u64 = 5_000;

/// The sampling point an app could compute before sampling was keyed: FNV-1a 64, a
/// SplitMix64 finaliser, the top 53 bits.
fn unkeyed_point(id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// What the hostile app saw: impression reports by answer status.
#[derive(Debug, Default)]
struct Refusals {
    requests: u64,
    accepted: u64,
    duplicate: u64,
    invalid: u64,
    other: Vec<u16>,
}

async fn hostile(edge: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Refusals>>) {
    let http = reqwest::Client::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // 4 requests a second: 1 % of the genuine 400.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let id = loop {
            i += 1;
            let id = format!("evil{i:028}");
            if unkeyed_point(&id) < 0.001 {
                break id;
            }
        };
        let url = format!("{edge}/v1/ad?placement=home_feed&platform=madeup&country=DE&request_id={id}");
        let Ok(r) = http.get(&url).send().await else { continue };
        let answer: Value = r.json().await.unwrap_or_default();
        seen.lock().unwrap().requests += 1;
        let (Some(ad), Some(token)) = (answer["ad"]["id"].as_str(), answer["impression_token"].as_str()) else {
            continue;
        };
        let report = |ad_id: &str| json!({"request_id": id, "placement": "home_feed", "ad_id": ad_id, "impression_token": token});
        // A campaign it was not given (one that does not exist), its own ad, and its
        // own ad again.
        for body in [report("ZZ"), report(ad), report(ad)] {
            let Ok(r) = http.post(format!("{edge}/v1/impression")).json(&body).send().await else { continue };
            let mut s = seen.lock().unwrap();
            match r.status().as_u16() {
                204 => s.accepted += 1,
                409 => s.duplicate += 1,
                403 => s.invalid += 1,
                other => s.other.push(other),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_platforms_and_impressions_leave_shares_within_the_margin() {
    let stack = Stack::start(Options { period_ms: PERIOD_MS, ..Options::default() }).await.unwrap();
    for (id, targets) in scenario::placements() {
        stack.put_placement(id, &targets).await.unwrap();
    }
    eventually(20, "the edge to get a plan", async || stack.edge_plan_version("home_feed").await.unwrap()).await;

    let refusals = Arc::new(Mutex::new(Refusals::default()));
    let traffic = Traffic {
        edge_url: stack.edge_url.clone(),
        placements: vec![("home_feed".into(), Mix::scenario())],
        rps: 400.0,
        concurrency: 16,
        period_ms: PERIOD_MS,
        timeout: Duration::from_secs(10),
    };
    let load = traffic.start(Duration::from_secs(120));
    let attack = tokio::spawn(hostile(stack.edge_url.clone(), load.stop.clone(), refusals.clone()));

    let first = now_ms() / PERIOD_MS;
    let judged = first + 5..=first + 8;
    while now_ms() / PERIOD_MS <= *judged.end() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let obs = load.finish().await.unwrap();
    attack.await.unwrap();

    let home = obs.range("home_feed", *judged.start(), *judged.end());
    assert!(home.requests > 2_000, "too little traffic to judge: {home:?}");
    assert_eq!(home.errors, 0);
    for (id, target) in [("A", 0.2), ("B", 0.3), ("C", 0.25)] {
        let share = home.share(id);
        assert!((share - target).abs() <= MARGIN, "home_feed {id}: observed {share:.4}, target {target} ({home:?})");
    }
    // Every report for a campaign the app was not given is refused, and so is every
    // second report of a request; the first is accepted.
    let r = std::mem::take(&mut *refusals.lock().unwrap());
    assert!(r.requests > 100, "{r:?}");
    assert!(r.accepted > 50 && r.accepted == r.invalid && r.accepted == r.duplicate, "{r:?}");
    assert!(r.other.is_empty(), "{r:?}");
    // The placement whose genuine apps report no impressions stays on allocations.
    let status = stack.status("home_feed").await.unwrap();
    for c in status["campaigns"].as_array().unwrap() {
        assert_eq!(c["basis"], "allocations", "{c}");
    }
}
