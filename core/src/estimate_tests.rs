use super::*;
use crate::event::tests::allocation;

/// 100 sampled requests at `rate`, `allocated` of them to A and `shown` of those
/// reported as impressions.
fn shown_window(rate: f64, allocated: usize, shown: usize) -> WindowStats {
    let mut s = WindowStats::default();
    for r in 0..100 {
        s.fold(&allocation(&format!("r{r}"), (r < allocated).then_some("A"), &["A"], rate));
        if r < shown {
            let mut e = allocation(&format!("r{r}"), Some("A"), &[], rate);
            e.kind = crate::EventKind::Impression;
            s.fold(&e);
        }
    }
    s
}

#[test]
fn impressions_to_come_scale_the_share_and_widen_its_interval_up_to_the_allocations() {
    let a = CampaignId::parse("A").unwrap();
    for (rate, allocated, shown) in [(1.0, 50, 40), (1.0, 40, 40), (0.1, 95, 90), (0.1, 60, 30), (0.5, 30, 21)] {
        let w = shown_window(rate, allocated, shown);
        let plain = share(&w, &a, DeliveryBasis::Impressions, 1.96);
        let (basis, none) = published(&w, &a, 0.0, 1.96);
        assert_eq!((basis, none), (DeliveryBasis::Impressions, plain));
        for junk in [f64::NAN, -1.0, f64::NEG_INFINITY] {
            assert_eq!(published(&w, &a, junk, 1.96).1, plain);
        }
        let ceiling = allocated as f64 / 100.0;
        for missing in [0.01, 0.1, 0.5, 0.99] {
            let (_, e) = published(&w, &a, missing, 1.96);
            let case = format!("rate {rate}, {allocated} given, {shown} shown, {missing} to come: {plain:?} → {e:?}");
            let k = 1.0 / (1.0 - missing.min(MAX_STRAGGLERS));
            assert!((e.share - (plain.share * k).min(ceiling)).abs() < 1e-12, "{case}");
            assert!(e.low <= e.share && e.share <= e.high && e.samples == plain.samples, "{case}");
            // Never narrower, unless the allocations bound it; never past them.
            assert!(e.high - e.low >= plain.high - plain.low || e.high >= ceiling - 1e-12, "{case}");
            assert!(e.high <= ceiling.max(plain.high) + 1e-12, "{case}");
            assert_eq!(published(&w, &a, missing.min(MAX_STRAGGLERS), 1.96).1, e);
        }
    }
    // At census with ads left to show: a tenth of 40 impressions to come.
    let w = shown_window(1.0, 50, 40);
    let (_, e) = published(&w, &a, 0.1, 1.96);
    assert!((e.share - 0.4 / 0.9).abs() < 1e-12 && e.low < 0.42 && e.high > 0.47 && e.high <= 0.5, "{e:?}");
    // Every ad shown: nothing can still come.
    let w = shown_window(1.0, 40, 40);
    assert_eq!(published(&w, &a, 0.1, 1.96).1, share(&w, &a, DeliveryBasis::Impressions, 1.96));
    // A campaign measured on allocations is not touched.
    let w = shown_window(1.0, 50, 5);
    let (basis, e) = published(&w, &a, 0.5, 1.96);
    assert_eq!((basis, e), (DeliveryBasis::Allocations, share(&w, &a, DeliveryBasis::Allocations, 1.96)));
}

#[test]
fn wilson_matches_reference_values() {
    // Reference: p = 0.3, n = 1000, z = 1.96 → [0.2725, 0.3290] (statsmodels
    // proportion_confint(300, 1000, method="wilson")).
    let (lo, hi) = wilson(0.3, 1000.0, 1.96);
    assert!((lo - 0.27246).abs() < 1e-4 && (hi - 0.32913).abs() < 1e-4, "{lo} {hi}");
    assert_eq!(wilson(0.5, 0.0, 1.96), (0.0, 1.0));
    for n in [100.0, 208.3, 1234.5] {
        let (lo, hi) = wilson(0.0, n, 1.959964);
        assert_eq!(lo, 0.0, "n = {n}");
        assert!(hi > 0.0);
        assert_eq!(wilson(1.0, n, 1.959964).1, 1.0, "n = {n}");
    }
}

#[test]
fn share_of_a_window() {
    let mut s = WindowStats::default();
    for i in 0..100 {
        let ad = if i < 30 { Some("A") } else { None };
        s.fold(&allocation(&format!("r{i}"), ad, &["A"], 0.1));
    }
    let a = CampaignId::parse("A").unwrap();
    let e = share(&s, &a, DeliveryBasis::of(&s, &a), 1.96);
    assert!((e.share - 0.3).abs() < 1e-12);
    assert_eq!(e.samples, 30);
    assert!(e.contains(0.3) && e.low > 0.2 && e.high < 0.4);
    let none = share(&s, &CampaignId::parse("Z").unwrap(), DeliveryBasis::Allocations, 1.96);
    assert_eq!(none.share, 0.0);
}

fn impression(id: &str, ad: &str) -> crate::Event {
    let mut e = allocation(id, Some(ad), &[], 0.5);
    e.kind = crate::EventKind::Impression;
    e
}

/// 100 requests: A allocated 40 times, B 40 times, C never; `shown_a`/`shown_b` of
/// them reported as impressions.
fn window(shown_a: usize, shown_b: usize) -> WindowStats {
    let mut s = WindowStats::default();
    for i in 0..100 {
        let ad = match i % 5 {
            0 | 1 => Some("A"),
            2 | 3 => Some("B"),
            _ => None,
        };
        s.fold(&allocation(&format!("r{i}"), ad, &["A", "B", "C"], 0.5));
    }
    (0..shown_a).for_each(|i| s.fold(&impression(&format!("a{i}"), "A")));
    (0..shown_b).for_each(|i| s.fold(&impression(&format!("b{i}"), "B")));
    s
}

#[test]
fn the_basis_is_per_campaign_and_needs_evidence() {
    let [a, b, c] = ["A", "B", "C"].map(|x| CampaignId::parse(x).unwrap());
    // No impressions: allocations everywhere.
    let s = window(0, 0);
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Allocations);
    // Apps report impressions for both: both on impressions, each its own ratio.
    let s = window(36, 40);
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Impressions);
    assert_eq!(DeliveryBasis::of(&s, &b), DeliveryBasis::Impressions);
    assert!((share(&s, &a, DeliveryBasis::Impressions, 1.96).share - 0.36).abs() < 1e-12);
    // Impressions of A alone never move B off allocations.
    let s = window(40, 0);
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Impressions);
    assert_eq!(DeliveryBasis::of(&s, &b), DeliveryBasis::Allocations);
    // A few beacons are not evidence.
    let s = window((MIN_IMPRESSION_SAMPLES - 1) as usize, 0);
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Allocations);
    // Impressions of a campaign never allocated (C) add nothing to coverage.
    let mut s = window(0, 0);
    (0..1000).for_each(|i| s.fold(&impression(&format!("c{i}"), "C")));
    assert_eq!(s.impression_coverage(), 0.0);
    assert_eq!(DeliveryBasis::of(&s, &c), DeliveryBasis::Allocations);
    // Apps reporting a fraction of what they show: the placement stays on allocations.
    let s = window(20, 10);
    assert!(s.impression_coverage() < MIN_COVERAGE);
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Allocations);
}

/// 30 % of requests come from an app that reports no impressions; every ad the
/// others were given is shown. Measured on impressions, A's share is its render ratio
/// among the reporting apps (1) times its share of all allocations: its true shown
/// share, not 30 % low, and the placement still counts as fully covered.
#[test]
fn apps_that_report_nothing_leave_the_base_of_shown_shares() {
    let a = CampaignId::parse("A").unwrap();
    let mut s = WindowStats::default();
    for i in 0..1000 {
        let ad = (i % 2 == 0).then_some("A");
        let mut e = allocation(&format!("r{i}"), ad, &["A"], 0.5);
        e.unreported = (i / 2) % 10 < 3;
        s.fold(&e);
        if ad.is_some() && !e.unreported {
            s.fold(&impression(&format!("r{i}"), "A"));
        }
    }
    assert_eq!(s.impression_coverage(), 1.0);
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Impressions);
    let e = share(&s, &a, DeliveryBasis::Impressions, 1.96);
    assert!((e.share - 0.5).abs() < 1e-12, "{e:?}");
    assert!(e.contains(0.5) && e.high - e.low < 0.09, "{e:?}");
    // The allocations are counted on every app, and of the reporting apps' every ad
    // was shown: the interval is as wide as the allocations' alone, 1,000 samples.
    let n = effective_samples(&s, &a, DeliveryBasis::Impressions);
    assert!((n - 1_000.0).abs() < 1.0, "{n}");
    assert_eq!(share(&s, &a, DeliveryBasis::Allocations, 1.96).share, 0.5);
}

/// One of the requests [`requests`] makes.
struct Request {
    platform: Option<&'static str>,
    /// A was eligible for it.
    eligible: bool,
    /// A was given it.
    given: bool,
    /// Its app reports no impressions.
    silent: bool,
    /// A's ad was shown and reported.
    shown: bool,
}

/// 1,000 requests sampled at `rate`, request `i` as `request(i)` says.
fn requests(rate: f64, request: impl Fn(u32) -> Request) -> WindowStats {
    let mut s = WindowStats::default();
    for i in 0..1_000 {
        let r = request(i);
        let eligible: &[&str] = if r.eligible { &["A"] } else { &[] };
        let mut e = allocation(&format!("r{i}"), r.given.then_some("A"), eligible, rate);
        e.platform = r.platform.map(str::to_string);
        e.unreported = r.silent;
        s.fold(&e);
        if r.given && r.shown {
            let mut shown = impression(&format!("r{i}"), "A");
            shown.sample_rate = rate;
            shown.platform = r.platform.map(str::to_string);
            s.fold(&shown);
        }
    }
    s
}

/// At census a campaign's shown share is still uncertain where some of its ads went to
/// apps that report none: 1,000 requests, A given 500, 150 of them to silent apps, 280
/// of the other 350 shown. The share reads 0.5 · 0.8 = 0.4, with an interval of about
/// ±1.15 pp (`ρ(1 − ρ)·U·(1 + U/RA)`, over 1,000²), not the point.
#[test]
fn the_silent_apps_ads_keep_a_census_reading_uncertain() {
    let a = CampaignId::parse("A").unwrap();
    let s = requests(1.0, |i| Request {
        platform: None,
        eligible: true,
        given: i < 500,
        silent: i < 150 || (500..800).contains(&i),
        shown: (150..430).contains(&i),
    });
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Impressions);
    let e = share(&s, &a, DeliveryBasis::Impressions, 1.96);
    assert!((e.share - 0.4).abs() < 1e-12, "{e:?}");
    let half = (0.8f64 * 0.2 * 150.0 * (1.0 + 150.0 / 350.0)).sqrt() / 1_000.0 * 1.96;
    assert!(((e.high - e.low) / 2.0 - half).abs() < 0.001, "{e:?}, ±{half}");
}

/// A campaign whose ads went mostly to apps that report none is measured on
/// allocations: a few reporting requests (one app's) would otherwise set the shown share
/// of all its ads.
#[test]
fn a_campaign_mostly_on_silent_apps_is_measured_on_allocations() {
    let a = CampaignId::parse("A").unwrap();
    // 60 of A's 500 ads to reporting apps, every one shown; other campaigns' coverage
    // is not in question.
    let s =
        requests(1.0, |i| Request { platform: None, eligible: true, given: i < 500, silent: i >= 60, shown: i < 60 });
    assert_eq!(s.impression_coverage(), 1.0);
    assert_eq!(DeliveryBasis::of(&s, &a), DeliveryBasis::Allocations);
}

/// Which apps report depends on the platform: iOS is 30 % of the traffic and all its
/// apps report; of the web's 70 %, apps with 60 % of the traffic report none. A (iOS
/// only) is given half of iOS, 15 % of all requests, and 80 % of its ads show: its
/// shown share is 12 %. Among the reporting apps (three quarters of them iOS) it has
/// 30 %; read there it would be 2.5 times too high.
#[test]
fn a_campaign_is_not_read_higher_for_being_where_the_reporting_apps_are() {
    let a = CampaignId::parse("A").unwrap();
    let window = |rate: f64| {
        requests(rate, |i| {
            let ios = i < 300;
            Request {
                platform: Some(if ios { "ios" } else { "web" }),
                eligible: ios,
                given: ios && i % 2 == 0,
                silent: !ios && i < 900,
                shown: i % 10 < 8,
            }
        })
    };
    let census = window(1.0);
    assert_eq!(DeliveryBasis::of(&census, &a), DeliveryBasis::Impressions);
    let e = share(&census, &a, DeliveryBasis::Impressions, 1.96);
    assert!((e.share - 0.12).abs() < 1e-12, "{e:?}");
    assert_eq!((e.low, e.high), (e.share, e.share), "at census the reading is exact: {e:?}");
    // The same events sampled at a tenth: the interval holds the shown share, about as
    // wide as 1,000 samples give (±2 pp at 12 %).
    let e = share(&window(0.1), &a, DeliveryBasis::Impressions, 1.96);
    assert!((e.share - 0.12).abs() < 1e-12 && e.contains(0.12), "{e:?}");
    assert!(e.high - e.low > 0.03 && e.high - e.low < 0.06, "{e:?}");
}

/// Windows of `segments` (requests, rate, A's share in them) drawn `trials` times:
/// how often the published interval covers the share A realized over all the
/// window's requests, and how often the Kish-size interval without the
/// finite-population correction does.
fn coverage_of_realized(segments: &[(u64, f64, f64)], trials: u32) -> (f64, f64) {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let a = CampaignId::parse("A").unwrap();
    let total: f64 = segments.iter().map(|s| s.0 as f64).sum();
    let z = 1.959_964;
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let normal = move |rng: &mut SmallRng| {
        let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let (mut covered, mut kish_covered) = (0u32, 0u32);
    for _ in 0..trials {
        let mut s = WindowStats::default();
        let counts = s.campaigns.entry(a.clone()).or_default();
        let (mut ht, mut n_all, mut sq, mut realized) = (0.0, 0u64, 0.0, 0.0);
        for &(n, rate, share) in segments {
            // Bernoulli sampling by geometric skips: one draw per sampled request.
            let (mut at, mut sampled, mut hits) = (0u64, 0u64, 0u64);
            loop {
                let u: f64 = 1.0 - rng.random::<f64>();
                at += if rate >= 1.0 { 1 } else { (u.ln() / (1.0 - rate).ln()).floor() as u64 + 1 };
                if at > n {
                    break;
                }
                sampled += 1;
                hits += u64::from(rng.random::<f64>() < share);
            }
            // The requests not sampled got A too, unseen (normal approximation).
            let unseen = (n - sampled) as f64;
            let unseen_hits = (unseen * share + normal(&mut rng) * (unseen * share * (1.0 - share)).sqrt())
                .round()
                .clamp(0.0, unseen);
            realized += hits as f64 + unseen_hits;
            let w = 1.0 / rate;
            ht += sampled as f64 * w;
            sq += sampled as f64 * w * w;
            n_all += sampled;
            counts.allocations.ht += hits as f64 * w;
            counts.allocations.n += hits;
            counts.allocations_sq += hits as f64 * w * w;
        }
        let truth = realized / total;
        s.requests = crate::stats::Tally { ht, n: n_all };
        s.requests_sq = sq;
        covered += u32::from(share(&s, &a, DeliveryBasis::Allocations, z).contains(truth));
        let p = (s.campaigns[&a].allocations.ht / ht).min(1.0);
        let (lo, hi) = wilson(p, s.effective_samples(), z);
        kish_covered += u32::from(lo <= truth && truth <= hi);
    }
    (f64::from(covered) / f64::from(trials), f64::from(kish_covered) / f64::from(trials))
}

/// A window whose first half ran at rate 1 % with A at 50 % and whose second half
/// ran at 10 % with A at 5 % (a new plan brought both): the 95 % interval covers
/// the realized share 95 ± 1 % of the time. The Kish size alone covers ~90 %.
#[test]
fn intervals_keep_their_coverage_across_a_rate_change() {
    let (coverage, kish) = coverage_of_realized(&[(20_000, 0.01, 0.5), (20_000, 0.1, 0.05)], 10_000);
    eprintln!("coverage {coverage}, kish {kish}");
    assert!((coverage - 0.95).abs() <= 0.01, "coverage {coverage}");
    assert!(kish < 0.93, "the Kish size alone covers {kish}: the test does not exercise the difference");
}

/// At a high rate most of the window is seen: the interval for the realized share
/// is narrower than the binomial one, and still covers it 95 ± 1 % of the time
/// (the binomial interval would cover it ~99 %). At census it is the share itself.
#[test]
fn intervals_cover_the_realized_share_at_high_rates() {
    let (coverage, binomial) = coverage_of_realized(&[(4_000, 0.5, 0.3)], 10_000);
    eprintln!("coverage {coverage}, without the correction {binomial}");
    assert!((coverage - 0.95).abs() <= 0.01, "coverage {coverage}");
    assert!(binomial > 0.98, "{binomial}");
    let (census, _) = coverage_of_realized(&[(1_000, 1.0, 0.3)], 100);
    assert_eq!(census, 1.0);
    let mut s = WindowStats::default();
    for i in 0..100 {
        s.fold(&allocation(&format!("r{i}"), (i % 4 == 0).then_some("A"), &["A"], 1.0));
    }
    let e = share(&s, &CampaignId::parse("A").unwrap(), DeliveryBasis::Allocations, 1.96);
    assert_eq!((e.low, e.share, e.high), (0.25, 0.25, 0.25));
}

/// A census window read while 2 % of its requests, at random, are still on their
/// way: counted as they are, the interval is the counted share itself and misses
/// the realized one nearly always; allowing for the stragglers, it covers it 95 ± 2 %
/// of the time.
#[test]
fn stragglers_widen_a_census_interval_to_its_level() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let a = CampaignId::parse("A").unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    let (trials, mut covered, mut exact) = (2_000, 0, 0);
    for t in 0..trials {
        let (mut counted, mut realized) = (WindowStats::default(), 0u32);
        for r in 0..2_000 {
            let ad = (rng.random::<f64>() < 0.3).then_some("A");
            realized += u32::from(ad.is_some());
            if rng.random::<f64>() >= 0.02 {
                counted.fold(&allocation(&format!("t{t}-{r}"), ad, &["A"], 1.0));
            }
        }
        let truth = f64::from(realized) / 2_000.0;
        exact += u32::from(share(&counted, &a, DeliveryBasis::Allocations, 1.96).contains(truth));
        let e = share(&counted.with_stragglers(0.02), &a, DeliveryBasis::Allocations, 1.96);
        covered += u32::from(e.contains(truth));
    }
    let (coverage, exact) = (f64::from(covered) / f64::from(trials), f64::from(exact) / f64::from(trials));
    eprintln!("coverage {coverage}, counted as complete {exact}");
    assert!((coverage - 0.95).abs() <= 0.02, "coverage {coverage}");
    assert!(exact < 0.2, "{exact}");
}

#[test]
fn the_variance_is_binomial_at_one_rate_and_falls_back_for_old_windows() {
    let mut s = WindowStats::default();
    for i in 0..1000 {
        let ad = if i % 4 == 0 { Some("A") } else { None };
        s.fold(&allocation(&format!("r{i}"), ad, &["A"], 0.1));
    }
    let a = CampaignId::parse("A").unwrap();
    let n = effective_samples(&s, &a, DeliveryBasis::Allocations);
    assert!((n - 1000.0).abs() < 1e-6, "{n}");
    // Stored before per-campaign squares were counted: the Kish size.
    s.campaigns.get_mut(&a).unwrap().allocations_sq = 0.0;
    assert_eq!(share_variance(&s, &a, DeliveryBasis::Allocations), None);
    assert_eq!(effective_samples(&s, &a, DeliveryBasis::Allocations), s.effective_samples());
    // Nothing measured: no variance, the widest interval.
    let empty = WindowStats::default();
    assert_eq!(share_variance(&empty, &a, DeliveryBasis::Allocations), None);
    let e = share(&empty, &a, DeliveryBasis::Allocations, 1.96);
    assert_eq!((e.low, e.high), (0.0, 1.0));
}

#[test]
fn required_samples_is_the_binomial_minimum() {
    // ±1 pp at 95 % for s = 0.5: 9604 samples.
    assert!((required_samples(0.5, 0.01, 1.959_964) - 9603.6).abs() < 0.5);
}
