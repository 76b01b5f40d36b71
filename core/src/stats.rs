//! Window statistics: sampled events folded into Horvitz–Thompson counts.
//!
//! One [`WindowStats`] per placement and control window. Folding an event adds its
//! weight `1/rate` to the relevant counters; merging adds counters, so windows (and
//! replicas that each saw part of the stream) combine in any order or grouping.
//!
//! The origin keeps these in a Redis hash; [`WindowStats::to_fields`] and
//! [`WindowStats::from_fields`] are the mapping, so the origin applies an event as a
//! handful of `HINCRBYFLOAT`s without knowing what the fields mean. Field names:
//! `req.ht`, `req.sq`, `req.n` (all requests), `a.{id}.ht`/`a.{id}.n`/`a.{id}.sq`
//! (allocations), `i.{id}.ht`/`i.{id}.n`/`i.{id}.sq` (impressions),
//! `p.{platform}:{country}` (requests per attribute profile; either part may be empty),
//! `v.{version}` (plan versions seen), `u.ht`/`u.n`/`u.sq` and `u.{id}.ht`/`u.{id}.n`
//! (requests, and each campaign's allocations, from apps that report no impressions:
//! [`Event::unreported`]; a window stored before they existed reads as all apps
//! reporting). The `.sq` fields (`Σw²` of a campaign's events)
//! give a share's variance when the rate changed within a window
//! ([`crate::estimate::share_variance`]); windows written before they existed read
//! with `sq = 0`, and their variance falls back to the effective sample size.
//!
//! Requests are counted per attribute *profile* rather than per eligibility pattern:
//! the controller derives each profile's pattern from the *current* targets, so a new
//! campaign or a changed eligibility rule is solved for correctly at once, before any
//! plan containing it has reached the edge.

use std::collections::BTreeMap;

use crate::{CampaignId, Event, EventKind};

/// A Horvitz–Thompson count and the number of samples behind it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// `Σ 1/rate`: the estimated number of events in the population.
    pub ht: f64,
    /// Sampled events.
    pub n: u64,
}

impl Tally {
    fn add(&mut self, w: f64) {
        self.ht += w;
        self.n += 1;
    }

    fn merge(&mut self, o: &Tally) {
        self.ht += o.ht;
        self.n += o.n;
    }
}

/// One campaign's counts in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CampaignCounts {
    pub allocations: Tally,
    pub impressions: Tally,
    /// `Σ (1/rate)²` over the allocations (0 in windows stored before it was counted).
    pub allocations_sq: f64,
    /// `Σ (1/rate)²` over the impressions.
    pub impressions_sq: f64,
    /// The allocations among them from apps that report no impressions.
    pub unreported: Tally,
}

impl CampaignCounts {
    /// The allocations whose app would have reported the impression: the base of the
    /// campaign's render ratio.
    pub fn reporting_allocations(&self) -> Tally {
        minus(self.allocations, self.unreported)
    }
}

fn minus(all: Tally, part: Tally) -> Tally {
    Tally { ht: (all.ht - part.ht).max(0.0), n: all.n.saturating_sub(part.n) }
}

/// A placement's counts for one window (or several merged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    /// All requests (allocation events, with or without an ad).
    pub requests: Tally,
    /// `Σ (1/rate)²` over requests: with [`Tally::ht`] it gives the effective sample
    /// size `(Σw)²/Σw²` when the rate changed within the window.
    pub requests_sq: f64,
    /// The requests among them from apps that report no impressions, and their `Σw²`.
    pub unreported: Tally,
    pub unreported_sq: f64,
    pub campaigns: BTreeMap<CampaignId, CampaignCounts>,
    /// Estimated requests per attribute profile, keyed `platform:country`.
    pub profiles: BTreeMap<String, f64>,
    /// Estimated requests per plan version they were decided under.
    pub versions: BTreeMap<u64, f64>,
}

/// A malformed stored field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised window field {0:?}")]
pub struct StatsError(pub String);

/// The profile key of a request's attributes: `platform:country`, either may be empty.
pub fn profile_key(platform: Option<&str>, country: Option<&str>) -> String {
    format!("{}:{}", platform.unwrap_or(""), country.unwrap_or(""))
}

/// The attributes of a profile key.
pub fn parse_profile_key(key: &str) -> (Option<&str>, Option<&str>) {
    let (p, c) = key.split_once(':').unwrap_or((key, ""));
    ((!p.is_empty()).then_some(p), (!c.is_empty()).then_some(c))
}

impl WindowStats {
    /// The window an event time falls in, for windows of `period_ms`.
    pub fn window_index(event_time_ms: u64, period_ms: u64) -> u64 {
        event_time_ms / period_ms.max(1)
    }

    /// Folds events into one delta per window, keyed by [`window_index`](Self::window_index)
    /// of their event time: what the aggregator applies for a group of stream entries
    /// (and what the simulator applies for each batch the edge sends). Events are
    /// placed by when the edge decided them, not when they arrived, so a late batch
    /// still counts in its own window.
    pub fn fold_windows<'a>(events: impl IntoIterator<Item = &'a Event>, period_ms: u64) -> BTreeMap<u64, Self> {
        let mut windows: BTreeMap<u64, Self> = BTreeMap::new();
        for e in events {
            windows.entry(Self::window_index(e.event_time_ms, period_ms)).or_default().fold(e);
        }
        windows
    }

    pub fn fold(&mut self, e: &Event) {
        match e.kind {
            EventKind::Allocation => {
                let w = e.weight();
                self.record_allocation(
                    w,
                    e.ad_id.as_ref(),
                    &profile_key(e.platform.as_deref(), e.country.as_deref()),
                    e.plan_version,
                );
                if e.unreported {
                    self.record_unreported(w, e.ad_id.as_ref());
                }
            }
            EventKind::Impression => {
                if let Some(ad) = &e.ad_id {
                    self.record_impression(e.weight(), ad);
                }
            }
        }
    }

    /// Counts one sampled request of HT weight `w` (what [`fold`](Self::fold) does for
    /// an allocation event, without building one).
    pub fn record_allocation(&mut self, w: f64, ad: Option<&CampaignId>, profile: &str, plan_version: u64) {
        self.requests.add(w);
        self.requests_sq += w * w;
        if let Some(ad) = ad {
            let c = self.campaign_mut(ad);
            c.allocations.add(w);
            c.allocations_sq += w * w;
        }
        match self.profiles.get_mut(profile) {
            Some(c) => *c += w,
            None => {
                self.profiles.insert(profile.to_string(), w);
            }
        }
        *self.versions.entry(plan_version).or_default() += w;
    }

    /// Marks one sampled request of HT weight `w`, already counted by
    /// [`record_allocation`](Self::record_allocation), as coming from an app that
    /// reports no impressions.
    pub fn record_unreported(&mut self, w: f64, ad: Option<&CampaignId>) {
        self.unreported.add(w);
        self.unreported_sq += w * w;
        if let Some(ad) = ad {
            self.campaign_mut(ad).unreported.add(w);
        }
    }

    /// The requests from apps that report impressions, and their `Σw²`: the base of
    /// shares measured on impressions.
    pub fn reporting(&self) -> (Tally, f64) {
        (minus(self.requests, self.unreported), (self.requests_sq - self.unreported_sq).max(0.0))
    }

    /// Counts one sampled impression of HT weight `w`.
    pub fn record_impression(&mut self, w: f64, ad: &CampaignId) {
        let c = self.campaign_mut(ad);
        c.impressions.add(w);
        c.impressions_sq += w * w;
    }

    fn campaign_mut(&mut self, id: &CampaignId) -> &mut CampaignCounts {
        // Look up before inserting so the common case does not clone the id.
        if !self.campaigns.contains_key(id) {
            self.campaigns.insert(id.clone(), CampaignCounts::default());
        }
        self.campaigns.get_mut(id).expect("inserted above")
    }

    pub fn of_event(e: &Event) -> Self {
        let mut s = Self::default();
        s.fold(e);
        s
    }

    pub fn merge(&mut self, o: &WindowStats) {
        self.requests.merge(&o.requests);
        self.requests_sq += o.requests_sq;
        self.unreported.merge(&o.unreported);
        self.unreported_sq += o.unreported_sq;
        for (id, c) in &o.campaigns {
            let mine = self.campaigns.entry(id.clone()).or_default();
            mine.allocations.merge(&c.allocations);
            mine.impressions.merge(&c.impressions);
            mine.unreported.merge(&c.unreported);
            mine.allocations_sq += c.allocations_sq;
            mine.impressions_sq += c.impressions_sq;
        }
        for (k, v) in &o.profiles {
            *self.profiles.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.versions {
            *self.versions.entry(*k).or_default() += v;
        }
    }

    /// `(Σw)²/Σw²`: the number of equally weighted samples with the same precision.
    pub fn effective_samples(&self) -> f64 {
        if self.requests_sq > 0.0 { self.requests.ht * self.requests.ht / self.requests_sq } else { 0.0 }
    }

    /// The share of allocated ads that came back as impressions, among apps that did
    /// not say they report none: how much of that traffic really reports them. Each
    /// campaign counts at most its own allocations, so impressions of a campaign that
    /// was never allocated (or more impressions than allocations) add nothing. See
    /// [`DeliveryBasis::of`](crate::DeliveryBasis::of).
    pub fn impression_coverage(&self) -> f64 {
        let (shown, allocated) = self.campaigns.values().fold((0.0, 0.0), |(s, a), c| {
            let base = c.reporting_allocations().ht;
            (s + c.impressions.ht.min(base), a + base)
        });
        if allocated > 0.0 { shown / allocated } else { 0.0 }
    }

    /// The share of this window's requests decided under `version`.
    pub fn version_share(&self, version: u64) -> f64 {
        let total: f64 = self.versions.values().sum();
        if total > 0.0 { self.versions.get(&version).copied().unwrap_or(0.0) / total } else { 0.0 }
    }

    /// The counters as flat hash fields (non-zero ones only).
    pub fn to_fields(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let mut push = |k: String, v: f64| {
            if v != 0.0 {
                out.push((k, v));
            }
        };
        push("req.ht".into(), self.requests.ht);
        push("req.n".into(), self.requests.n as f64);
        push("req.sq".into(), self.requests_sq);
        push("u.ht".into(), self.unreported.ht);
        push("u.n".into(), self.unreported.n as f64);
        push("u.sq".into(), self.unreported_sq);
        for (id, c) in &self.campaigns {
            push(format!("a.{id}.ht"), c.allocations.ht);
            push(format!("a.{id}.n"), c.allocations.n as f64);
            push(format!("i.{id}.ht"), c.impressions.ht);
            push(format!("i.{id}.n"), c.impressions.n as f64);
            push(format!("a.{id}.sq"), c.allocations_sq);
            push(format!("i.{id}.sq"), c.impressions_sq);
            push(format!("u.{id}.ht"), c.unreported.ht);
            push(format!("u.{id}.n"), c.unreported.n as f64);
        }
        for (k, v) in &self.profiles {
            push(format!("p.{k}"), *v);
        }
        for (k, v) in &self.versions {
            push(format!("v.{k}"), *v);
        }
        out
    }

    /// Rebuilds the counters from hash fields.
    pub fn from_fields<K: AsRef<str>>(fields: impl IntoIterator<Item = (K, f64)>) -> Result<Self, StatsError> {
        let mut s = Self::default();
        for (k, v) in fields {
            let k = k.as_ref();
            let err = || StatsError(k.to_string());
            let n = || v.round().max(0.0) as u64;
            match k {
                "req.ht" => s.requests.ht = v,
                "req.n" => s.requests.n = n(),
                "req.sq" => s.requests_sq = v,
                "u.ht" => s.unreported.ht = v,
                "u.n" => s.unreported.n = n(),
                "u.sq" => s.unreported_sq = v,
                _ => {
                    let (head, rest) = k.split_once('.').ok_or_else(err)?;
                    match head {
                        "p" => {
                            s.profiles.insert(rest.to_string(), v);
                        }
                        "v" => {
                            s.versions.insert(rest.parse().map_err(|_| err())?, v);
                        }
                        "a" | "i" | "u" => {
                            let (id, what) = rest.rsplit_once('.').ok_or_else(err)?;
                            let id = CampaignId::parse(id).map_err(|_| err())?;
                            let c = s.campaigns.entry(id).or_default();
                            let (tally, sq) = match head {
                                "a" => (&mut c.allocations, Some(&mut c.allocations_sq)),
                                "i" => (&mut c.impressions, Some(&mut c.impressions_sq)),
                                _ => (&mut c.unreported, None),
                            };
                            match (what, sq) {
                                ("ht", _) => tally.ht = v,
                                ("n", _) => tally.n = n(),
                                ("sq", Some(sq)) => *sq = v,
                                _ => return Err(err()),
                            }
                        }
                        _ => return Err(err()),
                    }
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::tests::allocation;

    fn impression(id: &str, ad: &str, rate: f64) -> Event {
        let mut e = allocation(id, Some(ad), &[], rate);
        e.kind = EventKind::Impression;
        e
    }

    #[test]
    fn folds_horvitz_thompson_counts() {
        let mut s = WindowStats::default();
        s.fold(&allocation("r1", Some("A"), &["B", "A"], 0.5));
        s.fold(&allocation("r2", None, &[], 0.25));
        s.fold(&impression("r1", "A", 0.5));
        assert_eq!(s.requests, Tally { ht: 6.0, n: 2 });
        assert_eq!(s.requests_sq, 4.0 + 16.0);
        let a = &s.campaigns[&CampaignId::parse("A").unwrap()];
        assert_eq!(a.allocations, Tally { ht: 2.0, n: 1 });
        assert_eq!(a.impressions, Tally { ht: 2.0, n: 1 });
        assert_eq!(s.profiles["ios:DE"], 6.0);
        assert_eq!(parse_profile_key("ios:DE"), (Some("ios"), Some("DE")));
        assert_eq!(parse_profile_key(":"), (None, None));
        assert_eq!(parse_profile_key(&profile_key(None, Some("FR"))), (None, Some("FR")));
        assert_eq!(s.impression_coverage(), 1.0);
        assert!((s.effective_samples() - 36.0 / 20.0).abs() < 1e-12);
        assert_eq!(s.reporting(), (s.requests, s.requests_sq));
    }

    /// An app that said it reports no impressions stays a request and an allocation,
    /// but leaves the base of shown shares and of the coverage.
    #[test]
    fn unreported_requests_leave_the_base_of_shown_shares() {
        let a = CampaignId::parse("A").unwrap();
        let mut s = WindowStats::default();
        s.fold(&allocation("r1", Some("A"), &["A"], 0.5));
        s.fold(&impression("r1", "A", 0.5));
        let mut quiet = allocation("r2", Some("A"), &["A"], 0.25);
        quiet.unreported = true;
        s.fold(&quiet);
        assert_eq!(s.requests, Tally { ht: 6.0, n: 2 });
        assert_eq!(s.campaigns[&a].allocations, Tally { ht: 6.0, n: 2 });
        assert_eq!(s.reporting(), (Tally { ht: 2.0, n: 1 }, 4.0));
        assert_eq!(s.campaigns[&a].reporting_allocations(), Tally { ht: 2.0, n: 1 });
        // Every reporting allocation came back: full coverage, not a third.
        assert_eq!(s.impression_coverage(), 1.0);
    }

    #[test]
    fn fields_round_trip() {
        let mut s = WindowStats::default();
        s.fold(&allocation("r1", Some("A"), &["A", "B"], 0.5));
        s.fold(&impression("r1", "A", 0.5));
        s.fold(&allocation("r2", None, &[], 1.0));
        let mut quiet = allocation("r3", Some("A"), &["A"], 0.25);
        quiet.unreported = true;
        s.fold(&quiet);
        let back = WindowStats::from_fields(s.to_fields()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.unreported, Tally { ht: 4.0, n: 1 });
        assert_eq!(back.campaigns[&CampaignId::parse("A").unwrap()].unreported, Tally { ht: 4.0, n: 1 });
        assert!(WindowStats::from_fields([("u.A.sq", 1.0)]).is_err());
        assert_eq!(back.campaigns[&CampaignId::parse("A").unwrap()].allocations_sq, 4.0 + 16.0);
        // A window stored before the squared sums existed still reads, with them at 0.
        let old: Vec<(String, f64)> = s
            .to_fields()
            .into_iter()
            .filter(|(k, _)| (k == "req.sq" || !k.ends_with(".sq")) && !k.starts_with("u."))
            .collect();
        let back = WindowStats::from_fields(old).unwrap();
        assert_eq!(back.campaigns[&CampaignId::parse("A").unwrap()].allocations_sq, 0.0);
        assert_eq!(back.requests, s.requests);
        // … and, without the unreported fields, as a window where every app reports.
        assert_eq!(back.reporting(), (s.requests, s.requests_sq));
        assert!(WindowStats::from_fields([("x.y", 1.0)]).is_err());
        assert!(WindowStats::from_fields([("a.A.zz", 1.0)]).is_err());
    }

    #[test]
    fn folds_by_window_of_event_time() {
        let at = |id: &str, ad: Option<&str>, ms: u64| {
            let mut e = allocation(id, ad, &["A"], 0.5);
            e.event_time_ms = ms;
            e
        };
        let events = [at("r1", Some("A"), 59_999), at("r2", None, 60_000), at("r3", Some("A"), 125_000)];
        let windows = WindowStats::fold_windows(&events, 60_000);
        assert_eq!(windows.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(windows[&0], WindowStats::of_event(&events[0]));
        assert_eq!(windows[&1], WindowStats::of_event(&events[1]));
        assert_eq!(windows[&2].requests, Tally { ht: 2.0, n: 1 });
        // A zero period is treated as 1 ms rather than dividing by zero.
        assert_eq!(WindowStats::fold_windows(&events, 0).len(), 3);
        assert!(WindowStats::fold_windows(&[], 60_000).is_empty());
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (0u8..4, prop::sample::select(vec![0.125, 0.25, 0.5, 1.0]), 0u8..3, 1u64..4).prop_map(
            |(ad, rate, kind, version)| {
                let ids = ["A", "B", "C"];
                let ad = (ad < 3).then(|| ids[ad as usize]);
                let mut e = allocation("r", ad, &ids, rate);
                e.plan_version = version;
                match kind {
                    1 if ad.is_some() => e.kind = EventKind::Impression,
                    2 => e.unreported = true,
                    _ => {}
                }
                e
            },
        )
    }

    proptest! {
        /// Merging per-event stats in any grouping equals folding all events.
        #[test]
        fn merge_is_associative(events in prop::collection::vec(arb_event(), 0..40), split in 0usize..40) {
            let split = split.min(events.len());
            let mut all = WindowStats::default();
            events.iter().for_each(|e| all.fold(e));
            let mut left = WindowStats::default();
            events[..split].iter().for_each(|e| left.fold(e));
            let mut right = WindowStats::default();
            events[split..].iter().for_each(|e| right.merge(&WindowStats::of_event(e)));
            let mut merged = right.clone();
            merged.merge(&left);
            // Rates are powers of two, so the sums are exact.
            prop_assert_eq!(merged, all);
        }
    }
}
