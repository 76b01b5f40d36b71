//! The simulator runs the production decision path: core's sampler on request ids,
//! the edge's allocation events, the aggregator's fold into window counts.

use std::collections::{BTreeMap, HashMap};

use allot_core::{EventBatch, EventKind, RequestId, WindowStats};
use allot_sim::engine::{self, Run, Settings};
use allot_sim::scenario;
use allot_sim::strategy::Strategy;

fn traced(key: &str, minutes: u64) -> (Run, Settings) {
    let sc = scenario::all().into_iter().find(|s| s.key == key).expect("known scenario");
    let s = Settings { rps: 1_000, duration_s: minutes * 60, seed: 11, trace: true, ..Settings::default() };
    (engine::run(&sc, Strategy::Ours, s), s)
}

fn events(run: &Run) -> Vec<allot_core::Event> {
    let trace = run.trace.as_ref().expect("traced");
    trace.bodies.iter().flat_map(|b| EventBatch::parse(b.as_bytes()).expect("valid body").events).collect()
}

#[test]
fn requests_are_sampled_by_cores_sampler_on_their_ids() {
    let (run, _) = traced("uniform", 4);
    let trace = run.trace.as_ref().expect("traced");
    let mut decided: HashMap<(&str, u64), bool> = HashMap::new();
    let (mut hits, mut retried) = (0, 0);
    let key = allot_sim::edge::edge_key();
    for (id, rate, was_sampled) in &trace.requests {
        assert_eq!(*was_sampled, key.sample().sampled(id, *rate), "{id} at {rate}");
        assert!(RequestId::parse(id.as_str()).is_ok() && id.len() == 36 && id.as_bytes()[14] == b'4', "{id}");
        hits += usize::from(*was_sampled);
        // A retried id is decided as its first request was (at the same rate).
        if let Some(before) = decided.insert((id.as_str(), rate.to_bits()), *was_sampled) {
            assert_eq!(before, *was_sampled, "{id}");
            retried += 1;
        }
    }
    let n = trace.requests.len();
    assert_eq!(n, 240_000);
    // After the first data-driven plan the rate is below 1: a proper subset is sampled.
    let below: Vec<bool> = trace.requests.iter().filter(|(_, r, _)| *r < 0.5).map(|(_, _, s)| *s).collect();
    let below_hits = below.iter().filter(|s| **s).count();
    assert!(below.len() > n / 4 && below_hits > 0 && below_hits < below.len() / 2, "{below_hits} of {}", below.len());
    assert!(hits > below_hits && hits < n, "{hits} of {n}");
    assert!((0.01..0.03).contains(&(retried as f64 / n as f64)), "about 2 % of ids are retries: {retried}");

    // Exactly the sampled requests reached the origin, as allocation events.
    let mut sent: BTreeMap<String, i64> = BTreeMap::new();
    for e in events(&run).iter().filter(|e| e.kind == EventKind::Allocation) {
        *sent.entry(e.request_id.to_string()).or_default() += 1;
    }
    for (id, _, was_sampled) in &trace.requests {
        if *was_sampled {
            *sent.entry(id.clone()).or_default() -= 1;
        }
    }
    assert!(sent.values().all(|&d| d == 0), "allocation events and sampled requests differ");
}

/// The counts a round reads equal the aggregator's fold of every body the edge sent,
/// and count exactly the sampled requests of each window.
#[test]
fn windows_are_the_aggregators_fold_of_the_edges_events() {
    let (run, s) = traced("render", 5);
    let trace = run.trace.as_ref().expect("traced");
    let events = events(&run);
    assert!(events.iter().any(|e| e.kind == EventKind::Impression), "the render scenario reports impressions");
    let folded = WindowStats::fold_windows(&events, s.period_s * 1000);
    assert_eq!(folded.keys().collect::<Vec<_>>(), trace.windows.keys().collect::<Vec<_>>());
    for (i, stored) in &trace.windows {
        let direct = &folded[i];
        assert_eq!(stored.requests.n, direct.requests.n, "window {i}");
        assert_eq!(stored.requests.n, run.windows[*i as usize].sampled_requests, "window {i}");
        let (a, b) = (fields(stored), fields(direct));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "window {i}");
        for (k, v) in &a {
            // The stored hash adds per-body deltas: the same sums in another order.
            assert!((v - b[k]).abs() <= 1e-9 * v.abs().max(1.0), "window {i} {k}: {v} vs {}", b[k]);
        }
    }
}

fn fields(w: &WindowStats) -> BTreeMap<String, f64> {
    w.to_fields().into_iter().collect()
}
