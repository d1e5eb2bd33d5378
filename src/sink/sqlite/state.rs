//! The store's current state (table `state`): written with the events, read
//! by `/api/rows`, tombstones purged by upkeep. The rules are `sink::state`'s.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::clock::rfc3339_millis;
use crate::event::ChangeEvent;
use crate::sink::query::EventPage;
use crate::sink::state::{self, RowKey, RowState, StateChange};
use crate::sink::{StatePage, StatePageRequest};

use super::query::with_id;

/// One state write, encoded before the transaction.
pub struct StateWrite {
    id: [u8; 16],
    db: String,
    tbl: String,
    key: String,
    version: i64,
    op: &'static str,
    commit_time_ms: i64,
    event_id: [u8; 16],
    pk: String,
    /// `None` for a delete.
    data: Option<String>,
}

/// A statement's clearing of whole tables (`sink::state::cleared`),
/// encoded before the transaction.
pub struct ClearWrite {
    db: String,
    /// `None`: every table of `db`.
    tbl: Option<String>,
    version: i64,
    commit_time_ms: i64,
    event_id: [u8; 16],
}

/// What `event` clears: nothing but for `TRUNCATE` and `DROP` statements.
pub fn clears_of(event: &ChangeEvent, event_id: [u8; 16]) -> Vec<ClearWrite> {
    state::cleared(event)
        .into_iter()
        .map(|c| ClearWrite {
            db: c.database,
            tbl: c.table,
            version: event.version() as i64,
            commit_time_ms: event.commit_time_ms,
            event_id,
        })
        .collect()
}

/// Turns every row of the cleared tables whose version is below the
/// statement's into a tombstone at the statement's version; rows changed
/// after it (a higher version) stay. A scan of the state: statements that
/// clear tables are rare.
pub fn clear(tx: &Transaction<'_>, clears: &[ClearWrite], now_ms: i64) -> rusqlite::Result<()> {
    for c in clears {
        tx.prepare_cached(
            "UPDATE state SET version = ?3, op = 'ddl', commit_time_ms = ?4, event_id = ?5,
                 data = NULL, deleted_ms = COALESCE(deleted_ms, ?6)
             WHERE db = ?1 AND (?2 IS NULL OR tbl = ?2) AND version < ?3",
        )?
        .execute(params![
            c.db,
            c.tbl,
            c.version,
            c.commit_time_ms,
            c.event_id,
            now_ms
        ])?;
    }
    Ok(())
}

/// The state writes of `event` and the row key its history is filed under
/// (the key it sets, or deletes); nothing for DDL and reduced messages.
pub fn writes_of(event: &ChangeEvent, event_id: [u8; 16]) -> (Option<i64>, Vec<StateWrite>) {
    let changes = state::changes(event);
    let row_key = changes.last().map(|c| history_key(c.key()));
    let version = event.version() as i64;
    let writes = changes
        .into_iter()
        .map(|c| {
            let (key, pk, data) = match c {
                StateChange::Set { key, pk, data } => (key, pk, Some(data)),
                StateChange::Delete { key, pk } => (key, pk, None),
            };
            // Serialising a Row cannot fail: keys are strings, values JSON.
            let json = |r| serde_json::to_string(r).expect("row serialises");
            StateWrite {
                id: key.id().0.to_be_bytes(),
                db: key.database,
                tbl: key.table,
                key: key.values,
                version,
                op: event.op.as_str(),
                commit_time_ms: event.commit_time_ms,
                event_id,
                pk: json(pk),
                data: data.map(json),
            }
        })
        .collect();
    (row_key, writes)
}

/// Applies `writes` in order: each only over a state of a version not above its own.
pub fn apply(tx: &Transaction<'_>, writes: &[StateWrite], now_ms: i64) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO state (id, db, tbl, key, version, op, commit_time_ms, event_id, pk, data, deleted_ms)
         VALUES (?11, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET
             version = excluded.version, op = excluded.op,
             commit_time_ms = excluded.commit_time_ms, event_id = excluded.event_id,
             pk = excluded.pk, data = excluded.data, deleted_ms = excluded.deleted_ms
         WHERE excluded.version >= state.version",
    )?;
    for w in writes {
        upsert.execute(params![
            w.db,
            w.tbl,
            w.key,
            w.version,
            w.op,
            w.commit_time_ms,
            w.event_id,
            w.pk,
            w.data,
            w.data.is_none().then_some(now_ms),
            w.id,
        ])?;
    }
    Ok(())
}

/// The state of `key`, a tombstone included.
pub fn row(conn: &Connection, key: &RowKey) -> rusqlite::Result<Option<RowState>> {
    conn.prepare_cached(
        "SELECT version, op, commit_time_ms, event_id, pk, data FROM state
         WHERE id = ?4 AND db = ?1 AND tbl = ?2 AND key = ?3",
    )?
    .query_row(
        params![
            key.database,
            key.table,
            key.values,
            key.id().0.to_be_bytes()
        ],
        |r| row_state(&key.database, &key.table, r),
    )
    .optional()
}

/// The events index's key of a row: the high 64 bits of its id.
fn history_key(key: &RowKey) -> i64 {
    (key.id().0 >> 64) as u64 as i64
}

/// Up to `limit` live rows of `database.table` after the cursor `after`, in
/// storage order, and the cursor of the next page (`None` at the end). A
/// scan of the state from the cursor on: reconcile reads a whole table.
pub fn page(conn: &Connection, page: &StatePageRequest) -> rusqlite::Result<StatePage> {
    let StatePageRequest {
        database,
        table,
        cursor: after,
        limit,
    } = page;
    let limit = *limit;
    let mut stmt = conn.prepare_cached(
        "SELECT version, op, commit_time_ms, event_id, pk, data, key, rowid FROM state
         WHERE rowid > ?3 AND db = ?1 AND tbl = ?2 AND data IS NOT NULL
         ORDER BY rowid LIMIT ?4",
    )?;
    let after: i64 = after.as_deref().and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut last = None;
    let rows = stmt
        .query_map(params![database, table, after, limit as i64], |r| {
            last = Some(r.get::<_, i64>(7)?.to_string());
            Ok((r.get::<_, String>(6)?, row_state(database, table, r)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next = if rows.len() == limit { last } else { None };
    Ok((rows, next))
}

/// A `state` row (version, op, commit_time_ms, event_id, pk, data) as a `RowState`.
fn row_state(database: &str, table: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<RowState> {
    let json = |text: Option<String>| {
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let data: Option<String> = r.get(5)?;
    let event_id: Vec<u8> = r.get(3)?;
    Ok(RowState {
        database: database.to_owned(),
        table: table.to_owned(),
        pk: json(r.get(4)?),
        deleted: data.is_none(),
        data: json(data),
        op: r.get(1)?,
        version: r.get::<_, i64>(0)? as u64,
        changed_at: rfc3339_millis(r.get(2)?),
        event_id: hex(&event_id),
    })
}

/// The last `limit` stored events of `key`'s row, oldest first by version
/// (`commit_ts`), then arrival.
pub fn history(conn: &Connection, key: &RowKey, limit: usize) -> rusqlite::Result<EventPage> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id, doc, coalesce(json_extract(doc, '$.commit_ts'), 0) AS v FROM events
         WHERE row_key = ?1 AND db = ?3 AND tbl = ?4 ORDER BY v DESC, seq DESC LIMIT ?2",
    )?;
    let mut events = stmt
        .query_map(
            params![history_key(key), limit as i64, key.database, key.table],
            |r| {
                let id: Vec<u8> = r.get(0)?;
                let doc: String = r.get(1)?;
                with_id(&id, &doc)
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    events.reverse();
    Ok(EventPage {
        events,
        next_cursor: None,
    })
}

/// Deletes up to `chunk` tombstones set before `before_ms`; returns how many.
pub fn purge_tombstones(
    conn: &Connection,
    before_ms: i64,
    chunk: usize,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM state WHERE rowid IN (
             SELECT rowid FROM state WHERE deleted_ms < ?1 LIMIT ?2)",
    )?
    .execute(params![before_ms, chunk as i64])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::super::tests::{cfg, event, open_with, write};
    use super::super::SqliteSink;
    use crate::event::{ChangeEvent, Op, Row};
    use crate::sink::state::RowKey;
    use crate::sink::Sink;

    /// `event` with a version and a note.
    fn change(op: Op, id: u64, version: u64, note: &str) -> ChangeEvent {
        let mut e = event("appdb", "users", op, id, 1_700_000_000_000, note);
        e.commit_ts = Some(version);
        e
    }

    fn key(id: u64) -> RowKey {
        RowKey::of(
            "appdb",
            "users",
            &Row::from_values([("id", json!(id.to_string()))]),
            &Row::default(),
        )
    }

    async fn note(sink: &SqliteSink, id: u64) -> Option<(String, bool, u64)> {
        sink.row(&key(id)).await.unwrap().map(|s| {
            (
                s.data["note"].as_str().unwrap_or("<none>").to_owned(),
                s.deleted,
                s.version,
            )
        })
    }

    #[tokio::test]
    async fn the_highest_version_wins_whatever_the_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        write(
            &sink,
            &[
                change(Op::Insert, 1, 10, "a"),
                change(Op::Update, 1, 20, "b"),
            ],
        )
        .await;
        assert_eq!(note(&sink, 1).await, Some(("b".into(), false, 20)));
        // A replay, and a late older change: nothing moves.
        write(
            &sink,
            &[
                change(Op::Insert, 1, 10, "a"),
                change(Op::Update, 1, 15, "x"),
            ],
        )
        .await;
        assert_eq!(note(&sink, 1).await, Some(("b".into(), false, 20)));
        // A delete leaves a tombstone an older insert cannot lift.
        write(&sink, &[change(Op::Delete, 1, 30, "b")]).await;
        write(&sink, &[change(Op::Insert, 1, 25, "zombie")]).await;
        assert_eq!(note(&sink, 1).await, Some(("<none>".into(), true, 30)));
        // A newer insert brings the row back.
        write(&sink, &[change(Op::Snapshot, 1, 40, "c")]).await;
        assert_eq!(note(&sink, 1).await, Some(("c".into(), false, 40)));
        assert_eq!(note(&sink, 2).await, None);
    }

    #[tokio::test]
    async fn a_rows_history_lists_its_events_by_version_with_old_values() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        let mut update = change(Op::Update, 1, 20, "b");
        update.old = Some(Row::from_values([("note", json!("a"))]));
        // Arrival order differs from version order.
        write(&sink, &[update, change(Op::Insert, 2, 5, "other")]).await;
        write(&sink, &[change(Op::Insert, 1, 10, "a")]).await;
        let page = sink.row_history(&key(1), 50).await.unwrap();
        let docs: Vec<serde_json::Value> = page
            .events
            .iter()
            .map(|e| serde_json::from_str(e.get()).unwrap())
            .collect();
        let ops: Vec<_> = docs.iter().map(|d| d["op"].as_str().unwrap()).collect();
        assert_eq!(ops, ["insert", "update"]);
        assert_eq!(docs[1]["old"]["note"], "a");
        assert_eq!(docs[1]["data"]["note"], "b");
        assert!(docs[0]["id"].is_string());
        // The limit keeps the newest.
        let page = sink.row_history(&key(1), 1).await.unwrap();
        assert_eq!(page.events.len(), 1);
        assert!(page.events[0].get().contains("\"update\""));
    }

    #[tokio::test]
    async fn a_key_changing_update_moves_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &cfg());
        write(&sink, &[change(Op::Insert, 1, 10, "a")]).await;
        let mut moved = change(Op::Update, 2, 20, "a");
        moved.old = Some(Row::from_values([("id", json!("1"))]));
        write(&sink, &[moved]).await;
        assert_eq!(note(&sink, 1).await.map(|n| n.1), Some(true));
        assert_eq!(note(&sink, 2).await, Some(("a".into(), false, 20)));
    }

    #[tokio::test]
    async fn tombstones_are_purged_after_their_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.tombstone_retention = Duration::from_millis(100);
        let sink = Arc::new(open_with(dir.path(), &c));
        write(
            &sink,
            &[
                change(Op::Insert, 1, 10, "a"),
                change(Op::Insert, 2, 10, "a"),
            ],
        )
        .await;
        write(&sink, &[change(Op::Delete, 1, 20, "a")]).await;
        let stop = CancellationToken::new();
        let upkeep = tokio::spawn(sink.clone().maintain(stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while note(&sink, 1).await.is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "tombstone never purged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        upkeep.await.unwrap();
        assert_eq!(note(&sink, 2).await, Some(("a".into(), false, 10)));
    }
}
