//! The control loop: once per period, under a lease, every placement's next plan.
//!
//! Placements are spread over control shards, each with its own lease
//! ([`crate::shards`]); an origin runs rounds only for the shards it holds, so N
//! replicas share the work and never publish competing plans. The leases are kept on
//! their own task, concurrently with the rounds; a round reads its shard's grant (a
//! [`Fence`]: an epoch and a validity) and, when it has none, does nothing. Full rounds
//! run just after each window closes; a placement whose targets changed (the admin API
//! marks it in `allot:dirty` and wakes this loop) gets a round at once from the origin
//! holding its shard ([`crate::pass`]).
//!
//! A round is a call into core (`Policy::run`: controller, sample-rate planner, and the
//! publish-or-not decision) fed with the placement's targets, its last `K` complete
//! windows and the plan in force. Then, for each plan to publish, under the grant:
//!
//! 1. its version is allocated in Redis for the grant's epoch (atomically, above every
//!    version allocated before), so two holders never publish two plans under one
//!    version, and a holder whose epoch is older than the placement has seen is refused;
//! 2. it is checked (`Plan::check`) and recorded in the placement's plan list (what
//!    ingest learns versions from), so events decided under it are counted even if it
//!    is never stored as current;
//! 3. it is published only while the grant is valid, with the grant's end as the
//!    publish's deadline;
//! 4. the published plan's snapshot, with its targets, goes to the plan log
//!    (`allot:plans`, from which the archiver writes the `plans` table);
//! 5. it is stored as current only forward and only for a current epoch (one script),
//!    so a holder that stalled past its grant cannot set the stored plan back.
//!
//! A plan that fails to publish is not stored, so the next round publishes again, under
//! a new version. A deleted placement gets one withdrawn plan and leaves the registry,
//! by compare-and-delete on the registration stamp read *before* its targets: a `PUT`
//! that registered it meanwhile (every `PUT` registers after its write) keeps it in.

use std::sync::Arc;
use std::time::Duration;

use allot_core::{Fence, PlacementId, Plan, Published, Targets, WindowStats};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::gauges::PlacementReading;
use crate::inputs::Inputs;
use crate::lease::LeaseView;
use crate::publish::{PublishError, Publisher};
use crate::startup::App;
use crate::store::{Fenced, PlanRecord, StoreError};
use allot_core::contract::{PlanSnapshot, stream};

/// When the next full round is due: once the current window is complete, its late
/// events arrived (`control.lateness_ms` after it closes, see `ControlConfig::lateness`).
fn next_full_round_ms(now_ms: u64, cfg: &crate::config::ControlConfig) -> u64 {
    let watermark = now_ms.saturating_sub(cfg.lateness());
    (WindowStats::window_index(watermark, cfg.period_ms) + 1) * cfg.period_ms + cfg.lateness()
}

/// Runs until `cancel`; the shard leases are kept (and given back at the end) by
/// [`crate::shards`], and each round covers one shard's placements ([`crate::pass`]).
pub async fn run(app: Arc<App>, publisher: Arc<Publisher>, cancel: CancellationToken) {
    let (mut shards, keeper) = crate::shards::spawn(app.clone());
    let cfg = app.config.control.clone();
    let wake_every = Duration::from_millis(cfg.period_ms.min(cfg.lease_ms / 3).max(50));
    let mut next_full = 0;
    let mut pass = crate::pass::Pass::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wake_every) => {}
            _ = app.control_wake.notified() => {}
            _ = shards.changed() => {}
        }
        let now = crate::now_ms();
        let full = now >= next_full;
        if full {
            next_full = next_full_round_ms(now, &cfg);
        }
        let result = async {
            for (shard, placements) in pass.due(&app, &shards, full).await? {
                // Given back or lost since: its new holder runs it.
                let Some(busy) = shards.begin(shard) else { continue };
                round(&app, &publisher, busy.lease(), &placements, now).await;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = result.await {
            tracing::warn!(error = %e, "control round failed");
        }
        pass.finish(&app);
    }
    shards.leave();
    if let Err(e) = keeper.await {
        tracing::warn!(error = %e, "the shard task failed");
    }
    tracing::info!("control loop stopped");
}

/// A plan to publish and, for a withdrawal, the registration stamp under which the
/// placement leaves the registry once it is out.
struct Pending {
    placement: PlacementId,
    record: PlanRecord,
    withdrawing: Option<u64>,
    /// Why it is published (logged and counted): `core::Publish`, or a withdrawal.
    why: &'static str,
}

/// One round over `placements`: decide, allocate versions, check, publish, store; each
/// step only while `lease` grants it.
pub async fn round(app: &App, publisher: &Publisher, lease: &LeaseView, placements: &[PlacementId], now_ms: u64) {
    app.metrics.control_rounds.inc();
    let mut pending = Vec::new();
    for p in placements {
        let Some(fence) = lease.current() else { return };
        match prepare(app, p, now_ms, &fence).await {
            Ok(Some(x)) => pending.push(x),
            Ok(None) => {}
            Err(e) => tracing::warn!(placement = %p, error = %e, "control round skipped a placement"),
        }
    }
    if pending.is_empty() {
        return;
    }
    // A pause here (the failpoint) is caught by the check that follows.
    stall(app, "publish").await;
    let Some(fence) = lease.current() else {
        app.metrics.control_fenced.with_label_values(&["publish"]).inc_by(pending.len() as u64);
        tracing::warn!(plans = pending.len(), "control lease lost before publishing; the round is abandoned");
        return;
    };
    let plans: Vec<Plan> = pending.iter().map(|x| x.record.plan.clone()).collect();
    let results = match tokio::time::timeout_at(LeaseView::deadline(&fence), publisher.publish(&plans)).await {
        Ok(results) => results,
        Err(_) => {
            app.metrics.control_fenced.with_label_values(&["publish"]).inc_by(pending.len() as u64);
            tracing::warn!(plans = pending.len(), "the publish outlasted the control lease; abandoned");
            return;
        }
    };
    stall(app, "save").await;
    for (mut x, result) in pending.into_iter().zip(results) {
        let result = match result {
            Err(PublishError::Behind { held }) => supersede(app, publisher, &mut x, held, &fence).await,
            other => other,
        };
        if let Err(e) = result {
            app.metrics.publish_failures.inc();
            tracing::warn!(placement = %x.placement, version = x.record.plan.version, error = %e, "publish failed");
            continue;
        }
        app.metrics.plans_published.with_label_values(&[x.why]).inc();
        log_plan(app, &x.record).await;
        store(app, &x, fence.epoch).await;
    }
}

/// How far above its own versions the origin follows an edge's. A Redis restored from
/// an older copy is behind by the plans published since, thousands at most; only a
/// push with the push key is further, and following one near the top of the versions
/// (`plan::MAX_VERSION`) would leave the placement none to publish.
const MAX_FOLLOW: u64 = 1_000_000;

/// The edge already holds version `held`, at or above the one `x` was issued under:
/// this placement's versions fell behind the edge's (Redis restored from an older copy,
/// a plan pushed with the push key). Left so, every later push would be refused, and
/// the edge would go on serving a plan whose events ingest no longer knows. So versions
/// are allocated above it from now on, and the plan is issued and pushed once more,
/// under the next, while the lease lasts.
async fn supersede(
    app: &App,
    publisher: &Publisher,
    x: &mut Pending,
    held: u64,
    fence: &Fence,
) -> Result<(), PublishError> {
    let behind = || PublishError::Behind { held };
    if held >= x.record.plan.version.saturating_add(MAX_FOLLOW) {
        tracing::error!(placement = %x.placement, held, "the edge holds a version far above this placement's; not followed: delete its plan from KV");
        return Err(behind());
    }
    app.metrics.publish_superseded.inc();
    tracing::warn!(placement = %x.placement, version = x.record.plan.version, held, "the edge holds a newer version; publishing above it");
    let Ok(Some(version)) = allocate(app, &x.placement, fence, held).await else { return Err(behind()) };
    x.record.plan.version = version;
    if !matches!(issue(app, &x.placement, &x.record.plan, fence).await, Ok(true)) {
        return Err(behind());
    }
    let again = publisher.publish(std::slice::from_ref(&x.record.plan));
    match tokio::time::timeout_at(LeaseView::deadline(fence), again).await {
        Ok(mut results) => results.pop().unwrap_or_else(|| Err(behind())),
        Err(_) => Err(behind()),
    }
}

/// Stores a published plan as current (fenced: only forward, only for a current epoch)
/// and, after a withdrawal, takes the placement out of the registry.
async fn store(app: &App, x: &Pending, epoch: u64) {
    let stored = async {
        let saved = app.store.save_plan(&x.placement, &x.record, epoch).await?;
        if let (Fenced::Done(()), Some(stamp)) = (saved, x.withdrawing) {
            app.store.unregister(&x.placement, stamp).await?;
        }
        Ok::<_, StoreError>(saved)
    };
    let (placement, version) = (&x.placement, x.record.plan.version);
    match stored.await {
        Ok(Fenced::Done(())) => {
            if x.withdrawing.is_none() {
                app.metrics.delivery.plan_in_force(
                    placement.as_str(),
                    x.record.plan.sample_rate,
                    x.record.published_at_ms,
                );
            }
            tracing::info!(%placement, version, sample_rate = x.record.plan.sample_rate, why = x.why, "plan published")
        }
        Ok(Fenced::Epoch) => fenced(app, placement, epoch, "save").await,
        Ok(Fenced::Stale) => {
            app.metrics.control_fenced.with_label_values(&["save"]).inc();
            tracing::warn!(%placement, version, "a newer plan is stored; not stored");
        }
        Err(e) => tracing::error!(%placement, error = %e, "plan published but not stored"),
    }
}

/// The `stall_before_publish` and `stall_before_save` failpoints: the process pauses
/// (GC, a stopped VM, a slow disk), renewals included, for three lease times.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
async fn stall(app: &App, at: &str) {
    #[cfg(feature = "failpoints")]
    {
        use crate::config::Failpoint;
        let wanted = match at {
            "publish" => Failpoint::StallBeforePublish,
            _ => Failpoint::StallBeforeSave,
        };
        if app.config.control.failpoint == Some(wanted) {
            tracing::warn!(at, "failpoint: pausing for three lease times");
            app.pause.set(true);
            tokio::time::sleep(Duration::from_millis(app.config.control.lease_ms * 3)).await;
            app.pause.set(false);
        }
    }
}

/// Appends the published plan's snapshot (targets included) to the plan log, which the
/// archiver writes to the `plans` table. No `MAXLEN`: the log is trimmed by what the
/// archiver has read ([`crate::trim`]). A failure is counted and logged, not retried:
/// the plan is out, and the reports leave that version's traffic out of the target mean.
async fn log_plan(app: &App, record: &PlanRecord) {
    let snapshot = PlanSnapshot::new(&record.plan, record.decision.as_ref(), record.targets_rev);
    let mut c = app.store.conn();
    let appended: Result<String, _> =
        c.xadd(stream::PLAN_LOG, "*", &stream::plan_entry(snapshot.placement.as_str(), &snapshot.to_json())).await;
    if let Err(e) = appended {
        app.metrics.plan_log_failures.inc();
        tracing::error!(placement = %snapshot.placement, version = snapshot.version, error = %e, "plan log append failed");
    }
}

async fn prepare(app: &App, p: &PlacementId, now_ms: u64, fence: &Fence) -> Result<Option<Pending>, StoreError> {
    let cfg = &app.config.control;
    // The stamp first: a PUT that registers the placement after this read keeps it in
    // the registry, whatever the targets read next say.
    let stamp = app.store.registration(p).await?;
    let record = app.store.targets(p).await?;
    let inputs = Inputs::read(app, p, now_ms).await?;
    let previous = inputs.previous.as_ref();
    let (rev, spec) = match record {
        Some(r) => (r.rev, r.spec),
        None => (0, None),
    };
    let Some(spec) = spec else {
        // Deleted: withdraw the ads once, then forget the placement.
        app.metrics.delivery.forget(p.as_str());
        return match previous {
            Some(prev) if !prev.plan.withdrawn => {
                let Some(version) = allocate(app, p, fence, prev.plan.version).await? else { return Ok(None) };
                let plan = Plan::withdrawn(p.clone(), version, now_ms, prev.plan.sample_rate);
                if !issue(app, p, &plan, fence).await? {
                    return Ok(None);
                }
                Ok(Some(Pending {
                    placement: p.clone(),
                    record: PlanRecord { plan, decision: None, targets_rev: rev, published_at_ms: now_ms },
                    withdrawing: Some(stamp.unwrap_or_default()),
                    why: "withdrawn",
                }))
            }
            _ => {
                if let Some(stamp) = stamp {
                    app.store.unregister(p, stamp).await?;
                }
                Ok(None)
            }
        };
    };
    if previous.is_none_or(|r| r.plan.withdrawn) {
        // Targets again after a withdrawal (or never published): make sure the
        // placement is in the registry, whatever the withdrawing round did after the
        // PUT registered it.
        app.store.register(p).await?;
    }
    let targets = Targets::parse(spec)
        .map_err(|e| StoreError::Corrupt { what: format!("targets of {p}"), message: e.to_string() })?;
    let changed = previous.is_none_or(|r| r.targets_rev != rev);
    let outcome =
        off_the_async_workers(|| crate::inputs::policy(cfg).run(inputs.round(p, &targets, changed, now_ms, cfg)));
    if !crate::inputs::keep_state(app, p, &outcome.decision.state, fence).await? {
        return Ok(None);
    }
    let stragglers = outcome.decision.state.stragglers.allowance(&inputs.evidence, targets.confidence.level);
    let campaigns = crate::status::campaigns(&targets, &inputs.evidence, stragglers, Some(&outcome.decision));
    app.metrics.delivery.observe(
        p.as_str(),
        &PlacementReading {
            campaigns: &campaigns,
            sample_rate: previous.map(|r| r.plan.sample_rate),
            published_at_ms: previous.map(|r| r.published_at_ms),
            attainable: inputs.attainable(&targets),
            margin: targets.confidence.margin,
            lagging_share: outcome.decision.lag.stuck(),
        },
    );
    crate::history::record(app, p, &inputs, stragglers, campaigns).await;
    let Some(Published { mut plan, why }) = outcome.publish else { return Ok(None) };
    if let Err(e) = plan.check() {
        // Never issued, never published: the plan in force stays.
        tracing::error!(placement = %p, error = %e, "the controller made an invalid plan; not published");
        return Ok(None);
    }
    let Some(version) = allocate(app, p, fence, previous.map_or(0, |r| r.plan.version)).await? else {
        return Ok(None);
    };
    plan.version = version;
    if !issue(app, p, &plan, fence).await? {
        return Ok(None);
    }
    Ok(Some(Pending {
        placement: p.clone(),
        record: PlanRecord { plan, decision: Some(outcome.decision), targets_rev: rev, published_at_ms: now_ms },
        withdrawing: None,
        why: why.as_str(),
    }))
}

/// Runs the controller's CPU-bound work (solving and planning: up to ~10 ms for 64
/// campaigns over many profiles) where it does not hold an async worker. A pass over
/// thousands of placements is seconds of CPU; on the workers that also serve ingest it
/// would delay every event posted meanwhile. On a multi-threaded runtime the worker's
/// queue moves to another thread while this one computes; a single-threaded runtime (a
/// test's) has nowhere to move it and computes in place.
pub(crate) fn off_the_async_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Records `plan` as issued (see `Store::issue_plan`); `false` when a newer lease holder
/// has written the placement.
async fn issue(app: &App, p: &PlacementId, plan: &Plan, fence: &Fence) -> Result<bool, StoreError> {
    match app.store.issue_plan(p, plan, app.config.control.history_len, fence.epoch).await? {
        Fenced::Done(()) => Ok(true),
        _ => {
            fenced(app, p, fence.epoch, "allocate").await;
            Ok(false)
        }
    }
}

/// The version for a new plan of `p` under `fence`; `None` when a newer lease holder
/// has written the placement (this one has lost the lease).
async fn allocate(app: &App, p: &PlacementId, fence: &Fence, floor: u64) -> Result<Option<u64>, StoreError> {
    match app.store.allocate_version(p, fence.epoch, floor).await? {
        Fenced::Done(v) => Ok(Some(v)),
        _ => {
            fenced(app, p, fence.epoch, "allocate").await;
            Ok(None)
        }
    }
}

/// A write of `p` under lease `epoch` refused by the placement's fence (`what`:
/// `allocate`, `save`, `state`): counted and logged. A fence above the grant goes to the
/// shard task: normally the shard changed hands, but it may be an epoch Redis's counter
/// never issued, after a restore from an older copy (`Membership::fenced_above`).
pub async fn fenced(app: &App, p: &PlacementId, epoch: u64, what: &'static str) {
    app.metrics.control_fenced.with_label_values(&[what]).inc();
    tracing::warn!(placement = %p, epoch, what, "a newer lease holder has written this placement; not written");
    match app.store.fence_epoch(p).await {
        Ok(seen) if seen > epoch => {
            app.control.fenced_above(allot_core::shard::shard_of(p.as_str(), app.config.control.shards), seen)
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(placement = %p, error = %e, "reading the placement's fence failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_controllers_work_leaves_the_only_worker_to_other_tasks() {
        use std::sync::atomic::{AtomicBool, Ordering};
        // A round on the runtime's one worker spawns another task (as a request would
        // arrive), then computes: that task can only run if the worker's queue moved to
        // another thread while the computation holds this one.
        let round = tokio::spawn(async {
            let served = Arc::new(AtomicBool::new(false));
            let flag = served.clone();
            let other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
            let waited = off_the_async_workers(|| {
                let start = std::time::Instant::now();
                while !served.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                start.elapsed()
            });
            other.await.unwrap();
            (served.load(Ordering::SeqCst), waited)
        });
        let (served, waited) = round.await.unwrap();
        assert!(served && waited < Duration::from_secs(2), "the other task waited {waited:?} for the computation");
    }

    #[tokio::test]
    async fn a_single_threaded_runtime_computes_in_place() {
        assert_eq!(off_the_async_workers(|| 7), 7);
    }

    #[test]
    fn full_rounds_follow_window_ends_by_the_lateness() {
        let cfg =
            |period_ms, lateness_ms| crate::config::ControlConfig { period_ms, lateness_ms, ..Default::default() };
        let c = cfg(60_000, 10_000);
        assert_eq!(next_full_round_ms(0, &c), 70_000);
        assert_eq!(next_full_round_ms(10_000, &c), 70_000);
        assert_eq!(next_full_round_ms(61_000, &c), 70_000);
        assert_eq!(next_full_round_ms(71_000, &c), 130_000);
        // Window 1 (60–120 s) is complete at 130 s, not before.
        assert_eq!(c.last_complete_window(129_999), 0);
        assert_eq!(c.last_complete_window(130_000), 1);
        // At most a quarter period.
        assert_eq!(next_full_round_ms(150, &cfg(1000, 10_000)), 1250);
        assert_eq!(next_full_round_ms(150, &cfg(1000, 0)), 1000);
    }
}
