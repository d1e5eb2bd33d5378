//! Integration tests: one crate, one file per scenario, shared harness.

mod harness;

mod architecture;
mod binlog;
mod binlog_ha;
mod changefeed;
mod cli;
mod dashboard;
mod doctor;
mod es_datastream;
mod es_faults;
mod es_nodes;
mod es_routing;
mod es_state;
mod faults;
mod fidelity;
mod flow;
mod masking;
mod ports;
mod quickstart;
mod reconcile;
mod restart;
mod safe_writes;
mod security;
mod snapshot;
mod state;
mod store;
mod store_retention;
mod tls;
