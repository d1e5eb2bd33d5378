//! The current-state index (`CDC_ES_STATE_INDEX`): one document per row,
//! written beside the events in the same bulk request.
//!
//! Each state action carries the change's version with `version_type=
//! external_gte`, so Elasticsearch itself keeps the newest: an older change
//! (a replay, a retried item overtaken by a later one) gets 409 and counts
//! as done, and an equal version (the same change again) writes the same
//! document. A delete deletes, and Elasticsearch keeps the deleted
//! document's version for `index.gc_deletes` (set to
//! `CDC_STATE_TOMBSTONE_RETENTION` by the template), so a late older change
//! cannot bring the row back within that window.
//! <https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-index_.html#index-versioning>

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339_millis;
use crate::event::{ChangeEvent, Row};
use crate::sink::elasticsearch::client::{composable_template, flattened};
use crate::sink::state::{changes, RowState, StateChange};

#[derive(Serialize)]
enum Action<'a> {
    #[serde(rename = "index")]
    Index(Meta<'a>),
    #[serde(rename = "delete")]
    Delete(Meta<'a>),
}

#[derive(Serialize)]
struct Meta<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: String,
    version: u64,
    version_type: &'static str,
}

/// A row's state document: `RowState` without `deleted` (a deleted row has
/// no document).
#[derive(Serialize)]
struct StateDoc<'a> {
    database: &'a str,
    table: &'a str,
    /// The row's key values in key order (`RowKey::values`): what
    /// `reconcile` pairs rows by, whatever order `_source` comes back in.
    key: &'a str,
    pk: &'a Row,
    data: &'a Row,
    op: &'static str,
    version: u64,
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    event_id: &'a str,
}

/// Appends `event`'s state actions for `index`; returns how many.
pub fn encode(buf: &mut Vec<u8>, index: &str, event: &ChangeEvent) -> usize {
    let version = event.version();
    let changes = changes(event);
    // Once per event, not per state action; hex digits and the timestamp are ASCII.
    let event_hex = event.document_id().hex();
    let event_id = std::str::from_utf8(&event_hex).unwrap_or_default();
    let timestamp = rfc3339_millis(event.commit_time_ms);
    for change in &changes {
        let meta = Meta {
            index,
            id: change.key().id().to_string(),
            version,
            version_type: "external_gte",
        };
        // Serialising these borrowed structs into a Vec cannot fail: every key is a string.
        match change {
            StateChange::Set { key, pk, data } => {
                serde_json::to_writer(&mut *buf, &Action::Index(meta)).expect("action serialises");
                buf.push(b'\n');
                let doc = StateDoc {
                    database: &event.database,
                    table: &event.table,
                    key: &key.values,
                    pk,
                    data,
                    op: event.op.as_str(),
                    version,
                    timestamp: &timestamp,
                    event_id,
                };
                serde_json::to_writer(&mut *buf, &doc).expect("document serialises");
            }
            StateChange::Delete { .. } => {
                // A delete has no document line.
                serde_json::to_writer(&mut *buf, &Action::Delete(meta)).expect("action serialises");
            }
        }
        buf.push(b'\n');
    }
    changes.len()
}

/// A state document as `GET _doc` returns its `_source`.
#[derive(Deserialize)]
struct StoredDoc {
    #[serde(default)]
    key: String,
    database: String,
    table: String,
    #[serde(default)]
    pk: serde_json::Value,
    #[serde(default)]
    data: serde_json::Value,
    op: String,
    version: u64,
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(default)]
    event_id: String,
}

/// The row state held by a stored state document's `_source`.
pub fn row_state(source: &serde_json::Value) -> Result<RowState, serde_json::Error> {
    keyed_row_state(source).map(|(_, state)| state)
}

/// The row's key values (`RowKey::values`) and state of a stored state document.
pub fn keyed_row_state(
    source: &serde_json::Value,
) -> Result<(String, RowState), serde_json::Error> {
    let d = StoredDoc::deserialize(source)?;
    Ok((
        d.key,
        RowState {
            database: d.database,
            table: d.table,
            pk: d.pk,
            data: d.data,
            deleted: false,
            op: d.op,
            version: d.version,
            changed_at: d.timestamp,
            event_id: d.event_id,
        },
    ))
}

/// The state index's template: its mapping, and `index.gc_deletes` of the
/// tombstone retention, so a deleted row's version outlives late replays.
pub fn template(index: &str, tombstone_retention: Duration) -> serde_json::Value {
    let flattened = flattened();
    composable_template(
        vec![index.to_owned()],
        200,
        serde_json::json!({
            "refresh_interval": "1s",
            "gc_deletes": format!("{}s", tombstone_retention.as_secs())
        }),
        serde_json::json!({
            "database": {"type": "keyword"},
            "table": {"type": "keyword"},
            "op": {"type": "keyword"},
            "pk": flattened,
            "data": flattened,
            // Versions are at most i64::MAX (`ChangeEvent::version`).
            "version": {"type": "long"},
            "@timestamp": {"type": "date"},
            "event_id": {"type": "keyword"}
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;
    use crate::sink::state::RowKey;
    use serde_json::{json, Value};

    fn event(op: Op, pk: Row, data: Row, old: Option<Row>) -> ChangeEvent {
        ChangeEvent {
            commit_ts: Some(445_318_436_578_918_401),
            ..ChangeEvent::row("appdb", "users", op, pk, data, old, 1_700_000_000_000)
        }
    }

    fn lines(buf: &[u8]) -> Vec<Value> {
        std::str::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_key_changing_update_deletes_the_old_row_then_indexes_the_new_with_its_version() {
        let e = event(
            Op::Update,
            Row::from_values([("id", json!("2"))]),
            Row::from_values([("id", json!("2")), ("n", json!("a"))]),
            Some(Row::from_values([("id", json!("1"))])),
        );
        let mut buf = Vec::new();
        assert_eq!(encode(&mut buf, "cdc-state", &e), 2);
        let l = lines(&buf);
        assert_eq!(l.len(), 3, "a delete has no document line");
        let old_key = RowKey::of(
            "appdb",
            "users",
            &Row::from_values([("id", json!("1"))]),
            &Row::default(),
        );
        assert_eq!(
            l[0],
            json!({"delete": {"_index": "cdc-state", "_id": old_key.id().to_string(), "version": 445_318_436_578_918_401u64, "version_type": "external_gte"}})
        );
        assert_eq!(l[1]["index"]["version_type"], "external_gte");
        assert_eq!(l[1]["index"]["version"], 445_318_436_578_918_401u64);
        assert_eq!(
            l[2],
            json!({"database": "appdb", "table": "users", "key": "[\"2\"]", "pk": {"id": "2"}, "data": {"id": "2", "n": "a"},
                   "op": "update", "version": 445_318_436_578_918_401u64, "@timestamp": "2023-11-14T22:13:20.000Z",
                   "event_id": e.document_id().to_string()})
        );
        // What `row` reads back is the same row.
        let state = row_state(&l[2]).unwrap();
        assert!(!state.deleted);
        assert_eq!(state.data, json!({"id": "2", "n": "a"}));
        assert_eq!(state.changed_at, "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn the_template_keeps_tombstones_for_the_retention() {
        let t = template("cdc-state", Duration::from_secs(7 * 86_400));
        assert_eq!(t["index_patterns"], json!(["cdc-state"]));
        assert_eq!(t["template"]["settings"]["index"]["gc_deletes"], "604800s");
        let props = &t["template"]["mappings"]["properties"];
        assert_eq!(props["pk"]["type"], "flattened");
        assert_eq!(props["version"]["type"], "long");
    }
}
