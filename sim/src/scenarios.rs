//! The scenarios: the real world the control loop must hold its promise in.
//!
//! Each is a function of [`Knobs`] (duration and traffic level can be changed from the
//! command line; the defaults are the documented runs) and a seed for what is random
//! in its *definition* (the offsets of target changes, the scale scenario's
//! placements), so every seed is a different world.

use allot_core::Targets;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::scenario::{Change, Delivery, Edges, Fault, PlacementSpec, Scenario, campaign, mix, placement, targets};
use crate::traffic::{Arrivals, MixEffect, Profile, Traffic, zipf};

/// What can be changed from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    /// Simulated minutes (`None`: the scenario's own).
    pub minutes: Option<u64>,
    /// Multiplies every arrival rate.
    pub traffic: f64,
    pub period_s: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self { minutes: None, traffic: 1.0, period_s: 60 }
    }
}

pub const KEYS: [&str; 8] = ["steady", "diurnal", "scale", "edge", "faults", "changes", "bias", "reporting"];

pub fn build(key: &str, knobs: Knobs, seed: u64) -> Option<Scenario> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5ce0_a110);
    let sc = match key {
        "steady" => steady(),
        "diurnal" => diurnal(),
        "scale" => scale(&mut rng),
        "edge" => edge(&mut rng),
        "faults" => faults(),
        "changes" => changes(&mut rng),
        "bias" => bias(),
        "reporting" => reporting(),
        _ => return None,
    };
    Some(apply(sc, knobs))
}

fn apply(mut sc: Scenario, k: Knobs) -> Scenario {
    if let Some(m) = k.minutes {
        sc.duration_s = m * 60;
    }
    sc.period_s = k.period_s.max(1);
    for p in &mut sc.placements {
        p.traffic.arrivals.mean *= k.traffic;
    }
    sc.changes.retain(|c| c.at_s < sc.duration_s);
    sc
}

const PLATFORMS: [(&str, f64); 3] = [("ios", 0.3), ("android", 0.5), ("web", 0.2)];
const COUNTRIES: [(&str, f64); 3] = [("DE", 0.35), ("FR", 0.25), ("US", 0.4)];

fn skewed(a: f64, b: f64, c: f64) -> Targets {
    targets(json!([
        {"id": "A", "rate": a, "eligibility": {"platforms": ["ios"]}},
        {"id": "B", "rate": b, "eligibility": {"countries": ["DE", "FR"]}},
        {"id": "C", "rate": c},
    ]))
}

/// One placement with the skewed mix and targets.
fn base(key: &'static str, title: &str, minutes: u64, arrivals: Arrivals, effects: Vec<MixEffect>) -> Scenario {
    let (profiles, weights) = mix(&PLATFORMS, &COUNTRIES, &[(false, 1.0)]);
    Scenario {
        key,
        title: title.to_string(),
        duration_s: minutes * 60,
        period_s: 60,
        profiles,
        placements: vec![PlacementSpec {
            id: placement("home_feed"),
            targets: skewed(0.2, 0.3, 0.25),
            traffic: Traffic::new(arrivals, weights, effects),
            render_failure: vec![],
            shortfall: vec![],
        }],
        changes: vec![],
        edges: Edges::default(),
        delivery: Delivery::default(),
        faults: vec![],
        reuse: 0.02,
    }
}

fn noisy(mean: f64) -> Arrivals {
    Arrivals { mean, daily: 0.0, noise: 0.1, noise_every_s: 300 }
}

/// 10,000 requests/s (with 5-minute noise) over 10 colos, realistic propagation and
/// event latency: the everyday case.
fn steady() -> Scenario {
    base(
        "steady",
        "steady: 10k rps ± 10 % noise, A 20 % on iOS (30 % of traffic), B 30 % in DE/FR (60 %), C 25 %",
        120,
        noisy(10_000.0),
        vec![],
    )
}

/// A day: 2k–20k requests/s, and DE/FR asleep at night, when B (30 %, DE/FR only)
/// cannot be met.
fn diurnal() -> Scenario {
    let arrivals = Arrivals { mean: 11_000.0, daily: 9.0 / 11.0, noise: 0.1, noise_every_s: 300 };
    let night = MixEffect::Daylight { countries: vec!["DE", "FR"], night: 0.15 };
    base(
        "diurnal",
        "diurnal: 24 h, 2k–20k rps, DE/FR at 15 % of their daytime weight at night (B infeasible then)",
        24 * 60,
        arrivals,
        vec![night],
    )
}

/// 50 colos, KV propagation log-normal (median 10 s, p99 90 s), one colo stale for 10
/// minutes, targets changed every 20 minutes at random offsets.
fn edge(rng: &mut SmallRng) -> Scenario {
    let mut sc = base(
        "edge",
        "edge: 50 colos, KV median 10 s / p99 90 s + cacheTtl 60 s + isolate 10 s, one colo stale 10 min, targets changed every 20 min",
        120,
        noisy(10_000.0),
        vec![],
    );
    sc.edges.colos = zipf(50, 0.8, 1.0);
    sc.edges.stale = Some((0, 40 * 60, 50 * 60));
    sc.faults.push(Fault { what: "largest colo stale".into(), from_s: 40 * 60, until_s: 50 * 60 });
    sc.changes = periodic_changes(rng, sc.duration_s, 1200);
    sc
}

fn periodic_changes(rng: &mut SmallRng, duration_s: u64, every_s: u64) -> Vec<Change> {
    let sets = [(0.2, 0.3, 0.25), (0.1, 0.4, 0.3), (0.25, 0.2, 0.2), (0.15, 0.35, 0.35)];
    (1..duration_s / every_s)
        .map(|i| {
            let (a, b, c) = sets[i as usize % sets.len()];
            Change {
                at_s: i * every_s + rng.random_range(0..every_s / 2),
                placement: 0,
                targets: Some(skewed(a, b, c)),
                what: format!("targets A {a}, B {b}, C {c}"),
            }
        })
        .collect()
}

/// The origin down for 3 minutes, 10 % of one colo's events lost for 30 minutes, the
/// aggregator 45 s behind for 10 minutes, 1 % of bodies delivered twice.
fn faults() -> Scenario {
    let mut sc = base(
        "faults",
        "faults: origin down 3 min, 10 % event loss at one colo for 30 min, aggregator 45 s behind for 10 min, 1 % bodies twice",
        150,
        noisy(10_000.0),
        vec![],
    );
    sc.delivery.origin_outage = Some((30 * 60, 33 * 60));
    sc.delivery.loss = vec![(0, 50 * 60, 80 * 60, 0.1)];
    sc.delivery.aggregator_lag = Some((100 * 60, 110 * 60, 45));
    sc.delivery.duplicate = 0.01;
    for (what, a, b) in
        [("origin down 3 min", 30, 33), ("10 % loss at one colo", 50, 80), ("aggregator 45 s behind", 100, 110)]
    {
        sc.faults.push(Fault { what: what.into(), from_s: a * 60, until_s: b * 60 });
    }
    sc
}

/// What managers and the world change: targets every 20 minutes at random offsets, a
/// 0.5 % country-restricted campaign added, an eligibility rule changed, a campaign
/// paused, a 3× iOS burst for 5 minutes, and the iOS share doubling for good.
fn changes(rng: &mut SmallRng) -> Scenario {
    let burst_at = 70 * 60 + rng.random_range(0..600);
    let shift_at = 130 * 60 + rng.random_range(0..600);
    let effects = vec![
        MixEffect::Platform { platform: "ios", factor: 3.0, from_s: burst_at, until_s: burst_at + 300 },
        MixEffect::Platform { platform: "ios", factor: 2.0, from_s: shift_at, until_s: u64::MAX },
    ];
    let mut sc = base(
        "changes",
        "changes: targets every 20 min, a 0.5 % DE-only campaign added, a rule changed, a campaign paused, a 3× iOS burst, iOS doubling for good",
        180,
        noisy(10_000.0),
        effects,
    );
    let at = |rng: &mut SmallRng, minute: u64| minute * 60 + rng.random_range(0..600);
    let d = |extra: Value| {
        let mut list = vec![
            json!({"id": "A", "rate": 0.15, "eligibility": {"platforms": ["ios"]}}),
            json!({"id": "B", "rate": 0.3, "eligibility": {"countries": ["DE", "FR"]}}),
            json!({"id": "C", "rate": 0.25}),
        ];
        if let Value::Array(more) = extra {
            list.extend(more);
        }
        list
    };
    let mut list = vec![
        (at(rng, 20), Some(skewed(0.1, 0.4, 0.3)), "targets A 10 %, B 40 %, C 30 %".to_string()),
        (
            at(rng, 40),
            Some(targets(json!(d(json!([{"id": "D", "rate": 0.005, "eligibility": {"countries": ["DE"]}}]))))),
            "D 0.5 % DE-only added".into(),
        ),
        (
            at(rng, 60),
            Some(targets(json!([
                {"id": "A", "rate": 0.15, "eligibility": {"platforms": ["ios", "web"]}},
                {"id": "B", "rate": 0.3, "eligibility": {"countries": ["DE", "FR"]}},
                {"id": "C", "rate": 0.25},
                {"id": "D", "rate": 0.005, "eligibility": {"countries": ["DE"]}},
            ]))),
            "A's rule: iOS or web".into(),
        ),
        (burst_at, None, "3× iOS burst for 5 min".into()),
        (
            at(rng, 100),
            Some(targets(json!([
                {"id": "A", "rate": 0.15, "eligibility": {"platforms": ["ios", "web"]}},
                {"id": "C", "rate": 0.25},
                {"id": "D", "rate": 0.005, "eligibility": {"countries": ["DE"]}},
            ]))),
            "B paused".into(),
        ),
        (shift_at, None, "iOS share doubles for good".into()),
        (at(rng, 160), Some(skewed(0.2, 0.3, 0.25)), "back to A 20 %, B 30 %, C 25 %".into()),
    ];
    list.sort_by_key(|(t, _, _)| *t);
    sc.changes = list.into_iter().map(|(at_s, targets, what)| Change { at_s, placement: 0, targets, what }).collect();
    sc
}

/// Apps that fail to show ads (web 40 %, iOS 5 %), 30 % of traffic from an app that
/// reports no impressions, and an unmodelled 1.2 pp shortfall on C.
fn bias() -> Scenario {
    let mut sc = failing_renders(
        "bias",
        "bias: ads fail to show on web 40 % / iOS 5 %, 30 % of traffic reports no impressions, C loses 1.2 pp unexplained",
        mix(&PLATFORMS, &COUNTRIES, &[(true, 0.7), (false, 0.3)]),
    );
    sc.placements[0].shortfall = vec![(campaign("C"), 0.012 / 0.25)];
    sc
}

/// The skewed placement over `mix` (profiles with whether their apps report
/// impressions, and their weights), its ads failing to show on web 40 % and iOS 5 %.
fn failing_renders(key: &'static str, title: &str, (profiles, weights): (Vec<Profile>, Vec<f64>)) -> Scenario {
    let mut sc = base(key, title, 120, noisy(10_000.0), vec![]);
    sc.profiles = profiles;
    let p = &mut sc.placements[0];
    p.traffic = Traffic::new(p.traffic.arrivals, weights, vec![]);
    p.render_failure = vec![(None, "web", 0.4), (None, "ios", 0.05)];
    sc
}

/// `bias`'s render failures (web 40 %, iOS 5 %), with apps that report impressions or
/// not by platform: 60 % of web traffic reports none, 25 % of Android's, 15 % of iOS's
/// (29 % in all). The reporting apps' mix is not the traffic's: 36 % of their requests
/// are iOS against 30 % of all, 11 % web against 20 %. So A (iOS only) is eligible on
/// more of them than of the rest, and the ads of the apps that report render more often
/// than those of the apps that do not.
fn reporting() -> Scenario {
    let mut profiles = Vec::new();
    let mut weights = Vec::new();
    for (platform, share) in PLATFORMS {
        let silent = match platform {
            "web" => 0.6,
            "android" => 0.25,
            _ => 0.15,
        };
        let (p, w) = mix(&[(platform, share)], &COUNTRIES, &[(true, 1.0 - silent), (false, silent)]);
        profiles.extend(p);
        weights.extend(w);
    }
    failing_renders(
        "reporting",
        "reporting: apps that report impressions by platform (none on 60 % of web, 25 % of Android, 15 % of iOS traffic), ads fail to show on web 40 % / iOS 5 %",
        (profiles, weights),
    )
}

/// 200 placements with Zipf traffic (20,000 down to 1 request/s), 8–64 campaigns with
/// targets down to 0.5 %, 80 profiles, and some jointly infeasible sets.
fn scale(rng: &mut SmallRng) -> Scenario {
    let platforms = [("ios", 0.3), ("android", 0.45), ("web", 0.2), ("tv", 0.05)];
    let countries: Vec<(&'static str, f64)> = COUNTRY_CODES.iter().copied().zip(zipf(20, 0.9, 1.0)).collect();
    let (profiles, weights) = mix(&platforms, &countries, &[(false, 1.0)]);
    let n = 200;
    let exponent = 20_000f64.ln() / (n as f64).ln();
    let placements = zipf(n, exponent, 20_000.0)
        .into_iter()
        .enumerate()
        .map(|(i, rps)| PlacementSpec {
            id: placement(&format!("p{i:03}")),
            targets: random_targets(rng, i % 10 == 3),
            traffic: Traffic::new(noisy(rps), weights.clone(), vec![]),
            render_failure: vec![],
            shortfall: vec![],
        })
        .collect();
    Scenario {
        key: "scale",
        title: "scale: 200 placements, Zipf 20k→1 rps, 8–64 campaigns, targets down to 0.5 %, 80 profiles, 1 in 10 jointly infeasible".into(),
        duration_s: 60 * 60,
        period_s: 60,
        profiles,
        placements,
        changes: vec![],
        edges: Edges { colos: vec![1.0; 4], ..Edges::default() },
        delivery: Delivery::default(),
        faults: vec![],
        reuse: 0.02,
    }
}

const COUNTRY_CODES: [&str; 20] = [
    "US", "DE", "GB", "FR", "IN", "BR", "JP", "IT", "ES", "CA", "MX", "NL", "PL", "SE", "TR", "AU", "KR", "ID", "AR",
    "CH",
];

/// 8–64 campaigns: a few large, many small (down to 0.5 %), some restricted to
/// platforms or countries; `joint`: two country-restricted campaigns that fit alone but
/// not together.
fn random_targets(rng: &mut SmallRng, joint: bool) -> Targets {
    let n = [8, 16, 32, 64][rng.random_range(0..4)];
    let mut list = Vec::new();
    let mut left = 0.9;
    for i in 0..n {
        let rate: f64 = if i < 3 { rng.random_range(0.05..0.2) } else { rng.random_range(0.005..0.02) };
        let rate = (rate.min(left - 0.001) * 1000.0).round() / 1000.0;
        if rate < 0.005 {
            break;
        }
        left -= rate;
        let mut c = json!({"id": format!("c{i:02}"), "rate": rate});
        match rng.random_range(0..4) {
            0 => {
                let platform = ["ios", "android", "web"][rng.random_range(0..3)];
                c["eligibility"] = json!({"platforms": [platform]});
            }
            1 => {
                let mut codes = COUNTRY_CODES[..8].to_vec();
                codes.shuffle(rng);
                c["eligibility"] = json!({"countries": codes[..3]});
            }
            _ => {}
        }
        list.push(c);
    }
    if joint {
        // GB and FR carry ≈ 16 % of traffic; each campaign alone fits, together not.
        for (i, id) in ["jointA", "jointB"].iter().enumerate() {
            list[i] = json!({"id": id, "rate": 0.09, "eligibility": {"countries": ["GB", "FR"]}});
        }
    }
    targets(Value::Array(list))
}
