//! `POST /v1/placements/{id}/preview`: what new targets would get, before saving them.
//!
//! A dry run of the next round: the same evidence ([`Inputs`]) and the same core call
//! (`Policy::run`) as the control loop, with the proposed targets instead of the stored
//! ones; nothing is written and nothing is published. The answer says, per campaign, the
//! share the model predicts and whether the target is feasible (and if not, the best
//! achievable share), and, for the placement, the sample rate the proposed confidence
//! needs on the traffic seen and whether it can be reached at all: a placement whose
//! windows hold fewer requests than the confidence needs samples is **unattainable**
//! even if every request is sampled.

use std::sync::Arc;

use allot_core::{Feasibility, SampleRatePlanner};
use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::admin::{PlacementPath, Spec};
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::inputs::{Inputs, policy};
use crate::startup::App;
use crate::status::WindowSummary;

/// One campaign under the proposed targets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewCampaign {
    pub id: String,
    pub target: f64,
    /// The weight the controller would give it.
    pub weight: f64,
    /// The share the model predicts for that weight on the recent traffic.
    pub predicted_share: f64,
    /// The share of requests it is eligible for.
    pub eligible_share: f64,
    pub feasible: bool,
    /// The most it can get, when the target cannot be met (what the solver delivers).
    pub max_share: Option<f64>,
    /// The target can be met alone but not together with `shared_with`: those
    /// campaigns together ask for more than the traffic eligible for any of them.
    pub joint: bool,
    pub shared_with: Vec<String>,
}

/// What the proposed targets would get.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub placement: String,
    /// The last complete window (the traffic the rate is planned for).
    pub window: WindowSummary,
    /// Complete windows merged for the traffic mix.
    pub recent_windows: u64,
    /// Every target can be met together.
    pub feasible: bool,
    pub campaigns: Vec<PreviewCampaign>,
    /// Sampled requests a window needs for the proposed confidence.
    pub required_samples: f64,
    /// The sample rate the next plan would use.
    pub sample_rate: f64,
    /// Whether a window's traffic can give the proposed confidence at all (sampling
    /// every request); `null` with no traffic measured yet.
    pub attainable: Option<bool>,
}

#[utoipa::path(
    post, path = "/v1/placements/{id}/preview", tag = "admin",
    params(("id" = allot_core::PlacementId, Path, description = "Placement id")),
    request_body = allot_core::TargetsSpec,
    responses((status = 200, body = Preview), (status = 400), (status = 401), (status = 413), (status = 422)),
    security(("bearer" = []))
)]
pub async fn preview(
    State(app): State<Arc<App>>,
    _: Viewer,
    PlacementPath(id): PlacementPath,
    Spec(targets): Spec,
) -> Result<Json<Preview>, ApiError> {
    let cfg = &app.config.control;
    let now = crate::now_ms();
    let inputs = Inputs::read(&app, &id, now).await?;
    // A round's solving is CPU work (up to ~10 ms at 64 campaigns), and a preview is
    // asked for by people: one at a time, off the async workers, as the control loop's
    // own rounds, so a viewer's burst of previews waits for one core and never holds up
    // ingest. The wait is asynchronous, so the request timeout still ends it.
    let Ok(_turn) = app.previews.acquire().await else {
        return Err(ApiError::Internal("the preview turn is closed".into()));
    };
    let outcome =
        crate::control::off_the_async_workers(|| policy(cfg).run(inputs.round(&id, &targets, true, now, cfg)));
    let campaigns: Vec<PreviewCampaign> = outcome
        .decision
        .campaigns
        .iter()
        .map(|c| PreviewCampaign {
            id: c.id.to_string(),
            target: c.target,
            weight: c.weight,
            predicted_share: c.predicted_share,
            eligible_share: c.eligible_share,
            feasible: c.feasibility == Feasibility::Feasible,
            max_share: match c.feasibility {
                Feasibility::Infeasible { max_share } => Some(max_share),
                Feasibility::Feasible => None,
            },
            joint: c.jointly_infeasible(),
            shared_with: c.shared_with.iter().map(|x| x.to_string()).collect(),
        })
        .collect();
    let required = SampleRatePlanner::required_samples(&targets);
    Ok(Json(Preview {
        placement: id.to_string(),
        window: WindowSummary::of(
            cfg.period_ms,
            &inputs.evidence,
            inputs.state.stragglers.allowance(&inputs.evidence, targets.confidence.level),
        ),
        recent_windows: cfg.recent_windows,
        feasible: campaigns.iter().all(|c| c.feasible),
        campaigns,
        required_samples: required,
        sample_rate: outcome.publish.map_or(1.0, |p| p.plan.sample_rate),
        attainable: inputs.attainable(&targets),
    }))
}
