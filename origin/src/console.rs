//! The manager console: a page and its script and style, compiled into the binary (no
//! build step, nothing to deploy beside the origin), served at `/console`. It speaks
//! only the admin API, with the bearer token the user types in, so it can do nothing a
//! token could not do with curl: viewers read, managers write.
//!
//! The assets forbid everything but themselves and this origin's API (a strict
//! Content-Security-Policy, no inline script), so an injected campaign id or creative
//! cannot run in a manager's browser.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::startup::App;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");
/// The edge's contract, served beside the origin's so one reference page shows both.
const EDGE_OPENAPI: &str = include_str!("../../worker/openapi.json");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new binary brings new assets: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `/console` and its assets, the edge's OpenAPI document; `/` leads to the console.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/console") }))
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/openapi-edge.json", get(edge_openapi))
}

/// The edge worker's OpenAPI document (`worker/openapi.json`, checked against the
/// worker by its tests).
#[utoipa::path(get, path = "/openapi-edge.json", tag = "ops", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub async fn edge_openapi() -> Response {
    asset("application/json", EDGE_OPENAPI)
}
