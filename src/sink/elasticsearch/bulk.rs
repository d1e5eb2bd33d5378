//! NDJSON bulk bodies: one `create` action and one document per event.
//!
//! `create` rather than `index`: the `_id` is deterministic, so a replayed
//! change meets its earlier copy and gets 409, which counts as stored. The
//! document itself is `sink::document`, the shape the embedded store keeps too.

use crate::event::ChangeEvent;
use crate::sink::document::{push_json_str, write_document};

/// Appends the action line and the document line for `event`.
pub fn encode(buf: &mut Vec<u8>, index: &str, event: &ChangeEvent, ingested_at: &str) {
    buf.extend_from_slice(b"{\"create\":{\"_index\":");
    push_json_str(buf, index);
    buf.extend_from_slice(b",\"_id\":\"");
    buf.extend_from_slice(&event.document_id().hex());
    buf.extend_from_slice(b"\"}}\n");
    write_document(buf, event, ingested_at);
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canal::{decode, Decoded};
    use crate::event::SourcePosition;
    use crate::sink::document::document;
    use std::sync::Arc;

    /// Messages beyond the fixtures that stress the byte-exact rendering:
    /// whitespace between tokens, escapes in names and values, numbers,
    /// nested values, a statement with a newline.
    const EXTRA_MESSAGES: &[&str] = &[
        "{ \"database\" : \"app\\\"db\" , \"table\":\"t\\u00e9\\/x\", \"pkNames\" : [ \"id\" ],\n \"isDdl\":false, \"type\":\"INSERT\", \"es\":1700000000123,\n \"data\":[ { \"id\" : \"1\" , \"na\\u006de\":\"a\\/b\\u00e9\\n\\\"q\\\"\", \"n\": 12.50 , \"obj\":{ \"k\" : [1, 2] }, \"nul\" : null } ] }",
        r#"{"database":"a","table":"t","pkNames":["k1","k2"],"isDdl":false,"type":"DELETE","es":1,"ts":2,"data":[{"k1":"x","k2":"y","v":"é€😀"}],"_tidb":{"commitTs":18446744073709551615}}"#,
        r#"{"database":"a","table":"","isDdl":true,"type":"CREATE","es":1700000000000,"sql":"CREATE DATABASE a\n  -- \"quoted\"\t\u0001"}"#,
        r#"{"database":"a","table":"t","isDdl":false,"type":"INSERT","es":-5,"data":[{"id":"1"}]}"#,
        r#"{"database":"a","table":"t","isDdl":false,"type":"INSERT","es":253402300800000,"data":[{}]}"#,
        r#"{"database":"a","table":"t","pkNames":["id"],"isDdl":false,"type":"INSERT","es":7,"data":[{"id":"9"}],"_binlog":{"file":"mysql-bin.000003","pos":4711,"commitTs":123456789,"snapshot":true}}"#,
        r#"{"database":"a","table":"t","pkNames":["id"],"isDdl":false,"type":"UPDATE","es":7,"data":[{"id":"9","v":"2"}],"old":[{"v":"1"}],"_binlog":{"file":"mysql-bin.000003","pos":4712,"commitTs":123456790}}"#,
    ];

    /// Every fixture's and extra message's bulk lines (events, then the
    /// state index's actions), as Kafka, binlog and position-less events and
    /// once more with a repair reason.
    fn golden_body() -> Vec<u8> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/canal");
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let mut messages: Vec<Vec<u8>> = names.iter().map(|p| std::fs::read(p).unwrap()).collect();
        messages.extend(EXTRA_MESSAGES.iter().map(|m| m.as_bytes().to_vec()));
        let mut body = Vec::new();
        for (i, payload) in messages.iter().enumerate() {
            let positions = [
                SourcePosition::Kafka {
                    topic: Arc::from("tidb-cdc"),
                    partition: 2,
                    offset: i as i64,
                },
                SourcePosition::Binlog {
                    file: Arc::from("mysql-bin.000001"),
                    pos: 4 + i as u64,
                },
                SourcePosition::None,
            ];
            for pos in &positions {
                let Ok(Decoded::Events(events)) = decode(payload, pos) else {
                    continue;
                };
                for mut e in events {
                    let mut doc = Vec::new();
                    write_document(&mut doc, &e, "2024-01-01T00:00:00.000Z");
                    let serialised =
                        serde_json::to_vec(&document(&e, "2024-01-01T00:00:00.000Z")).unwrap();
                    assert_eq!(doc, serialised, "write_document and document disagree");
                    encode(&mut body, "cdc-events", &e, "2024-01-01T00:00:00.000Z");
                    super::super::state_index::encode(&mut body, "cdc-state", &e);
                    e.reason = Some("repair \"x\"".into());
                    encode(&mut body, "cdc-{table}", &e, "2024-01-01T00:00:00.000Z");
                }
            }
        }
        body
    }

    #[test]
    fn bulk_bodies_match_the_golden_file_byte_for_byte() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bulk/golden.ndjson"
        );
        let body = golden_body();
        if std::env::var_os("CDC_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &body).unwrap();
        }
        let golden = std::fs::read(path).unwrap();
        if body != golden {
            let at = body
                .iter()
                .zip(&golden)
                .position(|(a, b)| a != b)
                .unwrap_or(body.len().min(golden.len()));
            let from = at.saturating_sub(200);
            panic!(
                "bulk body differs from the golden file at byte {at}:\n got: {}\nwant: {}",
                String::from_utf8_lossy(&body[from..(at + 200).min(body.len())]),
                String::from_utf8_lossy(&golden[from..(at + 200).min(golden.len())])
            );
        }
    }

    #[test]
    fn bulk_lines_carry_the_documented_fields() {
        let payload = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/canal/update.json"
        ))
        .unwrap();
        let pos = SourcePosition::Kafka {
            topic: Arc::from("tidb-cdc"),
            partition: 2,
            offset: 41,
        };
        let Decoded::Events(events) = decode(&payload, &pos).unwrap() else {
            panic!()
        };
        let mut buf = Vec::new();
        encode(
            &mut buf,
            "cdc-events",
            &events[0],
            "2024-01-01T00:00:00.000Z",
        );
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let action: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(action["create"]["_index"], "cdc-events");
        assert_eq!(
            action["create"]["_id"].as_str().unwrap(),
            events[0].document_id().to_string()
        );
        // commit_ts must appear as the exact integer literal, not a float.
        assert!(
            lines[1].contains("\"commit_ts\":445318436578918401"),
            "{}",
            lines[1]
        );
        let doc: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        for field in [
            "@timestamp",
            "database",
            "table",
            "op",
            "pk",
            "data",
            "old",
            "commit_ts",
            "ingested_at",
            "kafka",
        ] {
            assert!(doc.get(field).is_some(), "missing {field}");
        }
        assert_eq!(doc["op"], "update");
        assert_eq!(doc["kafka"]["offset"], 41);
        assert_eq!(doc["old"]["email"], "old@example.com");
    }
}
