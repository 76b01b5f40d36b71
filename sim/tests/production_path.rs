//! The simulator runs the production decision path: core's sampler on request ids,
//! core's choice, the edge's events, the aggregator's fold into window counts. And its
//! fast way of serving (by counts) is the same world as serving request by request.

use allot_core::{EventBatch, EventKind, Plan, RequestId};
use allot_sim::colo::{Colo, Serving, Truth, Truths, edge_key};
use allot_sim::metrics::{self, Summary};
use allot_sim::origin::{ControlConfig, ControlLoop, Windows};
use allot_sim::requests::RequestIds;
use allot_sim::scenarios::{self, Knobs};
use allot_sim::world::{self, Settings};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn first_plan(sc: &allot_sim::scenario::Scenario, rate: f64) -> Plan {
    let p = &sc.placements[0];
    let config = ControlConfig {
        period_ms: 60_000,
        recent_windows: 5,
        min_sample_rate: rate,
        republish_after_ms: 600_000,
        lateness_ms: 10_000,
        impression_lateness_ms: 60_000,
        census: false,
    };
    let mut plan = ControlLoop::new(p.id.clone(), config)
        .round(&p.targets, 1, &Windows::new(60_000), 0)
        .expect("the first round publishes");
    plan.sample_rate = rate;
    plan
}

/// Serves `seconds` of 2,000 requests/s at one colo, by counts or request by request.
fn serve(per_request: bool, rate: f64, seconds: u64) -> (Truth, Vec<allot_core::Event>, Plan) {
    let sc = scenarios::build("steady", Knobs::default(), 1).expect("known scenario");
    let plan = first_plan(&sc, rate);
    let mut colo = Colo::new("C00".into(), 0, std::slice::from_ref(&plan), &sc.placements, &sc.profiles);
    let mut rng = SmallRng::seed_from_u64(5);
    let mut ids: Vec<RequestIds> = sc.profiles.iter().map(|_| RequestIds::new(0.02)).collect();
    // One window longer than the run: every request in one truth.
    let mut truths = Truths::new(u64::MAX / 2);
    let mut rates = Vec::new();
    sc.placements[0].traffic.rates(&sc.profiles, 0, &mut rates);
    let rates: Vec<f64> = rates.iter().map(|r| r * 0.2).collect();
    let how = Serving {
        spec: &sc.placements[0],
        profiles: &sc.profiles,
        on_impressions: false,
        per_request,
        impression_delay: (1.0, 2.0),
    };
    for t in 0..seconds {
        colo.serve(&mut rng, 0, t, &rates, how, &mut ids, &mut truths);
    }
    (truths.take(0), std::mem::take(&mut colo.outbox), plan)
}

#[test]
fn every_event_is_a_request_cores_sampler_takes() {
    for per_request in [true, false] {
        let (truth, events, plan) = serve(per_request, 0.05, 60);
        let key = edge_key();
        for e in &events {
            assert_eq!(e.kind, EventKind::Allocation);
            assert!(key.sample().sampled(e.request_id.as_str(), plan.sample_rate), "{:?}", e.request_id);
            assert!(RequestId::parse(e.request_id.as_str()).is_ok() && e.request_id.as_str().as_bytes()[14] == b'4');
            assert_eq!((e.plan_version, e.sample_rate), (plan.version, plan.sample_rate));
        }
        assert_eq!(events.len() as u64, truth.sampled);
        // 120,000 requests at 5 %: 6,000 ± 77 (σ); 5σ.
        let n = truth.requests as f64;
        assert!((n - 120_000.0).abs() < 5.0 * 120_000f64.sqrt(), "{per_request}: {n}");
        assert!((truth.sampled as f64 - 0.05 * n).abs() < 5.0 * (0.05 * n).sqrt(), "{per_request}: {truth:?}");
        // The events go through the wire format and the aggregator's fold.
        let mut windows = Windows::new(60_000);
        let body = EventBatch { events: events[..1000].to_vec() }.to_json();
        assert_eq!(windows.apply(body.as_bytes()).unwrap(), 1000);
        let stats = windows.read(&plan.placement, &[0]).pop().unwrap();
        assert_eq!(stats.requests.n, 1000);
        assert!((stats.requests.ht - 1000.0 / 0.05).abs() < 1e-6);
    }
}

#[test]
fn serving_by_counts_delivers_as_request_by_request() {
    let (a, _, plan) = serve(true, 0.05, 120);
    let (b, _, _) = serve(false, 0.05, 120);
    for c in &plan.campaigns {
        let share = |t: &Truth| t.delivered.get(&c.id).copied().unwrap_or(0) as f64 / t.requests as f64;
        // 240,000 requests each: the shares' standard error is ≤ 0.1 pp.
        assert!((share(&a) - share(&b)).abs() < 0.005, "{}: {} vs {}", c.id, share(&a), share(&b));
    }
}

fn short(key: &str, minutes: u64, traffic: f64, seeds: u64, per_request: bool) -> Summary {
    let knobs = Knobs { minutes: Some(minutes), traffic, ..Knobs::default() };
    let built: Vec<_> = (1..=seeds).map(|s| scenarios::build(key, knobs, s).expect("known scenario")).collect();
    let runs: Vec<_> = built
        .iter()
        .zip(1..)
        .map(|(sc, seed)| world::run(sc, Settings { seed, per_request, ..Settings::default() }))
        .collect();
    metrics::summarize(&built, &runs)
}

#[test]
fn the_whole_loop_by_counts_matches_request_by_request() {
    let a = short("steady", 25, 0.1, 2, true);
    let b = short("steady", 25, 0.1, 2, false);
    assert!(a.within.value >= 0.9 && b.within.value >= 0.9, "{a:?}\n{b:?}");
    assert!((a.p50_error.value - b.p50_error.value).abs() < 0.002, "{a:?}\n{b:?}");
    assert!((a.sampled_per_s / b.sampled_per_s - 1.0).abs() < 0.1, "{a:?}\n{b:?}");
}
