//! The control loop: once per period, under a lease, every placement's next plan.
//!
//! Only the replica holding the Redis lease (`allot:control:lease`, `SET NX PX`, renewed
//! well inside its TTL) runs rounds, so N replicas never publish competing plans. Full
//! rounds run just after each window closes; a placement whose targets changed (the
//! admin API marks it in `allot:dirty` and wakes this loop) gets a round at once.
//!
//! A round is a call into core (`Policy::run`: controller, sample-rate planner, and the
//! publish-or-not decision) fed with the placement's targets, its last `K` complete
//! windows and the plan in force. Plans are published first and stored as current only
//! once the publish succeeded, so a failed publish is retried next round with the same
//! version. Each published plan's snapshot, with the targets it was made for, goes to the
//! plan log (`allot:plans`), from which the archiver writes the `plans` table. A deleted
//! placement gets one last, empty plan (no ads) and leaves the registry.

use std::sync::Arc;
use std::time::Duration;

use allot_core::{Controller, PlacementId, Plan, Policy, Round, SampleRatePlanner, Targets, WindowStats};
use redis::AsyncCommands;
use redis::streams::StreamMaxlen;
use tokio_util::sync::CancellationToken;

use crate::publish::Publisher;
use crate::startup::App;
use crate::store::{PlanRecord, StoreError};
use allot_core::contract::{PlanSnapshot, keys, stream};

const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
";
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Takes or renews the lease for `holder`; whether this instance holds it now.
pub async fn acquire_lease(app: &App, holder: &str) -> Result<bool, redis::RedisError> {
    let mut c = app.store.conn();
    let got: i64 = redis::Script::new(ACQUIRE)
        .key(keys::LEASE)
        .arg(holder)
        .arg(app.config.control.lease_ms)
        .invoke_async(&mut c)
        .await?;
    Ok(got == 1)
}

async fn release_lease(app: &App, holder: &str) {
    let mut c = app.store.conn();
    let r: Result<i64, _> = redis::Script::new(RELEASE).key(keys::LEASE).arg(holder).invoke_async(&mut c).await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not release the control lease");
    }
}

/// When the next full round is due: shortly after the current window closes, so late
/// events of that window have arrived.
fn next_full_round_ms(now_ms: u64, period_ms: u64) -> u64 {
    let grace = (period_ms / 20).min(2000);
    (WindowStats::window_index(now_ms, period_ms) + 1) * period_ms + grace
}

/// Runs until `cancel`, then releases the lease.
pub async fn run(app: Arc<App>, publisher: Arc<Publisher>, cancel: CancellationToken) {
    let cfg = app.config.control.clone();
    let wake_every = Duration::from_millis(cfg.period_ms.min(cfg.lease_ms / 3).max(50));
    let mut next_full = 0;
    let mut leader = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wake_every) => {}
            _ = app.control_wake.notified() => {}
        }
        match acquire_lease(&app, &app.instance).await {
            Ok(true) => {
                if !leader {
                    tracing::info!(instance = %app.instance, "control lease acquired");
                    // A new leader starts with a full round.
                    next_full = 0;
                }
                leader = true;
            }
            Ok(false) => {
                if leader {
                    tracing::warn!("control lease lost");
                }
                leader = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control lease check failed");
                leader = false;
            }
        }
        app.metrics.control_leader.set(i64::from(leader));
        if !leader {
            continue;
        }
        let now = crate::now_ms();
        let result = async {
            let mut placements = app.store.take_dirty().await?;
            if now >= next_full {
                next_full = next_full_round_ms(now, cfg.period_ms);
                placements.extend(app.store.placements().await?);
            }
            placements.sort();
            placements.dedup();
            if !placements.is_empty() {
                round(&app, &publisher, &placements, now).await;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = result.await {
            tracing::warn!(error = %e, "control round failed");
        }
    }
    if leader {
        release_lease(&app, &app.instance).await;
        app.metrics.control_leader.set(0);
    }
    tracing::info!("control loop stopped");
}

/// A plan to publish, and whether the placement leaves the registry once it is out.
struct Pending {
    placement: PlacementId,
    record: PlanRecord,
    deleting: bool,
}

/// One round over `placements`: decide, publish, store.
pub async fn round(app: &App, publisher: &Publisher, placements: &[PlacementId], now_ms: u64) {
    app.metrics.control_rounds.inc();
    let mut pending = Vec::new();
    for p in placements {
        match prepare(app, p, now_ms).await {
            Ok(Some(x)) => pending.push(x),
            Ok(None) => {}
            Err(e) => tracing::warn!(placement = %p, error = %e, "control round skipped a placement"),
        }
    }
    if pending.is_empty() {
        return;
    }
    let plans: Vec<Plan> = pending.iter().map(|x| x.record.plan.clone()).collect();
    let results = publisher.publish(&plans).await;
    for (x, result) in pending.into_iter().zip(results) {
        if let Err(e) = result {
            app.metrics.publish_failures.inc();
            tracing::warn!(placement = %x.placement, version = x.record.plan.version, error = %e, "publish failed");
            continue;
        }
        app.metrics.plans_published.inc();
        log_plan(app, &x.record).await;
        let stored = async {
            app.store.save_plan(&x.placement, &x.record, app.config.control.history_len).await?;
            if x.deleting {
                app.store.unregister(&x.placement).await?;
            }
            Ok::<_, StoreError>(())
        };
        match stored.await {
            Ok(()) => tracing::info!(
                placement = %x.placement,
                version = x.record.plan.version,
                sample_rate = x.record.plan.sample_rate,
                "plan published"
            ),
            Err(e) => tracing::error!(placement = %x.placement, error = %e, "plan published but not stored"),
        }
    }
}

/// Appends the published plan's snapshot (targets included) to the plan log, which the
/// archiver writes to the `plans` table. A failure is counted and logged, not retried:
/// the plan is out, and the reports leave that version's traffic out of the target mean.
async fn log_plan(app: &App, record: &PlanRecord) {
    let snapshot = PlanSnapshot::new(&record.plan, record.decision.as_ref(), record.targets_rev);
    let mut c = app.store.conn();
    let appended: Result<String, _> = c
        .xadd_maxlen(
            stream::PLAN_LOG,
            StreamMaxlen::Approx(stream::PLAN_LOG_MAX_LEN),
            "*",
            &stream::plan_entry(snapshot.placement.as_str(), &snapshot.to_json()),
        )
        .await;
    if let Err(e) = appended {
        app.metrics.plan_log_failures.inc();
        tracing::error!(placement = %snapshot.placement, version = snapshot.version, error = %e, "plan log append failed");
    }
}

async fn prepare(app: &App, p: &PlacementId, now_ms: u64) -> Result<Option<Pending>, StoreError> {
    let cfg = &app.config.control;
    let record = app.store.targets(p).await?;
    let previous = app.store.plan_record(p).await?;
    let (rev, spec) = match record {
        Some(r) => (r.rev, r.spec),
        None => (0, None),
    };
    let Some(spec) = spec else {
        // Deleted: withdraw the ads once, then forget the placement.
        return match previous {
            Some(prev) if !prev.plan.withdrawn => Ok(Some(Pending {
                placement: p.clone(),
                record: PlanRecord {
                    plan: Plan::withdrawn(p.clone(), prev.plan.version + 1, now_ms, prev.plan.sample_rate),
                    decision: None,
                    targets_rev: rev,
                    published_at_ms: now_ms,
                },
                deleting: true,
            })),
            _ => {
                app.store.unregister(p).await?;
                Ok(None)
            }
        };
    };
    let targets = Targets::parse(spec)
        .map_err(|e| StoreError::Corrupt { what: format!("targets of {p}"), message: e.to_string() })?;
    let current = WindowStats::window_index(now_ms, cfg.period_ms);
    let indices: Vec<u64> = (1..=cfg.recent_windows).filter_map(|i| current.checked_sub(i)).collect();
    let windows = app.store.windows(p, &indices).await?;
    let mut recent = WindowStats::default();
    for w in &windows {
        recent.merge(w);
    }
    let last = windows.first().filter(|w| w.requests.n > 0 || !w.campaigns.is_empty());
    let state = app.store.control_state(p).await?;
    let policy = Policy {
        controller: Controller::default(),
        planner: SampleRatePlanner { min_rate: cfg.min_sample_rate, ..SampleRatePlanner::default() },
    };
    let outcome = policy.run(Round {
        placement: p,
        targets: &targets,
        recent: &recent,
        last,
        previous: previous.as_ref().map(|r| &r.plan),
        state: &state,
        targets_changed: previous.as_ref().is_none_or(|r| r.targets_rev != rev),
        now_ms,
        republish_after_ms: cfg.republish_after_secs.saturating_mul(1000),
    });
    Ok(outcome.plan.map(|plan| Pending {
        placement: p.clone(),
        record: PlanRecord { plan, decision: Some(outcome.decision), targets_rev: rev, published_at_ms: now_ms },
        deleting: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_rounds_follow_window_ends() {
        assert_eq!(next_full_round_ms(0, 60_000), 62_000);
        assert_eq!(next_full_round_ms(61_000, 60_000), 122_000);
        assert_eq!(next_full_round_ms(150, 1000), 1050);
    }
}
