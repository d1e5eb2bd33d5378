//! The few Elasticsearch HTTP calls the sink makes, spread over the nodes.
//!
//! Each request goes to the next node, round-robin, among those not marked
//! down. A node that fails with a connection error, 5xx or 429 is marked down
//! for a backoff and the same request goes to the next node at once; the
//! caller sees an error only when every node failed it, and then waits
//! (`next_up_in`) for the earliest node to come back. A down node is tried
//! again when its backoff ends; one success marks it up.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use secrecy::ExposeSecret;
use tracing::{info, warn};
use url::Url;

use crate::backoff::Backoff;
use crate::config::{EsCompression, EsConfig};
use crate::index_route::IndexRoute;
use crate::metrics::Metrics;
use crate::sink::elasticsearch::response::{refusal_reason, BulkResponse};
use crate::sink::SinkError;
use crate::tls::{self, TlsFileError};

/// What Elasticsearch answered to a bulk request.
#[derive(Debug)]
pub enum BulkReply {
    /// Accepted: one outcome per item.
    Items(BulkResponse),
    /// Refused as a whole (400 bad request, 413 too large): something in
    /// the body is at fault, not the cluster, so sending it again is futile.
    Refused { status: u16, reason: String },
}

/// How long a failing node is skipped: doubling from 500 ms to 30 s, so a
/// node back from a restart takes requests again within half a minute.
const NODE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// An authenticated client for one cluster of one or more nodes.
#[derive(Clone)]
pub struct EsClient {
    http: reqwest::Client,
    nodes: Arc<Nodes>,
    gzip: bool,
}

impl EsClient {
    /// Builds the client with auth and TLS settings from `cfg`.
    pub fn new(cfg: &EsConfig, metrics: Option<Metrics>) -> Result<EsClient, SinkError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &cfg.api_key {
            let v = HeaderValue::from_str(&format!("ApiKey {}", key.expose_secret())).map_err(
                |_| SinkError::Config("CDC_ES_API_KEY is not a valid header value".into()),
            )?;
            headers.insert(AUTHORIZATION, v);
        } else if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", pass.expose_secret()));
            let mut v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                SinkError::Config("CDC_ES_USERNAME is not a valid header value".into())
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(10)))
            .pool_max_idle_per_host(32);
        let tls_err = |e: TlsFileError| SinkError::Config(e.to_string());
        if let Some(path) = &cfg.ca_file {
            builder = builder.add_root_certificate(
                tls::root_certificate("CDC_ES_CA_FILE", path).map_err(tls_err)?,
            );
        }
        if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
            builder = builder.identity(
                tls::client_identity(["CDC_ES_CLIENT_CERT", "CDC_ES_CLIENT_KEY"], cert, key)
                    .map_err(tls_err)?,
            );
        }
        let http = builder
            .build()
            .map_err(|e| SinkError::Config(e.to_string()))?;
        Ok(EsClient {
            http,
            nodes: Arc::new(Nodes::new(cfg.urls.clone(), NODE_BACKOFF, metrics)),
            gzip: cfg.compression == EsCompression::Gzip,
        })
    }

    /// How long until some node takes requests again; zero while one does.
    pub fn next_up_in(&self) -> Duration {
        self.nodes.next_up_in(Instant::now())
    }

    /// `body`, gzip-compressed when so configured, and its `Content-Encoding`.
    fn encode_body(&self, body: Vec<u8>) -> (Bytes, Option<&'static str>) {
        if !self.gzip {
            return (Bytes::from(body), None);
        }
        // Level 1: bulk NDJSON shrinks about as much as at level 6, at a
        // fraction of the CPU time (see the README's measurement).
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        // Writing into a Vec cannot fail.
        match gz.write_all(&body).and_then(|()| gz.finish()) {
            Ok(compressed) => (Bytes::from(compressed), Some("gzip")),
            Err(_) => (Bytes::from(body), None),
        }
    }

    /// Sends the request `build` makes for a node's base URL to the next
    /// healthy node, moving on to the others while nodes fail; the last
    /// failure when every node failed.
    async fn send(
        &self,
        build: impl Fn(&Url) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SinkError> {
        let mut tried = Vec::with_capacity(self.nodes.list.len());
        let mut last = None;
        while let Some(i) = self.nodes.pick(Instant::now(), &tried) {
            tried.push(i);
            let node = &self.nodes.list[i];
            let failure = match build(&node.base).send().await {
                Ok(resp) if !node_failure(resp.status().as_u16()) => {
                    self.nodes.mark_up(i);
                    return Ok(resp);
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    SinkError::Status {
                        status,
                        body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                    }
                }
                Err(e) => SinkError::Http(e),
            };
            self.nodes.mark_down(i, Instant::now(), &failure);
            last = Some(failure);
        }
        // `pick` offers a node on the first call, so `last` is set.
        Err(last.unwrap_or_else(|| SinkError::Config("no Elasticsearch node configured".into())))
    }

    /// Sends one NDJSON bulk body; other failures than a refusal are errors.
    pub async fn bulk(&self, body: Vec<u8>) -> Result<BulkReply, SinkError> {
        let (body, encoding) = self.encode_body(body);
        let resp = self
            .send(|base| {
                let req = self
                    .http
                    .post(join(base, "_bulk"))
                    .header(CONTENT_TYPE, "application/x-ndjson");
                let req = match encoding {
                    Some(e) => req.header(CONTENT_ENCODING, e),
                    None => req,
                };
                req.body(body.clone())
            })
            .await?;
        let status = resp.status().as_u16();
        if matches!(status, 400 | 413) {
            let body = resp.bytes().await?;
            return Ok(BulkReply::Refused {
                status,
                reason: refusal_reason(status, &body),
            });
        }
        json_reply(resp, "bulk reply").await.map(BulkReply::Items)
    }

    /// Runs a `_search` on `index`; a missing index answers no hits rather than 404.
    pub async fn search<T: serde::de::DeserializeOwned>(
        &self,
        index: &str,
        body: &serde_json::Value,
    ) -> Result<T, SinkError> {
        let resp = self
            .post_to_index(index, "_search", &[], body.to_string())
            .await?;
        json_reply(resp, "search reply").await
    }

    /// POSTs the JSON `body` to `index`'s `endpoint` with `params`. Before
    /// the first event is stored the index does not exist yet: that is an
    /// empty index, not an outage (`ignore_unavailable`, `allow_no_indices`).
    async fn post_to_index(
        &self,
        index: &str,
        endpoint: &str,
        params: &[(&str, &str)],
        body: String,
    ) -> Result<reqwest::Response, SinkError> {
        self.send(|base| {
            let mut url = join(base, &format!("{index}/{endpoint}"));
            url.query_pairs_mut()
                .append_pair("ignore_unavailable", "true")
                .append_pair("allow_no_indices", "true")
                .extend_pairs(params);
            self.http
                .post(url)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// Deletes the documents of `index` that `query` matches
    /// (`_delete_by_query`, version conflicts skipped: a document changed
    /// meanwhile is newer than the deletion); a missing index has none.
    pub async fn delete_by_query(
        &self,
        index: &str,
        query: &serde_json::Value,
    ) -> Result<(), SinkError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            #[serde(default)]
            failures: Vec<serde_json::Value>,
        }
        let body = serde_json::json!({ "query": query }).to_string();
        let resp = self
            .post_to_index(index, "_delete_by_query", &[("conflicts", "proceed")], body)
            .await?;
        let reply: Reply = json_reply(resp, "delete-by-query reply").await?;
        match reply.failures.first() {
            None => Ok(()),
            Some(f) => Err(SinkError::Response(format!(
                "delete by query on {index}: {} failures, e.g. {f}",
                reply.failures.len()
            ))),
        }
    }

    /// Installs `body` at `path` (an index template, an ILM policy) unless
    /// something is there already; true when created. Existing ones are
    /// left as they are: an operator's edits survive restarts.
    pub async fn ensure(&self, path: &str, body: &serde_json::Value) -> Result<bool, SinkError> {
        // `_ilm/policy` answers GET only; templates answer HEAD too, but
        // GET works for both (404 when missing).
        let probe = self.send(|base| self.http.get(join(base, path))).await?;
        match probe.status().as_u16() {
            200 => return Ok(false),
            404 => {}
            status => {
                return Err(SinkError::Status {
                    status,
                    body: format!("GET {path}"),
                })
            }
        }
        let body = body.to_string();
        let resp = self
            .send(|base| {
                self.http
                    .put(join(base, path))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            if status.as_u16() == 400 && body.contains("resource_already_exists_exception") {
                // Another instance created it between our GET and PUT.
                return Ok(false);
            }
            return Err(SinkError::Status {
                status: status.as_u16(),
                body,
            });
        }
        Ok(true)
    }

    /// The JSON at `path` (GET); `None` on 404.
    pub async fn get_json(&self, path: &str) -> Result<Option<serde_json::Value>, SinkError> {
        let resp = self.send(|base| self.http.get(join(base, path))).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        json_reply(resp, path).await.map(Some)
    }

    /// The `_source` of document `id` in `index` (realtime GET); `None` when
    /// the document or the index does not exist.
    pub async fn get_source(
        &self,
        index: &str,
        id: &str,
    ) -> Result<Option<serde_json::Value>, SinkError> {
        let path = format!("{index}/_doc/{id}");
        let resp = self.send(|base| self.http.get(join(base, &path))).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let mut doc: serde_json::Value = json_reply(resp, "get reply").await?;
        Ok(Some(doc["_source"].take()))
    }

    /// The data streams `pattern` names, each with its backing indices,
    /// oldest first (the last is the write index).
    pub async fn data_streams(
        &self,
        pattern: &str,
    ) -> Result<Vec<(String, Vec<String>)>, SinkError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            data_streams: Vec<Stream>,
        }
        #[derive(serde::Deserialize)]
        struct Stream {
            name: String,
            indices: Vec<Backing>,
        }
        #[derive(serde::Deserialize)]
        struct Backing {
            index_name: String,
        }
        let path = format!("_data_stream/{pattern}");
        let resp = self.send(|base| self.http.get(join(base, &path))).await?;
        if resp.status().as_u16() == 404 {
            // A fixed name before its first document: no stream yet.
            return Ok(Vec::new());
        }
        let reply: Reply = json_reply(resp, "data stream reply").await?;
        Ok(reply
            .data_streams
            .into_iter()
            .map(|s| {
                (
                    s.name,
                    s.indices.into_iter().map(|i| i.index_name).collect(),
                )
            })
            .collect())
    }

    /// Each of `indices`' creation time, Unix milliseconds (`index.creation_date`).
    pub async fn creation_dates(
        &self,
        indices: &[String],
    ) -> Result<Vec<(String, i64)>, SinkError> {
        let path = format!("{}/_settings/index.creation_date", indices.join(","));
        let resp = self.send(|base| self.http.get(join(base, &path))).await?;
        let reply: serde_json::Map<String, serde_json::Value> =
            json_reply(resp, "settings reply").await?;
        reply
            .into_iter()
            .map(|(index, v)| {
                let date = v["settings"]["index"]["creation_date"]
                    .as_str()
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| {
                        SinkError::Response(format!("{index} has no index.creation_date"))
                    })?;
                Ok((index, date))
            })
            .collect()
    }

    /// Which of the (index, id) pairs exist, by realtime multi-get.
    pub async fn exists(&self, docs: &[(String, String)]) -> Result<Vec<bool>, SinkError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            docs: Vec<Doc>,
        }
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(default)]
            found: bool,
        }
        let body = serde_json::json!({
            "docs": docs.iter().map(|(index, id)| serde_json::json!({"_index": index, "_id": id})).collect::<Vec<_>>()
        })
        .to_string();
        let resp = self
            .send(|base| {
                let mut url = join(base, "_mget");
                url.query_pairs_mut().append_pair("_source", "false");
                self.http
                    .post(url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let reply: Reply = json_reply(resp, "mget reply").await?;
        if reply.docs.len() != docs.len() {
            return Err(SinkError::Response(format!(
                "mget reply has {} docs for {}",
                reply.docs.len(),
                docs.len()
            )));
        }
        Ok(reply.docs.into_iter().map(|d| d.found).collect())
    }

    /// GETs `path` with `query` from the next healthy node and returns the
    /// reply whatever its status (4xx included): `doctor`'s read-only checks.
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, SinkError> {
        self.send(|base| {
            let mut url = join(base, path);
            if !query.is_empty() {
                url.query_pairs_mut().extend_pairs(query);
            }
            self.http.get(url)
        })
        .await
    }

    /// Asks every node; succeeds when one answers, else names each failure.
    /// A node that answers is marked up, one that fails down.
    pub async fn ping(&self) -> Result<(), SinkError> {
        let pings = self
            .nodes
            .list
            .iter()
            .enumerate()
            .map(|(i, node)| async move {
                let result = match self.http.get(node.base.clone()).send().await {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(SinkError::Status {
                        status: resp.status().as_u16(),
                        body: "GET /".into(),
                    }),
                    Err(e) => Err(SinkError::Http(e)),
                };
                // Only what `send` counts as a node failure marks it down:
                // a 401 here would be every node's answer to every request.
                match &result {
                    Ok(()) => self.nodes.mark_up(i),
                    Err(e @ SinkError::Status { status, .. }) if node_failure(*status) => {
                        self.nodes.mark_down(i, Instant::now(), e)
                    }
                    Err(e @ SinkError::Http(_)) => self.nodes.mark_down(i, Instant::now(), e),
                    Err(_) => {}
                }
                result.map_err(|e| (i, e))
            });
        let results = futures::future::join_all(pings).await;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        let mut errors = results.into_iter().filter_map(Result::err);
        match (self.nodes.list.len(), errors.next()) {
            (1, Some((_, e))) => Err(e),
            (_, first) => {
                let all: Vec<String> = first
                    .into_iter()
                    .chain(errors)
                    .map(|(i, e)| format!("{}: {e}", self.nodes.list[i].name))
                    .collect();
                Err(SinkError::Response(format!(
                    "no Elasticsearch node answers ({})",
                    all.join("; ")
                )))
            }
        }
    }
}

/// `base` with `path` appended to its path.
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        url.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url
}

/// A status that says the node, not the request, is at fault: try another.
/// (4xx other than 429 would be refused by every node alike.)
fn node_failure(status: u16) -> bool {
    status == 429 || status >= 500
}

/// The nodes, which of them take requests, and whose turn is next.
struct Nodes {
    list: Vec<Node>,
    next: AtomicUsize,
    backoff: Backoff,
    metrics: Option<Metrics>,
}

struct Node {
    base: Url,
    /// The URL as shown in logs and the `node` label.
    name: String,
    state: Mutex<NodeState>,
}

#[derive(Debug, Default)]
struct NodeState {
    /// Failures since the last success.
    failures: u32,
    /// Skipped until then; `None` while up.
    down_until: Option<Instant>,
}

impl Nodes {
    fn new(urls: Vec<Url>, backoff: Backoff, metrics: Option<Metrics>) -> Nodes {
        let list: Vec<Node> = urls
            .into_iter()
            .map(|base| Node {
                name: base.as_str().trim_end_matches('/').to_owned(),
                base,
                state: Mutex::default(),
            })
            .collect();
        if let Some(m) = &metrics {
            for node in &list {
                m.es_node_up.with_label_values(&[&node.name]).set(1);
            }
        }
        Nodes {
            list,
            next: AtomicUsize::new(0),
            backoff,
            metrics,
        }
    }

    fn state(&self, i: usize) -> std::sync::MutexGuard<'_, NodeState> {
        // A panic while holding this lock leaves a plain struct behind.
        self.list[i]
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn down_until(&self, i: usize, now: Instant) -> Option<Instant> {
        self.state(i).down_until.filter(|t| *t > now)
    }

    /// The next node, round-robin, that is up and not in `tried`. When no
    /// node is up and none was tried yet, the one back soonest: every
    /// request tries at least one node.
    fn pick(&self, now: Instant, tried: &[usize]) -> Option<usize> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let up = (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !tried.contains(i) && self.down_until(*i, now).is_none());
        if up.is_some() || !tried.is_empty() {
            return up;
        }
        (0..n).min_by_key(|&i| self.down_until(i, now))
    }

    /// How long until a node is up again; zero while one is.
    fn next_up_in(&self, now: Instant) -> Duration {
        (0..self.list.len())
            .map(|i| self.down_until(i, now).map_or(Duration::ZERO, |t| t - now))
            .min()
            .unwrap_or(Duration::ZERO)
    }

    fn mark_down(&self, i: usize, now: Instant, error: &SinkError) {
        let mut st = self.state(i);
        if st.down_until.is_some_and(|t| t > now) {
            // Another request in flight saw the same failure first.
            return;
        }
        st.failures = st.failures.saturating_add(1);
        let delay = self.backoff.delay(st.failures);
        st.down_until = Some(now + delay);
        let failures = st.failures;
        drop(st);
        let node = self.list[i].name.as_str();
        warn!(node, failures, retry_in = ?delay, error = %error, "Elasticsearch node skipped");
        if let Some(m) = &self.metrics {
            m.es_node_up.with_label_values(&[node]).set(0);
        }
    }

    fn mark_up(&self, i: usize) {
        let mut st = self.state(i);
        if st.failures == 0 {
            return;
        }
        *st = NodeState::default();
        drop(st);
        let node = self.list[i].name.as_str();
        info!(node, "Elasticsearch node back");
        if let Some(m) = &self.metrics {
            m.es_node_up.with_label_values(&[node]).set(1);
        }
    }
}

/// A 2xx reply parsed as JSON, or the status with the start of the body.
async fn json_reply<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
) -> Result<T, SinkError> {
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        return Err(SinkError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| SinkError::Response(format!("{what}: {e}")))
}

/// The index template's name: the index's own for a fixed one, else the
/// route without braces (`cdc-{table}` → `cdc-table`).
pub fn template_name(index: &IndexRoute) -> String {
    if index.is_fixed() {
        index.to_string()
    } else {
        index.template_name()
    }
}

/// The index template: fixed keyword fields, and `flattened` row data so that
/// arbitrary column names cannot grow the mapping without bound. A routed
/// index's template covers every expansion (each placeholder a `*`); its
/// priority is one above a fixed index's, whose `cdc-events-*` it may
/// overlap (Elasticsearch refuses overlapping templates of equal priority).
pub fn index_template(index: &IndexRoute) -> serde_json::Value {
    let (patterns, priority) = if index.is_fixed() {
        (vec![index.to_string(), format!("{index}-*")], 200)
    } else {
        (vec![index.pattern()], 201)
    };
    let flattened = flattened();
    composable_template(
        patterns,
        priority,
        serde_json::json!({"refresh_interval": "1s"}),
        serde_json::json!({
            "@timestamp": {"type": "date"},
            "database": {"type": "keyword"},
            "table": {"type": "keyword"},
            "op": {"type": "keyword"},
            "pk": flattened,
            "data": flattened,
            "old": flattened,
            "commit_ts": {"type": "unsigned_long"},
            "sql": {"type": "text"},
            "ingested_at": {"type": "date"},
            "large_message": {"properties": {
                "kind": {"type": "keyword"},
                "location": {"type": "keyword"}
            }},
            "kafka": {"properties": {
                "topic": {"type": "keyword"},
                "partition": {"type": "integer"},
                "offset": {"type": "long"}
            }}
        }),
    )
}

/// The mapping of row columns: `flattened`, so arbitrary column names
/// cannot grow the mapping without bound.
pub(super) fn flattened() -> serde_json::Value {
    serde_json::json!({"type": "flattened", "ignore_above": 8191})
}

/// A composable index template of ours (marked in `_meta`), with a strict
/// mapping: fields not listed are kept in `_source` but not indexed.
pub(super) fn composable_template(
    patterns: Vec<String>,
    priority: u32,
    index_settings: serde_json::Value,
    properties: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "index_patterns": patterns,
        "priority": priority,
        "template": {
            "settings": {"index": index_settings},
            "mappings": {"dynamic": false, "properties": properties}
        },
        "_meta": {"managed_by": "cdc-monitor"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Nodes {
        let urls = (0..n)
            .map(|i| format!("http://es{i}:9200").parse().unwrap())
            .collect();
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        Nodes::new(urls, backoff, None)
    }

    fn down() -> SinkError {
        SinkError::Status {
            status: 503,
            body: "unavailable".into(),
        }
    }

    #[test]
    fn requests_go_round_robin_over_the_nodes() {
        let n = nodes(3);
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| n.pick(now, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_failed_node_is_skipped_until_its_backoff_ends_then_tried_again() {
        let n = nodes(2);
        let now = Instant::now();
        n.mark_down(1, now, &down());
        assert!((0..4).all(|_| n.pick(now, &[]) == Some(0)));
        // The request that failed on 1 goes to 0 at once, and no further.
        assert_eq!(n.pick(now, &[1]), Some(0));
        assert_eq!(n.pick(now, &[1, 0]), None);
        assert_eq!(n.next_up_in(now), Duration::ZERO);
        let later = now + Duration::from_secs(2);
        let picks: Vec<_> = (0..2).map(|_| n.pick(later, &[]).unwrap()).collect();
        assert!(picks.contains(&1), "{picks:?}");
        n.mark_up(1);
        assert_eq!(n.state(1).failures, 0);
    }

    #[test]
    fn with_every_node_down_the_one_back_soonest_is_offered_and_waited_for() {
        let n = nodes(2);
        let now = Instant::now();
        n.mark_down(0, now, &down());
        n.mark_down(0, now + Duration::from_secs(2), &down());
        n.mark_down(1, now, &down());
        // Node 0 failed twice (1-2 s after its second failure), node 1 once.
        let wait = n.next_up_in(now);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(n.pick(now, &[]), Some(1));
        assert_eq!(n.pick(now, &[1]), None);
    }

    #[test]
    fn failures_seen_while_a_node_is_down_do_not_stretch_its_backoff() {
        let n = nodes(1);
        let now = Instant::now();
        for _ in 0..4 {
            n.mark_down(0, now, &down());
        }
        assert_eq!(n.state(0).failures, 1);
    }

    #[test]
    fn node_failures_are_connection_errors_5xx_and_429_not_other_4xx() {
        assert!(node_failure(429) && node_failure(502) && node_failure(503));
        assert!(!node_failure(400) && !node_failure(409) && !node_failure(200));
    }

    #[test]
    fn a_routed_index_template_covers_every_expansion() {
        let fixed = IndexRoute::parse("cdc-events").unwrap();
        assert_eq!(template_name(&fixed), "cdc-events");
        assert_eq!(
            index_template(&fixed)["index_patterns"],
            serde_json::json!(["cdc-events", "cdc-events-*"])
        );
        let routed = IndexRoute::parse("cdc-{database}-{table}-{yyyy.MM.dd}").unwrap();
        assert_eq!(template_name(&routed), "cdc-database-table-yyyy.mm.dd");
        let t = index_template(&routed);
        assert_eq!(t["index_patterns"], serde_json::json!(["cdc-*-*-*"]));
        assert_eq!(t["priority"], 201);
        let pattern = routed.pattern();
        let prefix = pattern.split('*').next().unwrap();
        assert!(routed.index_for("Shop", "Users", 0).starts_with(prefix));
    }
}
