//! End-to-end tests of the archive crate against real servers (the test kit's Redis and
//! S3, read back by DuckDB).

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod archiver;
mod claims;
mod durability;
mod infra;
