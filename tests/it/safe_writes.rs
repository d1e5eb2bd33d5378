//! No write is ever skipped: a store that cannot write holds the line (no
//! later batch, checkpoint or commit) until it can, a permanent failure stops
//! the process without committing past it, the dead-letter path always has
//! somewhere to put a message, and forged table names cannot grow the
//! metrics without bound. Faults are real: the store's own file system runs
//! out of space.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use crate::binlog::write_changes_from;
use crate::harness::app::InProcessApp;
use crate::harness::canal;
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::mariadb::MariaDb;
use crate::harness::tmpfs::Tmpfs;
use crate::store::stored;

/// Stored events, all ops.
fn stored_total(dir: &std::path::Path) -> usize {
    stored(dir).values().sum()
}

/// A Kafka → embedded store pipeline in `data_dir`: topics created, old
/// commit times kept, offsets committed often.
async fn store_pipeline(
    prefix: &str,
    partitions: i32,
    data_dir: &std::path::Path,
) -> (Pipeline, Vec<(String, String)>) {
    let broker = broker();
    let p = Pipeline::new(prefix, &broker.bootstrap, "", partitions);
    broker.create_topic(&p.topic, p.partitions).await;
    broker.create_topic(&p.dlq, 1).await;
    let mut env = p.store_env(data_dir);
    // The generated changes were committed in 2023: keep them.
    env.push(("CDC_STORE_RETENTION".into(), "36500d".into()));
    env.push(("CDC_KAFKA_COMMIT_INTERVAL".into(), "200ms".into()));
    (p, env)
}

/// Waits until the group's committed offsets add up to `total`.
async fn assert_committed(p: &Pipeline, total: i64) {
    let broker = broker();
    let at_end = eventually(Duration::from_secs(20), || async {
        broker
            .committed(&p.group, &p.topic, p.partitions)
            .iter()
            .sum::<i64>()
            == total
    })
    .await;
    assert!(
        at_end,
        "committed {:?}, want {total} in all",
        broker.committed(&p.group, &p.topic, p.partitions)
    );
}

/// `/readyz` status code (0 when unreachable).
async fn readyz(p: &ConsumerProcess) -> (u16, String) {
    match reqwest::get(format!("http://{}/readyz", p.http())).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Fills `fs` and waits until the sink reports failing writes (`/readyz`
/// 503 naming the error, `cdc_sink_up` 0). Returns the 503 body.
async fn fill_until_failing(fs: &Tmpfs, p: &ConsumerProcess) -> String {
    fs.fill();
    until_failing(p).await
}

/// Waits until the sink reports failing writes; the store must already be
/// full and changes still arriving. Returns the 503 body.
async fn until_failing(p: &ConsumerProcess) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = readyz(p).await;
        if status == 503 && body.contains("writes failing") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never reported the failing store; last: {status} {body}; log:\n{}",
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(p.metric("cdc_sink_up", &[]).await, 0.0);
    body
}

/// `fill_until_failing`, then keeps the store full for `hold` and frees it.
async fn store_outage(fs: &Tmpfs, p: &ConsumerProcess, hold: Duration) -> String {
    let body = fill_until_failing(fs, p).await;
    tokio::time::sleep(hold).await;
    // Still failing, and still running, at the end of the outage.
    assert_eq!(readyz(p).await.0, 503, "{}", p.log_tail());
    fs.free();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_for_a_while_holds_the_line_and_loses_nothing() {
    const N: usize = 20_000;
    let broker = broker();
    let fs = Tmpfs::mount(256);
    let (p, env) = store_pipeline("full-store", 2, fs.path()).await;
    broker
        .produce(&p.topic, p.partitions, (0..N / 2).map(canal::message))
        .await;
    let mut consumer = ConsumerProcess::spawn(&env);
    let started = eventually(Duration::from_secs(60), || async {
        stored_total(fs.path()) >= 2_000
    })
    .await;
    assert!(started, "{}", consumer.log_tail());

    let producer = {
        let (broker, topic, parts) = (broker, p.topic.clone(), p.partitions);
        tokio::spawn(async move {
            broker
                .produce(&topic, parts, (N / 2..N).map(canal::message))
                .await
        })
    };
    let why = store_outage(&fs, &consumer, Duration::from_secs(10)).await;
    assert!(why.contains("disk_full"), "{why}");
    producer.await.unwrap();

    let all = eventually(Duration::from_secs(120), || async {
        stored_total(fs.path()) >= N
    })
    .await;
    assert!(
        all,
        "stored {} of {N}; log:\n{}",
        stored_total(fs.path()),
        consumer.log_tail()
    );
    assert!(consumer.try_exit().is_none(), "the process exited");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = stored(fs.path());
    for (op, n) in canal::op_counts(N) {
        assert_eq!(got.get(op).copied().unwrap_or(0), n, "{op}: {got:?}");
    }
    assert_eq!(readyz(&consumer).await.0, 200, "{}", consumer.log_tail());
    assert_eq!(consumer.metric("cdc_sink_up", &[]).await, 1.0);
    assert!(
        consumer
            .metric(
                "cdc_sink_errors_total",
                &["sink=\"sqlite\"", "kind=\"disk_full\""]
            )
            .await
            >= 1.0
    );
    // Every message is accounted for: stored, none dead-lettered, and the
    // group's offsets reach the end.
    assert_eq!(
        consumer.metric("cdc_dead_letter_messages_total", &[]).await,
        0.0
    );
    let at_end = eventually(Duration::from_secs(20), || async {
        broker
            .committed(&p.group, &p.topic, p.partitions)
            .iter()
            .sum::<i64>()
            == N as i64
    })
    .await;
    assert!(
        at_end,
        "committed {:?}",
        broker.committed(&p.group, &p.topic, p.partitions)
    );
    consumer.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_capture_survives_a_full_store_and_a_sigkill_during_it() {
    let db = MariaDb::start().await;
    let d = db.create_database("fullstore").await;
    db.exec(&format!(
        "CREATE TABLE {d}.k (id INT PRIMARY KEY, v VARCHAR(200))"
    ))
    .await;
    let fs = Tmpfs::mount(256);
    let mut env = db.capture_env(&format!("{d}.k"), fs.path());
    env.push(("CDC_RETRY_MAX_BACKOFF".into(), "1s".into()));
    let mut p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    let ready = eventually(Duration::from_secs(30), || async {
        readyz(&p).await.0 == 200
    })
    .await;
    assert!(ready, "{}", p.log_tail());

    let writer = |first_id: usize| {
        let root = db.server().root_opts();
        let d = d.clone();
        tokio::spawn(async move { write_changes_from(root, &d, first_id, 10_000).await })
    };
    // The first half may be written (and stored) before the store fills,
    // on a fast machine; the second half starts once it is full, so there
    // is always something the store cannot write.
    let first = writer(0);
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(500..1500))).await;
    fs.fill();
    let second = writer(1_000_000);
    let why = until_failing(&p).await;
    assert!(why.contains("sqlite writes failing"), "{why}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Killed while the store cannot write: what it held is read again.
    p.kill();
    fs.free();
    let mut p = ConsumerProcess::spawn(&env);
    let mut counts = first.await.unwrap();
    for (op, n) in second.await.unwrap() {
        *counts.entry(op).or_insert(0) += n;
    }
    let total: usize = counts.values().sum();
    // Plus CREATE DATABASE and CREATE TABLE.
    let done = eventually(Duration::from_secs(120), || async {
        stored_total(fs.path()) >= total + 2
    })
    .await;
    assert!(
        done,
        "stored {:?} of {counts:?}; log:\n{}",
        stored(fs.path()),
        p.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = stored(fs.path());
    for (op, n) in &counts {
        assert_eq!(got.get(*op).copied().unwrap_or(0), *n, "{op}: {got:?}");
    }
    assert_eq!(got.values().sum::<usize>(), total + 2, "{got:?}");
    assert!(p.try_exit().is_none(), "{}", p.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_not_a_database_stops_the_process_and_resumes_once_restored() {
    const N: usize = 1_000;
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let (p, env) = store_pipeline("notadb", 1, dir.path()).await;
    broker
        .produce(&p.topic, p.partitions, (0..N).map(canal::message))
        .await;
    let mut consumer = ConsumerProcess::spawn(&env);
    let first = eventually(Duration::from_secs(60), || async {
        stored_total(dir.path()) >= N
    })
    .await;
    assert!(first, "{}", consumer.log_tail());
    assert!(consumer.terminate(Duration::from_secs(30)).success());

    // The store is swapped for a file that is not SQLite.
    let db = dir.path().join("events.db");
    let aside = dir.path().join("events.db.good");
    std::fs::rename(&db, &aside).unwrap();
    std::fs::write(&db, vec![b'x'; 64 << 10]).unwrap();
    broker
        .produce(&p.topic, p.partitions, (N..2 * N).map(canal::message))
        .await;
    let mut consumer = ConsumerProcess::spawn(&env);
    let status = consumer.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "{status:?}");
    assert_eq!(status.code(), Some(1), "{}", consumer.log_tail());
    let log = consumer.log_tail();
    assert!(
        log.contains("events.db") && log.contains("not a database") && log.contains("restore"),
        "the message names the file, the cause and what to do:\n{log}"
    );

    // Restored: everything produced meanwhile arrives, once.
    std::fs::rename(&aside, &db).unwrap();
    let consumer = ConsumerProcess::spawn(&env);
    let all = eventually(Duration::from_secs(60), || async {
        stored_total(dir.path()) >= 2 * N
    })
    .await;
    assert!(all, "{}", consumer.log_tail());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_total(dir.path()), 2 * N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_topic_refuses_goes_to_the_file_and_the_stream_goes_on() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let (p, mut env) = store_pipeline("dlq-refuses", 1, dir.path()).await;
    // The dead-letter topic takes messages up to 100 KB (plus headers): the
    // 300 kB undecodable one below is more than it can ever take.
    env.push(("CDC_KAFKA_MESSAGE_MAX_BYTES".into(), "100KB".into()));
    let huge = vec![b'{'; 300_000];
    let small_bad = b"not json".to_vec();
    let payloads: Vec<Vec<u8>> = (0..100)
        .map(canal::message)
        .chain([huge.clone(), small_bad])
        .chain((100..200).map(canal::message))
        .collect();
    broker.produce(&p.topic, p.partitions, payloads).await;
    let consumer = InProcessApp::spawn(&env).await;
    let all = eventually(Duration::from_secs(60), || async {
        stored_total(dir.path()) >= 200
    })
    .await;
    assert!(all, "{}", consumer.log_tail());

    // The small undecodable message is in the topic, the huge one in the file.
    let letters = broker.read_all(&p.dlq, 1, Duration::from_secs(20));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let file = dir.path().join("dead-letters.jsonl");
    let read_file = || std::fs::read_to_string(&file).unwrap_or_default();
    let in_file = eventually(Duration::from_secs(20), || async {
        read_file().lines().count() == 1
    })
    .await;
    assert!(in_file, "{}\n{}", read_file(), consumer.log_tail());
    let line: serde_json::Value = serde_json::from_str(read_file().trim()).unwrap();
    assert_eq!(line["stage"], "decode", "{line}");
    assert_eq!(line["payload"].as_str().unwrap().len(), huge.len());
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("dead-letter topic refused"),
        "{line}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "dead letters hold captured rows");
    assert_eq!(
        consumer
            .metric("cdc_dead_letter_messages_total", &["destination=\"file\""])
            .await,
        1.0
    );
    assert_eq!(
        consumer
            .metric("cdc_dead_letter_messages_total", &["destination=\"topic\""])
            .await,
        1.0
    );
    // And the offsets pass both.
    assert_committed(&p, 202).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_table_names_cannot_grow_the_metrics_without_bound() {
    const TABLES: usize = 2_000;
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let (p, env) = store_pipeline("forged", 1, dir.path()).await;
    let payloads = (0..TABLES).map(|i| {
        let ts = canal::BASE_TS + i as u64;
        serde_json::to_vec(&json!({
            "id": 0, "database": "forged", "table": format!("t{i}"), "pkNames": ["id"],
            "isDdl": false, "type": "INSERT", "es": ts >> 18, "ts": ts >> 18, "sql": "",
            "sqlType": {"id": -5}, "mysqlType": {"id": "bigint"},
            "data": [{"id": i.to_string()}], "old": null, "_tidb": {"commitTs": ts}
        }))
        .unwrap()
    });
    broker.produce(&p.topic, p.partitions, payloads).await;
    let consumer = InProcessApp::spawn(&env).await;
    let all = eventually(Duration::from_secs(60), || async {
        consumer.metric("cdc_events_total", &[]).await >= TABLES as f64
    })
    .await;
    assert!(all, "{}", consumer.log_tail());
    let metrics = consumer.metrics().await;
    let pairs: HashSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("cdc_events_total{"))
        .filter_map(|l| l.split_once('}').map(|(labels, _)| labels))
        .collect();
    assert!(pairs.len() <= 1_001, "{} label sets", pairs.len());
    assert_eq!(
        consumer
            .metric("cdc_events_total", &["table=\"_other\""])
            .await,
        (TABLES - 1_000) as f64
    );
    assert_eq!(
        consumer
            .metric("cdc_metrics_tables_overflow_total", &[])
            .await,
        (TABLES - 1_000) as f64
    );
    // Every event is stored all the same.
    assert_eq!(stored_total(dir.path()), TABLES);
}
