//! The embedded store under load: write throughput in batches of 2000
//! through `Sink::write`, then page and stats latencies over what was
//! written, directly and through the HTTP API a browser would ask.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cdc_monitor::config::StoreConfig;
use cdc_monitor::event::{ChangeEvent, Op};
use cdc_monitor::http::access::Access;
use cdc_monitor::http::health::Readiness;
use cdc_monitor::http::{self, HttpState};
use cdc_monitor::metrics::Metrics;
use cdc_monitor::sink::query::{EventFilter, QueryError};
use cdc_monitor::sink::sqlite::SqliteSink;
use cdc_monitor::sink::{Sink, WriteBatch};
use tokio_util::sync::CancellationToken;

use crate::generator::{Generator, TABLES, WORDS};

/// Events per `Sink::write`.
const BATCH: usize = 2000;

/// Times each query kind is run for its percentiles.
const RUNS: usize = 100;

/// Rows per page in the latency runs.
const PAGE: usize = 50;

/// Requests per HTTP path.
const HTTP_RUNS: usize = 50;

/// p50 and p99 of one query kind, milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
}

/// What the store measurement found.
#[derive(Debug, Clone, Default)]
struct StoreBench {
    /// Events stored.
    events: usize,
    /// Write throughput through `Sink::write`, batches of 2000.
    write_events_per_second: f64,
    /// Size of `events.db` plus its WAL after writing.
    file_bytes: u64,
    /// No filter, limit 50.
    latest: Latency,
    /// `table` filter, limit 50.
    by_table: Latency,
    /// `op` filter, limit 50.
    by_op: Latency,
    /// `since`/`until` over one hour of commit time, limit 50.
    by_time: Latency,
    /// `q` with one word, limit 50.
    text: Latency,
    /// Page 100 of a `table` filter, reached through cursors.
    deep_page: Latency,
    /// `stats` over 5 minutes in 10 s buckets.
    stats: Latency,
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
/// measures it directly and through HTTP, and removes the directory (about
/// 750 MiB for a million).
pub async fn measure(events: usize, out: &mut String) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cdc-monitor-store-bench-{}", std::process::id()));
    // A leftover from an interrupted run would skew every number.
    let _ = std::fs::remove_dir_all(&dir);
    let result = async {
        let (bench, sink) = fill_and_query(&dir, events).await?;
        let http = over_http(sink).await?;
        anyhow::Ok((bench, http))
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let (bench, http) = result?;
    write!(out, "{bench}")?;
    writeln!(
        out,
        "HTTP on the same store (50 requests each, one client):"
    )?;
    for l in http {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

/// Fills a store in `dir` with `events` events and times each query kind.
async fn fill_and_query(
    dir: &Path,
    events: usize,
) -> anyhow::Result<(StoreBench, Arc<SqliteSink>)> {
    let cfg = StoreConfig {
        retention: Duration::from_secs(365 * 86400),
        tombstone_retention: std::time::Duration::from_secs(7 * 86_400),
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
    let latest = time(|_| async { sink.events(&filter(EventFilter::default())).await }).await?;
    let by_table = time(|i| {
        let f = filter(EventFilter {
            table: Some(TABLES[i % TABLES.len()].to_owned()),
            ..EventFilter::default()
        });
        async move { sink.events(&f).await }
    })
    .await?;
    let ops = [Op::Insert, Op::Update, Op::Delete, Op::Ddl];
    let by_op = time(|i| {
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
    let by_time = time(|i| {
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
    let text = time(|i| {
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
        let page = sink.events(&deep).await.context("query failed")?;
        match page.next_cursor {
            Some(c) => deep.cursor = Some(c),
            None => break,
        }
    }
    let deep_page = time(|_| async { sink.events(&deep).await }).await?;
    let stats = time(|_| async {
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

/// Runs `query(i)` `RUNS` times and takes the percentiles.
async fn time<F, Fut, T>(mut query: F) -> anyhow::Result<Latency>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, QueryError>>,
{
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let started = Instant::now();
        query(i).await.context("query failed")?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    })
}

/// Serves `sink` as `cdc-monitor run` would and times the API and the
/// dashboard from one client; one report line per path.
async fn over_http(sink: Arc<SqliteSink>) -> anyhow::Result<Vec<String>> {
    let state = HttpState {
        metrics: Metrics::new(),
        readiness: Readiness::default(),
        query: Some(sink),
        access: Access::open(),
        snapshot: None,
        checkpoint: None,
    };
    let (listener, addr) = http::bind(([127, 0, 0, 1], 0).into()).await?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, state, stop.clone()));
    let client = reqwest::Client::new();
    let mut lines = Vec::new();
    for (what, path) in [
        ("GET /api/events?limit=50", "/api/events?limit=50"),
        (
            "GET /api/events?table=…&limit=50",
            "/api/events?table=orders&limit=50",
        ),
        (
            "GET /api/events?q=…&limit=50",
            "/api/events?q=harbor&limit=50",
        ),
        ("GET /api/stats", "/api/stats"),
        ("GET / (dashboard page)", "/"),
        ("GET /assets/app.js", "/assets/app.js"),
    ] {
        let mut ms = Vec::with_capacity(HTTP_RUNS);
        for _ in 0..HTTP_RUNS {
            let started = Instant::now();
            let resp = client.get(format!("http://{addr}{path}")).send().await?;
            anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
            resp.bytes().await?;
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        lines.push(format!(
            "  {what}: p50 {:.1} ms, p99 {:.1} ms",
            ms[ms.len() / 2],
            ms[(ms.len() * 99 / 100).min(ms.len() - 1)]
        ));
    }
    stop.cancel();
    let _ = server.await;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_store_measurement_writes_every_event_and_times_each_query() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _sink) = fill_and_query(dir.path(), 5000).await.unwrap();
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
