use proptest::prelude::*;

use super::*;

const SECRET: &[u8] = b"test-edge-key-0123456789abcdef";
const T0: u64 = 1_764_000_000_000;

fn key() -> EdgeKey {
    EdgeKey::new(SECRET).unwrap()
}

struct Ids {
    request_id: RequestId,
    placement: PlacementId,
    ad: CampaignId,
}

impl Ids {
    fn new(r: &str, p: &str, a: &str) -> Self {
        Self {
            request_id: RequestId::parse(r).unwrap(),
            placement: PlacementId::parse(p).unwrap(),
            ad: CampaignId::parse(a).unwrap(),
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject { request_id: &self.request_id, placement: &self.placement, ad: &self.ad }
    }
}

fn at(ms: u64) -> Issue {
    Issue { plan_version: 7, sample_rate: 0.25, issued_at_ms: ms, sampled: true }
}

/// Computed independently (Python `hmac`/`hashlib`/`base64` from the layout in the
/// module's docs). If it changes, tokens issued by edges of another build fail. Here
/// the sampled token of `web` shows 0 in byte 29 (its mask is 1), the unsampled one 0
/// too (mask 0), and the sampled token without platform 1 (mask 0).
#[test]
fn fixed_vectors() {
    let ids = Ids::new("req-1", "home_feed", "A");
    let web = Platform::normalise("web");
    let token = issue_for_platform(&key(), ids.subject(), at(T0), web);
    assert_eq!(token, "BOsmAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAAAAA3dlYneL5XXSMEA_nnqgoJCOZRs");
    assert_eq!(token.len(), MIN_TOKEN_CHARS + 4);
    let unsampled = issue_for_platform(&key(), ids.subject(), Issue { sampled: false, ..at(T0) }, web);
    assert_eq!(unsampled, "BOsmAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAAAAA3dlYoI7r5tzyBNBqMpE-G2ihHc");
    assert!(!verify(&[key()], &unsampled, ids.subject(), T0).unwrap().issue.sampled);
    let grant = verify(&[key()], &token, ids.subject(), T0 + 1000).unwrap();
    assert_eq!((grant.issue, grant.platform), (at(T0), web));
    let e = grant.impression_event(ids.subject(), Some("DE".into()), None);
    assert_eq!((e.kind, e.plan_version, e.sample_rate, e.event_time_ms), (crate::EventKind::Impression, 7, 0.25, T0));
    assert_eq!((e.ad_id.as_ref(), e.platform.as_deref()), (Some(&ids.ad), Some("web")));
    let body = crate::EventBatch { events: vec![e] }.to_json();
    assert!(crate::EventBatch::parse(body.as_bytes()).is_ok());

    // A request that named no platform: `L` = 0, the shortest token, an impression
    // without platform.
    let none = issue(&key(), ids.subject(), at(T0));
    assert_eq!(none, "BOsmAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAAABACrizeDC62Pq9eqsTnOQFNE");
    assert_eq!(none.len(), MIN_TOKEN_CHARS);
    assert_eq!(issue_for_platform(&key(), ids.subject(), at(T0), None), none);
    let grant = verify(&[key()], &none, ids.subject(), T0).unwrap();
    assert_eq!((grant.issue, grant.platform), (at(T0), None));
    assert_eq!(grant.impression_event(ids.subject(), None, None).platform, None);
}

/// The platform is the one events carry, whatever case the request used, up to the
/// longest one a request may name.
#[test]
fn the_platform_is_the_allocations() {
    let ids = Ids::new("req-1", "home_feed", "A");
    let attrs = crate::RequestAttrs::parse(Some("iOS"), None).unwrap();
    let token = issue_for_platform(&key(), ids.subject(), at(T0), attrs.event_platform());
    let grant = verify(&[key()], &token, ids.subject(), T0).unwrap();
    assert_eq!(grant.impression_event(ids.subject(), None, None).platform.as_deref(), Some("ios"));
    let longest = Platform::normalise(&"Tv".repeat(16));
    let token = issue_for_platform(&key(), ids.subject(), at(T0), longest);
    assert_eq!(token.len(), MAX_TOKEN_CHARS);
    assert_eq!(verify(&[key()], &token, ids.subject(), T0).unwrap().platform.unwrap().as_str(), "tv".repeat(16));
}

/// The app holds the platform in clear: any change of it, or of its length, is
/// refused — as not an edge's shape (`Malformed`) or under the MAC (`Invalid`).
#[test]
fn an_altered_platform_is_refused() {
    let ids = Ids::new("req-1", "home_feed", "A");
    let good =
        URL_SAFE_NO_PAD.decode(issue_for_platform(&key(), ids.subject(), at(T0), Platform::normalise("web"))).unwrap();
    let check = |bytes: &[u8], want: TokenError| {
        let token = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(verify(&[key()], &token, ids.subject(), T0), Err(want), "{bytes:?}");
    };
    let with = |platform: &[u8], len: u8| {
        let mut bytes = good[..HEADER].to_vec();
        bytes[PLATFORM_LEN] = len;
        bytes.extend_from_slice(platform);
        bytes.extend_from_slice(&good[HEADER + 3..]);
        bytes
    };
    assert_eq!(with(b"web", 3), good);
    // Another platform an app could claim, of the same length or not, or none at all.
    for other in [&b"ios"[..], b"wex", b"aeb", b"we", b"webb", b"android"] {
        check(&with(other, other.len() as u8), TokenError::Invalid);
    }
    check(&with(b"", 0), TokenError::Invalid);
    // Not what an edge writes: upper case, other bytes, a length that does not match.
    for bad in [&b"WEB"[..], b"w b", b"we\0", b"w\xffb"] {
        check(&with(bad, 3), TokenError::Malformed);
    }
    for len in [0, 2, 4, 32, 33, 255] {
        check(&with(b"web", len), TokenError::Malformed);
    }
    // A length beyond the longest platform, whatever follows.
    check(&with(&[b'a'; 33], 33), TokenError::Malformed);
    // Every bit of `L` and of the platform, flipped one at a time.
    for i in PLATFORM_LEN..HEADER + 3 {
        for bit in 0..8 {
            let mut bytes = good.clone();
            bytes[i] ^= 1 << bit;
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(verify(&[key()], &token, ids.subject(), T0).is_err(), "byte {i} bit {bit}");
        }
    }
}

/// The decision byte an app can read is a coin, whatever the decision: over 4,000
/// tokens of sampled allocations, as many show 0 as 1 (within 5σ), and so do
/// unsampled ones. In clear (format 2) every sampled token showed 1.
#[test]
fn the_decision_an_app_can_read_is_a_coin() {
    for sampled in [true, false] {
        let ones: usize = (0..4_000)
            .filter(|i| {
                let ids = Ids::new(&format!("r{i}"), "home_feed", "A");
                let token = issue(&key(), ids.subject(), Issue { sampled, ..at(T0) });
                let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
                assert_eq!(verify(&[key()], &token, ids.subject(), T0).unwrap().issue.sampled, sampled);
                bytes[DECISION] == 1
            })
            .count();
        assert!(ones.abs_diff(2_000) < 160, "{ones} of 4000 show 1 (sampled: {sampled})");
    }
}

#[test]
fn refuses_what_it_did_not_issue() {
    let ids = Ids::new("req-1", "home_feed", "A");
    let token = issue_for_platform(&key(), ids.subject(), at(T0), Platform::normalise("web"));
    let now = T0 + 1000;
    for other in
        [Ids::new("req-2", "home_feed", "A"), Ids::new("req-1", "other", "A"), Ids::new("req-1", "home_feed", "B")]
    {
        assert_eq!(verify(&[key()], &token, other.subject(), now), Err(TokenError::Invalid));
    }
    // Another edge secret (a forger's, or one retired by a rotation).
    let forger = EdgeKey::new(b"someone-else-0123456789").unwrap();
    let forged = issue(&forger, ids.subject(), at(T0));
    assert_eq!(verify(&[key()], &forged, ids.subject(), now), Err(TokenError::Invalid));
    // Every single-character change of the token is refused.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..token.len() {
        for c in alphabet.chars().step_by(7) {
            let mut t: Vec<char> = token.chars().collect();
            if t[i] == c {
                continue;
            }
            t[i] = c;
            let t: String = t.into_iter().collect();
            assert!(verify(&[key()], &t, ids.subject(), now).is_err(), "{t}");
        }
    }
    for bad in ["", "x", &token[1..], &format!("{token}A"), &token.replace(&token[..4], "====")] {
        assert_eq!(verify(&[key()], bad, ids.subject(), now), Err(TokenError::Malformed), "{bad:?}");
    }
}

/// Tokens of earlier formats still verify, each with its own rule, and their
/// impressions carry no platform: format 1 (issued by an edge that drew the coin from
/// the request id) by that rule, format 2 with the decision in clear, format 3 masked
/// (vectors from the same Python; format 3's sampled and unsampled tokens both have a
/// mask of 1).
#[test]
fn earlier_formats_keep_their_rule() {
    let ids = Ids::new("req-1", "home_feed", "A");
    let v1 = "AesmAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAADgL8s7Y-ah_mbQ4fsvsbBQ";
    let grant = verify(&[key()], v1, ids.subject(), T0).unwrap();
    let sampled = key().sample().sampled("req-1", 0.25);
    assert_eq!((grant.issue, grant.platform), (Issue { sampled, ..at(T0) }, None));
    for (token, sampled) in [
        ("AusmAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAAABQNeMicQRFndNsjsM1NkRaQ", true),
        ("AusmAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAAAA3VPmKB3MumStVFj_rkz5ow", false),
        ("A-smAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAAAAtV4XHnwpVy0mtqopP8fMKA", true),
        ("A-smAQQAAAGatpfoAAAAAAAAAAAHP9AAAAAAAAABwk5hpICMIWThXNnalQR-gA", false),
    ] {
        let grant = verify(&[key()], token, ids.subject(), T0).unwrap();
        assert_eq!((grant.issue, grant.platform), (Issue { sampled, ..at(T0) }, None), "{token}");
        assert_eq!(grant.impression_event(ids.subject(), None, None).platform, None);
        // A format-3 token is not format 4 with a byte less: its shape is its own.
        let mut bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
        bytes[0] = FORMAT;
        assert_eq!(verify(&[key()], &URL_SAFE_NO_PAD.encode(bytes), ids.subject(), T0), Err(TokenError::Malformed));
    }
    // A decision byte other than 0 or 1, under a valid MAC, is not one an edge made.
    let current = URL_SAFE_NO_PAD.decode(issue_for_platform(&key(), ids.subject(), at(T0), Platform::normalise("web")));
    let current = current.unwrap();
    for (format, header) in [(V2_FORMAT, V3_HEADER), (V3_FORMAT, V3_HEADER), (FORMAT, HEADER + 3)] {
        let mut bytes = current[..header].to_vec();
        bytes[0] = format;
        bytes[DECISION] = 2;
        let tag = key().mac(&bytes, ids.subject()).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG]);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(verify(&[key()], &token, ids.subject(), T0), Err(TokenError::Malformed), "format {format}");
    }
    // Another format byte is not a token, in any shape.
    for format in [0, 1, V2_FORMAT, V3_FORMAT, 5, 255] {
        let mut bytes = current.clone();
        bytes[0] = format;
        assert_eq!(verify(&[key()], &URL_SAFE_NO_PAD.encode(bytes), ids.subject(), T0), Err(TokenError::Malformed));
    }
}

#[test]
fn expires() {
    let ids = Ids::new("req-1", "home_feed", "A");
    let token = issue(&key(), ids.subject(), at(T0));
    assert!(verify(&[key()], &token, ids.subject(), T0 + MAX_AGE_MS).is_ok());
    assert_eq!(verify(&[key()], &token, ids.subject(), T0 + MAX_AGE_MS + 1), Err(TokenError::Expired));
    assert!(verify(&[key()], &token, ids.subject(), T0 - MAX_SKEW_MS).is_ok());
    assert_eq!(verify(&[key()], &token, ids.subject(), T0 - MAX_SKEW_MS - 1), Err(TokenError::Expired));
}

#[test]
fn rotation_keeps_the_issuing_keys_sampling() {
    let (old, new) = (key(), EdgeKey::new(b"the-next-edge-secret-0123").unwrap());
    // The impression follows the decision its allocation's edge made under the old key.
    let ids = Ids::new("r1", "home_feed", "A");
    for sampled in [true, false] {
        let token = issue(&old, ids.subject(), Issue { sampled, ..at(T0) });
        let grant = verify(&[new.clone(), old.clone()], &token, ids.subject(), T0).unwrap();
        assert_eq!(grant.issue.sampled, sampled);
    }
    let token = issue(&old, ids.subject(), at(T0));
    assert_eq!(verify(&[new], &token, ids.subject(), T0), Err(TokenError::Invalid));
}

#[test]
fn short_secrets_are_refused() {
    assert_eq!(EdgeKey::new(b"short").unwrap_err(), KeyError(5));
    assert!(EdgeKey::new(&[0u8; MIN_SECRET_LEN]).is_ok());
    assert!(!format!("{:?}", key()).contains("test-edge"));
}

#[test]
fn seen_tokens_refuse_replays_and_stay_bounded() {
    let k = key();
    let grant = |i: u64| {
        let ids = Ids::new(&format!("r{i}"), "home_feed", "A");
        verify(std::slice::from_ref(&k), &issue(&k, ids.subject(), at(T0)), ids.subject(), T0).unwrap()
    };
    let mut seen = SeenTokens::new(3);
    assert!(seen.is_empty());
    assert!(seen.first_use(&grant(1), T0));
    assert!(!seen.first_use(&grant(1), T0 + 1));
    for i in 2..10 {
        assert!(seen.first_use(&grant(i), T0));
    }
    assert_eq!(seen.len(), 3);
    // After expiry everything old is gone.
    assert!(seen.first_use(&grant(20), T0 + MAX_AGE_MS + 1));
    assert_eq!(seen.len(), 1);
}

proptest! {
    #[test]
    fn issued_tokens_verify(
        r in "[A-Za-z0-9_.:-]{1,64}",
        version in any::<u64>(),
        rate in 1e-6f64..=1.0,
        t in 0u64..=u64::MAX / 2,
        age in 0u64..=MAX_AGE_MS,
        sampled in any::<bool>(),
        platform in proptest::option::of("[A-Za-z0-9_-]{1,32}"),
    ) {
        let ids = Ids::new(&r, "p", "c");
        let issue_at = Issue { plan_version: version, sample_rate: rate, issued_at_ms: t, sampled };
        let platform = platform.map(|p| Platform::normalise(&p).unwrap());
        let token = issue_for_platform(&key(), ids.subject(), issue_at, platform);
        let len = platform.map_or(0, |p| p.as_str().len());
        prop_assert_eq!(token.len(), (4 * (HEADER + len + TAG)).div_ceil(3));
        prop_assert!((MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&token.len()));
        let grant = verify(&[key()], &token, ids.subject(), t + age).unwrap();
        prop_assert_eq!((grant.issue, grant.platform), (issue_at, platform));
    }

    #[test]
    fn garbage_never_verifies(token in ".{0,120}") {
        let ids = Ids::new("r", "p", "c");
        prop_assert!(verify(&[key()], &token, ids.subject(), T0).is_err());
    }

    /// Bytes shaped like a format-4 token of this edge's key, with any `L`, any
    /// platform bytes and any length, are refused without a panic.
    #[test]
    fn shaped_garbage_never_verifies(mut bytes in proptest::collection::vec(any::<u8>(), HEADER..=MAX_LEN + 4)) {
        let ids = Ids::new("r", "p", "c");
        bytes[0] = FORMAT;
        bytes[1..5].copy_from_slice(&key().id);
        prop_assert!(verify(&[key()], &URL_SAFE_NO_PAD.encode(&bytes), ids.subject(), T0).is_err());
    }
}
