//! The scenarios the simulator runs: traffic mix, targets, and what goes wrong.

use allot_core::{CampaignId, Targets, TargetsSpec};
use serde_json::json;

/// A request profile: attributes and their share of traffic.
#[derive(Debug, Clone)]
pub struct Profile {
    pub platform: &'static str,
    pub country: &'static str,
    pub share: f64,
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub key: &'static str,
    pub title: &'static str,
    pub profiles: Vec<Profile>,
    pub targets: Targets,
    /// New targets and when (seconds from the start) the manager sets them.
    pub change: Option<(u64, Targets)>,
    /// Probability that an allocated ad of a campaign is actually shown.
    pub render_failure: Vec<(CampaignId, f64)>,
    /// Whether apps report impressions (delivery is then measured on impressions).
    pub impressions: bool,
}

fn targets(campaigns: serde_json::Value) -> Targets {
    let spec: TargetsSpec = serde_json::from_value(json!({
        "campaigns": campaigns,
        "confidence": {"margin": 0.01, "level": 0.95},
    }))
    .expect("scenario targets are well-formed");
    Targets::parse(spec).expect("scenario targets are valid")
}

/// Independent platform × country mix.
fn mix(platforms: &[(&'static str, f64)], countries: &[(&'static str, f64)]) -> Vec<Profile> {
    platforms
        .iter()
        .flat_map(|&(platform, p)| {
            countries.iter().map(move |&(country, c)| Profile { platform, country, share: p * c })
        })
        .collect()
}

/// 30 % iOS; 60 % of traffic from DE or FR.
fn skewed_mix() -> Vec<Profile> {
    mix(&[("ios", 0.3), ("android", 0.5), ("web", 0.2)], &[("DE", 0.35), ("FR", 0.25), ("US", 0.4)])
}

fn skewed_targets(a: f64, b: f64, c: f64) -> Targets {
    targets(json!([
        {"id": "A", "rate": a, "eligibility": {"platforms": ["ios"]}},
        {"id": "B", "rate": b, "eligibility": {"countries": ["DE", "FR"]}},
        {"id": "C", "rate": c},
    ]))
}

pub fn all() -> Vec<Scenario> {
    let uniform = || targets(json!([{"id": "A", "rate": 0.5}, {"id": "B", "rate": 0.3}]));
    vec![
        Scenario {
            key: "uniform",
            title: "1. uniform eligibility (A 50 %, B 30 %)",
            profiles: skewed_mix(),
            targets: uniform(),
            change: None,
            render_failure: vec![],
            impressions: false,
        },
        Scenario {
            key: "skewed",
            title: "2. skewed eligibility (A 20 % on iOS = 30 % of traffic, B 30 % in DE/FR = 60 %, C 25 %)",
            profiles: skewed_mix(),
            targets: skewed_targets(0.2, 0.3, 0.25),
            change: None,
            render_failure: vec![],
            impressions: false,
        },
        Scenario {
            key: "infeasible",
            title: "3. infeasible target (A asks 40 % but is eligible for 30 %)",
            profiles: skewed_mix(),
            targets: skewed_targets(0.4, 0.3, 0.2),
            change: None,
            render_failure: vec![],
            impressions: false,
        },
        Scenario {
            key: "change",
            title: "4. target change at 30 min (A 20→10 %, B 30→40 %, C 25→30 %)",
            profiles: skewed_mix(),
            targets: skewed_targets(0.2, 0.3, 0.25),
            change: Some((1800, skewed_targets(0.1, 0.4, 0.3))),
            render_failure: vec![],
            impressions: false,
        },
        Scenario {
            key: "render",
            title: "5. A fails to render 20 % of the time (delivery on impressions)",
            profiles: skewed_mix(),
            targets: uniform(),
            change: None,
            render_failure: vec![(CampaignId::parse("A").expect("valid id"), 0.2)],
            impressions: true,
        },
    ]
}
