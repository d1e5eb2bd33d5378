//! The stored shape of one event: the Elasticsearch document, which the
//! embedded store keeps too and `/api/events` returns. Field names are the
//! public contract (README, Kibana data view, Grafana panels).

use serde::Serialize;

use crate::clock::{push_rfc3339_millis, rfc3339_millis};
use crate::event::{ChangeEvent, LargeMessage, Row, SourcePosition};

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
    /// Why cdc-monitor wrote the event itself (`reconcile --repair`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    ingested_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka: Option<KafkaDoc<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binlog: Option<BinlogDoc<'a>>,
}

/// The stored document of `event`, ingested at `ingested_at` (RFC 3339).
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
        reason: event.reason.as_deref(),
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

/// Appends `document(event, ingested_at)` as compact JSON: the bytes
/// `serde_json` writes for it, without building it. Column values are the
/// raw JSON the source wrote, copied as they are; the golden bulk bodies
/// (`tests/fixtures/bulk/`) hold the two equal.
pub fn write_document(buf: &mut Vec<u8>, event: &ChangeEvent, ingested_at: &str) {
    let mut int = itoa::Buffer::new();
    buf.extend_from_slice(b"{\"@timestamp\":\"");
    push_rfc3339_millis(buf, event.commit_time_ms);
    buf.extend_from_slice(b"\",\"database\":");
    push_json_str(buf, &event.database);
    buf.extend_from_slice(b",\"table\":");
    push_json_str(buf, &event.table);
    buf.extend_from_slice(b",\"op\":\"");
    buf.extend_from_slice(event.op.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"pk\":");
    push_row(buf, &event.pk);
    buf.extend_from_slice(b",\"data\":");
    push_row(buf, &event.data);
    buf.extend_from_slice(b",\"old\":");
    match &event.old {
        Some(old) => push_row(buf, old),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"commit_ts\":");
    match event.commit_ts {
        Some(ts) => buf.extend_from_slice(int.format(ts).as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
    if let Some(sql) = &event.sql {
        buf.extend_from_slice(b",\"sql\":");
        push_json_str(buf, sql);
    }
    match &event.large_message {
        None => {}
        Some(LargeMessage::HandleKeyOnly) => {
            buf.extend_from_slice(b",\"large_message\":{\"kind\":\"handle_key_only\"}")
        }
        Some(LargeMessage::ClaimCheck { location }) => {
            buf.extend_from_slice(b",\"large_message\":{\"kind\":\"claim_check\",\"location\":");
            push_json_str(buf, location);
            buf.push(b'}');
        }
    }
    if let Some(reason) = &event.reason {
        buf.extend_from_slice(b",\"reason\":");
        push_json_str(buf, reason);
    }
    buf.extend_from_slice(b",\"ingested_at\":");
    push_json_str(buf, ingested_at);
    match &event.position {
        SourcePosition::Kafka {
            topic,
            partition,
            offset,
        } => {
            buf.extend_from_slice(b",\"kafka\":{\"topic\":");
            push_json_str(buf, topic);
            buf.extend_from_slice(b",\"partition\":");
            buf.extend_from_slice(int.format(*partition).as_bytes());
            buf.extend_from_slice(b",\"offset\":");
            buf.extend_from_slice(int.format(*offset).as_bytes());
            buf.push(b'}');
        }
        SourcePosition::Binlog { file, pos } => {
            buf.extend_from_slice(b",\"binlog\":{\"file\":");
            push_json_str(buf, file);
            buf.extend_from_slice(b",\"pos\":");
            buf.extend_from_slice(int.format(*pos).as_bytes());
            buf.push(b'}');
        }
        SourcePosition::None => {}
    }
    buf.push(b'}');
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` escapes it.
pub fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // serde_json escapes `"`, `\\` and control characters, nothing else.
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // Serialising a str into a Vec cannot fail.
        serde_json::to_writer(&mut *buf, s).expect("a str serialises");
        return;
    }
    buf.reserve(s.len() + 2);
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
}

/// Appends `row` as a JSON object: names escaped, values as their raw text.
fn push_row(buf: &mut Vec<u8>, row: &Row) {
    buf.reserve(row.json_len() + 2);
    buf.push(b'{');
    for (i, (name, value)) in row.0.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_json_str(buf, name);
        buf.push(b':');
        buf.extend_from_slice(value.get().as_bytes());
    }
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "",
            "plain",
            "é€😀",
            "a\"b",
            "back\\slash",
            "nl\n\t\u{1}\u{1f}",
            "\u{7f}/",
        ] {
            let mut buf = Vec::new();
            push_json_str(&mut buf, s);
            assert_eq!(buf, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
