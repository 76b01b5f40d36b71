//! The admin API for placements: targets in, with ETags, roles and an audit trail.
//!
//! `PUT` validates with core's `Targets::parse` (a `422` names the offending field),
//! writes conditionally (`If-Match` → `412` on a stale ETag, atomic in Redis), records
//! the change in the audit stream, and wakes the control loop so the new targets are
//! solved and published at once rather than at the next period.

use std::sync::Arc;

use allot_core::{PlacementId, Targets, TargetsSpec};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::config::Role;
use crate::error::ApiError;
use crate::startup::App;
use crate::store::{Cas, etag};

pub(crate) fn placement_id(raw: String) -> Result<PlacementId, ApiError> {
    PlacementId::parse(raw).map_err(|e| ApiError::validation("id", e.to_string()))
}

/// The revision an `If-Match` header names: `None` without the header; `Some(None)` for
/// `*` (any existing); an unparseable tag can match nothing.
fn if_match(headers: &HeaderMap) -> Result<Option<Option<u64>>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let v = v.to_str().map_err(|_| ApiError::bad_request("bad_if_match", "If-Match must be ASCII"))?.trim();
    if v == "*" {
        return Ok(Some(None));
    }
    let tag = v.trim_start_matches("W/").trim_matches('"');
    Ok(Some(Some(tag.parse().unwrap_or(u64::MAX))))
}

/// The revision a conditional write must find (`None`: unconditional).
async fn expected_rev(app: &App, id: &PlacementId, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match if_match(headers)? {
        None => Ok(None),
        Some(Some(rev)) => Ok(Some(rev)),
        // `*`: whatever exists, but something must.
        Some(None) => match app.store.targets(id).await? {
            Some(r) if r.spec.is_some() => Ok(Some(r.rev)),
            _ => Err(ApiError::PreconditionFailed { current: "none".into() }),
        },
    }
}

fn with_etag(mut response: Response, rev: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag(rev)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// A spec from a request body: JSON syntax errors are 400, shape errors and rule
/// violations 422 with the field.
fn parse_spec(body: &[u8]) -> Result<Targets, ApiError> {
    let spec: TargetsSpec = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::validation("body", e.to_string()),
        _ => ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")),
    })?;
    Targets::parse(spec).map_err(|e| ApiError::validation(e.field, e.message))
}

#[utoipa::path(
    put, path = "/v1/placements/{id}", tag = "admin",
    params(("id" = String, Path, description = "Placement id"),
           ("If-Match" = Option<String>, Header, description = "ETag from a GET; 412 if stale")),
    request_body(content = Object, description = "TargetsSpec: {campaigns: [{id, rate, creative, eligibility}], confidence}"),
    responses((status = 200, description = "Updated"), (status = 201, description = "Created"),
              (status = 400), (status = 401), (status = 403), (status = 412), (status = 422)),
    security(("bearer" = []))
)]
pub async fn put_placement(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Role::Manager)?;
    let id = placement_id(id)?;
    let targets = parse_spec(&body)?;
    let spec = targets.to_spec();
    let expected = expected_rev(&app, &id, &headers).await?;
    let (rev, before) = match app.store.write_targets(&id, expected, Some(&spec), &caller.name, crate::now_ms()).await?
    {
        Cas::Written { rev, before } => (rev, before),
        Cas::Conflict { rev } => return Err(ApiError::PreconditionFailed { current: etag(rev) }),
        Cas::Missing => return Err(ApiError::NotFound(format!("placement {id}"))),
    };
    let after = serde_json::to_string(&spec).unwrap_or_default();
    app.store.mark_changed(&id, true).await?;
    app.control_wake.notify_one();
    audit_or_log(&app, &caller.name, "put", &id, &before, &after).await;
    let status = if before.is_empty() { StatusCode::CREATED } else { StatusCode::OK };
    Ok(with_etag((status, Json(spec)).into_response(), rev))
}

async fn audit_or_log(app: &App, who: &str, action: &str, id: &PlacementId, before: &str, after: &str) {
    if let Err(e) = crate::audit::append(app, who, action, id.as_str(), before, after).await {
        // The change itself is stored; losing its audit line is logged loudly.
        tracing::error!(error = %e, placement = %id, action, who, "audit append failed");
    }
}

#[utoipa::path(
    get, path = "/v1/placements/{id}", tag = "admin",
    params(("id" = String, Path, description = "Placement id")),
    responses((status = 200, description = "The targets, with an ETag"), (status = 401), (status = 404)),
    security(("bearer" = []))
)]
pub async fn get_placement(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.auth.check(&headers, Role::Viewer)?;
    let id = placement_id(id)?;
    match app.store.targets(&id).await? {
        Some(r) => match r.spec {
            Some(spec) => Ok(with_etag(Json(spec).into_response(), r.rev)),
            None => Err(ApiError::NotFound(format!("placement {id}"))),
        },
        None => Err(ApiError::NotFound(format!("placement {id}"))),
    }
}

#[utoipa::path(
    delete, path = "/v1/placements/{id}", tag = "admin",
    params(("id" = String, Path, description = "Placement id"),
           ("If-Match" = Option<String>, Header, description = "ETag from a GET; 412 if stale")),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 412)),
    security(("bearer" = []))
)]
pub async fn delete_placement(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = app.auth.check(&headers, Role::Manager)?;
    let id = placement_id(id)?;
    let expected = expected_rev(&app, &id, &headers).await?;
    match app.store.write_targets(&id, expected, None, &caller.name, crate::now_ms()).await? {
        Cas::Written { before, .. } => {
            app.store.mark_changed(&id, false).await?;
            app.control_wake.notify_one();
            audit_or_log(&app, &caller.name, "delete", &id, &before, "").await;
            Ok(StatusCode::NO_CONTENT)
        }
        Cas::Conflict { rev } => Err(ApiError::PreconditionFailed { current: etag(rev) }),
        Cas::Missing => Err(ApiError::NotFound(format!("placement {id}"))),
    }
}

/// One placement in the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlacementSummary {
    pub id: String,
    pub etag: String,
    pub campaigns: usize,
    pub updated_at_ms: u64,
    pub updated_by: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlacementList {
    pub placements: Vec<PlacementSummary>,
}

#[utoipa::path(
    get, path = "/v1/placements", tag = "admin",
    responses((status = 200, body = PlacementList), (status = 401)),
    security(("bearer" = []))
)]
pub async fn list_placements(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<PlacementList>, ApiError> {
    app.auth.check(&headers, Role::Viewer)?;
    let mut placements = Vec::new();
    for id in app.store.placements().await? {
        if let Some(r) = app.store.targets(&id).await?
            && let Some(spec) = &r.spec
        {
            placements.push(PlacementSummary {
                id: id.to_string(),
                etag: r.etag(),
                campaigns: spec.campaigns.len(),
                updated_at_ms: r.updated_at_ms,
                updated_by: r.updated_by.clone(),
            });
        }
    }
    Ok(Json(PlacementList { placements }))
}
