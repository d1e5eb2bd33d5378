//! Data-stream mode (issue 16, point 1): `setup` and `run` install the ILM
//! policy and the data-stream template once; events land with `create` in
//! the stream's write index; five SIGKILLs over 20,000 events lose and
//! duplicate nothing.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::canal::{expected_id, message};
use crate::harness::consumer::{kill_owner_repeatedly, Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::{EsStub, EsTarget};
use crate::harness::eventually;
use crate::harness::kafka::broker;

/// A fresh pipeline into `es` in data-stream mode, and its environment.
async fn pipeline(
    prefix: &str,
    es: &EsTarget,
    partitions: i32,
) -> (Pipeline, Vec<(String, String)>) {
    let p = Pipeline::new(prefix, &broker().bootstrap, &es.url, partitions);
    broker().create_topic(&p.topic, partitions).await;
    broker().create_topic(&p.dlq, 1).await;
    let mut env = p.env();
    env.push(("CDC_ES_MODE".into(), "data_stream".into()));
    env.push(("CDC_ES_RETENTION".into(), "7d".into()));
    (p, env)
}

/// `cdc-monitor <args>` with `env` only (no inherited CDC_*): exit code and stderr.
fn cdc_monitor(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CDC_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Ids stored in data stream `name`, counting each backing index's copy.
fn stored_ids(stub: &EsStub, name: &str) -> Vec<String> {
    stub.docs_in(name)
        .into_iter()
        .map(|(_, id, _)| id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_installs_the_policy_and_template_once_and_events_land_with_create_in_the_stream() {
    let es = EsTarget::stub().await;
    let stub = es.stub.clone().unwrap();
    let (p, env) = pipeline("esds", &es, 2).await;

    let (code, stderr) = cdc_monitor(&["setup"], &env);
    assert_eq!(code, Some(0), "setup: {stderr}");
    assert_eq!(stub.puts(), (1, 1), "one template and one policy");
    let template = stub.template(&p.index).expect("template installed");
    assert_eq!(template["data_stream"], serde_json::json!({}));
    let policy_name = format!("{}-lifecycle", p.index);
    assert_eq!(
        template["template"]["settings"]["index"]["lifecycle"]["name"],
        policy_name.as_str()
    );
    let policy = stub.policy(&policy_name).expect("policy installed");
    assert_eq!(policy["policy"]["phases"]["delete"]["min_age"], "604800s");
    // Again: present, so left alone.
    assert_eq!(cdc_monitor(&["setup"], &env).0, Some(0));
    assert_eq!(stub.puts(), (1, 1));

    let mut consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    broker()
        .produce(&p.topic, p.partitions, (0..100).map(message))
        .await;
    let landed = eventually(Duration::from_secs(60), || async {
        stored_ids(&stub, &p.index).len() >= 100
    })
    .await;
    assert!(landed, "log:\n{}", consumer.log_tail());
    let first = stub.backing_indices(&p.index);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with(&format!(".ds-{}-", p.index)) && first[0].ends_with("-000001"));
    // Written with `create` (the stub refuses anything else in a stream),
    // searchable through the stream's name.
    assert_eq!(es.count(&p.index).await, 100);
    let resp = reqwest::get(format!("http://{}/api/events?limit=5", consumer.http()))
        .await
        .unwrap();
    let api: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(api["events"].as_array().map(Vec::len), Some(5), "{api}");

    // A restart installs nothing new; after a rollover, new events go to the new write index.
    consumer.kill();
    let new_write = stub.rollover(&p.index).unwrap();
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    assert_eq!(stub.puts(), (1, 1));
    broker()
        .produce(&p.topic, p.partitions, (100..200).map(message))
        .await;
    let landed = eventually(Duration::from_secs(60), || async {
        stored_ids(&stub, &p.index).len() >= 200
    })
    .await;
    assert!(landed, "log:\n{}", consumer.log_tail());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The kill left offsets uncommitted: those events came again, after the
    // rollover, and were found in the old backing index instead of stored twice.
    assert_eq!(
        stored_ids(&stub, &p.index).len(),
        200,
        "stored twice across the rollover"
    );
    let in_new: HashSet<String> = stub
        .docs_in(&p.index)
        .into_iter()
        .filter(|(index, _, _)| *index == new_write)
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(in_new, (100..200).map(expected_id).collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_stream_mode_over_an_index_mode_template_fails_naming_the_mode() {
    let es = EsTarget::stub().await;
    let (p, env) = pipeline("esdsswitch", &es, 1).await;
    let index_mode: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "CDC_ES_MODE")
        .cloned()
        .collect();
    assert_eq!(cdc_monitor(&["setup"], &index_mode).0, Some(0));
    let (code, stderr) = cdc_monitor(&["setup"], &env);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("CDC_ES_MODE") && stderr.contains(&p.index),
        "{stderr}"
    );
}

#[test]
fn a_date_placeholder_with_data_stream_mode_is_refused_naming_both_keys() {
    let env: Vec<(String, String)> = [
        ("CDC_ES_URL", "http://127.0.0.1:9"),
        ("CDC_ES_INDEX", "cdc-{yyyy.MM.dd}"),
        ("CDC_ES_MODE", "data_stream"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let (code, stderr) = cdc_monitor(&["setup"], &env);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("CDC_ES_INDEX") && stderr.contains("CDC_ES_MODE"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_in_data_stream_mode_loses_and_duplicates_nothing() {
    const N: usize = 20_000;
    let es = EsTarget::start().await;
    let (p, mut env) = pipeline("esdskill", &es, 3).await;
    // As in faults.rs: a killed member's rebalance timeout within the test's bounds.
    env.push((
        "CDC_KAFKA_PROPERTIES".into(),
        "max.poll.interval.ms=20000".into(),
    ));
    let producer = {
        let p = p.clone();
        tokio::spawn(async move {
            for start in (0..N).step_by(1_000) {
                broker()
                    .produce(&p.topic, p.partitions, (start..start + 1_000).map(message))
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let consumer = ConsumerProcess::spawn(&env);
    let consumer = kill_owner_repeatedly(consumer, &env, p.partitions as usize, 5).await;
    producer.await.unwrap();
    let done = eventually(Duration::from_secs(180), || async {
        es.count(&p.index).await >= N as u64
    })
    .await;
    assert!(
        done,
        "{} of {N}; log:\n{}",
        es.count(&p.index).await,
        consumer.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(es.count(&p.index).await, N as u64, "duplicates");
    if let Some(stub) = &es.stub {
        let ids = stored_ids(stub, &p.index);
        assert_eq!(ids.len(), N);
        let got: HashSet<String> = ids.into_iter().collect();
        assert_eq!(got, (0..N).map(expected_id).collect::<HashSet<_>>());
        assert_eq!(stub.backing_indices(&p.index).len(), 1);
        assert_eq!(stub.puts(), (1, 1), "a restart installed again");
    }
    let caught_up = p.all_committed(N, Duration::from_secs(30)).await;
    assert!(caught_up, "not every offset committed");
}
