//! Binlog capture: a private MariaDB with a backlog of row changes, captured
//! by a `cdc-monitor run` child into each sink in turn.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use cdc_monitor::quickstart::mariadb::MariaDb;

use crate::broker::create_topic;
use crate::bulk_stub::BulkStub;
use crate::process::{free_port, monitor_run, peak_rss_mib, KillOnDrop};

/// The sinks the capture is measured into, as `CDC_SINK` names them.
const SINKS: [&str; 3] = ["elasticsearch", "sqlite", "kafka"];

/// Writes `n` rows into a fresh MariaDB, then captures them from the oldest
/// binlog into each sink.
pub async fn capture(
    n: usize,
    brokers: &str,
    sink: &BulkStub,
    out: &mut String,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cdc-bench-mariadb-{}", std::process::id()));
    let db = MariaDb::start(&dir, free_port()?).await?;
    fill(&db, n, out).await?;
    for mode in SINKS {
        capture_into(mode, &db, &dir, n, brokers, sink, out).await?;
    }
    db.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes `n` rows into a fresh MariaDB, then reads them with the initial
/// snapshot into the embedded store (events and current state).
pub async fn snapshot(n: usize, out: &mut String) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cdc-bench-snapshot-{}", std::process::id()));
    let db = MariaDb::start(&dir, free_port()?).await?;
    fill(&db, n, out).await?;
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = monitor_run()?;
    cmd.env("CDC_SOURCE", "binlog")
        .env("CDC_MYSQL_URL", db.capture_url())
        .env("CDC_TABLES", "bench.users")
        .env("CDC_SNAPSHOT", "initial")
        .env("CDC_SINK", "sqlite")
        // The rows are read now; keep every one whatever its size.
        .env("CDC_STORE_MAX_BYTES", "64GiB")
        .env("CDC_DATA_DIR", dir.join("snapshot-sqlite"))
        .env("CDC_HTTP_ADDR", &http);
    let child = KillOnDrop(cmd.spawn()?);
    let started = Instant::now();
    let secs = wait_stored(&http, n as f64, "snapshot").await?;
    let elapsed = started.elapsed().as_secs_f64();
    let rss = peak_rss_mib(child.0.id()).unwrap_or(f64::NAN);
    let writes = scrape_sum(&http, "cdc_bulk_requests_total").await;
    writeln!(
        out,
        "initial snapshot → embedded store (events and state): {n} rows in {elapsed:.1} s from start = {:.0} rows/s ({:.0} rows/s from the first stored), {:.0} rows per store transaction, peak RSS {rss:.1} MiB",
        n as f64 / elapsed,
        n as f64 / secs.max(1e-9),
        n as f64 / writes.max(1.0)
    )?;
    drop(child);
    reconcile(&db, &dir, n, out)?;
    db.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `cdc-monitor reconcile` of the `n` rows the snapshot stored against the
/// database: rows/s and the queries the database answered.
fn reconcile(db: &MariaDb, dir: &Path, n: usize, out: &mut String) -> anyhow::Result<()> {
    let exe = crate::process::monitor_exe()?;
    let started = Instant::now();
    let output = std::process::Command::new(exe)
        .args(["reconcile", "--json", "--settle-seconds", "5"])
        .env("CDC_SOURCE", "binlog")
        .env("CDC_MYSQL_URL", db.capture_url())
        .env("CDC_TABLES", "bench.users")
        .env("CDC_SINK", "sqlite")
        .env("CDC_STORE_MAX_BYTES", "64GiB")
        .env("CDC_DATA_DIR", dir.join("snapshot-sqlite"))
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        anyhow::anyhow!(
            "reconcile printed no report ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let differences: u64 = report["tables"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    ["missing", "changed", "extra"]
                        .iter()
                        .map(|k| t[k]["count"].as_u64().unwrap_or(0))
                        .sum::<u64>()
                })
                .sum()
        })
        .unwrap_or(0);
    writeln!(
        out,
        "reconcile of {n} rows (database vs the embedded store's state): {secs:.1} s = {:.0} rows/s, {} queries, {differences} differences",
        n as f64 / secs,
        report["queries"]
    )?;
    Ok(())
}

/// `bench.users` with `n` rows, in multi-row INSERTs.
async fn fill(db: &MariaDb, n: usize, out: &mut String) -> anyhow::Result<()> {
    db.exec(
        "CREATE DATABASE IF NOT EXISTS bench; \
         CREATE TABLE bench.users (id BIGINT PRIMARY KEY, username VARCHAR(64), \
         email VARCHAR(128), score DECIMAL(10,2), created_at DATETIME)",
    )
    .await?;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "({i},'user{i}','user{i}@example.com',{}.25,'2024-01-01 00:00:00')",
                    i % 1000
                )
            })
            .collect();
        db.exec(&format!(
            "INSERT INTO bench.users VALUES {}",
            values.join(",")
        ))
        .await?;
    }
    writeln!(
        out,
        "binlog: wrote {n} rows into MariaDB in {:.1} s",
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// One capture of the whole binlog into `mode`, timed until the child
/// reports every row stored.
async fn capture_into(
    mode: &str,
    db: &MariaDb,
    dir: &Path,
    n: usize,
    brokers: &str,
    sink: &BulkStub,
    out: &mut String,
) -> anyhow::Result<()> {
    let port = free_port()?;
    let http = format!("127.0.0.1:{port}");
    let topic = format!("bench-binlog-{}", crate::now_millis());
    if mode == "kafka" {
        create_topic(brokers, &topic, 3).await?;
    }
    let mut cmd = monitor_run()?;
    cmd.env("CDC_SOURCE", "binlog")
        .env("CDC_MYSQL_URL", db.capture_url())
        .env("CDC_TABLES", "bench.users")
        .env("CDC_BINLOG_START", "earliest")
        // The benchmark reads the backlog as binlog changes.
        .env("CDC_SNAPSHOT", "never")
        .env("CDC_DATA_DIR", dir.join(format!("capture-{mode}")))
        .env("CDC_HTTP_ADDR", &http);
    match mode {
        "kafka" => {
            cmd.env("CDC_SINK", "kafka")
                .env("CDC_KAFKA_BROKERS", brokers)
                .env("CDC_KAFKA_TOPICS", &topic);
        }
        "sqlite" => {
            cmd.env("CDC_SINK", "sqlite");
        }
        _ => {
            cmd.env("CDC_ES_URL", format!("http://{}", sink.addr));
        }
    }
    let child = KillOnDrop(cmd.spawn()?);
    let started = Instant::now();
    // The CREATE TABLE is one more (DDL) event.
    let secs = wait_stored(&http, (n + 1) as f64, mode).await?;
    let rss = peak_rss_mib(child.0.id()).unwrap_or(f64::NAN);
    writeln!(
        out,
        "binlog capture → {mode}: {n} row changes in {:.1} s from start = {:.0} rows/s ({:.0} rows/s from the first stored), peak RSS {rss:.1} MiB",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64(),
        n as f64 / secs.max(1e-9)
    )?;
    Ok(())
}

/// Sum of a metric's samples in the `/metrics` text of `http`.
async fn scrape_sum(http: &str, name: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://{http}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the child at `http` reports `n` stored events; returns the
/// seconds from its first stored event.
async fn wait_stored(http: &str, n: f64, what: &str) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<Instant> = None;
    loop {
        let done = scrape_sum(http, "cdc_events_total").await;
        if done > 0.0 && first.is_none() {
            first = Some(Instant::now());
        }
        if done >= n {
            return Ok(first.map_or(0.0, |f| f.elapsed().as_secs_f64()));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: only {done} of {n} events in 600 s"
        );
        // Not faster: parsing the scrape takes a core's share on two cores.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
