//! The binlog source's initial snapshot against a real MariaDB and the real
//! binary, into the embedded store: existing rows arrive as `snapshot`
//! events while a writer goes on, and replaying the stored events (snapshot
//! rows, then the stream by position) gives each table exactly as
//! `SELECT *` shows it; a SIGKILL mid-snapshot resumes after the last
//! stored chunk; snapshot values read as the stream's values of the same
//! rows; `CDC_SNAPSHOT=never` keeps streaming only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::Rng;
use serde_json::Value;

use crate::harness::consumer::{Consumer, ConsumerProcess};
use crate::harness::eventually;
use crate::harness::mariadb::MariaDb;

/// One table's rows, each a column → value (text or null) map.
type Rows = Vec<BTreeMap<String, Value>>;

/// `capture_env` with the snapshot on, `chunk` rows per chunk.
fn snapshot_env(db: &MariaDb, d: &str, dir: &Path, chunk: usize) -> Vec<(String, String)> {
    let mut env = db.capture_env(&format!("{d}.*"), dir);
    env.push(("CDC_SNAPSHOT".into(), "initial".into()));
    env.push(("CDC_SNAPSHOT_CHUNK_ROWS".into(), chunk.to_string()));
    env.push(("CDC_STORE_RETENTION".into(), "36500d".into()));
    env
}

/// Three tables with existing rows: `a` (primary key), `b` (two-column
/// primary key), `c` (no primary key, a unique NOT NULL key), `d` (no key
/// at all, identical rows).
async fn seed(db: &MariaDb, d: &str, rows: usize) {
    db.exec(&format!(
        "CREATE TABLE {d}.a (id INT PRIMARY KEY, v VARCHAR(200), n DECIMAL(12,2), t DATETIME(3));
         CREATE TABLE {d}.b (k1 INT, k2 VARCHAR(20), v TEXT CHARACTER SET utf8mb4, PRIMARY KEY (k1, k2));
         CREATE TABLE {d}.c (u INT NOT NULL, v VARCHAR(50), UNIQUE KEY (u));
         CREATE TABLE {d}.d (v VARCHAR(20), n INT);
         CREATE TABLE {d}.e (name VARCHAR(20) CHARACTER SET latin1 PRIMARY KEY, n INT);"
    ))
    .await;
    let mut conn = db.server().root_conn().await.unwrap();
    let per = rows / 3;
    for start in (0..per).step_by(1000) {
        let ids = start..(start + 1000).min(per);
        let a: Vec<String> = ids
            .clone()
            .map(|i| {
                format!(
                    "({i}, 'v{i}', {}.{:02}, '2024-01-01 00:00:00.{:03}' + INTERVAL {i} SECOND)",
                    i * 3,
                    i % 100,
                    i % 1000
                )
            })
            .collect();
        let b: Vec<String> = ids
            .clone()
            .map(|i| format!("({}, 'k{}', 'text {i} ✓')", i / 3, i % 3))
            .collect();
        let c: Vec<String> = ids.map(|i| format!("({i}, 'c{i}')")).collect();
        conn.query_drop(format!(
            "INSERT INTO {d}.a VALUES {}; INSERT INTO {d}.b VALUES {}; INSERT INTO {d}.c VALUES {};",
            a.join(","),
            b.join(","),
            c.join(",")
        ))
        .await
        .unwrap();
    }
    // Text keys paged by a case-insensitive latin1 collation.
    let e: Vec<String> = (0..300)
        .map(|i| format!("('{}{i:03}', {i})", ["a", "B", "Ä", "é", "Z"][i % 5]))
        .collect();
    conn.query_drop(format!("INSERT INTO {d}.e VALUES {}", e.join(",")))
        .await
        .unwrap();
    conn.query_drop(format!(
        "INSERT INTO {d}.d VALUES ('same', 1), ('same', 1), ('same', 1), ('other', 2), (NULL, NULL)"
    ))
    .await
    .unwrap();
    conn.disconnect().await.unwrap();
}

/// Changes every table by single statements until `stop`; the longest
/// statement's latency, the statement, and how many ran.
async fn write_until(
    opts: mysql_async::Opts,
    d: String,
    rows: usize,
    stop: Arc<AtomicBool>,
) -> (Duration, String, usize) {
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let per = rows / 3;
    let mut next = 1_000_000;
    let mut longest = (Duration::ZERO, String::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        let id = rand::rng().random_range(0..per);
        let sql = match rand::rng().random_range(0..10) {
            0 => format!("INSERT INTO {d}.a VALUES ({next}, 'new', 1.50, NOW(3))"),
            1 => format!("UPDATE {d}.a SET v = CONCAT(v, 'x'), n = n + 1 WHERE id = {id}"),
            2 => format!("DELETE FROM {d}.a WHERE id = {id}"),
            3 => format!("INSERT INTO {d}.b VALUES ({next}, 'n', 'new')"),
            4 => format!("UPDATE {d}.b SET v = CONCAT(v, 'y') WHERE k1 = {}", id / 3),
            5 => format!("DELETE FROM {d}.b WHERE k1 = {} AND k2 = 'k1'", id / 3),
            6 => format!("INSERT INTO {d}.c VALUES ({next}, 'new')"),
            7 => format!("UPDATE {d}.c SET v = CONCAT(v, 'z') WHERE u = {id}"),
            8 => format!("DELETE FROM {d}.c WHERE u = {id}"),
            _ => format!("INSERT INTO {d}.d VALUES ('same', 1)"),
        };
        next += 1;
        let t = Instant::now();
        conn.query_drop(&sql).await.unwrap();
        if t.elapsed() > longest.0 {
            longest = (t.elapsed(), sql, longest.2);
        }
        longest.2 += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    conn.disconnect().await.unwrap();
    longest
}

/// `SELECT *` of `d.table` as text, as the capture writes values.
async fn select_all(db: &MariaDb, d: &str, table: &str) -> Rows {
    let mut conn = db.server().root_conn().await.unwrap();
    let rows: Vec<mysql_async::Row> = conn
        .query(format!("SELECT * FROM {d}.{table}"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    let mut out: Rows = rows
        .iter()
        .map(|r| {
            r.columns_ref()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let v = match r.as_ref(i) {
                        Some(mysql_async::Value::Bytes(b)) => {
                            Value::String(String::from_utf8_lossy(b).into_owned())
                        }
                        _ => Value::Null,
                    };
                    (c.name_str().into_owned(), v)
                })
                .collect()
        })
        .collect();
    out.sort_by_key(|r| serde_json::to_string(r).unwrap());
    out
}

/// The stored documents of database `d`, in replay order: by change
/// number (snapshot rows sort before every change after their position),
/// then by arrival.
fn stored_docs(dir: &Path, d: &str) -> Vec<Value> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT doc FROM events WHERE db = ?1 ORDER BY seq")
        .unwrap();
    let mut docs: Vec<Value> = stmt
        .query_map([d], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|t| serde_json::from_str(&t.unwrap()).unwrap())
        .collect();
    docs.sort_by_key(|doc| doc["commit_ts"].as_u64().unwrap_or(0));
    docs
}

fn row_of(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Replays `docs` of `table`: by primary key when the events carry one,
/// else by whole row (a multiset).
fn replay(docs: &[Value], table: &str) -> Rows {
    let mut by_key: HashMap<String, BTreeMap<String, Value>> = HashMap::new();
    let mut bag: Rows = Vec::new();
    for doc in docs.iter().filter(|doc| doc["table"] == table) {
        let data = row_of(&doc["data"]);
        let keyed = doc["pk"].as_object().is_some_and(|pk| !pk.is_empty());
        let key = doc["pk"].to_string();
        match (doc["op"].as_str().unwrap(), keyed) {
            ("snapshot" | "insert" | "update", true) => {
                by_key.insert(key, data);
            }
            ("delete", true) => {
                by_key.remove(&key);
            }
            ("snapshot" | "insert", false) => bag.push(data),
            ("update", false) => {
                let old = row_of(&doc["old"]);
                let i = bag
                    .iter()
                    .position(|r| *r == old)
                    .unwrap_or_else(|| panic!("{table}: update of a row not there: {doc}"));
                bag[i] = data;
            }
            ("delete", false) => {
                let i = bag
                    .iter()
                    .position(|r| *r == data)
                    .unwrap_or_else(|| panic!("{table}: delete of a row not there: {doc}"));
                bag.swap_remove(i);
            }
            (op, _) => panic!("unexpected op {op}: {doc}"),
        }
    }
    let mut out: Rows = by_key.into_values().chain(bag).collect();
    out.sort_by_key(|r| serde_json::to_string(r).unwrap());
    out
}

/// Waits until a marker row written after everything else is stored: the
/// stream has caught up.
async fn caught_up(db: &MariaDb, d: &str, dir: &Path, p: &ConsumerProcess) {
    db.exec(&format!(
        "INSERT INTO {d}.a VALUES (-1, 'marker', 0, '2024-01-01 00:00:00.000')"
    ))
    .await;
    let ok = eventually(Duration::from_secs(120), || async {
        stored_docs(dir, d)
            .iter()
            .any(|doc| doc["op"] == "insert" && doc["data"]["v"] == "marker")
    })
    .await;
    assert!(ok, "the marker row never arrived; log:\n{}", p.log_tail());
}

/// Every table in `tables` replayed from the store equals `SELECT *`.
async fn assert_replay_equals_tables(db: &MariaDb, d: &str, dir: &Path, tables: &[&str]) {
    let docs = stored_docs(dir, d);
    for &table in tables {
        let want = select_all(db, d, table).await;
        let got = replay(&docs, table);
        assert_eq!(got.len(), want.len(), "{table}: row count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{table}: first differing row");
        }
    }
}

/// The store's current state of each table in `tables` (live rows, not
/// tombstones) equals `SELECT *`; for `keyless` tables, whose identical
/// rows are one state entry, `SELECT DISTINCT *`.
async fn assert_state_equals_tables(
    db: &MariaDb,
    d: &str,
    dir: &Path,
    tables: &[&str],
    keyless: &[&str],
) {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    for &table in tables {
        let mut want = select_all(db, d, table).await;
        if keyless.contains(&table) {
            want.dedup();
        }
        let mut got: Rows = conn
            .prepare("SELECT data FROM state WHERE db = ?1 AND tbl = ?2 AND data IS NOT NULL")
            .unwrap()
            .query_map([d, table], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|t| row_of(&serde_json::from_str(&t.unwrap()).unwrap()))
            .collect();
        got.sort_by_key(|r| serde_json::to_string(r).unwrap());
        assert_eq!(got.len(), want.len(), "{table}: state row count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{table}: first differing state row");
        }
    }
}

/// No primary key was read twice by the snapshot (a resumed snapshot reads
/// on after the stored chunk, and ids are deterministic).
fn assert_each_key_snapshotted_once(dir: &Path, d: &str) {
    let docs = stored_docs(dir, d);
    let mut seen = HashSet::new();
    for doc in docs
        .iter()
        .filter(|doc| doc["op"] == "snapshot" && doc["table"] != "d")
    {
        let key = format!("{}/{}", doc["table"], doc["pk"]);
        assert!(seen.insert(key.clone()), "{key} snapshotted twice");
    }
}

fn snapshot_count(dir: &Path) -> usize {
    crate::store::stored(dir)
        .get("snapshot")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_with_a_writer_running_replays_to_the_tables_exact_rows() {
    const ROWS: usize = 200_000;
    // Commits without waiting for the disk: what is measured is whether the
    // snapshot makes writers wait (locks), not this machine's fsyncs, which
    // other tests running alongside can stall for seconds.
    let db = MariaDb::start_with_args(vec![
        "--innodb-flush-log-at-trx-commit=2".to_owned(),
        "--sync-binlog=0".to_owned(),
    ])
    .await;
    let d = db.create_database("snap").await;
    seed(&db, &d, ROWS).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        db.server().root_opts(),
        d.clone(),
        ROWS,
        stop.clone(),
    ));
    let p = ConsumerProcess::spawn(&snapshot_env(&db, &d, dir.path(), 500));
    p.wait_healthy().await;
    p.wait_for_log("snapshot done", Duration::from_secs(180))
        .await;
    let stats = api_stats(&p).await;
    assert!(stats.get("snapshot").is_none(), "{stats}");
    // Changes go on a little after the snapshot, through the stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (longest, statement, statements) = writer.await.unwrap();
    println!(
        "writer's longest statement during the snapshot: {longest:?} \
         ({statement}; {statements} statements)"
    );
    assert!(
        longest < Duration::from_secs(1),
        "writer stalled {longest:?}: {statement}"
    );
    caught_up(&db, &d, dir.path(), &p).await;

    assert!(
        snapshot_count(dir.path()) >= ROWS / 2,
        "{:?}",
        crate::store::stored(dir.path())
    );
    assert_replay_equals_tables(&db, &d, dir.path(), &["a", "b", "c", "d", "e"]).await;
    assert_state_equals_tables(&db, &d, dir.path(), &["a", "b", "c", "d", "e"], &["d"]).await;
    assert_each_key_snapshotted_once(dir.path(), &d);
    assert_eq!(
        p.metric("cdc_snapshot_remaining_tables", &[]).await,
        0.0,
        "log:\n{}",
        p.log_tail()
    );
    // The writer started first: its deletes and inserts make the counts
    // differ from ROWS, but the metrics match what was stored.
    let stored_a = stored_docs(dir.path(), &d)
        .iter()
        .filter(|doc| doc["op"] == "snapshot" && doc["table"] == "a")
        .count();
    assert_eq!(
        p.metric("cdc_snapshot_rows_total", &["table=\"a\""]).await,
        stored_a as f64,
        "log:\n{}",
        p.log_tail()
    );
    assert_eq!(
        p.metric("cdc_events_total", &["op=\"snapshot\""]).await,
        snapshot_count(dir.path()) as f64
    );
    // The API filters them.
    let body = reqwest::get(format!(
        "http://{}/api/events?limit=3&op=snapshot",
        p.http()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let page: Value = serde_json::from_str(&body).unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{page}");
    assert!(events.iter().all(|e| e["op"] == "snapshot"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_killed_twice_mid_way_resumes_after_the_last_stored_chunk() {
    const ROWS: usize = 20_000;
    let db = MariaDb::start().await;
    let d = db.create_database("snapkill").await;
    seed(&db, &d, ROWS).await;
    let dir = tempfile::tempdir().unwrap();
    let env = snapshot_env(&db, &d, dir.path(), 20);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        db.server().root_opts(),
        d.clone(),
        ROWS,
        stop.clone(),
    ));
    let mut p = ConsumerProcess::spawn(&env);
    for (kill, at_least) in [(1, ROWS / 5), (2, ROWS / 2)] {
        let midway = eventually(Duration::from_secs(120), || async {
            snapshot_count(dir.path()) >= at_least
        })
        .await;
        assert!(midway, "log:\n{}", p.log_tail());
        if kill == 1 {
            // The dashboard's source: where the snapshot is.
            let stats = api_stats(&p).await;
            let s = &stats["snapshot"];
            assert_eq!(s["database"], d.as_str(), "{stats}");
            assert!(
                s["table"].as_str().is_some_and(|t| !t.is_empty()),
                "{stats}"
            );
            assert!(s["rows"].as_u64().is_some(), "{stats}");
            assert!(s["remaining_tables"].as_i64().unwrap_or(0) >= 1, "{stats}");
        }
        p.kill();
        let stored = stored_checkpoint(dir.path());
        assert!(
            stored.contains("\"snapshot\""),
            "kill {kill} came after the snapshot: the store holds {stored}"
        );
        if kill == 2 {
            let log = std::fs::read_to_string(&p.log).unwrap();
            assert!(
                log.contains("resuming the snapshot after the last stored chunk"),
                "{log}"
            );
        }
        p = ConsumerProcess::spawn(&env);
    }
    p.wait_for_log("snapshot done", Duration::from_secs(180))
        .await;
    let stats = api_stats(&p).await;
    assert!(stats.get("snapshot").is_none(), "{stats}");
    let log = std::fs::read_to_string(&p.log).unwrap();
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming the snapshot after the last stored chunk"))
        .unwrap_or_else(|| panic!("no resume line; log:\n{log}"));
    println!("{resumed}");
    assert!(resumed.contains(&d), "{resumed}");
    // Not from scratch: the last process read fewer rows than there are.
    // The second kill came after half the rows were stored; what is left is
    // the other half plus what the writer inserted since (it keeps going),
    // far below the 20,000 a new start would read.
    let reread = p.metric("cdc_snapshot_rows_total", &[]).await;
    println!("the last process read {reread} snapshot rows");
    assert!(
        reread < (ROWS * 3 / 4) as f64,
        "re-read {reread} rows: the snapshot started over"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    caught_up(&db, &d, dir.path(), &p).await;
    assert_each_key_snapshotted_once(dir.path(), &d);
    // `d` has no key: it was read first, before the kills, at the first
    // snapshot's point, so it replays exactly too.
    assert_replay_equals_tables(&db, &d, dir.path(), &["a", "b", "c", "d", "e"]).await;
    // Rows read after a resume carry the later snapshot point's version, so
    // the stream's replay of older changes leaves them as read.
    assert_state_equals_tables(&db, &d, dir.path(), &["a", "b", "c", "d", "e"], &["d"]).await;
}

/// `/api/stats` as JSON.
async fn api_stats(p: &ConsumerProcess) -> Value {
    let text = reqwest::get(format!("http://{}/api/stats", p.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The binlog stream's stored checkpoint text.
fn stored_checkpoint(dir: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT position FROM checkpoints WHERE stream = 'binlog'",
        [],
        |r| r.get(0),
    )
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_values_read_as_the_stream_captures_the_same_rows() {
    let db = MariaDb::start().await;
    let d = db.create_database("snapval").await;
    db.exec(&format!(
        "SET SESSION sql_mode = '';
         CREATE TABLE {d}.v (
           id INT PRIMARY KEY, ti TINYINT, su SMALLINT UNSIGNED, mi MEDIUMINT, bu BIGINT UNSIGNED,
           de DECIMAL(20,6), f FLOAT, db DOUBLE, bi BIT(10), da DATE, dt DATETIME(6),
           ts TIMESTAMP(3) NULL, tm TIME(2), y YEAR, ch CHAR(5), lv VARCHAR(20) CHARACTER SET latin1,
           tx TEXT CHARACTER SET utf8mb4, bn BINARY(4), vb VARBINARY(8), bl BLOB,
           en ENUM('new','paid'), st SET('a','b','c'), js JSON, i6 INET6, uu UUID);
         INSERT INTO {d}.v VALUES
           (1, -128, 65535, -8388608, 18446744073709551615, -12345678901234.123456, 3.1415927,
            0.1, b'1010101010', '2024-02-29', '2024-05-01 12:34:56.123456', '2024-05-01 12:00:00.250',
            '-838:59:59.99', 2024, 'ab', 'café', 'zoë 🎉', x'01020000', x'00ff', x'deadbeef',
            'paid', 'a,c', '{{\"k\": [1, 2.5, null]}}', '::ffff:1.2.3.4', '123e4567-e89b-12d3-a456-426614174000'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '0000-00-00', '0000-00-00 00:00:00',
            '0000-00-00 00:00:00', '00:00:00', 0, '', '', '', x'00000000', x'', x'', '', '', NULL, NULL, NULL),
           (3, 127, 0, 8388607, 0, 0.000001, -1e-30, 1.7976931348623157e308, b'0', '1000-01-01',
            '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999', '12:00:00.5', 1901, 'x', 'a', 'b',
            x'ff', x'61', x'62', 'new', 'b', '[]', '2001:db8::1', '00000000-0000-0000-0000-000000000000');"
    ))
    .await;
    // The same rows, once streamed from the binlog and once snapshotted.
    let streamed_dir = tempfile::tempdir().unwrap();
    let streamed = ConsumerProcess::spawn(&db.capture_env(&format!("{d}.*"), streamed_dir.path()));
    let snap_dir = tempfile::tempdir().unwrap();
    let snap = ConsumerProcess::spawn(&snapshot_env(&db, &d, snap_dir.path(), 2));
    let ok = eventually(Duration::from_secs(60), || async {
        crate::store::stored(streamed_dir.path()).get("insert") == Some(&3)
            && snapshot_count(snap_dir.path()) == 3
    })
    .await;
    assert!(
        ok,
        "streamed:\n{}\nsnapshot:\n{}",
        streamed.log_tail(),
        snap.log_tail()
    );
    let rows = |dir: &Path, op: &str| -> BTreeMap<String, (Value, Value)> {
        stored_docs(dir, &d)
            .into_iter()
            .filter(|doc| doc["op"] == op)
            .map(|doc| {
                (
                    doc["pk"]["id"].to_string(),
                    (doc["data"].clone(), doc["pk"].clone()),
                )
            })
            .collect()
    };
    let want = rows(streamed_dir.path(), "insert");
    let got = rows(snap_dir.path(), "snapshot");
    assert_eq!(got.len(), 3);
    for (id, (data, pk)) in &want {
        let (g, gpk) = &got[id];
        for (col, v) in data.as_object().unwrap() {
            assert_eq!(&g[col], v, "row {id}, column {col}");
        }
        assert_eq!(gpk, pk);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_never_streams_only_new_changes() {
    let db = MariaDb::start().await;
    let d = db.create_database("snapnever").await;
    db.exec(&format!(
        "CREATE TABLE {d}.k (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO {d}.k VALUES (1, 'old')"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = db.capture_env(&format!("{d}.*"), dir.path());
    env.push(("CDC_BINLOG_START".into(), "current".into()));
    env.push(("CDC_SNAPSHOT".into(), "never".into()));
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    // Capture is under way once a first change arrives.
    let ok = eventually(Duration::from_secs(30), || async {
        db.exec(&format!(
            "INSERT INTO {d}.k VALUES (2, 'new') ON DUPLICATE KEY UPDATE v = 'new'"
        ))
        .await;
        crate::store::stored(dir.path()).values().sum::<usize>() > 0
    })
    .await;
    assert!(ok, "log:\n{}", p.log_tail());
    let docs = stored_docs(dir.path(), &d);
    assert!(docs.iter().all(|doc| doc["op"] != "snapshot"), "{docs:?}");
    assert!(docs.iter().all(|doc| doc["data"]["v"] != "old"), "{docs:?}");
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(!log.contains("snapshot started"), "{log}");
}

/// `cdc-monitor snapshot ARGS` against `p`; its exit code and output.
fn snapshot_command(p: &ConsumerProcess, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc-monitor"))
        .arg("snapshot")
        .args(args)
        .args(["--http-addr", &p.http().to_string()])
        .env_remove("CDC_HTTP_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_on_demand_re_reads_tables_while_the_stream_goes_on() {
    const ROWS: usize = 30_000;
    let db = MariaDb::start().await;
    let d = db.create_database("snapdemand").await;
    seed(&db, &d, ROWS).await;
    let dir = tempfile::tempdir().unwrap();
    // Streaming from now only: the existing rows are not in the state yet.
    let mut env = db.capture_env(&format!("{d}.*"), dir.path());
    env.retain(|(k, _)| k != "CDC_BINLOG_START");
    env.push(("CDC_BINLOG_START".into(), "current".into()));
    env.push(("CDC_SNAPSHOT_CHUNK_ROWS".into(), "1000".into()));
    env.push(("CDC_STORE_RETENTION".into(), "36500d".into()));
    let p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        db.server().root_opts(),
        d.clone(),
        ROWS,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (code, out) = snapshot_command(&p, &["--tables", "nosuchdb.*"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no captured table matches"), "{out}");
    let (code, out) = snapshot_command(&p, &["--tables", &format!("{d}.a,{d}.c")]);
    assert_eq!(code, 0, "{out}\nlog:\n{}", p.log_tail());
    assert!(
        out.contains("snapshot started at") && out.contains(&format!("{d}.a, {d}.c")),
        "{out}"
    );
    p.wait_for_log("on-demand snapshot done", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, _, statements) = writer.await.unwrap();
    println!("{statements} writer statements ran beside the on-demand snapshot");
    caught_up(&db, &d, dir.path(), &p).await;
    assert_state_equals_tables(&db, &d, dir.path(), &["a", "c"], &[]).await;
    // A table not asked for holds only the rows the stream saw.
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let b: i64 = conn
        .query_row(
            "SELECT count(*) FROM state WHERE db = ?1 AND tbl = 'b' AND data IS NOT NULL",
            [&d],
            |r| r.get(0),
        )
        .unwrap();
    assert!(b < (ROWS / 3 / 2) as i64, "{b} rows of b in the state");

    // A page on another site cannot start one.
    let refused = reqwest::Client::new()
        .post(format!("http://{}/api/snapshot?tables={d}.a", p.http()))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}
