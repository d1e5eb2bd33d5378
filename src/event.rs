//! The normalised change event every source produces and every sink stores.
//!
//! Column values are kept as the raw JSON text the source wrote (TiCDC writes
//! strings or null), so no conversion can lose a digit, and they are written
//! back out byte for byte.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use xxhash_rust::xxh3::Xxh3;

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Ddl,
    /// A row as it was when a snapshot read it (an existing row, not a change).
    Snapshot,
}

impl Op {
    /// The lower-case name used in documents and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Ddl => "ddl",
            Op::Snapshot => "snapshot",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row: column name to the column's raw JSON value, in source order.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<(Box<str>, Box<RawValue>)>);

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((ka, va), (kb, vb))| ka == kb && va.get() == vb.get())
    }
}

impl Row {
    /// Its bytes as JSON, give or take the punctuation.
    pub fn json_len(&self) -> usize {
        self.0
            .iter()
            .map(|(name, value)| name.len() + value.get().len() + 4)
            .sum()
    }

    /// The raw JSON text of a column, if present.
    pub fn get(&self, column: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .find(|(name, _)| name.as_ref() == column)
            .map(|(_, v)| v.as_ref())
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Builds a row from `(name, value)` pairs of already valid JSON values.
    pub fn from_values<'a>(pairs: impl IntoIterator<Item = (&'a str, serde_json::Value)>) -> Row {
        Row(pairs
            .into_iter()
            .map(|(k, v)| {
                // Serialising a `Value` cannot fail: its keys are strings.
                let raw = serde_json::value::to_raw_value(&v).expect("Value serialises");
                (Box::from(k), raw)
            })
            .collect())
    }

    /// The value of a column as a string when it is a JSON string, else its JSON text.
    pub fn text(&self, column: &str) -> Option<String> {
        let raw = self.get(column)?;
        match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => Some(s),
            Err(_) => Some(raw.get().to_owned()),
        }
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k.as_ref(), v.as_ref())?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of column values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Row, A::Error> {
                let mut cols = Vec::with_capacity(access.size_hint().unwrap_or(8));
                while let Some((k, v)) = access.next_entry::<Box<str>, Box<RawValue>>()? {
                    cols.push((k, v));
                }
                Ok(Row(cols))
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

/// Where an event came from, precise enough to resume or to find it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePosition {
    /// A Kafka record.
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
    /// A MySQL/MariaDB binlog event: the rows event's file and end position.
    Binlog { file: Arc<str>, pos: u64 },
    /// Not from a durable source (tests, benchmarks).
    None,
}

/// Why a message carries less than the full row (TiCDC large-message handling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LargeMessage {
    /// `large-message-handle-option=handle-key-only`: `data` holds the handle key only.
    HandleKeyOnly,
    /// `large-message-handle-option=claim-check`: the full message is stored elsewhere.
    ClaimCheck { location: String },
}

/// One normalised change: one row of one table, or one DDL statement.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub database: String,
    pub table: String,
    pub op: Op,
    /// Primary-key columns and their values, in `pkNames` order.
    pub pk: Row,
    /// Row after the change (the deleted row for deletes; empty for DDL).
    pub data: Row,
    /// Row before the change, for updates.
    pub old: Option<Row>,
    /// Commit time in milliseconds since the Unix epoch.
    pub commit_time_ms: i64,
    /// TiDB commit timestamp (TSO) when the source provides one.
    pub commit_ts: Option<u64>,
    /// The statement, for DDL.
    pub sql: Option<String>,
    /// Column types as MySQL names them, when the source provides them;
    /// shared by the events of one message or table.
    pub mysql_types: Option<Arc<Row>>,
    /// Set when the message was reduced by TiCDC's large-message handling.
    pub large_message: Option<LargeMessage>,
    /// Why cdc-monitor itself wrote this event (`reconcile --repair`), when it did.
    pub reason: Option<String>,
    pub position: SourcePosition,
}

/// A deterministic Elasticsearch `_id`: the same change always maps to the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DocumentId(pub u128);

impl DocumentId {
    /// The id as 32 lower-case hex digits, on the stack.
    pub fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = DIGITS[((self.0 >> (124 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

impl ChangeEvent {
    /// A row change with none of the extras a source may add (commit TSO,
    /// statement, column types, large-message marker, reason, position):
    /// set those with struct update syntax.
    pub fn row(
        database: impl Into<String>,
        table: impl Into<String>,
        op: Op,
        pk: Row,
        data: Row,
        old: Option<Row>,
        commit_time_ms: i64,
    ) -> ChangeEvent {
        ChangeEvent {
            database: database.into(),
            table: table.into(),
            op,
            pk,
            data,
            old,
            commit_time_ms,
            commit_ts: None,
            sql: None,
            mysql_types: None,
            large_message: None,
            reason: None,
            position: SourcePosition::None,
        }
    }

    /// A DDL statement on `database.table` (`table` empty for a database-wide one).
    pub fn ddl(
        database: String,
        table: String,
        sql: String,
        commit_time_ms: i64,
        commit_ts: Option<u64>,
        position: SourcePosition,
    ) -> ChangeEvent {
        ChangeEvent {
            database,
            table,
            op: Op::Ddl,
            pk: Row::default(),
            data: Row::default(),
            old: None,
            commit_time_ms,
            commit_ts,
            sql: Some(sql),
            mysql_types: None,
            large_message: None,
            reason: None,
            position,
        }
    }

    /// About the bytes the event takes as a message (its rows, names and
    /// statement), counted without encoding it.
    pub fn estimated_bytes(&self) -> usize {
        let rows = self.pk.json_len()
            + self.data.json_len()
            + self.old.as_ref().map_or(0, Row::json_len)
            + self.mysql_types.as_deref().map_or(0, Row::json_len);
        rows + self.database.len()
            + self.table.len()
            + self.sql.as_ref().map_or(0, String::len)
            + 128
    }

    /// The change's version, which orders the changes of one row: the
    /// commit_ts (TiDB's TSO, or for the binlog a number that orders
    /// positions and snapshot points), else the commit time in milliseconds
    /// shifted as a TSO's physical part is. At most `i64::MAX`, the largest
    /// version Elasticsearch and SQLite hold.
    pub fn version(&self) -> u64 {
        self.commit_ts
            .unwrap_or((self.commit_time_ms.max(0) as u64) << 18)
            .min(i64::MAX as u64)
    }

    /// The id derived from (database, table, primary key, commit_ts, op).
    ///
    /// Without a commit_ts (plain canal-json) the commit time in milliseconds
    /// stands in, and a digest of the row is added so that two changes of the
    /// same row within one millisecond stay distinct; a replay of the same
    /// change still yields the same id. Without a primary key the whole row
    /// identifies the change.
    pub fn document_id(&self) -> DocumentId {
        let mut h = Xxh3::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(self.database.as_bytes());
        field(self.table.as_bytes());
        field(self.op.as_str().as_bytes());
        for (k, v) in &self.pk.0 {
            field(k.as_bytes());
            field(v.get().as_bytes());
        }
        match self.commit_ts {
            Some(ts) => field(&ts.to_le_bytes()),
            None => {
                field(&self.commit_time_ms.to_le_bytes());
                for (k, v) in &self.data.0 {
                    field(k.as_bytes());
                    field(v.get().as_bytes());
                }
                if let Some(sql) = &self.sql {
                    field(sql.as_bytes());
                }
            }
        }
        if let Some(reason) = &self.reason {
            // A repair is its own change, even at a snapshot's position.
            field(reason.as_bytes());
        }
        if self.pk.is_empty() && self.commit_ts.is_some() {
            for (k, v) in &self.data.0 {
                field(k.as_bytes());
                field(v.get().as_bytes());
            }
            if let Some(sql) = &self.sql {
                field(sql.as_bytes());
            }
        }
        DocumentId(h.digest128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(op: Op, id: &str, ts: Option<u64>) -> ChangeEvent {
        let data = Row::from_values([("id", json!(id)), ("name", json!("a"))]);
        let pk = Row::from_values([("id", json!(id))]);
        ChangeEvent {
            commit_ts: ts,
            ..ChangeEvent::row("appdb", "users", op, pk, data, None, 1_700_000_000_000)
        }
    }

    #[test]
    fn same_change_gives_same_id_and_any_difference_changes_it() {
        let raw_ts = 429_918_007_904_436_226;
        let ts = Some(raw_ts);
        let a = event(Op::Insert, "1", ts).document_id();
        assert_eq!(a, event(Op::Insert, "1", ts).document_id());
        assert_ne!(a, event(Op::Update, "1", ts).document_id());
        assert_ne!(a, event(Op::Insert, "2", ts).document_id());
        assert_ne!(a, event(Op::Insert, "1", Some(raw_ts + 1)).document_id());
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string(), format!("{:032x}", a.0));
        assert_eq!(DocumentId(0xab).to_string(), format!("{:032x}", 0xab));
    }

    #[test]
    fn row_round_trips_raw_values_exactly() {
        let text = r#"{"a":"12345678901234567890.123456789","b":null,"c":1e400}"#;
        let row: Row = serde_json::from_str(text).unwrap();
        assert_eq!(row.len(), 3);
        assert_eq!(serde_json::to_string(&row).unwrap(), text);
        assert_eq!(row.text("a").unwrap(), "12345678901234567890.123456789");
        assert_eq!(row.get("b").unwrap().get(), "null");
    }
}
