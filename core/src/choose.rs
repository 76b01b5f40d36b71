//! Choosing an ad: the edge's hot path.
//!
//! A [`Plan`] is compiled once (when it is loaded) into a [`CompiledPlan`]: eligibility
//! becomes bit masks (one per platform, a 26×26 table for countries) and each
//! campaign's part of the response is serialised ahead of time. Choosing is then a
//! mask intersection and one pass over the eligible campaigns' weights: O(#campaigns),
//! no allocation, no JSON work; writing the response is a few `push_str`s.

use crate::bits::Ones;
use crate::plan::OTHER_PLATFORM;
use crate::{CampaignId, Eligibility, Event, EventKind, Plan, PlanError, RequestId, Spread};

/// The request attributes eligibility looks at. Borrowed: the shell parses them from
/// the query string and the edge's geolocation without allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestAttrs<'a> {
    pub platform: Option<&'a str>,
    pub country: Option<&'a str>,
}

/// Why request attributes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    #[error("platform must be 1–32 characters of letters, digits, '_' or '-'")]
    Platform,
    #[error("country must be a two-letter ISO 3166-1 code")]
    Country,
}

impl<'a> RequestAttrs<'a> {
    /// Checks raw attributes. Case does not matter (`iOS` is `ios`, `de` is `DE`).
    pub fn parse(platform: Option<&'a str>, country: Option<&'a str>) -> Result<Self, AttrError> {
        if platform.is_some_and(|p| Platform::normalise(p).is_none()) {
            return Err(AttrError::Platform);
        }
        if country.is_some_and(|c| country_index(c).is_none()) {
            return Err(AttrError::Country);
        }
        Ok(Self { platform, country })
    }

    /// The request's platform as its events carry it (lower case): the one
    /// normalisation behind the allocation event and the impression token, so an
    /// impression names the platform its allocation was counted in.
    pub fn event_platform(&self) -> Option<Platform> {
        self.platform.and_then(Platform::normalise)
    }
}

/// The longest platform a request may name.
pub const MAX_PLATFORM: usize = 32;

/// A platform as events carry it: 1–[`MAX_PLATFORM`] characters of `[a-z0-9_-]`
/// ([`crate::targets::is_platform`]). Held inline rather than in a `String`, so the
/// edge's hot path and a verified impression token hold it without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Platform {
    len: u8,
    bytes: [u8; MAX_PLATFORM],
}

impl Platform {
    /// A request's platform in any case (`iOS` is `ios`); `None` unless it is 1–32
    /// letters, digits, `_` or `-`.
    pub fn normalise(raw: &str) -> Option<Self> {
        if !(1..=MAX_PLATFORM).contains(&raw.len()) {
            return None;
        }
        let mut bytes = [0; MAX_PLATFORM];
        for (to, from) in bytes.iter_mut().zip(raw.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        let platform = Self { len: raw.len() as u8, bytes };
        crate::targets::is_platform(platform.as_str()).then_some(platform)
    }

    /// A platform already normalised (what an edge wrote): upper case is refused, as
    /// anything else [`crate::targets::is_platform`] refuses.
    pub fn from_normalised(bytes: &[u8]) -> Option<Self> {
        let platform = Self::normalise(std::str::from_utf8(bytes).ok()?)?;
        (platform.as_str().as_bytes() == bytes).then_some(platform)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever held (`normalise`), so this never falls back.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Bit `i` set ⇔ campaign `i` was eligible: the request's eligibility pattern.
    pub eligible: u64,
    /// The chosen campaign's index in the plan, or `None` for "no ad".
    pub ad: Option<usize>,
}

fn country_index(c: &str) -> Option<usize> {
    let b = c.as_bytes();
    if b.len() != 2 || !b[0].is_ascii_alphabetic() || !b[1].is_ascii_alphabetic() {
        return None;
    }
    let i = |x: u8| (x.to_ascii_uppercase() - b'A') as usize;
    Some(i(b[0]) * 26 + i(b[1]))
}

/// Eligibility rules of up to 64 campaigns as bit masks: bit `i` of a mask is campaign
/// `i`. Answering "who is eligible for this request" is then two lookups and an AND.
#[derive(Debug, Clone)]
pub struct EligibilityIndex {
    /// Campaigns eligible for every platform (an empty platform list).
    any_platform: u64,
    /// Each platform some rule names (lower case, as rules are normalised), sorted, with
    /// the campaigns naming it: a lookup is a binary search whatever the rules' size.
    platforms: Vec<(String, u64)>,
    /// Campaigns eligible for every country.
    any_country: u64,
    /// Indexed by `(c0 − 'A') · 26 + (c1 − 'A')`.
    countries: Box<[u64; 26 * 26]>,
}

impl EligibilityIndex {
    /// Indexes the rules of campaigns `0, 1, …` (at most 64; later ones are ignored).
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a Eligibility>) -> Self {
        let mut index =
            Self { any_platform: 0, platforms: Vec::new(), any_country: 0, countries: Box::new([0; 26 * 26]) };
        let mut platforms = std::collections::BTreeMap::<String, u64>::new();
        for (i, e) in rules.into_iter().take(crate::MAX_CAMPAIGNS).enumerate() {
            let bit = 1u64 << i;
            if e.platforms.is_empty() {
                index.any_platform |= bit;
            }
            for p in &e.platforms {
                *platforms.entry(p.to_ascii_lowercase()).or_default() |= bit;
            }
            if e.countries.is_empty() {
                index.any_country |= bit;
            }
            for country in &e.countries {
                if let Some(idx) = country_index(country) {
                    index.countries[idx] |= bit;
                }
            }
        }
        index.platforms = platforms.into_iter().collect();
        index
    }

    /// The eligibility pattern of a request.
    pub fn eligible(&self, attrs: RequestAttrs<'_>) -> u64 {
        let platform = self.any_platform | attrs.platform.map_or(0, |p| self.naming(p));
        let country = self.any_country | attrs.country.and_then(country_index).map_or(0, |i| self.countries[i]);
        platform & country
    }

    /// The campaigns whose rules name platform `p` (in any case). A few platforms (what
    /// real rules name) are scanned: for ten, that is 5 ns a request faster than the
    /// search, which pays from there up.
    fn naming(&self, p: &str) -> u64 {
        let found = if self.platforms.len() <= LINEAR_PLATFORMS {
            self.platforms.iter().position(|(name, _)| name.eq_ignore_ascii_case(p))
        } else {
            let lower = p.bytes().map(|b| b.to_ascii_lowercase());
            self.platforms.binary_search_by(|(name, _)| name.bytes().cmp(lower.clone())).ok()
        };
        found.map_or(0, |i| self.platforms[i].1)
    }
}

/// Up to this many platforms named by a plan's rules, a request's is found by a scan.
const LINEAR_PLATFORMS: usize = 16;

/// A plan prepared for fast choosing.
#[derive(Debug, Clone)]
pub struct CompiledPlan {
    plan: Plan,
    index: EligibilityIndex,
    /// `{"id":…,"creative":…}` per campaign.
    ads: Vec<String>,
    /// `","placement":"…","plan_version":N,"ad":`
    middle: String,
    /// [`Plan::vocabulary`], sorted; `None`: any platform as named.
    vocabulary: Option<Vec<String>>,
}

impl CompiledPlan {
    pub fn new(plan: Plan) -> Result<Self, PlanError> {
        plan.check()?;
        let index = EligibilityIndex::new(plan.campaigns.iter().map(|c| &c.eligibility));
        let ads = plan
            .campaigns
            .iter()
            .map(|c| format!("{{\"id\":{},\"creative\":{}}}", serde_json::Value::from(c.id.as_str()), c.creative))
            .collect();
        let middle = format!("\",\"placement\":\"{}\",\"plan_version\":{},\"ad\":", plan.placement, plan.version);
        let vocabulary = plan.vocabulary().map(|v| v.into_iter().collect());
        Ok(Self { plan, index, ads, middle, vocabulary })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// About how many bytes of memory the compiled plan holds: each creative twice (as
    /// parsed JSON, about three times its text, and written out once), the country
    /// table and the rules' platforms. An estimate, for bounding a cache of plans.
    pub fn approx_bytes(&self) -> usize {
        let ads: usize = self.ads.iter().map(String::len).sum();
        let rules: usize = self.index.platforms.iter().map(|(p, _)| p.len() + 32).sum();
        std::mem::size_of::<Self>() + 4 * ads + rules + 26 * 26 * 8 + 256 * self.plan.campaigns.len()
    }

    /// The request as this plan decides and counts it: a platform outside the plan's
    /// vocabulary becomes [`OTHER_PLATFORM`], for eligibility, the event and the
    /// impression token alike, so the origin's profiles read back what the edge decided.
    /// Call once per request, before anything else looks at `attrs`.
    pub fn resolve<'a>(&self, attrs: RequestAttrs<'a>) -> RequestAttrs<'a> {
        let Some(vocabulary) = &self.vocabulary else { return attrs };
        let Some(platform) = attrs.event_platform() else { return attrs };
        if vocabulary.binary_search_by(|w| w.as_str().cmp(platform.as_str())).is_ok() {
            attrs
        } else {
            RequestAttrs { platform: Some(OTHER_PLATFORM), ..attrs }
        }
    }

    /// The eligibility pattern of a request.
    pub fn eligible(&self, attrs: RequestAttrs<'_>) -> u64 {
        self.index.eligible(attrs)
    }

    /// Picks "no ad" or one eligible campaign with probability proportional to its
    /// weight. `u` is a uniform random number in `[0, 1)` supplied by the caller.
    pub fn choose(&self, attrs: RequestAttrs<'_>, u: f64) -> Choice {
        let eligible = self.eligible(attrs);
        Choice { eligible, ad: pick(&self.plan, eligible, u) }
    }

    /// Picks with the same odds as [`CompiledPlan::choose`], but spread: each campaign's
    /// deliveries follow its odds to a request or two instead of the binomial spread
    /// (see [`crate::spread`]). The edge's way; `spread` is the placement's at this
    /// isolate, `fresh` gives 64 random bits once, for its starting credits.
    pub fn choose_spread(&self, attrs: RequestAttrs<'_>, spread: &mut Spread, fresh: impl FnOnce() -> u64) -> Choice {
        let eligible = self.eligible(attrs);
        Choice { eligible, ad: spread.pick(&self.plan, eligible, fresh) }
    }

    /// The campaign ids of an eligibility pattern, in plan order.
    pub fn pattern_ids(&self, pattern: u64) -> impl Iterator<Item = &CampaignId> {
        self.plan.campaigns.iter().enumerate().filter(move |(i, _)| pattern >> i & 1 == 1).map(|(_, c)| &c.id)
    }

    /// The allocation event of a decided request: what the edge sends when the request
    /// is sampled. Attributes are normalised the way events carry them (platform lower
    /// case by [`RequestAttrs::event_platform`], country upper case). `unreported`: the
    /// app said it reports no impressions
    /// ([`Event::unreported`]).
    pub fn allocation_event(
        &self,
        request_id: RequestId,
        choice: Choice,
        attrs: RequestAttrs<'_>,
        event_time_ms: u64,
        colo: Option<String>,
        unreported: bool,
    ) -> Event {
        let p = &self.plan;
        Event {
            kind: EventKind::Allocation,
            event_time_ms,
            request_id,
            placement: p.placement.clone(),
            ad_id: choice.ad.and_then(|i| p.campaigns.get(i)).map(|c| c.id.clone()),
            plan_version: p.version,
            sample_rate: p.sample_rate,
            eligible: self.pattern_ids(choice.eligible).cloned().collect(),
            platform: attrs.event_platform().map(|p| p.as_str().to_owned()),
            country: attrs.country.map(str::to_ascii_uppercase),
            colo,
            unreported,
        }
    }

    /// Appends the edge's `/v1/ad` response body. `request_id` must be a parsed
    /// [`crate::RequestId`] (its charset needs no JSON escaping); `token` is the ad's
    /// [impression token](crate::token) (base64url, no escaping either).
    pub fn write_response(&self, out: &mut String, request_id: &str, ad: Option<usize>, token: Option<&str>) {
        out.push_str("{\"request_id\":\"");
        out.push_str(request_id);
        out.push_str(&self.middle);
        match ad.and_then(|i| self.ads.get(i)) {
            Some(json) => out.push_str(json),
            None => out.push_str("null"),
        }
        if let Some(token) = token {
            out.push_str(",\"impression_token\":\"");
            out.push_str(token);
            out.push('"');
        }
        out.push('}');
    }
}

/// The probability of each outcome of [`pick`] for a request with eligibility pattern
/// `eligible`: `out[i]` for campaign `i` of the plan, and the return value for "no ad".
/// The simulator draws whole seconds of a profile's requests from these at once, so they
/// must be exactly `pick`'s odds (the tests check it by drawing).
pub fn pick_probabilities(plan: &Plan, eligible: u64, out: &mut Vec<f64>) -> f64 {
    out.clear();
    out.resize(plan.campaigns.len(), 0.0);
    let mut total = plan.no_ad_weight.max(0.0);
    for i in Ones(eligible) {
        if let Some(c) = plan.campaigns.get(i)
            && c.weight > 0.0
        {
            out[i] = c.weight;
            total += c.weight;
        }
    }
    if total <= 0.0 {
        out.iter_mut().for_each(|p| *p = 0.0);
        return 1.0;
    }
    out.iter_mut().for_each(|p| *p /= total);
    plan.no_ad_weight.max(0.0) / total
}

/// The weighted pick shared by [`CompiledPlan::choose`] and the simulator.
pub fn pick(plan: &Plan, eligible: u64, u: f64) -> Option<usize> {
    let total = Ones(eligible).fold(plan.no_ad_weight, |t, i| t + plan.campaigns.get(i).map_or(0.0, |c| c.weight));
    let mut x = u * total - plan.no_ad_weight;
    if x < 0.0 {
        return None;
    }
    let mut last = None;
    for i in Ones(eligible) {
        let w = plan.campaigns.get(i).map_or(0.0, |c| c.weight);
        if w > 0.0 {
            x -= w;
            last = Some(i);
            if x < 0.0 {
                return last;
            }
        }
    }
    // Rounding can leave `x` a hair above zero when `u` is just below 1.
    last
}

#[cfg(test)]
#[path = "choose_tests.rs"]
pub(crate) mod tests;
