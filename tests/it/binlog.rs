//! Binlog capture against a real MariaDB: values of every common type,
//! DDL mid-stream, SIGKILL and restart without loss or duplicates, the
//! privilege check, and MariaDB → capture → Kafka → consumer → Elasticsearch.
//! Captures run in process unless a test signals them or checks how they exit.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};

use crate::harness::app::InProcessApp;
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::EsTarget;
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::mariadb::MariaDb;

/// Environment of a capture process writing into Elasticsearch.
pub fn capture_env(
    db: &MariaDb,
    database: &str,
    es: &EsTarget,
    index: &str,
    data_dir: &std::path::Path,
) -> Vec<(String, String)> {
    let mut env = db.capture_env(&format!("{database}.*"), data_dir);
    env.extend(
        [
            ("CDC_ES_URL", es.url.clone()),
            ("CDC_ES_INDEX", index.to_owned()),
            ("CDC_RETRY_MAX_BACKOFF", "2s".to_owned()),
            ("CDC_KAFKA_COMMIT_INTERVAL", "200ms".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

/// Documents of `index` by (table, op) → list, from the stub.
pub fn docs(es: &EsTarget, index: &str) -> Vec<Value> {
    es.stub
        .as_ref()
        .expect("binlog tests read documents from the stub")
        .docs(index)
        .into_values()
        .collect()
}

pub async fn wait_docs(es: &EsTarget, index: &str, n: u64, p: &impl Consumer) {
    let ok = eventually(Duration::from_secs(60), || async {
        es.count(index).await >= n
    })
    .await;
    assert!(
        ok,
        "only {} of {n} documents; log:\n{}",
        es.count(index).await,
        p.log_tail()
    );
}

/// Environment of a capture process publishing `tables` as canal-json to
/// `pipeline`'s topic (`CDC_SINK=kafka`).
pub fn kafka_capture_env(
    db: &MariaDb,
    tables: &str,
    data_dir: &std::path::Path,
    pipeline: &Pipeline,
) -> Vec<(String, String)> {
    let mut env = db.capture_env(tables, data_dir);
    env.extend(
        [
            ("CDC_SINK", "kafka"),
            ("CDC_KAFKA_BROKERS", pipeline.brokers.as_str()),
            ("CDC_KAFKA_TOPICS", pipeline.topic.as_str()),
            ("CDC_DLQ_TOPIC", pipeline.dlq.as_str()),
            ("CDC_LOG_LEVEL", "info,librdkafka=warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

/// Waits until `pipeline`'s index holds `n` documents, with both logs on failure.
pub async fn wait_pipeline(
    es: &EsTarget,
    pipeline: &Pipeline,
    n: u64,
    capture: &impl Consumer,
    consumer: &impl Consumer,
) {
    let ok = eventually(Duration::from_secs(90), || async {
        es.count(&pipeline.index).await >= n
    })
    .await;
    assert!(
        ok,
        "{} of {n}; capture:\n{}\nconsumer:\n{}",
        es.count(&pipeline.index).await,
        capture.log_tail(),
        consumer.log_tail()
    );
}

fn find<'a>(docs: &'a [Value], op: &str, id: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["op"] == op && d["pk"]["id"] == id)
        .unwrap_or_else(|| panic!("no {op} of id {id} in {docs:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_every_common_type_come_out_with_the_right_values() {
    let db = MariaDb::start().await;
    let d = db.create_database("types").await;
    db.exec(&format!(
        "CREATE TABLE {d}.t (
            id INT UNSIGNED PRIMARY KEY,
            tiny TINYINT, big BIGINT UNSIGNED, price DECIMAL(20,4), ratio DOUBLE,
            name VARCHAR(50) CHARACTER SET utf8mb4, body TEXT,
            born DATE, seen DATETIME(3), at TIMESTAMP NULL, doc JSON,
            state ENUM('new','paid','shipped'), flags SET('a','b','c'), raw VARBINARY(8), bits BIT(10)
        );
        INSERT INTO {d}.t VALUES
          (1, -128, 18446744073709551615, 12345678901234.5678, 1.5, 'zoë 🚀', 'long text', '2024-02-29',
           '2024-02-29 13:04:05.120', '2024-03-01 00:00:01', '{{\"k\": [1, 2]}}', 'paid', 'a,c', X'00FF61', b'1000000001'),
          (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        UPDATE {d}.t SET name = 'renamed', id = 3 WHERE id = 2;
        DELETE FROM {d}.t WHERE id = 1;"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcessApp::spawn(&capture_env(&db, &d, &es, "types", dir.path())).await;
    // 2 inserts, 1 update, 1 delete, CREATE DATABASE and CREATE TABLE.
    wait_docs(&es, "types", 6, &p).await;
    let all = docs(&es, "types");

    let one = find(&all, "insert", "1");
    // MariaDB's JSON is LONGTEXT: the text comes back as written (MySQL's
    // binary JSON would come back normalised).
    let want = json!({
        "id": "1", "tiny": "-128", "big": "18446744073709551615", "price": "12345678901234.5678",
        "ratio": "1.5", "name": "zoë 🚀", "body": "long text", "born": "2024-02-29",
        "seen": "2024-02-29 13:04:05.120", "doc": "{\"k\": [1, 2]}", "state": "paid", "flags": "a,c",
        "raw": "\u{0}\u{ff}a", "bits": "513"
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&one["data"][k], v, "column {k}: {}", one["data"]);
    }
    // TIMESTAMP is rendered in UTC; the server runs in the machine's zone.
    assert!(
        one["data"]["at"].as_str().unwrap().starts_with("2024-"),
        "{}",
        one["data"]["at"]
    );
    assert_eq!(one["database"], d.as_str());
    assert_eq!(one["table"], "t");
    assert!(one["binlog"]["file"].as_str().unwrap().contains("binlog"));
    assert!(one["commit_ts"].as_u64().unwrap() > 0);

    let two = find(&all, "insert", "2");
    for col in [
        "tiny", "big", "price", "name", "born", "seen", "doc", "state", "raw", "bits",
    ] {
        assert!(
            two["data"][col].is_null(),
            "{col} should be null: {}",
            two["data"]
        );
    }
    // A primary-key change: new key in `pk` and `data`, the old one in `old`.
    let upd = find(&all, "update", "3");
    assert_eq!(upd["data"]["name"], "renamed");
    assert_eq!(upd["old"]["id"], "2");
    assert!(upd["old"]["name"].is_null());
    let del = find(&all, "delete", "1");
    assert_eq!(del["data"]["name"], "zoë 🚀");
    assert!(all
        .iter()
        .any(|x| x["op"] == "ddl" && x["sql"].as_str().unwrap().contains("CREATE TABLE")));

    // Source metrics.
    let m = p.metrics().await;
    assert!(
        crate::harness::consumer::sum_metric(
            &m,
            "cdc_binlog_events_captured_total",
            &["op=\"insert\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(crate::harness::consumer::sum_metric(&m, "cdc_binlog_position_bytes", &[]) > 0.0);
    assert_eq!(p.metric("cdc_events_total", &["op=\"update\""]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_after_a_ddl_carry_the_new_column() {
    let db = MariaDb::start().await;
    let d = db.create_database("ddl").await;
    db.exec(&format!("CREATE TABLE {d}.u (id INT PRIMARY KEY, name VARCHAR(20)); INSERT INTO {d}.u VALUES (1, 'a');")).await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcessApp::spawn(&capture_env(&db, &d, &es, "ddl", dir.path())).await;
    wait_docs(&es, "ddl", 3, &p).await; // CREATE DATABASE, CREATE TABLE, insert 1
    db.exec(&format!(
        "ALTER TABLE {d}.u ADD COLUMN age INT; INSERT INTO {d}.u VALUES (2, 'b', 42);"
    ))
    .await;
    wait_docs(&es, "ddl", 5, &p).await; // and ALTER TABLE, insert 2
    let all = docs(&es, "ddl");
    assert_eq!(
        find(&all, "insert", "2")["data"],
        json!({"id": "2", "name": "b", "age": "42"})
    );
    assert_eq!(
        find(&all, "insert", "1")["data"],
        json!({"id": "1", "name": "a"})
    );
    assert!(all
        .iter()
        .any(|x| x["op"] == "ddl" && x["sql"].as_str().unwrap().contains("ADD COLUMN age")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_resumes_by_gtid_even_when_the_stored_file_is_unknown() {
    let db = MariaDb::start().await;
    let d = db.create_database("gtid").await;
    db.exec(&format!(
        "CREATE TABLE {d}.g (id INT PRIMARY KEY); INSERT INTO {d}.g VALUES (1), (2);"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let env = capture_env(&db, &d, &es, "gtid", dir.path());
    let mut p = ConsumerProcess::spawn(&env);
    wait_docs(&es, "gtid", 4, &p).await; // CREATE DATABASE, CREATE TABLE, 2 inserts
    assert!(p.terminate(Duration::from_secs(30)).success());
    let path = dir.path().join("binlog-position.json");
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let gtid = stored["gtid"].as_str().unwrap().to_owned();
    assert!(gtid.starts_with("0-1-"), "{stored}");
    // As after a failover to a replica whose files are named differently.
    stored["file"] = json!("other-host-bin.000042");
    stored["pos"] = json!(4);
    std::fs::write(&path, serde_json::to_vec(&stored).unwrap()).unwrap();
    db.exec(&format!("INSERT INTO {d}.g VALUES (3)")).await;
    let p = ConsumerProcess::spawn(&env);
    wait_docs(&es, "gtid", 5, &p).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = docs(&es, "gtid");
    assert_eq!(all.len(), 5, "nothing replayed, nothing missed: {all:#?}");
    find(&all, "insert", "3");
    assert_eq!(es.stub.as_ref().unwrap().replayed_ids(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_waits_for_a_server_that_is_down_and_rides_out_a_restart() {
    let mut db = MariaDb::start().await;
    let d = db.create_database("down").await;
    db.exec(&format!(
        "CREATE TABLE {d}.w (id INT PRIMARY KEY); INSERT INTO {d}.w VALUES (1);"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let env = capture_env(&db, &d, &es, "down", dir.path());
    db.kill();
    let p = InProcessApp::spawn(&env).await;
    p.wait_healthy().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(p.is_running(), "must wait, not exit:\n{}", p.log_tail());
    let ready = reqwest::get(format!("http://{}/readyz", p.http()))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(p.metric("cdc_binlog_reconnects_total", &[]).await >= 1.0);

    db.start_again().await;
    wait_docs(&es, "down", 3, &p).await; // CREATE DATABASE, CREATE TABLE, insert 1
                                         // A restart mid-stream: the stream reconnects from where it was.
    db.restart().await;
    db.exec(&format!("INSERT INTO {d}.w VALUES (2)")).await;
    wait_docs(&es, "down", 4, &p).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(docs(&es, "down").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_rows_of_a_table_without_primary_key_stay_two_changes() {
    let db = MariaDb::start().await;
    let d = db.create_database("nopk").await;
    db.exec(&format!(
        "CREATE TABLE {d}.log (msg VARCHAR(20)); INSERT INTO {d}.log VALUES ('same'), ('same');"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcessApp::spawn(&capture_env(&db, &d, &es, "nopk", dir.path())).await;
    wait_docs(&es, "nopk", 4, &p).await; // CREATE DATABASE, CREATE TABLE, 2 inserts
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = docs(&es, "nopk");
    let inserts: Vec<&Value> = all.iter().filter(|x| x["op"] == "insert").collect();
    assert_eq!(inserts.len(), 2, "{all:#?}");
    assert!(inserts
        .iter()
        .all(|x| x["data"]["msg"] == "same" && x["pk"] == json!({})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_position_is_reported_with_what_to_do() {
    let db = MariaDb::start().await;
    let d = db.create_database("purged").await;
    db.exec(&format!(
        "CREATE TABLE {d}.p (id INT PRIMARY KEY); INSERT INTO {d}.p VALUES (1);"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let env = capture_env(&db, &d, &es, "purged", dir.path());
    let mut p = ConsumerProcess::spawn(&env);
    wait_docs(&es, "purged", 3, &p).await;
    assert!(p.terminate(Duration::from_secs(30)).success());
    // Changes made while capture is stopped, then purged before it returns.
    db.exec(&format!(
        "INSERT INTO {d}.p VALUES (2); FLUSH BINARY LOGS; FLUSH BINARY LOGS;"
    ))
    .await;
    let logs: Vec<(String, u64)> = db.query("SHOW BINARY LOGS").await;
    let newest = logs.last().unwrap().0.clone();
    // The server keeps a file a replica's dump thread still reads: the
    // stopped capture's thread may linger for a moment.
    let purged = eventually(Duration::from_secs(20), || async {
        db.exec(&format!("PURGE BINARY LOGS TO '{newest}'")).await;
        db.query::<(String, u64)>("SHOW BINARY LOGS").await.len() == 1
    })
    .await;
    assert!(purged, "the server kept older binlogs");

    let mut p = ConsumerProcess::spawn(&env);
    let status = p.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = p.log_tail();
    assert!(log.contains("purged"), "{log}");
    assert!(
        log.contains("binlog-position.json"),
        "says what to delete: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_not_logging_full_rows_is_refused_with_the_fix() {
    let db = MariaDb::start().await;
    db.exec("SET GLOBAL binlog_format = 'STATEMENT'; SET GLOBAL binlog_row_image = 'MINIMAL';")
        .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = ConsumerProcess::spawn(&capture_env(&db, "appdb", &es, "fmt", dir.path()));
    let status = p.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = p.log_tail();
    assert!(log.contains("binlog_format is STATEMENT"), "{log}");
    assert!(log.contains("SET GLOBAL binlog_format = 'ROW'"), "{log}");
    assert!(
        log.contains("SET GLOBAL binlog_row_image = 'FULL'"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_replication_privileges_gets_the_grant_to_run() {
    let db = MariaDb::start().await;
    let url = db.user_without_replication().await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = capture_env(&db, "appdb", &es, "priv", dir.path());
    env.retain(|(k, _)| k != "CDC_MYSQL_URL");
    env.push(("CDC_MYSQL_URL".into(), url));
    let mut p = ConsumerProcess::spawn(&env);
    let status = p.wait_exit(Duration::from_secs(30)).await;

    assert!(!status.success());
    let log = p.log_tail();
    assert!(
        log.contains("REPLICATION SLAVE") && log.contains("REPLICATION CLIENT"),
        "{log}"
    );
    assert!(
        log.contains("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO"),
        "{log}"
    );
}

/// Writes `n` changes in transactions of up to 50 (inserts, updates, deletes); returns
/// the expected documents per op.
pub async fn write_changes(
    root: mysql_async::Opts,
    d: &str,
    n: usize,
) -> HashMap<&'static str, usize> {
    write_changes_from(root, d, 0, n).await
}

/// `write_changes` with ids from `first_id` on: a second writer on the
/// same table touches only rows of its own.
pub async fn write_changes_from(
    root: mysql_async::Opts,
    d: &str,
    first_id: usize,
    n: usize,
) -> HashMap<&'static str, usize> {
    use mysql_async::prelude::Queryable;
    let mut counts = HashMap::new();
    let mut conn = mysql_async::Conn::new(root).await.unwrap();
    let mut written = 0;
    let mut next_id = first_id;
    while written < n {
        let mut sql = String::from("BEGIN;");
        let mut in_txn = 0;
        while in_txn < 50 && written < n {
            let r: u8 = rand::rng().random_range(0..10);
            if r < 6 || next_id < first_id + 10 || n - written < 2 {
                sql.push_str(&format!(
                    "INSERT INTO {d}.k VALUES ({next_id}, 'v{next_id}');"
                ));
                next_id += 1;
                *counts.entry("insert").or_insert(0) += 1;
                written += 1;
            } else if r < 9 {
                let id = rand::rng().random_range(first_id..next_id);
                sql.push_str(&format!(
                    "UPDATE {d}.k SET v = CONCAT(v, 'x') WHERE id = {id};"
                ));
                *counts.entry("update").or_insert(0) += 1;
                written += 1;
            } else {
                // Re-inserted at once: every UPDATE finds its row.
                let id = rand::rng().random_range(first_id..next_id);
                sql.push_str(&format!(
                    "DELETE FROM {d}.k WHERE id = {id}; INSERT INTO {d}.k VALUES ({id}, 'again');"
                ));
                *counts.entry("delete").or_insert(0) += 1;
                *counts.entry("insert").or_insert(0) += 1;
                written += 2;
            }
            in_txn += 1;
        }
        sql.push_str("COMMIT;");
        conn.query_drop(sql).await.unwrap();
    }
    conn.disconnect().await.unwrap();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_while_twenty_thousand_changes_are_made_lose_and_repeat_nothing() {
    let db = MariaDb::start().await;
    let d = db.create_database("kill").await;
    db.exec(&format!(
        "CREATE TABLE {d}.k (id INT PRIMARY KEY, v VARCHAR(200))"
    ))
    .await;
    let es = EsTarget::stub().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = capture_env(&db, &d, &es, "kill", dir.path());
    env.push(("CDC_TABLES".into(), format!("{d}.k")));
    let mut p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;

    let writer = {
        let url = db.server().root_opts();
        let d = d.clone();
        tokio::spawn(async move { write_changes(url, &d, 20_000).await })
    };
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..1500))).await;
        p.kill();
        p = ConsumerProcess::spawn(&env);
        eprintln!("kill {round}: {} documents so far", es.count("kill").await);
    }
    let counts = writer.await.unwrap();
    let total: usize = counts.values().sum();
    assert_eq!(total, 20_000);
    // 20,000 row changes plus CREATE DATABASE and CREATE TABLE.
    wait_docs(&es, "kill", total as u64 + 2, &p).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = docs(&es, "kill");
    assert_eq!(
        all.len(),
        total + 2,
        "documents are unique by id; no change is missing"
    );
    for (op, n) in &counts {
        let got = all.iter().filter(|x| x["op"] == *op).count();
        assert_eq!(got, *n, "{op}");
    }
    let replays = es.stub.as_ref().unwrap().replayed_ids();
    eprintln!("{replays} changes were replayed after kills and absorbed by their ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_kafka_to_consumer_to_elasticsearch_indexes_every_change_once() {
    let db = MariaDb::start().await;
    let d = db.create_database("e2e").await;
    db.exec(&format!(
        "CREATE TABLE {d}.k (id INT PRIMARY KEY, v VARCHAR(200))"
    ))
    .await;
    let broker = broker();
    let es = EsTarget::stub().await;
    let pipeline = Pipeline::new("binlog-e2e", &broker.bootstrap, &es.url, 3);
    broker
        .create_topic(&pipeline.topic, pipeline.partitions)
        .await;
    broker.create_topic(&pipeline.dlq, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let capture = InProcessApp::spawn(&kafka_capture_env(
        &db,
        &format!("{d}.k"),
        dir.path(),
        &pipeline,
    ))
    .await;
    let consumer = InProcessApp::spawn(&pipeline.env()).await;
    let counts = write_changes(db.server().root_opts(), &d, 2_000).await;
    let total: usize = counts.values().sum();
    wait_pipeline(&es, &pipeline, total as u64 + 2, &capture, &consumer).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = docs(&es, &pipeline.index);
    assert_eq!(all.len(), total + 2); // plus CREATE DATABASE and CREATE TABLE
    for (op, n) in &counts {
        assert_eq!(all.iter().filter(|x| x["op"] == *op).count(), *n, "{op}");
    }
    // Messages are TiCDC-shaped canal-json with the binlog position.
    let doc = all.iter().find(|x| x["op"] == "update").unwrap();
    assert!(doc["kafka"]["topic"] == pipeline.topic.as_str());
    assert!(doc["commit_ts"].as_u64().unwrap() > 1 << 32);
    assert_eq!(consumer.metric("cdc_decode_errors_total", &[]).await, 0.0);
}
