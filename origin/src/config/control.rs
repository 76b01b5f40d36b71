//! `[control]`: the control loop's period, lateness, leases and shards.

use serde::Deserialize;

#[cfg(feature = "failpoints")]
use super::Failpoint;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub enabled: bool,
    /// The control period, which is also the window length.
    pub period_ms: u64,
    /// Complete windows merged into "recent" (traffic mix, render ratios).
    pub recent_windows: u64,
    /// The smallest sample rate a plan is published with, in `[1e-9, 1]`
    /// (`allot_core::admit::MIN_RATE_FLOOR`: the windows' sums of squared weights must
    /// stay finite).
    pub min_sample_rate: f64,
    /// The most sampled requests one placement's window may be planned for: a targets
    /// document whose confidence needs more is refused (`422` on `confidence`), so a
    /// manager cannot make one placement's events flood the ingest
    /// (`allot_core::SampleRatePlanner::max_samples`).
    pub max_samples_per_window: u64,
    /// An unchanged plan is republished after this long, so a KV entry never expires.
    pub republish_after_secs: u64,
    /// How long after a window ends its events are still arriving (the edge outbox's
    /// batching, a send timeout and a retry): rounds treat a window as complete only
    /// this long after its end, at most a quarter period ([`Self::lateness`]).
    pub lateness_ms: u64,
    /// How long after a window ends its impressions are still arriving (apps report an
    /// ad once shown, dated to its decision): a placement measured on impressions is
    /// looked at through windows this old ([`Self::impression_lateness`],
    /// `allot_core::evidence`).
    pub impression_lateness_ms: u64,
    /// How long after a plan is replaced its requests mean a colo stuck on it, which the
    /// next plans make up for (`allot_core::controller::lag`): longer than a plan takes
    /// to reach every colo (KV's propagation and the edge cache's TTL).
    pub lag_after_ms: u64,
    /// The control lease's time to live; the holder renews it several times per lease.
    pub lease_ms: u64,
    /// Control shards: placements are spread over them by a hash of their id, and the
    /// origins share them out, each shard under its own lease. Every origin of one
    /// Redis must use the same count.
    pub shards: u32,
    /// Plans kept in each placement's history.
    pub history_len: usize,
    /// Complete windows kept in each placement's window history (`GET …/history`).
    pub history_windows: usize,
    /// The platforms events name as they are besides the rules' ([`Self::platforms`]).
    pub platforms: Vec<String>,
    #[cfg(feature = "failpoints")]
    pub failpoint: Option<Failpoint>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            period_ms: 60_000,
            recent_windows: 5,
            min_sample_rate: 1e-4,
            max_samples_per_window: 100_000,
            republish_after_secs: 600,
            lateness_ms: 10_000,
            impression_lateness_ms: 60_000,
            lag_after_ms: 90_000,
            lease_ms: 10_000,
            shards: 64,
            history_len: 100,
            history_windows: 1440,
            platforms: allot_core::plan::COMMON_PLATFORMS.map(String::from).to_vec(),
            #[cfg(feature = "failpoints")]
            failpoint: None,
        }
    }
}

/// The most control shards: each is one key in every sync.
pub const MAX_SHARDS: u32 = 1024;

impl ControlConfig {
    /// The lateness rounds wait for: `lateness_ms`, at most a quarter period, so a
    /// round still acts early in the period it plans for.
    pub fn lateness(&self) -> u64 {
        self.lateness_ms.min(self.period_ms / 4)
    }

    /// The impressions' lateness: `impression_lateness_ms`, at least the lateness and at
    /// most a period past it, so a placement on impressions is looked at one window
    /// further back at most.
    pub fn impression_lateness(&self) -> u64 {
        self.impression_lateness_ms.clamp(self.lateness(), self.lateness() + self.period_ms)
    }

    /// The index of the newest window complete at `now_ms`: one that ended at least
    /// [`Self::lateness`] ago.
    pub fn last_complete_window(&self, now_ms: u64) -> u64 {
        allot_core::WindowStats::window_index(now_ms.saturating_sub(self.lateness()), self.period_ms).saturating_sub(1)
    }

    /// The configured platforms as every plan lists them (`allot_core::Plan::platforms`):
    /// sorted, each once.
    pub fn platforms(&self) -> Vec<String> {
        let mut platforms = self.platforms.clone();
        platforms.sort();
        platforms.dedup();
        platforms
    }

    /// How long a window's counts are kept: the windows the controller and the status
    /// page read, plus slack for late events.
    pub fn window_ttl_secs(&self) -> u64 {
        (self.period_ms * (self.recent_windows + 3) / 1000).max(60)
    }
}
