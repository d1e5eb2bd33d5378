//! The current state kept from Kafka (TiCDC canal-json) into the embedded
//! store: rows changed in any arrival order end at their highest version,
//! and re-delivered or older changes (replayed offsets, a source reading
//! an older position again) leave the state exactly as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::eventually;

/// Rows changed; each gets five changes.
const ROWS: u64 = 200;
/// TSO of the first change (above 2^53 on purpose).
const BASE_TS: u64 = 445_318_436_315_725_826;

/// Change `n` (0..5) of row `id` at `ts`: an insert, three updates, then a
/// delete for every fourth row and a fourth update for the others.
fn change(id: u64, n: u64, ts: u64) -> Value {
    let kind = match n {
        0 => "INSERT",
        4 if id % 4 == 0 => "DELETE",
        _ => "UPDATE",
    };
    let row = json!({"id": id.to_string(), "v": format!("v{n}@{ts}")});
    let old = (kind == "UPDATE").then(|| json!([{"v": format!("v{}", n - 1)}]));
    json!({"id":0,"database":"appdb","table":"accounts","pkNames":["id"],"isDdl":false,"type":kind,
           "es":ts>>18,"ts":ts>>18,"sql":"","sqlType":{"id":-5,"v":12},"mysqlType":{"id":"bigint","v":"varchar"},
           "old":old,"data":[row],"_tidb":{"commitTs":ts}})
}

/// Every row's five changes, the versions interleaved across rows.
fn changes(base: u64) -> Vec<Value> {
    (0..5)
        .flat_map(|n| (0..ROWS).map(move |id| change(id, n, base + (n * ROWS + id) * 4)))
        .collect()
}

/// The state table: key → (version, live data or null).
fn state(dir: &std::path::Path) -> BTreeMap<String, (i64, Option<String>)> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT key, version, data FROM state WHERE db = 'appdb' AND tbl = 'accounts'")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn stored_events(dir: &std::path::Path) -> usize {
    crate::store::stored(dir).values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_delivered_and_older_changes_leave_the_state_unchanged() {
    let broker = crate::harness::kafka::broker();
    let p = Pipeline::new("state", &broker.bootstrap, "", 3);
    broker.create_topic(&p.topic, p.partitions).await;
    broker.create_topic(&p.dlq, 1).await;
    let bytes = |v: Vec<Value>| {
        v.iter()
            .map(|m| serde_json::to_vec(m).unwrap())
            .collect::<Vec<_>>()
    };
    // Round-robin over three partitions: one row's changes arrive in any order.
    let first = changes(BASE_TS);
    broker
        .produce(&p.topic, p.partitions, bytes(first.clone()))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = p.store_env(dir.path());
    env.push(("CDC_STORE_RETENTION".into(), "36500d".into()));
    let consumer = ConsumerProcess::spawn(&env);
    let n = first.len();
    let all = eventually(Duration::from_secs(90), || async {
        stored_events(dir.path()) >= n
    })
    .await;
    assert!(
        all,
        "stored {}; log:\n{}",
        stored_events(dir.path()),
        consumer.log_tail()
    );

    // Each row at its last change: the fourth update, or deleted.
    let before = state(dir.path());
    assert_eq!(before.len(), ROWS as usize);
    for id in 0..ROWS {
        let (version, data) = &before[&format!("[\"{id}\"]")];
        let ts = BASE_TS + (4 * ROWS + id) * 4;
        assert_eq!(*version as u64, ts, "row {id}");
        match data {
            None => assert_eq!(id % 4, 0, "row {id} deleted"),
            Some(d) => {
                let d: Value = serde_json::from_str(d).unwrap();
                assert_eq!(d["v"], format!("v4@{ts}"), "row {id}");
            }
        }
    }

    // The same 1,000 messages again, and 1,000 changes of the same rows
    // from before the first (an older position read again).
    broker.produce(&p.topic, p.partitions, bytes(first)).await;
    broker
        .produce(&p.topic, p.partitions, bytes(changes(BASE_TS - 1_000_000)))
        .await;
    let more = eventually(Duration::from_secs(90), || async {
        stored_events(dir.path()) >= 2 * n
    })
    .await;
    assert!(
        more,
        "stored {}; log:\n{}",
        stored_events(dir.path()),
        consumer.log_tail()
    );
    let read = eventually(Duration::from_secs(30), || async {
        consumer.metric("cdc_events_total", &[]).await >= (3 * n) as f64
    })
    .await;
    assert!(read, "log:\n{}", consumer.log_tail());
    // The replayed messages stored nothing; the older ones are in the log.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_events(dir.path()), 2 * n);
    assert_eq!(state(dir.path()), before, "the state moved");
}
