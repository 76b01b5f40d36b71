//! The audit trail: every admin change, who made it, when, and the before/after values.
//!
//! Appended to the `allot:audit` stream after each successful write and read back
//! newest first at `GET /v1/audit`. A stream (rather than a list) gives every entry a
//! time-ordered id for paging.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::error::ApiError;
use crate::keys;
use crate::startup::App;

/// One recorded change.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Stream id, usable as `before` for the next page.
    pub id: String,
    pub who: String,
    pub at_ms: u64,
    /// `put` or `delete`.
    pub action: String,
    pub placement: String,
    /// The targets before the change (`null` if none).
    #[schema(value_type = Object)]
    pub before: serde_json::Value,
    /// The targets after the change (`null` after a delete).
    #[schema(value_type = Object)]
    pub after: serde_json::Value,
}

/// Appends a change. `before`/`after` are targets JSON, or empty for none.
pub async fn append(
    app: &App,
    who: &str,
    action: &str,
    placement: &str,
    before: &str,
    after: &str,
) -> Result<(), redis::RedisError> {
    let mut c = app.store.conn();
    let at = crate::now_ms().to_string();
    c.xadd_maxlen::<_, _, _, _, ()>(
        keys::AUDIT,
        redis::streams::StreamMaxlen::Approx(1_000_000),
        "*",
        &[
            ("who", who),
            ("at", &at),
            ("action", action),
            ("placement", placement),
            ("before", before),
            ("after", after),
        ],
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only changes to this placement.
    pub placement: Option<String>,
    /// At most this many entries (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Entries older than this id (paging).
    pub before: Option<String>,
}

fn json_or_null(s: Option<&String>) -> serde_json::Value {
    s.filter(|s| !s.is_empty()).and_then(|s| serde_json::from_str(s).ok()).unwrap_or(serde_json::Value::Null)
}

#[utoipa::path(
    get, path = "/v1/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = [AuditEntry]), (status = 401), (status = 403)),
    security(("bearer" = []))
)]
pub async fn get_audit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    app.auth.check(&headers, Role::Viewer)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut end = q.before.map(|b| format!("({b}")).unwrap_or_else(|| "+".into());
    let mut out = Vec::new();
    let mut c = app.store.conn();
    loop {
        let reply: redis::streams::StreamRangeReply = c.xrevrange_count(keys::AUDIT, &end, "-", 500).await?;
        let n = reply.ids.len();
        for e in &reply.ids {
            let field = |k: &str| e.get::<String>(k);
            let placement = field("placement").unwrap_or_default();
            if q.placement.as_ref().is_some_and(|p| p != &placement) {
                continue;
            }
            let map: HashMap<&str, Option<String>> = ["before", "after"].into_iter().map(|k| (k, field(k))).collect();
            out.push(AuditEntry {
                id: e.id.clone(),
                who: field("who").unwrap_or_default(),
                at_ms: field("at").and_then(|a| a.parse().ok()).unwrap_or(0),
                action: field("action").unwrap_or_default(),
                placement,
                before: json_or_null(map["before"].as_ref()),
                after: json_or_null(map["after"].as_ref()),
            });
            if out.len() == limit {
                return Ok(Json(out));
            }
        }
        match reply.ids.last() {
            Some(last) if n == 500 => end = format!("({}", last.id),
            _ => return Ok(Json(out)),
        }
    }
}
