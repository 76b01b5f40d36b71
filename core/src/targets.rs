//! What a manager asks for: per placement, each campaign's share of traffic, who it is
//! eligible for, and how sure the system must be that the shares are met.
//!
//! [`TargetsSpec`] is the wire shape (what the admin API receives); [`Targets`] is the
//! validated value. [`Targets::parse`] is the only way from one to the other, and every
//! rejection names the offending field (`campaigns[1].rate`), so the admin API can
//! answer `422` with a message a manager can act on.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{CampaignId, MAX_CAMPAIGNS};

/// A share of traffic: finite and within `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Rate(f64);

impl Rate {
    pub fn new(value: f64) -> Result<Self, String> {
        if !value.is_finite() {
            return Err("must be a finite number".into());
        }
        if !(0.0..=1.0).contains(&value) {
            return Err(format!("must be between 0 and 1 (got {value})"));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// A rejected field of a targets document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// A path into the document, e.g. `campaigns[2].eligibility.countries[0]`.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Who a campaign may be shown to. An empty list means "everyone" for that attribute; a
/// request that lacks an attribute is only eligible where the list is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Eligibility {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::Platform>, example = json!(["ios", "android"])))]
    pub platforms: Vec<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::Country>, example = json!(["DE", "FR"])))]
    pub countries: Vec<String>,
}

impl Eligibility {
    pub fn matches(&self, platform: Option<&str>, country: Option<&str>) -> bool {
        fn one(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        }
        one(&self.platforms, platform) && one(&self.countries, country)
    }

    /// Normalises and checks the lists: platforms are lower-case tokens, countries are
    /// ISO 3166-1 alpha-2 codes (upper-cased), no duplicates.
    pub fn parse(mut self, field: &str) -> Result<Self, ValidationError> {
        for p in &mut self.platforms {
            *p = p.to_ascii_lowercase();
        }
        for c in &mut self.countries {
            *c = c.to_ascii_uppercase();
        }
        check_list(&self.platforms, &format!("{field}.platforms"), is_platform)?;
        check_list(&self.countries, &format!("{field}.countries"), is_country)?;
        Ok(self)
    }
}

/// The items of [`Eligibility`]'s lists as the API's schema states them (any case: they
/// are normalised on parsing).
#[cfg(feature = "openapi")]
mod schema {
    #[derive(utoipa::ToSchema)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,32}$")]
    pub struct Platform(#[allow(dead_code)] String);

    #[derive(utoipa::ToSchema)]
    #[schema(pattern = "^[A-Za-z]{2}$")]
    pub struct Country(#[allow(dead_code)] String);
}

/// The most platforms one campaign's rule may name. Every plan is compiled at every
/// edge and indexed on every round, so a rule's size is work multiplied many times; a
/// real rule names a handful of platforms, and the bound keeps a document of a
/// megabyte from naming a hundred thousand.
pub const MAX_RULE_PLATFORMS: usize = 64;

/// The largest creative a campaign may carry, as compact JSON. The creative travels in
/// every plan the origin publishes (and every audit entry of its placement) and in
/// every response that serves the ad: it is what the app needs to render the ad (an
/// image's address, a title), never the image. With it, the plan of any valid document
/// stays under [`crate::plan::MAX_PLAN_BYTES`], the most an edge takes.
pub const MAX_CREATIVE_BYTES: usize = 8 * 1024;

/// The length of `creative` as compact JSON, counted without building the string.
fn creative_size(creative: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    serde_json::to_writer(&mut count, creative).map_or(usize::MAX, |()| count.0)
}

/// A platform token as it appears in requests: `ios`, `android`, `web`, …
pub fn is_platform(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An ISO 3166-1 alpha-2 country code, upper case.
pub fn is_country(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

fn check_list(list: &[String], field: &str, ok: fn(&str) -> bool) -> Result<(), ValidationError> {
    let mut seen = BTreeSet::new();
    for (i, v) in list.iter().enumerate() {
        if !ok(v) {
            return Err(ValidationError::new(format!("{field}[{i}]"), format!("invalid value {v:?}")));
        }
        if !seen.insert(v) {
            return Err(ValidationError::new(format!("{field}[{i}]"), format!("duplicate value {v:?}")));
        }
    }
    Ok(())
}

/// How sure the manager wants to be: realized shares within ±`margin` at `level`
/// confidence (e.g. ±1 pp at 95 %).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Confidence {
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0001, maximum = 0.5, example = 0.01))]
    pub margin: f64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.5, exclusive_maximum = 1.0, example = 0.95))]
    pub level: f64,
}

impl Default for Confidence {
    fn default() -> Self {
        Self { margin: 0.01, level: 0.95 }
    }
}

/// The finest margin a manager may ask for: ±0.01 pp. Finer ones ask for more samples
/// than any traffic has (and, near zero, for an infinite number).
pub const MIN_MARGIN: f64 = 0.0001;

impl Confidence {
    pub fn parse(self) -> Result<Self, ValidationError> {
        if !(self.margin.is_finite() && (MIN_MARGIN..=0.5).contains(&self.margin)) {
            return Err(ValidationError::new("confidence.margin", format!("must be in [{MIN_MARGIN}, 0.5]")));
        }
        if !(self.level.is_finite() && self.level >= 0.5 && self.level < 1.0) {
            return Err(ValidationError::new("confidence.level", "must be in [0.5, 1)"));
        }
        Ok(self)
    }

    /// The two-sided normal quantile for `level` (1.96 at 95 %).
    pub fn z(&self) -> f64 {
        crate::quantile::two_sided_z(self.level)
    }
}

/// The wire form of one campaign's target, as the admin API receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::CampaignId))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0, example = 0.3))]
    pub rate: f64,
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub creative: serde_json::Value,
    #[serde(default)]
    pub eligibility: Eligibility,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The wire form of a placement's targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TargetsSpec {
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub campaigns: Vec<CampaignSpec>,
    #[serde(default)]
    pub confidence: Confidence,
}

/// One campaign's validated target.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignTarget {
    pub id: CampaignId,
    pub rate: Rate,
    /// Opaque to allot: whatever the app needs to render the ad. Always a JSON object.
    pub creative: serde_json::Value,
    pub eligibility: Eligibility,
}

/// A placement's validated targets: `Σ rate ≤ 1`, unique ids, at most
/// [`MAX_CAMPAIGNS`] campaigns. The remainder `1 − Σ rate` is "no ad".
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub campaigns: Vec<CampaignTarget>,
    pub confidence: Confidence,
}

/// Rounding slack for `Σ rate ≤ 1` (managers type 0.1 + 0.2 + 0.7).
const SUM_SLACK: f64 = 1e-9;

impl Targets {
    /// A document as the admin API takes it anew: [`parse`](Self::parse)d, and within
    /// the bounds that keep what it costs in proportion (at most
    /// [`MAX_RULE_PLATFORMS`] platforms per rule, creatives of at most
    /// [`MAX_CREATIVE_BYTES`]). A stored document is only parsed: one an earlier
    /// version accepted past a bound later added must not stop its placement's rounds.
    pub fn admit(spec: TargetsSpec) -> Result<Self, ValidationError> {
        let targets = Self::parse(spec)?;
        for (i, c) in targets.campaigns.iter().enumerate() {
            let field = |name: &str| format!("campaigns[{i}].{name}");
            let platforms = c.eligibility.platforms.len();
            if platforms > MAX_RULE_PLATFORMS {
                return Err(ValidationError::new(
                    field("eligibility.platforms"),
                    format!("at most {MAX_RULE_PLATFORMS} platforms per campaign (got {platforms})"),
                ));
            }
            let size = creative_size(&c.creative);
            if size > MAX_CREATIVE_BYTES {
                return Err(ValidationError::new(
                    field("creative"),
                    format!("must be at most {MAX_CREATIVE_BYTES} bytes as compact JSON (got {size})"),
                ));
            }
        }
        Ok(targets)
    }

    /// A document's structure and values: ids, rates and their sum, eligibility lists,
    /// confidence. What every stored document is read with.
    pub fn parse(spec: TargetsSpec) -> Result<Self, ValidationError> {
        if spec.campaigns.len() > MAX_CAMPAIGNS {
            return Err(ValidationError::new(
                "campaigns",
                format!("at most {MAX_CAMPAIGNS} campaigns per placement (got {})", spec.campaigns.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut campaigns = Vec::with_capacity(spec.campaigns.len());
        let mut sum = 0.0;
        for (i, c) in spec.campaigns.into_iter().enumerate() {
            let field = |name: &str| format!("campaigns[{i}].{name}");
            let id = CampaignId::parse(c.id).map_err(|e| ValidationError::new(field("id"), e.to_string()))?;
            if !seen.insert(id.clone()) {
                return Err(ValidationError::new(field("id"), format!("duplicate campaign id {id:?}")));
            }
            let rate = Rate::new(c.rate).map_err(|m| ValidationError::new(field("rate"), m))?;
            if !c.creative.is_object() {
                return Err(ValidationError::new(field("creative"), "must be a JSON object"));
            }
            let eligibility = c.eligibility.parse(&field("eligibility"))?;
            sum += rate.get();
            campaigns.push(CampaignTarget { id, rate, creative: c.creative, eligibility });
        }
        if sum > 1.0 + SUM_SLACK {
            return Err(ValidationError::new("campaigns", format!("rates must sum to at most 1 (they sum to {sum})")));
        }
        let confidence = spec.confidence.parse()?;
        Ok(Self { campaigns, confidence })
    }

    /// The wire form again, for storage and the admin API's `GET`.
    pub fn to_spec(&self) -> TargetsSpec {
        TargetsSpec {
            campaigns: self
                .campaigns
                .iter()
                .map(|c| CampaignSpec {
                    id: c.id.to_string(),
                    rate: c.rate.get(),
                    creative: c.creative.clone(),
                    eligibility: c.eligibility.clone(),
                })
                .collect(),
            confidence: self.confidence,
        }
    }

    /// The "no ad" share: `1 − Σ rate`, never negative.
    pub fn no_ad_rate(&self) -> f64 {
        (1.0 - self.campaigns.iter().map(|c| c.rate.get()).sum::<f64>()).max(0.0)
    }

    pub fn campaign(&self, id: &CampaignId) -> Option<&CampaignTarget> {
        self.campaigns.iter().find(|c| &c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(doc: serde_json::Value) -> Result<Targets, ValidationError> {
        Targets::admit(serde_json::from_value(doc).expect("spec shape"))
    }

    fn field_of(doc: serde_json::Value) -> String {
        parse(doc).unwrap_err().field
    }

    #[test]
    fn parses_a_valid_document() {
        let t = parse(json!({
            "campaigns": [
                {"id": "A", "rate": 0.5, "creative": {"img": "a.png"},
                 "eligibility": {"platforms": ["IOS"], "countries": ["de"]}},
                {"id": "B", "rate": 0.3}
            ],
            "confidence": {"margin": 0.01, "level": 0.95}
        }))
        .unwrap();
        assert_eq!(t.campaigns.len(), 2);
        assert_eq!(t.campaigns[0].eligibility.platforms, ["ios"]);
        assert_eq!(t.campaigns[0].eligibility.countries, ["DE"]);
        assert!((t.no_ad_rate() - 0.2).abs() < 1e-12);
        assert_eq!(Targets::parse(t.to_spec()).unwrap(), t);
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let cases = [
            (json!({"campaigns": [{"id": "A", "rate": 1.5}]}), "campaigns[0].rate"),
            (json!({"campaigns": [{"id": "A", "rate": -0.1}]}), "campaigns[0].rate"),
            (json!({"campaigns": [{"id": "A", "rate": 0.1}, {"id": "A", "rate": 0.1}]}), "campaigns[1].id"),
            (json!({"campaigns": [{"id": "a b", "rate": 0.1}]}), "campaigns[0].id"),
            (json!({"campaigns": [{"id": "A", "rate": 0.6}, {"id": "B", "rate": 0.5}]}), "campaigns"),
            (json!({"campaigns": [{"id": "A", "rate": 0.1, "creative": "x"}]}), "campaigns[0].creative"),
            (
                json!({"campaigns": [{"id": "A", "rate": 0.1, "eligibility": {"countries": ["DEU"]}}]}),
                "campaigns[0].eligibility.countries[0]",
            ),
            (
                json!({"campaigns": [{"id": "A", "rate": 0.1, "eligibility": {"platforms": ["ios", "IOS"]}}]}),
                "campaigns[0].eligibility.platforms[1]",
            ),
            (json!({"campaigns": [], "confidence": {"margin": 0.0, "level": 0.95}}), "confidence.margin"),
            (json!({"campaigns": [], "confidence": {"margin": 0.01, "level": 1.0}}), "confidence.level"),
        ];
        for (doc, field) in cases {
            assert_eq!(field_of(doc.clone()), field, "{doc}");
        }
    }

    #[test]
    fn rejects_a_rule_of_more_than_64_platforms() {
        let platforms: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
        let doc = json!({"campaigns": [{"id": "A", "rate": 0.1, "eligibility": {"platforms": platforms}}]});
        let err = parse(doc).unwrap_err();
        assert_eq!(err.field, "campaigns[0].eligibility.platforms");
        assert!(err.message.contains("at most 64 platforms"), "{}", err.message);
        let doc = json!({"campaigns": [{"id": "A", "rate": 0.1, "eligibility": {"platforms": platforms[..64]}}]});
        assert_eq!(parse(doc).unwrap().campaigns[0].eligibility.platforms.len(), 64);
    }

    /// Bounds added later apply to what is admitted, not to what was stored before them.
    #[test]
    fn a_stored_document_past_the_bounds_still_parses() {
        let platforms: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
        let doc = json!({"campaigns": [{"id": "A", "rate": 0.1, "creative": {"t": "x".repeat(MAX_CREATIVE_BYTES)},
                                        "eligibility": {"platforms": platforms}}]});
        let spec: TargetsSpec = serde_json::from_value(doc).unwrap();
        assert!(Targets::admit(spec.clone()).is_err());
        assert_eq!(Targets::parse(spec).unwrap().campaigns[0].eligibility.platforms.len(), 65);
    }

    #[test]
    fn rejects_a_creative_past_its_limit_and_names_its_size() {
        let creative = |len: usize| json!({"title": "x".repeat(len - r#"{"title":""}"#.len())});
        let at = |len: usize| json!({"campaigns": [{"id": "A", "rate": 0.1}, {"id": "B", "rate": 0.1, "creative": creative(len)}]});
        assert!(parse(at(MAX_CREATIVE_BYTES)).is_ok());
        let err = parse(at(MAX_CREATIVE_BYTES + 1)).unwrap_err();
        assert_eq!(err.field, "campaigns[1].creative");
        assert!(err.message.contains(&format!("(got {})", MAX_CREATIVE_BYTES + 1)), "{}", err.message);
    }

    #[test]
    fn rejects_more_than_64_campaigns() {
        let campaigns: Vec<_> = (0..65).map(|i| json!({"id": format!("c{i}"), "rate": 0.01})).collect();
        assert_eq!(field_of(json!({ "campaigns": campaigns })), "campaigns");
    }

    #[test]
    fn nan_is_not_a_rate() {
        assert!(Rate::new(f64::NAN).is_err());
        assert!(Rate::new(f64::INFINITY).is_err());
        assert!(Rate::new(1.0).is_ok());
    }

    #[test]
    fn tolerates_rounding_in_the_sum() {
        assert!(
            parse(json!({"campaigns": [
                {"id": "A", "rate": 0.1}, {"id": "B", "rate": 0.2}, {"id": "C", "rate": 0.7}
            ]}))
            .is_ok()
        );
    }

    #[test]
    fn eligibility_matching() {
        let e = Eligibility { platforms: vec!["ios".into()], countries: vec![] };
        assert!(e.matches(Some("ios"), None));
        assert!(!e.matches(Some("android"), Some("DE")));
        assert!(!e.matches(None, Some("DE")));
        assert!(Eligibility::default().matches(None, None));
    }
}
