//! Request ids as the edge sees them.
//!
//! Apps send UUIDv4s, in the canonical lower-case `8-4-4-4-12` form, and a share of
//! requests reuse the id of a recent one (an app retrying). The edge draws each
//! request's sampling coin on its own (`SampleKey::decide`), so a retry is sampled
//! independently of the original; its impression still counts once per id.
//!
//! Ids are kept as their 128 bits and formatted into a stack buffer only for the
//! sampled requests' events.

use rand::Rng;
use rand::rngs::SmallRng;

/// How many recent requests a retry may repeat.
const RECENT: usize = 4096;

/// A request's identity and the traffic profile it was drawn from (a retry repeats
/// both: it is the same app asking again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    pub id: u128,
    pub profile: usize,
    pub retry: bool,
}

/// Draws request ids: fresh UUIDv4s, and with probability `reuse` the id of one of the
/// last [`RECENT`] requests.
#[derive(Debug)]
pub struct RequestIds {
    reuse: f64,
    recent: Vec<(u128, usize)>,
    next: usize,
}

impl RequestIds {
    pub fn new(reuse: f64) -> Self {
        Self { reuse: reuse.clamp(0.0, 1.0), recent: Vec::with_capacity(RECENT), next: 0 }
    }

    /// The next request; `profile` draws a fresh request's profile.
    pub fn draw(&mut self, rng: &mut SmallRng, profile: impl FnOnce(&mut SmallRng) -> usize) -> Drawn {
        if !self.recent.is_empty() && rng.random::<f64>() < self.reuse {
            let (id, profile) = self.recent[rng.random_range(0..self.recent.len())];
            return Drawn { id, profile, retry: true };
        }
        let id = uuid_v4(rng.random());
        let profile = profile(rng);
        if self.recent.len() < RECENT {
            self.recent.push((id, profile));
        } else {
            self.recent[self.next] = (id, profile);
            self.next = (self.next + 1) % RECENT;
        }
        Drawn { id, profile, retry: false }
    }
}

/// Random bits made a version-4, RFC 4122 variant UUID.
pub fn uuid_v4(bits: u128) -> u128 {
    let versioned = (bits & !(0xf << 76)) | (0x4 << 76);
    (versioned & !(0b11 << 62)) | (0b10 << 62)
}

/// A stack buffer for one formatted UUID.
pub type UuidText = [u8; 36];

/// Formats `id` as `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx` into `buf`.
pub fn format_uuid(id: u128, buf: &mut UuidText) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut nibble = 0;
    for (i, out) in buf.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *out = b'-';
            continue;
        }
        *out = HEX[(id >> (124 - 4 * nibble) & 0xf) as usize];
        nibble += 1;
    }
    std::str::from_utf8(buf).expect("hex digits and dashes are ASCII")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn formats_canonical_uuids() {
        let mut buf = [0; 36];
        let id = uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(format_uuid(id, &mut buf), "01234567-89ab-4def-8123-456789abcdef");
        assert!(allot_core::RequestId::parse(format_uuid(id, &mut buf)).is_ok());
        let id = uuid_v4(u128::MAX);
        assert_eq!(format_uuid(id, &mut buf), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn reuses_about_the_configured_share() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut ids = RequestIds::new(0.1);
        let n = 100_000;
        let drawn: Vec<Drawn> = (0..n).map(|_| ids.draw(&mut rng, |r| r.random_range(0..9))).collect();
        let retries = drawn.iter().filter(|d| d.retry).count();
        // Binomial(100000, 0.1): σ ≈ 95; 5σ.
        assert!((retries as i64 - 10_000).abs() < 475, "{retries}");
        // A retry repeats a recent request, profile included.
        let fresh: std::collections::HashMap<u128, usize> =
            drawn.iter().filter(|d| !d.retry).map(|d| (d.id, d.profile)).collect();
        assert_eq!(fresh.len(), n - retries, "fresh ids do not collide");
        for d in drawn.iter().filter(|d| d.retry) {
            assert_eq!(fresh.get(&d.id), Some(&d.profile));
        }
        let none = RequestIds::new(0.0).draw(&mut rng, |_| 0);
        assert!(!none.retry);
    }
}
