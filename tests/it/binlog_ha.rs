//! `CDC_BINLOG_HA=kafka`: two capture processes against a real MariaDB and
//! Tansu, writing to the Elasticsearch stub (one stub node each, so the test
//! can tell who wrote). A standby takes over from a killed or paused
//! capturer, the paused one writes nothing after the takeover, and the
//! position outlives both data directories.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cdc_monitor::config::{Config, Layers};
use cdc_monitor::event::{ChangeEvent, Op, Row};
use cdc_monitor::metrics::Metrics;
use cdc_monitor::sink::{self, SinkError, WriteBatch};
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message as _};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::binlog::{capture_env, docs, wait_docs, write_changes_from};
use crate::harness::consumer::{sum_metric, Consumer, ConsumerProcess};
use crate::harness::es::{EsStub, EsTarget};
use crate::harness::kafka::broker;
use crate::harness::mariadb::MariaDb;
use crate::harness::unique;

/// The session timeout the instances run with: it bounds each takeover.
const SESSION: Duration = Duration::from_secs(6);

struct Group {
    db: MariaDb,
    d: String,
    es: EsTarget,
    /// The second stub node, instance 1's.
    node1: EsStub,
    index: String,
    envs: [Vec<(String, String)>; 2],
    dirs: [tempfile::TempDir; 2],
}

impl Group {
    async fn start(prefix: &str) -> Group {
        let db = MariaDb::start().await;
        let d = db.create_database(prefix).await;
        db.exec(&format!(
            "CREATE TABLE {d}.k (id INT PRIMARY KEY, v VARCHAR(200))"
        ))
        .await;
        let es = EsTarget::stub().await;
        let node1 = es.stub.as_ref().unwrap().start_node().await;
        let index = unique(prefix);
        let (group, topic) = (unique("ha-group"), unique("ha-positions"));
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let env = |i: usize| {
            let mut env = capture_env(&db, &d, &es, &index, dirs[i].path());
            env.extend(
                [
                    ("CDC_TABLES", format!("{d}.k")),
                    ("CDC_BINLOG_HA", "kafka".to_owned()),
                    ("CDC_BINLOG_POSITION_TOPIC", topic.clone()),
                    ("CDC_KAFKA_BROKERS", broker().bootstrap.clone()),
                    ("CDC_KAFKA_GROUP_ID", group.clone()),
                    (
                        "CDC_KAFKA_SESSION_TIMEOUT",
                        format!("{}s", SESSION.as_secs()),
                    ),
                    ("CDC_LOG_LEVEL", "info,librdkafka=warn".to_owned()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
            );
            if i == 1 {
                env.retain(|(k, _)| k != "CDC_ES_URL");
                env.push(("CDC_ES_URL".into(), node1.url()));
            }
            env
        };
        let envs = [env(0), env(1)];
        Group {
            db,
            d,
            es,
            node1,
            index,
            envs,
            dirs,
        }
    }

    fn spawn(&self, i: usize) -> ConsumerProcess {
        ConsumerProcess::spawn(&self.envs[i])
    }

    /// Bulk requests instance `i`'s stub node received.
    fn bulks_of(&self, i: usize) -> u64 {
        match i {
            0 => self.es.stub.as_ref().unwrap().node_bulk_requests(),
            _ => self.node1.node_bulk_requests(),
        }
    }

    /// Writes `chunks` of `n` changes, `pause` apart, each on rows of its
    /// own from id `first` on.
    fn write_slowly(
        &self,
        first: usize,
        chunks: usize,
        n: usize,
        pause: Duration,
    ) -> tokio::task::JoinHandle<HashMap<&'static str, usize>> {
        let (root, d) = (self.db.server().root_opts(), self.d.clone());
        tokio::spawn(async move {
            let mut counts = HashMap::new();
            for c in 0..chunks {
                for (op, k) in write_changes_from(root.clone(), &d, first + c * 2 * n, n).await {
                    *counts.entry(op).or_insert(0) += k;
                }
                tokio::time::sleep(pause).await;
            }
            counts
        })
    }

    /// Every change stored once: one document per change, none missing.
    async fn assert_all_stored_once(
        &self,
        counts: &HashMap<&'static str, usize>,
        p: &impl Consumer,
    ) {
        let total: usize = counts.values().sum();
        // The row changes plus CREATE DATABASE and CREATE TABLE.
        wait_docs(&self.es, &self.index, total as u64 + 2, p).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all = docs(&self.es, &self.index);
        assert_eq!(all.len(), total + 2, "documents are unique by id");
        for (op, n) in counts {
            let got = all.iter().filter(|x| x["op"] == *op).count();
            assert_eq!(got, *n, "{op}");
        }
        eprintln!(
            "{} changes stored once; {} were replayed and absorbed by their ids",
            total,
            self.es.stub.as_ref().unwrap().replayed_ids()
        );
    }
}

/// `/metrics` of `p`, or "" when it does not answer within 2 s (paused).
async fn metrics_of(p: &ConsumerProcess) -> String {
    let client = reqwest::Client::new();
    match client
        .get(format!("http://{}/metrics", p.http()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The instance (other than `not`) that reports itself capturing, within `timeout`.
async fn leader(procs: &[ConsumerProcess; 2], not: Option<usize>, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, p) in procs.iter().enumerate() {
            if Some(i) != not && sum_metric(&metrics_of(p).await, "cdc_binlog_leader", &[]) == 1.0 {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no instance leads within {timeout:?}; logs:\n{}\n---\n{}",
            procs[0].log_tail(),
            procs[1].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader once the group has settled: the same instance leads at two
/// looks 5 s apart (a member that joins moves leadership in a rebalance a
/// few seconds later).
async fn settled_leader(procs: &[ConsumerProcess; 2]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let first = leader(procs, None, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        if leader(procs, None, Duration::from_secs(60)).await == first {
            return first;
        }
        assert!(Instant::now() < deadline, "leadership never settled");
    }
}

async fn readyz(p: &ConsumerProcess) -> Value {
    let r = reqwest::get(format!("http://{}/readyz", p.http()))
        .await
        .unwrap();
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_capturer_and_every_change_is_stored_once() {
    let g = Group::start("hakill").await;
    let mut procs = [g.spawn(0), g.spawn(1)];
    let writer = g.write_slowly(0, 40, 500, Duration::from_millis(1500));
    for round in 0..3 {
        let was = settled_leader(&procs).await;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1000..3000))).await;
        procs[was].kill();
        let killed = Instant::now();
        let now = leader(&procs, Some(was), SESSION + Duration::from_secs(30)).await;
        let took = killed.elapsed();
        eprintln!(
            "kill {round}: instance {was} killed, instance {now} captures after {:.1} s \
             (session timeout {} s); {} documents so far",
            took.as_secs_f64(),
            SESSION.as_secs(),
            g.es.count(&g.index).await
        );
        assert!(
            took <= SESSION + Duration::from_secs(10),
            "takeover took {took:?}"
        );
        // Back as a standby.
        procs[was] = g.spawn(was);
    }
    let counts = writer.await.unwrap();
    assert_eq!(counts.values().sum::<usize>(), 20_000);
    g.assert_all_stored_once(&counts, &procs[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_capturer_writes_nothing_after_the_takeover_and_stands_by() {
    let g = Group::start("hastop").await;
    let procs = [g.spawn(0), g.spawn(1)];
    let writer = g.write_slowly(0, 30, 300, Duration::from_millis(700));
    let was = settled_leader(&procs).await;
    procs[was].signal("STOP");
    let stopped = Instant::now();
    let now = leader(&procs, Some(was), SESSION + Duration::from_secs(30)).await;
    eprintln!(
        "paused instance {was}; instance {now} captures after {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    // Paused well past the session timeout, changes flowing meanwhile.
    tokio::time::sleep((SESSION * 2).saturating_sub(stopped.elapsed())).await;
    let before = g.bulks_of(was);
    procs[was].signal("CONT");
    // Once it answers it stands by: the group has moved on. It may be
    // elected again later (a rejoin is a rebalance), and may write then; not
    // while it stands by. So the count is taken at each look that finds it
    // standing by, until one finds it leading again.
    let mut standing_by = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let bulks = g.bulks_of(was);
        let m = metrics_of(&procs[was]).await;
        if m.is_empty() {
            continue;
        }
        if sum_metric(&m, "cdc_binlog_leader", &[]) == 1.0 {
            break;
        }
        standing_by = Some(bulks);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standing_by = standing_by.unwrap_or_else(|| {
        panic!(
            "the resumed instance never stood by; log:\n{}",
            procs[was].log_tail()
        )
    });
    assert_eq!(
        standing_by,
        before,
        "the paused instance wrote after the takeover; log:\n{}",
        procs[was].log_tail()
    );
    let counts = writer.await.unwrap();
    let now = leader(&procs, None, Duration::from_secs(60)).await;
    g.assert_all_stored_once(&counts, &procs[now]).await;
    // Both say who captures.
    let other = 1 - now;
    let (leading, standby) = (readyz(&procs[now]).await, readyz(&procs[other]).await);
    assert_eq!(leading["binlog_ha"]["role"], "leader", "{leading}");
    assert_eq!(standby["binlog_ha"]["role"], "standby", "{standby}");
    assert_eq!(
        standby["binlog_ha"]["leader"], leading["binlog_ha"]["instance"],
        "{standby} / {leading}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_position_outlives_both_data_directories() {
    let g = Group::start("hadirs").await;
    let mut procs = [g.spawn(0), g.spawn(1)];
    leader(&procs, None, Duration::from_secs(60)).await;
    let counts = g.write_slowly(0, 2, 1_000, Duration::ZERO).await.unwrap();
    g.assert_all_stored_once(&counts, &procs[0]).await;
    // Stopped one at a time, each in a settled group: Tansu 0.6 may never
    // expire members that leave in the middle of a rebalance.
    let l = settled_leader(&procs).await;
    procs[1 - l].terminate(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(5)).await;
    leader(&procs, None, Duration::from_secs(60)).await;
    procs[l].terminate(Duration::from_secs(30));
    for dir in &g.dirs {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
    let replayed = g.es.stub.as_ref().unwrap().replayed_ids();
    // CDC_BINLOG_START=earliest: without the stored position this instance
    // would read every change again from the first binlog.
    let p = g.spawn(0);
    p.wait_for_log("binlog position read from Kafka", Duration::from_secs(60))
        .await;
    let more = g.write_slowly(10_000, 1, 1_000, Duration::ZERO);
    let mut all = counts.clone();
    for (op, n) in more.await.unwrap() {
        *all.entry(op).or_insert(0) += n;
    }
    g.assert_all_stored_once(&all, &p).await;
    assert_eq!(
        g.es.stub.as_ref().unwrap().replayed_ids(),
        replayed,
        "changes before the stored position were read again"
    );
}

/// The configuration of an HA capturer with the Kafka sink on `brokers`.
fn kafka_sink_ha_config(brokers: &str, topic: &str) -> Config {
    let toml = format!(
        "source = \"binlog\"\nsink = \"kafka\"\n\
         [mysql]\nurl = \"mysql://root:pw@127.0.0.1:3306\"\n[binlog]\nha = \"kafka\"\n\
         [kafka]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\n",
        unique("fence-group")
    );
    let layers = Layers::from_toml(&toml, Path::new("cdc.toml")).unwrap();
    Config::from_layers(&layers).unwrap()
}

/// Ten inserts of keys `from..from + 10`.
fn ten_rows(from: u32) -> Vec<ChangeEvent> {
    (from..from + 10)
        .map(|i| {
            let pk = Row::from_values([("id", json!(i.to_string()))]);
            ChangeEvent::row("d", "t", Op::Insert, pk.clone(), pk, None, 0)
        })
        .collect()
}

/// `write`'s answer, or a failure after 90 s (a broker without
/// transactions makes a transactional write retry for ever).
async fn within<T>(write: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), write)
        .await
        .expect("a transactional write took over 90 s: does the broker support transactions?")
}

/// The `id` of each canal-json message in `records`, in order.
fn ids_of(records: &[crate::harness::kafka::Record]) -> Vec<String> {
    records
        .iter()
        .map(|(payload, _)| {
            let v: Value = serde_json::from_slice(payload).unwrap();
            v["data"][0]["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// Point 2 with the Kafka sink: two instances' sinks, built from one HA
/// configuration, hold the group's transactional id in turn. The first
/// one's batch is committed; once the second has written, the first is
/// fenced (its write fails as fenced) and a reader of committed data sees
/// the two committed batches only. Tansu 0.6 cannot commit a transaction
/// (no EndTxn handler), so this runs against `CDC_TEST_KAFKA_BROKERS` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capturer_taken_over_is_fenced_out_of_the_kafka_sink() {
    if std::env::var_os("CDC_TEST_KAFKA_BROKERS").is_none() {
        eprintln!(
            "skipped: needs Kafka transactions, which Tansu 0.6 lacks; set CDC_TEST_KAFKA_BROKERS"
        );
        return;
    }
    let b = broker();
    let topic = unique("fenced");
    b.create_topic(&topic, 1).await;
    let cfg = kafka_sink_ha_config(&b.bootstrap, &topic);
    let metrics = Metrics::new();
    let abort = CancellationToken::new();
    let first = sink::build(&cfg, &metrics).unwrap();
    let second = sink::build(&cfg, &metrics).unwrap();
    let (a, c, zombie) = (ten_rows(0), ten_rows(10), ten_rows(20));
    within(first.write(WriteBatch::events(&a), &abort))
        .await
        .unwrap();
    // The standby takes over: its first write initialises the id.
    within(second.write(WriteBatch::events(&c), &abort))
        .await
        .unwrap();
    let e = within(first.write(WriteBatch::events(&zombie), &abort))
        .await
        .unwrap_err();
    assert!(matches!(e, SinkError::Fenced(_)), "{e}");
    let got = b.read_all(&topic, 30, Duration::from_secs(20));
    assert_eq!(
        ids_of(&got),
        ids(0..20),
        "only the committed batches, in order"
    );
}

/// The same sink against librdkafka's mock cluster, an in-process broker
/// that implements the transaction protocol (InitProducerId,
/// AddPartitionsToTxn, EndTxn, producer epochs) but does not fence by
/// transactional id itself: the broker's fencing answer is injected. A
/// batch is committed; a batch whose produce is refused once is aborted and
/// sent again, once; a produce answered `PRODUCER_FENCED` makes the write
/// fail as fenced, with nothing of that batch in the log; a later write (the
/// instance elected again) initialises a new producer and is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_commits_each_batch_and_stops_when_the_broker_fences_it() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("txn");
    mock.create_topic(&topic, 1, 1).unwrap();
    let cfg = kafka_sink_ha_config(&mock.bootstrap_servers(), &topic);
    let metrics = Metrics::new();
    let abort = CancellationToken::new();
    let sink = sink::build(&cfg, &metrics).unwrap();
    within(sink.write(WriteBatch::events(&ten_rows(0)), &abort))
        .await
        .unwrap();
    // A produce refused once: the transaction is aborted and the whole
    // batch sent again in a new one.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS],
    );
    within(sink.write(WriteBatch::events(&ten_rows(10)), &abort))
        .await
        .unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let e = within(sink.write(WriteBatch::events(&ten_rows(20)), &abort))
        .await
        .unwrap_err();
    assert!(matches!(e, SinkError::Fenced(_)), "{e}");
    within(sink.write(WriteBatch::events(&ten_rows(30)), &abort))
        .await
        .unwrap();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 30 && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            got.push((m.payload().unwrap_or_default().to_vec(), Vec::new()));
        }
    }
    assert_eq!(ids_of(&got), [ids(0..20), ids(30..40)].concat());
    let retries = sum_metric(&metrics.render(), "cdc_sink_retries_total", &[]);
    assert!(retries >= 1.0, "the refused produce was not retried");
}
