//! canal-json bytes to normalised events.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::canal::message::{CanalMessage, WATERMARK_TYPE};
use crate::event::{ChangeEvent, LargeMessage, Op, Row, SourcePosition};

/// A decoded message: change events, or a watermark that carries no change.
#[derive(Debug)]
pub enum Decoded {
    Events(Vec<ChangeEvent>),
    /// Every change up to this commit time has been sent on this partition.
    Watermark {
        ts: u64,
        time_ms: i64,
    },
}

/// Why a message could not be decoded; the short `reason` labels metrics and DLQ headers.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("not valid canal-json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("{kind} message has no rows in `data`")]
    NoRows { kind: String },
    #[error("`old` has {old} rows but `data` has {data}")]
    OldRowsMismatch { old: usize, data: usize },
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("primary key column {0:?} is not in the row")]
    PkMissing(String),
}

impl DecodeError {
    /// A stable short name for metric labels and headers.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::NoRows { .. } => "no_rows",
            DecodeError::OldRowsMismatch { .. } => "old_rows_mismatch",
            DecodeError::Missing(_) => "missing_field",
            DecodeError::PkMissing(_) => "pk_missing",
        }
    }
}

/// The physical part of a TiDB TSO is milliseconds, in the bits above the 18 logical ones.
pub fn tso_to_millis(ts: u64) -> i64 {
    (ts >> 18) as i64
}

/// Decodes one canal-json message into events tagged with `position`.
pub fn decode(payload: &[u8], position: &SourcePosition) -> Result<Decoded, DecodeError> {
    Decoder::default().decode(payload, position)
}

/// Decodes the messages of one stream in turn and shares what consecutive
/// messages repeat: a table's `mysqlType` object is parsed once while it
/// stays the same, and its events share it.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The last `mysqlType` text and its parsed row.
    mysql_types: Option<(Box<str>, Arc<Row>)>,
}

impl Decoder {
    /// Decodes one canal-json message into events tagged with `position`.
    pub fn decode(
        &mut self,
        payload: &[u8],
        position: &SourcePosition,
    ) -> Result<Decoded, DecodeError> {
        decode_message(payload, position, self)
    }

    /// The parsed `mysqlType` of `raw`, from the last message when it is the same text.
    fn mysql_types(&mut self, raw: &RawValue) -> Result<Arc<Row>, DecodeError> {
        if let Some((text, row)) = &self.mysql_types {
            if text.as_ref() == raw.get() {
                return Ok(row.clone());
            }
        }
        let row = Arc::new(serde_json::from_str::<Row>(raw.get())?);
        self.mysql_types = Some((raw.get().into(), row.clone()));
        Ok(row)
    }
}

fn decode_message(
    payload: &[u8],
    position: &SourcePosition,
    decoder: &mut Decoder,
) -> Result<Decoded, DecodeError> {
    if payload.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DecodeError::Empty);
    }
    // Checked as UTF-8 once, here, so the parser need not check each
    // string again; serde_json also accepts invalid bytes inside values it
    // skips, so such a payload takes the byte parser as before.
    let msg: CanalMessage = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::from_str(text)?,
        Err(_) => serde_json::from_slice(payload)?,
    };
    // Kept as text, parsed later or never: still objects, or the message
    // fails here, as when they were parsed with it.
    for raw in [msg.sql_type, msg.mysql_type].into_iter().flatten() {
        if !raw.get().starts_with('{') {
            // The error a parse as a row gives, as for any bad field.
            serde_json::from_str::<Row>(raw.get())?;
        }
    }
    let tidb = msg.tidb.unwrap_or_default();

    if msg.kind == WATERMARK_TYPE {
        let ts = tidb
            .watermark_ts
            .ok_or(DecodeError::Missing("_tidb.watermarkTs"))?;
        return Ok(Decoded::Watermark {
            ts,
            time_ms: tso_to_millis(ts),
        });
    }

    let es = msg.es.or(msg.ts);
    let (commit_ts, commit_time_ms) = match (tidb.commit_ts, &msg.binlog) {
        (Some(ts), _) => (Some(ts), tso_to_millis(ts)),
        // A binlog change number is no clock: the time is `es`.
        (None, Some(b)) => (Some(b.commit_ts), es.ok_or(DecodeError::Missing("es"))?),
        (None, None) => (None, es.ok_or(DecodeError::Missing("es"))?),
    };
    let large_message = match (tidb.claim_check_location, tidb.only_handle_key) {
        (Some(location), _) => Some(LargeMessage::ClaimCheck { location }),
        (None, Some(true)) => Some(LargeMessage::HandleKeyOnly),
        _ => None,
    };
    let database = msg.database.unwrap_or_default();
    let table = msg.table.unwrap_or_default();

    if msg.is_ddl {
        let mut ddl = ChangeEvent::ddl(
            database.into_owned(),
            table.into_owned(),
            msg.sql.unwrap_or_default().into_owned(),
            commit_time_ms,
            commit_ts,
            position.clone(),
        );
        ddl.large_message = large_message;
        return Ok(Decoded::Events(vec![ddl]));
    }

    let op = match msg.kind.as_ref() {
        "INSERT" if msg.binlog.as_ref().is_some_and(|b| b.snapshot) => Op::Snapshot,
        "INSERT" => Op::Insert,
        "UPDATE" => Op::Update,
        "DELETE" => Op::Delete,
        _ => return Err(DecodeError::UnknownType(msg.kind.into_owned())),
    };
    let rows = msg.data.unwrap_or_default();
    if rows.is_empty() {
        return Err(DecodeError::NoRows {
            kind: msg.kind.into_owned(),
        });
    }
    let mut olds = msg.old.map(|o| o.into_iter().map(Some).collect::<Vec<_>>());
    if let Some(o) = &olds {
        // Canal sends one `old` entry per `data` row; TiCDC only for updates.
        if o.len() != rows.len() {
            return Err(DecodeError::OldRowsMismatch {
                old: o.len(),
                data: rows.len(),
            });
        }
    }
    let pk_names = msg.pk_names.unwrap_or_default();
    // Shared by the message's events rather than copied into each.
    let mysql_types = match msg.mysql_type {
        Some(raw) => Some(decoder.mysql_types(raw)?),
        None => None,
    };
    // One message can carry several rows (Canal's flat messages): one event per row.
    let mut events = Vec::with_capacity(rows.len());
    for (i, data) in rows.into_iter().enumerate() {
        let mut pk = Vec::with_capacity(pk_names.len());
        for name in &pk_names {
            match data.get(name) {
                Some(v) => pk.push((Box::<str>::from(name.as_ref()), v.to_owned())),
                None if large_message.is_some() => {}
                None => return Err(DecodeError::PkMissing(name.clone().into_owned())),
            }
        }
        let old = match (&mut olds, op) {
            (Some(o), Op::Update) => o[i].take(),
            _ => None,
        };
        events.push(ChangeEvent {
            database: database.as_ref().to_owned(),
            table: table.as_ref().to_owned(),
            op,
            pk: Row(pk),
            data,
            old,
            commit_time_ms,
            commit_ts,
            sql: None,
            mysql_types: mysql_types.clone(),
            large_message: large_message.clone(),
            reason: None,
            position: position.clone(),
        });
    }
    Ok(Decoded::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/canal/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn events(name: &str) -> Vec<ChangeEvent> {
        match decode(&fixture(name), &SourcePosition::None).unwrap() {
            Decoded::Events(e) => e,
            other => panic!("{name}: expected events, got {other:?}"),
        }
    }

    #[test]
    fn insert_with_tidb_extension_keeps_commit_ts_exact() {
        let e = events("insert_tidb.json");
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(
            (e.database.as_str(), e.table.as_str(), e.op),
            ("appdb", "users", Op::Insert)
        );
        // Above 2^53: a float would have rounded it.
        assert_eq!(e.commit_ts, Some(445_318_436_315_725_826));
        assert_eq!(e.commit_time_ms, tso_to_millis(445_318_436_315_725_826));
        assert_eq!(e.pk.text("id").as_deref(), Some("1"));
        assert_eq!(e.data.text("username").as_deref(), Some("alice"));
        assert!(e.old.is_none());
        assert!(e.mysql_types.as_ref().unwrap().get("id").is_some());
    }

    #[test]
    fn insert_without_extension_uses_es_as_commit_time() {
        let e = &events("insert_plain.json")[0];
        assert_eq!(e.commit_ts, None);
        assert_eq!(e.commit_time_ms, 1_700_000_000_123);
    }

    #[test]
    fn update_carries_old_values() {
        let e = &events("update.json")[0];
        assert_eq!(e.op, Op::Update);
        assert_eq!(e.data.text("email").as_deref(), Some("new@example.com"));
        assert_eq!(
            e.old.as_ref().unwrap().text("email").as_deref(),
            Some("old@example.com")
        );
    }

    #[test]
    fn delete_keeps_the_deleted_row() {
        let e = &events("delete.json")[0];
        assert_eq!(e.op, Op::Delete);
        assert_eq!(e.pk.text("id").as_deref(), Some("3"));
        assert!(e.old.is_none());
    }

    #[test]
    fn nulls_and_long_decimals_are_kept_verbatim() {
        let e = &events("nulls_decimals.json")[0];
        assert_eq!(e.data.get("email").unwrap().get(), "null");
        assert_eq!(
            e.data.get("balance").unwrap().get(),
            "\"123456789012345678901234567890.123456789\""
        );
    }

    #[test]
    fn ddl_becomes_one_ddl_event_with_its_statement() {
        let e = events("ddl.json");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].op, Op::Ddl);
        assert!(e[0].sql.as_deref().unwrap().starts_with("ALTER TABLE"));
        assert!(e[0].commit_ts.is_some());
    }

    #[test]
    fn a_decoder_shares_mysql_types_while_they_repeat() {
        let mut d = Decoder::default();
        let p = SourcePosition::None;
        let types = |d: &mut Decoder, name: &str| match d.decode(&fixture(name), &p).unwrap() {
            Decoded::Events(e) => e[0].mysql_types.clone().unwrap(),
            other => panic!("{other:?}"),
        };
        let a = types(&mut d, "insert_tidb.json");
        let b = types(&mut d, "insert_tidb.json");
        assert!(Arc::ptr_eq(&a, &b));
        let c = types(&mut d, "update.json");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.get("email").unwrap().get(), "\"varchar\"");
        let err = d
            .decode(
                br#"{"type":"INSERT","database":"a","table":"t","data":[{"a":"1"}],"es":1,"mysqlType":[1]}"#,
                &p,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_json");
    }

    #[test]
    fn watermark_is_not_an_event() {
        match decode(&fixture("watermark.json"), &SourcePosition::None).unwrap() {
            Decoded::Watermark { ts, time_ms } => {
                assert_eq!(ts, 445_318_436_315_725_827);
                assert_eq!(time_ms, tso_to_millis(ts));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flat_message_with_several_rows_gives_one_event_per_row() {
        let e = events("multi_row.json");
        assert_eq!(e.len(), 3);
        let ids: Vec<_> = e.iter().map(|e| e.pk.text("id").unwrap()).collect();
        assert_eq!(ids, ["10", "11", "12"]);
        assert_eq!(
            e[1].old.as_ref().unwrap().text("name").as_deref(),
            Some("b0")
        );
        let distinct: std::collections::HashSet<_> = e.iter().map(|e| e.document_id()).collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn handle_key_only_message_is_flagged_not_dropped() {
        let e = &events("handle_key_only.json")[0];
        assert_eq!(e.large_message, Some(LargeMessage::HandleKeyOnly));
        assert_eq!(e.pk.text("id").as_deref(), Some("7"));
    }

    #[test]
    fn claim_check_message_keeps_its_location() {
        let e = &events("claim_check.json")[0];
        match &e.large_message {
            Some(LargeMessage::ClaimCheck { location }) => assert!(location.starts_with("s3://")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn composite_primary_key_follows_pk_names_order() {
        let e = &events("composite_pk.json")[0];
        let names: Vec<_> = e.pk.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(names, ["tenant", "id"]);
    }

    #[test]
    fn malformed_messages_are_errors_with_reasons() {
        let p = SourcePosition::None;
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"{not json", "invalid_json"),
            (br#"{"type":"INSERT","database":"a","table":"t","data":[],"es":1}"#, "no_rows"),
            (br#"{"type":"MERGE","database":"a","table":"t","data":[{}],"es":1}"#, "unknown_type"),
            (br#"{"type":"INSERT","database":"a","table":"t","pkNames":["id"],"data":[{"x":"1"}],"es":1}"#, "pk_missing"),
            (br#"{"type":"TIDB_WATERMARK","_tidb":{}}"#, "missing_field"),
            (br#"{"type":"INSERT","database":"a","table":"t","data":[{"a":"1"}],"es":1,"sqlType":[]}"#, "invalid_json"),
            (br#"{"type":"INSERT","database":"a","table":"t","data":[],"es":1,"mysqlType":"x"}"#, "invalid_json"),
            (br#"{"type":"QUERY","isDdl":true,"database":"a","es":1,"mysqlType":1}"#, "invalid_json"),
            (br#"{"type":"INSERT","database":"a","table":"t","data":[{"a":"1"}],"_tidb":{"commitTs":1.5}}"#, "invalid_json"),
        ];
        for (input, reason) in cases {
            let err = decode(input, &p).unwrap_err();
            assert_eq!(err.reason(), *reason, "{}", String::from_utf8_lossy(input));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes, &SourcePosition::None);
        }

        #[test]
        fn mutated_valid_messages_never_panic(cut in 0usize..600, flip in 0usize..600, byte in proptest::num::u8::ANY) {
            let mut m = fixture("multi_row.json");
            let n = m.len();
            m[flip % n] = byte;
            m.truncate(cut.min(n));
            let _ = decode(&m, &SourcePosition::None);
        }
    }
}
