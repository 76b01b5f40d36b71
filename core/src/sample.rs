//! Keyed sampling, drawn per decision.
//!
//! A decision is sampled at rate `r` iff `point(key, fresh) < r`, where `fresh` is 64
//! bits the edge draws for that request alone and `point` is SipHash-2-4 under a key
//! only edges hold, mapped to `[0, 1)` ([`SampleKey::decide`]). Hence:
//! - every request is its own coin of bias `r`, whatever the app sends. Apps choose
//!   their request ids (to correlate answers with their own logs), so a coin drawn from
//!   the id would be the same for every request that repeats it: an app repeating one
//!   id `N` times would be counted `N/r` times or not at all, and could learn which
//!   (an edge's counters move when a request is sampled), then repeat only the ids
//!   that are counted, or only those that are not. A fresh draw per decision leaves
//!   nothing to learn: what one request drew says nothing about the next;
//! - the impression of a request is sampled exactly when its allocation was: the
//!   decision travels in the request's [token](crate::token), under its MAC, so
//!   neither a new plan, a new rate nor a key rotation in between changes it;
//! - sampling is monotone in the rate for one draw, so raising the rate only adds
//!   requests.
//!
//! Tokens of format 1, issued by edges that drew the coin from the request id
//! (`point(key, request_id)`, [`SampleKey::sampled`]), are still honoured for the few
//! minutes they live, with that rule.
//!
//! Why SipHash-2-4: it is a pseudo-random function designed for short inputs under a
//! 128-bit key (the security claim a request id needs: outputs indistinguishable from
//! random without the key), it costs tens of nanoseconds on a 36-byte id where
//! HMAC-SHA256 costs four SHA-256 compressions, and it is integer arithmetic only, so
//! wasm32 and x86_64 agree bit for bit. The sampling key is derived from the edge
//! secret by domain separation ([`SampleKey::derive`]), so it is never the key that
//! signs anything.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip::SipHasher24;

/// The domain-separation label of the sampling sub-key.
const SAMPLE_LABEL: &[u8] = b"allot/sample/v1";

/// The secret that positions request ids in `[0, 1)`.
#[derive(Clone)]
pub struct SampleKey(SipHasher24);

impl std::fmt::Debug for SampleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleKey(<redacted>)")
    }
}

impl SampleKey {
    /// The sampling sub-key of an edge secret: the first 16 bytes of
    /// `HMAC-SHA256(secret, "allot/sample/v1")`.
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(SAMPLE_LABEL);
        let digest = mac.finalize().into_bytes();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self::from_bytes(&key)
    }

    /// A raw 128-bit SipHash key (the simulator's fixed key, test vectors).
    pub fn from_bytes(key: &[u8; 16]) -> Self {
        Self(SipHasher24::new_with_key(key))
    }

    /// The position of `bytes` in `[0, 1)`.
    fn position(&self, bytes: &[u8]) -> f64 {
        let h = self.0.hash(bytes);
        // The top 53 bits make an exactly representable f64 in [0, 1).
        (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Whether a decision is sampled at `rate`, from `fresh`: 64 bits the edge draws
    /// for this request alone. Keyed, so that even an app that could predict the
    /// edge's generator cannot tell which draws fall below the rate.
    pub fn decide(&self, fresh: u64, rate: f64) -> bool {
        self.position(&fresh.to_le_bytes()) < rate
    }

    /// A request id's position in `[0, 1)`: the coin of tokens of format 1.
    pub fn point(&self, request_id: &str) -> f64 {
        self.position(request_id.as_bytes())
    }

    /// Whether a request was sampled at `rate` by an edge that drew the coin from its
    /// id (tokens of format 1 only: see the module's docs for why no longer).
    pub fn sampled(&self, request_id: &str, rate: f64) -> bool {
        self.point(request_id) < rate
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> SampleKey {
        SampleKey::from_bytes(b"0123456789abcdef")
    }

    /// Fixed vectors, computed independently (a Python transcription of SipHash-2-4,
    /// checked against the reference vector `00..0e` → `a129ca6149be45e5`, of the UTF-8
    /// id under the 16-byte key, and `hmac.new(secret, b"allot/sample/v1", sha256)` for the
    /// derived key). If these change, edges of different builds would disagree about
    /// which requests are sampled.
    #[test]
    fn fixed_vectors() {
        let k = key();
        let vectors: [(&str, u64); 3] =
            [("", 0xae32_c38a_d4dd_9eb8), ("a", 0xc686_137e_7f91_6674), ("home_feed-42", 0x68e8_d4a8_512e_078b)];
        for (id, h) in vectors {
            assert_eq!(k.point(id), (h >> 11) as f64 / (1u64 << 53) as f64, "{id:?}");
        }
        let derived = SampleKey::derive(b"test-edge-key-0123456789abcdef");
        assert_eq!(derived.point("a"), (DERIVED_A >> 11) as f64 / (1u64 << 53) as f64);
        // A decision's draw: the 8 bytes little-endian, by the same transcription.
        let draws: [(u64, u64); 4] = [
            (0, 0x8d9c_42c1_ab88_bf87),
            (1, 0xc5bb_0487_86e1_a8ab),
            (0x0123_4567_89ab_cdef, 0xe021_e2dc_52ac_43ed),
            (u64::MAX, 0x4b1c_9a3b_517e_6e47),
        ];
        for (fresh, h) in draws {
            let point = (h >> 11) as f64 / (1u64 << 53) as f64;
            assert!(!k.decide(fresh, point) && k.decide(fresh, point + 1e-12), "{fresh:#x}");
        }
    }

    /// SipHash-2-4 of "a" under the sub-key derived from `test-edge-key-0123456789abcdef`.
    const DERIVED_A: u64 = 0xa6c1_99d9_cd8e_d0e6;

    #[test]
    fn rate_bounds() {
        assert!(key().sampled("x", 1.0));
        assert!(!key().sampled("x", 0.0));
    }

    #[test]
    fn each_draw_is_its_own_coin() {
        let k = key();
        let n = 100_000u64;
        // Draws as an edge makes them (any 64 bits it does not let apps choose).
        let fresh = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let hits = (0..n).filter(|i| k.decide(fresh(*i), 0.1)).count();
        // Binomial(100000, 0.1): σ ≈ 95; 4σ.
        assert!((hits as i64 - 10_000).abs() < 380, "{hits}");
        assert!((0..1000).all(|i| k.decide(fresh(i), 1.0)) && !(0..1000).any(|i| k.decide(fresh(i), 0.0)));
        // Under another key, other draws are sampled.
        let other = SampleKey::derive(b"another-edge-secret-0123");
        let both = (0..10_000).filter(|i| k.decide(fresh(*i), 0.1) && other.decide(fresh(*i), 0.1)).count();
        assert!(both < 200, "{both}");
    }

    #[test]
    fn uniform_enough() {
        let n = 100_000;
        let k = key();
        let hits = (0..n).filter(|i| k.sampled(&format!("req-{i}"), 0.1)).count();
        // Binomial(100000, 0.1): σ ≈ 95; 4σ.
        assert!((hits as i64 - 10_000).abs() < 380, "{hits}");
    }

    #[test]
    fn another_key_samples_other_requests() {
        let (a, b) = (key(), SampleKey::derive(b"another-edge-secret-0123"));
        let ids: Vec<String> = (0..10_000).map(|i| format!("req-{i}")).collect();
        let in_a: Vec<bool> = ids.iter().map(|id| a.sampled(id, 0.1)).collect();
        let both = ids.iter().zip(&in_a).filter(|(id, x)| **x && b.sampled(id, 0.1)).count();
        // Independent keys: about 1 % of ids are in both samples, not 10 %.
        assert!(both < 200, "{both}");
    }

    proptest! {
        #[test]
        fn monotone(id in "[A-Za-z0-9_.:-]{1,64}", r1 in 0.0f64..=1.0, r2 in 0.0f64..=1.0) {
            let (lo, hi) = if r1 <= r2 { (r1, r2) } else { (r2, r1) };
            if key().sampled(&id, lo) {
                prop_assert!(key().sampled(&id, hi));
            }
        }

        #[test]
        fn point_in_unit_interval(id in ".*", secret in prop::collection::vec(any::<u8>(), 16..64)) {
            let p = SampleKey::derive(&secret).point(&id);
            prop_assert!((0.0..1.0).contains(&p));
        }
    }
}
