//! Kafka consumer-group source on librdkafka, auto-commit off.
//!
//! Offsets are committed from the `OffsetTracker` only: periodically, on
//! partition revocation (synchronously, inside the rebalance callback, so the
//! next owner starts exactly after what we stored), and on shutdown.
//!
//! With a sink that keeps positions (the embedded store), each message also
//! carries its checkpoint (`kafka/TOPIC/PARTITION` → next offset), stored in
//! the same transaction as its events, and an assigned partition starts from
//! that stored offset: a crash between the store's commit and the group's
//! re-reads nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::canal::{Decoded, Decoder};
use crate::checkpoint::{kafka_stream, Checkpoint, StoredCheckpoints};
use crate::clock::now_millis;
use crate::config::KafkaConfig;
use crate::event::SourcePosition;
use crate::kafka_client::{self, client_config, LogContext};
use crate::metrics::Metrics;
use crate::source::ack::OffsetTracker;
use crate::source::envelope::{Envelope, EnvelopeTx, Origin, Undecodable};
use crate::source::{Source, SourceError};

/// The next offset the sink stored for a partition; `None` (the group's
/// committed offset then applies) when it stored none or cannot be read.
fn stored_offset(stored: &StoredCheckpoints, topic: &str, partition: i32) -> Option<i64> {
    let stream = kafka_stream(topic, partition);
    match stored(&stream) {
        Ok(Some(Checkpoint::Kafka { next_offset, .. })) => Some(next_offset),
        Ok(_) => None,
        Err(e) => {
            warn!(stream, error = %e, "reading the stored position failed; using the group's");
            None
        }
    }
}

/// librdkafka callbacks: rebalances, commits, statistics (lag).
pub struct SourceContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Metrics,
    stored: Option<StoredCheckpoints>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        warn!(error = %error, reason, "kafka client error");
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka_client::log(level, fac, message);
    }
}

impl ConsumerContext for SourceContext {
    /// As rdkafka's default, but an assignment starts each partition at the
    /// offset the sink stored, when it stored one.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::{
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS as ASSIGN,
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS as REVOKE,
        };
        if err == ASSIGN {
            if let Some(stored) = &self.stored {
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                for (topic, partition) in parts {
                    if let Some(offset) = stored_offset(stored, &topic, partition) {
                        info!(
                            topic,
                            partition, offset, "starting from the position the store holds"
                        );
                        let _ = tpl.set_partition_offset(&topic, partition, Offset::Offset(offset));
                    }
                }
            }
        }
        let rebalance = match err {
            ASSIGN => Rebalance::Assign(tpl),
            REVOKE => Rebalance::Revoke(tpl),
            other => Rebalance::Error(rdkafka::error::KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match (err, cooperative) {
            (ASSIGN, true) => consumer.incremental_assign(tpl),
            (ASSIGN, false) => consumer.assign(tpl),
            (_, true) => consumer.incremental_unassign(tpl),
            (_, false) => consumer.unassign(),
        };
        if let Err(e) = result {
            warn!(error = %e, "applying the rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let mut commit = TopicPartitionList::new();
        if let Ok(mut tracker) = self.tracker.lock() {
            for e in tpl.elements() {
                if let Some(offset) = tracker.revoke(e.topic(), e.partition()) {
                    let _ = commit.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Offset(offset),
                    );
                }
                self.metrics
                    .lag_records
                    .remove_label_values(&[e.topic(), &e.partition().to_string()])
                    .ok();
                self.metrics
                    .lag_seconds
                    .remove_label_values(&[e.topic(), &e.partition().to_string()])
                    .ok();
            }
        }
        info!(partitions = tpl.count(), "partitions revoked");
        if commit.count() > 0 {
            // Synchronous: the next owner must see what we acknowledged.
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => self.metrics.commits.with_label_values(&["ok"]).inc(),
                Err(e) => {
                    self.metrics.commits.with_label_values(&["error"]).inc();
                    warn!(error = %e, "commit on revoke failed");
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if let Ok(mut tracker) = self.tracker.lock() {
                    for e in tpl.elements() {
                        tracker.assign(e.topic(), e.partition());
                    }
                }
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                info!(partitions = ?parts, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                if let Ok(mut tracker) = self.tracker.lock() {
                    for e in offsets.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            tracker.committed(e.topic(), e.partition(), o);
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "offset commit failed"),
        }
    }
}

/// Consumes canal-json from a consumer group.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<SourceContext>>,
    /// A second client with its own connections for watermarks and
    /// readiness: a broker answers requests on one connection in order, so
    /// on the consumer's connections they would queue behind long-poll
    /// fetches, time out, and make librdkafka drop the connection.
    probe: Arc<BaseConsumer<LogContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Metrics,
    brokers: String,
    topics: Vec<String>,
    group_id: String,
    /// Attach a checkpoint to every message (the sink keeps positions).
    emit_checkpoints: bool,
}

impl KafkaSource {
    /// Creates the consumer and subscribes; no message is read yet.
    /// `stored` is set when the sink keeps positions with the events.
    pub fn new(
        cfg: &KafkaConfig,
        tracker: Arc<Mutex<OffsetTracker>>,
        metrics: Metrics,
        stored: Option<StoredCheckpoints>,
    ) -> Result<KafkaSource, SourceError> {
        let emit_checkpoints = stored.is_some();
        let mut c = kafka_client::consumer_config(cfg);
        if let Some(id) = &cfg.instance_id {
            c.set("group.instance.id", id);
        }
        let context = SourceContext {
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            stored,
        };
        let consumer: StreamConsumer<SourceContext> = c.create_with_context(context)?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        // No group.id: the probe never joins a group, so dropping it never
        // waits for a group close.
        // Same session timeout as the consumer, so consumer properties passed
        // through (max.poll.interval.ms ≥ session.timeout.ms) stay valid here.
        let probe: BaseConsumer<LogContext> = client_config(cfg)
            .set(
                "session.timeout.ms",
                cfg.session_timeout.as_millis().to_string(),
            )
            .create_with_context(LogContext)?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            probe: Arc::new(probe),
            tracker,
            metrics,
            brokers: cfg.brokers.clone(),
            topics: cfg.topics.clone(),
            group_id: cfg.group_id.clone(),
            emit_checkpoints,
        })
    }

    fn envelope(
        &self,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        topic: &Arc<str>,
        decoder: &mut Decoder,
    ) -> Option<Envelope> {
        let partition = msg.partition();
        let offset = msg.offset();
        let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
        let position = SourcePosition::Kafka {
            topic: topic.clone(),
            partition,
            offset,
        };
        let origin = Origin {
            topic: topic.clone(),
            partition,
            offset,
            key: msg.key().map(Bytes::copy_from_slice),
            payload,
        };
        // Decode before taking the lock: the sink's acknowledgements need it too.
        let decoded = decoder.decode(&origin.payload, &position);
        let checkpoint = self.emit_checkpoints.then(|| Checkpoint::Kafka {
            topic: topic.clone(),
            partition,
            next_offset: offset + 1,
        });
        let size = origin.payload.len();
        let mut tracker = self.tracker.lock().ok()?;
        match decoded {
            Ok(Decoded::Events(events)) => {
                let commit_ms = events.first().map_or(0, |e| e.commit_time_ms);
                let ack = tracker.read(topic, partition, offset, events.len(), commit_ms);
                Some(Envelope {
                    events,
                    ack,
                    origin,
                    undecodable: None,
                    checkpoint,
                    size,
                    budget: None,
                })
            }
            Ok(Decoded::Watermark { ts, time_ms }) => {
                tracker.watermark(topic, partition, offset, ts);
                self.metrics.watermarks.inc();
                self.metrics
                    .resolved_ts
                    .with_label_values(&[topic.as_ref(), &partition.to_string()])
                    .set(time_ms as f64 / 1000.0);
                None
            }
            Err(e) => {
                self.metrics.decode_errors.inc();
                debug!(topic = %topic, partition, offset, error = %e, "undecodable message");
                // Counts as one "event" in flight until it is dead-lettered.
                let ack = tracker.read(topic, partition, offset, 1, now_millis());
                Some(Envelope {
                    events: Vec::new(),
                    ack,
                    origin,
                    undecodable: Some(Undecodable {
                        reason: e.reason(),
                        error: e.to_string(),
                        row: None,
                    }),
                    checkpoint,
                    size,
                    budget: None,
                })
            }
        }
    }

    /// Refreshes lag in records: the broker's high watermark minus the
    /// committed offset, per assigned partition. Blocking (one ListOffsets
    /// round trip per partition): call it off the async threads.
    ///
    /// Asked of the broker rather than read from librdkafka's statistics:
    /// those only see new high watermarks in fetch replies, and a stalled
    /// sink stops fetching, which is exactly when lag matters.
    fn refresh_lag_records(&self) {
        let positions = match self.tracker.lock() {
            Ok(t) => t.positions(),
            Err(_) => return,
        };
        for (topic, partition, position) in positions {
            match self
                .probe
                .fetch_watermarks(&topic, partition, Duration::from_secs(2))
            {
                Ok((low, high)) => {
                    let from = position.unwrap_or(low).max(low);
                    self.metrics
                        .lag_records
                        .with_label_values(&[topic.as_ref(), &partition.to_string()])
                        .set((high - from).max(0));
                }
                Err(e) => debug!(topic = %topic, partition, error = %e, "cannot read watermarks"),
            }
        }
    }
}

impl KafkaSource {
    /// Reads, decodes and hands on messages until `shutdown` or the channel closes.
    async fn read(&self, tx: EnvelopeTx, shutdown: CancellationToken) -> Result<(), SourceError> {
        info!(topics = ?self.topics, group = %self.group_id, "consuming");
        let mut topics: Vec<Arc<str>> = Vec::new();
        let mut decoder = Decoder::default();
        loop {
            let msg = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                m = self.consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    // Broker restarts surface here; librdkafka reconnects by itself.
                    warn!(error = %e, "kafka receive error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let topic = match topics.iter().find(|t| t.as_ref() == msg.topic()) {
                Some(t) => t.clone(),
                None => {
                    let t: Arc<str> = Arc::from(msg.topic());
                    topics.push(t.clone());
                    t
                }
            };
            let Some(envelope) = self.envelope(&msg, &topic, &mut decoder) else {
                continue;
            };
            drop(msg);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                r = tx.send(envelope) => if r.is_err() { return Ok(()) },
            }
        }
    }

    async fn ping(&self) -> Result<(), SourceError> {
        let probe = self.probe.clone();
        tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|_| ())
        })
        .await
        .map_err(|e| SourceError::Other(e.to_string()))?
        .map_err(SourceError::from)
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn run(
        &self,
        tx: EnvelopeTx,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(self.read(tx, shutdown))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(self.ping())
    }

    fn refresh_lag(&self) {
        self.refresh_lag_records();
        if let Some(tso) = self.tracker.lock().ok().and_then(|t| t.checkpoint_tso()) {
            self.metrics
                .checkpoint_time
                .set(crate::canal::decode::tso_to_millis(tso) as f64 / 1000.0);
        }
    }

    fn commit(&self, sync: bool) {
        let offsets = match self.tracker.lock() {
            Ok(t) if sync => t.all_committable(),
            Ok(t) => t.to_commit(),
            Err(_) => return,
        };
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in &offsets {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["ok"]).inc();
                if sync {
                    if let Ok(mut t) = self.tracker.lock() {
                        for (topic, partition, offset) in &offsets {
                            t.committed(topic, *partition, *offset);
                        }
                    }
                }
            }
            Err(e) => {
                self.metrics.commits.with_label_values(&["error"]).inc();
                warn!(error = %e, sync, "offset commit failed");
            }
        }
    }

    fn close(&self) {
        // Leave the group now rather than let the session time out, so the
        // remaining members take our partitions at once.
        self.consumer.unsubscribe();
        if let Err(e) = self.consumer.unassign() {
            error!(brokers = %self.brokers, error = %e, "unassign failed");
        }
    }
}
