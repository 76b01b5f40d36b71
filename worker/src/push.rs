//! `PUT /internal/plans/{placement}`: the origin's way to publish a plan when it runs
//! without the Cloudflare API (locally, self-hosted).
//!
//! The request is signed exactly like events (same `INGEST_KEY`, `X-Allot-Signature`
//! over the body), the plan is checked by core before anything is written, and a
//! plan older than the stored one is refused with `409`: versions only go up, so a
//! delayed or replayed push can never roll a placement back. The pushing isolate
//! installs the plan at once; the others pick it up within their TTL.

use allot_core::{PlacementId, Plan, Verifier, signature};
use worker::Env;

use crate::config::{Config, PLANS_BINDING};
use crate::error::ApiError;
use crate::{body, plans, query, respond};

/// KV values may be far larger, but no sane plan is.
const MAX_BODY: usize = 1024 * 1024;
/// How far a signature's timestamp may be from the edge's clock.
const MAX_SKEW_SECS: u64 = 300;

pub async fn serve(req: &web_sys::Request, raw_placement: &str, env: &Env) -> Result<web_sys::Response, ApiError> {
    let placement = query::decode(raw_placement)
        .ok_or_else(|| ApiError::bad_request("bad_placement", "the placement in the path is not valid UTF-8"))
        .and_then(|p| PlacementId::parse(p).map_err(|e| ApiError::bad_request("bad_placement", e.to_string())))?;
    let config = Config::get(env);
    let Some(key) = config.ingest_key.clone() else {
        return Err(ApiError::unavailable(
            "not_configured",
            "INGEST_KEY is not set on this worker (or is shorter than 16 bytes)",
        ));
    };
    let header = req
        .headers()
        .get(signature::HEADER)
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::unauthorized(format!("the {} header is required", signature::HEADER)))?;
    let bytes = body::read(req, MAX_BODY).await?;
    let now_ms = js_sys::Date::now();
    let verifier = Verifier::new(vec![key], MAX_SKEW_SECS).map_err(|e| ApiError::internal(e.to_string()))?;
    verifier.verify(&header, &bytes, (now_ms / 1000.0) as u64).map_err(|e| ApiError::unauthorized(e.to_string()))?;

    let plan = Plan::parse(&bytes).map_err(|e| ApiError::bad_request("invalid_plan", e.to_string()))?;
    if plan.placement != placement {
        return Err(ApiError::bad_request(
            "placement_mismatch",
            format!("the body is the plan of {:?}, the path names {:?}", plan.placement.as_str(), placement.as_str()),
        ));
    }
    let compiled = plans::compile(&bytes, &placement).map_err(|e| ApiError::bad_request("invalid_plan", e))?;

    let kv = env.kv(PLANS_BINDING).map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    let key = Plan::kv_key(&placement);
    // No cacheTtl: the version check wants the freshest value this location can see.
    let stored = kv.get(&key).bytes().await.map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    match stored.as_deref().map(Plan::parse) {
        Some(Ok(old)) if old.version > plan.version => {
            return Err(ApiError::conflict(
                "stale_version",
                format!("version {} is older than the stored version {}", plan.version, old.version),
            ));
        }
        Some(Err(e)) => worker::console_warn!("replacing an unreadable {key}: {e}"),
        _ => {}
    }
    kv.put_bytes(&key, &bytes)
        .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?
        .execute()
        .await
        .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    plans::install(compiled, now_ms);
    Ok(respond::no_content()?)
}
