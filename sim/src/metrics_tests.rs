use super::*;

#[test]
fn quantiles_and_bootstrap() {
    assert_eq!(quantile(vec![3.0, 1.0, 2.0, 4.0], 0.5), 2.0);
    assert_eq!(quantile(vec![3.0, 1.0, 2.0, 4.0], 0.95), 4.0);
    // 30 % ones in runs of 10: the interval is wide and covers 0.3.
    let series: Vec<Vec<f64>> =
        (0..20).map(|s| (0..50).map(|i| f64::from(u8::from((i / 10 + s) % 10 < 3))).collect()).collect();
    let mut rng = SmallRng::seed_from_u64(1);
    let f = bootstrap(&series, &mut rng, &|w| w.iter().map(|x| **x).sum::<f64>() / w.len() as f64);
    assert!((f.value - 0.3).abs() < 0.02, "{f:?}");
    assert!(f.low < f.value && f.value < f.high && f.high - f.low > 0.05, "{f:?}");
}

#[test]
fn census_windows_are_scored_apart() {
    use crate::world::{CampaignWindow, WindowRecord};
    let record = |sampled: u64, covered: bool, counted: u64, allowance: f64| WindowRecord {
        placement: 0,
        index: 0,
        requests: 1_000,
        sampled,
        campaigns: vec![CampaignWindow {
            id: allot_core::CampaignId::parse("A").unwrap(),
            target: 0.3,
            realized: 0.3,
            expected: 0.3,
            feasible: true,
            published: Some(allot_core::ShareEstimate {
                share: 0.3,
                low: if covered { 0.29 } else { 0.31 },
                high: 0.32,
                samples: 30,
            }),
            flagged: false,
            eligible_estimated: 0.0,
            eligible: 0.3,
        }],
        needed: 100.0,
        max_rate: 1.0,
        unattainable: false,
        margin: 0.01,
        short: 0.0,
        decided: true,
        counted,
        allowance,
    };
    let sampled = score(&record(100, false, 90, 0.01)).unwrap();
    let census = score(&record(1_000, true, 1_000, 0.0)).unwrap();
    assert!(!sampled.census && census.census);
    // Read with ten of its events still on their way: incomplete; a sampled window is
    // never counted as such (its interval is the sample's).
    assert!(!census.incomplete && !sampled.incomplete);
    assert!(score(&record(1_000, false, 990, 0.0)).unwrap().incomplete);
    // Read with an allowance: told apart from those read as exact; a sampled window's
    // allowance is part of its sample's interval, never scored apart.
    assert!(score(&record(1_000, true, 1_000, 0.01)).unwrap().allowed && !census.allowed && !sampled.allowed);
    // Each covered cell says whether its target is small (A's 30 % is not).
    assert_eq!(census.cells.len(), 1);
    assert!(!census.cells[0].small);
    // Nine census windows and one sampled miss: the coverage is the sampled one's.
    let windows: Vec<&Scored> = std::iter::once(&sampled).chain(std::iter::repeat_n(&census, 9)).collect();
    assert_eq!(sampled_coverage(&windows), 0.0);
}
