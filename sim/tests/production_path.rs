//! The simulator runs the production decision path: core's sampler on request ids,
//! core's choice, the edge's events, the aggregator's fold into window counts. And its
//! fast way of serving (by counts) is the same world as serving request by request.

use std::num::NonZeroUsize;

use allot_core::{EventBatch, EventKind, Plan, RequestId};
use allot_sim::colo::{Colo, Serving, Truth, Truths};
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
        lag_after_ms: 90_000,
    };
    let mut plan = ControlLoop::new(p.id.clone(), config)
        .round(&p.targets, 1, &Windows::new(60_000, 10_000, 60_000), 0)
        .expect("the first round publishes");
    plan.sample_rate = rate;
    plan
}

/// Serves `seconds` of 2,000 requests/s at one colo, by counts or request by request.
fn serve(per_request: bool, rate: f64, seconds: u64) -> (Truth, Vec<allot_core::Event>, Plan) {
    // One window longer than the run: every request in one truth.
    let (mut truths, events, plan, _) = serve_at(per_request, rate, 0..seconds, 0, u64::MAX / 2, 1);
    (truths.take(0), events, plan)
}

/// Serves seconds `range` at a colo `skew_ms` off true time, into windows of `period_ms`.
fn serve_at(
    per_request: bool,
    rate: f64,
    range: std::ops::Range<u64>,
    skew_ms: i64,
    period_ms: u64,
    isolates: usize,
) -> (Truths, Vec<allot_core::Event>, Plan, Vec<usize>) {
    let sc = scenarios::build("steady", Knobs::default(), 1).expect("known scenario");
    let plan = first_plan(&sc, rate);
    let mut colo = Colo::new(
        "C00".into(),
        skew_ms,
        std::slice::from_ref(&plan),
        &sc.placements,
        &sc.profiles,
        NonZeroUsize::new(isolates).expect("an isolate"),
    );
    let mut rng = SmallRng::seed_from_u64(5);
    let mut ids: Vec<RequestIds> = sc.profiles.iter().map(|_| RequestIds::new(0.02)).collect();
    let mut truths = Truths::new(period_ms);
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
    for t in range {
        colo.serve(&mut rng, 0, t, &rates, how, &mut ids, &mut truths);
    }
    (truths, std::mem::take(&mut colo.outbox), plan, colo.streams(0))
}

/// The colo decides as the worker does, with a spread pick: each campaign's deliveries
/// follow the odds of the plan to a request or two, where independent picks would be
/// off by the binomial spread.
#[test]
fn a_colos_deliveries_follow_the_odds_of_its_plan() {
    for per_request in [true, false] {
        let (truth, _, plan) = serve(per_request, 0.05, 60);
        for c in &plan.campaigns {
            let delivered = truth.delivered.get(&c.id).copied().unwrap_or(0) as f64;
            let expected = truth.expected[&c.id] * truth.requests as f64 / truth.expected_requests;
            // 120,000 requests: a binomial count of a 20 % campaign is off by 139 (σ).
            assert!((delivered - expected).abs() <= 3.0, "{per_request} {}: {delivered} vs {expected}", c.id);
        }
    }
}

/// The targets of a window are held to the requests that came, so each is counted in
/// its profile once, sampled or not.
#[test]
fn every_request_is_counted_in_its_profile() {
    for per_request in [true, false] {
        let (truth, events, _) = serve(per_request, 0.05, 60);
        assert_eq!(truth.profiles.iter().sum::<f64>(), truth.requests as f64, "{per_request}");
        assert!(truth.sampled > 0 && truth.sampled as usize <= events.len(), "{per_request}");
        // Each profile's count is its own: within 5 σ of its Poisson mean over the minute.
        let sc = scenarios::build("steady", Knobs::default(), 1).expect("known scenario");
        let mut rates = Vec::new();
        sc.placements[0].traffic.rates(&sc.profiles, 0, &mut rates);
        for (k, (&n, r)) in truth.profiles.iter().zip(&rates).enumerate() {
            let mean = r * 0.2 * 60.0;
            assert!((n - mean).abs() <= 5.0 * mean.sqrt() + 1.0, "{per_request}: profile {k}: {n} vs {mean}");
        }
        assert!(truth.profiles.iter().filter(|&&n| n > 0.0).count() > 1, "{per_request}: {:?}", truth.profiles);
    }
}

/// Isolates keep their own credits: each one's deliveries follow the odds, so the
/// colo's stay within a few requests per isolate, still far inside the binomial spread.
#[test]
fn each_isolate_of_a_colo_follows_the_odds() {
    let (mut truths, _, plan, streams) = serve_at(false, 0.05, 0..60, 0, u64::MAX / 2, 8);
    let truth = truths.take(0);
    // Every isolate took requests of every pattern (15,000 requests each): 8 sets of
    // credits, each following the same patterns.
    assert!(streams.len() == 8 && streams.iter().all(|&n| n >= 2 && n == streams[0]), "{streams:?}");
    for c in &plan.campaigns {
        let delivered = truth.delivered.get(&c.id).copied().unwrap_or(0) as f64;
        let expected = truth.expected[&c.id] * truth.requests as f64 / truth.expected_requests;
        assert!((delivered - expected).abs() <= 3.0 * 8.0, "{}: {delivered} vs {expected}", c.id);
    }
}

/// A request belongs to the window its event names: the colo's clock's.
#[test]
fn a_request_counts_in_the_window_of_the_colos_clock() {
    // 300 ms ahead: the last 300 ms of true second 59 are the next window's.
    let (mut ahead, events, _, _) = serve_at(false, 0.05, 59..60, 300, 60_000, 1);
    let (first, second) = (ahead.take(0).requests as f64, ahead.take(1).requests as f64);
    let share = second / (first + second);
    assert!((share - 0.3).abs() < 0.05, "{first} then {second}");
    assert!(events.iter().all(|e| (59_300..60_300).contains(&e.event_time_ms)), "events carry the colo's clock");
    // 300 ms behind: the first 300 ms of true second 60 are still the window before.
    let (mut behind, _, _, _) = serve_at(false, 0.05, 60..61, -300, 60_000, 1);
    let (first, second) = (behind.take(0).requests as f64, behind.take(1).requests as f64);
    assert!((first / (first + second) - 0.3).abs() < 0.05, "{first} then {second}");
}

#[test]
fn every_event_is_a_sampled_request_at_the_plans_rate() {
    for per_request in [true, false] {
        let (truth, events, plan) = serve(per_request, 0.05, 60);
        for e in &events {
            assert_eq!(e.kind, EventKind::Allocation);
            assert!(RequestId::parse(e.request_id.as_str()).is_ok() && e.request_id.as_str().as_bytes()[14] == b'4');
            assert_eq!((e.plan_version, e.sample_rate), (plan.version, plan.sample_rate));
        }
        assert_eq!(events.len() as u64, truth.sampled);
        // 120,000 requests at 5 %: 6,000 ± 77 (σ); 5σ.
        let n = truth.requests as f64;
        assert!((n - 120_000.0).abs() < 5.0 * 120_000f64.sqrt(), "{per_request}: {n}");
        assert!((truth.sampled as f64 - 0.05 * n).abs() < 5.0 * (0.05 * n).sqrt(), "{per_request}: {truth:?}");
        // The events go through the wire format and the aggregator's fold.
        let mut windows = Windows::new(60_000, 10_000, 60_000);
        let body = EventBatch { events: events[..1000].to_vec() }.to_json();
        assert_eq!(windows.apply(body.as_bytes(), 0, 0).unwrap(), 1000);
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
