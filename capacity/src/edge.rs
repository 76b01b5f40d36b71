//! The traffic of the measurement: placements with realistic targets, a mix of attribute
//! profiles, and a simulated edge that decides sampled requests under the plans in KV
//! and sends their events to the origin as the worker does.
//!
//! Only sampled requests are simulated: the origin never sees the others, so a placement
//! with `R` requests per window at sample rate `s` is `R·s` events per window, drawn
//! here directly. Each event is made by core's own calls (`CompiledPlan::resolve`,
//! `choose`, `allocation_event`), so its bytes are the edge's.

use allot_core::{CompiledPlan, Event, EventBatch, EventKind, PlacementId, Plan, RequestAttrs, RequestId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Platforms × countries: 4 × 20 = 80 attribute profiles.
pub const PLATFORMS: [&str; 4] = ["ios", "android", "web", "tv"];
pub const COUNTRIES: [&str; 20] = [
    "US", "DE", "FR", "GB", "JP", "BR", "IN", "IT", "ES", "CA", "MX", "NL", "PL", "SE", "AU", "KR", "TR", "AR", "BE",
    "CH",
];
/// Share of allocated ads the apps report as shown.
pub const RENDER_RATIO: f64 = 0.7;
/// The edge location events carry.
pub const COLO: &str = "FRA";

/// A placement's id in the measurement.
pub fn placement(i: usize) -> String {
    format!("cap_{i:05}")
}

/// The `PUT /v1/placements/{id}` body of a placement with `campaigns` campaigns whose
/// largest target is `largest` (the others share what is left of 80 %), eligibility
/// mixed (everyone; one platform; five countries; two platforms in five countries), and
/// a confidence margin chosen so a window needs about `samples` sampled requests.
pub fn targets(campaigns: usize, largest: f64, samples: f64, variant: u64) -> Value {
    let rest = if campaigns > 1 { (0.8 - largest) / (campaigns - 1) as f64 } else { 0.0 };
    let list: Vec<Value> = (0..campaigns)
        .map(|k| {
            let rate = if k == 0 { largest } else { rest };
            let eligibility = match k % 4 {
                0 => json!({}),
                1 => json!({"platforms": [PLATFORMS[k / 4 % 4]]}),
                2 => json!({"countries": &COUNTRIES[k % 15..k % 15 + 5]}),
                _ => json!({"platforms": ["android", "web"], "countries": &COUNTRIES[(k + 3) % 15..(k + 3) % 15 + 5]}),
            };
            json!({
                "id": format!("c{k:02}"),
                // Rounded so a JSON round trip keeps the sum at or below 1.
                "rate": ((rate * 1e6).floor() / 1e6),
                "creative": {
                    "title": format!("Campaign {k} v{variant}"),
                    "image": format!("https://cdn.example.com/creatives/{k:02}/banner-320x50.png"),
                    "url": format!("https://example.com/landing/{k:02}?utm_source=allot"),
                },
                "eligibility": eligibility,
            })
        })
        .collect();
    // n = z²·s(1−s)/e² at 95 % (z = 1.96) around the largest target.
    let margin = (1.96f64.powi(2) * largest * (1.0 - largest) / samples).sqrt().clamp(0.0001, 0.5);
    json!({"campaigns": list, "confidence": {"margin": margin, "level": 0.95}})
}

/// The profiles' shares: Zipf-like over countries (1/rank), platforms 40/35/20/5 %.
fn profile_weights() -> Vec<(&'static str, &'static str, f64)> {
    let platform_share = [0.4, 0.35, 0.2, 0.05];
    let norm: f64 = (1..=COUNTRIES.len()).map(|r| 1.0 / r as f64).sum();
    let mut out = Vec::new();
    for (p, ps) in PLATFORMS.iter().zip(platform_share) {
        for (r, c) in COUNTRIES.iter().enumerate() {
            out.push((*p, *c, ps * (1.0 / (r + 1) as f64) / norm));
        }
    }
    out
}

/// The simulated edge: the compiled plans it serves and a random source.
#[derive(Debug)]
pub struct Edge {
    rng: SmallRng,
    profiles: Vec<(&'static str, &'static str, f64)>,
    seq: u64,
}

impl Edge {
    pub fn new(seed: u64) -> Self {
        Self { rng: SmallRng::seed_from_u64(seed), profiles: profile_weights(), seq: 0 }
    }

    fn profile(&mut self) -> (&'static str, &'static str) {
        let mut x: f64 = self.rng.random();
        for &(p, c, w) in &self.profiles {
            if x < w {
                return (p, c);
            }
            x -= w;
        }
        ("ios", "US")
    }

    fn request_id(&mut self) -> RequestId {
        self.seq += 1;
        let id = format!("{:016x}{:016x}", self.rng.random::<u64>(), self.seq);
        RequestId::parse(&id).unwrap_or_else(|_| unreachable!("32 hex digits are a request id"))
    }

    /// The events of one sampled request under `plan`: its allocation and, when an ad
    /// was served and rendered, its impression.
    pub fn request(&mut self, plan: &CompiledPlan, now_ms: u64, out: &mut Vec<Event>) {
        let (platform, country) = self.profile();
        let Ok(attrs) = RequestAttrs::parse(Some(platform), Some(country)) else { return };
        // Its platform as the plan's vocabulary has it (`tv` is `other` unless a rule names it).
        let attrs = plan.resolve(attrs);
        let choice = plan.choose(attrs, self.rng.random());
        let id = self.request_id();
        let event = plan.allocation_event(id, choice, attrs, now_ms, Some(COLO.into()), false);
        // As the edge sends it: of its allocation's platform, from the token.
        let impression = (event.ad_id.is_some() && self.rng.random::<f64>() < RENDER_RATIO).then(|| Event {
            kind: EventKind::Impression,
            eligible: Vec::new(),
            ..event.clone()
        });
        out.push(event);
        out.extend(impression);
    }

    /// `count` sampled requests of `plan`, each with its impression when rendered.
    pub fn requests(&mut self, plan: &CompiledPlan, count: usize, now_ms: u64) -> Vec<Event> {
        let mut out = Vec::with_capacity(count * 2);
        for _ in 0..count {
            self.request(plan, now_ms, &mut out);
        }
        out
    }
}

/// How events are put into bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One event per body.
    Single,
    /// 100 events per body, all of one placement: one stream entry per body.
    Batch,
    /// 100 events per body, across placements (round robin): as an isolate serving
    /// many placements batches them, up to one stream entry per event.
    Mixed,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Batch => "batch",
            Self::Mixed => "mixed",
        }
    }
}

/// Bodies of `shape` from per-placement event lists.
pub fn bodies(shape: Shape, mut per_placement: Vec<Vec<Event>>) -> Vec<String> {
    const BATCH: usize = 100;
    let mut out = Vec::new();
    match shape {
        Shape::Single => {
            for e in per_placement.into_iter().flatten() {
                out.push(EventBatch { events: vec![e] }.to_json());
            }
        }
        Shape::Batch => {
            for events in per_placement {
                for chunk in events.chunks(BATCH) {
                    out.push(EventBatch { events: chunk.to_vec() }.to_json());
                }
            }
        }
        Shape::Mixed => {
            let mut mixed = Vec::new();
            let mut i = 0;
            while per_placement.iter().any(|v| !v.is_empty()) {
                let n = per_placement.len();
                if let Some(e) = per_placement[i % n].pop() {
                    mixed.push(e);
                }
                i += 1;
            }
            for chunk in mixed.chunks(BATCH) {
                out.push(EventBatch { events: chunk.to_vec() }.to_json());
            }
        }
    }
    out
}

/// Compiles the plan the edge would serve; `None` for a withdrawn or unusable one.
pub fn compile(plan: Plan) -> Option<CompiledPlan> {
    (!plan.withdrawn).then(|| CompiledPlan::new(plan).ok()).flatten()
}

/// The KV key of placement `i`.
pub fn kv_key(i: usize) -> String {
    Plan::kv_key(&PlacementId::parse(placement(i)).unwrap_or_else(|_| unreachable!("a valid placement id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_valid_and_ask_for_the_samples() {
        for campaigns in [1, 8, 64] {
            let spec: allot_core::TargetsSpec = serde_json::from_value(targets(campaigns, 0.3, 1000.0, 0)).unwrap();
            let t = allot_core::Targets::parse(spec).unwrap();
            let n = allot_core::SampleRatePlanner::required_samples(&t);
            assert!((n - 1000.0).abs() < 1.0, "{campaigns}: {n}");
        }
        assert!((profile_weights().iter().map(|p| p.2).sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(profile_weights().len(), 80);
    }
}
