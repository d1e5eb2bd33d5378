//! A `cdc-monitor run` child consuming from the broker into the bulk
//! endpoint: a backlog (throughput, peak RSS), large messages (the byte
//! budget) and a steady rate (latency).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use cdc_monitor::cli::BenchArgs;
use cdc_monitor::config::{Config, Layers, Origin};
use cdc_monitor::kafka_client;
use rdkafka::producer::Producer;

use crate::broker::{self, create_topic, send};
use crate::bulk_stub::BulkStub;
use crate::process::{cpu_seconds, free_port, monitor_run, peak_rss_mib, KillOnDrop};
use crate::sample;

/// Starts a consumer of `topic` in a group of its own, with `env` on top of
/// its configuration; returns it and its HTTP address.
fn spawn_consumer(
    brokers: &str,
    topic: &str,
    sink: &BulkStub,
    env: &[(&str, &str)],
) -> anyhow::Result<(KillOnDrop, String)> {
    let port = free_port()?;
    let group = format!("bench-{}-{}", std::process::id(), crate::now_millis());
    let child = monitor_run()?
        .env("CDC_KAFKA_BROKERS", brokers)
        .env("CDC_KAFKA_TOPICS", topic)
        .env("CDC_KAFKA_GROUP_ID", &group)
        .env("CDC_DLQ_TOPIC", format!("{topic}-dlq"))
        .env("CDC_ES_URL", format!("http://{}", sink.addr))
        .env("CDC_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .spawn()?;
    Ok((KillOnDrop(child), format!("127.0.0.1:{port}")))
}

/// A backlog of `n` small events, then a consumer catching up with it.
pub async fn backlog(
    n: usize,
    brokers: &str,
    sink: &BulkStub,
    out: &mut String,
) -> anyhow::Result<()> {
    let topic = format!("bench-backlog-{}", crate::now_millis());
    create_topic(brokers, &topic, 1).await?;
    let p = broker::producer(brokers)?;
    let started = Instant::now();
    for i in 0..n as u64 {
        send(&p, &topic, &sample::message(i, sample::BASE_TS + i));
    }
    p.flush(Duration::from_secs(300))?;
    writeln!(
        out,
        "backlog: produced {n} events in {:.1} s",
        started.elapsed().as_secs_f64()
    )?;
    let bare = bare_consume(brokers, &topic, n).await?;
    writeln!(
        out,
        "bare librdkafka consume (the consumer's client settings, no decode, no sink): {} messages in {:.1} s from start = {:.0} messages/s ({:.0} messages/s from the first message)",
        bare.messages,
        bare.total_secs,
        bare.messages as f64 / bare.total_secs,
        bare.messages as f64 / bare.from_first_secs.max(1e-9)
    )?;
    // The same backlog twice, by a group of its own each time: bulk
    // bodies gzip-compressed (the default), then plain.
    for compression in ["gzip", "none"] {
        let before = (sink.docs(), sink.wire_bytes(), sink.requests());
        let (child, _) = spawn_consumer(
            brokers,
            &topic,
            sink,
            &[("CDC_ES_COMPRESSION", compression)],
        )?;
        let pid = child.0.id();
        let started = Instant::now();
        let mut first: Option<Instant> = None;
        let deadline = started + Duration::from_secs(600);
        loop {
            let done = sink.docs() - before.0;
            if done > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if done >= n as u64 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = sink.docs() - before.0;
        let wire = sink.wire_bytes() - before.1;
        let requests = sink.requests() - before.2;
        let from_first = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let total = started.elapsed().as_secs_f64();
        let rss = peak_rss_mib(pid).unwrap_or(f64::NAN);
        let cpu = cpu_seconds(pid).unwrap_or(f64::NAN);
        drop(child);
        writeln!(
            out,
            "end to end (broker → consumer → bulk endpoint), CDC_ES_COMPRESSION={compression}: {done} events in {total:.1} s from start = {:.0} events/s ({:.0} events/s from the first document)",
            done as f64 / total,
            done as f64 / from_first.max(1e-9)
        )?;
        writeln!(
            out,
            "  bulk bytes on the wire: {:.1} MiB, {:.0} bytes/event",
            wire as f64 / (1 << 20) as f64,
            wire as f64 / (done as f64).max(1.0)
        )?;
        writeln!(
            out,
            "  bulk requests: {requests}, {:.0} events per request",
            done as f64 / (requests as f64).max(1.0)
        )?;
        writeln!(out, "  peak RSS while catching up {n} events: {rss:.1} MiB")?;
        writeln!(
            out,
            "  consumer CPU time: {cpu:.1} s = {:.1} µs per event (bare consume: {:.1} µs per message)",
            cpu * 1e6 / (done as f64).max(1.0),
            bare.cpu_secs * 1e6 / (bare.messages as f64).max(1.0)
        )?;
        writeln!(
            out,
            "  ratio to bare consume: {:.0}% from start, {:.0}% from the first document",
            100.0 * (done as f64 / total) / (bare.messages as f64 / bare.total_secs),
            100.0 * (done as f64 / from_first.max(1e-9))
                / (bare.messages as f64 / bare.from_first_secs.max(1e-9))
        )?;
    }
    Ok(())
}

/// What the bare consumer measured.
struct BareConsume {
    messages: u64,
    total_secs: f64,
    from_first_secs: f64,
    /// CPU time the bench process used meanwhile (the idle bulk endpoint aside, all consuming).
    cpu_secs: f64,
}

/// Consumes `n` messages of `topic` in a group of its own with the client
/// settings `cdc-monitor run` uses (`kafka_client::consumer_config` of the
/// same defaults), reading each payload's length and nothing more: the
/// ceiling the consumer's own work is measured against.
async fn bare_consume(brokers: &str, topic: &str, n: usize) -> anyhow::Result<BareConsume> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;

    let mut layers = Layers::default();
    let group = format!("bench-bare-{}-{}", std::process::id(), crate::now_millis());
    for (path, value) in [
        ("kafka.brokers", brokers),
        ("kafka.topics", topic),
        ("kafka.group_id", &group),
        ("es.url", "http://127.0.0.1:9"),
    ] {
        layers.set(path, value.to_owned(), Origin::Flag("bench"));
    }
    let cfg = Config::from_layers(&layers)?;
    let consumer: StreamConsumer = kafka_client::consumer_config(&cfg.kafka).create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let cpu_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let mut first: Option<Instant> = None;
    let (mut messages, mut bytes) = (0u64, 0usize);
    let deadline = started + Duration::from_secs(600);
    while messages < n as u64 && Instant::now() < deadline {
        let m = match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => continue,
        };
        first.get_or_insert_with(Instant::now);
        bytes += m.payload().map_or(0, <[u8]>::len);
        messages += 1;
    }
    anyhow::ensure!(bytes > 0, "the bare consumer read no bytes");
    Ok(BareConsume {
        messages,
        total_secs: started.elapsed().as_secs_f64(),
        from_first_secs: first.map_or(0.0, |f| f.elapsed().as_secs_f64()),
        cpu_secs: cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - cpu_before,
    })
}

/// A backlog of large messages (one wide text column each) through the
/// consumer into the bulk endpoint: the byte budget keeps the peak RSS
/// bounded whatever the message size.
pub async fn large_messages(
    args: &BenchArgs,
    sink: &BulkStub,
    out: &mut String,
) -> anyhow::Result<()> {
    let (n, size) = (args.large_messages, args.large_message_bytes);
    let (brokers, _broker) = broker::broker_on(args, &args.large_engine)?;
    let topic = format!("bench-large-{}", crate::now_millis());
    create_topic(&brokers, &topic, 1).await?;
    let p = broker::large_producer(&brokers, size)?;
    let started = Instant::now();
    let wide = "x".repeat(size);
    for i in 0..n as u64 {
        send(
            &p,
            &topic,
            &sample::large_message(i, sample::BASE_TS + i, &wide),
        );
    }
    p.flush(Duration::from_secs(600))?;
    writeln!(
        out,
        "large messages: produced {n} messages of {} KiB in {:.1} s",
        size >> 10,
        started.elapsed().as_secs_f64()
    )?;
    let before = sink.docs();
    let (child, _) = spawn_consumer(&brokers, &topic, sink, &[])?;
    let pid = child.0.id();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    let mut peak = 0.0f64;
    loop {
        let done = sink.docs() - before;
        peak = peak.max(peak_rss_mib(pid).unwrap_or(0.0));
        if done >= n as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = sink.docs() - before;
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "large messages end to end: {done} of {n} in {secs:.1} s = {:.0} messages/s ({:.0} MiB/s); peak RSS {peak:.1} MiB (CDC_PIPELINE_MAX_BYTES 64 MiB)",
        done as f64 / secs,
        (done as f64 * size as f64) / secs / (1 << 20) as f64
    )?;
    Ok(())
}

/// `--rate` events/s for `--latency-seconds` through a consumer with `env`
/// on top of its configuration: commit time → bulk receipt.
pub async fn latency(
    args: &BenchArgs,
    brokers: &str,
    sink: &BulkStub,
    env: &[(&str, &str)],
    out: &mut String,
) -> anyhow::Result<()> {
    let topic = format!("bench-latency-{}", crate::now_millis());
    create_topic(brokers, &topic, 1).await?;
    let p = broker::producer(brokers)?;
    // Create the topic before the consumer subscribes.
    send(&p, &topic, &sample::message(0, sample::now_ts()));
    p.flush(Duration::from_secs(30))?;
    let before = sink.docs();
    let (_child, _) = spawn_consumer(brokers, &topic, sink, env)?;
    // Measure the steady state: start once the consumer has joined its
    // group and stored the first message.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.docs() == before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consumer stored nothing within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.latencies_ms.lock().map(|mut l| l.clear()).ok();
    let p = broker::low_latency_producer(brokers)?;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let total = args.rate * args.latency_seconds;
    let started = Instant::now();
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        send(&p, &topic, &sample::message(i + 1, sample::now_ts()));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut l = sink
        .latencies_ms
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    l.sort_unstable();
    let pct = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(-1)
    };
    writeln!(
        out,
        "latency at {} events/s for {} s{} (commit time → bulk receipt, {} events): p50 {} ms, p99 {} ms, max {} ms",
        args.rate,
        args.latency_seconds,
        env.iter().map(|(k, v)| format!(" with {k}={v}")).collect::<String>(),
        l.len(),
        pct(0.50),
        pct(0.99),
        l.last().copied().unwrap_or(-1)
    )?;
    Ok(())
}
