//! Integration tests: one crate, one file per scenario, shared harness.

mod harness;

mod architecture;
mod binlog;
mod changefeed;
mod cli;
mod dashboard;
mod doctor;
mod es_faults;
mod es_nodes;
mod es_routing;
mod faults;
mod fidelity;
mod flow;
mod masking;
mod ports;
mod quickstart;
mod restart;
mod safe_writes;
mod security;
mod snapshot;
mod state;
mod store;
mod tls;
