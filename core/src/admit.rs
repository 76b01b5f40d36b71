//! Which signed events the origin counts.
//!
//! A valid signature says an edge sent the body, not that every event in it is sane: a
//! holder of the ingest key (or an edge bug) can send a rate of `1e-160`, whose squared
//! Horvitz–Thompson weight overflows, a time decades away, or a placement, campaign or
//! plan version the origin never published. Each event is therefore judged on its own,
//! in two steps, and a bad one is dropped with a [`DropReason`] while the genuine events
//! of the same body are stored:
//!
//! 1. [`Limits::admit`] — the event alone against the origin's clock: its rate is finite
//!    and within `[min_rate, 1]` and its time within the window retention behind and the
//!    skew ahead. The result, an [`Admitted`] event, can only hold a finite weight and
//!    finite squared weight, so every delta folded from it is finite before any write.
//! 2. [`Catalogue::judge`] — the event against what the origin published: its placement
//!    is registered, the plan version it names was published for that placement, its
//!    campaigns are in that version and its rate is that version's rate.
//!
//! The [`Catalogue`] is the origin's in-process copy of the published plans. It is a
//! state machine without I/O: it says what to read ([`Catalogue::wants_registry`],
//! [`Catalogue::wants_plans`]) and is told what was read; the origin's shell does the
//! reads. The registry is read at most once per refresh interval; a placement's history
//! is read when first needed and then only for a version newer than the newest it
//! knows, at most once per interval. So a flood of made-up placements or versions costs
//! at most one registry read and one history read per registered placement per
//! interval, and the memory held is bounded by the registry: each placement keeps as
//! many versions as its plan history holds (a placement publishes tens of versions an
//! hour, and an origin runs for months), evicting the one events named least recently.
//! A version edges still serve is named all the time, so it stays, however many were
//! published since (a publisher that failed for an hour issued versions no edge got).
//! Only accepted events count as naming a version, and the newest two (what edges serve,
//! also during a hand-over) are never evicted, so events refused for their content
//! cannot push the version in use out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{CampaignId, Event, EventKind, PlacementId, Plan};

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
}

impl DropReason {
    /// Every reason, for registering the counter's series up front.
    pub const ALL: [Self; 8] = [
        Self::RateInvalid,
        Self::RateBelowMinimum,
        Self::TooOld,
        Self::TooNew,
        Self::UnknownPlacement,
        Self::UnknownVersion,
        Self::UnknownCampaign,
        Self::RateMismatch,
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

/// Bounds that cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the minimum sample rate must be in (0, 1] with a finite squared weight")]
pub struct LimitsError;

impl Limits {
    /// `min_rate`: the smallest rate a plan is ever published with; `max_age_ms`: how
    /// long window counts are kept (an older event lands in a window nobody reads);
    /// `max_ahead_ms`: the clock skew allowed between edge and origin.
    pub fn new(min_rate: f64, max_age_ms: u64, max_ahead_ms: u64) -> Result<Self, LimitsError> {
        let w = 1.0 / min_rate;
        if !(min_rate > 0.0 && min_rate <= 1.0 && (w * w).is_finite()) {
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

/// What one published plan version admits.
#[derive(Debug, Clone, PartialEq)]
struct Published {
    sample_rate: f64,
    campaigns: BTreeSet<CampaignId>,
    /// When an event last named it (or it was learnt), on the catalogue's own count.
    used: u64,
}

/// A registered placement's known versions, and when its history was last read.
/// The newest versions of a placement that are never evicted ([`Catalogue::learn_plans`]).
const PROTECTED: usize = 2;

#[derive(Debug, Clone, Default)]
struct History {
    read_ms: Option<u64>,
    versions: BTreeMap<u64, Published>,
}

/// The origin's copy of what it published; see the module documentation.
#[derive(Debug, Clone)]
pub struct Catalogue {
    refresh_ms: u64,
    /// Versions kept per placement, as many as the plan history holds.
    keep: usize,
    /// Counts learnt versions and judged events: the order of use, for eviction.
    tick: u64,
    registry_read_ms: Option<u64>,
    registry: BTreeSet<PlacementId>,
    histories: HashMap<PlacementId, History>,
}

impl Catalogue {
    /// A catalogue that reads each source at most once per `refresh_ms` and keeps
    /// `keep` versions of each placement (at least one), the most recently used.
    pub fn new(refresh_ms: u64, keep: usize) -> Self {
        Self {
            refresh_ms,
            keep: keep.max(1),
            tick: 0,
            registry_read_ms: None,
            registry: BTreeSet::new(),
            histories: HashMap::new(),
        }
    }

    fn due(&self, read_ms: Option<u64>, now_ms: u64) -> bool {
        read_ms.is_none_or(|t| now_ms >= t.saturating_add(self.refresh_ms))
    }

    /// Whether the registry should be read now: never read, or last read an interval
    /// ago. Read on every interval, not only for an unknown placement, so that a
    /// deleted placement stops counting within an interval. A `true` counts as the read
    /// (concurrent callers do not repeat it).
    pub fn wants_registry(&mut self, now_ms: u64) -> bool {
        let wanted = self.due(self.registry_read_ms, now_ms);
        if wanted {
            self.registry_read_ms = Some(now_ms);
        }
        wanted
    }

    /// Replaces the registry with what was read; histories of placements no longer
    /// registered are forgotten.
    pub fn learn_registry(&mut self, placements: impl IntoIterator<Item = PlacementId>) {
        self.registry = placements.into_iter().collect();
        self.histories.retain(|p, _| self.registry.contains(p));
    }

    /// The registered placements whose plan history should be read before judging
    /// `events`: never read, or an event names a version newer than any known and the
    /// last read is old enough. The returned reads count as made.
    pub fn wants_plans<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>, now_ms: u64) -> Vec<PlacementId> {
        let mut wanted = Vec::new();
        for e in events {
            if !self.registry.contains(&e.placement) || wanted.contains(&e.placement) {
                continue;
            }
            let history = self.histories.get(&e.placement);
            let stale = match history {
                None => true,
                Some(h) => {
                    h.read_ms.is_none()
                        || (h.versions.last_key_value().is_none_or(|(v, _)| e.plan_version > *v)
                            && self.due(h.read_ms, now_ms))
                }
            };
            if stale {
                wanted.push(e.placement.clone());
            }
        }
        for p in &wanted {
            self.histories.entry(p.clone()).or_default().read_ms = Some(now_ms);
        }
        wanted
    }

    /// When a history read now refused by the throttle becomes due, for an event of a
    /// registered placement naming a version newer than any known. A plan published a
    /// moment ago is then learnt by waiting instead of dropping its first events. An
    /// unregistered placement never waits: it gets its first plan only after it joined
    /// the registry.
    pub fn next_read_ms<'a>(&self, events: impl IntoIterator<Item = &'a Event>, now_ms: u64) -> Option<u64> {
        events
            .into_iter()
            .filter(|e| self.registry.contains(&e.placement))
            .filter_map(|e| {
                let h = self.histories.get(&e.placement)?;
                let newer = h.versions.last_key_value().is_none_or(|(v, _)| e.plan_version > *v);
                let due = h.read_ms.map(|t| t.saturating_add(self.refresh_ms)).filter(|t| *t > now_ms);
                if newer { due } else { None }
            })
            .min()
    }

    /// Forgets that the registry was read: the read failed, and the next caller should
    /// try again rather than judge against an empty registry for an interval.
    pub fn registry_read_failed(&mut self) {
        self.registry_read_ms = None;
    }

    /// Forgets that `placement`'s history was read (the read failed).
    pub fn plans_read_failed(&mut self, placement: &PlacementId) {
        if let Some(h) = self.histories.get_mut(placement) {
            h.read_ms = None;
        }
    }

    /// Adds the plans read from `placement`'s history (a registered placement only).
    pub fn learn_plans<'a>(&mut self, placement: &PlacementId, plans: impl IntoIterator<Item = &'a Plan>) {
        if !self.registry.contains(placement) {
            return;
        }
        let history = self.histories.entry(placement.clone()).or_default();
        // A withdrawn plan (a deleted placement's tombstone) is never served, so no
        // genuine event names its version.
        for plan in plans.into_iter().filter(|p| &p.placement == placement && !p.withdrawn) {
            if history.versions.contains_key(&plan.version) {
                continue;
            }
            self.tick += 1;
            let campaigns = plan.campaigns.iter().map(|c| c.id.clone()).collect();
            let published = Published { sample_rate: plan.sample_rate, campaigns, used: self.tick };
            history.versions.insert(plan.version, published);
        }
        // The newest two are what edges serve now, or during a hand-over: never evicted,
        // whatever events name the others.
        let protected = PROTECTED.min(self.keep);
        while history.versions.len() > self.keep {
            let candidates = history.versions.len() - protected;
            let stalest = history.versions.iter().take(candidates).min_by_key(|(v, p)| (p.used, **v)).map(|(v, _)| *v);
            let Some(stalest) = stalest else { break };
            history.versions.remove(&stalest);
        }
    }

    /// How many versions are known, over every placement (what the catalogue holds).
    pub fn versions_known(&self) -> usize {
        self.histories.values().map(|h| h.versions.len()).sum()
    }

    /// Whether `event` matches what was published. A version counts as used only by
    /// an event it accepts: events refused for their campaigns or rate (anyone holding
    /// the ingest key can send them, and they cost nothing) must not keep old versions
    /// in and push out the one edges serve.
    pub fn judge(&mut self, event: &Admitted) -> Result<(), DropReason> {
        let e = event.event();
        if !self.registry.contains(&e.placement) {
            return Err(DropReason::UnknownPlacement);
        }
        self.tick += 1;
        let published = self
            .histories
            .get_mut(&e.placement)
            .and_then(|h| h.versions.get_mut(&e.plan_version))
            .ok_or(DropReason::UnknownVersion)?;
        let named = e.ad_id.iter().chain(&e.eligible);
        if !named.into_iter().all(|c| published.campaigns.contains(c)) {
            return Err(DropReason::UnknownCampaign);
        }
        if e.kind == EventKind::Impression && e.ad_id.is_none() {
            return Err(DropReason::UnknownCampaign);
        }
        if e.sample_rate.to_bits() != published.sample_rate.to_bits() {
            return Err(DropReason::RateMismatch);
        }
        published.used = self.tick;
        Ok(())
    }
}

#[cfg(test)]
#[path = "admit_tests.rs"]
mod tests;
