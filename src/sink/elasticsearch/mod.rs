//! Elasticsearch sink on the Bulk API.
//!
//! `bulk` encodes documents, `client` speaks HTTP, `response` sorts a bulk
//! reply into done, retry and rejected items, and `retry` paces attempts.

pub mod bulk;
pub mod client;
pub mod response;
pub mod retry;
pub mod search;

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{EsConfig, SinkConfig};
use crate::event::{ChangeEvent, Checkpoint};
use crate::metrics::Metrics;
use crate::sink::elasticsearch::client::EsClient;
use crate::sink::elasticsearch::response::{classify, ItemOutcome};
use crate::sink::elasticsearch::retry::Backoff;
use crate::sink::{Rejected, Sink, SinkError};

/// Writes change events to one index.
pub struct ElasticsearchSink {
    client: EsClient,
    index: String,
    backoff: Backoff,
    metrics: Metrics,
}

impl ElasticsearchSink {
    /// Builds the HTTP client; no request is made yet.
    pub fn new(es: &EsConfig, sink: &SinkConfig, metrics: Metrics) -> Result<Self, SinkError> {
        Ok(ElasticsearchSink {
            client: EsClient::new(es)?,
            index: es.index.clone(),
            backoff: Backoff::new(sink.retry_initial_backoff, sink.retry_max_backoff),
            metrics,
        })
    }

    async fn pause(&self, attempt: u32, abort: &CancellationToken) -> Result<(), SinkError> {
        tokio::select! {
            _ = tokio::time::sleep(self.backoff.delay(attempt)) => Ok(()),
            _ = abort.cancelled() => Err(SinkError::Aborted),
        }
    }
}

impl Sink for ElasticsearchSink {
    async fn prepare(&self) -> Result<(), SinkError> {
        // Elasticsearch may still be starting: wait for it like for any
        // outage; the caller races this with shutdown.
        let abort = CancellationToken::new();
        let mut attempt = 0;
        loop {
            match self.client.ensure_template(&self.index).await {
                Ok(created) => {
                    if created {
                        tracing::info!(index = %self.index, "index template installed");
                    }
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    warn!(index = %self.index, attempt, error = %e, "cannot install index template yet");
                    attempt = (attempt + 1).min(16);
                    self.pause(attempt, &abort).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write(
        &self,
        events: &[ChangeEvent],
        _checkpoints: &[Checkpoint],
        abort: &CancellationToken,
    ) -> Result<Vec<Rejected>, SinkError> {
        let ingested_at = bulk::now_rfc3339();
        // Indexes into `events` still to be written; shrinks to the failed
        // items after a partial failure, so only those are sent again.
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut rejected = Vec::new();
        let mut attempt = 0u32;
        let mut body = Vec::with_capacity(events.len() * 512);
        while !pending.is_empty() {
            body.clear();
            for &i in &pending {
                bulk::encode(&mut body, &self.index, &events[i], &ingested_at);
            }
            let started = Instant::now();
            let result = self.client.bulk(std::mem::take(&mut body)).await;
            let elapsed = started.elapsed().as_secs_f64();
            let outcome = match result {
                Err(e) => {
                    let (label, reason) = match &e {
                        SinkError::Status { status: 429, .. } => ("rejected", "too_many_requests"),
                        SinkError::Status { status, .. } if *status >= 500 => {
                            ("server_error", "server_error")
                        }
                        SinkError::Status { .. } => ("error", "http_status"),
                        _ => ("connection_error", "connection"),
                    };
                    self.metrics.bulk_requests.with_label_values(&[label]).inc();
                    self.metrics
                        .bulk_duration
                        .with_label_values(&[label])
                        .observe(elapsed);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    attempt += 1;
                    self.metrics.sink_retry(
                        "elasticsearch",
                        reason,
                        pending.len(),
                        attempt,
                        &e.to_string(),
                    );
                    self.pause(attempt, abort).await?;
                    continue;
                }
                Ok(response) => response,
            };
            let items = classify(&outcome, pending.len()).map_err(SinkError::Response)?;
            let mut retry = Vec::new();
            let mut retry_reason = "";
            for (&i, item) in pending.iter().zip(items) {
                match item {
                    ItemOutcome::Stored | ItemOutcome::Duplicate => {}
                    ItemOutcome::Retry(reason) => {
                        retry_reason = reason;
                        retry.push(i);
                    }
                    ItemOutcome::Rejected(reason) => rejected.push(Rejected { index: i, reason }),
                }
            }
            let label = if retry.is_empty() && rejected.is_empty() {
                "ok"
            } else {
                "partial"
            };
            self.metrics.bulk_requests.with_label_values(&[label]).inc();
            self.metrics
                .bulk_duration
                .with_label_values(&[label])
                .observe(elapsed);
            debug!(
                items = pending.len(),
                retry = retry.len(),
                elapsed,
                "bulk request done"
            );
            if !retry.is_empty() {
                attempt += 1;
                self.metrics.sink_retry(
                    "elasticsearch",
                    retry_reason,
                    retry.len(),
                    attempt,
                    "some bulk items failed",
                );
                self.pause(attempt, abort).await?;
            }
            pending = retry;
        }
        Ok(rejected)
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.client.ping().await
    }
}
