//! One colo of the edge: the plans it has, the requests it decides, the events it sends.
//!
//! A colo decides with the plan *it* sees: a published plan reaches each colo after its
//! own delay (KV propagation, the edge cache's `cacheTtl`, the isolate's plan cache), so
//! during a change colos disagree. Its clock is off by a fixed skew, and events carry
//! that clock, as the worker stamps them.
//!
//! Decisions are core's, as in the worker: `CompiledPlan::choose` on the request's
//! attributes, `EdgeKey::sample` on the request id at the plan's rate,
//! `CompiledPlan::allocation_event`, and the impression token's grant for an impression.
//! Two ways to serve a second of a profile's requests, which the tests show agree:
//! - **per request**: each request gets a UUIDv4 (or a recent one, when its app
//!   retries) and goes through the sampler — the exact production path;
//! - **by counts**, for hundreds of thousands of requests per second: the sampler is a
//!   uniform hash of a random id, so the sampled requests of a profile are a Poisson
//!   count at `rate × requests`; each gets an id drawn until core's sampler takes it,
//!   and is decided one by one (choice, events); the unsampled ones are only counted,
//!   per outcome, from [`pick_probabilities`], the exact odds of core's pick.

use std::collections::BTreeMap;

use allot_core::choose::pick_probabilities;
use allot_core::token::{self, Issue, Subject};
use allot_core::{CampaignId, CompiledPlan, EdgeKey, Event, Plan, RequestAttrs, RequestId};
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
    pub sampled: u64,
}

impl Truth {
    fn deliver(&mut self, id: &CampaignId, n: u64) {
        if n > 0 {
            *self.delivered.entry(id.clone()).or_default() += n;
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

    /// The truth of window `index`, taken out.
    pub fn take(&mut self, index: u64) -> Truth {
        self.windows.remove(&index).unwrap_or_default()
    }

    /// Second `t` at a colo with clock `skew_ms`, as `(first edge ms, share of the
    /// second)` per window it spans: one part, or two when a window ends within it.
    fn second(&self, t: u64, skew_ms: i64) -> [(u64, f64); 2] {
        let start = (t * 1000).saturating_add_signed(skew_ms);
        let end = (start / self.period_ms + 1) * self.period_ms;
        let late = (start + 1000).saturating_sub(end).min(1000) as f64 / 1000.0;
        [(start, 1.0 - late), (end, late)]
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
}

impl Slot {
    fn new(plan: Plan, spec: &PlacementSpec, profiles: &[Profile]) -> Self {
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
        Self { plan, odds, shortfall, shown, pending: Vec::new() }
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
    pub fn new(name: String, skew_ms: i64, first: &[Plan], specs: &[PlacementSpec], profiles: &[Profile]) -> Self {
        let slots = first.iter().zip(specs).map(|(plan, spec)| Slot::new(plan.clone(), spec, profiles)).collect();
        Self { name, skew_ms, slots, outbox: Vec::new(), later: BTreeMap::new(), key: edge_key() }
    }

    pub fn plan(&self, placement: usize) -> &Plan {
        self.slots[placement].plan.plan()
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
            *slot = Slot { pending, ..Slot::new(plan, spec, profiles) };
        }
    }

    /// Serves one second `t` of placement `placement`: `rates[k]` requests per second of
    /// profile `k` arrive here (in expectation).
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
        let slot = &self.slots[placement];
        let second = truths.second(t, self.skew_ms);
        let rate = slot.plan.plan().sample_rate;
        let mut sampled = Vec::new();
        for (k, &m) in rates.iter().enumerate() {
            if m <= 0.0 {
                continue;
            }
            if how.per_request {
                for _ in 0..poisson(rng, m) {
                    let drawn = ids[k].draw(rng, |_| k);
                    let mut buf = [0; 36];
                    let id = format_uuid(drawn.id, &mut buf);
                    if self.key.sample().sampled(id, rate) {
                        sampled.push((k, drawn.id));
                    } else {
                        let (delivered, _) = decide(slot, k, how, rng);
                        let at = second[0].0 + rng.random_range(0..1000);
                        let truth = truths.at(at);
                        truth.requests += 1;
                        if let Some(c) = delivered {
                            truth.deliver(&slot.plan.plan().campaigns[c].id, 1);
                        }
                    }
                }
                continue;
            }
            // By counts: the unsampled requests per outcome (in each window the second
            // spans), then the sampled ones.
            let (_, q, _) = &slot.odds[k];
            for (at, part) in second.into_iter().filter(|(_, part)| *part > 0.0) {
                let unsampled = m * (1.0 - rate) * part;
                let truth = truths.at(at);
                let mut delivered_mass = 0.0;
                for (c, &qc) in q.iter().enumerate() {
                    if qc <= 0.0 {
                        continue;
                    }
                    let d = qc * (1.0 - slot.shortfall[c]) * if how.on_impressions { slot.shown[c][k] } else { 1.0 };
                    delivered_mass += d;
                    let n = poisson(rng, unsampled * d);
                    truth.requests += n;
                    truth.deliver(&slot.plan.plan().campaigns[c].id, n);
                }
                truth.requests += poisson(rng, unsampled * (1.0 - delivered_mass).max(0.0));
            }
            for _ in 0..poisson(rng, m * rate) {
                sampled.push((k, sampled_id(&self.key, rng, &mut ids[k], k, rate)));
            }
        }
        for (k, id) in sampled {
            self.serve_sampled(rng, placement, t, k, id, how, truths);
        }
    }

    /// A sampled request: decided, counted, and its events queued.
    #[allow(clippy::too_many_arguments)]
    fn serve_sampled(
        &mut self,
        rng: &mut SmallRng,
        placement: usize,
        t: u64,
        k: usize,
        id: u128,
        how: Serving<'_>,
        truths: &mut Truths,
    ) {
        let slot = &self.slots[placement];
        let (delivered, choice) = decide(slot, k, how, rng);
        let p = slot.plan.plan();
        let now_ms = (t * 1000 + rng.random_range(0..1000)).saturating_add_signed(self.skew_ms);
        let truth = truths.at(now_ms);
        truth.requests += 1;
        truth.sampled += 1;
        if let Some(c) = delivered {
            truth.deliver(&p.campaigns[c].id, 1);
        }
        let mut buf = [0; 36];
        let request_id = RequestId::parse(format_uuid(id, &mut buf)).expect("request ids are UUIDs");
        let profile = &how.profiles[k];
        // An app that reports no impressions says so (`impressions=none`), as the SDK does.
        let unreported = !profile.reports_impressions;
        let colo = Some(self.name.clone());
        let event = slot.plan.allocation_event(request_id.clone(), choice, attrs(profile), now_ms, colo, unreported);
        self.outbox.push(event);
        // The app reports the ad it showed, later, with the ad's token; the edge verifies
        // it and sends the grant's impression (sampled exactly when its allocation was).
        let (Some(c), true, true) = (delivered, how.on_impressions, profile.reports_impressions) else { return };
        let subject = Subject { request_id: &request_id, placement: &p.placement, ad: &p.campaigns[c].id };
        let issue = Issue { plan_version: p.version, sample_rate: p.sample_rate, issued_at_ms: now_ms };
        let t_token = token::issue(&self.key, subject, issue);
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

/// The id of a sampled request of profile `k`: ids drawn as apps send them until core's
/// sampler takes one at `rate` (about `1/rate` draws), so every event's id is one the
/// edge would really have sampled.
fn sampled_id(key: &EdgeKey, rng: &mut SmallRng, ids: &mut RequestIds, k: usize, rate: f64) -> u128 {
    let mut buf = [0; 36];
    loop {
        let drawn = ids.draw(rng, |_| k);
        if key.sample().sampled(format_uuid(drawn.id, &mut buf), rate) {
            return drawn.id;
        }
    }
}

/// Chooses for a request of profile `k`: `(campaign that delivered, the choice)`.
/// The choice is what the edge decided (and reports); delivery may still fail
/// (shortfall: reported as no ad; not shown: reported only by the missing impression).
fn decide(slot: &Slot, k: usize, how: Serving<'_>, rng: &mut SmallRng) -> (Option<usize>, allot_core::Choice) {
    let mut choice = slot.plan.choose(attrs(&how.profiles[k]), uniform(rng));
    if let Some(c) = choice.ad
        && uniform(rng) < slot.shortfall[c]
    {
        choice.ad = None;
    }
    let delivered = choice.ad.filter(|&c| !how.on_impressions || uniform(rng) < slot.shown[c][k]);
    (delivered, choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_is_split_where_the_colos_clock_ends_a_window() {
        let truths = Truths::new(60_000);
        // No skew: the seconds of a 60 s window stay in it.
        assert_eq!(truths.second(59, 0), [(59_000, 1.0), (60_000, 0.0)]);
        // 300 ms ahead: the last 300 ms of true second 59 are the next window's.
        let [(a, x), (b, y)] = truths.second(59, 300);
        assert_eq!((a, b), (59_300, 60_000));
        assert!((x - 0.7).abs() < 1e-12 && (y - 0.3).abs() < 1e-12);
        // 300 ms behind: the first 700 ms of true second 60 are still the window before.
        let [(a, x), (b, y)] = truths.second(60, -300);
        assert_eq!((a, b), (59_700, 60_000));
        assert!((x - 0.3).abs() < 1e-12 && (y - 0.7).abs() < 1e-12);
    }
}
