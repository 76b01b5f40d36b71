//! The whole allot system on one machine, for the end-to-end tests (`tests/tests/`) and
//! the demo (`allot-demo`): a [`stack::Stack`] of real processes on free ports, a
//! [`traffic`] generator whose observations are the ground truth, a [`delay`] proxy
//! that can hold the origin's answers to the edge, spread the edge over origin replicas
//! and cut it off, and the fault-injection suite's [`ledger`] (which events must exist)
//! and [`faults`] (what is injected, and the table of what it did); the whole path under
//! load ([`fullpath`]: the open-loop traffic's [`accounting`], the processes' [`usage`],
//! the tables it [`render`]s). The servers and helpers themselves are the test kit's
//! (`allot-testkit`).

pub mod accounting;
pub mod delay;
pub mod edge_host;
pub mod faults;
pub mod fullpath;
pub mod ledger;
pub mod render;
pub mod stack;
pub mod traffic;
pub mod usage;
