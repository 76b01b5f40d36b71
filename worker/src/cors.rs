//! Cross-origin access for browser apps.
//!
//! A web app calls `/v1/ad` and `/v1/impression` from its own origin, so the browser
//! asks first (a preflight for the JSON `POST`) and then shows the app a response only
//! if it names the app's origin. The allowed origins are configuration
//! (`CORS_ORIGINS`): an allowed origin gets `Access-Control-Allow-Origin` naming it,
//! with `Vary: Origin` because the answer depends on the header; `*` allows every
//! origin. A disallowed origin gets no CORS header at all, so the browser withholds
//! the response, and its preflight is refused with a JSON `403`. Internal routes
//! (plan pushes, `/healthz`) never answer cross-origin.
//!
//! CORS is a browser courtesy, not a defence: a script outside a browser ignores it.
//! What protects the counts is the impression token and the keyed sampling.

use crate::error::ApiError;

/// The public routes and the method each takes.
const ROUTES: [(&str, &str); 2] = [("/v1/ad", "GET"), ("/v1/impression", "POST")];
/// How long a browser may reuse a preflight's answer.
const MAX_AGE_SECS: &str = "86400";

/// The configured policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    any: bool,
    /// Lower-case `scheme://host[:port]`, without a trailing slash.
    origins: Vec<String>,
}

fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl Cors {
    /// `list`: comma-separated origins (`https://app.example`), or `*`. Blank entries
    /// are ignored; an empty list turns CORS off.
    pub fn parse(list: &str) -> Self {
        let entries: Vec<String> = list.split(',').map(normalise).filter(|o| !o.is_empty()).collect();
        Self { any: entries.iter().any(|o| o == "*"), origins: entries.into_iter().filter(|o| o != "*").collect() }
    }

    /// Whether any origin is allowed (otherwise the `Origin` header is never read).
    pub fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin` to `path`,
    /// or `None` when it gets no CORS headers.
    pub fn allow_origin(&self, path: &str, origin: &str) -> Option<String> {
        if !ROUTES.iter().any(|(p, _)| *p == path) {
            return None;
        }
        if self.any {
            return Some("*".to_owned());
        }
        let wanted = normalise(origin);
        self.origins.contains(&wanted).then_some(wanted)
    }

    /// The answer to a preflight for `path`: the origin to allow and the route's
    /// method, or the error to send.
    pub fn preflight(&self, path: &str, origin: &str, method: &str) -> Result<Preflight, ApiError> {
        let Some(&(_, route_method)) = ROUTES.iter().find(|(p, _)| *p == path) else {
            return Err(ApiError::not_found("not_found", format!("no route for {path}")));
        };
        let allow_origin = self
            .allow_origin(path, origin)
            .ok_or_else(|| ApiError::forbidden("cors_forbidden", format!("origin {origin:?} may not call {path}")))?;
        if !method.eq_ignore_ascii_case(route_method) {
            return Err(ApiError::forbidden("cors_forbidden", format!("{path} takes {route_method}, not {method}")));
        }
        Ok(Preflight { allow_origin, method: route_method })
    }
}

/// A granted preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    pub allow_origin: String,
    pub method: &'static str,
}

impl Preflight {
    /// The headers of the `204` answer.
    pub fn headers(&self) -> [(&'static str, &str); 4] {
        [
            ("access-control-allow-origin", &self.allow_origin),
            ("access-control-allow-methods", self.method),
            ("access-control-allow-headers", "content-type"),
            ("access-control-max-age", MAX_AGE_SECS),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn only_listed_origins_on_public_routes() {
        let cors = Cors::parse(" https://App.example/ , https://other.example:8443,,");
        assert!(cors.enabled());
        assert_eq!(cors.allow_origin("/v1/ad", "https://app.example"), Some("https://app.example".into()));
        assert_eq!(
            cors.allow_origin("/v1/impression", "HTTPS://OTHER.example:8443"),
            Some("https://other.example:8443".into())
        );
        assert_eq!(cors.allow_origin("/v1/ad", "https://evil.example"), None);
        assert_eq!(cors.allow_origin("/v1/ad", "https://app.example.evil"), None);
        assert_eq!(cors.allow_origin("/internal/plans/x", "https://app.example"), None);
        assert_eq!(cors.allow_origin("/healthz", "https://app.example"), None);
    }

    #[wasm_bindgen_test]
    fn star_and_off() {
        assert_eq!(Cors::parse("*").allow_origin("/v1/ad", "https://any.example"), Some("*".into()));
        let off = Cors::parse("  ");
        assert!(!off.enabled());
        assert_eq!(off.allow_origin("/v1/ad", "https://app.example"), None);
    }

    #[wasm_bindgen_test]
    fn preflights() {
        let cors = Cors::parse("https://app.example");
        let ok = cors.preflight("/v1/impression", "https://app.example", "post").unwrap();
        assert_eq!(ok, Preflight { allow_origin: "https://app.example".into(), method: "POST" });
        assert_eq!(cors.preflight("/v1/ad", "https://app.example", "DELETE").unwrap_err().status, 403);
        assert_eq!(cors.preflight("/v1/ad", "https://evil.example", "GET").unwrap_err().code, "cors_forbidden");
        assert_eq!(cors.preflight("/internal/plans/p", "https://app.example", "PUT").unwrap_err().status, 404);
    }
}
