//! `cdc-bench`, which `cdc-monitor bench` runs: prints throughput, latency
//! and memory numbers. A program of its own so that the library keeps no
//! benchmark; it uses the library's public API and, for the end-to-end
//! phases, the `cdc-monitor` executable beside it.
//!
//! 1. decode + bulk encode on one core, no I/O;
//! 2. end to end: a backlog in a local Kafka-protocol broker (Tansu, memory
//!    engine, started here unless `--brokers` is given) consumed by a real
//!    `cdc-monitor run` child into an in-process bulk endpoint that answers
//!    201 for every item; events/s and the child's peak RSS;
//! 3. latency: a steady rate through the same path, commit time to bulk
//!    receipt, p50/p99;
//! 4. binlog capture: a private MariaDB with a backlog of row changes,
//!    captured by a real `cdc-monitor run` child into the bulk endpoint and,
//!    as canal-json, into the broker; row changes/s;
//! 5. the embedded store: events/s written, query latency with a million
//!    stored events, and the same through HTTP (`/api/events`,
//!    `/api/stats`, the dashboard page) as a browser would ask.

mod binlog;
mod broker;
mod bulk_stub;
mod cpu;
mod generator;
mod kafka;
mod process;
mod sample;
mod store;

use std::fmt::Write as _;
use std::process::ExitCode;

use cdc_monitor::cli::BenchArgs;
use cdc_monitor::config::LogFormat;
use cdc_monitor::telemetry;
use clap::Parser;

use bulk_stub::BulkStub;

/// Measure throughput and latency; prints numbers.
#[derive(Debug, Parser)]
#[command(name = "cdc-bench", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(LogFormat::Text, "warn");
    match runtime.block_on(run(cli.args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the measurements `args` asks for and returns the report.
async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let consumer_phases = args.backlog > 0
        || args.latency_seconds > 0
        || args.binlog_rows > 0
        || args.snapshot_rows > 0
        || args.large_messages > 0;
    if consumer_phases {
        // Before minutes of in-process measurements, not after.
        process::monitor_exe()?;
    }
    let mut out = String::new();
    writeln!(out, "machine: {} cores, {}", cores(), cpu_model())?;
    cpu::decode_encode(args.events, &mut out)?;
    if args.store_events > 0 {
        store::measure(args.store_events, &mut out).await?;
    }
    if !consumer_phases {
        return Ok(out);
    }
    let sink = BulkStub::start().await?;
    if args.large_messages > 0 {
        kafka::large_messages(&args, &sink, &mut out).await?;
    }
    if args.binlog_rows > 0 {
        let (brokers, _broker) = broker::broker(&args)?;
        binlog::capture(args.binlog_rows, &brokers, &sink, &mut out).await?;
    }
    if args.snapshot_rows > 0 {
        binlog::snapshot(args.snapshot_rows, &mut out).await?;
    }
    if args.backlog > 0 {
        let (brokers, _broker) = broker::broker(&args)?;
        kafka::backlog(args.backlog, &brokers, &sink, &mut out).await?;
    }
    if args.latency_seconds > 0 {
        // A fresh broker: the backlog's million messages stay out of the
        // steady-state measurement.
        let (brokers, _broker) = broker::broker(&args)?;
        kafka::latency(&args, &brokers, &sink, &[], &mut out).await?;
        // Tansu answers a fetch only when fetch.wait.max.ms runs out, even
        // when data is there; a real Kafka answers once data arrives.
        kafka::latency(
            &args,
            &brokers,
            &sink,
            &[("CDC_KAFKA_FETCH_WAIT_MAX", "10ms")],
            &mut out,
        )
        .await?;
    }
    Ok(out)
}

use cdc_monitor::clock::now_millis;

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
