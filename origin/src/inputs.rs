//! What a round looks at, read from Redis: the placement's recent complete windows, the
//! plan in force and the controller's state; and where the round's state goes back.
//!
//! **Complete windows only.** A window's events keep arriving after it ends (the edge
//! batches them, a send may time out and be retried), so a window read at its end is
//! partial: too few requests (the planner would raise the rate for nothing) and a
//! share from part of it (feedback would learn from it). A window counts as complete
//! `control.lateness_ms` after its end (at most a quarter period,
//! `ControlConfig::lateness`), and rounds, the preview and the status read complete
//! windows only. The price: each plan is made that much later.
//!
//! **State every round.** The controller's state (corrections and what feedback has
//! learnt under the weights in force) is stored after every round, published or not
//! ([`keep_state`]), fenced by the lease epoch like the plan writes; a round that
//! changes nothing still keeps what it learnt.
//!
//! The control loop, the preview (a dry run of new targets) and the window history all
//! start from these, so a preview answers what the next round would do, and the history
//! records what the round saw.

use allot_core::{
    ControlState, Controller, Fence, PlacementId, Policy, Round, SampleRatePlanner, Targets, WindowStats,
};

use crate::config::ControlConfig;
use crate::startup::App;
use crate::store::{Fenced, PlanRecord, StoreError};

/// The policy every round runs: the default controller and the configured planner.
pub fn policy(cfg: &ControlConfig) -> Policy {
    Policy {
        controller: Controller::default(),
        planner: SampleRatePlanner { min_rate: cfg.min_sample_rate, ..SampleRatePlanner::default() },
        period_ms: cfg.period_ms,
        lateness_ms: cfg.lateness(),
    }
}

/// A placement's evidence at one moment.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The index of the last complete window.
    pub last_index: u64,
    /// The last `recent_windows` complete windows, newest first (missing ones empty).
    pub windows: Vec<WindowStats>,
    /// Those windows merged.
    pub recent: WindowStats,
    pub previous: Option<PlanRecord>,
    pub state: ControlState,
}

impl Inputs {
    pub async fn read(app: &App, p: &PlacementId, now_ms: u64) -> Result<Self, StoreError> {
        let cfg = &app.config.control;
        let current = cfg.last_complete_window(now_ms) + 1;
        let indices: Vec<u64> = (1..=cfg.recent_windows).filter_map(|i| current.checked_sub(i)).collect();
        let windows = app.store.windows(p, &indices).await?;
        let mut recent = WindowStats::default();
        for w in &windows {
            recent.merge(w);
        }
        Ok(Self {
            last_index: current.saturating_sub(1),
            windows,
            recent,
            previous: app.store.plan_record(p).await?,
            state: app.store.control_state(p).await?,
        })
    }

    /// The last complete window, if anything was counted in it.
    pub fn last(&self) -> Option<&WindowStats> {
        self.windows.first().filter(|w| w.requests.n > 0 || !w.campaigns.is_empty())
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
            recent: &self.recent,
            last: self.last(),
            previous: self.previous.as_ref().map(|r| &r.plan),
            state: &self.state,
            targets_changed,
            now_ms,
            republish_after_ms: cfg.republish_after_secs.saturating_mul(1000),
        }
    }
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
            app.metrics.control_fenced.with_label_values(&["state"]).inc();
            tracing::warn!(placement = %p, epoch = fence.epoch, "a newer lease holder has written this placement");
            Ok(false)
        }
    }
}
