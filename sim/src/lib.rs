//! The accuracy simulator: allot's control loop at production traffic, in seconds.
//!
//! It runs the real core (choosing, sampling, window statistics, controller, planner)
//! against synthetic traffic with a known truth, and compares allot's strategy with
//! simpler ones. `docs/accuracy.md` is its output.

pub mod engine;
pub mod report;
pub mod scenario;
pub mod strategy;
