//! canal-json test messages shaped like TiCDC's, with exact expected ids.

use cdc_monitor::canal::{decode, Decoded};
use cdc_monitor::event::SourcePosition;
use serde_json::json;

/// Base TSO for generated messages (above 2^53 on purpose).
pub const BASE_TS: u64 = 445_318_436_315_725_826;

/// The op of the i-th generated change: mostly inserts, some updates, deletes and a DDL.
pub fn op_of(i: usize) -> &'static str {
    match i % 10 {
        0..=5 => "INSERT",
        6 | 7 => "UPDATE",
        8 => "DELETE",
        _ if i % 1000 == 999 => "DDL",
        _ => "INSERT",
    }
}

/// The i-th message of a generated stream: one row, unique commit ts.
pub fn message(i: usize) -> Vec<u8> {
    let ts = BASE_TS + (i as u64) * 7;
    let table = if i % 2 == 0 { "users" } else { "orders" };
    let kind = op_of(i);
    let v = if kind == "DDL" {
        json!({"id":0,"database":"appdb","table":table,"pkNames":null,"isDdl":true,"type":"ALTER","es":ts>>18,"ts":ts>>18,
               "sql":format!("ALTER TABLE appdb.{table} COMMENT 'c{i}'"),"sqlType":null,"mysqlType":null,"data":null,"old":null,"_tidb":{"commitTs":ts}})
    } else {
        let row = json!({"id": i.to_string(), "name": format!("n{i}"), "amount": "12345678901234567890.12", "note": null});
        let old = if kind == "UPDATE" {
            json!([{"name": format!("o{i}")}])
        } else {
            json!(null)
        };
        json!({"id":0,"database":"appdb","table":table,"pkNames":["id"],"isDdl":false,"type":kind,"es":ts>>18,"ts":ts>>18,"sql":"",
               "sqlType":{"id":-5,"name":12,"amount":3,"note":12},"mysqlType":{"id":"bigint","name":"varchar","amount":"decimal(40,2)","note":"varchar"},
               "old":old,"data":[row],"_tidb":{"commitTs":ts}})
    };
    serde_json::to_vec(&v).unwrap()
}

/// The document id the consumer must give message `i`.
pub fn expected_id(i: usize) -> String {
    match decode(&message(i), &SourcePosition::None).unwrap() {
        Decoded::Events(e) => e[0].document_id().to_string(),
        Decoded::Watermark { .. } => unreachable!(),
    }
}

/// A TiCDC watermark message.
pub fn watermark(ts: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"id":0,"database":"","table":"","pkNames":null,"isDdl":false,"type":"TIDB_WATERMARK","es":ts>>18,"ts":ts>>18,"sql":"","sqlType":null,"mysqlType":null,"data":null,"old":null,"_tidb":{"watermarkTs":ts}})).unwrap()
}

/// Expected (op label, count) for messages 0..n.
pub fn op_counts(n: usize) -> std::collections::BTreeMap<&'static str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for i in 0..n {
        let op = match op_of(i) {
            "INSERT" => "insert",
            "UPDATE" => "update",
            "DELETE" => "delete",
            _ => "ddl",
        };
        *m.entry(op).or_default() += 1;
    }
    m
}
