//! Plans still deciding at the edge long after they were replaced.
//!
//! A colo whose plan cache is stuck (a KV replica behind, an isolate that missed its
//! refresh, a colo cut off from KV) goes on deciding by an old plan, and its events say
//! so: each names the version it was decided under. A target change made meanwhile is
//! delivered by the other colos only, and the placement's share misses by the stuck
//! colo's part of the traffic times the change, for as long as the colo is stuck.
//!
//! So the controller forecasts what old plans will still decide and asks the rest of the
//! traffic to make up for it: with a share `φ` of the next window decided by plans that
//! deliver `d_c`, the plan in force is solved for `(a_c − φ·d_c)/(1 − φ)` (at least 0),
//! where `a_c` is what the whole traffic should get.
//!
//! **What counts as stuck.** Every new plan reaches the edge over a minute or two (KV
//! propagation, the edge cache's TTL, the isolate's), so right after a publish the old
//! plan still decides much of the traffic, and a window later that tail is gone. Only a
//! plan replaced at least [`Controller::lag_after_ms`] before the window began counts,
//! so the ordinary tail is not taken for a stuck colo.
//!
//! **How long it lasts is not known.** When the colo takes the new plan up, the plan in
//! force overshoots by as much as it made up for, until a round sees the colo back and
//! its plan reaches the edge. So what is made up for is the share the plan is expected
//! to decide, its share of the last window times the chance that it is still stuck:
//! by Laplace's rule of succession, `(n + 1)/(n + 2)` after `n` windows' time seen
//! stuck (from `lag_after_ms` after its replacement to the end of the last window). Two
//! thirds of its share when first seen for a window, so a short stall and its end split
//! the error; nearly all of it once the stall has lasted, when its end is a small part
//! of the error made up for.
//!
//! **What it assumes.** Windows count versions, not versions by profile, so the old
//! plans are predicted on the placement's whole traffic mix: a stuck colo whose traffic
//! differs from the rest (another country's) is made up for as if it did not. At most
//! [`Controller::max_lag_share`] of the traffic is made up for: beyond that the rest
//! would amplify every error of the forecast, and events naming old versions (a key
//! holder's) would move the weights further. The part past the cap still counts in what
//! the traffic is predicted to get, so the shortfall it leaves is reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Controller;
use super::feedback::Learning;
use crate::{CampaignId, WindowStats};

/// What plans replaced long ago are forecast to decide in the next window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// The forecast share of requests they decide that the plan in force makes up for:
    /// all of it, up to [`Controller::max_lag_share`].
    pub share: f64,
    /// The forecast share past that, not made up for: what the traffic gets is
    /// predicted with it, so a campaign it leaves short is reported so.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub beyond: f64,
    /// Each campaign's share of those requests (allocations, the model's units).
    pub delivered: BTreeMap<CampaignId, f64>,
}

impl Lag {
    /// No plan replaced long ago is forecast to decide.
    pub fn is_none(&self) -> bool {
        self.stuck() <= 0.0
    }

    /// The forecast share of requests decided by plans replaced long ago, made up for
    /// or not.
    pub fn stuck(&self) -> f64 {
        self.share + self.beyond
    }

    fn of(&self, id: &CampaignId) -> f64 {
        self.delivered.get(id).copied().unwrap_or(0.0)
    }

    /// The allocation share the plan in force must deliver so that all the traffic,
    /// the lagging part with it, gets `asked`.
    pub fn make_up(&self, id: &CampaignId, asked: f64) -> f64 {
        if self.share <= 0.0 {
            return asked;
        }
        ((asked - self.share * self.of(id)) / (1.0 - self.share)).max(0.0)
    }

    /// What all the traffic gets when the plan in force delivers `own`.
    pub fn blend(&self, id: &CampaignId, own: f64) -> f64 {
        (1.0 - self.stuck()) * own + self.stuck() * self.of(id)
    }

    /// What the plan in force was solved for: as [`blend`](Self::blend), with the part
    /// past the cap taken to decide as the plan in force does.
    pub(super) fn solved_for(&self, id: &CampaignId, own: f64) -> f64 {
        (1.0 - self.share) * own + self.share * self.of(id)
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Controller {
    /// The lag forecast from the last window, `[start, end)` in milliseconds, decided
    /// under the plans `learning` remembers; the old plans are predicted on `mix`.
    pub(super) fn lag(&self, learning: &Learning, last: &WindowStats, mix: &WindowStats, window: (u64, u64)) -> Lag {
        let (start, end) = window;
        let period = end.saturating_sub(start).max(1);
        let in_force = learning.plans.len().saturating_sub(1);
        let mut lag = Lag::default();
        for (plan, decided) in learning.plans[..in_force].iter().zip(learning.shares_decided(last)) {
            let Some(stuck_since) = plan.replaced_ms.map(|ms| ms.saturating_add(self.lag_after_ms)) else { continue };
            if stuck_since > start {
                continue;
            }
            let Some(decided) = decided.filter(|s| *s > 0.0) else { continue };
            let seen = (end.max(start) - stuck_since) as f64 / period as f64;
            let share = decided * (seen + 1.0) / (seen + 2.0);
            for ((id, ..), d) in plan.campaigns.iter().zip(plan.delivered(mix)) {
                *lag.delivered.entry(id.clone()).or_default() += share * d;
            }
            lag.share += share;
        }
        if lag.share > 0.0 {
            lag.delivered.values_mut().for_each(|d| *d /= lag.share);
        }
        let made_up = lag.share.min(self.max_lag_share);
        lag.beyond = lag.share - made_up;
        lag.share = made_up;
        lag
    }
}

#[cfg(test)]
#[path = "lag_tests.rs"]
mod tests;
