//! `GET /v1/placements/{id}/status`: what the manager asked for, what the controller
//! did about it, and what was measured.
//!
//! Targets and weights come from the stored decision of the plan in force; the measured
//! share and its confidence interval from core's `estimate::share` on the last complete
//! window, at the placement's own confidence level.

use std::collections::BTreeMap;
use std::sync::Arc;

use allot_core::estimate::{self, DeliveryBasis};
use allot_core::{Decision, Evidence, Feasibility, Targets, WindowStats};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::admin::PlacementPath;
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::inputs::Inputs;
use crate::startup::App;

/// A measured share with its interval: an interval for the share realized among the
/// window's requests (it narrows as the sample rate rises, and at census it is the
/// share itself), which is what the manager's margin is about.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Estimate {
    pub share: f64,
    pub low: f64,
    pub high: f64,
    /// The interval's confidence level.
    pub level: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignStatus {
    pub id: String,
    pub target: f64,
    /// Weight in the plan in force (`null` before the first plan with this campaign).
    pub weight: Option<f64>,
    pub predicted_share: Option<f64>,
    pub eligible_share: Option<f64>,
    pub estimate: Estimate,
    /// What the estimate counts: `allocations` or `impressions` (per campaign, see
    /// `DeliveryBasis::of`).
    #[schema(value_type = String)]
    pub basis: DeliveryBasis,
    /// Sampled deliveries behind the estimate.
    pub samples: u64,
    /// `{"status": "feasible"}` or `{"status": "infeasible", "max_share": …, "joint": …,
    /// "shared_with": [...]}`: `max_share` is what the solver delivers; `joint` is true
    /// when the target is feasible alone but not together with the campaigns in
    /// `shared_with`, which together ask for more than the traffic eligible for any
    /// of them.
    #[schema(value_type = Object)]
    pub feasibility: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowSummary {
    pub index: u64,
    pub start_ms: u64,
    pub length_ms: u64,
    /// Estimated requests in the window (Horvitz–Thompson).
    pub requests: f64,
    /// Sampled requests.
    pub samples: u64,
    pub effective_samples: f64,
    /// The share of the window's requests allowed for as still to come when it was
    /// read, at the placement's confidence level: the rounds learn over many windows how
    /// often one lacks a late body and how large (`Stragglers::allowance`), less the
    /// window's own late ones already in. The campaigns' intervals allow for them. 0 in
    /// records kept before it was measured.
    #[serde(default)]
    pub stragglers: f64,
    /// The same for the impressions of each campaign measured on them, where it is not
    /// 0: the share the windows before say were still to come when the window was read
    /// for impressions (an app reported them later). The campaign's interval reaches up
    /// to allow for them; its share is as counted. Empty in records kept before it was
    /// measured.
    #[serde(default)]
    pub impressions_to_come: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlacementStatus {
    pub placement: String,
    pub plan_version: Option<u64>,
    pub sample_rate: Option<f64>,
    pub no_ad_weight: Option<f64>,
    pub last_publish_ms: Option<u64>,
    /// The targets revision the plan in force was made from.
    pub plan_targets_etag: Option<String>,
    pub targets_etag: String,
    /// The last complete window.
    pub window: WindowSummary,
    /// Whether that window's traffic can give the confidence at all, sampling every
    /// request; `null` with nothing measured.
    pub attainable: Option<bool>,
    /// The placement at a glance.
    pub health: Health,
    pub campaigns: Vec<CampaignStatus>,
}

/// A placement at a glance, worst first: what the console's list shows and an operator
/// would page on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Nothing was measured in the last window.
    NoTraffic,
    /// The window's traffic cannot give the confidence even sampling every request.
    Unattainable,
    /// Some target cannot be met together with the others (`feasibility.max_share`).
    Infeasible,
    /// Measured and feasible, some estimate still outside the margin of its target.
    Converging,
    /// Every campaign's estimate within the margin of its target.
    OnTarget,
}

impl Health {
    pub fn of(campaigns: &[CampaignStatus], margin: f64, attainable: Option<bool>) -> Self {
        match attainable {
            None => return Self::NoTraffic,
            Some(false) => return Self::Unattainable,
            Some(true) => {}
        }
        if campaigns.iter().any(|c| c.feasibility["status"] == "infeasible") {
            Self::Infeasible
        } else if campaigns.iter().all(|c| (c.estimate.share - c.target).abs() <= margin) {
            Self::OnTarget
        } else {
            Self::Converging
        }
    }
}

impl WindowSummary {
    /// The newest window `evidence` looks at, with what it still lacks: `stragglers`,
    /// the share of its requests allowed for
    /// ([`allot_core::stragglers::Stragglers::allowance`]).
    pub fn of(period_ms: u64, evidence: &Evidence, stragglers: f64) -> Self {
        let index = evidence.last_index.unwrap_or(0);
        let empty = WindowStats::default();
        let w = evidence.windows.first().unwrap_or(&empty);
        Self {
            stragglers,
            impressions_to_come: w
                .campaigns
                .keys()
                .filter(|c| DeliveryBasis::of(w, c) == DeliveryBasis::Impressions)
                .map(|c| (c.to_string(), evidence.impressions_to_come(c)))
                .filter(|(_, missing)| *missing > 0.0)
                .collect(),
            index,
            start_ms: index * period_ms,
            length_ms: period_ms,
            requests: w.requests.ht,
            samples: w.requests.n,
            effective_samples: w.effective_samples(),
        }
    }
}

/// Each campaign's target, measured share (with its interval, at the placement's
/// confidence level, allowing for the share `stragglers` of its requests still to come)
/// in the newest window of `evidence`, and what `decision` made of it.
pub fn campaigns(
    targets: &Targets,
    evidence: &Evidence,
    stragglers: f64,
    decision: Option<&Decision>,
) -> Vec<CampaignStatus> {
    let z = targets.confidence.z();
    let reading = evidence.last_reading(stragglers);
    targets
        .campaigns
        .iter()
        .map(|c| {
            let d = decision.and_then(|d| d.campaigns.iter().find(|x| x.id == c.id));
            let (basis, e) = estimate::published(&reading, &c.id, evidence.impressions_to_come(&c.id), z);
            CampaignStatus {
                id: c.id.to_string(),
                target: c.rate.get(),
                weight: d.map(|d| d.weight),
                predicted_share: d.map(|d| d.predicted_share),
                eligible_share: d.map(|d| d.eligible_share),
                estimate: Estimate { share: e.share, low: e.low, high: e.high, level: targets.confidence.level },
                basis,
                samples: e.samples,
                feasibility: d.map(feasibility).unwrap_or_default(),
            }
        })
        .collect()
}

/// A decision's feasibility as the API shows it (see [`CampaignStatus::feasibility`]).
fn feasibility(d: &allot_core::controller::CampaignDecision) -> serde_json::Value {
    let mut v = serde_json::to_value(d.feasibility).unwrap_or_default();
    if let (Some(o), Feasibility::Infeasible { .. }) = (v.as_object_mut(), d.feasibility) {
        o.insert("joint".into(), d.jointly_infeasible().into());
        o.insert("shared_with".into(), d.shared_with.iter().map(|c| c.as_str()).collect::<Vec<_>>().into());
    }
    v
}

#[utoipa::path(
    get, path = "/v1/placements/{id}/status", tag = "admin",
    params(("id" = allot_core::PlacementId, Path, description = "Placement id")),
    responses((status = 200, body = PlacementStatus), (status = 401), (status = 404), (status = 422)),
    security(("bearer" = []))
)]
pub async fn get_status(
    State(app): State<Arc<App>>,
    _: Viewer,
    PlacementPath(id): PlacementPath,
) -> Result<Json<PlacementStatus>, ApiError> {
    let record = app.store.targets(&id).await?.filter(|r| r.spec.is_some());
    let Some(record) = record else { return Err(ApiError::NotFound(format!("placement {id}"))) };
    let spec = record.spec.clone().ok_or_else(|| ApiError::NotFound(format!("placement {id}")))?;
    let targets = Targets::parse(spec).map_err(|e| ApiError::Internal(format!("stored targets of {id}: {e}")))?;

    let period = app.config.control.period_ms;
    // The window a round would look at now: the last complete one, for impressions too.
    // The rounds' state tells how many of its requests may still be on their way.
    let Inputs { evidence, previous: plan, state } = Inputs::read(&app, &id, crate::now_ms()).await?;
    let stragglers = state.stragglers.allowance(&evidence, targets.confidence.level);
    let window = WindowSummary::of(period, &evidence, stragglers);
    let decision = plan.as_ref().and_then(|p| p.decision.as_ref());
    let campaigns = campaigns(&targets, &evidence, stragglers, decision);
    let last = evidence.windows.into_iter().next().unwrap_or_default();
    let attainable = crate::inputs::attainable(&last, &targets);
    let health = Health::of(&campaigns, targets.confidence.margin, attainable);
    Ok(Json(PlacementStatus {
        placement: id.to_string(),
        plan_version: plan.as_ref().map(|p| p.plan.version),
        sample_rate: plan.as_ref().map(|p| p.plan.sample_rate),
        no_ad_weight: plan.as_ref().map(|p| p.plan.no_ad_weight),
        last_publish_ms: plan.as_ref().map(|p| p.published_at_ms),
        plan_targets_etag: plan.as_ref().map(|p| crate::store::etag(p.targets_rev)),
        targets_etag: record.etag(),
        window,
        attainable,
        health,
        campaigns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(target: f64, share: f64, feasibility: serde_json::Value) -> CampaignStatus {
        CampaignStatus {
            id: "A".into(),
            target,
            weight: None,
            predicted_share: None,
            eligible_share: None,
            estimate: Estimate { share, low: share - 0.01, high: share + 0.01, level: 0.95 },
            basis: DeliveryBasis::Allocations,
            samples: 100,
            feasibility,
        }
    }

    #[test]
    fn health_is_the_worst_that_applies() {
        let feasible = serde_json::json!({"status": "feasible"});
        let infeasible = serde_json::json!({"status": "infeasible", "max_share": 0.2});
        let on = [campaign(0.5, 0.505, feasible.clone())];
        assert_eq!(Health::of(&on, 0.01, None), Health::NoTraffic);
        assert_eq!(Health::of(&on, 0.01, Some(false)), Health::Unattainable);
        assert_eq!(Health::of(&on, 0.01, Some(true)), Health::OnTarget);
        assert_eq!(Health::of(&[campaign(0.5, 0.47, feasible.clone())], 0.01, Some(true)), Health::Converging);
        let mixed = [campaign(0.5, 0.5, feasible), campaign(0.4, 0.2, infeasible)];
        assert_eq!(Health::of(&mixed, 0.01, Some(true)), Health::Infeasible);
        assert_eq!(serde_json::to_value(Health::OnTarget).unwrap(), "on_target");
    }
}
