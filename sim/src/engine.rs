//! The simulation: requests at the edge, sampled events at the origin, control rounds,
//! and plans that reach the edge only after a propagation delay (KV).
//!
//! Time advances in whole seconds. Every request draws a profile from the scenario's
//! traffic mix and is decided by the edge's current plan with core's `CompiledPlan`,
//! exactly as the worker does. A sampled request is folded into the origin's window
//! with core's `WindowStats`, exactly as the aggregator does. At every window boundary
//! the strategy runs a round and the new plan becomes visible at the edge after a delay
//! drawn from `[delay_min, delay_max]`. Truth (what was really delivered) is counted on
//! every request, independently of sampling.

use std::collections::VecDeque;

use allot_core::{CampaignId, CompiledPlan, PlacementId, Plan, RequestAttrs, Targets, WindowStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::scenario::Scenario;
use crate::strategy::{Controller, RoundInput, Strategy};

/// Simulation parameters.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub rps: u32,
    pub duration_s: u64,
    pub period_s: u64,
    pub delay_min_s: u64,
    pub delay_max_s: u64,
    /// Complete windows merged for the traffic mix and render ratios.
    pub recent_windows: usize,
    pub min_rate: f64,
    pub seed: u64,
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
            seed: 1,
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
}

struct EdgePlan {
    compiled: CompiledPlan,
    /// Per plan campaign: index into the scenario's campaign list and failure rate.
    slot: Vec<usize>,
    fail: Vec<f64>,
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
    let keys: Vec<String> =
        scenario.profiles.iter().map(|p| allot_core::stats::profile_key(Some(p.platform), Some(p.country))).collect();

    let compile = |plan: Plan| -> EdgePlan {
        let slot = plan.campaigns.iter().map(|c| ids.iter().position(|i| i == &c.id).unwrap_or(0)).collect();
        let fail = plan
            .campaigns
            .iter()
            .map(|c| scenario.render_failure.iter().find(|(id, _)| id == &c.id).map_or(0.0, |(_, f)| *f))
            .collect();
        EdgePlan { compiled: CompiledPlan::new(plan).expect("controller plans are valid"), slot, fail }
    };

    let mut targets = scenario.targets.clone();
    let mut controller = Controller::new(strategy, settings.min_rate);
    let empty = WindowStats::default();
    let first = controller
        .round(RoundInput {
            placement: &placement,
            targets: &targets,
            recent: &empty,
            last: None,
            previous: None,
            targets_changed: true,
            now_ms: 0,
        })
        .expect("the first round publishes");
    let mut edge = compile(first.clone());
    let mut origin = Origin { controller, previous: first, pending: VecDeque::new(), plans_published: 1 };

    let period = settings.period_s.max(1);
    let mut stats: Vec<WindowStats> = Vec::new();
    let mut windows = Vec::new();
    let mut delivered = vec![0u64; ids.len()];
    let (mut requests, mut sampled_requests, mut events) = (0u64, 0u64, 0u64);

    for t in 0..settings.duration_s {
        if let Some((at, new)) = &scenario.change
            && *at == t
        {
            targets = new.clone();
            origin.round(&placement, &targets, &stats, t, true, &mut rng, settings);
        }
        while origin.pending.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, plan)) = origin.pending.pop_front()
                && plan.version > edge.compiled.plan().version
            {
                edge = compile(plan);
            }
        }

        let w = (t / period) as usize;
        if stats.len() <= w {
            stats.resize_with(w + 1, WindowStats::default);
        }
        let window = &mut stats[w];
        let rate = edge.compiled.plan().sample_rate;
        let version = edge.compiled.plan().version;
        let weight = 1.0 / rate;
        for _ in 0..settings.rps {
            let x = rng.random::<f64>() * total_share;
            let p = cumulative.partition_point(|c| *c <= x).min(cumulative.len() - 1);
            let profile = &scenario.profiles[p];
            let attrs = RequestAttrs { platform: Some(profile.platform), country: Some(profile.country) };
            let choice = edge.compiled.choose(attrs, rng.random::<f64>());
            let shown = choice.ad.filter(|&i| rng.random::<f64>() >= edge.fail[i]);
            requests += 1;
            let counted = if scenario.impressions { shown } else { choice.ad };
            if let Some(i) = counted {
                delivered[edge.slot[i]] += 1;
            }
            if rng.random::<f64>() < rate {
                let ad = choice.ad.map(|i| &edge.compiled.plan().campaigns[i].id);
                window.record_allocation(weight, ad, &keys[p], version);
                sampled_requests += 1;
                events += 1;
                if let (true, Some(i)) = (scenario.impressions, shown) {
                    window.record_impression(weight, &edge.compiled.plan().campaigns[i].id);
                    events += 1;
                }
            }
        }

        if (t + 1) % period == 0 {
            let feasible = feasible(scenario, &targets);
            windows.push(Window {
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
                feasible,
                sampled_requests,
                events,
                required_samples: allot_core::SampleRatePlanner::required_samples(&targets),
            });
            delivered.iter_mut().for_each(|d| *d = 0);
            (requests, sampled_requests, events) = (0, 0, 0);

            origin.round(&placement, &targets, &stats, t + 1, false, &mut rng, settings);
        }
    }
    Run { windows, infeasible: origin.controller.infeasible(), plans_published: origin.plans_published }
}

/// The origin's side: the strategy, the plan published last, and plans on their way
/// to the edge.
struct Origin {
    controller: Controller,
    previous: Plan,
    pending: VecDeque<(u64, Plan)>,
    plans_published: u64,
}

impl Origin {
    /// A control round at `now_s`; a published plan reaches the edge after a delay.
    #[allow(clippy::too_many_arguments)]
    fn round(
        &mut self,
        placement: &PlacementId,
        targets: &Targets,
        stats: &[WindowStats],
        now_s: u64,
        targets_changed: bool,
        rng: &mut SmallRng,
        settings: Settings,
    ) {
        let recent = merge_recent(stats, settings.recent_windows);
        if let Some(plan) = self.controller.round(RoundInput {
            placement,
            targets,
            recent: &recent,
            last: stats.last(),
            previous: Some(&self.previous),
            targets_changed,
            now_ms: now_s * 1000,
        }) {
            self.pending.push_back((now_s + delay(rng, settings), plan.clone()));
            self.previous = plan;
            self.plans_published += 1;
        }
    }
}

fn delay(rng: &mut SmallRng, s: Settings) -> u64 {
    if s.delay_max_s <= s.delay_min_s { s.delay_min_s } else { rng.random_range(s.delay_min_s..=s.delay_max_s) }
}

fn merge_recent(stats: &[WindowStats], k: usize) -> WindowStats {
    let mut out = WindowStats::default();
    for w in stats.iter().rev().take(k) {
        out.merge(w);
    }
    out
}
