//! cdc-monitor: database changes from TiCDC canal-json (Kafka) into
//! Elasticsearch and Prometheus, at least once and idempotent.
#![deny(clippy::print_stdout)]

pub mod app;
pub mod canal;
pub mod cli;
pub mod config;
pub mod event;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod quickstart;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod ticdc;
