//! Kafka client setup shared by the source, the dead-letter queue and the
//! Kafka sink: one place builds librdkafka's configuration, routes its logs
//! and classifies its produce errors.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientContext;
use secrecy::ExposeSecret;
use tracing::{debug, error, info, warn};

use crate::config::{KafkaConfig, OffsetReset, DLQ_HEADROOM};

/// A Kafka client could not be created (a bad property, say).
#[derive(Debug, thiserror::Error)]
#[error("kafka client: {0}")]
pub struct ClientError(#[from] pub KafkaError);

/// Common librdkafka settings for consumer, producer and admin clients.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    if let Some(p) = &cfg.sasl_password {
        c.set("sasl.password", p.expose_secret());
    }
    c
}

/// The consumer's librdkafka settings (group, offsets, fetch sizes), as
/// the Kafka source uses them and the bench's bare consumer copies them.
pub fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match cfg.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        // librdkafka's 45 s default leaves a crashed member's partitions
        // idle too long; 10 s moves them within the 30 s we promise.
        .set(
            "session.timeout.ms",
            cfg.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout.as_millis() / 3).max(100).to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            cfg.queue_max_kbytes.to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            cfg.fetch_wait_max.as_millis().max(1).to_string(),
        )
        // One fetch response fits the prefetch queue; a single larger
        // message still comes through (Kafka returns at least one).
        .set(
            "fetch.max.bytes",
            (cfg.queue_max_kbytes * 1024)
                .clamp(1 << 20, 50 << 20)
                .to_string(),
        )
        .set("enable.partition.eof", "false");
    c
}

/// The idempotent producer used for the dead-letter topic.
pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer<LogContext>, ClientError> {
    Ok(client_config(cfg)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        // Whatever the consumer took can be dead-lettered, headers and all.
        .set(
            "message.max.bytes",
            (cfg.message_max_bytes + DLQ_HEADROOM).to_string(),
        )
        .create_with_context(LogContext)?)
}

/// Routes librdkafka's own log lines into `tracing` (target `librdkafka`).
pub fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            error!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility = fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility = fac, "{message}"),
    }
}

/// Context of the clients other than the consumer (producers, probe):
/// their logs go through `tracing` too.
pub struct LogContext;

impl ConsumerContext for LogContext {}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }
}

/// Produce errors no retry fixes: the broker or the client refuses the
/// message itself.
pub fn refused_for_good(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | MessageBatchTooLarge
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | UnknownTopicOrPartition
                | UnknownTopic
                | InvalidTopic
                | InvalidRecord
                | PolicyViolation
        )
    )
}
