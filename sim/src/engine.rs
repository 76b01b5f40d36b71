//! The simulation: requests at the edge, event bodies at the origin, control rounds,
//! and plans that reach the edge only after a propagation delay (KV).
//!
//! Time advances in whole seconds. Every request gets a request id (a fresh UUIDv4, or
//! a recent one when the app retries) and a profile from the scenario's traffic mix,
//! and is served by the [edge](crate::edge) as the worker serves it: core chooses,
//! core's `sampled` decides on the request id, core builds the event. At the end of
//! each second the edge's outbox goes out as event bodies, which the
//! [origin](crate::origin) parses and folds into window counts as the aggregator does.
//! At every window boundary (and at once when the targets change) the origin's control
//! loop runs a round; a new plan becomes visible at the edge after a delay drawn from
//! `[delay_min, delay_max]`. Truth (what was really delivered) is counted on every
//! request, independently of sampling.

use std::collections::{BTreeMap, VecDeque};

use allot_core::{CampaignId, PlacementId, Plan, RequestAttrs, Targets, WindowStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::edge::Edge;
use crate::origin::{ControlConfig, ControlLoop, Windows};
use crate::requests::{RequestIds, format_uuid};
use crate::scenario::Scenario;
use crate::strategy::Strategy;

/// Simulation parameters.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub rps: u32,
    pub duration_s: u64,
    pub period_s: u64,
    pub delay_min_s: u64,
    pub delay_max_s: u64,
    /// Complete windows merged for the traffic mix and render ratios.
    pub recent_windows: u64,
    pub min_rate: f64,
    /// An unchanged plan is republished when it is this old (the origin's default).
    pub republish_after_s: u64,
    /// Share of requests that reuse a recent request's id (apps retry).
    pub reuse: f64,
    pub seed: u64,
    /// Keep every request id and event body ([`Run::trace`]); for tests.
    pub trace: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rps: 10_000,
            duration_s: 3600,
            period_s: 60,
            delay_min_s: 30,
            delay_max_s: 60,
            recent_windows: 5,
            min_rate: 1e-4,
            republish_after_s: 600,
            reuse: 0.02,
            seed: 1,
            trace: false,
        }
    }
}

/// What really happened in one window.
#[derive(Debug, Clone)]
pub struct Window {
    pub start_s: u64,
    pub requests: u64,
    /// Delivered share per campaign of the targets in force, in target order.
    pub shares: Vec<(CampaignId, f64)>,
    /// Targets in force during the window.
    pub targets: Vec<f64>,
    /// Per campaign: can its target be met at all (rate ≤ eligible traffic)?
    pub feasible: Vec<bool>,
    pub sampled_requests: u64,
    pub events: u64,
    /// Sampled requests the confidence needs per window (the binomial minimum).
    pub required_samples: f64,
}

impl Window {
    /// The largest miss among feasible campaigns.
    pub fn max_error(&self) -> f64 {
        self.shares
            .iter()
            .zip(&self.targets)
            .zip(&self.feasible)
            .filter(|(_, f)| **f)
            .map(|(((_, s), t), _)| (s - t).abs())
            .fold(0.0, f64::max)
    }
}

/// A run's record.
#[derive(Debug)]
pub struct Run {
    pub windows: Vec<Window>,
    /// Infeasible campaigns and the maximum share the controller reported.
    pub infeasible: Vec<(CampaignId, f64)>,
    pub plans_published: u64,
    /// With [`Settings::trace`]: what the edge did and what the origin counted.
    pub trace: Option<Trace>,
}

/// Everything that crossed from the edge to the origin in a run.
#[derive(Debug, Default)]
pub struct Trace {
    /// Every request: its id, the sample rate in force, and whether it was sampled.
    pub requests: Vec<(String, f64, bool)>,
    /// Every event body the edge sent, in order.
    pub bodies: Vec<String>,
    /// The origin's counts of every window, as a round reads them.
    pub windows: BTreeMap<u64, WindowStats>,
}

fn all_campaigns(s: &Scenario) -> Vec<CampaignId> {
    let mut ids: Vec<CampaignId> = s.targets.campaigns.iter().map(|c| c.id.clone()).collect();
    if let Some((_, t)) = &s.change {
        for c in &t.campaigns {
            if !ids.contains(&c.id) {
                ids.push(c.id.clone());
            }
        }
    }
    ids
}

fn feasible(s: &Scenario, t: &Targets) -> Vec<bool> {
    t.campaigns
        .iter()
        .map(|c| {
            let mass: f64 = s
                .profiles
                .iter()
                .filter(|p| c.eligibility.matches(Some(p.platform), Some(p.country)))
                .map(|p| p.share)
                .sum();
            c.rate.get() <= mass
        })
        .collect()
}

pub fn run(scenario: &Scenario, strategy: Strategy, settings: Settings) -> Run {
    let placement = PlacementId::parse("sim").expect("valid id");
    let ids = all_campaigns(scenario);
    let mut rng = SmallRng::seed_from_u64(settings.seed);
    let cumulative: Vec<f64> = scenario
        .profiles
        .iter()
        .scan(0.0, |acc, p| {
            *acc += p.share;
            Some(*acc)
        })
        .collect();
    let total_share = cumulative.last().copied().unwrap_or(1.0);
    let draw_profile = |rng: &mut SmallRng| {
        let x = rng.random::<f64>() * total_share;
        cumulative.partition_point(|c| *c <= x).min(cumulative.len() - 1)
    };

    let period = settings.period_s.max(1);
    let config = ControlConfig {
        period_ms: period * 1000,
        recent_windows: settings.recent_windows,
        min_sample_rate: settings.min_rate,
        republish_after_ms: settings.republish_after_s.saturating_mul(1000),
    };
    let mut targets = scenario.targets.clone();
    let mut targets_rev = 1;
    let mut windows = Windows::new(config.period_ms);
    let mut control = ControlLoop::new(strategy, placement, config);
    let first = control.round(&targets, targets_rev, &windows, 0).expect("the first round publishes");
    let mut edge = Edge::new(first, scenario, &ids);
    let mut pending: VecDeque<(u64, Plan)> = VecDeque::new();
    let mut plans_published = 1;
    let mut request_ids = RequestIds::new(settings.reuse);
    let mut trace = settings.trace.then(Trace::default);
    let mut uuid = [0; 36];

    let mut truth = Vec::new();
    let mut delivered = vec![0u64; ids.len()];
    let (mut requests, mut sampled_requests, mut events) = (0u64, 0u64, 0u64);

    for t in 0..settings.duration_s {
        if let Some((at, new)) = &scenario.change
            && *at == t
        {
            // The admin API marks the placement dirty: a round at once.
            targets = new.clone();
            targets_rev += 1;
            if let Some(plan) = control.round(&targets, targets_rev, &windows, t * 1000) {
                pending.push_back((t + delay(&mut rng, settings), plan));
                plans_published += 1;
            }
        }
        while pending.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, plan)) = pending.pop_front()
                && plan.version > edge.plan().version
            {
                edge.install(plan, scenario, &ids);
            }
        }

        let rate = edge.plan().sample_rate;
        for i in 0..u64::from(settings.rps) {
            let drawn = request_ids.draw(&mut rng, draw_profile);
            let profile = &scenario.profiles[drawn.profile];
            let attrs = RequestAttrs { platform: Some(profile.platform), country: Some(profile.country) };
            let request_id = format_uuid(drawn.id, &mut uuid);
            let now_ms = t * 1000 + i * 1000 / u64::from(settings.rps);
            let served = edge.serve(&mut rng, request_id, attrs, now_ms, scenario.impressions);
            requests += 1;
            let counted = if scenario.impressions { served.shown } else { served.allocated };
            if let Some(slot) = counted {
                delivered[slot] += 1;
            }
            sampled_requests += u64::from(served.sampled);
            if let Some(trace) = &mut trace {
                trace.requests.push((request_id.to_string(), rate, served.sampled));
            }
        }
        for (n, body) in edge.flush() {
            let applied = windows.apply(body.as_bytes()).expect("the edge's events are valid");
            debug_assert_eq!(applied, n);
            events += n as u64;
            if let Some(trace) = &mut trace {
                trace.bodies.push(body);
            }
        }

        if (t + 1) % period == 0 {
            truth.push(Window {
                start_s: t + 1 - period,
                requests,
                shares: targets
                    .campaigns
                    .iter()
                    .map(|c| {
                        let slot = ids.iter().position(|i| i == &c.id).unwrap_or(0);
                        (c.id.clone(), delivered[slot] as f64 / requests.max(1) as f64)
                    })
                    .collect(),
                targets: targets.campaigns.iter().map(|c| c.rate.get()).collect(),
                feasible: feasible(scenario, &targets),
                sampled_requests,
                events,
                required_samples: allot_core::SampleRatePlanner::required_samples(&targets),
            });
            delivered.iter_mut().for_each(|d| *d = 0);
            (requests, sampled_requests, events) = (0, 0, 0);

            if let Some(plan) = control.round(&targets, targets_rev, &windows, (t + 1) * 1000) {
                pending.push_back((t + 1 + delay(&mut rng, settings), plan));
                plans_published += 1;
            }
        }
    }
    if let Some(trace) = &mut trace {
        let indices = windows.indices();
        trace.windows = indices.iter().copied().zip(windows.read(&indices)).collect();
    }
    Run { windows: truth, infeasible: control.infeasible(), plans_published, trace }
}

fn delay(rng: &mut SmallRng, s: Settings) -> u64 {
    if s.delay_max_s <= s.delay_min_s { s.delay_min_s } else { rng.random_range(s.delay_min_s..=s.delay_max_s) }
}
