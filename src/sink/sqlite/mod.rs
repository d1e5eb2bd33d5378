//! The embedded event store: a `Sink` on SQLite, searchable with FTS5.
//!
//! One file, `DATA_DIR/events.db`, in WAL mode. One writer connection, which
//! batches and retention take in turns, in short transactions; a few reader
//! connections, so `/api/events` never waits for a write. A batch and the
//! source positions it carries commit in one transaction, so after a crash
//! the source resumes right after the last stored event.
//!
//! `schema` says what is stored and why, `query` answers `/api/events` and
//! `/api/stats`, `retention` deletes old events, `state` keeps each row's
//! current state.

mod query;
mod retention;
mod schema;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backoff::Backoff;
use crate::checkpoint::{Checkpoint, StoredCheckpoints};
use crate::config::StoreConfig;
use crate::event::{ChangeEvent, Row};
use crate::metrics::Metrics;
use crate::owner_only;
use crate::sink::document;
use crate::sink::query::{EventFilter, EventPage, QueryError, Stats};
use crate::sink::state::{RowKey, RowState};
use crate::sink::{Answer, Sink, SinkError, StatePage, StatePageRequest, WriteBatch, Written};

/// Reader connections kept open, and API queries run at once: more wait
/// for a reader (within their deadline), so an API flood never holds more
/// than this many connections, and ingestion keeps its writer to itself.
const READERS: usize = 4;

/// Knobs the tests turn down; production uses `Tuning::default()`.
#[derive(Debug, Clone)]
struct Tuning {
    busy_timeout: Duration,
    backoff: Backoff,
    retention_interval: Duration,
    retention_chunk: usize,
    /// An API query still running after this is interrupted.
    query_deadline: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            busy_timeout: Duration::from_secs(5),
            // `open` takes the store section only; a local disk recovers
            // fast or not at all, so the retry pace is fixed here.
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            retention_interval: Duration::from_secs(5),
            // A chunk takes tens of milliseconds at a million events, so a
            // batch never waits longer than that for retention.
            retention_chunk: 500,
            // The API answers 503 after 10 s; the query stops then too.
            query_deadline: Duration::from_secs(10),
        }
    }
}

/// Change events in `DATA_DIR/events.db`.
pub struct SqliteSink {
    store: Arc<Store>,
    metrics: Metrics,
}

/// The connections; shared with the blocking tasks that use them.
struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per reader an API query may hold.
    reader_slots: Arc<Semaphore>,
    cfg: StoreConfig,
    tuning: Tuning,
}

impl SqliteSink {
    /// Creates DATA_DIR if needed and opens DATA_DIR/events.db (WAL).
    pub fn open(
        data_dir: &Path,
        cfg: &StoreConfig,
        metrics: Metrics,
    ) -> Result<SqliteSink, SinkError> {
        Self::open_tuned(data_dir, cfg, metrics, Tuning::default())
    }

    fn open_tuned(
        data_dir: &Path,
        cfg: &StoreConfig,
        metrics: Metrics,
        tuning: Tuning,
    ) -> Result<SqliteSink, SinkError> {
        owner_only::create_dir_all(data_dir).map_err(|e| {
            SinkError::Config(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("events.db");
        // Created 0600 before SQLite opens it: its WAL and shared-memory
        // files take the database file's permissions.
        owner_only::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| SinkError::Config(format!("cannot create {}: {e}", path.display())))?;
        let writer = schema::open_writer(&path, tuning.busy_timeout)
            .map_err(|e| permanent(&path, "opening", &e))?;
        retention::DiskBudget::new(cfg.max_bytes)
            .bound_wal(&writer)
            .map_err(|e| permanent(&path, "opening", &e))?;
        let reader = schema::open_reader(&path, tuning.busy_timeout)
            .map_err(|e| permanent(&path, "opening", &e))?;
        Ok(SqliteSink {
            store: Arc::new(Store {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(vec![reader]),
                reader_slots: Arc::new(Semaphore::new(READERS)),
                cfg: cfg.clone(),
                tuning,
            }),
            metrics,
        })
    }

    /// The checkpoint last written for `stream`.
    pub fn checkpoint(&self, stream: &str) -> Result<Option<Checkpoint>, SinkError> {
        let text: Option<String> = self
            .store
            .read(|conn| {
                let mut stmt =
                    conn.prepare_cached("SELECT position FROM checkpoints WHERE stream = ?1")?;
                let mut rows = stmt.query([stream])?;
                rows.next()?.map(|r| r.get(0)).transpose()
            })
            .map_err(|e| self.store.sink_error(&e))?;
        text.map(|t| Checkpoint::decode(stream, &t))
            .transpose()
            .map_err(|e| {
                SinkError::Config(format!(
                    "{e} in {}; delete that row of the checkpoints table to start over",
                    self.store.path.display()
                ))
            })
    }

    /// Enforces retention until `stop` fires: deletes events older than cfg.retention (by commit time) and the oldest events while the files would exceed cfg.max_bytes; checks every few seconds, deleting in small chunks so writers are never blocked long.
    pub async fn run_retention(self: Arc<Self>, stop: CancellationToken) {
        retention::run(self.store.clone(), stop).await
    }

    /// Deletes tombstones older than `state.tombstone_retention`, a chunk
    /// at a time, each interval until `stop` fires.
    async fn run_tombstone_purge(self: Arc<Self>, stop: CancellationToken) {
        let retention = self.store.cfg.tombstone_retention;
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let chunk = self.store.tuning.retention_chunk;
        let mut tick = tokio::time::interval(self.store.tuning.retention_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            loop {
                let store = self.store.clone();
                let before = crate::clock::now_millis().saturating_sub(retention_ms);
                let purged = tokio::task::spawn_blocking(move || {
                    store.write(|conn| state::purge_tombstones(conn, before, chunk))
                })
                .await;
                match purged {
                    Ok(Ok(n)) if n == chunk && !stop.is_cancelled() => {
                        tokio::task::yield_now().await
                    }
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "purging state tombstones failed; trying again later");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tombstone purge task failed; trying again later");
                        break;
                    }
                }
            }
        }
    }

    async fn pause(&self, attempt: u32, abort: &CancellationToken) -> Result<(), SinkError> {
        tokio::select! {
            _ = tokio::time::sleep(self.store.tuning.backoff.delay(attempt)) => Ok(()),
            _ = abort.cancelled() => Err(SinkError::Aborted),
        }
    }
}

impl Store {
    /// Runs `f` on an idle reader connection, opening one if none is idle.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        // A panic while a connection was out cannot leave the list itself
        // inconsistent, so a poisoned lock is still usable.
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => schema::open_reader(&self.path, self.tuning.busy_timeout)?,
        };
        let result = f(&conn);
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if readers.len() < READERS {
            readers.push(conn);
        }
        result
    }

    /// Runs `f` on the writer connection.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        // Poisoned means a panic inside `f`; its transaction was rolled back
        // when it unwound, so the connection is clean.
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn)
    }

    /// Stores a batch and its checkpoints in one transaction; returns how many events were new.
    fn store_batch(&self, batch: &Batch) -> rusqlite::Result<usize> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut stored = 0;
            let mut counts: HashMap<(&str, &str, &str), (i64, i64)> = HashMap::new();
            let mut rate: HashMap<(i64, &str, &str), i64> = HashMap::new();
            let mut zones: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (doc_id, db, tbl, op, commit_time_ms, ingested_ms, bytes, doc, row_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (doc_id) DO NOTHING",
                )?;
                let mut fts =
                    tx.prepare_cached("INSERT INTO events_fts (rowid, body) VALUES (?1, ?2)")?;
                let second = batch.ingested_ms.div_euclid(1000);
                for e in &batch.events {
                    let inserted = insert.execute(params![
                        e.doc_id,
                        e.db,
                        e.tbl,
                        e.op,
                        e.commit_time_ms,
                        batch.ingested_ms,
                        e.doc.len() as i64,
                        e.doc,
                        e.row_key,
                    ])?;
                    // Read before the state's inserts change it.
                    let seq = tx.last_insert_rowid();
                    // Replays too: a version not above the stored one changes nothing.
                    state::apply(&tx, &e.state, batch.ingested_ms)?;
                    state::clear(&tx, &e.clears, batch.ingested_ms)?;
                    if inserted == 0 {
                        // A replay: the same change is stored already.
                        continue;
                    }
                    fts.execute(params![seq, e.text])?;
                    stored += 1;
                    let c = counts.entry((&e.db, &e.tbl, e.op)).or_default();
                    c.0 += 1;
                    c.1 += e.doc.len() as i64;
                    *rate.entry((second, &e.db, &e.tbl)).or_default() += 1;
                    let z = zones
                        .entry(seq >> schema::ZONE_BITS)
                        .or_insert((e.commit_time_ms, e.commit_time_ms));
                    z.0 = z.0.min(e.commit_time_ms);
                    z.1 = z.1.max(e.commit_time_ms);
                }
            }
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO counts (db, tbl, op, events, bytes) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (db, tbl, op) DO UPDATE
                     SET events = events + excluded.events, bytes = bytes + excluded.bytes",
                )?;
                for ((db, tbl, op), (n, bytes)) in &counts {
                    upsert.execute(params![db, tbl, op, n, bytes])?;
                }
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO rate (second, db, tbl, events) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (second, db, tbl) DO UPDATE SET events = events + excluded.events",
                )?;
                for ((second, db, tbl), n) in &rate {
                    upsert.execute(params![second, db, tbl, n])?;
                }
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO zones (zone, min_commit_ms, max_commit_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (zone) DO UPDATE SET
                         min_commit_ms = min(min_commit_ms, excluded.min_commit_ms),
                         max_commit_ms = max(max_commit_ms, excluded.max_commit_ms)",
                )?;
                for (zone, (lo, hi)) in &zones {
                    upsert.execute(params![zone, lo, hi])?;
                }
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO checkpoints (stream, position) VALUES (?1, ?2)
                     ON CONFLICT (stream) DO UPDATE SET position = excluded.position",
                )?;
                for (stream, position) in &batch.checkpoints {
                    upsert.execute(params![stream, position])?;
                }
            }
            tx.commit()?;
            Ok(stored)
        })
    }

    /// A SQLite error as a `SinkError`: transient ones are retryable.
    fn sink_error(&self, e: &rusqlite::Error) -> SinkError {
        match transient(e) {
            Some(_) => SinkError::Response(format!("{}: {e}", self.path.display())),
            None => permanent(&self.path, "writing", e),
        }
    }
}

/// A store error retrying cannot fix, with what to do about it.
fn permanent(path: &Path, doing: &str, e: &rusqlite::Error) -> SinkError {
    let what_to_do = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            "the file is not an intact cdc-monitor store: restore it from a backup, or move it \
             (and its -wal and -shm files) aside to start an empty store; nothing after the \
             last stored position was acknowledged, so a restart resumes there"
        }
        _ => "fix the cause and restart; nothing after the last stored position was acknowledged",
    };
    SinkError::Config(format!(
        "embedded store {} failed while {doing}: {e}; {what_to_do}",
        path.display()
    ))
}

/// The retry reason of an error worth retrying, `None` for the others.
fn transient(e: &rusqlite::Error) -> Option<&'static str> {
    match e.sqlite_error_code()? {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some("busy"),
        ErrorCode::DiskFull => Some("disk_full"),
        ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => Some("io_error"),
        // A file system remounted read-only or a permission slip: an
        // operator fixes it, and the batch is kept until then.
        ErrorCode::ReadOnly => Some("read_only"),
        ErrorCode::PermissionDenied => Some("permission"),
        ErrorCode::OutOfMemory => Some("out_of_memory"),
        // SQLITE_PROTOCOL: a WAL lock race that resolves on retry.
        ErrorCode::FileLockingProtocolFailed => Some("busy"),
        _ => None,
    }
}

/// One event ready to insert: everything derived from it before the transaction.
struct StoredEvent {
    doc_id: [u8; 16],
    db: String,
    tbl: String,
    op: &'static str,
    commit_time_ms: i64,
    /// The Elasticsearch document.
    doc: String,
    /// What full-text search sees: row values and the DDL statement.
    text: String,
    /// The row whose history the event belongs to.
    row_key: Option<i64>,
    /// What the event does to the current state.
    state: Vec<state::StateWrite>,
    /// The tables a statement clears from the state.
    clears: Vec<state::ClearWrite>,
}

/// A batch encoded once, written as often as retries need.
struct Batch {
    ingested_ms: i64,
    events: Vec<StoredEvent>,
    /// `(stream, position)`.
    checkpoints: Vec<(String, String)>,
}

/// The stored document of `e` as text, the bytes the bulk body carries.
fn document_text(e: &ChangeEvent, ingested_at: &str) -> String {
    let mut doc = Vec::with_capacity(e.estimated_bytes() + 2 * ingested_at.len());
    document::write_document(&mut doc, e, ingested_at);
    // Built from str pieces and raw JSON text, all UTF-8; a bug would show
    // as a lossy character, never as a panic.
    String::from_utf8(doc).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Batch {
    fn new(events: &[ChangeEvent], checkpoints: &[Checkpoint], ingested_ms: i64) -> Batch {
        let ingested_at = crate::clock::rfc3339_millis(ingested_ms);
        let events = events
            .iter()
            .map(|e| {
                let doc_id = e.document_id().0.to_be_bytes();
                let (row_key, state) = state::writes_of(e, doc_id);
                StoredEvent {
                    doc_id,
                    db: e.database.clone(),
                    tbl: e.table.clone(),
                    op: e.op.as_str(),
                    commit_time_ms: e.commit_time_ms,
                    doc: document_text(e, &ingested_at),
                    text: search_text(e),
                    row_key,
                    state,
                    clears: state::clears_of(e, doc_id),
                }
            })
            .collect();
        Batch {
            ingested_ms,
            events,
            checkpoints: checkpoints
                .iter()
                .map(|c| (c.stream(), c.encode()))
                .collect(),
        }
    }
}

/// What full-text search sees of an event: the row values (strings
/// unquoted, nulls left out) and the DDL statement, one per line.
fn search_text(e: &ChangeEvent) -> String {
    text_of(&e.pk, &e.data, e.old.as_ref(), e.sql.as_deref())
}

/// The same text again from a stored document, for the FTS5 `delete`
/// command, which must be given what was indexed. The document holds the
/// rows' raw JSON values byte for byte, so the text is identical; `None`
/// if the document does not parse.
fn stored_search_text(doc: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Searchable {
        pk: Row,
        data: Row,
        old: Option<Row>,
        sql: Option<String>,
    }
    let d: Searchable = serde_json::from_str(doc).ok()?;
    Some(text_of(&d.pk, &d.data, d.old.as_ref(), d.sql.as_deref()))
}

/// Changing what this returns changes the text retention derives for
/// events indexed before: bump the schema version and rebuild the index.
fn text_of(pk: &Row, data: &Row, old: Option<&Row>, sql: Option<&str>) -> String {
    let mut text = String::new();
    for row in [Some(pk), Some(data), old].into_iter().flatten() {
        for (_, value) in &row.0 {
            let raw = value.get();
            if raw == "null" {
                continue;
            }
            if raw.starts_with('"') {
                // Borrow when there is no escape to undo.
                match serde_json::from_str::<&str>(raw) {
                    Ok(s) => text.push_str(s),
                    Err(_) => match serde_json::from_str::<String>(raw) {
                        Ok(s) => text.push_str(&s),
                        Err(_) => text.push_str(raw),
                    },
                }
            } else {
                text.push_str(raw);
            }
            text.push('\n');
        }
    }
    if let Some(sql) = sql {
        text.push_str(sql);
    }
    text
}

impl Sink for SqliteSink {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn concurrency(&self) -> usize {
        // Checkpoints are stored with the events: batches in order.
        1
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        // `open` created the schema already: the source reads its
        // checkpoint before the first write.
        self.check()
    }

    fn write<'a>(&'a self, batch: WriteBatch<'a>, abort: &'a CancellationToken) -> Written<'a> {
        let WriteBatch {
            events,
            checkpoints,
        } = batch;
        // Events and checkpoints in one transaction; transient failures (a
        // locked database, a full disk) are retried until `abort`.
        Box::pin(async move {
            let batch = Arc::new(Batch::new(events, checkpoints, crate::clock::now_millis()));
            let mut attempt = 0u32;
            loop {
                let (store, b) = (self.store.clone(), batch.clone());
                let started = Instant::now();
                // The attempt runs to its end even when `abort` fires meanwhile:
                // it is short, and its outcome (committed or rolled back) is then known.
                // Room first, so the batch cannot take the store over its size limit.
                let result = tokio::task::spawn_blocking(move || {
                    store.make_room(&b).and_then(|_| store.store_batch(&b))
                })
                .await
                .map_err(|e| SinkError::Response(format!("write task failed: {e}")))?;
                let elapsed = started.elapsed().as_secs_f64();
                match result {
                    Ok(stored) => {
                        self.observe("ok", elapsed);
                        debug!(
                            events = events.len(),
                            stored,
                            checkpoints = checkpoints.len(),
                            elapsed,
                            "batch stored"
                        );
                        // Nothing is refused for good: every event has a document.
                        return Ok(Vec::new());
                    }
                    Err(e) => {
                        self.observe("error", elapsed);
                        let Some(reason) = transient(&e) else {
                            return Err(self.store.sink_error(&e));
                        };
                        attempt += 1;
                        self.metrics.sink_retry(
                            "sqlite",
                            reason,
                            events.len(),
                            attempt,
                            &e.to_string(),
                        );
                        self.pause(attempt, abort).await?;
                    }
                }
            }
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                store
                    .read(|conn| conn.query_row("SELECT count(*) FROM checkpoints", [], |_| Ok(())))
            })
            .await
            .map_err(|e| SinkError::Response(format!("check task failed: {e}")))?
            .map_err(|e| SinkError::Response(format!("{}: {e}", self.store.path.display())))
        })
    }

    fn stored_checkpoints(self: Arc<Self>) -> Option<StoredCheckpoints> {
        Some(Arc::new(move |stream: &str| {
            self.checkpoint(stream).map_err(|e| e.to_string())
        }))
    }

    fn maintain(self: Arc<Self>, stop: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            tokio::join!(
                self.clone().run_retention(stop.clone()),
                self.run_tombstone_purge(stop)
            );
        })
    }

    fn searchable(&self) -> bool {
        true
    }

    fn events<'a>(&'a self, filter: &'a EventFilter) -> Answer<'a, EventPage> {
        // Newest first, paginated, see src/sink/query.rs.
        Box::pin(async move {
            let plan = query::Plan::new(filter)?;
            self.query(move |conn| plan.run(conn)).await
        })
    }

    fn row<'a>(&'a self, key: &'a RowKey) -> Answer<'a, Option<RowState>> {
        Box::pin(async move {
            let key = key.clone();
            self.query(move |conn| state::row(conn, &key)).await
        })
    }

    fn state_page(&self, page: StatePageRequest) -> Answer<'_, StatePage> {
        Box::pin(async move { self.query(move |conn| state::page(conn, &page)).await })
    }

    fn row_history<'a>(&'a self, key: &'a RowKey, limit: usize) -> Answer<'a, EventPage> {
        Box::pin(async move {
            let key = key.clone();
            self.query(move |conn| state::history(conn, &key, limit))
                .await
        })
    }

    fn stats(&self, window: Duration, bucket: Duration) -> Answer<'_, Stats> {
        // Counts by op and by table, and events/s by table over the last
        // `window` in buckets of `bucket`.
        Box::pin(async move {
            let request = query::StatsRequest::new(window, bucket, crate::clock::now_millis())?;
            self.query(move |conn| request.run(conn)).await
        })
    }
}

impl SqliteSink {
    /// Runs an API query on a reader from the pool, interrupted if it is
    /// still running at the deadline, even when the caller gave up first.
    async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, QueryError> {
        let deadline = self.store.tuning.query_deadline;
        let slot = tokio::time::timeout(deadline, self.store.reader_slots.clone().acquire_owned())
            .await
            .map_err(|_| QueryError::Unavailable("every store reader is busy".into()))?
            .map_err(|_| QueryError::Unavailable("the store is closed".into()))?;
        // The running query's interrupt handle, taken back (under the lock)
        // before its connection can serve another query, so the watchdog
        // only ever interrupts this one.
        let running: Arc<Mutex<Option<rusqlite::InterruptHandle>>> = Arc::default();
        let watchdog = {
            let running = running.clone();
            tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                if let Some(h) = running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                {
                    h.interrupt();
                }
            })
        };
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            store.read(|conn| {
                *running.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(conn.get_interrupt_handle());
                let r = f(conn);
                running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                r
            })
        })
        .await;
        watchdog.abort();
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) => Err(
                QueryError::Unavailable(format!("the query ran past {deadline:?} and was stopped")),
            ),
            Ok(Err(e)) => Err(QueryError::Unavailable(e.to_string())),
            Err(e) => Err(QueryError::Unavailable(format!("query task failed: {e}"))),
        }
    }

    /// Counts a write transaction in the bulk request families, so the
    /// dashboards read the same for both sinks.
    fn observe(&self, outcome: &str, elapsed: f64) {
        self.metrics
            .bulk_requests
            .with_label_values(&[outcome])
            .inc();
        self.metrics
            .bulk_duration
            .with_label_values(&[outcome])
            .observe(elapsed);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::event::Op;
    use serde_json::json;

    /// A row change whose `note` column holds `note`; `id` makes it unique.
    pub fn event(
        db: &str,
        tbl: &str,
        op: Op,
        id: u64,
        commit_time_ms: i64,
        note: &str,
    ) -> ChangeEvent {
        ChangeEvent::row(
            db,
            tbl,
            op,
            Row::from_values([("id", json!(id.to_string()))]),
            Row::from_values([("id", json!(id.to_string())), ("note", json!(note))]),
            None,
            commit_time_ms,
        )
    }

    /// Opens a store with test timings: short busy timeout and backoff.
    pub fn open_with(dir: &Path, cfg: &StoreConfig) -> SqliteSink {
        let tuning = Tuning {
            busy_timeout: Duration::from_millis(50),
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            retention_interval: Duration::from_millis(50),
            retention_chunk: 500,
            query_deadline: Duration::from_millis(300),
        };
        SqliteSink::open_tuned(dir, cfg, Metrics::new(), tuning).unwrap()
    }

    /// Seven days, no size limit.
    pub fn cfg() -> StoreConfig {
        StoreConfig {
            retention: Duration::from_secs(7 * 86400),
            tombstone_retention: Duration::from_secs(7 * 86_400),
            max_bytes: u64::MAX,
        }
    }

    /// Writes one batch without checkpoints; it must succeed.
    pub async fn write(sink: &SqliteSink, events: &[ChangeEvent]) {
        let rejected = sink
            .write(WriteBatch::events(events), &CancellationToken::new())
            .await
            .unwrap();
        assert!(rejected.is_empty());
    }

    fn count(sink: &SqliteSink, sql: &str) -> i64 {
        sink.store
            .read(|c| c.query_row(sql, [], |r| r.get(0)))
            .unwrap()
    }

    fn binlog_at(pos: u64) -> Checkpoint {
        Checkpoint::Binlog(crate::checkpoint::BinlogPosition {
            file: "binlog.000001".into(),
            pos,
            gtid: None,
        })
    }

    #[tokio::test]
    async fn a_query_past_its_deadline_is_interrupted_and_the_pool_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(open_with(dir.path(), &cfg()));
        // Counts to ten billion: far longer than the 300 ms deadline.
        let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                       WHERE x < 10000000000) SELECT count(*) FROM c";
        let started = Instant::now();
        let runs = (0..READERS + 2).map(|_| {
            let sink = sink.clone();
            async move {
                sink.query(move |c| c.query_row(endless, [], |r| r.get::<_, i64>(0)))
                    .await
            }
        });
        for r in futures::future::join_all(runs).await {
            let err = r.unwrap_err().to_string();
            assert!(err.contains("stopped") || err.contains("busy"), "{err}");
        }
        // Interrupted at the deadline: two rounds of READERS at most.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(sink.store.readers.lock().unwrap().len() <= READERS);
        // The readers are fine afterwards, and writes went on meanwhile.
        write(
            &sink,
            &[event("app", "users", Op::Insert, 1, 1_700_000_000_000, "x")],
        )
        .await;
        let n = sink
            .query(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)))
            .await;
        assert_eq!(n.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_replayed_batch_stores_each_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        let batch: Vec<_> = (0..20)
            .map(|i| event("app", "users", Op::Insert, i, 1_700_000_000_000, "x"))
            .collect();
        write(&sink, &batch).await;
        write(&sink, &batch).await;
        // A replay overlapping the end of the first batch, plus new events.
        let more: Vec<_> = (15..25)
            .map(|i| event("app", "users", Op::Insert, i, 1_700_000_000_000, "x"))
            .collect();
        write(&sink, &more).await;
        assert_eq!(count(&sink, "SELECT count(*) FROM events"), 25);
        assert_eq!(count(&sink, "SELECT sum(events) FROM counts"), 25);
        assert_eq!(
            count(
                &sink,
                "SELECT count(*) FROM events_fts WHERE events_fts MATCH 'x'"
            ),
            25
        );
        let stats = sink
            .stats(Duration::from_secs(60), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(stats.total, 25);
        let rate: f64 = stats.rate[0].points.iter().map(|p| p.1).sum();
        assert!(rate > 0.0);
    }

    #[tokio::test]
    async fn the_stored_document_is_the_elasticsearch_document_with_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        let mut e = event("app", "users", Op::Update, 7, 1_700_000_000_123, "new");
        e.old = Some(Row::from_values([("note", json!("old"))]));
        e.commit_ts = Some(445_318_436_578_918_401);
        write(&sink, std::slice::from_ref(&e)).await;
        let page = sink
            .events(&EventFilter {
                limit: 10,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.events.len(), 1);
        let got: serde_json::Value = serde_json::from_str(page.events[0].get()).unwrap();
        let ingested_at = got["ingested_at"].as_str().unwrap().to_owned();
        let mut want: serde_json::Value =
            serde_json::to_value(document::document(&e, &ingested_at)).unwrap();
        want["id"] = json!(e.document_id().to_string());
        assert_eq!(got, want);
        // Exact integer, not a float.
        assert!(page.events[0]
            .get()
            .contains("\"commit_ts\":445318436578918401"));
        assert!(page.events[0].get().starts_with("{\"id\":\""));
    }

    #[tokio::test]
    async fn checkpoints_are_stored_with_their_events_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        assert_eq!(sink.checkpoint("binlog").unwrap(), None);
        let batch: Vec<_> = (0..5)
            .map(|i| event("app", "users", Op::Insert, i, 1_700_000_000_000, "a"))
            .collect();
        let abort = CancellationToken::new();
        sink.write(
            WriteBatch {
                events: &batch,
                checkpoints: &[binlog_at(1)],
            },
            &abort,
        )
        .await
        .unwrap();
        assert_eq!(sink.checkpoint("binlog").unwrap(), Some(binlog_at(1)));
        // A later batch moves it; a checkpoint-only batch too.
        let kafka = Checkpoint::Kafka {
            topic: Arc::from("t"),
            partition: 0,
            next_offset: 8,
        };
        sink.write(
            WriteBatch {
                events: &batch[..1],
                checkpoints: &[binlog_at(2), kafka],
            },
            &abort,
        )
        .await
        .unwrap();
        sink.write(
            WriteBatch {
                events: &[],
                checkpoints: &[binlog_at(3)],
            },
            &abort,
        )
        .await
        .unwrap();
        drop(sink);
        let sink = open_with(dir.path(), &cfg());
        assert_eq!(sink.checkpoint("binlog").unwrap(), Some(binlog_at(3)));
        assert_eq!(
            sink.checkpoint("kafka/t/0").unwrap().map(|c| c.encode()),
            Some("8".to_owned())
        );
        assert_eq!(count(&sink, "SELECT count(*) FROM events"), 5);
        let page = sink
            .events(&EventFilter {
                limit: 10,
                q: Some("a".into()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.events.len(), 5);
        sink.check().await.unwrap();
        sink.prepare().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_stores_neither_events_nor_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        // Fail the transaction at its very end, after the events went in.
        sink.store
            .write(|c| {
                c.execute_batch(
                    "CREATE TEMP TRIGGER fail BEFORE INSERT ON main.checkpoints
                     BEGIN SELECT RAISE(ABORT, 'injected'); END;",
                )
            })
            .unwrap();
        let batch: Vec<_> = (0..5)
            .map(|i| event("app", "users", Op::Insert, i, 1_700_000_000_000, "a"))
            .collect();
        let err = sink
            .write(
                WriteBatch {
                    events: &batch,
                    checkpoints: &[binlog_at(1)],
                },
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(count(&sink, "SELECT count(*) FROM events"), 0);
        assert_eq!(count(&sink, "SELECT count(*) FROM counts"), 0);
        assert_eq!(count(&sink, "SELECT count(*) FROM zones"), 0);
        assert_eq!(sink.checkpoint("binlog").unwrap(), None);
    }

    #[tokio::test]
    async fn truncate_and_drop_tombstone_the_rows_older_than_the_statement() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        let t0 = 1_700_000_000_000;
        let ddl = |tbl: &str, sql: &str, at: i64| {
            ChangeEvent::ddl(
                "app".into(),
                tbl.into(),
                sql.into(),
                at,
                None,
                crate::event::SourcePosition::None,
            )
        };
        write(
            &sink,
            &[
                event("app", "users", Op::Insert, 1, t0, "a"),
                event("app", "users", Op::Insert, 2, t0, "b"),
                event("app", "orders", Op::Insert, 1, t0, "c"),
                event("other", "users", Op::Insert, 1, t0, "d"),
            ],
        )
        .await;
        // The row inserted after the statement, in the same batch, stays.
        write(
            &sink,
            &[
                ddl("users", "TRUNCATE TABLE users", t0 + 1_000),
                event("app", "users", Op::Insert, 3, t0 + 2_000, "e"),
            ],
        )
        .await;
        // A late replay of a change from before the statement changes nothing.
        write(&sink, &[event("app", "users", Op::Insert, 2, t0, "b")]).await;
        let deleted = |db: &'static str, tbl: &'static str, id: u64| {
            let key = RowKey::of(
                db,
                tbl,
                &Row::from_values([("id", json!(id.to_string()))]),
                &Row::default(),
            );
            let sink = &sink;
            async move { sink.row(&key).await.unwrap().unwrap().deleted }
        };
        assert!(deleted("app", "users", 1).await);
        assert!(deleted("app", "users", 2).await);
        assert!(!deleted("app", "users", 3).await);
        assert!(!deleted("app", "orders", 1).await);
        assert!(!deleted("other", "users", 1).await);
        write(&sink, &[ddl("", "DROP DATABASE app", t0 + 3_000)]).await;
        assert!(deleted("app", "users", 3).await);
        assert!(deleted("app", "orders", 1).await);
        assert!(!deleted("other", "users", 1).await);
    }

    #[tokio::test]
    async fn a_locked_database_is_retried_until_abort_and_nothing_is_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        let metrics = sink.metrics.clone();
        // Another process holds the write lock.
        let other = Connection::open(dir.path().join("events.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let batch: Vec<_> = (0..5)
            .map(|i| event("app", "users", Op::Insert, i, 1_700_000_000_000, "a"))
            .collect();
        let abort = CancellationToken::new();
        let stopper = abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            stopper.cancel();
        });
        let err = sink
            .write(
                WriteBatch {
                    events: &batch,
                    checkpoints: &[binlog_at(1)],
                },
                &abort,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::Aborted), "{err}");
        let retries = metrics.sink_retries.with_label_values(&["busy"]).get();
        assert!(retries >= 2, "{retries} retries");
        assert_eq!(count(&sink, "SELECT count(*) FROM events"), 0);
        assert_eq!(sink.checkpoint("binlog").unwrap(), None);
        // Once the lock is gone the same batch goes through.
        other.execute_batch("ROLLBACK").unwrap();
        sink.write(
            WriteBatch {
                events: &batch,
                checkpoints: &[binlog_at(1)],
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(count(&sink, "SELECT count(*) FROM events"), 5);
        assert_eq!(sink.checkpoint("binlog").unwrap(), Some(binlog_at(1)));
    }

    #[tokio::test]
    async fn the_data_dir_and_the_store_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        let sink = open_with(&dir, &cfg());
        write(
            &sink,
            &[event("app", "users", Op::Insert, 1, 1_700_000_000_000, "a")],
        )
        .await;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for file in ["events.db", "events.db-wal", "events.db-shm"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
    }

    #[test]
    fn a_data_dir_that_cannot_be_created_is_a_config_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let data_dir = file.join("data");
        let err = SqliteSink::open(&data_dir, &cfg(), Metrics::new())
            .err()
            .expect("open fails");
        assert!(matches!(err, SinkError::Config(_)), "{err}");
        assert!(
            err.to_string().contains(&data_dir.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn the_search_text_is_derived_again_from_the_stored_document() {
        let mut events = vec![event("app", "users", Op::Insert, 1, 0, "plain")];
        let mut e = event(
            "app",
            "users",
            Op::Update,
            2,
            0,
            "tab\t\"q\" \u{e9}\u{1F600} \\",
        );
        e.data.0.push((
            "big".into(),
            serde_json::from_str::<Box<serde_json::value::RawValue>>(
                "12345678901234567890.123456789e-3",
            )
            .unwrap(),
        ));
        e.old = Some(Row::from_values([("note", json!(null)), ("n", json!(42))]));
        events.push(e);
        let mut ddl = event("app", "users", Op::Ddl, 3, 0, "");
        ddl.pk = Row::default();
        ddl.data = Row::default();
        ddl.sql = Some("CREATE TABLE `t` (c VARCHAR(10) DEFAULT 'x\ny')".into());
        events.push(ddl);
        let batch = Batch::new(&events, &[], 0);
        for (e, stored) in events.iter().zip(&batch.events) {
            assert_eq!(
                stored_search_text(&stored.doc).as_deref(),
                Some(search_text(e).as_str())
            );
        }
        assert!(search_text(&events[1]).contains("12345678901234567890.123456789e-3"));
        assert_eq!(stored_search_text("{not json"), None);
    }

    #[test]
    fn search_text_has_values_unquoted_and_the_statement() {
        let mut e = event(
            "app",
            "users",
            Op::Update,
            1,
            0,
            "line\nbreak \u{e9}t\u{e9}",
        );
        e.old = Some(Row::from_values([("note", json!(null)), ("n", json!(42))]));
        e.sql = Some("ALTER TABLE users ADD c INT".into());
        assert_eq!(
            search_text(&e),
            "1\n1\nline\nbreak \u{e9}t\u{e9}\n42\nALTER TABLE users ADD c INT"
        );
    }
}
