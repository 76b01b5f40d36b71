//! The Redis key layout.
//!
//! Every key of one placement carries the placement as a hash tag (`allot:{home_feed}:…`),
//! so all of them live in one Redis Cluster slot: the aggregator's Lua script touches a
//! window hash and a dedupe marker atomically, and the origin runs unchanged on a
//! cluster. The few global keys (the streams in [`stream`](super::stream), the registry)
//! are single keys and never appear together in one command; the control loop's keys
//! (`{control}`) share one slot.

use crate::PlacementId;

/// The registry of placements with targets: a hash from placement id to its
/// registration stamp, renewed by every `PUT`, so a round that found no targets removes
/// a placement only if nobody registered it since (compare-and-delete).
pub const REGISTRY: &str = "allot:registry";
/// Placements whose targets changed and want a control round now.
pub const DIRTY: &str = "allot:dirty";
/// The epoch counter every shard lease draws from, incremented each time a shard
/// changes hands: one counter, so a placement's fencing record, which refuses epochs
/// older than it has seen, holds whichever shard the placement was in. In the control
/// slot, so one script takes a shard and its epoch together.
pub const LEASE_EPOCH: &str = "allot:{control}:epoch";
/// The control loop's membership: a sorted set of origin instance ids, each scored with
/// when its heartbeat expires (Redis's clock, ms).
pub const MEMBERS: &str = "allot:{control}:members";
/// What each member announced: a hash from instance id to `"<shards> <since_ms>"`, its
/// shard count and when it joined (Redis's clock).
pub const MEMBER_INFO: &str = "allot:{control}:member-info";

/// The lease of control shard `shard`: `"<epoch> <holder>"`, with a TTL. Every control
/// key shares the `{control}` hash tag, so one script syncs them all on a cluster too.
pub fn shard_lease(shard: u32) -> String {
    format!("allot:{{control}}:shard:{shard}")
}
/// Admin changes, one entry per write.
pub const AUDIT: &str = "allot:audit";

/// A received body's memory (replay protection and idempotent retries); `digest` is
/// hex. Its hash tag is the event stream's name, so it lives in the stream's cluster
/// slot: the ingest checks it and appends to the stream in one script, atomically.
pub fn replay(digest: &str) -> String {
    format!("allot:replay:{{{}}}:{digest}", super::stream::EVENTS)
}

/// The lock on consumer name `consumer` of `group` on `stream`: the one process reading
/// under that name holds it (`allot_stream::lock`). Its hash tag is the stream's name.
pub fn consumer_lock(stream: &str, group: &str, consumer: &str) -> String {
    format!("allot:lock:{{{stream}}}:{group}:{consumer}")
}

/// A placement's keys.
#[derive(Debug, Clone)]
pub struct PlacementKeys {
    prefix: String,
}

impl PlacementKeys {
    pub fn new(placement: &PlacementId) -> Self {
        Self::of_raw(placement.as_str())
    }

    /// From a placement id already known to be valid (e.g. read back from the stream).
    pub fn of_raw(placement: &str) -> Self {
        Self { prefix: format!("allot:{{{placement}}}:") }
    }

    /// Targets: a hash with `spec` (JSON), `campaigns` (how many `spec` lists, so a
    /// list of placements never reads a document), `rev`, `updated_at_ms`, `updated_by`.
    pub fn targets(&self) -> String {
        format!("{}targets", self.prefix)
    }

    /// Window counts: a hash of `WindowStats::to_fields()`.
    pub fn window(&self, index: u64) -> String {
        format!("{}w:{index}", self.prefix)
    }

    /// Marks a stream entry as applied to the counts.
    pub fn applied(&self, stream_id: &str) -> String {
        format!("{}applied:{stream_id}", self.prefix)
    }

    /// Marks that the impression of one decision was counted: at most one per decision,
    /// across retries, replays and redelivered stream entries. A decision is its
    /// request id, its time and its ad (all under the token's MAC): apps choose their
    /// request ids and may repeat one, and each request under it is a decision of its
    /// own, with its own allocation counted, so its impression counts too.
    pub fn impression(&self, request_id: &str, event_time_ms: u64, ad: &str) -> String {
        format!("{}imp:{event_time_ms}:{ad}:{request_id}", self.prefix)
    }

    /// The current plan record (plan, decision, targets revision).
    pub fn plan(&self) -> String {
        format!("{}plan", self.prefix)
    }

    /// Published plans, newest first.
    pub fn plans(&self) -> String {
        format!("{}plans", self.prefix)
    }

    /// The control loop's fencing record, a hash: `epoch` (the newest lease epoch that
    /// wrote here), `version` (the last plan version allocated), `saved` (the version of
    /// the stored plan). Writes from an older epoch, and saves that would go back, are
    /// refused in the same script that checks it.
    pub fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }

    /// The placement's window history: one summary per complete window, the entry id
    /// being the window's start (`<start_ms>-1`).
    pub fn window_log(&self) -> String {
        format!("{}windows", self.prefix)
    }

    /// The placement's audit trail, written by the same script as the change it records.
    pub fn audit(&self) -> String {
        format!("{}audit", self.prefix)
    }

    /// The controller's `ControlState`.
    pub fn state(&self) -> String {
        format!("{}state", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keys_share_a_hash_tag() {
        let k = PlacementKeys::new(&PlacementId::parse("home_feed").unwrap());
        assert_eq!(k.targets(), "allot:{home_feed}:targets");
        assert_eq!(k.window(7), "allot:{home_feed}:w:7");
        assert_eq!(k.applied("1-0"), "allot:{home_feed}:applied:1-0");
        assert_eq!(k.impression("r-1", 1700, "A"), "allot:{home_feed}:imp:1700:A:r-1");
        assert_eq!(k.plan(), "allot:{home_feed}:plan");
        assert_eq!(k.plans(), "allot:{home_feed}:plans");
        assert_eq!(k.state(), "allot:{home_feed}:state");
        assert_eq!(k.fence(), "allot:{home_feed}:fence");
        assert_eq!(k.audit(), "allot:{home_feed}:audit");
        assert_eq!(k.window_log(), "allot:{home_feed}:windows");
    }

    #[test]
    fn the_control_keys_share_a_slot() {
        let tag = |k: &str| k.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(t, _)| t.to_string());
        for key in [LEASE_EPOCH, MEMBERS, MEMBER_INFO, &shard_lease(0), &shard_lease(63)] {
            assert_eq!(tag(key).as_deref(), Some("control"), "{key}");
        }
        assert_eq!(shard_lease(7), "allot:{control}:shard:7");
    }

    #[test]
    fn a_consumer_lock_names_stream_group_and_consumer() {
        assert_eq!(consumer_lock("allot:events", "archiver", "a-1"), "allot:lock:{allot:events}:archiver:a-1");
    }

    #[test]
    fn the_replay_memory_shares_the_event_streams_slot() {
        // Redis hashes only the tag, which is the stream's whole name.
        assert_eq!(replay("ab12"), format!("allot:replay:{{{}}}:ab12", super::super::stream::EVENTS));
        assert!(!super::super::stream::EVENTS.contains('{'), "the stream's slot is that of its whole name");
    }
}
