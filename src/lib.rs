//! cdc-monitor: database changes from TiCDC canal-json (Kafka) into
//! Elasticsearch and Prometheus, at least once and idempotent.
#![deny(clippy::print_stdout)]

pub mod app;
pub mod backoff;
pub mod canal;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod doctor;
pub mod event;
pub mod http;
pub mod index_route;
pub mod kafka_client;
pub mod mask;
pub mod metrics;
pub mod owner_only;
pub mod pipeline;
pub mod quickstart;
pub mod reconcile;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod ticdc;
pub mod tls;
