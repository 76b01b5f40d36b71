//! The accuracy simulator: allot's control loop in a world that does not cooperate.
//!
//! It runs the production decision path (core's choosing, sampling on request ids,
//! the edge's events and impression tokens, the aggregator's fold into window counts,
//! the control loop's round) against synthetic traffic whose truth is known, over many
//! colos with their own view of the plan and their own clocks, with events that arrive
//! late, twice or never, and with the changes and faults of [`scenarios`].
//! `docs/accuracy.md` is its output.

pub mod changes;
pub mod colo;
pub mod feasible;
pub mod metrics;
pub mod origin;
pub mod report;
pub mod requests;
pub mod scenario;
pub mod scenarios;
pub mod traffic;
pub mod world;
