//! Tables, indexes and connection settings of `events.db`.
//!
//! - `events`: one row per stored change. `seq` is the arrival order
//!   (AUTOINCREMENT, so a seq is never reused even after retention empties
//!   the table and cursors stay valid); `doc` is the Elasticsearch document,
//!   byte for byte; `doc_id` the deterministic id as 16 bytes, UNIQUE, so a
//!   replay is a no-op. Each filter column has an index ending in `seq`, so
//!   "newest first after this cursor" is one index range read backwards.
//!   `ingested_ms` has no index of its own: arrival order is `seq` order,
//!   and the events/s chart reads `rate`.
//! - `events_fts`: FTS5 over the row values and the DDL statement, keyed by
//!   `seq`. Contentless: the text can be derived from `doc` again, and
//!   retention does so to write FTS5 `delete` markers, which the normal
//!   incremental merges absorb. (`contentless_delete` was tried: its
//!   tombstone rebuilds and delete-merges stalled writers for seconds at a
//!   million events.) No column sizes: nothing ranks by bm25.
//! - `zones`: the commit-time range of each block of `ZONE_ROWS` seqs (a
//!   block-range index): commit time follows arrival order only roughly, so
//!   a time filter reads the blocks whose range meets it instead of either
//!   sorting a wide time range or scanning the table from the top.
//! - `counts`: events and document bytes by (database, table, op), kept in
//!   the write transaction and by the delete trigger, so `/api/stats` and
//!   the size limit never scan `events`.
//! - `rate`: events by ingest second and table, for the events/s chart;
//!   kept in the write transaction and by the delete trigger like `counts`,
//!   so it has at most one row per stored event and any window can be read.
//! - `checkpoints`: the source position of each stream, written in the same
//!   transaction as the events it covers.
//! - `state` (version 2): the current state of each captured row, unique
//!   by `id` (`RowKey::id`, 16 bytes; the database, table and key values are
//!   kept beside it); written in the same transaction as the events, only
//!   by a change whose version is not lower than the stored one (see
//!   `sink::state`). A rowid table with a unique index, not a WITHOUT ROWID
//!   table keyed by the text: rows are a few hundred bytes, and a new row
//!   appends instead of splitting pages of big keys (measured: a third
//!   faster). A delete leaves a tombstone (`data` NULL, `deleted_ms` set)
//!   that upkeep removes after `CDC_STATE_TOMBSTONE_RETENTION`.
//!   `events.row_key` (the high 64 bits of the row's id, indexed; 8 bytes
//!   an entry rather than 16) finds a row's history.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Rows per `zones` block; a time-filtered page reads whole blocks.
pub const ZONE_BITS: u32 = 12;

/// Bumped on any change below; an unknown version is refused, not guessed at.
const VERSION: i64 = 2;

const DDL: &str = r#"
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id         BLOB    NOT NULL UNIQUE,
    db             TEXT    NOT NULL,
    tbl            TEXT    NOT NULL,
    op             TEXT    NOT NULL,
    commit_time_ms INTEGER NOT NULL,
    ingested_ms    INTEGER NOT NULL,
    bytes          INTEGER NOT NULL,
    doc            TEXT    NOT NULL
);
CREATE INDEX events_db ON events (db, seq);
CREATE INDEX events_tbl ON events (tbl, seq);
CREATE INDEX events_op ON events (op, seq);
-- Retention by age and narrow time filters; the rowid (seq) is implied.
CREATE INDEX events_commit_time ON events (commit_time_ms);

CREATE VIRTUAL TABLE events_fts USING fts5 (body, content = '', columnsize = 0);

CREATE TABLE zones (
    zone          INTEGER PRIMARY KEY,
    min_commit_ms INTEGER NOT NULL,
    max_commit_ms INTEGER NOT NULL
);

CREATE TABLE counts (
    db     TEXT    NOT NULL,
    tbl    TEXT    NOT NULL,
    op     TEXT    NOT NULL,
    events INTEGER NOT NULL,
    bytes  INTEGER NOT NULL,
    PRIMARY KEY (db, tbl, op)
) WITHOUT ROWID;

CREATE TABLE rate (
    second INTEGER NOT NULL,
    db     TEXT    NOT NULL,
    tbl    TEXT    NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (second, db, tbl)
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    stream   TEXT NOT NULL PRIMARY KEY,
    position TEXT NOT NULL
) WITHOUT ROWID;

-- Whatever deletes an event keeps the counts and the rate in step, in the
-- same transaction. The text index is retention's job (it needs the text,
-- which SQL cannot derive); an entry left behind matches no event, as
-- pages join on `events`, and seqs are never reused. Zones are left wide:
-- a stale range only costs a block read.
CREATE TRIGGER events_deleted AFTER DELETE ON events BEGIN
    UPDATE counts SET events = events - 1, bytes = bytes - old.bytes
        WHERE db = old.db AND tbl = old.tbl AND op = old.op;
    UPDATE rate SET events = events - 1
        WHERE second = old.ingested_ms / 1000 AND db = old.db AND tbl = old.tbl;
    DELETE FROM rate
        WHERE second = old.ingested_ms / 1000 AND db = old.db AND tbl = old.tbl AND events <= 0;
END;
"#;

/// From version 1 to 2: the current state and each event's row.
const TO_2: &str = r#"
ALTER TABLE events ADD COLUMN row_key INTEGER;
CREATE INDEX events_row ON events (row_key) WHERE row_key IS NOT NULL;

CREATE TABLE state (
    id             BLOB    NOT NULL UNIQUE,
    db             TEXT    NOT NULL,
    tbl            TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    op             TEXT    NOT NULL,
    commit_time_ms INTEGER NOT NULL,
    event_id       BLOB    NOT NULL,
    pk             TEXT    NOT NULL,
    data           TEXT,
    deleted_ms     INTEGER
);
CREATE INDEX state_tombstones ON state (deleted_ms) WHERE deleted_ms IS NOT NULL;
"#;

/// Opens the writer connection and creates or checks the schema.
pub fn open_writer(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // WAL: readers see the last commit and never block the writer.
    // synchronous=FULL: a commit is on disk before the source position it
    // carries is acknowledged upstream (a Kafka offset commit, say).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The doc_id index takes random inserts; keep it in memory (64 MiB).
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.set_prepared_statement_cache_capacity(32);
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    match version {
        0 => {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {DDL} {TO_2} PRAGMA user_version = {VERSION}; COMMIT;"
            ))?;
        }
        1 => {
            // Events stored before have no row key: a row's history starts
            // with this version; its state with the next change.
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {TO_2} PRAGMA user_version = {VERSION}; COMMIT;"
            ))?;
        }
        VERSION => {}
        other => {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!(
                    "schema version {other}, this build knows {VERSION}: written by another version"
                )),
            ))
        }
    }
    Ok(conn)
}

/// Opens one more reader connection (the schema exists already).
pub fn open_reader(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "cache_size", -16384)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_created_once_and_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        // Reopening must not try to create the tables again.
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = open_writer(&path, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[test]
    fn a_version_1_store_is_migrated_keeping_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!("{DDL} PRAGMA user_version = 1;"))
            .unwrap();
        conn.execute(
            "INSERT INTO events (doc_id, db, tbl, op, commit_time_ms, ingested_ms, bytes, doc)
             VALUES (x'00', 'd', 't', 'insert', 1, 1, 2, '{}')",
            [],
        )
        .unwrap();
        drop(conn);
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        let (n, key): (i64, Option<Vec<u8>>) = conn
            .query_row("SELECT count(*), max(row_key) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, key), (1, None));
        conn.execute_batch("SELECT * FROM state").unwrap();
    }
}
