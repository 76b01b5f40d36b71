//! Admin bearer tokens and roles.
//!
//! The config stores only SHA-256 hashes of tokens, so a leaked config file grants
//! nothing. A request without a valid token is `401` (who are you?); a valid viewer token
//! on a write is `403` (you may not).
//!
//! Handlers state the role they need in their signature, by taking a [`Viewer`] or a
//! [`Manager`] argument: a handler cannot forget the check, and the check itself lives
//! in one place, [`Auth::check`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use crate::config::{Role, TokenConfig};
use crate::error::ApiError;
use crate::startup::App;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The configured tokens, by hash.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    by_hash: HashMap<String, Caller>,
}

/// The lower-case hex SHA-256 of a token, as stored in the config.
pub fn token_hash(token: &str) -> String {
    allot_core::signature::hex(&Sha256::digest(token.as_bytes()))
}

impl Auth {
    pub fn new(tokens: &[TokenConfig]) -> Self {
        let by_hash = tokens
            .iter()
            .map(|t| (t.sha256.to_ascii_lowercase(), Caller { name: t.name.clone(), role: t.role }))
            .collect();
        Self { by_hash }
    }

    /// The caller, if the request carries a token with at least role `need`.
    pub fn check(&self, headers: &HeaderMap, need: Role) -> Result<Caller, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("missing Authorization: Bearer token"))?
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized("expected Authorization: Bearer <token>"))?;
        let caller = self.by_hash.get(&token_hash(token)).ok_or(ApiError::Unauthorized("unknown token"))?;
        if caller.role < need {
            return Err(ApiError::Forbidden(match need {
                Role::Manager => "change placements (manager role required)",
                Role::Viewer => "read",
            }));
        }
        Ok(caller.clone())
    }
}

/// A caller allowed to read (any valid token).
#[derive(Debug, Clone)]
pub struct Viewer(pub Caller);

/// A caller allowed to change placements.
#[derive(Debug, Clone)]
pub struct Manager(pub Caller);

impl FromRequestParts<Arc<App>> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        app.auth.check(&parts.headers, Role::Viewer).map(Self)
    }
}

impl FromRequestParts<Arc<App>> for Manager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        app.auth.check(&parts.headers, Role::Manager).map(Self)
    }
}

/// Who a token is: what the console asks first, to show reads or writes.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Me {
    pub name: String,
    /// `viewer` or `manager`.
    #[schema(pattern = "^(viewer|manager)$")]
    pub role: &'static str,
}

#[utoipa::path(
    get, path = "/v1/me", tag = "admin",
    responses((status = 200, body = Me), (status = 401)),
    security(("bearer" = []))
)]
pub async fn me(Viewer(caller): Viewer) -> axum::Json<Me> {
    axum::Json(Me { name: caller.name, role: caller.role.as_str() })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn roles_and_statuses() {
        let auth = Auth::new(&[
            TokenConfig { name: "v".into(), role: Role::Viewer, sha256: token_hash("view-token") },
            TokenConfig { name: "m".into(), role: Role::Manager, sha256: token_hash("manage-token").to_uppercase() },
        ]);
        assert_eq!(auth.check(&headers("Bearer view-token"), Role::Viewer).unwrap().name, "v");
        assert!(matches!(auth.check(&headers("Bearer view-token"), Role::Manager), Err(ApiError::Forbidden(_))));
        assert_eq!(auth.check(&headers("Bearer manage-token"), Role::Manager).unwrap().role, Role::Manager);
        assert!(matches!(auth.check(&headers("Bearer nope"), Role::Viewer), Err(ApiError::Unauthorized(_))));
        assert!(matches!(auth.check(&headers("Basic abc"), Role::Viewer), Err(ApiError::Unauthorized(_))));
        assert!(matches!(auth.check(&HeaderMap::new(), Role::Viewer), Err(ApiError::Unauthorized(_))));
        assert_eq!(token_hash("manager-token"), "3983202afa4411cda7cafc94a18aa1f6f620cfda5e9b0ab52c0f0d53a6be4315");
    }
}
