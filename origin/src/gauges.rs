//! Delivery gauges: per placement and per campaign, what the control round saw, for
//! dashboards and alerts (`ops/prometheus/alerts.yml`).
//!
//! Set by the lease holder's rounds, from the same numbers as the status API and the
//! window history (`status::campaigns`); registered in the one registry
//! ([`crate::metrics::Metrics`]). A replica that loses the lease clears them, and a
//! deleted placement's or campaign's series are removed, so an alert never fires on a
//! value nobody updates any more. Plan age is exported as the publish time
//! (`…_published_timestamp_seconds`); rules compute the age with `time()`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, Opts, Registry};

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
    series: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
}

fn vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

const CAMPAIGN: &[&str] = &["placement", "campaign"];
const PLACEMENT: &[&str] = &["placement"];

impl DeliveryGauges {
    pub fn register(r: &Registry) -> Self {
        Self {
            target: vec(r, "allot_campaign_target_share", "The campaign's target share.", CAMPAIGN),
            estimate: vec(
                r,
                "allot_campaign_estimated_share",
                "The share measured in the last complete window.",
                CAMPAIGN,
            ),
            low: vec(r, "allot_campaign_estimated_share_low", "Lower end of the measured share's interval.", CAMPAIGN),
            high: vec(
                r,
                "allot_campaign_estimated_share_high",
                "Upper end of the measured share's interval.",
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
            series: Arc::default(),
        }
    }

    /// Sets `placement`'s gauges from a round's reading.
    pub fn observe(&self, placement: &str, reading: &PlacementReading<'_>) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<String> = reading.campaigns.iter().map(|c| c.id.clone()).collect();
        if let Some(before) = series.get(placement) {
            for gone in before.difference(&now) {
                self.remove_campaign(placement, gone);
            }
        }
        for c in reading.campaigns {
            let labels = [placement, c.id.as_str()];
            self.target.with_label_values(&labels).set(c.target);
            self.estimate.with_label_values(&labels).set(c.estimate.share);
            self.low.with_label_values(&labels).set(c.estimate.low);
            self.high.with_label_values(&labels).set(c.estimate.high);
            let feasible = c.feasibility.get("status").and_then(|s| s.as_str()) != Some("infeasible");
            self.feasible.with_label_values(&labels).set(f64::from(u8::from(feasible)));
            let joint = !feasible && c.feasibility.get("joint").and_then(|j| j.as_bool()) == Some(true);
            self.joint.with_label_values(&labels).set(f64::from(u8::from(joint)));
        }
        let labels = [placement];
        if let (Some(rate), Some(at)) = (reading.sample_rate, reading.published_at_ms) {
            self.plan_in_force(placement, rate, at);
        }
        self.unattainable.with_label_values(&labels).set(f64::from(u8::from(reading.attainable == Some(false))));
        series.insert(placement.to_string(), now);
    }

    /// A plan of `placement` was published and stored: its rate and time.
    pub fn plan_in_force(&self, placement: &str, sample_rate: f64, published_at_ms: u64) {
        self.sample_rate.with_label_values(&[placement]).set(sample_rate);
        self.published.with_label_values(&[placement]).set(published_at_ms as f64 / 1000.0);
    }

    /// Removes a placement's series (deleted).
    pub fn forget(&self, placement: &str) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(campaigns) = series.remove(placement) {
            for c in &campaigns {
                self.remove_campaign(placement, c);
            }
            for g in [&self.sample_rate, &self.unattainable, &self.published] {
                let _ = g.remove_label_values(&[placement]);
            }
        }
    }

    /// Removes every series (this replica no longer runs the rounds).
    pub fn clear(&self) {
        let placements: Vec<String> = self.series.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
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
