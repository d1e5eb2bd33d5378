//! Deletes events older than `store.retention` (by commit time) and the
//! oldest events while the store would take more than `store.max_bytes` of
//! disk.
//!
//! Each chunk is its own short transaction on the writer connection, so a
//! batch waits at most one chunk. In that transaction the chunk's text is
//! removed from the FTS5 index (with `delete` markers, given the text again
//! from each document) and the delete trigger decrements `counts` and
//! `rate`.
//!
//! The size limit bounds the files, not the documents: the indexes and the
//! text index take about as much again as the documents, and the WAL comes
//! on top. `DiskBudget` splits the limit between the WAL (bounded by its
//! checkpoint threshold and `journal_size_limit`) and the database, whose
//! used pages (`page_count - freelist_count`) are what retention keeps under
//! its share. Deleted events' pages go to the free list and SQLite reuses
//! them for new ones, so the file stops growing once it is full; nothing
//! needs a VACUUM. The writer makes room before each batch (`make_room`),
//! so a writer faster than the retention interval cannot overrun the limit:
//! it waits for the deletions instead, as a slow sink should.

use std::sync::Arc;

use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::schema::ZONE_BITS;
use super::Store;

/// Why a chunk was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Age,
    Size,
}

/// How `store.max_bytes` is shared between the WAL and the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DiskBudget {
    max_bytes: u64,
    /// WAL size that triggers a checkpoint, and the size the WAL file is
    /// truncated back to once a checkpoint has let it restart.
    wal_checkpoint_bytes: u64,
}

impl DiskBudget {
    /// SQLite's default checkpoint threshold, 1000 pages of 4 KiB: a lower
    /// one only for small limits, as each checkpoint costs a sync.
    const MAX_WAL_CHECKPOINT: u64 = 4000 * 1024;
    const MIN_WAL_CHECKPOINT: u64 = 256 * 1024;
    /// WAL bytes a transaction writes per byte it grows the database by:
    /// it logs whole pages, and the random `doc_id` index and the text
    /// index touch many (2.5 to 3 measured with batches of 250 and 2,000).
    const WAL_PER_GROWTH: u64 = 4;

    pub(super) fn new(max_bytes: u64) -> DiskBudget {
        DiskBudget {
            max_bytes,
            wal_checkpoint_bytes: (max_bytes / 16)
                .clamp(Self::MIN_WAL_CHECKPOINT, Self::MAX_WAL_CHECKPOINT),
        }
    }

    /// The database's share while the next transaction grows it by
    /// `growth` bytes: the WAL may hold its checkpoint threshold plus that
    /// transaction before a checkpoint lets it restart.
    fn db_bytes(&self, growth: u64) -> u64 {
        self.max_bytes
            .saturating_sub(self.wal_checkpoint_bytes)
            .saturating_sub(Self::WAL_PER_GROWTH * growth)
    }

    /// Where deleting for room stops: 5% under the share, so the next few
    /// batches fit without another round of deletions.
    fn low_water(share: u64) -> u64 {
        share - share / 20
    }

    /// Sets the WAL's checkpoint threshold and size limit on the writer.
    pub(super) fn bound_wal(&self, conn: &Connection) -> rusqlite::Result<()> {
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let pages = self.wal_checkpoint_bytes as i64 / page_size.max(512);
        conn.pragma_update(None, "wal_autocheckpoint", pages.max(1))?;
        conn.pragma_update(None, "journal_size_limit", self.wal_checkpoint_bytes as i64)
    }
}

/// What the database holds, measured in the writer's view.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Bytes of the pages that hold data; free pages are left out, as
    /// SQLite reuses them before it grows the file.
    used: u64,
    /// Stored events and their documents' bytes (`counts`).
    events: u64,
    doc_bytes: u64,
}

impl Usage {
    fn measure(conn: &Connection) -> rusqlite::Result<Usage> {
        let pragma = |name: &str| conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0));
        let used = (pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?;
        let (events, doc_bytes): (i64, i64) = conn
            .prepare_cached("SELECT coalesce(sum(events), 0), coalesce(sum(bytes), 0) FROM counts")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Usage {
            used: used.max(0) as u64,
            events: events.max(0) as u64,
            doc_bytes: doc_bytes.max(0) as u64,
        })
    }

    /// Disk bytes that `doc_bytes` of documents may take once indexed:
    /// half as much again as the stored ones take on average (3 times
    /// while there are none), as a batch may also start a text index
    /// merge.
    fn on_disk(&self, doc_bytes: u64) -> u64 {
        match self.doc_bytes {
            0 => 3 * doc_bytes,
            stored => (1.5 * doc_bytes as f64 * self.used as f64 / stored as f64) as u64,
        }
    }

    /// Disk bytes one stored event takes on average.
    fn per_event(&self) -> u64 {
        (self.used / self.events.max(1)).max(1)
    }
}

/// Runs until `stop` fires: each interval, deletes chunk after chunk until
/// nothing is due.
pub async fn run(store: Arc<Store>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(store.tuning.retention_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut deleted = (0usize, 0usize);
        loop {
            let s = store.clone();
            let now_ms = crate::clock::now_millis();
            match tokio::task::spawn_blocking(move || s.retention_chunk(now_ms)).await {
                Ok(Ok(None)) => break,
                Ok(Ok(Some((n, Reason::Age)))) => deleted.0 += n,
                Ok(Ok(Some((n, Reason::Size)))) => deleted.1 += n,
                Ok(Err(e)) => {
                    warn!(error = %e, "retention failed; trying again later");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "retention task failed; trying again later");
                    break;
                }
            }
            if stop.is_cancelled() {
                return;
            }
            // Let a waiting batch take the writer between chunks.
            tokio::task::yield_now().await;
        }
        if deleted != (0, 0) {
            info!(
                by_age = deleted.0,
                by_size = deleted.1,
                "retention deleted events"
            );
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "pruning zones failed"),
            Err(e) => warn!(error = %e, "pruning task failed"),
        }
    }
}

impl Store {
    /// Deletes one chunk of what is due: events past the retention first,
    /// then, while the database is over its share of the size limit, the
    /// oldest arrivals down to the low-water mark; `None` when nothing is.
    pub(super) fn retention_chunk(&self, now_ms: i64) -> rusqlite::Result<Option<(usize, Reason)>> {
        if let Some(n) = self.chunk_or_without_text(|tx| self.past_retention(tx, now_ms))? {
            return Ok(Some((n, Reason::Age)));
        }
        let usage = self.write(|c| Usage::measure(c))?;
        let share = self.db_share(0);
        if usage.used <= share {
            return Ok(None);
        }
        Ok(self
            .chunk_or_without_text(|tx| {
                self.oldest_over(
                    tx,
                    DiskBudget::low_water(share),
                    self.tuning.retention_chunk,
                )
            })?
            .map(|n| (n, Reason::Size)))
    }

    /// Before `batch` is stored: if it would take the database over its
    /// share of the size limit, deletes the oldest events until it fits
    /// under the low-water mark. Returns how many.
    pub(super) fn make_room(&self, batch: &super::Batch) -> rusqlite::Result<usize> {
        let usage = self.write(|c| Usage::measure(c))?;
        let incoming = usage.on_disk(batch.events.iter().map(|e| e.doc.len() as u64).sum());
        let share = self.db_share(incoming);
        if usage.used + incoming <= share {
            return Ok(0);
        }
        let target = DiskBudget::low_water(share).saturating_sub(incoming);
        // The batch waits for the room anyway: chunks as large as the batch
        // take fewer transactions (each flushes the text index's pending
        // terms) and log no more WAL than the batch itself will.
        let chunk = self.tuning.retention_chunk.max(batch.events.len());
        let mut deleted = 0;
        while let Some(n) = self.chunk_or_without_text(|tx| self.oldest_over(tx, target, chunk))? {
            deleted += n;
        }
        if deleted > 0 {
            info!(
                deleted,
                limit = self.cfg.max_bytes,
                "store full: oldest events deleted"
            );
        }
        Ok(deleted)
    }

    /// The database's share of the size limit while the next transaction
    /// grows it by `incoming` bytes. (Retention's own transactions delete
    /// no more events than a batch stores, and log fewer pages: the oldest
    /// events sit together at the start of each index.)
    fn db_share(&self, incoming: u64) -> u64 {
        DiskBudget::new(self.cfg.max_bytes).db_bytes(incoming)
    }

    /// (seq, document) of the events past the retention, a chunk at most.
    fn past_retention(
        &self,
        tx: &rusqlite::Transaction<'_>,
        now_ms: i64,
    ) -> rusqlite::Result<Vec<(i64, String)>> {
        let retention_ms = i64::try_from(self.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention_ms);
        tx.prepare_cached("SELECT seq, doc FROM events WHERE commit_time_ms < ?1 LIMIT ?2")?
            .query_map(params![cutoff, self.tuning.retention_chunk as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
    }

    /// (seq, document) of the oldest events whose deletion brings the used
    /// pages down to `target` bytes, `chunk` at most; each event is taken
    /// to free its share of the used pages.
    fn oldest_over(
        &self,
        tx: &rusqlite::Transaction<'_>,
        target: u64,
        chunk: usize,
    ) -> rusqlite::Result<Vec<(i64, String)>> {
        let usage = Usage::measure(tx)?;
        if usage.used <= target || usage.events == 0 {
            return Ok(Vec::new());
        }
        let n = (usage.used - target).div_ceil(usage.per_event());
        tx.prepare_cached("SELECT seq, doc FROM events ORDER BY seq LIMIT ?1")?
            .query_map([n.min(chunk as u64) as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// Deletes the events `doomed` picks, with their text; if FTS5 refuses
    /// the text's deletion, the events without it.
    fn chunk_or_without_text(
        &self,
        doomed: impl Fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<(i64, String)>>,
    ) -> rusqlite::Result<Option<usize>> {
        match self.delete_chunk(&doomed, true) {
            // FTS5 reports a `delete` whose text differs from what was
            // indexed as corruption of its index. Deleting the events
            // without their text (it then matches no event) keeps
            // retention going; a corrupt database fails again below.
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseCorrupt) => {
                warn!(error = %e, "text index refused the deletion; deleting the events only");
                self.delete_chunk(&doomed, false)
            }
            other => other,
        }
    }

    fn delete_chunk(
        &self,
        doomed: &impl Fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<(i64, String)>>,
        unindex_text: bool,
    ) -> rusqlite::Result<Option<usize>> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let doomed = doomed(&tx)?;
            if doomed.is_empty() {
                return Ok(None);
            }
            // The rows first, the text after: FTS5 flushes its pending
            // terms at each statement savepoint once it is part of the
            // transaction, and each DELETE (it fires a trigger) takes one.
            let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
            for (seq, _) in &doomed {
                delete.execute([seq])?;
            }
            tx.execute("DELETE FROM counts WHERE events <= 0", [])?;
            let mut unindex = tx.prepare_cached(
                "INSERT INTO events_fts (events_fts, rowid, body) VALUES ('delete', ?1, ?2)",
            )?;
            for (seq, doc) in &doomed {
                match super::stored_search_text(doc).filter(|_| unindex_text) {
                    Some(text) => {
                        unindex.execute(params![seq, text])?;
                    }
                    // Left in the text index it is harmless: pages join
                    // on `events`, and the seq is never reused.
                    None if unindex_text => warn!(
                        seq,
                        "stored document does not parse; its text stays indexed"
                    ),
                    None => {}
                }
            }
            drop((delete, unindex));
            tx.commit()?;
            debug!(deleted = doomed.len(), "retention chunk deleted");
            Ok(Some(doomed.len()))
        })
    }

    /// Drops the zones below the oldest event.
    pub(super) fn prune(&self) -> rusqlite::Result<()> {
        self.write(|conn| {
            conn.execute(
                &format!(
                    "DELETE FROM zones WHERE zone <
                     (coalesce((SELECT min(seq) FROM events), {}) >> {ZONE_BITS})",
                    i64::MAX
                ),
                [],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::StoreConfig;
    use crate::event::{ChangeEvent, Op};
    use crate::sink::query::EventFilter;
    use crate::sink::sqlite::tests::{event, open_with, write};
    use crate::sink::sqlite::SqliteSink;
    use crate::sink::Sink;

    /// A store that keeps events for `retention`, with no size bound.
    fn store_keeping(retention: Duration) -> (tempfile::TempDir, SqliteSink) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            retention,
            max_bytes: u64::MAX,
            tombstone_retention: Duration::from_secs(7 * 86_400),
        };
        let sink = open_with(dir.path(), &cfg);
        (dir, sink)
    }

    /// Inserts into `app.users`, committed at `commit_ms`, with `note`.
    fn users(ids: std::ops::Range<u64>, commit_ms: i64, note: &str) -> Vec<ChangeEvent> {
        ids.map(|i| event("app", "users", Op::Insert, i, commit_ms, note))
            .collect()
    }

    fn all(limit: usize) -> EventFilter {
        EventFilter {
            limit,
            ..EventFilter::default()
        }
    }

    /// FTS5's own consistency check of the text index after deletes.
    fn integrity_check(sink: &SqliteSink) {
        sink.store
            .write(|c| {
                c.execute(
                    "INSERT INTO events_fts (events_fts, rank) VALUES ('integrity-check', 0)",
                    [],
                )
            })
            .unwrap();
    }

    async fn stored_ids(sink: &SqliteSink) -> Vec<String> {
        let page = sink.events(&all(1000)).await.unwrap();
        page.events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e.get()).unwrap();
                v["data"]["id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn events_older_than_retention_are_deleted_with_their_text_and_counts() {
        let (_dir, sink) = store_keeping(Duration::from_secs(3600));
        let now = crate::clock::now_millis();
        let old: Vec<_> = (0..30)
            .map(|i| event("app", "users", Op::Insert, i, now - 7_200_000, "ancient"))
            .collect();
        let new: Vec<_> = (30..40)
            .map(|i| event("app", "orders", Op::Update, i, now - 60_000, "recent"))
            .collect();
        write(&sink, &old).await;
        write(&sink, &new).await;
        // Chunks of 500 by default; make several chunks happen.
        let mut chunks = 0;
        while let Some((n, reason)) = sink.store.retention_chunk(now).unwrap() {
            assert_eq!(reason, Reason::Age);
            assert!(n > 0);
            chunks += 1;
        }
        assert_eq!(chunks, 1);
        let ids = stored_ids(&sink).await;
        assert_eq!(
            ids,
            (30..40).rev().map(|i| i.to_string()).collect::<Vec<_>>()
        );
        let stats = sink
            .stats(Duration::from_secs(60), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(stats.total, 10);
        assert_eq!(stats.by_table.get("app.users"), None);
        assert_eq!(stats.by_op.get("insert"), None);
        assert_eq!(stats.by_op.get("update"), Some(&10));
        // The deleted events left the rate too (they were ingested just now).
        let tables: Vec<&str> = stats.rate.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(tables, ["app.orders"]);
        let rated: i64 = sink
            .store
            .read(|c| c.query_row("SELECT sum(events) FROM rate", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(rated, 10);
        let hits: i64 = sink
            .store
            .read(|c| {
                c.query_row(
                    "SELECT count(*) FROM events_fts WHERE events_fts MATCH 'ancient'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(hits, 0);
        integrity_check(&sink);
        let mut q = all(50);
        q.q = Some("recent".into());
        assert_eq!(sink.events(&q).await.unwrap().events.len(), 10);
    }

    /// Size of `events.db` and its WAL, as `ls` shows them.
    fn file_bytes(dir: &std::path::Path) -> u64 {
        ["events.db", "events.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    #[tokio::test]
    async fn writes_delete_the_oldest_events_so_the_files_stay_within_the_size_limit() {
        const LIMIT: u64 = 2 << 20;
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            max_bytes: LIMIT,
            ..crate::sink::sqlite::tests::cfg()
        };
        let sink = open_with(dir.path(), &cfg);
        let now = crate::clock::now_millis();
        // About 8 MiB without the limit: four times over.
        for b in 0..40u64 {
            let batch: Vec<_> = (b * 250..(b + 1) * 250)
                .map(|i| {
                    let mut e = event(
                        "app",
                        "users",
                        Op::Insert,
                        i,
                        now,
                        &"n".repeat(i as usize % 200),
                    );
                    // Changes of 100 rows: a small current state, which
                    // counts in the limit and which retention keeps.
                    e.pk = crate::event::Row::from_values([(
                        "id",
                        serde_json::json!((i % 100).to_string()),
                    )]);
                    e
                })
                .collect();
            write(&sink, &batch).await;
            let size = file_bytes(dir.path());
            assert!(size <= LIMIT, "{size} bytes on disk after batch {b}");
        }
        // The newest events are all there, in one run down from the last.
        let ids: Vec<u64> = stored_ids(&sink)
            .await
            .iter()
            .map(|id| id.parse().unwrap())
            .collect();
        assert_eq!(ids[0], 9999);
        assert!(ids.windows(2).all(|w| w[0] == w[1] + 1), "{ids:?}");
        let stats = sink
            .stats(Duration::from_secs(60), Duration::from_secs(10))
            .await
            .unwrap();
        // Room for at least the newest batch; the state (100 rows) and the
        // row index take their share of the 2 MiB.
        assert!((250..9000).contains(&stats.total), "{} kept", stats.total);
        integrity_check(&sink);
    }

    #[tokio::test]
    async fn a_lowered_size_limit_is_reached_by_retention_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let sink = open_with(dir.path(), &crate::sink::sqlite::tests::cfg());
        let now = crate::clock::now_millis();
        write(&sink, &users(0..6000, now, "a note of some length")).await;
        drop(sink);
        let cfg = StoreConfig {
            max_bytes: 2 << 20,
            ..crate::sink::sqlite::tests::cfg()
        };
        let sink = open_with(dir.path(), &cfg);
        let mut deleted = 0;
        while let Some((n, reason)) = sink.store.retention_chunk(now).unwrap() {
            assert_eq!(reason, Reason::Size);
            assert!(n <= 500, "a chunk deleted {n}");
            deleted += n;
        }
        let usage = sink.store.write(|c| Usage::measure(c)).unwrap();
        let share = sink.store.db_share(0);
        assert!(usage.used <= share, "{usage:?} over {share}");
        let total = sink
            .stats(Duration::from_secs(60), Duration::from_secs(10))
            .await
            .unwrap()
            .total;
        assert_eq!(total as usize + deleted, 6000);
        assert!(total > 500, "{total} kept");
        let ids = stored_ids(&sink).await;
        assert_eq!(ids.first().unwrap(), "5999");
        integrity_check(&sink);
    }

    #[test]
    fn the_wal_gets_its_checkpoint_threshold_and_four_times_the_next_growth() {
        let small = DiskBudget::new(1 << 20);
        assert_eq!(small.wal_checkpoint_bytes, 256 << 10);
        assert_eq!(small.db_bytes(0), 768 << 10);
        assert_eq!(small.db_bytes(100 << 10), 368 << 10);
        assert_eq!(small.db_bytes(1 << 20), 0);
        let test = DiskBudget::new(50 << 20);
        assert_eq!(test.wal_checkpoint_bytes, 50 << 16);
        // SQLite's default threshold from 64 MB up.
        let big = DiskBudget::new(1 << 30);
        assert_eq!(big.wal_checkpoint_bytes, 4000 * 1024);
        assert_eq!(big.db_bytes(1 << 20), (1 << 30) - 4000 * 1024 - (4 << 20));
    }

    #[tokio::test]
    async fn retention_runs_in_the_background_until_stopped() {
        let (_dir, sink) = store_keeping(Duration::from_secs(60));
        let sink = Arc::new(sink);
        let now = crate::clock::now_millis();
        let old = users(0..1100, now - 120_000, "old");
        write(&sink, &old).await;
        write(
            &sink,
            &[event("app", "users", Op::Insert, 5000, now, "new")],
        )
        .await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(sink.clone().run_retention(stop.clone()));
        let started = std::time::Instant::now();
        loop {
            let total = sink
                .stats(Duration::from_secs(60), Duration::from_secs(10))
                .await
                .unwrap()
                .total;
            if total == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still {total} events"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("retention stops")
            .unwrap();
        assert_eq!(stored_ids(&sink).await, vec!["5000".to_owned()]);
        // Zones below the oldest event are gone.
        sink.store.prune().unwrap();
        let zones: i64 = sink
            .store
            .read(|c| c.query_row("SELECT count(*) FROM zones", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(zones, 1);
    }

    #[tokio::test]
    async fn retention_goes_on_when_the_text_index_refuses_a_deletion() {
        let (_dir, sink) = store_keeping(Duration::from_secs(60));
        let now = crate::clock::now_millis();
        let old = users(0..1100, now - 120_000, "old");
        write(&sink, &old).await;
        // Index a different text than the documents give (as a change to
        // the derivation would), so the `delete` markers do not match.
        sink.store
            .write(|c| {
                c.execute_batch(
                    "INSERT INTO events_fts (events_fts) VALUES ('delete-all');
                     INSERT INTO events_fts (rowid, body) SELECT seq, 'other words' FROM events;",
                )
            })
            .unwrap();
        let mut deleted = 0;
        while let Some((n, _)) = sink.store.retention_chunk(now).unwrap() {
            deleted += n;
        }
        assert_eq!(deleted, 1100);
        let stats = sink
            .stats(Duration::from_secs(60), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(stats.total, 0);
        let mut q = all(50);
        q.q = Some("other".into());
        assert!(sink.events(&q).await.unwrap().events.is_empty());
    }

    #[tokio::test]
    async fn a_retention_chunk_is_short() {
        let (_dir, sink) = store_keeping(Duration::from_secs(60));
        let now = crate::clock::now_millis();
        let old: Vec<_> = (0..2000)
            .map(|i| {
                event(
                    "app",
                    "users",
                    Op::Insert,
                    i,
                    now - 120_000,
                    "old words here",
                )
            })
            .collect();
        write(&sink, &old).await;
        let started = std::time::Instant::now();
        let (n, _) = sink.store.retention_chunk(now).unwrap().unwrap();
        assert_eq!(n, 500);
        // Generous for a debug build on a busy machine; release takes a few ms.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
}
