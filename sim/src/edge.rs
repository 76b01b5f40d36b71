//! The edge's side: the plan in force, and per request what the worker does with it.
//!
//! Like `worker/src/ad.rs`: choose with `CompiledPlan::choose`, decide sampling with
//! core's `sampled` on the request id at the plan's rate, and build the sampled
//! request's event with `CompiledPlan::allocation_event`. Like
//! `worker/src/impression.rs`: an app's impression report is sampled by the same rule
//! and sent as an impression event. Events wait in an outbox and leave as event bodies
//! (`EventBatch::to_json`, at most `MAX_BATCH` events each), as the worker's forwarder
//! sends them.

use allot_core::event::MAX_BATCH;
use allot_core::{CampaignId, CompiledPlan, Event, EventBatch, EventKind, Plan, RequestAttrs, RequestId, sampled};
use rand::Rng;
use rand::rngs::SmallRng;

use crate::scenario::Scenario;

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The allocated campaign, as an index into the run's campaign list.
    pub allocated: Option<usize>,
    /// The campaign whose ad the app actually showed.
    pub shown: Option<usize>,
    pub sampled: bool,
}

/// One edge: every colo sees the same plan after the same propagation delay.
#[derive(Debug)]
pub struct Edge {
    plan: CompiledPlan,
    /// Per plan campaign: its index in the run's campaign list, and how often its ad
    /// fails to render.
    slot: Vec<usize>,
    fail: Vec<f64>,
    outbox: Vec<Event>,
}

impl Edge {
    pub fn new(plan: Plan, scenario: &Scenario, campaigns: &[CampaignId]) -> Self {
        let (slot, fail) = slots(&plan, scenario, campaigns);
        Self { plan: CompiledPlan::new(plan).expect("published plans are valid"), slot, fail, outbox: Vec::new() }
    }

    pub fn plan(&self) -> &Plan {
        self.plan.plan()
    }

    /// Replaces the plan in force, as the worker's plan cache does with a newer one.
    pub fn install(&mut self, plan: Plan, scenario: &Scenario, campaigns: &[CampaignId]) {
        let outbox = std::mem::take(&mut self.outbox);
        *self = Self { outbox, ..Self::new(plan, scenario, campaigns) };
    }

    /// Serves one request: choose, render (the app's side), and queue the events of a
    /// sampled request. `impressions`: whether the app reports what it showed.
    pub fn serve(
        &mut self,
        rng: &mut SmallRng,
        request_id: &str,
        attrs: RequestAttrs<'_>,
        now_ms: u64,
        impressions: bool,
    ) -> Served {
        let choice = self.plan.choose(attrs, rng.random::<f64>());
        let shown = choice.ad.filter(|&i| rng.random::<f64>() >= self.fail[i]);
        let rate = self.plan.plan().sample_rate;
        let is_sampled = sampled(request_id, rate);
        if is_sampled {
            let id = RequestId::parse(request_id).expect("request ids are UUIDs");
            self.outbox.push(self.plan.allocation_event(id.clone(), choice, attrs, now_ms, None));
            if let (true, Some(i)) = (impressions, shown)
                && sampled(id.as_str(), rate)
            {
                self.outbox.push(self.impression_event(id, i, attrs, now_ms));
            }
        }
        Served { allocated: choice.ad.map(|i| self.slot[i]), shown: shown.map(|i| self.slot[i]), sampled: is_sampled }
    }

    /// The event the worker's impression handler sends for an ad of this plan.
    fn impression_event(&self, request_id: RequestId, ad: usize, attrs: RequestAttrs<'_>, now_ms: u64) -> Event {
        let p = self.plan.plan();
        Event {
            kind: EventKind::Impression,
            event_time_ms: now_ms,
            request_id,
            placement: p.placement.clone(),
            ad_id: Some(p.campaigns[ad].id.clone()),
            plan_version: p.version,
            sample_rate: p.sample_rate,
            eligible: Vec::new(),
            platform: None,
            // The impression call carries no attributes; the edge adds its geolocation.
            country: attrs.country.map(str::to_ascii_uppercase),
            colo: None,
        }
    }

    /// Sends what waits in the outbox: event bodies of at most `MAX_BATCH` events, in
    /// order, with their event counts.
    pub fn flush(&mut self) -> Vec<(usize, String)> {
        let mut bodies = Vec::with_capacity(self.outbox.len().div_ceil(MAX_BATCH));
        while !self.outbox.is_empty() {
            let events: Vec<Event> = self.outbox.drain(..self.outbox.len().min(MAX_BATCH)).collect();
            bodies.push((events.len(), EventBatch { events }.to_json()));
        }
        bodies
    }
}

/// Per plan campaign: its index in the run's campaign list, and its render failure rate.
fn slots(plan: &Plan, scenario: &Scenario, campaigns: &[CampaignId]) -> (Vec<usize>, Vec<f64>) {
    let slot = plan.campaigns.iter().map(|c| campaigns.iter().position(|i| i == &c.id).unwrap_or(0)).collect();
    let fail = plan
        .campaigns
        .iter()
        .map(|c| scenario.render_failure.iter().find(|(id, _)| id == &c.id).map_or(0.0, |(_, f)| *f))
        .collect();
    (slot, fail)
}
