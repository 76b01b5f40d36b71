//! What the edge tells the origin: sampled allocation and impression events.
//!
//! Wire format (`POST /v1/events`, body `{"events": [...]}`), documented in
//! `docs/event-format.md`. Every event carries the sample rate it was sampled at, so
//! the origin weighs it by `1 / rate` (Horvitz–Thompson) whatever the rate is now, and
//! the plan version it was decided under.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{CampaignId, MAX_CAMPAIGNS, PlacementId, RequestId};

/// The most events one request body may carry.
pub const MAX_BATCH: usize = 1000;

/// The request header by which an edge reports the sampled events it could not deliver
/// (its outbox full, a batch too old to send, a batch refused) since its last report:
/// the origin adds it to a metric when it stores the body, so a retried or replayed
/// body reports once. Optional (absent: none), a decimal count; outside the signature,
/// so it can only ever move that metric, never the counts.
pub const DROPPED_HEADER: &str = "x-allot-edge-dropped";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The edge chose (an ad or "no ad") for a request.
    Allocation,
    /// The app reported that the ad was actually shown.
    Impression,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allocation => "allocation",
            Self::Impression => "impression",
        }
    }
}

/// One sampled event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: EventKind,
    /// When the edge decided (unix milliseconds).
    pub event_time_ms: u64,
    pub request_id: RequestId,
    pub placement: PlacementId,
    /// The chosen campaign; `None` is "no ad" (allocations only).
    pub ad_id: Option<CampaignId>,
    pub plan_version: u64,
    pub sample_rate: f64,
    /// The request's eligibility pattern (allocations; empty for impressions, which
    /// do not know it).
    #[serde(default, deserialize_with = "at_most::<_, _, MAX_CAMPAIGNS>")]
    pub eligible: Vec<CampaignId>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    /// The edge location that decided, for operators.
    #[serde(default)]
    pub colo: Option<String>,
    /// The app said it reports no impressions (`impressions=none` on `/v1/ad`), so the
    /// request counts for allocations but stays out of the base of render ratios: an
    /// app that never reports would otherwise look like ads that never render.
    /// Allocations only; absent on the wire when false, so older edges read as
    /// reporting apps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreported: bool,
}

/// A body of events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    #[serde(deserialize_with = "at_most::<_, _, MAX_BATCH>")]
    pub events: Vec<Event>,
}

/// A JSON array of which at most `N + 1` items are kept, the rest read past without
/// being built: enough for [`EventBatch::parse`] to refuse a list that is too long by its
/// length, without first building every item a body of a megabyte can name (a quarter
/// of a million `"a"`s in an `eligible` list would otherwise be as many ids).
fn at_most<'de, D, T, const N: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Bounded<T, N> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {N} items")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N + 1));
            while out.len() <= N {
                match seq.next_element()? {
                    Some(item) => out.push(item),
                    None => return Ok(out),
                }
            }
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<T, N>(std::marker::PhantomData))
}

/// Why an event body was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("invalid event body: {0}")]
    Json(String),
    /// How many were read: none, or one past the limit (the rest are not counted).
    #[error("a body carries 1 to {MAX_BATCH} events (got {})", if *.0 > MAX_BATCH { "more" } else { "none" })]
    BatchSize(usize),
    #[error("events[{index}].{field}: {message}")]
    Invalid { index: usize, field: &'static str, message: String },
}

impl Event {
    /// The Horvitz–Thompson weight: how many requests this sampled event stands for.
    /// Finite only for a positive rate: the origin counts only events that passed
    /// [`Limits::admit`](crate::admit::Limits::admit), which bounds the rate.
    pub fn weight(&self) -> f64 {
        1.0 / self.sample_rate
    }

    fn check(&self, index: usize) -> Result<(), EventError> {
        // The rate and the time are not checked here: a body with one bad rate is not
        // refused whole. The origin drops such events one by one (`crate::admit`).
        let bad = |field, message: &str| Err(EventError::Invalid { index, field, message: message.into() });
        if self.kind == EventKind::Impression && self.ad_id.is_none() {
            return bad("ad_id", "an impression needs the ad that was shown");
        }
        if self.kind == EventKind::Impression && self.unreported {
            return bad("unreported", "an impression comes from an app that reports them");
        }
        if self.eligible.len() > MAX_CAMPAIGNS {
            return bad("eligible", "too many campaigns");
        }
        let mut seen = BTreeSet::new();
        if !self.eligible.iter().all(|c| seen.insert(c)) {
            return bad("eligible", "duplicate campaign id");
        }
        if let (EventKind::Allocation, Some(ad)) = (self.kind, &self.ad_id)
            && !self.eligible.contains(ad)
        {
            return bad("ad_id", "the chosen ad must be in the eligible set");
        }
        if !self.platform.as_deref().is_none_or(crate::targets::is_platform) {
            return bad("platform", "must be a lower-case token of at most 32 characters");
        }
        if !self.country.as_deref().is_none_or(crate::targets::is_country) {
            return bad("country", "must be an upper-case ISO 3166-1 alpha-2 code");
        }
        if self.colo.as_ref().is_some_and(|c| c.len() > 16 || !c.bytes().all(|b| b.is_ascii_alphanumeric())) {
            return bad("colo", "must be at most 16 letters or digits");
        }
        Ok(())
    }
}

impl EventBatch {
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let batch: EventBatch = serde_json::from_slice(body).map_err(|e| EventError::Json(e.to_string()))?;
        if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
            return Err(EventError::BatchSize(batch.events.len()));
        }
        for (i, e) in batch.events.iter().enumerate() {
            e.check(i)?;
        }
        Ok(batch)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events always serialise")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn allocation(id: &str, ad: Option<&str>, eligible: &[&str], rate: f64) -> Event {
        Event {
            kind: EventKind::Allocation,
            event_time_ms: 1_700_000_000_000,
            request_id: RequestId::parse(id).unwrap(),
            placement: PlacementId::parse("home_feed").unwrap(),
            ad_id: ad.map(|a| CampaignId::parse(a).unwrap()),
            plan_version: 1,
            sample_rate: rate,
            eligible: eligible.iter().map(|c| CampaignId::parse(*c).unwrap()).collect(),
            platform: Some("ios".into()),
            country: Some("DE".into()),
            colo: Some("FRA".into()),
            unreported: false,
        }
    }

    #[test]
    fn round_trips() {
        let mut quiet = allocation("r3", Some("B"), &["B"], 0.25);
        quiet.unreported = true;
        let batch = EventBatch {
            events: vec![allocation("r1", Some("A"), &["A", "B"], 0.5), allocation("r2", None, &[], 1.0), quiet],
        };
        let json = batch.to_json();
        assert_eq!(EventBatch::parse(json.as_bytes()).unwrap(), batch);
        // Written only when set, so a body from an edge that predates it reads the same.
        assert_eq!(json.matches("\"unreported\":true").count(), 1);
        assert!(!json.contains("\"unreported\":false"));
    }

    #[test]
    fn rejects_bad_events() {
        let good = serde_json::to_value(allocation("r1", Some("A"), &["A"], 0.5)).unwrap();
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"ad_id": "B"}), "eligible set"),
            (json!({"eligible": ["A", "A"]}), "duplicate"),
            (json!({"kind": "impression", "ad_id": null}), "ad_id"),
            (json!({"kind": "click"}), "unknown variant"),
            (json!({"request_id": "a b"}), "request id"),
            (json!({"bogus": 1}), "unknown field"),
            (json!({"platform": "iOS"}), "platform"),
            (json!({"country": "de"}), "country"),
            (json!({"kind": "impression", "unreported": true}), "unreported"),
            (json!({"unreported": 1}), "invalid type"),
        ];
        for (patch, expect) in cases {
            let mut e = good.clone();
            for (k, v) in patch.as_object().unwrap() {
                e[k] = v.clone();
            }
            let body = json!({ "events": [e] }).to_string();
            let err = EventBatch::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expect), "{err} should mention {expect}");
        }
        assert_eq!(EventBatch::parse(br#"{"events":[]}"#), Err(EventError::BatchSize(0)));
        assert_eq!(
            EventBatch::parse(br#"{"events":[]}"#).unwrap_err().to_string(),
            "a body carries 1 to 1000 events (got none)"
        );
    }

    /// A list longer than its limit is refused by its length, and only the limit and one
    /// more of its items are built: a body of a megabyte cannot make the parser build a
    /// quarter of a million ids or a thousand events more than it may carry.
    #[test]
    fn lists_past_their_limit_are_refused_having_built_one_item_more() {
        let good = serde_json::to_value(allocation("r1", Some("A"), &["A"], 0.5)).unwrap();
        let mut long = good.clone();
        long["eligible"] = json!(vec!["A"; 250_000]);
        let body = json!({ "events": [long] }).to_string();
        let err = EventBatch::parse(body.as_bytes()).unwrap_err();
        assert_eq!(err, EventError::Invalid { index: 0, field: "eligible", message: "too many campaigns".into() });
        let body = json!({ "events": vec![good.clone(); 5_000] }).to_string();
        let err = EventBatch::parse(body.as_bytes()).unwrap_err();
        assert_eq!(err, EventError::BatchSize(MAX_BATCH + 1));
        assert_eq!(err.to_string(), "a body carries 1 to 1000 events (got more)");
        // What follows an over-long list is still read: a body that does not parse says so.
        let body = format!("{{\"events\":[{}],\"bogus\":1}}", vec![good.to_string(); 1_001].join(","));
        assert!(matches!(EventBatch::parse(body.as_bytes()), Err(EventError::Json(_))));
        let body = json!({ "events": vec![good; MAX_BATCH] }).to_string();
        assert_eq!(EventBatch::parse(body.as_bytes()).unwrap().events.len(), MAX_BATCH);
        assert!(matches!(EventBatch::parse(b"nope"), Err(EventError::Json(_))));
    }

    #[test]
    fn out_of_range_rates_and_times_parse_so_they_can_be_dropped_one_by_one() {
        let mut odd = allocation("r1", Some("A"), &["A"], 1e-160);
        odd.event_time_ms = u64::MAX;
        let negative = allocation("r2", None, &[], -1.0);
        let batch = EventBatch { events: vec![odd, negative] };
        assert_eq!(EventBatch::parse(batch.to_json().as_bytes()).unwrap(), batch);
    }
}
