use serde_json::json;

use super::*;
use crate::{Eligibility, PlacementId, PlanCampaign};

pub(crate) fn plan(campaigns: &[(&str, f64, &[&str], &[&str])], no_ad: f64) -> Plan {
    Plan {
        format: 1,
        placement: PlacementId::parse("p").unwrap(),
        version: 3,
        issued_at_ms: 0,
        sample_rate: 1.0,
        no_ad_weight: no_ad,
        campaigns: campaigns
            .iter()
            .map(|(id, w, platforms, countries)| PlanCampaign {
                id: CampaignId::parse(*id).unwrap(),
                weight: *w,
                creative: json!({"name": id}),
                eligibility: Eligibility {
                    platforms: platforms.iter().map(|s| s.to_string()).collect(),
                    countries: countries.iter().map(|s| s.to_string()).collect(),
                },
            })
            .collect(),
        withdrawn: false,
        platforms: None,
    }
}

#[test]
fn eligibility_masks() {
    let p = CompiledPlan::new(plan(
        &[("A", 1.0, &["ios"], &[]), ("B", 1.0, &[], &["DE", "FR"]), ("C", 1.0, &[], &[])],
        1.0,
    ))
    .unwrap();
    let attrs = |p: Option<&'static str>, c: Option<&'static str>| RequestAttrs { platform: p, country: c };
    assert_eq!(p.eligible(attrs(Some("ios"), Some("DE"))), 0b111);
    assert_eq!(p.eligible(attrs(Some("IOS"), Some("de"))), 0b111);
    assert_eq!(p.eligible(attrs(Some("android"), Some("US"))), 0b100);
    assert_eq!(p.eligible(attrs(None, None)), 0b100);
    assert_eq!(p.eligible(attrs(None, Some("FR"))), 0b110);
    let ids: Vec<_> = p.pattern_ids(0b101).map(|c| c.as_str()).collect();
    assert_eq!(ids, ["A", "C"]);
}

/// The index answers as the rules do, for rules of every size up to the limit,
/// names that share prefixes, and requests in any case or naming no rule's platform.
#[test]
fn the_index_answers_as_the_rules_do() {
    let names: Vec<String> = ["a", "ab", "abc", "b", "ios", "ios_2", "web", "web-x", "z9"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..crate::targets::MAX_RULE_PLATFORMS).map(|i| format!("p{i:02}")))
        .collect();
    // Rules naming all of them (searched) and the first nine (scanned).
    for names in [&names[..], &names[..9]] {
        let rules: Vec<Eligibility> = (0..12)
            .map(|c| Eligibility {
                platforms: names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (i * 7 + c * 3) % (c + 2) == 0)
                    .map(|(_, n)| n.clone())
                    .take(crate::targets::MAX_RULE_PLATFORMS)
                    .collect(),
                countries: if c % 3 == 0 { vec!["DE".into()] } else { vec![] },
            })
            .collect();
        let index = EligibilityIndex::new(&rules);
        let asked = names
            .iter()
            .map(|n| n.to_ascii_uppercase())
            .chain(names.iter().cloned())
            .chain(["", "ios_", "p64", "zz", "p00"].map(String::from));
        for platform in asked {
            for country in [None, Some("DE"), Some("fr")] {
                let platform = Some(platform.as_str()).filter(|p| !p.is_empty());
                let want = rules.iter().enumerate().filter(|(_, r)| {
                    r.matches(
                        platform.map(str::to_ascii_lowercase).as_deref(),
                        country.map(str::to_ascii_uppercase).as_deref(),
                    )
                });
                let want = want.fold(0u64, |m, (i, _)| m | 1 << i);
                assert_eq!(index.eligible(RequestAttrs { platform, country }), want, "{platform:?} {country:?}");
            }
        }
    }
}

#[test]
fn picks_only_eligible_campaigns() {
    let p = CompiledPlan::new(plan(&[("A", 5.0, &["ios"], &[]), ("B", 1.0, &[], &[])], 0.0)).unwrap();
    for i in 0..1000 {
        let u = i as f64 / 1000.0;
        let c = p.choose(RequestAttrs { platform: Some("web"), country: None }, u);
        assert_eq!(c.ad, Some(1));
    }
    // u just below 1 never falls off the end.
    let c = p.choose(RequestAttrs { platform: Some("ios"), country: None }, 1.0 - f64::EPSILON);
    assert_eq!(c.ad, Some(1));
}

#[test]
fn nobody_eligible_means_no_ad() {
    let p = CompiledPlan::new(plan(&[("A", 1.0, &["ios"], &[])], 0.0)).unwrap();
    assert_eq!(p.choose(RequestAttrs::default(), 0.5).ad, None);
}

#[test]
fn frequencies_match_weights_chi_square() {
    use rand::{Rng, SeedableRng};
    let p = CompiledPlan::new(plan(&[("A", 0.5, &[], &[]), ("B", 0.3, &["ios"], &[]), ("C", 0.1, &[], &["DE"])], 0.2))
        .unwrap();
    let attrs = RequestAttrs { platform: Some("ios"), country: Some("US") };
    // Eligible: A, B (C wants DE). Expected shares ∝ 0.2 (none), 0.5, 0.3.
    let expected = [0.2 / 1.0, 0.5 / 1.0, 0.3 / 1.0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n = 100_000;
    let mut counts = [0u32; 3];
    for _ in 0..n {
        match p.choose(attrs, rng.random::<f64>()).ad {
            None => counts[0] += 1,
            Some(0) => counts[1] += 1,
            Some(1) => counts[2] += 1,
            Some(other) => panic!("ineligible campaign {other} chosen"),
        }
    }
    let chi2: f64 = counts
        .iter()
        .zip(expected)
        .map(|(&o, e)| {
            let e = e * n as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    // 2 degrees of freedom: P(χ² > 13.8) = 0.001.
    assert!(chi2 < 13.8, "chi² = {chi2}, counts {counts:?}");
}

#[test]
fn response_is_valid_json() {
    let p = CompiledPlan::new(plan(&[("A", 1.0, &[], &[])], 1.0)).unwrap();
    let mut out = String::new();
    p.write_response(&mut out, "r1", Some(0), Some("tok-_0"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"request_id": "r1", "placement": "p", "plan_version": 3, "ad": {"id": "A", "creative": {"name": "A"}},
               "impression_token": "tok-_0"})
    );
    out.clear();
    p.write_response(&mut out, "r2", None, None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ad"], serde_json::Value::Null);
}

#[test]
fn allocation_events_are_valid_events() {
    let p = CompiledPlan::new(plan(&[("A", 1.0, &["ios"], &[]), ("B", 1.0, &[], &[])], 0.0)).unwrap();
    let attrs = RequestAttrs::parse(Some("iOS"), Some("de")).unwrap();
    let choice = p.choose(attrs, 0.1);
    let e = p.allocation_event(crate::RequestId::parse("r1").unwrap(), choice, attrs, 5, Some("FRA".into()), false);
    assert_eq!((e.platform.as_deref(), e.country.as_deref()), (Some("ios"), Some("DE")));
    assert_eq!(e.eligible.iter().map(|c| c.as_str()).collect::<Vec<_>>(), ["A", "B"]);
    assert_eq!((e.plan_version, e.event_time_ms), (3, 5));
    let body = crate::EventBatch { events: vec![e.clone()] }.to_json();
    assert_eq!(crate::EventBatch::parse(body.as_bytes()).unwrap().events, vec![e]);
}

/// A platform the plan does not know is decided, counted and tokened as `other`, so a
/// client naming a new platform per request cannot grow what the origin keeps.
#[test]
fn a_platform_outside_the_vocabulary_is_decided_and_counted_as_other() {
    let mut made = plan(&[("A", 1.0, &["ios"], &[]), ("O", 1.0, &["other"], &[]), ("B", 1.0, &[], &[])], 0.0);
    let legacy = CompiledPlan::new(made.clone()).unwrap();
    made.platforms = Some(vec!["web".into()]);
    let p = CompiledPlan::new(made).unwrap();
    let attrs = |platform| RequestAttrs::parse(platform, Some("de")).unwrap();
    for (asked, seen) in
        [(Some("iOS"), Some("iOS")), (Some("WEB"), Some("WEB")), (Some("other"), Some("other")), (None, None)]
    {
        assert_eq!(p.resolve(attrs(asked)).platform, seen, "{asked:?} is in the vocabulary");
    }
    for made_up in ["x0", "Xbox", "ios2", "zzz"] {
        let resolved = p.resolve(attrs(Some(made_up)));
        assert_eq!(resolved.platform, Some("other"), "{made_up}");
        // Eligible as `other` is: the rule naming `other` applies, the one naming ios not.
        assert_eq!(p.eligible(resolved), 0b110, "{made_up}");
        let e = p.allocation_event(
            crate::RequestId::parse("r").unwrap(),
            p.choose(resolved, 0.1),
            resolved,
            5,
            None,
            false,
        );
        assert_eq!(e.platform.as_deref(), Some("other"));
        assert_eq!(resolved.event_platform().unwrap().as_str(), "other", "the token's platform too");
        assert_eq!(legacy.resolve(attrs(Some(made_up))).platform, Some(made_up), "no vocabulary: as named");
    }
}

#[test]
fn attrs_are_checked() {
    assert!(RequestAttrs::parse(Some("ios"), Some("de")).is_ok());
    assert_eq!(RequestAttrs::parse(Some(""), None), Err(AttrError::Platform));
    assert_eq!(RequestAttrs::parse(Some("a b"), None), Err(AttrError::Platform));
    assert_eq!(RequestAttrs::parse(None, Some("DEU")), Err(AttrError::Country));
    assert_eq!(RequestAttrs::parse(None, Some("1A")), Err(AttrError::Country));
    // The platform events carry: lower case, 1–32 of `[a-z0-9_-]`.
    let attrs = RequestAttrs::parse(Some("Android_TV-2"), None).unwrap();
    assert_eq!(attrs.event_platform().map(|p| p.to_string()).as_deref(), Some("android_tv-2"));
    assert_eq!(Platform::normalise(&"X".repeat(32)).unwrap().as_str(), "x".repeat(32));
    for bad in ["", "a b", "é", "ios\0", &"x".repeat(33)] {
        assert_eq!(Platform::normalise(bad), None, "{bad:?}");
        assert_eq!(RequestAttrs::parse(Some(bad), None), Err(AttrError::Platform), "{bad:?}");
    }
    assert_eq!(Platform::from_normalised(b"ios"), Platform::normalise("IOS"));
    assert_eq!(Platform::from_normalised(b"iOS"), None, "written normalised or not at all");
    assert_eq!(Platform::from_normalised(&[0xff, b'a']), None);
}

#[test]
fn pick_probabilities_are_picks_odds() {
    let p = plan(&[("A", 3.0, &["ios"], &[]), ("B", 1.0, &[], &["DE"]), ("C", 0.0, &[], &[])], 4.0);
    let compiled = CompiledPlan::new(p.clone()).unwrap();
    let attrs = RequestAttrs { platform: Some("ios"), country: Some("DE") };
    let eligible = compiled.eligible(attrs);
    let mut probs = Vec::new();
    let no_ad = pick_probabilities(&p, eligible, &mut probs);
    assert_eq!(probs, vec![3.0 / 8.0, 1.0 / 8.0, 0.0]);
    assert_eq!(no_ad, 0.5);
    // Drawn on a fine grid of u, pick lands on each outcome in these proportions.
    let n = 80_000;
    let mut hits = [0usize; 4];
    for k in 0..n {
        let u = (k as f64 + 0.5) / n as f64;
        hits[pick(&p, eligible, u).unwrap_or(3)] += 1;
    }
    for (i, want) in probs.iter().chain([&no_ad]).enumerate() {
        assert!((hits[i] as f64 / n as f64 - want).abs() < 1e-4, "{i}: {hits:?}");
    }
    // Nothing eligible and no "no ad" weight: pick gives no ad.
    let none = plan(&[("A", 1.0, &["web"], &[])], 0.0);
    assert_eq!(pick_probabilities(&none, 0, &mut probs), 1.0);
    assert_eq!(pick(&none, 0, 0.3), None);
}
