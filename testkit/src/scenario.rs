//! The demo scenario: two placements whose eligibility is skewed, so the controller's
//! correction is visible, and the traffic mix they are judged under. The demo shows it
//! and the end-to-end tests assert on it, so both run the same thing.
//!
//! Under [`PLATFORMS`] × [`COUNTRIES`]:
//! - `home_feed`: A (iOS only, 30 % of traffic) 20 %, B (DE and FR, 60 %) 30 %, C
//!   (everyone) 25 %: every target is feasible, but serving by target alone would miss
//!   A and B.
//! - `sidebar`: X asks for 50 % but only Android (40 % of traffic) is eligible, so it is
//!   infeasible with a maximum share of 40 %; Y (everyone) 30 % is feasible.

use serde_json::{Value, json};

/// The margin (± share) both placements ask the estimates to be within, at 95 %.
pub const MARGIN: f64 = 0.05;

/// The platform shares of the traffic.
pub const PLATFORMS: &[(&str, f64)] = &[("ios", 0.3), ("android", 0.4), ("web", 0.3)];
/// The country shares of the traffic, independent of the platform.
pub const COUNTRIES: &[(&str, f64)] = &[("DE", 0.35), ("FR", 0.25), ("US", 0.4)];

/// Shares as the demo's command line takes them: `ios:0.3,android:0.4,web:0.3`.
pub fn shares_arg(shares: &[(&str, f64)]) -> String {
    shares.iter().map(|(name, share)| format!("{name}:{share}")).collect::<Vec<_>>().join(",")
}

/// The placements with their targets, as `PUT /v1/placements/{id}` bodies.
pub fn placements() -> Vec<(&'static str, Value)> {
    vec![("home_feed", home_feed()), ("sidebar", sidebar())]
}

pub fn home_feed() -> Value {
    json!({
        "campaigns": [
            {"id": "A", "rate": 0.2, "creative": {"title": "iOS only"}, "eligibility": {"platforms": ["ios"]}},
            {"id": "B", "rate": 0.3, "creative": {"title": "DE and FR"}, "eligibility": {"countries": ["DE", "FR"]}},
            {"id": "C", "rate": 0.25, "creative": {"title": "everyone"}},
        ],
        "confidence": {"margin": MARGIN, "level": 0.95},
    })
}

pub fn sidebar() -> Value {
    json!({
        "campaigns": [
            {"id": "X", "rate": 0.5, "creative": {"title": "Android only, asks too much"},
             "eligibility": {"platforms": ["android"]}},
            {"id": "Y", "rate": 0.3, "creative": {"title": "everyone"}},
        ],
        "confidence": {"margin": MARGIN, "level": 0.95},
    })
}

/// A campaign's target rate in the scenario.
pub fn target(placement: &str, campaign: &str) -> Option<f64> {
    let (_, spec) = placements().into_iter().find(|(id, _)| *id == placement)?;
    spec["campaigns"].as_array()?.iter().find(|c| c["id"] == campaign)?["rate"].as_f64()
}
