//! The admin API for placements: targets in, with ETags, roles and an audit trail.
//!
//! `PUT` validates with core's `Targets::admit` (a `422` names the offending field),
//! registers the placement, writes conditionally (`If-Match` → `412` on a stale ETag)
//! with the change's audit entry in the same script, registers it again (see
//! [`crate::store::Store::unregister`]), and wakes the control loop so the new targets
//! are solved and published at once rather than at the next period.
//!
//! Once the write is stored the answer is a success, whatever follows: marking the
//! placement for an immediate round and copying the audit entry to the global feed
//! only speed things up or copy (the next full round solves every registered
//! placement; the placement's own trail is already written). Registering comes first
//! for the same reason: a stored placement is never missing from the registry, and a
//! registered one without targets leaves it at the next round.

use std::sync::Arc;

use allot_core::contract::AuditRecord;
use allot_core::{PlacementId, Targets, TargetsSpec};
use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::{Manager, Viewer};
use crate::error::{Api, ApiError};
use crate::startup::App;
use crate::store::{Cas, etag};

/// The `{id}` of a placement route, parsed: a handler that runs has a valid id, and a
/// malformed one is a `422` naming the field `id`.
#[derive(Debug, Clone)]
pub struct PlacementPath(pub PlacementId);

impl<S: Send + Sync> FromRequestParts<S> for PlacementPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        PlacementId::parse(raw).map(Self).map_err(|e| ApiError::validation("id", e.to_string()))
    }
}

/// The precondition of a write, from `If-Match`; taken as `Option<IfMatch>`, where
/// `None` (no header) means unconditional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: the placement must exist, whatever its revision.
    Any,
    /// One of our ETags: the revision must still be this one.
    Rev(u64),
    /// A tag we never issue. It matches no revision, so the write is refused with `412`
    /// rather than taken as unconditional.
    Unknown,
}

impl IfMatch {
    /// One header value. Our ETags are quoted revisions (`"7"`); a weak `W/"7"` is read
    /// as `"7"`, since a proxy may weaken the tags it passes on.
    pub fn parse(value: &str) -> Self {
        let value = value.trim();
        if value == "*" {
            return Self::Any;
        }
        let tag = value.strip_prefix("W/").unwrap_or(value);
        let tag = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
        match tag.parse() {
            Ok(rev) if tag.bytes().all(|b| b.is_ascii_digit()) => Self::Rev(rev),
            _ => Self::Unknown,
        }
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, ApiError> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else { return Ok(None) };
        let value = value.to_str().map_err(|_| ApiError::bad_request("bad_if_match", "If-Match must be ASCII"))?;
        Ok(Some(Self::parse(value)))
    }
}

/// The revision a conditional write must find (`None`: unconditional). `*` and an
/// unknown tag read the current revision: the first to require it, both to report it.
async fn expected_rev(app: &App, id: &PlacementId, if_match: Option<IfMatch>) -> Result<Option<u64>, ApiError> {
    let current = match if_match {
        None => return Ok(None),
        Some(IfMatch::Rev(rev)) => return Ok(Some(rev)),
        Some(IfMatch::Any | IfMatch::Unknown) => app.store.targets(id).await?.filter(|r| r.spec.is_some()),
    };
    match (if_match, current) {
        (Some(IfMatch::Any), Some(r)) => Ok(Some(r.rev)),
        (_, r) => Err(ApiError::PreconditionFailed { current: r.map_or_else(|| "none".into(), |r| r.etag()) }),
    }
}

fn with_etag(mut response: Response, rev: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag(rev)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The largest targets body accepted: a spec is a few campaigns, far below this.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// Targets from a request body, parsed and validated by core before the handler runs.
#[derive(Debug, Clone)]
pub struct Spec(pub Targets);

impl FromRequest<Arc<App>> for Spec {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let body = axum::body::to_bytes(req.into_body(), MAX_SPEC_BYTES)
            .await
            .map_err(|e| ApiError::body_read(&e, MAX_SPEC_BYTES))?;
        let targets = parse_spec(&body)?;
        within_samples(&targets, app.config.control.max_samples_per_window)?;
        Ok(Self(targets))
    }
}

/// Refuses targets whose confidence needs more sampled requests a window than the
/// deployment plans for (`control.max_samples_per_window`).
fn within_samples(targets: &Targets, max: u64) -> Result<(), ApiError> {
    let needed = allot_core::SampleRatePlanner::required_samples(targets);
    if needed <= max as f64 {
        return Ok(());
    }
    let c = &targets.confidence;
    Err(ApiError::validation(
        "confidence",
        format!(
            "a margin of {} at level {} needs {needed:.0} sampled requests a window, above this \
             deployment's {max} (control.max_samples_per_window): widen the margin or lower the level",
            c.margin, c.level
        ),
    ))
}

/// A spec from a request body: JSON syntax errors are 400, shape errors and rule
/// violations 422 with the field.
fn parse_spec(body: &[u8]) -> Result<Targets, ApiError> {
    let spec: TargetsSpec = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::validation("body", e.to_string()),
        _ => ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")),
    })?;
    Targets::admit(spec).map_err(|e| ApiError::validation(e.field, e.message))
}

#[utoipa::path(
    put, path = "/v1/placements/{id}", tag = "admin",
    params(("id" = PlacementId, Path, description = "Placement id"),
           ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[0-9]{1,19}")$"#, description = "ETag from a GET; 412 if stale")),
    request_body = TargetsSpec,
    responses((status = 200, description = "Updated", body = TargetsSpec, headers(("ETag" = String))),
              (status = 201, description = "Created", body = TargetsSpec, headers(("ETag" = String))),
              (status = 400), (status = 401), (status = 403), (status = 404, description = "Deleted meanwhile"),
              (status = 412, description = "Stale If-Match: the error names the current ETag"), (status = 413), (status = 422)),
    security(("bearer" = []))
)]
pub async fn put_placement(
    State(app): State<Arc<App>>,
    Manager(caller): Manager,
    PlacementPath(id): PlacementPath,
    if_match: Option<IfMatch>,
    Spec(targets): Spec,
) -> Result<Response, ApiError> {
    let spec = targets.to_spec();
    let expected = expected_rev(&app, &id, if_match).await?;
    app.store.register(&id).await?;
    let record = match app.store.write_targets(&id, expected, Some(&spec), &caller.name, crate::now_ms()).await? {
        Cas::Written(record) => record,
        Cas::Conflict { rev } => return Err(ApiError::PreconditionFailed { current: etag(rev) }),
        Cas::Missing => return Err(ApiError::NotFound(format!("placement {id}"))),
    };
    // Again after the write: a round that read the targets before it and decided to
    // remove the placement now finds a new stamp and leaves it in.
    if let Err(e) = app.store.register(&id).await {
        tracing::error!(error = %e, placement = %id, "could not renew the registration after the write");
    }
    let status = if record.before.is_empty() { StatusCode::CREATED } else { StatusCode::OK };
    let rev = record.rev;
    after_change(&app, record).await;
    Ok(with_etag((status, Json(spec)).into_response(), rev))
}

/// What follows a stored change: a round now, and the entry in the global audit feed.
/// Neither failure undoes the change or loses its record, so both are logged, not
/// answered.
async fn after_change(app: &App, record: AuditRecord) {
    let id = &record.placement;
    if let Err(e) = app.store.mark_dirty(id).await {
        tracing::warn!(error = %e, placement = %id, "could not ask for a round now; the next full round solves it");
    }
    app.control_wake.notify_one();
    if let Err(e) = crate::audit::append(app, &record).await {
        app.metrics.audit_feed_failures.inc();
        tracing::error!(error = %e, placement = %id, action = record.action.as_str(), who = record.who,
            "the global audit feed missed a change (the placement's trail has it)");
    }
}

#[utoipa::path(
    get, path = "/v1/placements/{id}", tag = "admin",
    params(("id" = PlacementId, Path, description = "Placement id")),
    responses((status = 200, description = "The targets", body = TargetsSpec, headers(("ETag" = String, description = "The revision, for If-Match"))),
              (status = 401), (status = 404), (status = 422)),
    security(("bearer" = []))
)]
pub async fn get_placement(
    State(app): State<Arc<App>>,
    _: Viewer,
    PlacementPath(id): PlacementPath,
) -> Result<Response, ApiError> {
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
    params(("id" = PlacementId, Path, description = "Placement id"),
           ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[0-9]{1,19}")$"#, description = "ETag from a GET; 412 if stale")),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 412), (status = 422)),
    security(("bearer" = []))
)]
pub async fn delete_placement(
    State(app): State<Arc<App>>,
    Manager(caller): Manager,
    PlacementPath(id): PlacementPath,
    if_match: Option<IfMatch>,
) -> Result<StatusCode, ApiError> {
    let expected = expected_rev(&app, &id, if_match).await?;
    match app.store.write_targets(&id, expected, None, &caller.name, crate::now_ms()).await? {
        Cas::Written(record) => {
            after_change(&app, record).await;
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
    /// In id order.
    pub placements: Vec<PlacementSummary>,
    /// The `after` of the next page; `null` on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many placements (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Placements after this id (paging).
    #[param(value_type = Option<PlacementId>)]
    pub after: Option<PlacementId>,
}

#[utoipa::path(
    get, path = "/v1/placements", tag = "admin", params(ListQuery),
    responses((status = 200, body = PlacementList), (status = 400), (status = 401)),
    security(("bearer" = []))
)]
pub async fn list_placements(
    State(app): State<Arc<App>>,
    _: Viewer,
    Api(Query(q)): Api<Query<ListQuery>>,
) -> Result<Json<PlacementList>, ApiError> {
    let limit = crate::error::page_limit(q.limit, 100, 1000)?;
    let ids = app.store.placements().await?;
    let ids: Vec<PlacementId> = ids.into_iter().filter(|id| q.after.as_ref().is_none_or(|a| id > a)).collect();
    let mut placements: Vec<PlacementSummary> = Vec::new();
    let mut next = None;
    // Read a page's worth at a time, one more than it needs to know whether more follow.
    // Placements without targets are skipped, so a page may take a few reads.
    let mut rest = ids.as_slice();
    while !rest.is_empty() && next.is_none() {
        let (chunk, after) = rest.split_at(rest.len().min(limit + 1 - placements.len()));
        rest = after;
        for (id, summary) in chunk.iter().zip(app.store.summaries(chunk).await?) {
            let Some(summary) = summary else { continue };
            if placements.len() == limit {
                next = placements.last().map(|p| p.id.clone());
                break;
            }
            placements.push(PlacementSummary {
                id: id.to_string(),
                etag: crate::store::etag(summary.rev),
                campaigns: summary.campaigns,
                updated_at_ms: summary.updated_at_ms,
                updated_by: summary.updated_by,
            });
        }
    }
    Ok(Json(PlacementList { placements, next }))
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    #[test]
    fn if_match_values() {
        assert_eq!(IfMatch::parse("*"), IfMatch::Any);
        assert_eq!(IfMatch::parse(" * "), IfMatch::Any);
        assert_eq!(IfMatch::parse(&etag(7)), IfMatch::Rev(7));
        assert_eq!(IfMatch::parse("W/\"7\""), IfMatch::Rev(7));
        assert_eq!(IfMatch::parse("7"), IfMatch::Rev(7));
        assert_eq!(IfMatch::parse("\"18446744073709551615\""), IfMatch::Rev(u64::MAX));
        for unknown in ["\"abc\"", "\"\"", "", "\"+7\"", "\"-1\"", "\"1\", \"2\"", "\"18446744073709551616\"", "\"7"] {
            assert_eq!(IfMatch::parse(unknown), IfMatch::Unknown, "{unknown:?}");
        }
    }

    async fn if_match_of(value: Option<&[u8]>) -> Result<Option<IfMatch>, ApiError> {
        let mut request = Request::builder();
        if let Some(v) = value {
            request = request.header(header::IF_MATCH, HeaderValue::from_bytes(v).unwrap());
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        <IfMatch as axum::extract::OptionalFromRequestParts<()>>::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn if_match_header() {
        assert_eq!(if_match_of(None).await.unwrap(), None);
        assert_eq!(if_match_of(Some(b"\"3\"")).await.unwrap(), Some(IfMatch::Rev(3)));
        assert_eq!(if_match_of(Some(b"*")).await.unwrap(), Some(IfMatch::Any));
        let err = if_match_of(Some("\"caf\u{e9}\"".as_bytes())).await.unwrap_err();
        assert!(matches!(err, ApiError::BadRequest { code: "bad_if_match", .. }), "{err:?}");
    }
}
