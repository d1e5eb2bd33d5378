//! `cdc-monitor doctor` names each seeded fault as the first broken hop,
//! with its fix, and reports a working pipeline healthy (the real binary).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::harness::consumer::{Consumer, ConsumerProcess, Pipeline};
use crate::harness::kafka::broker;
use crate::harness::mariadb::MariaDb;
use crate::harness::ports::ClosedPort;
use crate::harness::ticdc::{Changefeed, TicdcOptions, TicdcStub};

/// What one doctor run printed with `--json`, and its exit code.
struct Diagnosis {
    code: Option<i32>,
    report: Value,
    stdout: String,
}

impl Diagnosis {
    /// The hops reported, as `(hop, ok)`.
    fn hops(&self) -> Vec<(String, bool)> {
        self.report["hops"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|h| (h["hop"].as_str().unwrap().to_owned(), h["ok"] == true))
            .collect()
    }

    /// The last hop, which must be the broken one named `hop`; its detail and fix.
    fn broken(&self, hop: &str) -> (String, String) {
        assert_eq!(self.code, Some(1), "{}", self.stdout);
        assert_eq!(self.report["healthy"], false, "{}", self.stdout);
        let hops = self.hops();
        let (last, ok) = hops.last().expect("at least one hop");
        assert_eq!((last.as_str(), *ok), (hop, false), "{}", self.stdout);
        assert!(
            hops[..hops.len() - 1].iter().all(|(_, ok)| *ok),
            "only the last hop is broken: {}",
            self.stdout
        );
        let last = self.report["hops"].as_array().unwrap().last().unwrap();
        (
            last["detail"].as_str().unwrap().to_owned(),
            last["fix"].as_str().unwrap().to_owned(),
        )
    }
}

/// Runs `cdc-monitor doctor --json` with `env` (and no other CDC_* variable) and `args`.
fn doctor(env: &[(String, String)], args: &[&str]) -> Diagnosis {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CDC_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["doctor", "--json", "--timeout", "5s"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Diagnosis {
        code: out.status.code(),
        report,
        stdout,
    }
}

/// A Kafka pipeline into the embedded store in `data_dir`, its topic created.
async fn store_pipeline(prefix: &str, data_dir: &Path) -> (Pipeline, Vec<(String, String)>) {
    let b = broker();
    let p = Pipeline::new(prefix, &b.bootstrap, "", 2);
    b.create_topic(&p.topic, 2).await;
    let env = p.store_env(data_dir);
    (p, env)
}

fn with(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_pipeline_with_a_running_instance_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (p, env) = store_pipeline("doc-ok", dir.path()).await;
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    let url = format!("http://{}", consumer.http());

    let d = doctor(&env, &["--url", &url]);

    assert_eq!(d.code, Some(0), "{}", d.stdout);
    assert_eq!(d.report["healthy"], true);
    let names: Vec<String> = d.hops().into_iter().map(|(h, _)| h).collect();
    assert_eq!(
        names,
        ["config", "source", "sink", "instance"],
        "{}",
        d.stdout
    );
    let details = d.stdout;
    assert!(
        details.contains(&format!("topic {}, 2 partitions", p.topic)),
        "{details}"
    );
    assert!(details.contains("events.db"), "{details}");
    assert!(details.contains("ready, lag"), "{details}");

    // The human form: one line per hop, `ok` first.
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"))
        .arg("doctor")
        .args(["--url", &url])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .starts_with("ok   source   kafka "),
        "{text}"
    );
}

#[test]
fn a_configuration_that_does_not_load_is_the_broken_config_hop_and_exit_2() {
    let env = vec![("CDC_ES_URL".to_owned(), "htp//nowhere".to_owned())];

    let d = doctor(&env, &[]);

    assert_eq!(d.code, Some(2), "{}", d.stdout);
    assert_eq!(d.hops(), [("config".to_owned(), false)], "{}", d.stdout);
    let detail = d.report["hops"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("CDC_ES_URL") && detail.contains("htp//nowhere"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_disk_for_its_max_bytes_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = store_pipeline("doc-disk", dir.path()).await;
    // More than any test machine's disk: 1,000,000 GB.
    let env = with(env, "CDC_STORE_MAX_BYTES", "1000000GB");

    let (detail, fix) = doctor(&env, &[]).broken("sink");

    assert!(
        detail.contains("free, but the store may grow by"),
        "{detail}"
    );
    assert!(fix.contains("CDC_STORE_MAX_BYTES below"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_broker_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let closed = ClosedPort::new();
    let wrong = format!("127.0.0.1:{}", closed.port);
    let (_, env) = store_pipeline("doc-broker", dir.path()).await;
    let env = with(env, "CDC_KAFKA_BROKERS", &wrong);

    let (detail, fix) = doctor(&env, &[]).broken("source");

    assert!(
        detail.contains(&format!("no Kafka broker answers at {wrong}")),
        "{detail}"
    );
    assert!(fix.contains("CDC_KAFKA_BROKERS"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_with_the_command_that_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker();
    let p = Pipeline::new("doc-topic", &b.bootstrap, "", 1);

    let (detail, fix) = doctor(&p.store_env(dir.path()), &[]).broken("source");

    assert!(
        detail.contains(&format!("topic {} does not exist", p.topic)),
        "{detail}"
    );
    assert!(
        fix.contains(&format!(
            "kafka-topics.sh --bootstrap-server {} --create --topic {}",
            b.bootstrap, p.topic
        )),
        "{fix}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_elasticsearch_url_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let closed = ClosedPort::new();
    let (p, env) = store_pipeline("doc-es", dir.path()).await;
    let env = with(env, "CDC_SINK", "elasticsearch");
    let env = with(env, "CDC_ES_URL", &closed.url());
    let env = with(env, "CDC_ES_INDEX", &p.index);

    let (detail, fix) = doctor(&env, &[]).broken("sink");

    assert!(
        detail.contains(&format!("no Elasticsearch answers at {}", closed.url())),
        "{detail}"
    );
    assert!(fix.contains("CDC_ES_URL"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elasticsearch_write_block_is_named_with_the_put_that_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let (p, env) = store_pipeline("doc-block", dir.path()).await;
    let es = SettingsStub::start().await;
    let env = with(env, "CDC_SINK", "elasticsearch");
    let env = with(env, "CDC_ES_URL", &es.url);
    let env = with(env, "CDC_ES_INDEX", &p.index);

    let before = doctor(&env, &[]);
    assert_eq!(before.code, Some(0), "unblocked first: {}", before.stdout);

    es.block_writes.store(true, Ordering::SeqCst);
    let (detail, fix) = doctor(&env, &[]).broken("sink");

    assert!(
        detail.contains(&format!(
            "index {} refuses writes: index.blocks.write",
            p.index
        )),
        "{detail}"
    );
    assert!(
        fix.contains(&format!("curl -X PUT '{}/{}/_settings'", es.url, p.index))
            && fix.contains(r#""index.blocks.write": null"#),
        "{fix}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_binary_logging_is_named() {
    let db = MariaDb::start_with_args(vec!["--skip-log-bin".into()]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = db.capture_env("appdb.*", dir.path());

    let (detail, fix) = doctor(&env, &[]).broken("source");

    assert!(detail.contains("binary logging is off"), "{detail}");
    assert!(fix.contains("--log-bin"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_replication_is_named_with_the_grant() {
    let db = MariaDb::start().await;
    let url = db.user_without_replication().await;
    let dir = tempfile::tempdir().unwrap();
    let capture = db.capture_env("appdb.*", dir.path());
    let healthy = doctor(&capture, &[]);
    assert_eq!(
        healthy.code,
        Some(0),
        "the capture user first: {}",
        healthy.stdout
    );
    let env = with(capture, "CDC_MYSQL_URL", &url);

    let (detail, fix) = doctor(&env, &[]).broken("source");

    assert!(detail.contains("lacks REPLICATION SLAVE"), "{detail}");
    assert!(
        fix.contains("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO"),
        "{fix}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_changefeed_is_named_with_the_resume_command() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = store_pipeline("doc-cf", dir.path()).await;
    let ticdc = TicdcStub::start(TicdcOptions {
        changefeeds: vec![
            Changefeed::normal("cf-ok"),
            Changefeed::failed("cf-bad", "CDC:ErrKafkaNewProducer", "kafka unreachable"),
        ],
        ..TicdcOptions::default()
    })
    .await;
    let env = with(env, "CDC_TICDC_URL", ticdc.url.as_str());

    let ok = doctor(&with(env.clone(), "CDC_CHANGEFEED_ID", "cf-ok"), &[]);
    assert_eq!(ok.code, Some(0), "{}", ok.stdout);
    assert!(
        ok.stdout.contains("changefeed cf-ok normal"),
        "{}",
        ok.stdout
    );

    let env = with(env, "CDC_CHANGEFEED_ID", "cf-bad");
    let (detail, fix) = doctor(&env, &[]).broken("ticdc");
    assert!(
        detail.contains("changefeed cf-bad is failed") && detail.contains("kafka unreachable"),
        "{detail}"
    );
    assert!(fix.contains("changefeed resume"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = store_pipeline("doc-stopped", dir.path()).await;
    let closed = ClosedPort::new();

    let (detail, fix) = doctor(&env, &["--url", &closed.url()]).broken("instance");

    assert!(
        detail.contains(&format!("nothing answers at {}/", closed.url()))
            && detail.contains("is `cdc-monitor run` running?"),
        "{detail}"
    );
    assert!(fix.contains("cdc-monitor run"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_row_is_timed_to_the_running_instance() {
    let db = MariaDb::start().await;
    let writer = db.user_with("ALL PRIVILEGES ON *.*").await;
    let dir = tempfile::tempdir().unwrap();
    let env = db.capture_env("appdb.*,doctor_canary.*", dir.path());
    let env = with(env, "CDC_MYSQL_URL", &writer);
    let consumer = ConsumerProcess::spawn(&env);
    consumer.wait_healthy().await;
    let url = format!("http://{}", consumer.http());
    let canary = ["--url", &url, "--canary", "--canary-timeout", "30s"];

    let env = with(env, "CDC_DOCTOR_CANARY_TABLE", "doctor_canary.heartbeat");
    let d = doctor(&env, &canary);
    assert_eq!(d.code, Some(0), "{}", d.stdout);
    let last = &d.report["hops"].as_array().unwrap().last().unwrap()["detail"];
    assert!(
        last.as_str()
            .unwrap()
            .contains("row written into doctor_canary.heartbeat arrived at"),
        "{}",
        d.stdout
    );

    // A table outside CDC_TABLES could never arrive: named before writing.
    let env = with(env, "CDC_DOCTOR_CANARY_TABLE", "elsewhere.heartbeat");
    let (detail, fix) = doctor(&env, &canary).broken("canary");
    assert!(
        detail.contains("elsewhere.heartbeat is not captured"),
        "{detail}"
    );
    assert!(fix.contains("CDC_TABLES"), "{fix}");
}

/// Elasticsearch as far as doctor reads it: `_cluster/health` and
/// `GET {index}/_settings` (flat, as `flat_settings=true` asks), with a
/// write block switched on by the test. Shapes from Elasticsearch's
/// cluster health and get index settings API references.
struct SettingsStub {
    url: String,
    block_writes: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl SettingsStub {
    async fn start() -> SettingsStub {
        let block_writes = Arc::new(AtomicBool::new(false));
        let app = Router::new()
            .route("/_cluster/health", get(cluster_health))
            .route("/{index}/_settings", get(index_settings))
            .with_state(block_writes.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        SettingsStub {
            url,
            block_writes,
            server,
        }
    }
}

impl Drop for SettingsStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn cluster_health() -> Json<Value> {
    Json(json!({
        "cluster_name": "stub", "status": "green", "timed_out": false,
        "number_of_nodes": 1, "number_of_data_nodes": 1,
        "active_primary_shards": 1, "active_shards": 1, "relocating_shards": 0,
        "initializing_shards": 0, "unassigned_shards": 0,
        "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0,
        "number_of_in_flight_fetch": 0, "task_max_waiting_in_queue_millis": 0,
        "active_shards_percent_as_number": 100.0
    }))
}

async fn index_settings(
    State(block_writes): State<Arc<AtomicBool>>,
    UrlPath(index): UrlPath<String>,
) -> Json<Value> {
    let blocked = block_writes.load(Ordering::SeqCst).to_string();
    Json(json!({
        index: {"settings": {
            "index.blocks.write": blocked,
            "index.number_of_replicas": "1",
            "index.number_of_shards": "1",
        }}
    }))
}
