//! The embedded store's retention, through the library as `run` drives it
//! (`Sink::write` in batches, `Sink::maintain` in the background):
//! `CDC_STORE_MAX_BYTES` bounds the files on disk, not only the documents,
//! and `CDC_STORE_RETENTION` deletes by commit time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_monitor::config::StoreConfig;
use cdc_monitor::event::{ChangeEvent, Op, Row};
use cdc_monitor::metrics::Metrics;
use cdc_monitor::sink::query::EventFilter;
use cdc_monitor::sink::sqlite::SqliteSink;
use cdc_monitor::sink::{Sink, WriteBatch};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Events per `Sink::write`, as the pipeline's default batch.
const BATCH: usize = 2000;

/// Words for the row values, so the text index holds shared and unique terms.
const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

/// Event `i` of `app.orders`: an insert of about 300 bytes as a document.
fn order(i: u64, commit_time_ms: i64) -> ChangeEvent {
    let word = |k: u64| WORDS[((i / 7 + k * 5) % WORDS.len() as u64) as usize];
    let id = i.to_string();
    // Changes of a 10,000-row table: the current state stays that size
    // (it counts in the limit; retention deletes events, never state).
    let slot = || json!((i % 10_000).to_string());
    let data = Row::from_values([
        ("id", json!(id)),
        ("slot", slot()),
        (
            "customer",
            json!(format!("customer{}@example.com", i % 10_007)),
        ),
        ("amount", json!(format!("{}.{:02}", i % 9_973, i % 100))),
        (
            "status",
            json!(["new", "paid", "shipped"][(i % 3) as usize]),
        ),
        (
            "note",
            json!(format!("{} {} {} order {i}", word(0), word(1), word(2))),
        ),
    ]);
    let pk = Row::from_values([("slot", slot())]);
    ChangeEvent::row("app", "orders", Op::Insert, pk, data, None, commit_time_ms)
}

/// `events.db` plus its WAL, as `ls` shows them.
fn file_bytes(dir: &Path) -> u64 {
    ["events.db", "events.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// The `data.id` of each stored event, newest first.
async fn stored_ids(sink: &SqliteSink, limit: usize) -> Vec<u64> {
    let page = sink
        .events(&EventFilter {
            limit,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    page.events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e.get()).unwrap();
            v["data"]["id"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

/// (count, smallest id, largest id) of the stored events, read from the file.
fn stored_range(dir: &Path) -> (u64, u64, u64) {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT count(*), min(CAST(json_extract(doc, '$.data.id') AS INTEGER)),
                max(CAST(json_extract(doc, '$.data.id') AS INTEGER)) FROM events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_size_limit_bounds_the_files_while_a_million_events_are_written() {
    const LIMIT: u64 = 50 << 20;
    // The WAL's shared-memory index (-shm, 32 KiB per 4,000 frames) is not
    // counted; the files sampled are events.db and events.db-wal. Sampled
    // between writes and by a thread while they run: allow one page over.
    const TOLERANCE: u64 = 64 << 10;
    let events: u64 = std::env::var("CDC_TEST_STORE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        retention: Duration::from_secs(7 * 86_400),
        max_bytes: LIMIT,
        tombstone_retention: Duration::from_secs(7 * 86_400),
    };
    let sink = Arc::new(SqliteSink::open(dir.path(), &cfg, Metrics::new()).unwrap());
    sink.prepare().await.unwrap();
    let stop = CancellationToken::new();
    let maintenance = tokio::spawn(sink.clone().maintain(stop.clone()));
    // A sampler thread sees the files mid-transaction too.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (dir, sampling) = (dir.path().to_owned(), sampling.clone());
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0u64);
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(file_bytes(&dir));
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (peak, samples)
        })
    };
    let abort = CancellationToken::new();
    let now = cdc_monitor::clock::now_millis();
    let started = Instant::now();
    let mut peak_between = 0u64;
    let mut written = 0u64;
    let mut first_full = None;
    while written < events {
        let batch: Vec<ChangeEvent> = (written..events.min(written + BATCH as u64))
            .map(|i| order(i, now))
            .collect();
        let refused = sink
            .write(WriteBatch::events(&batch), &abort)
            .await
            .unwrap();
        assert!(refused.is_empty());
        written += batch.len() as u64;
        let size = file_bytes(dir.path());
        peak_between = peak_between.max(size);
        assert!(
            size <= LIMIT + TOLERANCE,
            "{size} bytes on disk after {written} events"
        );
        if first_full.is_none() && size > LIMIT * 8 / 10 {
            first_full = Some((written, started.elapsed()));
        }
    }
    let writing = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (peak_sampled, samples) = sampler.join().unwrap();
    // After the write, with retention running in the background: still bound.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = file_bytes(dir.path());
    stop.cancel();
    maintenance.await.unwrap();

    let (kept, oldest, newest) = stored_range(dir.path());
    let latest = stored_ids(&sink, 5).await;
    println!(
        "store retention: {events} events in {writing:.1?} ({:.0} events/s) under a {} MiB limit; \
         80% full after {:?}; peak {:.2} MiB between writes, {:.2} MiB over {samples} samples \
         while writing, {:.2} MiB after; kept {kept} events ({oldest}..={newest})",
        events as f64 / writing.as_secs_f64(),
        LIMIT >> 20,
        first_full,
        peak_between as f64 / f64::from(1 << 20),
        peak_sampled as f64 / f64::from(1 << 20),
        after as f64 / f64::from(1 << 20),
    );
    assert!(
        peak_sampled <= LIMIT + TOLERANCE,
        "{peak_sampled} bytes on disk while writing"
    );
    assert!(after <= LIMIT + TOLERANCE, "{after} bytes on disk after");
    // The newest events are kept, in one unbroken run: the oldest went.
    assert_eq!(newest, events - 1);
    assert_eq!(latest, (events - 5..events).rev().collect::<Vec<_>>());
    assert_eq!(kept, newest - oldest + 1, "a gap among the kept events");
    assert!(oldest > 0, "nothing was deleted");
    // The limit is used, not left mostly empty: at least half of it.
    let per_event = after as f64 / kept as f64;
    assert!(
        after >= LIMIT / 2,
        "{after} bytes for {kept} events ({per_event:.0} bytes each)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_before_the_retention_are_deleted_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        retention: Duration::from_secs(3600),
        max_bytes: 1 << 30,
        tombstone_retention: Duration::from_secs(7 * 86_400),
    };
    let sink = Arc::new(SqliteSink::open(dir.path(), &cfg, Metrics::new()).unwrap());
    let now = cdc_monitor::clock::now_millis();
    // 3,000 committed two hours ago, then 1,000 a minute ago.
    let old: Vec<_> = (0..3000).map(|i| order(i, now - 7_200_000)).collect();
    let recent: Vec<_> = (3000..4000).map(|i| order(i, now - 60_000)).collect();
    let abort = CancellationToken::new();
    for batch in [&old, &recent] {
        sink.write(WriteBatch::events(batch), &abort).await.unwrap();
    }
    let stop = CancellationToken::new();
    let maintenance = tokio::spawn(sink.clone().maintain(stop.clone()));
    // The first round starts at once; later ones every 5 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_range(dir.path()).0 != 1000 {
        assert!(Instant::now() < deadline, "{:?}", stored_range(dir.path()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    maintenance.await.unwrap();
    assert_eq!(stored_range(dir.path()), (1000, 3000, 3999));
    let mut q = EventFilter {
        limit: 10,
        ..EventFilter::default()
    };
    q.q = Some("order".into());
    assert_eq!(sink.events(&q).await.unwrap().events.len(), 10);
    q.until_ms = Some(now - 3_600_000);
    assert!(sink.events(&q).await.unwrap().events.is_empty());
}
