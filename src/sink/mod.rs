//! Where events are stored.
//!
//! Lifecycle of a `Sink`: `prepare` once before the first write (install
//! templates, create tables); then `write` for each batch, from up to
//! `sink.concurrency` tasks at once; `check` at any time for readiness.
//! `write` retries transient failures itself, with backoff, until it succeeds
//! or `abort` fires; it reports the events the sink refused for good so the
//! pipeline can dead-letter them. Only what `write` returned `Ok` for is
//! acknowledged upstream.

pub mod document;
pub mod elasticsearch;
pub mod kafka;
pub mod query;
pub mod sqlite;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, StoredCheckpoints};
use crate::config::{Config, SinkConfig};
use crate::event::ChangeEvent;
use crate::metrics::Metrics;
use crate::tls::error_chain;
use query::{EventFilter, EventPage, QueryError, Stats};
use state::{RowKey, RowState};

/// An event the sink refused for good (mapping or parsing error), by its index in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

/// Why a sink call failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    // With its causes: reqwest's own text ("error sending request") hides
    // why, e.g. a refused certificate.
    #[error("request failed: {}", error_chain(.0))]
    Http(#[from] reqwest::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected response: {0}")]
    Response(String),
    #[error("invalid sink configuration: {0}")]
    Config(String),
    #[error("gave up: shutting down")]
    Aborted,
    /// Another instance took over the writes (a newer producer with the
    /// same transactional id): nothing of this batch was stored.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl SinkError {
    /// A short label for metrics (`cdc_sink_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Http(_) => "connection",
            SinkError::Status { .. } => "http_status",
            SinkError::Response(_) => "response",
            SinkError::Config(_) => "permanent",
            SinkError::Aborted => "aborted",
            SinkError::Fenced(_) => "fenced",
        }
    }

    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Http(_) | SinkError::Response(_) => true,
            // 429 and 5xx are transient; 401/403/404 usually mean a fix is being
            // deployed, and dropping data is worse than waiting for it.
            SinkError::Status { status, .. } => {
                *status == 429 || *status >= 500 || matches!(status, 401 | 403 | 404 | 408)
            }
            SinkError::Config(_) | SinkError::Aborted | SinkError::Fenced(_) => false,
        }
    }
}

/// What one `Sink::write` stores.
#[derive(Debug, Clone, Copy)]
pub struct WriteBatch<'a> {
    pub events: &'a [ChangeEvent],
    /// The last resume point of each stream in the batch (for sinks that keep them).
    pub checkpoints: &'a [Checkpoint],
}

impl<'a> WriteBatch<'a> {
    /// Events without checkpoints.
    pub fn events(events: &'a [ChangeEvent]) -> WriteBatch<'a> {
        WriteBatch {
            events,
            checkpoints: &[],
        }
    }
}

/// `Sink::write`'s answer: the events refused for good, or why nothing was stored.
pub type Written<'a> = BoxFuture<'a, Result<Vec<Rejected>, SinkError>>;

/// `Sink::state_page`'s answer: `(key values, state)` of each row, and the next cursor.
pub type StatePage = (Vec<(String, RowState)>, Option<String>);

/// `Sink::state_page`'s question: up to `limit` live rows of
/// `database.table` after `cursor` (the previous page's next cursor).
#[derive(Debug, Clone)]
pub struct StatePageRequest {
    pub database: String,
    pub table: String,
    pub cursor: Option<String>,
    pub limit: usize,
}

/// A search's answer (`Sink::events`, `Sink::stats`).
pub type Answer<'a, T> = BoxFuture<'a, Result<T, QueryError>>;

/// A destination for change events.
pub trait Sink: Send + Sync + 'static {
    /// The sink's name in metrics, logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// Most writes in flight at once. A sink that keeps checkpoints or
    /// per-row order answers 1: batches then reach it one at a time, in order.
    fn concurrency(&self) -> usize;

    /// Prepares the destination; called once before any write.
    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Stores the batch's events; returns the ones refused for good. A sink
    /// that keeps source positions stores its checkpoints in the same transaction.
    fn write<'a>(&'a self, batch: WriteBatch<'a>, abort: &'a CancellationToken) -> Written<'a>;

    /// Succeeds when the destination is reachable.
    fn check(&self) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Reads back the checkpoints `write` stored; `None` when the sink keeps
    /// none (the source keeps its own position then).
    fn stored_checkpoints(self: Arc<Self>) -> Option<StoredCheckpoints> {
        None
    }

    /// Background upkeep (retention) until `stop` fires.
    fn maintain(self: Arc<Self>, stop: CancellationToken) -> BoxFuture<'static, ()> {
        drop(stop);
        Box::pin(async {})
    }

    /// True when `events` and `stats` answer (`/api/*`).
    fn searchable(&self) -> bool {
        false
    }

    /// One page of stored events matching `filter`, newest first.
    fn events<'a>(&'a self, filter: &'a EventFilter) -> Answer<'a, EventPage> {
        let _ = filter;
        Box::pin(async {
            Err(QueryError::Unavailable(
                "this sink cannot be searched".into(),
            ))
        })
    }

    /// The current state of one row (a tombstone once deleted, where the
    /// sink keeps them); `None` when no change of it is stored.
    fn row<'a>(&'a self, key: &'a RowKey) -> Answer<'a, Option<RowState>> {
        let _ = key;
        Box::pin(async {
            Err(QueryError::Unavailable(
                "this sink keeps no row state".into(),
            ))
        })
    }

    /// One page of a table's live rows (no tombstones), each with its key
    /// (`RowKey::values`), at most `limit`, after the `cursor` of the page
    /// before; the next page's cursor, `None` after the last. For
    /// `reconcile`, which reads a table's whole state.
    fn state_page(&self, page: StatePageRequest) -> Answer<'_, StatePage> {
        let _ = page;
        Box::pin(async {
            Err(QueryError::Unavailable(
                "this sink keeps no row state".into(),
            ))
        })
    }

    /// The stored events of one row, oldest first (by version), at most `limit`.
    fn row_history<'a>(&'a self, key: &'a RowKey, limit: usize) -> Answer<'a, EventPage> {
        let _ = (key, limit);
        Box::pin(async {
            Err(QueryError::Unavailable(
                "this sink cannot be searched".into(),
            ))
        })
    }

    /// Counts over the stored events and their rate over `window`.
    fn stats(&self, window: Duration, bucket: Duration) -> Answer<'_, Stats> {
        let _ = (window, bucket);
        Box::pin(async {
            Err(QueryError::Unavailable(
                "this sink cannot be searched".into(),
            ))
        })
    }
}

/// The configured sink. Adding a sink: its module, its `SinkConfig`
/// variant, and one arm here.
pub fn build(cfg: &Config, metrics: &Metrics) -> Result<Arc<dyn Sink>, SinkError> {
    Ok(match &cfg.sink {
        SinkConfig::Elasticsearch(es) => Arc::new(elasticsearch::ElasticsearchSink::new(
            es,
            &cfg.pipeline,
            metrics.clone(),
        )?),
        SinkConfig::Sqlite(store) => Arc::new(sqlite::SqliteSink::open(
            &cfg.data_dir,
            store,
            metrics.clone(),
        )?),
        SinkConfig::Kafka { topic } => Arc::new(kafka::KafkaSink::new(
            &cfg.kafka,
            topic,
            // One capturer of the group writes at a time (binlog HA): its
            // transactions fence the one it took over from.
            cfg.binlog_ha()
                .then(|| kafka::transactional_id(&cfg.kafka.group_id)),
            &cfg.pipeline,
            metrics.clone(),
        )?),
    })
}
