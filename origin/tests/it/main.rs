//! The origin's integration tests, one binary: origins on free ports, in this process
//! (`TestApp`) or as the real binary (`OriginProcess`), against a real `redis-server`,
//! all from the test kit.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod admin;
mod audit;
mod check_config;
mod cluster;
mod console;
mod contract;
mod control;
mod crash;
mod feasibility;
mod fencing;
mod forged_state;
mod history;
mod hostile;
mod impressions;
mod impressions_late;
mod ingest;
mod lag;
mod learning;
mod mix;
mod ops;
mod plan_log;
mod platforms;
mod publish;
mod retry;
mod samples;
mod server;
mod shards;
mod stream;
