//! What a round looks at, read from Redis: the placement's recent complete windows, the
//! plan in force and the controller's state; and where the round's state goes back.
//!
//! **Complete windows only.** A window's events keep arriving after it ends (the edge
//! batches them, a send may time out and be retried), so a window read at its end is
//! partial: too few requests (the planner would raise the rate for nothing) and a
//! share from part of it (feedback would learn from it). A window counts as complete
//! `control.lateness_ms` after its end (at most a quarter period,
//! `ControlConfig::lateness`), and rounds, the preview and the status read complete
//! windows only. The price: each plan is made that much later. A placement measured on
//! impressions waits for those too (`control.impression_lateness_ms`): which windows a
//! round looks at is core's choice ([`allot_core::evidence`]), made here once for the
//! round, the preview, the history and the status.
//!
//! **State every round.** The controller's state (corrections and what feedback has
//! learnt under the weights in force) is stored after every round, published or not
//! ([`keep_state`]), fenced by the lease epoch like the plan writes; a round that
//! changes nothing still keeps what it learnt. A stored state core refuses is discarded
//! with a log line, and the round's own state replaces it.
//!
//! The control loop, the preview (a dry run of new targets) and the window history all
//! start from these, so a preview answers what the next round would do, and the history
//! records what the round saw.

use allot_core::{
    ControlState, Controller, Evidence, Fence, PlacementId, Policy, Round, SampleRatePlanner, Targets, WindowStats,
};

use crate::config::ControlConfig;
use crate::startup::App;
use crate::store::{Fenced, PlanRecord, StoreError};

/// The policy every round runs: the default controller and the configured planner.
pub fn policy(cfg: &ControlConfig) -> Policy {
    Policy {
        controller: Controller { lag_after_ms: cfg.lag_after_ms, ..Controller::default() },
        planner: SampleRatePlanner {
            min_rate: cfg.min_sample_rate,
            max_samples: cfg.max_samples_per_window as f64,
            ..SampleRatePlanner::default()
        },
        period_ms: cfg.period_ms,
        lateness_ms: cfg.lateness(),
        impression_lateness_ms: cfg.impression_lateness(),
        platforms: Some(cfg.platforms()),
    }
}

/// A placement's evidence at one moment.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The windows the round looks at: the last `recent_windows` complete ones.
    pub evidence: Evidence,
    pub previous: Option<PlanRecord>,
    pub state: ControlState,
}

impl Inputs {
    pub async fn read(app: &App, p: &PlacementId, now_ms: u64) -> Result<Self, StoreError> {
        Ok(Self {
            evidence: evidence(app, p, now_ms, app.config.control.recent_windows).await?,
            previous: app.store.plan_record(p).await?,
            state: state(app, p).await?,
        })
    }

    /// The last complete window, if anything was counted in it.
    pub fn last(&self) -> Option<&WindowStats> {
        self.evidence.last()
    }

    /// The index of the last window looked at (0 before the first ended).
    pub fn last_index(&self) -> u64 {
        self.evidence.last_index.unwrap_or(0)
    }

    /// Whether the last window's traffic can give `targets`' confidence at all, sampling
    /// every request; `None` when nothing was measured.
    pub fn attainable(&self, targets: &Targets) -> Option<bool> {
        attainable(self.last()?, targets)
    }

    /// The round for `targets` on this evidence.
    pub fn round<'a>(
        &'a self,
        placement: &'a PlacementId,
        targets: &'a Targets,
        targets_changed: bool,
        now_ms: u64,
        cfg: &ControlConfig,
    ) -> Round<'a> {
        Round {
            placement,
            targets,
            evidence: &self.evidence,
            previous: self.previous.as_ref().map(|r| &r.plan),
            state: &self.state,
            targets_changed,
            now_ms,
            republish_after_ms: cfg.republish_after_secs.saturating_mul(1000),
        }
    }
}

/// The controller's state of `p`; a stored one that core refuses (not a state at all, or
/// values the controller could not have written: a bug, an older version, a hand edit)
/// is logged and discarded, and learning starts afresh. Failing the read instead would
/// skip every round of the placement until someone repaired the key by hand.
async fn state(app: &App, p: &PlacementId) -> Result<ControlState, StoreError> {
    match app.store.control_state(p).await {
        Err(StoreError::Corrupt { message, .. }) => {
            tracing::error!(placement = %p, error = %message, "stored control state discarded; learning starts afresh");
            app.metrics.control_state_discarded.inc();
            Ok(ControlState::default())
        }
        other => other,
    }
}

/// The `recent` windows of `p` a round at `now_ms` looks at (see the module doc).
pub async fn evidence(app: &App, p: &PlacementId, now_ms: u64, recent: u64) -> Result<Evidence, StoreError> {
    let policy = policy(&app.config.control);
    let read = app.store.windows(p, &policy.windows_to_read(now_ms, recent)).await?;
    Ok(policy.evidence(now_ms, recent, read))
}

/// Whether `window`'s traffic can give `targets`' confidence at all, sampling every
/// request; `None` when nothing was measured in it. Unattainable means even the upper
/// confidence bound on the window's requests (`planner::requests_upper_bound`) is
/// below the samples the confidence needs, so a window with a handful of samples at a
/// low rate is not called unattainable on its noisy estimate alone.
pub fn attainable(window: &WindowStats, targets: &Targets) -> Option<bool> {
    let measured = window.requests.n > 0 || !window.campaigns.is_empty();
    measured.then(|| {
        let requests = allot_core::planner::requests_upper_bound(window).unwrap_or(window.requests.ht);
        requests >= SampleRatePlanner::required_samples(targets)
    })
}

/// Stores the state a round of `p` left (see the module doc), under the lease `fence`.
/// `false` when a newer lease holder has written the placement: this one lost the
/// lease, and the round is abandoned.
pub async fn keep_state(app: &App, p: &PlacementId, state: &ControlState, fence: &Fence) -> Result<bool, StoreError> {
    match app.store.save_state(p, state, fence.epoch).await? {
        Fenced::Done(()) => Ok(true),
        _ => {
            crate::control::fenced(app, p, fence.epoch, "state").await;
            Ok(false)
        }
    }
}
