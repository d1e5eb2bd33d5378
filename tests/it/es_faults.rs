//! The Elasticsearch sink under faults that once skipped writes: a bulk
//! refused for one poisoned document, a read-only index, bodies over the
//! size limit. Each runs the pipeline on Tansu and checks the documents,
//! the dead-letter topic and the committed offsets: in process, except the
//! one that checks how the binary stops.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cdc_monitor::canal::{decode, Decoded};
use cdc_monitor::event::SourcePosition;
use serde_json::{json, Value};

use crate::harness::app::InProcessApp;
use crate::harness::canal::BASE_TS;
use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::{EsTarget, Faults};
use crate::harness::eventually;
use crate::harness::kafka::broker;

/// Events per scenario.
const N: usize = 10_000;
/// Rows per message: few messages keep producing to Tansu quick.
const ROWS: usize = 9;

/// A canal-json INSERT of rows `first..first + rows`, each with `pad` bytes of text.
fn insert(first: usize, rows: usize, pad: usize) -> Vec<u8> {
    let ts = BASE_TS + first as u64 * 7;
    let data: Vec<Value> = (first..first + rows)
        .map(|i| json!({"id": i.to_string(), "name": format!("n{i}"), "note": "x".repeat(pad)}))
        .collect();
    serde_json::to_vec(&json!({"id":0,"database":"appdb","table":"items","pkNames":["id"],"isDdl":false,"type":"INSERT",
        "es":ts>>18,"ts":ts>>18,"sql":"","sqlType":{"id":-5,"name":12,"note":12},
        "mysqlType":{"id":"bigint","name":"varchar","note":"text"},"old":null,"data":data,"_tidb":{"commitTs":ts}}))
    .unwrap()
}

/// The document ids of a message's events.
fn ids(payload: &[u8]) -> Vec<String> {
    match decode(payload, &SourcePosition::None).unwrap() {
        Decoded::Events(events) => events.iter().map(|e| e.document_id().to_string()).collect(),
        Decoded::Watermark { .. } => unreachable!(),
    }
}

/// `N` events: messages of `ROWS` rows, and in the middle one message of a
/// single row (its position is returned), which can be poisoned alone.
fn stream(pad: usize) -> (Vec<Vec<u8>>, usize) {
    let mut messages: Vec<Vec<u8>> = (0..(N - 1) / ROWS)
        .map(|m| insert(m * ROWS, ROWS, pad))
        .collect();
    let single = messages.len() / 2;
    messages.insert(single, insert(N - 1, 1, pad));
    (messages, single)
}

/// A fresh pipeline into `es` on two partitions, with `messages` produced.
async fn produced(prefix: &str, es: &EsTarget, messages: &[Vec<u8>]) -> Pipeline {
    let p = Pipeline::new(prefix, &broker().bootstrap, &es.url, 2);
    broker().create_topic(&p.topic, p.partitions).await;
    broker().create_topic(&p.dlq, 1).await;
    broker()
        .produce(&p.topic, p.partitions, messages.iter().cloned())
        .await;
    p
}

/// One scenario's consumer (in process), and what it should get through.
struct Run {
    p: Pipeline,
    consumer: InProcessApp,
    messages: usize,
}

impl Run {
    async fn spawn(p: Pipeline, extra_env: &[(&str, &str)], messages: usize) -> Run {
        let mut env = p.env();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let consumer = InProcessApp::spawn(&env).await;
        Run {
            p,
            consumer,
            messages,
        }
    }

    /// Waits until `n` documents are stored, then checks no more arrive.
    async fn expect_documents(&self, es: &EsTarget, n: usize) {
        let index = &self.p.index;
        let stored = eventually(Duration::from_secs(120), || async {
            es.count(index).await >= n as u64
        })
        .await;
        assert!(
            stored,
            "{} of {n} documents; log:\n{}",
            es.count(index).await,
            self.consumer.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(es.count(index).await, n as u64, "extra documents");
    }

    /// Checks every message is committed and the consumer still runs.
    async fn expect_all_committed_and_running(&mut self) {
        let (group, topic, partitions) = (&self.p.group, &self.p.topic, self.p.partitions);
        let committed = eventually(Duration::from_secs(30), || async {
            broker()
                .committed(group, topic, partitions)
                .iter()
                .sum::<i64>()
                == self.messages as i64
        })
        .await;
        assert!(
            committed,
            "committed {:?} of {} messages",
            broker().committed(group, topic, partitions),
            self.messages
        );
        assert!(
            self.consumer.is_running(),
            "the consumer stopped; log:\n{}",
            self.consumer.log_tail()
        );
    }

    async fn dead_lettered(&self) -> f64 {
        self.consumer
            .metric("cdc_dead_letter_messages_total", &[])
            .await
    }
}

/// The stub with `faults`; `None` (with a message) when `CDC_TEST_ES_URL`
/// names a real cluster, which cannot be made to inject the fault `what`.
async fn stub_with(what: &str, faults: Faults) -> Option<EsTarget> {
    if std::env::var("CDC_TEST_ES_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped: a real Elasticsearch (CDC_TEST_ES_URL) cannot be made to {what}; run without it to use the stub");
        return None;
    }
    let es = EsTarget::stub().await;
    es.stub.as_ref()?.set_faults(faults);
    Some(es)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_refused_for_one_poisoned_document_dead_letters_that_document_only() {
    let (messages, single) = stream(0);
    let poisoned = ids(&messages[single]).remove(0);
    let faults = Faults {
        poisoned_ids: HashSet::from([poisoned.clone()]),
        ..Faults::default()
    };
    let Some(es) = stub_with("refuse every bulk request holding one document", faults).await else {
        return;
    };
    let stub = es.stub.clone().unwrap();
    let p = produced("poisoned", &es, &messages).await;
    let mut run = Run::spawn(p, &[], messages.len()).await;
    run.expect_documents(&es, N - 1).await;
    let expected: HashSet<String> = messages.iter().flat_map(|m| ids(m)).collect();
    let stored: HashSet<String> = stub.docs(&run.p.index).into_keys().collect();
    assert_eq!(stored.len(), N - 1);
    assert_eq!(
        expected.difference(&stored).collect::<Vec<_>>(),
        [&poisoned]
    );
    assert!(stub.refused_requests() > 0, "the fault never fired");

    let dead = broker().read_all(&run.p.dlq, 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "{}", run.consumer.log_tail());
    let (payload, headers) = &dead[0];
    assert_eq!(
        payload, &messages[single],
        "the poisoned message, unchanged"
    );
    let headers: HashMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(headers.get("cdc.error.reason"), Some(&"rejected_by_sink"));
    assert_eq!(
        headers.get("cdc.error.message"),
        Some(&"400 mapper_parsing_exception: poisoned")
    );
    // The metric counts every letter: this one is the only one.
    assert_eq!(run.dead_lettered().await, 1.0);
    run.expect_all_committed_and_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_index_for_ten_seconds_is_waited_out_and_nothing_is_dead_lettered() {
    const BLOCKED: Duration = Duration::from_secs(10);
    let es = EsTarget::start().await;
    let (messages, _) = stream(0);
    let p = produced("readonly", &es, &messages).await;
    es.block_writes(&p.index, BLOCKED).await;
    let blocked_at = Instant::now();
    let mut run = Run::spawn(p, &[], messages.len()).await;

    // /readyz says why while the block lasts.
    let readyz = format!("http://{}/readyz", run.consumer.http());
    let mut seen = None;
    while seen.is_none() && blocked_at.elapsed() < BLOCKED {
        if let Ok(r) = reqwest::get(&readyz).await {
            if r.status() == 503 {
                let body = r.text().await.unwrap_or_default();
                if body.contains("cluster_block") {
                    seen = Some(body);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = seen.unwrap_or_else(|| {
        panic!(
            "/readyz never answered 503 for the block; log:\n{}",
            run.consumer.log_tail()
        )
    });
    assert!(body.contains("elasticsearch"), "{body}");
    if blocked_at.elapsed() < BLOCKED - Duration::from_secs(1) {
        assert_eq!(es.count(&run.p.index).await, 0, "stored through a block");
    }

    run.expect_documents(&es, N).await;
    if let Some(stub) = &es.stub {
        let expected: HashSet<String> = messages.iter().flat_map(|m| ids(m)).collect();
        let stored: HashSet<String> = stub.docs(&run.p.index).into_keys().collect();
        assert_eq!(stored, expected);
    }
    assert_eq!(run.dead_lettered().await, 0.0);
    assert!(
        run.consumer
            .metric("cdc_sink_retries_total", &["reason=\"cluster_block\""])
            .await
            > 0.0
    );
    let ready = eventually(Duration::from_secs(20), || async {
        reqwest::get(&readyz)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "/readyz stayed 503 after the block was lifted");
    run.expect_all_committed_and_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_bodies_over_the_size_limit_are_split_and_all_stored() {
    let faults = Faults {
        max_body_bytes: Some(1 << 20),
        ..Faults::default()
    };
    let Some(es) = stub_with("answer 413 to bodies over 1 MiB", faults).await else {
        return;
    };
    let stub = es.stub.clone().unwrap();
    let (messages, _) = stream(100);
    // Batches far above the limit: up to 10,000 events, several MiB of bulk body.
    let env = [
        ("CDC_BATCH_MAX_BYTES", "4MiB"),
        ("CDC_BATCH_MAX_EVENTS", "10000"),
        ("CDC_BATCH_LINGER", "500ms"),
    ];
    let p = produced("toolarge", &es, &messages).await;
    let mut run = Run::spawn(p, &env, messages.len()).await;
    run.expect_documents(&es, N).await;
    let expected: HashSet<String> = messages.iter().flat_map(|m| ids(m)).collect();
    let stored: HashSet<String> = stub.docs(&run.p.index).into_keys().collect();
    assert_eq!(stored, expected);
    assert!(stub.refused_requests() > 0, "no bulk body exceeded 1 MiB");
    assert_eq!(run.dead_lettered().await, 0.0);
    run.expect_all_committed_and_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_whose_every_document_is_refused_stops_the_process_instead_of_dead_lettering() {
    // One message of 20 rows: one batch, so splitting tries each document.
    let message = insert(0, 20, 0);
    let faults = Faults {
        poisoned_ids: ids(&message).into_iter().collect(),
        ..Faults::default()
    };
    let Some(es) = stub_with("refuse every document", faults).await else {
        return;
    };
    let p = produced("refuseall", &es, std::slice::from_ref(&message)).await;
    // The binary: how it exits is the point.
    let mut consumer = ConsumerProcess::spawn(&p.env());
    // Stop the line: the process exits, naming the cause, and commits nothing.
    let status = consumer.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{}", consumer.log_tail());
    let text = std::fs::read_to_string(&consumer.log).unwrap();
    assert!(
        text.contains("Elasticsearch refused every document of the bulk (20 documents")
            && text.contains("400 mapper_parsing_exception: poisoned")
            && text.contains("fix the index mapping or template"),
        "{}",
        consumer.log_tail()
    );
    let letters = broker().read_all(&p.dlq, 1, Duration::from_secs(3));
    assert!(letters.is_empty(), "dead-lettered: {letters:?}");
    assert_eq!(es.count(&p.index).await, 0);
    let committed = broker().committed(&p.group, &p.topic, p.partitions);
    assert!(
        committed.iter().all(|o| *o <= 0),
        "committed {committed:?} past a batch that was not stored"
    );
}
