//! Events as the edge sends them, and event-stream entries as the origin's ingest
//! appends them, for tests that feed the origin or the archiver directly.
//!
//! Entries are built with the contract's [`stream::event_entry`], so a test writes
//! exactly what the ingest writes and follows any change to the entry's fields.

use std::time::{SystemTime, UNIX_EPOCH};

use allot_core::contract::keys::{self, PlacementKeys};
use allot_core::contract::stream;
use allot_core::{
    CampaignId, Eligibility, Event, EventBatch, EventKind, PLAN_FORMAT, PlacementId, Plan, PlanCampaign, RequestId,
};

/// Now, in UTC milliseconds (the edge's and the origin's clock in tests).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An event of an iOS request from Germany served in Frankfurt; the arguments are what
/// tests vary. Ids must parse (tests use valid ones).
#[allow(clippy::too_many_arguments)]
pub fn event(
    kind: EventKind,
    request: &str,
    placement: &str,
    time_ms: u64,
    ad: Option<&str>,
    eligible: &[&str],
    plan_version: u64,
    sample_rate: f64,
) -> Event {
    Event {
        kind,
        event_time_ms: time_ms,
        request_id: RequestId::parse(request).expect("a valid request id"),
        placement: PlacementId::parse(placement).expect("a valid placement id"),
        ad_id: ad.map(campaign),
        plan_version,
        sample_rate,
        eligible: eligible.iter().copied().map(campaign).collect(),
        platform: Some("ios".into()),
        country: Some("DE".into()),
        colo: Some("FRA".into()),
        unreported: false,
    }
}

/// An allocation decided now under plan version 1 and sampled at `rate`.
pub fn allocation(request: &str, placement: &str, ad: Option<&str>, eligible: &[&str], rate: f64) -> Event {
    event(EventKind::Allocation, request, placement, now_ms(), ad, eligible, 1, rate)
}

pub fn campaign(id: &str) -> CampaignId {
    CampaignId::parse(id).expect("a valid campaign id")
}

/// A request body for `POST /v1/events`.
pub fn batch(events: Vec<Event>) -> String {
    EventBatch { events }.to_json()
}

/// The `XADD` the ingest runs for `batch` (one placement, that of its first event),
/// received at `received_ms`; run it, or add it to a pipeline.
pub fn xadd_cmd(batch: &EventBatch, received_ms: u64) -> redis::Cmd {
    let placement = batch.events.first().map_or("", |e| e.placement.as_str());
    let (json, received) = (batch.to_json(), received_ms.to_string());
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream::EVENTS).arg("*");
    for (field, value) in stream::event_entry(placement, json.as_bytes(), &received) {
        cmd.arg(field).arg(value);
    }
    cmd
}

/// Appends `batch` to the event stream as the ingest does; the entry's id.
pub fn xadd(conn: &mut redis::Connection, batch: &EventBatch, received_ms: u64) -> String {
    xadd_cmd(batch, received_ms).query(conn).expect("XADD to the event stream")
}

/// A plan of `placement` at `version` and `sample_rate` with `campaigns` (equal weights).
pub fn plan(placement: &str, version: u64, sample_rate: f64, campaigns: &[&str]) -> Plan {
    Plan {
        format: PLAN_FORMAT,
        placement: PlacementId::parse(placement).expect("a valid placement id"),
        version,
        issued_at_ms: now_ms(),
        sample_rate,
        no_ad_weight: 1.0,
        campaigns: campaigns
            .iter()
            .map(|c| PlanCampaign {
                id: campaign(c),
                weight: 1.0,
                creative: serde_json::json!({}),
                eligibility: Eligibility::default(),
            })
            .collect(),
        withdrawn: false,
        platforms: None,
    }
}

/// Leaves in Redis what the origin's admin API and control loop leave for a published
/// `plan`: the placement registered and the plan at the head of its history. The ingest
/// counts events only under published plans, so tests that feed it without running the
/// control loop publish this way first.
pub fn record_published(conn: &mut redis::Connection, plan: &Plan) {
    redis::pipe()
        .cmd("HINCRBY")
        .arg(keys::REGISTRY)
        .arg(plan.placement.as_str())
        .arg(1)
        .ignore()
        .cmd("LPUSH")
        .arg(PlacementKeys::new(&plan.placement).plans())
        .arg(plan.to_json())
        .ignore()
        .query::<()>(conn)
        .expect("record a published plan");
}

/// The newest plan the origin published for `placement`, if any.
pub fn newest_published(conn: &mut redis::Connection, placement: &str) -> Option<Plan> {
    let json: Option<String> =
        redis::cmd("LINDEX").arg(PlacementKeys::of_raw(placement).plans()).arg(0).query(conn).expect("LINDEX");
    json.map(|j| Plan::parse(j.as_bytes()).expect("a stored plan parses"))
}

/// `event` as decided under `plan`: its version and sample rate.
pub fn under(plan: &Plan, mut event: Event) -> Event {
    event.plan_version = plan.version;
    event.sample_rate = plan.sample_rate;
    event
}
