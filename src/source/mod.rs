//! Where change messages come from.
//!
//! Lifecycle of a `Source`: `run` reads until `shutdown` fires, turning each
//! message into an `Envelope` on the bounded channel (waiting when it is
//! full), and registering it with the offset tracker first. The pipeline
//! acknowledges envelopes through the tracker; `commit` persists the
//! acknowledged position and is called periodically and once more, after the
//! pipeline has drained, before `close`.

pub mod binlog;
pub mod kafka;

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::pipeline::batch::EnvelopeTx;

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Other(String),
    /// Retrying cannot help (missing privileges, a purged position, a
    /// rejected login): the source stops and says what to do.
    #[error("{0}")]
    Fatal(String),
}

impl SourceError {
    /// True when the source stops instead of retrying.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SourceError::Fatal(_))
    }
}

/// A stream of change messages with a resumable position.
pub trait Source: Send + Sync + 'static {
    /// Reads into `tx` until `shutdown` fires or the channel closes.
    fn run(
        &self,
        tx: EnvelopeTx,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Persists every acknowledged position; `sync` waits for the broker.
    fn commit(&self, sync: bool);

    /// Succeeds when the upstream is reachable.
    fn check(&self) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Leaves cleanly (consumer group leave).
    fn close(&self);
}
