//! Current state: the latest version of each captured row, kept beside the
//! event log by the embedded store (table `state`) and by Elasticsearch
//! (`CDC_ES_STATE_INDEX`), and read back by `/api/rows`.
//!
//! Rules both sinks follow:
//! - A row is identified by (database, table, key), the key being the
//!   primary-key values in key order (`pkNames`), or the whole row when the
//!   table has no key (identical rows of a keyless table are one state entry).
//! - Every change carries a version (`ChangeEvent::version`): a replayed or
//!   late change with a lower version than the stored one never changes the
//!   state; an equal version is the same change again and writes the same.
//! - An insert, update or snapshot row sets the state; a delete leaves a
//!   tombstone (the embedded store keeps it for
//!   `CDC_STATE_TOMBSTONE_RETENTION`; Elasticsearch deletes the document and
//!   keeps its version for `index.gc_deletes`). An update that changes the
//!   key deletes the old key and sets the new one.
//! - A `TRUNCATE`, `DROP TABLE` or `DROP DATABASE` statement turns every row
//!   of the tables it empties or removes into a tombstone at the
//!   statement's version (rows of a higher version, changed after it, stay):
//!   `cleared`. Other DDL and reduced messages (TiCDC large-message handling:
//!   the row is not all there) leave the state as it is.

use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use crate::event::{ChangeEvent, DocumentId, LargeMessage, Op, Row};

/// One row's identity: its database, table and key values (JSON text of
/// each value, in key order: `"42"`, or `null`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub database: String,
    pub table: String,
    /// The key as a JSON array of the values' raw JSON, in key order.
    pub values: String,
}

impl RowKey {
    /// The key of `row` in `database.table`, by its key columns (`pk`), or
    /// by every column when `pk` is empty.
    pub fn of(database: &str, table: &str, pk: &Row, data: &Row) -> RowKey {
        let row = if pk.is_empty() { data } else { pk };
        let mut values = String::with_capacity(row.json_len() + 2);
        values.push('[');
        for (i, (_, v)) in row.0.iter().enumerate() {
            if i > 0 {
                values.push(',');
            }
            values.push_str(v.get());
        }
        values.push(']');
        RowKey {
            database: database.to_owned(),
            table: table.to_owned(),
            values,
        }
    }

    /// The deterministic id of the row's state (the Elasticsearch state
    /// document's `_id`, the store's `row_key`).
    pub fn id(&self) -> DocumentId {
        let mut h = Xxh3::new();
        for part in [&self.database, &self.table, &self.values] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        DocumentId(h.digest128())
    }
}

/// What one event does to the state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange<'a> {
    /// The row now holds `data`.
    Set {
        key: RowKey,
        pk: &'a Row,
        data: &'a Row,
    },
    /// The row is gone.
    Delete { key: RowKey, pk: &'a Row },
}

impl StateChange<'_> {
    pub fn key(&self) -> &RowKey {
        match self {
            StateChange::Set { key, .. } | StateChange::Delete { key, .. } => key,
        }
    }
}

/// The state changes of `event`, in order (a key-changing update deletes
/// the old key first); empty for DDL and reduced messages.
pub fn changes(event: &ChangeEvent) -> Vec<StateChange<'_>> {
    if event.op == Op::Ddl
        || matches!(
            event.large_message,
            Some(LargeMessage::HandleKeyOnly | LargeMessage::ClaimCheck { .. })
        )
    {
        return Vec::new();
    }
    let key = RowKey::of(&event.database, &event.table, &event.pk, &event.data);
    match event.op {
        Op::Delete => vec![StateChange::Delete { key, pk: &event.pk }],
        Op::Update => {
            let mut out = Vec::with_capacity(2);
            if let Some(old) = &event.old {
                let before = if event.pk.is_empty() {
                    // Keyless: the old image is the old identity (canal-json
                    // `old` carries only changed columns, so complete it).
                    let full = Row(event
                        .data
                        .0
                        .iter()
                        .map(|(k, v)| {
                            let was = old.get(k).map_or_else(|| v.clone(), |o| o.to_owned());
                            (k.clone(), was)
                        })
                        .collect());
                    Some(RowKey::of(&event.database, &event.table, &full, &full))
                } else {
                    let old_pk = Row(event
                        .pk
                        .0
                        .iter()
                        .map(|(k, v)| {
                            let was = old.get(k).map_or_else(|| v.clone(), |o| o.to_owned());
                            (k.clone(), was)
                        })
                        .collect());
                    (old_pk != event.pk)
                        .then(|| RowKey::of(&event.database, &event.table, &old_pk, &old_pk))
                };
                if let Some(before) = before.filter(|b| *b != key) {
                    out.push(StateChange::Delete {
                        key: before,
                        pk: &event.pk,
                    });
                }
            }
            out.push(StateChange::Set {
                key,
                pk: &event.pk,
                data: &event.data,
            });
            out
        }
        _ => vec![StateChange::Set {
            key,
            pk: &event.pk,
            data: &event.data,
        }],
    }
}

/// A table whose rows a statement removed, or with `table` `None` every
/// table of `database` (`DROP DATABASE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    pub database: String,
    pub table: Option<String>,
}

/// What `event`, when it is a `TRUNCATE [TABLE] t`, `DROP TABLE [IF EXISTS]
/// t [, t …]` or `DROP {DATABASE | SCHEMA} [IF EXISTS] d` statement, clears
/// from the state; nothing for any other event. `DROP TEMPORARY TABLE`
/// clears nothing (a temporary table's rows are never captured).
pub fn cleared(event: &ChangeEvent) -> Vec<Cleared> {
    let Some(sql) = event.sql.as_deref().filter(|_| event.op == Op::Ddl) else {
        return Vec::new();
    };
    let words = sql_words(sql);
    let word = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    let mut i = match (word(0).as_deref(), word(1).as_deref()) {
        (Some("TRUNCATE"), Some("TABLE")) => 2,
        (Some("TRUNCATE"), _) => 1,
        (Some("DROP"), Some("DATABASE" | "SCHEMA")) => {
            let at = if word(2).as_deref() == Some("IF") {
                4
            } else {
                2
            };
            return words
                .get(at)
                .map(|d| Cleared {
                    database: d.clone(),
                    table: None,
                })
                .into_iter()
                .collect();
        }
        (Some("DROP"), Some("TABLE")) => 2,
        _ => return Vec::new(),
    };
    if word(i).as_deref() == Some("IF") {
        i += 2;
    }
    let truncate = word(0).as_deref() == Some("TRUNCATE");
    let mut out = Vec::new();
    while let Some(name) = words.get(i) {
        let qualified = words.get(i + 1).is_some_and(|w| w == ".");
        let (database, table) = match (qualified, words.get(i + 2)) {
            (true, Some(t)) => {
                i += 3;
                (name.clone(), t.clone())
            }
            _ => {
                i += 1;
                (event.database.clone(), name.clone())
            }
        };
        out.push(Cleared {
            database,
            table: Some(table),
        });
        // TRUNCATE names one table; DROP TABLE a list.
        if truncate || words.get(i).is_none_or(|w| w != ",") {
            break;
        }
        i += 1;
    }
    out
}

/// A statement's words: names unquoted (backticks), `.` and `,` words of
/// their own, comments left out.
fn sql_words(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                let mut name = String::new();
                while let Some(c) = chars.next() {
                    if c == '`' {
                        // A doubled backtick is one inside the name.
                        if chars.peek() == Some(&'`') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    name.push(c);
                }
                out.push(name);
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '.' | ',' | ';' => out.push(c.to_string()),
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '$' {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(word);
            }
            _ => {}
        }
    }
    out
}

/// One row's current state as `/api/rows` returns it (and as the
/// Elasticsearch state index stores it, minus `deleted`, which it never holds).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RowState {
    pub database: String,
    pub table: String,
    /// Key columns and values (empty for a keyless table).
    pub pk: serde_json::Value,
    /// The row's values; null once deleted.
    pub data: serde_json::Value,
    /// True for a tombstone (the row was deleted at `version`).
    pub deleted: bool,
    /// The op of the change that set this state.
    pub op: String,
    /// The version of that change (see `ChangeEvent::version`).
    pub version: u64,
    /// Commit time of that change, RFC 3339.
    #[serde(rename = "@timestamp")]
    pub changed_at: String,
    /// The id of that change's event document.
    pub event_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourcePosition;
    use serde_json::json;

    fn event(op: Op, pk: Row, data: Row, old: Option<Row>) -> ChangeEvent {
        ChangeEvent {
            commit_ts: Some(7),
            ..ChangeEvent::row("appdb", "users", op, pk, data, old, 1_700_000_000_000)
        }
    }

    #[test]
    fn truncate_and_drop_clear_their_tables_and_other_statements_nothing() {
        let cleared_by = |sql: &str| {
            let e = ChangeEvent::ddl(
                "appdb".into(),
                "users".into(),
                sql.into(),
                0,
                None,
                SourcePosition::None,
            );
            cleared(&e)
        };
        let table = |d: &str, t: &str| Cleared {
            database: d.into(),
            table: Some(t.into()),
        };
        assert_eq!(cleared_by("TRUNCATE users"), [table("appdb", "users")]);
        assert_eq!(
            cleared_by("truncate table `shop`.`order``s`"),
            [table("shop", "order`s")]
        );
        assert_eq!(
            cleared_by("DROP TABLE IF EXISTS `a`, shop.b /* generated by server */"),
            [table("appdb", "a"), table("shop", "b")]
        );
        assert_eq!(
            cleared_by("/* x */ DROP SCHEMA IF EXISTS shop"),
            [Cleared {
                database: "shop".into(),
                table: None
            }]
        );
        for other in [
            "DROP TEMPORARY TABLE users",
            "DROP VIEW v",
            "ALTER TABLE users ADD c INT",
            "CREATE TABLE t (id INT)",
            "RENAME TABLE a TO b",
        ] {
            assert_eq!(cleared_by(other), [], "{other}");
        }
        let row = event(Op::Delete, Row::default(), Row::default(), None);
        assert_eq!(cleared(&row), []);
    }

    #[test]
    fn a_key_is_the_key_values_or_the_whole_row() {
        let pk = Row::from_values([("id", json!("42"))]);
        let data = Row::from_values([("id", json!("42")), ("n", json!(null))]);
        assert_eq!(RowKey::of("d", "t", &pk, &data).values, r#"["42"]"#);
        assert_eq!(
            RowKey::of("d", "t", &Row::default(), &data).values,
            r#"["42",null]"#
        );
        // Same parts in other places give other ids.
        let a = RowKey::of("d", "t", &pk, &data).id();
        assert_ne!(a, RowKey::of("dt", "", &pk, &data).id());
        assert_eq!(a, RowKey::of("d", "t", &pk, &Row::default()).id());
    }

    #[test]
    fn a_key_changing_update_deletes_the_old_key_first() {
        let e = event(
            Op::Update,
            Row::from_values([("id", json!("2"))]),
            Row::from_values([("id", json!("2")), ("n", json!("a"))]),
            Some(Row::from_values([("id", json!("1"))])),
        );
        let c = changes(&e);
        assert_eq!(c.len(), 2);
        assert!(matches!(&c[0], StateChange::Delete { key, .. } if key.values == r#"["1"]"#));
        assert!(matches!(&c[1], StateChange::Set { key, .. } if key.values == r#"["2"]"#));
        // An update that keeps the key only sets.
        let e = event(
            Op::Update,
            Row::from_values([("id", json!("2"))]),
            Row::from_values([("id", json!("2")), ("n", json!("b"))]),
            Some(Row::from_values([("n", json!("a"))])),
        );
        assert_eq!(changes(&e).len(), 1);
    }

    #[test]
    fn a_keyless_update_moves_the_whole_row_identity() {
        let e = event(
            Op::Update,
            Row::default(),
            Row::from_values([("a", json!("1")), ("b", json!("new"))]),
            Some(Row::from_values([("b", json!("old"))])),
        );
        let c = changes(&e);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].key().values, r#"["1","old"]"#);
        assert_eq!(c[1].key().values, r#"["1","new"]"#);
    }

    #[test]
    fn ddl_and_reduced_messages_leave_the_state() {
        let mut e = event(
            Op::Insert,
            Row::from_values([("id", json!("1"))]),
            Row::from_values([("id", json!("1"))]),
            None,
        );
        e.large_message = Some(LargeMessage::HandleKeyOnly);
        assert!(changes(&e).is_empty());
        let ddl = ChangeEvent::ddl(
            "d".into(),
            "t".into(),
            "ALTER TABLE t ADD c INT".into(),
            0,
            None,
            SourcePosition::None,
        );
        assert!(changes(&ddl).is_empty());
    }
}
