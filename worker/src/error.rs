//! The worker's one error type and the one place errors become HTTP responses.
//!
//! Every failure a handler can meet — bad input, an unknown placement, a refused
//! signature, a KV outage — is an [`ApiError`] carrying its status and a stable
//! machine-readable code. [`ApiError::to_response`] renders all of them the same way:
//! `{"error": {"code", "message"}}`, so clients never see a bare text error or a panic.
//! One refusal says a little more: a plan push refused for its version names the
//! version this edge holds (`held_version`), so the origin can publish above it rather
//! than guess.

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
    /// The plan version this edge holds, on a push refused for its version only.
    pub held_version: Option<u64>,
    /// `Retry-After` in seconds, on a refusal the same request may simply send again.
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), allow: None, held_version: None, retry_after_secs: None }
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

    /// A `409` refusing a plan push for its version (`stale_version`,
    /// `version_conflict`), naming the version held instead.
    pub fn version_refused(code: &'static str, message: impl Into<String>, held_version: u64) -> Self {
        Self { held_version: Some(held_version), ..Self::new(409, code, message) }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "body_too_large", format!("the body may be at most {limit} bytes"))
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }

    /// A `503 busy` with `Retry-After: 1`: the request was turned away unread because
    /// this isolate is already doing as much of the same as it allows itself.
    pub fn busy(message: impl Into<String>) -> Self {
        Self { retry_after_secs: Some(1), ..Self::new(503, "busy", message) }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The JSON body: `{"error":{"code":…,"message":…}}`, and `"held_version":…` in
    /// it only when there is one.
    pub fn body(&self) -> String {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(held) = self.held_version {
            error["held_version"] = held.into();
        }
        serde_json::json!({ "error": error }).to_string()
    }

    pub fn to_response(&self) -> worker::Result<web_sys::Response> {
        if self.status >= 500 {
            worker::console_error!("{self}");
        }
        let response = respond::json_with(self.status, &self.body(), self.allow)?;
        // Set on the finished response, as the CORS headers are: a rare answer pays
        // the one crossing, every other answer nothing.
        if let Some(secs) = self.retry_after_secs {
            response.headers().set("retry-after", &secs.to_string())?;
        }
        Ok(response)
    }
}

impl From<worker::Error> for ApiError {
    fn from(e: worker::Error) -> Self {
        Self::internal(e.to_string())
    }
}
