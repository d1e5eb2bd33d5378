//! Deletes events older than `store.retention` (by commit time) and the
//! oldest events while the documents exceed `store.max_bytes`.
//!
//! Each chunk is its own short transaction on the writer connection, so a
//! batch waits at most one chunk. The delete trigger removes the text index
//! rows and decrements `counts` in the same transaction; the size is the
//! sum of `counts.bytes`, so checking it needs no scan.

use std::sync::Arc;

use rusqlite::{params, TransactionBehavior};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::schema::{RATE_HORIZON, ZONE_BITS};
use super::Store;
use crate::sink::elasticsearch::bulk;

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
            let now_ms = bulk::now_millis();
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
        let now_ms = bulk::now_millis();
        match tokio::task::spawn_blocking(move || s.prune(now_ms)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "pruning rate and zones failed"),
            Err(e) => warn!(error = %e, "pruning task failed"),
        }
    }
}

impl Store {
    /// Deletes one chunk of what is due, oldest commit time first, then
    /// oldest arrival; `None` when nothing is.
    pub(super) fn retention_chunk(&self, now_ms: i64) -> rusqlite::Result<Option<(usize, Reason)>> {
        let retention_ms = i64::try_from(self.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention_ms);
        let max_bytes = i64::try_from(self.cfg.max_bytes).unwrap_or(i64::MAX);
        let chunk = self.tuning.retention_chunk as i64;
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = tx
                .prepare_cached(
                    "DELETE FROM events WHERE seq IN
                     (SELECT seq FROM events WHERE commit_time_ms < ?1 LIMIT ?2)",
                )?
                .execute(params![cutoff, chunk])?;
            let mut reason = Reason::Age;
            if deleted == 0 {
                reason = Reason::Size;
                let total: i64 = tx
                    .prepare_cached("SELECT coalesce(sum(bytes), 0) FROM counts")?
                    .query_row([], |r| r.get(0))?;
                if total > max_bytes {
                    // The newest seq whose deletion, with all before it,
                    // brings the total down to the limit (or this chunk's end).
                    let mut excess = total - max_bytes;
                    let mut cut = None;
                    let mut stmt =
                        tx.prepare_cached("SELECT seq, bytes FROM events ORDER BY seq LIMIT ?1")?;
                    let mut rows = stmt.query([chunk])?;
                    while let Some(r) = rows.next()? {
                        let (seq, bytes): (i64, i64) = (r.get(0)?, r.get(1)?);
                        cut = Some(seq);
                        excess -= bytes;
                        if excess <= 0 {
                            break;
                        }
                    }
                    drop(rows);
                    if let Some(cut) = cut {
                        deleted = tx
                            .prepare_cached("DELETE FROM events WHERE seq <= ?1")?
                            .execute([cut])?;
                    }
                }
            }
            if deleted == 0 {
                return Ok(None);
            }
            tx.execute("DELETE FROM counts WHERE events <= 0", [])?;
            tx.commit()?;
            debug!(deleted, reason = ?reason, "retention chunk deleted");
            Ok(Some((deleted, reason)))
        })
    }

    /// Drops rate seconds no chart can ask for and zones below the oldest event.
    pub(super) fn prune(&self, now_ms: i64) -> rusqlite::Result<()> {
        // Aligned buckets reach back at most one bucket (<= the window) past
        // the window, so twice the horizon is always enough.
        let keep_from = now_ms.div_euclid(1000) - 2 * RATE_HORIZON.as_secs() as i64;
        self.write(|conn| {
            conn.execute("DELETE FROM rate WHERE second < ?1", [keep_from])?;
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
    use crate::event::Op;
    use crate::sink::query::EventFilter;
    use crate::sink::sqlite::tests::{event, open_with, write};
    use crate::sink::sqlite::SqliteSink;

    fn all(limit: usize) -> EventFilter {
        EventFilter {
            limit,
            ..EventFilter::default()
        }
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
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            retention: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        let sink = open_with(dir.path(), &cfg);
        let now = bulk::now_millis();
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
        let mut q = all(50);
        q.q = Some("recent".into());
        assert_eq!(sink.events(&q).await.unwrap().events.len(), 10);
    }

    #[tokio::test]
    async fn oldest_events_are_deleted_down_to_the_size_limit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig {
            retention: Duration::from_secs(365 * 86400),
            max_bytes: u64::MAX,
        };
        let sink = open_with(dir.path(), &cfg);
        let now = bulk::now_millis();
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
        let ids = stored_ids(&sink).await;
        assert_eq!(ids.len(), 700);
        assert_eq!(ids.last().unwrap(), "500");
        assert_eq!(ids.first().unwrap(), "1199");
    }

    #[tokio::test]
    async fn retention_runs_in_the_background_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            retention: Duration::from_secs(60),
            max_bytes: u64::MAX,
        };
        let sink = Arc::new(open_with(dir.path(), &cfg));
        let now = bulk::now_millis();
        let old: Vec<_> = (0..1100)
            .map(|i| event("app", "users", Op::Insert, i, now - 120_000, "old"))
            .collect();
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
        sink.store.prune(now).unwrap();
        let zones: i64 = sink
            .store
            .read(|c| c.query_row("SELECT count(*) FROM zones", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(zones, 1);
    }

    #[tokio::test]
    async fn a_retention_chunk_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            retention: Duration::from_secs(60),
            max_bytes: u64::MAX,
        };
        let sink = open_with(dir.path(), &cfg);
        let now = bulk::now_millis();
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
