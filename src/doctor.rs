//! `cdc-monitor doctor`: checks each hop of the pipeline `run` would build,
//! in pipeline order (configuration, source, TiCDC, sink, a running
//! instance), and stops at the first broken one with what is wrong and the
//! command or setting that fixes it.
//!
//! Every check only reads: metadata, settings, grants, health. Nothing is
//! created, joined or written, so doctor can run beside a live instance.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use url::Url;

use crate::clock::now_millis;
use crate::config::{
    Config, ConfigError, EsConfig, KafkaConfig, MysqlConfig, MysqlTls, SinkConfig, SourceConfig,
    StoreConfig,
};
use crate::kafka_client::{client_config, LogContext};
use crate::sink::elasticsearch::client::{template_name, EsClient};
use crate::sink::SinkError;
use crate::source::binlog::preflight;
use crate::source::binlog::tls::{self, with_tls};
use crate::ticdc::{self, ChangefeedArgs};
use crate::tls::error_chain;

/// One hop's verdict: what was found and, when broken, what fixes it.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub hop: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// The hops checked, in pipeline order, up to and including the first broken one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub healthy: bool,
    pub hops: Vec<Hop>,
}

/// What doctor checks besides the configuration `run` takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// A running instance's base URL (`/readyz`, `/metrics`).
    pub url: Option<Url>,
    /// The changefeed to check, when `CDC_TICDC_URL` is set.
    pub ticdc: Option<ChangefeedArgs>,
    /// Longest wait for any one server.
    pub timeout: Duration,
    /// `--canary`: a row to write and wait for at `url`.
    pub canary: Option<Canary>,
}

/// `--canary`: a row written into a table at the source, timed until the
/// running instance serves it from `/api/events`.
#[derive(Debug, Clone)]
pub struct Canary {
    /// `CDC_DOCTOR_CANARY_TABLE`'s database and table, created when absent.
    pub database: String,
    pub table: String,
    /// Whom to write as: needs CREATE, INSERT and UPDATE there.
    pub mysql_url: SecretString,
    pub tls: MysqlTls,
    /// Longest wait for the row to arrive.
    pub timeout: Duration,
}

/// Why a hop is broken.
#[derive(Debug)]
struct Broken {
    detail: String,
    fix: String,
}

fn broken(detail: impl Into<String>, fix: impl Into<String>) -> Broken {
    Broken {
        detail: detail.into(),
        fix: fix.into(),
    }
}

impl Report {
    /// A configuration that does not load: the first hop is broken, and
    /// nothing else can be checked (exit 2, as `run` exits on it).
    pub fn config_error(error: &ConfigError) -> Report {
        let mut report = Report::default();
        report.push(
            "config",
            Err(broken(
                error.to_string(),
                "correct the setting named above (`cdc-monitor run --help` lists every flag and CDC_* variable)",
            )),
        );
        report
    }

    /// Records a hop; false when it is broken (then nothing after it runs).
    fn push(&mut self, hop: &'static str, result: Result<String, Broken>) -> bool {
        let (ok, detail, fix) = match result {
            Ok(detail) => (true, detail, None),
            Err(b) => (false, b.detail, Some(b.fix)),
        };
        self.hops.push(Hop {
            hop,
            ok,
            detail,
            fix,
        });
        self.healthy = self.hops.iter().all(|h| h.ok);
        ok
    }

    /// 0 healthy, 1 a hop broken, 2 the configuration does not load.
    pub fn exit_code(&self) -> u8 {
        match self.hops.iter().find(|h| !h.ok) {
            None => 0,
            Some(h) if h.hop == "config" => 2,
            Some(_) => 1,
        }
    }

    /// One line per hop, `ok   source   ...` or `FAIL sink     ...` and its fix.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for h in &self.hops {
            let status = if h.ok { "ok" } else { "FAIL" };
            out.push_str(&format!("{status:<4} {:<8} {}\n", h.hop, h.detail));
            if let Some(fix) = &h.fix {
                out.push_str(&format!("     fix: {fix}\n"));
            }
        }
        out
    }

    /// `{"healthy": bool, "hops": [{"hop", "ok", "detail", "fix"}...]}`.
    pub fn json(&self) -> String {
        // A struct of strings and bools always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Checks each hop in pipeline order, stopping at the first broken one.
pub async fn diagnose(cfg: &Config, opts: &Options) -> Report {
    let mut report = Report::default();
    report.push("config", Ok(config_summary(cfg)));
    let source = match &cfg.source {
        SourceConfig::Kafka => {
            let (kafka, timeout) = (cfg.kafka.clone(), opts.timeout);
            let group = cfg.kafka.group_id.clone();
            blocking(move || kafka_topics(&kafka, &kafka.topics, Some(&group), timeout)).await
        }
        SourceConfig::Binlog(mysql) => binlog(mysql, opts.timeout).await,
    };
    if !report.push("source", source) {
        return report;
    }
    if let Some(args) = &opts.ticdc {
        if !report.push("ticdc", changefeed(args).await) {
            return report;
        }
    }
    let sink = match &cfg.sink {
        SinkConfig::Elasticsearch(es) => elasticsearch(es).await,
        SinkConfig::Sqlite(store_cfg) => store(&cfg.data_dir, store_cfg),
        SinkConfig::Kafka { topic } => {
            let (kafka, topic, timeout) = (cfg.kafka.clone(), topic.clone(), opts.timeout);
            blocking(move || kafka_topics(&kafka, &[topic], None, timeout)).await
        }
    };
    if !report.push("sink", sink) {
        return report;
    }
    if let Some(url) = &opts.url {
        let token = cfg.http.metrics_token.as_ref().or(cfg.http.token.as_ref());
        if !report.push("instance", instance(url, token, opts.timeout).await) {
            return report;
        }
    }
    if let Some(c) = &opts.canary {
        let result = match (&opts.url, &cfg.source) {
            (None, _) => Err(broken(
                "--canary times the row's arrival at a running instance, and no --url names one",
                "add --url http://HOST:PORT (the instance's CDC_HTTP_ADDR)",
            )),
            (Some(_), SourceConfig::Binlog(m)) if !m.tables.accepts(&c.database, &c.table) => {
                Err(broken(
                    format!("the canary table {}.{} is not captured", c.database, c.table),
                    format!(
                        "add {}.{} to CDC_TABLES, or set CDC_DOCTOR_CANARY_TABLE to a captured table",
                        c.database, c.table
                    ),
                ))
            }
            (Some(url), _) => canary(c, url, cfg.http.token.as_ref(), opts.timeout).await,
        };
        report.push("canary", result);
    }
    report
}

fn config_summary(cfg: &Config) -> String {
    let source = match &cfg.source {
        SourceConfig::Kafka => "kafka",
        SourceConfig::Binlog(_) => "binlog",
    };
    format!(
        "source {source}, sink {}, data dir {}",
        cfg.sink.name(),
        cfg.data_dir.display()
    )
}

/// Runs a blocking librdkafka check off the runtime's threads.
async fn blocking(
    check: impl FnOnce() -> Result<String, Broken> + Send + 'static,
) -> Result<String, Broken> {
    tokio::task::spawn_blocking(check)
        .await
        .unwrap_or_else(|e| Err(broken(format!("the check failed: {e}"), "report this bug")))
}

/// Brokers answer metadata, each topic exists with led partitions, and
/// (for a consumer) the group's state and lag. Joins nothing: committed
/// offsets and group lists are read as an admin would.
fn kafka_topics(
    cfg: &KafkaConfig,
    topics: &[String],
    group: Option<&str>,
    timeout: Duration,
) -> Result<String, Broken> {
    let brokers = &cfg.brokers;
    let consumer: BaseConsumer<LogContext> = client_config(cfg)
        // Needed for committed offsets; never subscribed, so never joined.
        .set("group.id", group.unwrap_or("cdc-monitor-doctor"))
        .set("enable.auto.commit", "false")
        .create_with_context(LogContext)
        .map_err(|e| {
            broken(
                format!("kafka client: {e}"),
                "correct CDC_KAFKA_PROPERTIES / the CDC_KAFKA_* security settings",
            )
        })?;
    // All topics, not the named ones: asking for a missing topic by name
    // may create it on brokers with auto.create.topics.enable.
    let metadata = consumer.fetch_metadata(None, timeout).map_err(|e| {
        broken(
            format!(
                "no Kafka broker answers at {brokers} within {} ({e})",
                secs(timeout)
            ),
            format!(
                "set CDC_KAFKA_BROKERS to reachable host:port pairs (now {brokers}); try `kafka-broker-api-versions.sh --bootstrap-server {}`",
                brokers.split(',').next().unwrap_or(brokers)
            ),
        )
    })?;
    let mut found = Vec::new();
    for topic in topics {
        let Some(meta) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return Err(broken(
                format!("kafka {brokers}: topic {topic} does not exist"),
                format!(
                    "create it: `kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic} --partitions 3` (or `cdc-monitor changefeed ensure`, whose TiCDC creates it), or correct CDC_KAFKA_TOPICS"
                ),
            ));
        };
        let partitions = meta.partitions();
        if let Some(p) = partitions.iter().find(|p| p.leader() < 0) {
            return Err(broken(
                format!(
                    "kafka {brokers}: topic {topic} partition {} has no leader",
                    p.id()
                ),
                format!("check the brokers' health: `kafka-topics.sh --bootstrap-server {brokers} --describe --topic {topic}`"),
            ));
        }
        let mut line = format!("topic {topic}, {} partitions", partitions.len());
        if let Some(group) = group {
            let ids: Vec<i32> = partitions.iter().map(|p| p.id()).collect();
            line.push_str(&group_line(&consumer, group, topic, &ids, timeout));
        }
        found.push(line);
    }
    Ok(format!("kafka {brokers}: {}", found.join("; ")))
}

/// `, group G STATE (N members), lag L`, as far as the broker tells.
fn group_line(
    consumer: &BaseConsumer<LogContext>,
    group: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> String {
    let mut line = format!(", group {group}");
    // Not every broker lists groups (Tansu does not): then the state is left out.
    if let Ok(list) = consumer.fetch_group_list(Some(group), timeout) {
        if let Some(g) = list.groups().iter().find(|g| g.name() == group) {
            line.push_str(&format!(" {} ({} members)", g.state(), g.members().len()));
        }
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, timeout) else {
        return line + ", lag unknown (committed offsets unavailable)";
    };
    let (mut lag, mut uncommitted) = (0i64, 0usize);
    for e in committed.elements() {
        let Offset::Offset(at) = e.offset() else {
            uncommitted += 1;
            continue;
        };
        match consumer.fetch_watermarks(topic, e.partition(), timeout) {
            Ok((_, high)) => lag += (high - at).max(0),
            Err(_) => return line + ", lag unknown (watermarks unavailable)",
        }
    }
    line.push_str(&format!(", group lag {lag}"));
    if uncommitted > 0 {
        line.push_str(&format!(
            " ({uncommitted} partitions without a committed offset yet)"
        ));
    }
    line
}

/// The binlog source's own preflight: binary log on, row format, full
/// images, the privileges a replica needs.
async fn binlog(cfg: &MysqlConfig, timeout: Duration) -> Result<String, Broken> {
    let (mut conn, at) = mysql_connect(&cfg.url, &cfg.tls, timeout).await?;
    let checked = preflight::check(&mut conn, &cfg.tables).await;
    let _ = conn.disconnect().await;
    let (info, problems) =
        checked.map_err(|e| broken(format!("mysql {at}: {e}"), "check the server's log"))?;
    if !problems.is_empty() {
        let whats: Vec<&str> = problems.iter().map(|p| p.what.as_str()).collect();
        let fixes: Vec<&str> = problems.iter().map(|p| p.fix.as_str()).collect();
        return Err(broken(
            format!("binlog {at} ({}): {}", info.version, whats.join("; ")),
            fixes.join("; then "),
        ));
    }
    Ok(format!(
        "binlog {at}: {}, binary log on in row format with full images, the user may replicate",
        info.version
    ))
}

/// Connects as `url` says, with `tls` (plaintext fallback in `preferred`).
async fn mysql_connect(
    url: &SecretString,
    tls: &MysqlTls,
    timeout: Duration,
) -> Result<(mysql_async::Conn, String), Broken> {
    let opts = mysql_async::Opts::from_url(url.expose_secret()).map_err(|e| {
        broken(
            format!("CDC_MYSQL_URL does not parse: {e}"),
            "set CDC_MYSQL_URL to mysql://USER:PASSWORD@HOST:PORT",
        )
    })?;
    let at = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let user = opts.user().unwrap_or_default().to_owned();
    let (connected, _) = tls::connect(&with_tls(opts, tls), tls.mode, timeout).await;
    match connected {
        Ok(Ok(conn)) => Ok((conn, at)),
        Ok(Err(mysql_async::Error::Server(e))) if e.code == 1045 || e.code == 1044 => Err(broken(
            format!("mysql {at} refuses user {user}: {}", e.message),
            "correct the user and password in CDC_MYSQL_URL",
        )),
        Ok(Err(e)) if tls::is_tls_failure(&e) => Err(broken(
            format!("TLS to mysql {at} fails: {e}"),
            tls::failure_hint(tls.mode),
        )),
        Ok(Err(e)) => Err(broken(
            format!("cannot connect to mysql {at}: {e}"),
            "check that the server runs and CDC_MYSQL_URL names its host and port",
        )),
        Err(_) => Err(broken(
            format!("mysql {at} does not answer within {}", secs(timeout)),
            "check CDC_MYSQL_URL's host and port and any firewall between",
        )),
    }
}

/// Writes the canary row (one row, its marker replaced each run) and waits
/// until the instance at `url` serves that change.
async fn canary(
    c: &Canary,
    url: &Url,
    token: Option<&SecretString>,
    timeout: Duration,
) -> Result<String, Broken> {
    use mysql_async::prelude::Queryable;
    let (db, table) = (&c.database, &c.table);
    let (mut conn, at) = mysql_connect(&c.mysql_url, &c.tls, timeout).await?;
    // Not named like a masked column (`*token*`, `*secret*`...): the
    // marker must arrive as written to be recognised.
    let marker = format!("doctor{}", now_millis());
    let written = async {
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
            .await?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{table}` (id INT PRIMARY KEY, marker VARCHAR(64) NOT NULL)"
        ))
        .await?;
        conn.exec_drop(
            format!("INSERT INTO `{db}`.`{table}` (id, marker) VALUES (1, ?) ON DUPLICATE KEY UPDATE marker = VALUES(marker)"),
            (marker.clone(),),
        )
        .await
    }
    .await;
    let _ = conn.disconnect().await;
    written.map_err(|e| {
        broken(
            format!("cannot write the canary row into {db}.{table} at mysql {at}: {e}"),
            format!("GRANT CREATE, INSERT, UPDATE ON `{db}`.* TO the CDC_MYSQL_URL user, or set CDC_DOCTOR_CANARY_TABLE to a table it may write"),
        )
    })?;
    let sent = tokio::time::Instant::now();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| broken(format!("http client: {e}"), "report this bug"))?;
    let mut events = at_path(url, "api/events");
    events
        .query_pairs_mut()
        .append_pair("database", db)
        .append_pair("table", table)
        .append_pair("limit", "5");
    loop {
        let mut request = client.get(events.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token.expose_secret());
        }
        match request.send().await {
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                return Err(broken(
                    format!(
                        "{url}api/events refuses doctor's token (HTTP {})",
                        r.status()
                    ),
                    "set CDC_HTTP_TOKEN to the instance's token",
                ))
            }
            Ok(r) => {
                if r.text().await.is_ok_and(|body| body.contains(&marker)) {
                    return Ok(format!(
                        "row written into {db}.{table} arrived at {url} in {:.1}s",
                        sent.elapsed().as_secs_f64()
                    ));
                }
            }
            Err(_) => {}
        }
        if sent.elapsed() >= c.timeout {
            return Err(broken(
                format!(
                    "the row written into {db}.{table} did not arrive at {url} within {}",
                    secs(c.timeout)
                ),
                "check that the table is captured (CDC_TABLES, or the changefeed's filter rules), then the hops above and the instance's log",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `url` with `path` appended to its path.
fn at_path(url: &Url, path: &str) -> Url {
    let mut u = url.clone();
    u.set_path(&format!("{}/{path}", url.path().trim_end_matches('/')));
    u
}

/// The changefeed exists and replicates; its checkpoint lag.
async fn changefeed(args: &ChangefeedArgs) -> Result<String, Broken> {
    let id = &args.changefeed_id;
    let server = &args.ticdc_url;
    let info = match ticdc::changefeed(args).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            return Err(broken(
                format!("changefeed {id} does not exist on TiCDC {server}"),
                "create it: `cdc-monitor changefeed ensure` (same CDC_TICDC_* and CDC_CHANGEFEED_* settings)",
            ))
        }
        Err(e) => {
            return Err(broken(
                format!("TiCDC {server}: {e}"),
                "check CDC_TICDC_URL and that TiCDC runs: `curl $CDC_TICDC_URL/api/v2/health`",
            ))
        }
    };
    if !matches!(info.state.as_str(), "normal" | "") {
        let error = info.error.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(broken(
            format!("changefeed {id} is {}{error}", info.state),
            format!("fix the cause TiCDC names, then `cdc cli changefeed resume --server={server} --changefeed-id={id}`"),
        ));
    }
    // A TSO's high bits are its physical time in milliseconds.
    let lag = info.checkpoint_tso.map(|tso| {
        let ms = i64::try_from(tso >> 18).unwrap_or(i64::MAX);
        (now_millis() - ms).max(0) as f64 / 1000.0
    });
    Ok(match lag {
        Some(lag) => format!("changefeed {id} normal, checkpoint lag {lag:.1}s"),
        None => format!("changefeed {id} normal"),
    })
}

/// Cluster health with the configured auth and TLS, the index template,
/// write blocks on the events indices, disk watermarks.
async fn elasticsearch(cfg: &EsConfig) -> Result<String, Broken> {
    let urls: Vec<String> = cfg.urls.iter().map(Url::to_string).collect();
    let urls = urls.join(",");
    let client = EsClient::new(cfg, None).map_err(|e| {
        broken(
            format!("elasticsearch client: {e}"),
            "correct the CDC_ES_* TLS and credential settings",
        )
    })?;
    let unreachable = |e: SinkError| {
        broken(
            format!("no Elasticsearch answers at {urls}: {e}"),
            format!("set CDC_ES_URL to the cluster's address (now {urls}); try `curl {urls}`"),
        )
    };
    let health = client
        .get("_cluster/health", &[])
        .await
        .map_err(unreachable)?;
    let status = health.status().as_u16();
    if matches!(status, 401 | 403) {
        return Err(broken(
            format!("Elasticsearch at {urls} refuses the credentials (HTTP {status})"),
            "set CDC_ES_API_KEY, or CDC_ES_USERNAME and CDC_ES_PASSWORD, to a user that may monitor the cluster and write the index",
        ));
    }
    let health: serde_json::Value = match json(health).await {
        Some(v) if status == 200 => v,
        _ => {
            return Err(broken(
                format!(
                    "{urls} does not answer GET _cluster/health like Elasticsearch (HTTP {status})"
                ),
                "set CDC_ES_URL to an Elasticsearch cluster's address",
            ))
        }
    };
    let color = health["status"].as_str().unwrap_or("unknown").to_owned();
    let first = cfg.urls[0].as_str().trim_end_matches('/');
    if color == "red" {
        return Err(broken(
            format!("Elasticsearch at {urls}: cluster health red (primary shards unassigned)"),
            format!("see why: `curl '{first}/_cluster/allocation/explain?pretty'`"),
        ));
    }
    let pattern = cfg.index.pattern();
    let blocks = write_blocks(&client, &pattern).await;
    if let Some((index, keys)) = blocks.into_iter().next() {
        let nulls: Vec<String> = keys.iter().map(|k| format!("\"{k}\": null")).collect();
        let disk = if keys.iter().any(|k| k.ends_with("read_only_allow_delete")) {
            " (Elasticsearch sets read_only_allow_delete at the flood-stage disk watermark: free disk first)"
        } else {
            ""
        };
        return Err(broken(
            format!(
                "Elasticsearch index {index} refuses writes: {}",
                keys.join(", ")
            ),
            format!(
                "curl -X PUT '{first}/{index}/_settings' -H 'Content-Type: application/json' -d '{{{}}}'{disk}",
                nulls.join(", ")
            ),
        ));
    }
    if let Some(full) = flood_stage(&client).await {
        return Err(broken(
            format!("Elasticsearch node {full}: past the flood-stage disk watermark (95%), indices turn read-only"),
            format!("free disk space or add nodes; `curl '{first}/_cat/allocation?v'`"),
        ));
    }
    let template = template_name(&cfg.index);
    let template = match client
        .get(&format!("_index_template/{template}"), &[])
        .await
    {
        Ok(r) if r.status().is_success() => format!("template {template} present"),
        _ => format!("template {template} not installed yet (run installs it)"),
    };
    Ok(format!(
        "elasticsearch {urls}: cluster {color}, {template}, no write block on {pattern}"
    ))
}

/// The reply's body as JSON, when it is.
async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Option<T> {
    serde_json::from_slice(&resp.bytes().await.ok()?).ok()
}

/// Each index matching `pattern` with a block that stops writes, and its block keys.
async fn write_blocks(client: &EsClient, pattern: &str) -> Vec<(String, Vec<String>)> {
    let query = [
        ("flat_settings", "true"),
        ("ignore_unavailable", "true"),
        ("allow_no_indices", "true"),
    ];
    let Ok(resp) = client.get(&format!("{pattern}/_settings"), &query).await else {
        return Vec::new();
    };
    json(resp)
        .await
        .map(|body| blocked_indices(&body))
        .unwrap_or_default()
}

/// From a `GET {index}/_settings` reply (flat or nested), the indices
/// whose `index.blocks.{write,read_only,read_only_allow_delete}` is true.
fn blocked_indices(body: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let Some(indices) = body.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (index, v) in indices {
        let settings = &v["settings"];
        let keys: Vec<String> = ["write", "read_only", "read_only_allow_delete"]
            .iter()
            .filter(|block| {
                let flat = &settings[format!("index.blocks.{block}")];
                let nested = &settings["index"]["blocks"][**block];
                [flat, nested]
                    .iter()
                    .any(|b| b.as_str() == Some("true") || b.as_bool() == Some(true))
            })
            .map(|block| format!("index.blocks.{block}"))
            .collect();
        if !keys.is_empty() {
            out.push((index.clone(), keys));
        }
    }
    out
}

/// A node whose disk is at or past the default flood stage, as `NODE N%`.
async fn flood_stage(client: &EsClient) -> Option<String> {
    let resp = client
        .get("_cat/allocation", &[("format", "json")])
        .await
        .ok()?;
    let nodes: Vec<serde_json::Value> = json(resp).await?;
    nodes.iter().find_map(|n| {
        let percent: u32 = n["disk.percent"].as_str()?.parse().ok()?;
        (percent >= 95).then(|| format!("{} {percent}%", n["node"].as_str().unwrap_or("?")))
    })
}

/// DATA_DIR is writable, events.db opens, and the disk has room for
/// `CDC_STORE_MAX_BYTES`.
fn store(data_dir: &Path, cfg: &StoreConfig) -> Result<String, Broken> {
    let shown = data_dir.display();
    // Before the first run DATA_DIR may not exist: `run` creates it in the
    // nearest existing ancestor, which must then be writable.
    let existing = data_dir
        .ancestors()
        .find(|p| p.as_os_str().is_empty() || p.exists())
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    if !existing.is_dir() {
        return Err(broken(
            format!("{} is not a directory", existing.display()),
            "set CDC_DATA_DIR to a directory",
        ));
    }
    let probe = existing.join(format!(".cdc-doctor-{}", std::process::id()));
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        return Err(broken(
            format!("cannot write in {}: {e}", existing.display()),
            format!(
                "give the user running cdc-monitor write access (`chown -R $(id -u) {}`) or set CDC_DATA_DIR elsewhere",
                existing.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(&probe);
    let db = data_dir.join("events.db");
    let mut used = 0u64;
    let opened = if db.exists() {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let checked = rusqlite::Connection::open_with_flags(&db, flags).and_then(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        });
        if let Err(e) = checked {
            return Err(broken(
                format!("{} does not open: {e}", db.display()),
                format!(
                    "stop cdc-monitor, move it aside (`mv {0} {0}.broken`) and start again: the store starts empty",
                    db.display()
                ),
            ));
        }
        for suffix in ["", "-wal"] {
            let file = PathBuf::from(format!("{}{suffix}", db.display()));
            used += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        }
        format!("events.db opens ({})", bytes(used))
    } else {
        "events.db not created yet".to_owned()
    };
    let room = match free_bytes(&existing) {
        Ok(free) => {
            let needed = cfg.max_bytes.saturating_sub(used);
            if free < needed {
                return Err(broken(
                    format!(
                        "{shown}: {} free, but the store may grow by {} more (CDC_STORE_MAX_BYTES {})",
                        bytes(free),
                        bytes(needed),
                        bytes(cfg.max_bytes)
                    ),
                    format!(
                        "free disk space, or set CDC_STORE_MAX_BYTES below {}",
                        bytes(free + used)
                    ),
                ));
            }
            format!("{} free", bytes(free))
        }
        Err(e) => format!("free space unknown ({e})"),
    };
    Ok(format!(
        "store {shown}: writable, {opened}, {room} for CDC_STORE_MAX_BYTES {}",
        bytes(cfg.max_bytes)
    ))
}

/// Bytes available to an unprivileged user on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is
    // read only after statvfs returned 0, having filled it.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // c_ulong and fsblkcnt_t are u32 on some targets
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A running instance answers `/readyz` and `/metrics`; its lag and error counters.
async fn instance(
    url: &Url,
    token: Option<&SecretString>,
    timeout: Duration,
) -> Result<String, Broken> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| broken(format!("http client: {e}"), "report this bug"))?;
    let at = |path: &str| at_path(url, path);
    let ready = client.get(at("readyz")).send().await.map_err(|e| {
        broken(
            format!(
                "nothing answers at {url}: is `cdc-monitor run` running? ({})",
                error_chain(&e.without_url())
            ),
            "start it (`cdc-monitor run` with these settings, or `docker compose up -d consumer`), or point --url at its CDC_HTTP_ADDR",
        )
    })?;
    if !ready.status().is_success() {
        let status = ready.status().as_u16();
        let body = ready.text().await.unwrap_or_default();
        return Err(broken(
            format!("{url} is not ready (HTTP {status}): {}", body.trim()),
            "the instance names the failing dependency above; read its log: `journalctl -u cdc-monitor | grep -E 'ERROR|WARN'` or `docker compose logs consumer | grep -E 'ERROR|WARN'`",
        ));
    }
    let mut request = client.get(at("metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token.expose_secret());
    }
    let metrics = request.send().await.map_err(|e| {
        broken(
            format!("{url}/metrics: {e}"),
            "retry; check the instance's log",
        )
    })?;
    if matches!(metrics.status().as_u16(), 401 | 403) {
        return Err(broken(
            format!(
                "{url}/metrics refuses doctor's token (HTTP {})",
                metrics.status()
            ),
            "set CDC_METRICS_TOKEN (or CDC_HTTP_TOKEN) to the instance's token",
        ));
    }
    let text = metrics.text().await.unwrap_or_default();
    let sample = |name: &str| samples(&text, name);
    if sample("cdc_sink_up").contains(&0.0) {
        return Err(broken(
            format!("{url}: the sink is down (cdc_sink_up 0), writes are being retried"),
            "see the sink hop above and the instance's log: `grep -E 'ERROR|WARN'` in it",
        ));
    }
    let sum = |name: &str| sample(name).iter().sum::<f64>();
    let lag_seconds = sample("cdc_consumer_lag_seconds")
        .into_iter()
        .fold(0.0, f64::max);
    Ok(format!(
        "instance {url}: ready, lag {} records / {lag_seconds:.1}s, {} events stored, {} sink errors, {} decode errors, {} dead letters",
        sum("cdc_consumer_lag_records"),
        sum("cdc_events_total"),
        sum("cdc_sink_errors_total"),
        sum("cdc_decode_errors_total"),
        sum("cdc_dead_letter_messages_total"),
    ))
}

/// Every sample value of metric `name` in Prometheus text format.
fn samples(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_blocks_are_read_from_flat_and_nested_settings() {
        let flat = serde_json::json!({
            "cdc-events": {"settings": {"index.blocks.write": "true"}},
            "cdc-other": {"settings": {"index.blocks.write": "false"}},
        });
        assert_eq!(
            blocked_indices(&flat),
            [(
                "cdc-events".to_owned(),
                vec!["index.blocks.write".to_owned()]
            )]
        );
        let nested = serde_json::json!({
            "cdc-events": {"settings": {"index": {"blocks": {"read_only_allow_delete": "true"}}}},
        });
        assert_eq!(
            blocked_indices(&nested)[0].1,
            ["index.blocks.read_only_allow_delete"]
        );
        assert!(blocked_indices(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn samples_match_the_whole_metric_name() {
        let text = "# HELP cdc_sink_up x\ncdc_sink_up 1\ncdc_sink_up_extra 0\n\
                    cdc_events_total{op=\"insert\"} 3\ncdc_events_total{op=\"delete\"} 2\n";
        assert_eq!(samples(text, "cdc_sink_up"), [1.0]);
        assert_eq!(samples(text, "cdc_events_total"), [3.0, 2.0]);
    }

    #[test]
    fn a_config_error_is_the_first_broken_hop_and_exit_2() {
        let e = ConfigError::Invalid {
            key: "CDC_ES_URL".into(),
            value: "x".into(),
            reason: "bad".into(),
        };
        let r = Report::config_error(&e);
        assert!(!r.healthy);
        assert_eq!(r.exit_code(), 2);
        assert!(r.human().starts_with("FAIL config   invalid value"));
    }

    #[test]
    fn a_broken_hop_after_config_exits_1() {
        let mut r = Report::default();
        r.push("config", Ok("fine".into()));
        assert_eq!(r.exit_code(), 0);
        r.push("sink", Err(broken("down", "start it")));
        assert_eq!(r.exit_code(), 1);
        assert_eq!(
            r.human(),
            "ok   config   fine\nFAIL sink     down\n     fix: start it\n"
        );
    }
}
