//! The control loop's shards: which shard a placement is in, and which origin should
//! hold each shard.
//!
//! Placements are spread over a fixed number of logical shards (`control.shards`), each
//! with its own lease, so the rounds run on every origin at once and each placement is
//! still controlled by one origin at a time. Both functions here are pure and keyed by
//! constants, so every origin, every version and every platform computes the same
//! answer: a placement never moves between shards unless the shard count changes, and
//! origins that see the same members agree on who should hold what.

use std::collections::BTreeSet;

use siphasher::sip::SipHasher24;

/// The hash key of [`shard_of`]: fixed, as the mapping must never change.
const SHARD_KEY: [u8; 16] = *b"allot/shard/v1\0\0";
/// The hash key of the rendezvous ranks in [`assign`].
const RANK_KEY: [u8; 16] = *b"allot/rank/v1\0\0\0";

/// The longest member (origin instance) id accepted.
pub const MAX_MEMBER_ID_LEN: usize = 128;

/// The shard of a placement, in `0..shards` (a count of 0 is taken as 1).
pub fn shard_of(placement: &str, shards: u32) -> u32 {
    let h = SipHasher24::new_with_key(&SHARD_KEY).hash(placement.as_bytes());
    (h % u64::from(shards.max(1))) as u32
}

/// Whether `id` can be a member id: 1 to 128 characters of `[A-Za-z0-9._:-]` (what an
/// origin's instance id is made of). Anything else found in the membership is garbage.
pub fn is_member_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MEMBER_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The most shards one of `members` origins takes: `ceil(shards / members)`.
pub fn fair_share(shards: u32, members: usize) -> u32 {
    let m = u32::try_from(members.max(1)).unwrap_or(u32::MAX);
    shards.div_ceil(m)
}

fn rank(shard: u32, member: &str) -> u64 {
    let mut bytes = Vec::with_capacity(4 + member.len());
    bytes.extend_from_slice(&shard.to_le_bytes());
    bytes.extend_from_slice(member.as_bytes());
    SipHasher24::new_with_key(&RANK_KEY).hash(&bytes)
}

/// Who should hold each shard: the index in `members` (sorted and deduplicated here)
/// for every shard in `0..shards`; empty when there are no members.
///
/// Rendezvous hashing with bounded load: every (shard, member) pair has a pseudo-random
/// rank, and pairs are granted best rank first, each shard once, each member at most
/// [`fair_share`] shards (first everyone up to the floor of it, then the remainder). The result depends only on the member set (not on the order
/// members are listed, nor on who computes it), every member gets its fair share give
/// or take one, and when a member joins or leaves, most shards keep their holder: a
/// shard moves only if the member it ranks best changed or ran out of room.
pub fn assign(shards: u32, members: &[&str]) -> Vec<String> {
    let members: Vec<&str> = members.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    if members.is_empty() {
        return Vec::new();
    }
    let n = u32::try_from(members.len()).unwrap_or(u32::MAX);
    let mut pairs: Vec<(u64, u32, usize)> = Vec::with_capacity(shards as usize * members.len());
    for s in 0..shards {
        for (i, m) in members.iter().enumerate() {
            pairs.push((rank(s, m), s, i));
        }
    }
    // Best rank first; ties (never seen in practice) broken by shard, then member.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut holder: Vec<Option<usize>> = vec![None; shards as usize];
    let mut load = vec![0u32; members.len()];
    // Everyone up to the floor of the fair share first, then the remainder up to its
    // ceiling, so loads differ by one at most.
    for cap in [shards / n, fair_share(shards, members.len())] {
        for &(_, s, i) in &pairs {
            let slot = &mut holder[s as usize];
            if slot.is_none() && load[i] < cap {
                *slot = Some(i);
                load[i] += 1;
            }
        }
    }
    holder.into_iter().map(|i| i.map_or_else(String::new, |i| members[i].to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_stays_in_its_shard() {
        // Fixed values: changing them moves placements between shards on upgrade.
        assert_eq!(shard_of("home_feed", 64), shard_of("home_feed", 64));
        assert!(shard_of("home_feed", 64) < 64);
        assert_eq!(shard_of("home_feed", 1), 0);
        assert_eq!(shard_of("home_feed", 0), 0);
        let spread: BTreeSet<u32> = (0..2_000).map(|i| shard_of(&format!("p{i}"), 64)).collect();
        assert_eq!(spread.len(), 64, "2,000 placements reach every shard");
    }

    #[test]
    fn member_ids_are_plain() {
        assert!(is_member_id("origin-1234-0a1b2c3d"));
        assert!(is_member_id("ip-10-0-0-1.ec2.internal-7:9"));
        for bad in ["", " ", "a b", "<script>", "é", &"x".repeat(129)] {
            assert!(!is_member_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_shard_gets_one_holder_within_the_fair_share() {
        for n in 1..=7 {
            let names: Vec<String> = (0..n).map(|i| format!("o{i}")).collect();
            let members: Vec<&str> = names.iter().map(String::as_str).collect();
            let a = assign(64, &members);
            assert_eq!(a.len(), 64);
            for m in &members {
                let held = a.iter().filter(|h| h == m).count() as u32;
                assert!(held <= fair_share(64, n), "{m} holds {held} of 64 among {n}");
                assert!(held >= 64 / n as u32, "{m} holds {held} of 64 among {n}");
            }
            assert!(a.iter().all(|h| members.contains(&h.as_str())));
        }
        assert!(assign(64, &[]).is_empty());
    }

    #[test]
    fn the_assignment_depends_only_on_the_member_set() {
        assert_eq!(assign(64, &["b", "a", "c"]), assign(64, &["c", "a", "b", "a"]));
    }

    #[test]
    fn a_join_or_a_leave_moves_few_shards() {
        let before = assign(64, &["a", "b", "c"]);
        let after = assign(64, &["a", "b", "c", "d"]);
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        let to_d = after.iter().filter(|h| *h == "d").count();
        // Ideally only d's share moves; bounded load may shift a few more.
        assert!(moved <= to_d + 8, "{moved} moved, {to_d} to the newcomer");
        let left = assign(64, &["a", "b"]);
        let kept = before.iter().zip(&left).filter(|(x, y)| x == y && *x != "c").count();
        let had = before.iter().filter(|h| *h != "c").count();
        assert!(kept + 8 >= had, "a and b kept {kept} of their {had}");
    }
}
