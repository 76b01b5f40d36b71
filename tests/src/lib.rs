//! The whole allot system on one machine, for the end-to-end tests (`tests/tests/`) and
//! the demo (`allot-demo`): a [`stack::Stack`] of real processes on free ports, and a
//! [`traffic`] generator whose observations are the ground truth.

pub mod process;
pub mod redis_server;
pub mod s3_server;
pub mod stack;
pub mod traffic;
