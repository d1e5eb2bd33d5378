//! The dead-letter topic: messages that cannot be decoded or stored, kept
//! byte for byte with headers that say why and where they came from.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::sink::elasticsearch::retry::Backoff;
use crate::source::kafka::LogContext;

/// Header names on dead-lettered messages.
pub mod headers {
    pub const REASON: &str = "cdc.error.reason";
    pub const ERROR: &str = "cdc.error.message";
    pub const STAGE: &str = "cdc.error.stage";
    pub const TOPIC: &str = "cdc.source.topic";
    pub const PARTITION: &str = "cdc.source.partition";
    pub const OFFSET: &str = "cdc.source.offset";
    pub const FAILED_AT: &str = "cdc.failed.at";
}

/// One message to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    /// `decode` or `sink`.
    pub stage: &'static str,
    /// Short machine-readable reason.
    pub reason: &'a str,
    /// Full error text.
    pub error: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Produces to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetterQueue {
    producer: FutureProducer<LogContext>,
    topic: String,
    backoff: Backoff,
}

impl DeadLetterQueue {
    /// Wraps an idempotent producer.
    pub fn new(
        producer: FutureProducer<LogContext>,
        topic: String,
        backoff: Backoff,
    ) -> DeadLetterQueue {
        DeadLetterQueue {
            producer,
            topic,
            backoff,
        }
    }

    /// Sends until the broker acknowledges or `abort` fires (`false`).
    ///
    /// A message is only acknowledged upstream once it is safely here, so a
    /// broker outage means waiting, never losing it.
    pub async fn send(&self, letter: &DeadLetter<'_>, abort: &CancellationToken) -> bool {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let failed_at = crate::sink::elasticsearch::bulk::now_rfc3339();
        let mut attempt = 0;
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: headers::REASON,
                    value: Some(letter.reason),
                })
                .insert(Header {
                    key: headers::ERROR,
                    value: Some(letter.error),
                })
                .insert(Header {
                    key: headers::STAGE,
                    value: Some(letter.stage),
                })
                .insert(Header {
                    key: headers::TOPIC,
                    value: Some(letter.topic),
                })
                .insert(Header {
                    key: headers::PARTITION,
                    value: Some(&partition),
                })
                .insert(Header {
                    key: headers::OFFSET,
                    value: Some(&offset),
                })
                .insert(Header {
                    key: headers::FAILED_AT,
                    value: Some(&failed_at),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .payload(letter.payload)
                .headers(headers);
            if let Some(key) = letter.key {
                record = record.key(key);
            }
            let result = tokio::select! {
                r = self.producer.send(record, Duration::from_secs(30)) => r,
                _ = abort.cancelled() => return false,
            };
            match result {
                Ok(_) => return true,
                Err((e, _)) => {
                    attempt += 1;
                    tracing::warn!(dlq_topic = %self.topic, attempt, error = %e, "dead-letter produce failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff.delay(attempt)) => {}
                        _ = abort.cancelled() => return false,
                    }
                }
            }
        }
    }
}
