//! Wiring: `App::build(cfg)` creates every part; `run_until(shutdown)` runs
//! the pipeline and shuts it down gracefully.
//!
//! The app knows the parts by their traits only: `source::build` and
//! `sink::build` pick the configured kinds, and checkpoints pass between
//! them typed, through `Sink::stored_checkpoints`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_millis;
use crate::config::Config;
use crate::http::access::Access;
use crate::http::health::Readiness;
use crate::http::{self, HttpState};
use crate::kafka_client::ClientError;
use crate::mask::{MaskError, Masker};
use crate::metrics::Metrics;
use crate::pipeline::batch::{run_batcher, BatchLimits, Halt, Writer};
use crate::pipeline::dlq::DeadLetterQueue;
use crate::reconcile;
use crate::sink::{self, Sink, SinkError};
use crate::source::ack::OffsetTracker;
use crate::source::envelope;
use crate::source::{self, Source, SourceError};

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
    #[error("dead-letter queue: {0}")]
    DeadLetters(ClientError),
    #[error("masking: {0}")]
    Mask(MaskError),
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

/// `cdc-monitor setup`: prepares the sink (Elasticsearch: the ILM policy and
/// templates, each unless present) and returns; nothing is read or written.
pub async fn setup(cfg: &Config) -> Result<(), AppError> {
    let sink = sink::build(cfg, &Metrics::new())?;
    sink.prepare().await?;
    Ok(())
}

/// A built, not yet running, pipeline.
pub struct App {
    parts: Parts,
    listener: TcpListener,
}

/// Everything but the listener, which the HTTP server takes when the app runs.
struct Parts {
    cfg: Config,
    metrics: Metrics,
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    dlq: DeadLetterQueue,
    masker: Option<Masker>,
    tracker: Arc<Mutex<OffsetTracker>>,
    http_addr: SocketAddr,
}

impl App {
    /// Creates clients and binds the HTTP port; nothing is read yet.
    pub async fn build(cfg: Config) -> Result<App, AppError> {
        let metrics = Metrics::new();
        metrics.set_max_tables(cfg.metrics_max_tables);
        let tracker = Arc::new(Mutex::new(OffsetTracker::new(metrics.in_flight.clone())));
        let sink = sink::build(&cfg, &metrics)?;
        let dlq = DeadLetterQueue::build(&cfg).map_err(AppError::DeadLetters)?;
        let masker = Masker::build(&cfg.mask, &cfg.data_dir).map_err(AppError::Mask)?;
        if masker.is_none() {
            warn!("CDC_MASK_COLUMNS is empty: no column is masked, every value reaches the sinks and /api in the clear");
        }
        // A sink that keeps positions with its events is where the source resumes.
        let stored = sink.clone().stored_checkpoints();
        let source = source::build(&cfg, tracker.clone(), &metrics, stored)?;
        let (listener, http_addr) =
            http::bind(cfg.http.addr)
                .await
                .map_err(|error| AppError::Bind {
                    addr: cfg.http.addr,
                    error,
                })?;
        Ok(App {
            parts: Parts {
                cfg,
                metrics,
                source,
                sink,
                dlq,
                masker,
                tracker,
                http_addr,
            },
            listener,
        })
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.parts.http_addr
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    /// Runs until `shutdown` resolves, then stops reading, flushes, commits and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App { parts, listener } = self;
        parts.run_until(listener, shutdown).await
    }
}

impl Parts {
    /// `CDC_RECONCILE_INTERVAL`: every interval, compares the source
    /// database with the sink's state and exports the result
    /// (`cdc_reconcile_rows`, `cdc_reconcile_last_success_timestamp_seconds`);
    /// never repairs (`cdc-monitor reconcile --repair` does).
    fn schedule_reconcile(&self, stop: CancellationToken) {
        let Some(every) = self.cfg.reconcile_interval else {
            return;
        };
        let (cfg, sink, masker, metrics, tracker) = (
            self.cfg.clone(),
            self.sink.clone(),
            self.masker.clone(),
            self.metrics.clone(),
            self.tracker.clone(),
        );
        tokio::spawn(async move {
            let opts = reconcile::Options {
                tables: None,
                repair: false,
                chunk_rows: 10_000,
                max_rows_per_sec: None,
                // Not past the next run.
                settle: every.min(Duration::from_secs(30)),
                samples: 10,
                as_of: None,
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                // Kafka source: TiDB as of what the sink holds now.
                let opts = reconcile::Options {
                    as_of: tracker.lock().ok().and_then(|t| t.checkpoint_tso()),
                    ..opts.clone()
                };
                let run = reconcile::reconcile(&cfg, &sink, masker.as_ref(), &opts, &metrics);
                let report = tokio::select! {
                    r = run => r,
                    _ = stop.cancelled() => return,
                };
                match report {
                    Ok(report) => {
                        for t in &report.tables {
                            for (result, n) in [
                                ("compared", t.compared),
                                ("missing", t.missing.count),
                                ("changed", t.changed.count),
                                ("extra", t.extra.count),
                            ] {
                                metrics
                                    .reconcile_rows
                                    .with_label_values(&[&t.database, &t.table, result])
                                    .set(n as i64);
                            }
                        }
                        metrics
                            .reconcile_last_success
                            .set(now_millis() as f64 / 1000.0);
                        if report.differences() > 0 {
                            warn!(
                                differences = report.differences(),
                                report = %report.text().trim_end(),
                                "reconcile: the captured state differs from the database; \
                                 `cdc-monitor reconcile --repair` writes the corrections"
                            );
                        } else {
                            info!(
                                rows = report.compared(),
                                "reconcile: the captured state equals the database"
                            );
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "scheduled reconcile failed; trying again at the next interval")
                    }
                }
            }
        });
    }

    async fn run_until(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let stop_reading = CancellationToken::new();
        {
            let stop_reading = stop_reading.clone();
            tokio::spawn(async move {
                shutdown.await;
                info!("shutdown requested");
                stop_reading.cancel();
            });
        }
        let http = self.serve_http(listener);
        tokio::select! {
            r = self.sink.prepare() => if let Err(e) = r {
                http.stop().await;
                return Err(e.into());
            },
            _ = stop_reading.cancelled() => {
                http.stop().await;
                return Ok(());
            }
        }
        let running = self.start_pipeline(stop_reading.clone());
        self.schedule_reconcile(stop_reading.clone());
        info!(
            source = self.source.name(),
            sink = self.sink.name(),
            "pipeline started"
        );
        let result = self
            .source
            .run(running.tx.clone(), stop_reading.clone())
            .await;
        stop_reading.cancel();
        let halt = running.drain(&self.cfg, &self.source).await;
        http.stop().await;
        // The HTTP handlers held the other references: this is the last one.
        leave_group(self.source, LEAVE_GROUP_TIMEOUT).await;
        let left = self
            .tracker
            .lock()
            .map(|t| t.in_flight_events())
            .unwrap_or(0);
        info!(unacknowledged_events = left, "stopped");
        if let Some(e) = halt {
            return Err(AppError::Sink(e));
        }
        result.map_err(AppError::from)
    }

    /// Phase 1: `/metrics`, `/healthz`, `/readyz` and `/api/*` answer from now on.
    fn serve_http(&self, listener: TcpListener) -> Background {
        let stop = CancellationToken::new();
        let (source, sink, metrics) =
            (self.source.clone(), self.sink.clone(), self.metrics.clone());
        let status_source = self.source.clone();
        let readiness = Readiness::default()
            .with(self.source.name(), move || {
                let s = source.clone();
                async move { s.check().await.map_err(|e| e.to_string()) }
            })
            .with(self.sink.name(), move || {
                let s = sink.clone();
                // The last write's outcome first: a sink that answers pings
                // but refuses writes is not ready.
                let failing = metrics.sink_failure();
                async move {
                    match failing {
                        Some(why) => Err(why),
                        None => s.check().await.map_err(|e| e.to_string()),
                    }
                }
            })
            .with_status("binlog_ha", move || {
                let s = status_source.clone();
                async move { s.status().await }
            });
        let state = HttpState {
            metrics: self.metrics.clone(),
            readiness,
            query: self.sink.searchable().then(|| self.sink.clone()),
            access: Access::from_config(&self.cfg.http),
            snapshot: self.source.snapshot_control(),
            checkpoint: Some({
                let tracker = self.tracker.clone();
                Arc::new(move || tracker.lock().ok()?.checkpoint_tso())
            }),
        };
        if self.cfg.http.auth_disabled {
            warn!(
                http_addr = %self.http_addr,
                "CDC_HTTP_AUTH=none: the dashboard, /api and /metrics answer anyone who reaches this address"
            );
        }
        let serve = http::serve(listener, state, stop.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                warn!(error = %e, "the HTTP server stopped");
            }
        });
        info!(
            http_addr = %self.http_addr,
            token_required = self.cfg.http.token.is_some(),
            "serving /metrics, /healthz and /readyz"
        );
        Background { stop, task }
    }

    /// Phase 2: the batcher, the sink's upkeep and the periodic committer.
    fn start_pipeline(&self, stop_reading: CancellationToken) -> Running {
        let p = &self.cfg.pipeline;
        let (tx, rx) = envelope::channel(p.channel_capacity, p.max_buffered_bytes);
        let halt = Halt::default();
        {
            // A write the sink gave up on stops reading at once.
            let halt = halt.clone();
            tokio::spawn(async move {
                halt.halted().await;
                stop_reading.cancel();
            });
        }
        let abort = CancellationToken::new();
        let writer = Arc::new(Writer {
            sink: self.sink.clone(),
            dlq: self.dlq.clone(),
            tracker: self.tracker.clone(),
            metrics: self.metrics.clone(),
            abort: abort.clone(),
            halt: halt.clone(),
            masker: self.masker.clone(),
            dlq_keep_original: self.cfg.mask.dlq_keep_original,
            fence: self.source.fence(),
        });
        let limits = BatchLimits {
            max_events: p.max_events,
            max_bytes: p.max_bytes,
            linger: p.linger,
        };
        let batcher = tokio::spawn(run_batcher(rx, writer, limits, self.sink.concurrency()));
        let upkeep_stop = CancellationToken::new();
        let upkeep = Background {
            task: tokio::spawn(self.sink.clone().maintain(upkeep_stop.clone())),
            stop: upkeep_stop,
        };
        Running {
            tx,
            batcher,
            abort,
            halt,
            upkeep,
            committer: self.start_committer(),
        }
    }

    /// Commits acknowledged positions and refreshes the lag gauges every
    /// `kafka.commit_interval`.
    fn start_committer(&self) -> Background {
        let stop = CancellationToken::new();
        let (source, every, tracker, metrics, stopped) = (
            self.source.clone(),
            self.cfg.kafka.commit_interval,
            self.tracker.clone(),
            self.metrics.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
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
                            s.refresh_lag();
                        })
                        .await;
                        if let Ok(t) = tracker.lock() {
                            metrics.set_lag_seconds(t.lag_seconds(now_millis()));
                        }
                    }
                    _ = stopped.cancelled() => return,
                }
            }
        });
        Background { stop, task }
    }
}

/// A task that runs until its token fires.
struct Background {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Background {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The pipeline's tasks while the source reads.
struct Running {
    tx: envelope::EnvelopeTx,
    batcher: JoinHandle<()>,
    /// Fires at the shutdown deadline: writes still retrying give up.
    abort: CancellationToken,
    halt: Halt,
    upkeep: Background,
    committer: Background,
}

impl Running {
    /// Phase 3, once the source stopped: flush what is buffered within the
    /// shutdown bound, stop the helpers, commit synchronously. Returns the
    /// write failure that halted the line, if one did.
    async fn drain(self, cfg: &Config, source: &Arc<dyn Source>) -> Option<SinkError> {
        let Running {
            tx,
            mut batcher,
            abort,
            halt,
            upkeep,
            committer,
        } = self;
        // The channel closes with the last sender: the batcher flushes what
        // it holds and waits for the writes in flight.
        drop(tx);
        let drained = tokio::time::timeout(cfg.shutdown_timeout, &mut batcher).await;
        if drained.is_err() {
            warn!(timeout = ?cfg.shutdown_timeout, "shutdown timeout: abandoning unacknowledged writes, they will be read again");
            abort.cancel();
            let _ = batcher.await;
        }
        committer.stop().await;
        upkeep.stop().await;
        let s = source.clone();
        let _ = tokio::task::spawn_blocking(move || s.commit(true)).await;
        halt.take()
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
async fn leave_group(source: Arc<dyn Source>, timeout: Duration) {
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
