//! The canal-json message as TiCDC writes it.
//!
//! Field list from TiCDC's canal-json encoder (pkg/sink/codec/canal in
//! pingcap/tiflow) and its documentation: `id`, `database`, `table`,
//! `pkNames`, `isDdl`, `type`, `es`, `ts`, `sql`, `sqlType`, `mysqlType`,
//! `data`, `old`, and with `enable-tidb-extension=true` the `_tidb` object.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::Row;

/// `type` of the watermark messages TiCDC sends with the TiDB extension.
pub const WATERMARK_TYPE: &str = "TIDB_WATERMARK";

/// One canal-json message. Strings borrow from the payload where they
/// have no escapes: decoding copies only what the events keep.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanalMessage<'a> {
    #[serde(default, borrow)]
    pub database: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub table: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub pk_names: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    pub is_ddl: bool,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Commit time of the change in milliseconds.
    #[serde(default)]
    pub es: Option<i64>,
    /// Time the message was built in milliseconds.
    #[serde(default)]
    pub ts: Option<i64>,
    #[serde(default, borrow)]
    pub sql: Option<Cow<'a, str>>,
    /// Nothing reads the JDBC types; `decode` still requires an object.
    #[serde(default, borrow)]
    pub sql_type: Option<&'a RawValue>,
    /// Kept as its text: consecutive messages of a table repeat it, and
    /// `Decoder` parses it only when it changes.
    #[serde(default, borrow)]
    pub mysql_type: Option<&'a RawValue>,
    #[serde(default)]
    pub data: Option<Vec<Row>>,
    #[serde(default)]
    pub old: Option<Vec<Row>>,
    #[serde(default, rename = "_tidb")]
    pub tidb: Option<TidbExtension>,
    #[serde(default, rename = "_binlog")]
    pub binlog: Option<BinlogExtension>,
}

/// cdc-monitor's `_binlog` extension on changes it captured from a MySQL or
/// MariaDB binlog: where the change is in the binlog, and `commitTs`, a
/// number that orders changes and names one row change (the binlog file
/// number in the high 20 bits, the rows event's end offset in the next 32,
/// the row's index in the event in the low 12).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BinlogExtension {
    pub file: String,
    pub pos: u64,
    pub commit_ts: u64,
    #[serde(default)]
    pub gtid: Option<String>,
    /// The row was read by a snapshot (canal-json has no such type: it is an `INSERT`).
    #[serde(default)]
    pub snapshot: bool,
}

/// TiCDC's `_tidb` extension object.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TidbExtension {
    /// Deserialised as an integer, never through a float: TSOs exceed 2^53.
    #[serde(default)]
    pub commit_ts: Option<u64>,
    #[serde(default)]
    pub watermark_ts: Option<u64>,
    #[serde(default)]
    pub only_handle_key: Option<bool>,
    #[serde(default)]
    pub claim_check_location: Option<String>,
}
