//! End-to-end tests of the archive crate against real servers (see `support`).

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod archiver;
mod claims;
mod infra;
mod support;
