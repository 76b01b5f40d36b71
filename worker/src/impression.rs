//! `POST /v1/impression`: the app reports that an ad was actually shown.
//!
//! Delivery is measured on impressions where apps report them, so they travel to the
//! origin like allocations: sampled by the same consistent rule on the request id (an
//! impression is sampled exactly when its allocation was, at the same rate) and sent
//! in the same signed batches.

use allot_core::{CampaignId, Event, EventKind, PlacementId, RequestId, sampled};
use serde::Deserialize;
use worker::{Context, Env};

use crate::config::Config;
use crate::error::ApiError;
use crate::{body, forward, plans, respond};

const MAX_BODY: usize = 4 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Impression {
    request_id: RequestId,
    placement: PlacementId,
    ad_id: CampaignId,
}

pub async fn serve(req: &web_sys::Request, env: &Env, ctx: &Context) -> Result<web_sys::Response, ApiError> {
    let bytes = body::read(req, MAX_BODY).await?;
    let imp: Impression = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_impression", format!("invalid impression body: {e}")))?;
    let config = Config::get(env);
    let now_ms = js_sys::Date::now();
    let plan = plans::get(env, &config, &imp.placement, now_ms).await?;
    let p = plan.plan();
    if sampled(imp.request_id.as_str(), p.sample_rate) {
        let country = crate::ad::edge_country(req);
        let event = Event {
            kind: EventKind::Impression,
            event_time_ms: now_ms as u64,
            request_id: imp.request_id,
            placement: imp.placement,
            ad_id: Some(imp.ad_id),
            plan_version: p.version,
            sample_rate: p.sample_rate,
            eligible: Vec::new(),
            platform: None,
            country,
            colo: crate::ad::edge_colo(req),
        };
        forward::enqueue(ctx, &config, event);
    }
    Ok(respond::no_content()?)
}
