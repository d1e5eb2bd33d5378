//! Routing by `CDC_ES_INDEX` templates (issue 16, point 2): each event lands
//! in the index of its table or of its commit day, and `/api/events` pages
//! through all of them in one order.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cdc_monitor::canal::{decode, Decoded};
use cdc_monitor::event::SourcePosition;
use serde_json::Value;

use crate::harness::canal::{expected_id, message};
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::{EsStub, EsTarget};
use crate::harness::eventually;
use crate::harness::kafka::broker;

/// One day in TSO units (milliseconds shifted past the 18 logical bits).
const TSO_DAY: u64 = 86_400_000 << 18;

/// Message `i` committed `day` days after the canal fixtures' base TSO (2023-10-31 12:23 UTC).
fn message_on_day(i: usize, day: u64) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&message(i)).unwrap();
    let ts = v["_tidb"]["commitTs"].as_u64().unwrap() + day * TSO_DAY;
    v["_tidb"]["commitTs"] = ts.into();
    v["es"] = (ts >> 18).into();
    v["ts"] = (ts >> 18).into();
    serde_json::to_vec(&v).unwrap()
}

fn id_of(payload: &[u8]) -> String {
    match decode(payload, &SourcePosition::None).unwrap() {
        Decoded::Events(e) => e[0].document_id().to_string(),
        Decoded::Watermark { .. } => unreachable!(),
    }
}

/// A consumer of a fresh pipeline into `stub` with `CDC_ES_INDEX=template(prefix)`.
async fn start(
    stub: &EsStub,
    name: &str,
    template: impl Fn(&str) -> String,
) -> (Pipeline, String, ConsumerProcess) {
    let p = Pipeline::new(name, &broker().bootstrap, &stub.url(), 2);
    broker().create_topic(&p.topic, p.partitions).await;
    broker().create_topic(&p.dlq, 1).await;
    let index = template(&p.index);
    let mut env: Vec<(String, String)> = p
        .env()
        .into_iter()
        .filter(|(k, _)| k != "CDC_ES_INDEX")
        .collect();
    env.push(("CDC_ES_INDEX".into(), index.clone()));
    env.push(("CDC_BATCH_MAX_EVENTS".into(), "7".into()));
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    (p, index, consumer)
}

/// Waits until `stub` holds `n` documents in indices starting with `prefix`,
/// and returns the ids of each such index.
async fn stored(
    stub: &EsStub,
    prefix: &str,
    n: usize,
    consumer: &impl Consumer,
) -> BTreeMap<String, HashSet<String>> {
    let by_index = || -> BTreeMap<String, HashSet<String>> {
        stub.index_names()
            .into_iter()
            .filter(|i| i.starts_with(prefix))
            .map(|i| {
                let ids = stub.docs(&i).into_keys().collect();
                (i, ids)
            })
            .collect()
    };
    let count = |m: &BTreeMap<String, HashSet<String>>| m.values().map(HashSet::len).sum::<usize>();
    let done = eventually(Duration::from_secs(60), || async {
        count(&by_index()) >= n
    })
    .await;
    assert!(
        done,
        "{} of {n} documents in {:?}; log:\n{}",
        count(&by_index()),
        by_index().keys(),
        consumer.log_tail()
    );
    by_index()
}

/// Every event through `/api/events` pages of `limit`, checking the order.
async fn api_pages(consumer: &impl Consumer, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("http://{}/api/events?limit={limit}", consumer.http());
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = reqwest::get(&url).await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        let page: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        let got = page["events"].as_array().unwrap();
        assert!(got.len() <= limit, "{page}");
        events.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let stamps: Vec<&str> = events
        .iter()
        .map(|e| e["@timestamp"].as_str().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "not newest first across indices: {stamps:?}"
    );
    events
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_template_puts_each_event_in_its_tables_index_and_the_api_pages_across_them() {
    let Some(stub) = EsTarget::stub().await.stub else {
        unreachable!("EsTarget::stub is always the stub")
    };
    let (p, template, consumer) = start(&stub, "esroute", |prefix| {
        format!("{prefix}-{{database}}-{{table}}")
    })
    .await;
    let n = 40;
    broker()
        .produce(&p.topic, p.partitions, (0..n).map(message))
        .await;
    let by_index = stored(&stub, &p.index, n, &consumer).await;

    // message(i) is a change of appdb.users for even i, appdb.orders for odd.
    let expect = |parity: usize| -> HashSet<String> {
        (0..n)
            .filter(|i| i % 2 == parity)
            .map(expected_id)
            .collect()
    };
    let users = format!("{}-appdb-users", p.index);
    let orders = format!("{}-appdb-orders", p.index);
    assert_eq!(
        by_index.keys().cloned().collect::<Vec<_>>(),
        [orders.clone(), users.clone()],
        "indices"
    );
    assert_eq!(by_index[&users], expect(0));
    assert_eq!(by_index[&orders], expect(1));

    // One index template covers every expansion.
    let name = format!("{}-database-table", p.index);
    let installed = stub
        .template(&name)
        .unwrap_or_else(|| panic!("no template {name} for {template}: {:?}", stub.templates()));
    assert_eq!(
        installed["index_patterns"],
        serde_json::json!([format!("{}-*-*", p.index)])
    );

    // Pages of 7 over both indices: every event once, newest first.
    let events = api_pages(&consumer, 7).await;
    let got = ids(&events);
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), n, "duplicates across pages: {got:?}");
    assert_eq!(unique, (0..n).map(expected_id).collect::<HashSet<_>>());
    let tables: HashSet<&str> = events[..7]
        .iter()
        .map(|e| e["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables.len(), 2, "the first page mixes both indices");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_template_puts_each_event_in_its_commit_days_index_and_the_api_finds_both_days() {
    let Some(stub) = EsTarget::stub().await.stub else {
        unreachable!("EsTarget::stub is always the stub")
    };
    let (p, _template, consumer) = start(&stub, "esroute", |prefix| {
        format!("{prefix}-{{yyyy.MM.dd}}")
    })
    .await;
    let n = 30;
    // Even i committed on 2023-10-31, odd i one day later, interleaved in the topic.
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| message_on_day(i, (i % 2) as u64)).collect();
    broker()
        .produce(&p.topic, p.partitions, payloads.iter().cloned())
        .await;
    let by_index = stored(&stub, &p.index, n, &consumer).await;

    let first_day = format!("{}-2023.10.31", p.index);
    let second_day = format!("{}-2023.11.01", p.index);
    let expect = |parity: usize| -> HashSet<String> {
        (0..n)
            .filter(|i| i % 2 == parity)
            .map(|i| id_of(&payloads[i]))
            .collect()
    };
    assert_eq!(
        by_index.keys().cloned().collect::<Vec<_>>(),
        [first_day.clone(), second_day.clone()],
        "indices"
    );
    assert_eq!(by_index[&first_day], expect(0));
    assert_eq!(by_index[&second_day], expect(1));
    for doc in stub.docs(&second_day).values() {
        assert!(
            doc["@timestamp"]
                .as_str()
                .unwrap()
                .starts_with("2023-11-01T"),
            "{doc}"
        );
    }

    // A replay of the first day (as after a crash) lands in the same index
    // and meets the stored copies: nothing new anywhere.
    broker()
        .produce(&p.topic, p.partitions, payloads.iter().step_by(2).cloned())
        .await;
    let replayed = eventually(Duration::from_secs(30), || async {
        stub.replayed_ids() >= n / 2
    })
    .await;
    assert!(replayed, "replay not seen; log:\n{}", consumer.log_tail());
    let after = stored(&stub, &p.index, n, &consumer).await;
    assert_eq!(after, by_index, "a replay changed the indices");

    // Pages of 4: the newer day first, then the older, every event once.
    let events = api_pages(&consumer, 4).await;
    let got = ids(&events);
    assert_eq!(got.len(), n, "{got:?}");
    let expected_order: Vec<bool> = (0..n).map(|k| k < n / 2).collect();
    let second_day_ids = expect(1);
    let order: Vec<bool> = got.iter().map(|id| second_day_ids.contains(id)).collect();
    assert_eq!(order, expected_order, "newer day's events come first");
}
