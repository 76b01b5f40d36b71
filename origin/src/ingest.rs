//! `POST /v1/events`: verify, judge each event, store once, then answer.
//!
//! Order matters, and every step before the body's MAC is bounded work. The size limit
//! comes first (413, before reading a huge body), then the signature header alone: at
//! most [`MAX_HEADER_LEN`](signature::MAX_HEADER_LEN) bytes and
//! [`MAX_TAGS`](signature::MAX_TAGS) tags, and a timestamp within the skew (401,
//! counted by reason), then the body is read and MACed once per key (401), then the
//! schema (400). Only then are events judged one by one ([`crate::admission`]): an
//! event with a bad rate or time, or one that does not match a published plan, is
//! dropped and counted by reason, and the rest of the body is stored. `202` is sent only
//! after Redis has run the store script: an accepted event is never lost to an origin
//! crash. Its body is `{"accepted": n, "dropped": m}` (and `"duplicate": true` for a
//! body already stored).
//!
//! Idempotent retries: the signature binds a timestamp, so a body older than
//! `ingest.max_signature_age_secs` (or further ahead than the skew) is stale; within
//! that span a digest of `t.body` is remembered in Redis for the whole span. One Lua script checks that memory, appends the entries and sets the
//! memory, atomically (the memory's key shares the stream's hash slot, so this holds on
//! Redis Cluster too). A body whose script ran, even if its answer was lost to a
//! timeout, is never appended again: its retry gets `202` with `"duplicate": true`.
//! Nothing is deleted after an error, because an error does not prove the script did
//! not run.
//!
//! The accepted events are split by placement, one stream entry per placement (`p`,
//! `e`, `r`); a body whose events were all accepted and share one placement is stored
//! as the very bytes the edge signed. All requests share one multiplexed connection, so
//! concurrent scripts are pipelined on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

use allot_core::signature::{self, SignatureError, SignatureHeader};
use allot_core::{Event, EventBatch};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::startup::App;
use allot_core::contract::{keys, stream};

/// Appends a body's entries once. KEYS: the body's memory, the event stream. ARGV: the
/// memory's TTL, the receive time, the three entry field names (placement, batch,
/// receive time), then per entry its placement and batch. Returns 0 for a body already
/// stored (nothing written), 1 once appended.
///
/// No `MAXLEN`: a cap by length would cut entries a lagging consumer group has not read.
/// The stream is trimmed below what every group has acknowledged ([`crate::trim`]).
const STORE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 6, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[i], ARGV[4], ARGV[i + 1], ARGV[5], ARGV[2])
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
";

/// The script, hashed once; the first call on a connection loads it.
static STORE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(STORE_SCRIPT));

/// The largest drop count one body may report (an isolate's drops since its last batch).
const MAX_EDGE_DROPPED: u64 = 1 << 32;

/// The memory key of a verified body.
fn replay_key(t: u64, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(t.to_string().as_bytes());
    h.update(b".");
    h.update(body);
    keys::replay(&signature::hex(&h.finalize()[..16]))
}

/// What a handled body came to.
#[derive(Debug)]
struct Outcome {
    accepted: usize,
    dropped: usize,
    duplicate: bool,
}

#[utoipa::path(
    post, path = "/v1/events", tag = "ingest",
    request_body(content = Object, description = "`{\"events\": [...]}`, 1 to 1000 events, signed"),
    params(("X-Allot-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256(key, \"t.body\")>, at most 4 tags and 512 bytes")),
    responses(
        (status = 202, description = "Stored in the stream (or stored before): `{\"accepted\", \"dropped\"}`, plus `\"duplicate\": true` for a body stored before"),
        (status = 400, description = "Malformed events"),
        (status = 401, description = "Missing, malformed, forged, tampered or stale signature"),
        (status = 413, description = "Body too large"),
        (status = 503, description = "Redis unavailable, or `overloaded`: the ingest holds its budget of body bytes; send the same body again after `Retry-After`"),
    )
)]
pub async fn post_events(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let timer = app.metrics.ingest_latency.start_timer();
    let result = ingest(&app, &headers, body).await;
    timer.observe_duration();
    match result {
        Ok(o) => {
            let mut answer = serde_json::json!({"accepted": o.accepted, "dropped": o.dropped});
            if o.duplicate {
                app.metrics.ingest_duplicates.inc();
                answer["duplicate"] = true.into();
            } else {
                app.metrics.ingest_accepted.inc();
                app.metrics.ingest_events.inc_by(o.accepted as u64);
            }
            (StatusCode::ACCEPTED, axum::Json(answer)).into_response()
        }
        Err(e) => {
            let response = e.into_response();
            app.metrics.ingest_rejected.with_label_values(&[response.status().as_str()]).inc();
            response
        }
    }
}

fn refused(app: &App, e: SignatureError) -> ApiError {
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
}

async fn ingest(app: &App, headers: &HeaderMap, body: Body) -> Result<Outcome, ApiError> {
    let limit = app.config.ingest.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|n: usize| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // The header alone first: a malformed or stale one costs no body read and no MAC.
    let sig = headers
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(SignatureError::Malformed)
        .and_then(SignatureHeader::parse)
        .and_then(|h| app.verifier.check_time(&h, crate::now_ms() / 1000).map(|()| h))
        .map_err(|e| refused(app, e))?;
    let deadline = std::time::Duration::from_millis(app.config.ingest.body_read_timeout_ms);
    let (bytes, _room) = app.bodies.read(body, declared, deadline).await.inspect_err(|e| {
        if matches!(e, ApiError::Overloaded { .. }) {
            app.metrics.ingest_shed.inc();
        }
    })?;
    let t = app.verifier.verify_parsed(&sig, &bytes).map_err(|e| refused(app, e))?;

    let batch = EventBatch::parse(&bytes).map_err(|e| ApiError::bad_request("invalid_events", e.to_string()))?;
    let received = crate::now_ms();
    let judged = app.admission.judge(&app.store, batch.events, received).await?;
    let (accepted, dropped) = (judged.accepted.len(), judged.dropped_total());
    // Outside the signature's bytes: capped, so a made-up count cannot wrap the counter.
    let edge_dropped = headers
        .get(allot_core::event::DROPPED_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|n| n.min(MAX_EDGE_DROPPED));
    // Drops are counted once per body (not again for its duplicates): a body with no
    // event accepted is remembered too, though it adds nothing to the stream.
    let count_drops = || {
        app.metrics.edge_dropped.inc_by(edge_dropped.unwrap_or(0));
        for (reason, n) in &judged.dropped {
            app.metrics.ingest_dropped.with_label_values(&[reason.as_str()]).inc_by(*n as u64);
        }
    };

    let mut script = STORE.prepare_invoke();
    script
        .key(replay_key(t, &bytes))
        .key(stream::EVENTS)
        // A body is accepted from `skew` before its timestamp to `max age` after it.
        .arg(
            app.config.ingest.max_skew_secs
                + app.config.ingest.max_signature_age_secs.max(app.config.ingest.max_skew_secs)
                + 1,
        )
        .arg(received)
        .arg(stream::PLACEMENT)
        .arg(stream::BATCH)
        .arg(stream::RECEIVED_MS);
    let whole = judged
        .accepted
        .first()
        .map(|e| &e.placement)
        .filter(|first| dropped == 0 && judged.accepted.iter().all(|e| &e.placement == *first));
    if let Some(first) = whole {
        // The common case: the verified body is already the entry's batch.
        script.arg(first.as_str()).arg(&bytes[..]);
    } else {
        let mut groups: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for e in judged.accepted {
            groups.entry(e.placement.as_str().to_string()).or_default().push(e);
        }
        for (p, events) in groups {
            script.arg(p).arg(EventBatch { events }.to_json());
        }
    }
    let mut conn = app.store.conn();
    let stored: i64 = script.invoke_async(&mut conn).await?;
    if stored == 1 {
        count_drops();
    }
    Ok(Outcome { accepted, dropped, duplicate: stored == 0 })
}
