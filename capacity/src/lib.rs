//! allot's unit costs, measured on real processes, for the capacity model
//! (`docs/capacity.md`, computed by `scripts/capacity.py` from
//! `docs/capacity/unit-costs.json`).
//!
//! - [`run`]: one measurement run (the origin binary twice — data path and control
//!   replica —, `redis-server`, `s3s-fs`, a KV bulk endpoint) and its phases.
//! - [`edge`]: the placements' targets, the attribute profiles, and the simulated edge
//!   that decides sampled requests under the plans in KV with core's own calls.
//! - [`kv`]: the KV bulk endpoint, recording every write.
//! - [`probe`]: Redis command counters, memory per key class, drains, process CPU.
//! - [`costs`]: the figures of a run, the file's format, and the bounds a run must fall
//!   within to be believed.
//!
//! `cargo test -p allot-capacity` runs a short run and checks its figures are sane;
//! the full measurement that writes the file is `scripts/measure-unit-costs.sh`.

pub mod costs;
pub mod edge;
pub mod kv;
pub mod probe;
pub mod run;
