//! The analysts' canned reports over allot's Parquet archive.
//!
//! The [`report`]s are plain SQL files (`reports/*.sql`) written in the subset that both
//! Athena (Trino) and the embedded engine (DataFusion) accept; [`athena`] runs them through
//! the Athena API, [`local`] runs them in-process over the archive in S3 or a directory.
//! The tables they read, `events` and `plans`, are the archive writer's datasets
//! (`allot-archive`), which owns their schemas.
//!
//! This is its own crate and binary (`allot-report`) so that the origin, which embeds the
//! archive writer, links no query engine.

pub mod athena;
pub mod cli;
pub mod config;
pub mod error;
#[cfg(feature = "local-engine")]
pub mod local;
pub mod report;
pub mod table;

pub use error::ReportError;
pub use report::{Engine, Format, REPORTS};
