//! `cdc-monitor reconcile`: compares the source database with the captured
//! current state, table by table, and with `--repair` writes the events
//! that make them equal.
//!
//! Method. The state side is read once per table (every live row's key and
//! a digest of its values). The database side is read in key chunks in one
//! consistent view (the snapshot's read: range scans on the key), each row
//! rendered and masked exactly as the capture renders and masks it, so a
//! correct pipeline compares equal value for value. The comparison is done
//! here, not by a checksum SQL computes: SQL cannot render values as the
//! capture does (fractional DATETIMEs, DECIMAL scale, character sets, JSON),
//! so a checksum in SQL would compare renderings, not data. Rows that
//! differ are read again, on both sides, every second until they agree or
//! `settle` runs out: a change still on its way through the pipeline is
//! not a difference.
//!
//! Repair writes, through the configured sink (and masking), a `snapshot`
//! event with the database's row for a missing or changed row, and a
//! `delete` event for an extra one, each with a `reason`, at the version of
//! the read that saw them, so a change captured later still wins.
//!
//! Source database. The binlog source's, read at a binlog position. With
//! the Kafka source, its upstream (`CDC_MYSQL_URL`) over the MySQL
//! protocol, without any binlog part: TiDB as of a TSO (`Options::as_of`,
//! the consumer's checkpoint: every change up to it is stored), where the
//! two sides must agree after one look at each differing row by key, with
//! no settling (a row whose state is newer than the TSO is a change past
//! the read point, not a difference), and repairs
//! carry the TSO as their version (which is how a table's existing rows get
//! into the state); without a TSO (not TiDB, or no checkpoint yet) the
//! current data, settled like the binlog path's, and repairs carry the
//! time of the read as their version (the rule for changes without a
//! commit_ts, which TiDB's TSOs and canal-json's `es` follow too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_128;

use crate::checkpoint::BinlogPosition;
use crate::config::{Config, SourceConfig, TableFilter};
use crate::event::{ChangeEvent, Op, Row, SourcePosition};
use crate::mask::Masker;
use crate::metrics::Metrics;
use crate::sink::state::{RowKey, RowState};
use crate::sink::{Sink, StatePageRequest, WriteBatch};
use crate::source::ack::OffsetTracker;
use crate::source::binlog::scan::{ReadPoint, Scan, ScanKey};
use crate::source::binlog::{BinlogSource, PositionStore};

/// Rows of state read per page.
const STATE_PAGE: usize = 5_000;

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only these captured tables (all when `None`).
    pub tables: Option<TableFilter>,
    pub repair: bool,
    /// Rows per database read.
    pub chunk_rows: usize,
    /// Most rows read from the database per second (`None`: no limit).
    pub max_rows_per_sec: Option<u64>,
    /// How long rows that differ are re-checked before they count.
    pub settle: Duration,
    /// Keys listed per kind of difference.
    pub samples: usize,
    /// Kafka source: the TSO to read TiDB at (the consumer's checkpoint).
    pub as_of: Option<u64>,
}

/// Why reconcile could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Config(String),
    #[error("source database: {0}")]
    Source(#[from] crate::source::SourceError),
    #[error("captured state: {0}")]
    State(String),
    #[error("repair: {0}")]
    Repair(String),
}

/// One kind of difference in one table.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Diff {
    pub count: u64,
    /// Up to `Options::samples` keys (JSON arrays of the key's values).
    pub samples: Vec<String>,
}

impl Diff {
    fn add(&mut self, key: &str, samples: usize) {
        self.count += 1;
        if self.samples.len() < samples {
            self.samples.push(key.to_owned());
        }
    }
}

/// One table's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub database: String,
    pub table: String,
    /// Rows read from the database.
    pub compared: u64,
    /// In the database, not in the state.
    pub missing: Diff,
    /// In the state, gone from the database.
    pub extra: Diff,
    /// In both, values differ.
    pub changed: Diff,
    /// Rows that differed at first and agreed once re-read (in flight).
    pub settled: u64,
    /// Corrective events written (`--repair`).
    pub repaired: u64,
}

impl TableReport {
    pub fn differences(&self) -> u64 {
        self.missing.count + self.extra.count + self.changed.count
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tables: Vec<TableReport>,
    /// Where the first read was: a binlog position, a TSO, or the current data.
    pub read_point: String,
    /// SQL statements sent to the database.
    pub queries: u64,
    pub elapsed_seconds: f64,
    pub settle_seconds: f64,
}

impl Report {
    pub fn differences(&self) -> u64 {
        self.tables.iter().map(TableReport::differences).sum()
    }

    pub fn compared(&self) -> u64 {
        self.tables.iter().map(|t| t.compared).sum()
    }

    /// The human-readable report: a line per table, samples, a summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            out.push_str(&format!(
                "{}.{}: {} rows compared, {} missing, {} changed, {} extra",
                t.database, t.table, t.compared, t.missing.count, t.changed.count, t.extra.count
            ));
            if t.settled > 0 {
                out.push_str(&format!(" ({} in flight, agreed when re-read)", t.settled));
            }
            if t.repaired > 0 {
                out.push_str(&format!("; {} repaired", t.repaired));
            }
            out.push('\n');
            for (kind, d) in [
                ("missing", &t.missing),
                ("changed", &t.changed),
                ("extra", &t.extra),
            ] {
                if !d.samples.is_empty() {
                    let more = d.count - d.samples.len() as u64;
                    out.push_str(&format!("  {kind}: {}", d.samples.join(" ")));
                    if more > 0 {
                        out.push_str(&format!(" and {more} more"));
                    }
                    out.push('\n');
                }
            }
        }
        out.push_str(&format!(
            "{} tables, {} rows compared, {} differences (read point: {}, {} queries, {:.1} s; rows that differed were re-read for up to {:.0} s before counting)\n",
            self.tables.len(),
            self.compared(),
            self.differences(),
            self.read_point,
            self.queries,
            self.elapsed_seconds,
            self.settle_seconds
        ));
        out
    }
}

/// A row as compared: its key, the digest of its values, and how to read it again.
struct Seen {
    digest: u128,
    event: ChangeEvent,
    key: ScanKey,
}

/// The digest of a row's values, independent of column order.
fn digest(values: &serde_json::Value) -> u128 {
    // `Value` objects keep their keys sorted: the same values give the same bytes.
    xxh3_128(&serde_json::to_vec(values).unwrap_or_default())
}

fn row_digest(row: &Row) -> u128 {
    digest(&serde_json::to_value(row).unwrap_or(serde_json::Value::Null))
}

/// Compares every captured table (or `opts.tables`) with `sink`'s state.
pub async fn reconcile(
    cfg: &Config,
    sink: &Arc<dyn Sink>,
    masker: Option<&Masker>,
    opts: &Options,
    metrics: &Metrics,
) -> Result<Report, ReconcileError> {
    let Some(mysql) = cfg.source.upstream() else {
        return Err(ReconcileError::Config(
            "reconcile reads the source database: with CDC_SOURCE=kafka set CDC_MYSQL_URL \
             to the upstream (TiDB, MySQL or MariaDB)"
                .into(),
        ));
    };
    let source = BinlogSource::new(
        mysql,
        PositionStore::Sink(None, None),
        Arc::new(Mutex::new(OffsetTracker::new(metrics.in_flight.clone()))),
        metrics.clone(),
    )?;
    let started = Instant::now();
    let mut scan = match &cfg.source {
        SourceConfig::Binlog(_) => source.scan(opts.tables.as_ref()).await?,
        SourceConfig::Kafka { .. } => {
            source
                .scan_upstream(opts.tables.as_ref(), opts.as_of)
                .await?
        }
    };
    let read_point = scan.point().to_string();
    // Nothing up to a TSO is still in flight: no settling there.
    let opts = &Options {
        settle: match scan.point() {
            ReadPoint::Tso(_) => Duration::ZERO,
            _ => opts.settle,
        },
        ..opts.clone()
    };
    let mut reports = Vec::new();
    for (t, (database, table)) in scan.tables().into_iter().enumerate() {
        let target = Target {
            t,
            database: &database,
            table: &table,
            sink,
            masker,
        };
        let report = compare_table(&mut scan, &target, opts).await?;
        reports.push(report);
        if t + 1 < scan.tables().len() {
            // Each table in a fresh view: one long transaction would hold
            // back the server's purge for the whole run.
            scan.refresh().await?;
        }
    }
    let queries = scan.queries;
    scan.close().await;
    Ok(Report {
        tables: reports,
        read_point,
        queries,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        settle_seconds: opts.settle.as_secs_f64(),
    })
}

/// The live state of `database.table`: key → (digest, state).
async fn read_state(
    sink: &Arc<dyn Sink>,
    database: &str,
    table: &str,
) -> Result<HashMap<String, (u128, RowState)>, ReconcileError> {
    let mut out = HashMap::new();
    let mut cursor = None;
    loop {
        let (rows, next) = sink
            .state_page(StatePageRequest {
                database: database.to_owned(),
                table: table.to_owned(),
                cursor,
                limit: STATE_PAGE,
            })
            .await
            .map_err(|e| ReconcileError::State(e.to_string()))?;
        for (key, state) in rows {
            out.insert(key, (digest(&state.data), state));
        }
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// One table compared: its place in the scan, and the state it is compared with.
struct Target<'a> {
    t: usize,
    database: &'a str,
    table: &'a str,
    sink: &'a Arc<dyn Sink>,
    masker: Option<&'a Masker>,
}

impl Target<'_> {
    /// A row read from the database, masked as the capture masks it, under
    /// its key values.
    fn seen(&self, mut event: ChangeEvent, key: ScanKey) -> (String, Seen) {
        if let Some(m) = self.masker {
            m.mask_event(&mut event);
        }
        let values = RowKey::of(self.database, self.table, &event.pk, &event.data).values;
        let digest = row_digest(&event.data);
        (values, Seen { digest, event, key })
    }

    /// The state of the row with these key values (a tombstone too).
    async fn state_of(&self, values: &str) -> Result<Option<RowState>, ReconcileError> {
        let key = RowKey {
            database: self.database.to_owned(),
            table: self.table.to_owned(),
            values: values.to_owned(),
        };
        self.sink
            .row(&key)
            .await
            .map_err(|e| ReconcileError::State(e.to_string()))
    }
}

/// Reads, compares, re-checks and (with `repair`) repairs one table.
async fn compare_table(
    scan: &mut Scan<'_>,
    target: &Target<'_>,
    opts: &Options,
) -> Result<TableReport, ReconcileError> {
    let Target {
        t,
        database,
        table,
        sink,
        ..
    } = *target;
    let mut state = read_state(sink, database, table).await?;
    // At a TSO every change up to it is stored: a row whose state is newer
    // is a change past the read point, compared but no difference.
    let tso = scan.point().tso();
    let past = |s: &RowState| past_read_point(s, tso);
    let mut compared = 0u64;
    // Differing rows seen in the database: key → the row.
    let mut differ: HashMap<String, Seen> = HashMap::new();
    let mut after: Option<ScanKey> = None;
    let limiter = Instant::now();
    loop {
        let chunk = scan.chunk(t, after.as_ref(), opts.chunk_rows).await?;
        for (event, key) in chunk.rows {
            compared += 1;
            let (values, seen) = target.seen(event, key);
            match state.remove(&values) {
                Some((s, _)) if s == seen.digest => {}
                Some((_, s)) if past(&s) => {}
                _ => {
                    differ.insert(values, seen);
                }
            }
        }
        if let Some(limit) = opts.max_rows_per_sec.filter(|l| *l > 0) {
            let due = Duration::from_secs_f64(compared as f64 / limit as f64);
            if let Some(wait) = due.checked_sub(limiter.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        match chunk.next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    // What is left of the state is gone from the database (or in flight).
    let mut extra: HashMap<String, RowState> = state
        .into_iter()
        .filter(|(_, (_, s))| !past(s))
        .map(|(k, (_, s))| (k, s))
        .collect();
    let first = differ.len() + extra.len();
    // The database stands still at a TSO (no settling there), but the
    // state was read by search, which may lag its writes (Elasticsearch
    // refreshes every second): one look at each differing row by key, now.
    let mut look_now = tso.is_some();
    let deadline = Instant::now() + opts.settle;
    while !(differ.is_empty() && extra.is_empty()) && (look_now || Instant::now() < deadline) {
        if !look_now {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        look_now = false;
        recheck(scan, target, &mut differ, &mut extra).await?;
    }
    let mut report = TableReport {
        database: database.to_owned(),
        table: table.to_owned(),
        compared,
        missing: Diff::default(),
        extra: Diff::default(),
        changed: Diff::default(),
        settled: (first - differ.len() - extra.len()) as u64,
        repaired: 0,
    };
    // Sorted, so the samples are stable run to run.
    let mut keys: Vec<&String> = differ.keys().collect();
    keys.sort();
    let mut fixes = Vec::new();
    for key in keys {
        let seen = &differ[key];
        let in_state = target.state_of(key).await?.is_some_and(|s| !s.deleted);
        let reason = if in_state {
            report.changed.add(key, opts.samples);
            "reconcile: changed"
        } else {
            report.missing.add(key, opts.samples);
            "reconcile: missing"
        };
        let mut fix = seen.event.clone();
        fix.reason = Some(reason.to_owned());
        fixes.push(fix);
    }
    let mut keys: Vec<&String> = extra.keys().collect();
    keys.sort();
    let at = scan.point().clone();
    for key in keys {
        report.extra.add(key, opts.samples);
        fixes.push(deletion(&extra[key], &at));
    }
    if opts.repair && !fixes.is_empty() {
        let n = fixes.len() as u64;
        write_fixes(sink, fixes).await?;
        report.repaired = n;
    }
    Ok(report)
}

/// Whether the state holds a change committed after the TSO the database
/// was read at: newer than what was compared, so not a difference.
fn past_read_point(state: &RowState, tso: Option<u64>) -> bool {
    tso.is_some_and(|t| state.version > t)
}

/// Reads the differing rows again on both sides; drops those that agree now.
async fn recheck(
    scan: &mut Scan<'_>,
    target: &Target<'_>,
    differ: &mut HashMap<String, Seen>,
    extra: &mut HashMap<String, RowState>,
) -> Result<(), ReconcileError> {
    let tso = scan.point().tso();
    scan.refresh().await?;
    let mut keys: Vec<ScanKey> = differ.values().map(|s| s.key.clone()).collect();
    for values in extra.keys() {
        // The key text is the key's values in key order, as rendered.
        let values: Vec<serde_json::Value> = serde_json::from_str(values).unwrap_or_default();
        keys.push(ScanKey::from_rendered(&values));
    }
    let mut now: HashMap<String, Seen> = HashMap::new();
    for (event, key) in scan.rows_by_key(target.t, &keys).await? {
        let (values, seen) = target.seen(event, key);
        now.insert(values, seen);
    }
    let mut still_differ = HashMap::new();
    let mut still_extra = HashMap::new();
    let candidates: Vec<String> = differ.keys().chain(extra.keys()).cloned().collect();
    for values in candidates {
        let state = target.state_of(&values).await?;
        // Changed or deleted after the TSO (the embedded store keeps a
        // tombstone's version; Elasticsearch's state index does not, so
        // there a row deleted after it counts until the TSO passes it).
        if state.as_ref().is_some_and(|s| past_read_point(s, tso)) {
            continue;
        }
        let state = state.filter(|s| !s.deleted);
        match (now.remove(&values), state) {
            (None, None) => {}
            (Some(seen), Some(s)) if seen.digest == digest(&s.data) => {}
            (Some(seen), _) => {
                still_differ.insert(values, seen);
            }
            (None, Some(s)) => {
                still_extra.insert(values, s);
            }
        }
    }
    *differ = still_differ;
    *extra = still_extra;
    Ok(())
}

/// The delete that removes an extra row from the state, at the version of
/// the read that missed it (as `Scan` gives its rows).
fn deletion(state: &RowState, at: &ReadPoint) -> ChangeEvent {
    let row = |v: &serde_json::Value| {
        Row::from_values(
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.as_str(), v.clone()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
    };
    let (commit_time_ms, commit_ts, position) = match at {
        ReadPoint::Binlog(at) => (
            crate::clock::now_millis(),
            Some(BinlogPosition::change_number(&at.file, at.pos, 0)),
            SourcePosition::Binlog {
                file: Arc::from(at.file.as_str()),
                pos: at.pos,
            },
        ),
        ReadPoint::Tso(tso) => (
            crate::canal::decode::tso_to_millis(*tso),
            Some(*tso),
            SourcePosition::None,
        ),
        ReadPoint::Current => (crate::clock::now_millis(), None, SourcePosition::None),
    };
    ChangeEvent {
        database: state.database.clone(),
        table: state.table.clone(),
        op: Op::Delete,
        pk: row(&state.pk),
        data: row(&state.data),
        old: None,
        commit_time_ms,
        commit_ts,
        sql: None,
        mysql_types: None,
        large_message: None,
        reason: Some("reconcile: extra".into()),
        position,
    }
}

/// Writes the corrective events through the sink, in batches.
async fn write_fixes(sink: &Arc<dyn Sink>, fixes: Vec<ChangeEvent>) -> Result<(), ReconcileError> {
    let abort = CancellationToken::new();
    for batch in fixes.chunks(1_000) {
        let rejected = sink
            .write(WriteBatch::events(batch), &abort)
            .await
            .map_err(|e| ReconcileError::Repair(e.to_string()))?;
        if let Some(r) = rejected.first() {
            return Err(ReconcileError::Repair(format!(
                "the sink refused a corrective event: {}",
                r.reason
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: u64) -> RowState {
        RowState {
            database: "appdb".into(),
            table: "t".into(),
            pk: serde_json::json!({"id": "7"}),
            data: serde_json::json!({"id": "7", "v": "x"}),
            deleted: false,
            op: "update".into(),
            version,
            changed_at: String::new(),
            event_id: String::new(),
        }
    }

    #[test]
    fn only_a_state_newer_than_the_tso_is_past_the_read_point() {
        assert!(past_read_point(&state(101), Some(100)));
        assert!(!past_read_point(&state(100), Some(100)), "read at T sees T");
        assert!(!past_read_point(&state(99), Some(100)));
        assert!(!past_read_point(&state(u64::MAX), None), "no TSO: settled");
    }

    #[test]
    fn a_deletion_carries_the_version_of_its_read_point() {
        let tso = 445_318_436_315_725_826;
        let d = deletion(&state(1), &ReadPoint::Tso(tso));
        assert_eq!((d.op, d.version()), (Op::Delete, tso));
        assert_eq!(d.reason.as_deref(), Some("reconcile: extra"));
        assert_eq!(d.pk.text("id").as_deref(), Some("7"));
        let before = crate::clock::now_millis();
        let d = deletion(&state(1), &ReadPoint::Current);
        assert_eq!(d.commit_ts, None);
        assert!(d.version() >= (before as u64) << 18, "the time of the read");
        let at = BinlogPosition {
            file: "binlog.000003".into(),
            pos: 1234,
            gtid: None,
        };
        let d = deletion(&state(1), &ReadPoint::Binlog(at));
        assert_eq!(
            d.version(),
            BinlogPosition::change_number("binlog.000003", 1234, 0)
        );
    }
}
