//! The dead-letter topic: messages that cannot be decoded or stored, kept
//! byte for byte with headers that say why and where they came from.
//! Without Kafka (binlog into the embedded store) the letters go to a file,
//! one JSON object per line with the same fields.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

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

/// Produces to the dead-letter topic, or appends to the dead-letter file.
#[derive(Clone)]
pub enum DeadLetterQueue {
    Kafka {
        producer: FutureProducer<LogContext>,
        topic: String,
        backoff: Backoff,
    },
    File {
        path: PathBuf,
        lock: Arc<Mutex<()>>,
    },
}

/// One line of the dead-letter file.
#[derive(Serialize)]
struct FileLetter<'a> {
    failed_at: String,
    stage: &'a str,
    reason: &'a str,
    error: &'a str,
    source: &'a str,
    partition: i32,
    offset: i64,
    /// The message as the source produced it (canal-json), lossless when UTF-8.
    payload: std::borrow::Cow<'a, str>,
}

impl DeadLetterQueue {
    /// Wraps an idempotent producer.
    pub fn new(
        producer: FutureProducer<LogContext>,
        topic: String,
        backoff: Backoff,
    ) -> DeadLetterQueue {
        DeadLetterQueue::Kafka {
            producer,
            topic,
            backoff,
        }
    }

    /// Appends letters to `path` (JSON lines), for setups without Kafka.
    pub fn file(path: PathBuf) -> DeadLetterQueue {
        DeadLetterQueue::File {
            path,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Sends until the broker acknowledges or `abort` fires (`false`).
    ///
    /// A message is only acknowledged upstream once it is safely here, so a
    /// broker outage means waiting, never losing it.
    pub async fn send(&self, letter: &DeadLetter<'_>, abort: &CancellationToken) -> bool {
        match self {
            DeadLetterQueue::Kafka {
                producer,
                topic,
                backoff,
            } => send_kafka(producer, topic, backoff, letter, abort).await,
            DeadLetterQueue::File { path, lock } => {
                let line = FileLetter {
                    failed_at: crate::sink::elasticsearch::bulk::now_rfc3339(),
                    stage: letter.stage,
                    reason: letter.reason,
                    error: letter.error,
                    source: letter.topic,
                    partition: letter.partition,
                    offset: letter.offset,
                    payload: String::from_utf8_lossy(letter.payload),
                };
                let mut attempt = 0;
                loop {
                    let written = (|| -> std::io::Result<()> {
                        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)?;
                        let mut buf = serde_json::to_vec(&line)?;
                        buf.push(b'\n');
                        f.write_all(&buf)?;
                        f.sync_data()
                    })();
                    match written {
                        Ok(()) => return true,
                        Err(e) => {
                            attempt += 1;
                            tracing::warn!(path = %path.display(), attempt, error = %e, "dead-letter write failed, retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(attempt.min(30) as u64)) => {}
                                _ = abort.cancelled() => return false,
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn send_kafka(
    producer: &FutureProducer<LogContext>,
    topic: &str,
    backoff: &Backoff,
    letter: &DeadLetter<'_>,
    abort: &CancellationToken,
) -> bool {
    {
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
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(letter.payload)
                .headers(headers);
            if let Some(key) = letter.key {
                record = record.key(key);
            }
            let result = tokio::select! {
                r = producer.send(record, Duration::from_secs(30)) => r,
                _ = abort.cancelled() => return false,
            };
            match result {
                Ok(_) => return true,
                Err((e, _)) => {
                    attempt += 1;
                    tracing::warn!(dlq_topic = %topic, attempt, error = %e, "dead-letter produce failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.delay(attempt)) => {}
                        _ = abort.cancelled() => return false,
                    }
                }
            }
        }
    }
}
