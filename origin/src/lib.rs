//! allot's origin: the stateful shell around `allot-core`.
//!
//! The edge decides per request; the origin closes the loop. It verifies and ingests
//! the edge's sampled events into a Redis stream ([`ingest`]), folds them into window
//! counts ([`aggregate`]), runs the controller on them, each placement on one origin at a time under its
//! shard's lease ([`control`], [`shards`]),
//! publishes the resulting plans to KV or to the worker ([`publish`]), and lets managers
//! set targets and read status ([`admin`], [`status`], [`audit`]).
//!
//! Every decision — signature checks, event validation, statistics, the controller, the
//! sample-rate planner — is a call into `allot-core`; this crate only moves bytes between
//! HTTP, Redis and the clock. The binary (`src/main.rs`) parses arguments and calls
//! [`startup::start`].

pub mod admin;
pub mod admission;
pub mod aggregate;
pub mod audit;
pub mod auth;
pub mod cloudflare;
pub mod config;
pub mod conn;
pub mod console;
pub mod control;
pub mod error;
pub mod gauges;
pub mod history;
pub mod ingest;
pub mod inputs;
pub mod lease;
pub mod load;
pub mod metrics;
pub mod openapi;
pub mod pass;
pub mod preview;
pub mod publish;
pub mod redis_check;
pub mod serve;
pub mod shards;
pub mod shed;
pub mod startup;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod trim;

pub use config::Config;
pub use startup::{Running, start};

/// Milliseconds since the Unix epoch, from the system clock (the core never reads it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
