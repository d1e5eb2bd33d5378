//! `cdc-monitor reconcile` against a real MariaDB and the embedded store the
//! real binary captured into: a clean capture compares equal; seeded damage
//! on both sides is reported key by key and nothing else, `--repair` fixes
//! it; a writer running meanwhile causes no false difference.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rand::Rng;
use serde_json::{json, Value};

use crate::harness::consumer::{Consumer, ConsumerProcess};
use crate::harness::eventually;
use crate::harness::mariadb::MariaDb;

/// Rows inserted; a third are then updated and a sixth deleted (50,000 changes).
const ROWS: usize = 30_000;

/// `t` with 30,000 rows, 15,000 updates and 5,000 deletes.
async fn fill(db: &MariaDb, d: &str) {
    db.exec(&format!(
        "CREATE TABLE {d}.t (id INT PRIMARY KEY, v VARCHAR(64), n DECIMAL(10,2), at DATETIME(3), j JSON)"
    ))
    .await;
    let mut conn = db.server().root_conn().await.unwrap();
    for start in (0..ROWS).step_by(2000) {
        let rows: Vec<String> = (start..start + 2000)
            .map(|i| {
                format!(
                    "({i}, 'v{i}', {i}.5, '2024-05-06 07:08:09.{:03}', '{{\"k\": {i}}}')",
                    i % 1000
                )
            })
            .collect();
        conn.query_drop(format!("INSERT INTO {d}.t VALUES {}", rows.join(",")))
            .await
            .unwrap();
    }
    conn.query_drop(format!(
        "UPDATE {d}.t SET v = CONCAT(v, '!'), n = n * 2 WHERE id % 2 = 0"
    ))
    .await
    .unwrap();
    conn.query_drop(format!("DELETE FROM {d}.t WHERE id % 6 = 1"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

/// `cdc-monitor reconcile` with the consumer's environment; exit code and report.
fn reconcile(env: &[(String, String)], args: &[&str]) -> (i32, Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-monitor"))
        .arg("reconcile")
        .args(args)
        .arg("--json")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        report,
        format!("{stdout}{stderr}"),
    )
}

/// The sample keys of one kind of difference in the report's only table.
fn keys(report: &Value, kind: &str) -> BTreeSet<String> {
    report["tables"][0][kind]["samples"]
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn count(report: &Value, kind: &str) -> u64 {
    report["tables"][0][kind]["count"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn key(id: i64) -> String {
    format!("[\"{id}\"]")
}

/// The newest stored event of row `id` of `{d}.t`, from the instance at `base`.
async fn last_event(base: &str, d: &str, id: i64) -> Value {
    let body = reqwest::get(format!(
        "{base}/api/rows/history?database={d}&table=t&pk={id}"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let history: Value = serde_json::from_str(&body).unwrap();
    history["events"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default()
}

/// Waits until a marker row written last is in the state: caught up.
async fn caught_up(db: &MariaDb, d: &str, dir: &Path, p: &ConsumerProcess, marker: i64) {
    db.exec(&format!(
        "INSERT INTO {d}.t (id, v) VALUES ({marker}, 'marker')"
    ))
    .await;
    let ok = eventually(Duration::from_secs(120), || async {
        let conn = rusqlite::Connection::open(dir.join("events.db")).unwrap();
        conn.query_row(
            "SELECT count(*) FROM state WHERE db = ?1 AND key = ?2",
            [d, &key(marker)],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
            == 1
    })
    .await;
    assert!(ok, "the marker never arrived; log:\n{}", p.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_exactly_the_seeded_damage_and_repairs_it() {
    let db = MariaDb::start().await;
    let d = db.create_database("recon").await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = db.capture_env(&format!("{d}.*"), dir.path());
    env.push(("CDC_STORE_RETENTION".into(), "36500d".into()));
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    fill(&db, &d).await;
    caught_up(&db, &d, dir.path(), &p, 1_000_000).await;
    let tables = format!("{d}.*");

    // a. A clean capture of 50,000 changes compares equal.
    let (code, report, out) = reconcile(&env, &["--tables", &tables, "--settle-seconds", "5"]);
    assert_eq!(code, 0, "{out}");
    // The rows left, and the marker.
    let remaining = ROWS - ROWS.div_ceil(6) + 1;
    assert_eq!(report["tables"][0]["compared"], remaining as u64, "{out}");
    println!(
        "clean: {} rows compared in {:.1} s with {} queries",
        report["tables"][0]["compared"], report["elapsed_seconds"], report["queries"]
    );

    // b. Damage on both sides, none of it through the binlog.
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let deleted: Vec<i64> = (0..10).map(|i| 100 + i * 6).collect(); // id % 6 == 4: live rows
    let tampered: Vec<i64> = (0..5).map(|i| 2000 + i * 6).collect();
    let extra: Vec<i64> = (0..3).map(|i| 7_000_000 + i).collect();
    let silent: Vec<i64> = (0..7).map(|i| 5000 + i * 6).collect();
    for id in &deleted {
        conn.execute(
            "DELETE FROM state WHERE db = ?1 AND tbl = 't' AND key = ?2",
            [&d, &key(*id)],
        )
        .unwrap();
    }
    for id in &tampered {
        conn.execute(
            "UPDATE state SET data = json_set(data, '$.v', 'tampered') WHERE db = ?1 AND tbl = 't' AND key = ?2",
            [&d, &key(*id)],
        )
        .unwrap();
    }
    for id in &extra {
        conn.execute(
            "INSERT INTO state (id, db, tbl, key, version, op, commit_time_ms, event_id, pk, data)
             VALUES (?5, ?1, 't', ?2, 1, 'insert', 0, x'00', ?3, ?4)",
            rusqlite::params![
                d.clone(),
                key(*id),
                format!("{{\"id\":\"{id}\"}}"),
                format!("{{\"id\":\"{id}\",\"v\":\"ghost\",\"n\":null,\"at\":null,\"j\":null}}"),
                cdc_monitor::sink::state::RowKey {
                    database: d.clone(),
                    table: "t".into(),
                    values: key(*id),
                }
                .id()
                .0
                .to_be_bytes(),
            ],
        )
        .unwrap();
    }
    drop(conn);
    let ids: Vec<String> = silent.iter().map(i64::to_string).collect();
    db.exec(&format!(
        "SET SESSION sql_log_bin = 0; UPDATE {d}.t SET v = 'silent' WHERE id IN ({})",
        ids.join(",")
    ))
    .await;
    let (code, report, out) = reconcile(
        &env,
        &[
            "--tables",
            &tables,
            "--settle-seconds",
            "3",
            "--samples",
            "50",
        ],
    );
    assert_eq!(code, 1, "{out}");
    let want = |ids: &[&[i64]]| -> BTreeSet<String> {
        ids.iter().flat_map(|s| s.iter().map(|i| key(*i))).collect()
    };
    assert_eq!(
        (count(&report, "missing"), keys(&report, "missing")),
        (10, want(&[&deleted])),
        "{out}"
    );
    assert_eq!(
        (count(&report, "changed"), keys(&report, "changed")),
        (12, want(&[&tampered, &silent])),
        "{out}"
    );
    assert_eq!(
        (count(&report, "extra"), keys(&report, "extra")),
        (3, want(&[&extra])),
        "{out}"
    );
    // The human report says the same.
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-monitor"))
        .args(["reconcile", "--tables", &tables, "--settle-seconds", "1"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "{d}.t: {} rows compared, 10 missing, 12 changed, 3 extra",
            remaining
        )),
        "{text}"
    );

    let (code, report, out) = reconcile(
        &env,
        &["--tables", &tables, "--repair", "--settle-seconds", "3"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["tables"][0]["repaired"], 25, "{out}");
    let (code, report, out) = reconcile(&env, &["--tables", &tables, "--settle-seconds", "3"]);
    assert_eq!(code, 0, "after repair: {out}");
    assert_eq!(report["tables"][0]["compared"], remaining as u64);
    // The repairs are events with their reason.
    let last = last_event(&format!("http://{}", p.http()), &d, silent[0]).await;
    assert_eq!(last["reason"], "reconcile: changed", "{last}");
    assert_eq!(last["data"]["v"], "silent", "{last}");

    // c. A writer changing rows meanwhile: no false difference.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (opts, d, stop) = (db.server().root_opts(), d.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await.unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = rand::rng().random_range(0..ROWS);
                let sql = match n % 3 {
                    0 => format!("UPDATE {d}.t SET v = 'w{n}' WHERE id = {id}"),
                    1 => format!("DELETE FROM {d}.t WHERE id = {id}"),
                    _ => format!(
                        "INSERT IGNORE INTO {d}.t (id, v) VALUES ({}, 'new')",
                        2_000_000 + n
                    ),
                };
                conn.query_drop(sql).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, report, out) = reconcile(&env, &["--tables", &tables]);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    println!(
        "with a writer ({writes} statements): {} rows compared, {} in flight agreed when re-read",
        report["tables"][0]["compared"], report["tables"][0]["settled"]
    );
    assert_eq!(code, 0, "false differences with a writer running: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_against_the_elasticsearch_state_index() {
    let es = crate::harness::es::EsTarget::start().await;
    let db = MariaDb::start().await;
    let d = db.create_database("reconces").await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = db.capture_env(&format!("{d}.*"), dir.path());
    let index = crate::harness::unique("recon").to_lowercase();
    env.extend([
        ("CDC_ES_URL".to_owned(), es.url.clone()),
        ("CDC_ES_INDEX".to_owned(), format!("{index}-events")),
        ("CDC_ES_STATE_INDEX".to_owned(), format!("{index}-state")),
    ]);
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    fill(&db, &d).await;
    db.exec(&format!(
        "INSERT INTO {d}.t (id, v) VALUES (1000000, 'marker')"
    ))
    .await;
    // 50,000 changes, the CREATE TABLE and the marker.
    let all = eventually(Duration::from_secs(180), || async {
        p.metric("cdc_events_total", &[]).await >= 50_002.0
    })
    .await;
    assert!(all, "log:\n{}", p.log_tail());
    let tables = format!("{d}.*");
    let (code, report, out) = reconcile(&env, &["--tables", &tables, "--settle-seconds", "10"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        report["tables"][0]["compared"],
        (ROWS - ROWS.div_ceil(6) + 1) as u64
    );
    // A row changed behind the capture's back is found in the index too.
    db.exec(&format!(
        "SET SESSION sql_log_bin = 0; UPDATE {d}.t SET v = 'silent' WHERE id = 4"
    ))
    .await;
    let (code, report, out) = reconcile(&env, &["--tables", &tables, "--settle-seconds", "2"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        keys(&report, "changed"),
        [key(4)].into_iter().collect(),
        "{out}"
    );
    let (code, _, out) = reconcile(
        &env,
        &["--tables", &tables, "--repair", "--settle-seconds", "2"],
    );
    assert_eq!(code, 0, "{out}");
    let fixed = eventually(Duration::from_secs(30), || async {
        reconcile(&env, &["--tables", &tables, "--settle-seconds", "2"]).0 == 0
    })
    .await;
    assert!(fixed, "the repair never showed in the state index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_reconcile_exports_what_differs() {
    let db = MariaDb::start().await;
    let d = db.create_database("recsched").await;
    db.exec(&format!(
        "CREATE TABLE {d}.t (id INT PRIMARY KEY, v VARCHAR(64));
         INSERT INTO {d}.t VALUES (1, 'a'), (2, 'b'), (3, 'c');"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = db.capture_env(&format!("{d}.*"), dir.path());
    env.push(("CDC_RECONCILE_INTERVAL".into(), "2s".into()));
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    let metric = |result: &'static str| {
        let p = &p;
        async move {
            p.metric("cdc_reconcile_rows", &[&format!("result=\"{result}\"")])
                .await
        }
    };
    let equal = eventually(Duration::from_secs(60), || async {
        metric("compared").await == 3.0 && metric("changed").await == 0.0
    })
    .await;
    assert!(equal, "log:\n{}", p.log_tail());
    assert!(
        p.metric("cdc_reconcile_last_success_timestamp_seconds", &[])
            .await
            > 1.7e9
    );
    db.exec(&format!(
        "SET SESSION sql_log_bin = 0; UPDATE {d}.t SET v = 'silent' WHERE id = 2"
    ))
    .await;
    let found = eventually(Duration::from_secs(60), || async {
        metric("changed").await == 1.0
    })
    .await;
    assert!(found, "log:\n{}", p.log_tail());
    assert!(
        p.log_tail()
            .contains("the captured state differs from the database"),
        "{}",
        p.log_tail()
    );

    // Without a source database there is nothing to compare with.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-monitor"))
        .arg("run")
        .env_clear()
        .env("CDC_SOURCE", "kafka")
        .env("CDC_RECONCILE_INTERVAL", "1h")
        .env("CDC_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("CDC_RECONCILE_INTERVAL"), "{err}");
}

/// A TiCDC-shaped canal-json change of `{d}.t` (id, v, n) at `ts`.
fn canal_change(d: &str, kind: &str, id: i64, v: &str, ts: u64) -> Vec<u8> {
    let row = json!({"id": id.to_string(), "v": v, "n": format!("{id}.50")});
    serde_json::to_vec(&json!({
        "id": 0, "database": d, "table": "t", "pkNames": ["id"], "isDdl": false, "type": kind,
        "es": ts >> 18, "ts": ts >> 18, "sql": "",
        "sqlType": {"id": 4, "v": 12, "n": 3},
        "mysqlType": {"id": "int", "v": "varchar", "n": "decimal(10,2)"},
        "old": if kind == "UPDATE" { json!([{"v": "before"}]) } else { Value::Null },
        "data": [row], "_tidb": {"commitTs": ts}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_through_the_kafka_source_reads_the_upstream_and_repairs() {
    use crate::harness::canal::{watermark, BASE_TS};
    use crate::harness::consumer::Pipeline;

    // MariaDB stands in for TiDB: 20 rows upstream.
    let db = MariaDb::start().await;
    let d = db.create_database("rectidb").await;
    let rows: Vec<String> = (1..=20).map(|i| format!("({i}, 'v{i}', {i}.5)")).collect();
    db.exec(&format!(
        "CREATE TABLE {d}.t (id INT PRIMARY KEY, v VARCHAR(64), n DECIMAL(10,2));
         INSERT INTO {d}.t VALUES {};
         UPDATE {d}.t SET v = 'updated' WHERE id = 3;",
        rows.join(",")
    ))
    .await;
    // The topic carries rows 1..=16 (row 3 inserted, then updated) and a
    // row 99 the database never had: 17..=20 never arrive.
    let broker = crate::harness::kafka::broker();
    let p = Pipeline::new("rectidb", &broker.bootstrap, "", 2);
    broker.create_topic(&p.topic, p.partitions).await;
    broker.create_topic(&p.dlq, 1).await;
    let mut messages: Vec<Vec<u8>> = (1..=16)
        .map(|i| canal_change(&d, "INSERT", i, &format!("v{i}"), BASE_TS + i as u64))
        .collect();
    messages.push(canal_change(&d, "UPDATE", 3, "updated", BASE_TS + 100));
    messages.push(canal_change(&d, "INSERT", 99, "ghost", BASE_TS + 101));
    broker.produce(&p.topic, p.partitions, messages).await;
    // One watermark per partition, after every change.
    let mark = BASE_TS + 1_000;
    broker
        .produce(&p.topic, p.partitions, [watermark(mark), watermark(mark)])
        .await;

    let dir = tempfile::tempdir().unwrap();
    let mut env = p.store_env(dir.path());
    env.extend([
        ("CDC_STORE_RETENTION".to_owned(), "36500d".to_owned()),
        ("CDC_MYSQL_URL".to_owned(), db.capture_url()),
        ("CDC_TABLES".to_owned(), format!("{d}.*")),
        ("CDC_RECONCILE_INTERVAL".to_owned(), "2s".to_owned()),
    ]);
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    // The checkpoint: both partitions passed the watermark.
    let url = format!("http://{}", consumer.http());
    let checkpoint = eventually(Duration::from_secs(60), || async {
        let answer: Value = match reqwest::get(format!("{url}/api/checkpoint")).await {
            Ok(r) => serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default(),
            Err(_) => Value::Null,
        };
        answer["tso"].as_u64() == Some(mark)
    })
    .await;
    assert!(checkpoint, "log:\n{}", consumer.log_tail());
    let gauge = eventually(Duration::from_secs(10), || async {
        consumer
            .metric("cdc_checkpoint_timestamp_seconds", &[])
            .await
            == (mark >> 18) as f64 / 1000.0
    })
    .await;
    assert!(gauge, "{}", consumer.metrics().await);
    // A change upstream that never reaches the topic.
    db.exec(&format!("UPDATE {d}.t SET v = 'silent' WHERE id = 5"))
        .await;

    // The instance's checkpoint is a TSO, but MariaDB is not TiDB: the
    // current data is read, and settled.
    let tables = format!("{d}.*");
    let args = [
        "--tables",
        &tables,
        "--settle-seconds",
        "2",
        "--samples",
        "50",
    ];
    let (code, report, out) = reconcile(&env, &[&args[..], &["--url", url.as_str()]].concat());
    assert_eq!(code, 1, "{out}");
    assert_eq!(report["read_point"], "current data", "{out}");
    assert_eq!(report["tables"][0]["compared"], 20, "{out}");
    let ids = |ids: &[i64]| -> BTreeSet<String> { ids.iter().map(|i| key(*i)).collect() };
    assert_eq!(
        (count(&report, "missing"), keys(&report, "missing")),
        (4, ids(&[17, 18, 19, 20])),
        "{out}"
    );
    assert_eq!(
        (count(&report, "changed"), keys(&report, "changed")),
        (1, ids(&[5])),
        "{out}"
    );
    assert_eq!(
        (count(&report, "extra"), keys(&report, "extra")),
        (1, ids(&[99])),
        "{out}"
    );
    // Scheduled inside run, with the Kafka source too.
    let scheduled = eventually(Duration::from_secs(30), || async {
        consumer
            .metric("cdc_reconcile_rows", &["result=\"missing\""])
            .await
            == 4.0
    })
    .await;
    assert!(scheduled, "log:\n{}", consumer.log_tail());

    let (code, report, out) = reconcile(&env, &[&args[..], &["--repair"]].concat());
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["tables"][0]["repaired"], 6, "{out}");
    let (code, report, out) = reconcile(&env, &args);
    assert_eq!(code, 0, "after repair: {out}");
    assert_eq!(report["tables"][0]["compared"], 20, "{out}");
    // The repairs are snapshot events with their reason, in the state.
    let last = last_event(&url, &d, 17).await;
    assert_eq!(
        (&last["op"], &last["reason"], &last["data"]["v"]),
        (
            &json!("snapshot"),
            &json!("reconcile: missing"),
            &json!("v17")
        ),
        "{last}"
    );
    // --as-of is for a TiDB upstream; the binlog source refuses it.
    let mut binlog = db.capture_env(&tables, dir.path());
    binlog.push(("CDC_SINK".into(), "sqlite".into()));
    let (code, _, out) = reconcile(&binlog, &["--as-of", "1"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--as-of"), "{out}");
}

/// `TRUNCATE TABLE` and `DROP TABLE` in MariaDB, captured from the binlog
/// into the store: the state equals the database again (reconcile finds no
/// difference: without the rule it reports the 100 truncated rows as extra)
/// and the dropped table has no live row left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_drop_leave_the_state_equal_to_the_database() {
    let db = MariaDb::start().await;
    let d = db.create_database("trunc").await;
    let dir = tempfile::tempdir().unwrap();
    let env = db.capture_env(&format!("{d}.*"), dir.path());
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    db.exec(&format!(
        "CREATE TABLE {d}.t (id INT PRIMARY KEY, v VARCHAR(64))"
    ))
    .await;
    db.exec(&format!("CREATE TABLE {d}.gone (id INT PRIMARY KEY)"))
        .await;
    let values = |range: std::ops::Range<i64>| {
        range
            .map(|i| format!("({i}, 'v{i}')"))
            .collect::<Vec<_>>()
            .join(",")
    };
    db.exec(&format!("INSERT INTO {d}.t VALUES {}", values(0..100)))
        .await;
    db.exec(&format!("INSERT INTO {d}.gone VALUES (1), (2)"))
        .await;
    db.exec(&format!("TRUNCATE TABLE {d}.t")).await;
    db.exec(&format!("INSERT INTO {d}.t VALUES {}", values(200..210)))
        .await;
    db.exec(&format!("DROP TABLE {d}.gone")).await;
    caught_up(&db, &d, dir.path(), &p, 1_000_000).await;
    let live = |table: &str| {
        let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
        conn.query_row(
            "SELECT count(*) FROM state WHERE db = ?1 AND tbl = ?2 AND data IS NOT NULL",
            [d.as_str(), table],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    // The 10 rows inserted after the TRUNCATE and the marker.
    assert_eq!(live("t"), 11, "log:\n{}", p.log_tail());
    assert_eq!(live("gone"), 0);
    let tables = format!("{d}.*");
    let (code, report, out) = reconcile(&env, &["--tables", &tables, "--settle-seconds", "5"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["tables"][0]["compared"], 11, "{out}");
}
