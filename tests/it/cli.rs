//! The binary's contract for bad configuration, help, readiness and logs.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::es::EsTarget;
use crate::harness::eventually;
use crate::harness::kafka::broker;
use crate::harness::ports::ClosedPort;

fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CDC_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

fn assert_config_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in: {stderr}");
    }
}

#[test]
fn malformed_url_in_env_exits_2_naming_key_and_value() {
    let out = run_with(&["run"], &[("CDC_ES_URL", "htp//nowhere")]);
    assert_config_error(&out, &["CDC_ES_URL", "htp//nowhere"]);
}

#[test]
fn bad_number_in_flag_exits_2_naming_flag_and_value() {
    let out = run_with(&["run", "--batch-max-events", "lots"], &[]);
    assert_config_error(&out, &["--batch-max-events", "lots"]);
}

#[test]
fn unknown_key_in_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cdc.toml");
    std::fs::write(&path, "[kafka]\nbrokers = \"k:9092\"\ntopicz = \"x\"\n").unwrap();
    let out = run_with(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_config_error(&out, &["kafka.topicz"]);
}

#[test]
fn unknown_cdc_variable_exits_2_naming_it() {
    let out = run_with(&["run"], &[("CDC_KAFKA_BROKER", "typo:9092")]);
    assert_config_error(&out, &["CDC_KAFKA_BROKER"]);
}

#[test]
fn bad_value_in_file_names_the_file_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cdc.toml");
    std::fs::write(&path, "[http]\naddr = \"localhost\"\n").unwrap();
    let out = run_with(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_config_error(&out, &["http.addr", "localhost"]);
}

#[test]
fn help_documents_every_option_with_its_variable() {
    let out = run_with(&["run", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for key in cdc_monitor::config::KEYS {
        assert!(help.contains(key.env), "{} missing from --help", key.env);
        assert!(
            help.contains(&format!("--{}", key.id.replace('_', "-"))),
            "{} flag missing",
            key.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_elasticsearch_down_as_503_and_json_logs_on_request() {
    let b = broker();
    let es = EsTarget::stub().await;
    // A closed port stands in for Elasticsearch being down; nothing can
    // listen there for as long as `closed` lives.
    let closed = ClosedPort::new();
    let dead_es = closed.url();
    let p = Pipeline::new("ready", &b.bootstrap, &dead_es, 1);
    b.create_topic(&p.topic, 1).await;
    let mut env = p.env();
    env.push(("CDC_LOG_FORMAT".into(), "json".into()));
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    let resp = reqwest::get(format!("http://{}/readyz", consumer.http()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(body["failing"]["elasticsearch"].is_string(), "{body}");
    assert!(body["failing"].get("kafka").is_none(), "{body}");
    let log = std::fs::read_to_string(&consumer.log).unwrap();
    let first = log.lines().next().unwrap_or("");
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not JSON: {first}"
    );
    drop(consumer);

    let mut env = p.env();
    env.retain(|(k, _)| k != "CDC_ES_URL");
    env.push(("CDC_ES_URL".into(), es.url.clone()));
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    let ready = eventually(Duration::from_secs(20), || async {
        reqwest::get(format!("http://{}/readyz", consumer.http()))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    })
    .await;
    assert!(ready, "{}", consumer.log_tail());
    // The index template was installed at start-up.
    assert_eq!(es.stub.as_ref().unwrap().templates(), vec![p.index.clone()]);
}
