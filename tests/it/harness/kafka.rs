//! A Kafka-protocol broker for the tests: Tansu started once per test run on
//! a port of its own with the sqlite engine (real offsets and high watermarks), or
//! the cluster in `CDC_TEST_KAFKA_BROKERS`. Plus topic, produce and read helpers.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// A consumed message: payload and headers as (name, value).
pub type Record = (Vec<u8>, Vec<(String, String)>);

/// The broker every test in this run shares (each test uses its own topics and groups).
pub struct Broker {
    pub bootstrap: String,
    /// librdkafka properties every client of the tests sets (TLS).
    properties: Vec<(String, String)>,
    _process: Option<BrokerProcess>,
}

struct BrokerProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static BROKER: OnceLock<Broker> = OnceLock::new();

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    PathBuf::from("tansu")
}

/// The shared broker, started on first use.
pub fn broker() -> &'static Broker {
    BROKER.get_or_init(|| {
        if let Ok(b) = std::env::var("CDC_TEST_KAFKA_BROKERS") {
            if !b.is_empty() {
                return Broker {
                    bootstrap: b,
                    properties: Vec::new(),
                    _process: None,
                };
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let (child, port) = super::ports::spawn_listening("tansu", std::slice::from_ref(&log), |port| {
            let url = format!("tcp://127.0.0.1:{port}");
            let file = std::fs::File::create(&log).unwrap();
            // Statics are never dropped, so the broker cannot be killed on Drop
            // at exit: a shell watchdog kills it once this test process is gone.
            let script = format!(
                "\"$0\" broker --listener-url {url} --advertised-listener-url {url} --storage-engine sqlite://tansu.db & t=$!; \
                 while kill -0 {pid} 2>/dev/null && kill -0 $t 2>/dev/null; do sleep 1; done; kill $t 2>/dev/null; wait $t",
                pid = std::process::id()
            );
            Command::new("sh")
                .args(["-c", &script])
                .arg(tansu_bin())
                .current_dir(dir.path())
                .env("RUST_LOG", "warn")
                // Tansu says "Address already in use" on stdout.
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start tansu ({}): {e}; run scripts/test.sh or install it", tansu_bin().display()))
        });
        let bootstrap = format!("127.0.0.1:{port}");
        // The OnceLock lives until the process exits; the broker with it.
        Broker {
            bootstrap,
            properties: Vec::new(),
            _process: Some(BrokerProcess { child, _dir: dir }),
        }
    })
}

impl Broker {
    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Creates a topic and waits until its metadata shows every partition.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let res = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .unwrap();
        for r in res {
            if let Err((t, e)) = r {
                panic!("create topic {t}: {e}");
            }
        }
        let consumer: BaseConsumer = self.config().create().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let md = consumer.fetch_metadata(Some(name), Duration::from_secs(5));
            if let Ok(md) = md {
                if md.topics().first().is_some_and(|t| {
                    t.partitions().len() == partitions as usize && t.error().is_none()
                }) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "topic {name} not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An idempotent producer.
    pub fn producer(&self) -> FutureProducer {
        self.config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "1000")
            .create()
            .unwrap()
    }

    /// Produces `payloads` to `topic`, partition chosen as `i % partitions`, and waits for all.
    pub async fn produce(
        &self,
        topic: &str,
        partitions: i32,
        payloads: impl IntoIterator<Item = Vec<u8>>,
    ) {
        let producer = self.producer();
        let mut pending = Vec::new();
        for (i, p) in payloads.into_iter().enumerate() {
            let part = (i as i32) % partitions;
            let producer = producer.clone();
            let topic = topic.to_owned();
            pending.push(async move {
                let key = format!("k{i}");
                let rec = FutureRecord::to(&topic)
                    .partition(part)
                    .key(&key)
                    .payload(&p);
                producer
                    .send(rec, Duration::from_secs(60))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            });
            if pending.len() >= 2000 {
                for r in futures::future::join_all(pending.drain(..)).await {
                    r.unwrap();
                }
            }
        }
        for r in futures::future::join_all(pending).await {
            r.unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Every message of `topic` from the start: (payload, headers).
    pub fn read_all(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", super::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < expected && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((m.payload().unwrap_or_default().to_vec(), headers));
            }
        }
        out
    }

    /// The group's committed offsets for `topic`, partition 0..partitions.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.config().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let c = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        c.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect()
    }
}

/// A Tansu broker of one test's own, which the test can stop and start again
/// on the same port and data (sqlite engine).
pub struct PrivateBroker {
    pub bootstrap: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a fresh broker on a port of its own.
    pub fn start() -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let (child, port) =
            super::ports::spawn_listening("tansu", std::slice::from_ref(&log), |port| {
                Self::spawn(dir.path(), port)
            });
        PrivateBroker {
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            dir,
            child: Some(child),
        }
    }

    /// Starts the broker again with the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Self::spawn(self.dir.path(), self.port);
        let log = self.dir.path().join("tansu.log");
        // The clients know this port: there is no other to try. Nothing of
        // this run takes it meanwhile (see `ports::candidate`).
        super::ports::wait_listening("tansu", &mut child, self.port, &[log]);
        self.child = Some(child);
    }

    /// Starts a fresh broker that tells clients to connect to
    /// 127.0.0.1:`advertised` (a proxy in front of it) instead.
    pub fn start_advertising(advertised: u16) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let (child, port) =
            super::ports::spawn_listening("tansu", std::slice::from_ref(&log), |port| {
                Self::spawn_advertising(dir.path(), port, advertised)
            });
        PrivateBroker {
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            dir,
            child: Some(child),
        }
    }

    /// Starts Tansu on `port` with its data and log (`tansu.log`) in `dir`; does not wait.
    pub fn spawn(dir: &std::path::Path, port: u16) -> Child {
        Self::spawn_advertising(dir, port, port)
    }

    /// `spawn`, advertising 127.0.0.1:`advertised` to clients.
    pub fn spawn_advertising(dir: &std::path::Path, port: u16, advertised: u16) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .unwrap();
        Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir)
            // Tansu says "Address already in use" on stdout.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu ({}): {e}", tansu_bin().display()))
    }

    /// Kills the broker (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The same helpers as the shared broker, against this one.
    pub fn client(&self) -> Broker {
        self.client_via(&self.bootstrap, &[])
    }

    /// The helpers against `bootstrap` (a proxy in front of this broker),
    /// with `properties` on every client.
    pub fn client_via(&self, bootstrap: &str, properties: &[(&str, String)]) -> Broker {
        Broker {
            bootstrap: bootstrap.to_owned(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            _process: None,
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
