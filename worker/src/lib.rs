//! allot's edge worker: a thin Wasm shell around `allot-core`.
//!
//! Routes:
//! - `GET /v1/ad?placement=…[&platform=…][&country=…][&request_id=…]` ([`ad`]): choose
//!   an ad from the placement's plan.
//! - `POST /v1/impression` ([`impression`]): the app reports an ad shown.
//! - `PUT /internal/plans/{placement}` ([`push`]): the origin publishes a plan.
//! - `GET /healthz`: liveness, with this isolate's cache and event counters.
//!
//! The worker decides nothing itself: core chooses, samples, writes the response body,
//! builds events and signs them. What lives here is what only the edge can do — the
//! isolate's plan cache ([`plans`]), the event outbox ([`forward`]), and turning
//! requests into core calls with as few JS↔Wasm crossings as possible. Every failure
//! is an [`error::ApiError`], rendered as JSON in one place.

use worker::{Context, Env, event};

mod ad;
mod body;
mod config;
mod error;
mod forward;
mod impression;
mod plans;
mod push;
pub mod query;
mod respond;
mod rng;

use error::ApiError;

const PUSH_PREFIX: &str = "/internal/plans/";

async fn route(req: &web_sys::Request, env: &Env, ctx: &Context) -> Result<web_sys::Response, ApiError> {
    let url = req.url();
    let target = query::Target::parse(&url);
    let method = req.method();
    match target.path {
        "/v1/ad" => match method.as_str() {
            "GET" => ad::serve(req, target.query, env, ctx).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        "/v1/impression" => match method.as_str() {
            "POST" => impression::serve(req, env, ctx).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        "/healthz" => match method.as_str() {
            "GET" => health(),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        path => match path.strip_prefix(PUSH_PREFIX) {
            Some(placement) if !placement.contains('/') => match method.as_str() {
                "PUT" => push::serve(req, placement, env).await,
                _ => Err(ApiError::method_not_allowed("PUT")),
            },
            _ => Err(ApiError::not_found("not_found", format!("no route for {path}"))),
        },
    }
}

fn health() -> Result<web_sys::Response, ApiError> {
    let body = serde_json::json!({
        "status": "ok",
        "plans_cached": plans::cached(),
        "events": forward::counters(),
    });
    Ok(respond::json_with(200, &body.to_string(), None)?)
}

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> worker::Result<web_sys::Response> {
    match route(&req, &env, &ctx).await {
        Ok(response) => Ok(response),
        Err(e) => e.to_response(),
    }
}
