//! allot's edge worker: a thin Wasm shell around `allot-core`.
//!
//! Routes:
//! - `GET /v1/ad?placement=…[&platform=…][&country=…][&request_id=…]` ([`ad`]): choose
//!   an ad from the placement's plan.
//! - `POST /v1/impression` ([`impression`]): the app reports an ad shown.
//! - `PUT /internal/plans/{placement}` ([`push`]): the origin publishes a plan.
//! - `GET /healthz`: liveness and this isolate's plan cache; its event counters only
//!   with the `HEALTH_KEY` ([`health`]).
//! - `OPTIONS` on the public routes: CORS preflights from browser apps ([`cors`]).
//! - `GET /internal/trap`: only with the `TEST_TRAPS` binding, a deliberate panic for
//!   the recovery tests ([`trap`]).
//!
//! The worker decides nothing itself: core chooses, samples, writes the response body,
//! builds events and signs them. What lives here is what only the edge can do — the
//! isolate's plan cache ([`plans`]), the event outbox ([`forward`]), and turning
//! requests into core calls with as few JS↔Wasm crossings as possible. Every failure
//! is an [`error::ApiError`], rendered as JSON in one place.
//!
//! The fetch handler is exported directly rather than through `#[event(fetch)]`: an
//! async export costs every request a Promise and a trip through the futures executor,
//! while a warm `/v1/ad` has nothing to wait for. It returns the `Response` itself when
//! it can answer at once and a Promise only when it must wait (KV, request bodies).
//! workerd calls it through the worker's own entry module (`worker/entry.mjs`), which
//! also replaces the instance after a trap; workers-rs' start function still installs
//! its panic hook, which tells the entry module at the moment of a panic.

use wasm_bindgen::JsValue;
use wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen_futures::future_to_promise;
use worker::{Context, Env};

mod ad;
mod body;
mod config;
mod cors;
mod error;
mod forward;
mod health;
mod impression;
mod outbox;
mod plans;
mod push;
pub mod query;
mod respond;
mod rng;
mod trap;

use config::Config;
use error::ApiError;

const PUSH_PREFIX: &str = "/internal/plans/";

/// What the handler may answer without awaiting: a warm `/v1/ad`, `/healthz`, and
/// every input error on those routes. `Ok(None)`: take the async path.
fn route_now(
    req: &web_sys::Request,
    method: &str,
    target: query::Target<'_>,
    env: &Env,
    ctx: &Context,
) -> Result<Option<web_sys::Response>, ApiError> {
    match (target.path, method) {
        ("/v1/ad", "GET") => ad::serve_now(req, target.query, env, ctx),
        ("/healthz", "GET") => {
            // Any request may carry the outbox's retries; a health probe too.
            forward::kick(ctx, &Config::get(env), js_sys::Date::now() as u64);
            health::answer(req, &Config::get(env)).map(Some)
        }
        (path @ ("/v1/ad" | "/v1/impression"), "OPTIONS") => preflight(req, path, env).map(Some),
        (trap::PATH, "GET") => match trap::requested(env, target.query) {
            Some(when) => trap::now(when?, ctx),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// Answers a CORS preflight; an `OPTIONS` that is not one is a wrong method.
fn preflight(req: &web_sys::Request, path: &str, env: &Env) -> Result<web_sys::Response, ApiError> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let (Some(origin), Some(wanted)) = (header("origin"), header("access-control-request-method")) else {
        return Err(ApiError::method_not_allowed(if path == "/v1/ad" { "GET" } else { "POST" }));
    };
    let granted = Config::get(env).cors.preflight(path, &origin, &wanted)?;
    Ok(respond::preflight(&granted)?)
}

/// The `Access-Control-Allow-Origin` this request's answer carries, if any. The
/// `Origin` header is read only when CORS is configured.
fn cross_origin(req: &web_sys::Request, path: &str, env: &Env) -> Option<String> {
    let config = Config::get(env);
    if !config.cors.enabled() {
        return None;
    }
    let origin = req.headers().get("origin").ok().flatten()?;
    config.cors.allow_origin(path, &origin)
}

async fn route(
    req: &web_sys::Request,
    method: &str,
    target: query::Target<'_>,
    env: &Env,
    ctx: &Context,
) -> Result<web_sys::Response, ApiError> {
    match target.path {
        "/v1/ad" => match method {
            "GET" => ad::serve_after_load(req, target.query, env, ctx).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        "/v1/impression" => match method {
            "POST" => impression::serve(req, env, ctx).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        "/healthz" => match method {
            "GET" => health::answer(req, &Config::get(env)),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        trap::PATH if method == "GET" && trap::requested(env, target.query).is_some() => trap::later(env).await,
        path => match path.strip_prefix(PUSH_PREFIX) {
            Some(placement) if !placement.contains('/') => match method {
                "PUT" => push::serve(req, placement, env).await,
                _ => Err(ApiError::method_not_allowed("PUT")),
            },
            _ => Err(ApiError::not_found("not_found", format!("no route for {path}"))),
        },
    }
}

/// The response, or the error rendered as one, with its CORS header; a rejected
/// Promise only if even that fails.
fn finish(result: Result<web_sys::Response, ApiError>, allow_origin: Option<&str>) -> JsValue {
    let response = result.or_else(|e| e.to_response()).and_then(|response| {
        if let Some(allow) = allow_origin {
            respond::allow_cross_origin(&response, allow)?;
        }
        Ok(response)
    });
    match response {
        Ok(response) => response.into(),
        Err(e) => js_sys::Promise::reject(&JsValue::from(e)).into(),
    }
}

/// The worker's fetch handler (called by `worker/entry.mjs` with the request, the
/// environment and the execution context): a `Response` or a `Promise` of one.
#[wasm_bindgen]
pub fn fetch(req: web_sys::Request, env: Env, ctx: worker::worker_sys::Context) -> JsValue {
    let ctx = Context::new(ctx);
    let url = req.url();
    let method = req.method();
    let target = query::Target::parse(&url);
    let allow_origin = cross_origin(&req, target.path, &env);
    match route_now(&req, &method, target, &env, &ctx) {
        Ok(Some(response)) if allow_origin.is_none() => response.into(),
        Ok(Some(response)) => finish(Ok(response), allow_origin.as_deref()),
        Err(e) => finish(Err(e), allow_origin.as_deref()),
        Ok(None) => {
            let later = async move {
                let response = route(&req, &method, query::Target::parse(&url), &env, &ctx).await;
                Ok(finish(response, allow_origin.as_deref()))
            };
            future_to_promise(later).into()
        }
    }
}
