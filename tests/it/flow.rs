//! Scenario (a): events in, exactly as many documents out, with the right
//! fields, matching metrics and committed offsets; Prometheus reads them back.
//! The pipeline runs in process.

use std::time::Duration;

use crate::harness::app::InProcessApp;
use crate::harness::canal::{expected_id, message, op_counts, watermark, BASE_TS};
use crate::harness::consumer::{Consumer, Pipeline};
use crate::harness::es::EsTarget;
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::prometheus::Prometheus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_make_exactly_ten_thousand_documents() {
    const N: usize = 10_000;
    let broker = broker();
    let es = EsTarget::start().await;
    let p = Pipeline::new("flow", &broker.bootstrap, &es.url, 3);
    broker.create_topic(&p.topic, p.partitions).await;
    broker.create_topic(&p.dlq, 1).await;
    let mut payloads: Vec<Vec<u8>> = (0..N).map(message).collect();
    // Watermarks interleaved: not events, but they must not block commits.
    payloads.extend((0..3).map(|i| watermark(BASE_TS + 1_000_000 + i)));
    broker.produce(&p.topic, p.partitions, payloads).await;

    let consumer = InProcessApp::spawn(&p.env()).await;
    consumer.wait_healthy().await;
    let prometheus = Prometheus::start(&consumer.http().to_string());

    let done = eventually(Duration::from_secs(120), || async {
        es.count(&p.index).await >= N as u64
    })
    .await;
    assert!(
        done,
        "only {} of {N} documents; log:\n{}",
        es.count(&p.index).await,
        consumer.log_tail()
    );
    // Give a duplicate a chance to show up before counting exactly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(es.count(&p.index).await, N as u64);

    // Spot-check documents by their deterministic ids.
    for i in [0usize, 1, 6, 8, 999, 4242, N - 1] {
        let doc = es
            .doc(&p.index, &expected_id(i))
            .await
            .unwrap_or_else(|| panic!("doc {i} missing"));
        assert_eq!(doc["database"], "appdb");
        assert_eq!(doc["table"], if i % 2 == 0 { "users" } else { "orders" });
        assert_eq!(
            doc["commit_ts"].as_u64(),
            Some(BASE_TS + i as u64 * 7),
            "commit_ts must stay exact"
        );
        assert_eq!(doc["kafka"]["topic"], p.topic.as_str());
        assert!(doc["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(doc["ingested_at"].is_string());
        if doc["op"] != "ddl" {
            assert_eq!(doc["pk"]["id"], i.to_string());
            assert_eq!(doc["data"]["amount"], "12345678901234567890.12");
            assert!(doc["data"]["note"].is_null());
        }
        if doc["op"] == "update" {
            assert_eq!(doc["old"]["name"], format!("o{i}"));
        }
    }

    // Metrics match what was stored.
    for (op, n) in op_counts(N) {
        let label = format!("op=\"{op}\"");
        let got = consumer.metric("cdc_events_total", &[&label]).await;
        assert_eq!(got as usize, n, "cdc_events_total{{{label}}}");
    }
    assert_eq!(consumer.metric("cdc_watermarks_total", &[]).await, 3.0);
    assert_eq!(consumer.metric("cdc_decode_errors_total", &[]).await, 0.0);
    let lag_zero = eventually(Duration::from_secs(30), || async {
        let m = consumer.metrics().await;
        m.contains("cdc_consumer_lag_records")
            && crate::harness::consumer::sum_metric(&m, "cdc_consumer_lag_records", &[]) == 0.0
    })
    .await;
    assert!(
        lag_zero,
        "lag did not return to 0:\n{}",
        consumer.metrics().await
    );
    assert_eq!(consumer.metric("cdc_events_in_flight", &[]).await, 0.0);

    // Every offset, watermarks included, is committed.
    let committed: i64 = broker
        .committed(&p.group, &p.topic, p.partitions)
        .iter()
        .sum();
    assert_eq!(committed, (N + 3) as i64);

    // A real Prometheus scraped the same counter.
    if let Some(prom) = prometheus {
        let seen = eventually(Duration::from_secs(30), || async {
            prom.query_sum("sum(cdc_events_total)").await == Some(N as f64)
        })
        .await;
        assert!(
            seen,
            "prometheus saw {:?}",
            prom.query_sum("sum(cdc_events_total)").await
        );
    } else if std::env::var_os("CI").is_some() {
        panic!("prometheus is not installed; .ci/run installs it");
    }
}
