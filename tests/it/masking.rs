//! Column masking end to end, with the real binary: a masked column's clear
//! value never reaches the embedded store, `/api`, the metrics, the log,
//! Elasticsearch or the Kafka sink; equal values hash equal, across
//! restarts too, and document ids stay deterministic.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cdc_monitor::config::ColumnPattern;
use cdc_monitor::mask::Masker;
use serde_json::Value;

use crate::binlog::{capture_env, docs, kafka_capture_env, wait_docs};
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::EsTarget;
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::mariadb::MariaDb;
use crate::store::stored;

/// Clear values, each one FTS token, found nowhere else.
const PW_SHARED: &str = "Zq7sharedclearpw";
const PW_OTHER: &str = "Zq7otherclearpw";
const PW_CHANGED: &str = "Zq7changedclearpw";
const TOKEN: &str = "Zq7cleartokenvalue";

/// A users table with two masked columns (by the default list) and two rows
/// sharing a password, then an update of one password.
async fn users_with_secrets(db: &MariaDb, d: &str) {
    db.exec(&format!(
        "CREATE TABLE {d}.users (id INT PRIMARY KEY, name VARCHAR(50), \
         Password VARCHAR(100), api_token VARCHAR(100))"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {d}.users VALUES \
         (1, 'alicemasktest', '{PW_SHARED}', '{TOKEN}'), \
         (2, 'bobmasktest', '{PW_SHARED}', NULL), \
         (3, 'carolmasktest', '{PW_OTHER}', NULL)"
    ))
    .await;
    db.exec(&format!(
        "UPDATE {d}.users SET Password = '{PW_CHANGED}' WHERE id = 3"
    ))
    .await;
}

/// `/api/events` with `query`, as JSON.
async fn api(p: &impl Consumer, query: &str) -> Value {
    let url = url::Url::parse_with_params(
        &format!("http://{}/api/events", p.http()),
        [("limit", "100"), ("q", query)],
    )
    .unwrap();
    let r = reqwest::get(url).await.unwrap();
    assert!(r.status().is_success(), "{query}: {}", r.status());
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn events(page: &Value) -> &Vec<Value> {
    page["events"].as_array().expect("events")
}

/// Every byte of the store's files, as text.
fn store_bytes(dir: &Path) -> String {
    let mut all = Vec::new();
    for f in ["events.db", "events.db-wal"] {
        all.extend(std::fs::read(dir.join(f)).unwrap_or_default());
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Case-insensitive: the full-text index keeps its tokens lower-cased.
fn assert_no_clear_value(what: &str, text: &str) {
    let text = text.to_lowercase();
    for clear in [PW_SHARED, PW_OTHER, PW_CHANGED, TOKEN] {
        let clear = clear.to_lowercase();
        if let Some(at) = text.find(&clear) {
            let around: String = text[at..].chars().take(300).collect();
            panic!("{clear} reached {what} at byte {at}: {around}");
        }
    }
}

fn is_hash(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 69 && s.starts_with("hmac:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_column_never_reaches_the_store_or_the_api_and_equal_values_hash_equal() {
    let db = MariaDb::start().await;
    let d = db.create_database("mask").await;
    let dir = tempfile::tempdir().unwrap();
    let env = db.capture_env(&format!("{d}.*"), dir.path());
    let mut p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    users_with_secrets(&db, &d).await;
    // CREATE DATABASE, CREATE TABLE, three inserts, one update.
    let all = eventually(Duration::from_secs(60), || async {
        stored(dir.path()).values().sum::<usize>() >= 6
    })
    .await;
    assert!(
        all,
        "stored {:?}; log:\n{}",
        stored(dir.path()),
        p.log_tail()
    );

    // The clear values are nowhere: not found by the API, not in the files.
    for clear in [PW_SHARED, PW_OTHER, PW_CHANGED, TOKEN] {
        let page = api(&p, clear).await;
        assert!(events(&page).is_empty(), "{clear} found: {page:#}");
    }
    assert_no_clear_value("the store's files", &store_bytes(dir.path()));
    assert_no_clear_value("/metrics", &p.metrics().await);
    assert_no_clear_value("the log", &std::fs::read_to_string(&p.log).unwrap());

    // The rows are there, unmasked columns in the clear, masked ones hashed.
    let row = |page: &Value| -> Value {
        let found = events(page);
        assert_eq!(found.len(), 1, "{page:#}");
        found[0].clone()
    };
    let alice = row(&api(&p, "alicemasktest").await);
    let bob = row(&api(&p, "bobmasktest").await);
    assert_eq!(alice["data"]["name"], "alicemasktest");
    let shared = &alice["data"]["Password"];
    assert!(is_hash(shared), "{alice:#}");
    assert!(is_hash(&alice["data"]["api_token"]), "{alice:#}");
    assert_eq!(&bob["data"]["Password"], shared, "equal values hash equal");
    assert_eq!(bob["data"]["api_token"], Value::Null, "NULL stays NULL");
    // The hash finds every row holding the value.
    let holders = api(&p, shared.as_str().unwrap()).await;
    let ids: Vec<&Value> = events(&holders).iter().map(|e| &e["data"]["id"]).collect();
    assert_eq!(ids.len(), 2, "{holders:#}");
    // The update: old and new masked, and different.
    let carol = api(&p, "carolmasktest").await;
    let update = events(&carol)
        .iter()
        .find(|e| e["op"] == "update")
        .unwrap_or_else(|| panic!("{carol:#}"));
    assert!(is_hash(&update["data"]["Password"]), "{update:#}");
    assert!(is_hash(&update["old"]["Password"]), "{update:#}");
    assert_ne!(update["data"]["Password"], update["old"]["Password"]);

    // The generated key is kept owner-only and reused after a restart.
    let key = dir.path().join("mask.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    p.kill();
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    db.exec(&format!(
        "INSERT INTO {d}.users VALUES (4, 'davemasktest', '{PW_SHARED}', NULL)"
    ))
    .await;
    let dave = eventually(Duration::from_secs(60), || async {
        events(&api(&p, "davemasktest").await).len() == 1
    })
    .await;
    assert!(dave, "log:\n{}", p.log_tail());
    let dave = row(&api(&p, "davemasktest").await);
    assert_eq!(
        &dave["data"]["Password"], shared,
        "same key after a restart"
    );
    assert_no_clear_value("the store's files", &store_bytes(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_columns_reach_elasticsearch_hashed_with_the_configured_key_and_ids_stay_deterministic(
) {
    let db = MariaDb::start().await;
    let d = db.create_database("maskes").await;
    // The primary key itself is masked here: ids come from its hash.
    db.exec(&format!(
        "CREATE TABLE {d}.accounts (login VARCHAR(50) PRIMARY KEY, pin VARCHAR(20), note VARCHAR(50))"
    ))
    .await;
    let es = EsTarget::stub().await;
    let index = crate::harness::unique("mask-es");
    let dir = tempfile::tempdir().unwrap();
    let key = "a masking key of the test, long enough";
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let mut env = capture_env(&db, &d, &es, &index, &dir.path().join("data"));
    env.push((
        "CDC_MASK_COLUMNS".into(),
        format!("{d}.accounts.LOGIN,{d}.*.pin"),
    ));
    env.push(("CDC_MASK_KEY_FILE".into(), key_file.display().to_string()));
    let mut p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    db.exec(&format!(
        "INSERT INTO {d}.accounts VALUES ('{TOKEN}', '{PW_SHARED}', 'n1'), ('{PW_OTHER}', '{PW_SHARED}', 'n2')"
    ))
    .await;
    db.exec(&format!(
        "UPDATE {d}.accounts SET pin = '{PW_CHANGED}' WHERE login = '{TOKEN}'"
    ))
    .await;
    // CREATE DATABASE, CREATE TABLE, two inserts, one update.
    wait_docs(&es, &index, 5, &p).await;
    let all = docs(&es, &index);
    assert_no_clear_value("Elasticsearch", &serde_json::to_string(&all).unwrap());
    let masker = Masker::new(vec![ColumnPattern::parse("*.*.*").unwrap()], key.as_bytes());
    let rows: Vec<&Value> = all.iter().filter(|x| x["op"] != "ddl").collect();
    assert_eq!(rows.len(), 3, "{all:#?}");
    for row in &rows {
        assert!(is_hash(&row["pk"]["login"]), "{row:#}");
        assert_eq!(row["pk"]["login"], row["data"]["login"]);
    }
    let pins: Vec<&Value> = rows
        .iter()
        .filter(|x| x["op"] == "insert")
        .map(|x| &x["data"]["pin"])
        .collect();
    assert_eq!(pins[0], pins[1], "equal values hash equal");
    assert_eq!(
        pins[0],
        &masker.hash(PW_SHARED.as_bytes()),
        "HMAC under CDC_MASK_KEY_FILE"
    );
    assert!(
        rows.iter().any(|x| x["data"]["note"] == "n1"),
        "unmasked stays clear"
    );

    // Replayed from the start, the same changes map to the same ids.
    p.kill();
    // Gone or never written: either way the capture starts from the earliest binlog.
    let _ = std::fs::remove_file(dir.path().join("data/binlog-position.json"));
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    let replayed = eventually(Duration::from_secs(60), || async {
        es.stub.as_ref().unwrap().replayed_ids() >= 5
    })
    .await;
    assert!(replayed, "log:\n{}", p.log_tail());
    assert_eq!(
        es.count(&index).await,
        5,
        "no new documents from the replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_columns_reach_the_kafka_sink_hashed() {
    let db = MariaDb::start().await;
    let d = db.create_database("maskkafka").await;
    let b = broker();
    let pipeline = Pipeline::new("mask-kafka", &b.bootstrap, "", 1);
    b.create_topic(&pipeline.topic, 1).await;
    b.create_topic(&pipeline.dlq, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let env = kafka_capture_env(&db, &format!("{d}.*"), dir.path(), &pipeline);
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    users_with_secrets(&db, &d).await;
    let records = b.read_all(&pipeline.topic, 6, Duration::from_secs(60));
    assert_eq!(records.len(), 6, "log:\n{}", p.log_tail());
    let text: String = records
        .iter()
        .map(|(payload, _)| String::from_utf8_lossy(payload).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert_no_clear_value("the Kafka sink", &text);
    let messages: Vec<Value> = records
        .iter()
        .map(|(payload, _)| serde_json::from_slice(payload).unwrap())
        .collect();
    let passwords: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "INSERT")
        .map(|m| &m["data"][0]["Password"])
        .collect();
    assert_eq!(passwords.len(), 3, "{messages:#?}");
    assert!(passwords.iter().all(|v| is_hash(v)), "{passwords:?}");
    assert_eq!(passwords[0], passwords[1], "equal values hash equal");
    assert_ne!(passwords[0], passwords[2]);
}

/// A canal-json insert Elasticsearch refuses (a column nested deeper than a
/// flattened field allows) holding a password.
fn refused_with_password() -> Vec<u8> {
    let mut deep = serde_json::json!("leaf");
    for _ in 0..25 {
        deep = serde_json::json!({ "n": deep });
    }
    serde_json::to_vec(&serde_json::json!({"database":"appdb","table":"deep","pkNames":["id"],"isDdl":false,"type":"INSERT",
        "es":1_700_000_000_000i64,"ts":1_700_000_000_000i64,
        "data":[{"id":"1","user_password":PW_SHARED,"doc":deep}],"old":null}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_a_kafka_source_carry_the_masked_row_unless_originals_are_kept() {
    let b = broker();
    let es = EsTarget::stub().await;
    for keep in [false, true] {
        let p = Pipeline::new("mask-dlq", &b.bootstrap, &es.url, 1);
        b.create_topic(&p.topic, 1).await;
        b.create_topic(&p.dlq, 1).await;
        b.produce(&p.topic, 1, vec![refused_with_password()]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut env = p.env();
        // The generated masking key goes there, not into ./cdc-data.
        env.push(("CDC_DATA_DIR".into(), dir.path().display().to_string()));
        if !keep {
            env.push(("CDC_DLQ_KEEP_ORIGINAL".into(), "false".into()));
        }
        let consumer = ConsumerProcess::spawn(&env);
        consumer.wait_healthy().await;
        let dead = b.read_all(&p.dlq, 1, Duration::from_secs(60));
        assert_eq!(dead.len(), 1, "keep {keep}; log:\n{}", consumer.log_tail());
        let (payload, headers) = &dead[0];
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "cdc.error.reason" && v == "rejected_by_sink"),
            "{headers:?}"
        );
        let text = String::from_utf8_lossy(payload);
        if keep {
            assert_eq!(payload, &refused_with_password(), "the original bytes");
        } else {
            assert_no_clear_value("the dead letter", &text);
            let letter: Value = serde_json::from_slice(payload).unwrap();
            assert!(is_hash(&letter["data"][0]["user_password"]), "{letter:#}");
            assert_eq!(letter["data"][0]["id"], "1");
        }
        assert_no_clear_value(
            "Elasticsearch",
            &serde_json::to_string(&docs(&es, &p.index)).unwrap(),
        );
        assert_no_clear_value("the log", &std::fs::read_to_string(&consumer.log).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_mask_list_turns_masking_off_with_a_warning() {
    let b = broker();
    let p = Pipeline::new("mask-off", &b.bootstrap, "", 1);
    b.create_topic(&p.topic, 1).await;
    b.create_topic(&p.dlq, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = p.store_env(dir.path());
    env.push(("CDC_MASK_COLUMNS".into(), String::new()));
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    let log = std::fs::read_to_string(&consumer.log).unwrap();
    assert!(
        log.contains("CDC_MASK_COLUMNS is empty"),
        "no warning; log:\n{log}"
    );
    assert!(
        !dir.path().join("mask.key").exists(),
        "no key without masking"
    );
}
