//! Reading the captured tables' current rows for `reconcile`: the
//! snapshot's consistent read, in key chunks, rendered exactly as the
//! capture renders them, sending nothing. The server sees only range
//! scans on a key (or one pass over a table without one) and lookups by key.
//!
//! The same scan reads the upstream of the Kafka source (TiDB, or MySQL and
//! MariaDB through Canal) without any binlog part: no preflight, no
//! position; TiDB at a TSO (`AS OF TIMESTAMP`), other servers (or TiDB
//! without one) in a consistent snapshot of the current data.

use std::collections::HashMap;
use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use tracing::warn;

use crate::checkpoint::BinlogPosition;
use crate::config::TableFilter;
use crate::event::{ChangeEvent, SourcePosition};
use crate::source::binlog::preflight::{self, ServerInfo};
use crate::source::binlog::snapshot::{key_param, quote, Plan};
use crate::source::binlog::BinlogSource;
use crate::source::SourceError;

/// The point a scan reads the tables at.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadPoint {
    /// A consistent snapshot and the binlog position it matches (the binlog source).
    Binlog(BinlogPosition),
    /// TiDB's data as of this TSO (`AS OF TIMESTAMP`): the Kafka consumer's checkpoint.
    Tso(u64),
    /// A consistent snapshot of the current data, at no position the
    /// capture knows.
    Current,
}

impl ReadPoint {
    /// The TSO of a read at one.
    pub fn tso(&self) -> Option<u64> {
        match self {
            ReadPoint::Tso(tso) => Some(*tso),
            _ => None,
        }
    }

    /// The statement that starts a read at this point (`Binlog` has its own,
    /// with the position: `BinlogSource::open_snapshot`).
    pub fn start_sql(&self, info: &ServerInfo) -> String {
        match self {
            ReadPoint::Tso(tso) => {
                format!("START TRANSACTION READ ONLY AS OF TIMESTAMP TIDB_PARSE_TSO({tso})")
            }
            // TiDB's grammar takes one characteristic at a time.
            _ if info.tidb => "START TRANSACTION WITH CONSISTENT SNAPSHOT".to_owned(),
            _ => "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY".to_owned(),
        }
    }
}

impl fmt::Display for ReadPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadPoint::Binlog(p) => write!(f, "binlog position {p}"),
            ReadPoint::Tso(tso) => write!(
                f,
                "as of TSO {tso} ({})",
                crate::clock::rfc3339_millis(crate::canal::decode::tso_to_millis(*tso))
            ),
            ReadPoint::Current => write!(f, "current data"),
        }
    }
}

/// A row's key as the server takes it back as a parameter (opaque).
#[derive(Debug, Clone, PartialEq)]
pub struct ScanKey(Vec<Value>);

impl ScanKey {
    /// A key from its values as the capture rendered them (JSON text of
    /// each value: strings as text, numbers as written, null): for rows
    /// known only from the captured state.
    pub fn from_rendered(values: &[serde_json::Value]) -> ScanKey {
        ScanKey(
            values
                .iter()
                .map(|v| match v {
                    serde_json::Value::Null => Value::NULL,
                    serde_json::Value::String(s) => Value::Bytes(s.clone().into_bytes()),
                    other => Value::Bytes(other.to_string().into_bytes()),
                })
                .collect(),
        )
    }
}

/// One chunk of a table: its rows (with their keys) and where the next starts.
pub struct Chunk {
    pub rows: Vec<(ChangeEvent, ScanKey)>,
    /// `None` once the table is done.
    pub next: Option<ScanKey>,
}

/// A consistent read of the captured tables.
pub struct Scan<'a> {
    source: &'a BinlogSource,
    info: ServerInfo,
    conn: Conn,
    plans: Vec<Plan>,
    point: ReadPoint,
    /// SQL statements sent, for the load report.
    pub queries: u64,
}

impl BinlogSource {
    /// Opens a consistent read of the captured tables `only` names (all
    /// when `None`), in the snapshot's order.
    pub async fn scan(&self, only: Option<&TableFilter>) -> Result<Scan<'_>, SourceError> {
        let mut conn = self.connect().await?;
        let info = self.preflight(&mut conn).await?;
        let _ = conn.disconnect().await;
        let (conn, at) = self.open_snapshot(&info).await?;
        self.scan_tables(conn, info, ReadPoint::Binlog(at), only)
            .await
    }

    /// Opens a read of the tables `only` names without the binlog: the
    /// upstream of the Kafka source. On TiDB at `as_of` (a TSO) when given,
    /// else (and on other servers) in a consistent snapshot of the current data.
    pub async fn scan_upstream(
        &self,
        only: Option<&TableFilter>,
        as_of: Option<u64>,
    ) -> Result<Scan<'_>, SourceError> {
        let mut conn = self.connect().await?;
        let info = preflight::describe(&mut conn)
            .await
            .map_err(|e| SourceError::Other(format!("MySQL at {}: {e}", self.server())))?;
        let point = match as_of {
            Some(tso) if info.tidb => ReadPoint::Tso(tso),
            Some(tso) => {
                warn!(tso, version = %info.version, "the server is not TiDB: reading the current data, not as of the TSO");
                ReadPoint::Current
            }
            None => ReadPoint::Current,
        };
        start_read(&mut conn, &point, &info).await?;
        self.scan_tables(conn, info, point, only).await
    }

    /// The scan of the captured tables `only` names on `conn`, whose read
    /// at `point` has started.
    async fn scan_tables(
        &self,
        mut conn: Conn,
        info: ServerInfo,
        point: ReadPoint,
        only: Option<&TableFilter>,
    ) -> Result<Scan<'_>, SourceError> {
        let mut plans = self.snapshot_tables(&mut conn, &info, only).await?;
        plans.sort_by(|a, b| a.order().cmp(&b.order()));
        Ok(Scan {
            source: self,
            info,
            conn,
            plans,
            point,
            queries: 1,
        })
    }
}

/// Starts the read transaction of a point other than a binlog position.
async fn start_read(
    conn: &mut Conn,
    point: &ReadPoint,
    info: &ServerInfo,
) -> Result<(), SourceError> {
    let sql = point.start_sql(info);
    conn.query_drop(&sql)
        .await
        .map_err(|e| SourceError::Other(format!("{sql}: {e}")))
}

impl Scan<'_> {
    /// `(database, table)` of each table, by index.
    pub fn tables(&self) -> Vec<(String, String)> {
        self.plans
            .iter()
            .map(|p| (p.schema.database.clone(), p.schema.table.clone()))
            .collect()
    }

    /// The point the current read sees.
    pub fn point(&self) -> &ReadPoint {
        &self.point
    }

    /// One query on table `t`'s behalf, counted.
    async fn read(
        &mut self,
        t: usize,
        sql: String,
        params: Vec<Value>,
    ) -> Result<Vec<mysql_async::Row>, SourceError> {
        self.queries += 1;
        let plan = &self.plans[t];
        self.conn
            .exec(sql, params)
            .await
            .map_err(|e| read_error(plan, e))
    }

    /// The rows of table `t` after `after`, at most `limit` (every row of a
    /// table without a key).
    pub async fn chunk(
        &mut self,
        t: usize,
        after: Option<&ScanKey>,
        limit: usize,
    ) -> Result<Chunk, SourceError> {
        let plan = &self.plans[t];
        let (sql, params) = plan.chunk_query(after.map(|k| k.0.as_slice()), limit);
        let keyless = plan.key.is_empty();
        let rows = self.read(t, sql, params).await?;
        let done = keyless || rows.len() < limit;
        let rows = self.events(t, rows);
        let next = if done {
            None
        } else {
            rows.last().map(|(_, k)| k.clone())
        };
        Ok(Chunk { rows, next })
    }

    /// The current rows of table `t` with these keys (a missing row is
    /// absent), read in a new consistent view.
    pub async fn rows_by_key(
        &mut self,
        t: usize,
        keys: &[ScanKey],
    ) -> Result<Vec<(ChangeEvent, ScanKey)>, SourceError> {
        let plan = &self.plans[t];
        let all: Vec<usize> = (0..plan.schema.columns.len()).collect();
        let cols: Vec<String> = plan.schema.columns.iter().map(|c| quote(&c.name)).collect();
        let mut queries = Vec::new();
        for batch in keys.chunks(200) {
            // A key of the paging columns, else of every column (a table
            // whose rows are known by their whole row).
            let conditions: Vec<String> = batch
                .iter()
                .map(|k| {
                    let key_cols = if !plan.key.is_empty() && k.0.len() == plan.key.len() {
                        &plan.key
                    } else {
                        &all
                    };
                    let one: Vec<String> = key_cols
                        .iter()
                        .map(|&i| format!("{} <=> ?", quote(&plan.schema.columns[i].name)))
                        .collect();
                    format!("({})", one.join(" AND "))
                })
                .collect();
            let sql = format!(
                "SELECT {} FROM {}.{} WHERE {}",
                cols.join(", "),
                quote(&plan.schema.database),
                quote(&plan.schema.table),
                conditions.join(" OR ")
            );
            let params: Vec<Value> = batch.iter().flat_map(|k| k.0.iter().cloned()).collect();
            queries.push((sql, params));
        }
        let mut out = Vec::new();
        for (sql, params) in queries {
            let rows = self.read(t, sql, params).await?;
            out.extend(self.events(t, rows));
        }
        Ok(out)
    }

    /// Ends the current read and starts a new consistent one (a later point).
    /// At a TSO the new read is at the same TSO.
    pub async fn refresh(&mut self) -> Result<(), SourceError> {
        let _ = self.conn.query_drop("COMMIT").await;
        let conn = match &self.point {
            ReadPoint::Binlog(_) => {
                let (conn, at) = self.source.open_snapshot(&self.info).await?;
                self.point = ReadPoint::Binlog(at);
                conn
            }
            point => {
                let mut conn = self.source.connect().await?;
                start_read(&mut conn, point, &self.info).await?;
                conn
            }
        };
        let old = std::mem::replace(&mut self.conn, conn);
        let _ = old.disconnect().await;
        self.queries += 1;
        Ok(())
    }

    /// Ends the read.
    pub async fn close(mut self) {
        let _ = self.conn.query_drop("COMMIT").await;
        let _ = self.conn.disconnect().await;
    }

    /// Rows of table `t` as snapshot events at the current point, with
    /// their keys. Their version: at a binlog position, the snapshot's; at
    /// a TSO, the TSO (a change committed after it wins); reading current
    /// data, the time of the read (no commit_ts: the version rule of
    /// changes without one, which a TSO's physical part follows too).
    fn events(&self, t: usize, rows: Vec<mysql_async::Row>) -> Vec<(ChangeEvent, ScanKey)> {
        let plan = &self.plans[t];
        let time_ms = crate::clock::now_millis();
        let mut seen = HashMap::new();
        let no_position = BinlogPosition {
            file: String::new(),
            pos: 0,
            gtid: None,
        };
        let at = match &self.point {
            ReadPoint::Binlog(at) => at,
            _ => &no_position,
        };
        rows.iter()
            .map(|r| {
                let key_cols: Vec<usize> = if plan.key.is_empty() {
                    (0..plan.schema.columns.len()).collect()
                } else {
                    plan.key.clone()
                };
                let key = ScanKey(
                    key_cols
                        .iter()
                        .map(|&i| key_param(r.as_ref(i), &plan.schema.columns[i]))
                        .collect(),
                );
                // A value the capture could not render is null in both.
                let (mut event, _) = self.source.snapshot_event(plan, r, at, time_ms, &mut seen);
                match self.point {
                    ReadPoint::Binlog(_) => {}
                    ReadPoint::Tso(tso) => {
                        event.commit_ts = Some(tso);
                        event.commit_time_ms = crate::canal::decode::tso_to_millis(tso);
                        event.position = SourcePosition::None;
                    }
                    ReadPoint::Current => {
                        event.commit_ts = None;
                        event.position = SourcePosition::None;
                    }
                }
                (event, key)
            })
            .collect()
    }
}

fn read_error(plan: &Plan, e: mysql_async::Error) -> SourceError {
    SourceError::Other(format!(
        "reading {}.{}: {e}",
        plan.schema.database, plan.schema.table
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidb_is_read_as_of_the_checkpoint_tso_and_others_at_the_current_data() {
        let tidb = ServerInfo::from_version("8.0.11-TiDB-v7.5.1".into(), false);
        let mariadb = ServerInfo::from_version("11.4.2-MariaDB-log".into(), true);
        assert!(tidb.tidb && !tidb.mariadb && mariadb.mariadb && !mariadb.tidb);
        let tso = 445_318_436_315_725_826;
        assert_eq!(
            ReadPoint::Tso(tso).start_sql(&tidb),
            "START TRANSACTION READ ONLY AS OF TIMESTAMP TIDB_PARSE_TSO(445318436315725826)"
        );
        assert_eq!(
            ReadPoint::Current.start_sql(&tidb),
            "START TRANSACTION WITH CONSISTENT SNAPSHOT"
        );
        assert_eq!(
            ReadPoint::Current.start_sql(&mariadb),
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
        );
        assert_eq!(
            ReadPoint::Tso(tso).to_string(),
            "as of TSO 445318436315725826 (2023-10-31T12:23:41.346Z)"
        );
        assert_eq!(ReadPoint::Current.to_string(), "current data");
    }
}
