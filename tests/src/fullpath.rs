//! The whole path under load, all real processes on this machine: the open-loop
//! [`traffic`](crate::traffic) generator → the edge worker in workerd with its local KV
//! → the origin binary with its control loop live → Redis with its append-only file →
//! the archiver → the S3 server, on the demo's placements and traffic mix
//! ([`scenario`]).
//!
//! A run is one stack and a series of steps at constant rates (each after a short
//! warm-up at its rate), optionally a quiet stretch at a low rate (how the sample rate
//! follows traffic down), then a drain: the edge's outbox empty and the archive holding
//! every event the origin acknowledged. Each step reports the load's accounting, the
//! CPU of every process and Redis's work ([`crate::usage`]), and the shares the apps
//! observed in its last windows against the targets. `allot-full-path` and
//! `scripts/bench-full.sh` run it at scale; `tests/tests/full_path.rs` at a low rate.

use std::collections::BTreeMap;
use std::time::Duration;

use allot_core::planner::SampleRatePlanner;
use allot_core::{Targets, TargetsSpec};
use allot_testkit::events::now_ms;
use allot_testkit::origin::MANAGER_TOKEN;
use allot_testkit::poll::{self, eventually};
use allot_testkit::process::signal_pid;
use allot_testkit::scenario::{self, MARGIN};
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::accounting::{Second, Summary};
use crate::edge_host::EdgeHost;
use crate::ledger::archived_rows;
use crate::stack::{Options as StackOptions, Stack};
use crate::traffic::{Mix, Observed, Traffic};
use crate::usage::{Snapshot, Usage};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Control period and window length.
    pub period_ms: u64,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// A request not answered this long after its scheduled time is an error.
    pub timeout: Duration,
    /// Each step first runs this long at its rate, unmeasured.
    pub warmup: Duration,
    /// The shares are judged over the complete windows of each step's last stretch this long.
    pub judge: Duration,
    /// Copies of the demo's two placements (`home_feed`, `sidebar`, `home_feed_2`, …).
    pub copies: usize,
    /// Redis fsyncs every write (`appendfsync always`) instead of once a second, so a
    /// Redis restart loses nothing it acknowledged.
    pub redis_fsync_always: bool,
    /// Who serves the edge worker.
    pub edge_host: EdgeHost,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            period_ms: 5_000,
            concurrency: 256,
            timeout: Duration::from_secs(10),
            warmup: Duration::from_secs(10),
            judge: Duration::from_secs(120),
            copies: 1,
            redis_fsync_always: false,
            edge_host: EdgeHost::default(),
        }
    }
}

/// Something done to the stack during a step, `after` its start.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub after: Duration,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, Copy)]
pub enum FaultKind {
    /// `kill -9` of Redis and a start on the same data.
    RestartRedis,
    /// `kill -9` of the origin and a start.
    RestartOrigin,
    /// The edge's `workerd` stopped (`SIGSTOP`) this long, then continued.
    PauseEdge(Duration),
}

/// One step's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub rate: f64,
    pub traffic: Summary,
    pub usage: Usage,
    /// Requests answered per second, by second of the schedule.
    pub timeline: Vec<Second>,
    /// The shares the apps observed in the judged windows, against the targets.
    pub shares: Vec<Share>,
    pub judged_windows: (u64, u64),
    pub fault: Option<String>,
    /// What the apps observed, window by window.
    #[serde(skip)]
    pub observed: Observed,
}

/// A campaign's share as the apps observed it over the judged windows.
#[derive(Debug, Clone, Serialize)]
pub struct Share {
    pub placement: String,
    pub campaign: String,
    pub target: f64,
    /// What the controller can reach: the target, or the most an infeasible campaign can get.
    pub reachable: f64,
    pub observed: f64,
    pub requests: u64,
}

impl Share {
    /// Within the manager's margin of what is reachable.
    pub fn within(&self, margin: f64) -> bool {
        (self.observed - self.reachable).abs() <= margin
    }
}

/// A placement's window as the origin recorded it (`/history`), with what the apps saw.
#[derive(Debug, Clone, Serialize)]
pub struct WindowRow {
    pub placement: String,
    pub index: u64,
    pub plan_version: Option<u64>,
    pub sample_rate: Option<f64>,
    /// Estimated (Horvitz–Thompson) and sampled requests, by the origin.
    pub requests: f64,
    pub samples: u64,
    /// Requests the apps were answered in the window.
    pub observed: u64,
    /// Samples the targets' confidence needs per window.
    pub required: f64,
}

/// The archive and the event counts after the drain.
#[derive(Debug, Clone, Serialize)]
pub struct Drained {
    /// The edge's `/healthz` event counters since it started (warm-ups included).
    pub edge: Value,
    pub archived_events: u64,
    pub archived_plans: u64,
    pub plans_published: f64,
}

/// The stack with the demo's placements, ready for steps.
#[derive(Debug)]
pub struct FullPath {
    pub stack: Stack,
    pub options: Options,
    /// Placement ids with their targets.
    pub placements: Vec<(String, Value)>,
}

impl FullPath {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let stack = Stack::start(StackOptions {
            period_ms: options.period_ms,
            redis_aof: options.redis_fsync_always,
            edge_host: options.edge_host,
            ..StackOptions::default()
        })
        .await?;
        let mut placements = Vec::new();
        for copy in 1..=options.copies.max(1) {
            for (id, targets) in scenario::placements() {
                let id = if copy == 1 { id.to_string() } else { format!("{id}_{copy}") };
                stack.put_placement(&id, &targets).await?;
                placements.push((id, targets));
            }
        }
        for (id, _) in &placements {
            let what = format!("the edge to get a plan for {id}");
            eventually(30, &what, async || stack.edge_plan_version(id).await.ok().flatten()).await;
        }
        Ok(Self { stack, options, placements })
    }

    fn traffic(&self, rps: f64) -> Traffic {
        Traffic {
            edge_url: self.stack.edge_url.clone(),
            placements: self.placements.iter().map(|(id, _)| (id.clone(), Mix::scenario())).collect(),
            rps,
            concurrency: self.options.concurrency,
            period_ms: self.options.period_ms,
            timeout: self.options.timeout,
        }
    }

    /// Runs `rate` requests/s for `duration` (after the warm-up), with `fault` injected.
    pub async fn step(&mut self, rate: f64, duration: Duration, fault: Option<Fault>) -> anyhow::Result<StepReport> {
        if !self.options.warmup.is_zero() {
            self.traffic(rate).start(self.options.warmup).join().await?;
        }
        let before = Snapshot::take(&self.stack).await;
        let load = self.traffic(rate).start(duration);
        let fault = match fault {
            Some(f) => Some(self.inject(f).await?),
            None => None,
        };
        let observed = load.join().await?;
        let end_ms = now_ms();
        let after = Snapshot::take(&self.stack).await;
        let usage = Usage::between(&before, &after);
        let traffic = observed.accounting.summary(duration.as_secs_f64());
        let period = self.options.period_ms;
        // Complete windows of the judged stretch (the last window may be cut by the end).
        let judge_ms = u64::try_from(self.options.judge.min(duration).as_millis()).unwrap_or(u64::MAX);
        let judged = ((end_ms - judge_ms) / period + 1, (end_ms / period).saturating_sub(1));
        let shares = self.shares(&observed, judged).await?;
        let timeline = observed.accounting.seconds.clone();
        Ok(StepReport { rate, traffic, usage, timeline, shares, judged_windows: judged, fault, observed })
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<String> {
        tokio::time::sleep(fault.after).await;
        let at = fault.after.as_secs_f64();
        Ok(match fault.kind {
            FaultKind::RestartRedis => {
                self.stack.restart_redis();
                format!("Redis killed (-9) and restarted {at:.0} s into the step")
            }
            FaultKind::RestartOrigin => {
                self.stack.kill_origin()?;
                self.stack.start_origin().await?;
                format!("the origin killed (-9) and restarted {at:.0} s into the step")
            }
            FaultKind::PauseEdge(pause) => {
                let workerd = self.workerd()?;
                signal_pid(workerd, "-STOP");
                tokio::time::sleep(pause).await;
                signal_pid(workerd, "-CONT");
                format!("the edge's workerd stopped for {:.1} s, {at:.0} s into the step", pause.as_secs_f64())
            }
        })
    }

    /// The edge's `workerd` process.
    pub fn workerd(&self) -> anyhow::Result<u32> {
        let processes = self.stack.processes();
        let found = processes.iter().find(|(name, _)| name.contains("workerd"));
        found.map(|(_, pid)| *pid).context("no workerd below the edge's Node process")
    }

    async fn shares(&self, observed: &Observed, (from, to): (u64, u64)) -> anyhow::Result<Vec<Share>> {
        let mut out = Vec::new();
        for (placement, targets) in &self.placements {
            let status = self.stack.status(placement).await?;
            let seen = observed.range(placement, from, to);
            for c in targets["campaigns"].as_array().into_iter().flatten() {
                let id = c["id"].as_str().context("a campaign id")?;
                let target = c["rate"].as_f64().context("a campaign rate")?;
                let found = status["campaigns"].as_array().into_iter().flatten().find(|s| s["id"] == id);
                let feasibility = found.map_or(&Value::Null, |s| &s["feasibility"]);
                let reachable = match feasibility["status"].as_str() {
                    Some("infeasible") => feasibility["max_share"].as_f64().unwrap_or(target),
                    _ => target,
                };
                let observed = seen.share(id);
                out.push(Share {
                    placement: placement.clone(),
                    campaign: id.to_string(),
                    target,
                    reachable,
                    observed,
                    requests: seen.requests,
                });
            }
        }
        Ok(out)
    }

    /// Runs `rate` requests/s for `duration`, unmeasured but for its windows (the sample
    /// rate following traffic down is in [`FullPath::windows`]); what the apps saw.
    pub async fn quiet(&self, rate: f64, duration: Duration) -> anyhow::Result<Observed> {
        self.traffic(rate).start(duration).join().await
    }

    /// Every placement's recorded windows since `from_ms`, oldest first, with what the
    /// apps observed in them (from any number of runs' observations).
    pub async fn windows(&self, from_ms: u64, observed: &[&Observed]) -> anyhow::Result<Vec<WindowRow>> {
        let mut out = Vec::new();
        for (placement, targets) in &self.placements {
            let spec: TargetsSpec = serde_json::from_value(targets.clone())?;
            let required = SampleRatePlanner::required_samples(&Targets::parse(spec)?);
            let path = format!("/v1/placements/{placement}/history?limit=1440");
            let (code, page) = self.stack.api.get_json(&path, MANAGER_TOKEN).await;
            anyhow::ensure!(code == 200, "GET {path}: {code} {page}");
            let mut rows: Vec<WindowRow> = page["windows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["window"]["start_ms"].as_u64().is_some_and(|s| s >= from_ms))
                .map(|w| {
                    let index = w["window"]["index"].as_u64().unwrap_or(0);
                    WindowRow {
                        placement: placement.clone(),
                        index,
                        plan_version: w["plan_version"].as_u64(),
                        sample_rate: w["sample_rate"].as_f64(),
                        requests: w["window"]["requests"].as_f64().unwrap_or(0.0),
                        samples: w["window"]["samples"].as_u64().unwrap_or(0),
                        observed: observed.iter().map(|o| o.range(placement, index, index).requests).sum(),
                        required,
                    }
                })
                .collect();
            rows.reverse();
            out.extend(rows);
        }
        Ok(out)
    }

    /// Waits until the edge's outbox is empty and the archive holds every event the
    /// origin acknowledged (up to `within`), then counts.
    pub async fn drain(&self, within: Duration) -> anyhow::Result<Drained> {
        let stack = &self.stack;
        poll::until(within, async || stack.edge_events().await.is_ok_and(|e| e["waiting"] == 0)).await;
        let edge = stack.edge_events().await?;
        let acknowledged = edge["sent"].as_u64().unwrap_or(0);
        let bucket = stack.s3.bucket_dir();
        let mut archived_events = 0;
        poll::until(within, async || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            archived_events = archived_rows(&bucket, "events").unwrap_or(0);
            archived_events >= acknowledged
        })
        .await;
        Ok(Drained {
            edge,
            archived_events,
            archived_plans: archived_rows(&bucket, "plans")?,
            plans_published: stack.api.metric_sum("allot_plans_published_total").await,
        })
    }

    /// The demo's margin: how far from reachable a share may be.
    pub fn margin() -> f64 {
        MARGIN
    }
}

/// Windows whose samples fell short of what the confidence needs, by placement: the
/// planner kept a rate made for more traffic.
pub fn short_windows(rows: &[WindowRow]) -> BTreeMap<String, Vec<&WindowRow>> {
    let mut out: BTreeMap<String, Vec<&WindowRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| (r.samples as f64) < r.required / 2.0 && r.sample_rate.is_some_and(|s| s < 1.0)) {
        out.entry(r.placement.clone()).or_default().push(r);
    }
    out
}
