//! Spreading an edge's picks evenly: one low-discrepancy sequence per eligibility
//! pattern, in place of independent random numbers.
//!
//! **Why.** With an independent uniform per request, the weighted pick gives a campaign
//! of share `s` a binomial count over `n` requests: its realized share is off by
//! `√(s(1−s)/n)` whatever the weights are. For small targets on modest traffic that is
//! the whole error: a 0.5 % campaign on 20,000 requests a window is off by ±14 % of its
//! target one time in three, with weights that are exactly right. The manager judges the
//! realized share, so this noise is as real as a controller's.
//!
//! **How.** The pick maps `u ∈ [0, 1)` onto the eligible campaigns' cumulative weights,
//! and those intervals are fixed for a plan and an eligibility pattern. Feeding the
//! picks of one pattern the additive (Weyl) sequence `uₖ = frac(u₀ + k/φ)` — the golden
//! ratio's, the most evenly spread of them (three-distance theorem) — puts into every
//! interval, over any run of consecutive requests, its length times the run within a
//! few requests. So each stream's counts follow the weights to a few requests instead
//! of `√n`; the sum over an edge's streams (isolates × patterns) has at most the
//! binomial variance, and far less when each stream sees many requests per window.
//! The sequence is kept in fixed point (`u64`, wrapping), so it never drifts.
//!
//! Nothing else changes: whether a request is sampled is decided on its id, independent
//! of the sequence, so the origin's estimates stay unbiased for the realized shares. A
//! new plan changes the intervals but not the property (it holds from any point of the
//! sequence), so streams carry over plan versions.
//!
//! **Hostile input.** A client chooses its attributes, so it chooses its pattern, but
//! the patterns are the plan's (platform × country rules), and the streams are capped at
//! [`MAX_STREAMS`]; past it a pattern gets an independent uniform, the plain random
//! pick. Each stream starts at a random point per isolate and interleaves many clients'
//! requests, so an app cannot tell which ad its next request gets; and every request
//! consumes a step, so no sequence of requests takes more than its share of any
//! campaign.

/// At most this many patterns keep a stream (per [`Spread`]): memory is bounded by the
/// spread, not by what clients send.
pub const MAX_STREAMS: usize = 256;

/// `2⁶⁴/φ`, odd: the step of the golden-ratio sequence in 64-bit fixed point.
const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// The picks' sequences of one placement at one edge isolate, one per eligibility
/// pattern. The shell owns it; `fresh` supplies the random start of a new stream.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    /// `(pattern, state)`, sorted by pattern.
    streams: Vec<(u64, u64)>,
}

impl Spread {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next number in `[0, 1)` for a request of eligibility `pattern`. `fresh` gives
    /// 64 random bits; it is called when the pattern starts a stream, or for every
    /// request of a pattern beyond [`MAX_STREAMS`].
    pub fn next(&mut self, pattern: u64, fresh: impl FnOnce() -> u64) -> f64 {
        match self.streams.binary_search_by_key(&pattern, |s| s.0) {
            Ok(i) => {
                let state = &mut self.streams[i].1;
                *state = state.wrapping_add(STEP);
                unit(*state)
            }
            Err(i) if self.streams.len() < MAX_STREAMS => {
                let start = fresh();
                self.streams.insert(i, (pattern, start));
                unit(start)
            }
            Err(_) => unit(fresh()),
        }
    }

    /// Patterns holding a stream.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

/// The top 53 bits as a number in `[0, 1)`.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Counts of each of the intervals cut at `cuts` over `n` numbers of one stream.
    fn counts(spread: &mut Spread, pattern: u64, start: u64, cuts: &[f64], n: usize) -> Vec<usize> {
        let mut out = vec![0; cuts.len() + 1];
        for _ in 0..n {
            let u = spread.next(pattern, || start);
            out[cuts.iter().filter(|c| u >= **c).count()] += 1;
        }
        out
    }

    #[test]
    fn every_interval_gets_its_length_within_a_few_over_any_run() {
        let mut rng = SmallRng::seed_from_u64(7);
        // Shares as a plan gives them: a 0.5 % campaign, a few larger ones, no ad.
        let shares = [0.005, 0.02, 0.2, 0.3, 0.25, 0.225];
        let cuts: Vec<f64> = shares
            .iter()
            .scan(0.0, |acc, s| {
                *acc += s;
                Some(*acc)
            })
            .take(shares.len() - 1)
            .collect();
        let mut worst: f64 = 0.0;
        for _ in 0..50 {
            let mut spread = Spread::new();
            let start = rng.random::<u64>();
            // Runs of every length up to 100,000, from wherever the last one stopped.
            for n in [1, 7, 60, 999, 20_000, 100_000] {
                let got = counts(&mut spread, 1, start, &cuts, n);
                for (c, s) in got.iter().zip(shares) {
                    worst = worst.max((*c as f64 - s * n as f64).abs());
                }
            }
        }
        // A binomial count of the 0.5 % campaign over 100,000 requests is off by 22 (one
        // standard deviation); the sequence's is never off by more than 3.
        assert!(worst <= 3.0, "worst count error {worst}");
    }

    #[test]
    fn over_random_starts_a_stream_is_unbiased_and_no_noisier_than_a_random_pick() {
        let mut rng = SmallRng::seed_from_u64(11);
        let (share, n, runs) = (0.05, 30, 20_000);
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for _ in 0..runs {
            let mut spread = Spread::new();
            let start = rng.random::<u64>();
            let hits = counts(&mut spread, 9, start, &[share], n)[0] as f64;
            sum += hits;
            sum_sq += hits * hits;
        }
        let mean = sum / runs as f64;
        let var = sum_sq / runs as f64 - mean * mean;
        let expected = share * n as f64;
        assert!((mean - expected).abs() < 0.02, "mean {mean} against {expected}");
        assert!(var < share * (1.0 - share) * n as f64, "variance {var} against the binomial's");
    }

    #[test]
    fn patterns_have_their_own_streams() {
        let mut spread = Spread::new();
        let a: Vec<f64> = (0..4).map(|_| spread.next(0b01, || 0)).collect();
        // Another pattern in between does not move the first one's sequence.
        let b = spread.next(0b10, || 1 << 63);
        let a_next = spread.next(0b01, || unreachable!("the stream exists"));
        assert_eq!(a[0], 0.0);
        assert_eq!(b, 0.5);
        assert_eq!(a_next, unit(STEP.wrapping_mul(4)));
        assert_eq!(spread.streams(), 2);
    }

    #[test]
    fn a_flood_of_patterns_is_capped_and_falls_back_to_random_numbers() {
        let mut spread = Spread::new();
        let mut fresh_calls = 0;
        for pattern in 0..10_000u64 {
            spread.next(pattern, || {
                fresh_calls += 1;
                pattern.wrapping_mul(STEP)
            });
        }
        assert_eq!(spread.streams(), MAX_STREAMS);
        assert_eq!(fresh_calls, 10_000);
        // A pattern past the cap gets a fresh number every time; one within keeps its stream.
        let mut calls = 0;
        spread.next(9_999, || {
            calls += 1;
            0
        });
        spread.next(0, || {
            calls += 1;
            0
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn numbers_stay_in_the_unit_interval() {
        let mut spread = Spread::new();
        for start in [0, 1, u64::MAX, STEP.wrapping_neg()] {
            let mut s = Spread::new();
            for _ in 0..1000 {
                let u = s.next(3, || start);
                assert!((0.0..1.0).contains(&u), "{u}");
            }
            assert!((0.0..1.0).contains(&spread.next(start, || start)));
        }
    }
}
