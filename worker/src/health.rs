//! `GET /healthz`: liveness for anyone, the outbox's counters for operators.
//!
//! The counters move by one with every sampled request of the isolate, so an app that
//! could read them around its own request would learn whether that request was sampled
//! before showing its ad, the very decision the impression token hides
//! ([`allot_core::token`]): it could show only the ads that are counted. They are shown
//! only to a request bearing the `HEALTH_KEY` secret (`Authorization: Bearer …`),
//! compared in constant time; without the key, or without a `HEALTH_KEY` configured,
//! the answer is `{"status", "plans_cached"}`.

use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ApiError;
use crate::{forward, plans, respond};

/// Whether `req` bears the health key.
fn authorised(req: &web_sys::Request, config: &Config) -> bool {
    let Some(key) = config.health_key.as_deref() else { return false };
    let header = req.headers().get("authorization").ok().flatten();
    let Some(given) = header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) else { return false };
    equal(given.as_bytes(), key)
}

/// Constant time (`subtle`): no early exit on the first differing byte.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

pub fn answer(req: &web_sys::Request, config: &Config) -> Result<web_sys::Response, ApiError> {
    let mut body = serde_json::json!({ "status": "ok", "plans_cached": plans::cached() });
    if authorised(req, config) {
        body["events"] = serde_json::to_value(forward::counters()).unwrap_or_default();
        body["plans_cached_bytes"] = plans::cached_bytes().into();
    }
    Ok(respond::json_with(200, &body.to_string(), None)?)
}

#[cfg(test)]
mod tests {
    use super::equal;

    #[test]
    fn keys_compare_whole() {
        assert!(equal(b"health-key-0123456789", b"health-key-0123456789"));
        assert!(!equal(b"health-key-0123456788", b"health-key-0123456789"));
        assert!(!equal(b"health-key-012345678", b"health-key-0123456789"));
        assert!(!equal(b"", b"health-key-0123456789"));
    }
}
