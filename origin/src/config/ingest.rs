//! `[ingest]`: the event endpoint's keys and limits.

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// One or two shared HMAC keys (two while rotating), at least 16 bytes each. The
    /// first one also signs plan pushes to the worker.
    pub keys: Vec<SecretString>,
    #[serde(default = "default_skew")]
    pub max_skew_secs: u64,
    /// How old a signature may be: the edge resends a batch's signed bytes until it is
    /// acknowledged, for up to its `EVENT_MAX_AGE_SECS` (270 s), so this must exceed
    /// that, or an outage longer than it loses the batches it held. At least the skew.
    #[serde(default = "default_signature_age")]
    pub max_signature_age_secs: u64,
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Body bytes held in memory at once, over every request: a body that does not fit
    /// is answered `503 overloaded` with `Retry-After` before it is read
    /// ([`crate::shed`]). At least `max_body_bytes`.
    #[serde(default = "default_buffered")]
    pub max_buffered_bytes: usize,
    /// A body must arrive whole within this of its reservation, or it is answered
    /// `503 timeout` and its room in the budget freed: a stalled body holds the budget
    /// this long, not the whole request timeout. An edge's body of 1 MiB takes well
    /// under a second.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    /// How often, at most, the ingest re-reads the placement registry and each
    /// placement's plan history to learn a newly published plan: the bound on the Redis
    /// reads a flood of made-up placements or versions can cause, and the longest a
    /// batch naming a version published a moment ago waits for it.
    #[serde(default = "default_catalogue_refresh")]
    pub catalogue_refresh_ms: u64,
}

fn default_skew() -> u64 {
    60
}
fn default_signature_age() -> u64 {
    300
}
fn default_catalogue_refresh() -> u64 {
    250
}
fn default_body() -> usize {
    1 << 20
}
fn default_buffered() -> usize {
    64 << 20
}
fn default_body_read_timeout() -> u64 {
    5_000
}
