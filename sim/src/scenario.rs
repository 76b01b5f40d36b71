//! What a scenario is made of: placements with their targets and traffic, the edges,
//! how events travel, what changes and what fails. The scenarios themselves are in
//! [`crate::scenarios`].

use allot_core::{CampaignId, PlacementId, Targets, TargetsSpec};
use serde_json::json;

use crate::traffic::{Profile, Traffic};

/// One placement of a scenario.
#[derive(Debug, Clone)]
pub struct PlacementSpec {
    pub id: PlacementId,
    pub targets: Targets,
    pub traffic: Traffic,
    /// Probability that an allocated ad of a campaign (`None`: every campaign) is not
    /// shown on a platform.
    pub render_failure: Vec<(Option<CampaignId>, &'static str, f64)>,
    /// Share of a campaign's picks that end with no ad for a reason the model does not
    /// know (the edge reports what it served, so feedback can see it).
    pub shortfall: Vec<(CampaignId, f64)>,
}

impl PlacementSpec {
    /// The probability that an allocated ad of `campaign` is shown on `platform`.
    pub fn shown(&self, campaign: &CampaignId, platform: &str) -> f64 {
        let fail = self
            .render_failure
            .iter()
            .filter(|(c, p, _)| c.as_ref().is_none_or(|c| c == campaign) && *p == platform)
            .map(|(_, _, f)| *f)
            .fold(0.0, f64::max);
        1.0 - fail
    }
}

/// Something a manager (or the world) does at a moment: new targets for a placement,
/// or only a marker for a traffic event, so re-convergence is measured from it.
#[derive(Debug, Clone)]
pub struct Change {
    pub at_s: u64,
    pub placement: usize,
    pub targets: Option<Targets>,
    pub what: String,
}

/// The edges: colos with their own view of the plan and their own clocks.
#[derive(Debug, Clone)]
pub struct Edges {
    /// Share of traffic per colo (any scale).
    pub colos: Vec<f64>,
    /// KV propagation after a write: log-normal, median and 99th percentile (s).
    pub propagation_median_s: f64,
    pub propagation_p99_s: f64,
    /// The edge cache's `cacheTtl`: a colo's read may be up to this old (s).
    pub cache_ttl_s: f64,
    /// The worker's isolate plan cache (`PLAN_TTL_SECS`).
    pub isolate_ttl_s: f64,
    /// Standard deviation of a colo's clock offset (ms).
    pub clock_skew_ms: f64,
    /// A colo that installs no new plan during `[from, until)`.
    pub stale: Option<(usize, u64, u64)>,
}

impl Default for Edges {
    fn default() -> Self {
        Self {
            colos: vec![1.0; 10],
            propagation_median_s: 10.0,
            propagation_p99_s: 90.0,
            cache_ttl_s: 60.0,
            isolate_ttl_s: 10.0,
            clock_skew_ms: 500.0,
            stale: None,
        }
    }
}

/// How events travel from the edges to the origin, and what fails on the way.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Edge → origin latency of a body: log-normal, median and 99th percentile (s).
    pub latency_median_s: f64,
    pub latency_p99_s: f64,
    /// When apps report an impression after the ad was served (s).
    pub impression_median_s: f64,
    pub impression_p99_s: f64,
    /// `(colo, from, until, share)`: bodies of a colo lost on the way.
    pub loss: Vec<(usize, u64, u64, f64)>,
    /// Share of bodies delivered twice (a retry whose first answer was lost).
    pub duplicate: f64,
    /// The origin refuses every connection during `[from, until)`: no ingest, no rounds.
    pub origin_outage: Option<(u64, u64)>,
    /// `(from, until, lag)`: the aggregator applies entries `lag` seconds late.
    pub aggregator_lag: Option<(u64, u64, u64)>,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            latency_median_s: 1.0,
            latency_p99_s: 8.0,
            impression_median_s: 3.0,
            impression_p99_s: 60.0,
            loss: Vec::new(),
            duplicate: 0.0,
            origin_outage: None,
            aggregator_lag: None,
        }
    }
}

/// A fault's span, for its figures.
#[derive(Debug, Clone)]
pub struct Fault {
    pub what: String,
    pub from_s: u64,
    pub until_s: u64,
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub key: &'static str,
    pub title: String,
    pub duration_s: u64,
    pub period_s: u64,
    pub profiles: Vec<Profile>,
    pub placements: Vec<PlacementSpec>,
    pub changes: Vec<Change>,
    pub edges: Edges,
    pub delivery: Delivery,
    pub faults: Vec<Fault>,
    /// Share of requests that reuse a recent request's id (apps retry).
    pub reuse: f64,
}

impl Scenario {
    /// Whether the placement's delivery is counted on impressions (some apps report them).
    pub fn counts_impressions(&self) -> bool {
        self.profiles.iter().any(|p| p.reports_impressions)
    }
}

/// Targets from a JSON list of campaigns, at ±1 pp and 95 %.
pub fn targets(campaigns: serde_json::Value) -> Targets {
    let spec: TargetsSpec = serde_json::from_value(json!({
        "campaigns": campaigns,
        "confidence": {"margin": 0.01, "level": 0.95},
    }))
    .expect("scenario targets are well-formed");
    Targets::parse(spec).expect("scenario targets are valid")
}

pub fn campaign(id: &str) -> CampaignId {
    CampaignId::parse(id).expect("valid campaign id")
}

pub fn placement(id: &str) -> PlacementId {
    PlacementId::parse(id).expect("valid placement id")
}

/// Every platform × country (and app kind) with independent shares.
pub fn mix(
    platforms: &[(&'static str, f64)],
    countries: &[(&'static str, f64)],
    reporting: &[(bool, f64)],
) -> (Vec<Profile>, Vec<f64>) {
    let mut profiles = Vec::new();
    let mut weights = Vec::new();
    for &(platform, p) in platforms {
        for &(country, c) in countries {
            for &(reports_impressions, r) in reporting {
                profiles.push(Profile { platform, country, reports_impressions });
                weights.push(p * c * r);
            }
        }
    }
    (profiles, weights)
}
