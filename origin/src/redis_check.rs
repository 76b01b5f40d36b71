//! What the origin needs from the Redis it is given, checked at start-up.
//!
//! A `202` from `/v1/events` means "in the stream"; it is only as durable as Redis's
//! persistence, and only as safe as its eviction policy. Redis that evicts keys when
//! full deletes stream entries, window counts and dedupe markers silently: counts go
//! wrong with no error anywhere. So the origin reads the settings (`CONFIG GET`) and:
//!
//! - **refuses to start** on an eviction policy other than `noeviction` (unless
//!   `redis.allow_unsafe` says the operator knows), naming the setting and the fix;
//! - **warns** when acknowledged events can be lost on a restart (no AOF, or AOF with
//!   `appendfsync no`), or when the settings cannot be read (managed Redis that
//!   disables `CONFIG`), and says what was not checked.
//!
//! The judgement is [`assess`], a pure function of the settings; [`check`] reads them.

use std::collections::HashMap;

use crate::conn::RedisConn;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Data can be lost silently in normal operation: refuse to start.
    Unsafe,
    /// Data can be lost on a crash or restart, or nothing could be checked.
    Warning,
}

/// One problem with the Redis settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    fn unsafe_(message: impl Into<String>) -> Self {
        Self { severity: Severity::Unsafe, message: message.into() }
    }

    fn warning(message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, message: message.into() }
    }
}

/// Judges `CONFIG GET` answers (missing keys count as unknown).
pub fn assess(settings: &HashMap<String, String>) -> Vec<Finding> {
    let get = |k: &str| settings.get(k).map(String::as_str);
    let mut out = Vec::new();
    match get("maxmemory-policy") {
        Some("noeviction") => {}
        Some(policy) => out.push(Finding::unsafe_(format!(
            "maxmemory-policy is {policy}: when Redis fills up it deletes keys (stream entries, window counts, \
             dedupe markers) and counts go wrong silently; set maxmemory-policy noeviction, so a full Redis \
             refuses writes (the edge retries) instead"
        ))),
        None => out.push(Finding::warning("could not read maxmemory-policy; it must be noeviction")),
    }
    match (get("appendonly"), get("appendfsync")) {
        (Some("yes"), Some("always" | "everysec")) => {}
        (Some("yes"), Some(fsync)) => out.push(Finding::warning(format!(
            "appendfsync is {fsync}: acknowledged events can be lost if the host crashes; use everysec \
             (at most about a second) or always"
        ))),
        (Some("no"), _) => out.push(Finding::warning(
            "appendonly is no: acknowledged events since the last snapshot are lost when Redis restarts; \
             set appendonly yes with appendfsync everysec",
        )),
        _ => out.push(Finding::warning("could not read appendonly/appendfsync; use appendonly yes, everysec")),
    }
    out
}

/// Reads the settings from `conn` (one node; on a cluster, the node the command lands
/// on) and judges them. A Redis that refuses `CONFIG` gets one warning.
pub async fn check(conn: &mut RedisConn) -> Vec<Finding> {
    let mut settings = HashMap::new();
    for key in ["maxmemory-policy", "appendonly", "appendfsync"] {
        match redis::cmd("CONFIG").arg("GET").arg(key).query_async::<HashMap<String, String>>(conn).await {
            Ok(pairs) => settings.extend(pairs),
            Err(e) => {
                return vec![Finding::warning(format!(
                    "could not read the Redis settings ({e}); make sure maxmemory-policy is noeviction and \
                     appendonly is yes"
                ))];
            }
        }
    }
    assess(&settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_safe_redis_has_no_findings() {
        for fsync in ["always", "everysec"] {
            let s = settings(&[("maxmemory-policy", "noeviction"), ("appendonly", "yes"), ("appendfsync", fsync)]);
            assert_eq!(assess(&s), []);
        }
    }

    #[test]
    fn eviction_is_unsafe_and_weak_persistence_a_warning() {
        let s = settings(&[("maxmemory-policy", "allkeys-lru"), ("appendonly", "no"), ("appendfsync", "everysec")]);
        let findings = assess(&s);
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].severity, Severity::Unsafe);
        assert!(findings[0].message.contains("allkeys-lru") && findings[0].message.contains("noeviction"));
        assert_eq!(findings[1].severity, Severity::Warning);
        assert!(findings[1].message.contains("appendonly is no"));
        let s = settings(&[("maxmemory-policy", "noeviction"), ("appendonly", "yes"), ("appendfsync", "no")]);
        assert!(
            matches!(&assess(&s)[..], [f] if f.severity == Severity::Warning && f.message.contains("appendfsync is no"))
        );
    }

    #[test]
    fn unknown_settings_are_warnings_not_refusals() {
        let findings = assess(&HashMap::new());
        assert_eq!(findings.len(), 2);
        assert!(findings.iter().all(|f| f.severity == Severity::Warning));
    }
}
