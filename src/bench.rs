//! `cdc-monitor bench`: prints throughput, latency and memory numbers.
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

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::canal::{decode, Decoded};
use crate::cli::BenchArgs;
use crate::event::SourcePosition;
use crate::sink::elasticsearch::bulk;

/// A canal-json INSERT like TiCDC writes for a small table.
pub fn sample_message(id: u64, commit_ts: u64) -> String {
    format!(
        concat!(
            r#"{{"id":0,"database":"appdb","table":"users","pkNames":["id"],"isDdl":false,"type":"INSERT","#,
            r#""es":{es},"ts":{es},"sql":"","sqlType":{{"id":-5,"username":12,"email":12,"created_at":93}},"#,
            r#""mysqlType":{{"id":"bigint","username":"varchar","email":"varchar","created_at":"timestamp"}},"#,
            r#""old":null,"data":[{{"id":"{id}","username":"user{id}","email":"user{id}@example.com","created_at":"2024-01-01 00:00:00"}}],"#,
            r#""_tidb":{{"commitTs":{ts}}}}}"#
        ),
        id = id,
        ts = commit_ts,
        es = commit_ts >> 18
    )
}

/// Runs the benchmarks and returns the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "machine: {} cores, {}", cores(), cpu_model())?;
    cpu(&args, &mut out)?;
    if args.store_events > 0 {
        store(args.store_events, &mut out).await?;
    }
    if args.backlog == 0
        && args.latency_seconds == 0
        && args.binlog_rows == 0
        && args.large_messages == 0
    {
        return Ok(out);
    }
    let sink = BulkStub::start().await?;
    if args.large_messages > 0 {
        large_messages(&args, &sink, &mut out).await?;
    }
    if args.binlog_rows > 0 {
        let (brokers, _broker) = broker(&args)?;
        binlog(&args, &brokers, &sink, &mut out).await?;
    }
    if args.backlog > 0 {
        let (brokers, _broker) = broker(&args)?;
        backlog(&args, &brokers, &sink, &mut out).await?;
    }
    if args.latency_seconds > 0 {
        // A fresh broker: the backlog's million messages stay out of the
        // steady-state measurement.
        let (brokers, _broker) = broker(&args)?;
        latency(&args, &brokers, &sink, &[], &mut out).await?;
        // Tansu answers a fetch only when fetch.wait.max.ms runs out, even
        // when data is there; a real Kafka answers once data arrives.
        latency(
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

fn cpu(args: &BenchArgs, out: &mut String) -> anyhow::Result<()> {
    let n = args.events.max(1);
    let messages: Vec<String> = (0..n as u64)
        .map(|i| sample_message(i, 445_318_436_315_725_826 + i))
        .collect();
    let topic: Arc<str> = Arc::from("tidb-cdc");
    let mut body = Vec::with_capacity(6 << 20);
    let started = Instant::now();
    let mut events = 0usize;
    for (i, m) in messages.iter().enumerate() {
        let pos = SourcePosition::Kafka {
            topic: topic.clone(),
            partition: 0,
            offset: i as i64,
        };
        if let Decoded::Events(evs) = decode(m.as_bytes(), &pos)? {
            for e in &evs {
                bulk::encode(&mut body, "cdc-events", e, "2024-01-01T00:00:00.000Z");
                events += 1;
            }
        }
        if body.len() > (5 << 20) {
            body.clear();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "decode+encode: {events} events in {secs:.3} s = {:.0} events/s on one core",
        events as f64 / secs
    )?;
    Ok(())
}

/// The broker to use: `--brokers`, or a Tansu started for this phase.
fn broker(args: &BenchArgs) -> anyhow::Result<(String, Option<KillOnDrop>)> {
    broker_on(args, "memory://tansu/")
}

/// `broker` with Tansu on `engine`.
fn broker_on(args: &BenchArgs, engine: &str) -> anyhow::Result<(String, Option<KillOnDrop>)> {
    match &args.brokers {
        Some(b) => Ok((b.clone(), None)),
        None => {
            let (addr, child) = start_tansu(&args.tansu, engine)?;
            Ok((addr, Some(KillOnDrop(child))))
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_tansu(bin: &str, engine: &str) -> anyhow::Result<(String, Child)> {
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("cdc-bench-tansu-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(bin)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", engine])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {bin}: {e} (install: cargo install tansu --locked --features dynostore,libsql)"))?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((addr, child))
}

/// Bulk endpoint that stores nothing and acknowledges everything.
#[derive(Clone)]
struct BulkStub {
    addr: SocketAddr,
    docs: Arc<AtomicU64>,
    latencies_ms: Arc<Mutex<Vec<i64>>>,
}

impl BulkStub {
    async fn start() -> anyhow::Result<BulkStub> {
        let stub = BulkStub {
            addr: "127.0.0.1:0".parse()?,
            docs: Arc::new(AtomicU64::new(0)),
            latencies_ms: Arc::new(Mutex::new(Vec::new())),
        };
        let app = Router::new()
            .route(
                "/",
                get(|| async { "{\"version\":{\"number\":\"8.15.0\"}}" }),
            )
            .route(
                "/_index_template/{name}",
                get(|| async { "{}" }).head(|| async { "" }),
            )
            .route("/_bulk", post(bulk_handler))
            // Bulk bodies of 1 MiB documents exceed axum's 2 MB default.
            .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind(stub.addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(BulkStub { addr, ..stub })
    }
}

async fn bulk_handler(
    State(s): State<BulkStub>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], String) {
    let now = bulk::now_millis();
    let mut items = 0u64;
    let mut lat = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if i % 2 == 1 && !line.is_empty() {
            items += 1;
            if let Some(ts) = find_commit_ts(line) {
                lat.push(now - crate::canal::decode::tso_to_millis(ts));
            }
        }
    }
    s.docs.fetch_add(items, Ordering::Relaxed);
    if let Ok(mut l) = s.latencies_ms.lock() {
        l.extend(lat);
    }
    let mut resp = String::with_capacity(30 + items as usize * 30);
    resp.push_str("{\"took\":1,\"errors\":false,\"items\":[");
    for i in 0..items {
        if i > 0 {
            resp.push(',');
        }
        resp.push_str("{\"create\":{\"status\":201}}");
    }
    resp.push_str("]}");
    ([("content-type", "application/json")], resp)
}

fn find_commit_ts(doc: &[u8]) -> Option<u64> {
    let key = b"\"commit_ts\":";
    let at = doc.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = doc[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?)
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, payload: &str) {
    let mut record = BaseRecord::<(), str>::to(topic).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                // Queue full: let the background thread drain it.
                std::thread::sleep(Duration::from_millis(5));
                record = r;
            }
        }
    }
}

fn spawn_consumer(
    brokers: &str,
    topic: &str,
    sink: &BulkStub,
    env: &[(&str, &str)],
) -> anyhow::Result<(KillOnDrop, String)> {
    let port = free_port()?;
    let group = format!("bench-{}-{}", std::process::id(), bulk::now_millis());
    let child = Command::new(std::env::current_exe()?)
        .arg("run")
        .env("CDC_KAFKA_BROKERS", brokers)
        .env("CDC_KAFKA_TOPICS", topic)
        .env("CDC_KAFKA_GROUP_ID", &group)
        .env("CDC_DLQ_TOPIC", format!("{topic}-dlq"))
        .env("CDC_ES_URL", format!("http://{}", sink.addr))
        .env("CDC_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "CDC_LOG_LEVEL",
            std::env::var("CDC_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok((KillOnDrop(child), format!("127.0.0.1:{port}")))
}

/// Peak resident set size of `pid` in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn backlog(
    args: &BenchArgs,
    brokers: &str,
    sink: &BulkStub,
    out: &mut String,
) -> anyhow::Result<()> {
    let topic = format!("bench-backlog-{}", bulk::now_millis());
    let n = args.backlog;
    create_topic(brokers, &topic, 1).await?;
    let p = producer(brokers)?;
    let started = Instant::now();
    let base = 445_318_436_315_725_826u64;
    for i in 0..n as u64 {
        send(&p, &topic, &sample_message(i, base + i));
    }
    p.flush(Duration::from_secs(300))?;
    writeln!(
        out,
        "backlog: produced {n} events in {:.1} s",
        started.elapsed().as_secs_f64()
    )?;
    let before = sink.docs.load(Ordering::Relaxed);
    let (child, _) = spawn_consumer(brokers, &topic, sink, &[])?;
    let pid = child.0.id();
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let deadline = started + Duration::from_secs(600);
    loop {
        let done = sink.docs.load(Ordering::Relaxed) - before;
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if done >= n as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = sink.docs.load(Ordering::Relaxed) - before;
    let from_first = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let total = started.elapsed().as_secs_f64();
    let rss = peak_rss_mib(pid).unwrap_or(f64::NAN);
    writeln!(
        out,
        "end to end (broker → consumer → bulk endpoint): {done} events in {total:.1} s from start = {:.0} events/s ({:.0} events/s from the first document)",
        done as f64 / total,
        done as f64 / from_first.max(1e-9)
    )?;
    writeln!(out, "peak RSS while catching up {n} events: {rss:.1} MiB")?;
    Ok(())
}

/// A backlog of large messages (one wide text column each) through the
/// consumer into the bulk endpoint: the byte budget keeps the peak RSS
/// bounded whatever the message size.
async fn large_messages(args: &BenchArgs, sink: &BulkStub, out: &mut String) -> anyhow::Result<()> {
    let (n, size) = (args.large_messages, args.large_message_bytes);
    let (brokers, _broker) = broker_on(args, &args.large_engine)?;
    let topic = format!("bench-large-{}", bulk::now_millis());
    create_topic(&brokers, &topic, 1).await?;
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("message.max.bytes", (size + (64 << 10)).to_string())
        .set("queue.buffering.max.kbytes", "262144")
        .create()?;
    let started = Instant::now();
    let base = 445_318_436_315_725_826u64;
    let wide = "x".repeat(size);
    for i in 0..n as u64 {
        let ts = base + i;
        let msg = format!(
            concat!(
                r#"{{"id":0,"database":"appdb","table":"docs","pkNames":["id"],"isDdl":false,"type":"INSERT","#,
                r#""es":{es},"ts":{es},"sql":"","sqlType":{{"id":-5,"body":-1}},"mysqlType":{{"id":"bigint","body":"longtext"}},"#,
                r#""old":null,"data":[{{"id":"{id}","body":"{wide}"}}],"_tidb":{{"commitTs":{ts}}}}}"#
            ),
            id = i,
            ts = ts,
            es = ts >> 18,
            wide = wide
        );
        send(&p, &topic, &msg);
    }
    p.flush(Duration::from_secs(600))?;
    writeln!(
        out,
        "large messages: produced {n} messages of {} KiB in {:.1} s",
        size >> 10,
        started.elapsed().as_secs_f64()
    )?;
    let before = sink.docs.load(Ordering::Relaxed);
    let (child, _) = spawn_consumer(&brokers, &topic, sink, &[])?;
    let pid = child.0.id();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    let mut peak = 0.0f64;
    loop {
        let done = sink.docs.load(Ordering::Relaxed) - before;
        peak = peak.max(peak_rss_mib(pid).unwrap_or(0.0));
        if done >= n as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = sink.docs.load(Ordering::Relaxed) - before;
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "large messages end to end: {done} of {n} in {secs:.1} s = {:.0} messages/s ({:.0} MiB/s); peak RSS {peak:.1} MiB (CDC_PIPELINE_MAX_BYTES 64 MiB)",
        done as f64 / secs,
        (done as f64 * size as f64) / secs / (1 << 20) as f64
    )?;
    Ok(())
}

async fn latency(
    args: &BenchArgs,
    brokers: &str,
    sink: &BulkStub,
    env: &[(&str, &str)],
    out: &mut String,
) -> anyhow::Result<()> {
    let topic = format!("bench-latency-{}", bulk::now_millis());
    create_topic(brokers, &topic, 1).await?;
    let p = producer(brokers)?;
    // Create the topic before the consumer subscribes.
    send(
        &p,
        &topic,
        &sample_message(0, (bulk::now_millis() as u64) << 18),
    );
    p.flush(Duration::from_secs(30))?;
    let before = sink.docs.load(Ordering::Relaxed);
    let (_child, _) = spawn_consumer(brokers, &topic, sink, env)?;
    // Measure the steady state: start once the consumer has joined its
    // group and stored the first message.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.docs.load(Ordering::Relaxed) == before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consumer stored nothing within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.latencies_ms.lock().map(|mut l| l.clear()).ok();
    let p = ProducerLowLatency::new(brokers)?;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let total = args.rate * args.latency_seconds;
    let started = Instant::now();
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let ts = (bulk::now_millis() as u64) << 18;
        send(&p.0, &topic, &sample_message(i + 1, ts));
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

/// Fills the embedded store and measures it directly and through HTTP.
async fn store(events: usize, out: &mut String) -> anyhow::Result<()> {
    use crate::http::api::EventQuery;
    use crate::http::health::Readiness;
    use crate::http::{self, HttpState};
    let (bench, http) = crate::sink::sqlite::bench_then(events, |sink| async move {
        let state = HttpState {
            metrics: crate::metrics::Metrics::new(),
            readiness: Readiness::default(),
            query: Some(EventQuery::Sqlite(sink)),
        };
        let (listener, addr) = http::bind("127.0.0.1:0".parse().expect("valid address")).await?;
        let stop = tokio_util::sync::CancellationToken::new();
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
            let mut ms = Vec::with_capacity(50);
            for _ in 0..50 {
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
        Ok::<_, anyhow::Error>(lines)
    })
    .await?;
    write!(out, "{bench}")?;
    writeln!(
        out,
        "HTTP on the same store (50 requests each, one client):"
    )?;
    for l in http? {
        writeln!(out, "{l}")?;
    }
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn binlog(
    args: &BenchArgs,
    brokers: &str,
    sink: &BulkStub,
    out: &mut String,
) -> anyhow::Result<()> {
    use crate::quickstart::mariadb::MariaDb;
    let n = args.binlog_rows;
    let dir = std::env::temp_dir().join(format!("cdc-bench-mariadb-{}", std::process::id()));
    let db = MariaDb::start(&dir, free_port()?).await?;
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
    for mode in ["elasticsearch", "sqlite", "kafka"] {
        let port = free_port()?;
        let http = format!("127.0.0.1:{port}");
        let topic = format!("bench-binlog-{}", bulk::now_millis());
        if mode == "kafka" {
            create_topic(brokers, &topic, 3).await?;
        }
        let data = dir.join(format!("capture-{mode}"));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("run")
            .env("CDC_SOURCE", "binlog")
            .env("CDC_MYSQL_URL", db.capture_url())
            .env("CDC_TABLES", "bench.users")
            .env("CDC_BINLOG_START", "earliest")
            .env("CDC_DATA_DIR", &data)
            .env("CDC_HTTP_ADDR", &http)
            .env(
                "CDC_LOG_LEVEL",
                std::env::var("CDC_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
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
    }
    db.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A producer that sends at once, so the measured latency is the consumer's.
struct ProducerLowLatency(ThreadedProducer<DefaultProducerContext>);

impl ProducerLowLatency {
    fn new(brokers: &str) -> anyhow::Result<Self> {
        Ok(ProducerLowLatency(
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "0")
                .create()?,
        ))
    }
}

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
