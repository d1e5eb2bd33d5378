//! NDJSON bulk bodies: one `create` action and one document per event.
//!
//! `create` rather than `index`: the `_id` is deterministic, so a replayed
//! change meets its earlier copy and gets 409, which counts as stored. The
//! document itself is `sink::document`, the shape the embedded store keeps too.

use serde::Serialize;

use crate::event::ChangeEvent;
use crate::sink::document::document;

#[derive(Serialize)]
struct Action<'a> {
    create: ActionMeta<'a>,
}

#[derive(Serialize)]
struct ActionMeta<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: String,
}

/// Appends the action line and the document line for `event`.
pub fn encode(buf: &mut Vec<u8>, index: &str, event: &ChangeEvent, ingested_at: &str) {
    let action = Action {
        create: ActionMeta {
            index,
            id: event.document_id().to_string(),
        },
    };
    // Serialising these borrowed structs into a Vec cannot fail: every key is a string.
    serde_json::to_writer(&mut *buf, &action).expect("action serialises");
    buf.push(b'\n');
    serde_json::to_writer(&mut *buf, &document(event, ingested_at)).expect("document serialises");
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canal::{decode, Decoded};
    use crate::event::SourcePosition;
    use std::sync::Arc;

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
