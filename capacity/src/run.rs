//! One measurement run on real processes: `redis-server`, `s3s-fs`, a KV bulk endpoint,
//! and two origin binaries on the same Redis — the *data path* (ingest, aggregator,
//! archiver; control off) and the *control replica* (control loop publishing to KV;
//! no aggregator, no traffic), so the control loop's CPU is a process's own.
//!
//! 1. `PUT` targets for every placement; wait until each has a plan in KV.
//! 2. Warm-up: the simulated edge sends sampled traffic under the plans in KV until the
//!    sample rates have settled.
//! 3. Command phases: the control replica is stopped (`SIGSTOP`); for each body shape
//!    (single events, one-placement batches, mixed batches) the same kind of window
//!    traffic is sent, and Redis's command counters are read before and after, once
//!    both consumer groups have drained.
//! 4. Control phase: the replica resumes; traffic as in the warm-up for a number of
//!    windows; its CPU, its rounds and the KV writes are read, then Redis's memory per
//!    key class. Then the data path is stopped and, with no traffic, Redis's counters
//!    over a few rounds are the control rounds' own commands.
//! 5. A target change, timed to its KV write; then the archive.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use allot_core::{EventBatch, Plan};
use allot_testkit::origin::{MANAGER_TOKEN, OriginConfig, OriginProcess};
use allot_testkit::process::{cpu_seconds, http_client};
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;
use anyhow::{Context, bail, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write as _;

use crate::costs::{Archive, CommandPhase, Kv, RunCosts};
use crate::edge::{self, Edge, Shape};
use crate::kv::FakeKv;
use crate::probe;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub placements: usize,
    pub campaigns: usize,
    pub period_ms: u64,
    /// Sampled requests per window the targets' confidence asks for.
    pub samples: f64,
    /// Requests per window each placement sees at the edge (its sample rate settles
    /// near `1.04 · samples / requests`).
    pub requests_per_window: f64,
    pub warmup_windows: u64,
    /// Windows of traffic per body shape in the command phases.
    pub phase_windows: u64,
    pub control_windows: u64,
    pub flush_max_age_secs: u64,
}

/// Origin configuration both processes share.
fn common(o: &Options) -> String {
    format!(
        "[ingest]\nmax_body_bytes = 1048576\n[control]\nperiod_ms = {}\nrecent_windows = 5\nlease_ms = {}\n",
        o.period_ms,
        (o.period_ms * 3 / 2).max(1500)
    )
}

struct Ctx {
    opts: Options,
    redis: RedisServer,
    kv: FakeKv,
    data: OriginProcess,
    control: OriginProcess,
    http: reqwest::Client,
    edge: Edge,
    accepted: u64,
    dropped: u64,
    allocations: u64,
    impressions: u64,
}

fn spawn_origin(dir: &std::path::Path, name: &str, config: OriginConfig) -> anyhow::Result<OriginProcess> {
    let path = dir.join(format!("{name}.toml"));
    config.write(&path)?;
    // The listening line is logged at info; every plan published would be too.
    OriginProcess::spawn(&path, &[("ALLOT_LOG_LEVEL", "warn,allot_origin::startup=info")])
}

/// Runs the measurement; the caller checks [`RunCosts::check_sane`].
pub async fn measure(opts: Options) -> anyhow::Result<RunCosts> {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let kv = FakeKv::start().await?;
    let dir = tempfile::Builder::new().prefix("allot-capacity-").tempdir()?;
    let data = spawn_origin(
        dir.path(),
        "data",
        OriginConfig::new().redis(&redis.url()).archive(&s3).merge(&common(&opts)).merge(&format!(
            "[control]\nenabled = false\n[archive]\nflush_max_age_secs = {}\nclaim_idle_secs = 600\n",
            opts.flush_max_age_secs
        )),
    )?;
    let republish_secs = (opts.period_ms * 10).div_ceil(1000);
    let control = spawn_origin(
        dir.path(),
        "control",
        OriginConfig::new()
            .redis(&redis.url())
            .merge(&common(&opts))
            .merge(&kv.publish_toml())
            .merge(&format!("[aggregate]\nenabled = false\n[control]\nrepublish_after_secs = {republish_secs}\n")),
    )?;
    data.wait_ready(30).await;
    control.wait_ready(30).await;
    let mut ctx = Ctx {
        opts: opts.clone(),
        redis,
        kv,
        data,
        control,
        http: http_client(Duration::from_secs(30)),
        edge: Edge::new(opts.campaigns as u64),
        accepted: 0,
        dropped: 0,
        allocations: 0,
        impressions: 0,
    };
    let mut out = RunCosts {
        campaigns: opts.campaigns,
        profiles: edge::PLATFORMS.len() * edge::COUNTRIES.len(),
        placements: opts.placements,
        period_ms: opts.period_ms,
        samples_per_window: opts.samples,
        recent_windows: 5,
        ..RunCosts::default()
    };
    let mut conn = ctx.redis.conn();

    // 1. Placements and their first plans.
    let empty = probe::used_memory(&mut conn)?;
    for i in 0..opts.placements {
        let spec = edge::targets(opts.campaigns, 0.3, opts.samples, 0);
        let status = ctx.data.put_targets(&edge::placement(i), &spec, MANAGER_TOKEN).await.status();
        ensure!(status.as_u16() == 201, "PUT targets of placement {i}: {status}");
    }
    let keys: Vec<String> = (0..opts.placements).map(edge::kv_key).collect();
    ctx.wait_plans(&keys, 60).await?;
    let placed = probe::used_memory(&mut conn)?;
    out.memory.used_memory_empty = empty;
    out.memory.used_memory_per_new_placement = (placed as f64 - empty as f64) / opts.placements as f64;

    // 2. Warm-up.
    ctx.drive(Shape::Mixed, opts.warmup_windows).await?;

    // 3. Command phases, the control replica stopped.
    ctx.control.child.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    probe::wait_drained(&mut conn, Duration::from_secs(120))?;
    for shape in [Shape::Single, Shape::Batch, Shape::Mixed] {
        let before = probe::command_counts(&mut conn)?;
        let late0 = ctx.data.metric("allot_aggregate_late_events_total").await;
        let sent = ctx.drive(shape, opts.phase_windows).await?;
        probe::wait_drained(&mut conn, Duration::from_secs(120))?;
        let by_command = probe::delta(&before, &probe::command_counts(&mut conn)?)?;
        let total = by_command.values().sum();
        let late_events = (ctx.data.metric("allot_aggregate_late_events_total").await - late0).max(0.0) as u64;
        out.commands.insert(
            shape.name().into(),
            CommandPhase {
                bodies: sent.bodies,
                entries: sent.entries,
                events: sent.events,
                late_events,
                by_command,
                total,
            },
        );
        match shape {
            Shape::Single => out.wire.single_body_bytes_per_event = sent.bytes as f64 / sent.events as f64,
            Shape::Batch => {
                out.wire.batch_body_bytes_per_event = sent.bytes as f64 / sent.events as f64;
                out.wire.batch_gzip_bytes_per_event = sent.gzip_bytes as f64 / sent.events as f64;
            }
            Shape::Mixed => {}
        }
    }
    out.wire.signature_header_bytes = sample_signature_header().len() as u64;

    // 4. Control phase.
    ctx.control.child.signal("-CONT");
    let leader = async || ctx.control.metric("allot_control_leader").await == 1.0;
    ensure!(
        allot_testkit::poll::until(Duration::from_secs(30), leader).await.is_some(),
        "the control replica did not take the lease again"
    );
    let pid = ctx.control.child.id();
    let cpu_seconds = |pid| cpu_seconds(pid).context("the control replica's CPU time");
    let (cpu0, rounds0) = (cpu_seconds(pid)?, ctx.control.metric("allot_control_rounds_total").await);
    let writes0 = ctx.kv.writes().len();
    ctx.drive(Shape::Mixed, opts.control_windows).await?;
    probe::wait_drained(&mut conn, Duration::from_secs(120))?;
    let (cpu1, rounds1) = (cpu_seconds(pid)?, ctx.control.metric("allot_control_rounds_total").await);
    let placement_rounds = ((rounds1 - rounds0).max(0.0) as u64) * opts.placements as u64;
    out.control.placement_rounds = placement_rounds;
    out.control.cpu_seconds = cpu1 - cpu0;
    out.control.cpu_us_per_placement_round = (cpu1 - cpu0) * 1e6 / placement_rounds.max(1) as f64;
    let writes = ctx.kv.writes();
    out.kv = kv_costs(&writes, writes0, placement_rounds, republish_secs as f64 * 1000.0 / opts.period_ms as f64);

    // Memory while windows and markers are live.
    out.memory.classes = probe::memory_by_class(&mut conn)?;
    out.memory.used_memory_end = probe::used_memory(&mut conn)?;

    // The control rounds' own commands: the data path stopped, no traffic, while the
    // recent windows still hold this run's counts.
    ctx.data.child.signal("-STOP");
    let before = probe::command_counts(&mut conn)?;
    let r0 = ctx.control.metric("allot_control_rounds_total").await;
    tokio::time::sleep(Duration::from_millis(opts.period_ms * 3)).await;
    let r1 = ctx.control.metric("allot_control_rounds_total").await;
    let by_command = probe::delta(&before, &probe::command_counts(&mut conn)?)?;
    ctx.data.child.signal("-CONT");
    let rounds = ((r1 - r0).max(0.0) as u64) * opts.placements as u64;
    ensure!(rounds > 0, "the control replica ran no round in {} periods", 3);
    out.control.commands_per_placement_round = by_command.values().sum::<u64>() as f64 / rounds as f64;

    // 5. A target change: published at once, once.
    let changed = edge::placement(0);
    let key0 = edge::kv_key(0);
    let before_change = ctx.kv.writes().len();
    let t0 = Instant::now();
    let spec = edge::targets(opts.campaigns, 0.35, opts.samples, 1);
    let status = ctx.data.put_targets(&changed, &spec, MANAGER_TOKEN).await.status();
    ensure!(status.as_u16() == 200, "PUT changed targets: {status}");
    let first = allot_testkit::poll::until(Duration::from_secs(30), async || {
        ctx.kv.writes()[before_change..].iter().find(|w| w.keys.contains(&key0)).map(|w| w.at)
    })
    .await
    .context("the changed targets never reached KV")?;
    tokio::time::sleep(Duration::from_millis(opts.period_ms * 2)).await;
    let within = first + Duration::from_millis(opts.period_ms * 2);
    out.kv.target_change_ms = (first - t0).as_millis() as u64;
    out.kv.target_change_writes =
        ctx.kv.writes()[before_change..].iter().filter(|w| w.at <= within && w.keys.contains(&key0)).count() as u64;

    // The archive: everything accepted was flushed once both groups drained.
    probe::wait_drained(&mut conn, Duration::from_secs(120))?;
    let rows = ctx.data.metric("allot_archive_rows_total{dataset=\"events\"}").await as u64;
    let objects: Vec<String> = s3.parquet_keys().into_iter().filter(|k| k.contains("events/")).collect();
    let bytes: u64 = objects.iter().map(|k| std::fs::metadata(s3.bucket_dir().join(k)).map_or(0, |m| m.len())).sum();
    ensure!(rows == ctx.accepted, "{rows} events archived of {} accepted", ctx.accepted);
    out.archive = Archive {
        objects: objects.len() as u64,
        rows,
        bytes,
        bytes_per_row: bytes as f64 / rows.max(1) as f64,
        flush_max_age_secs: opts.flush_max_age_secs,
    };
    let malformed = ctx.kv.malformed();
    ensure!(malformed.is_empty(), "the KV endpoint refused requests: {malformed:?}");
    out.events_accepted = ctx.accepted;
    out.events_dropped = ctx.dropped;
    out.impressions_per_allocation = ctx.impressions as f64 / ctx.allocations.max(1) as f64;
    Ok(out)
}

/// A signature header as the edge sends it (its length is what matters).
fn sample_signature_header() -> String {
    allot_core::signature::sign(b"0123456789abcdef0123456789abcdef", 1_790_000_000, b"{}")
}

/// KV writes from `writes[from..]`: each key's publish compared with the same key's
/// previous one — unchanged (rate and weight shares within 1 %) means the age rule.
fn kv_costs(writes: &[crate::kv::BulkWrite], from: usize, placement_rounds: u64, republish_periods: f64) -> Kv {
    let mut last: BTreeMap<&str, Plan> = BTreeMap::new();
    let mut kv = Kv { placement_rounds, republish_after_periods: republish_periods, ..Kv::default() };
    let (mut bytes, mut keys) = (0usize, 0usize);
    for (i, w) in writes.iter().enumerate() {
        for (k, v) in w.keys.iter().zip(&w.values) {
            let Ok(plan) = Plan::parse(v.as_bytes()) else { continue };
            if i >= from {
                kv.writes += 1;
                match last.get(k.as_str()) {
                    Some(prev) if same_plan(prev, &plan) => kv.writes_age_rule += 1,
                    _ => kv.writes_changed += 1,
                }
            }
            last.insert(k, plan);
        }
        if i >= from {
            kv.bulk_requests += 1;
            kv.max_keys_per_request = kv.max_keys_per_request.max(w.keys.len() as u64);
            bytes += w.bytes;
            keys += w.keys.len();
        }
    }
    kv.bytes_per_key = bytes as f64 / keys.max(1) as f64;
    kv
}

fn same_plan(a: &Plan, b: &Plan) -> bool {
    fn share(p: &Plan) -> Vec<f64> {
        let total = p.no_ad_weight + p.campaigns.iter().map(|c| c.weight).sum::<f64>();
        std::iter::once(p.no_ad_weight).chain(p.campaigns.iter().map(|c| c.weight)).map(|w| w / total).collect()
    }
    a.sample_rate == b.sample_rate
        && a.campaigns.len() == b.campaigns.len()
        && a.campaigns.iter().zip(&b.campaigns).all(|(x, y)| x.id == y.id && x.creative == y.creative)
        && share(a).iter().zip(share(b)).all(|(x, y)| (x - y).abs() <= 0.01 * x.max(1e-6))
}

/// What one [`Ctx::drive`] sent.
#[derive(Debug, Default)]
struct Sent {
    bodies: u64,
    entries: u64,
    events: u64,
    bytes: u64,
    gzip_bytes: u64,
}

impl Ctx {
    async fn wait_plans(&self, keys: &[String], secs: u64) -> anyhow::Result<()> {
        let all = async || keys.iter().all(|k| self.kv.plan(k).is_some());
        if allot_testkit::poll::until(Duration::from_secs(secs), all).await.is_none() {
            bail!("not every placement had a plan in KV after {secs} s");
        }
        Ok(())
    }

    /// `windows` control windows of traffic in `shape`: each window, every placement's
    /// sampled requests under its plan in KV (at most 2× the samples its confidence
    /// needs, so the first plans' rate of 1 does not flood the run), posted at the
    /// window's start; then the rest of the window is waited out.
    async fn drive(&mut self, shape: Shape, windows: u64) -> anyhow::Result<Sent> {
        let mut sent = Sent::default();
        let o = self.opts.clone();
        for _ in 0..windows {
            // Aligned to the windows the origin counts in, so every body has the whole
            // window plus the lateness to be applied: a late delta costs extra commands
            // and would blur the comparison between shapes.
            let into = allot_testkit::events::now_ms() % o.period_ms;
            if into > 0 {
                tokio::time::sleep(Duration::from_millis(o.period_ms - into)).await;
            }
            let start = Instant::now();
            let now_ms = allot_testkit::events::now_ms();
            let mut per_placement = Vec::with_capacity(o.placements);
            for i in 0..o.placements {
                let plan =
                    self.kv.plan(&edge::kv_key(i)).and_then(edge::compile).context("a placement without a plan")?;
                let wanted = (o.requests_per_window * plan.plan().sample_rate).min(2.0 * o.samples);
                let events = self.edge.requests(&plan, wanted.round() as usize, now_ms);
                per_placement.push(events);
            }
            for events in per_placement.iter().flatten() {
                match events.kind {
                    allot_core::EventKind::Allocation => self.allocations += 1,
                    allot_core::EventKind::Impression => self.impressions += 1,
                }
            }
            let bodies = edge::bodies(shape, per_placement);
            for b in &bodies {
                sent.bodies += 1;
                sent.bytes += b.len() as u64;
                let batch = EventBatch::parse(b.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
                sent.events += batch.events.len() as u64;
                sent.entries += batch.events.iter().map(|e| e.placement.as_str()).collect::<HashSet<_>>().len() as u64;
                if shape == Shape::Batch {
                    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
                    gz.write_all(b.as_bytes())?;
                    sent.gzip_bytes += gz.finish()?.len() as u64;
                }
            }
            self.post_all(bodies).await?;
            let window = Duration::from_millis(o.period_ms);
            if let Some(rest) = window.checked_sub(start.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        Ok(sent)
    }

    /// Posts `bodies`, 16 at a time, signed now; every one must be answered 202.
    async fn post_all(&mut self, bodies: Vec<String>) -> anyhow::Result<()> {
        let url = self.data.url("/v1/events");
        let mut set = tokio::task::JoinSet::new();
        let mut pending = bodies.into_iter();
        loop {
            while set.len() < 16 {
                let Some(body) = pending.next() else { break };
                let (http, url) = (self.http.clone(), url.clone());
                set.spawn(async move {
                    let r = allot_testkit::origin::signed_post(&http, &url, &body).send().await?;
                    let status = r.status().as_u16();
                    let answer: serde_json::Value = r.json().await.unwrap_or_default();
                    anyhow::Ok((status, answer))
                });
            }
            let Some(done) = set.join_next().await else { break };
            let (status, answer) = done??;
            ensure!(status == 202, "POST /v1/events answered {status}: {answer}");
            self.accepted += answer["accepted"].as_u64().unwrap_or(0);
            self.dropped += answer["dropped"].as_u64().unwrap_or(0);
        }
        Ok(())
    }
}
