//! Where change messages come from.
//!
//! Lifecycle of a `Source`: `run` reads until `shutdown` fires, turning each
//! message into an `Envelope` on the bounded channel (waiting when it is
//! full), and registering it with the offset tracker first. The pipeline
//! acknowledges envelopes through the tracker; `commit` persists the
//! acknowledged position and is called periodically and once more, after the
//! pipeline has drained, before `close`.

pub mod ack;
pub mod binlog;
pub mod envelope;
pub mod kafka;

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::StoredCheckpoints;
use crate::config::{BinlogHa, Config, SourceConfig};
use crate::control::SnapshotControl;
use crate::metrics::Metrics;
use ack::OffsetTracker;
use envelope::EnvelopeTx;

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
    /// The source's name in logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// Reads into `tx` until `shutdown` fires or the channel closes.
    fn run(
        &self,
        tx: EnvelopeTx,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), SourceError>>;

    /// Persists every acknowledged position; `sync` waits for the broker.
    fn commit(&self, sync: bool);

    /// Succeeds when the upstream is reachable.
    fn check(&self) -> BoxFuture<'_, Result<(), SourceError>>;

    /// Leaves cleanly (consumer group leave).
    fn close(&self);

    /// Updates the lag gauges that need a round trip; may block.
    fn refresh_lag(&self) {}

    /// Where on-demand snapshot requests go, for a source that serves them.
    fn snapshot_control(&self) -> Option<SnapshotControl> {
        None
    }

    /// Whether what this source read may still be written; `None` when it
    /// always may. A binlog capturer that lost its election closes it.
    fn fence(&self) -> Option<Fence> {
        None
    }

    /// What `/readyz` tells of this source beyond reachability (the binlog
    /// capture's role under `CDC_BINLOG_HA`); `None` when nothing.
    fn status(&self) -> BoxFuture<'_, Option<serde_json::Value>> {
        Box::pin(async { None })
    }
}

/// Asked before each write: false once this instance may no longer
/// publish what its source read.
#[derive(Clone)]
pub struct Fence(Arc<dyn Fn() -> bool + Send + Sync>);

impl Fence {
    pub fn new(open: impl Fn() -> bool + Send + Sync + 'static) -> Fence {
        Fence(Arc::new(open))
    }

    pub fn is_open(&self) -> bool {
        (self.0)()
    }
}

/// The configured source. `stored` is set when the sink keeps positions:
/// the source then resumes from there and sends checkpoints with its
/// messages. Adding a source: its module, its `SourceConfig` variant, and
/// one arm here.
pub fn build(
    cfg: &Config,
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: &Metrics,
    stored: Option<StoredCheckpoints>,
) -> Result<Arc<dyn Source>, SourceError> {
    Ok(match &cfg.source {
        SourceConfig::Kafka { .. } => Arc::new(kafka::KafkaSource::new(
            &cfg.kafka,
            tracker,
            metrics.clone(),
            stored,
        )?),
        SourceConfig::Binlog(mysql) => {
            let store = match &mysql.ha {
                BinlogHa::None => binlog::PositionStore::open(&cfg.data_dir, stored)?,
                BinlogHa::Kafka { position_topic } => binlog::PositionStore::Kafka(
                    Arc::new(binlog::ha::Leadership::new(
                        &cfg.kafka,
                        position_topic,
                        metrics.clone(),
                    )?),
                    Arc::default(),
                ),
            };
            Arc::new(binlog::BinlogSource::new(
                mysql,
                store,
                tracker,
                metrics.clone(),
            )?)
        }
    })
}
