//! NDJSON bulk bodies: one `create` action and one document per event.
//!
//! `create` rather than `index`: the `_id` is deterministic, so a replayed
//! change meets its earlier copy and gets 409, which counts as stored.

use serde::Serialize;

use crate::event::{ChangeEvent, LargeMessage, Row, SourcePosition};

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

#[derive(Serialize)]
struct KafkaDoc<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

#[derive(Serialize)]
struct BinlogDoc<'a> {
    file: &'a str,
    pos: u64,
}

#[derive(Serialize)]
struct LargeMessageDoc<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
}

/// The document stored for one event; field names are the public contract.
#[derive(Serialize)]
pub struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    database: &'a str,
    table: &'a str,
    op: &'static str,
    pk: &'a Row,
    data: &'a Row,
    old: Option<&'a Row>,
    /// Written as a JSON integer: mapped `unsigned_long`, exact above 2^53.
    commit_ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    large_message: Option<LargeMessageDoc<'a>>,
    ingested_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka: Option<KafkaDoc<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binlog: Option<BinlogDoc<'a>>,
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

pub fn document<'a>(event: &'a ChangeEvent, ingested_at: &'a str) -> Document<'a> {
    Document {
        timestamp: rfc3339_millis(event.commit_time_ms),
        database: &event.database,
        table: &event.table,
        op: event.op.as_str(),
        pk: &event.pk,
        data: &event.data,
        old: event.old.as_ref(),
        commit_ts: event.commit_ts,
        sql: event.sql.as_deref(),
        large_message: event.large_message.as_ref().map(|m| match m {
            LargeMessage::HandleKeyOnly => LargeMessageDoc {
                kind: "handle_key_only",
                location: None,
            },
            LargeMessage::ClaimCheck { location } => LargeMessageDoc {
                kind: "claim_check",
                location: Some(location),
            },
        }),
        ingested_at,
        kafka: match &event.position {
            SourcePosition::Kafka {
                topic,
                partition,
                offset,
            } => Some(KafkaDoc {
                topic,
                partition: *partition,
                offset: *offset,
            }),
            _ => None,
        },
        binlog: match &event.position {
            SourcePosition::Binlog { file, pos } => Some(BinlogDoc { file, pos: *pos }),
            _ => None,
        },
    }
}

/// Formats Unix milliseconds as `2024-01-02T03:04:05.678Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            millis
        ),
        // Out of the representable range: clamp rather than fail the event.
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// The current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_millis(now_millis())
}

/// The current Unix time in milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canal::{decode, Decoded};
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

    #[test]
    fn timestamps_format_as_rfc3339_millis() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_698_825_600_123),
            "2023-11-01T08:00:00.123Z"
        );
    }
}
