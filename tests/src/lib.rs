//! The whole allot system on one machine, for the end-to-end tests (`tests/tests/`) and
//! the demo (`allot-demo`): a [`stack::Stack`] of real processes on free ports, and a
//! [`traffic`] generator whose observations are the ground truth, and a [`delay`] proxy
//! that can hold the origin's answers to the edge. The servers and
//! helpers themselves are the test kit's (`allot-testkit`).

pub mod delay;
pub mod stack;
pub mod traffic;
