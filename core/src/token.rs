//! Impression tokens: the edge's proof that it served an ad.
//!
//! `/v1/ad` hands out, with every ad, a token that binds the request id, placement, ad,
//! plan version, sample rate, issue time, whether the allocation was sampled and the
//! request's platform under a MAC only edges can compute.
//! `/v1/impression` counts a report only with a token that verifies for exactly the
//! request, placement and ad it names, and was issued at most [`MAX_AGE_MS`] ago. So an
//! app can report only ads it was actually given, at most once per request
//! (the origin marks the request), and never for a campaign it made up. The token
//! carries what the impression needs to be sampled exactly when its allocation was —
//! the allocation's sampling decision (drawn per request: [`crate::sample`]), plan
//! version and rate — so neither a new plan nor a key rotation in between changes it.
//!
//! Layout, format 4 (then base64url without padding: 63 characters without a platform,
//! up to 106 with one of 32):
//!
//! | bytes        | field                                            |
//! |--------------|--------------------------------------------------|
//! | 0            | format, `4`                                      |
//! | 1..5         | key id: the first 4 bytes of `HMAC(secret, "allot/key-id/v1")` |
//! | 5..13        | issue time, unix ms, u64 big-endian              |
//! | 13..21       | plan version, u64 big-endian                     |
//! | 21..29       | sample rate, IEEE-754 bits, big-endian           |
//! | 29           | the sampling decision, masked: `s XOR (M[16] AND 1)` |
//! | 30           | `L`, the platform's length: 0 (none) to 32       |
//! | 31..31+L     | the request's platform as events carry it: lower case, `[a-z0-9_-]` |
//! | 31+L..47+L   | MAC: `M[0..16]`                                  |
//!
//! `M` is HMAC-SHA256 under the token sub-key over `"allot/impression/v1"`, the header
//! (bytes `0..31+L`) with byte 29 set to `s` (`1` if the allocation was sampled, else
//! `0`), then the request id, placement and ad id, each prefixed by its length (u16
//! big-endian), so no field can be moved into another. 128 bits of MAC leave forgery at
//! 2⁻¹²⁸ per try. The token sub-key is `HMAC(secret, "allot/token/v1")`: one edge secret
//! serves sampling and tokens without either key ever being used for the other purpose.
//!
//! **Why the platform is carried.** The origin counts impressions per campaign and
//! platform, against the allocations of that platform (a render ratio per platform), so
//! an impression must count in its allocation's platform. The report names only the
//! request, placement and ad, and the edge keeps nothing per request: the token is what
//! carries the platform from `/v1/ad` to `/v1/impression`, and apps echo it unchanged.
//! It is under the MAC because the app holds it: were it not, an app could count its
//! impressions under another platform than its ads were allocated to.
//!
//! **Why the decision is masked.** The app holds the token before it shows the ad. Were
//! `s` readable, an app could show only the ads whose impressions are counted (sampled)
//! and use the space of the others: every counted ad would read as shown. The mask is
//! the MAC's 17th byte, which never leaves the edge and which nothing the app sees
//! predicts, so byte 29 is a fair coin to the app. The edge verifying a token tries
//! `s = 0` and `s = 1`: only the true one gives the MAC, and byte 29 must then be
//! `s` masked by that MAC.
//!
//! Earlier formats are still verified, so the impressions of ads served just before an
//! edge upgrade are not lost; their impressions carry no platform. Format 3 (62
//! characters) is format 4's bytes `0..30` and MAC, without `L` or a platform; format 2
//! (byte 0 `2`, 62 characters) carried `s` in clear; format 1 (60 characters) had no
//! byte 29, its impression sampled when the request id's keyed point is below the rate
//! ([`SampleKey::sampled`]).

use std::collections::{HashSet, VecDeque};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::choose::MAX_PLATFORM;
use crate::sample::SampleKey;
use crate::{CampaignId, Event, EventKind, PlacementId, Platform, RequestId};

/// How long after its ad an impression may be reported. Short enough that the window
/// the impression is counted in (the window of its ad) is still kept by the origin.
pub const MAX_AGE_MS: u64 = 5 * 60 * 1000;
/// Edges' clocks differ: a token issued up to this far in the future is still valid.
pub const MAX_SKEW_MS: u64 = 60 * 1000;
/// The longest after its issue that a token may still be presented, as the origin's
/// clock can see it: its age limit and the edges' clock skew.
pub const PRESENTABLE_MS: u64 = MAX_AGE_MS + MAX_SKEW_MS;
/// The shortest edge secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

const FORMAT: u8 = 4;
/// Format 3: no platform.
const V3_FORMAT: u8 = 3;
/// Format 2: the sampling decision in clear.
const V2_FORMAT: u8 = 2;
/// Byte of the header carrying the (masked) sampling decision.
const DECISION: usize = 29;
/// Byte of the header carrying the platform's length; the platform follows it.
const PLATFORM_LEN: usize = 30;
/// Format 4's header without its platform.
const HEADER: usize = 31;
const MAX_HEADER: usize = HEADER + MAX_PLATFORM;
const TAG: usize = 16;
const MAX_LEN: usize = MAX_HEADER + TAG;
/// Formats 2 and 3: the header up to the decision byte.
const V3_HEADER: usize = 30;
/// Format 1: no sampling byte.
const V1_HEADER: usize = 29;

/// Characters of `bytes` bytes in base64url without padding.
const fn chars(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// The shortest format-4 token: no platform.
pub const MIN_TOKEN_CHARS: usize = chars(HEADER + TAG);
/// The longest format-4 token: a platform of [`MAX_PLATFORM`] characters.
pub const MAX_TOKEN_CHARS: usize = chars(MAX_LEN);
const V3_CHARS: usize = chars(V3_HEADER + TAG);
const V1_CHARS: usize = chars(V1_HEADER + TAG);

/// One edge secret and the sub-keys derived from it.
#[derive(Clone)]
pub struct EdgeKey {
    id: [u8; 4],
    mac: Hmac<Sha256>,
    sample: SampleKey,
}

impl std::fmt::Debug for EdgeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why an edge secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an edge secret needs at least {MIN_SECRET_LEN} bytes (got {0})")]
pub struct KeyError(pub usize);

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl EdgeKey {
    pub fn new(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError(secret.len()));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&derive(secret, b"allot/key-id/v1")[..4]);
        let mac = Hmac::<Sha256>::new_from_slice(&derive(secret, b"allot/token/v1")).expect("any length");
        Ok(Self { id, mac, sample: SampleKey::derive(secret) })
    }

    /// The sampling sub-key: positions request ids in `[0, 1)`.
    pub fn sample(&self) -> &SampleKey {
        &self.sample
    }

    /// The MAC state over everything a token binds, ready to finish or verify.
    fn mac(&self, header: &[u8], subject: Subject<'_>) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(b"allot/impression/v1");
        mac.update(header);
        for field in [subject.request_id.as_str(), subject.placement.as_str(), subject.ad.as_str()] {
            mac.update(&(field.len() as u16).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }
}

/// What a token is about: one ad served for one request.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub request_id: &'a RequestId,
    pub placement: &'a PlacementId,
    pub ad: &'a CampaignId,
}

/// What an allocation was decided under, and whether it was sampled: the impression
/// is sent exactly then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Issue {
    pub plan_version: u64,
    pub sample_rate: f64,
    pub issued_at_ms: u64,
    pub sampled: bool,
}

/// A verified token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub issue: Issue,
    /// The platform of the request the ad was allocated to, as its allocation event
    /// carries it; `None` for a request that named none, and for tokens of formats
    /// before 4.
    pub platform: Option<Platform>,
    /// The token's MAC: unique per token, what an edge remembers to refuse a replay.
    pub tag: [u8; TAG],
}

impl Grant {
    /// The impression event of the ad `subject` names: sampled, weighted and versioned
    /// as its allocation was, placed in the window of its allocation (the token's issue
    /// time), so impressions and allocations of the same requests meet in one window,
    /// and of its allocation's platform, so it counts in that platform. Impressions carry
    /// no eligibility: the allocation has it.
    pub fn impression_event(&self, subject: Subject<'_>, country: Option<String>, colo: Option<String>) -> Event {
        Event {
            kind: EventKind::Impression,
            event_time_ms: self.issue.issued_at_ms,
            request_id: subject.request_id.clone(),
            placement: subject.placement.clone(),
            ad_id: Some(subject.ad.clone()),
            plan_version: self.issue.plan_version,
            sample_rate: self.issue.sample_rate,
            eligible: Vec::new(),
            platform: self.platform.map(|p| p.as_str().to_owned()),
            country,
            colo,
            unreported: false,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the impression token is malformed")]
    Malformed,
    /// Forged, altered, for another request/placement/ad, or from a retired key.
    #[error("the impression token is not valid for this impression")]
    Invalid,
    #[error("the impression token has expired")]
    Expired,
}

/// The token for `subject`, decided under `issue`, for a request that named no
/// platform: [`issue_for_platform`] with none.
pub fn issue(key: &EdgeKey, subject: Subject<'_>, issue: Issue) -> String {
    issue_for_platform(key, subject, issue, None)
}

/// The token for `subject`, decided under `issue`, for a request of `platform` (as
/// [`crate::RequestAttrs::event_platform`] gives it, so the impression names the
/// platform the allocation event does).
pub fn issue_for_platform(key: &EdgeKey, subject: Subject<'_>, issue: Issue, platform: Option<Platform>) -> String {
    let platform = platform.as_ref().map_or(&[][..], |p| p.as_str().as_bytes());
    let header = HEADER + platform.len();
    let mut bytes = [0u8; MAX_LEN];
    bytes[0] = FORMAT;
    bytes[1..5].copy_from_slice(&key.id);
    bytes[5..13].copy_from_slice(&issue.issued_at_ms.to_be_bytes());
    bytes[13..21].copy_from_slice(&issue.plan_version.to_be_bytes());
    bytes[21..29].copy_from_slice(&issue.sample_rate.to_bits().to_be_bytes());
    bytes[DECISION] = u8::from(issue.sampled);
    // At most `MAX_PLATFORM` bytes: a `Platform` holds no more.
    bytes[PLATFORM_LEN] = platform.len() as u8;
    bytes[HEADER..header].copy_from_slice(platform);
    let mac = key.mac(&bytes[..header], subject).finalize().into_bytes();
    bytes[DECISION] ^= mask(&mac);
    bytes[header..header + TAG].copy_from_slice(&mac[..TAG]);
    URL_SAFE_NO_PAD.encode(&bytes[..header + TAG])
}

/// The bit hiding the sampling decision: from the part of the MAC no token carries.
fn mask(mac: &[u8]) -> u8 {
    mac[TAG] & 1
}

/// The sampling decision of a format-3 or -4 token (`header` then its MAC) whose MAC is
/// checked against the header with the decision set to 0, then 1: the one that gives
/// the MAC, if byte 29 is it masked. Both tries compare in constant time.
fn unmask(key: &EdgeKey, token: &[u8], header: usize, subject: Subject<'_>) -> Result<bool, TokenError> {
    let mut clear = [0u8; MAX_HEADER];
    clear[..header].copy_from_slice(&token[..header]);
    for sampled in [false, true] {
        clear[DECISION] = u8::from(sampled);
        let mac = key.mac(&clear[..header], subject);
        if mac.clone().verify_truncated_left(&token[header..header + TAG]).is_ok() {
            let m = mac.finalize().into_bytes();
            return if token[DECISION] == u8::from(sampled) ^ mask(&m) {
                Ok(sampled)
            } else {
                Err(TokenError::Invalid)
            };
        }
    }
    Err(TokenError::Invalid)
}

/// A token's bytes whose shape is one an edge makes: the format, where its MAC starts
/// and the platform it carries. Reads at most [`MAX_TOKEN_CHARS`] characters.
struct Decoded {
    bytes: [u8; MAX_LEN],
    format: u8,
    header: usize,
    platform: Option<Platform>,
}

fn decode(token: &str) -> Result<Decoded, TokenError> {
    let chars = token.len();
    if !(chars == V1_CHARS || chars == V3_CHARS || (MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&chars)) {
        return Err(TokenError::Malformed);
    }
    let mut bytes = [0u8; MAX_LEN];
    let n = URL_SAFE_NO_PAD.decode_slice(token, &mut bytes).map_err(|_| TokenError::Malformed)?;
    let format = bytes[0];
    let header = match (chars, format) {
        (V1_CHARS, 1) => V1_HEADER,
        (V3_CHARS, V2_FORMAT | V3_FORMAT) => V3_HEADER,
        (V1_CHARS | V3_CHARS, _) => return Err(TokenError::Malformed),
        (_, FORMAT) if usize::from(bytes[PLATFORM_LEN]) <= MAX_PLATFORM => HEADER + usize::from(bytes[PLATFORM_LEN]),
        _ => return Err(TokenError::Malformed),
    };
    // The length must be the one `L` gives: nothing before the MAC is left unread.
    if n != header + TAG {
        return Err(TokenError::Malformed);
    }
    let platform = if format == FORMAT && header > HEADER {
        Some(Platform::from_normalised(&bytes[HEADER..header]).ok_or(TokenError::Malformed)?)
    } else {
        None
    };
    Ok(Decoded { bytes, format, header, platform })
}

/// Checks `token` for `subject` at `now_ms` against the active keys (the current one
/// and any still accepted during a rotation).
pub fn verify(keys: &[EdgeKey], token: &str, subject: Subject<'_>, now_ms: u64) -> Result<Grant, TokenError> {
    let Decoded { bytes, format, header, platform } = decode(token)?;
    let key = keys.iter().find(|k| k.id == bytes[1..5]).ok_or(TokenError::Invalid)?;
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let sample_rate = f64::from_bits(u64_at(21));
    let sampled = if format == FORMAT || format == V3_FORMAT {
        // A decision byte other than 0 or 1 is not an edge's.
        if bytes[DECISION] > 1 {
            return Err(TokenError::Malformed);
        }
        unmask(key, &bytes, header, subject)?
    } else {
        // Constant time: the comparison leaks nothing about the expected tag.
        let mac = key.mac(&bytes[..header], subject);
        mac.verify_truncated_left(&bytes[header..header + TAG]).map_err(|_| TokenError::Invalid)?;
        match (format, bytes[DECISION]) {
            (1, _) => key.sample().sampled(subject.request_id.as_str(), sample_rate),
            (_, 0) => false,
            (_, 1) => true,
            // Only an edge could have made it; refuse rather than guess.
            _ => return Err(TokenError::Malformed),
        }
    };
    let issue = Issue { issued_at_ms: u64_at(5), plan_version: u64_at(13), sample_rate, sampled };
    if !(issue.sample_rate > 0.0 && issue.sample_rate <= 1.0) {
        // Only an edge could have made it; refuse rather than weigh by nonsense.
        return Err(TokenError::Malformed);
    }
    if issue.issued_at_ms > now_ms.saturating_add(MAX_SKEW_MS) || now_ms.saturating_sub(issue.issued_at_ms) > MAX_AGE_MS
    {
        return Err(TokenError::Expired);
    }
    let mut tag = [0u8; TAG];
    tag.copy_from_slice(&bytes[header..header + TAG]);
    Ok(Grant { issue, platform, tag })
}

/// An edge's memory of the tokens it has accepted, so a replay to the same edge is
/// refused at once. Bounded: the oldest entries go first when it is full, and the
/// origin's once-per-request marker is what makes counting exact across edges.
#[derive(Debug)]
pub struct SeenTokens {
    capacity: usize,
    order: VecDeque<([u8; TAG], u64)>,
    seen: HashSet<[u8; TAG]>,
}

impl SeenTokens {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), order: VecDeque::new(), seen: HashSet::new() }
    }

    /// Records the token of `grant` at `now_ms`; `false` if it was seen before.
    pub fn first_use(&mut self, grant: &Grant, now_ms: u64) -> bool {
        while let Some((tag, expires)) = self.order.front().copied() {
            if expires >= now_ms && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&tag);
        }
        if !self.seen.insert(grant.tag) {
            return false;
        }
        let expires = grant.issue.issued_at_ms.saturating_add(MAX_AGE_MS);
        self.order.push_back((grant.tag, expires));
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests;
