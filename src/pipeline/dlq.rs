//! The dead-letter topic: messages that cannot be decoded or stored, kept
//! byte for byte with headers that say why and where they came from.
//! Without Kafka (binlog into the embedded store) the letters go to a file,
//! one JSON object per line with the same fields.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::kafka_client::{producer, refused_for_good, ClientError, LogContext};
use crate::owner_only;

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
        /// Where a letter the topic refuses for good goes instead.
        fallback: DeadLetterFile,
    },
    File(DeadLetterFile),
}

/// Where a letter ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Topic,
    File,
}

impl Destination {
    /// The `destination` label of `cdc_dead_letter_messages_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Topic => "topic",
            Destination::File => "file",
        }
    }
}

/// The dead-letter file: JSON lines, readable by its owner only (the
/// payloads are captured rows).
#[derive(Clone)]
pub struct DeadLetterFile {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
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

/// The longest error text carried in a header: the room `DLQ_HEADROOM`
/// leaves above the largest message.
const MAX_ERROR_HEADER: usize = 16 << 10;

/// Between attempts to append to the dead-letter file (a full disk, say).
const FILE_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

impl DeadLetterQueue {
    /// The configured queue: the dead-letter topic when Kafka is part of
    /// the pipeline, else a file; `DATA_DIR/dead-letters.jsonl` either way
    /// for what the topic refuses.
    pub fn build(cfg: &Config) -> Result<DeadLetterQueue, ClientError> {
        let file = cfg.data_dir.join("dead-letters.jsonl");
        if !cfg.uses_kafka() {
            return Ok(DeadLetterQueue::file(file));
        }
        let p = &cfg.pipeline;
        Ok(DeadLetterQueue::new(
            producer(&cfg.kafka)?,
            cfg.kafka.dlq_topic.clone(),
            Backoff::new(p.retry_initial_backoff, p.retry_max_backoff),
            file,
        ))
    }

    /// Wraps an idempotent producer; letters the topic refuses for good
    /// (too large, not authorised, no such topic) go to `fallback`.
    pub fn new(
        producer: FutureProducer<LogContext>,
        topic: String,
        backoff: Backoff,
        fallback: PathBuf,
    ) -> DeadLetterQueue {
        DeadLetterQueue::Kafka {
            producer,
            topic,
            backoff,
            fallback: DeadLetterFile::new(fallback),
        }
    }

    /// Appends letters to `path` (JSON lines), for setups without Kafka.
    pub fn file(path: PathBuf) -> DeadLetterQueue {
        DeadLetterQueue::File(DeadLetterFile::new(path))
    }

    /// Sends until the letter is safely kept, or `abort` fires (`None`).
    ///
    /// A message is only acknowledged upstream once it is safely here, so a
    /// broker outage means waiting, never losing it.
    pub async fn send(
        &self,
        letter: &DeadLetter<'_>,
        abort: &CancellationToken,
    ) -> Option<Destination> {
        match self {
            DeadLetterQueue::Kafka {
                producer,
                topic,
                backoff,
                fallback,
            } => match send_kafka(producer, topic, backoff, letter, abort).await {
                Sent::Stored => Some(Destination::Topic),
                Sent::Aborted => None,
                Sent::Refused(why) => {
                    tracing::warn!(
                        dlq_topic = %topic,
                        file = %fallback.path.display(),
                        error = %why,
                        "the dead-letter topic refuses this message for good; writing it to the file"
                    );
                    let error =
                        format!("{}; the dead-letter topic refused it: {why}", letter.error);
                    let letter = DeadLetter {
                        error: &error,
                        ..letter.clone()
                    };
                    fallback.send(&letter, abort).await
                }
            },
            DeadLetterQueue::File(file) => file.send(letter, abort).await,
        }
    }
}

impl DeadLetterFile {
    fn new(path: PathBuf) -> DeadLetterFile {
        DeadLetterFile {
            path,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Appends and syncs, retrying until it works or `abort` fires.
    async fn send(
        &self,
        letter: &DeadLetter<'_>,
        abort: &CancellationToken,
    ) -> Option<Destination> {
        let line = FileLetter {
            failed_at: crate::clock::now_rfc3339(),
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
            match self.append(&line) {
                Ok(()) => return Some(Destination::File),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(path = %self.path.display(), attempt, error = %e, "dead-letter write failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(FILE_RETRY.delay(attempt)) => {}
                        _ = abort.cancelled() => return None,
                    }
                }
            }
        }
    }

    fn append(&self, line: &FileLetter<'_>) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.path.parent() {
            owner_only::create_dir_all(dir)?;
        }
        let mut f = owner_only::options()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut buf = serde_json::to_vec(line)?;
        buf.push(b'\n');
        f.write_all(&buf)?;
        f.sync_data()
    }
}

/// How producing a dead letter ended.
enum Sent {
    Stored,
    Aborted,
    /// The broker or the client refuses this message for good.
    Refused(KafkaError),
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn send_kafka(
    producer: &FutureProducer<LogContext>,
    topic: &str,
    backoff: &Backoff,
    letter: &DeadLetter<'_>,
    abort: &CancellationToken,
) -> Sent {
    let error = truncated(letter.error, MAX_ERROR_HEADER);
    {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let failed_at = crate::clock::now_rfc3339();
        let mut attempt = 0;
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: headers::REASON,
                    value: Some(letter.reason),
                })
                .insert(Header {
                    key: headers::ERROR,
                    value: Some(error),
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
                _ = abort.cancelled() => return Sent::Aborted,
            };
            match result {
                Ok(_) => return Sent::Stored,
                Err((e, _)) if refused_for_good(&e) => return Sent::Refused(e),
                Err((e, _)) => {
                    attempt += 1;
                    tracing::warn!(dlq_topic = %topic, attempt, error = %e, "dead-letter produce failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.delay(attempt)) => {}
                        _ = abort.cancelled() => return Sent::Aborted,
                    }
                }
            }
        }
    }
}
