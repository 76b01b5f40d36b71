//! Lane supervision: a lane that fails is restarted, and its state is visible.
//!
//! A lane stops on an error it cannot retry its way out of (a Redis error outside the
//! consumer's cycle, an encoding failure, a failpoint). Before, that was logged and the
//! dataset silently stopped being archived while the origin kept reporting ready. Now
//! the lane is restarted after a backoff under the one retry policy (`allot_core::retry`,
//! the archiver's [`retry_policy`](crate::archiver::retry_policy)), reset once a run has
//! lasted longer than the policy's cap; a restarted lane starts with its consumer's own
//! pending entries, so nothing is lost or written twice. Each lane's state is
//! exposed: `allot_archive_lane_up` and `allot_archive_lane_restarts_total` in the
//! metrics, and [`LaneStates::down_past`] for the origin's `/readyz`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::dataset::{Audit, Dataset, Events, Plans};

/// Whether each lane runs, for readiness checks.
#[derive(Debug, Default)]
pub struct LaneStates {
    events: LaneState,
    plans: LaneState,
    audit: LaneState,
}

/// One lane: since when it is down, if it is.
#[derive(Debug, Default)]
pub struct LaneState {
    down_since: Mutex<Option<Instant>>,
}

impl LaneState {
    pub(crate) fn up(&self) {
        *self.lock() = None;
    }

    pub(crate) fn down(&self, at: Instant) {
        self.lock().get_or_insert(at);
    }

    /// Down for longer than `grace` at `now`.
    pub fn down_past(&self, grace: Duration, now: Instant) -> bool {
        self.lock().is_some_and(|since| now.saturating_duration_since(since) >= grace)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // The value is a plain timestamp: a panic elsewhere cannot leave it half-written.
        self.down_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl LaneStates {
    /// The lane of dataset `D`.
    pub fn of<D: Dataset>(&self) -> &LaneState {
        match D::NAME {
            Events::NAME => &self.events,
            Plans::NAME => &self.plans,
            _ => &self.audit,
        }
    }

    /// The datasets whose lanes have been down longer than `grace` at `now`.
    pub fn down_past(&self, grace: Duration, now: Instant) -> Vec<&'static str> {
        let lanes = [(Events::NAME, &self.events), (Plans::NAME, &self.plans), (Audit::NAME, &self.audit)];
        lanes.into_iter().filter(|(_, l)| l.down_past(grace, now)).map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_is_reported_once_down_past_the_grace() {
        let states = LaneStates::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(states.down_past(Duration::ZERO, t0).is_empty(), "a lane not yet failed is not down");
        states.of::<Events>().down(t0);
        assert!(states.down_past(10 * s, t0 + 5 * s).is_empty(), "within the grace");
        states.of::<Events>().down(t0 + 8 * s);
        assert_eq!(states.down_past(10 * s, t0 + 10 * s), vec!["events"], "down since the first failure");
        states.of::<Events>().up();
        assert!(states.down_past(Duration::ZERO, t0 + 20 * s).is_empty());
        states.of::<Plans>().down(t0);
        assert_eq!(states.down_past(Duration::ZERO, t0), vec!["plans"]);
        states.of::<Audit>().down(t0);
        assert_eq!(states.down_past(Duration::ZERO, t0), vec!["plans", "audit"]);
    }
}
