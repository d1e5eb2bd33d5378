//! Turning binlog events into change events, without I/O: rows events to
//! rows with column names, DDL statements to their table, and the quirks of
//! the stream's first rotate event.

use std::sync::Arc;

use mysql_async::binlog::events::{RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::consts::ColumnType;
use mysql_common::binlog::consts::{BinlogVersion, EventType};
use mysql_common::binlog::events::FormatDescriptionEvent;
use mysql_common::binlog::BinlogCtx;
use mysql_common::io::ParseBuf;
use mysql_common::proto::{MyDeserialize, MySerialize};
use serde_json::value::RawValue;

use crate::event::{ChangeEvent, Op, Row, SourcePosition};
use crate::source::binlog::charset::CharsetError;
use crate::source::binlog::convert;
use crate::source::binlog::position::BinlogPosition;
use crate::source::binlog::schema::{self, TableSchema};

/// A captured table: its schema, per column the binlog type and fractional
/// digits, and the table map its rows are decoded with.
pub struct MappedTable {
    pub schema: Arc<TableSchema>,
    pub types: Vec<(ColumnType, usize)>,
    pub mysql_types: Arc<Row>,
    /// The server's table map with TIME(1)/TIME(2) columns relabelled (see
    /// [`decoding_table_map`]).
    pub decoding: TableMapEvent<'static>,
}

/// A value that could not be written as text, with the column it is in.
#[derive(Debug, Clone, thiserror::Error)]
#[error("column {database}.{table}.{column}: {error}")]
pub struct ValueError {
    pub database: String,
    pub table: String,
    pub column: String,
    pub error: CharsetError,
}

/// The table map that rows are decoded with: the server's, except that a
/// TIME(1) or TIME(2) column is described as a TIMESTAMP(0), which has the
/// same 4 bytes, so that its raw bytes reach `convert` (as the decimal of
/// their big-endian i32). mysql_common decodes a negative TIME(1)/TIME(2)
/// with a fraction through an unsigned underflow: a wrong value in release
/// builds, a panic in debug ones.
// Upstream bug (mysql_common 0.37.3, not yet reported in blackbeam/rust_mysql_common):
// `binlog::misc::my_time_packed_from_binary`
// (`frac` is a u32 there, an int in the server's `my_time_packed_from_binary`).
pub fn decoding_table_map(tme: &TableMapEvent<'_>) -> std::io::Result<TableMapEvent<'static>> {
    let n = tme.columns_count() as usize;
    let mut meta_offset = 0;
    let mut patches = Vec::new();
    for i in 0..n {
        let meta = tme.get_column_metadata(i).unwrap_or(&[]);
        match tme.get_raw_column_type(i) {
            Ok(Some(ColumnType::MYSQL_TYPE_TIME2)) if matches!(meta.first(), Some(1 | 2)) => {
                patches.push((i, meta_offset));
            }
            // Its metadata length differs from what it consumes: leave the map alone.
            Ok(Some(ColumnType::MYSQL_TYPE_TYPED_ARRAY)) => return Ok(tme.clone().into_owned()),
            _ => {}
        }
        meta_offset += meta.len();
    }
    if patches.is_empty() {
        return Ok(tme.clone().into_owned());
    }
    let mut buf = Vec::new();
    tme.serialize(&mut buf);
    // table id (6), flags (2), then database and table names, each a
    // length byte, the name and a NUL.
    let mut at = 8;
    for _ in 0..2 {
        at += 1 + usize::from(*buf.get(at).unwrap_or(&0)) + 1;
    }
    at += lenenc_len(buf.get(at..).unwrap_or_default());
    let types_at = at;
    let meta_at = types_at + n + lenenc_len(buf.get(types_at + n..).unwrap_or_default());
    for (i, offset) in patches {
        if let (Some(t), Some(m)) = (buf.get(types_at + i), buf.get(meta_at + offset)) {
            debug_assert_eq!(*t, ColumnType::MYSQL_TYPE_TIME2 as u8);
            debug_assert!(matches!(m, 1 | 2));
        }
        if meta_at + offset >= buf.len() {
            return Err(std::io::Error::other("table map shorter than its metadata"));
        }
        buf[types_at + i] = ColumnType::MYSQL_TYPE_TIMESTAMP2 as u8;
        buf[meta_at + offset] = 0;
    }
    let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
    let ctx = BinlogCtx::new(buf.len(), &fde, EventType::TABLE_MAP_EVENT as u8);
    let patched = TableMapEvent::deserialize(ctx, &mut ParseBuf(&buf))?;
    Ok(patched.into_owned())
}

/// The length of the length-encoded integer at the start of `b`.
fn lenenc_len(b: &[u8]) -> usize {
    match b.first() {
        Some(0xfc) => 3,
        Some(0xfd) => 4,
        Some(0xfe) => 9,
        _ => 1,
    }
}

/// A MySQL server UUID in its usual text form.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The file a rotate event names. The fake rotate a server sends first
/// (`log_pos` 0) comes before the format description that announces
/// checksums, so its name can end in the 4 checksum bytes: the name is then
/// the requested file (which it repeats) or, failing that, the name without
/// those bytes.
pub fn rotate_name(raw: &[u8], fake: bool, requested: &str) -> String {
    // `base.000042`: a dot and (usually six) digits end every binlog name.
    let digits = |b: &[u8]| b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let is_name = |b: &[u8]| {
        let n = digits(b);
        n >= 6 && b.len() > n && b[b.len() - n - 1] == b'.'
    };
    if fake && raw.len() > 4 {
        if !requested.is_empty()
            && raw.len() == requested.len() + 4
            && raw.starts_with(requested.as_bytes())
        {
            return requested.to_owned();
        }
        let head = &raw[..raw.len() - 4];
        let plain = is_name(raw) && digits(raw) == 6;
        if is_name(head) && !plain {
            return String::from_utf8_lossy(head).into_owned();
        }
    }
    String::from_utf8_lossy(raw).into_owned()
}

/// The statement's first keyword, upper-cased.
pub fn first_word(sql: &str) -> String {
    sql.trim_start()
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// True for the verbs that change a schema (and commit implicitly).
pub fn ddl_verb(verb: &str) -> bool {
    matches!(verb, "CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE")
}

/// For a DDL statement on a schema object, its database and table (empty
/// for database-level statements); `None` for anything else (user
/// management, FLUSH, ...).
pub fn ddl_target(sql: &str, default_db: &str) -> Option<(String, String)> {
    // Strip leading comments such as MySQL's `/* generated by server */`.
    let mut s = sql.trim_start();
    while let Some(rest) = s.strip_prefix("/*") {
        s = rest.split_once("*/").map_or("", |(_, r)| r).trim_start();
    }
    let words: Vec<&str> = s.split_whitespace().collect();
    let verb = words.first()?.to_ascii_uppercase();
    if !ddl_verb(&verb) {
        return None;
    }
    // Skip modifiers up to the object kind: CREATE OR REPLACE TEMPORARY TABLE IF NOT EXISTS x
    let mut i = 1;
    let mut kind = String::new();
    while i < words.len() {
        let w = words[i].to_ascii_uppercase();
        i += 1;
        match w.as_str() {
            "OR" | "REPLACE" | "TEMPORARY" | "ONLINE" | "IGNORE" | "UNIQUE" | "FULLTEXT"
            | "SPATIAL" | "DEFINER" => continue,
            _ if w.starts_with("DEFINER=")
                || w.starts_with("ALGORITHM=")
                || w.starts_with("SQL") =>
            {
                continue
            }
            _ => {
                kind = w;
                break;
            }
        }
    }
    let object_level = match kind.as_str() {
        "TABLE" | "TABLES" | "VIEW" | "INDEX" | "TRIGGER" => true,
        "DATABASE" | "SCHEMA" => false,
        _ => return None,
    };
    while i < words.len()
        && matches!(
            words[i].to_ascii_uppercase().as_str(),
            "IF" | "NOT" | "EXISTS"
        )
    {
        i += 1;
    }
    let mut name = words.get(i).copied().unwrap_or_default();
    if kind == "INDEX" {
        // CREATE INDEX idx ON db.t (...) / DROP INDEX idx ON t
        let on = words.iter().position(|w| w.eq_ignore_ascii_case("ON"))?;
        name = words.get(on + 1).copied().unwrap_or_default();
    }
    let name = name
        .split('(')
        .next()
        .unwrap_or_default()
        .trim_end_matches([';', ',']);
    let parts: Vec<String> = name
        .split('.')
        .map(|p| p.trim_matches('`').to_owned())
        .collect();
    if !object_level {
        return Some((parts.first().cloned().unwrap_or_default(), String::new()));
    }
    match parts.as_slice() {
        [db, table] => Some((db.clone(), table.clone())),
        [table] => Some((default_db.to_owned(), table.clone())),
        _ => None,
    }
}

/// One rows event's rows as change events, each with the first value that
/// could not be written (that value is null in the event).
pub fn rows_to_events(
    rows: &RowsEventData<'_>,
    mapped: &MappedTable,
    file: &str,
    log_pos: u64,
    timestamp: i64,
) -> std::io::Result<Vec<(ChangeEvent, Option<ValueError>)>> {
    let op = match rows {
        RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Op::Insert,
        RowsEventData::UpdateRowsEventV1(_)
        | RowsEventData::UpdateRowsEvent(_)
        | RowsEventData::PartialUpdateRowsEvent(_) => Op::Update,
        RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => Op::Delete,
    };
    let before_cols: Vec<usize> = rows
        .columns_before_image()
        .map(|b| b.iter_ones().collect())
        .unwrap_or_default();
    let after_cols: Vec<usize> = rows
        .columns_after_image()
        .map(|b| b.iter_ones().collect())
        .unwrap_or_default();
    let file: Arc<str> = Arc::from(file);
    let mut out = Vec::new();
    for (index, row) in rows.rows(&mapped.decoding).enumerate() {
        let (before, after) = row?;
        let mut error = None;
        let before = before.map(|r| to_row(&r, &before_cols, mapped, &mut error));
        let after = after.map(|r| to_row(&r, &after_cols, mapped, &mut error));
        let (data, old) = match op {
            Op::Insert => (after.unwrap_or_default(), None),
            Op::Delete => (before.unwrap_or_default(), None),
            _ => (after.unwrap_or_default(), before),
        };
        let pk = Row(mapped
            .schema
            .primary_key
            .iter()
            .filter_map(|&i| {
                let name = mapped.schema.columns.get(i)?.name.as_str();
                data.get(name).map(|v| (Box::from(name), v.to_owned()))
            })
            .collect());
        let event = ChangeEvent {
            database: mapped.schema.database.clone(),
            table: mapped.schema.table.clone(),
            op,
            pk,
            data,
            old,
            commit_time_ms: timestamp * 1000,
            commit_ts: Some(BinlogPosition::change_number(&file, log_pos, index)),
            sql: None,
            mysql_types: Some(mapped.mysql_types.clone()),
            large_message: None,
            reason: None,
            position: SourcePosition::Binlog {
                file: file.clone(),
                pos: log_pos,
            },
        };
        out.push((event, error));
    }
    Ok(out)
}

/// The columns of `r` present in the image (`cols`), as canal-json values;
/// a value that cannot be written is null, and `error` keeps the first.
pub fn to_row(
    r: &BinlogRow,
    cols: &[usize],
    mapped: &MappedTable,
    error: &mut Option<ValueError>,
) -> Row {
    let mut out = Vec::with_capacity(cols.len());
    for (k, &i) in cols.iter().enumerate() {
        let (t, digits) = mapped
            .types
            .get(i)
            .copied()
            .unwrap_or((ColumnType::MYSQL_TYPE_NULL, 0));
        let name = match mapped.schema.columns.get(i) {
            Some(c) => c.name.clone(),
            None => format!("col_{i}"),
        };
        let fallback;
        let col = match mapped.schema.columns.get(i) {
            Some(c) => c,
            None => {
                fallback = schema::ColumnInfo {
                    name: name.clone(),
                    mysql_type: String::new(),
                    unsigned: false,
                    charset: None,
                    pad_to: 0,
                    members: Vec::new(),
                };
                &fallback
            }
        };
        let value = convert::to_json(r.as_ref(k), t, digits, col).unwrap_or_else(|e| {
            error.get_or_insert_with(|| ValueError {
                database: mapped.schema.database.clone(),
                table: mapped.schema.table.clone(),
                column: name.clone(),
                error: e,
            });
            RawValue::from_string("null".to_owned()).expect("null is JSON")
        });
        out.push((Box::from(name), value));
    }
    Row(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_rotate_loses_its_trailing_checksum() {
        let mut raw = b"binlog.000001".to_vec();
        raw.extend_from_slice(&[0xa1, 0x00, 0x6e, 0x93]);
        assert_eq!(rotate_name(&raw, true, "binlog.000001"), "binlog.000001");
        assert_eq!(rotate_name(&raw, true, ""), "binlog.000001");
        assert_eq!(
            rotate_name(b"binlog.0000071234", true, "other.000001"),
            "binlog.000007"
        );
        assert_eq!(
            rotate_name(b"binlog.000007", true, "other.000001"),
            "binlog.000007"
        );
        assert_eq!(
            rotate_name(b"binlog.000002", false, "binlog.000001"),
            "binlog.000002"
        );
    }

    #[test]
    fn time_with_hundredths_is_relabelled_for_decoding_and_nothing_else_moves() {
        use ColumnType::*;
        // id 1, flags 0, `d`.`t`, 3 columns: TIME(1), TIME(3), INT.
        let mut raw = vec![1, 0, 0, 0, 0, 0, 0, 0, 1, b'd', 0, 1, b't', 0, 3];
        raw.extend([
            MYSQL_TYPE_TIME2 as u8,
            MYSQL_TYPE_TIME2 as u8,
            MYSQL_TYPE_LONG as u8,
        ]);
        raw.extend([2, 1, 3, 0b111]); // metadata (2 bytes), null bitmap
        let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
        let ctx = BinlogCtx::new(raw.len(), &fde, EventType::TABLE_MAP_EVENT as u8);
        let tme = TableMapEvent::deserialize(ctx, &mut ParseBuf(&raw)).unwrap();
        let d = decoding_table_map(&tme).unwrap();
        assert_eq!(d.get_column_type(0).unwrap(), Some(MYSQL_TYPE_TIMESTAMP2));
        assert_eq!(d.get_column_metadata(0), Some(&[0u8][..]));
        assert_eq!(d.get_column_type(1).unwrap(), Some(MYSQL_TYPE_TIME2));
        assert_eq!(d.get_column_metadata(1), Some(&[3u8][..]));
        assert_eq!(d.get_column_type(2).unwrap(), Some(MYSQL_TYPE_LONG));
        assert_eq!((d.table_id(), d.table_name()), (1, "t".into()));
    }

    #[test]
    fn ddl_statements_name_their_table() {
        let t = |s: &str| ddl_target(s, "appdb");
        assert_eq!(
            t("ALTER TABLE users ADD COLUMN age INT"),
            Some(("appdb".into(), "users".into()))
        );
        assert_eq!(
            t("alter table `shop`.`orders` add x int"),
            Some(("shop".into(), "orders".into()))
        );
        assert_eq!(
            t("CREATE TABLE IF NOT EXISTS t2(id INT PRIMARY KEY)"),
            Some(("appdb".into(), "t2".into()))
        );
        assert_eq!(
            t("/* generated */ DROP TABLE `t3` /* generated by server */"),
            Some(("appdb".into(), "t3".into()))
        );
        assert_eq!(
            t("CREATE DATABASE shop"),
            Some(("shop".into(), String::new()))
        );
        assert_eq!(
            t("CREATE INDEX i ON users (name)"),
            Some(("appdb".into(), "users".into()))
        );
        assert_eq!(t("CREATE USER 'x'@'%'"), None);
        assert_eq!(t("GRANT SELECT ON *.* TO x"), None);
        assert_eq!(t("FLUSH PRIVILEGES"), None);
    }
}
