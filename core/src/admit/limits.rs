//! Step 1 of admitting an event ([`Limits::admit`]): the event alone against the
//! origin's clock, so that everything folded from it is finite before any write.

use crate::Event;

/// Why an event was dropped. Each reason is a label of the origin's drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    #[error("sample_rate is not a finite number in (0, 1]")]
    RateInvalid,
    #[error("sample_rate is below the minimum sample rate")]
    RateBelowMinimum,
    #[error("event_time_ms is older than the windows kept")]
    TooOld,
    #[error("event_time_ms is further ahead than the allowed skew")]
    TooNew,
    #[error("the placement is unknown or deleted")]
    UnknownPlacement,
    #[error("the plan version was not published for this placement")]
    UnknownVersion,
    #[error("a campaign is not in the plan version the event names")]
    UnknownCampaign,
    #[error("sample_rate differs from the rate of the plan version the event names")]
    RateMismatch,
    #[error("the platform is not in the vocabulary of the plan version the event names")]
    UnknownPlatform,
}

impl DropReason {
    /// Every reason, for registering the counter's series up front.
    pub const ALL: [Self; 9] = [
        Self::RateInvalid,
        Self::RateBelowMinimum,
        Self::TooOld,
        Self::TooNew,
        Self::UnknownPlacement,
        Self::UnknownVersion,
        Self::UnknownCampaign,
        Self::RateMismatch,
        Self::UnknownPlatform,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateInvalid => "rate_invalid",
            Self::RateBelowMinimum => "rate_below_minimum",
            Self::TooOld => "too_old",
            Self::TooNew => "too_new",
            Self::UnknownPlacement => "unknown_placement",
            Self::UnknownVersion => "unknown_version",
            Self::UnknownCampaign => "unknown_campaign",
            Self::RateMismatch => "rate_mismatch",
            Self::UnknownPlatform => "unknown_platform",
        }
    }
}

/// Configured bounds on a single event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    min_rate: f64,
    max_age_ms: u64,
    max_ahead_ms: u64,
}

/// The smallest minimum sample rate: a sampled event then weighs at most a billion
/// requests, so the windows' sums of squared weights (10¹⁸ an event) stay finite
/// however many events they add up. Only one event's squared weight being finite
/// would let a sum overflow to infinity in the middle of a window's script.
pub const MIN_RATE_FLOOR: f64 = 1e-9;

/// Bounds that cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the minimum sample rate must be in [1e-9, 1], so that sums of squared weights stay finite")]
pub struct LimitsError;

impl Limits {
    /// `min_rate`: the smallest rate a plan is ever published with; `max_age_ms`: the
    /// oldest a genuine event can be when it arrives (at least as long as window counts
    /// are kept); `max_ahead_ms`: the clock skew allowed between edge and origin.
    pub fn new(min_rate: f64, max_age_ms: u64, max_ahead_ms: u64) -> Result<Self, LimitsError> {
        if !(MIN_RATE_FLOOR..=1.0).contains(&min_rate) {
            return Err(LimitsError);
        }
        Ok(Self { min_rate, max_age_ms, max_ahead_ms })
    }

    /// Checks `event` against these bounds at origin time `now_ms`.
    pub fn admit(&self, event: Event, now_ms: u64) -> Result<Admitted, DropReason> {
        let rate = event.sample_rate;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1.0) {
            return Err(DropReason::RateInvalid);
        }
        if rate < self.min_rate {
            return Err(DropReason::RateBelowMinimum);
        }
        // Implied by `rate >= min_rate` and `Limits::new`; checked so that the type's
        // promise does not rest on that argument.
        let w = event.weight();
        if !(w * w).is_finite() {
            return Err(DropReason::RateInvalid);
        }
        if event.event_time_ms.saturating_add(self.max_age_ms) < now_ms {
            return Err(DropReason::TooOld);
        }
        if event.event_time_ms > now_ms.saturating_add(self.max_ahead_ms) {
            return Err(DropReason::TooNew);
        }
        Ok(Admitted(event))
    }
}

/// An event within the [`Limits`]: its rate is in `[min_rate, 1]`, so its weight and
/// squared weight are finite, and its time is within the windows kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted(Event);

impl Admitted {
    pub fn event(&self) -> &Event {
        &self.0
    }

    pub fn into_event(self) -> Event {
        self.0
    }
}
