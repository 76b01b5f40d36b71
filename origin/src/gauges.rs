//! Delivery gauges: per placement and per campaign, what the control round saw, for
//! dashboards and alerts (`ops/prometheus/alerts.yml`).
//!
//! Set by the lease holder's rounds, from the same numbers as the status API and the
//! window history (`status::campaigns`); registered in the one registry
//! ([`crate::metrics::Metrics`]). A replica that loses the lease clears them, and a
//! deleted placement's or campaign's series are removed, so an alert never fires on a
//! value nobody updates any more. Plan age is exported as the publish time
//! (`…_published_timestamp_seconds`); rules compute the age with `time()`.
//!
//! Per-campaign series cost six per placement × campaign pair, which at 10,000
//! placements of 64 campaigns is millions: more than a Prometheus should be fed, and
//! more than `/metrics` renders in time. So they are bounded by
//! `metrics.campaign_series` pairs ([`Admission`]), while every placement keeps a few
//! placement-level gauges that summarise its campaigns (how many are off target or
//! infeasible, how far the worst is off, the margin they are judged by): alerting covers
//! every placement, and the per-campaign series, where they exist, say which campaign it
//! is.
//!
//! "Off target" is judged against the manager's margin, not the target alone: see
//! [`gap`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, IntGauge, Opts, Registry};

use crate::status::CampaignStatus;

/// What one round saw of one placement.
#[derive(Debug, Clone)]
pub struct PlacementReading<'a> {
    pub campaigns: &'a [CampaignStatus],
    /// The plan in force: its sample rate and when it was published.
    pub sample_rate: Option<f64>,
    pub published_at_ms: Option<u64>,
    /// `Some(false)` when the last window's traffic cannot give the confidence even at
    /// census; `None` before any traffic.
    pub attainable: Option<bool>,
    /// The manager's margin (`confidence.margin`): the placement promises realized
    /// shares within ±`margin` of their targets, so it is how far a campaign may be off.
    pub margin: f64,
    /// The share of the next window forecast to be decided by plans stuck at the edge,
    /// which the plan made now makes up for (`allot_core::Lag`).
    pub lagging_share: f64,
}

/// The gauges, and which series exist (to remove them).
#[derive(Debug, Clone)]
pub struct DeliveryGauges {
    target: GaugeVec,
    estimate: GaugeVec,
    low: GaugeVec,
    high: GaugeVec,
    feasible: GaugeVec,
    joint: GaugeVec,
    sample_rate: GaugeVec,
    unattainable: GaugeVec,
    published: GaugeVec,
    margin: GaugeVec,
    off_target: GaugeVec,
    infeasible: GaugeVec,
    worst_gap: GaugeVec,
    lagging: GaugeVec,
    omitted: IntGauge,
    admission: Arc<Mutex<Admission>>,
}

fn vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

const CAMPAIGN: &[&str] = &["placement", "campaign"];
const PLACEMENT: &[&str] = &["placement"];

/// Whether a campaign's target can be met (as the status API says it).
fn is_feasible(c: &CampaignStatus) -> bool {
    c.feasibility.get("status").and_then(|s| s.as_str()) != Some("infeasible")
}

/// How far the measured share's interval lies from `[target − margin, target + margin]`:
/// 0 when they overlap. A campaign is off target when this is above 0, that is when
/// `high < target − margin` or `low > target + margin` (what `AllotCampaignOffTarget`
/// checks).
///
/// The interval is one for the share realized among the window's requests: it narrows as
/// the sample rate rises, and at census (every request sampled) it is the realized share
/// itself, but for the allowance for requests still to come (`Stragglers::allowance`):
/// nearly zero width. A realized share differs from the target by a little from the
/// randomness of allocation alone, so "the target outside the interval" would call every
/// small placement sampled at census off target. What a placement promises is realized
/// shares within the manager's margin; an interval wholly beyond target ± margin says
/// that promise is broken, at the manager's confidence.
///
/// Not the distance from the point estimate: that one is noise at low traffic, and reads
/// as the whole target after a window without any; this one is 0 unless the campaign is
/// off target, then how far beyond the noise and the margin.
fn gap(c: &CampaignStatus, margin: f64) -> f64 {
    (c.estimate.low - (c.target + margin)).max((c.target - margin) - c.estimate.high).max(0.0)
}

impl DeliveryGauges {
    /// Registers the gauges in `r`; at most `campaign_series` placement × campaign pairs
    /// get per-campaign series (`metrics.campaign_series`).
    pub fn register(r: &Registry, campaign_series: usize) -> Self {
        let omitted = IntGauge::new(
            "allot_campaign_series_omitted_placements",
            "Placements whose rounds run here without per-campaign series (over metrics.campaign_series).",
        )
        .expect("valid metric name");
        r.register(Box::new(omitted.clone())).expect("registered once");
        Self {
            target: vec(r, "allot_campaign_target_share", "The campaign's target share.", CAMPAIGN),
            estimate: vec(
                r,
                "allot_campaign_estimated_share",
                "The share measured in the last complete window.",
                CAMPAIGN,
            ),
            low: vec(
                r,
                "allot_campaign_estimated_share_low",
                "Lower end of the interval for the share realized in the last complete window.",
                CAMPAIGN,
            ),
            high: vec(
                r,
                "allot_campaign_estimated_share_high",
                "Upper end of the interval for the share realized in the last complete window.",
                CAMPAIGN,
            ),
            feasible: vec(
                r,
                "allot_campaign_feasible",
                "1 if the target can be met on the recent traffic, 0 if not.",
                CAMPAIGN,
            ),
            joint: vec(
                r,
                "allot_campaign_jointly_infeasible",
                "1 if the target can be met alone but not together with the campaigns sharing its traffic.",
                CAMPAIGN,
            ),
            sample_rate: vec(r, "allot_placement_sample_rate", "The sample rate of the plan in force.", PLACEMENT),
            unattainable: vec(
                r,
                "allot_placement_unattainable",
                "1 if a window's traffic cannot give the manager's confidence even sampling every request.",
                PLACEMENT,
            ),
            published: vec(
                r,
                "allot_placement_plan_published_timestamp_seconds",
                "When the plan in force was published (Unix seconds).",
                PLACEMENT,
            ),
            margin: vec(
                r,
                "allot_placement_margin",
                "The manager's margin: realized shares are promised within target ± margin.",
                PLACEMENT,
            ),
            off_target: vec(
                r,
                "allot_placement_campaigns_off_target",
                "Campaigns whose target is feasible but whose measured share's interval lies entirely outside target ± margin.",
                PLACEMENT,
            ),
            infeasible: vec(
                r,
                "allot_placement_campaigns_infeasible",
                "Campaigns whose target cannot be met on the recent traffic.",
                PLACEMENT,
            ),
            worst_gap: vec(
                r,
                "allot_placement_worst_gap",
                "The largest distance from a feasible campaign's measured share's interval to target ± margin (0 if none is off).",
                PLACEMENT,
            ),
            lagging: vec(
                r,
                "allot_placement_lagging_share",
                "Share of the next window forecast to be decided by plans replaced over control.lag_after_ms ago (a colo stuck on an old plan), made up for by the rest up to the cap.",
                PLACEMENT,
            ),
            omitted,
            admission: Arc::new(Mutex::new(Admission::new(campaign_series))),
        }
    }

    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `placement`'s gauges from a round's reading.
    pub fn observe(&self, placement: &str, reading: &PlacementReading<'_>) {
        let mut admission = self.admission();
        let now: BTreeSet<String> = reading.campaigns.iter().map(|c| c.id.clone()).collect();
        if let Some(gone) = admission.record(placement, now) {
            for c in gone {
                self.remove_campaign(placement, &c);
            }
            for c in reading.campaigns {
                self.set_campaign(placement, c);
            }
        }
        self.omitted.set(i64::try_from(admission.omitted()).unwrap_or(i64::MAX));
        let feasible = || reading.campaigns.iter().filter(|c| is_feasible(c));
        let off_by = |c: &CampaignStatus| gap(c, reading.margin);
        let off = feasible().filter(|c| off_by(c) > 0.0).count();
        let infeasible = reading.campaigns.len() - feasible().count();
        let worst = feasible().map(off_by).fold(0.0, f64::max);
        let labels = [placement];
        self.margin.with_label_values(&labels).set(reading.margin);
        self.off_target.with_label_values(&labels).set(off as f64);
        self.infeasible.with_label_values(&labels).set(infeasible as f64);
        self.worst_gap.with_label_values(&labels).set(worst);
        self.lagging.with_label_values(&labels).set(reading.lagging_share);
        if let (Some(rate), Some(at)) = (reading.sample_rate, reading.published_at_ms) {
            self.plan_in_force(placement, rate, at);
        }
        // Last, so that a scrape begun once it is there has every gauge of the round
        // that set it (one scrape reads the series in no particular order).
        self.unattainable.with_label_values(&labels).set(f64::from(u8::from(reading.attainable == Some(false))));
    }

    fn set_campaign(&self, placement: &str, c: &CampaignStatus) {
        let labels = [placement, c.id.as_str()];
        self.target.with_label_values(&labels).set(c.target);
        self.estimate.with_label_values(&labels).set(c.estimate.share);
        self.low.with_label_values(&labels).set(c.estimate.low);
        self.high.with_label_values(&labels).set(c.estimate.high);
        let feasible = is_feasible(c);
        self.feasible.with_label_values(&labels).set(f64::from(u8::from(feasible)));
        let joint = !feasible && c.feasibility.get("joint").and_then(|j| j.as_bool()) == Some(true);
        self.joint.with_label_values(&labels).set(f64::from(u8::from(joint)));
    }

    /// A plan of `placement` was published and stored: its rate and time.
    pub fn plan_in_force(&self, placement: &str, sample_rate: f64, published_at_ms: u64) {
        self.sample_rate.with_label_values(&[placement]).set(sample_rate);
        self.published.with_label_values(&[placement]).set(published_at_ms as f64 / 1000.0);
    }

    /// Removes a placement's series (deleted, or its rounds run elsewhere now), which
    /// frees its room for per-campaign series.
    pub fn forget(&self, placement: &str) {
        let mut admission = self.admission();
        for c in admission.forget(placement) {
            self.remove_campaign(placement, &c);
        }
        self.omitted.set(i64::try_from(admission.omitted()).unwrap_or(i64::MAX));
        for g in [
            &self.sample_rate,
            &self.unattainable,
            &self.published,
            &self.margin,
            &self.off_target,
            &self.infeasible,
            &self.worst_gap,
            &self.lagging,
        ] {
            let _ = g.remove_label_values(&[placement]);
        }
    }

    /// Removes every series (this replica no longer runs the rounds).
    pub fn clear(&self) {
        let placements = self.admission().placements();
        for p in placements {
            self.forget(&p);
        }
    }

    fn remove_campaign(&self, placement: &str, campaign: &str) {
        for g in [&self.target, &self.estimate, &self.low, &self.high, &self.feasible, &self.joint] {
            let _ = g.remove_label_values(&[placement, campaign]);
        }
    }
}

/// Which placements get per-campaign series, within a limit on placement × campaign
/// pairs.
///
/// Placements queue in the order they are first observed; the first in the queue is
/// admitted when its campaigns fit in the room left, so the limit fills in that order
/// and stops at the first placement that does not fit, rather than letting small late
/// placements overtake (which would make who has series depend on sizes as much as on
/// age). An admitted placement keeps its series while it exists, even when campaigns
/// added to it take the pairs past the limit (each placement has at most
/// `MAX_CAMPAIGNS`): series that come and go with the room would break graphs and
/// reset alerts' `for`. Forgetting a placement frees its room for the queue.
#[derive(Debug)]
struct Admission {
    limit: usize,
    placements: HashMap<String, Seen>,
    /// The placements without per-campaign series, by their place in the queue.
    waiting: BTreeMap<u64, String>,
    /// The next place in the queue.
    next: u64,
    /// Pairs of admitted placements.
    pairs: usize,
}

#[derive(Debug)]
struct Seen {
    order: u64,
    admitted: bool,
    campaigns: BTreeSet<String>,
}

impl Admission {
    fn new(limit: usize) -> Self {
        Self { limit, placements: HashMap::new(), waiting: BTreeMap::new(), next: 0, pairs: 0 }
    }

    /// Records `placement`'s campaigns as a round saw them. `Some(gone)`: it has
    /// per-campaign series, and those of the `gone` campaigns are to be removed;
    /// `None`: it has none.
    fn record(&mut self, placement: &str, campaigns: BTreeSet<String>) -> Option<Vec<String>> {
        let next = &mut self.next;
        let seen = self.placements.entry(placement.to_string()).or_insert_with(|| {
            *next += 1;
            Seen { order: *next, admitted: false, campaigns: BTreeSet::new() }
        });
        if seen.admitted {
            let gone = seen.campaigns.difference(&campaigns).cloned().collect();
            self.pairs = self.pairs - seen.campaigns.len() + campaigns.len();
            seen.campaigns = campaigns;
            return Some(gone);
        }
        let first = self.waiting.first_key_value().is_none_or(|(order, _)| *order == seen.order);
        let fits = self.limit > 0 && self.pairs + campaigns.len() <= self.limit;
        seen.campaigns = campaigns;
        if first && fits {
            seen.admitted = true;
            self.pairs += seen.campaigns.len();
            self.waiting.remove(&seen.order);
            Some(Vec::new())
        } else {
            self.waiting.insert(seen.order, placement.to_string());
            None
        }
    }

    /// Forgets `placement`; returns the campaigns whose series it had.
    fn forget(&mut self, placement: &str) -> BTreeSet<String> {
        let Some(seen) = self.placements.remove(placement) else { return BTreeSet::new() };
        if seen.admitted {
            self.pairs -= seen.campaigns.len();
            seen.campaigns
        } else {
            self.waiting.remove(&seen.order);
            BTreeSet::new()
        }
    }

    /// Placements without per-campaign series.
    fn omitted(&self) -> usize {
        self.waiting.len()
    }

    fn placements(&self) -> Vec<String> {
        self.placements.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
