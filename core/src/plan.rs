//! The plan: what the origin publishes to KV and the edge chooses from.
//!
//! A plan is a versioned JSON document (format 1, documented in `docs/plan-format.md`).
//! Parsing is strict (unknown fields, NaN-like values, duplicate ids, out-of-range
//! rates are all errors) because the edge must never act on a plan it does not fully
//! understand: it keeps serving the last good one instead.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{CampaignId, Eligibility, MAX_CAMPAIGNS, PlacementId};

/// The plan wire format this code reads and writes.
pub const PLAN_FORMAT: u32 = 1;

/// The largest plan, as JSON, an edge takes (a push past it is refused unread). Every
/// plan of a document [`crate::Targets::admit`] accepts fits: its campaigns, rules and
/// creatives are each bounded ([`MAX_CAMPAIGNS`], [`crate::targets::MAX_RULE_PLATFORMS`],
/// the country codes, [`crate::targets::MAX_CREATIVE_BYTES`]).
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;
/// The highest plan version: the largest integer a double holds exactly. Versions pass
/// through Lua's numbers in the origin's Redis scripts and JavaScript's in the edge's
/// tooling, and the origin publishes above whatever version an edge says it holds, so
/// a version past it (a push-key holder's) could never be superseded exactly.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// One campaign as the edge sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCampaign {
    pub id: CampaignId,
    /// Relative weight among eligible campaigns and "no ad". Not a share: with
    /// eligibility, shares follow from weights only through the pattern frequencies.
    pub weight: f64,
    pub creative: serde_json::Value,
    #[serde(default)]
    pub eligibility: Eligibility,
}

/// A placement's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format: u32,
    pub placement: PlacementId,
    /// Strictly increasing per placement; events carry the version they were decided
    /// under, and the edge refuses to replace a plan with an older one.
    pub version: u64,
    /// When the origin made this plan (unix milliseconds).
    pub issued_at_ms: u64,
    /// The share of requests whose events are sent to the origin, in `(0, 1]`.
    pub sample_rate: f64,
    /// The weight of "no ad", always eligible.
    pub no_ad_weight: f64,
    pub campaigns: Vec<PlanCampaign>,
    /// The placement was deleted. A withdrawn plan is a tombstone rather than a removed
    /// KV value because its version still orders it: a plan delivered late, or an edge
    /// cache that missed the delete, can never bring the placement back. The edge
    /// answers a withdrawn placement exactly like an unknown one and samples nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub withdrawn: bool,
    /// The platforms events may name besides those the campaigns' rules name, sorted.
    /// A request naming any other is decided and counted as [`OTHER_PLATFORM`]
    /// ([`Plan::vocabulary`]): apps choose their platform, and without a vocabulary each
    /// made-up one would add fields to the origin's window hashes, which every round
    /// reads whole. Absent (a plan from before vocabularies): every platform as named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Vec<String>>,
}

/// The platform a request outside its plan's vocabulary is decided and counted as.
pub const OTHER_PLATFORM: &str = "other";

/// The platforms an origin lists in its plans unless configured otherwise.
pub const COMMON_PLATFORMS: [&str; 3] = ["android", "ios", "web"];

/// The most platforms a plan lists besides its rules' ([`Plan::platforms`]).
pub const MAX_PLAN_PLATFORMS: usize = 64;

fn is_false(b: &bool) -> bool {
    !*b
}

/// The rule for [`Plan::platforms`], and for the list an origin is configured with:
/// at most [`MAX_PLAN_PLATFORMS`] platforms as events carry them, sorted, each once.
pub fn check_platforms(platforms: &[String]) -> Result<(), String> {
    if platforms.len() > MAX_PLAN_PLATFORMS {
        return Err(format!("at most {MAX_PLAN_PLATFORMS} platforms"));
    }
    if let Some(bad) = platforms.iter().find(|p| !crate::targets::is_platform(p)) {
        return Err(format!("{bad:?} is not 1–32 lower-case letters, digits, '_' or '-'"));
    }
    if !platforms.is_sorted_by(|a, b| a < b) {
        return Err("must be sorted, each platform once".into());
    }
    Ok(())
}

/// How an offered plan relates to the one held ([`Plan::succession`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Succession {
    /// A later version: replace.
    Newer,
    /// The held plan again (a retry): nothing to do.
    Same,
    /// An earlier version: refuse, never roll back.
    Older,
    /// The held version with different content: refuse.
    Conflict,
}

/// Why a plan was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("plan is not valid JSON for format {PLAN_FORMAT}: {0}")]
    Json(String),
    #[error("unsupported plan format {0} (this build reads format {PLAN_FORMAT})")]
    Format(u32),
    #[error("plan {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Invalid { field: field.into(), message: message.into() }
}

impl Plan {
    /// The tombstone of a deleted placement: no campaigns, never sampled. Its
    /// `sample_rate` is the last plan's, only so the plan log's rate series stays
    /// continuous; the edge does not sample withdrawn placements at any rate.
    pub fn withdrawn(placement: PlacementId, version: u64, issued_at_ms: u64, last_sample_rate: f64) -> Self {
        Self {
            format: PLAN_FORMAT,
            placement,
            version,
            issued_at_ms,
            sample_rate: last_sample_rate,
            no_ad_weight: 1.0,
            campaigns: vec![],
            withdrawn: true,
            platforms: None,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, PlanError> {
        // Check the format first, so an old edge reading a newer plan says so instead of
        // complaining about a field it has never heard of.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| PlanError::Json(e.to_string()))?;
        if head.format != PLAN_FORMAT {
            return Err(PlanError::Format(head.format));
        }
        let plan: Plan = serde_json::from_slice(bytes).map_err(|e| PlanError::Json(e.to_string()))?;
        plan.check()?;
        Ok(plan)
    }

    /// The invariants every plan holds; [`Plan::parse`] enforces them on the way in and
    /// the controller on the way out.
    pub fn check(&self) -> Result<(), PlanError> {
        if self.version > MAX_VERSION {
            return Err(invalid("version", format!("at most {MAX_VERSION}")));
        }
        if !(self.sample_rate.is_finite() && self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(invalid("sample_rate", "must be in (0, 1]"));
        }
        if !(self.no_ad_weight.is_finite() && self.no_ad_weight >= 0.0) {
            return Err(invalid("no_ad_weight", "must be a finite number ≥ 0"));
        }
        if self.withdrawn && !self.campaigns.is_empty() {
            return Err(invalid("campaigns", "a withdrawn plan has no campaigns"));
        }
        if self.campaigns.len() > MAX_CAMPAIGNS {
            return Err(invalid("campaigns", format!("at most {MAX_CAMPAIGNS} campaigns")));
        }
        let mut seen = BTreeSet::new();
        let mut total = self.no_ad_weight;
        for (i, c) in self.campaigns.iter().enumerate() {
            if !seen.insert(&c.id) {
                return Err(invalid(format!("campaigns[{i}].id"), "duplicate campaign id"));
            }
            if !(c.weight.is_finite() && c.weight >= 0.0) {
                return Err(invalid(format!("campaigns[{i}].weight"), "must be a finite number ≥ 0"));
            }
            if !c.creative.is_object() {
                return Err(invalid(format!("campaigns[{i}].creative"), "must be a JSON object"));
            }
            c.eligibility
                .clone()
                .parse(&format!("campaigns[{i}].eligibility"))
                .map_err(|e| invalid(e.field, e.message))?;
            total += c.weight;
        }
        if !(total.is_finite() && total > 0.0) {
            return Err(invalid("campaigns", "weights must not all be zero"));
        }
        if let Some(platforms) = &self.platforms {
            check_platforms(platforms).map_err(|message| invalid("platforms", message))?;
        }
        Ok(())
    }

    /// Every platform an event under this plan may name: those the campaigns' rules
    /// name, those [`Plan::platforms`] lists, and [`OTHER_PLATFORM`]; `None` for a plan
    /// without a vocabulary, under which any platform is taken as named.
    pub fn vocabulary(&self) -> Option<BTreeSet<String>> {
        let listed = self.platforms.as_ref()?;
        let ruled = self.campaigns.iter().flat_map(|c| &c.eligibility.platforms).map(|p| p.to_ascii_lowercase());
        Some(listed.iter().cloned().chain(ruled).chain([OTHER_PLATFORM.to_owned()]).collect())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plan always serialises")
    }

    pub fn campaign(&self, id: &CampaignId) -> Option<&PlanCampaign> {
        self.campaigns.iter().find(|c| &c.id == id)
    }

    /// What an edge holding `self` should do with `offered` for the same placement.
    /// Versions only go up, and one version names one plan: a different plan under
    /// the held version means two publishers raced, and neither may replace the other.
    pub fn succession(&self, offered: &Plan) -> Succession {
        use std::cmp::Ordering;
        match offered.version.cmp(&self.version) {
            Ordering::Greater => Succession::Newer,
            Ordering::Less => Succession::Older,
            Ordering::Equal if offered == self => Succession::Same,
            Ordering::Equal => Succession::Conflict,
        }
    }

    /// The KV key the plan lives under.
    pub fn kv_key(placement: &PlacementId) -> String {
        format!("plan:{placement}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Every bound of a targets document at its limit at once: 64 campaigns of the
    /// longest ids, each with the largest creative, 64 of the longest platforms and
    /// every country code.
    #[test]
    fn the_plan_of_the_largest_valid_document_fits_what_an_edge_takes() {
        use crate::targets::{MAX_CREATIVE_BYTES, MAX_RULE_PLATFORMS};
        let countries: Vec<String> =
            (b'A'..=b'Z').flat_map(|a| (b'A'..=b'Z').map(move |b| String::from_utf8(vec![a, b]).unwrap())).collect();
        let campaigns: Vec<_> = (0..MAX_CAMPAIGNS)
            .map(|i| {
                let platforms: Vec<String> = (0..MAX_RULE_PLATFORMS).map(|p| format!("{i:02}{p:030}")).collect();
                let title = "x".repeat(MAX_CREATIVE_BYTES - r#"{"t":""}"#.len());
                json!({"id": format!("{i:064}"), "rate": 0.01, "creative": {"t": title},
                       "eligibility": {"platforms": platforms, "countries": countries}})
            })
            .collect();
        let targets = crate::Targets::admit(serde_json::from_value(json!({ "campaigns": campaigns })).unwrap())
            .expect("every bound at its limit is valid");
        let plan = Plan {
            format: PLAN_FORMAT,
            placement: PlacementId::parse("p".repeat(64)).unwrap(),
            version: MAX_VERSION,
            issued_at_ms: u64::MAX,
            sample_rate: 2.2250738585072014e-308,
            no_ad_weight: 2.2250738585072014e-308,
            campaigns: targets
                .campaigns
                .iter()
                .map(|c| PlanCampaign {
                    id: c.id.clone(),
                    weight: 2.2250738585072014e-308,
                    creative: c.creative.clone(),
                    eligibility: c.eligibility.clone(),
                })
                .collect(),
            withdrawn: false,
            platforms: Some((0..MAX_PLAN_PLATFORMS).map(|p| format!("{p:032}")).collect()),
        };
        let size = plan.to_json().len();
        assert!(size <= MAX_PLAN_BYTES, "the largest plan is {size} bytes");
        assert!(size > MAX_PLAN_BYTES / 2, "the bound is not loose by more than half: {size} bytes");
    }

    pub(crate) fn sample() -> Plan {
        Plan {
            format: 1,
            placement: PlacementId::parse("home_feed").unwrap(),
            version: 7,
            issued_at_ms: 1_700_000_000_000,
            sample_rate: 0.05,
            no_ad_weight: 0.2,
            campaigns: vec![
                PlanCampaign {
                    id: CampaignId::parse("A").unwrap(),
                    weight: 0.5,
                    creative: json!({"img": "a.png"}),
                    eligibility: Eligibility { platforms: vec!["ios".into()], countries: vec![] },
                },
                PlanCampaign {
                    id: CampaignId::parse("B").unwrap(),
                    weight: 0.3,
                    creative: json!({}),
                    eligibility: Eligibility::default(),
                },
            ],
            withdrawn: false,
            platforms: None,
        }
    }

    #[test]
    fn the_vocabulary_is_the_listed_and_ruled_platforms_and_other() {
        let mut plan = sample();
        assert_eq!(plan.vocabulary(), None, "a plan without a list takes any platform");
        let spelled = serde_json::to_value(&plan).unwrap();
        assert!(spelled.get("platforms").is_none(), "nor spells the field");
        plan.platforms = Some(vec!["android".into(), "web".into()]);
        let words: Vec<String> = plan.vocabulary().unwrap().into_iter().collect();
        assert_eq!(words, ["android", "ios", "other", "web"]);
        assert_eq!(Plan::parse(plan.to_json().as_bytes()).unwrap(), plan);
        plan.platforms = Some(vec![]);
        assert_eq!(plan.vocabulary().unwrap().into_iter().collect::<Vec<_>>(), ["ios", "other"]);
    }

    #[test]
    fn succession_only_goes_forward_and_one_version_names_one_plan() {
        let held = sample();
        let mut newer = sample();
        newer.version += 1;
        let mut older = sample();
        older.version -= 1;
        let mut rival = sample();
        rival.no_ad_weight += 0.1;
        assert_eq!(held.succession(&newer), Succession::Newer);
        assert_eq!(held.succession(&sample()), Succession::Same);
        assert_eq!(held.succession(&older), Succession::Older);
        assert_eq!(held.succession(&rival), Succession::Conflict);
    }

    #[test]
    fn a_withdrawn_plan_round_trips_and_holds_no_campaigns() {
        let p = PlacementId::parse("home_feed").unwrap();
        let tomb = Plan::withdrawn(p, 8, 1_700_000_000_000, 0.05);
        let json = tomb.to_json();
        assert!(json.contains("\"withdrawn\":true"), "{json}");
        assert_eq!(Plan::parse(json.as_bytes()).unwrap(), tomb);
        // A live plan does not spell the field, so its bytes are what they always were.
        assert!(!sample().to_json().contains("withdrawn"));
        let mut v = serde_json::to_value(sample()).unwrap();
        v["withdrawn"] = json!(true);
        let err = Plan::parse(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("withdrawn plan has no campaigns"), "{err}");
    }

    #[test]
    fn round_trips() {
        let plan = sample();
        assert_eq!(Plan::parse(plan.to_json().as_bytes()).unwrap(), plan);
    }

    #[test]
    fn rejects_bad_plans_without_panicking() {
        let mut bad = serde_json::to_value(sample()).unwrap();
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|v| v["format"] = json!(2)), "unsupported plan format 2"),
            (Box::new(|v| v["sample_rate"] = json!(0.0)), "sample_rate"),
            (Box::new(|v| v["sample_rate"] = json!(1.5)), "sample_rate"),
            (Box::new(|v| v["campaigns"][0]["weight"] = json!(-1)), "campaigns[0].weight"),
            (Box::new(|v| v["campaigns"][1]["id"] = json!("A")), "campaigns[1].id"),
            (Box::new(|v| v["campaigns"][0]["creative"] = json!([])), "campaigns[0].creative"),
            (Box::new(|v| v["extra"] = json!(1)), "unknown field"),
            (Box::new(|v| v["placement"] = json!("a b")), "placement id"),
            (Box::new(|v| v["platforms"] = json!(["web", "ios"])), "sorted"),
            (Box::new(|v| v["platforms"] = json!(["ios", "ios"])), "each platform once"),
            (Box::new(|v| v["platforms"] = json!(["iOS"])), "lower-case"),
            (
                Box::new(|v| v["platforms"] = json!((0..65).map(|i| format!("p{i:03}")).collect::<Vec<_>>())),
                "at most 64",
            ),
            (
                Box::new(|v| {
                    v["no_ad_weight"] = json!(0);
                    v["campaigns"][0]["weight"] = json!(0);
                    v["campaigns"][1]["weight"] = json!(0);
                }),
                "must not all be zero",
            ),
        ];
        for (mutate, expect) in cases {
            let mut v = serde_json::to_value(sample()).unwrap();
            mutate(&mut v);
            let err = Plan::parse(v.to_string().as_bytes()).unwrap_err();
            assert!(err.to_string().contains(expect), "{err} should mention {expect}");
        }
        bad["version"] = json!("seven");
        assert!(Plan::parse(bad.to_string().as_bytes()).is_err());
        // Past what a double holds exactly, a version could not be superseded.
        for (version, ok) in [(MAX_VERSION, true), (MAX_VERSION + 1, false), (u64::MAX, false)] {
            bad["version"] = json!(version);
            let parsed = Plan::parse(bad.to_string().as_bytes());
            assert_eq!(parsed.is_ok(), ok, "{version}: {parsed:?}");
        }
        for junk in [&b""[..], b"null", b"{", b"[]", b"\xff\xfe"] {
            assert!(Plan::parse(junk).is_err());
        }
    }
}
