//! Integration tests: one crate, one file per scenario, shared harness.

mod harness;

mod changefeed;
mod faults;
mod flow;
