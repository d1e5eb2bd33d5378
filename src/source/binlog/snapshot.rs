//! The initial snapshot: every captured table's existing rows, read in one
//! consistent view, then streaming from the binlog position that view
//! matches.
//!
//! Consistency: MariaDB starts `START TRANSACTION WITH CONSISTENT SNAPSHOT`
//! (REPEATABLE READ) and reads the matching position from
//! `SHOW STATUS LIKE 'binlog_snapshot_%'`, without any lock. MySQL has no
//! such status: it takes `FLUSH TABLES WITH READ LOCK` (privilege RELOAD)
//! around the transaction's start and `SHOW MASTER STATUS`, and releases it
//! at once.
//!
//! Tables are read in (database, table) order, each in chunks of
//! `CDC_SNAPSHOT_CHUNK_ROWS` by keyset pagination on its primary key (else
//! a unique key of NOT NULL columns; a table with neither in one pass, and
//! before all others).
//! After each chunk a `Checkpoint::Snapshot` follows its rows, so the sink
//! stores the progress with them; after a restart a new consistent-snapshot
//! transaction reads on after the last stored chunk, and streaming starts
//! from the first snapshot's position, so no change is missed (changes
//! between the two snapshot points are replayed).
//!
//! Rows are `Op::Snapshot` events whose ids derive from (database, table,
//! key, first snapshot position): a re-read of the same rows at the same
//! point stores nothing twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_128;

use crate::checkpoint::{BinlogPosition, Checkpoint, SnapshotProgress};
use crate::config::TableFilter;
use crate::control::SnapshotStarted;
use crate::event::{ChangeEvent, Op, Row, SourcePosition};
use crate::source::binlog::charset::Charset;
use crate::source::binlog::convert;
use crate::source::binlog::events::ValueError;
use crate::source::binlog::preflight::ServerInfo;
use crate::source::binlog::schema::{ColumnInfo, SchemaCache, TableSchema};
use crate::source::binlog::{BinlogSource, ReadState, RECONNECT};
use crate::source::envelope::{Envelope, EnvelopeTx};
use crate::source::SourceError;

/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One key value, as stored in a snapshot checkpoint (`after`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum KeyValue {
    Null,
    Bytes(Vec<u8>),
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Date(u16, u8, u8, u8, u8, u8, u32),
    Time(bool, u32, u8, u8, u8, u32),
}

impl From<&Value> for KeyValue {
    fn from(v: &Value) -> KeyValue {
        match v {
            Value::NULL => KeyValue::Null,
            Value::Bytes(b) => KeyValue::Bytes(b.clone()),
            Value::Int(i) => KeyValue::Int(*i),
            Value::UInt(u) => KeyValue::UInt(*u),
            Value::Float(f) => KeyValue::Float(*f),
            Value::Double(d) => KeyValue::Double(*d),
            Value::Date(y, mo, d, h, mi, s, us) => KeyValue::Date(*y, *mo, *d, *h, *mi, *s, *us),
            Value::Time(n, d, h, m, s, us) => KeyValue::Time(*n, *d, *h, *m, *s, *us),
        }
    }
}

impl From<&KeyValue> for Value {
    fn from(v: &KeyValue) -> Value {
        match v {
            KeyValue::Null => Value::NULL,
            KeyValue::Bytes(b) => Value::Bytes(b.clone()),
            KeyValue::Int(i) => Value::Int(*i),
            KeyValue::UInt(u) => Value::UInt(*u),
            KeyValue::Float(f) => Value::Float(*f),
            KeyValue::Double(d) => Value::Double(*d),
            KeyValue::Date(y, mo, d, h, mi, s, us) => Value::Date(*y, *mo, *d, *h, *mi, *s, *us),
            KeyValue::Time(n, d, h, m, s, us) => Value::Time(*n, *d, *h, *m, *s, *us),
        }
    }
}

fn encode_key(values: &[Value]) -> String {
    let key: Vec<KeyValue> = values.iter().map(KeyValue::from).collect();
    // A Vec of plain enums always serialises.
    serde_json::to_string(&key).unwrap_or_default()
}

fn decode_key(text: &str) -> Result<Vec<Value>, SourceError> {
    let key: Vec<KeyValue> = serde_json::from_str(text).map_err(|e| {
        SourceError::Fatal(format!(
            "the stored snapshot progress has an unreadable key {text:?}: {e}"
        ))
    })?;
    Ok(key.iter().map(Value::from).collect())
}

/// A key value as the next chunk's parameter. Text arrives in the column's
/// character set (`character_set_results = binary`) but parameters are read
/// in the connection's (utf8mb4): it is passed as UTF-8, and the server
/// converts it back and compares by the column's collation, the one that
/// orders the chunks. Other values go back as they came.
pub(super) fn key_param(v: Option<&Value>, col: &ColumnInfo) -> Value {
    match (v, &col.charset) {
        (Some(Value::Bytes(b)), Some(cs)) if *cs != Charset::Binary => match cs.decode(b) {
            Ok(text) => Value::Bytes(text.into_bytes()),
            Err(_) => Value::Bytes(b.clone()),
        },
        (Some(v), _) => v.clone(),
        (None, _) => Value::NULL,
    }
}

/// `name` quoted as an identifier.
pub(super) fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A table to read and how: the columns it is paged by (empty: one pass),
/// and the columns its events name as primary key.
pub(super) struct Plan {
    pub(super) schema: Arc<TableSchema>,
    pub(super) key: Vec<usize>,
    pk: Vec<usize>,
    /// Column types, as every event of the table carries them.
    mysql_types: Arc<Row>,
}

impl Plan {
    /// Where it comes in the reading order.
    pub(super) fn order(&self) -> (bool, &str, &str) {
        (
            !self.key.is_empty(),
            &self.schema.database,
            &self.schema.table,
        )
    }

    /// The SELECT of the next chunk after `after` (all rows without a key),
    /// and its parameters. `(a, b) > (x, y)` is written out as
    /// `a > x OR (a = x AND b > y)`, which every optimizer turns into a range.
    pub(super) fn chunk_query(
        &self,
        after: Option<&[Value]>,
        limit: usize,
    ) -> (String, Vec<Value>) {
        let cols: Vec<String> = self.schema.columns.iter().map(|c| quote(&c.name)).collect();
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            cols.join(", "),
            quote(&self.schema.database),
            quote(&self.schema.table)
        );
        let mut params = Vec::new();
        if self.key.is_empty() {
            return (sql, params);
        }
        let key: Vec<&str> = self
            .key
            .iter()
            .map(|&i| self.schema.columns[i].name.as_str())
            .collect();
        if let Some(after) = after {
            let mut ors = Vec::new();
            for i in 0..key.len() {
                let mut ands: Vec<String> = Vec::new();
                for (j, k) in key.iter().enumerate().take(i) {
                    ands.push(format!("{} = ?", quote(k)));
                    params.push(after[j].clone());
                }
                ands.push(format!("{} > ?", quote(key[i])));
                params.push(after[i].clone());
                ors.push(format!("({})", ands.join(" AND ")));
            }
            sql.push_str(&format!(" WHERE {}", ors.join(" OR ")));
        }
        let order: Vec<String> = key.iter().map(|k| quote(k)).collect();
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", order.join(", ")));
        (sql, params)
    }
}

/// The snapshot's place: the first snapshot's position (ids and the stream
/// start) and the table and key the next read starts after.
#[derive(Debug, Clone)]
struct Progress {
    position: BinlogPosition,
    /// (database, table) of the last chunk sent; tables before it (in
    /// `Plan::order`) are done.
    table: Option<(String, String)>,
    /// The last key sent; `None` with `table` set: that table is done.
    after: Option<Vec<Value>>,
}

impl Progress {
    fn from_stored(p: &SnapshotProgress) -> Result<Progress, SourceError> {
        Ok(Progress {
            position: p.position.clone(),
            table: Some((p.database.clone(), p.table.clone())),
            after: p.after.as_deref().map(decode_key).transpose()?,
        })
    }

    /// Whether a table still has rows to read, and after which key. Tables
    /// are read in `(keyed, database, table)` order; `stored_keyed` says
    /// whether the table of the progress has a key.
    fn start_of(
        &self,
        stored_keyed: bool,
        (keyed, database, table): (bool, &str, &str),
    ) -> Option<Option<Vec<Value>>> {
        match &self.table {
            None => Some(None),
            Some((d, t)) => {
                match (stored_keyed, d.as_str(), t.as_str()).cmp(&(keyed, database, table)) {
                    std::cmp::Ordering::Less => Some(None),
                    std::cmp::Ordering::Equal => self.after.clone().map(Some),
                    std::cmp::Ordering::Greater => None,
                }
            }
        }
    }
}

impl BinlogSource {
    /// Reads every captured table's rows (after `stored`, when a snapshot
    /// was under way), sending them with a checkpoint after each chunk.
    /// Returns the position streaming starts from, or `None` on shutdown.
    pub(super) async fn snapshot(
        &self,
        info: &ServerInfo,
        stored: Option<SnapshotProgress>,
        st: &mut ReadState,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<Option<BinlogPosition>, SourceError> {
        let mut progress = stored.as_ref().map(Progress::from_stored).transpose()?;
        let mut attempt: u32 = 0;
        loop {
            match self
                .snapshot_pass(info, &mut progress, st, tx, shutdown)
                .await
            {
                Ok(done) => return Ok(done),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    attempt += 1;
                    self.metrics.binlog_reconnects.inc();
                    warn!(error = %e, attempt, "snapshot interrupted, reading on after the last chunk sent");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT.delay(attempt)) => {}
                        _ = shutdown.cancelled() => return Ok(None),
                    }
                }
            }
        }
    }

    /// One consistent-snapshot transaction, reading on from `progress`.
    async fn snapshot_pass(
        &self,
        info: &ServerInfo,
        progress: &mut Option<Progress>,
        st: &mut ReadState,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<Option<BinlogPosition>, SourceError> {
        let (mut conn, at) = self.open_snapshot(info).await?;
        if let Some(p) = progress.as_ref() {
            let (database, table) = p.table.clone().unwrap_or_default();
            info!(position = %p.position, snapshot_position = %at, database, table,
                after = p.after.as_deref().map(encode_key).unwrap_or_default(),
                "resuming the snapshot after the last stored chunk; streaming will start at the first snapshot's position");
        } else {
            info!(position = %at, "snapshot started: reading the captured tables' rows");
        }
        let progress = progress.get_or_insert(Progress {
            position: at,
            table: None,
            after: None,
        });
        let mut tables = self.snapshot_tables(&mut conn, info, None).await?;
        // Tables without any key first: they are read in one pass, and a
        // resumed snapshot reading one later than the first snapshot's point
        // could not tell the replayed changes in between from its rows.
        tables.sort_by(|a, b| a.order().cmp(&b.order()));
        let stored_keyed = progress.table.as_ref().is_none_or(|(d, t)| {
            tables
                .iter()
                .find(|p| p.schema.database == *d && p.schema.table == *t)
                .is_none_or(|p| !p.key.is_empty())
        });
        let todo: Vec<(Plan, Option<Vec<Value>>)> = tables
            .into_iter()
            .filter_map(|plan| {
                let start = progress.start_of(stored_keyed, plan.order())?;
                Some((plan, start))
            })
            .collect();
        if !self
            .read_tables(&mut conn, todo, progress, true, st, tx, shutdown)
            .await?
        {
            return Ok(None);
        }
        let _ = conn.query_drop("COMMIT").await;
        let _ = conn.disconnect().await;
        info!(position = %progress.position, "snapshot done: streaming from its position");
        Ok(Some(progress.position.clone()))
    }

    /// Re-reads the captured tables `only` names, at a new consistent point,
    /// while the stream goes on; answers `reply` once reading starts. Its
    /// rows carry that point's version, so the state orders them among the
    /// stream's changes whatever the arrival order. Not resumed after a
    /// restart: ask again.
    pub(super) async fn snapshot_on_demand(
        &self,
        info: &ServerInfo,
        only: &TableFilter,
        reply: oneshot::Sender<Result<SnapshotStarted, String>>,
        st: &mut ReadState,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let opened = async {
            let (mut conn, at) = self.open_snapshot(info).await?;
            let mut tables = self.snapshot_tables(&mut conn, info, Some(only)).await?;
            tables.sort_by(|a, b| a.order().cmp(&b.order()));
            Ok::<_, SourceError>((conn, at, tables))
        };
        let (mut conn, at, tables) = match opened.await {
            Ok(ok) if ok.2.is_empty() => {
                let _ = reply.send(Err(
                    "no captured table matches: the tables must be among CDC_MYSQL_TABLES".into(),
                ));
                let _ = ok.0.disconnect().await;
                return Ok(());
            }
            Ok(ok) => ok,
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
                return Err(e);
            }
        };
        let names: Vec<String> = tables
            .iter()
            .map(|p| format!("{}.{}", p.schema.database, p.schema.table))
            .collect();
        info!(position = %at, tables = %names.join(","), "on-demand snapshot started");
        let _ = reply.send(Ok(SnapshotStarted {
            tables: names,
            position: at.to_string(),
        }));
        let mut progress = Progress {
            position: at,
            table: None,
            after: None,
        };
        let todo = tables.into_iter().map(|plan| (plan, None)).collect();
        if self
            .read_tables(&mut conn, todo, &mut progress, false, st, tx, shutdown)
            .await?
        {
            info!(position = %progress.position, "on-demand snapshot done");
        }
        let _ = conn.query_drop("COMMIT").await;
        let _ = conn.disconnect().await;
        Ok(())
    }

    /// A connection in a consistent-snapshot transaction, and the binlog
    /// position it reads at.
    pub(super) async fn open_snapshot(
        &self,
        info: &ServerInfo,
    ) -> Result<(Conn, BinlogPosition), SourceError> {
        let sql_err = |what: &'static str| {
            move |e: mysql_async::Error| SourceError::Other(format!("snapshot: {what}: {e}"))
        };
        let mut conn = self.connect().await?;
        // Values arrive as stored (converted by the column's character set
        // like binlog values) and TIMESTAMPs in UTC, as the binlog has them.
        conn.query_drop("SET SESSION time_zone = '+00:00', character_set_results = binary")
            .await
            .map_err(sql_err("session settings"))?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(sql_err("session settings"))?;
        let at = self.consistent_snapshot(&mut conn, info).await?;
        Ok((conn, at))
    }

    /// Reads each table of `todo` from its start key in chunks, sending the
    /// rows and, when `durable`, the progress after each chunk. False when
    /// shutdown came first.
    #[allow(clippy::too_many_arguments)]
    async fn read_tables(
        &self,
        conn: &mut Conn,
        todo: Vec<(Plan, Option<Vec<Value>>)>,
        progress: &mut Progress,
        durable: bool,
        st: &mut ReadState,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let sql_err = |what: &str| {
            let what = what.to_owned();
            move |e: mysql_async::Error| SourceError::Other(format!("snapshot: {what}: {e}"))
        };
        let mut remaining = todo.len();
        self.metrics.snapshot_remaining_tables.set(remaining as i64);
        let time_ms = crate::clock::now_millis();
        let mut last_log = Instant::now();
        for (plan, start) in todo {
            let (database, table) = (plan.schema.database.clone(), plan.schema.table.clone());
            self.metrics.snapshot_reading(&database, &table);
            if plan.key.is_empty() {
                info!(
                    database,
                    table, "no primary or unique NOT NULL key: reading the table in one pass"
                );
            }
            let mut after = start;
            let mut rows_done: u64 = 0;
            // Identical rows of a table without a key: their occurrence
            // number keeps their ids apart, in any reading order.
            let mut seen: HashMap<u128, usize> = HashMap::new();
            loop {
                if shutdown.is_cancelled() {
                    return Ok(false);
                }
                let (sql, params) =
                    plan.chunk_query(after.as_deref(), self.cfg.snapshot_chunk_rows);
                let rows: Vec<mysql_async::Row> = conn
                    .exec(sql, params)
                    .await
                    .map_err(sql_err(&format!("reading {database}.{table}")))?;
                let n = rows.len();
                let last_key = rows.last().map(|r| {
                    plan.key
                        .iter()
                        .map(|&i| key_param(r.as_ref(i), &plan.schema.columns[i]))
                        .collect::<Vec<Value>>()
                });
                let events: Vec<(ChangeEvent, Option<ValueError>)> = rows
                    .iter()
                    .map(|r| self.snapshot_event(&plan, r, &progress.position, time_ms, &mut seen))
                    .collect();
                self.send_events(st, events, tx, shutdown).await?;
                self.metrics
                    .snapshot_rows
                    .with_label_values(&[&database, &table])
                    .inc_by(n as u64);
                rows_done += n as u64;
                let table_done = plan.key.is_empty() || n < self.cfg.snapshot_chunk_rows;
                if !table_done {
                    // A key the server does not read back as the same value
                    // would page over the same rows for ever: stop instead.
                    if last_key == after {
                        return Err(SourceError::Fatal(format!(
                            "snapshot: paging {database}.{table} by its key does not move past {}; \
                             set CDC_SNAPSHOT=never to stream only",
                            after.as_deref().map(encode_key).unwrap_or_default()
                        )));
                    }
                    after = last_key;
                }
                progress.table = Some((database.clone(), table.clone()));
                progress.after = if table_done { None } else { after.clone() };
                if durable {
                    self.send_progress(st, progress, tx, shutdown).await;
                }
                if last_log.elapsed() >= PROGRESS_EVERY {
                    last_log = Instant::now();
                    info!(
                        database,
                        table,
                        rows = rows_done,
                        remaining_tables = remaining,
                        "snapshot in progress"
                    );
                }
                if table_done {
                    break;
                }
            }
            remaining -= 1;
            self.metrics.snapshot_remaining_tables.set(remaining as i64);
            info!(
                database,
                table,
                rows = rows_done,
                remaining_tables = remaining,
                "snapshot of a table done"
            );
        }
        Ok(true)
    }

    /// Starts the consistent-snapshot transaction on `conn` and returns the
    /// binlog position it matches.
    async fn consistent_snapshot(
        &self,
        conn: &mut Conn,
        info: &ServerInfo,
    ) -> Result<BinlogPosition, SourceError> {
        let err = |what: &'static str| {
            move |e: mysql_async::Error| SourceError::Other(format!("snapshot: {what}: {e}"))
        };
        if info.mariadb {
            // MariaDB keeps the binlog position of a consistent snapshot
            // itself: no lock, writers go on.
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(err("START TRANSACTION WITH CONSISTENT SNAPSHOT"))?;
            let status: Vec<(String, String)> = conn
                .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                .await
                .map_err(err("SHOW STATUS LIKE 'binlog_snapshot_%'"))?;
            let get = |name: &str| {
                status
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let file = get("binlog_snapshot_file").filter(|f| !f.is_empty());
            let pos = get("binlog_snapshot_position").and_then(|p| p.parse::<u64>().ok());
            let (Some(file), Some(pos)) = (file, pos) else {
                return Err(SourceError::Fatal(
                    "the server reports no binlog_snapshot_file/position: is log_bin on?".into(),
                ));
            };
            // The GTID position there, so that streaming can resume by GTID.
            let gtid: Option<String> = conn
                .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file.as_str(), pos))
                .await
                .ok()
                .flatten()
                .filter(|g: &String| !g.is_empty());
            return Ok(BinlogPosition { file, pos, gtid });
        }
        // MySQL: the coordinates need the global read lock, held only while
        // the transaction starts and the position is read (RELOAD privilege).
        conn.query_drop("FLUSH TABLES WITH READ LOCK")
            .await
            .map_err(|e| {
                SourceError::Fatal(format!(
                    "snapshot: FLUSH TABLES WITH READ LOCK: {e} (the capture user needs the \
                     RELOAD privilege for a consistent snapshot on MySQL, or set CDC_SNAPSHOT=never)"
                ))
            })?;
        let started = async {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await?;
            let row: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
                Ok(r) => r,
                // MySQL 8.4 renamed it.
                Err(_) => conn.query_first("SHOW BINARY LOG STATUS").await?,
            };
            Ok::<_, mysql_async::Error>(row)
        }
        .await;
        let unlocked = conn.query_drop("UNLOCK TABLES").await;
        let row = started.map_err(err("starting the snapshot transaction"))?;
        unlocked.map_err(err("UNLOCK TABLES"))?;
        let row = row.ok_or_else(|| {
            SourceError::Fatal("SHOW MASTER STATUS is empty: is log_bin on?".into())
        })?;
        Ok(BinlogPosition {
            file: row.get(0).unwrap_or_default(),
            pos: row.get(1).unwrap_or(4),
            gtid: row
                .get::<Option<String>, _>(4)
                .flatten()
                .map(|g| g.replace('\n', ""))
                .filter(|g| !g.is_empty()),
        })
    }

    /// The captured tables in reading order, each with its key.
    pub(super) async fn snapshot_tables(
        &self,
        conn: &mut Conn,
        info: &ServerInfo,
        only: Option<&TableFilter>,
    ) -> Result<Vec<Plan>, SourceError> {
        let err = |e: mysql_async::Error| {
            SourceError::Other(format!("snapshot: listing the captured tables: {e}"))
        };
        let mut names: Vec<(String, String)> = conn
            .query(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_TYPE = 'BASE TABLE'",
            )
            .await
            .map_err(err)?;
        names
            .retain(|(d, t)| self.cfg.tables.accepts(d, t) && only.is_none_or(|f| f.accepts(d, t)));
        names.sort();
        let mut cache = SchemaCache::new(info.mariadb);
        let mut plans = Vec::with_capacity(names.len());
        for (database, table) in names {
            let schema = cache.load(conn, &database, &table).await.map_err(err)?;
            let (key, pk) = if schema.primary_key.is_empty() {
                let key = self.unique_not_null_key(conn, &schema).await.map_err(err)?;
                // The server takes the first unique NOT NULL key for the
                // primary key of a table without one, and full row metadata
                // names it so in the binlog: the stream's events carry it
                // as their pk, and so do the snapshot's.
                let pk = if info.full_metadata {
                    key.clone()
                } else {
                    Vec::new()
                };
                (key, pk)
            } else {
                (schema.primary_key.clone(), schema.primary_key.clone())
            };
            let mysql_types = Arc::new(Row::from_values(schema.columns.iter().map(|c| {
                (
                    c.name.as_str(),
                    serde_json::Value::from(c.mysql_type.clone()),
                )
            })));
            plans.push(Plan {
                schema,
                key,
                pk,
                mysql_types,
            });
        }
        Ok(plans)
    }

    /// The first unique key whose columns are all NOT NULL, as column
    /// indexes in key order; keys are listed in the server's own order, the
    /// one it picks a stand-in primary key by.
    async fn unique_not_null_key(
        &self,
        conn: &mut Conn,
        schema: &TableSchema,
    ) -> Result<Vec<usize>, mysql_async::Error> {
        // No ORDER BY and no join: the rows come in the table's key order.
        let rows: Vec<(String, String, u32)> = conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME, SEQ_IN_INDEX FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0",
                (schema.database.as_str(), schema.table.as_str()),
            )
            .await?;
        let not_null: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND IS_NULLABLE = 'NO'",
                (schema.database.as_str(), schema.table.as_str()),
            )
            .await?;
        // (index name, (position in key, column), all columns NOT NULL)
        type Key = (String, Vec<(u32, usize)>, bool);
        let mut keys: Vec<Key> = Vec::new();
        for (index, column, seq) in rows {
            if keys.last().is_none_or(|(i, _, _)| *i != index) {
                keys.push((index.clone(), Vec::new(), true));
            }
            if let Some((_, cols, ok)) = keys.last_mut() {
                match schema.columns.iter().position(|c| c.name == column) {
                    Some(i) if not_null.contains(&column) => cols.push((seq, i)),
                    _ => *ok = false,
                }
            }
        }
        for (_, cols, _) in &mut keys {
            cols.sort_unstable();
        }
        Ok(keys
            .into_iter()
            .find(|(_, cols, ok)| *ok && !cols.is_empty())
            .map(|(_, cols, _)| cols.into_iter().map(|(_, i)| i).collect())
            .unwrap_or_default())
    }

    /// One row read by the snapshot as an event, with the first value that
    /// could not be written (null in the event).
    pub(super) fn snapshot_event(
        &self,
        plan: &Plan,
        r: &mysql_async::Row,
        at: &BinlogPosition,
        time_ms: i64,
        seen: &mut HashMap<u128, usize>,
    ) -> (ChangeEvent, Option<ValueError>) {
        let schema = &plan.schema;
        let columns = r.columns_ref();
        let mut error = None;
        let mut data = Vec::with_capacity(schema.columns.len());
        for (i, col) in schema.columns.iter().enumerate() {
            let value = r.as_ref(i).unwrap_or(&Value::NULL);
            let (t, digits) = columns
                .get(i)
                .map(|c| (c.column_type(), usize::from(c.decimals()).min(6)))
                .unwrap_or((mysql_async::consts::ColumnType::MYSQL_TYPE_NULL, 0));
            let json = match convert::snapshot_to_json(value, t, digits, col) {
                Ok(v) => v,
                Err(e) => {
                    error.get_or_insert_with(|| ValueError {
                        database: schema.database.clone(),
                        table: schema.table.clone(),
                        column: col.name.clone(),
                        error: e,
                    });
                    convert::null()
                }
            };
            data.push((Box::from(col.name.as_str()), json));
        }
        let data = Row(data);
        let pk = Row(plan
            .pk
            .iter()
            .filter_map(|&i| {
                let name = schema.columns.get(i)?.name.as_str();
                data.get(name).map(|v| (Box::from(name), v.to_owned()))
            })
            .collect());
        let occurrence = if plan.key.is_empty() {
            let digest = xxh3_128(serde_json::to_string(&data).unwrap_or_default().as_bytes());
            let n = seen.entry(digest).or_insert(0);
            *n += 1;
            *n - 1
        } else {
            0
        };
        let event = ChangeEvent {
            database: schema.database.clone(),
            table: schema.table.clone(),
            op: Op::Snapshot,
            pk,
            data,
            old: None,
            commit_time_ms: time_ms,
            // Below every change after the snapshot's position: a later
            // version of the row always orders after its snapshot.
            commit_ts: Some(BinlogPosition::change_number(&at.file, at.pos, occurrence)),
            sql: None,
            mysql_types: Some(plan.mysql_types.clone()),
            large_message: None,
            reason: None,
            position: SourcePosition::Binlog {
                file: Arc::from(at.file.as_str()),
                pos: at.pos,
            },
        };
        (event, error)
    }

    /// The snapshot's progress, stored with the chunk's rows.
    async fn send_progress(
        &self,
        st: &ReadState,
        p: &Progress,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) {
        if !self.emit_checkpoints {
            return;
        }
        let (database, table) = p.table.clone().unwrap_or_default();
        let envelope = Envelope {
            events: Vec::new(),
            ack: None,
            origin: self.origin(st.seq),
            undecodable: None,
            checkpoint: Some(Checkpoint::Snapshot(SnapshotProgress {
                position: p.position.clone(),
                database,
                table,
                after: p.after.as_deref().map(encode_key),
            })),
            size: 0,
            budget: None,
        };
        self.send(envelope, tx, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keys_go_back_as_utf8_binary_ones_as_they_came() {
        let col = |cs: Charset| ColumnInfo {
            name: "k".into(),
            mysql_type: "varchar".into(),
            unsigned: false,
            charset: Some(cs),
            pad_to: 0,
            members: Vec::new(),
        };
        let latin1 = Value::Bytes(vec![0xc4, b'x']);
        assert_eq!(
            key_param(Some(&latin1), &col(Charset::from_name("latin1"))),
            Value::Bytes("Äx".as_bytes().to_vec())
        );
        assert_eq!(key_param(Some(&latin1), &col(Charset::Binary)), latin1);
        assert_eq!(key_param(None, &col(Charset::Binary)), Value::NULL);
    }

    fn plan(key: Vec<usize>) -> Plan {
        let col = |name: &str| ColumnInfo {
            name: name.into(),
            mysql_type: "int".into(),
            unsigned: false,
            charset: None,
            pad_to: 0,
            members: Vec::new(),
        };
        Plan {
            schema: Arc::new(TableSchema {
                database: "app".into(),
                table: "t`x".into(),
                columns: vec![col("a"), col("b"), col("c")],
                primary_key: key.clone(),
            }),
            pk: key.clone(),
            key,
            mysql_types: Arc::default(),
        }
    }

    #[test]
    fn chunks_page_by_the_key_written_out_as_ranges() {
        let (sql, params) = plan(vec![0, 1]).chunk_query(None, 10);
        assert_eq!(
            sql,
            "SELECT `a`, `b`, `c` FROM `app`.`t``x` ORDER BY `a`, `b` LIMIT 10"
        );
        assert!(params.is_empty());
        let after = [Value::Int(1), Value::Bytes(b"x".to_vec())];
        let (sql, params) = plan(vec![0, 1]).chunk_query(Some(&after), 10);
        assert_eq!(
            sql,
            "SELECT `a`, `b`, `c` FROM `app`.`t``x` WHERE (`a` > ?) OR (`a` = ? AND `b` > ?) \
             ORDER BY `a`, `b` LIMIT 10"
        );
        assert_eq!(
            params,
            vec![after[0].clone(), after[0].clone(), after[1].clone()]
        );
        let (sql, _) = plan(Vec::new()).chunk_query(None, 10);
        assert_eq!(sql, "SELECT `a`, `b`, `c` FROM `app`.`t``x`");
    }

    #[test]
    fn stored_keys_read_back_as_the_same_values() {
        let key = vec![
            Value::Int(-3),
            Value::UInt(u64::MAX),
            Value::Bytes(vec![0, 255, b'a']),
            Value::Date(2024, 5, 1, 12, 0, 0, 7),
            Value::Time(true, 1, 2, 3, 4, 5),
            Value::Double(0.1),
            Value::NULL,
        ];
        assert_eq!(decode_key(&encode_key(&key)).unwrap(), key);
    }

    #[test]
    fn progress_skips_done_tables_and_resumes_after_the_key() {
        let p = Progress {
            position: BinlogPosition {
                file: "b.1".into(),
                pos: 4,
                gtid: None,
            },
            table: Some(("app".into(), "m".into())),
            after: Some(vec![Value::Int(9)]),
        };
        assert_eq!(p.start_of(true, (true, "app", "a")), None);
        assert_eq!(
            p.start_of(true, (false, "app", "z")),
            None,
            "keyless tables come first"
        );
        assert_eq!(
            p.start_of(true, (true, "app", "m")),
            Some(Some(vec![Value::Int(9)]))
        );
        assert_eq!(p.start_of(true, (true, "app", "z")), Some(None));
        let done = Progress { after: None, ..p };
        assert_eq!(done.start_of(true, (true, "app", "m")), None);
        assert_eq!(done.start_of(false, (true, "app", "a")), Some(None));
    }
}
