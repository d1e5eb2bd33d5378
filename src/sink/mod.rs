//! Where events are stored.
//!
//! Lifecycle of a `Sink`: `prepare` once before the first write (install
//! templates, create tables); then `write` for each batch, from up to
//! `sink.concurrency` tasks at once; `check` at any time for readiness.
//! `write` retries transient failures itself, with backoff, until it succeeds
//! or `abort` fires; it reports the events the sink refused for good so the
//! pipeline can dead-letter them. Only what `write` returned `Ok` for is
//! acknowledged upstream.

pub mod elasticsearch;
pub mod kafka;
pub mod query;
pub mod sqlite;

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::event::{ChangeEvent, Checkpoint};

/// An event the sink refused for good (mapping or parsing error), by its index in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

/// Why a sink call failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected response: {0}")]
    Response(String),
    #[error("invalid sink configuration: {0}")]
    Config(String),
    #[error("gave up: shutting down")]
    Aborted,
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
            SinkError::Config(_) | SinkError::Aborted => false,
        }
    }
}

/// A destination for change events.
pub trait Sink: Send + Sync + 'static {
    /// Prepares the destination; called once before any write.
    fn prepare(&self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Stores `events`; returns the ones refused for good. A sink that keeps
    /// source positions stores `checkpoints` in the same transaction; batches
    /// reach such a sink one at a time, in order.
    fn write(
        &self,
        events: &[ChangeEvent],
        checkpoints: &[Checkpoint],
        abort: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<Rejected>, SinkError>> + Send;

    /// Succeeds when the destination is reachable.
    fn check(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
}
