//! Publishes changes to Kafka as canal-json, the way TiCDC does, so that the
//! consumer (or any canal-json reader) takes them unchanged.
//!
//! Each message is keyed by table and primary key, so one row's changes land
//! on one partition in order; the producer is idempotent and a batch counts
//! as written only once the broker acknowledged every message of it (acks=all).
//! Batches reach this sink one at a time, so order holds across batches too.
//!
//! Under binlog HA the producer is transactional, with one transactional id
//! per capture group: each batch is one transaction, and the elected
//! capturer's first write initialises the id, which aborts whatever an
//! earlier holder left open and fences its producer for good. A capturer
//! that lost its election can then neither commit what it was writing nor
//! write again; consumers reading committed data never see its messages.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    /// The producer's settings, kept to build a new one after fencing.
    settings: ClientConfig,
    /// The producer; under transactions, `None` until this instance first
    /// writes (initialising the id is what fences the previous holder) and
    /// again once fenced.
    producer: Mutex<Option<FutureProducer<LogContext>>>,
    /// Asks the broker for metadata (`check`); under transactions a plain
    /// client's producer, since a transactional one exists only while writing.
    probe: FutureProducer<LogContext>,
    /// The transactional id, when writes are transactions (binlog HA).
    transactional_id: Option<String>,
    topic: String,
    backoff: Backoff,
    metrics: Metrics,
}

/// How long a transaction call (init, commit, abort) may block.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The transactional id of a binlog capture group's Kafka sink.
pub fn transactional_id(group: &str) -> String {
    format!("cdc-monitor-binlog-{group}")
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
    /// An idempotent producer for `topic`; transactional with
    /// `transactional_id` (made ready on the first write).
    pub fn new(
        cfg: &KafkaConfig,
        topic: &str,
        transactional_id: Option<String>,
        pipeline: &PipelineConfig,
        metrics: Metrics,
    ) -> Result<KafkaSink, SinkError> {
        let mut settings = client_config(cfg);
        settings
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Java clients' partitioner: the same key maps to the same partition as theirs.
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000")
            .set("message.max.bytes", cfg.message_max_bytes.to_string());
        let (producer, probe) = match &transactional_id {
            None => {
                let p = create(&settings)?;
                (Some(p.clone()), p)
            }
            Some(id) => {
                settings
                    .set("transactional.id", id)
                    .set("transaction.timeout.ms", "60000");
                // Metadata only: no producer id of its own at the broker.
                (None, create(&client_config(cfg))?)
            }
        };
        let sink = KafkaSink {
            producer: Mutex::new(producer),
            probe,
            settings,
            transactional_id,
            topic: topic.to_owned(),
            backoff: Backoff::new(pipeline.retry_initial_backoff, pipeline.retry_max_backoff),
            metrics,
        };
        Ok(sink)
    }

    fn current(&self) -> Option<FutureProducer<LogContext>> {
        self.producer.lock().ok().and_then(|p| p.clone())
    }

    /// The producer to write with; under transactions, created and its id
    /// initialised first when there is none (retried until `abort`).
    async fn ready(
        &self,
        abort: &CancellationToken,
    ) -> Result<FutureProducer<LogContext>, SinkError> {
        if let Some(p) = self.current() {
            return Ok(p);
        }
        let mut attempt = 0;
        loop {
            let p = create(&self.settings)?;
            let init = p.clone();
            let done = tokio::select! {
                r = tokio::task::spawn_blocking(move || init.init_transactions(TXN_TIMEOUT)) => r,
                _ = abort.cancelled() => return Err(SinkError::Aborted),
            };
            match done.map_err(|e| SinkError::Response(e.to_string()))? {
                Ok(()) => {
                    info!(
                        transactional_id = self.transactional_id.as_deref().unwrap_or_default(),
                        "Kafka sink: transactional id initialised; any earlier holder is fenced"
                    );
                    if let Ok(mut slot) = self.producer.lock() {
                        *slot = Some(p.clone());
                    }
                    return Ok(p);
                }
                Err(e) if is_fatal(&e) => {
                    return Err(SinkError::Config(format!(
                        "Kafka producer: initialising the transactional id: {e}"
                    )))
                }
                Err(e) => {
                    attempt += 1;
                    self.metrics.sink_retry(
                        "kafka",
                        "kafka_init_transactions",
                        1,
                        attempt,
                        &e.to_string(),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff.delay(attempt)) => {}
                        _ = abort.cancelled() => return Err(SinkError::Aborted),
                    }
                }
            }
        }
    }

    /// Drops a fenced producer: it can never write again, and this instance
    /// builds a new one only when it writes again (elected again).
    fn fenced(&self, p: &FutureProducer<LogContext>, error: &KafkaError) -> SinkError {
        if let Ok(mut slot) = self.producer.lock() {
            *slot = None;
        }
        let why = p
            .client()
            .fatal_error()
            .map(|(_, s)| s)
            .unwrap_or_else(|| error.to_string());
        SinkError::Fenced(format!(
            "transactional id {} is held by a newer producer: {why}",
            self.transactional_id.as_deref().unwrap_or_default()
        ))
    }

    /// Ends the open transaction with `commit` or abort; the error is the
    /// sink's answer when the batch cannot go on (fenced, or fatal).
    async fn end(
        &self,
        p: &FutureProducer<LogContext>,
        commit: bool,
        abort: &CancellationToken,
    ) -> Result<Option<KafkaError>, SinkError> {
        let q = p.clone();
        let done = tokio::select! {
            r = tokio::task::spawn_blocking(move || if commit {
                q.commit_transaction(TXN_TIMEOUT)
            } else {
                q.abort_transaction(TXN_TIMEOUT)
            }) => r,
            _ = abort.cancelled() => return Err(SinkError::Aborted),
        };
        match done.map_err(|e| SinkError::Response(e.to_string()))? {
            Ok(()) => Ok(None),
            Err(e) => self.classify(p, e).map(Some),
        }
    }

    /// Sends `pending` (indexes into `events`) and returns those that failed.
    async fn send_all(
        &self,
        producer: &FutureProducer<LogContext>,
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
                match producer.send_result(record) {
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

fn create(settings: &ClientConfig) -> Result<FutureProducer<LogContext>, SinkError> {
    settings
        .create_with_context(LogContext)
        .map_err(|e| SinkError::Config(format!("Kafka producer: {e}")))
}

/// One batch's messages as they are produced.
#[derive(Clone, Copy)]
struct Sent<'a> {
    producer: &'a FutureProducer<LogContext>,
    events: &'a [ChangeEvent],
    payloads: &'a [Vec<u8>],
    keys: &'a [Vec<u8>],
}

impl KafkaSink {
    /// Produces `pending` once, in a transaction when transactional. `None`:
    /// all stored (or refused for good, added to `rejected`); else why not
    /// and what to send again: the failed messages, or under a transaction
    /// (all of the batch or none of it) every message not refused.
    async fn attempt(
        &self,
        sent: Sent<'_>,
        pending: &[usize],
        rejected: &mut Vec<Rejected>,
        abort: &CancellationToken,
    ) -> Result<Option<(String, Vec<usize>)>, SinkError> {
        let p = sent.producer;
        let txn = self.transactional_id.is_some();
        if txn {
            if let Err(e) = p.begin_transaction() {
                return match self.classify(p, e) {
                    Err(stop) => Err(stop),
                    Ok(e) => Ok(Some((e.to_string(), pending.to_vec()))),
                };
            }
        }
        let mut failed = tokio::select! {
            f = self.send_all(p, sent.events, sent.payloads, sent.keys, pending) => f,
            _ = abort.cancelled() => return Err(SinkError::Aborted),
        };
        if let Some((_, e)) = failed.iter().find(|(_, e)| txn && is_fenced(p, e)) {
            return Err(self.fenced(p, e));
        }
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
        if !txn {
            return Ok(failed
                .first()
                .map(|(_, e)| e.to_string())
                .map(|error| (error, failed.iter().map(|(i, _)| *i).collect())));
        }
        let error = match failed.first() {
            Some((_, e)) => e.to_string(),
            None => match self.commit(p, abort).await? {
                None => return Ok(None),
                Some(e) => e.to_string(),
            },
        };
        // Nothing of an aborted transaction is visible: send again all of it
        // but what was refused. An abort that fails shows at the next begin.
        self.end(p, false, abort).await?;
        let retry = pending
            .iter()
            .copied()
            .filter(|i| !rejected.iter().any(|r| r.index == *i))
            .collect();
        Ok(Some((error, retry)))
    }

    /// Commits the open transaction, again while librdkafka says a retry
    /// may succeed; `Some`: it must be aborted.
    async fn commit(
        &self,
        p: &FutureProducer<LogContext>,
        abort: &CancellationToken,
    ) -> Result<Option<KafkaError>, SinkError> {
        let mut attempt = 0;
        loop {
            match self.end(p, true, abort).await? {
                Some(KafkaError::Transaction(e)) if e.is_retriable() && !e.txn_requires_abort() => {
                    attempt += 1;
                    warn!(error = %e, attempt, "Kafka sink: committing the transaction again");
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff.delay(attempt)) => {}
                        _ = abort.cancelled() => return Err(SinkError::Aborted),
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// A transaction call's error: `Err` when the batch cannot go on here
    /// (fenced, or the producer broken for good), else the error to retry on.
    fn classify(
        &self,
        p: &FutureProducer<LogContext>,
        e: KafkaError,
    ) -> Result<KafkaError, SinkError> {
        if is_fenced(p, &e) {
            return Err(self.fenced(p, &e));
        }
        if is_fatal(&e) {
            if let Ok(mut slot) = self.producer.lock() {
                *slot = None;
            }
            return Err(SinkError::Config(format!("Kafka producer: {e}")));
        }
        Ok(e)
    }
}

/// The producer's id was taken over by a newer producer (transactions).
fn is_fenced(p: &FutureProducer<LogContext>, e: &KafkaError) -> bool {
    let fencing = |c| {
        matches!(
            c,
            RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
        )
    };
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal) => p.client().fatal_error().is_some_and(|(c, _)| fencing(c)),
        Some(c) => fencing(c),
        None => false,
    }
}

/// The producer can never be used again.
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        e => e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal),
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
            let producer = self.ready(abort).await?;
            let mut pending: Vec<usize> = (0..events.len()).collect();
            let mut rejected = Vec::new();
            let mut attempt = 0;
            loop {
                let sent = Sent {
                    producer: &producer,
                    events,
                    payloads: &payloads,
                    keys: &keys,
                };
                let Some((error, retry)) =
                    self.attempt(sent, &pending, &mut rejected, abort).await?
                else {
                    self.metrics.bulk_requests.with_label_values(&["ok"]).inc();
                    return Ok(rejected);
                };
                pending = retry;
                attempt += 1;
                self.metrics
                    .bulk_requests
                    .with_label_values(&["retry"])
                    .inc();
                self.metrics
                    .sink_retry("kafka", "kafka_produce", pending.len(), attempt, &error);
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
            let producer = self.probe.clone();
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
        if let Some(p) = self.current() {
            let _ = p.flush(Duration::from_secs(5));
            // A transaction cut short by the shutdown deadline would hold
            // back readers of committed data until it times out.
            if self.transactional_id.is_some() {
                let _ = p.abort_transaction(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::Row;

    fn ha_config(ha: &str) -> crate::config::Config {
        let toml = format!(
            "source = \"binlog\"\nsink = \"kafka\"\n\
             [mysql]\nurl = \"mysql://root:pw@127.0.0.1:3306\"\n[binlog]\nha = \"{ha}\"\n\
             [kafka]\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\n"
        );
        let layers =
            crate::config::Layers::from_toml(&toml, std::path::Path::new("cdc.toml")).unwrap();
        crate::config::Config::from_layers(&layers).unwrap()
    }

    fn sink_of(cfg: &crate::config::Config) -> KafkaSink {
        let id = cfg
            .binlog_ha()
            .then(|| transactional_id(&cfg.kafka.group_id));
        KafkaSink::new(&cfg.kafka, "t", id, &cfg.pipeline, Metrics::new()).unwrap()
    }

    #[test]
    fn under_binlog_ha_writes_are_transactions_begun_only_by_a_write() {
        let sink = sink_of(&ha_config("kafka"));
        assert_eq!(
            sink.transactional_id.as_deref(),
            Some("cdc-monitor-binlog-g")
        );
        // A standby builds its sink too: initialising the id there would
        // fence the capturer, so nothing exists until this one writes.
        assert!(sink.current().is_none());
        let plain = sink_of(&ha_config("none"));
        assert_eq!(plain.transactional_id, None);
        assert!(plain.current().is_some());
    }

    #[test]
    fn key_is_table_and_primary_key() {
        let pk = Row::from_values([("id", json!("7"))]);
        let e = ChangeEvent::row("appdb", "users", Op::Update, pk, Row::default(), None, 0);
        assert_eq!(key(&e), br#"appdb.users:{"id":"7"}"#);
    }
}
