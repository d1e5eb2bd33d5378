//! TiCDC open-API v2 client for `changefeed ensure`.
//!
//! Shapes follow TiCDC v8.x, checked against pingcap/tiflow
//! `cdc/api/v2/{api,changefeed,health,model}.go` and `cdc/model/http_model.go`
//! (<https://docs.pingcap.com/tidb/v8.1/ticdc-open-api-v2>):
//! - `GET /api/v2/health` answers 200 `{}` once the cluster has a healthy owner.
//! - `GET /api/v2/changefeeds/{id}` answers 200 with `ChangeFeedInfo`
//!   (`id`, `state`, `error: {addr, code, message}`, `config`, ...).
//! - `POST /api/v2/changefeeds` takes `ChangefeedConfig`
//!   (`changefeed_id`, `sink_uri`, `replica_config`) and answers 200 with
//!   the new `ChangeFeedInfo`.
//! - Errors are `{"error_msg": .., "error_code": "CDC:Err.."}`: 400 for the
//!   codes TiCDC deems bad requests (`CDC:ErrChangeFeedNotExists` among
//!   them), 500 for the rest (`CDC:ErrChangeFeedAlreadyExists` among them).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

use crate::tls::{self, error_chain, TlsFileError};

/// `changefeed ensure` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangefeedArgs {
    /// TiCDC server (open API v2).
    #[arg(long, env = "CDC_TICDC_URL", default_value = "http://ticdc:8300")]
    pub ticdc_url: Url,
    /// Changefeed id.
    #[arg(long, env = "CDC_CHANGEFEED_ID", default_value = "cf-kafka")]
    pub changefeed_id: String,
    /// Sink URI of the changefeed.
    #[arg(
        long,
        env = "CDC_CHANGEFEED_SINK_URI",
        default_value = "kafka://kafka:9092/tidb-cdc?protocol=canal-json&enable-tidb-extension=true&kafka-version=3.7.0&partition-num=3&max-message-bytes=1048576&replication-factor=1"
    )]
    pub sink_uri: String,
    /// Table filter rules, comma-separated.
    #[arg(
        long,
        env = "CDC_CHANGEFEED_RULES",
        default_value = "appdb.*",
        value_delimiter = ','
    )]
    pub rules: Vec<String>,
    /// Seconds to wait for TiCDC to become healthy.
    #[arg(long, env = "CDC_CHANGEFEED_TIMEOUT", default_value = "120", value_parser = parse_secs)]
    pub timeout: Duration,
    /// PEM CA certificate to trust for an https:// TiCDC.
    #[arg(long, env = "CDC_TICDC_CA_FILE", value_name = "FILE")]
    pub ticdc_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for TiCDC's mutual TLS; needs --ticdc-client-key.
    #[arg(long, env = "CDC_TICDC_CLIENT_CERT", value_name = "FILE")]
    pub ticdc_client_cert: Option<PathBuf>,
    /// PEM PKCS#8 private key of --ticdc-client-cert.
    #[arg(long, env = "CDC_TICDC_CLIENT_KEY", value_name = "FILE")]
    pub ticdc_client_key: Option<PathBuf>,
    /// TiCDC basic-auth user (TiCDC's `security.client-user-required`).
    #[arg(long, env = "CDC_TICDC_USERNAME")]
    pub ticdc_username: Option<String>,
    /// TiCDC basic-auth password (secret: prefer --ticdc-password-file).
    #[arg(long, env = "CDC_TICDC_PASSWORD", hide_env_values = true, value_parser = parse_secret)]
    pub ticdc_password: Option<SecretString>,
    /// File holding the TiCDC password (its trailing newline is dropped).
    #[arg(long, env = "CDC_TICDC_PASSWORD_FILE", value_name = "FILE")]
    pub ticdc_password_file: Option<PathBuf>,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

/// Upper bound for one HTTP exchange with TiCDC.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A health poll may run past the deadline by at most this much, so that a
/// zero or nearly spent `--timeout` still gets one real attempt.
const MIN_HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(500);
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// TiCDC's `changeFeedIDMaxLen` (cdc/model/changefeed.go).
const MAX_CHANGEFEED_ID_LEN: usize = 128;
/// How much of a non-JSON error body to quote.
const MAX_QUOTED_BODY: usize = 300;

const ERR_CHANGEFEED_NOT_EXISTS: &str = "CDC:ErrChangeFeedNotExists";
const ERR_CHANGEFEED_ALREADY_EXISTS: &str = "CDC:ErrChangeFeedAlreadyExists";

/// What `ensure` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsureOutcome {
    Created,
    AlreadyRunning,
}

impl fmt::Display for EnsureOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnsureOutcome::Created => "created",
            EnsureOutcome::AlreadyRunning => "already running",
        })
    }
}

/// Why `ensure` failed.
#[derive(Debug, thiserror::Error)]
pub enum TicdcError {
    #[error("invalid --changefeed-id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("invalid --rules {rules:?}: {reason}")]
    InvalidRules { rules: Vec<String>, reason: String },
    // The URI is not echoed: sink URIs can carry passwords.
    #[error("invalid --sink-uri: {reason}")]
    InvalidSinkUri { reason: String },
    #[error("invalid --ticdc-url {url}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    TlsFile(#[from] TlsFileError),
    #[error("{key}: {reason}")]
    Credentials { key: &'static str, reason: String },
    #[error("TiCDC at {url} was not healthy within {timeout:?}; last error: {last_error}")]
    // URLs as strings keep the error small (clippy::result_large_err).
    NotHealthy {
        url: String,
        timeout: Duration,
        last_error: String,
    },
    #[error("changefeed {id} exists but is in state {state:?}, not \"normal\"{}; left as is: fix, then resume or remove it", describe_running_error(.error))]
    NotRunning {
        id: String,
        state: String,
        error: Option<RunningError>,
    },
    #[error("TiCDC refused to create changefeed {id}: HTTP {status}: {api}")]
    CreateRefused {
        id: String,
        status: StatusCode,
        api: ApiError,
    },
    #[error("TiCDC answered {what} with HTTP {status}: {api}")]
    Api {
        what: String,
        status: StatusCode,
        api: ApiError,
    },
    #[error("{what} failed: {detail}")]
    Request { what: String, detail: String },
    #[error("unexpected reply to {what}: {detail}")]
    Decode { what: String, detail: String },
}

fn describe_running_error(error: &Option<RunningError>) -> String {
    match error {
        Some(e) => format!(": TiCDC error {e}"),
        None => String::new(),
    }
}

/// TiCDC's error body (`model.HTTPError`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub error_msg: String,
    #[serde(default)]
    pub error_code: String,
}

impl ApiError {
    /// Reads TiCDC's error JSON, or quotes the body when it is something
    /// else (a proxy's HTML page, an empty 502).
    pub fn from_body(body: &[u8]) -> ApiError {
        match serde_json::from_slice::<ApiError>(body) {
            Ok(e) if !e.error_msg.is_empty() || !e.error_code.is_empty() => e,
            _ => ApiError {
                error_msg: quote_body(body),
                error_code: String::new(),
            },
        }
    }

    /// Whether this is TiCDC's error `code`. The message is checked too
    /// because TiCDC embeds `[CDC:Err..]` in messages of wrapped errors, the
    /// same fallback its own `IsHTTPBadRequestError` uses.
    pub fn is(&self, code: &str) -> bool {
        self.error_code == code || self.error_msg.contains(code)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.error_msg.is_empty(), self.error_code.is_empty()) {
            (false, false) => write!(f, "{} ({})", self.error_msg, self.error_code),
            (false, true) => f.write_str(&self.error_msg),
            (true, false) => f.write_str(&self.error_code),
            (true, true) => f.write_str("no error details"),
        }
    }
}

fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".into();
    }
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The part of TiCDC's `ChangeFeedInfo` that `ensure` reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChangefeedInfo {
    #[serde(default)]
    pub id: String,
    /// `omitempty` in TiCDC: absent while the changefeed is uninitialised.
    #[serde(default)]
    pub state: String,
    /// Only set for states where TiCDC shows it (`shouldShowRunningError`).
    #[serde(default)]
    pub error: Option<RunningError>,
    #[serde(default)]
    pub config: Option<ReplicaConfigInfo>,
    /// The TSO everything before which reached the sink (`doctor`'s lag).
    #[serde(default)]
    pub checkpoint_tso: Option<u64>,
}

/// `ChangeFeedInfo.config`, as far as `ensure` compares it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReplicaConfigInfo {
    #[serde(default)]
    pub filter: Option<FilterInfo>,
}

/// `ReplicaConfig.filter`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterInfo {
    #[serde(default)]
    pub rules: Vec<String>,
}

/// TiCDC's `RunningError`: why a changefeed stopped or is retrying.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RunningError {
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl fmt::Display for RunningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => write!(f, "{}: {}", self.code, self.message)?,
            (true, false) => f.write_str(&self.message)?,
            (false, true) => f.write_str(&self.code)?,
            (true, true) => f.write_str("no details")?,
        }
        if !self.addr.is_empty() {
            write!(f, " (capture {})", self.addr)?;
        }
        Ok(())
    }
}

/// Accepts a changefeed that is replicating, refuses any other state.
///
/// An empty state is TiCDC's `StateUnInitialized`: the owner has not ticked
/// the new changefeed yet, and TiCDC's own list API reports it as "normal".
/// Everything else ("warning", "pending", "failed", "stopped", "finished",
/// "removed", and states newer releases may add) needs a person: `ensure`
/// neither resumes nor recreates.
fn check_state(id: &str, info: &ChangefeedInfo) -> Result<(), TicdcError> {
    match info.state.as_str() {
        "normal" | "" => Ok(()),
        other => Err(TicdcError::NotRunning {
            id: id.to_owned(),
            state: other.to_owned(),
            error: info.error.clone(),
        }),
    }
}

/// `ChangefeedConfig`, with only the fields `ensure` sets.
///
/// TiCDC decodes the body over its default replica config, so fields left
/// out here keep their defaults (and `filter.rules` replaces `*.*`).
#[derive(Debug, Serialize)]
struct CreateChangefeed<'a> {
    changefeed_id: &'a str,
    sink_uri: &'a str,
    replica_config: ReplicaConfig<'a>,
}

#[derive(Debug, Serialize)]
struct ReplicaConfig<'a> {
    filter: FilterConfig<'a>,
}

#[derive(Debug, Serialize)]
struct FilterConfig<'a> {
    rules: &'a [String],
}

/// Checked `changefeed ensure` inputs.
#[derive(Debug)]
struct Wanted {
    id: String,
    sink_uri: String,
    rules: Vec<String>,
}

impl Wanted {
    fn from_args(args: &ChangefeedArgs) -> Result<Wanted, TicdcError> {
        validate_id(&args.changefeed_id)?;
        let rules = validate_rules(&args.rules)?;
        validate_sink_uri(&args.sink_uri)?;
        Ok(Wanted {
            id: args.changefeed_id.clone(),
            sink_uri: args.sink_uri.clone(),
            rules,
        })
    }

    fn create_body(&self) -> CreateChangefeed<'_> {
        CreateChangefeed {
            changefeed_id: &self.id,
            sink_uri: &self.sink_uri,
            replica_config: ReplicaConfig {
                filter: FilterConfig { rules: &self.rules },
            },
        }
    }
}

/// TiCDC's `^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$`, at most 128 bytes; checked here
/// so a typo fails before waiting on TiCDC.
fn validate_id(id: &str) -> Result<(), TicdcError> {
    let invalid = |reason| TicdcError::InvalidId {
        id: id.to_owned(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if id.len() > MAX_CHANGEFEED_ID_LEN {
        return Err(invalid("TiCDC allows at most 128 characters"));
    }
    let words_ok = id
        .split('-')
        .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !words_ok {
        return Err(invalid(
            "TiCDC allows letters and digits in words joined by single '-'",
        ));
    }
    Ok(())
}

/// Trims each rule (`a, b` is a natural way to write a list) and refuses
/// empty ones: an empty filter would make TiCDC replicate everything.
fn validate_rules(rules: &[String]) -> Result<Vec<String>, TicdcError> {
    let trimmed: Vec<String> = rules.iter().map(|r| r.trim().to_owned()).collect();
    let invalid = |reason: String| TicdcError::InvalidRules {
        rules: rules.to_vec(),
        reason,
    };
    if trimmed.is_empty() || trimmed.iter().all(|r| r.is_empty()) {
        return Err(invalid("at least one table filter rule is needed".into()));
    }
    if let Some(pos) = trimmed.iter().position(|r| r.is_empty()) {
        return Err(invalid(format!("rule {} is empty", pos + 1)));
    }
    Ok(trimmed)
}

fn validate_sink_uri(uri: &str) -> Result<(), TicdcError> {
    if uri.trim().is_empty() {
        return Err(TicdcError::InvalidSinkUri {
            reason: "must not be empty".into(),
        });
    }
    Url::parse(uri).map_err(|e| TicdcError::InvalidSinkUri {
        reason: e.to_string(),
    })?;
    Ok(())
}

/// The sink for logs: scheme, host and path only, since the user info and
/// the query (`sasl-password=`, ...) may hold secrets.
fn sink_for_log(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(port) => format!("{}://{host}:{port}{}", u.scheme(), u.path()),
                None => format!("{}://{host}{}", u.scheme(), u.path()),
            }
        }
        Err(_) => "<unparseable>".into(),
    }
}

/// `url` without its user name and password, for logs and requests (the
/// credentials travel in the Authorization header instead).
fn without_userinfo(url: &Url) -> Url {
    let mut url = url.clone();
    // Err only for URLs that cannot have a host, which `new` refuses anyway.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// Basic-auth credentials: `--ticdc-username` with `--ticdc-password` or
/// `--ticdc-password-file`, or the user info of `--ticdc-url`.
fn credentials(args: &ChangefeedArgs) -> Result<Option<(String, SecretString)>, TicdcError> {
    let password = match (&args.ticdc_password, &args.ticdc_password_file) {
        (Some(_), Some(_)) => {
            return Err(TicdcError::Credentials {
                key: "--ticdc-password-file",
                reason: "--ticdc-password (CDC_TICDC_PASSWORD) is set too: set one of them".into(),
            })
        }
        (Some(p), None) => Some(p.clone()),
        (None, Some(path)) => {
            let failed = |reason: String| TicdcError::Credentials {
                key: "--ticdc-password-file",
                reason: format!("{}: {reason}", path.display()),
            };
            let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.trim().is_empty() {
                return Err(failed("the file is empty".into()));
            }
            Some(SecretString::from(text.to_owned()))
        }
        (None, None) => None,
    };
    let url = &args.ticdc_url;
    let in_url = !url.username().is_empty() || url.password().is_some();
    match (&args.ticdc_username, password) {
        (Some(_), _) | (None, Some(_)) if in_url => Err(TicdcError::Credentials {
            key: "--ticdc-username",
            reason: "--ticdc-url carries a user and password too: set one of them".into(),
        }),
        (Some(user), Some(password)) => Ok(Some((user.clone(), password))),
        (Some(_), None) => Err(TicdcError::Credentials {
            key: "--ticdc-username",
            reason: "needs --ticdc-password or --ticdc-password-file".into(),
        }),
        (None, Some(_)) => Err(TicdcError::Credentials {
            key: "--ticdc-password",
            reason: "needs --ticdc-username".into(),
        }),
        (None, None) if in_url => {
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| TicdcError::Credentials {
                    key: "--ticdc-url",
                    reason: "its user info is not valid UTF-8 once percent-decoded".into(),
                })
            };
            Ok(Some((
                decode(url.username())?,
                SecretString::from(decode(url.password().unwrap_or(""))?),
            )))
        }
        (None, None) => Ok(None),
    }
}

/// `%XX` escapes of a URL's user info, decoded.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// How a create request ended.
enum Created {
    Now,
    ByOther,
}

/// The few open-API v2 calls `ensure` makes.
struct TicdcApi {
    http: reqwest::Client,
    base: Url,
}

impl TicdcApi {
    fn new(args: &ChangefeedArgs) -> Result<TicdcApi, TicdcError> {
        // The base is what logs and errors show: never its user info.
        let base = without_userinfo(&args.ticdc_url);
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(TicdcError::InvalidUrl {
                url: base.to_string(),
                reason: "expected an http:// or https:// URL",
            });
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some((user, password)) = credentials(args)? {
            if base.scheme() == "http" {
                warn!(url = %base, "TiCDC basic-auth password sent over plain http: use https");
            }
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose_secret()));
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Basic {token}")).map_err(
                |_| TicdcError::Credentials {
                    key: "--ticdc-username",
                    reason: "not a valid header value".into(),
                },
            )?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &args.ticdc_ca_file {
            builder = builder.add_root_certificate(tls::root_certificate("--ticdc-ca-file", ca)?);
        }
        match (&args.ticdc_client_cert, &args.ticdc_client_key) {
            (Some(cert), Some(key)) => {
                builder = builder.identity(tls::client_identity(
                    ["--ticdc-client-cert", "--ticdc-client-key"],
                    cert,
                    key,
                )?);
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(TicdcError::Credentials {
                    key: "--ticdc-client-cert",
                    reason: "mutual TLS needs both --ticdc-client-cert and --ticdc-client-key"
                        .into(),
                })
            }
        }
        let http = builder.build().map_err(TicdcError::Client)?;
        Ok(TicdcApi { http, base })
    }

    /// `{base}/api/v2/{segments}`, keeping any path prefix of the base (a
    /// reverse proxy) and percent-encoding each segment.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Err only for cannot-be-a-base URLs, which `new` refused.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v2"]).extend(segments);
        }
        url
    }

    /// Polls the health endpoint until it answers 200 or `timeout` passes.
    async fn wait_healthy(&self, timeout: Duration) -> Result<(), TicdcError> {
        let url = self.endpoint(&["health"]);
        let deadline = Instant::now() + timeout;
        let mut interval = FIRST_POLL_INTERVAL;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            // A hung TiCDC must not stretch the wait far past `timeout`.
            let request_timeout = REQUEST_TIMEOUT.min(remaining.max(MIN_HEALTH_REQUEST_TIMEOUT));
            let last_error = match self
                .http
                .get(url.clone())
                .timeout(request_timeout)
                .send()
                .await
            {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    info!(url = %self.base, attempt, "TiCDC is healthy");
                    return Ok(());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    format!("HTTP {status}: {}", ApiError::from_body(&body))
                }
                Err(e) => error_chain(&e.without_url()),
            };
            debug!(url = %url, attempt, error = %last_error, "TiCDC not healthy yet");
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(TicdcError::NotHealthy {
                    url: self.base.to_string(),
                    timeout,
                    last_error,
                });
            }
            tokio::time::sleep(interval.min(remaining)).await;
            interval = (interval * 2).min(MAX_POLL_INTERVAL);
        }
    }

    /// The changefeed, or `None` when TiCDC says it does not exist.
    async fn get_changefeed(&self, id: &str) -> Result<Option<ChangefeedInfo>, TicdcError> {
        let url = self.endpoint(&["changefeeds", id]);
        let what = format!("GET {url}");
        let (status, body) = self.exchange(&what, self.http.get(url.clone())).await?;
        if status.is_success() {
            let info = serde_json::from_slice(&body).map_err(|e| TicdcError::Decode {
                what,
                detail: e.to_string(),
            })?;
            return Ok(Some(info));
        }
        let api = ApiError::from_body(&body);
        // TiCDC answers 400; 404 is accepted for proxies and future releases,
        // but only with TiCDC's code: a bare 404 means a wrong URL.
        let absent_status = matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND);
        if absent_status && api.is(ERR_CHANGEFEED_NOT_EXISTS) {
            return Ok(None);
        }
        Err(TicdcError::Api { what, status, api })
    }

    async fn create_changefeed(&self, wanted: &Wanted) -> Result<Created, TicdcError> {
        let url = self.endpoint(&["changefeeds"]);
        let what = format!("POST {url}");
        let body = serde_json::to_vec(&wanted.create_body()).map_err(|e| TicdcError::Decode {
            what: what.clone(),
            detail: e.to_string(),
        })?;
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let (status, body) = self.exchange(&what, request).await?;
        if status.is_success() {
            return Ok(Created::Now);
        }
        let api = ApiError::from_body(&body);
        if api.is(ERR_CHANGEFEED_ALREADY_EXISTS) {
            return Ok(Created::ByOther);
        }
        Err(TicdcError::CreateRefused {
            id: wanted.id.clone(),
            status,
            api,
        })
    }

    async fn exchange(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes), TicdcError> {
        let failed = |e: reqwest::Error| TicdcError::Request {
            what: what.to_owned(),
            detail: error_chain(&e.without_url()),
        };
        let resp = request.send().await.map_err(failed)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(failed)?;
        debug!(request = what, %status, "TiCDC answered");
        Ok((status, body))
    }
}

/// The changefeed as TiCDC reports it, or `None` when it does not exist
/// (what `doctor` checks).
pub async fn changefeed(args: &ChangefeedArgs) -> Result<Option<ChangefeedInfo>, TicdcError> {
    TicdcApi::new(args)?
        .get_changefeed(&args.changefeed_id)
        .await
}

/// Waits for TiCDC, then creates the changefeed unless it exists and is normal.
pub async fn ensure(args: &ChangefeedArgs) -> Result<EnsureOutcome, TicdcError> {
    let wanted = Wanted::from_args(args)?;
    let api = TicdcApi::new(args)?;
    api.wait_healthy(args.timeout).await?;

    if let Some(info) = api.get_changefeed(&wanted.id).await? {
        check_state(&wanted.id, &info)?;
        warn_if_rules_differ(&wanted, &info);
        info!(changefeed = %wanted.id, state = %info.state, "changefeed already running");
        return Ok(EnsureOutcome::AlreadyRunning);
    }

    match api.create_changefeed(&wanted).await? {
        Created::Now => {
            info!(
                changefeed = %wanted.id,
                sink = %sink_for_log(&wanted.sink_uri),
                rules = ?wanted.rules,
                "changefeed created"
            );
            Ok(EnsureOutcome::Created)
        }
        Created::ByOther => {
            // Another `ensure` (a restarted job, a second replica) won the
            // race; its changefeed counts only if it is healthy too.
            info!(changefeed = %wanted.id, "changefeed created concurrently; checking it");
            match api.get_changefeed(&wanted.id).await? {
                Some(info) => {
                    check_state(&wanted.id, &info)?;
                    warn_if_rules_differ(&wanted, &info);
                    info!(changefeed = %wanted.id, state = %info.state, "changefeed already running");
                    Ok(EnsureOutcome::AlreadyRunning)
                }
                None => Err(TicdcError::Decode {
                    what: format!("POST /api/v2/changefeeds for {}", wanted.id),
                    detail: "TiCDC said the changefeed exists, then that it does not".into(),
                }),
            }
        }
    }
}

/// An existing changefeed is left alone, but a silent mismatch with the
/// configured rules would look like lost events later.
fn warn_if_rules_differ(wanted: &Wanted, info: &ChangefeedInfo) {
    let Some(existing) = info.config.as_ref().and_then(|c| c.filter.as_ref()) else {
        return;
    };
    if existing.rules != wanted.rules {
        warn!(
            changefeed = %wanted.id,
            existing_rules = ?existing.rules,
            wanted_rules = ?wanted.rules,
            "changefeed exists with other filter rules; leaving it unchanged"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ChangefeedArgs {
        ChangefeedArgs {
            ticdc_url: Url::parse("http://ticdc:8300").unwrap(),
            changefeed_id: "cf-kafka".into(),
            sink_uri: "kafka://kafka:9092/tidb-cdc?protocol=canal-json".into(),
            rules: vec!["appdb.*".into()],
            timeout: Duration::from_secs(120),
            ticdc_ca_file: None,
            ticdc_client_cert: None,
            ticdc_client_key: None,
            ticdc_username: None,
            ticdc_password: None,
            ticdc_password_file: None,
        }
    }

    fn args_for(url: &str) -> ChangefeedArgs {
        ChangefeedArgs {
            ticdc_url: Url::parse(url).unwrap(),
            ..args()
        }
    }

    #[test]
    fn credentials_in_the_url_become_basic_auth_and_leave_the_logged_url() {
        let a = args_for("https://ci%40corp:p%3Ass@ticdc:8300/");
        let (user, password) = credentials(&a).unwrap().unwrap();
        assert_eq!(user, "ci@corp");
        assert_eq!(password.expose_secret(), "p:ss");
        let api = TicdcApi::new(&a).unwrap();
        assert_eq!(api.base.as_str(), "https://ticdc:8300/");
        assert!(!api.endpoint(&["health"]).as_str().contains("p%3Ass"));
    }

    #[test]
    fn basic_auth_needs_both_halves_and_one_source() {
        let mut a = args();
        a.ticdc_username = Some("ci".into());
        assert!(matches!(
            credentials(&a),
            Err(TicdcError::Credentials {
                key: "--ticdc-username",
                ..
            })
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        a.ticdc_password_file = Some(file.clone());
        let (_, password) = credentials(&a).unwrap().unwrap();
        assert_eq!(password.expose_secret(), "from-file");
        a.ticdc_password = Some(SecretString::from("flag".to_owned()));
        let err = credentials(&a).unwrap_err().to_string();
        assert!(
            err.contains("--ticdc-password-file") && !err.contains("flag"),
            "{err}"
        );
        let mut a = args_for("http://u:secret@ticdc:8300");
        a.ticdc_username = Some("ci".into());
        a.ticdc_password_file = Some(file);
        let err = credentials(&a).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        let mut a = args();
        a.ticdc_client_cert = Some(PathBuf::from("/nonexistent"));
        assert!(matches!(
            TicdcApi::new(&a).err(),
            Some(TicdcError::Credentials { .. })
        ));
    }

    fn info(json: &str) -> ChangefeedInfo {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn normal_changefeed_is_accepted() {
        let i = info(r#"{"id":"cf-kafka","state":"normal","checkpoint_ts":1}"#);
        assert!(check_state("cf-kafka", &i).is_ok());
    }

    #[test]
    fn uninitialised_changefeed_without_state_is_accepted() {
        let i = info(r#"{"id":"cf-kafka","checkpoint_ts":0}"#);
        assert!(check_state("cf-kafka", &i).is_ok());
    }

    #[test]
    fn failed_changefeed_is_refused_with_ticdcs_error() {
        let i = info(
            r#"{"id":"cf-kafka","state":"failed","error":{"addr":"ticdc:8300",
            "code":"CDC:ErrKafkaNewProducer","message":"new kafka producer: brokers not reachable"}}"#,
        );
        let err = check_state("cf-kafka", &i).unwrap_err().to_string();
        assert!(err.contains("\"failed\""), "{err}");
        assert!(err.contains("CDC:ErrKafkaNewProducer"), "{err}");
        assert!(err.contains("brokers not reachable"), "{err}");
        assert!(err.contains("capture ticdc:8300"), "{err}");
    }

    #[test]
    fn every_state_but_normal_is_refused() {
        for state in [
            "warning", "pending", "failed", "error", "stopped", "removed", "finished",
        ] {
            let i = info(&format!(r#"{{"id":"x","state":"{state}"}}"#));
            match check_state("x", &i) {
                Err(TicdcError::NotRunning { state: s, .. }) => assert_eq!(s, state),
                other => panic!("{state}: {other:?}"),
            }
        }
    }

    #[test]
    fn stopped_changefeed_without_error_still_names_its_state() {
        let err = check_state("x", &info(r#"{"id":"x","state":"stopped"}"#))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("changefeed x exists but is in state \"stopped\", not \"normal\";"),
            "{err}"
        );
    }

    #[test]
    fn ticdc_error_body_is_parsed() {
        let e = ApiError::from_body(
            br#"{"error_msg":"[CDC:ErrChangeFeedNotExists]changefeed not exists, default/cf-kafka","error_code":"CDC:ErrChangeFeedNotExists"}"#,
        );
        assert_eq!(e.error_code, "CDC:ErrChangeFeedNotExists");
        assert!(e.is(ERR_CHANGEFEED_NOT_EXISTS));
        assert!(!e.is(ERR_CHANGEFEED_ALREADY_EXISTS));
        assert_eq!(
            e.to_string(),
            "[CDC:ErrChangeFeedNotExists]changefeed not exists, default/cf-kafka (CDC:ErrChangeFeedNotExists)"
        );
    }

    #[test]
    fn error_code_embedded_only_in_the_message_still_matches() {
        let e = ApiError::from_body(
            br#"{"error_msg":"[CDC:ErrChangeFeedAlreadyExists]changefeed already exists, cf","error_code":""}"#,
        );
        assert!(e.is(ERR_CHANGEFEED_ALREADY_EXISTS));
    }

    #[test]
    fn non_json_error_body_is_quoted_and_truncated() {
        let e = ApiError::from_body(b"<html>502 Bad Gateway</html>\n");
        assert_eq!(e.error_msg, "<html>502 Bad Gateway</html>");
        assert!(e.error_code.is_empty());
        assert!(!e.is(ERR_CHANGEFEED_NOT_EXISTS));

        let long = "é".repeat(1000);
        let e = ApiError::from_body(long.as_bytes());
        assert_eq!(e.error_msg.chars().count(), MAX_QUOTED_BODY + 3);

        assert_eq!(ApiError::from_body(b"").error_msg, "empty body");
        assert_eq!(ApiError::from_body(b"{}").error_msg, "{}");
    }

    #[test]
    fn create_body_has_ticdc_field_names() {
        let mut a = args();
        a.rules = vec!["appdb.*".into(), " other.t1 ".into()];
        let wanted = Wanted::from_args(&a).unwrap();
        let body = serde_json::to_value(wanted.create_body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "changefeed_id": "cf-kafka",
                "sink_uri": "kafka://kafka:9092/tidb-cdc?protocol=canal-json",
                "replica_config": {"filter": {"rules": ["appdb.*", "other.t1"]}}
            })
        );
    }

    #[test]
    fn changefeed_ids_follow_ticdcs_pattern() {
        for ok in ["cf-kafka", "a", "A1-b2-C3", &"x".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-cf",
            "cf-",
            "cf--kafka",
            "cf_kafka",
            "cf kafka",
            "cf/kafka",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate_id(bad), Err(TicdcError::InvalidId { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_rules_are_refused() {
        for rules in [vec![], vec!["".to_string()], vec![" ".into(), "".into()]] {
            assert!(
                matches!(validate_rules(&rules), Err(TicdcError::InvalidRules { .. })),
                "{rules:?}"
            );
        }
        let err = validate_rules(&["a.*".into(), " ".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rule 2 is empty"), "{err}");
    }

    #[test]
    fn empty_or_unparseable_sink_uri_is_refused() {
        let mut a = args();
        a.sink_uri = " ".into();
        assert!(matches!(
            Wanted::from_args(&a),
            Err(TicdcError::InvalidSinkUri { .. })
        ));
        a.sink_uri = "kafka:// bad host".into();
        assert!(matches!(
            Wanted::from_args(&a),
            Err(TicdcError::InvalidSinkUri { .. })
        ));
    }

    #[test]
    fn endpoints_keep_the_base_path_and_encode_the_id() {
        let api = TicdcApi::new(&args_for("http://ticdc:8300")).unwrap();
        assert_eq!(
            api.endpoint(&["changefeeds", "cf-kafka"]).as_str(),
            "http://ticdc:8300/api/v2/changefeeds/cf-kafka"
        );
        let api = TicdcApi::new(&args_for("https://proxy/ticdc/")).unwrap();
        assert_eq!(
            api.endpoint(&["health"]).as_str(),
            "https://proxy/ticdc/api/v2/health"
        );
        assert_eq!(
            api.endpoint(&["changefeeds", "a/b?c"]).as_str(),
            "https://proxy/ticdc/api/v2/changefeeds/a%2Fb%3Fc"
        );
    }

    #[test]
    fn non_http_ticdc_url_is_refused() {
        let err = TicdcApi::new(&args_for("ftp://ticdc")).err();
        assert!(matches!(err, Some(TicdcError::InvalidUrl { .. })));
    }

    #[test]
    fn sink_is_logged_without_credentials_or_query() {
        assert_eq!(
            sink_for_log("kafka://user:secret@kafka:9092/t?sasl-password=secret"),
            "kafka://kafka:9092/t"
        );
    }

    #[test]
    fn not_healthy_error_names_url_timeout_and_cause() {
        let err = TicdcError::NotHealthy {
            url: "http://127.0.0.1:9/".into(),
            timeout: Duration::from_secs(2),
            last_error: "Connection refused".into(),
        }
        .to_string();
        assert_eq!(
            err,
            "TiCDC at http://127.0.0.1:9/ was not healthy within 2s; last error: Connection refused"
        );
    }
}
