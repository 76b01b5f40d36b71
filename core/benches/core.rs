//! Hot-path and controller benchmarks (`cargo bench -p allot-core`); results in
//! `docs/performance.md`.
#![allow(clippy::unwrap_used)] // a benchmark: failing loudly is right

use allot_core::solver::{self, Patterns, SolveOptions};
use allot_core::token::{self, EdgeKey, Issue, Subject};
use allot_core::{
    CampaignId, CompiledPlan, ControlInput, ControlState, Controller, Eligibility, PlacementId, Plan, PlanCampaign,
    RequestAttrs, RequestId, Spread, Targets, TargetsSpec, WindowStats,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const PLATFORMS: [&str; 10] = ["ios", "android", "web", "tv", "car", "watch", "tablet", "desktop", "console", "kiosk"];

fn country(i: usize) -> String {
    let b = [b'A' + (i / 26) as u8, b'A' + (i % 26) as u8];
    String::from_utf8_lossy(&b).into_owned()
}

/// `n` campaigns, each eligible for a random subset of platforms and countries.
fn plan(n: usize, rng: &mut SmallRng) -> Plan {
    Plan {
        format: 1,
        placement: PlacementId::parse("bench").unwrap(),
        version: 1,
        issued_at_ms: 0,
        sample_rate: 0.01,
        no_ad_weight: 0.1,
        campaigns: (0..n)
            .map(|i| PlanCampaign {
                id: CampaignId::parse(format!("c{i}")).unwrap(),
                weight: rng.random::<f64>(),
                creative: json!({"img": format!("https://cdn.example/{i}.png")}),
                eligibility: Eligibility {
                    platforms: PLATFORMS.iter().filter(|_| rng.random::<f64>() < 0.6).map(|p| p.to_string()).collect(),
                    countries: (0..100).filter(|_| rng.random::<f64>() < 0.5).map(country).collect(),
                },
            })
            .collect(),
        withdrawn: false,
        platforms: None,
    }
}

fn choose(c: &mut Criterion) {
    let mut g = c.benchmark_group("choose");
    for n in [8, 64] {
        let mut rng = SmallRng::seed_from_u64(1);
        let compiled = CompiledPlan::new(plan(n, &mut rng)).unwrap();
        let countries: Vec<String> = (0..100).map(country).collect();
        let mut i = 0usize;
        let mut spread = Spread::new();
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let attrs = RequestAttrs { platform: Some(PLATFORMS[i % 10]), country: Some(&countries[i % 100]) };
                std::hint::black_box(compiled.choose_spread(attrs, &mut spread, || 7))
            })
        });
    }
    g.finish();

    let mut rng = SmallRng::seed_from_u64(2);
    let compiled = CompiledPlan::new(plan(8, &mut rng)).unwrap();
    let key = EdgeKey::new(b"bench-edge-secret-0123456789").unwrap();
    let id = "6f9619ff8b86d011b42d00c04fc964ff";
    let fresh = 0x9e37_79b9_7f4a_7c15u64;
    c.bench_function("sample/keyed", |b| {
        b.iter(|| std::hint::black_box(key.sample().decide(std::hint::black_box(fresh), 0.01)))
    });
    let mut spread = Spread::new();
    c.bench_function("choose+sample+respond/8", |b| {
        let mut out = String::with_capacity(256);
        b.iter(|| {
            out.clear();
            let choice =
                compiled.choose_spread(RequestAttrs { platform: Some("ios"), country: Some("AB") }, &mut spread, || 7);
            let s = key.sample().decide(fresh, compiled.plan().sample_rate);
            compiled.write_response(&mut out, id, choice.ad, None);
            std::hint::black_box((s, out.len()))
        })
    });
    // The whole `/v1/ad` core work with an ad: choose, sample, the impression token,
    // the body.
    let request_id = RequestId::parse(id).unwrap();
    let p = compiled.plan();
    c.bench_function("choose+sample+token+respond/8", |b| {
        let mut out = String::with_capacity(256);
        let mut spread = Spread::new();
        b.iter(|| {
            out.clear();
            let choice =
                compiled.choose_spread(RequestAttrs { platform: Some("ios"), country: Some("AB") }, &mut spread, || 7);
            let s = key.sample().decide(fresh, p.sample_rate);
            let ad = &p.campaigns[choice.ad.unwrap_or(0)].id;
            let subject = Subject { request_id: &request_id, placement: &p.placement, ad };
            let issue = Issue {
                plan_version: p.version,
                sample_rate: p.sample_rate,
                issued_at_ms: 1_764_000_000_000,
                sampled: s,
            };
            let t = token::issue(&key, subject, issue);
            compiled.write_response(&mut out, id, choice.ad, Some(&t));
            std::hint::black_box((s, out.len()))
        })
    });
}

fn solve(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(3);
    let n = 64;
    // 1,000 distinct eligibility patterns with random frequencies.
    let counts: Vec<(u64, f64)> = (0..1000).map(|_| (rng.random::<u64>(), rng.random::<f64>())).collect();
    let patterns = Patterns::new(counts, n);
    assert_eq!(patterns.masks.len(), 1000);
    // Feasible targets: 80 % of what random weights deliver.
    let w: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    let mut d = vec![0.0; n];
    solver::delivered(&w, 0.2, &patterns, &mut d);
    let targets: Vec<f64> = d.iter().map(|x| x * 0.8).collect();
    let sol = solver::solve(&targets, &patterns, SolveOptions::default());
    assert!(sol.converged, "{} iterations", sol.iterations);
    eprintln!("solver: 64 campaigns × 1000 patterns converged in {} iterations", sol.iterations);
    c.bench_function("solve/64x1000", |b| {
        b.iter(|| std::hint::black_box(solver::solve(&targets, &patterns, SolveOptions::default())))
    });

    // The whole controller round: profiles → patterns → solve → decision.
    let mut rng = SmallRng::seed_from_u64(4);
    let p = plan(n, &mut rng);
    let spec = json!({
        "campaigns": p.campaigns.iter().map(|c| json!({
            "id": c.id, "rate": 0.8 / n as f64, "eligibility": c.eligibility,
        })).collect::<Vec<_>>(),
    });
    let targets = Targets::parse(serde_json::from_value::<TargetsSpec>(spec).unwrap()).unwrap();
    let mut stats = WindowStats::default();
    for (i, platform) in PLATFORMS.iter().enumerate() {
        for k in 0..100 {
            stats.profiles.insert(format!("{platform}:{}", country(k)), 1.0 + ((i * 100 + k) % 7) as f64);
        }
    }
    bench_round(c, "controller/64 campaigns, 1000 profiles", &targets, &stats);
}

/// A round over a window of 64,512 profiles in thousands of patterns: 64 campaigns,
/// each pair of them sharing a platform of its own (63 platforms per rule), and each
/// campaign shown in about two thirds of 32 countries. Apps choose their platform token, so the
/// profiles a round maps are theirs to multiply; the cost must grow with them, not
/// with profiles × patterns.
fn many_profiles(c: &mut Criterion) {
    let n = 64;
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect();
    let shown = |i: usize, k: usize| !((i * 37 + k * 11) ^ (i * k)).is_multiple_of(3);
    let campaigns: Vec<_> = (0..n)
        .map(|i| {
            let platforms: Vec<String> =
                pairs.iter().filter(|(a, b)| *a == i || *b == i).map(|(a, b)| format!("q{a}-{b}")).collect();
            let countries: Vec<String> = (0..32).filter(|&k| shown(i, k)).map(country).collect();
            json!({"id": format!("c{i}"), "rate": 0.01, "eligibility": {"platforms": platforms, "countries": countries}})
        })
        .collect();
    let targets =
        Targets::parse(serde_json::from_value::<TargetsSpec>(json!({ "campaigns": campaigns })).unwrap()).unwrap();
    let mut stats = WindowStats::default();
    for (a, b) in &pairs {
        for k in 0..32 {
            stats.profiles.insert(format!("q{a}-{b}:{}", country(k)), 1.0 + ((a + b + k) % 5) as f64);
        }
    }
    let patterns = allot_core::controller::patterns_of(&targets, &stats).masks.len();
    eprintln!("controller: 64 campaigns, {} profiles in {patterns} patterns", stats.profiles.len());
    bench_round(c, "controller/64 campaigns, 64,512 profiles", &targets, &stats);
}

/// One whole controller round over `stats` (profiles → patterns → solve → decision),
/// from a fresh state.
fn bench_round(c: &mut Criterion, name: &str, targets: &Targets, stats: &WindowStats) {
    let state = ControlState::default();
    c.bench_function(name, |b| {
        b.iter(|| {
            std::hint::black_box(Controller::default().decide(ControlInput {
                targets,
                recent: stats,
                last: None,
                last_index: None,
                last_window_ms: None,
                previous: None,
                state: &state,
            }))
        })
    });
}

/// A share on impressions over a window where apps made up 10,000 platforms, each with
/// enough reporting allocations for a ratio of its own: the status and every round read
/// it, so its cost must grow with the platforms, not with their square.
fn read(c: &mut Criterion) {
    use allot_core::estimate::{self, DeliveryBasis};
    use allot_core::stats::{PlatformCounts, Tally};
    let id = CampaignId::parse("a").unwrap();
    let mut stats = WindowStats { requests: Tally { ht: 1e6, n: 1_000_000 }, requests_sq: 1e6, ..Default::default() };
    let platforms = 10_000;
    for p in 0..platforms {
        let counts = PlatformCounts { allocations: 40.0, unreported: 10.0, impressions: 20.0 + (p % 10) as f64 };
        stats.platforms.insert((id.clone(), format!("made-up-{p}")), counts);
    }
    let sum = |f: fn(&PlatformCounts) -> f64| stats.platforms.values().map(f).sum::<f64>();
    let (a, u, i) = (sum(|p| p.allocations), sum(|p| p.unreported), sum(|p| p.impressions));
    let counts = allot_core::stats::CampaignCounts {
        allocations: Tally { ht: a, n: a as u64 },
        allocations_sq: a,
        unreported: Tally { ht: u, n: u as u64 },
        impressions: Tally { ht: i, n: i as u64 },
        impressions_sq: i,
        ..Default::default()
    };
    stats.campaigns.insert(id.clone(), counts);
    c.bench_function("share on impressions/10,000 platforms", |b| {
        b.iter(|| std::hint::black_box(estimate::share(&stats, &id, DeliveryBasis::Impressions, 1.96)))
    });
}

/// The allowance for late bodies, solved over a histogram of their sizes spread over
/// twelve buckets (the costliest shape: the bisection walks every bucket 50 times). Every
/// round computes it once per placement, and every status request once.
fn allowance(c: &mut Criterion) {
    use allot_core::Evidence;
    use allot_core::stats::Tally;
    use allot_core::stragglers::{BODY_BUCKETS, Stragglers};
    let mut bodies = [0.0; BODY_BUCKETS];
    (6..18).for_each(|k| bodies[k] = 0.25 + k as f64 / 10.0);
    let late_windows: f64 = bodies.iter().sum();
    let s = Stragglers {
        windows: 30.0,
        windows_sq: 16.0,
        late_windows,
        late: 40.0,
        requests: 30_000.0,
        last_window: 100,
        bodies,
    };
    let window = WindowStats { requests: Tally { ht: 3_000.0, n: 3_000 }, requests_sq: 3_000.0, ..Default::default() };
    let evidence = Evidence { last_index: Some(100), windows: vec![window.clone()], recent: window };
    c.bench_function("stragglers/allowance, 12 sizes", |b| {
        b.iter(|| std::hint::black_box(s.allowance(std::hint::black_box(&evidence), 0.95)))
    });
}

criterion_group!(benches, choose, solve, many_profiles, read, allowance);
criterion_main!(benches);
