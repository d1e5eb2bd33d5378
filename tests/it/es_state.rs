//! The current-state index (issue 14, point 2, Elasticsearch side): the real
//! binary writes each row's latest version beside the events; inserts,
//! updates, a key-changing update and deletes leave exactly the expected
//! rows, and re-delivering 1,000 older events changes nothing. `row` and
//! `row_history` are then read back through the sink itself.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use cdc_monitor::config::{EsCompression, EsConfig, EsMode, PipelineConfig};
use cdc_monitor::event::{ChangeEvent, Op, Row, SourcePosition};
use cdc_monitor::metrics::Metrics;
use cdc_monitor::sink::elasticsearch::ElasticsearchSink;
use cdc_monitor::sink::state::RowKey;
use serde_json::{json, Value};

use crate::harness::canal::BASE_TS;
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::{EsTarget, Faults};
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::unique;
use tokio_util::sync::CancellationToken;

/// One canal-json change of `appdb.accounts` (key `id`) at sequence `seq`.
fn change(seq: usize, kind: &str, id: u64, name: &str, old: Value) -> Vec<u8> {
    let ts = BASE_TS + seq as u64 * 7;
    let row = json!({"id": id.to_string(), "name": name});
    serde_json::to_vec(&json!({"id":0,"database":"appdb","table":"accounts","pkNames":["id"],"isDdl":false,"type":kind,
        "es":ts>>18,"ts":ts>>18,"sql":"","sqlType":{"id":-5,"name":12},"mysqlType":{"id":"bigint","name":"varchar"},
        "old":old,"data":[row],"_tidb":{"commitTs":ts}}))
    .unwrap()
}

/// Rows by id: (name, version).
type Rows = BTreeMap<u64, (String, u64)>;

/// The changes, in commit order, and the rows they leave.
fn script() -> (Vec<Vec<u8>>, Rows) {
    let mut msgs = Vec::new();
    let mut rows = Rows::new();
    let mut push = |kind: &str, id: u64, name: String, old: Value, gone: Option<u64>| {
        let seq = msgs.len();
        msgs.push(change(seq, kind, id, &name, old));
        let version = BASE_TS + seq as u64 * 7;
        if let Some(g) = gone {
            rows.remove(&g);
        }
        if kind == "DELETE" {
            rows.remove(&id);
        } else {
            rows.insert(id, (name, version));
        }
    };
    for k in 0..300 {
        push("INSERT", k, format!("n{k}"), Value::Null, None);
    }
    for k in (0..300).step_by(3) {
        push(
            "UPDATE",
            k,
            format!("u{k}"),
            json!([{"name": format!("n{k}")}]),
            None,
        );
    }
    // The key moves: the old row goes, the new one appears.
    for k in (1..300).step_by(10) {
        push(
            "UPDATE",
            k + 1000,
            format!("m{k}"),
            json!([{"id": k.to_string()}]),
            Some(k),
        );
    }
    for k in (2..300).step_by(5) {
        push("DELETE", k, format!("n{k}"), Value::Null, None);
    }
    for k in (2..300).step_by(25) {
        push("INSERT", k, format!("again{k}"), Value::Null, None);
    }
    (msgs, rows)
}

fn state_id(id: u64) -> String {
    let pk = Row::from_values([("id", json!(id.to_string()))]);
    RowKey::of("appdb", "accounts", &pk, &pk).id().to_string()
}

/// Every document of the state index, by id.
async fn state_docs(es: &EsTarget, index: &str) -> HashMap<String, Value> {
    if let Some(stub) = &es.stub {
        return stub.docs(index);
    }
    let http = reqwest::Client::new();
    let _ = http
        .post(format!("{}/{index}/_refresh", es.url))
        .send()
        .await;
    let resp = http
        .post(format!("{}/{index}/_search", es.url))
        .header("content-type", "application/json")
        .body(json!({"size": 10_000, "query": {"match_all": {}}}).to_string())
        .send()
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or_default();
    reply["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|h| (h["_id"].as_str().unwrap().to_owned(), h["_source"].clone()))
        .collect()
}

/// Checks the state index holds exactly `rows`.
async fn assert_state(es: &EsTarget, index: &str, rows: &Rows, consumer: &impl Consumer) {
    let expected: HashMap<String, (String, u64)> = rows
        .iter()
        .map(|(id, v)| (state_id(*id), v.clone()))
        .collect();
    let same = |docs: &HashMap<String, Value>| {
        docs.len() == expected.len()
            && expected.iter().all(|(id, (name, version))| {
                docs.get(id).is_some_and(|d| {
                    d["data"]["name"] == json!(name) && d["version"].as_u64() == Some(*version)
                })
            })
    };
    let ok = eventually(Duration::from_secs(60), || async {
        same(&state_docs(es, index).await)
    })
    .await;
    let docs = state_docs(es, index).await;
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(id, (name, _))| docs.get(*id).map(|d| &d["data"]["name"]) != Some(&json!(name)))
        .take(5)
        .collect();
    assert!(
        ok,
        "{} state documents, {} expected; e.g. wrong or missing {wrong:?}; log:\n{}",
        docs.len(),
        expected.len(),
        consumer.log_tail()
    );
}

async fn committed_all(p: &Pipeline, n: usize) -> bool {
    p.all_committed(n, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_index_holds_each_rows_latest_change_and_replayed_older_changes_leave_it() {
    let es = EsTarget::start().await;
    let p = Pipeline::new("esstate", &broker().bootstrap, &es.url, 2);
    broker().create_topic(&p.topic, p.partitions).await;
    broker().create_topic(&p.dlq, 1).await;
    let state_index = p.index.replace("-events", "-state");
    let mut env = p.env();
    env.push(("CDC_ES_STATE_INDEX".into(), state_index.clone()));
    env.push(("CDC_BATCH_MAX_EVENTS".into(), "50".into()));
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;

    let (msgs, rows) = script();
    // Two partitions: changes of one row arrive out of order, and versions decide.
    broker()
        .produce(&p.topic, p.partitions, msgs.iter().cloned())
        .await;
    assert_state(&es, &state_index, &rows, &consumer).await;
    assert!(
        committed_all(&p, msgs.len()).await,
        "log:\n{}",
        consumer.log_tail()
    );
    if let Some(stub) = &es.stub {
        let t = stub
            .template(&state_index)
            .expect("state index template installed");
        assert_eq!(t["template"]["settings"]["index"]["gc_deletes"], "604800s");
    }

    // 1,000 older events again: the events index and the state stay as they are.
    let events = es.count(&p.index).await;
    assert_eq!(events, msgs.len() as u64);
    let replay: Vec<Vec<u8>> = (0..1000).map(|i| msgs[i % msgs.len()].clone()).collect();
    broker().produce(&p.topic, p.partitions, replay).await;
    assert!(
        committed_all(&p, msgs.len() + 1000).await,
        "log:\n{}",
        consumer.log_tail()
    );
    assert_state(&es, &state_index, &rows, &consumer).await;
    assert_eq!(
        es.count(&p.index).await,
        events,
        "a replay stored an event twice"
    );
    assert_eq!(
        consumer.metric("cdc_dead_letter_messages_total", &[]).await,
        0.0
    );

    // The sink answers `row` and `row_history` from what the binary wrote.
    let sink = sink_for(&es, &p.index, Some(&state_index));
    let key = |id: u64| {
        let pk = Row::from_values([("id", json!(id.to_string()))]);
        RowKey::of("appdb", "accounts", &pk, &pk)
    };
    let row = sink.row(&key(3)).await.unwrap().expect("row 3 is there");
    assert_eq!(row.data, json!({"id": "3", "name": "u3"}));
    assert_eq!(row.op, "update");
    assert!(!row.deleted);
    assert!(
        sink.row(&key(7)).await.unwrap().is_none(),
        "row 7 was deleted"
    );
    assert!(
        sink.row(&key(1)).await.unwrap().is_none(),
        "row 1 moved to 1001"
    );
    assert_eq!(
        sink.row(&key(1001)).await.unwrap().unwrap().data["name"],
        "m1"
    );
    let history = sink.row_history(&key(27), 100).await.unwrap();
    let ops: Vec<String> = history
        .events
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e.get()).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // 27: inserted, updated (27 % 3 == 0), deleted (27 % 5 == 2), inserted again (27 % 25 == 2).
    assert_eq!(ops, ["insert", "update", "delete", "insert"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_action_refused_for_good_dead_letters_its_event_and_the_rest_flows() {
    let es = EsTarget::stub().await;
    let stub = es.stub.clone().unwrap();
    // Row 5's state document is refused, whatever the change.
    stub.set_faults(Faults {
        refused_item_ids: [state_id(5)].into_iter().collect(),
        ..Faults::default()
    });
    let p = Pipeline::new("esstatebad", &broker().bootstrap, &es.url, 1);
    broker().create_topic(&p.topic, p.partitions).await;
    broker().create_topic(&p.dlq, 1).await;
    let state_index = p.index.replace("-events", "-state");
    let mut env = p.env();
    env.push(("CDC_ES_STATE_INDEX".into(), state_index.clone()));
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    let mut msgs: Vec<Vec<u8>> = (0..20)
        .map(|k| change(k, "INSERT", k as u64, &format!("n{k}"), Value::Null))
        .collect();
    msgs.push(change(20, "UPDATE", 5, "u5", json!([{"name": "n5"}])));
    broker()
        .produce(&p.topic, p.partitions, msgs.iter().cloned())
        .await;

    assert!(
        committed_all(&p, msgs.len()).await,
        "log:\n{}",
        consumer.log_tail()
    );
    let letters = broker().read_all(&p.dlq, 2, Duration::from_secs(30));
    let payloads: Vec<&[u8]> = letters.iter().map(|(p, _)| p.as_slice()).collect();
    assert_eq!(
        payloads,
        [msgs[5].as_slice(), msgs[20].as_slice()],
        "dead letters"
    );
    let docs = stub.docs(&state_index);
    assert_eq!(docs.len(), 19, "every other row's state is there");
    assert!(!docs.contains_key(&state_id(5)));
}

/// `TRUNCATE` and `DROP DATABASE` (in-process sink): the state documents of
/// the rows older than the statement go, a row written after it in the same
/// batch stays, a late replay of an older change does not bring a row back,
/// and other tables stay until their database is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_drop_delete_the_state_rows_older_than_the_statement() {
    let es = EsTarget::start().await;
    let (index, state) = (unique("trunc-events"), unique("trunc-state"));
    let sink = sink_for(&es, &index, Some(&state));
    sink.prepare().await.unwrap();
    let key = |table: &str, id: u64| {
        let pk = Row::from_values([("id", json!(id.to_string()))]);
        RowKey::of("appdb", table, &pk, &pk).id().to_string()
    };
    let row = |table: &str, id: u64, ts: u64| {
        let pk = Row::from_values([("id", json!(id.to_string()))]);
        ChangeEvent {
            commit_ts: Some(ts),
            ..ChangeEvent::row("appdb", table, Op::Insert, pk.clone(), pk, None, 0)
        }
    };
    let ddl = |table: &str, sql: &str, ts: u64| {
        ChangeEvent::ddl(
            "appdb".into(),
            table.into(),
            sql.into(),
            0,
            Some(ts),
            SourcePosition::None,
        )
    };
    let abort = CancellationToken::new();
    let write = |events: Vec<ChangeEvent>| {
        let (sink, abort) = (&sink, &abort);
        async move { assert!(sink.write(&events, &[], abort).await.unwrap().is_empty()) }
    };
    let ids = || async {
        let mut ids: Vec<String> = state_docs(&es, &state).await.into_keys().collect();
        ids.sort();
        ids
    };
    write(vec![
        row("accounts", 1, BASE_TS),
        row("accounts", 2, BASE_TS + 1),
        row("orders", 1, BASE_TS + 2),
    ])
    .await;
    write(vec![
        ddl("accounts", "TRUNCATE TABLE `accounts`", BASE_TS + 10),
        row("accounts", 3, BASE_TS + 11),
    ])
    .await;
    // A late replay of a change from before the statement.
    write(vec![row("accounts", 2, BASE_TS + 1)]).await;
    let mut left = vec![key("accounts", 3), key("orders", 1)];
    left.sort();
    assert_eq!(ids().await, left);
    write(vec![ddl("", "DROP DATABASE IF EXISTS appdb", BASE_TS + 20)]).await;
    assert_eq!(ids().await, Vec::<String>::new());
}

#[tokio::test]
async fn without_a_state_index_row_names_the_key_to_set() {
    let es = EsTarget::stub().await;
    let sink = sink_for(&es, "cdc-events", None);
    let pk = Row::from_values([("id", json!("1"))]);
    let err = sink
        .row(&RowKey::of("appdb", "accounts", &pk, &pk))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("CDC_ES_STATE_INDEX"), "{err}");
}

/// The Elasticsearch sink the binary ran, built in this process.
fn sink_for(es: &EsTarget, index: &str, state_index: Option<&str>) -> ElasticsearchSink {
    let cfg = EsConfig {
        urls: vec![es.url.parse().unwrap()],
        index: cdc_monitor::index_route::IndexRoute::parse(index).unwrap(),
        username: None,
        password: None,
        api_key: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        timeout: Duration::from_secs(10),
        compression: EsCompression::None,
        state_index: state_index.map(str::to_owned),
        tombstone_retention: Duration::from_secs(7 * 86_400),
        mode: EsMode::Index,
    };
    let pipeline = PipelineConfig {
        max_events: 100,
        max_bytes: 1 << 20,
        linger: Duration::from_millis(5),
        concurrency: 1,
        retry_initial_backoff: Duration::from_millis(100),
        retry_max_backoff: Duration::from_secs(1),
        channel_capacity: 16,
        max_buffered_bytes: 1 << 24,
    };
    ElasticsearchSink::new(&cfg, &pipeline, Metrics::new()).unwrap()
}
