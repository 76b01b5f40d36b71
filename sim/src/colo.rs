//! One colo of the edge: the plans it has, the requests it decides, the events it sends.
//!
//! A colo decides with the plan *it* sees: a published plan reaches each colo after its
//! own delay (KV propagation, the edge cache's `cacheTtl`, the isolate's plan cache), so
//! during a change colos disagree. Its clock is off by a fixed skew, and events carry
//! that clock, as the worker stamps them.
//!
//! Decisions are core's, as in the worker: `CompiledPlan::choose_spread` on the request's
//! attributes with the `Spread` of the isolate that takes the request. A colo runs
//! as many isolates as [`crate::world::Settings::isolates`] says, and each request goes
//! to one of them at random: the more isolates share a placement's traffic, the fewer
//! requests each one's credits see, and the closer the spread comes to independent
//! picks.
//! `EdgeKey::sample` on the request id at the plan's rate,
//! `CompiledPlan::allocation_event`, and the impression token's grant for an impression.
//! Every request is decided; two ways to decide whether it is sampled, which the tests
//! show agree:
//! - **per request**: each request gets a UUIDv4 (or a recent one, when its app
//!   retries) and goes through the sampler — the exact production path;
//! - **by counts**, for hundreds of thousands of requests per second: the sampler is a
//!   uniform hash of a random id, so a request is sampled with the plan's rate, and only
//!   a sampled one gets an id, drawn until core's sampler takes it.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use allot_core::choose::pick_probabilities;
use allot_core::token::{self, Issue, Subject};
use allot_core::{CampaignId, Choice, CompiledPlan, EdgeKey, Event, Plan, RequestAttrs, RequestId, Spread};
use rand::Rng;
use rand::rngs::SmallRng;

use crate::requests::{RequestIds, format_uuid};
use crate::scenario::PlacementSpec;
use crate::traffic::{Profile, poisson, uniform};

/// The simulated edges' secret.
pub const EDGE_SECRET: &[u8] = b"allot-sim-edge-secret";

/// The simulated edges' key (what the worker derives from its `EDGE_KEY`).
pub fn edge_key() -> EdgeKey {
    EdgeKey::new(EDGE_SECRET).expect("the simulator's secret is long enough")
}

/// What really happened in one window, counted on every request (not only the sampled ones).
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub requests: u64,
    /// Delivered ads per campaign (allocations, or ads shown where apps report them).
    pub delivered: BTreeMap<CampaignId, u64>,
    /// Expected deliveries per campaign under the plans that decided the requests: the
    /// deliveries without the randomness of the pick, to tell the controller's error
    /// from the pick's.
    pub expected: BTreeMap<CampaignId, f64>,
    /// The requests `expected` is over (by counts, the Poisson mean rather than the draw).
    pub expected_requests: f64,
    /// The same requests per profile: the traffic the window's targets are held to.
    pub profiles: Vec<f64>,
    pub sampled: u64,
}

impl Truth {
    fn deliver(&mut self, id: &CampaignId, n: u64) {
        if n > 0 {
            *self.delivered.entry(id.clone()).or_default() += n;
        }
    }

    fn expect(&mut self, id: &CampaignId, mass: f64) {
        if mass > 0.0 {
            *self.expected.entry(id.clone()).or_default() += mass;
        }
    }

    /// `n` requests of profile `k` decided under `slot`: their expected deliveries.
    fn expect_requests(&mut self, slot: &Slot, k: usize, n: u64, on_impressions: bool) {
        self.expected_requests += n as f64;
        if self.profiles.len() <= k {
            self.profiles.resize(k + 1, 0.0);
        }
        self.profiles[k] += n as f64;
        for (c, &q) in slot.odds[k].1.iter().enumerate() {
            let d = q * (1.0 - slot.shortfall[c]) * if on_impressions { slot.shown[c][k] } else { 1.0 };
            self.expect(&slot.plan.plan().campaigns[c].id, n as f64 * d);
        }
    }
}

/// A placement's truth per window of the *edge's* clock. A request belongs to the window
/// its event names, the colo's time, because that is the window the origin counts it
/// in: a window's realized share is the share of the requests the origin attributes to
/// it. Counted by true time instead, a colo's skew moves the requests of the last or
/// first half second of each window to its neighbour, decided under another plan, and
/// the realized share differs from the origin's count by more than sampling.
#[derive(Debug, Default)]
pub struct Truths {
    period_ms: u64,
    windows: BTreeMap<u64, Truth>,
}

impl Truths {
    pub fn new(period_ms: u64) -> Self {
        Self { period_ms: period_ms.max(1), windows: BTreeMap::new() }
    }

    /// The truth of the window holding edge time `at_ms`.
    fn at(&mut self, at_ms: u64) -> &mut Truth {
        self.windows.entry(at_ms / self.period_ms).or_default()
    }

    /// The truth of window `index` so far.
    pub fn get(&self, index: u64) -> Option<&Truth> {
        self.windows.get(&index)
    }

    /// The truth of window `index`, taken out.
    pub fn take(&mut self, index: u64) -> Truth {
        self.windows.remove(&index).unwrap_or_default()
    }

    /// The window index of edge time `at_ms`.
    fn index(&self, at_ms: u64) -> u64 {
        at_ms / self.period_ms
    }
}

/// A placement's plan at one colo, with what serving it needs precomputed.
#[derive(Debug)]
struct Slot {
    plan: CompiledPlan,
    /// Per profile: its eligibility pattern, the odds of each campaign, of no ad.
    odds: Vec<(u64, Vec<f64>, f64)>,
    /// Per plan campaign: the share of its picks lost to the unmodelled shortfall.
    shortfall: Vec<f64>,
    /// Per plan campaign × profile: the probability its ad is shown.
    shown: Vec<Vec<f64>>,
    /// Plans published but not yet seen here: `(visible from, plan)`.
    pending: Vec<(u64, Plan)>,
    /// Each isolate's picks' credits for the placement, kept across plans as the worker
    /// does.
    spreads: Vec<Spread>,
}

impl Slot {
    /// A slot serving `plan`, with the isolates' `spreads` (kept across plans).
    fn new(plan: Plan, spec: &PlacementSpec, profiles: &[Profile], spreads: Vec<Spread>) -> Self {
        let plan = CompiledPlan::new(plan).unwrap_or_else(|e| panic!("published plans are valid: {e}"));
        let p = plan.plan();
        let odds = profiles
            .iter()
            .map(|pr| {
                let eligible = plan.eligible(attrs(pr));
                let mut q = Vec::new();
                let none = pick_probabilities(p, eligible, &mut q);
                (eligible, q, none)
            })
            .collect();
        let shortfall = p
            .campaigns
            .iter()
            .map(|c| spec.shortfall.iter().find(|(id, _)| id == &c.id).map_or(0.0, |(_, f)| *f))
            .collect();
        let shown =
            p.campaigns.iter().map(|c| profiles.iter().map(|pr| spec.shown(&c.id, pr.platform)).collect()).collect();
        Self { plan, odds, shortfall, shown, pending: Vec::new(), spreads }
    }
}

pub fn attrs(p: &Profile) -> RequestAttrs<'static> {
    RequestAttrs { platform: Some(p.platform), country: Some(p.country) }
}

/// One colo.
#[derive(Debug)]
pub struct Colo {
    pub name: String,
    /// Its clock's offset from true time (ms).
    pub skew_ms: i64,
    slots: Vec<Slot>,
    /// Events waiting to be sent, and impression reports the apps have yet to send (by
    /// the second they arrive).
    pub outbox: Vec<Event>,
    later: BTreeMap<u64, Vec<Event>>,
    key: EdgeKey,
    /// Scratch: a second's arrivals, `(µs into the second, profile)`.
    arrivals: Vec<(u32, usize)>,
    /// Scratch: per profile, its requests per window the second spans (at most two).
    landed: Vec<[(u64, u64); 2]>,
}

/// How the colo serves a second.
#[derive(Debug, Clone, Copy)]
pub struct Serving<'a> {
    pub spec: &'a PlacementSpec,
    pub profiles: &'a [Profile],
    /// Whether delivery is counted on what apps show (they report impressions).
    pub on_impressions: bool,
    pub per_request: bool,
    pub impression_delay: (f64, f64),
}

impl Colo {
    /// A colo with `isolates` isolates, serving `first` (one plan per placement).
    pub fn new(
        name: String,
        skew_ms: i64,
        first: &[Plan],
        specs: &[PlacementSpec],
        profiles: &[Profile],
        isolates: NonZeroUsize,
    ) -> Self {
        let spreads = || (0..isolates.get()).map(|_| Spread::new()).collect();
        let slots =
            first.iter().zip(specs).map(|(plan, spec)| Slot::new(plan.clone(), spec, profiles, spreads())).collect();
        Self {
            name,
            skew_ms,
            slots,
            outbox: Vec::new(),
            later: BTreeMap::new(),
            key: edge_key(),
            arrivals: Vec::new(),
            landed: Vec::new(),
        }
    }

    pub fn plan(&self, placement: usize) -> &Plan {
        self.slots[placement].plan.plan()
    }

    /// Per isolate, how many eligibility patterns its credits follow for `placement`.
    pub fn streams(&self, placement: usize) -> Vec<usize> {
        self.slots[placement].spreads.iter().map(Spread::streams).collect()
    }

    /// A plan published for `placement`, visible here from `at_s`.
    pub fn offer(&mut self, placement: usize, at_s: u64, plan: Plan) {
        self.slots[placement].pending.push((at_s, plan));
    }

    /// Installs the newest plan visible at `t` (unless the colo is stale), as the
    /// worker's cache takes a newer version.
    pub fn refresh(&mut self, placement: usize, t: u64, stale: bool, spec: &PlacementSpec, profiles: &[Profile]) {
        if stale {
            return;
        }
        let slot = &mut self.slots[placement];
        let current = slot.plan.plan().version;
        let mut newest: Option<Plan> = None;
        slot.pending.retain(|(at, plan)| {
            if *at > t {
                return true;
            }
            if plan.version > current && newest.as_ref().is_none_or(|n| plan.version > n.version) {
                newest = Some(plan.clone());
            }
            false
        });
        if let Some(plan) = newest {
            let pending = std::mem::take(&mut slot.pending);
            *slot = Slot { pending, ..Slot::new(plan, spec, profiles, std::mem::take(&mut slot.spreads)) };
        }
    }

    /// Serves one second `t` of placement `placement`: `rates[k]` requests per second of
    /// profile `k` arrive here (in expectation), each at a random moment of the second.
    #[allow(clippy::too_many_arguments)]
    pub fn serve(
        &mut self,
        rng: &mut SmallRng,
        placement: usize,
        t: u64,
        rates: &[f64],
        how: Serving<'_>,
        ids: &mut [RequestIds],
        truths: &mut Truths,
    ) {
        // The second's requests in the order they arrive (µs), profiles interleaved, as
        // the worker sees them.
        let mut arrivals = std::mem::take(&mut self.arrivals);
        arrivals.clear();
        for (k, &m) in rates.iter().enumerate() {
            for _ in 0..poisson(rng, m) {
                arrivals.push((rng.random_range(0..1_000_000u32), k));
            }
        }
        arrivals.sort_unstable();
        let (key, slot) = (&self.key, &mut self.slots[placement]);
        let rate = slot.plan.plan().sample_rate;
        let mut sampled = Vec::new();
        let mut landed = std::mem::take(&mut self.landed);
        landed.clear();
        landed.resize(rates.len(), [(u64::MAX, 0); 2]);
        for &(micros, k) in &arrivals {
            let at = (t * 1000 + u64::from(micros) / 1000).saturating_add_signed(self.skew_ms);
            // The edge's coin for this request: core's keyed draw, or the same odds in one
            // uniform (ids are then drawn only for the sampled requests).
            let id = if how.per_request {
                let drawn = ids[k].draw(rng, |_| k);
                key.sample().decide(rng.random(), rate).then_some(drawn.id)
            } else {
                (uniform(rng) < rate).then(|| ids[k].draw(rng, |_| k).id)
            };
            let (delivered, choice) = decide(slot, k, how, rng);
            let index = truths.index(at);
            match landed[k].iter_mut().find(|(i, _)| *i == index || *i == u64::MAX) {
                Some(l) => *l = (index, l.1 + 1),
                None => unreachable!("a second spans at most two windows"),
            }
            if let Some(id) = id {
                sampled.push(Sampled { k, id, at, delivered, choice });
                continue;
            }
            let truth = truths.at(at);
            truth.requests += 1;
            if let Some(c) = delivered {
                truth.deliver(&slot.plan.plan().campaigns[c].id, 1);
            }
        }
        for (k, windows) in landed.iter().enumerate() {
            for &(index, n) in windows.iter().filter(|(_, n)| *n > 0) {
                truths.at(index * truths.period_ms).expect_requests(slot, k, n, how.on_impressions);
            }
        }
        self.arrivals = arrivals;
        self.landed = landed;
        for s in sampled {
            self.serve_sampled(rng, placement, s, how, truths);
        }
    }

    /// A sampled request: counted, and its events queued.
    fn serve_sampled(
        &mut self,
        rng: &mut SmallRng,
        placement: usize,
        s: Sampled,
        how: Serving<'_>,
        truths: &mut Truths,
    ) {
        let Sampled { k, id, at: now_ms, delivered, choice } = s;
        let slot = &self.slots[placement];
        let p = slot.plan.plan();
        let truth = truths.at(now_ms);
        truth.requests += 1;
        truth.sampled += 1;
        if let Some(c) = delivered {
            truth.deliver(&p.campaigns[c].id, 1);
        }
        let t = now_ms.saturating_add_signed(-self.skew_ms) / 1000;
        let mut buf = [0; 36];
        let request_id = RequestId::parse(format_uuid(id, &mut buf)).expect("request ids are UUIDs");
        let profile = &how.profiles[k];
        // An app that reports no impressions says so (`impressions=none`), as the SDK does.
        let unreported = !profile.reports_impressions;
        let colo = Some(self.name.clone());
        let event = slot.plan.allocation_event(
            request_id.clone(),
            choice,
            slot.plan.resolve(attrs(profile)),
            now_ms,
            colo,
            unreported,
        );
        self.outbox.push(event);
        // The app reports the ad it showed, later, with the ad's token; the edge verifies
        // it and sends the grant's impression (sampled exactly when its allocation was).
        let (Some(c), true, true) = (delivered, how.on_impressions, profile.reports_impressions) else { return };
        let subject = Subject { request_id: &request_id, placement: &p.placement, ad: &p.campaigns[c].id };
        let issue = Issue { plan_version: p.version, sample_rate: p.sample_rate, issued_at_ms: now_ms, sampled: true };
        let t_token =
            token::issue_for_platform(&self.key, subject, issue, slot.plan.resolve(attrs(profile)).event_platform());
        let delay = crate::traffic::log_normal(rng, how.impression_delay.0, how.impression_delay.1);
        let at_ms = now_ms + (delay * 1000.0) as u64;
        let Ok(grant) = token::verify(std::slice::from_ref(&self.key), &t_token, subject, at_ms) else {
            return; // Reported after the token expired: refused, as the worker does.
        };
        let event = grant.impression_event(subject, Some(profile.country.to_string()), Some(self.name.clone()));
        self.later.entry(t + delay.ceil() as u64).or_default().push(event);
    }

    /// Moves the impression reports due by `t` into the outbox.
    pub fn collect_reports(&mut self, t: u64) {
        let due: Vec<u64> = self.later.range(..=t).map(|(k, _)| *k).collect();
        for k in due {
            if let Some(events) = self.later.remove(&k) {
                self.outbox.extend(events);
            }
        }
    }
}

/// A sampled request, decided, waiting for its events.
struct Sampled {
    k: usize,
    id: u128,
    /// Edge time (ms).
    at: u64,
    delivered: Option<usize>,
    choice: Choice,
}

/// Chooses for a request of profile `k`, as the worker does (the colo's spread):
/// `(campaign that delivered, the choice)`. The choice is what the edge decided (and
/// reports); delivery may still fail (shortfall: reported as no ad; not shown: reported
/// only by the missing impression).
fn decide(slot: &mut Slot, k: usize, how: Serving<'_>, rng: &mut SmallRng) -> (Option<usize>, Choice) {
    // One isolate draws nothing, so its runs are those of the model without isolates.
    let isolate = if slot.spreads.len() > 1 { rng.random_range(0..slot.spreads.len()) } else { 0 };
    let attrs = slot.plan.resolve(attrs(&how.profiles[k]));
    let mut choice = slot.plan.choose_spread(attrs, &mut slot.spreads[isolate], || rng.random());
    if let Some(c) = choice.ad
        && uniform(rng) < slot.shortfall[c]
    {
        choice.ad = None;
    }
    let delivered = choice.ad.filter(|&c| !how.on_impressions || uniform(rng) < slot.shown[c][k]);
    (delivered, choice)
}
