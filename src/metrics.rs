//! Every metric the process exports, in one registry passed down from `App`.
//!
//! Where an outcome is both logged and counted, the method here does both,
//! so the log line and the counter cannot drift apart.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tracing::{info, warn};

use crate::event::ChangeEvent;

/// The registry and its metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events: IntCounterVec,
    pub lag_records: IntGaugeVec,
    pub lag_seconds: prometheus::GaugeVec,
    pub end_to_end_latency: Histogram,
    pub bulk_requests: IntCounterVec,
    pub bulk_duration: HistogramVec,
    pub sink_retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub decode_errors: IntCounter,
    pub in_flight: IntGauge,
    pub watermarks: IntCounter,
    pub resolved_ts: prometheus::GaugeVec,
    pub commits: IntCounterVec,
    /// Binlog source: row changes and DDL captured, before the sink.
    pub binlog_events: IntCounterVec,
    /// Binlog source: file sequence number and offset of the last event read.
    pub binlog_file: IntGauge,
    pub binlog_position: IntGauge,
    /// Binlog source: now minus the last event's timestamp, 0 when idle and caught up.
    pub binlog_delay_seconds: prometheus::Gauge,
    pub binlog_reconnects: IntCounter,
    /// Binlog source: rows read by the initial snapshot.
    pub snapshot_rows: IntCounterVec,
    /// Binlog source: captured tables the snapshot has still to read.
    pub snapshot_remaining_tables: IntGauge,
    /// The table the snapshot reads now, for the dashboard.
    snapshot_table: Arc<Mutex<Option<(String, String)>>>,
    /// 1 while the sink's last write succeeded, 0 while a write is failing.
    pub sink_up: IntGauge,
    /// Failed sink writes by sink and kind (retried or not).
    pub sink_errors: IntCounterVec,
    /// Elasticsearch sink: 1 while a node takes requests, 0 while it is skipped.
    pub es_node_up: IntGaugeVec,
    /// Scheduled reconcile: the last run's rows by table and result
    /// (`compared`, `missing`, `changed`, `extra`).
    pub reconcile_rows: IntGaugeVec,
    /// Scheduled reconcile: when a run last completed (Unix seconds).
    pub reconcile_last_success: prometheus::Gauge,
    /// `CDC_BINLOG_HA=kafka`: 1 while this instance captures for its group.
    pub binlog_leader: IntGaugeVec,
    /// Kafka source: the physical time of the TiDB checkpoint TSO (every
    /// change up to it is stored), Unix seconds.
    pub checkpoint_time: prometheus::Gauge,
    /// The failure the sink is in, for `/readyz`; `None` when healthy.
    sink_failure: Arc<Mutex<Option<SinkFailure>>>,
    /// Events counted under `_other` because the table limit was reached.
    pub tables_overflow: IntCounter,
    tables: Arc<Mutex<TableLabels>>,
}

/// A snapshot in progress, as `/api/stats` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStatus {
    pub database: String,
    pub table: String,
    /// Rows of `table` read so far.
    pub rows: u64,
    /// Tables still to read, `table` included.
    pub remaining_tables: i64,
}

/// `CDC_METRICS_MAX_TABLES`'s default.
pub const DEFAULT_MAX_TABLES: usize = 1000;

/// The label value events beyond the table limit are counted under.
pub const OTHER: &str = "_other";

/// The database/table pairs given their own labels so far.
#[derive(Debug)]
struct TableLabels {
    /// Tables by database.
    names: HashMap<String, HashSet<String>>,
    pairs: usize,
    max: usize,
}

/// Why and since when the sink has been failing.
#[derive(Debug, Clone)]
struct SinkFailure {
    since: Instant,
    sink: &'static str,
    kind: &'static str,
    error: String,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only fails on invalid names or duplicate registration, which are
    // programming errors caught by the unit test below.
    r.expect("metric definition is valid")
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let events = must(IntCounterVec::new(
            Opts::new("cdc_events_total", "Change events stored in the sink"),
            &["database", "table", "op"],
        ));
        let lag_records = must(IntGaugeVec::new(
            Opts::new(
                "cdc_consumer_lag_records",
                "Records between the partition's high watermark and the committed offset",
            ),
            &["topic", "partition"],
        ));
        let lag_seconds = must(prometheus::GaugeVec::new(
            Opts::new(
                "cdc_consumer_lag_seconds",
                "Age of the oldest change read but not yet stored, 0 when caught up",
            ),
            &["topic", "partition"],
        ));
        let end_to_end_latency = must(Histogram::with_opts(
            HistogramOpts::new(
                "cdc_end_to_end_latency_seconds",
                "Time from the database commit to the sink's acknowledgement",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        ));
        let bulk_requests = must(IntCounterVec::new(
            Opts::new("cdc_bulk_requests_total", "Bulk requests by outcome"),
            &["outcome"],
        ));
        let bulk_duration = must(HistogramVec::new(
            HistogramOpts::new("cdc_bulk_request_duration_seconds", "Bulk request duration")
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            &["outcome"],
        ));
        let sink_retries = must(IntCounterVec::new(
            Opts::new("cdc_sink_retries_total", "Sink retries by reason"),
            &["reason"],
        ));
        let dead_letters = must(IntCounterVec::new(
            Opts::new(
                "cdc_dead_letter_messages_total",
                "Messages dead-lettered, by reason and destination (topic, or the file when the topic refuses them or there is no Kafka)",
            ),
            &["reason", "destination"],
        ));
        let decode_errors = must(IntCounter::new(
            "cdc_decode_errors_total",
            "Messages that could not be decoded",
        ));
        let in_flight = must(IntGauge::new(
            "cdc_events_in_flight",
            "Events read from the source and not yet acknowledged by the sink",
        ));
        let watermarks = must(IntCounter::new(
            "cdc_watermarks_total",
            "TiCDC watermark messages received",
        ));
        let resolved_ts = must(prometheus::GaugeVec::new(
            Opts::new(
                "cdc_source_resolved_timestamp_seconds",
                "Latest TiCDC watermark per partition, as Unix time",
            ),
            &["topic", "partition"],
        ));
        let commits = must(IntCounterVec::new(
            Opts::new("cdc_offset_commits_total", "Offset commits by outcome"),
            &["outcome"],
        ));
        let binlog_events = must(IntCounterVec::new(
            Opts::new(
                "cdc_binlog_events_captured_total",
                "Binlog source: row changes and DDL captured",
            ),
            &["database", "table", "op"],
        ));
        let binlog_file = must(IntGauge::new(
            "cdc_binlog_file_sequence",
            "Binlog source: sequence number of the binlog file being read (mysql-bin.000042 is 42)",
        ));
        let binlog_position = must(IntGauge::new(
            "cdc_binlog_position_bytes",
            "Binlog source: offset in that file after the last event read",
        ));
        let binlog_delay_seconds = must(prometheus::Gauge::new(
            "cdc_binlog_replication_delay_seconds",
            "Binlog source: seconds between the last event's timestamp and its reading, 0 when caught up",
        ));
        let binlog_reconnects = must(IntCounter::new(
            "cdc_binlog_reconnects_total",
            "Binlog source: reconnections to the server",
        ));
        let snapshot_rows = must(IntCounterVec::new(
            Opts::new(
                "cdc_snapshot_rows_total",
                "Binlog source: existing rows read by the initial snapshot",
            ),
            &["database", "table"],
        ));
        let snapshot_remaining_tables = must(IntGauge::new(
            "cdc_snapshot_remaining_tables",
            "Binlog source: captured tables the initial snapshot has still to read (0 when done or off)",
        ));
        let sink_up = must(IntGauge::new(
            "cdc_sink_up",
            "1 while the sink's last write succeeded, 0 while a write is failing and retried",
        ));
        sink_up.set(1);
        let sink_errors = must(IntCounterVec::new(
            Opts::new(
                "cdc_sink_errors_total",
                "Failed sink writes by sink and kind; retried unless the process stopped",
            ),
            &["sink", "kind"],
        ));
        let tables_overflow = must(IntCounter::new(
            "cdc_metrics_tables_overflow_total",
            "Events counted under table=\"_other\" because CDC_METRICS_MAX_TABLES pairs were already labelled",
        ));
        let es_node_up = must(IntGaugeVec::new(
            Opts::new(
                "cdc_es_node_up",
                "1 while an Elasticsearch node takes requests, 0 while it is skipped after a failure",
            ),
            &["node"],
        ));
        let reconcile_rows = must(IntGaugeVec::new(
            Opts::new(
                "cdc_reconcile_rows",
                "Scheduled reconcile: rows of the last run by result (compared, missing, changed, extra)",
            ),
            &["database", "table", "result"],
        ));
        let reconcile_last_success = must(prometheus::Gauge::new(
            "cdc_reconcile_last_success_timestamp_seconds",
            "Scheduled reconcile: when a run last completed, Unix seconds (0: none yet)",
        ));
        let binlog_leader = must(IntGaugeVec::new(
            Opts::new(
                "cdc_binlog_leader",
                "CDC_BINLOG_HA=kafka: 1 while this instance captures the binlog for its group, 0 while it stands by",
            ),
            &["group"],
        ));
        let checkpoint_time = must(prometheus::Gauge::new(
            "cdc_checkpoint_timestamp_seconds",
            "Kafka source: the TiDB checkpoint (the least TiCDC watermark every change before which is stored, over the assigned partitions), Unix seconds of its TSO (0: none yet)",
        ));
        let build_info = must(IntGaugeVec::new(
            Opts::new("cdc_build_info", "Build information, always 1"),
            &["version"],
        ));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        reg(Box::new(events.clone()));
        reg(Box::new(lag_records.clone()));
        reg(Box::new(lag_seconds.clone()));
        reg(Box::new(end_to_end_latency.clone()));
        reg(Box::new(bulk_requests.clone()));
        reg(Box::new(bulk_duration.clone()));
        reg(Box::new(sink_retries.clone()));
        reg(Box::new(dead_letters.clone()));
        reg(Box::new(decode_errors.clone()));
        reg(Box::new(in_flight.clone()));
        reg(Box::new(watermarks.clone()));
        reg(Box::new(resolved_ts.clone()));
        reg(Box::new(commits.clone()));
        reg(Box::new(binlog_events.clone()));
        reg(Box::new(binlog_file.clone()));
        reg(Box::new(binlog_position.clone()));
        reg(Box::new(binlog_delay_seconds.clone()));
        reg(Box::new(binlog_reconnects.clone()));
        reg(Box::new(snapshot_rows.clone()));
        reg(Box::new(snapshot_remaining_tables.clone()));
        reg(Box::new(sink_up.clone()));
        reg(Box::new(sink_errors.clone()));
        reg(Box::new(tables_overflow.clone()));
        reg(Box::new(es_node_up.clone()));
        reg(Box::new(reconcile_rows.clone()));
        reg(Box::new(reconcile_last_success.clone()));
        reg(Box::new(binlog_leader.clone()));
        reg(Box::new(checkpoint_time.clone()));
        reg(Box::new(build_info));
        Metrics {
            registry,
            events,
            lag_records,
            lag_seconds,
            end_to_end_latency,
            bulk_requests,
            bulk_duration,
            sink_retries,
            dead_letters,
            decode_errors,
            in_flight,
            watermarks,
            resolved_ts,
            commits,
            binlog_events,
            binlog_file,
            binlog_position,
            binlog_delay_seconds,
            binlog_reconnects,
            snapshot_rows,
            snapshot_remaining_tables,
            snapshot_table: Arc::default(),
            sink_up,
            sink_errors,
            es_node_up,
            reconcile_rows,
            reconcile_last_success,
            binlog_leader,
            checkpoint_time,
            sink_failure: Arc::default(),
            tables_overflow,
            tables: Arc::new(Mutex::new(TableLabels {
                names: HashMap::new(),
                pairs: 0,
                max: DEFAULT_MAX_TABLES,
            })),
        }
    }

    /// Sets `cdc_consumer_lag_seconds` per `(topic, partition, seconds)`.
    pub fn set_lag_seconds(&self, lags: impl IntoIterator<Item = (std::sync::Arc<str>, i32, f64)>) {
        for (topic, partition, seconds) in lags {
            self.lag_seconds
                .with_label_values(&[topic.as_ref(), &partition.to_string()])
                .set(seconds);
        }
    }

    /// Notes the table the snapshot starts reading.
    pub fn snapshot_reading(&self, database: &str, table: &str) {
        *self
            .snapshot_table
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((database.to_owned(), table.to_owned()));
    }

    /// Where the snapshot is, while one runs: the table it reads, that
    /// table's rows read so far and the tables still to read.
    pub fn snapshot_status(&self) -> Option<SnapshotStatus> {
        let remaining_tables = self.snapshot_remaining_tables.get();
        if remaining_tables <= 0 {
            return None;
        }
        let (database, table) = self
            .snapshot_table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let rows = self
            .snapshot_rows
            .with_label_values(&[&database, &table])
            .get();
        Some(SnapshotStatus {
            database,
            table,
            rows,
            remaining_tables,
        })
    }

    /// The largest lag in seconds the pipeline reports: consumer lag of any
    /// partition, or the binlog source's replication delay.
    pub fn max_lag_seconds(&self) -> f64 {
        let mut max = self.binlog_delay_seconds.get();
        for family in self.registry.gather() {
            if family.name() == "cdc_consumer_lag_seconds" {
                for m in family.get_metric() {
                    max = max.max(m.get_gauge().get_value());
                }
            }
        }
        max
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data we never create.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Counts events the sink stored and records their end-to-end latency.
    pub fn stored(&self, events: &[&ChangeEvent], now_ms: i64) {
        // One lock per batch, not per event: this runs for every event stored.
        let mut seen = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        // Counted per run of events of one table and op: one label lookup
        // for a run rather than one per event.
        let mut start = 0;
        for (i, e) in events.iter().enumerate() {
            let latency = (now_ms - e.commit_time_ms).max(0) as f64 / 1000.0;
            self.end_to_end_latency.observe(latency);
            let first = events[start];
            let run_ends = events.get(i + 1).is_none_or(|next| {
                next.op != first.op || next.table != first.table || next.database != first.database
            });
            if run_ends {
                let (database, table) = self.table_labels(&mut seen, &first.database, &first.table);
                self.events
                    .with_label_values(&[database, table, first.op.as_str()])
                    .inc_by((i + 1 - start) as u64);
                start = i + 1;
            }
        }
    }

    /// The labels for `database`.`table`: itself while fewer than
    /// `max_tables` pairs were seen, else `_other` (table names come from
    /// message contents, and every label pair is a series kept forever).
    fn table_labels<'a>(
        &self,
        seen: &mut TableLabels,
        database: &'a str,
        table: &'a str,
    ) -> (&'a str, &'a str) {
        if seen.names.get(database).is_some_and(|t| t.contains(table)) {
            return (database, table);
        }
        if seen.pairs < seen.max {
            seen.pairs += 1;
            seen.names
                .entry(database.to_owned())
                .or_default()
                .insert(table.to_owned());
            return (database, table);
        }
        // The first overflow warns; the counter says how many followed.
        if self.tables_overflow.get() == 0 {
            warn!(
                max_tables = seen.max,
                database,
                table,
                "too many tables for metric labels; counting the rest under table=\"_other\" (CDC_METRICS_MAX_TABLES)"
            );
        }
        self.tables_overflow.inc();
        (OTHER, OTHER)
    }

    /// Sets how many database/table label pairs `cdc_events_total` may have.
    pub fn set_max_tables(&self, max: usize) {
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max = max;
    }

    /// Logs and counts a failed sink write that will be retried; the sink
    /// is down (`cdc_sink_up` 0, `/readyz` 503) until a write succeeds.
    pub fn sink_retry(
        &self,
        sink: &'static str,
        reason: &'static str,
        items: usize,
        attempt: u32,
        error: &str,
    ) {
        self.sink_retries.with_label_values(&[reason]).inc();
        self.sink_errors.with_label_values(&[sink, reason]).inc();
        self.sink_up.set(0);
        let mut failure = self
            .sink_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let since = failure.as_ref().map_or_else(Instant::now, |f| f.since);
        *failure = Some(SinkFailure {
            since,
            sink,
            kind: reason,
            error: error.to_owned(),
        });
        warn!(
            sink,
            reason, items, attempt, error, "sink write failed, retrying; reading is paused"
        );
    }

    /// Logs and counts a sink error that stops the process.
    pub fn sink_failed(&self, sink: &'static str, kind: &'static str, error: &str) {
        self.sink_errors.with_label_values(&[sink, kind]).inc();
        self.sink_up.set(0);
        tracing::error!(sink, kind, error, "sink write failed for good");
    }

    /// Records a successful write: the sink is up again.
    pub fn sink_ok(&self) {
        let mut failure = self
            .sink_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = failure.take() {
            info!(
                sink = f.sink,
                failed_for = ?f.since.elapsed(),
                "sink writes succeed again"
            );
        }
        self.sink_up.set(1);
    }

    /// Why the sink is failing, for `/readyz`; `None` when its last write succeeded.
    pub fn sink_failure(&self) -> Option<String> {
        let failure = self
            .sink_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failure.as_ref().map(|f| {
            format!(
                "{} writes failing for {}s ({}): {}",
                f.sink,
                f.since.elapsed().as_secs(),
                f.kind,
                f.error
            )
        })
    }

    /// Logs and counts a dead-lettered message.
    pub fn dead_lettered(
        &self,
        reason: &str,
        destination: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        error: &str,
    ) {
        self.dead_letters
            .with_label_values(&[reason, destination])
            .inc();
        warn!(
            reason,
            destination, topic, partition, offset, error, "message dead-lettered"
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_registers_and_renders() {
        let m = Metrics::new();
        m.events.with_label_values(&["d", "t", "insert"]).inc();
        m.lag_records.with_label_values(&["t", "0"]).set(3);
        let text = m.render();
        assert!(text.contains("cdc_events_total{database=\"d\",op=\"insert\",table=\"t\"} 1"));
        assert!(text.contains("cdc_build_info{version="));
        assert!(text.contains("cdc_consumer_lag_records{partition=\"0\",topic=\"t\"} 3"));
    }

    #[test]
    fn tables_beyond_the_limit_count_under_other() {
        let m = Metrics::new();
        m.set_max_tables(2);
        let tables = m.tables.clone();
        let mut seen = tables.lock().unwrap();
        assert_eq!(m.table_labels(&mut seen, "d", "a"), ("d", "a"));
        assert_eq!(m.table_labels(&mut seen, "d", "b"), ("d", "b"));
        assert_eq!(m.table_labels(&mut seen, "d", "c"), (OTHER, OTHER));
        assert_eq!(m.table_labels(&mut seen, "e", "a"), (OTHER, OTHER));
        assert_eq!(m.table_labels(&mut seen, "d", "a"), ("d", "a"));
        assert_eq!(m.tables_overflow.get(), 2);
    }

    #[test]
    fn the_sink_is_down_from_a_retry_until_a_write_succeeds() {
        let m = Metrics::new();
        assert_eq!(m.sink_up.get(), 1);
        assert!(m.sink_failure().is_none());
        m.sink_retry("sqlite", "disk_full", 3, 1, "database or disk is full");
        assert_eq!(m.sink_up.get(), 0);
        let why = m.sink_failure().expect("failing");
        assert!(
            why.contains("disk_full") && why.contains("disk is full"),
            "{why}"
        );
        m.sink_ok();
        assert_eq!(m.sink_up.get(), 1);
        assert!(m.sink_failure().is_none());
    }
}
