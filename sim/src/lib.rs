//! The accuracy simulator: allot's control loop at production traffic, in seconds.
//!
//! It runs the production decision path (choosing, sampling on request ids, the edge's
//! events, the aggregator's fold into window counts, the control loop's round) against
//! synthetic traffic with a known truth, and compares allot's strategy with simpler
//! ones. `docs/accuracy.md` is its output.

pub mod edge;
pub mod engine;
pub mod origin;
pub mod report;
pub mod requests;
pub mod scenario;
pub mod strategy;
