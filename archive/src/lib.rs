//! allot's event archive: sampled events from the Redis stream to S3 as Parquet, and the
//! analysts' canned reports over that archive.
//!
//! The origin's ingest appends every verified event batch to the stream `allot:events`,
//! and its control loop a [`PlanSnapshot`] of every plan it publishes to `allot:plans`.
//! The [`archiver`] is a consumer group on each (on the event stream the aggregator is
//! the other): it buffers entries, writes one zstd Parquet object per hour partition, and
//! acknowledges the entries only once S3 has them. Object keys are derived from stream
//! ids ([`partition`]), so a retried flush overwrites the same objects instead of
//! duplicating rows. The two tables, `events` and `plans`, are the [`dataset`]s.
//!
//! The [`report`]s are plain SQL files (`reports/*.sql`) written in the subset that both
//! Athena (Trino) and the embedded engine (DataFusion) accept; [`athena`] runs them through
//! the Athena API, [`local`] runs them in-process over the archive in S3 or a directory.
//!
//! This crate is a shell like the origin: everything that decides something about an
//! event (its weight, its validity) comes from `allot-core`.

pub mod archiver;
pub mod athena;
mod claim;
pub mod cli;
pub mod config;
pub mod dataset;
pub mod error;
mod lane;
#[cfg(feature = "local-engine")]
pub mod local;
pub mod metrics;
pub mod parquet_rows;
pub mod partition;
pub mod plan_rows;
pub mod report;
pub mod store;
pub mod table;

pub use archiver::{Archiver, Connect};
pub use config::{ArchiveConfig, AthenaConfig, Secret};
pub use error::ArchiveError;
pub use metrics::{ArchiverMetrics, DatasetMetrics};
pub use plan_rows::PlanSnapshot;
pub use report::{Engine, Format, REPORTS};
