//! A placement's delivery over time: one record per complete window, with each
//! campaign's target, measured share and interval, and what the controller made of it.
//!
//! Window counts expire after a few periods (they feed the controller, not the
//! reports), so the round that first sees a complete window writes its summary to
//! `allot:{p}:windows`, a stream whose entry id is the window's start (`<start_ms>-1`):
//! a later round of the same window (a dirty round, a new leader) is refused by Redis
//! as a duplicate id, so each window is recorded once, and ids are the paging cursor.
//! The stream keeps `control.history_windows` entries (a day of one-minute windows by
//! default). `GET /v1/placements/{id}/history` reads it newest first.

use std::sync::Arc;

use allot_core::PlacementId;
use allot_core::contract::keys::PlacementKeys;
use axum::Json;
use axum::extract::{Query, State};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::admin::PlacementPath;
use crate::audit::Cursor;
use crate::auth::Viewer;
use crate::error::{Api, ApiError};
use crate::inputs::Inputs;
use crate::startup::App;
use crate::status::{CampaignStatus, WindowSummary};

/// The one field of a history entry: the record as JSON.
const FIELD: &str = "r";

/// One complete window of a placement.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowRecord {
    /// The entry's id, usable as `before` for the next page (filled in on read).
    #[serde(default)]
    pub id: String,
    pub window: WindowSummary,
    /// The plan in force while the window ran (`null` before the first).
    pub plan_version: Option<u64>,
    pub sample_rate: Option<f64>,
    /// Per campaign: the target, the share measured in this window with its interval,
    /// and the weight and feasibility the controller decided from it.
    pub campaigns: Vec<CampaignStatus>,
}

/// Records the last complete window in `inputs`, with the share of its requests still
/// to come that the round allowed for and `campaigns` (its reading, see
/// `status::campaigns`), once; a failure is logged, never fatal to the round.
pub async fn record(app: &App, p: &PlacementId, inputs: &Inputs, stragglers: f64, campaigns: Vec<CampaignStatus>) {
    // Windows nobody was served in are not recorded: idle placements cost nothing.
    if inputs.evidence.windows.first().is_none_or(|w| w.requests.n == 0) {
        return;
    }
    let period = app.config.control.period_ms;
    let record = WindowRecord {
        id: String::new(),
        window: WindowSummary::of(period, &inputs.evidence, stragglers),
        plan_version: inputs.previous.as_ref().map(|r| r.plan.version),
        sample_rate: inputs.previous.as_ref().map(|r| r.plan.sample_rate),
        campaigns,
    };
    let Ok(json) = serde_json::to_string(&record) else { return };
    let id = format!("{}-1", inputs.last_index() * period);
    let mut c = app.store.conn();
    let appended: redis::RedisResult<String> = redis::cmd("XADD")
        .arg(PlacementKeys::new(p).window_log())
        .arg("MAXLEN")
        .arg("~")
        .arg(app.config.control.history_windows)
        .arg(&id)
        .arg(FIELD)
        .arg(json)
        .query_async(&mut c)
        .await;
    match appended {
        Ok(_) => {}
        // Recorded already by an earlier round of this window.
        Err(e) if e.to_string().contains("equal or smaller") => {}
        Err(e) => tracing::warn!(placement = %p, error = %e, "could not record the window's history"),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// At most this many windows (default 60, at most 1440).
    #[param(minimum = 1, maximum = 1440)]
    pub limit: Option<usize>,
    /// Windows before this id (paging).
    #[param(value_type = Option<String>, pattern = "^[0-9]{1,19}-[0-9]{1,19}$")]
    pub before: Option<Cursor>,
}

/// A page of windows, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    pub placement: String,
    pub windows: Vec<WindowRecord>,
    /// The `before` of the next (older) page; `null` on the last page.
    pub next: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/placements/{id}/history", tag = "admin",
    params(("id" = PlacementId, Path, description = "Placement id"), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 400), (status = 401), (status = 404), (status = 422)),
    security(("bearer" = []))
)]
pub async fn get_history(
    State(app): State<Arc<App>>,
    _: Viewer,
    PlacementPath(id): PlacementPath,
    Api(Query(q)): Api<Query<HistoryQuery>>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = crate::error::page_limit(q.limit, 60, 1440)?;
    // Like the placement itself: a deleted (or never created) one has no history to
    // show, although its last windows stay in Redis until they expire.
    if app.store.targets(&id).await?.and_then(|r| r.spec).is_none() {
        return Err(ApiError::NotFound(format!("placement {id}")));
    }
    let end = match q.before.map(Cursor::predecessor) {
        None => "+".to_string(),
        Some(Some(end)) => end.to_string(),
        Some(None) => return Ok(Json(HistoryPage { placement: id.to_string(), windows: Vec::new(), next: None })),
    };
    let mut c = app.store.conn();
    // One more than asked, to know whether there is a next page.
    let reply: redis::streams::StreamRangeReply =
        c.xrevrange_count(PlacementKeys::new(&id).window_log(), &end, "-", limit + 1).await?;
    let more = reply.ids.len() > limit;
    let mut windows = Vec::with_capacity(limit);
    for entry in reply.ids.iter().take(limit) {
        let json: String = entry.get(FIELD).unwrap_or_default();
        let mut record: WindowRecord = serde_json::from_str(&json)
            .map_err(|e| ApiError::Internal(format!("history entry {} of {id}: {e}", entry.id)))?;
        record.id = entry.id.clone();
        windows.push(record);
    }
    let next = if more { windows.last().map(|w| w.id.clone()) } else { None };
    Ok(Json(HistoryPage { placement: id.to_string(), windows, next }))
}
