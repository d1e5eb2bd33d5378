//! Normalised events to canal-json, in the shape TiCDC writes: one row per
//! message, every value a string or null, `sqlType` and `mysqlType` maps,
//! and an extension object carrying the source position (`_binlog` for
//! changes captured from a binlog, `_tidb` when a TiDB commit ts is known).

use serde::Serialize;

use crate::event::{ChangeEvent, Op, Row, SourcePosition};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    id: u64,
    database: &'a str,
    table: &'a str,
    pk_names: Option<Vec<&'a str>>,
    is_ddl: bool,
    #[serde(rename = "type")]
    kind: &'a str,
    es: i64,
    ts: i64,
    sql: &'a str,
    sql_type: Option<SqlTypes<'a>>,
    mysql_type: Option<&'a Row>,
    data: Option<[&'a Row; 1]>,
    old: Option<[&'a Row; 1]>,
    #[serde(rename = "_tidb", skip_serializing_if = "Option::is_none")]
    tidb: Option<Tidb>,
    #[serde(rename = "_binlog", skip_serializing_if = "Option::is_none")]
    binlog: Option<Binlog<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tidb {
    commit_ts: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Binlog<'a> {
    file: &'a str,
    pos: u64,
    commit_ts: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    snapshot: bool,
}

/// `sqlType`: the JDBC type code of each column, derived from its MySQL type.
struct SqlTypes<'a>(&'a Row);

impl Serialize for SqlTypes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, _) in &self.0 .0 {
            let mysql = self.0.text(name).unwrap_or_default();
            map.serialize_entry(name.as_ref(), &jdbc_type(&mysql))?;
        }
        map.end()
    }
}

/// The JDBC type code Canal and TiCDC write for a MySQL column type.
pub fn jdbc_type(mysql_type: &str) -> i32 {
    let base = mysql_type.split(['(', ' ']).next().unwrap_or_default();
    match base {
        "bit" => -7,
        "tinyint" => -6,
        "smallint" => 5,
        "mediumint" | "int" | "integer" => 4,
        "bigint" => -5,
        "float" => 7,
        "double" | "real" => 8,
        "decimal" | "numeric" => 3,
        "char" => 1,
        "varchar" | "json" | "year" => 12,
        "tinytext" | "text" | "mediumtext" | "longtext" => 2005,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => 2004,
        "date" => 91,
        "time" => 92,
        "datetime" | "timestamp" => 93,
        "enum" => 4,
        "set" => -7,
        _ => 12,
    }
}

/// The canal `type` of a DDL statement, from its first keyword.
fn ddl_type(sql: &str) -> &'static str {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "CREATE" => "CREATE",
        "ALTER" => "ALTER",
        "DROP" => "ERASE",
        "TRUNCATE" => "TRUNCATE",
        "RENAME" => "RENAME",
        _ => "QUERY",
    }
}

/// Appends the canal-json message for `event`, built at `now_ms`.
pub fn encode(buf: &mut Vec<u8>, event: &ChangeEvent, now_ms: i64) {
    let kind = match event.op {
        Op::Insert => "INSERT",
        Op::Update => "UPDATE",
        Op::Delete => "DELETE",
        // Canal-json has no snapshot type: Canal and TiCDC send existing
        // rows as inserts; `_binlog.snapshot` tells them apart.
        Op::Snapshot => "INSERT",
        Op::Ddl => ddl_type(event.sql.as_deref().unwrap_or_default()),
    };
    let is_ddl = event.op == Op::Ddl;
    let binlog = match (&event.position, event.commit_ts) {
        (SourcePosition::Binlog { file, pos }, Some(commit_ts)) => Some(Binlog {
            file,
            pos: *pos,
            commit_ts,
            snapshot: event.op == Op::Snapshot,
        }),
        _ => None,
    };
    let msg = Message {
        id: 0,
        database: &event.database,
        table: &event.table,
        pk_names: (!is_ddl).then(|| event.pk.0.iter().map(|(k, _)| k.as_ref()).collect()),
        is_ddl,
        kind,
        es: event.commit_time_ms,
        ts: now_ms,
        sql: event.sql.as_deref().unwrap_or_default(),
        sql_type: event
            .mysql_types
            .as_deref()
            .filter(|_| !is_ddl)
            .map(SqlTypes),
        mysql_type: event.mysql_types.as_deref().filter(|_| !is_ddl),
        data: (!is_ddl).then_some([&event.data]),
        old: event.old.as_ref().map(|o| [o]),
        tidb: match (&binlog, event.commit_ts) {
            (None, Some(commit_ts)) => Some(Tidb { commit_ts }),
            _ => None,
        },
        binlog,
    };
    // Serialising borrowed rows and strings into a Vec cannot fail.
    serde_json::to_writer(buf, &msg).expect("canal message serialises");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::canal::{decode, Decoded};

    fn event(op: Op) -> ChangeEvent {
        ChangeEvent {
            database: "appdb".into(),
            table: "users".into(),
            op,
            pk: Row::from_values([("id", json!("7"))]),
            data: Row::from_values([
                ("id", json!("7")),
                ("name", json!("zoë")),
                ("note", json!(null)),
            ]),
            old: (op == Op::Update).then(|| {
                Row::from_values([
                    ("id", json!("7")),
                    ("name", json!("z")),
                    ("note", json!(null)),
                ])
            }),
            commit_time_ms: 1_764_000_000_000,
            commit_ts: Some((3 << 32) | 1234),
            sql: None,
            mysql_types: Some(Arc::new(Row::from_values([
                ("id", json!("int unsigned")),
                ("name", json!("varchar")),
                ("note", json!("text")),
            ]))),
            large_message: None,
            reason: None,
            position: SourcePosition::Binlog {
                file: Arc::from("binlog.000003"),
                pos: 1234,
            },
        }
    }

    #[test]
    fn encoded_changes_decode_to_the_same_event_and_document_id() {
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Snapshot] {
            let e = event(op);
            let mut buf = Vec::new();
            encode(&mut buf, &e, 1_764_000_000_100);
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(v["pkNames"], json!(["id"]));
            assert_eq!(v["sqlType"]["id"], json!(4));
            assert_eq!(v["_binlog"]["commitTs"], json!((3u64 << 32) | 1234));
            assert!(v.get("_tidb").is_none());
            if op == Op::Snapshot {
                assert_eq!(
                    (&v["type"], &v["_binlog"]["snapshot"]),
                    (&json!("INSERT"), &json!(true))
                );
            }
            let Decoded::Events(back) = decode(&buf, &e.position).unwrap() else {
                panic!("expected events");
            };
            assert_eq!(back.len(), 1);
            let b = &back[0];
            assert_eq!(
                (b.op, b.commit_time_ms, b.commit_ts),
                (op, e.commit_time_ms, e.commit_ts)
            );
            assert_eq!((&b.pk, &b.data, &b.old), (&e.pk, &e.data, &e.old));
            assert_eq!(b.document_id(), e.document_id());
        }
    }

    #[test]
    fn ddl_is_one_message_with_the_statement() {
        let mut e = event(Op::Ddl);
        e.pk = Row::default();
        e.data = Row::default();
        e.sql = Some("ALTER TABLE users ADD COLUMN age INT".into());
        let mut buf = Vec::new();
        encode(&mut buf, &e, 0);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            (v["isDdl"].clone(), v["type"].clone()),
            (json!(true), json!("ALTER"))
        );
        let Decoded::Events(back) = decode(&buf, &e.position).unwrap() else {
            panic!("expected events");
        };
        assert_eq!(back[0].sql, e.sql);
        assert_eq!(back[0].document_id(), e.document_id());
    }
}
