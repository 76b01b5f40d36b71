//! Configuration: a TOML file plus `ALLOT_*` environment overrides, parsed once.
//!
//! Like linkerd's `env.rs`, the environment is an argument ([`Config::from_sources`]
//! takes a map), so every override is testable without touching the process
//! environment. The result is a tree of typed structs: nothing downstream parses
//! strings again. Secrets (ingest keys, admin token hashes are not secret, the
//! Cloudflare API token, the Redis URL which may carry a password) are
//! [`SecretString`]s, whose `Debug` prints `[REDACTED]`, so logging a config is safe.
//!
//! The sample file `origin/allot.example.toml` documents every key, and is also the
//! schema of the overrides: `section.key` is `ALLOT_SECTION_KEY`, for every key it
//! shows ([`env`]). The sample's own secrets are refused, wherever they come from: a
//! copy of the sample must not run with a key anyone can read.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

mod control;
pub mod env;
mod ingest;
mod redis;

pub use control::{ControlConfig, MAX_SHARDS};
pub use ingest::IngestConfig;
pub use redis::RedisConfig;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config: {0}")]
    Toml(String),
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config {field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// An error in a value, with where the value came from.
    #[error("{error} (set by {origin})")]
    From { origin: String, error: Box<ConfigError> },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one (the bound address is logged).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    pub ingest: IngestConfig,
    #[serde(default)]
    pub aggregate: AggregateConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub publish: PublishConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The S3 archive (and where reports run). Absent: no archiver runs.
    #[serde(default)]
    pub archive: Option<allot_archive::ArchiveConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// The HTTP server's limits (see [`crate::serve`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A request's headers must arrive within this; also the longest a kept-alive
    /// connection may sit idle.
    pub header_read_timeout_ms: u64,
    /// A request, body included, must be answered within this (`503 timeout`).
    pub request_timeout_ms: u64,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { header_read_timeout_ms: 10_000, request_timeout_ms: 30_000, max_connections: 10_000 }
    }
}

/// Test hooks for crash-recovery tests. They exist only in builds with the
/// `failpoints` feature, so a production binary cannot be configured to crash.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failpoint {
    /// Exit the process right after applying a batch to the counts, before `XACK`.
    ExitAfterApply,
    /// Pause for three lease times, renewals included, between deciding a round and
    /// publishing it, as a stopped VM or a long GC pause would.
    StallBeforePublish,
    /// The same pause between publishing a round's plans and storing them.
    StallBeforeSave,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    pub enabled: bool,
    /// Consumer name in the `aggregator` group; defaults to `<hostname>-<pid>`.
    pub consumer: Option<String>,
    /// Entries read per `XREADGROUP`.
    pub batch: usize,
    pub block_ms: u64,
    /// Pending entries idle this long are claimed from their (presumably dead) consumer.
    pub claim_min_idle_ms: u64,
    #[cfg(feature = "failpoints")]
    pub failpoint: Option<Failpoint>,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consumer: None,
            batch: 512,
            block_ms: 1000,
            claim_min_idle_ms: 30_000,
            #[cfg(feature = "failpoints")]
            failpoint: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishKind {
    /// Plans are computed and stored but not pushed anywhere.
    #[default]
    None,
    /// `PUT {url}/internal/plans/{placement}` on the worker, signed with the push keys.
    Worker,
    /// Cloudflare KV REST API bulk writes.
    Cloudflare,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    #[serde(default)]
    pub kind: PublishKind,
    pub worker: Option<WorkerPublishConfig>,
    pub cloudflare: Option<CloudflareConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerPublishConfig {
    pub url: String,
    /// One or two push keys (two while rotating), at least 16 bytes each, shared with
    /// the worker's `PUSH_KEYS`. Every push is signed with all of them, so either side
    /// may switch first. Separate from the ingest keys: a key that signs events cannot
    /// change what the edge serves.
    #[serde(default)]
    pub keys: Vec<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudflareConfig {
    #[serde(default = "default_cf_base")]
    pub base_url: String,
    pub account_id: String,
    pub namespace_id: String,
    pub api_token: SecretString,
    /// The bulk API's limits: 10,000 pairs and 100 MB per request.
    #[serde(default = "default_cf_keys")]
    pub max_keys_per_request: usize,
    #[serde(default = "default_cf_bytes")]
    pub max_bytes_per_request: usize,
    #[serde(default = "default_cf_retries")]
    pub max_retries: u32,
    #[serde(default = "default_cf_backoff")]
    pub initial_backoff_ms: u64,
    /// Optional `expiration_ttl` on written keys (≥ 60 by the API; 0 = none).
    #[serde(default)]
    pub expiration_ttl_secs: u64,
}

fn default_cf_base() -> String {
    "https://api.cloudflare.com/client/v4".into()
}
fn default_cf_keys() -> usize {
    10_000
}
fn default_cf_bytes() -> usize {
    100_000_000
}
fn default_cf_retries() -> u32 {
    5
}
fn default_cf_backoff() -> u64 {
    200
}

/// Admin roles: viewers read, managers also write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Manager,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Manager => "manager",
        }
    }
}

/// An admin token: only its SHA-256 (hex) is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `allot_origin=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Json }
    }
}

/// What `/metrics` exports ([`crate::gauges`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The most placement × campaign pairs given per-campaign delivery gauges on this
    /// origin (0: none). Every pair costs six series, so 10,000 placements of 64
    /// campaigns would be millions, more than a Prometheus should take or `/metrics`
    /// can render in time. Placements are admitted in the order their rounds first run
    /// here, and keep their series while they exist here; the others get the
    /// placement-level gauges only, which every placement has.
    pub campaign_series: usize,
    /// `/metrics` answers only requests with an admin token (any role). Its series name
    /// every placement and campaign with their shares and rates: on a listener the
    /// public reaches, that is the business in plain text. Off by default, for a
    /// scraper on a private network; Prometheus sends a token with `authorization`.
    pub require_token: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { campaign_series: 20_000, require_token: false }
    }
}

impl Config {
    /// Parses `file` (TOML text) and applies the `ALLOT_*` overrides found in `env`.
    pub fn from_sources(file: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_named_sources(file, "the file", env).map(|(config, _)| config)
    }

    /// [`Config::from_sources`], naming the file `file_name` in errors; also returns
    /// the variables that were applied, with the paths they set.
    pub fn from_named_sources(
        file: &str,
        file_name: &str,
        env: &HashMap<String, String>,
    ) -> Result<(Self, BTreeMap<String, String>), ConfigError> {
        let mut root: toml::Table = toml::from_str(file).map_err(|e| ConfigError::Toml(e.to_string()))?;
        let applied = env::apply(&mut root, env)?;
        let config: Config = root.try_into().map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
        if let Err(error) = config.check() {
            let ConfigError::Invalid { field, .. } = &error else { return Err(error) };
            let by_env = applied.iter().find(|(_, path)| path.starts_with(field) || field.starts_with(path.as_str()));
            let origin = by_env.map_or_else(|| file_name.to_string(), |(var, _)| var.clone());
            return Err(ConfigError::From { origin, error: Box::new(error) });
        }
        Ok((config, applied))
    }

    /// Reads `path` and the process environment.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        Self::load_explained(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the variables applied, with the paths they set.
    pub fn load_explained(path: &str) -> Result<(Self, BTreeMap<String, String>), ConfigError> {
        let file =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_string(), source })?;
        let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("ALLOT_")).collect();
        Self::from_named_sources(&file, path, &env)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.ingest.keys.is_empty() || self.ingest.keys.len() > allot_core::signature::MAX_KEYS {
            return Err(invalid("ingest.keys", "one or two keys"));
        }
        if self.ingest.keys.iter().any(|k| k.expose_secret().len() < 16) {
            return Err(invalid("ingest.keys", "each key must be at least 16 bytes"));
        }
        if self.ingest.keys.iter().any(|k| sample::is_sample_key(k.expose_secret())) {
            return Err(invalid("ingest.keys", sample::REFUSED));
        }
        if self.ingest.max_body_bytes == 0 {
            return Err(invalid("ingest.max_body_bytes", "must be positive"));
        }
        if self.ingest.max_buffered_bytes < self.ingest.max_body_bytes {
            return Err(invalid("ingest.max_buffered_bytes", "must be at least max_body_bytes"));
        }
        if self.ingest.body_read_timeout_ms == 0 {
            return Err(invalid("ingest.body_read_timeout_ms", "must be positive"));
        }
        if !(10..=10_000).contains(&self.ingest.catalogue_refresh_ms) {
            return Err(invalid("ingest.catalogue_refresh_ms", "must be 10 to 10000"));
        }
        if self.http.header_read_timeout_ms == 0 || self.http.request_timeout_ms == 0 {
            return Err(invalid("http", "timeouts must be positive"));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        if self.control.period_ms < 100 {
            return Err(invalid("control.period_ms", "must be at least 100"));
        }
        if self.control.recent_windows == 0 {
            return Err(invalid("control.recent_windows", "must be at least 1"));
        }
        if !(self.control.min_sample_rate > 0.0 && self.control.min_sample_rate <= 1.0) {
            return Err(invalid("control.min_sample_rate", "must be in (0, 1]"));
        }
        if self.event_limits().is_err() {
            return Err(invalid(
                "control.min_sample_rate",
                "too small: below 1e-9 the windows' sums of squared weights could overflow",
            ));
        }
        if self.control.lease_ms < 300 {
            return Err(invalid("control.lease_ms", "must be at least 300"));
        }
        if !(1..=MAX_SHARDS).contains(&self.control.shards) {
            return Err(invalid("control.shards", "must be 1 to 1024"));
        }
        allot_core::plan::check_platforms(&self.control.platforms()).map_err(|e| invalid("control.platforms", e))?;
        if self.control.max_samples_per_window == 0 {
            return Err(invalid("control.max_samples_per_window", "must be positive"));
        }
        if self.aggregate.batch == 0 {
            return Err(invalid("aggregate.batch", "must be positive"));
        }
        match self.publish.kind {
            PublishKind::Worker => match &self.publish.worker {
                None => return Err(invalid("publish.worker", "required when publish.kind = \"worker\"")),
                Some(w) if w.keys.is_empty() || w.keys.len() > allot_core::signature::MAX_KEYS => {
                    return Err(invalid("publish.worker.keys", "one or two keys"));
                }
                Some(w) if w.keys.iter().any(|k| k.expose_secret().len() < 16) => {
                    return Err(invalid("publish.worker.keys", "each key must be at least 16 bytes"));
                }
                Some(w) if w.keys.iter().any(|k| sample::is_sample_key(k.expose_secret())) => {
                    return Err(invalid("publish.worker.keys", sample::REFUSED));
                }
                Some(w)
                    if w.keys
                        .iter()
                        .any(|k| self.ingest.keys.iter().any(|i| i.expose_secret() == k.expose_secret())) =>
                {
                    return Err(invalid("publish.worker.keys", "must differ from every ingest key"));
                }
                Some(_) => {}
            },
            PublishKind::Cloudflare => match &self.publish.cloudflare {
                None => return Err(invalid("publish.cloudflare", "required when publish.kind = \"cloudflare\"")),
                Some(cf) if cf.max_keys_per_request == 0 || cf.max_bytes_per_request == 0 => {
                    return Err(invalid("publish.cloudflare", "request limits must be positive"));
                }
                Some(cf) if cf.expiration_ttl_secs != 0 && cf.expiration_ttl_secs < 60 => {
                    return Err(invalid("publish.cloudflare.expiration_ttl_secs", "0 or at least 60"));
                }
                Some(_) => {}
            },
            _ => {}
        }
        if let Some(a) = &self.archive {
            // The origin writes these streams by their contract names: an archive
            // reading another name would read nothing, and nothing would hold their trim.
            let streams = [
                ("archive.stream", &a.stream, allot_core::contract::stream::EVENTS),
                ("archive.plans_stream", &a.plans_stream, allot_core::contract::stream::PLAN_LOG),
                ("archive.audit_stream", &a.audit_stream, allot_core::contract::keys::AUDIT),
            ];
            if let Some((field, _, written)) = streams.into_iter().find(|(_, set, written)| set.as_str() != *written) {
                return Err(invalid(field, format!("must be {written:?}, the stream the origin writes")));
            }
        }
        for t in &self.admin.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("admin.tokens", format!("token {:?}: sha256 must be 64 hex digits", t.name)));
            }
            if sample::is_sample_token_hash(&t.sha256) {
                return Err(invalid("admin.tokens", format!("token {:?}: {}", t.name, sample::REFUSED)));
            }
        }
        Ok(())
    }

    /// The bounds every counted event keeps: the smallest rate a plan is published
    /// with, the signature skew ahead of the clock, and behind it [`Self::max_event_age_ms`].
    pub fn event_limits(&self) -> Result<allot_core::Limits, allot_core::admit::LimitsError> {
        allot_core::Limits::new(
            self.control.min_sample_rate,
            self.max_event_age_ms(),
            self.ingest.max_skew_secs.saturating_mul(1000),
        )
    }

    /// How old an event may be when it arrives: the window retention, or, when longer,
    /// the longest a genuine event travels. An impression carries its ad's time and may
    /// be reported as long as its token is valid (`token::MAX_AGE_MS`, plus the edges'
    /// skew), and its body resent while its signature is (`max_signature_age_secs`): at
    /// the defaults 660 s against a retention of 480 s. An event older than the
    /// retention counts in no window read any more (its window is deleted as it is
    /// written), but it is streamed and archived like the rest: an event the edge sent
    /// in time is never dropped for the origin's short memory.
    pub fn max_event_age_ms(&self) -> u64 {
        let travel =
            allot_core::token::PRESENTABLE_MS.saturating_add(self.ingest.max_signature_age_secs.saturating_mul(1000));
        self.control.window_ttl_secs().saturating_mul(1000).max(travel)
    }

    /// The ingest keys as bytes, for the signature verifier and signer.
    pub fn ingest_keys(&self) -> Vec<Vec<u8>> {
        self.ingest.keys.iter().map(|k| k.expose_secret().as_bytes().to_vec()).collect()
    }
}

mod sample;
#[cfg(test)]
mod tests;
