use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::estimate::{effective_samples, share};
use crate::event::tests::allocation;
use crate::{CampaignId, DeliveryBasis, Event, EventKind, WindowStats};

/// One sampled request for A on `platform`: allocated to A or not, from a silent app or
/// not, and its impression if it was shown.
fn fold(s: &mut WindowStats, i: u32, rate: f64, platform: &str, given: bool, silent: bool, shown: bool) {
    let mut e = allocation(&format!("r{i}"), given.then_some("A"), &["A"], rate);
    e.platform = Some(platform.to_string());
    e.unreported = silent;
    s.fold(&e);
    if given && shown && !silent {
        let mut imp = Event { kind: EventKind::Impression, eligible: Vec::new(), ..e };
        imp.platform = Some(platform.to_string());
        s.fold(&imp);
    }
}

fn a() -> CampaignId {
    CampaignId::parse("A").unwrap()
}

/// The web's silent apps (60 % of its traffic) are where ads fail most: iOS is 300 of
/// 1,000 requests, all its apps report, 90 % of A's ads show there; on the web, 60 %
/// show, and the apps of 420 of its 700 requests report none. A is given every other
/// request. Its shown share, if each platform's silent apps render as its reporting ones
/// do, is (150·0.9 + 350·0.6)/1,000 = 34.5 %. One render ratio over all the reporting
/// apps (three in five of its reporting ads on iOS) reads 37.8 %: 3.3 pp high.
fn two_platforms(rate: f64) -> WindowStats {
    let mut s = WindowStats::default();
    for i in 0..1_000 {
        let ios = i < 300;
        let shown = if ios { i % 20 != 0 } else { i % 10 < 6 };
        fold(&mut s, i, rate, if ios { "ios" } else { "web" }, i % 2 == 0, !ios && i < 720, shown);
    }
    s
}

#[test]
fn each_platform_scales_its_own_ads() {
    let census = two_platforms(1.0);
    assert_eq!(DeliveryBasis::of(&census, &a()), DeliveryBasis::Impressions);
    let e = share(&census, &a(), DeliveryBasis::Impressions, 1.96);
    assert!((e.share - 0.345).abs() < 1e-12, "{e:?}");
    // Only the web's silent ads are uncertain: ρ(1 − ρ)·U·(1 + U/RA) with ρ = 0.6,
    // U = 210, RA = 140, over 1,000².
    let half = 1.96 * (0.24f64 * 210.0 * 2.5).sqrt() / 1_000.0;
    assert!(((e.high - e.low) / 2.0 - half).abs() < 0.001, "{e:?}, ±{half}");
    // A window stored before platforms were counted reads as it did: one ratio.
    let mut unsplit = census.clone();
    unsplit.platforms.clear();
    let pooled = share(&unsplit, &a(), DeliveryBasis::Impressions, 1.96).share;
    assert!((pooled - 0.5 * 219.0 / 290.0).abs() < 1e-12, "{pooled}");
    // Sampled at a fifth, the same reading.
    let e = share(&two_platforms(0.2), &a(), DeliveryBasis::Impressions, 1.96);
    assert!((e.share - 0.345).abs() < 1e-12 && e.contains(0.345), "{e:?}");
}

/// A platform with few reporting allocations, or few of its allocations reporting,
/// leans on the campaign's ratio: else one app there, reporting every ad shown, would
/// set the shown share of all the platform's silent ads. Here an app on a platform of
/// its own (15 requests, all given A, all "shown": 15 of the 20 samples that make a
/// ratio count fully) and one on the web, whose other apps are silent (30 reporting of
/// 330 given A: a coverage of 9 %, weighed 4·30/330), lean on the campaign's ratio by a
/// quarter and by 64 %.
#[test]
fn a_thinly_reported_platform_leans_on_the_campaigns_ratio() {
    let mut s = WindowStats::default();
    // iOS: 600 requests, all reporting, A given 400, 300 shown.
    for i in 0..600 {
        fold(&mut s, i, 1.0, "ios", i < 400, false, i < 300);
    }
    for i in 600..615 {
        fold(&mut s, i, 1.0, "mine", true, false, true);
    }
    for i in 615..945 {
        fold(&mut s, i, 1.0, "web", true, i >= 645, true);
    }
    let n = 945.0;
    assert_eq!(DeliveryBasis::of(&s, &a()), DeliveryBasis::Impressions);
    let whole = (300.0 + 15.0 + 30.0) / (400.0 + 15.0 + 30.0);
    let (mine, web) = (0.75, 4.0 * 30.0 / 330.0);
    let weighed = |own: f64, ratio: f64| own * ratio + (1.0 - own) * whole;
    let expected = (400.0 * 0.75 + 15.0 * weighed(mine, 1.0) + 330.0 * weighed(web, 1.0)) / n;
    let e = share(&s, &a(), DeliveryBasis::Impressions, 1.96);
    assert!((e.share - expected).abs() < 1e-12, "{} against {expected}", e.share);
    // Against the campaign's ratio, the web app's 30 reports weigh at most four ads
    // each; with its own ratio (1) it would have read 345 ads shown.
    let by_campaign = (400.0 * 0.75 + 345.0 * whole) / n;
    let web_sway = 330.0 * web * (1.0 - whole) / n;
    assert!((web_sway - 4.0 * 30.0 * (1.0 - whole) / n).abs() < 1e-12);
    assert!(e.share - by_campaign <= web_sway + 15.0 / n, "{e:?}");
    assert!(e.share < (300.0 + 345.0) / n - 0.02, "{e:?}");
}

/// Hostile: an app on the web sends requests that say `impressions=none`, ten at a
/// time, until the web's reporting apps hold a tenth of its allocations instead of a
/// half. The web renders far worse than iOS, so reading it by the campaign's ratio
/// would raise A's share by 14 pp; the reading moves by no more than the app's own
/// ads at each step (a threshold would jump the whole difference at once), and the
/// intervals stay proper.
#[test]
fn no_run_of_silent_requests_tips_a_platform_to_another_ratio() {
    let mut s = WindowStats::default();
    // iOS: 600 requests, A given 400, 360 shown. Web: 400 given A, half of them to
    // reporting apps, of whose ads half show.
    for i in 0..600 {
        fold(&mut s, i, 1.0, "ios", i < 400, false, i < 360);
    }
    for i in 600..1_000 {
        fold(&mut s, i, 1.0, "web", true, i >= 800, i % 2 == 0);
    }
    let mut last = share(&s, &a(), DeliveryBasis::Impressions, 1.96).share;
    let (first, mut n, mut widest) = (last, 1_000.0, 0.0f64);
    for step in 0..120 {
        for i in 0..10 {
            fold(&mut s, 1_000 + step * 10 + i, 1.0, "web", true, true, false);
        }
        n += 10.0;
        let e = share(&s, &a(), DeliveryBasis::Impressions, 1.96);
        assert!(e.low < e.share && e.share < e.high, "step {step}: {e:?}");
        widest = widest.max((e.share - last).abs() * n / 10.0);
        last = e.share;
    }
    // At most one ad per request: each reads at a ratio, and the rest of the share is
    // diluted by the requests.
    assert!(widest <= 1.0, "one request moved the share by {widest} ads");
    assert!(last > first, "the web's silent ads read by more of the campaign's ratio");
}

/// Impressions reported with tokens issued before tokens carried the platform count on
/// no platform, their allocations on theirs: the campaign is read by one ratio, not by
/// an iOS ratio of 0 (the 80 impressions held by no part). 200 requests, A given 100
/// on iOS, 80 shown: 0.4.
#[test]
fn impressions_without_their_platform_read_by_one_ratio() {
    let mut s = WindowStats::default();
    for i in 0..200 {
        let mut e = allocation(&format!("r{i}"), (i < 100).then_some("A"), &["A"], 1.0);
        e.platform = Some("ios".to_string());
        s.fold(&e);
        if i < 80 {
            s.fold(&Event { kind: EventKind::Impression, eligible: Vec::new(), platform: None, ..e });
        }
    }
    assert_eq!(DeliveryBasis::of(&s, &a()), DeliveryBasis::Impressions);
    let e = share(&s, &a(), DeliveryBasis::Impressions, 1.96);
    assert!((e.share - 0.4).abs() < 1e-12, "{e:?}");
    assert_eq!(crate::estimate::render_ratio(&s, &a()), Some(0.8));
}

/// Windows of 4,000 requests on two platforms, each platform's silent apps rendering as
/// its reporting ones do, sampled at `rate`: how often the published interval covers
/// the share A was really shown over all the window's requests (silent apps' included),
/// and how often one ratio over all the reporting apps' would.
fn coverage(rate: f64, trials: u32) -> (f64, f64) {
    coverage_of(rate, trials, (0.6, 0.6), (0.1, 0.95))
}

/// [`coverage`] with the web's and iOS's (silent share, render ratio).
fn coverage_of(rate: f64, trials: u32, web_apps: (f64, f64), ios: (f64, f64)) -> (f64, f64) {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let (mut covered, mut pooled) = (0, 0);
    for _ in 0..trials {
        let mut s = WindowStats::default();
        let mut shown_all = 0u32;
        for i in 0..4_000 {
            let web = rng.random::<f64>() < 0.6;
            let (silent, renders) = if web { web_apps } else { ios };
            let silent = rng.random::<f64>() < silent;
            let given = rng.random::<f64>() < 0.4;
            let shown = given && rng.random::<f64>() < renders;
            shown_all += u32::from(shown);
            if rate >= 1.0 || rng.random::<f64>() < rate {
                fold(&mut s, i, rate, if web { "web" } else { "ios" }, given, silent, shown);
            }
        }
        let truth = f64::from(shown_all) / 4_000.0;
        covered += u32::from(share(&s, &a(), DeliveryBasis::Impressions, 1.96).contains(truth));
        s.platforms.clear();
        pooled += u32::from(share(&s, &a(), DeliveryBasis::Impressions, 1.96).contains(truth));
    }
    (f64::from(covered) / f64::from(trials), f64::from(pooled) / f64::from(trials))
}

/// The interval of a share read per platform covers the shown share at its level:
/// sampled, where both the sample and the silent apps' ads are uncertain, and at census,
/// where only the latter are.
#[test]
fn intervals_per_platform_cover_the_shown_share() {
    for rate in [0.2, 1.0] {
        let (c, pooled) = coverage(rate, 1_000);
        eprintln!("rate {rate}: coverage {c}, with one ratio {pooled}");
        assert!((c - 0.95).abs() <= 0.02, "rate {rate}: coverage {c}");
        assert!(pooled < 0.75, "one ratio covers {pooled}: the test does not tell them apart");
    }
}

/// The same where the web leans on the campaign's ratio (15 % and 5 % of its traffic
/// reports: weighed 0.6 and 0.2), both platforms rendering alike: the error of that
/// ratio, learnt mostly from iOS, is carried by the web's silent ads and iOS's own,
/// together.
#[test]
fn intervals_with_a_platform_leaning_on_the_campaigns_ratio_cover_the_shown_share() {
    for (rate, silent) in [(0.2, 0.85), (1.0, 0.85), (0.2, 0.95), (1.0, 0.95)] {
        let (c, _) = coverage_of(rate, 1_000, (silent, 0.8), (0.3, 0.8));
        eprintln!("rate {rate}, web silent {silent}: coverage {c}");
        assert!((c - 0.95).abs() <= 0.02, "rate {rate}, web silent {silent}: coverage {c}");
    }
}

/// Where every platform renders alike, reading per platform changes nothing: the same
/// share, and about the same precision, as one ratio.
#[test]
fn platforms_that_render_alike_read_as_one() {
    let mut s = WindowStats::default();
    for i in 0..2_000 {
        let web = i % 2 == 0;
        fold(&mut s, i, 0.5, if web { "web" } else { "ios" }, i % 4 < 2, web && i % 3 == 0, i % 5 != 0);
    }
    let mut unsplit = s.clone();
    unsplit.platforms.clear();
    let (split, pooled) =
        (share(&s, &a(), DeliveryBasis::Impressions, 1.96), share(&unsplit, &a(), DeliveryBasis::Impressions, 1.96));
    assert!((split.share - pooled.share).abs() < 0.005, "{split:?} {pooled:?}");
    let (n_split, n_pooled) = (
        effective_samples(&s, &a(), DeliveryBasis::Impressions),
        effective_samples(&unsplit, &a(), DeliveryBasis::Impressions),
    );
    assert!((n_split / n_pooled - 1.0).abs() < 0.1, "{n_split} {n_pooled}");
}

/// A window written partly by replicas that do not count platforms (during a rolling
/// upgrade): what was counted without a platform is one part, read by its own ratio as
/// far as it has reporting allocations, and the rest per platform. Here what
/// lost its platform is one platform's counts, so the reading is the same as with
/// every platform counted; a window with none counted reads by one ratio.
#[test]
fn a_window_counted_partly_without_platforms_reads_that_part_by_one_ratio() {
    let full = two_platforms(1.0);
    let mut unsplit = full.clone();
    unsplit.platforms.clear();
    let pooled = share(&unsplit, &a(), DeliveryBasis::Impressions, 1.96).share;
    // The web's counts were written by a replica that knew no platforms.
    let mut partly = full.clone();
    partly.platforms.retain(|(_, p), _| p != "web");
    let e = share(&partly, &a(), DeliveryBasis::Impressions, 1.96);
    // iOS by its own ratio (0.9); the web's 350 allocations by the web's, 84/140, now
    // read as what was counted without a platform: the same share as per platform.
    assert!((e.share - 0.345).abs() < 1e-12, "{e:?}");
    // iOS's counts lost instead: iOS (with its impressions) read without a platform,
    // the web by its own ratio: again the same.
    let mut other = full.clone();
    other.platforms.retain(|(_, p), _| p != "ios");
    assert!((share(&other, &a(), DeliveryBasis::Impressions, 1.96).share - 0.345).abs() < 1e-12);
    assert!((pooled - 0.345).abs() > 0.03, "{pooled}: the window does not tell one ratio from two");
    // Every interval is a proper one.
    for s in [&full, &partly, &other, &unsplit] {
        let e = share(s, &a(), DeliveryBasis::Impressions, 1.96);
        assert!(e.low < e.share && e.share < e.high && e.high - e.low < 0.1, "{e:?}");
    }
}
