//! The embedded store as the sink of binlog capture: SIGKILLs and a graceful
//! restart while changes are made lose nothing and store nothing twice,
//! because the binlog position is committed in the same transaction as the
//! events it covers.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;

use crate::binlog::write_changes;
use crate::harness::consumer::{Consumer, ConsumerProcess};
use crate::harness::eventually;
use crate::harness::mariadb::MariaDb;

/// Stored events by op, read straight from the store's file.
pub fn stored(dir: &std::path::Path) -> HashMap<String, usize> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        dir.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return HashMap::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT op, count(*) FROM events GROUP BY op") else {
        return HashMap::new();
    };
    stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
    })
    .map(|rows| rows.filter_map(Result::ok).collect())
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumption_resumes_from_the_stores_position_not_the_groups() {
    const N: usize = 2_000;
    let broker = crate::harness::kafka::broker();
    let p = crate::harness::consumer::Pipeline::new("store-kafka", &broker.bootstrap, "", 2);
    broker.create_topic(&p.topic, p.partitions).await;
    broker.create_topic(&p.dlq, 1).await;
    broker
        .produce(
            &p.topic,
            p.partitions,
            (0..N)
                .map(crate::harness::canal::message)
                .collect::<Vec<_>>(),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = p.store_env(dir.path());
    // The group's offsets are never committed while it runs: only the store
    // knows how far it got.
    env.push(("CDC_KAFKA_COMMIT_INTERVAL".into(), "1h".into()));
    // The generated changes were committed in 2023: keep them.
    env.push(("CDC_STORE_RETENTION".into(), "36500d".into()));
    let mut consumer = ConsumerProcess::spawn(&env);
    let all = eventually(Duration::from_secs(90), || async {
        stored(dir.path()).values().sum::<usize>() >= N
    })
    .await;
    assert!(
        all,
        "stored {:?}; log:\n{}",
        stored(dir.path()),
        consumer.log_tail()
    );
    consumer.kill();
    let committed = broker.committed(&p.group, &p.topic, p.partitions);
    assert!(
        committed.iter().all(|&o| o <= 0),
        "group committed {committed:?}"
    );

    // Restarted, it reads nothing again: the store's positions win.
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    broker
        .produce(
            &p.topic,
            p.partitions,
            (N..N + 10)
                .map(crate::harness::canal::message)
                .collect::<Vec<_>>(),
        )
        .await;
    let more = eventually(Duration::from_secs(60), || async {
        stored(dir.path()).values().sum::<usize>() >= N + 10
    })
    .await;
    assert!(
        more,
        "stored {:?}; log:\n{}",
        stored(dir.path()),
        consumer.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        consumer.metric("cdc_events_total", &[]).await,
        10.0,
        "only the new messages are read after the restart; log:\n{}",
        consumer.log_tail()
    );
    assert_eq!(stored(dir.path()).values().sum::<usize>(), N + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_restarts_of_capture_into_the_store_lose_and_repeat_nothing() {
    let db = MariaDb::start().await;
    let d = db.create_database("store").await;
    db.exec(&format!(
        "CREATE TABLE {d}.k (id INT PRIMARY KEY, v VARCHAR(200))"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env = db.capture_env(&format!("{d}.k"), dir.path());
    let mut p = ConsumerProcess::spawn(&env);
    p.wait_healthy().await;

    let writer = {
        let root = db.server().root_opts();
        let d = d.clone();
        tokio::spawn(async move { write_changes(root, &d, 10_000).await })
    };
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(200..1200))).await;
        if round == 2 {
            let status = p.terminate(Duration::from_secs(30));
            assert!(
                status.success(),
                "SIGTERM exit: {status:?}\n{}",
                p.log_tail()
            );
        } else {
            p.kill();
        }
        p = ConsumerProcess::spawn(&env);
    }
    let counts = writer.await.unwrap();
    let total: usize = counts.values().sum();
    // Plus CREATE DATABASE and CREATE TABLE.
    let done = eventually(Duration::from_secs(60), || async {
        stored(dir.path()).values().sum::<usize>() >= total + 2
    })
    .await;
    assert!(
        done,
        "stored {:?} of {counts:?}; log:\n{}",
        stored(dir.path()),
        p.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = stored(dir.path());
    for (op, n) in &counts {
        assert_eq!(got.get(*op).copied().unwrap_or(0), *n, "{op}: {got:?}");
    }
    assert_eq!(got.get("ddl").copied(), Some(2), "{got:?}");
    assert_eq!(got.values().sum::<usize>(), total + 2);

    // The position is in the store, next to the events.
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let position: String = conn
        .query_row(
            "SELECT position FROM checkpoints WHERE stream = 'binlog'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(position.contains("binlog."), "{position}");
    assert!(
        !dir.path().join("binlog-position.json").exists(),
        "no second position store"
    );

    // The API answers from the same store.
    let body = reqwest::get(format!("http://{}/api/events?limit=5&op=insert", p.http()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 5, "{page}");
    assert_eq!(page["events"][0]["database"], d.as_str());
}
