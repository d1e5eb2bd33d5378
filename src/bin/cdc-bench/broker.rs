//! The Kafka-protocol broker: `--brokers`, or a Tansu started per phase;
//! topics and producers on it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cdc_monitor::cli::BenchArgs;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use crate::process::{free_port, KillOnDrop};

/// The broker to use: `--brokers`, or a Tansu started for this phase.
pub fn broker(args: &BenchArgs) -> anyhow::Result<(String, Option<KillOnDrop>)> {
    broker_on(args, "memory://tansu/")
}

/// `broker` with Tansu on `engine`.
pub fn broker_on(args: &BenchArgs, engine: &str) -> anyhow::Result<(String, Option<KillOnDrop>)> {
    match &args.brokers {
        Some(b) => Ok((b.clone(), None)),
        None => start_tansu(&args.tansu, engine),
    }
}

fn start_tansu(bin: &str, engine: &str) -> anyhow::Result<(String, Option<KillOnDrop>)> {
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
    let child = KillOnDrop(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((addr, Some(child)))
}

/// Creates `topic` with `partitions` partitions, replication 1.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
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

/// A producer that batches, for filling backlogs.
pub fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?)
}

/// A producer for messages of up to `size` bytes.
pub fn large_producer(
    brokers: &str,
    size: usize,
) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("message.max.bytes", (size + (64 << 10)).to_string())
        .set("queue.buffering.max.kbytes", "262144")
        .create()?)
}

/// A producer that sends at once, so the measured latency is the consumer's.
pub fn low_latency_producer(
    brokers: &str,
) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()?)
}

/// Queues `payload` for `topic`, waiting while the producer's queue is full.
pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, payload: &str) {
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
