//! Consumer-aware trimming: what may be cut from a stream that consumer groups read.
//!
//! `XADD MAXLEN ~` cuts by length, whatever the groups have read: a consumer that falls
//! behind (the archiver while S3 is down) silently loses the entries it had not read
//! yet. Instead the stream is trimmed with `XTRIM MINID`, below an id that every group
//! has both delivered and acknowledged: for each group, its oldest pending entry or,
//! with none pending, the entry after its last delivered one; the smallest of those
//! over the groups. Redis 7.0 has no `XADD … ACKED` to do this by itself.
//!
//! A length cap stays, far above any normal lag, only as a memory guard: if the stream
//! still holds more than that after the safe trim, it is cut to the cap, and every entry
//! cut is one that some group had not read or acknowledged: a loss, which the caller
//! counts and logs. The decisions are pure functions of the group states, unit-tested
//! here; the Redis calls are the application's (the origin's trimmer).
//!
//! A group that is expected but does not exist yet (its consumers have not started) will
//! read the stream from its start when it is created, so nothing is trimmed by id until
//! it exists.

use std::fmt;
use std::str::FromStr;

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// The smallest id after this one.
    pub fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self { ms: self.ms.saturating_add(1), seq: 0 },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Not a complete stream entry id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream entry id: {0:?}")]
pub struct BadId(pub String);

impl FromStr for EntryId {
    type Err = BadId;

    fn from_str(s: &str) -> Result<Self, BadId> {
        let bad = || BadId(s.to_string());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

/// What a trim needs to know of one consumer group (`XINFO GROUPS`, `XPENDING` summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub name: String,
    /// The last entry delivered to the group's consumers (`last-delivered-id`).
    pub last_delivered: EntryId,
    /// The group's oldest delivered but unacknowledged entry, if any.
    pub oldest_pending: Option<EntryId>,
}

impl GroupState {
    /// Every entry below this id has been delivered to the group and acknowledged.
    ///
    /// The two facts may be read at slightly different times (the pending summary after
    /// the group list); taking the smaller of the two bounds keeps it safe either way:
    /// an entry at or below `last_delivered` that is no longer pending was acknowledged.
    pub fn done_below(&self) -> EntryId {
        let after_delivered = self.last_delivered.next();
        self.oldest_pending.map_or(after_delivered, |p| p.min(after_delivered))
    }
}

/// Why nothing can be trimmed by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// No group reads the stream: no id is known to be read.
    NoGroups,
    /// These expected groups do not exist yet: they will read from the start.
    Missing(Vec<String>),
}

/// The id below which entries may be trimmed (`XTRIM stream MINID = id`): the smallest
/// [`GroupState::done_below`] over every group, once all of `required` exist.
pub fn safe_min_id(groups: &[GroupState], required: &[&str]) -> Result<EntryId, Hold> {
    let missing: Vec<String> =
        required.iter().filter(|r| !groups.iter().any(|g| g.name == **r)).map(|r| r.to_string()).collect();
    if !missing.is_empty() {
        return Err(Hold::Missing(missing));
    }
    groups.iter().map(GroupState::done_below).min().ok_or(Hold::NoGroups)
}

/// The id below which entries are older than `retain_ms` at `now_ms`: acknowledged
/// entries younger than that are kept (for inspection and replays), unless the stream is
/// over its cap, when they go before any unread entry does.
pub fn retention_floor(now_ms: u64, retain_ms: u64) -> EntryId {
    EntryId { ms: now_ms.saturating_sub(retain_ms), seq: 0 }
}

/// The id to trim below first: the safe one, but no entry younger than the retention.
pub fn retained_min_id(safe: EntryId, floor: EntryId) -> EntryId {
    safe.min(floor)
}

/// The memory guard, after the safe trim: a stream of `len` entries above `cap` is cut
/// to `cap` (`XTRIM stream MAXLEN = cap`); every entry it cuts was unread or
/// unacknowledged by some group (the safe trim took all the rest), so the count it
/// returns is a loss. `None`: within the cap.
pub fn over_cap(len: u64, cap: u64) -> Option<Cut> {
    (len > cap).then(|| Cut { max_len: cap, unread: len - cap })
}

/// A cut by length that loses entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub max_len: u64,
    /// The entries it is expected to cut (`XTRIM` replies the exact number).
    pub unread: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EntryId {
        s.parse().unwrap()
    }

    fn group(name: &str, delivered: &str, pending: Option<&str>) -> GroupState {
        GroupState { name: name.into(), last_delivered: id(delivered), oldest_pending: pending.map(id) }
    }

    #[test]
    fn ids_parse_order_and_step() {
        assert_eq!(id("5-3"), EntryId { ms: 5, seq: 3 });
        assert!(id("5-3") < id("5-10") && id("5-10") < id("6-0"));
        assert_eq!(id("5-3").next(), id("5-4"));
        assert_eq!(EntryId { ms: 5, seq: u64::MAX }.next(), id("6-0"));
        assert_eq!(id("7-1").to_string(), "7-1");
        for bad in ["", "5", "5-", "-1", "a-b", "5-1-2"] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_group_with_nothing_pending_is_done_up_to_its_last_delivered_entry() {
        assert_eq!(group("g", "10-2", None).done_below(), id("10-3"));
        assert_eq!(group("g", "0-0", None).done_below(), id("0-1"), "a new group has read nothing");
    }

    #[test]
    fn a_pending_entry_is_kept() {
        assert_eq!(group("g", "10-2", Some("4-0")).done_below(), id("4-0"));
        // A summary read after the group list may show entries delivered since: the last
        // delivered id read first still bounds it.
        assert_eq!(group("g", "10-2", Some("12-0")).done_below(), id("10-3"));
    }

    #[test]
    fn the_slowest_group_decides() {
        let groups = [group("aggregator", "100-0", None), group("archiver", "40-0", Some("30-5"))];
        assert_eq!(safe_min_id(&groups, &["aggregator", "archiver"]), Ok(id("30-5")));
        // An archiver that has read everything but stored nothing (S3 down) holds it all.
        let groups = [group("aggregator", "100-0", None), group("archiver", "100-0", Some("1-0"))];
        assert_eq!(safe_min_id(&groups, &["aggregator"]), Ok(id("1-0")));
        // A group nobody requires still counts: another replica's archiver reads it.
        let groups = [group("aggregator", "100-0", None), group("archiver", "3-0", None)];
        assert_eq!(safe_min_id(&groups, &["aggregator"]), Ok(id("3-1")));
    }

    #[test]
    fn nothing_is_trimmed_by_id_until_every_required_group_exists() {
        let groups = [group("aggregator", "100-0", None)];
        assert_eq!(safe_min_id(&groups, &["aggregator", "archiver"]), Err(Hold::Missing(vec!["archiver".into()])));
        assert_eq!(safe_min_id(&[], &[]), Err(Hold::NoGroups));
    }

    #[test]
    fn acknowledged_entries_are_retained_for_a_while() {
        let floor = retention_floor(100_000, 60_000);
        assert_eq!(floor, id("40000-0"));
        assert_eq!(retained_min_id(id("90000-0"), floor), floor, "recent acknowledged entries stay");
        assert_eq!(retained_min_id(id("20000-0"), floor), id("20000-0"), "unread entries stay whatever their age");
        assert_eq!(retention_floor(10, 60_000), id("0-0"));
    }

    #[test]
    fn the_cap_cuts_only_beyond_it_and_counts_the_loss() {
        assert_eq!(over_cap(1000, 1000), None);
        assert_eq!(over_cap(10, 1000), None);
        assert_eq!(over_cap(1500, 1000), Some(Cut { max_len: 1000, unread: 500 }));
    }
}
