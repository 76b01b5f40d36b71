//! The Redis streams between the origin's ingest, its aggregator, its control loop and the
//! archiver: names, consumer groups and entry fields.
//!
//! An entry's fields are short (`p`, `e`, `r`, `s`) because the event stream holds every
//! sampled batch until both groups have read it: at tens of thousands of entries a second
//! the field names are a measurable share of Redis memory.

/// The event stream: the ingest appends every verified batch; the aggregator and the
/// archiver read it, each in its own consumer group.
pub const EVENTS: &str = "allot:events";
/// The plan log: a [`PlanSnapshot`](super::PlanSnapshot) of every published plan,
/// appended by the control loop and read by the archiver.
pub const PLAN_LOG: &str = "allot:plans";

/// The aggregator's consumer group on [`EVENTS`].
pub const AGGREGATOR_GROUP: &str = "aggregator";
/// The archiver's consumer group, on both streams.
pub const ARCHIVER_GROUP: &str = "archiver";

/// Entry field: the placement every event of the entry belongs to (both streams).
pub const PLACEMENT: &str = "p";
/// Entry field of [`EVENTS`]: the event batch as JSON, the bytes the edge signed when
/// the batch has one placement.
pub const BATCH: &str = "e";
/// Entry field of [`EVENTS`]: when the origin received the batch (UTC milliseconds).
pub const RECEIVED_MS: &str = "r";
/// Entry field of [`PLAN_LOG`]: the snapshot as JSON.
pub const SNAPSHOT: &str = "s";

/// The fields of one [`EVENTS`] entry: `batch` (an [`EventBatch`](crate::EventBatch) as
/// JSON) of `placement`, received at `received_ms`.
pub fn event_entry<'a>(placement: &'a str, batch: &'a [u8], received_ms: &'a str) -> [(&'static str, &'a [u8]); 3] {
    [(PLACEMENT, placement.as_bytes()), (BATCH, batch), (RECEIVED_MS, received_ms.as_bytes())]
}

/// The fields of one [`PLAN_LOG`] entry.
pub fn plan_entry<'a>(placement: &'a str, snapshot_json: &'a str) -> [(&'static str, &'a [u8]); 2] {
    [(PLACEMENT, placement.as_bytes()), (SNAPSHOT, snapshot_json.as_bytes())]
}
