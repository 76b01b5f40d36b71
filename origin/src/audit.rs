//! The audit trail: every admin change, who made it, when, and the before/after values.
//!
//! Each placement's trail (`allot:{p}:audit`) is written by the same script as the
//! change it records, so no change is stored without its entry. Each entry is then
//! copied to the global feed (`allot:audit`), which lists every placement's changes
//! together; a failed copy is counted (`allot_audit_feed_failures_total`) and the
//! placement's own trail still has it. `GET /v1/audit?placement=…` reads the trail,
//! `GET /v1/audit` the feed, both newest first. Streams (rather than lists) give every
//! entry a time-ordered id for paging; an id is a cursor within the listing it came
//! from. The archiver reads the feed into the archive's `audit` table, so the trail
//! outlives the feed's cap. An entry's fields are the contract's
//! ([`allot_core::contract::audit`]), the script's included.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use allot_core::PlacementId;
use axum::Json;
use axum::extract::{Query, State};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::auth::Viewer;
use crate::error::{Api, ApiError};
use crate::startup::App;
use allot_core::contract::audit::{self, AuditRecord};
use allot_core::contract::keys::{self, PlacementKeys};

/// One recorded change.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Stream id, usable as `before` for the next page.
    pub id: String,
    pub who: String,
    pub at_ms: u64,
    /// `put` or `delete`.
    #[schema(pattern = "^(put|delete)$")]
    pub action: String,
    pub placement: String,
    /// The targets revision the change produced (its `ETag`).
    pub rev: u64,
    /// The targets before the change (`null` if none).
    #[schema(value_type = Option<allot_core::TargetsSpec>)]
    pub before: serde_json::Value,
    /// The targets after the change (`null` after a delete).
    #[schema(value_type = Option<allot_core::TargetsSpec>)]
    pub after: serde_json::Value,
}

/// Copies a change's entry, as the targets script wrote it into the placement's trail,
/// to the global feed.
pub async fn append(app: &App, record: &AuditRecord) -> Result<(), redis::RedisError> {
    let mut c = app.store.conn();
    c.xadd_maxlen::<_, _, _, _, ()>(
        keys::AUDIT,
        redis::streams::StreamMaxlen::Approx(FEED_MAX_LEN),
        "*",
        &record.fields(),
    )
    .await
}

/// Approximate cap on the global feed: years of admin changes; the archiver reads it
/// within a minute.
const FEED_MAX_LEN: usize = 1_000_000;

/// A page of the audit trail, newest first.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// The `before` of the next (older) page; `null` on the last page.
    pub next: Option<String>,
}

/// A paging cursor: the id of an entry of a stream-backed listing (`<ms>-<seq>`): the
/// audit trail, the window history. Parsed with
/// the query, so a malformed one is the client's `400` rather than a Redis error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Cursor {
    ms: u64,
    seq: u64,
}

/// Why a cursor was rejected.
#[derive(Debug, thiserror::Error)]
#[error("before: {0:?} is not an entry id (<ms>-<seq>)")]
pub struct CursorError(String);

impl Cursor {
    /// The greatest id below this one, the inclusive end of the next page; `None` at
    /// the very start of the stream.
    pub fn predecessor(self) -> Option<Self> {
        match (self.ms, self.seq) {
            (ms, seq @ 1..) => Some(Self { ms, seq: seq - 1 }),
            (ms @ 1.., 0) => Some(Self { ms: ms - 1, seq: u64::MAX }),
            (0, 0) => None,
        }
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(s: &str) -> Result<Self, CursorError> {
        let number = |part: &str| match part.parse() {
            Ok(n) if part.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => None,
        };
        s.split_once('-')
            .and_then(|(ms, seq)| Some(Self { ms: number(ms)?, seq: number(seq)? }))
            .ok_or_else(|| CursorError(s.to_string()))
    }
}

impl TryFrom<String> for Cursor {
    type Error = CursorError;

    fn try_from(s: String) -> Result<Self, CursorError> {
        s.parse()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only changes to this placement.
    #[param(value_type = Option<PlacementId>)]
    pub placement: Option<PlacementId>,
    /// At most this many entries (default 100, at most 1000). A page also ends once
    /// its entries' targets documents reach 4 MiB; `next` then names the rest.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Entries older than this id (paging).
    #[param(value_type = Option<String>, pattern = "^[0-9]{1,19}-[0-9]{1,19}$")]
    pub before: Option<Cursor>,
}

/// Audit entries read from Redis in one reply.
const READ_AT_ONCE: usize = 8;
/// A page ends after the entry that brings its documents to this many bytes: a page
/// of entries holding the largest documents stays a few megabytes, whatever `limit`.
pub const PAGE_BYTES: usize = 4 << 20;

fn json_or_null(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

#[utoipa::path(
    get, path = "/v1/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = []))
)]
pub async fn get_audit(
    State(app): State<Arc<App>>,
    _: Viewer,
    Api(Query(q)): Api<Query<AuditQuery>>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = crate::error::page_limit(q.limit, 100, 1000)?;
    let mut end = match q.before.map(Cursor::predecessor) {
        None => "+".to_string(),
        Some(Some(end)) => end.to_string(),
        // Nothing precedes the first possible id.
        Some(None) => return Ok(Json(AuditPage::default())),
    };
    let stream = q.placement.as_ref().map_or_else(|| keys::AUDIT.to_string(), |p| PlacementKeys::new(p).audit());
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut c = app.store.conn();
    loop {
        // No more entries than the page still needs, a few at a time: an entry holds
        // two whole targets documents (up to about a megabyte each), and the reply
        // shares the connection with the ingest.
        let want = (limit - out.len()).min(READ_AT_ONCE);
        let reply: redis::streams::StreamRangeReply = c.xrevrange_count(&stream, &end, "-", want).await?;
        let n = reply.ids.len();
        for e in &reply.ids {
            let text: HashMap<&str, String> =
                audit::FIELDS.iter().filter_map(|&k| Some((k, e.get::<String>(k)?))).collect();
            let record = match AuditRecord::parse(|k| text.get(k).map(String::as_str)) {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!(%error, id = e.id, stream, "skipping an audit entry that does not parse");
                    continue;
                }
            };
            if q.placement.as_ref().is_some_and(|p| *p != record.placement) {
                continue;
            }
            bytes += record.before.len() + record.after.len();
            out.push(AuditEntry {
                id: e.id.clone(),
                who: record.who,
                at_ms: record.at_ms,
                action: record.action.as_str().to_string(),
                placement: record.placement.as_str().to_string(),
                rev: record.rev,
                before: json_or_null(&record.before),
                after: json_or_null(&record.after),
            });
            if out.len() == limit || bytes >= PAGE_BYTES {
                // The page is full: there is a next one if anything older is left.
                let older: redis::streams::StreamRangeReply =
                    c.xrevrange_count(&stream, format!("({}", e.id), "-", 1).await?;
                let next = (!older.ids.is_empty()).then(|| e.id.clone());
                return Ok(Json(AuditPage { entries: out, next }));
            }
        }
        match reply.ids.last() {
            Some(last) if n == want => end = format!("({}", last.id),
            _ => return Ok(Json(AuditPage { entries: out, next: None })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        let c: Cursor = "1700000000000-3".parse().unwrap();
        assert_eq!(c.to_string(), "1700000000000-3");
        assert_eq!(c.predecessor().unwrap().to_string(), "1700000000000-2");
        let c: Cursor = "1700000000000-0".parse().unwrap();
        assert_eq!(c.predecessor().unwrap().to_string(), format!("1699999999999-{}", u64::MAX));
        assert_eq!("0-0".parse::<Cursor>().unwrap().predecessor(), None);
        for bad in
            ["garbage", "", "-", "17-", "-3", "17", "17-3-1", "+17-3", "17-+3", "1 7-3", "99999999999999999999-0"]
        {
            let err = bad.parse::<Cursor>().unwrap_err();
            assert!(err.to_string().starts_with("before:"), "{bad:?}: {err}");
        }
    }
}
