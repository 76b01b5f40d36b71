//! Where the archive lives and how the archiver batches: one serde-deserialisable struct
//! that the origin embeds in its own configuration.
//!
//! Endpoint override and path-style addressing exist for S3-compatible servers (the local
//! `s3s-fs` in tests); in AWS both stay unset. Credentials are optional: without them the
//! standard AWS chain (environment, instance role) is used. The secret key is a
//! [`SecretString`], which never appears in `Debug` output or logs (the origin holds its
//! own secrets the same way).

use std::time::Duration;

use allot_core::contract::stream;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ArchiveError;

/// The archive's S3 location, credentials and the archiver's batching.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// S3 endpoint override, e.g. `http://127.0.0.1:9000` for a local server.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Key prefix before `events/`, e.g. `prod/` (a missing trailing `/` is added).
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most local servers.
    #[serde(default)]
    pub path_style: bool,
    /// Flush once the buffer holds this many events.
    #[serde(default = "default_flush_max_rows")]
    pub flush_max_rows: usize,
    /// Flush once the oldest buffered entry is this old.
    #[serde(default = "default_flush_max_age_secs")]
    pub flush_max_age_secs: u64,
    /// Upper bound of the retry backoff while S3 or Redis is unavailable.
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// The event stream (the origin's ingest writes it).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// The plan snapshot stream (the origin's control loop writes it).
    #[serde(default = "default_plans_stream")]
    pub plans_stream: String,
    /// The global audit feed (the origin's admin API writes it).
    #[serde(default = "default_audit_stream")]
    pub audit_stream: String,
    #[serde(default = "default_group")]
    pub group: String,
    /// This process's consumer name. Unique by default (host, process id and a random
    /// suffix): replicas sharing a configuration must never share a name, or they would
    /// flush each other's pending entries under other keys and write rows twice. What a
    /// process leaves pending when it stops for good is claimed by the others
    /// (`claim_idle_secs`). A name set here is held with a lock in Redis while a lane
    /// runs under it; a second process configured with the same name refuses to run.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Another consumer's pending entries are claimed once it and they have been idle
    /// this long (a replica that is gone for good); 0 never claims. Must exceed
    /// `flush_max_age_secs`, the longest a live replica holds entries unflushed unless
    /// S3 is down (then a claim only repeats its work, to the same keys).
    #[serde(default = "default_claim_idle_secs")]
    pub claim_idle_secs: u64,
    /// How long a lane may be down (failed, waiting for its restart) before `/readyz`
    /// reports the origin not ready.
    #[serde(default = "default_lane_down_grace_secs")]
    pub lane_down_grace_secs: u64,
    #[serde(default)]
    pub athena: Option<AthenaConfig>,
    /// Test hook: a lane that fails on start.
    #[cfg(feature = "failpoints")]
    #[serde(default)]
    pub failpoint: Option<LaneFailpoint>,
}

/// Fails the first `times` runs of `dataset`'s lane, as a lane that dies would.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneFailpoint {
    pub dataset: String,
    pub times: u32,
}

/// Where reports run on Athena.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AthenaConfig {
    /// Athena endpoint override (a local API server in tests).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Defaults to the archive's region.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default = "default_workgroup")]
    pub workgroup: String,
    /// `s3://bucket/prefix/` for query results; the workgroup's setting when unset.
    #[serde(default)]
    pub output_location: Option<String>,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_poll_initial_ms")]
    pub poll_initial_ms: u64,
    #[serde(default = "default_poll_max_ms")]
    pub poll_max_ms: u64,
    /// Give up waiting for a query after this long.
    #[serde(default = "default_query_timeout_secs")]
    pub query_timeout_secs: u64,
    /// Rows per `GetQueryResults` page (Athena allows at most 1000).
    #[serde(default = "default_page_size")]
    pub page_size: i32,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_flush_max_rows() -> usize {
    50_000
}
fn default_flush_max_age_secs() -> u64 {
    60
}
fn default_retry_max_backoff_ms() -> u64 {
    30_000
}
fn default_stream() -> String {
    stream::EVENTS.into()
}
fn default_plans_stream() -> String {
    stream::PLAN_LOG.into()
}
fn default_audit_stream() -> String {
    allot_core::contract::keys::AUDIT.into()
}
fn default_claim_idle_secs() -> u64 {
    300
}
fn default_group() -> String {
    stream::ARCHIVER_GROUP.into()
}
/// A name no other process has: host, process id and a random suffix.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "archiver".to_string() } else { host };
    format!("{host}-{}-{:08x}", std::process::id(), allot_stream::Jitter::new().word())
}
fn default_lane_down_grace_secs() -> u64 {
    30
}
fn default_workgroup() -> String {
    "allot".into()
}
fn default_database() -> String {
    "allot".into()
}
fn default_poll_initial_ms() -> u64 {
    250
}
fn default_poll_max_ms() -> u64 {
    5_000
}
fn default_query_timeout_secs() -> u64 {
    900
}
fn default_page_size() -> i32 {
    1000
}

impl ArchiveConfig {
    /// A configuration with defaults for everything but the bucket.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            endpoint: None,
            region: default_region(),
            bucket: bucket.into(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            path_style: false,
            flush_max_rows: default_flush_max_rows(),
            flush_max_age_secs: default_flush_max_age_secs(),
            retry_max_backoff_ms: default_retry_max_backoff_ms(),
            stream: default_stream(),
            plans_stream: default_plans_stream(),
            audit_stream: default_audit_stream(),
            group: default_group(),
            consumer: default_consumer(),
            claim_idle_secs: default_claim_idle_secs(),
            lane_down_grace_secs: default_lane_down_grace_secs(),
            athena: None,
            #[cfg(feature = "failpoints")]
            failpoint: None,
        }
    }

    /// Parses and checks a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, ArchiveError> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ArchiveError::Config(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Rejects settings the archiver cannot work with.
    pub fn check(&self) -> Result<(), ArchiveError> {
        let bad = |m: &str| Err(ArchiveError::Config(m.into()));
        if self.bucket.is_empty() {
            return bad("bucket must not be empty");
        }
        if self.prefix.starts_with('/') {
            return bad("prefix must not start with '/'");
        }
        if self.flush_max_rows == 0 {
            return bad("flush_max_rows must be at least 1");
        }
        if self.flush_max_age_secs == 0 {
            return bad("flush_max_age_secs must be at least 1");
        }
        if self.claim_idle_secs > 0 && self.claim_idle_secs <= self.flush_max_age_secs {
            // A buffer waits up to flush_max_age for its flush; claiming it would split
            // a flush in two.
            return bad("claim_idle_secs must exceed flush_max_age_secs (or be 0)");
        }
        let streams = [&self.stream, &self.plans_stream, &self.audit_stream];
        if streams.iter().enumerate().any(|(i, a)| streams[i + 1..].contains(a)) {
            return bad("stream, plans_stream and audit_stream must differ");
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return bad("access_key_id and secret_access_key go together");
        }
        if let Some(a) = &self.athena
            && !(1..=1000).contains(&a.page_size)
        {
            return bad("athena.page_size must be in 1..=1000");
        }
        Ok(())
    }

    /// The key prefix, empty or ending in `/`.
    pub fn key_prefix(&self) -> String {
        match self.prefix.as_str() {
            "" => String::new(),
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        }
    }

    pub fn flush_max_age(&self) -> Duration {
        Duration::from_secs(self.flush_max_age_secs)
    }

    /// How long another consumer must be silent before its entries are claimed.
    pub fn claim_idle(&self) -> Option<Duration> {
        (self.claim_idle_secs > 0).then(|| Duration::from_secs(self.claim_idle_secs))
    }

    /// Another consumer idle this long with nothing pending is a process that is gone:
    /// it is deleted from the group. Four claim times (20 minutes by default).
    pub fn forget_idle(&self) -> Option<Duration> {
        self.claim_idle().map(|c| c * 4)
    }

    /// How often a lane looks for entries to claim.
    pub fn claim_every(&self) -> Duration {
        Duration::from_secs(self.claim_idle_secs / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    pub fn lane_down_grace(&self) -> Duration {
        Duration::from_secs(self.lane_down_grace_secs)
    }

    pub fn retry_max_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_max_backoff_ms.max(1))
    }

    /// The shared AWS SDK configuration for `endpoint` and `region`. Retries are off: the
    /// archiver and the Athena poller have their own backoff loops, and a second layer
    /// would only hide outages from the lag metric.
    pub async fn sdk_config(&self, endpoint: Option<&str>, region: &str) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let (Some(ak), Some(sk)) = (&self.access_key_id, &self.secret_access_key) {
            let creds = aws_sdk_s3::config::Credentials::new(ak, sk.expose_secret(), None, None, "allot-config");
            loader = loader.credentials_provider(creds);
        }
        if let Some(ep) = endpoint {
            loader = loader.endpoint_url(ep);
        }
        loader.load().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_hides_the_secret() {
        let cfg = ArchiveConfig::from_json(
            r#"{"bucket":"b","prefix":"p","access_key_id":"AK","secret_access_key":"very-secret","path_style":true}"#,
        )
        .unwrap();
        assert_eq!(cfg.key_prefix(), "p/");
        assert_eq!(cfg.flush_max_age_secs, 60);
        assert_eq!(cfg.stream, "allot:events");
        assert_eq!(cfg.plans_stream, "allot:plans");
        assert_eq!(cfg.audit_stream, "allot:audit");
        assert_eq!(cfg.claim_idle(), Some(Duration::from_secs(300)));
        assert_eq!(cfg.claim_every(), Duration::from_secs(60));
        assert_eq!(cfg.group, "archiver");
        let other = ArchiveConfig::from_json(r#"{"bucket":"b"}"#).unwrap();
        assert_ne!(cfg.consumer, other.consumer, "two configurations alike never share a consumer name");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    #[test]
    fn rejects_bad_settings() {
        for (json, needle) in [
            (r#"{"bucket":""}"#, "bucket"),
            (r#"{"bucket":"b","flush_max_rows":0}"#, "flush_max_rows"),
            (r#"{"bucket":"b","access_key_id":"AK"}"#, "go together"),
            (r#"{"bucket":"b","bogus":1}"#, "unknown field"),
            (r#"{"bucket":"b","plans_stream":"allot:events"}"#, "differ"),
            (r#"{"bucket":"b","audit_stream":"allot:plans"}"#, "differ"),
            (r#"{"bucket":"b","claim_idle_secs":60}"#, "claim_idle_secs"),
            (r#"{"bucket":"b","athena":{"page_size":5000}}"#, "page_size"),
        ] {
            let err = ArchiveConfig::from_json(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
