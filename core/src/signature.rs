//! Signing edge → origin requests.
//!
//! Header: `X-Allot-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "t.body")>`.
//! Binding the timestamp into the MAC lets the origin reject old bodies (replays)
//! without state; the origin additionally remembers recent signatures within the skew
//! window. Several `v1=` entries may be present, and the verifier holds up to two keys,
//! so a key is rotated by adding the new key to the origin, then switching the edge,
//! then removing the old key, with no request failing in between; a signer holding
//! several keys signs with all of them ([`sign_all`]).
//!
//! Verification is bounded before it touches the body: the header is at most
//! [`MAX_HEADER_LEN`] bytes with at most [`MAX_TAGS`] `v1=` tags (anything beyond is
//! malformed), the timestamp is checked first, and the body is MACed exactly once per
//! active key; every tag is then compared against those MACs in constant time. Whatever
//! a sender puts in the header, a body costs at most [`MAX_KEYS`] passes of HMAC-SHA256.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the signature.
pub const HEADER: &str = "X-Allot-Signature";

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is malformed")]
    Malformed,
    #[error("signature timestamp is outside the allowed window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

fn mac(key: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The header value for `body` signed with `key` at unix time `t` (seconds).
pub fn sign(key: &[u8], t: u64, body: &[u8]) -> String {
    sign_all(std::slice::from_ref(&key), t, body)
}

/// The header value for `body` signed at `t` with every key of `keys`, one `v1=` tag
/// per key in order: during a rotation a verifier holding either key accepts it.
pub fn sign_all<K: AsRef<[u8]>>(keys: &[K], t: u64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for key in keys {
        header.push_str(",v1=");
        header.push_str(&hex(&mac(key.as_ref(), t, body).finalize().into_bytes()));
    }
    header
}

/// The longest signature header accepted: room for [`MAX_TAGS`] tags and a timestamp,
/// with slack for a future scheme's entries.
pub const MAX_HEADER_LEN: usize = 512;
/// The most `v1=` tags one header may carry: a signer mid-rotation sends one per key.
pub const MAX_TAGS: usize = 4;

/// A parsed signature header: a timestamp and 1 to [`MAX_TAGS`] tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The signed unix time (seconds).
    pub t: u64,
    tags: Vec<[u8; 32]>,
}

impl SignatureHeader {
    /// Parses a header without looking at any body: bounded work whatever it holds.
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        if header.len() > MAX_HEADER_LEN {
            return Err(SignatureError::Malformed);
        }
        let mut t = None;
        let mut tags = Vec::with_capacity(2);
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
                Some(("v1", v)) => {
                    if tags.len() == MAX_TAGS {
                        return Err(SignatureError::Malformed);
                    }
                    tags.push(unhex(v).ok_or(SignatureError::Malformed)?);
                }
                Some(_) => {} // unknown schemes are ignored, so a v2 can be added later
                None => return Err(SignatureError::Malformed),
            }
        }
        let t = t.ok_or(SignatureError::Malformed)?;
        if tags.is_empty() {
            return Err(SignatureError::Malformed);
        }
        Ok(Self { t, tags })
    }
}

/// Lower-case hex, as signatures (and the digests the origin keys by) are written.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Checks signatures against the active keys.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Vec<u8>>,
    max_skew_secs: u64,
    max_age_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier").field("keys", &self.keys.len()).field("max_skew_secs", &self.max_skew_secs).finish()
    }
}

/// The most keys active at once: the current one and the one being rotated out.
pub const MAX_KEYS: usize = 2;

impl Verifier {
    /// `keys`: one or two non-empty secrets.
    pub fn new(keys: Vec<Vec<u8>>, max_skew_secs: u64) -> Result<Self, &'static str> {
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err("one or two signing keys are required");
        }
        if keys.iter().any(|k| k.len() < 16) {
            return Err("signing keys must be at least 16 bytes");
        }
        Ok(Self { keys, max_skew_secs, max_age_secs: max_skew_secs })
    }

    /// Accepts timestamps up to `secs` in the past (the skew still bounds the future):
    /// a signer that resends the same signed bytes for a while, as the edge's outbox
    /// does through an outage, needs a longer past than its clock's skew.
    pub fn with_max_age(mut self, secs: u64) -> Self {
        self.max_age_secs = secs.max(self.max_skew_secs);
        self
    }

    /// Verifies `header` for `body` at unix time `now` (seconds) and returns the signed
    /// timestamp. The comparison is constant-time.
    pub fn verify(&self, header: &str, body: &[u8], now: u64) -> Result<u64, SignatureError> {
        let header = SignatureHeader::parse(header)?;
        self.check_time(&header, now)?;
        self.verify_parsed(&header, body)
    }

    /// Refuses a timestamp further ahead than the skew or further behind than the
    /// maximum age: a check that needs no body, so a stale request is turned away
    /// before its body is read.
    pub fn check_time(&self, header: &SignatureHeader, now: u64) -> Result<(), SignatureError> {
        let bound = if header.t > now { self.max_skew_secs } else { self.max_age_secs };
        if header.t.abs_diff(now) > bound {
            return Err(SignatureError::Stale);
        }
        Ok(())
    }

    /// Checks a parsed header's tags against `body`: one MAC pass over the body per
    /// key, then each tag compared with each MAC in constant time (finalising a clone
    /// of the keyed state costs two blocks, not the body again).
    pub fn verify_parsed(&self, header: &SignatureHeader, body: &[u8]) -> Result<u64, SignatureError> {
        for key in &self.keys {
            let state = mac(key, header.t, body);
            if header.tags.iter().any(|tag| state.clone().verify_slice(tag).is_ok()) {
                return Ok(header.t);
            }
        }
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &[u8] = b"0123456789abcdef-key-one";
    const K2: &[u8] = b"0123456789abcdef-key-two";

    #[test]
    fn the_past_may_reach_further_than_the_skew() {
        let v = Verifier::new(vec![K1.to_vec()], 60).unwrap().with_max_age(300);
        let h = sign(K1, 1000, b"{}");
        assert_eq!(v.verify(&h, b"{}", 1300), Ok(1000), "300 s old");
        assert_eq!(v.verify(&h, b"{}", 1301), Err(SignatureError::Stale));
        assert_eq!(v.verify(&h, b"{}", 940), Ok(1000), "60 s ahead");
        assert_eq!(v.verify(&h, b"{}", 939), Err(SignatureError::Stale));
    }

    #[test]
    fn accepts_its_own_signature() {
        let v = Verifier::new(vec![K1.to_vec()], 300).unwrap();
        let h = sign(K1, 1000, b"{}");
        assert!(h.starts_with("t=1000,v1="));
        assert_eq!(v.verify(&h, b"{}", 1100), Ok(1000));
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256("0123456789abcdef-key-one", "1000.{}"), computed independently
        // with Python's hmac module.
        let h = sign(K1, 1000, b"{}");
        assert_eq!(h, format!("t=1000,v1={}", KNOWN));
    }
    const KNOWN: &str = "32420247b0d241a73da910a8e9ddf972c15c2c5d0f9d00952a926e1604737fa3";

    #[test]
    fn rejects_tampering_wrong_keys_and_stale_timestamps() {
        let v = Verifier::new(vec![K1.to_vec()], 300).unwrap();
        let h = sign(K1, 1000, b"{\"a\":1}");
        assert_eq!(v.verify(&h, b"{\"a\":2}", 1000), Err(SignatureError::Mismatch));
        assert_eq!(v.verify(&sign(K2, 1000, b"x"), b"x", 1000), Err(SignatureError::Mismatch));
        assert_eq!(v.verify(&h, b"{\"a\":1}", 1301), Err(SignatureError::Stale));
        assert_eq!(v.verify(&h, b"{\"a\":1}", 699), Err(SignatureError::Stale));
        // Changing the timestamp breaks the MAC.
        let forged = h.replacen("t=1000", "t=1001", 1);
        assert_eq!(v.verify(&forged, b"{\"a\":1}", 1000), Err(SignatureError::Mismatch));
    }

    #[test]
    fn rejects_malformed_headers() {
        let v = Verifier::new(vec![K1.to_vec()], 300).unwrap();
        for h in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage", "t=1,v1="] {
            assert_eq!(v.verify(h, b"", 1), Err(SignatureError::Malformed), "{h:?}");
        }
    }

    #[test]
    fn rotation_with_two_keys() {
        let both = Verifier::new(vec![K1.to_vec(), K2.to_vec()], 300).unwrap();
        assert!(both.verify(&sign(K1, 5, b"b"), b"b", 5).is_ok());
        assert!(both.verify(&sign(K2, 5, b"b"), b"b", 5).is_ok());
        // A signer mid-rotation may send both tags.
        let k1_tag = sign(K1, 5, b"b").split_once("v1=").map(|(_, t)| t.to_string()).unwrap();
        let h = format!("{},v1={k1_tag}", sign(K2, 5, b"b"));
        let only_k1 = Verifier::new(vec![K1.to_vec()], 300).unwrap();
        assert!(only_k1.verify(&h, b"b", 5).is_ok());
        assert!(Verifier::new(vec![], 1).is_err());
        assert!(Verifier::new(vec![K1.to_vec(), K1.to_vec(), K2.to_vec()], 1).is_err());
        assert!(Verifier::new(vec![b"short".to_vec()], 1).is_err());
    }

    #[test]
    fn sign_all_signs_with_every_key_and_either_verifier_accepts() {
        let h = sign_all(&[K1, K2], 7, b"plan");
        assert_eq!(h.matches("v1=").count(), 2);
        assert!(h.starts_with(&sign(K1, 7, b"plan")), "the first tag is the first key's: {h}");
        assert!(h.ends_with(sign(K2, 7, b"plan").split_once("v1=").unwrap().1));
        for key in [K1, K2] {
            assert_eq!(Verifier::new(vec![key.to_vec()], 10).unwrap().verify(&h, b"plan", 7), Ok(7));
        }
        assert_eq!(
            Verifier::new(vec![K1.to_vec()], 10).unwrap().verify(&h, b"other", 7),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn bounds_tags_and_header_length_before_any_mac() {
        let v = Verifier::new(vec![K1.to_vec(), K2.to_vec()], 300).unwrap();
        let tag = sign(K1, 5, b"b").split_once("v1=").map(|(_, t)| t.to_string()).unwrap();
        let with = |n: usize| format!("t=5{}", format!(",v1={tag}").repeat(n));
        assert_eq!(v.verify(&with(MAX_TAGS), b"b", 5), Ok(5), "up to the bound is fine");
        assert!(with(MAX_TAGS).len() <= MAX_HEADER_LEN);
        assert_eq!(SignatureHeader::parse(&with(MAX_TAGS + 1)), Err(SignatureError::Malformed));
        assert_eq!(v.verify(&with(5000), b"b", 5), Err(SignatureError::Malformed));
        let padded = format!("t=5,v1={tag},x={}", "y".repeat(MAX_HEADER_LEN));
        assert_eq!(v.verify(&padded, b"b", 5), Err(SignatureError::Malformed));
        // A stale header is refused by its timestamp alone.
        let h = SignatureHeader::parse(&with(1)).unwrap();
        assert_eq!(v.check_time(&h, 1000), Err(SignatureError::Stale));
        assert_eq!(v.check_time(&h, 6), Ok(()));
    }
}
