//! Tests of the report runner against real servers: the local engine over an archive in a
//! real S3 server, and the Athena API of moto_server (both from the test kit).

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod athena;
mod reports;
