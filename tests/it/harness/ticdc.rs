//! An in-test HTTP server that follows TiCDC's open API v2 (v8.x, as in
//! pingcap/tiflow `cdc/api/v2`) for what `changefeed ensure` calls:
//! - `GET /api/v2/health`: 200 `{}`, or 500 `CDC:ErrClusterIsUnhealthy`
//!   for the first N polls or forever;
//! - `GET /api/v2/changefeeds/{id}`: 200 `ChangeFeedInfo`, 400
//!   `CDC:ErrChangeFeedNotExists` when absent, 400 `CDC:ErrAPIInvalidParam`
//!   for an id TiCDC would refuse;
//! - `POST /api/v2/changefeeds`: stores the changefeed as "normal" and
//!   answers its `ChangeFeedInfo`; 500 `CDC:ErrChangeFeedAlreadyExists` when
//!   it exists; or a configured refusal.
//!
//! Errors are TiCDC's `{"error_msg", "error_code"}`. Create bodies are
//! recorded for assertions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use url::Url;

/// A changefeed the stub knows.
#[derive(Debug, Clone)]
pub struct Changefeed {
    pub id: String,
    pub sink_uri: String,
    pub rules: Vec<String>,
    /// TiCDC's `FeedState`: "normal", "failed", "stopped", "warning", ...
    pub state: String,
    /// `RunningError` as (code, message).
    pub error: Option<(String, String)>,
}

impl Changefeed {
    /// A replicating changefeed.
    pub fn normal(id: &str) -> Changefeed {
        Changefeed {
            id: id.into(),
            sink_uri: "kafka://kafka:9092/tidb-cdc?protocol=canal-json".into(),
            rules: vec!["appdb.*".into()],
            state: "normal".into(),
            error: None,
        }
    }

    /// A changefeed TiCDC gave up on, with its error.
    pub fn failed(id: &str, code: &str, message: &str) -> Changefeed {
        Changefeed {
            state: "failed".into(),
            error: Some((code.into(), message.into())),
            ..Changefeed::normal(id)
        }
    }
}

/// How TiCDC refuses a create.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

/// How the stub behaves.
#[derive(Debug, Clone, Default)]
pub struct TicdcOptions {
    /// Answer the first this many health polls with 500.
    pub unhealthy_polls: usize,
    /// Answer every health poll with 500.
    pub never_healthy: bool,
    /// Changefeeds that exist from the start.
    pub changefeeds: Vec<Changefeed>,
    /// Refuse every create this way.
    pub refuse_create: Option<Refusal>,
    /// Lose the create race: store the changefeed as another creator would
    /// have, then answer `CDC:ErrChangeFeedAlreadyExists`.
    pub lose_create_race: bool,
    /// Require HTTP basic auth with this user and password (TiCDC's open
    /// API with `security` on): 401 otherwise.
    pub basic_auth: Option<(String, String)>,
    /// Authorization headers that were refused.
    pub refused_auth: usize,
}

#[derive(Default)]
struct StubState {
    options: TicdcOptions,
    changefeeds: HashMap<String, Changefeed>,
    health_polls: usize,
    creates: Vec<Value>,
}

type Shared = Arc<Mutex<StubState>>;

/// The running stub; stops on drop.
pub struct TicdcStub {
    /// Base URL, as passed to `--ticdc-url`.
    pub url: Url,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl TicdcStub {
    /// Starts on a free loopback port, on the caller's runtime.
    pub async fn start(options: TicdcOptions) -> TicdcStub {
        let changefeeds = options
            .changefeeds
            .iter()
            .map(|c| (c.id.clone(), c.clone()))
            .collect();
        let state = Arc::new(Mutex::new(StubState {
            options,
            changefeeds,
            ..StubState::default()
        }));
        let app = Router::new()
            .route("/api/v2/health", get(health))
            .route("/api/v2/changefeeds", post(create))
            .route("/api/v2/changefeeds/{id}", get(get_changefeed))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                require_auth,
            ))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        TicdcStub {
            url: Url::parse(&format!("http://{addr}")).unwrap(),
            state,
            server,
        }
    }

    /// Bodies of every create request, in order.
    pub fn create_requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().creates.clone()
    }

    /// How many requests were refused for their credentials.
    pub fn refused_auth(&self) -> usize {
        self.state.lock().unwrap().options.refused_auth
    }

    /// How many health polls arrived.
    pub fn health_polls(&self) -> usize {
        self.state.lock().unwrap().health_polls
    }

    /// The stored changefeed, if any.
    pub fn changefeed(&self, id: &str) -> Option<Changefeed> {
        self.state.lock().unwrap().changefeeds.get(id).cloned()
    }
}

impl Drop for TicdcStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Basic auth, when the options ask for it.
async fn require_auth(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use base64::Engine;
    let expected = state.lock().unwrap().options.basic_auth.clone();
    if let Some((user, password)) = expected {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(want.as_str()) {
            state.lock().unwrap().options.refused_auth += 1;
            return ticdc_error(
                StatusCode::UNAUTHORIZED,
                "CDC:ErrCredentialNotFound",
                "credential not found",
            );
        }
    }
    next.run(req).await
}

/// TiCDC's error body with a `[code]message` text, as `errors.Normalize` renders it.
fn ticdc_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error_msg": format!("[{code}]{message}"), "error_code": code});
    (status, Json(body)).into_response()
}

/// TiCDC's `changeFeedIDRe`: `^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$`, up to 128.
fn valid_id(id: &str) -> bool {
    id.len() <= 128
        && id
            .split('-')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `ChangeFeedInfo` as `toAPIModel` renders it: the sink URI masked, the
/// error shown only where `shouldShowRunningError` allows.
fn info_json(cf: &Changefeed) -> Value {
    let sink_uri = match Url::parse(&cf.sink_uri) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("xxxxx"));
            u.to_string()
        }
        _ => cf.sink_uri.clone(),
    };
    let mut info = json!({
        "upstream_id": 7_412_345_678_901_234_567_u64,
        "namespace": "default",
        "id": cf.id,
        "sink_uri": sink_uri,
        "create_time": "2025-01-02T03:04:05.000000006Z",
        "start_ts": 455_000_000_000_000_000_u64,
        "config": {
            "memory_quota": 1_073_741_824_u64,
            "case_sensitive": false,
            "force_replicate": false,
            "filter": {"rules": cf.rules},
        },
        "state": cf.state,
        "creator_version": "v8.5.1",
        "resolved_ts": 455_000_000_000_000_001_u64,
        "checkpoint_ts": 455_000_000_000_000_000_u64,
        "checkpoint_time": "2025-01-02 03:04:05.000",
    });
    let shows_error = !matches!(
        cf.state.as_str(),
        "normal" | "stopped" | "finished" | "removed"
    );
    if let (Some((code, message)), true) = (&cf.error, shows_error) {
        info["error"] = json!({
            "time": "2025-01-02T03:05:00Z",
            "addr": "127.0.0.1:8300",
            "code": code,
            "message": message,
        });
    }
    info
}

async fn health(State(state): State<Shared>) -> Response {
    let mut s = state.lock().unwrap();
    s.health_polls += 1;
    if s.options.never_healthy || s.health_polls <= s.options.unhealthy_polls {
        return ticdc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CDC:ErrClusterIsUnhealthy",
            "TiCDC cluster is unhealthy",
        );
    }
    (StatusCode::OK, Json(json!({}))).into_response()
}

async fn get_changefeed(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return ticdc_error(
            StatusCode::BAD_REQUEST,
            "CDC:ErrAPIInvalidParam",
            &format!("invalid changefeed_id: {id}"),
        );
    }
    match state.lock().unwrap().changefeeds.get(&id) {
        Some(cf) => (StatusCode::OK, Json(info_json(cf))).into_response(),
        None => ticdc_error(
            StatusCode::BAD_REQUEST,
            "CDC:ErrChangeFeedNotExists",
            &format!("changefeed not exists, default/{id}"),
        ),
    }
}

async fn create(State(state): State<Shared>, body: Bytes) -> Response {
    let Ok(cfg) = serde_json::from_slice::<Value>(&body) else {
        return ticdc_error(
            StatusCode::BAD_REQUEST,
            "CDC:ErrAPIInvalidParam",
            "invalid api parameter",
        );
    };
    let mut s = state.lock().unwrap();
    s.creates.push(cfg.clone());
    if let Some(r) = s.options.refuse_create.clone() {
        return ticdc_error(r.status, &r.code, &r.message);
    }
    let id = cfg["changefeed_id"].as_str().unwrap_or_default().to_owned();
    if !valid_id(&id) {
        return ticdc_error(
            StatusCode::BAD_REQUEST,
            "CDC:ErrAPIInvalidParam",
            &format!("invalid changefeed_id: {id}"),
        );
    }
    let rules = match cfg["replica_config"]["filter"]["rules"].as_array() {
        Some(rules) => rules
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect(),
        // TiCDC's default filter.
        None => vec!["*.*".to_owned()],
    };
    let cf = Changefeed {
        id: id.clone(),
        sink_uri: cfg["sink_uri"].as_str().unwrap_or_default().to_owned(),
        rules,
        state: "normal".into(),
        error: None,
    };
    if s.options.lose_create_race {
        s.changefeeds.insert(id.clone(), cf.clone());
    }
    if s.changefeeds.contains_key(&id) {
        // Not in TiCDC's bad-request list, hence 500.
        return ticdc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CDC:ErrChangeFeedAlreadyExists",
            &format!("changefeed already exists, {id}"),
        );
    }
    let info = info_json(&cf);
    s.changefeeds.insert(id, cf);
    (StatusCode::OK, Json(info)).into_response()
}
