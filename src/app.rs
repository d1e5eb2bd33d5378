//! Wiring: `App::build(cfg)` creates every part; `run_until(shutdown)` runs
//! the pipeline and shuts it down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, SinkKind, SourceKind};
use crate::event::{ChangeEvent, Checkpoint};
use crate::http::api::EventQuery;
use crate::http::health::Readiness;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::pipeline::ack::OffsetTracker;
use crate::pipeline::batch::{self, run_batcher, BatchLimits, EnvelopeTx, Halt, Writer};
use crate::pipeline::dlq::DeadLetterQueue;
use crate::sink::elasticsearch::bulk::now_millis;
use crate::sink::elasticsearch::retry::Backoff;
use crate::sink::elasticsearch::ElasticsearchSink;
use crate::sink::kafka::KafkaSink;
use crate::sink::sqlite::SqliteSink;
use crate::sink::{Rejected, Sink, SinkError};
use crate::source::binlog::position::{BinlogPosition, PositionFile};
use crate::source::binlog::{self, BinlogSource, PositionStore};
use crate::source::kafka::{self, KafkaSource};
use crate::source::{Source, SourceError};

/// Why the application could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    // Not `#[from]`: that would make the inner error a `source()` too, and
    // `{:#}` would print its message twice.
    #[error("source: {0}")]
    Source(SourceError),
    #[error("sink: {0}")]
    Sink(SinkError),
}

impl From<SourceError> for AppError {
    fn from(e: SourceError) -> Self {
        AppError::Source(e)
    }
}

impl From<SinkError> for AppError {
    fn from(e: SinkError) -> Self {
        AppError::Sink(e)
    }
}

/// The configured source.
pub enum AnySource {
    Kafka(Box<KafkaSource>),
    Binlog(Box<BinlogSource>),
}

impl AnySource {
    fn name(&self) -> &'static str {
        match self {
            AnySource::Kafka(_) => "kafka",
            AnySource::Binlog(_) => "mysql",
        }
    }

    /// Updates the lag-in-records gauges; may block on the broker.
    fn refresh_lag_records(&self) {
        match self {
            AnySource::Kafka(k) => k.refresh_lag_records(),
            // The binlog's backlog is in bytes and seconds: its own gauges.
            AnySource::Binlog(_) => {}
        }
    }
}

impl Source for AnySource {
    async fn run(&self, tx: EnvelopeTx, shutdown: CancellationToken) -> Result<(), SourceError> {
        match self {
            AnySource::Kafka(s) => s.run(tx, shutdown).await,
            AnySource::Binlog(s) => s.run(tx, shutdown).await,
        }
    }

    fn commit(&self, sync: bool) {
        match self {
            AnySource::Kafka(s) => s.commit(sync),
            AnySource::Binlog(s) => s.commit(sync),
        }
    }

    async fn check(&self) -> Result<(), SourceError> {
        match self {
            AnySource::Kafka(s) => s.check().await,
            AnySource::Binlog(s) => s.check().await,
        }
    }

    fn close(&self) {
        match self {
            AnySource::Kafka(s) => s.close(),
            AnySource::Binlog(s) => s.close(),
        }
    }
}

/// The configured sink.
pub enum AnySink {
    Elasticsearch(Arc<ElasticsearchSink>),
    Sqlite(Arc<SqliteSink>),
    Kafka(Box<KafkaSink>),
}

impl AnySink {
    fn name(&self) -> &'static str {
        match self {
            AnySink::Elasticsearch(_) => "elasticsearch",
            AnySink::Sqlite(_) => "sqlite",
            AnySink::Kafka(_) => "kafka",
        }
    }

    /// What `/api/*` searches.
    fn query(&self) -> Option<EventQuery> {
        match self {
            AnySink::Elasticsearch(s) => Some(EventQuery::Elasticsearch(s.clone())),
            AnySink::Sqlite(s) => Some(EventQuery::Sqlite(s.clone())),
            AnySink::Kafka(_) => None,
        }
    }
}

impl Sink for AnySink {
    async fn prepare(&self) -> Result<(), SinkError> {
        match self {
            AnySink::Elasticsearch(s) => s.prepare().await,
            AnySink::Sqlite(s) => s.prepare().await,
            AnySink::Kafka(s) => s.prepare().await,
        }
    }

    async fn write(
        &self,
        events: &[ChangeEvent],
        checkpoints: &[Checkpoint],
        abort: &CancellationToken,
    ) -> Result<Vec<Rejected>, SinkError> {
        match self {
            AnySink::Elasticsearch(s) => s.write(events, checkpoints, abort).await,
            AnySink::Sqlite(s) => s.write(events, checkpoints, abort).await,
            AnySink::Kafka(s) => s.write(events, checkpoints, abort).await,
        }
    }

    async fn check(&self) -> Result<(), SinkError> {
        match self {
            AnySink::Elasticsearch(s) => s.check().await,
            AnySink::Sqlite(s) => s.check().await,
            AnySink::Kafka(s) => s.check().await,
        }
    }
}

/// A built, not yet running, pipeline.
pub struct App {
    cfg: Config,
    metrics: Metrics,
    source: Arc<AnySource>,
    sink: Arc<AnySink>,
    dlq: DeadLetterQueue,
    tracker: Arc<Mutex<OffsetTracker>>,
    listener: TcpListener,
    http_addr: SocketAddr,
}

impl App {
    /// Creates clients and binds the HTTP port; nothing is read yet.
    pub async fn build(cfg: Config) -> Result<App, AppError> {
        let metrics = Metrics::new();
        metrics.set_max_tables(cfg.metrics_max_tables);
        let tracker = Arc::new(Mutex::new(OffsetTracker::new(metrics.in_flight.clone())));
        let sink = match cfg.sink_kind {
            SinkKind::Elasticsearch => {
                let es = cfg.es.as_ref().ok_or_else(|| {
                    SinkError::Config("CDC_SINK=elasticsearch needs CDC_ES_URL".into())
                })?;
                AnySink::Elasticsearch(Arc::new(ElasticsearchSink::new(
                    es,
                    &cfg.sink,
                    metrics.clone(),
                )?))
            }
            SinkKind::Sqlite => AnySink::Sqlite(Arc::new(SqliteSink::open(
                &cfg.data_dir,
                &cfg.store,
                metrics.clone(),
            )?)),
            SinkKind::Kafka => AnySink::Kafka(Box::new(KafkaSink::new(
                &cfg.kafka,
                &cfg.sink,
                metrics.clone(),
            )?)),
        };
        let backoff = Backoff::new(cfg.sink.retry_initial_backoff, cfg.sink.retry_max_backoff);
        // Without Kafka anywhere in the pipeline, dead letters go to a file.
        let dlq = if cfg.source == SourceKind::Kafka || cfg.sink_kind == SinkKind::Kafka {
            DeadLetterQueue::new(
                kafka::producer(&cfg.kafka)?,
                cfg.kafka.dlq_topic.clone(),
                backoff,
                cfg.data_dir.join("dead-letters.jsonl"),
            )
        } else {
            DeadLetterQueue::file(cfg.data_dir.join("dead-letters.jsonl"))
        };
        let source = match cfg.source {
            SourceKind::Kafka => {
                // The embedded store keeps each partition's next offset with
                // the events: an assigned partition starts there.
                let stored: Option<kafka::StoredOffsets> = match &sink {
                    AnySink::Sqlite(s) => {
                        let s = s.clone();
                        Some(Arc::new(move |topic: &str, partition: i32| {
                            let stream = kafka::checkpoint_stream(topic, partition);
                            match s.checkpoint(&stream) {
                                Ok(p) => p.and_then(|p| p.parse().ok()),
                                Err(e) => {
                                    warn!(stream, error = %e, "reading the stored position failed; using the group's");
                                    None
                                }
                            }
                        }))
                    }
                    _ => None,
                };
                AnySource::Kafka(Box::new(KafkaSource::new(
                    &cfg.kafka,
                    tracker.clone(),
                    metrics.clone(),
                    stored,
                )?))
            }
            SourceKind::Binlog => {
                let mysql = cfg.mysql.as_ref().ok_or_else(|| {
                    SourceError::Other("CDC_SOURCE=binlog needs CDC_MYSQL_URL".into())
                })?;
                let store = match &sink {
                    AnySink::Sqlite(s) => {
                        let stored = s
                            .checkpoint(binlog::STREAM)?
                            .map(|p| serde_json::from_str::<BinlogPosition>(&p))
                            .transpose()
                            .map_err(|e| {
                                SourceError::Other(format!(
                                    "the binlog checkpoint in the embedded store is unreadable: {e}"
                                ))
                            })?;
                        PositionStore::Sink(stored)
                    }
                    _ => {
                        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
                            SourceError::Other(format!(
                                "cannot create the data directory {}: {e}",
                                cfg.data_dir.display()
                            ))
                        })?;
                        PositionStore::File(PositionFile::new(&cfg.data_dir))
                    }
                };
                AnySource::Binlog(Box::new(BinlogSource::new(
                    mysql,
                    store,
                    tracker.clone(),
                    metrics.clone(),
                )?))
            }
        };
        let source = Arc::new(source);
        let sink = Arc::new(sink);
        let (listener, http_addr) =
            http::bind(cfg.http_addr)
                .await
                .map_err(|error| AppError::Bind {
                    addr: cfg.http_addr,
                    error,
                })?;
        Ok(App {
            cfg,
            metrics,
            source,
            sink,
            dlq,
            tracker,
            listener,
            http_addr,
        })
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs until `shutdown` resolves, then stops reading, flushes, commits and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App {
            cfg,
            metrics,
            source,
            sink,
            dlq,
            tracker,
            listener,
            http_addr,
        } = self;
        let stop_reading = CancellationToken::new();
        let abort = CancellationToken::new();
        let http_stop = CancellationToken::new();
        {
            let stop_reading = stop_reading.clone();
            tokio::spawn(async move {
                shutdown.await;
                info!("shutdown requested");
                stop_reading.cancel();
            });
        }

        let readiness = {
            let (src, snk) = (source.clone(), sink.clone());
            Readiness::default()
                .with(source.name(), move || {
                    let s = src.clone();
                    async move { s.check().await.map_err(|e| e.to_string()) }
                })
                .with(sink.name(), {
                    let metrics = metrics.clone();
                    move || {
                        let s = snk.clone();
                        // The last write's outcome first: a sink that answers
                        // pings but refuses writes is not ready.
                        let failing = metrics.sink_failure();
                        async move {
                            match failing {
                                Some(why) => Err(why),
                                None => s.check().await.map_err(|e| e.to_string()),
                            }
                        }
                    }
                })
        };
        let http_task = tokio::spawn(http::serve(
            listener,
            HttpState {
                metrics: metrics.clone(),
                readiness,
                query: sink.query(),
            },
            http_stop.clone(),
        ));
        info!(%http_addr, "serving /metrics, /healthz and /readyz");

        tokio::select! {
            r = sink.prepare() => r?,
            _ = stop_reading.cancelled() => {
                http_stop.cancel();
                let _ = http_task.await;
                return Ok(());
            }
        }

        let (tx, rx) = batch::channel(cfg.sink.channel_capacity, cfg.sink.max_buffered_bytes);
        let halt = Halt::default();
        {
            // A write the sink gave up on stops reading at once.
            let (halt, stop_reading) = (halt.clone(), stop_reading.clone());
            tokio::spawn(async move {
                halt.halted().await;
                stop_reading.cancel();
            });
        }
        let writer = Arc::new(Writer {
            sink: sink.clone(),
            dlq,
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            abort: abort.clone(),
            halt: halt.clone(),
            sink_name: sink.name(),
        });
        let limits = BatchLimits {
            max_events: cfg.sink.max_events,
            max_bytes: cfg.sink.max_bytes,
            linger: cfg.sink.linger,
        };
        // The embedded store keeps the source position with each batch and
        // the Kafka sink keeps per-row order: both take batches one at a time.
        let concurrency = match sink.as_ref() {
            AnySink::Elasticsearch(_) => cfg.sink.concurrency,
            AnySink::Sqlite(_) | AnySink::Kafka(_) => 1,
        };
        let mut batcher = tokio::spawn(run_batcher(rx, writer, limits, concurrency));
        let retention_stop = CancellationToken::new();
        let retention: Option<tokio::task::JoinHandle<()>> = match sink.as_ref() {
            AnySink::Sqlite(s) => Some(tokio::spawn(
                s.clone().run_retention(retention_stop.clone()),
            )),
            _ => None,
        };

        let committer_stop = CancellationToken::new();
        let committer = {
            let (source, stop, every, tracker, metrics) = (
                source.clone(),
                committer_stop.clone(),
                cfg.kafka.commit_interval,
                tracker.clone(),
                metrics.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            // Both may block: a position file is synced, watermarks
                            // are asked of the broker.
                            let s = source.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                s.commit(false);
                                s.refresh_lag_records();
                            })
                            .await;
                            if let Ok(t) = tracker.lock() {
                                metrics.set_lag_seconds(t.lag_seconds(now_millis()));
                            }
                        }
                        _ = stop.cancelled() => return,
                    }
                }
            })
        };

        match cfg.source {
            SourceKind::Kafka => {
                info!(topics = ?cfg.kafka.topics, group = %cfg.kafka.group_id, sink = sink.name(), "consuming")
            }
            SourceKind::Binlog => info!(sink = sink.name(), "capturing"),
        }
        let result = source.run(tx, stop_reading.clone()).await;
        stop_reading.cancel();

        // The channel is closed now: the batcher flushes what it holds and
        // waits for the writes in flight, within the shutdown bound.
        let drained = tokio::time::timeout(cfg.shutdown_timeout, &mut batcher).await;
        if drained.is_err() {
            warn!(timeout = ?cfg.shutdown_timeout, "shutdown timeout: abandoning unacknowledged writes, they will be read again");
            abort.cancel();
            let _ = batcher.await;
        }
        committer_stop.cancel();
        let _ = committer.await;
        retention_stop.cancel();
        if let Some(r) = retention {
            let _ = r.await;
        }
        let s = source.clone();
        let _ = tokio::task::spawn_blocking(move || s.commit(true)).await;
        http_stop.cancel();
        let _ = http_task.await;
        // The HTTP handlers held the other references: this is the last one.
        leave_group(source, LEAVE_GROUP_TIMEOUT).await;
        let left = tracker.lock().map(|t| t.in_flight_events()).unwrap_or(0);
        info!(unacknowledged_events = left, "stopped");
        if let Some(e) = halt.take() {
            return Err(AppError::Sink(e));
        }
        result.map_err(AppError::from)
    }
}

/// How long closing the consumer (leaving the group) may take at exit.
const LEAVE_GROUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Leaves the consumer group and drops the consumer, waiting at most `timeout`.
///
/// librdkafka's close waits for the group's answer, and a broker that holds
/// a JoinGroup in flight (mid-rebalance) can keep it waiting for the whole
/// rebalance timeout. Offsets are already committed by then, so exiting
/// without the LeaveGroup only means the broker expires the member after the
/// session timeout.
async fn leave_group(source: Arc<AnySource>, timeout: Duration) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        source.close();
        drop(source);
        let _ = done_tx.send(());
    });
    let finished = tokio::task::spawn_blocking(move || done_rx.recv_timeout(timeout).is_ok())
        .await
        .unwrap_or(false);
    if !finished {
        warn!(
            ?timeout,
            "leaving the consumer group did not finish; the broker will expire this member"
        );
    }
}
