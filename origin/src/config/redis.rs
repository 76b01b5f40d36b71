//! `[redis]`: the connection, and the streams' trimming.

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port`; with `cluster = true`, a comma-separated list of seed nodes.
    pub url: SecretString,
    /// Connect to a Redis Cluster.
    pub cluster: bool,
    /// Start even on a Redis that evicts keys (see `redis_check`): for a throwaway
    /// setup only.
    pub allow_unsafe: bool,
    /// Per-command timeout on the shared connection.
    pub response_timeout_ms: u64,
    /// The event stream's memory guard: the stream is trimmed below what every consumer
    /// group has read and acknowledged ([`crate::trim`]), and only if it still holds more
    /// than this many entries is it cut to this length, losing unread entries (counted in
    /// `allot_stream_trimmed_unread_entries_total{stream="events"}`, logged at error). Size it for the
    /// longest archiver outage Redis's memory can hold.
    pub stream_max_len: u64,
    /// The plan log's memory guard, as `stream_max_len` is the event stream's: the log
    /// is trimmed below what the archiver has read, and cut to this length only beyond
    /// it (the cut counted with `stream="plans"`). Size it for the longest archiver outage,
    /// at the deployment's publishes per second (a snapshot grows with its campaigns).
    pub plan_log_max_len: u64,
    /// How often the streams are trimmed (every replica trims; trimming is idempotent).
    pub trim_every_ms: u64,
    /// Entries every group has acknowledged are kept this long (for inspection with
    /// `XRANGE`, and replays), unless the stream is over its cap.
    pub stream_retain_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("redis://127.0.0.1:6379"),
            cluster: false,
            allow_unsafe: false,
            response_timeout_ms: 2000,
            stream_max_len: 10_000_000,
            plan_log_max_len: 100_000,
            trim_every_ms: 1000,
            stream_retain_secs: 600,
        }
    }
}
