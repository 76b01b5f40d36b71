//! allot's archive writer: sampled events, published plans and admin changes from their
//! Redis streams to S3 as Parquet.
//!
//! The origin's ingest appends every verified event batch to the stream `allot:events`,
//! its control loop a [`PlanSnapshot`](allot_core::contract::PlanSnapshot) of every plan it publishes to `allot:plans`, and
//! its admin API every change of targets to the audit feed `allot:audit`.
//! The [`archiver`] is a consumer group on each (on the event stream the aggregator is
//! the other): it buffers entries, writes one zstd Parquet object per hour partition, and
//! acknowledges the entries only once S3 has them. Object keys are derived from stream
//! ids ([`partition`]), so a retried flush overwrites the same objects instead of
//! duplicating rows. The three tables, `events`, `plans` and `audit`, are the
//! [`dataset`]s.
//!
//! The analysts' reports over these tables are another product, `allot-report`; the
//! origin embeds this crate, and so links no query engine.
//!
//! This crate is a shell like the origin: everything that decides something about an
//! event (its weight, its validity) comes from `allot-core`.

pub mod archiver;
pub mod audit_rows;
mod claim;
pub mod config;
pub mod dataset;
pub mod error;
mod lane;
pub mod metrics;
pub mod parquet_rows;
pub mod partition;
pub mod plan_rows;
pub mod store;
pub mod supervise;

pub use archiver::{Archiver, Connect};
pub use config::{ArchiveConfig, AthenaConfig};
pub use error::ArchiveError;
pub use metrics::{ArchiverMetrics, DatasetMetrics};
pub use supervise::LaneStates;
