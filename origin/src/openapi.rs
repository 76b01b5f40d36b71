//! The OpenAPI document, generated from the handlers' annotations (`utoipa`), so it
//! cannot drift from the routes it describes. The request schemas come from core's types
//! (its `openapi` feature); every error status answers the one [`ErrorBody`], which a
//! modifier states once for every operation rather than each handler repeating it.
//!
//! `tests/it/contract.rs` holds the running binary to this document with schemathesis.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every 4xx/5xx of every operation answers [`ErrorBody`]; every operation that reads
/// Redis may answer 503 (storage unavailable, or the request timeout), and any may 500.
struct ErrorResponses;

fn status_text(status: &str) -> &'static str {
    match status {
        "400" => "Malformed request (query, path, header or body)",
        "401" => "Missing or unknown bearer token",
        "403" => "The token's role may not do this",
        "404" => "No such placement",
        "412" => "Stale If-Match",
        "413" => "Body too large",
        "422" => "A field is invalid: `error.field` names it",
        "500" => "Internal error",
        "503" => "Storage unavailable, or the request was not answered in time",
        _ => "Error",
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head]
        .into_iter()
        .flatten()
}

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = || ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops_route = !path.starts_with("/v1/");
            for op in operations(item) {
                let responses = &mut op.responses.responses;
                for status in ["500", "503"] {
                    if !ops_route || status == "500" {
                        responses.entry(status.into()).or_insert_with(|| ResponseBuilder::new().build().into());
                    }
                }
                for (status, response) in responses.iter_mut() {
                    if !(status.starts_with('4') || status.starts_with('5')) {
                        continue;
                    }
                    if let RefOr::T(r) = response {
                        if r.description.is_empty() {
                            r.description = status_text(status).into();
                        }
                        r.content.entry("application/json".into()).or_insert_with(error);
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "allot origin", description = "Event ingest, placement administration and operations."),
    paths(
        crate::ingest::post_events,
        crate::admin::put_placement,
        crate::admin::get_placement,
        crate::admin::delete_placement,
        crate::admin::list_placements,
        crate::status::get_status,
        crate::history::get_history,
        crate::preview::preview,
        crate::audit::get_audit,
        crate::auth::me,
        crate::startup::healthz,
        crate::startup::readyz,
        crate::startup::metrics,
        serve,
        crate::console::edge_openapi,
    ),
    components(schemas(
        ErrorBody,
        crate::error::ErrorDetail,
        allot_core::TargetsSpec,
        allot_core::PlacementId,
        allot_core::CampaignId,
        crate::admin::PlacementList,
        crate::admin::PlacementSummary,
        crate::status::PlacementStatus,
        crate::status::Health,
        crate::auth::Me,
        crate::status::CampaignStatus,
        crate::status::Estimate,
        crate::status::WindowSummary,
        crate::audit::AuditEntry,
        crate::audit::AuditPage,
        crate::history::HistoryPage,
        crate::history::WindowRecord,
        crate::preview::Preview,
        crate::preview::PreviewCampaign,
    )),
    tags(
        (name = "ingest", description = "Sampled events from the edge, signed with the ingest key"),
        (name = "admin", description = "Placements, their targets and delivery; viewer tokens read, manager tokens write"),
        (name = "ops", description = "Probes, metrics and this document; no token"),
    ),
    modifiers(&BearerAuth, &ErrorResponses)
)]
#[derive(Debug)]
pub struct ApiDoc;

/// This document, built and written once: it never changes while the process runs, and
/// anyone may ask for it.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub async fn serve() -> impl axum::response::IntoResponse {
    static DOC: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into()));
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOC.as_str())
}
