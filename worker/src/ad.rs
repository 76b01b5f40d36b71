//! `GET /v1/ad`: the hot path.
//!
//! One crossing brings the URL in, the query is read in Wasm, the plan comes from the
//! isolate cache, core chooses (with the placement's spread, so that each campaign's
//! count follows its weight to a few requests: [`plans::choose`]) and writes the
//! pre-serialised body, and one crossing builds the response. The edge's geolocation is
//! read only when the query has no country, and the colo only for sampled requests.
//!
//! Sampling is keyed ([`allot_core::SampleKey`] under `EDGE_KEY`), so the request id an
//! app chooses does not let it choose whether it is sampled. Every ad comes with its
//! impression token ([`allot_core::token`]), without which `/v1/impression` counts
//! nothing — except to an app that said it reports none (`impressions=none`): it gets
//! no token, and its sampled allocations are marked so the origin keeps them out of the
//! base of render ratios ([`allot_core::Event::unreported`]). The token carries the
//! request's platform as the allocation event does (one normalisation:
//! [`RequestAttrs::event_platform`]), so the impression counts in its allocation's
//! platform. A platform outside the plan's vocabulary is `other` for all three
//! ([`CompiledPlan::resolve`]), so an app naming a new platform per request cannot grow
//! the origin's windows.

use std::borrow::Cow;
use std::rc::Rc;

use allot_core::token::{self, Issue, Subject};
use allot_core::{CompiledPlan, PlacementId, RequestAttrs, RequestId};
use worker::worker_sys::ext::RequestExt;
use worker::{Context, Env};

use crate::config::Config;
use crate::error::ApiError;
use crate::{forward, plans, query, respond, rng};

/// The edge's own idea of the client's country, if it names one: Cloudflare says `XX`
/// for unknown and `T1` for Tor, and neither may match a campaign's country list.
pub(crate) fn edge_country(req: &web_sys::Request) -> Option<String> {
    let country = req.cf()?.country().ok()??;
    (country != "XX" && RequestAttrs::parse(None, Some(&country)).is_ok()).then(|| country.to_ascii_uppercase())
}

/// The colo serving the request, read as a plain property: the typed getter throws when
/// `cf` has no colo (plain workerd, `wrangler dev`), and a thrown exception costs about
/// two whole requests (≈ 100 µs) on every sampled one.
pub(crate) fn edge_colo(req: &web_sys::Request) -> Option<String> {
    let cf = req.cf()?;
    let colo = js_sys::Reflect::get(&cf, &wasm_bindgen::JsValue::from_str("colo")).ok()?.as_string()?;
    (!colo.is_empty() && colo.len() <= 16 && colo.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(colo)
}

/// A validated `/v1/ad` request. Borrows from the URL string where it can.
struct AdRequest<'a> {
    placement: PlacementId,
    platform: Option<Cow<'a, str>>,
    country: Option<Cow<'a, str>>,
    request_id: RequestId,
    /// `impressions=none`: the app reports no impressions.
    unreported: bool,
}

impl AdRequest<'_> {
    fn attrs(&self) -> RequestAttrs<'_> {
        // Checked by `RequestAttrs::parse` in `parse`.
        RequestAttrs { platform: self.platform.as_deref(), country: self.country.as_deref() }
    }
}

fn parse<'a>(req: &web_sys::Request, query_string: &'a str) -> Result<AdRequest<'a>, ApiError> {
    let [placement, platform, country, request_id, impressions] =
        query::params(query_string, ["placement", "platform", "country", "request_id", "impressions"])
            .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    let placement = placement.ok_or_else(|| ApiError::bad_request("missing_placement", "placement is required"))?;
    let placement =
        PlacementId::parse(placement.as_ref()).map_err(|e| ApiError::bad_request("bad_placement", e.to_string()))?;
    let country = match country {
        Some(c) => Some(c),
        None => edge_country(req).map(Cow::Owned),
    };
    RequestAttrs::parse(platform.as_deref(), country.as_deref())
        .map_err(|e| ApiError::bad_request("bad_attributes", e.to_string()))?;
    let request_id = match request_id {
        Some(id) => {
            RequestId::parse(id.as_ref()).map_err(|e| ApiError::bad_request("bad_request_id", e.to_string()))?
        }
        None => RequestId::from_random(rng::bits128()),
    };
    let unreported = match impressions.as_deref() {
        None | Some("reported") => false,
        Some("none") => true,
        Some(_) => return Err(ApiError::bad_request("bad_impressions", "impressions is \"reported\" or \"none\"")),
    };
    Ok(AdRequest { placement, platform, country, request_id, unreported })
}

/// Chooses, answers, and queues the event if the request is sampled.
fn answer(
    req: &web_sys::Request,
    ctx: &Context,
    config: &Rc<Config>,
    plan: &Rc<CompiledPlan>,
    ad: AdRequest<'_>,
    now_ms: f64,
) -> Result<web_sys::Response, ApiError> {
    let attrs = plan.resolve(ad.attrs());
    let choice = plans::choose(plan, attrs);
    let p = plan.plan();
    let key = config.edge_key();
    // A coin of its own for every request, whatever id the app sent (`allot_core::sample`).
    let sampled = key.is_some_and(|k| k.sample().decide(rng::bits64(), p.sample_rate));
    let token = match (key, choice.ad.and_then(|i| p.campaigns.get(i))) {
        (Some(key), Some(c)) if !ad.unreported => {
            let subject = Subject { request_id: &ad.request_id, placement: &p.placement, ad: &c.id };
            let issue =
                Issue { plan_version: p.version, sample_rate: p.sample_rate, issued_at_ms: now_ms as u64, sampled };
            Some(token::issue_for_platform(key, subject, issue, attrs.event_platform()))
        }
        _ => None,
    };
    let mut body = String::with_capacity(256);
    plan.write_response(&mut body, ad.request_id.as_str(), choice.ad, token.as_deref());
    if sampled {
        let event =
            plan.allocation_event(ad.request_id.clone(), choice, attrs, now_ms as u64, edge_colo(req), ad.unreported);
        forward::enqueue(ctx, config, event);
    } else {
        // Events waiting for an origin that was down leave with any request.
        forward::kick(ctx, config, now_ms as u64);
    }
    Ok(respond::ok_json(body)?)
}

/// The warm path: answers without awaiting anything when the placement's plan is in
/// the isolate cache. `Ok(None)` means the plan must be loaded first: call
/// [`serve_after_load`].
pub fn serve_now(
    req: &web_sys::Request,
    query_string: &str,
    env: &Env,
    ctx: &Context,
) -> Result<Option<web_sys::Response>, ApiError> {
    let ad = parse(req, query_string)?;
    let config = Config::get(env);
    let now_ms = js_sys::Date::now();
    match plans::lookup(&config, &ad.placement, now_ms) {
        Some(plan) => answer(req, ctx, &config, &plan?, ad, now_ms).map(Some),
        None => Ok(None),
    }
}

/// The cold path: reads the plan from KV, then answers.
pub async fn serve_after_load(
    req: &web_sys::Request,
    query_string: &str,
    env: &Env,
    ctx: &Context,
) -> Result<web_sys::Response, ApiError> {
    let ad = parse(req, query_string)?;
    let config = Config::get(env);
    let now_ms = js_sys::Date::now();
    let plan = plans::load(env, &config, &ad.placement, now_ms).await?;
    answer(req, ctx, &config, &plan, ad, now_ms)
}
