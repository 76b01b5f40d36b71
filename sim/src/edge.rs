//! The edge's side: the plan in force, and per request what the worker does with it.
//!
//! Like `worker/src/ad.rs`: choose with `CompiledPlan::choose`, decide sampling with
//! the edge key's keyed sampler on the request id at the plan's rate, build the sampled
//! request's event with `CompiledPlan::allocation_event`, and issue the ad's impression
//! token. Like `worker/src/impression.rs`: an app's impression report is verified
//! against its token, sampled exactly when its allocation was, and sent as the grant's
//! impression event. Events wait in an outbox and leave as event bodies
//! (`EventBatch::to_json`, at most `MAX_BATCH` events each), as the worker's forwarder
//! sends them.

use allot_core::event::MAX_BATCH;
use allot_core::token::{self, Issue, Subject};
use allot_core::{CampaignId, CompiledPlan, EdgeKey, Event, EventBatch, Plan, RequestAttrs, RequestId};
use rand::Rng;
use rand::rngs::SmallRng;

use crate::scenario::Scenario;

/// The simulated edges' secret.
pub const EDGE_SECRET: &[u8] = b"allot-sim-edge-secret";

/// The simulated edges' key (what the worker derives from its `EDGE_KEY`).
pub fn edge_key() -> EdgeKey {
    EdgeKey::new(EDGE_SECRET).expect("the simulator's secret is long enough")
}

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
    key: EdgeKey,
}

impl Edge {
    pub fn new(plan: Plan, scenario: &Scenario, campaigns: &[CampaignId]) -> Self {
        let (slot, fail) = slots(&plan, scenario, campaigns);
        Self {
            plan: CompiledPlan::new(plan).expect("published plans are valid"),
            slot,
            fail,
            outbox: Vec::new(),
            key: edge_key(),
        }
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
        let p = self.plan.plan();
        let rate = p.sample_rate;
        let id = RequestId::parse(request_id).expect("request ids are UUIDs");
        let is_sampled = self.key.sample().sampled(request_id, rate);
        if is_sampled {
            self.outbox.push(self.plan.allocation_event(id.clone(), choice, attrs, now_ms, None));
        }
        // The ad's token, and the app's report of it: verified, sampled exactly when its
        // allocation was (so only sampled requests need the work here).
        if let (true, true, Some(i)) = (is_sampled, impressions, shown) {
            let subject = Subject { request_id: &id, placement: &p.placement, ad: &p.campaigns[i].id };
            let issue = Issue { plan_version: p.version, sample_rate: rate, issued_at_ms: now_ms };
            let t = token::issue(&self.key, subject, issue);
            let grant = token::verify(std::slice::from_ref(&self.key), &t, subject, now_ms).expect("its own token");
            debug_assert!(grant.sampled, "the token decides as the allocation did");
            if grant.sampled {
                // The impression call carries no attributes; the edge adds its geolocation.
                let country = attrs.country.map(str::to_ascii_uppercase);
                self.outbox.push(grant.impression_event(subject, country, None));
            }
        }
        Served { allocated: choice.ad.map(|i| self.slot[i]), shown: shown.map(|i| self.slot[i]), sampled: is_sampled }
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
