//! A consumer group's lag: entries of the stream it has not acknowledged yet.
//!
//! Redis reports a group's `lag` (entries not yet delivered) only while it can count it
//! exactly; after entries are deleted or trimmed from the middle of the stream it replies
//! nil. Reading nil as 0 shows a lagging consumer as caught up, exactly when something
//! has gone wrong. So without Redis's count, the lag is bounded from what is known: the
//! entries added to the stream since the group's `entries-read` counter (which counts
//! deleted entries too, so it is an upper bound) and, at worst, the stream's length.

/// Entries a group has not acknowledged: delivered but pending, plus undelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Redis counted the undelivered entries.
    Exact(u64),
    /// Redis could not count them: no more than this.
    AtMost(u64),
}

impl Lag {
    /// The number to report: exact, or the bound.
    pub fn entries(self) -> u64 {
        match self {
            Self::Exact(n) | Self::AtMost(n) => n,
        }
    }
}

/// What is known of a group and its stream (`XINFO GROUPS`, `XINFO STREAM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagFacts {
    /// The group's `lag`, nil when Redis cannot count it.
    pub lag: Option<u64>,
    /// The group's pending entries.
    pub pending: u64,
    /// The group's `entries-read`, nil when unknown.
    pub entries_read: Option<u64>,
    /// The stream's `entries-added`.
    pub entries_added: u64,
    /// The stream's length.
    pub length: u64,
}

/// The group's lag from what Redis reported.
pub fn group_lag(f: LagFacts) -> Lag {
    if let Some(lag) = f.lag {
        return Lag::Exact(lag + f.pending);
    }
    let undelivered = match f.entries_read {
        Some(read) => f.entries_added.saturating_sub(read).min(f.length),
        None => f.length,
    };
    Lag::AtMost(undelivered + f.pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_counts_are_taken_as_they_are() {
        let f = LagFacts { lag: Some(7), pending: 3, entries_read: Some(90), entries_added: 100, length: 50 };
        assert_eq!(group_lag(f), Lag::Exact(10));
        let caught_up = LagFacts { lag: Some(0), ..LagFacts::default() };
        assert_eq!(group_lag(caught_up).entries(), 0);
    }

    #[test]
    fn an_unknown_lag_is_bounded_never_zero() {
        // Entries deleted in the middle: Redis says nil; 40 added since the group read.
        let f = LagFacts { lag: None, pending: 5, entries_read: Some(60), entries_added: 100, length: 80 };
        assert_eq!(group_lag(f), Lag::AtMost(45));
        // Fewer entries left than the counters say: the length bounds it.
        let f = LagFacts { lag: None, pending: 0, entries_read: Some(10), entries_added: 100, length: 20 };
        assert_eq!(group_lag(f), Lag::AtMost(20));
        // Nothing known about the group's reads: the whole stream may be unread.
        let f = LagFacts { lag: None, pending: 2, entries_read: None, entries_added: 100, length: 30 };
        assert_eq!(group_lag(f), Lag::AtMost(32));
        assert_ne!(group_lag(f).entries(), 0);
    }
}
