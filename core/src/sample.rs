//! Consistent sampling.
//!
//! A request is sampled at rate `r` iff `point(request_id) < r`, where `point` is a
//! fixed hash of the id mapped to `[0, 1)`. Hence:
//! - every event of one request (its allocation, its impression) is sampled or none is,
//!   wherever and whenever it is decided;
//! - sampling is monotone: sampled at `r` ⇒ sampled at every `r' ≥ r`, so raising the
//!   rate only adds requests;
//! - the edge (wasm32) and the origin (x86_64) agree bit for bit: the hash is FNV-1a
//!   with a SplitMix64 finaliser, integer arithmetic only.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The request's position in `[0, 1)`.
pub fn sample_point(request_id: &str) -> f64 {
    let mut h = FNV_OFFSET;
    for b in request_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // FNV alone mixes the last bytes poorly; SplitMix64's finaliser spreads them.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The top 53 bits make an exactly representable f64 in [0, 1).
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Is this request sampled at `rate`?
pub fn sampled(request_id: &str, rate: f64) -> bool {
    sample_point(request_id) < rate
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Fixed vectors, computed independently (a Python transcription of the hash).
    /// If these change, edges and origins of different builds would disagree about
    /// which requests are sampled.
    #[test]
    fn fixed_vectors() {
        let vectors: [(&str, u64); 4] = [
            ("", 8_625_955_362_125_501),
            ("a", 96_858_892_993_156),
            ("00000000000000000000000000000001", 190_399_476_443_015),
            ("home_feed-42", 6_551_298_266_508_064),
        ];
        for (id, bits) in vectors {
            assert_eq!(sample_point(id), bits as f64 / (1u64 << 53) as f64, "{id:?}");
        }
    }

    #[test]
    fn rate_bounds() {
        assert!(sampled("x", 1.0));
        assert!(!sampled("x", 0.0));
    }

    #[test]
    fn uniform_enough() {
        let n = 100_000;
        let hits = (0..n).filter(|i| sampled(&format!("req-{i}"), 0.1)).count();
        // Binomial(100000, 0.1): σ ≈ 95; 4σ.
        assert!((hits as i64 - 10_000).abs() < 380, "{hits}");
    }

    proptest! {
        #[test]
        fn monotone(id in "[A-Za-z0-9_.:-]{1,64}", r1 in 0.0f64..=1.0, r2 in 0.0f64..=1.0) {
            let (lo, hi) = if r1 <= r2 { (r1, r2) } else { (r2, r1) };
            if sampled(&id, lo) {
                prop_assert!(sampled(&id, hi));
            }
        }

        #[test]
        fn point_in_unit_interval(id in ".*") {
            let p = sample_point(&id);
            prop_assert!((0.0..1.0).contains(&p));
        }
    }
}
