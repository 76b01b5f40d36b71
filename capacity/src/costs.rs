//! The unit costs one measurement run produces, as written to
//! `docs/capacity/unit-costs.json` (read by `scripts/capacity.py`), and the bounds a
//! run must fall within to be believed.
//!
//! The bounds are wide on purpose: they catch a measurement that measured nothing or
//! something else (a counter that did not move, a drain that did not happen, a key class
//! that is missing), not a regression of a few per cent.

use std::collections::BTreeMap;

use anyhow::ensure;
use serde::Serialize;

use crate::probe::{ClassMemory, CommandCounts};

/// The file's schema version; `scripts/capacity.py` refuses any other.
pub const SCHEMA: u32 = 1;

/// Redis commands during one traffic phase, after both consumer groups drained.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandPhase {
    /// Bodies posted, stream entries appended (one per placement of a body), events
    /// accepted.
    pub bodies: u64,
    pub entries: u64,
    pub events: u64,
    /// Requests the aggregator applied after their window's round (each late delta
    /// costs two more commands); the harness posts at window starts, so this stays 0
    /// for the batched shapes on a machine that keeps up.
    pub late_events: u64,
    /// Every command Redis ran (inside Lua scripts too), by name.
    pub by_command: CommandCounts,
    pub total: u64,
}

impl CommandPhase {
    pub fn per_event(&self) -> f64 {
        self.total as f64 / self.events.max(1) as f64
    }
}

/// Bytes of the events on the wire (`POST /v1/events`, no compression is used) and
/// what gzip would make of a batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Wire {
    pub single_body_bytes_per_event: f64,
    pub batch_body_bytes_per_event: f64,
    pub batch_gzip_bytes_per_event: f64,
    /// The `X-Allot-Signature` header's length (one per body).
    pub signature_header_bytes: u64,
}

/// The archive's `events` table in S3.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Archive {
    pub objects: u64,
    pub rows: u64,
    pub bytes: u64,
    pub bytes_per_row: f64,
    /// The flush age the run used; production's default is 60 s, larger objects.
    pub flush_max_age_secs: u64,
}

/// Plan publishes to KV during the steady control phase and after a target change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Kv {
    /// Full control rounds in the phase times placements.
    pub placement_rounds: u64,
    /// Keys written in the phase; of them, republishes of an unchanged plan (the age
    /// rule) and publishes of a changed one (rate, weights, creatives).
    pub writes: u64,
    pub writes_age_rule: u64,
    pub writes_changed: u64,
    /// `republish_after_secs` / period, as configured for the run (production: 600/60).
    pub republish_after_periods: f64,
    pub bulk_requests: u64,
    pub max_keys_per_request: u64,
    pub bytes_per_key: f64,
    /// Writes of the placement whose targets changed, within two periods of the `PUT`,
    /// and the time until the first.
    pub target_change_writes: u64,
    pub target_change_ms: u64,
}

/// The control loop's cost, measured on the replica that holds the lease and runs no
/// ingest or aggregator: CPU under traffic; commands with the data path stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Control {
    pub placement_rounds: u64,
    pub cpu_seconds: f64,
    pub cpu_us_per_placement_round: f64,
    pub commands_per_placement_round: f64,
}

/// Redis memory, from `MEMORY USAGE` per key, by class, at the end of the control phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    pub classes: BTreeMap<String, ClassMemory>,
    /// `INFO memory` `used_memory` after the placements' targets were stored and their
    /// first plans published, minus before, per placement.
    pub used_memory_per_new_placement: f64,
    /// `used_memory` at the end, and at the start before any placement.
    pub used_memory_end: u64,
    pub used_memory_empty: u64,
}

/// One run: a campaign count, everything measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunCosts {
    pub campaigns: usize,
    pub profiles: usize,
    pub placements: usize,
    pub period_ms: u64,
    pub samples_per_window: f64,
    pub recent_windows: u64,
    pub events_accepted: u64,
    pub events_dropped: u64,
    pub impressions_per_allocation: f64,
    pub commands: BTreeMap<String, CommandPhase>,
    pub wire: Wire,
    pub archive: Archive,
    pub kv: Kv,
    pub control: Control,
    pub memory: Memory,
}

impl RunCosts {
    /// Fails, naming the figure, when the run cannot have measured what it claims.
    pub fn check_sane(&self) -> anyhow::Result<()> {
        ensure!(self.events_accepted > 0, "no event was accepted");
        ensure!(
            self.events_dropped * 20 <= self.events_accepted,
            "{} of {} events were dropped: the edge and the origin disagree on plans",
            self.events_dropped,
            self.events_accepted
        );
        for shape in ["single", "batch", "mixed"] {
            let p = self.commands.get(shape).ok_or_else(|| anyhow::anyhow!("no {shape} phase"))?;
            ensure!(p.events > 0 && p.bodies > 0, "{shape}: nothing was sent");
            // Every body is at least one script run; every event goes through one.
            ensure!(p.total >= p.bodies, "{shape}: {} commands for {} bodies", p.total, p.bodies);
            ensure!(p.per_event() < 50.0, "{shape}: {:.1} commands per event", p.per_event());
            let xadds = p.by_command.get("xadd").copied().unwrap_or(0);
            ensure!(xadds == p.entries, "{shape}: {xadds} XADDs for {} stream entries", p.entries);
        }
        let w = &self.wire;
        ensure!((100.0..2000.0).contains(&w.single_body_bytes_per_event), "single body {w:?}");
        ensure!(w.batch_body_bytes_per_event < w.single_body_bytes_per_event, "batching saves nothing: {w:?}");
        ensure!(w.batch_gzip_bytes_per_event < w.batch_body_bytes_per_event, "gzip saves nothing: {w:?}");
        let a = &self.archive;
        ensure!(a.rows > 0 && a.objects > 0, "nothing was archived: {a:?}");
        ensure!((1.0..1000.0).contains(&a.bytes_per_row), "archive bytes per row {a:?}");
        let k = &self.kv;
        ensure!(k.placement_rounds > 0 && k.writes > 0, "no plan was published in the control phase: {k:?}");
        ensure!(k.writes <= k.placement_rounds, "more writes than rounds: {k:?}");
        ensure!(k.target_change_writes >= 1, "a target change was not published: {k:?}");
        let c = &self.control;
        ensure!(c.placement_rounds > 0 && c.cpu_seconds > 0.0, "the control replica ran no rounds: {c:?}");
        ensure!(c.commands_per_placement_round > 1.0, "control rounds sent no commands: {c:?}");
        for class in ["targets", "plan", "plans", "fence", "state", "w", "applied", "replay", "allot:events"] {
            ensure!(self.memory.classes.contains_key(class), "no {class} key in Redis at the end of the run");
        }
        Ok(())
    }
}

/// The file: when, where and how it was measured, and the runs.
#[derive(Debug, Clone, Serialize)]
pub struct UnitCosts {
    pub schema: u32,
    pub measured_at: String,
    pub machine: Machine,
    pub command: String,
    /// The cargo profile the origin was built with.
    pub build: String,
    /// By campaign count: `"8"`, `"64"`.
    pub runs: BTreeMap<String, RunCosts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub load_average_start: String,
    pub load_average_end: String,
}

impl Machine {
    pub fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}
