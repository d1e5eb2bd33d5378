//! MySQL and MariaDB changes read straight from the binlog, as a replica.
//!
//! Lifecycle: `run` checks the server (preflight), finds where to start
//! (the stored position, else the current or earliest binlog), then streams
//! events: table maps describe the tables, rows events become change events
//! (one envelope per row), and every commit (XID, COMMIT, DDL) is a
//! resume point. Changes are numbered in reading order and tracked like
//! Kafka offsets; `commit` stores the last resume point before the first
//! change still in flight. A lost connection reconnects from the last resume
//! point read, with backoff.

pub mod charset;
pub mod convert;
pub mod events;
pub mod ha;
pub mod position;
pub mod preflight;
pub mod scan;
pub mod schema;
pub mod snapshot;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use mysql_async::binlog::events::{EventData, TableMapEvent};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::checkpoint::{Checkpoint, SnapshotProgress, StoredCheckpoints, BINLOG_STREAM};
use crate::config::{BinlogStart, MysqlConfig, MysqlSslMode, SnapshotMode};
use crate::control::{SnapshotControl, SnapshotRequest};
use crate::event::{ChangeEvent, Row, SourcePosition};
use crate::metrics::Metrics;
use crate::source::ack::OffsetTracker;
use crate::source::binlog::events::{
    ddl_target, ddl_verb, decoding_table_map, first_word, rotate_name, rows_to_events, uuid_text,
    MappedTable, ValueError,
};
use crate::source::binlog::ha::Leadership;
use crate::source::binlog::position::{BinlogPosition, Boundaries, GtidState, PositionFile};
use crate::source::binlog::preflight::ServerInfo;
use crate::source::binlog::schema::{SchemaCache, TableSchema};
use crate::source::envelope::{Envelope, EnvelopeTx, Origin, Undecodable};
use crate::source::{Fence, Source, SourceError};

/// The stream name of binlog positions, in the tracker and in checkpoints.
pub const STREAM: &str = BINLOG_STREAM;

/// MariaDB's GTID event, which mysql_async does not parse.
const MARIADB_GTID_EVENT: u8 = 162;

/// How long connecting, or setting up the binlog stream, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the stream may stay silent (the server sends heartbeats every
/// second) before the connection is taken for dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(10);

/// Where the resume position lives.
#[derive(Debug, Clone)]
pub enum PositionStore {
    /// A file in the data directory, written after the sink acknowledged.
    File(PositionFile),
    /// The sink keeps it with the events, in the same transaction; this is
    /// what it held at start: a position, or how far a snapshot got.
    Sink(Option<BinlogPosition>, Option<SnapshotProgress>),
    /// `CDC_BINLOG_HA=kafka`: the group's compacted position topic; what
    /// it held when this instance was last elected.
    Kafka(Arc<Leadership>, Arc<Mutex<Option<BinlogPosition>>>),
}

impl PositionStore {
    /// The sink's stored position when it keeps positions, else the
    /// position file in `data_dir`.
    pub fn open(
        data_dir: &std::path::Path,
        stored: Option<StoredCheckpoints>,
    ) -> Result<PositionStore, SourceError> {
        if let Some(stored) = stored {
            return match stored(STREAM).map_err(SourceError::Other)? {
                None => Ok(PositionStore::Sink(None, None)),
                Some(Checkpoint::Binlog(p)) => Ok(PositionStore::Sink(Some(p), None)),
                Some(Checkpoint::Snapshot(s)) => Ok(PositionStore::Sink(None, Some(s))),
                Some(other) => Err(SourceError::Other(format!(
                    "the stored binlog checkpoint is a {} position",
                    other.stream()
                ))),
            };
        }
        crate::owner_only::create_dir_all(data_dir).map_err(|e| {
            SourceError::Other(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        Ok(PositionStore::File(PositionFile::new(data_dir)))
    }

    fn load(&self) -> Result<Option<BinlogPosition>, SourceError> {
        match self {
            PositionStore::File(f) => f
                .load()
                .map_err(|e| SourceError::Other(format!("cannot read the binlog position: {e}"))),
            PositionStore::Sink(p, _) => Ok(p.clone()),
            PositionStore::Kafka(_, loaded) => Ok(loaded.lock().ok().and_then(|p| p.clone())),
        }
    }

    /// How far an interrupted snapshot got (only a sink keeps it).
    fn snapshot(&self) -> Option<SnapshotProgress> {
        match self {
            PositionStore::Sink(_, s) => s.clone(),
            PositionStore::File(_) | PositionStore::Kafka(..) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            PositionStore::File(f) => format!("delete {}", f.path().display()),
            PositionStore::Sink(..) => {
                "delete the `binlog` checkpoint from the embedded store (or its data directory)"
                    .to_owned()
            }
            PositionStore::Kafka(ha, _) => ha.describe(),
        }
    }
}

/// Where a start begins: streaming from a position, or a snapshot (new,
/// or on after the stored progress).
enum Start {
    Stream(BinlogPosition),
    Snapshot(Option<SnapshotProgress>),
}

/// What the binlog stream yields next.
enum Next {
    Event(mysql_async::binlog::events::Event),
    Shutdown,
    Reconnect,
}

/// Where an event sits: its end position and the server's timestamp (s).
#[derive(Debug, Clone, Copy)]
struct At {
    log_pos: u64,
    timestamp: i64,
}

/// MariaDB's GTID event opens a transaction (mysql_async does not parse it).
fn on_mariadb_gtid(st: &mut ReadState, d: &[u8], server_id: u32) {
    if d.len() >= 12 {
        let seq = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let domain = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
        st.pending_gtid = Some(format!("{domain}-{server_id}-{seq}"));
    }
    st.in_transaction = true;
}

/// The reading state that survives reconnects.
struct ReadState {
    file: String,
    /// The last resume point read; a reconnect starts here.
    resume: BinlogPosition,
    /// GTID of the transaction being read, and the GTID position committed.
    pending_gtid: Option<String>,
    gtid: GtidState,
    in_transaction: bool,
    seq: i64,
    tables: HashMap<u64, Option<Arc<MappedTable>>>,
    /// The tracker partition its events are acknowledged on: 0 for the
    /// stream (and the initial snapshot), which alone carries resume points.
    partition: i32,
}

/// The tracker partition of on-demand snapshot rows.
const ON_DEMAND_PARTITION: i32 = 1;

impl ReadState {
    fn new(partition: i32) -> ReadState {
        ReadState {
            file: String::new(),
            resume: BinlogPosition {
                file: String::new(),
                pos: 4,
                gtid: None,
            },
            pending_gtid: None,
            gtid: GtidState::default(),
            in_transaction: false,
            seq: 0,
            tables: HashMap::new(),
            partition,
        }
    }
}

/// The binlog source.
pub struct BinlogSource {
    cfg: MysqlConfig,
    opts: Opts,
    store: PositionStore,
    tracker: Arc<Mutex<OffsetTracker>>,
    boundaries: Mutex<Boundaries>,
    stored: Mutex<Option<BinlogPosition>>,
    metrics: Metrics,
    /// Send a checkpoint with every commit (the sink keeps positions).
    emit_checkpoints: bool,
    topic: Arc<str>,
    /// On-demand snapshot requests: the control handed out, the receiver
    /// taken by the capture loop.
    control: SnapshotControl,
    /// A tokio mutex: held for a capture term, so a later term (after a
    /// re-election) serves requests again.
    requests: tokio::sync::Mutex<mpsc::Receiver<SnapshotRequest>>,
}

impl BinlogSource {
    /// Parses the URL; nothing is connected yet.
    pub fn new(
        cfg: &MysqlConfig,
        store: PositionStore,
        tracker: Arc<Mutex<OffsetTracker>>,
        metrics: Metrics,
    ) -> Result<BinlogSource, SourceError> {
        let opts = Opts::from_url(cfg.url.expose_secret())
            .map_err(|e| SourceError::Other(format!("CDC_MYSQL_URL: {e}")))?;
        let opts = tls::with_tls(opts, &cfg.tls);
        if cfg.tls.mode == MysqlSslMode::Disabled && !tls::is_loopback(opts.ip_or_hostname()) {
            warn!(
                server = %format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port()),
                "TLS to MySQL is off (CDC_MYSQL_SSL_MODE=disabled): the login and \
                 every captured row cross the network readable"
            );
        }
        let emit_checkpoints = matches!(store, PositionStore::Sink(..));
        let (control, requests) = SnapshotControl::channel();
        Ok(BinlogSource {
            cfg: cfg.clone(),
            opts,
            store,
            tracker,
            boundaries: Mutex::new(Boundaries::default()),
            stored: Mutex::new(None),
            metrics,
            emit_checkpoints,
            topic: Arc::from(STREAM),
            control,
            requests: tokio::sync::Mutex::new(requests),
        })
    }

    fn server(&self) -> String {
        format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port())
    }

    /// A connection, within `CONNECT_TIMEOUT`. A rejected login is fatal:
    /// retrying the same credentials cannot succeed.
    pub(super) async fn connect(&self) -> Result<Conn, SourceError> {
        let (result, plaintext) =
            tls::connect(&self.opts, self.cfg.tls.mode, CONNECT_TIMEOUT).await;
        // Loopback traffic never leaves the machine: no warning.
        if plaintext && !tls::is_loopback(self.opts.ip_or_hostname()) {
            warn!(
                server = %self.server(),
                "the MySQL server offers no TLS: connected in plaintext \
                 (CDC_MYSQL_SSL_MODE=preferred; set verify_identity to refuse)"
            );
        }
        match result {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                let text = format!("connecting to MySQL at {}: {e}", self.server());
                match e {
                    // 1045: access denied; 1044: no access to the database.
                    mysql_async::Error::Server(ref s) if s.code == 1045 || s.code == 1044 => {
                        Err(SourceError::Fatal(format!(
                            "{text} (check the user and password in CDC_MYSQL_URL{})",
                            tls::denied_hint(self.cfg.tls.mode)
                        )))
                    }
                    // Retrying cannot make a certificate trusted or a
                    // server grow TLS: stop with what to change.
                    ref e if tls::is_tls_failure(e) => Err(SourceError::Fatal(format!(
                        "{text} (CDC_MYSQL_SSL_MODE is {}; {})",
                        self.cfg.tls.mode.name(),
                        tls::failure_hint(self.cfg.tls.mode)
                    ))),
                    _ => Err(SourceError::Other(text)),
                }
            }
            Err(_) => Err(SourceError::Other(format!(
                "connecting to MySQL at {}: no answer within {CONNECT_TIMEOUT:?}",
                self.server()
            ))),
        }
    }

    /// Preflight: every problem at once, or the server's description.
    pub(super) async fn preflight(
        &self,
        conn: &mut Conn,
    ) -> Result<preflight::ServerInfo, SourceError> {
        let (info, problems) = preflight::check(conn, &self.cfg.tables)
            .await
            .map_err(|e| SourceError::Other(format!("MySQL at {}: {e}", self.server())))?;
        if !problems.is_empty() {
            let mut msg = format!(
                "MySQL server {} ({}) cannot be captured:",
                self.server(),
                info.version
            );
            for p in &problems {
                msg.push_str(&format!("\n  - {}\n    fix: {}", p.what, p.fix));
            }
            return Err(SourceError::Fatal(msg));
        }
        if !info.full_metadata {
            info!("binlog_row_metadata is not FULL: column names come from information_schema");
        }
        Ok(info)
    }

    /// The oldest binlog when it starts after `gtid` (the transactions right
    /// after `gtid` were purged), else `None`.
    async fn gtid_purged(
        &self,
        conn: &mut Conn,
        gtid: &GtidState,
    ) -> Result<Option<String>, SourceError> {
        let logs = self.binary_logs(conn).await?;
        let Some(oldest) = logs.first() else {
            return Ok(None);
        };
        let before = self.gtid_list_of(conn, oldest).await?;
        Ok(before.is_after(gtid).then(|| oldest.clone()))
    }

    /// The GTID position at the start of `file`: MariaDB's Gtid_list event.
    async fn gtid_list_of(&self, conn: &mut Conn, file: &str) -> Result<GtidState, SourceError> {
        let rows: Vec<mysql_async::Row> = conn
            .query(format!(
                "SHOW BINLOG EVENTS IN '{}' LIMIT 10",
                file.replace('\'', "")
            ))
            .await
            .map_err(|e| SourceError::Other(format!("SHOW BINLOG EVENTS IN '{file}': {e}")))?;
        for r in rows {
            let kind: Option<String> = r.get("Event_type");
            if kind.as_deref() == Some("Gtid_list") {
                let info: String = r.get("Info").unwrap_or_default();
                let list = info.trim().trim_start_matches('[').trim_end_matches(']');
                return Ok(GtidState::parse(Some(list)));
            }
        }
        Ok(GtidState::default())
    }

    async fn binary_logs(&self, conn: &mut Conn) -> Result<Vec<String>, SourceError> {
        let rows: Vec<mysql_async::Row> = conn
            .query("SHOW BINARY LOGS")
            .await
            .map_err(|e| SourceError::Other(format!("SHOW BINARY LOGS: {e}")))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.get::<String, _>(0))
            .collect())
    }

    /// The stored position, checked against the server's binlogs, or the configured start.
    async fn start_position(
        &self,
        conn: &mut Conn,
        info: &preflight::ServerInfo,
    ) -> Result<BinlogPosition, SourceError> {
        let logs = self.binary_logs(conn).await?;
        if let Some(p) = self.store.load()? {
            let by_gtid =
                info.mariadb && GtidState::parse(p.gtid.as_deref()).mariadb_list().is_some();
            let purged = |oldest: &str| {
                SourceError::Fatal(format!(
                    "the stored binlog position {p} is no longer on the server {} (it keeps {}): \
                     the changes in between were purged and cannot be captured. To start again \
                     from CDC_BINLOG_START, {} and restart; keep binlogs longer \
                     (binlog_expire_logs_seconds / expire_logs_days) to avoid this",
                    self.server(),
                    match logs.last() {
                        Some(newest) => format!("{oldest} to {newest}"),
                        None => "no binlogs".to_owned(),
                    },
                    self.store.describe()
                ))
            };
            if by_gtid {
                // The oldest binlog starts with the GTIDs before it: a stored
                // GTID older than those needs a purged file.
                if let Some(oldest) = self
                    .gtid_purged(conn, &GtidState::parse(p.gtid.as_deref()))
                    .await?
                {
                    return Err(purged(&oldest));
                }
                info!(position = %p, "resuming from the stored GTID position");
                return Ok(p);
            }
            if !logs.contains(&p.file) {
                return Err(purged(logs.first().map_or("", String::as_str)));
            }
            info!(position = %p, "resuming from the stored binlog position");
            return Ok(p);
        }
        let gtid_var = if info.mariadb {
            "SELECT @@GLOBAL.gtid_binlog_pos"
        } else {
            "SELECT @@GLOBAL.gtid_executed"
        };
        let gtid: Option<String> = conn
            .query_first(gtid_var)
            .await
            .ok()
            .flatten()
            .filter(|g: &String| !g.is_empty());
        let p = match self.cfg.start {
            BinlogStart::Earliest => BinlogPosition {
                file: logs
                    .first()
                    .cloned()
                    .ok_or_else(|| SourceError::Other("the server has no binlog".into()))?,
                pos: 4,
                gtid: None,
            },
            BinlogStart::Current => {
                let row: Option<mysql_async::Row> = match conn
                    .query_first("SHOW MASTER STATUS")
                    .await
                {
                    Ok(r) => r,
                    // MySQL 8.4 renamed it.
                    Err(_) => conn
                        .query_first("SHOW BINARY LOG STATUS")
                        .await
                        .map_err(|e| SourceError::Other(format!("SHOW BINARY LOG STATUS: {e}")))?,
                };
                let row = row.ok_or_else(|| {
                    SourceError::Other("SHOW MASTER STATUS is empty: is log_bin on?".into())
                })?;
                BinlogPosition {
                    file: row.get(0).unwrap_or_default(),
                    pos: row.get(1).unwrap_or(4),
                    gtid,
                }
            }
        };
        info!(position = %p, start = ?self.cfg.start, "no stored binlog position: starting here");
        Ok(p)
    }

    /// Reads until shutdown or a connection error (`Ok(false)` means: reconnect).
    /// Reads one connection's worth of the binlog. `Ok(true)`: shutdown;
    /// `Ok(false)`: the connection is lost, reconnect from `st.resume`.
    async fn stream(
        &self,
        st: &mut ReadState,
        info: &preflight::ServerInfo,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let start = st.resume.clone();
        let (mut stream, mut schema_conn) = self.open_stream(st, info).await?;
        let mut schemas = SchemaCache::new(info.mariadb);
        loop {
            let event = match self.next_event(&mut stream, &start, shutdown).await? {
                Next::Event(e) => e,
                Next::Shutdown => return Ok(true),
                Next::Reconnect => return Ok(false),
            };
            let header = event.header();
            let log_pos = u64::from(header.log_pos());
            let timestamp = i64::from(header.timestamp());
            if header.event_type_raw() == MARIADB_GTID_EVENT {
                on_mariadb_gtid(st, event.data(), header.server_id());
                continue;
            }
            let data = match event.read_data() {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    warn!(error = %e, file = %st.file, pos = log_pos, "unreadable binlog event, reconnecting");
                    return Ok(false);
                }
            };
            if timestamp > 0 {
                let delay = (crate::clock::now_millis() / 1000 - timestamp).max(0);
                self.metrics.binlog_delay_seconds.set(delay as f64);
            }
            let at = At { log_pos, timestamp };
            match data {
                EventData::RotateEvent(r) => {
                    let next = rotate_name(r.name_raw(), log_pos == 0, &st.file);
                    self.on_rotate(st, next, r.position(), tx, shutdown).await?
                }
                EventData::HeartbeatEvent => self.metrics.binlog_delay_seconds.set(0.0),
                EventData::GtidEvent(g) => {
                    st.pending_gtid = Some(format!("{}:{}", uuid_text(&g.sid()), g.gno()));
                    st.in_transaction = true;
                }
                EventData::QueryEvent(q) => {
                    let (sql, schema) = (q.query(), q.schema());
                    self.on_query(st, &sql, &schema, at, &mut schemas, tx, shutdown)
                        .await?
                }
                EventData::XidEvent(_) => self.commit_point(st, log_pos, tx, shutdown).await?,
                EventData::TableMapEvent(tme) => {
                    self.on_table_map(st, &tme, &mut schemas, &mut schema_conn)
                        .await?
                }
                EventData::RowsEvent(rows) => {
                    let decoded = self.on_rows(st, &rows, at, tx, shutdown).await?;
                    if !decoded {
                        return Ok(false);
                    }
                }
                _ => {}
            }
            self.metrics.binlog_position.set(log_pos as i64);
        }
    }

    /// Connects as a replica from `st.resume` (by GTID on MariaDB when it
    /// has one), plus a second connection for `information_schema`.
    async fn open_stream(
        &self,
        st: &mut ReadState,
        info: &preflight::ServerInfo,
    ) -> Result<(mysql_async::BinlogStream, Conn), SourceError> {
        let mut conn = self.connect().await?;
        let mut schema_conn = self.connect().await?;
        // Heartbeats every second while the server has nothing to send.
        conn.query_drop("SET @master_heartbeat_period = 1000000000")
            .await
            .map_err(|e| SourceError::Other(e.to_string()))?;
        if info.mariadb {
            // Ask for MariaDB's GTID events (capability 4 = GTID-aware replica).
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(|e| SourceError::Other(e.to_string()))?;
        }
        let start = st.resume.clone();
        st.file = start.file.clone();
        st.in_transaction = false;
        st.tables.clear();
        st.gtid = GtidState::parse(start.gtid.as_deref());
        // MariaDB resumes by GTID when it has one: it finds the transaction
        // after it in whatever file holds it, so a failover to another
        // server with the same history keeps the place.
        let by_gtid = info.mariadb && st.gtid.mariadb_list().is_some();
        if by_gtid {
            if let Some(oldest) = self.gtid_purged(&mut schema_conn, &st.gtid).await? {
                return Err(SourceError::Fatal(format!(
                    "the binlog after {start} was purged while capture was away (the oldest \
                     binlog, {oldest}, starts later): those changes cannot be captured. To start \
                     again from CDC_BINLOG_START, {} and restart",
                    self.store.describe()
                )));
            }
        }
        let request = if let Some(list) = st.gtid.mariadb_list().filter(|_| by_gtid) {
            conn.query_drop(format!("SET @slave_connect_state = '{list}'"))
                .await
                .map_err(|e| SourceError::Other(format!("resuming at GTID {list}: {e}")))?;
            conn.query_drop("SET @slave_gtid_strict_mode = 0")
                .await
                .map_err(|e| SourceError::Other(e.to_string()))?;
            BinlogStreamRequest::new(self.cfg.server_id)
        } else {
            BinlogStreamRequest::new(self.cfg.server_id)
                .with_filename(start.file.as_bytes())
                .with_pos(start.pos)
        };
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, conn.get_binlog_stream(request)).await {
                Ok(r) => r.map_err(|e| {
                    SourceError::Other(format!("requesting the binlog at {start}: {e}"))
                })?,
                Err(_) => {
                    return Err(SourceError::Other(format!(
                        "requesting the binlog at {start}: no answer within {CONNECT_TIMEOUT:?}"
                    )))
                }
            };
        debug!(position = %start, by_gtid, "binlog stream open");
        Ok((stream, schema_conn))
    }

    /// The next event, or why there is none: shutdown, or a lost connection
    /// (silence, close, error). A purged binlog is fatal.
    async fn next_event(
        &self,
        stream: &mut mysql_async::BinlogStream,
        start: &BinlogPosition,
        shutdown: &CancellationToken,
    ) -> Result<Next, SourceError> {
        let next = tokio::select! {
            n = tokio::time::timeout(SILENCE_LIMIT, stream.next()) => n,
            _ = shutdown.cancelled() => return Ok(Next::Shutdown),
        };
        match next {
            Err(_) => {
                warn!(silence = ?SILENCE_LIMIT, "binlog stream silent, reconnecting");
                Ok(Next::Reconnect)
            }
            Ok(None) => {
                warn!("binlog stream closed by the server, reconnecting");
                Ok(Next::Reconnect)
            }
            Ok(Some(Err(e))) => {
                let text = e.to_string();
                // 1236: the requested binlog is gone (purged while we were away).
                if text.contains("1236") {
                    return Err(SourceError::Fatal(format!(
                        "the server cannot send the binlog from {start}: {text} The changes since were purged and cannot be captured: to start again from CDC_BINLOG_START, {} and restart; keep binlogs longer (binlog_expire_logs_seconds / expire_logs_days) to avoid this",
                        self.store.describe()
                    )));
                }
                warn!(error = %text, "binlog stream error, reconnecting");
                Ok(Next::Reconnect)
            }
            Ok(Some(Ok(e))) => Ok(Next::Event(e)),
        }
    }

    /// A new binlog file; outside a transaction its start is a resume point.
    async fn on_rotate(
        &self,
        st: &mut ReadState,
        file: String,
        pos: u64,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        st.file = file;
        self.metrics
            .binlog_file
            .set(BinlogPosition::file_sequence(&st.file) as i64);
        if st.in_transaction {
            return Ok(());
        }
        let at = BinlogPosition {
            file: st.file.clone(),
            pos,
            gtid: st.gtid.text(),
        };
        self.boundary(st, at, tx, shutdown).await
    }

    /// A statement: transaction control, or DDL (an event of its own when
    /// its table is captured, and always a commit point).
    #[allow(clippy::too_many_arguments)] // One handler per event kind; the state it needs is spelled out.
    async fn on_query(
        &self,
        st: &mut ReadState,
        sql: &str,
        schema: &str,
        at: At,
        schemas: &mut SchemaCache,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let verb = first_word(sql);
        match verb.as_str() {
            "BEGIN" | "XA" | "SAVEPOINT" => {
                st.in_transaction = true;
                return Ok(());
            }
            "COMMIT" | "ROLLBACK" => return self.commit_point(st, at.log_pos, tx, shutdown).await,
            _ => {}
        }
        if let Some((database, table)) = ddl_target(sql, schema) {
            schemas.invalidate(Some(&database));
            let accepted = if table.is_empty() {
                self.cfg.tables.accepts_database(&database)
            } else {
                self.cfg.tables.accepts(&database, &table)
            };
            if accepted {
                let event = ChangeEvent::ddl(
                    database,
                    table,
                    sql.to_owned(),
                    at.timestamp * 1000,
                    Some(BinlogPosition::change_number(&st.file, at.log_pos, 0)),
                    SourcePosition::Binlog {
                        file: Arc::from(st.file.as_str()),
                        pos: at.log_pos,
                    },
                );
                self.send_events(st, vec![(event, None)], tx, shutdown)
                    .await?;
            }
        } else {
            schemas.invalidate(None);
        }
        // A DDL commits implicitly; other statements outside a transaction
        // are their own transaction too.
        if !st.in_transaction || ddl_verb(&verb) {
            self.commit_point(st, at.log_pos, tx, shutdown).await?;
        }
        Ok(())
    }

    /// Describes a table for the rows events that follow (captured tables only).
    async fn on_table_map(
        &self,
        st: &mut ReadState,
        tme: &TableMapEvent<'_>,
        schemas: &mut SchemaCache,
        schema_conn: &mut Conn,
    ) -> Result<(), SourceError> {
        let database = tme.database_name();
        let table = tme.table_name();
        let mapped = if self.cfg.tables.accepts(&database, &table) {
            Some(Arc::new(self.map_table(tme, schemas, schema_conn).await?))
        } else {
            None
        };
        st.tables.insert(tme.table_id(), mapped);
        Ok(())
    }

    /// The rows of a captured table, one event each; `Ok(false)` when the
    /// event cannot be decoded and the connection is to be re-established.
    async fn on_rows(
        &self,
        st: &mut ReadState,
        rows: &mysql_async::binlog::events::RowsEventData<'_>,
        at: At,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let Some(Some(mapped)) = st.tables.get(&rows.table_id()).cloned() else {
            return Ok(true);
        };
        let events = match rows_to_events(rows, &mapped, &st.file, at.log_pos, at.timestamp) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, file = %st.file, pos = at.log_pos, table = %mapped.schema.table, "undecodable rows event, reconnecting");
                return Ok(false);
            }
        };
        self.send_events(st, events, tx, shutdown).await?;
        Ok(true)
    }

    async fn map_table(
        &self,
        tme: &TableMapEvent<'_>,
        cache: &mut SchemaCache,
        conn: &mut Conn,
    ) -> Result<MappedTable, SourceError> {
        let n = tme.columns_count() as usize;
        let mariadb = cache.mariadb;
        let collations = cache.collations(conn).await.map_err(|e| {
            SourceError::Other(format!("reading information_schema.COLLATIONS: {e}"))
        })?;
        let schema = match TableSchema::from_table_map(tme, collations, mariadb) {
            // MariaDB's INET4, INET6 and UUID look like BINARY(4)/BINARY(16)
            // in the table map; only information_schema names them.
            Some(mut s) if mariadb && s.columns.iter().any(|c| matches!(c.pad_to, 4 | 16)) => {
                let named = cache.load(conn, &s.database, &s.table).await.map_err(|e| {
                    SourceError::Other(format!(
                        "reading the columns of {}.{} from information_schema: {e}",
                        s.database, s.table
                    ))
                })?;
                s.name_binary_types(&named);
                Arc::new(s)
            }
            Some(s) => Arc::new(s),
            None => {
                let database = tme.database_name();
                let table = tme.table_name();
                let s = cache.load(conn, &database, &table).await.map_err(|e| {
                    SourceError::Other(format!(
                        "reading the columns of {database}.{table} from information_schema: {e}"
                    ))
                })?;
                if s.columns.len() != n {
                    warn!(database = %database, table = %table, binlog_columns = n, schema_columns = s.columns.len(),
                        "the table changed since this change was made; set binlog_row_metadata=FULL for exact column names");
                }
                s
            }
        };
        let types = (0..n)
            .map(|i| {
                let t = tme
                    .get_column_type(i)
                    .ok()
                    .flatten()
                    .unwrap_or(ColumnType::MYSQL_TYPE_NULL);
                (
                    t,
                    convert::fsp(t, tme.get_column_metadata(i).unwrap_or(&[])),
                )
            })
            .collect();
        let mysql_types = Arc::new(Row::from_values(schema.columns.iter().map(|c| {
            (
                c.name.as_str(),
                serde_json::Value::from(c.mysql_type.clone()),
            )
        })));
        let decoding = decoding_table_map(tme).map_err(|e| {
            SourceError::Other(format!(
                "re-reading the table map of {}.{}: {e}",
                schema.database, schema.table
            ))
        })?;
        Ok(MappedTable {
            schema,
            types,
            mysql_types,
            decoding,
        })
    }

    /// A transaction ended at `log_pos`: a resume point.
    async fn commit_point(
        &self,
        st: &mut ReadState,
        log_pos: u64,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        st.in_transaction = false;
        if let Some(g) = st.pending_gtid.take() {
            st.gtid.commit(&g);
        }
        let at = BinlogPosition {
            file: st.file.clone(),
            pos: log_pos,
            gtid: st.gtid.text(),
        };
        self.boundary(st, at, tx, shutdown).await
    }

    async fn boundary(
        &self,
        st: &mut ReadState,
        at: BinlogPosition,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        if let Ok(mut b) = self.boundaries.lock() {
            b.record(st.seq, at.clone());
        }
        st.resume = at.clone();
        if self.emit_checkpoints {
            let envelope = Envelope {
                events: Vec::new(),
                ack: None,
                origin: self.origin(st.seq),
                undecodable: None,
                checkpoint: Some(Checkpoint::Binlog(at)),
                size: 0,
                budget: None,
            };
            self.send(envelope, tx, shutdown).await;
        }
        Ok(())
    }

    fn origin(&self, seq: i64) -> Origin {
        Origin {
            topic: self.topic.clone(),
            partition: 0,
            offset: seq,
            key: None,
            payload: Bytes::new(),
        }
    }

    async fn send_events(
        &self,
        st: &mut ReadState,
        events: Vec<(ChangeEvent, Option<ValueError>)>,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        // One envelope per row, as TiCDC sends one message per row: the
        // channel's capacity then bounds rows in memory, whatever the size
        // of the server's rows events.
        for (e, error) in events {
            self.metrics
                .binlog_events
                .with_label_values(&[&e.database, &e.table, e.op.as_str()])
                .inc();
            // No bytes of its own: the decoded row is what is kept, sized,
            // and dead-lettered (as canal-json) if it must be.
            let size = e.estimated_bytes();
            let seq = st.seq;
            st.seq += 1;
            let ack = self
                .tracker
                .lock()
                .ok()
                .and_then(|mut t| t.read(&self.topic, st.partition, seq, 1, e.commit_time_ms));
            // A value that is not text of its column's character set is
            // never written as mojibake: the row goes to the dead-letter
            // queue (its payload has that value null), counted, and the
            // stream goes on past it like past any dead-lettered message.
            let (events, undecodable) = match error {
                None => (vec![e], None),
                Some(err) => {
                    // Counted as the Kafka source counts undecodable messages;
                    // the dead-letter queue logs it with the error text.
                    self.metrics.decode_errors.inc();
                    debug!(database = %err.database, table = %err.table, column = %err.column,
                        file = %st.file, error = %err.error, "binlog value not decodable");
                    let undecodable = Undecodable {
                        reason: "charset",
                        error: err.to_string(),
                        row: Some(Box::new(e)),
                    };
                    (Vec::new(), Some(undecodable))
                }
            };
            let envelope = Envelope {
                events,
                ack,
                origin: Origin {
                    partition: st.partition,
                    ..self.origin(seq)
                },
                undecodable,
                checkpoint: None,
                size,
                budget: None,
            };
            self.send(envelope, tx, shutdown).await;
        }
        Ok(())
    }

    /// Waits for room in the channel (backpressure) unless shutting down.
    async fn send(&self, envelope: Envelope, tx: &EnvelopeTx, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tx.send(envelope) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

impl BinlogSource {
    /// Connects (waiting for the server), then streams until `shutdown`,
    /// reconnecting from the last resume point.
    /// `CDC_BINLOG_HA=kafka`: stands by until elected, captures from the
    /// group's stored position until shutdown or until leadership is lost
    /// (then stands by again). Losing it drops the capture at once: no
    /// event is read and no position written after that.
    async fn lead(
        &self,
        ha: &Arc<Leadership>,
        loaded: &Mutex<Option<BinlogPosition>>,
        tx: EnvelopeTx,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        ha.start().await?;
        loop {
            ha.set_role(false);
            info!(instance = %ha.instance, "standing by for the binlog capture");
            if !ha.elected(&shutdown).await {
                return Ok(());
            }
            let elected = Instant::now();
            let position = {
                let ha = ha.clone();
                tokio::task::spawn_blocking(move || ha.load())
                    .await
                    .map_err(|e| SourceError::Other(format!("reading the position: {e}")))?
            };
            let position = match position {
                Ok(p) => p,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    warn!(error = %e, "cannot read the binlog position from Kafka; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Stamped at once with this instance's name: the record says who
            // captures (for /readyz) before anything new is stored.
            if let Some(p) = position.clone() {
                let ha = ha.clone();
                match tokio::task::spawn_blocking(move || ha.store(&p)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot stamp the binlog position"),
                    Err(e) => warn!(error = %e, "cannot stamp the binlog position"),
                }
            }
            if let Ok(mut l) = loaded.lock() {
                *l = position;
            }
            ha.set_role(true);
            info!(
                instance = %ha.instance,
                took_ms = elected.elapsed().as_millis() as u64,
                "elected: capturing the binlog"
            );
            let term = shutdown.child_token();
            let ended = tokio::select! {
                r = self.capture(tx.clone(), term.clone()) => Some(r),
                () = ha.lost() => None,
            };
            term.cancel();
            match ended {
                Some(r) => return r,
                None => {
                    warn!(
                        instance = %ha.instance,
                        "lost the binlog capture (partition revoked or session expired): standing by"
                    );
                    // What this term read is no longer ours to acknowledge.
                    if let Ok(mut t) = self.tracker.lock() {
                        t.revoke(STREAM, 0);
                    }
                    if let Ok(mut s) = self.stored.lock() {
                        *s = None;
                    }
                    if let Ok(mut b) = self.boundaries.lock() {
                        *b = Boundaries::default();
                    }
                }
            }
        }
    }

    async fn capture(
        &self,
        tx: EnvelopeTx,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        // A server that is down or restarting is waited for, with backoff;
        // only what retrying cannot fix stops the source.
        let mut attempt: u32 = 0;
        let (info, start) = loop {
            let setup = async {
                let mut conn = self.connect().await?;
                let info = self.preflight(&mut conn).await?;
                let start = match self.store.snapshot() {
                    Some(progress) => Start::Snapshot(Some(progress)),
                    None if self.cfg.snapshot == SnapshotMode::Initial
                        && self.store.load()?.is_none() =>
                    {
                        Start::Snapshot(None)
                    }
                    None => Start::Stream(self.start_position(&mut conn, &info).await?),
                };
                let _ = conn.disconnect().await;
                Ok::<_, SourceError>((info, start))
            };
            match setup.await {
                Ok(ok) => break ok,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    attempt += 1;
                    self.metrics.binlog_reconnects.inc();
                    warn!(error = %e, attempt, "MySQL not reachable yet, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT.delay(attempt)) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        };
        if let Ok(mut t) = self.tracker.lock() {
            t.assign(STREAM, 0);
        }
        let mut st = ReadState::new(0);
        let start = match start {
            Start::Stream(p) => {
                if let Ok(mut b) = self.boundaries.lock() {
                    b.record(0, p.clone());
                }
                if let Ok(mut s) = self.stored.lock() {
                    *s = Some(p.clone());
                }
                p
            }
            Start::Snapshot(stored) => {
                let Some(p) = self
                    .snapshot(&info, stored, &mut st, &tx, &shutdown)
                    .await?
                else {
                    return Ok(());
                };
                // Stored once every snapshot row is: the stream's position
                // then supersedes the snapshot's progress.
                self.boundary(&mut st, p.clone(), &tx, &shutdown).await?;
                p
            }
        };
        info!(server = %self.server(), version = %info.version, position = %start, "capturing the binlog");
        st.file = start.file.clone();
        st.resume = start.clone();
        st.gtid = GtidState::parse(start.gtid.as_deref());
        tokio::select! {
            r = self.stream_on(&mut st, &info, &tx, &shutdown) => r,
            () = self.serve_snapshots(&info, &tx, &shutdown) => Ok(()),
        }
    }

    /// Streams from `st`'s resume point until `shutdown`, reconnecting.
    async fn stream_on(
        &self,
        st: &mut ReadState,
        info: &ServerInfo,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut attempt: u32 = 0;
        loop {
            let before = st.seq;
            match self.stream(st, info, tx, shutdown).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => warn!(error = %e, "binlog connection failed"),
            }
            if st.seq > before {
                attempt = 0;
            }
            attempt += 1;
            self.metrics.binlog_reconnects.inc();
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT.delay(attempt)) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            info!(position = %st.resume, attempt, "reconnecting to the binlog");
        }
    }

    /// Serves on-demand snapshot requests one at a time, beside the
    /// stream, until `shutdown`. Their rows are read on a tracker partition
    /// of their own, which carries no resume point.
    async fn serve_snapshots(
        &self,
        info: &ServerInfo,
        tx: &EnvelopeTx,
        shutdown: &CancellationToken,
    ) {
        let Ok(mut requests) = self.requests.try_lock() else {
            // Another capture term still serves them (it is ending).
            return std::future::pending().await;
        };
        let mut st = ReadState::new(ON_DEMAND_PARTITION);
        loop {
            let request = tokio::select! {
                r = requests.recv() => r,
                _ = shutdown.cancelled() => return,
            };
            let Some(request) = request else {
                return std::future::pending().await;
            };
            if let Ok(mut t) = self.tracker.lock() {
                t.assign(STREAM, ON_DEMAND_PARTITION);
            }
            st.seq = 0;
            if let Err(e) = self
                .snapshot_on_demand(info, &request.tables, request.reply, &mut st, tx, shutdown)
                .await
            {
                warn!(error = %e, "on-demand snapshot failed; ask for it again");
            }
        }
    }

    async fn ping(&self) -> Result<(), SourceError> {
        let mut conn = self.connect().await?;
        conn.ping()
            .await
            .map_err(|e| SourceError::Other(format!("MySQL at {}: {e}", self.server())))?;
        let _ = conn.disconnect().await;
        Ok(())
    }
}

impl Source for BinlogSource {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn run(
        &self,
        tx: EnvelopeTx,
        shutdown: CancellationToken,
    ) -> BoxFuture<'_, Result<(), SourceError>> {
        match &self.store {
            PositionStore::Kafka(ha, loaded) => Box::pin(self.lead(ha, loaded, tx, shutdown)),
            _ => Box::pin(self.capture(tx, shutdown)),
        }
    }

    fn check(&self) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(self.ping())
    }

    fn snapshot_control(&self) -> Option<SnapshotControl> {
        Some(self.control.clone())
    }

    fn fence(&self) -> Option<Fence> {
        let PositionStore::Kafka(ha, _) = &self.store else {
            return None;
        };
        let ha = ha.clone();
        Some(Fence::new(move || ha.may_publish()))
    }

    fn status(&self) -> BoxFuture<'_, Option<serde_json::Value>> {
        Box::pin(async {
            let PositionStore::Kafka(ha, _) = &self.store else {
                return None;
            };
            let ha = ha.clone();
            tokio::task::spawn_blocking(move || ha.status()).await.ok()
        })
    }

    fn close(&self) {
        if let PositionStore::Kafka(ha, _) = &self.store {
            ha.leave();
        }
    }

    fn commit(&self, _sync: bool) {
        let committable = match self.tracker.lock() {
            Ok(t) => t
                .all_committable()
                .into_iter()
                .find(|(topic, p, _)| topic.as_ref() == STREAM && *p == 0)
                .map(|(_, _, c)| c),
            Err(_) => return,
        };
        let Some(c) = committable else { return };
        let Some(at) = self
            .boundaries
            .lock()
            .ok()
            .and_then(|mut b| b.resume_point(c))
        else {
            return;
        };
        let Ok(mut stored) = self.stored.lock() else {
            return;
        };
        if stored.as_ref() == Some(&at) {
            return;
        }
        match &self.store {
            PositionStore::File(f) => match f.store(&at) {
                Ok(()) => {
                    self.metrics.commits.with_label_values(&["ok"]).inc();
                    *stored = Some(at);
                }
                Err(e) => {
                    self.metrics.commits.with_label_values(&["error"]).inc();
                    warn!(error = %e, path = %f.path().display(), "storing the binlog position failed");
                }
            },
            // The sink stored it with the events.
            PositionStore::Sink(..) => *stored = Some(at),
            PositionStore::Kafka(ha, _) => match ha.store(&at) {
                Ok(()) => {
                    self.metrics.commits.with_label_values(&["ok"]).inc();
                    *stored = Some(at);
                }
                Err(e) => {
                    self.metrics.commits.with_label_values(&["error"]).inc();
                    warn!(error = %e, "storing the binlog position failed");
                }
            },
        }
    }
}

/// Between reconnects: 0.4 s, doubling up to 30 s.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(30));
