//! Reading the captured tables' current rows for `reconcile`: the
//! snapshot's consistent read, in key chunks, rendered exactly as the
//! capture renders them, sending nothing. The server sees only range
//! scans on a key (or one pass over a table without one) and lookups by key.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};

use crate::checkpoint::BinlogPosition;
use crate::config::TableFilter;
use crate::event::ChangeEvent;
use crate::source::binlog::preflight::ServerInfo;
use crate::source::binlog::snapshot::{key_param, quote, Plan};
use crate::source::binlog::BinlogSource;
use crate::source::SourceError;

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
    at: BinlogPosition,
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
        let (mut conn, at) = self.open_snapshot(&info).await?;
        let mut plans = self.snapshot_tables(&mut conn, &info, only).await?;
        plans.sort_by(|a, b| a.order().cmp(&b.order()));
        Ok(Scan {
            source: self,
            info,
            conn,
            plans,
            at,
            queries: 1,
        })
    }
}

impl Scan<'_> {
    /// `(database, table)` of each table, by index.
    pub fn tables(&self) -> Vec<(String, String)> {
        self.plans
            .iter()
            .map(|p| (p.schema.database.clone(), p.schema.table.clone()))
            .collect()
    }

    /// The binlog position the current read sees.
    pub fn position(&self) -> &BinlogPosition {
        &self.at
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
        self.queries += 1;
        let rows: Vec<mysql_async::Row> = self
            .conn
            .exec(sql, params)
            .await
            .map_err(|e| read_error(plan, e))?;
        let done = plan.key.is_empty() || rows.len() < limit;
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
        let mut out = Vec::new();
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
            self.queries += 1;
            let rows: Vec<mysql_async::Row> = self
                .conn
                .exec(sql, params)
                .await
                .map_err(|e| read_error(plan, e))?;
            out.extend(self.events(t, rows));
        }
        Ok(out)
    }

    /// Ends the current read and starts a new consistent one (a later point).
    pub async fn refresh(&mut self) -> Result<(), SourceError> {
        let _ = self.conn.query_drop("COMMIT").await;
        let (conn, at) = self.source.open_snapshot(&self.info).await?;
        let old = std::mem::replace(&mut self.conn, conn);
        let _ = old.disconnect().await;
        self.at = at;
        self.queries += 1;
        Ok(())
    }

    /// Ends the read.
    pub async fn close(mut self) {
        let _ = self.conn.query_drop("COMMIT").await;
        let _ = self.conn.disconnect().await;
    }

    /// Rows of table `t` as snapshot events at the current point, with their keys.
    fn events(&self, t: usize, rows: Vec<mysql_async::Row>) -> Vec<(ChangeEvent, ScanKey)> {
        let plan = &self.plans[t];
        let time_ms = crate::clock::now_millis();
        let mut seen = HashMap::new();
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
                let (event, _) = self
                    .source
                    .snapshot_event(plan, r, &self.at, time_ms, &mut seen);
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
