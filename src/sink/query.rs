//! What `/api/events` and `/api/stats` ask of a sink that can be searched,
//! and what it answers. The embedded store and Elasticsearch answer the same
//! questions with the same shapes.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::event::Op;

/// Most events one page returns.
pub const MAX_LIMIT: usize = 1000;

/// Which events to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub database: Option<String>,
    pub table: Option<String>,
    pub op: Option<Op>,
    /// Full-text search over the row values (and the DDL statement).
    pub q: Option<String>,
    /// Commit time bounds, Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// 1..=MAX_LIMIT.
    pub limit: usize,
    /// Opaque: the `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of events.
#[derive(Debug, Serialize)]
pub struct EventPage {
    /// Each the stored document (the Elasticsearch document shape) with its `id` added.
    pub events: Vec<Box<RawValue>>,
    /// Present when more events match; pass it back as `cursor`.
    pub next_cursor: Option<String>,
}

/// Counts over every stored event.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub total: u64,
    /// Keyed by `insert`, `update`, `delete`, `ddl`.
    pub by_op: BTreeMap<String, u64>,
    /// Keyed by `database.table`.
    pub by_table: BTreeMap<String, u64>,
    /// Events per second by table over the last minutes, oldest bucket first.
    pub rate: Vec<RateSeries>,
    /// Width of one rate bucket, seconds.
    pub bucket_seconds: u64,
}

/// Events per second of one table, one value per bucket.
#[derive(Debug, Serialize)]
pub struct RateSeries {
    /// `database.table`.
    pub table: String,
    /// `(bucket start in Unix milliseconds, events per second)`.
    pub points: Vec<(i64, f64)>,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("invalid {param}: {reason}")]
    Invalid { param: &'static str, reason: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
}
