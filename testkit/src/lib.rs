//! allot's test kit: what every crate's tests, the end-to-end stack and the benches need
//! to run the system for real, defined once.
//!
//! - [`process`]: child processes killed on drop, free ports, where binaries and tools are.
//! - [`poll`]: waiting for an outcome (the one polling loop), or for a phase of the
//!   period (`into_period`).
//! - [`redis`], [`s3`], [`moto`]: throwaway servers on free ports.
//! - [`origin`]: the origin's test configuration, its binary, its HTTP API, and (feature
//!   `in-process`) the origin as a library.
//! - [`scenario`]: the demo's placements and traffic mix.
//! - [`events`]: events, event batches and event-stream entries.
//! - [`duckdb`]: reading the archive's Parquet back with DuckDB.
//!
//! Servers panic when they cannot start, naming the install script: a test cannot run
//! without them, and the panic is the clearest report.

pub mod duckdb;
pub mod events;
pub mod moto;
pub mod origin;
pub mod poll;
pub mod process;
pub mod redis;
pub mod s3;
pub mod scenario;
