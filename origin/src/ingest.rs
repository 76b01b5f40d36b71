//! `POST /v1/events`: verify, then store in the stream, then answer.
//!
//! Order matters. The size limit comes first (413, before reading a huge body), then the
//! signature over the raw bytes (401: forged, tampered, stale or replayed — counted by
//! reason), then the schema (400). Only a verified, well-formed batch reaches Redis, and
//! `202` is sent only after Redis has acknowledged the `XADD`: an accepted event is never
//! lost to an origin crash.
//!
//! Replays: the signature binds a timestamp, so a body older than the skew window is
//! stale; within the window a SHA-256 of `t.body` is remembered (`SET NX`, TTL twice the
//! skew) in Redis, so a replay is refused by every replica, not only the one that saw
//! the original.
//!
//! The batch is split by placement and written as one stream entry per placement
//! (`p`, `e`, `r`); several entries go in one `MULTI`, so a retry after a failure cannot
//! duplicate half a batch. All requests share one multiplexed connection, so concurrent `XADD`s are
//! pipelined on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

use allot_core::signature::{self, SignatureError};
use allot_core::{Event, EventBatch};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::startup::App;
use allot_core::contract::{keys, stream};

/// The replay-memory key of a verified body.
fn replay_key(t: u64, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(t.to_string().as_bytes());
    h.update(b".");
    h.update(body);
    keys::replay(&allot_core::signature::hex(&h.finalize()[..16]))
}

#[utoipa::path(
    post, path = "/v1/events", tag = "ingest",
    request_body(content = Object, description = "`{\"events\": [...]}`, 1 to 1000 events, signed"),
    params(("X-Allot-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256(key, \"t.body\")>")),
    responses(
        (status = 202, description = "Stored in the stream"),
        (status = 400, description = "Malformed events"),
        (status = 401, description = "Missing, forged, tampered, stale or replayed signature"),
        (status = 413, description = "Body too large"),
        (status = 503, description = "Redis unavailable"),
    )
)]
pub async fn post_events(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let timer = app.metrics.ingest_latency.start_timer();
    let result = ingest(&app, &headers, body).await;
    timer.observe_duration();
    match result {
        Ok(n) => {
            app.metrics.ingest_accepted.inc();
            app.metrics.ingest_events.inc_by(n as u64);
            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"accepted": n}))).into_response()
        }
        Err(e) => {
            let response = e.into_response();
            app.metrics.ingest_rejected.with_label_values(&[response.status().as_str()]).inc();
            response
        }
    }
}

async fn ingest(app: &App, headers: &HeaderMap, body: Body) -> Result<usize, ApiError> {
    let limit = app.config.ingest.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|n: usize| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::PayloadTooLarge { limit };
            }
            source = err.source();
        }
        ApiError::bad_request("body_read_failed", format!("could not read the body: {e}"))
    })?;

    let sig = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    let t = match sig {
        None => Err(SignatureError::Malformed),
        Some(h) => app.verifier.verify(h, &bytes, crate::now_ms() / 1000),
    }
    .map_err(|e| {
        let reason = match e {
            SignatureError::Malformed => "malformed",
            SignatureError::Stale => "stale",
            SignatureError::Mismatch => "mismatch",
        };
        app.metrics.signature_failures.with_label_values(&[reason]).inc();
        ApiError::Unauthorized(match e {
            SignatureError::Malformed => "missing or malformed X-Allot-Signature",
            SignatureError::Stale => "signature timestamp outside the allowed window",
            SignatureError::Mismatch => "signature does not match",
        })
    })?;

    let batch = EventBatch::parse(&bytes).map_err(|e| ApiError::bad_request("invalid_events", e.to_string()))?;
    let n = batch.events.len();

    let mut conn = app.store.conn();
    let replay = replay_key(t, &bytes);
    let fresh: bool = redis::cmd("SET")
        .arg(&replay)
        .arg(1)
        .arg("NX")
        .arg("EX")
        .arg(app.config.ingest.max_skew_secs * 2 + 1)
        .query_async::<Option<String>>(&mut conn)
        .await?
        .is_some();
    if !fresh {
        app.metrics.signature_failures.with_label_values(&["replay"]).inc();
        return Err(ApiError::Unauthorized("this body was already received (replay)"));
    }

    let received = crate::now_ms();
    let first = &batch.events[0].placement;
    let mut pipe = redis::pipe();
    let max_len = redis::streams::StreamMaxlen::Approx(app.config.redis.stream_max_len as usize);
    if batch.events.iter().all(|e| &e.placement == first) {
        // The common case: the verified body is already the entry's batch.
        pipe.xadd_maxlen(
            stream::EVENTS,
            max_len,
            "*",
            &stream::event_entry(first.as_str(), &bytes, &received.to_string()),
        )
        .ignore();
    } else {
        let mut groups: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
        for e in &batch.events {
            groups.entry(e.placement.as_str()).or_default().push(e.clone());
        }
        // Several entries: all or none, so a retried body cannot duplicate half of it.
        pipe.atomic();
        for (p, events) in groups {
            let json = EventBatch { events }.to_json();
            pipe.xadd_maxlen(
                stream::EVENTS,
                max_len,
                "*",
                &stream::event_entry(p, json.as_bytes(), &received.to_string()),
            )
            .ignore();
        }
    }
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        // Let the edge retry the same signed body.
        let _ = redis::cmd("DEL").arg(&replay).query_async::<i64>(&mut conn).await;
        return Err(e.into());
    }
    Ok(n)
}
