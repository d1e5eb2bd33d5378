//! Deletes events older than `store.retention` (by commit time) and the
//! oldest events while the documents exceed `store.max_bytes`.
//!
//! Each chunk is its own short transaction on the writer connection, so a
//! batch waits at most one chunk. In that transaction the chunk's text is
//! removed from the FTS5 index (with `delete` markers, given the text again
//! from each document) and the delete trigger decrements `counts` and
//! `rate`; the size is the sum of `counts.bytes`, so checking it needs no
//! scan.

use std::sync::Arc;

use rusqlite::{params, ErrorCode, TransactionBehavior};
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
    /// then the oldest arrivals while over the size limit; `None` when
    /// nothing is.
    pub(super) fn retention_chunk(&self, now_ms: i64) -> rusqlite::Result<Option<(usize, Reason)>> {
        match self.delete_chunk(now_ms, true) {
            // FTS5 reports a `delete` whose text differs from what was
            // indexed as corruption of its index. Deleting the events
            // without their text (it then matches no event) keeps
            // retention going; a corrupt database fails again below.
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseCorrupt) => {
                warn!(error = %e, "text index refused the deletion; deleting the events only");
                self.delete_chunk(now_ms, false)
            }
            other => other,
        }
    }

    fn delete_chunk(
        &self,
        now_ms: i64,
        unindex_text: bool,
    ) -> rusqlite::Result<Option<(usize, Reason)>> {
        let retention_ms = i64::try_from(self.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention_ms);
        let max_bytes = i64::try_from(self.cfg.max_bytes).unwrap_or(i64::MAX);
        let chunk = self.tuning.retention_chunk as i64;
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // (seq, document) of each event to delete.
            let mut doomed: Vec<(i64, String)> = tx
                .prepare_cached("SELECT seq, doc FROM events WHERE commit_time_ms < ?1 LIMIT ?2")?
                .query_map(params![cutoff, chunk], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut reason = Reason::Age;
            if doomed.is_empty() {
                reason = Reason::Size;
                let total: i64 = tx
                    .prepare_cached("SELECT coalesce(sum(bytes), 0) FROM counts")?
                    .query_row([], |r| r.get(0))?;
                if total > max_bytes {
                    // Oldest first, until the rest fits (or the chunk is full).
                    let mut excess = total - max_bytes;
                    let mut stmt = tx.prepare_cached(
                        "SELECT seq, bytes, doc FROM events ORDER BY seq LIMIT ?1",
                    )?;
                    let mut rows = stmt.query([chunk])?;
                    while let Some(r) = rows.next()? {
                        doomed.push((r.get(0)?, r.get(2)?));
                        excess -= r.get::<_, i64>(1)?;
                        if excess <= 0 {
                            break;
                        }
                    }
                }
            }
            if doomed.is_empty() {
                return Ok(None);
            }
            {
                let mut unindex = tx.prepare_cached(
                    "INSERT INTO events_fts (events_fts, rowid, body) VALUES ('delete', ?1, ?2)",
                )?;
                let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
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
                    delete.execute([seq])?;
                }
            }
            tx.execute("DELETE FROM counts WHERE events <= 0", [])?;
            tx.commit()?;
            debug!(deleted = doomed.len(), reason = ?reason, "retention chunk deleted");
            Ok(Some((doomed.len(), reason)))
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

    #[tokio::test]
    async fn oldest_events_are_deleted_down_to_the_size_limit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig {
            retention: Duration::from_secs(365 * 86400),
            tombstone_retention: Duration::from_secs(7 * 86_400),
            max_bytes: u64::MAX,
        };
        let sink = open_with(dir.path(), &cfg);
        let now = crate::clock::now_millis();
        // Notes of different lengths, so the cut depends on each size.
        let events: Vec<_> = (0..1200)
            .map(|i| {
                event(
                    "app",
                    "users",
                    Op::Insert,
                    i,
                    now,
                    &"n".repeat(i as usize % 50),
                )
            })
            .collect();
        write(&sink, &events).await;
        // Allow exactly the newest 700 documents.
        let limit: i64 = sink
            .store
            .read(|c| {
                c.query_row(
                    "SELECT sum(bytes) FROM (SELECT bytes FROM events ORDER BY seq DESC LIMIT 700)",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        drop(sink);
        cfg.max_bytes = limit as u64;
        let sink = open_with(dir.path(), &cfg);
        let mut deleted = 0;
        while let Some((n, reason)) = sink.store.retention_chunk(now).unwrap() {
            assert_eq!(reason, Reason::Size);
            assert!(n <= 500, "a chunk deleted {n}");
            deleted += n;
        }
        assert_eq!(deleted, 500);
        let stats = sink
            .stats(Duration::from_secs(60), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(stats.total, 700);
        let bytes: i64 = sink
            .store
            .read(|c| c.query_row("SELECT sum(bytes) FROM counts", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(bytes, limit);
        let rated: i64 = sink
            .store
            .read(|c| c.query_row("SELECT sum(events) FROM rate", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(rated, 700);
        integrity_check(&sink);
        let ids = stored_ids(&sink).await;
        assert_eq!(ids.len(), 700);
        assert_eq!(ids.last().unwrap(), "500");
        assert_eq!(ids.first().unwrap(), "1199");
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
