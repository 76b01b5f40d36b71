//! The OpenAPI document, generated from the handlers' annotations (`utoipa`), so it
//! cannot drift from the routes it describes.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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

#[derive(OpenApi)]
#[openapi(
    info(title = "allot origin", description = "Event ingest and placement administration."),
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
    ),
    components(schemas(
        crate::admin::PlacementList,
        crate::admin::PlacementSummary,
        crate::status::PlacementStatus,
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
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
