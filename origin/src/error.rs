//! The one error type of the HTTP API, and its mapping to responses.
//!
//! Handlers return `Result<_, ApiError>`; this is the only place that turns an error
//! into a status code and the `{"error": {"code", "message"}}` body. Server-side
//! failures (Redis down, a corrupt stored value) are logged with their cause and shown
//! to the client only as a stable code.
//!
//! axum's own extractors answer in `text/plain`; [`Api`] wraps one so its rejection
//! comes here instead, and every answer of the API, including a malformed query string
//! or path, has the same JSON shape.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The one error format of the API: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "validation_failed", "field": "campaigns[1].rate", "message": "campaigns[1].rate: must be between 0 and 1 (got 1.5)"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `unauthorized`, `forbidden`, `not_found`,
    /// `validation_failed`, `precondition_failed`, `payload_too_large`, `unavailable`, …
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// The offending field of a 422, as a path into the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A list route's `limit`: `default` when absent, refused outside `1..=max`, so a
/// client that asks for more than a page learns it rather than getting less.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {max} (got {n})"))),
    }
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this token may not {0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the resource changed since it was read (ETag {current})")]
    PreconditionFailed { current: String },
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("storage unavailable")]
    Unavailable(#[source] redis::RedisError),
    /// The request was not answered within the server's request timeout.
    #[error("the request was not answered within {after_ms} ms")]
    Timeout { after_ms: u64 },
    /// Shed: the ingest holds as many bodies as its memory budget allows; the same
    /// request may be sent again after `Retry-After`.
    #[error("too many bodies in flight; retry after {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// The process is up but cannot serve yet (a readiness probe's answer).
    #[error("{0}")]
    NotReady(std::borrow::Cow<'static, str>),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation { field: field.into(), message: message.into() }
    }

    /// A request body that could not be read whole: larger than `limit`, or cut off.
    pub fn body_read(e: &axum::Error, limit: usize) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return Self::PayloadTooLarge { limit };
            }
            source = err.source();
        }
        Self::bad_request("body_read_failed", format!("could not read the body: {e}"))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            Self::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e)
    }
}

/// A query string that does not fit the handler's parameters: the client's mistake.
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::bad_request("invalid_query", e.body_text())
    }
}

/// A path segment that does not decode (e.g. percent-encoded bytes that are not UTF-8)
/// is the client's; a route declared without the parameter is ours.
impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        if e.status().is_server_error() {
            Self::Internal(e.body_text())
        } else {
            Self::bad_request("invalid_path", e.body_text())
        }
    }
}

/// An axum extractor whose rejection is answered as an [`ApiError`]:
/// `Api(Query(q)): Api<Query<T>>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Api<E>(pub E);

impl<E, S> FromRequestParts<S> for Api<E>
where
    E: FromRequestParts<S>,
    ApiError: From<E::Rejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        E::from_request_parts(parts, state).await.map(Self).map_err(ApiError::from)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Unavailable(e) => tracing::error!(error = %e, "redis request failed"),
            Self::Internal(cause) => tracing::error!(cause = %cause, "internal error"),
            _ => {}
        }
        let field = match &self {
            Self::Validation { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody { error: ErrorDetail { code: code.to_string(), message: self.to_string(), field } };
        let mut response = (status, Json(body)).into_response();
        match self {
            Self::Unauthorized(_) => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Overloaded { retry_after_secs } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::extract::{Path, Query};
    use axum::http::{Request, Uri};

    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn query_rejections_are_json_400s() {
        let uri: Uri = "/v1/audit?limit=ten".parse().unwrap();
        let rejection = Query::<HashMap<String, usize>>::try_from_uri(&uri).unwrap_err();
        let (status, v) = answer(rejection.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "invalid_query");
        assert!(v["error"]["message"].as_str().unwrap().contains("invalid digit"), "{v}");
    }

    #[tokio::test]
    async fn a_route_without_the_parameter_is_internal() {
        let (mut parts, ()) = Request::new(()).into_parts();
        let rejection = Path::<String>::from_request_parts(&mut parts, &()).await.unwrap_err();
        let (status, v) = answer(rejection.into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error"]["code"], "internal");
    }

    #[tokio::test]
    async fn not_ready_and_method_not_allowed() {
        let (status, v) = answer(ApiError::NotReady("redis unreachable".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["code"], "not_ready");
        assert_eq!(v["error"]["message"], "redis unreachable");
        let (status, v) = answer(ApiError::MethodNotAllowed).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(v["error"]["code"], "method_not_allowed");
    }
}
