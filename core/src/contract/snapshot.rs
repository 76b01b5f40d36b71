//! The plan log's entry: a published plan and the targets it was solved for.
//!
//! Events carry the plan version they were decided under, not the targets. So that the
//! archive alone answers "delivery against target", the origin's control loop appends a
//! [`PlanSnapshot`] to the plan log ([`stream::PLAN_LOG`](super::stream::PLAN_LOG)) for
//! every plan it publishes, and the archiver writes them to the `plans` table.

use serde::{Deserialize, Serialize};

use crate::{CampaignId, Decision, Feasibility, PlacementId, Plan};

/// One published plan and the targets it was solved for. Unknown fields are ignored, so
/// an archiver older than the origin still archives what it knows during a rolling
/// deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSnapshot {
    pub placement: PlacementId,
    pub version: u64,
    pub issued_at_ms: u64,
    pub sample_rate: f64,
    /// The targets revision (the admin API's ETag) the plan was made from.
    pub targets_rev: u64,
    pub campaigns: Vec<SnapshotCampaign>,
}

/// One campaign of a [`PlanSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotCampaign {
    pub id: CampaignId,
    pub target_rate: f64,
    /// The weight the plan gives it (0 where the plan left it out).
    pub weight: f64,
    pub feasible: bool,
    /// The most it can get, when infeasible.
    pub max_share: Option<f64>,
}

impl PlanSnapshot {
    /// The snapshot of `plan`, made by `decision` from targets revision `targets_rev`.
    /// A plan without a decision (the empty plan of a deleted placement) has no
    /// campaigns.
    pub fn new(plan: &Plan, decision: Option<&Decision>, targets_rev: u64) -> Self {
        let campaigns = decision.map_or_else(Vec::new, |d| {
            d.campaigns
                .iter()
                .map(|c| SnapshotCampaign {
                    id: c.id.clone(),
                    target_rate: c.target,
                    weight: plan.campaign(&c.id).map_or(0.0, |p| p.weight),
                    feasible: matches!(c.feasibility, Feasibility::Feasible),
                    max_share: match c.feasibility {
                        Feasibility::Feasible => None,
                        Feasibility::Infeasible { max_share } => Some(max_share),
                    },
                })
                .collect()
        });
        Self {
            placement: plan.placement.clone(),
            version: plan.version,
            issued_at_ms: plan.issued_at_ms,
            sample_rate: plan.sample_rate,
            targets_rev,
            campaigns,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A snapshot from a plan-log entry's JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_rejects_bad_ids() {
        let s = PlanSnapshot {
            placement: PlacementId::parse("home_feed").unwrap(),
            version: 7,
            issued_at_ms: 1_795_600_790_000,
            sample_rate: 0.25,
            targets_rev: 3,
            campaigns: vec![SnapshotCampaign {
                id: CampaignId::parse("B").unwrap(),
                target_rate: 0.4,
                weight: 0.6,
                feasible: false,
                max_share: Some(0.3),
            }],
        };
        assert_eq!(PlanSnapshot::parse(s.to_json().as_bytes()).unwrap(), s);
        assert!(PlanSnapshot::parse(br#"{"placement":"bad id!"}"#).is_err());
    }
}
