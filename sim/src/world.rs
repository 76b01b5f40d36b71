//! The simulation: traffic at the colos, events on their way, the origin's windows and
//! rounds, plans on their way back — second by second, with the truth kept aside.
//!
//! Each second: due target changes (each a round at once, as the admin API wakes the
//! control loop), plans that became visible at a colo, the second's requests at every
//! colo, the colos' outboxes sent as event bodies (each with its own latency, some
//! lost, some sent twice, held while the origin is down), the bodies due at the
//! aggregator applied, and — `lateness` after each window ends, as the origin
//! schedules its full rounds — a round for every placement. A published plan reaches each colo
//! after its own propagation delay. Truth is counted on every request, in the window of
//! the colo's clock that the request's event names (see [`Truths`]).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use allot_core::event::MAX_BATCH;
use allot_core::{CampaignId, EventBatch, Feasibility, Plan, Publish, ShareEstimate, Targets};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::colo::{Colo, Serving, Truth, Truths, attrs};
use crate::feasible::infeasible_set;
use crate::origin::{ControlConfig, ControlLoop, Inbox, Windows};
use crate::requests::RequestIds;
use crate::scenario::Scenario;
use crate::traffic::{log_normal, standard_normal, uniform};

/// How the simulated origin runs (the `[control]` section), and how requests are served.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub seed: u64,
    /// Decide every request through the sampler (slow; exact), or by counts.
    pub per_request: bool,
    pub census: bool,
    /// Seconds after a window ends before it counts as complete and its full round runs
    /// (the origin's `control.lateness_ms`, 10 s by default, at most a quarter period).
    pub lateness_s: u64,
    /// … and complete for impressions (`control.impression_lateness_ms`, 60 s by
    /// default, between the lateness and a period past it).
    pub impression_lateness_s: u64,
    /// Seconds after a plan is replaced before its requests mean a stuck colo
    /// (`control.lag_after_ms`, 90 s by default).
    pub lag_after_s: u64,
    pub recent_windows: u64,
    pub min_rate: f64,
    pub republish_after_s: u64,
    /// Isolates per colo, each with its own spread of the picks (the worker's plan
    /// cache is per isolate), sharing the colo's requests at random.
    pub isolates: NonZeroUsize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            seed: 1,
            per_request: false,
            census: false,
            lateness_s: 10,
            impression_lateness_s: 60,
            lag_after_s: 90,
            recent_windows: 5,
            min_rate: 1e-4,
            republish_after_s: 600,
            isolates: NonZeroUsize::MIN,
        }
    }
}

/// One campaign in one window.
#[derive(Debug, Clone)]
pub struct CampaignWindow {
    pub id: CampaignId,
    pub target: f64,
    /// Its true delivered share.
    pub realized: f64,
    /// Its expected share under the plans the colos decided with: `realized` without
    /// the pick's randomness.
    pub expected: f64,
    /// Whether the truth says its target could be met (alone and with the others).
    pub feasible: bool,
    /// What the origin published for this window once it was complete (status API).
    pub published: Option<ShareEstimate>,
    /// Whether the decision made after this window flagged it infeasible.
    pub flagged: bool,
    /// The share of traffic that decision estimated the campaign may have (its
    /// eligible share): what the flag was decided on.
    pub eligible_estimated: f64,
    /// The campaign's eligible share of this window's true traffic.
    pub eligible: f64,
}

/// One placement in one control window (true time).
#[derive(Debug, Clone)]
pub struct WindowRecord {
    pub placement: usize,
    pub index: u64,
    pub requests: u64,
    pub sampled: u64,
    pub campaigns: Vec<CampaignWindow>,
    /// The binomial minimum for the targets, capped by the requests that came.
    pub needed: f64,
    /// The highest sample rate in force at any colo.
    pub max_rate: f64,
    /// The traffic could not give the confidence even at census.
    pub unattainable: bool,
    pub margin: f64,
    /// How far the targets together are from feasible on this window's true traffic
    /// (0: feasible).
    pub short: f64,
    /// A round read this window before the run ended: its flags are that round's. The
    /// last window of a run has none, and is not scored on flags.
    pub decided: bool,
    /// The window's sampled requests the origin had counted when that round read it:
    /// fewer than [`Self::sampled`] when some came after (late bodies).
    pub counted: u64,
    /// The share of its requests that round allowed for as still to come
    /// ([`allot_core::stragglers::Stragglers::allowance`]; 0: read as exact).
    pub allowance: f64,
}

/// A run's record.
#[derive(Debug, Default)]
pub struct Run {
    /// The seed it ran with.
    pub seed: u64,
    pub windows: Vec<WindowRecord>,
    pub events_sent: u64,
    pub events_lost: u64,
    pub duplicates_refused: u64,
    /// Plans the controller made that the origin would refuse (`Plan::check`).
    pub invalid_plans: u64,
    /// Plans published, by why.
    pub published: BTreeMap<Publish, u64>,
}

struct PlacementState {
    targets: Targets,
    rev: u64,
    control: ControlLoop,
    truth: Truths,
    /// Expected requests per profile over the current window: the truth's feasibility
    /// when no request came.
    mass: Vec<f64>,
}

pub fn run(sc: &Scenario, settings: Settings) -> Run {
    let mut rng = SmallRng::seed_from_u64(settings.seed);
    let period = sc.period_s.max(1);
    // Clamped as the origin clamps them (`ControlConfig::lateness`, `impression_lateness`).
    let lateness = settings.lateness_s.min(period / 4);
    let config = ControlConfig {
        period_ms: period * 1000,
        recent_windows: settings.recent_windows,
        min_sample_rate: settings.min_rate,
        republish_after_ms: settings.republish_after_s.saturating_mul(1000),
        lateness_ms: lateness * 1000,
        impression_lateness_ms: settings.impression_lateness_s.clamp(lateness, lateness + period) * 1000,
        census: settings.census,
        lag_after_ms: settings.lag_after_s.saturating_mul(1000),
    };
    let mut specs = sc.placements.clone();
    for s in &mut specs {
        s.traffic.draw_noise(&mut rng, sc.duration_s);
    }
    let mut windows = Windows::new(config.period_ms, config.lateness_ms, config.impression_lateness_ms);
    let mut states: Vec<PlacementState> = specs
        .iter()
        .map(|s| PlacementState {
            targets: s.targets.clone(),
            rev: 1,
            control: ControlLoop::new(s.id.clone(), config),
            truth: Truths::new(config.period_ms),
            mass: vec![0.0; sc.profiles.len()],
        })
        .collect();
    let first: Vec<Plan> = states
        .iter_mut()
        .map(|st| st.control.round(&st.targets, st.rev, &windows, 0).expect("the first round publishes"))
        .collect();
    let colo_total: f64 = sc.edges.colos.iter().sum();
    let mut colos: Vec<Colo> = (0..sc.edges.colos.len())
        .map(|i| {
            let skew = (sc.edges.clock_skew_ms * standard_normal(&mut rng)) as i64;
            Colo::new(format!("C{i:02}"), skew, &first, &specs, &sc.profiles, settings.isolates)
        })
        .collect();
    let mut ids: Vec<Vec<RequestIds>> =
        specs.iter().map(|_| sc.profiles.iter().map(|_| RequestIds::new(sc.reuse)).collect()).collect();
    let mut inbox = Inbox::default();
    let mut out = Run { seed: settings.seed, ..Run::default() };
    let mut rates = Vec::new();
    let on_impressions = sc.counts_impressions();
    let down = |t: u64| sc.delivery.origin_outage.is_some_and(|(a, b)| (a..b).contains(&t));

    for t in 0..sc.duration_s {
        for ch in sc.changes.iter().filter(|c| c.at_s == t) {
            let st = &mut states[ch.placement];
            if let Some(targets) = &ch.targets {
                st.targets = targets.clone();
                st.rev += 1;
                if !down(t)
                    && let Some(plan) = st.control.round(&st.targets, st.rev, &windows, t * 1000)
                {
                    publish(&mut colos, ch.placement, t, plan, sc, &mut rng);
                }
            }
        }
        for (c, colo) in colos.iter_mut().enumerate() {
            let stale = sc.edges.stale.is_some_and(|(s, a, b)| s == c && (a..b).contains(&t));
            for (p, spec) in specs.iter().enumerate() {
                colo.refresh(p, t, stale, spec, &sc.profiles);
            }
        }
        for (p, spec) in specs.iter().enumerate() {
            spec.traffic.rates(&sc.profiles, t, &mut rates);
            let st = &mut states[p];
            st.mass.iter_mut().zip(&rates).for_each(|(m, r)| *m += r);
            let how = Serving {
                spec,
                profiles: &sc.profiles,
                on_impressions,
                per_request: settings.per_request,
                impression_delay: (sc.delivery.impression_median_s, sc.delivery.impression_p99_s),
            };
            for (c, colo) in colos.iter_mut().enumerate() {
                let share = sc.edges.colos[c] / colo_total;
                let here: Vec<f64> = rates.iter().map(|r| r * share).collect();
                colo.serve(&mut rng, p, t, &here, how, &mut ids[p], &mut st.truth);
            }
        }
        for (c, colo) in colos.iter_mut().enumerate() {
            colo.collect_reports(t);
            send(colo, c, t, sc, &mut inbox, &mut out, &mut rng);
        }
        let lag = sc.delivery.aggregator_lag.filter(|(a, b, _)| (*a..*b).contains(&t)).map_or(0, |(_, _, l)| l);
        // Applied during second t, before the round at its end.
        inbox.deliver(t.saturating_sub(lag), (t + 1) * 1000 - 1, &mut windows);

        if (t + 1) % period == 0 {
            let index = (t + 1) / period - 1;
            for (p, st) in states.iter_mut().enumerate() {
                let max_rate = colos.iter().map(|c| c.plan(p).sample_rate).fold(0.0, f64::max);
                out.windows.push(record(st, p, index, &specs[p], sc, max_rate));
            }
        }
        // Full rounds `lateness` after a window ends; the record of the window the round
        // looked at gets what the origin publishes about it.
        let lateness = config.lateness_ms / 1000;
        if t + 1 > lateness && (t + 1 - lateness).is_multiple_of(period) && t + 1 > period && !down(t) {
            for (p, st) in states.iter_mut().enumerate() {
                if let Some(plan) = st.control.round(&st.targets, st.rev, &windows, (t + 1) * 1000) {
                    publish(&mut colos, p, t + 1, plan, sc, &mut rng);
                }
                if let Some(index) = st.control.last_index {
                    annotate(&mut out.windows, p, index, st);
                }
            }
        }
    }
    // Every window's truth is complete now, including requests a colo's clock put in
    // the window after true time had left it.
    for rec in &mut out.windows {
        settle(rec, states[rec.placement].truth.take(rec.index));
    }
    out.duplicates_refused = inbox.duplicates_refused;
    out.invalid_plans = states.iter().map(|s| s.control.invalid_plans).sum();
    for (why, n) in states.iter().flat_map(|s| &s.control.published) {
        *out.published.entry(*why).or_default() += n;
    }
    out
}

/// A plan published at `t` reaches each colo after its own delay: KV propagation, the
/// phase of the edge cache's `cacheTtl`, and the isolate's plan cache.
fn publish(colos: &mut [Colo], placement: usize, t: u64, plan: Plan, sc: &Scenario, rng: &mut SmallRng) {
    let e = &sc.edges;
    for colo in colos {
        let delay = log_normal(rng, e.propagation_median_s, e.propagation_p99_s)
            + uniform(rng) * e.cache_ttl_s
            + uniform(rng) * e.isolate_ttl_s;
        colo.offer(placement, t + delay.round() as u64, plan.clone());
    }
}

/// Sends a colo's outbox: bodies of at most `MAX_BATCH` events of one placement, each
/// arriving after its latency, unless lost; some twice; none while the origin is down
/// (the outbox retries until it is back).
fn send(colo: &mut Colo, c: usize, t: u64, sc: &Scenario, inbox: &mut Inbox, out: &mut Run, rng: &mut SmallRng) {
    if colo.outbox.is_empty() {
        return;
    }
    let mut events = std::mem::take(&mut colo.outbox);
    events.sort_by(|a, b| a.placement.cmp(&b.placement));
    let d = &sc.delivery;
    let loss = d.loss.iter().filter(|(lc, a, b, _)| *lc == c && (*a..*b).contains(&t)).map(|l| l.3).fold(0.0, f64::max);
    let mut rest = &events[..];
    while !rest.is_empty() {
        let same = rest.iter().take_while(|e| e.placement == rest[0].placement).count().min(MAX_BATCH);
        let (batch, tail) = rest.split_at(same);
        rest = tail;
        out.events_sent += batch.len() as u64;
        if rng.random::<f64>() < loss {
            out.events_lost += batch.len() as u64;
            continue;
        }
        let body = Arc::new(EventBatch { events: batch.to_vec() }.to_json());
        let mut at = t + log_normal(rng, d.latency_median_s, d.latency_p99_s).round() as u64;
        if let Some((a, b)) = d.origin_outage
            && (a..b).contains(&at)
        {
            // Retried with backoff (capped at 30 s) until the origin answers.
            at = b + rng.random_range(0..30);
        }
        if rng.random::<f64>() < d.duplicate {
            inbox.push(at + rng.random_range(1..10), body.clone());
        }
        inbox.push(at, body);
    }
}

/// Window `index` of placement `p` as its true traffic and targets were (what the
/// requests delivered is [`settle`]d once the run is over), and a fresh count for the next.
fn record(
    st: &mut PlacementState,
    p: usize,
    index: u64,
    spec: &crate::scenario::PlacementSpec,
    sc: &Scenario,
    max_rate: f64,
) -> WindowRecord {
    // The requests that came, per profile: what the targets can be met on. A colo whose
    // clock is behind may still add a few for its last second or two, in proportion.
    let mut came = st.truth.get(index).map(|t| t.profiles.clone()).unwrap_or_default();
    came.resize(sc.profiles.len(), 0.0);
    let mass = std::mem::replace(&mut st.mass, vec![0.0; sc.profiles.len()]);
    let mass = if came.iter().sum::<f64>() > 0.0 { came } else { mass };
    let total: f64 = mass.iter().sum();
    let supply: Vec<f64> = mass.iter().map(|m| if total > 0.0 { m / total } else { 0.0 }).collect();
    let rules: Vec<_> = st.targets.campaigns.iter().map(|c| &c.eligibility).collect();
    // Where delivery counts what apps show, a campaign needs that much more traffic.
    let demand: Vec<f64> = st
        .targets
        .campaigns
        .iter()
        .map(|c| {
            let shown = show_ratio(spec, sc, &c.id, &supply, &c.eligibility);
            c.rate.get() / shown.max(1e-9)
        })
        .collect();
    let eligible = |k: usize, j: usize| {
        let a = attrs(&sc.profiles[k]);
        rules[j].matches(a.platform, a.country)
    };
    let (bad, short) = infeasible_set(&supply, &demand, eligible);
    let targets = &st.targets;
    WindowRecord {
        placement: p,
        index,
        requests: 0,
        sampled: 0,
        campaigns: targets
            .campaigns
            .iter()
            .enumerate()
            .map(|(j, c)| CampaignWindow {
                id: c.id.clone(),
                target: c.rate.get(),
                realized: 0.0,
                expected: 0.0,
                feasible: !bad.contains(&j),
                published: None,
                flagged: false,
                eligible_estimated: 0.0,
                eligible: (0..supply.len()).filter(|&k| eligible(k, j)).map(|k| supply[k]).sum(),
            })
            .collect(),
        needed: allot_core::SampleRatePlanner::required_samples(targets),
        max_rate,
        unattainable: false,
        margin: targets.confidence.margin,
        short,
        decided: false,
        counted: 0,
        allowance: 0.0,
    }
}

/// What the requests of `rec`'s window delivered: the realized shares, and whether
/// they were too few for the confidence (`rec.needed` holds what it needs until then).
fn settle(rec: &mut WindowRecord, truth: Truth) {
    rec.requests = truth.requests;
    rec.sampled = truth.sampled;
    for c in &mut rec.campaigns {
        c.realized = truth.delivered.get(&c.id).copied().unwrap_or(0) as f64 / truth.requests.max(1) as f64;
        c.expected = truth.expected.get(&c.id).copied().unwrap_or(0.0) / truth.expected_requests.max(1.0);
    }
    rec.unattainable = (truth.requests as f64) < rec.needed;
    rec.needed = rec.needed.min(truth.requests as f64);
}

/// The share of a campaign's allocations that count as delivered (what apps show).
fn show_ratio(
    spec: &crate::scenario::PlacementSpec,
    sc: &Scenario,
    id: &CampaignId,
    supply: &[f64],
    rule: &allot_core::Eligibility,
) -> f64 {
    if !sc.counts_impressions() {
        return 1.0;
    }
    let (mut shown, mut all) = (0.0, 0.0);
    for (k, pr) in sc.profiles.iter().enumerate() {
        if !rule.matches(Some(pr.platform), Some(pr.country)) {
            continue;
        }
        shown += supply[k] * spec.shown(id, pr.platform);
        all += supply[k];
    }
    if all > 0.0 { shown / all } else { 1.0 }
}

/// What the origin publishes about window `index` once its round ran: each campaign's
/// estimate and interval (as the status API shows it), and the decision's flags.
fn annotate(records: &mut [WindowRecord], p: usize, index: u64, st: &PlacementState) {
    let Some(rec) = records.iter_mut().rev().find(|r| r.placement == p && r.index == index) else { return };
    rec.decided = true;
    let evidence = &st.control.last_evidence;
    rec.counted = evidence.last().map_or(0, |w| w.requests.n);
    rec.allowance = st.control.state().stragglers.allowance(evidence, st.targets.confidence.level);
    let stats = evidence.last_reading(rec.allowance);
    let z = st.targets.confidence.z();
    for c in &mut rec.campaigns {
        let to_come = evidence.impressions_to_come(&c.id);
        c.published = (stats.requests.n > 0).then(|| allot_core::estimate::published(&stats, &c.id, to_come, z).1);
        let decided = st.control.last_decision.as_ref().and_then(|d| d.campaigns.iter().find(|x| x.id == c.id));
        c.flagged = decided.is_some_and(|x| matches!(x.feasibility, Feasibility::Infeasible { .. }));
        c.eligible_estimated = decided.map_or(0.0, |x| x.eligible_share);
    }
}
