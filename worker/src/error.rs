//! The worker's one error type and the one place errors become HTTP responses.
//!
//! Every failure a handler can meet — bad input, an unknown placement, a refused
//! signature, a KV outage — is an [`ApiError`] carrying its status and a stable
//! machine-readable code. [`ApiError::to_response`] renders all of them the same way:
//! `{"error": {"code", "message"}}`, so clients never see a bare text error or a panic.

use crate::respond;

/// A request that could not be served, with the status and code the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// `Allow` header value for 405 answers.
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), allow: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "bad_signature", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self { allow: Some(allow), ..Self::new(405, "method_not_allowed", format!("use {allow}")) }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "body_too_large", format!("the body may be at most {limit} bytes"))
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The JSON body: `{"error":{"code":…,"message":…}}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }

    pub fn to_response(&self) -> worker::Result<web_sys::Response> {
        if self.status >= 500 {
            worker::console_error!("{self}");
        }
        respond::json_with(self.status, &self.body(), self.allow)
    }
}

impl From<worker::Error> for ApiError {
    fn from(e: worker::Error) -> Self {
        Self::internal(e.to_string())
    }
}
