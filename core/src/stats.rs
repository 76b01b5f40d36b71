//! Window statistics: sampled events folded into Horvitz–Thompson counts.
//!
//! One [`WindowStats`] per placement and control window. Folding an event adds its
//! weight `1/rate` to the relevant counters; merging adds counters, so windows (and
//! replicas that each saw part of the stream) combine in any order or grouping.
//!
//! The origin keeps these in a Redis hash; [`WindowStats::to_fields`] and
//! [`WindowStats::from_fields`] are the mapping, so the origin applies an event as a
//! handful of `HINCRBYFLOAT`s without knowing what the fields mean. Field names:
//! `req.ht`, `req.sq`, `req.n` (all requests), `a.{id}.ht`/`a.{id}.n`/`a.{id}.sq`
//! (allocations), `i.{id}.ht`/`i.{id}.n`/`i.{id}.sq` (impressions),
//! `p.{platform}:{country}` (requests per attribute profile; either part may be empty),
//! `v.{version}` (plan versions seen), `l.ht`/`l.n` (requests counted only after the
//! round had read the window: [`WindowStats::late`]), `li.{id}.ht`/`li.{id}.n` (a campaign's
//! impressions counted only after the window was read for impressions:
//! [`CampaignCounts::late_impressions`]), `u.ht`/`u.n`/`u.sq` and `u.{id}.ht`/`u.{id}.n`
//! (requests, and each campaign's allocations, from apps that report no impressions:
//! [`Event::unreported`]; a window stored before they existed reads as all apps
//! reporting), `pa.{id}.{platform}.ht`, `pu.{id}.{platform}.ht` and
//! `pi.{id}.{platform}.ht` (a campaign's allocations, those to apps that report no
//! impressions, and its impressions, on one platform, empty for none:
//! [`PlatformCounts`]; the last two only where there are some). The
//! `.sq` fields (`Σw²` of a campaign's events)
//! give a share's variance when the rate changed within a window
//! ([`crate::estimate::share_variance`]); windows written before they existed read
//! with `sq = 0`, and their variance falls back to the effective sample size.
//!
//! Requests are counted per attribute *profile* rather than per eligibility pattern:
//! the controller derives each profile's pattern from the *current* targets, so a new
//! campaign or a changed eligibility rule is solved for correctly at once, before any
//! plan containing it has reached the edge.

use std::collections::BTreeMap;

use crate::{CampaignId, Event, EventKind};

/// The largest share of a window's requests [`WindowStats::with_stragglers`] allows for.
/// Stragglers are counted from what the edges send, so a key holder could send events
/// late on purpose; allowing for at most half keeps every count at most doubled.
pub const MAX_STRAGGLERS: f64 = 0.5;

/// A Horvitz–Thompson count and the number of samples behind it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// `Σ 1/rate`: the estimated number of events in the population.
    pub ht: f64,
    /// Sampled events.
    pub n: u64,
}

impl Tally {
    fn add(&mut self, w: f64) {
        self.ht += w;
        self.n += 1;
    }

    fn merge(&mut self, o: &Tally) {
        self.ht += o.ht;
        self.n += o.n;
    }
}

/// One campaign's counts in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CampaignCounts {
    pub allocations: Tally,
    pub impressions: Tally,
    /// `Σ (1/rate)²` over the allocations (0 in windows stored before it was counted).
    pub allocations_sq: f64,
    /// `Σ (1/rate)²` over the impressions.
    pub impressions_sq: f64,
    /// The allocations among them from apps that report no impressions.
    pub unreported: Tally,
    /// The impressions among them counted after the window was read for impressions
    /// ([`Policy::is_late_for_impressions`](crate::Policy::is_late_for_impressions)):
    /// how many of the campaign's impressions a window lacks when it is read, learnt
    /// once they are in ([`crate::Evidence::impressions_to_come`]). Per campaign, since
    /// an app may hold back one campaign's impressions and not another's.
    pub late_impressions: Tally,
}

impl CampaignCounts {
    /// The allocations whose app would have reported the impression: the base of the
    /// campaign's render ratio.
    pub fn reporting_allocations(&self) -> Tally {
        minus(self.allocations, self.unreported)
    }
}

/// One campaign's counts on one platform: what its render ratio per platform rests on
/// ([`crate::estimate::render_ratio`]). Apps that report no impressions are mostly of
/// some platforms, and ads render differently on each, so a render ratio learnt over all
/// the reporting apps would stand for the silent apps' ads only if their platforms were
/// mixed alike.
///
/// Only HT sums, one field per kind of event: a platform's sample counts and `Σw²` are
/// taken in proportion to the campaign's (platforms are sampled at the same rates), so
/// counting per platform costs one hash increment per event, and a platform an app
/// makes up one to three fields per campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PlatformCounts {
    pub allocations: f64,
    /// The allocations among them to apps that report no impressions.
    pub unreported: f64,
    pub impressions: f64,
}

impl PlatformCounts {
    /// The allocations whose app would have reported the impression.
    pub fn reporting(&self) -> f64 {
        (self.allocations - self.unreported).max(0.0)
    }

    fn merge(&mut self, o: &PlatformCounts) {
        self.allocations += o.allocations;
        self.unreported += o.unreported;
        self.impressions += o.impressions;
    }

    fn scaled(self, k: f64) -> Self {
        Self { allocations: self.allocations * k, unreported: self.unreported * k, impressions: self.impressions * k }
    }
}

fn minus(all: Tally, part: Tally) -> Tally {
    Tally { ht: (all.ht - part.ht).max(0.0), n: all.n.saturating_sub(part.n) }
}

/// A placement's counts for one window (or several merged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    /// All requests (allocation events, with or without an ad).
    pub requests: Tally,
    /// `Σ (1/rate)²` over requests: with [`Tally::ht`] it gives the effective sample
    /// size `(Σw)²/Σw²` when the rate changed within the window.
    pub requests_sq: f64,
    /// The requests among them from apps that report no impressions, and their `Σw²`.
    pub unreported: Tally,
    pub unreported_sq: f64,
    pub campaigns: BTreeMap<CampaignId, CampaignCounts>,
    /// Each campaign's counts per platform (the platform as events carry it, empty for
    /// none). A window stored before they were counted has none; one stored across
    /// that change has them for part of its events (the rest is read as one platform).
    pub platforms: BTreeMap<(CampaignId, String), PlatformCounts>,
    /// Estimated requests per attribute profile, keyed `platform:country`.
    pub profiles: BTreeMap<String, f64>,
    /// Estimated requests per plan version they were decided under.
    pub versions: BTreeMap<u64, f64>,
    /// The requests among them counted after the window's round had read it
    /// ([`Policy::is_late`](crate::Policy::is_late)): how incomplete a window is when
    /// it is read, learnt once its stragglers are in ([`crate::stragglers::Stragglers`]).
    pub late: Tally,
}

/// A malformed stored field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised window field {0:?}")]
pub struct StatsError(pub String);

/// The profile key of a request's attributes: `platform:country`, either may be empty.
pub fn profile_key(platform: Option<&str>, country: Option<&str>) -> String {
    format!("{}:{}", platform.unwrap_or(""), country.unwrap_or(""))
}

/// The attributes of a profile key.
pub fn parse_profile_key(key: &str) -> (Option<&str>, Option<&str>) {
    let (p, c) = key.split_once(':').unwrap_or((key, ""));
    ((!p.is_empty()).then_some(p), (!c.is_empty()).then_some(c))
}

impl WindowStats {
    /// The window an event time falls in, for windows of `period_ms`.
    pub fn window_index(event_time_ms: u64, period_ms: u64) -> u64 {
        event_time_ms / period_ms.max(1)
    }

    /// Folds events into one delta per window, keyed by [`window_index`](Self::window_index)
    /// of their event time: what the aggregator applies for a group of stream entries
    /// (and what the simulator applies for each batch the edge sends). Events are
    /// placed by when the edge decided them, not when they arrived, so a late batch
    /// still counts in its own window.
    pub fn fold_windows<'a>(events: impl IntoIterator<Item = &'a Event>, period_ms: u64) -> BTreeMap<u64, Self> {
        let mut windows: BTreeMap<u64, Self> = BTreeMap::new();
        for e in events {
            windows.entry(Self::window_index(e.event_time_ms, period_ms)).or_default().fold(e);
        }
        windows
    }

    pub fn fold(&mut self, e: &Event) {
        match e.kind {
            EventKind::Allocation => {
                let w = e.weight();
                self.record_allocation(
                    w,
                    e.ad_id.as_ref(),
                    &profile_key(e.platform.as_deref(), e.country.as_deref()),
                    e.plan_version,
                );
                if e.unreported {
                    self.record_unreported(w, e.ad_id.as_ref());
                }
                if let Some(ad) = &e.ad_id {
                    let p = self.platform_mut(ad, e.platform.as_deref());
                    p.allocations += w;
                    if e.unreported {
                        p.unreported += w;
                    }
                }
            }
            EventKind::Impression => {
                if let Some(ad) = &e.ad_id {
                    let w = e.weight();
                    self.record_impression(w, ad);
                    self.platform_mut(ad, e.platform.as_deref()).impressions += w;
                }
            }
        }
    }

    /// Counts one sampled request of HT weight `w` (what [`fold`](Self::fold) does for
    /// an allocation event, without building one).
    pub fn record_allocation(&mut self, w: f64, ad: Option<&CampaignId>, profile: &str, plan_version: u64) {
        self.requests.add(w);
        self.requests_sq += w * w;
        if let Some(ad) = ad {
            let c = self.campaign_mut(ad);
            c.allocations.add(w);
            c.allocations_sq += w * w;
        }
        match self.profiles.get_mut(profile) {
            Some(c) => *c += w,
            None => {
                self.profiles.insert(profile.to_string(), w);
            }
        }
        *self.versions.entry(plan_version).or_default() += w;
    }

    /// Marks one sampled request of HT weight `w`, already counted by
    /// [`record_allocation`](Self::record_allocation), as coming from an app that
    /// reports no impressions.
    pub fn record_unreported(&mut self, w: f64, ad: Option<&CampaignId>) {
        self.unreported.add(w);
        self.unreported_sq += w * w;
        if let Some(ad) = ad {
            self.campaign_mut(ad).unreported.add(w);
        }
    }

    /// The requests from apps that report impressions, and their `Σw²`.
    pub fn reporting(&self) -> (Tally, f64) {
        (minus(self.requests, self.unreported), (self.requests_sq - self.unreported_sq).max(0.0))
    }

    /// Counts one sampled impression of HT weight `w`.
    pub fn record_impression(&mut self, w: f64, ad: &CampaignId) {
        let c = self.campaign_mut(ad);
        c.impressions.add(w);
        c.impressions_sq += w * w;
    }

    fn campaign_mut(&mut self, id: &CampaignId) -> &mut CampaignCounts {
        // Look up before inserting so the common case does not clone the id.
        if !self.campaigns.contains_key(id) {
            self.campaigns.insert(id.clone(), CampaignCounts::default());
        }
        self.campaigns.get_mut(id).expect("inserted above")
    }

    fn platform_mut(&mut self, id: &CampaignId, platform: Option<&str>) -> &mut PlatformCounts {
        self.platforms.entry((id.clone(), platform.unwrap_or("").to_string())).or_default()
    }

    /// Marks every request counted in this delta as late: the aggregator applies it
    /// after the window's round read the window.
    pub fn mark_late(&mut self) {
        self.late = self.requests;
    }

    /// Marks every impression counted in this delta as late: the aggregator applies it
    /// after the window was read for impressions.
    pub fn mark_impressions_late(&mut self) {
        self.campaigns.values_mut().for_each(|c| c.late_impressions = c.impressions);
    }

    /// The counts as if a share `missing` (below 1) of the window's requests were still
    /// to come, each counted request standing for `1/(1 − missing)` of them: shares are
    /// unchanged, and the unseen requests widen the realized-share interval as unsampled
    /// ones do (`estimate::share`). At census the interval is then no longer the share
    /// itself, which it is only if every request was counted.
    pub fn with_stragglers(&self, missing: f64) -> Self {
        let missing = if missing.is_finite() { missing.clamp(0.0, MAX_STRAGGLERS) } else { 0.0 };
        if missing == 0.0 {
            return self.clone();
        }
        let k = 1.0 / (1.0 - missing);
        let tally = |t: Tally| Tally { ht: t.ht * k, n: t.n };
        let mut s = self.clone();
        s.requests = tally(s.requests);
        s.requests_sq *= k * k;
        s.unreported = tally(s.unreported);
        s.unreported_sq *= k * k;
        s.late = tally(s.late);
        for c in s.campaigns.values_mut() {
            c.allocations = tally(c.allocations);
            c.impressions = tally(c.impressions);
            c.unreported = tally(c.unreported);
            c.late_impressions = tally(c.late_impressions);
            c.allocations_sq *= k * k;
            c.impressions_sq *= k * k;
        }
        s.platforms.values_mut().for_each(|p| *p = p.scaled(k));
        s.profiles.values_mut().for_each(|v| *v *= k);
        s.versions.values_mut().for_each(|v| *v *= k);
        s
    }

    pub fn of_event(e: &Event) -> Self {
        let mut s = Self::default();
        s.fold(e);
        s
    }

    pub fn merge(&mut self, o: &WindowStats) {
        self.requests.merge(&o.requests);
        self.requests_sq += o.requests_sq;
        self.unreported.merge(&o.unreported);
        self.unreported_sq += o.unreported_sq;
        self.late.merge(&o.late);
        for (id, c) in &o.campaigns {
            let mine = self.campaigns.entry(id.clone()).or_default();
            mine.allocations.merge(&c.allocations);
            mine.impressions.merge(&c.impressions);
            mine.unreported.merge(&c.unreported);
            mine.late_impressions.merge(&c.late_impressions);
            mine.allocations_sq += c.allocations_sq;
            mine.impressions_sq += c.impressions_sq;
        }
        for (k, p) in &o.platforms {
            self.platforms.entry(k.clone()).or_default().merge(p);
        }
        for (k, v) in &o.profiles {
            *self.profiles.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.versions {
            *self.versions.entry(*k).or_default() += v;
        }
    }

    /// `(Σw)²/Σw²`: the number of equally weighted samples with the same precision.
    pub fn effective_samples(&self) -> f64 {
        if self.requests_sq > 0.0 { self.requests.ht * self.requests.ht / self.requests_sq } else { 0.0 }
    }

    /// The share of allocated ads that came back as impressions, among apps that did
    /// not say they report none: how much of that traffic really reports them. Each
    /// campaign counts at most its own allocations, so impressions of a campaign that
    /// was never allocated (or more impressions than allocations) add nothing. See
    /// [`DeliveryBasis::of`](crate::DeliveryBasis::of).
    pub fn impression_coverage(&self) -> f64 {
        let (shown, allocated) = self.campaigns.values().fold((0.0, 0.0), |(s, a), c| {
            let base = c.reporting_allocations().ht;
            (s + c.impressions.ht.min(base), a + base)
        });
        if allocated > 0.0 { shown / allocated } else { 0.0 }
    }

    /// The share of this window's requests decided under `version`.
    pub fn version_share(&self, version: u64) -> f64 {
        let total: f64 = self.versions.values().sum();
        if total > 0.0 { self.versions.get(&version).copied().unwrap_or(0.0) / total } else { 0.0 }
    }
}

mod fields;

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
