//! The contract between allot's processes: the names and shapes the edge, the origin,
//! Redis and the archive must agree on, defined once and imported by every crate and
//! every test.
//!
//! - [`keys`]: the Redis key layout (every key of a placement under one hash tag).
//! - [`stream`]: the two streams (`allot:events`, `allot:plans`), their consumer
//!   groups and their entry fields.
//! - [`snapshot`]: the plan log's entry, a published plan with the targets it was made
//!   for.
//! - [`audit`]: an admin change, as the audit trail records it and the archive keeps it.
//!
//! The edge's wire formats proper, the plan in KV and the signed event batch, are core's
//! [`Plan`](crate::Plan) and [`EventBatch`](crate::EventBatch). Nothing here touches
//! Redis: these are names and values, so the edge, which never talks to Redis, can build
//! for wasm32 with them.

pub mod audit;
pub mod keys;
pub mod snapshot;
pub mod stream;

pub use audit::{Action, AuditRecord};
pub use snapshot::{PlanSnapshot, SnapshotCampaign};
