//! Several Elasticsearch nodes and gzip bodies (issue 16, point 3): a node
//! that goes away is skipped and taken back, and compressed bulk bodies
//! store the same documents as plain ones.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::app::InProcessApp;
use crate::harness::canal::{expected_id, message};
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::{EsStub, EsTarget};
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::ports::ClosedPort;

async fn produce(p: &Pipeline, range: std::ops::Range<usize>) {
    broker()
        .produce(&p.topic, p.partitions, range.map(message))
        .await;
}

/// Waits for exactly the documents of events `0..n` in `stub`.
async fn assert_stored_once(stub: &EsStub, p: &Pipeline, n: usize, consumer: &impl Consumer) {
    let done = eventually(Duration::from_secs(120), || async {
        stub.docs(&p.index).len() >= n
    })
    .await;
    assert!(
        done,
        "{} of {n} documents; log:\n{}",
        stub.docs(&p.index).len(),
        consumer.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got: HashSet<String> = stub.docs(&p.index).into_keys().collect();
    let expected: HashSet<String> = (0..n).map(expected_id).collect();
    assert_eq!(got.len(), n, "extra documents");
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_stopped_for_20s_mid_stream_store_every_event_once_and_both_are_used() {
    let Some(first) = EsTarget::stub().await.stub else {
        unreachable!("EsTarget::stub is always the stub")
    };
    let second = first.start_node().await;
    let urls = format!("{},{}", first.url(), second.url());
    let p = Pipeline::new("esnodes", &broker().bootstrap, &urls, 2);
    broker().create_topic(&p.topic, p.partitions).await;
    broker().create_topic(&p.dlq, 1).await;
    let mut env = p.env();
    // Small batches: many bulk requests, so both nodes see some.
    env.push(("CDC_BATCH_MAX_EVENTS".into(), "200".into()));
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;

    let mut produced = 0;
    produce(&p, 0..2_000).await;
    produced += 2_000;
    let flowing = eventually(Duration::from_secs(60), || async {
        first.docs(&p.index).len() == produced
    })
    .await;
    assert!(flowing, "{}", consumer.log_tail());
    assert!(
        first.node_bulk_requests() > 0 && second.node_bulk_requests() > 0,
        "requests not spread: {} and {}",
        first.node_bulk_requests(),
        second.node_bulk_requests()
    );

    // The second node goes away for 20 s while events keep coming: the
    // first takes every write meanwhile.
    second.stop().await;
    let stopped_at = Instant::now();
    let second_before = second.node_bulk_requests();
    while stopped_at.elapsed() < Duration::from_secs(20) {
        produce(&p, produced..produced + 1_000).await;
        produced += 1_000;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let node_label = format!("node=\"{}\"", second.url());
    assert_eq!(
        consumer.metric("cdc_es_node_up", &[&node_label]).await,
        0.0,
        "{}",
        consumer.metrics().await
    );
    let ready = reqwest::get(format!("http://{}/readyz", consumer.http()))
        .await
        .unwrap();
    assert!(
        ready.status().is_success(),
        "not ready with one node of two up: {}",
        ready.text().await.unwrap_or_default()
    );
    let kept_up = first.docs(&p.index).len();
    assert!(
        kept_up + 3_000 >= produced,
        "only {kept_up} of {produced} stored while one node was down; log:\n{}",
        consumer.log_tail()
    );
    second.restart().await;

    // The second node takes requests again once its backoff ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.node_bulk_requests() == second_before && Instant::now() < deadline {
        produce(&p, produced..produced + 200).await;
        produced += 200;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        second.node_bulk_requests() > second_before,
        "the restarted node was never used again; log:\n{}",
        consumer.log_tail()
    );
    let back = eventually(Duration::from_secs(10), || async {
        consumer.metric("cdc_es_node_up", &[&node_label]).await == 1.0
    })
    .await;
    assert!(back, "{}", consumer.metrics().await);
    assert_stored_once(&first, &p, produced, &consumer).await;
    let committed = p.all_committed(produced, Duration::from_secs(30)).await;
    assert!(committed, "not every message committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_with_every_node_down_names_each_nodes_failure() {
    // Closed ports stand in for nodes that are down.
    let (a, b) = (ClosedPort::new(), ClosedPort::new());
    let urls = format!("{},{}", a.url(), b.url());
    let p = Pipeline::new("esnodes-down", &broker().bootstrap, &urls, 1);
    broker().create_topic(&p.topic, 1).await;
    let consumer = ConsumerProcess::spawn(&p.env());
    consumer.wait_healthy().await;
    let resp = reqwest::get(format!("http://{}/readyz", consumer.http()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let why = body["failing"]["elasticsearch"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains(&a.url()) && why.contains(&b.url()), "{body}");
}

/// Documents without `ingested_at`, which differs from run to run.
fn comparable(docs: HashMap<String, Value>) -> HashMap<String, Value> {
    docs.into_iter()
        .map(|(id, mut d)| {
            if let Some(o) = d.as_object_mut() {
                o.remove("ingested_at");
            }
            (id, d)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_store_the_same_documents_as_plain_ones_in_fewer_bytes() {
    const N: usize = 3_000;
    let mut stored = Vec::new();
    let mut wire = Vec::new();
    let first = Pipeline::new("gzip", &broker().bootstrap, "", 2);
    broker().create_topic(&first.topic, first.partitions).await;
    broker().create_topic(&first.dlq, 1).await;
    produce(&first, 0..N).await;
    for compression in ["gzip", "none"] {
        let es = EsTarget::stub().await;
        let stub = es.stub.clone().unwrap();
        // The same topic, into the same index name, by a group of its own.
        let p = Pipeline {
            group: format!("{}-{compression}", first.group),
            es_url: es.url.clone(),
            ..first.clone()
        };
        let mut env = p.env();
        env.push(("CDC_ES_COMPRESSION".into(), compression.into()));
        let consumer = InProcessApp::spawn(&env).await;
        consumer.wait_healthy().await;
        assert_stored_once(&stub, &p, N, &consumer).await;
        let (gzip_requests, bytes) = stub.wire();
        let expected_gzip = if compression == "gzip" {
            stub.bulk_requests()
        } else {
            0
        };
        assert_eq!(gzip_requests, expected_gzip, "{compression}");
        stored.push(comparable(stub.docs(&p.index)));
        wire.push(bytes);
    }
    assert!(stored[0] == stored[1], "gzip stored other documents");
    assert!(
        wire[0] * 3 < wire[1],
        "gzip sent {} bytes, plain {}",
        wire[0],
        wire[1]
    );
}
