//! The stored shape of one event: the Elasticsearch document, which the
//! embedded store keeps too and `/api/events` returns. Field names are the
//! public contract (README, Kibana data view, Grafana panels).

use serde::Serialize;

use crate::clock::rfc3339_millis;
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
