//! An in-test HTTP server that follows Elasticsearch's Bulk API contract, or
//! a real Elasticsearch when `CDC_TEST_ES_URL` is set.
//!
//! The stub implements what the consumer and these tests use: `GET /`,
//! `HEAD/PUT/GET /_index_template/{name}`, `GET/PUT /_ilm/policy/{name}`,
//! `GET/PUT /_data_stream/{name}`, `POST /{stream}/_rollover`, `POST /_bulk`
//! with per-item statuses and the `errors` flag (201 created, 409 on a
//! `create` whose id exists, `delete` (404 `not_found` when absent),
//! `version`/`version_type` `external` and `external_gte` with 409
//! `version_conflict_engine_exception` for an older version and deleted
//! documents' versions kept (as `index.gc_deletes` does, here for ever), 400
//! document_parsing_exception for a flattened field deeper than 20 levels,
//! as Elasticsearch does), data streams (a name matching a template with
//! `data_stream` becomes one on its first write, `.ds-<name>-<yyyy.MM.dd>-
//! 00000N` backing indices, `create` only, into the write index),
//! `/{index}/_count`, `/{index}/_doc/{id}`
//! and `/{index}/_refresh`, `/{index}/_search` (see `search`), plus fault injection: whole-request 429 or 503
//! for a while, per-item 429 for a share of items, whole-request 400 for any
//! request holding a poisoned document, whole-request 413 for large bodies,
//! and per-item 403 `cluster_block_exception` (a read-only index) for a while.
//!
//! Bulk bodies sent with `Content-Encoding: gzip` are decoded, as
//! Elasticsearch does. `start_node` adds a second node sharing the first's
//! documents, stopped and restarted on its own.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Faults the stub injects.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer every bulk request with 429 until then.
    pub reject_until: Option<Instant>,
    /// Answer every bulk request with 503 until then.
    pub unavailable_until: Option<Instant>,
    /// Fail every n-th item with 429 on its first attempt.
    pub item_429_every: Option<usize>,
    /// Answer 400 `mapper_parsing_exception` to any bulk request holding one of these ids.
    pub poisoned_ids: HashSet<String>,
    /// Answer 413, without a body (as Elasticsearch's HTTP layer does), to bulk bodies larger than this.
    pub max_body_bytes: Option<usize>,
    /// Fail every item with 403 `cluster_block_exception` until then.
    pub blocked_until: Option<Instant>,
    /// Refuse every item with one of these ids, for good (400 `document_parsing_exception`).
    pub refused_item_ids: HashSet<String>,
}

#[derive(Default)]
struct Index {
    docs: HashMap<String, Value>,
    /// External versions of documents, and of deleted ones (tombstones).
    versions: HashMap<String, u64>,
}

/// A data stream: its backing indices, oldest first; the last one takes writes.
#[derive(Debug, Clone, Default)]
struct DataStream {
    indices: Vec<String>,
}

#[derive(Default)]
struct StubState {
    indices: HashMap<String, Index>,
    templates: HashMap<String, Value>,
    /// PUTs of index templates and ILM policies received.
    template_puts: u64,
    policy_puts: u64,
    policies: HashMap<String, Value>,
    data_streams: HashMap<String, DataStream>,
    /// Creation time (Unix ms) of each backing index.
    created: HashMap<String, i64>,
    /// `_mget` requests received.
    mgets: u64,
    faults: Faults,
    /// Items ever received per id (duplicates show up here, not in docs).
    attempts: HashMap<String, u32>,
    bulk_requests: u64,
    /// Bulk requests that came gzip-compressed.
    gzip_requests: u64,
    /// Bulk body bytes as received (compressed or not).
    wire_bytes: u64,
    /// Bulk requests answered 400 or 413 as a whole.
    refused_requests: u64,
    item_counter: usize,
}

/// The stub server.
#[derive(Clone)]
pub struct EsStub {
    pub addr: SocketAddr,
    state: Arc<Mutex<StubState>>,
    stop: Arc<tokio::sync::Notify>,
    /// Bulk requests this node (not its siblings) received.
    node_bulk_requests: NodeBulkRequests,
}

/// A node's own count of bulk requests, passed to the handler.
#[derive(Clone, Default)]
struct NodeBulkRequests(Arc<AtomicU64>);

impl EsStub {
    /// Starts on a loopback port of its own: outside the ephemeral range and
    /// handed out once per run (`ports::candidate`), so that after `stop`
    /// no outgoing connection or other test takes it before `restart`.
    pub async fn start() -> EsStub {
        EsStub::start_sharing(Arc::default()).await
    }

    /// Another node of the same cluster: its own port, the same documents,
    /// faults and totals; stopped and restarted on its own.
    pub async fn start_node(&self) -> EsStub {
        EsStub::start_sharing(self.state.clone()).await
    }

    async fn start_sharing(state: Arc<Mutex<StubState>>) -> EsStub {
        let mut taken = Vec::new();
        while taken.len() < 5 {
            let port = super::ports::candidate();
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => return EsStub::serve_on(listener, state),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => taken.push(port),
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        }
        panic!("ES stub: ports {taken:?} were each taken by another process")
    }

    /// Starts on `port` (0 for one the kernel picks).
    pub async fn start_on(port: u16) -> EsStub {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        EsStub::serve_on(listener, Arc::default())
    }

    fn serve_on(listener: tokio::net::TcpListener, state: Arc<Mutex<StubState>>) -> EsStub {
        let stop = Arc::new(tokio::sync::Notify::new());
        let node_bulk_requests = NodeBulkRequests::default();
        let addr = serve(
            listener,
            state.clone(),
            stop.clone(),
            node_bulk_requests.clone(),
        );
        EsStub {
            addr,
            state,
            stop,
            node_bulk_requests,
        }
    }

    /// Stops listening (connections are refused); documents are kept.
    pub async fn stop(&self) {
        self.stop.notify_waiters();
        // Let the listener close before a client tries again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Listens again on the same port, with the same documents.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("ES stub: listen again on {}: {e}", self.addr));
        serve(
            listener,
            self.state.clone(),
            self.stop.clone(),
            self.node_bulk_requests.clone(),
        );
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// All documents of `index`.
    pub fn docs(&self, index: &str) -> HashMap<String, Value> {
        self.state
            .lock()
            .unwrap()
            .indices
            .get(index)
            .map(|i| i.docs.clone())
            .unwrap_or_default()
    }

    /// Names of the indices holding documents.
    pub fn index_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.lock().unwrap().indices.keys().cloned().collect();
        names.sort();
        names
    }

    /// The installed template `name`.
    pub fn template(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().templates.get(name).cloned()
    }

    /// Number of bulk requests received.
    pub fn bulk_requests(&self) -> u64 {
        self.state.lock().unwrap().bulk_requests
    }

    /// Number of bulk requests this node received, of all the cluster's.
    pub fn node_bulk_requests(&self) -> u64 {
        self.node_bulk_requests.0.load(Ordering::Relaxed)
    }

    /// Bulk requests that came gzip-compressed, and bulk body bytes as received.
    pub fn wire(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap();
        (st.gzip_requests, st.wire_bytes)
    }

    /// Number of bulk requests refused as a whole (400 or 413).
    pub fn refused_requests(&self) -> u64 {
        self.state.lock().unwrap().refused_requests
    }

    /// Installed template names.
    pub fn templates(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .templates
            .keys()
            .cloned()
            .collect()
    }

    /// `_mget` requests received.
    pub fn mgets(&self) -> u64 {
        self.state.lock().unwrap().mgets
    }

    /// PUTs of index templates and of ILM policies received.
    pub fn puts(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap();
        (st.template_puts, st.policy_puts)
    }

    /// The installed ILM policy `name`.
    pub fn policy(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().policies.get(name).cloned()
    }

    /// The backing indices of data stream `name`, oldest first (empty when none).
    pub fn backing_indices(&self, name: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .data_streams
            .get(name)
            .map(|d| d.indices.clone())
            .unwrap_or_default()
    }

    /// Rolls data stream `name` over, as `POST /{name}/_rollover` does.
    pub fn rollover(&self, name: &str) -> Option<String> {
        rollover_stream(&mut self.state.lock().unwrap(), name)
    }

    /// Every document of `expr` (an index, a data stream, wildcards), by
    /// index then id; a data stream's backing indices each count.
    pub fn docs_in(&self, expr: &str) -> Vec<(String, String, Value)> {
        let st = self.state.lock().unwrap();
        let mut out = Vec::new();
        for name in resolve(&st, expr) {
            if let Some(i) = st.indices.get(&name) {
                out.extend(
                    i.docs
                        .iter()
                        .map(|(id, d)| (name.clone(), id.clone(), d.clone())),
                );
            }
        }
        out
    }

    /// Number of ids that were sent more than once (replays), for reporting.
    pub fn replayed_ids(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .attempts
            .values()
            .filter(|n| **n > 1)
            .count()
    }
}

fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<StubState>>,
    stop: Arc<tokio::sync::Notify>,
    node_bulk_requests: NodeBulkRequests,
) -> SocketAddr {
    let app = Router::new()
        .route("/", get(root))
        .route("/_bulk", post(bulk))
        .route(
            "/_index_template/{name}",
            get(get_template).head(head_template).put(put_template),
        )
        .route("/_ilm/policy/{name}", get(get_policy).put(put_policy))
        .route(
            "/_data_stream/{name}",
            get(get_data_stream).put(put_data_stream),
        )
        .route("/{index}/_rollover", post(rollover))
        .route("/{index}/_settings/{setting}", get(get_settings))
        .route("/_mget", post(mget))
        .route("/{index}", get(get_index).put(put_index))
        .route("/{index}/_count", get(count).post(count))
        .route("/{index}/_search", post(search))
        .route("/{index}/_delete_by_query", post(delete_by_query))
        .route("/{index}/_refresh", post(refresh).get(refresh))
        .route("/{index}/_doc/{id}", get(get_doc))
        // Elasticsearch takes up to 100 MB (http.max_content_length); axum's
        // 2 MB default would answer 413 where Elasticsearch does not.
        .layer(DefaultBodyLimit::disable())
        .layer(Extension(node_bulk_requests))
        .with_state(state);
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.notified().await })
            .await
            .ok();
    });
    addr
}

async fn root() -> Json<Value> {
    Json(
        json!({"name": "stub", "cluster_name": "cdc-test", "version": {"number": "8.15.0"}, "tagline": "You Know, for Search"}),
    )
}

async fn head_template(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(name): Path<String>,
) -> StatusCode {
    if s.lock().unwrap().templates.contains_key(&name) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn get_template(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(name): Path<String>,
) -> Response {
    match s.lock().unwrap().templates.get(&name) {
        Some(t) => {
            Json(json!({"index_templates": [{"name": name, "index_template": t}]})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"type": "resource_not_found_exception"}, "status": 404})),
        )
            .into_response(),
    }
}

async fn put_template(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    if v.get("index_patterns").is_none() {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "action_request_validation_exception", "reason": "index patterns are missing"}, "status": 400}))).into_response();
    }
    let mut st = s.lock().unwrap();
    st.template_puts += 1;
    st.templates.insert(name, v);
    Json(json!({"acknowledged": true})).into_response()
}

async fn get_policy(State(s): State<Arc<Mutex<StubState>>>, Path(name): Path<String>) -> Response {
    match s.lock().unwrap().policies.get(&name) {
        Some(p) => Json(json!({name: {"version": 1, "policy": p["policy"]}})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"type": "resource_not_found_exception", "reason": format!("Lifecycle policy not found: {name}")}, "status": 404})),
        )
            .into_response(),
    }
}

async fn put_policy(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    if v["policy"]["phases"].as_object().is_none() {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "x_content_parse_exception", "reason": "required [phases]"}, "status": 400}))).into_response();
    }
    let mut st = s.lock().unwrap();
    st.policy_puts += 1;
    st.policies.insert(name, v);
    Json(json!({"acknowledged": true})).into_response()
}

/// The data-stream template matching `name`, if any: the highest priority
/// template whose patterns match decides, as in Elasticsearch.
fn data_stream_template(st: &StubState, name: &str) -> bool {
    st.templates
        .values()
        .filter(|t| {
            t["index_patterns"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p.as_str().is_some_and(|p| index_matches(p, name)))
            })
        })
        .max_by_key(|t| t["priority"].as_u64().unwrap_or(0))
        .is_some_and(|t| t.get("data_stream").is_some())
}

/// A backing index name: `.ds-<stream>-<yyyy.MM.dd>-<generation, 6 digits>`.
fn backing_index(stream: &str, generation: usize) -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        ".ds-{stream}-{:04}.{:02}.{:02}-{generation:06}",
        now.year(),
        now.month() as u8,
        now.day()
    )
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn create_stream(st: &mut StubState, name: &str) {
    if st.data_streams.contains_key(name) {
        return;
    }
    let first = backing_index(name, 1);
    st.created.insert(first.clone(), now_ms());
    st.data_streams.insert(
        name.to_owned(),
        DataStream {
            indices: vec![first],
        },
    );
}

fn rollover_stream(st: &mut StubState, name: &str) -> Option<String> {
    let ds = st.data_streams.get_mut(name)?;
    let next = backing_index(name, ds.indices.len() + 1);
    ds.indices.push(next.clone());
    st.created.insert(next.clone(), now_ms());
    Some(next)
}

async fn get_index(State(s): State<Arc<Mutex<StubState>>>, Path(index): Path<String>) -> Response {
    match s.lock().unwrap().indices.contains_key(&index) {
        true => {
            Json(json!({index: {"aliases": {}, "mappings": {}, "settings": {}}})).into_response()
        }
        false => index_missing(&index),
    }
}

async fn put_index(State(s): State<Arc<Mutex<StubState>>>, Path(index): Path<String>) -> Response {
    let mut st = s.lock().unwrap();
    if st.indices.contains_key(&index) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "resource_already_exists_exception", "reason": format!("index [{index}] already exists")}, "status": 400}))).into_response();
    }
    st.indices.insert(index.clone(), Index::default());
    Json(json!({"acknowledged": true, "shards_acknowledged": true, "index": index})).into_response()
}

/// `GET /{indices}/_settings/index.creation_date` for backing indices.
async fn get_settings(
    State(s): State<Arc<Mutex<StubState>>>,
    Path((indices, setting)): Path<(String, String)>,
) -> Response {
    if setting != "index.creation_date" {
        return (StatusCode::BAD_REQUEST, format!("stub: setting {setting}")).into_response();
    }
    let st = s.lock().unwrap();
    let mut out = serde_json::Map::new();
    for index in indices.split(',') {
        let Some(t) = st.created.get(index) else {
            return index_missing(index);
        };
        out.insert(
            index.to_owned(),
            json!({"settings": {"index": {"creation_date": t.to_string()}}}),
        );
    }
    Json(Value::Object(out)).into_response()
}

/// `POST /_mget` with `docs` of `_index` and `_id`: realtime, per concrete index.
async fn mget(State(s): State<Arc<Mutex<StubState>>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let mut st = s.lock().unwrap();
    st.mgets += 1;
    let docs: Vec<Value> = req["docs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let (index, id) = (d["_index"].as_str().unwrap_or(""), d["_id"].as_str().unwrap_or(""));
            match st.indices.get(index) {
                Some(i) => json!({"_index": index, "_id": id, "found": i.docs.contains_key(id)}),
                None => json!({"_index": index, "_id": id, "error": {"type": "index_not_found_exception", "reason": format!("no such index [{index}]")}}),
            }
        })
        .collect();
    Json(json!({"docs": docs})).into_response()
}

async fn put_data_stream(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(name): Path<String>,
) -> Response {
    let mut st = s.lock().unwrap();
    if st.data_streams.contains_key(&name) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "resource_already_exists_exception", "reason": format!("data_stream [{name}] already exists")}, "status": 400}))).into_response();
    }
    if !data_stream_template(&st, &name) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "illegal_argument_exception", "reason": format!("no matching index template found for data stream [{name}]")}, "status": 400}))).into_response();
    }
    create_stream(&mut st, &name);
    Json(json!({"acknowledged": true})).into_response()
}

async fn get_data_stream(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(name): Path<String>,
) -> Response {
    let st = s.lock().unwrap();
    let streams: Vec<Value> = st
        .data_streams
        .iter()
        .filter(|(n, _)| index_matches(&name, n))
        .map(|(n, d)| {
            json!({"name": n, "timestamp_field": {"name": "@timestamp"}, "generation": d.indices.len(),
                   "indices": d.indices.iter().map(|i| json!({"index_name": i})).collect::<Vec<_>>()})
        })
        .collect();
    if streams.is_empty() && !name.contains('*') {
        return index_missing(&name);
    }
    Json(json!({"data_streams": streams})).into_response()
}

async fn rollover(State(s): State<Arc<Mutex<StubState>>>, Path(name): Path<String>) -> Response {
    let mut st = s.lock().unwrap();
    let old = st
        .data_streams
        .get(&name)
        .and_then(|d| d.indices.last().cloned());
    match rollover_stream(&mut st, &name) {
        Some(new) => Json(json!({"acknowledged": true, "shards_acknowledged": true, "old_index": old, "new_index": new, "rolled_over": true, "dry_run": false, "conditions": {}})).into_response(),
        None => index_missing(&name),
    }
}

/// The concrete indices an index expression names: data streams (by name
/// or wildcard) become their backing indices.
fn resolve(st: &StubState, expr: &str) -> Vec<String> {
    let mut out: Vec<String> = st
        .indices
        .keys()
        .filter(|n| !n.starts_with(".ds-") && index_matches(expr, n))
        .cloned()
        .collect();
    for (name, ds) in &st.data_streams {
        if index_matches(expr, name) {
            out.extend(ds.indices.iter().cloned());
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn count(State(s): State<Arc<Mutex<StubState>>>, Path(index): Path<String>) -> Response {
    let st = s.lock().unwrap();
    let names = resolve(&st, &index);
    if names.is_empty() && !st.data_streams.contains_key(&index) {
        return index_missing(&index);
    }
    let n: usize = names
        .iter()
        .filter_map(|n| st.indices.get(n))
        .map(|i| i.docs.len())
        .sum();
    Json(json!({"count": n})).into_response()
}

async fn refresh(Path(_index): Path<String>) -> Json<Value> {
    Json(json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}))
}

async fn get_doc(
    State(s): State<Arc<Mutex<StubState>>>,
    Path((index, id)): Path<(String, String)>,
) -> Response {
    let st = s.lock().unwrap();
    match st.indices.get(&index).and_then(|i| i.docs.get(&id)) {
        Some(d) => {
            Json(json!({"_index": index, "_id": id, "found": true, "_source": d})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"_index": index, "_id": id, "found": false})),
        )
            .into_response(),
    }
}

/// True when `name` matches the index expression `expr`: comma-separated
/// names with `*` wildcards, as a search URL takes them.
fn index_matches(expr: &str, name: &str) -> bool {
    fn glob(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| glob(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && glob(rest, &n[1..]),
        }
    }
    expr.split(',').any(|p| glob(p.as_bytes(), name.as_bytes()))
}

/// A document's value at a dotted `field` path.
fn field<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(doc, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

/// A sort value as Elasticsearch returns it: dates as epoch milliseconds.
fn sort_value(doc: &Value, path: &str) -> Value {
    match field(doc, path) {
        Some(Value::String(s)) if path == "@timestamp" || path == "ingested_at" => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("ES stub: {path} {s:?} is not a date: {e}"));
            json!((t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

/// Orders two sort values ascending; a missing value (null) sorts last.
fn cmp_value(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let num = |v: &Value| v.as_u64().map(i128::from).or(v.as_i64().map(i128::from));
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => a.to_string().cmp(&b.to_string()),
        },
    }
}

/// `_search` over every index `index` names (wildcards, `ignore_unavailable`):
/// `term` and `@timestamp` `range` filters, a `sort` of fields with
/// `order`, `search_after` and `size`, as `/api/events` uses them.
/// Anything else (aggregations, text queries) is refused with 400 rather
/// than answered wrongly.
async fn search(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(index): Path<String>,
    body: Bytes,
) -> Response {
    let unsupported = |what: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"type": "stub_unsupported", "reason": what}, "status": 400})),
        )
            .into_response()
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return unsupported("body is not JSON".into());
    };
    if req.get("aggs").is_some() || req.get("aggregations").is_some() {
        return unsupported("aggregations".into());
    }
    let filters = req["query"]["bool"]["filter"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut sort: Vec<(String, bool)> = Vec::new();
    for entry in req["sort"].as_array().cloned().unwrap_or_default() {
        let Some((name, spec)) = entry.as_object().and_then(|o| o.iter().next()) else {
            return unsupported(format!("sort entry {entry}"));
        };
        sort.push((name.clone(), spec["order"] == "desc"));
    }
    let key_cmp = |a: &[Value], b: &[Value]| {
        sort.iter()
            .zip(a.iter().zip(b))
            .map(|((_, desc), (x, y))| {
                let o = cmp_value(x, y);
                // Missing values stay last in either order.
                if *desc && !x.is_null() && !y.is_null() {
                    o.reverse()
                } else {
                    o
                }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    };
    let st = s.lock().unwrap();
    let mut hits: Vec<(String, String, Value, Vec<Value>)> = Vec::new();
    for name in resolve(&st, &index) {
        let Some(idx) = st.indices.get(&name) else {
            continue;
        };
        for (id, doc) in &idx.docs {
            match filters
                .iter()
                .try_fold(true, |all, f| Ok::<_, String>(all && matches(doc, f)?))
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(what) => return unsupported(what),
            }
            let key: Vec<Value> = sort.iter().map(|(f, _)| sort_value(doc, f)).collect();
            hits.push((name.clone(), id.clone(), doc.clone(), key));
        }
    }
    drop(st);
    hits.sort_by(|a, b| key_cmp(&a.3, &b.3));
    if let Some(after) = req["search_after"].as_array() {
        hits.retain(|h| key_cmp(&h.3, after).is_gt());
    }
    let size = req["size"].as_u64().unwrap_or(10) as usize;
    let hits: Vec<Value> = hits
        .into_iter()
        .take(size)
        .map(|(index, id, doc, key)| {
            json!({"_index": index, "_id": id, "_score": null, "_source": doc, "sort": key})
        })
        .collect();
    Json(json!({"took": 1, "timed_out": false, "hits": {"hits": hits}})).into_response()
}

/// `POST /{index}/_delete_by_query` with `conflicts=proceed`: deletes the
/// documents `query` matches; an externally versioned document leaves a
/// tombstone of its version + 1, as Elasticsearch's internal delete does.
async fn delete_by_query(
    State(s): State<Arc<Mutex<StubState>>>,
    Path(index): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    let mut st = s.lock().unwrap();
    let mut deleted = 0;
    for name in resolve(&st, &index) {
        let Some(idx) = st.indices.get_mut(&name) else {
            continue;
        };
        let mut gone = Vec::new();
        for (id, doc) in &idx.docs {
            match matches(doc, &req["query"]) {
                Ok(true) => gone.push(id.clone()),
                Ok(false) => {}
                Err(what) => return (StatusCode::BAD_REQUEST, what).into_response(),
            }
        }
        for id in gone {
            idx.docs.remove(&id);
            if let Some(v) = idx.versions.get_mut(&id) {
                *v += 1;
            }
            deleted += 1;
        }
    }
    Json(json!({"took": 1, "timed_out": false, "deleted": deleted, "failures": []})).into_response()
}

/// Whether `doc` matches the query clause `q`: `term` (on a `flattened`
/// field's root, any leaf), a numeric or `@timestamp` `range`, `exists`, and `bool` with
/// `filter`, `must`, `must_not`, `should` and `minimum_should_match`; any
/// other clause is an error rather than a wrong answer.
fn matches(doc: &Value, q: &Value) -> Result<bool, String> {
    fn leaves(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(m) => m.values().for_each(|v| leaves(v, out)),
            Value::Array(a) => a.iter().for_each(|v| leaves(v, out)),
            Value::Null => {}
            other => out.push(other.clone()),
        }
    }
    let clauses = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(a) => a.clone(),
            Value::Null => Vec::new(),
            one => vec![one.clone()],
        }
    };
    if let Some(term) = q.get("term").and_then(Value::as_object) {
        for (k, v) in term {
            let ok = match field(doc, k) {
                Some(Value::Object(_)) => {
                    let mut all = Vec::new();
                    leaves(field(doc, k).unwrap(), &mut all);
                    all.contains(v)
                }
                other => other == Some(v),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    } else if let Some((name, range)) = q
        .get("range")
        .and_then(Value::as_object)
        .and_then(|r| r.iter().next())
    {
        // `@timestamp` as epoch ms; other fields as numbers.
        let Some(v) = sort_value(doc, name).as_i64() else {
            return Ok(false);
        };
        let bound = |op: &str| range[op].as_i64();
        Ok(!(bound("gte").is_some_and(|g| v < g)
            || bound("gt").is_some_and(|g| v <= g)
            || bound("lte").is_some_and(|l| v > l)
            || bound("lt").is_some_and(|l| v >= l)))
    } else if let Some(f) = q.get("exists").and_then(|e| e["field"].as_str()) {
        Ok(match field(doc, f) {
            Some(Value::Object(m)) => !m.is_empty(),
            Some(_) => true,
            None => false,
        })
    } else if let Some(b) = q.get("bool") {
        for c in clauses(&b["filter"]).iter().chain(&clauses(&b["must"])) {
            if !matches(doc, c)? {
                return Ok(false);
            }
        }
        for c in &clauses(&b["must_not"]) {
            if matches(doc, c)? {
                return Ok(false);
            }
        }
        let should = clauses(&b["should"]);
        if !should.is_empty() {
            let min = b["minimum_should_match"].as_u64().unwrap_or(1) as usize;
            let mut n = 0;
            for c in &should {
                n += usize::from(matches(doc, c)?);
            }
            return Ok(n >= min);
        }
        Ok(true)
    } else {
        Err(format!("query clause {q}"))
    }
}

fn index_missing(index: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"type": "index_not_found_exception", "reason": format!("no such index [{index}]")}, "status": 404})),
    )
        .into_response()
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

async fn bulk(
    State(s): State<Arc<Mutex<StubState>>>,
    Extension(node): Extension<NodeBulkRequests>,
    headers: HeaderMap,
    wire: Bytes,
) -> Response {
    node.0.fetch_add(1, Ordering::Relaxed);
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = if gzip {
        let mut out = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(&wire[..]).read_to_end(&mut out) {
            return (StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")).into_response();
        }
        Bytes::from(out)
    } else {
        wire.clone()
    };
    let mut st = s.lock().unwrap();
    st.bulk_requests += 1;
    st.gzip_requests += u64::from(gzip);
    st.wire_bytes += wire.len() as u64;
    let now = Instant::now();
    if st.faults.reject_until.is_some_and(|t| now < t) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}, "status": 429})),
        )
            .into_response();
    }
    if st.faults.unavailable_until.is_some_and(|t| now < t) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"type": "cluster_block_exception"}, "status": 503})),
        )
            .into_response();
    }
    if st.faults.max_body_bytes.is_some_and(|max| body.len() > max) {
        st.refused_requests += 1;
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return (StatusCode::BAD_REQUEST, "not utf-8").into_response(),
    };
    // Every line: a `delete` has no document line, so actions are not every other one.
    let poisoned = !st.faults.poisoned_ids.is_empty()
        && text.lines().any(|action| {
            serde_json::from_str::<Value>(action).is_ok_and(|a| {
                a.as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|meta| meta["_id"].as_str())
                    .is_some_and(|id| st.faults.poisoned_ids.contains(id))
            })
        });
    if poisoned {
        st.refused_requests += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"root_cause": [{"type": "mapper_parsing_exception", "reason": "poisoned"}], "type": "mapper_parsing_exception", "reason": "poisoned"}, "status": 400})),
        )
            .into_response();
    }
    let blocked = st.faults.blocked_until.is_some_and(|t| now < t);
    if !text.ends_with('\n') {
        // Elasticsearch requires the body to end with a newline.
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "illegal_argument_exception", "reason": "The bulk request must be terminated by a newline [\\n]"}, "status": 400}))).into_response();
    }
    let mut lines = text.lines();
    let mut items = Vec::new();
    let mut errors = false;
    let started = Instant::now();
    while let Some(action_line) = lines.next() {
        if action_line.trim().is_empty() {
            continue;
        }
        let action: Value = match serde_json::from_str(action_line) {
            Ok(v) => v,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("malformed action line: {e}"),
                )
                    .into_response()
            }
        };
        let Some((op, meta)) = action.as_object().and_then(|o| o.iter().next()) else {
            return (StatusCode::BAD_REQUEST, "empty action").into_response();
        };
        let op = op.clone();
        let index = meta["_index"].as_str().unwrap_or("").to_owned();
        let id = meta["_id"].as_str().unwrap_or("").to_owned();
        // `delete` alone has no document line.
        let source = if op == "delete" {
            Value::Null
        } else {
            let Some(source_line) = lines.next() else {
                return (StatusCode::BAD_REQUEST, "missing source line").into_response();
            };
            match serde_json::from_str(source_line) {
                Ok(v) => v,
                Err(e) => {
                    errors = true;
                    items.push(json!({op.clone(): {"_index": index, "_id": id, "status": 400, "error": {"type": "document_parsing_exception", "reason": format!("failed to parse: {e}")}}}));
                    continue;
                }
            }
        };
        *st.attempts.entry(id.clone()).or_default() += 1;
        st.item_counter += 1;
        let first_attempt = st.attempts[&id] == 1;
        let counter = st.item_counter;
        if let Some(n) = st.faults.item_429_every {
            if first_attempt && counter % n == 0 {
                errors = true;
                items.push(json!({op.clone(): {"_index": index, "_id": id, "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}}}));
                continue;
            }
        }
        if st.faults.refused_item_ids.contains(&id) {
            errors = true;
            items.push(json!({op.clone(): {"_index": index, "_id": id, "status": 400, "error": {"type": "document_parsing_exception", "reason": "stub: refused item"}}}));
            continue;
        }
        if blocked {
            errors = true;
            items.push(json!({op.clone(): {"_index": index, "_id": id, "status": 403, "error": {"type": "cluster_block_exception", "reason": format!("index [{index}] blocked by: [FORBIDDEN/12/index read-only / allow delete (api)];")}}}));
            continue;
        }
        if ["data", "old", "pk"]
            .iter()
            .any(|f| depth(&source[*f]) > 20)
        {
            errors = true;
            items.push(json!({op.clone(): {"_index": index, "_id": id, "status": 400, "error": {"type": "document_parsing_exception", "reason": "[1:2] the provided [flattened] field [data] exceeds the maximum depth limit of [20]"}}}));
            continue;
        }
        // A data stream (existing, or created by this first write) takes
        // `create` only, into its write index.
        let mut target = index.clone();
        if st.data_streams.contains_key(&index) || data_stream_template(&st, &index) {
            if op != "create" {
                errors = true;
                items.push(json!({op.clone(): {"_index": index, "_id": id, "status": 400, "error": {"type": "illegal_argument_exception", "reason": format!("only write ops with an op_type of create are allowed in data streams")}}}));
                continue;
            }
            create_stream(&mut st, &index);
            target = st.data_streams[&index].indices.last().cloned().unwrap();
        }
        let version_type = meta["version_type"].as_str().unwrap_or("internal");
        let version = meta["version"].as_u64();
        let idx = st.indices.entry(target.clone()).or_default();
        if let (Some(v), "external" | "external_gte") = (version, version_type) {
            if let Some(&current) = idx.versions.get(&id) {
                let conflict = if version_type == "external" {
                    current >= v
                } else {
                    current > v
                };
                if conflict {
                    let how = if version_type == "external" {
                        "higher or equal to"
                    } else {
                        "higher than"
                    };
                    errors = true;
                    items.push(json!({op.clone(): {"_index": target, "_id": id, "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, current version [{current}] is {how} the one provided [{v}]")}}}));
                    continue;
                }
            }
        }
        if op == "create" && idx.docs.contains_key(&id) {
            errors = true;
            items.push(json!({"create": {"_index": target, "_id": id, "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists (current version [1])")}}}));
            continue;
        }
        if let Some(v) = version {
            // Kept for deleted documents too (Elasticsearch: for index.gc_deletes).
            idx.versions.insert(id.clone(), v);
        }
        let version = version.unwrap_or(1);
        if op == "delete" {
            // Not an error: the item says `not_found` with 404.
            let (result, status) = match idx.docs.remove(&id) {
                Some(_) => ("deleted", 200),
                None => ("not_found", 404),
            };
            items.push(json!({"delete": {"_index": target, "_id": id, "_version": version, "result": result, "status": status}}));
            continue;
        }
        let existed = idx.docs.insert(id.clone(), source).is_some();
        let status = if existed { 200 } else { 201 };
        items.push(json!({op: {"_index": target, "_id": id, "_version": version, "result": if existed {"updated"} else {"created"}, "status": status}}));
    }
    let took = started.elapsed().as_millis() as u64;
    Json(json!({"took": took, "errors": errors, "items": items})).into_response()
}

/// What a test writes to: the stub, or a real cluster from `CDC_TEST_ES_URL`.
pub struct EsTarget {
    pub url: String,
    pub stub: Option<EsStub>,
    http: reqwest::Client,
}

impl EsTarget {
    /// The stub unless `CDC_TEST_ES_URL` is set.
    pub async fn start() -> EsTarget {
        match std::env::var("CDC_TEST_ES_URL") {
            Ok(url) if !url.is_empty() => EsTarget {
                url: url.trim_end_matches('/').to_owned(),
                stub: None,
                http: reqwest::Client::new(),
            },
            _ => EsTarget::stub().await,
        }
    }

    /// Always the stub (fault-injection tests).
    pub async fn stub() -> EsTarget {
        EsTarget::with_stub(EsStub::start().await)
    }

    /// The stub on `port` (e.g. one a consumer already points at).
    pub async fn stub_on(port: u16) -> EsTarget {
        EsTarget::with_stub(EsStub::start_on(port).await)
    }

    fn with_stub(stub: EsStub) -> EsTarget {
        EsTarget {
            url: stub.url(),
            stub: Some(stub),
            http: reqwest::Client::new(),
        }
    }

    async fn get_json(&self, path: &str) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{}/{path}", self.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        serde_json::from_slice(&resp.bytes().await.ok()?).ok()
    }

    /// Makes every write to `index` fail, item by item, with 403
    /// `cluster_block_exception` for `period`, as a read-only index does: a
    /// fault on the stub; a write block on a real cluster, lifted by a task.
    pub async fn block_writes(&self, index: &str, period: Duration) {
        if let Some(stub) = &self.stub {
            stub.set_faults(Faults {
                blocked_until: Some(Instant::now() + period),
                ..Faults::default()
            });
            return;
        }
        // The block lives on the index, so create it first, with the
        // consumer's template so that its mapping is the usual one.
        let route = cdc_monitor::index_route::IndexRoute::parse(index).unwrap();
        let template = cdc_monitor::sink::elasticsearch::client::index_template(&route);
        self.put(&format!("_index_template/{index}"), &template)
            .await;
        self.put(index, &json!({})).await;
        let block = |on: bool| json!({"index": {"blocks": {"write": on}}});
        self.put(&format!("{index}/_settings"), &block(true)).await;
        let (http, url) = (self.http.clone(), format!("{}/{index}/_settings", self.url));
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            let r = http
                .put(url)
                .header("content-type", "application/json")
                .body(block(false).to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "lifting the write block: {r:?}");
        });
    }

    async fn put(&self, path: &str, body: &Value) {
        let r = self
            .http
            .put(format!("{}/{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "PUT {path}: {r:?}");
    }

    /// Documents in `index` (0 when it does not exist).
    pub async fn count(&self, index: &str) -> u64 {
        let _ = self
            .http
            .post(format!("{}/{index}/_refresh", self.url))
            .send()
            .await;
        self.get_json(&format!("{index}/_count"))
            .await
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0)
    }

    /// One document's `_source`.
    pub async fn doc(&self, index: &str, id: &str) -> Option<Value> {
        self.get_json(&format!("{index}/_doc/{id}"))
            .await
            .map(|v| v["_source"].clone())
    }
}
