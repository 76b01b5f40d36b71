//! `POST /v1/impression`: the app reports that an ad was actually shown.
//!
//! Delivery is measured on impressions where apps report them, so a report counts only
//! with the impression token its ad came with (`/v1/ad`): it names exactly the request,
//! placement and ad, was issued by an edge at most `token::MAX_AGE_MS` ago, and carries
//! the plan version and rate the allocation was decided under, and the request's
//! platform. The impression is then sampled exactly when its allocation was (under the
//! key that decided it) and sent, in the same signed batches, as an event of the
//! allocation's version, rate and platform: the app sends nothing but the token. A token
//! this isolate has already accepted is refused at once, and so is a report for a
//! placement the edge no longer serves; the origin counts at most one
//! impression per request whichever edge a replay reaches.

use std::cell::RefCell;

use allot_core::token::{self, SeenTokens, Subject, TokenError};
use allot_core::{CampaignId, PlacementId, RequestId};
use serde::Deserialize;
use worker::{Context, Env};

use crate::config::Config;
use crate::error::ApiError;
use crate::{body, forward, plans, respond};

const MAX_BODY: usize = 4 * 1024;
/// Tokens this isolate remembers (16 bytes each, plus their expiry).
const SEEN_CAPACITY: usize = 16_384;

thread_local! {
    static SEEN: RefCell<SeenTokens> = RefCell::new(SeenTokens::new(SEEN_CAPACITY));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Impression {
    request_id: RequestId,
    placement: PlacementId,
    ad_id: CampaignId,
    impression_token: String,
}

fn refused(e: TokenError) -> ApiError {
    match e {
        TokenError::Malformed => ApiError::bad_request("bad_token", e.to_string()),
        TokenError::Invalid => ApiError::forbidden("invalid_token", e.to_string()),
        TokenError::Expired => ApiError::forbidden("expired_token", e.to_string()),
    }
}

pub async fn serve(req: &web_sys::Request, env: &Env, ctx: &Context) -> Result<web_sys::Response, ApiError> {
    let bytes = body::read(req, MAX_BODY).await?;
    let imp: Impression = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_impression", format!("invalid impression body: {e}")))?;
    let config = Config::get(env);
    if config.edge_keys.is_empty() {
        return Err(ApiError::unavailable("not_configured", "this edge cannot verify impression tokens"));
    }
    let now_ms = js_sys::Date::now() as u64;
    let subject = Subject { request_id: &imp.request_id, placement: &imp.placement, ad: &imp.ad_id };
    let grant = token::verify(&config.edge_keys, &imp.impression_token, subject, now_ms).map_err(refused)?;
    // The placement must still be served: a deleted one is answered like an unknown one.
    plans::get(env, &config, &imp.placement, now_ms as f64).await?;
    if !SEEN.with(|s| s.borrow_mut().first_use(&grant, now_ms)) {
        return Err(ApiError::conflict("duplicate_impression", "this impression was already reported"));
    }
    if grant.issue.sampled {
        let event = grant.impression_event(subject, crate::ad::edge_country(req), crate::ad::edge_colo(req));
        forward::enqueue(ctx, &config, event);
    }
    Ok(respond::no_content()?)
}
