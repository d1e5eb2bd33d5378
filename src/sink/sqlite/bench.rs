//! The embedded store under load: write throughput in batches of 2000
//! through `Sink::write`, then page and stats latencies over what was written.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::SqliteSink;
use crate::config::StoreConfig;
use crate::event::{ChangeEvent, Op, Row, SourcePosition};
use crate::metrics::Metrics;
use crate::sink::query::EventFilter;
use crate::sink::{Sink, SinkError, WriteBatch};

/// Events per `Sink::write`.
const BATCH: usize = 2000;

/// Times each query kind is run for its percentiles.
const RUNS: usize = 100;

/// Rows per page in the latency runs.
const PAGE: usize = 50;

const DATABASES: [&str; 3] = ["shop", "crm", "billing"];
const TABLES: [&str; 12] = [
    "orders",
    "users",
    "payments",
    "invoices",
    "items",
    "carts",
    "shipments",
    "refunds",
    "accounts",
    "contacts",
    "sessions",
    "coupons",
];

/// p50 and p99 of one query kind, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What `bench` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreBench {
    /// Events stored.
    pub events: usize,
    /// Write throughput through `Sink::write`, batches of 2000.
    pub write_events_per_second: f64,
    /// Size of `events.db` plus its WAL after writing.
    pub file_bytes: u64,
    /// No filter, limit 50.
    pub latest: Latency,
    /// `table` filter, limit 50.
    pub by_table: Latency,
    /// `op` filter, limit 50.
    pub by_op: Latency,
    /// `since`/`until` over one hour of commit time, limit 50.
    pub by_time: Latency,
    /// `q` with one word, limit 50.
    pub text: Latency,
    /// Page 100 of a `table` filter, reached through cursors.
    pub deep_page: Latency,
    /// `stats` over 5 minutes in 10 s buckets.
    pub stats: Latency,
}

impl fmt::Display for StoreBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "embedded store, {} events: {:.0} events/s written, {:.1} MiB on disk",
            self.events,
            self.write_events_per_second,
            self.file_bytes as f64 / (1024.0 * 1024.0)
        )?;
        for (name, l) in [
            ("latest 50", self.latest),
            ("table filter", self.by_table),
            ("op filter", self.by_op),
            ("1 h commit-time window", self.by_time),
            ("text search", self.text),
            ("table filter, page 100", self.deep_page),
            ("stats", self.stats),
        ] {
            writeln!(
                f,
                "  {name:<24} p50 {:>8.2} ms  p99 {:>8.2} ms",
                l.p50_ms, l.p99_ms
            )?;
        }
        Ok(())
    }
}

/// Writes `events` generated events into a store in a temporary directory,
/// measures, and removes the directory (about 750 MiB for a million).
pub async fn bench(events: usize) -> Result<StoreBench, SinkError> {
    bench_then(events, |_| async {}).await.map(|(b, ())| b)
}

/// As `bench`, then runs `then` on the filled store (to measure what serves
/// it, e.g. the HTTP API) before the directory is removed.
pub async fn bench_then<T, F, Fut>(events: usize, then: F) -> Result<(StoreBench, T), SinkError>
where
    F: FnOnce(Arc<SqliteSink>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let dir = std::env::temp_dir().join(format!("cdc-monitor-store-bench-{}", std::process::id()));
    // A leftover from an interrupted run would skew every number.
    let _ = std::fs::remove_dir_all(&dir);
    let result = match run(&dir, events).await {
        Ok((b, sink)) => Ok((b, then(sink).await)),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    dir: &std::path::Path,
    events: usize,
) -> Result<(StoreBench, Arc<SqliteSink>), SinkError> {
    let cfg = StoreConfig {
        retention: Duration::from_secs(365 * 86400),
        max_bytes: u64::MAX,
    };
    let sink = Arc::new(SqliteSink::open(dir, &cfg, Metrics::new())?);
    sink.prepare().await?;
    let mut generator = Generator::new(events);
    let abort = CancellationToken::new();
    let mut writing = Duration::ZERO;
    let mut written = 0;
    while written < events {
        let batch: Vec<ChangeEvent> = (written..events.min(written + BATCH))
            .map(|i| generator.event(i))
            .collect();
        let started = Instant::now();
        sink.write(WriteBatch::events(&batch), &abort).await?;
        writing += started.elapsed();
        written += batch.len();
    }
    let file_bytes = ["events.db", "events.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();

    // Borrowed, so each `async move` below copies the reference.
    let sink_arc = sink;
    let sink: &SqliteSink = &sink_arc;
    let filter = |f: EventFilter| EventFilter { limit: PAGE, ..f };
    let latest = measure(|_| async { sink.events(&filter(EventFilter::default())).await }).await?;
    let by_table = measure(|i| {
        let f = filter(EventFilter {
            table: Some(TABLES[i % TABLES.len()].to_owned()),
            ..EventFilter::default()
        });
        async move { sink.events(&f).await }
    })
    .await?;
    let ops = [Op::Insert, Op::Update, Op::Delete, Op::Ddl];
    let by_op = measure(|i| {
        let f = filter(EventFilter {
            op: Some(ops[i % ops.len()]),
            ..EventFilter::default()
        });
        async move { sink.events(&f).await }
    })
    .await?;
    let (first, last) = (
        generator.commit_time(0),
        generator.commit_time(events.max(1) - 1),
    );
    let by_time = measure(|i| {
        // One-hour windows spread over the whole commit-time range.
        let since = first + (last - first) * (i as i64 % 10) / 10;
        let f = filter(EventFilter {
            since_ms: Some(since),
            until_ms: Some(since + 3_600_000),
            ..EventFilter::default()
        });
        async move { sink.events(&f).await }
    })
    .await?;
    let text = measure(|i| {
        let f = filter(EventFilter {
            q: Some(WORDS[i % WORDS.len()].to_owned()),
            ..EventFilter::default()
        });
        async move { sink.events(&f).await }
    })
    .await?;
    // Follow the cursors to page 100 once, then time that page.
    let mut deep = filter(EventFilter {
        table: Some(TABLES[0].to_owned()),
        ..EventFilter::default()
    });
    for _ in 0..99 {
        let page = sink.events(&deep).await.map_err(query_failed)?;
        match page.next_cursor {
            Some(c) => deep.cursor = Some(c),
            None => break,
        }
    }
    let deep_page = measure(|_| async { sink.events(&deep).await }).await?;
    let stats = measure(|_| async {
        sink.stats(Duration::from_secs(300), Duration::from_secs(10))
            .await
    })
    .await?;
    let bench = StoreBench {
        events,
        write_events_per_second: events as f64 / writing.as_secs_f64().max(1e-9),
        file_bytes,
        latest,
        by_table,
        by_op,
        by_time,
        text,
        deep_page,
        stats,
    };
    Ok((bench, sink_arc))
}

fn query_failed(e: crate::sink::query::QueryError) -> SinkError {
    SinkError::Response(format!("query failed: {e}"))
}

/// Runs `query(i)` `RUNS` times and takes the percentiles.
async fn measure<F, Fut, T>(mut query: F) -> Result<Latency, SinkError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::sink::query::QueryError>>,
{
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let started = Instant::now();
        query(i).await.map_err(query_failed)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    })
}

/// Words the generated rows are made of; the text search looks for them.
const WORDS: [&str; 16] = [
    "amber", "basil", "cedar", "delta", "ember", "fjord", "gravel", "harbor", "indigo", "juniper",
    "kestrel", "lantern", "meadow", "nickel", "orchid", "pepper",
];

/// Deterministic events: 3 databases, 12 tables, mostly inserts and
/// updates, commit times spread over one day ending now.
struct Generator {
    state: u64,
    start_ms: i64,
    step_ms: f64,
}

impl Generator {
    fn new(events: usize) -> Generator {
        let day = 86_400_000;
        Generator {
            state: 0x9e37_79b9_7f4a_7c15,
            start_ms: crate::clock::now_millis() - day,
            step_ms: day as f64 / events.max(1) as f64,
        }
    }

    /// splitmix64: fast, good enough to pick words and tables.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn commit_time(&self, i: usize) -> i64 {
        self.start_ms + (i as f64 * self.step_ms) as i64
    }

    fn event(&mut self, i: usize) -> ChangeEvent {
        let r = self.next();
        let table = TABLES[(r % TABLES.len() as u64) as usize];
        let database = DATABASES[((r >> 8) % DATABASES.len() as u64) as usize];
        let op = match (r >> 16) % 1000 {
            0 => Op::Ddl,
            1..=40 => Op::Delete,
            41..=300 => Op::Update,
            _ => Op::Insert,
        };
        let mut words = |n: usize| {
            (0..n)
                .map(|_| WORDS[(self.next() % WORDS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let note = format!("{} #{}", words(6), i % 997);
        let name = words(2);
        let id = (i as u64).to_string();
        // Commit order follows arrival order, give or take a few seconds.
        let commit_time_ms = self.commit_time(i) + (r >> 32) as i64 % 5000;
        let data = Row::from_values([
            ("id", json!(id)),
            ("name", json!(name)),
            ("email", json!(format!("user{i}@example.com"))),
            ("amount", json!(format!("{}.{:02}", r % 10_000, r % 100))),
            (
                "status",
                json!(["new", "paid", "shipped", "void"][(r % 4) as usize]),
            ),
            ("note", json!(note)),
            ("updated_at", json!("2024-05-01 12:00:00")),
        ]);
        let (old, sql) = match op {
            Op::Update => (Some(Row::from_values([("status", json!("new"))])), None),
            Op::Ddl => (
                None,
                Some(format!("ALTER TABLE `{table}` ADD COLUMN `c{i}` INT")),
            ),
            _ => (None, None),
        };
        let (pk, data) = if op == Op::Ddl {
            (Row::default(), Row::default())
        } else {
            (Row::from_values([("id", json!(id))]), data)
        };
        ChangeEvent {
            database: database.to_owned(),
            table: table.to_owned(),
            op,
            pk,
            data,
            old,
            commit_time_ms,
            commit_ts: Some(450_000_000_000_000_000 + i as u64),
            sql,
            mysql_types: None,
            large_message: None,
            position: SourcePosition::Kafka {
                topic: Arc::from("tidb-cdc"),
                partition: (i % 3) as i32,
                offset: (i / 3) as i64,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bench_writes_every_event_and_measures_each_query() {
        let b = bench(5000).await.unwrap();
        assert_eq!(b.events, 5000);
        assert!(b.write_events_per_second > 0.0);
        assert!(b.file_bytes > 0);
        for l in [
            b.latest,
            b.by_table,
            b.by_op,
            b.by_time,
            b.text,
            b.deep_page,
            b.stats,
        ] {
            assert!(l.p50_ms > 0.0 && l.p99_ms >= l.p50_ms, "{l:?}");
        }
        assert!(b.to_string().contains("text search"));
    }
}
