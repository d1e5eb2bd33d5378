//! Publishes changes to Kafka as canal-json, the way TiCDC does, so that the
//! consumer (or any canal-json reader) takes them unchanged.
//!
//! Each message is keyed by table and primary key, so one row's changes land
//! on one partition in order; the producer is idempotent and a batch counts
//! as written only once the broker acknowledged every message of it (acks=all).
//! Batches reach this sink one at a time, so order holds across batches too.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backoff::Backoff;
use crate::clock::now_millis;
use crate::config::{KafkaConfig, PipelineConfig};
use crate::event::{ChangeEvent, Op};
use crate::kafka_client::refused_for_good;
use crate::kafka_client::{client_config, LogContext};
use crate::metrics::Metrics;
use crate::sink::{Rejected, Sink, SinkError, WriteBatch, Written};

/// The canal-json producer.
pub struct KafkaSink {
    producer: FutureProducer<LogContext>,
    topic: String,
    backoff: Backoff,
    metrics: Metrics,
}

/// The message key: one row's changes share it (and so a partition).
pub fn key(e: &ChangeEvent) -> Vec<u8> {
    let mut k = format!("{}.{}", e.database, e.table).into_bytes();
    if e.op != Op::Ddl {
        k.push(b':');
        // Serialising a Row into a Vec cannot fail.
        serde_json::to_writer(&mut k, &e.pk).expect("row serialises");
    }
    k
}

impl KafkaSink {
    /// An idempotent producer for `topic`.
    pub fn new(
        cfg: &KafkaConfig,
        topic: &str,
        pipeline: &PipelineConfig,
        metrics: Metrics,
    ) -> Result<KafkaSink, SinkError> {
        let producer = client_config(cfg)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Java clients' partitioner: the same key maps to the same partition as theirs.
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000")
            .set("message.max.bytes", cfg.message_max_bytes.to_string())
            .create_with_context(LogContext)
            .map_err(|e| SinkError::Config(format!("Kafka producer: {e}")))?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_owned(),
            backoff: Backoff::new(pipeline.retry_initial_backoff, pipeline.retry_max_backoff),
            metrics,
        })
    }

    /// Sends `pending` (indexes into `events`) and returns those that failed.
    async fn send_all(
        &self,
        events: &[ChangeEvent],
        payloads: &[Vec<u8>],
        keys: &[Vec<u8>],
        pending: &[usize],
    ) -> Vec<(usize, KafkaError)> {
        let mut deliveries: VecDeque<(usize, DeliveryFuture)> =
            VecDeque::with_capacity(pending.len());
        let mut failed = Vec::new();
        for &i in pending {
            loop {
                let record = FutureRecord::to(&self.topic)
                    .key(&keys[i][..])
                    .payload(&payloads[i][..])
                    .timestamp(events[i].commit_time_ms);
                match self.producer.send_result(record) {
                    Ok(d) => {
                        deliveries.push_back((i, d));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // Wait for the oldest delivery to make room, keeping order.
                        match deliveries.pop_front() {
                            Some((j, d)) => {
                                if let Some(e) = delivery_error(d.await) {
                                    failed.push((j, e));
                                }
                            }
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => {
                        failed.push((i, e));
                        break;
                    }
                }
            }
        }
        for (i, d) in deliveries {
            if let Some(e) = delivery_error(d.await) {
                failed.push((i, e));
            }
        }
        failed.sort_by_key(|(i, _)| *i);
        failed
    }
}

fn delivery_error(
    r: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Option<KafkaError> {
    match r {
        Ok(Ok(_)) => None,
        Ok(Err((e, _))) => Some(e),
        Err(_) => Some(KafkaError::Canceled),
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn concurrency(&self) -> usize {
        // One row's changes keep their order across batches.
        1
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    fn write<'a>(&'a self, batch: WriteBatch<'a>, abort: &'a CancellationToken) -> Written<'a> {
        let events = batch.events;
        // Every event produced and acknowledged (acks=all), retried until
        // `abort`; what the topic refuses for good is returned.
        Box::pin(async move {
            let now = now_millis();
            let payloads: Vec<Vec<u8>> = events
                .iter()
                .map(|e| {
                    let mut buf = Vec::with_capacity(512);
                    crate::canal::encode::encode(&mut buf, e, now);
                    buf
                })
                .collect();
            let keys: Vec<Vec<u8>> = events.iter().map(key).collect();
            let mut pending: Vec<usize> = (0..events.len()).collect();
            let mut rejected = Vec::new();
            let mut attempt = 0;
            loop {
                let mut failed = tokio::select! {
                    f = self.send_all(events, &payloads, &keys, &pending) => f,
                    _ = abort.cancelled() => return Err(SinkError::Aborted),
                };
                // A message the topic can never take (too large, not authorised)
                // is dead-lettered instead of retried for ever.
                failed.retain(|(i, e)| {
                    if refused_for_good(e) {
                        rejected.push(Rejected {
                            index: *i,
                            reason: format!("the topic refuses this message: {e}"),
                        });
                        return false;
                    }
                    true
                });
                if failed.is_empty() {
                    self.metrics.bulk_requests.with_label_values(&["ok"]).inc();
                    return Ok(rejected);
                }
                attempt += 1;
                let error = failed[0].1.to_string();
                self.metrics
                    .bulk_requests
                    .with_label_values(&["retry"])
                    .inc();
                self.metrics
                    .sink_retry("kafka", "kafka_produce", failed.len(), attempt, &error);
                pending = failed.into_iter().map(|(i, _)| i).collect();
                debug!(topic = %self.topic, pending = pending.len(), "retrying produce");
                tokio::select! {
                    _ = tokio::time::sleep(self.backoff.delay(attempt)) => {}
                    _ = abort.cancelled() => return Err(SinkError::Aborted),
                }
            }
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        // The broker answers for the topic.
        Box::pin(async move {
            let producer = self.producer.clone();
            let topic = self.topic.clone();
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(3))
                    .map(|_| ())
                    .map_err(|e| SinkError::Response(format!("kafka: {e}")))
            })
            .await
            .map_err(|e| SinkError::Response(e.to_string()))?
        })
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Everything acknowledged is already delivered; this only bounds the wait.
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::Row;

    #[test]
    fn key_is_table_and_primary_key() {
        let pk = Row::from_values([("id", json!("7"))]);
        let e = ChangeEvent::row("appdb", "users", Op::Update, pk, Row::default(), None, 0);
        assert_eq!(key(&e), br#"appdb.users:{"id":"7"}"#);
    }
}
