//! `/api/events` and `/api/stats`: the stored changes, searched and counted;
//! `/api/rows` and `/api/rows/history`: one row's current state and its changes.
//!
//! Parameters are parsed here, once, into an `EventFilter`; the backends
//! only see valid filters. Every error answers JSON `{"error": "..."}`:
//! 400 names the parameter and its value, 404 means no searchable sink is
//! configured, 503 means the store did not answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::warn;

use crate::event::Op;
use crate::http::HttpState;
use crate::metrics::SnapshotStatus;
use crate::sink::query::{EventFilter, QueryError, Stats, MAX_LIMIT};
use crate::sink::state::RowKey;
use crate::sink::Sink;

/// Events per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;
/// The stats window and rate bucket when not given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_BUCKET: Duration = Duration::from_secs(10);
/// The longest full-text query.
pub const MAX_Q_BYTES: usize = 512;
/// Most rate buckets one stats call may ask for.
pub const MAX_BUCKETS: u64 = 360;
/// The longest stats window (a year): beyond it the rate has no meaning,
/// and millisecond arithmetic on it stays far from overflowing.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);
/// A query slower than this answers 503 rather than hold the dashboard's poll.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `/api/stats`: the sink's `Stats` and the current worst lag.
#[derive(Debug, Serialize)]
struct StatsReply {
    #[serde(flatten)]
    stats: Stats,
    lag_seconds: f64,
    window_seconds: u64,
    /// While an initial snapshot runs: where it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotStatus>,
}

/// An API error answered as `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({"error": self.1}));
        (self.0, [(header::CACHE_CONTROL, "no-store")], body).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::Invalid { .. } => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            QueryError::Unavailable(_) => {
                warn!(error = %e, "query failed");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

fn backend(s: &HttpState) -> Result<&Arc<dyn Sink>, ApiError> {
    s.query.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no searchable sink configured".into(),
        )
    })
}

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, QueryError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::from(QueryError::Unavailable(format!(
            "no answer within {QUERY_TIMEOUT:?}"
        )))),
    }
}

fn fresh<T: Serialize>(body: T) -> Response {
    // Always current: a cached page would hide new changes.
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// `GET /api/events?database=&table=&op=&q=&since=&until=&limit=&cursor=`
pub async fn events(State(s): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let run = async {
        let filter = parse_filter(query.as_deref().unwrap_or(""))?;
        let q = backend(&s)?;
        bounded(q.events(&filter)).await
    };
    match run.await {
        Ok(page) => fresh(page),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/stats?window=&bucket=`
pub async fn stats(State(s): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let run = async {
        let (window, bucket) = parse_window(query.as_deref().unwrap_or(""))?;
        let q = backend(&s)?;
        let stats = bounded(q.stats(window, bucket)).await?;
        Ok::<_, ApiError>(StatsReply {
            stats,
            lag_seconds: s.metrics.max_lag_seconds(),
            window_seconds: window.as_secs(),
            snapshot: s.metrics.snapshot_status(),
        })
    };
    match run.await {
        Ok(reply) => fresh(reply),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/rows?database=&table=&pk=`: the row's current state (a
/// tombstone once deleted), 404 when no change of it is stored.
pub async fn rows(State(s): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let run = async {
        let (keys, _) = parse_row(query.as_deref().unwrap_or(""))?;
        let q = backend(&s)?;
        for key in &keys {
            if let Some(state) = bounded(q.row(key)).await? {
                return Ok(state);
            }
        }
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no stored change of {}.{} with key {}",
                keys[0].database, keys[0].table, keys[0].values
            ),
        ))
    };
    match run.await {
        Ok(state) => fresh(state),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/rows/history?database=&table=&pk=&limit=`: the row's stored
/// events, oldest first (the newest `limit`, default 50).
pub async fn row_history(State(s): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let run = async {
        let (keys, limit) = parse_row(query.as_deref().unwrap_or(""))?;
        let q = backend(&s)?;
        let mut page = bounded(q.row_history(&keys[0], limit)).await?;
        for key in &keys[1..] {
            if !page.events.is_empty() {
                break;
            }
            page = bounded(q.row_history(key, limit)).await?;
        }
        Ok::<_, ApiError>(page)
    };
    match run.await {
        Ok(page) => fresh(page),
        Err(e) => e.into_response(),
    }
}

/// Parses `database`, `table`, `pk` and `limit` of a row query into the
/// keys to try, in order. `pk` is a JSON array of the key's values in key
/// order (`["42"]`; the whole row for a keyless table), a JSON object of
/// key columns (`{"id":"42"}`, in key order), or a bare value for a
/// one-column key: `42` is tried as the string `"42"` (as captured values
/// are rendered), then as the number.
pub fn parse_row(query: &str) -> Result<(Vec<RowKey>, usize), QueryError> {
    let (mut database, mut table, mut pk, mut limit) = (None, None, None, DEFAULT_LIMIT);
    for (k, v) in params(query)? {
        match k.as_str() {
            "database" => database = Some(v),
            "table" => table = Some(v),
            "pk" => pk = Some(v),
            "limit" => limit = parse_limit(&v)?,
            _ => {}
        }
    }
    let missing = |param| QueryError::Invalid {
        param,
        reason: "is required".into(),
    };
    let database = database.ok_or_else(|| missing("database"))?;
    let table = table.ok_or_else(|| missing("table"))?;
    let pk = pk.ok_or_else(|| missing("pk"))?;
    let raw = |values: Vec<&RawValue>| {
        let parts: Vec<&str> = values.iter().map(|v| v.get()).collect();
        format!("[{}]", parts.join(","))
    };
    let trimmed = pk.trim();
    let candidates = if trimmed.starts_with('[') {
        let values: Vec<&RawValue> = serde_json::from_str(trimmed)
            .map_err(|e| invalid("pk", &pk, &format!("is not a JSON array: {e}")))?;
        vec![raw(values)]
    } else if trimmed.starts_with('{') {
        let row: crate::event::Row = serde_json::from_str(trimmed)
            .map_err(|e| invalid("pk", &pk, &format!("is not a JSON object: {e}")))?;
        vec![raw(row.0.iter().map(|(_, v)| v.as_ref()).collect())]
    } else {
        let text = serde_json::Value::String(pk.clone()).to_string();
        let mut c = vec![format!("[{text}]")];
        if serde_json::from_str::<serde_json::Value>(trimmed).is_ok_and(|v| !v.is_string()) {
            c.push(format!("[{trimmed}]"));
        }
        c
    };
    let keys = candidates
        .into_iter()
        .map(|values| RowKey {
            database: database.clone(),
            table: table.clone(),
            values,
        })
        .collect();
    Ok((keys, limit))
}

fn parse_limit(v: &str) -> Result<usize, QueryError> {
    v.trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            invalid(
                "limit",
                v,
                &format!("is not a whole number from 1 to {MAX_LIMIT}"),
            )
        })
}

/// `POST /api/snapshot?tables=appdb.users,shop.*`: re-reads those captured
/// tables while streaming goes on; 202 with what it reads once it started.
/// A browser request from another origin is refused (403): a page on some
/// other site must not be able to make this instance load the database.
pub async fn snapshot(
    State(s): State<HttpState>,
    headers: axum::http::HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| url::Url::parse(o).ok())
                .map(|u| match u.port() {
                    Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                    None => u.host_str().unwrap_or_default().to_owned(),
                });
            if origin_host.as_deref() != host {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "a snapshot is requested from this instance's own origin or without one".into(),
                ));
            }
        }
        let mut tables = None;
        for (k, v) in params(query.as_deref().unwrap_or(""))? {
            if k == "tables" {
                tables = Some(v);
            }
        }
        let tables = tables.ok_or(QueryError::Invalid {
            param: "tables",
            reason: "is required: database.table globs, comma-separated".into(),
        })?;
        let filter = crate::config::TableFilter::parse_list(&tables)
            .map_err(|why| invalid("tables", &tables, &why))?;
        let control = s.snapshot.as_ref().ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                "this source takes no on-demand snapshot (the binlog source does)".into(),
            )
        })?;
        control
            .request(filter)
            .await
            .map_err(|why| ApiError(StatusCode::CONFLICT, why))
    };
    match run.await {
        Ok(started) => (StatusCode::ACCEPTED, fresh(started)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/checkpoint`: `{"tso": N}`, the TiDB TSO up to which the sink
/// holds every change (Kafka source), or `{"tso": null}` before one is
/// known; `cdc-monitor reconcile --url` reads TiDB as of it.
pub async fn checkpoint(State(s): State<HttpState>) -> Response {
    let tso = s.checkpoint.as_ref().and_then(|read| read());
    fresh(crate::control::CheckpointTso { tso })
}

fn invalid(param: &'static str, value: &str, why: &str) -> QueryError {
    QueryError::Invalid {
        param,
        reason: format!("{value:?} {why}"),
    }
}

/// The non-empty parameters of a query string; an empty value (an empty
/// form field) counts as absent, a repeated parameter is an error.
fn params(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if v.trim().is_empty() {
            continue;
        }
        if seen.iter().any(|(name, _)| *name == k) {
            let param = known(&k).unwrap_or("query");
            return Err(invalid(param, &v, "is given twice"));
        }
        seen.push((k.into_owned(), v.into_owned()));
    }
    Ok(seen)
}

/// The static name of a known parameter (for `QueryError::Invalid`).
fn known(name: &str) -> Option<&'static str> {
    [
        "database", "table", "op", "q", "since", "until", "limit", "cursor", "window", "bucket",
        "pk", "tables",
    ]
    .into_iter()
    .find(|k| *k == name)
}

/// Parses the `/api/events` parameters; unknown parameters are ignored.
pub fn parse_filter(query: &str) -> Result<EventFilter, QueryError> {
    let mut f = EventFilter {
        limit: DEFAULT_LIMIT,
        ..EventFilter::default()
    };
    for (k, v) in params(query)? {
        match k.as_str() {
            "database" => f.database = Some(v),
            "table" => f.table = Some(v),
            "op" => f.op = Some(parse_op(&v)?),
            "q" if v.len() > MAX_Q_BYTES => {
                let head: String = v.chars().take(16).collect();
                return Err(invalid("q", &head, "(and more) is longer than 512 bytes"));
            }
            "q" => f.q = Some(v),
            "since" => f.since_ms = Some(parse_time("since", &v)?),
            "until" => f.until_ms = Some(parse_time("until", &v)?),
            "limit" => f.limit = parse_limit(&v)?,
            "cursor" => f.cursor = Some(v),
            _ => {}
        }
    }
    if let (Some(since), Some(until)) = (f.since_ms, f.until_ms) {
        if since > until {
            return Err(QueryError::Invalid {
                param: "since",
                reason: format!("{since} is after until {until}"),
            });
        }
    }
    Ok(f)
}

fn parse_op(v: &str) -> Result<Op, QueryError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "insert" => Ok(Op::Insert),
        "update" => Ok(Op::Update),
        "delete" => Ok(Op::Delete),
        "ddl" => Ok(Op::Ddl),
        "snapshot" => Ok(Op::Snapshot),
        _ => Err(invalid(
            "op",
            v,
            "is not one of insert, update, delete, ddl, snapshot",
        )),
    }
}

/// RFC 3339 (`2024-05-01T12:00:00Z`) or Unix milliseconds, as Unix milliseconds.
fn parse_time(param: &'static str, v: &str) -> Result<i64, QueryError> {
    let t = v.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(t, &Rfc3339)
        .map(|d| (d.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            invalid(
                param,
                v,
                "is neither RFC 3339 (2024-05-01T12:00:00Z) nor Unix milliseconds",
            )
        })
}

/// Parses the `/api/stats` parameters: `window` and `bucket` as durations (`5m`, `10s`).
pub fn parse_window(query: &str) -> Result<(Duration, Duration), QueryError> {
    let (mut window, mut bucket) = (DEFAULT_WINDOW, DEFAULT_BUCKET);
    for (k, v) in params(query)? {
        let param = match k.as_str() {
            "window" => "window",
            "bucket" => "bucket",
            _ => continue,
        };
        let d = crate::config::parse_duration(&v).map_err(|e| invalid(param, &v, &e))?;
        if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
            return Err(invalid(param, &v, "must be whole seconds, at least 1s"));
        }
        if d > MAX_WINDOW {
            return Err(invalid(param, &v, "must be at most 366 days"));
        }
        if param == "window" {
            window = d;
        } else {
            bucket = d;
        }
    }
    if bucket > window || window.as_secs() / bucket.as_secs() > MAX_BUCKETS {
        return Err(QueryError::Invalid {
            param: "bucket",
            reason: format!(
                "{bucket:?} must fit the window {window:?} at most {MAX_BUCKETS} times and at least once"
            ),
        });
    }
    Ok((window, bucket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_param(r: Result<EventFilter, QueryError>) -> (&'static str, String) {
        match r {
            Err(QueryError::Invalid { param, reason }) => (param, reason),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_row_key_is_an_array_an_object_or_a_bare_value() {
        let values = |q: &str| -> Vec<String> {
            let (keys, _) = parse_row(q).unwrap();
            assert!(keys
                .iter()
                .all(|k| k.database == "appdb" && k.table == "users"));
            keys.into_iter().map(|k| k.values).collect()
        };
        let q = "database=appdb&table=users&pk=";
        assert_eq!(values(&format!("{q}42")), [r#"["42"]"#, "[42]"]);
        assert_eq!(values(&format!("{q}alice")), [r#"["alice"]"#]);
        assert_eq!(
            values(&format!("{q}%5B%221%22%2C%20null%5D")),
            [r#"["1",null]"#]
        );
        assert_eq!(
            values(&format!("{q}%7B%22a%22%3A%221%22%2C%22b%22%3A2%7D")),
            [r#"["1",2]"#]
        );
        let (_, limit) = parse_row(&format!("{q}1&limit=7")).unwrap();
        assert_eq!(limit, 7);
        for (query, param) in [
            ("table=users&pk=1", "database"),
            ("database=appdb&pk=1", "table"),
            ("database=appdb&table=users", "pk"),
            ("database=appdb&table=users&pk=%5Bnope", "pk"),
            ("database=appdb&table=users&pk=1&limit=0", "limit"),
        ] {
            match parse_row(query) {
                Err(QueryError::Invalid { param: p, .. }) => assert_eq!(p, param, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_parameters_is_the_newest_page_of_fifty() {
        let f = parse_filter("").unwrap();
        assert_eq!(
            f,
            EventFilter {
                limit: 50,
                ..EventFilter::default()
            }
        );
    }

    #[test]
    fn every_parameter_is_parsed_and_empty_ones_are_absent() {
        let f = parse_filter(
            "database=appdb&table=users&op=UPDATE&q=alice+smith&since=2023-11-14T22:13:20Z&until=1700000060000&limit=1000&cursor=abc&unknown=1&tag=",
        )
        .unwrap();
        assert_eq!(f.database.as_deref(), Some("appdb"));
        assert_eq!(f.table.as_deref(), Some("users"));
        assert_eq!(f.op, Some(Op::Update));
        assert_eq!(f.q.as_deref(), Some("alice smith"));
        assert_eq!(f.since_ms, Some(1_700_000_000_000));
        assert_eq!(f.until_ms, Some(1_700_000_060_000));
        assert_eq!(f.limit, MAX_LIMIT);
        assert_eq!(f.cursor.as_deref(), Some("abc"));
        let blank = parse_filter("database=&op=&q=&limit=").unwrap();
        assert_eq!(blank.database, None);
        assert_eq!(blank.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn rfc3339_offsets_and_fractions_become_milliseconds() {
        let f = parse_filter("since=2023-11-14T23:13:20.123%2B01:00").unwrap();
        assert_eq!(f.since_ms, Some(1_700_000_000_123));
    }

    #[test]
    fn invalid_parameters_name_the_parameter_and_value() {
        for (query, param, value) in [
            ("limit=0", "limit", "\"0\""),
            ("limit=1001", "limit", "\"1001\""),
            ("limit=ten", "limit", "\"ten\""),
            ("op=merge", "op", "\"merge\""),
            ("since=yesterday", "since", "\"yesterday\""),
            (
                "until=2024-13-01T00:00:00Z",
                "until",
                "\"2024-13-01T00:00:00Z\"",
            ),
            ("table=a&table=b", "table", "\"b\""),
        ] {
            let (p, reason) = invalid_param(parse_filter(query));
            assert_eq!(p, param, "{query}");
            assert!(reason.contains(value), "{query}: {reason}");
            let message = QueryError::Invalid { param: p, reason }.to_string();
            assert!(
                message.starts_with(&format!("invalid {param}: ")),
                "{message}"
            );
        }
        let (p, _) = invalid_param(parse_filter("since=2000&until=1000"));
        assert_eq!(p, "since");
    }

    #[test]
    fn stats_window_defaults_to_five_minutes_in_ten_second_buckets() {
        assert_eq!(
            parse_window("").unwrap(),
            (Duration::from_secs(300), Duration::from_secs(10))
        );
        assert_eq!(
            parse_window("window=1h&bucket=1m").unwrap(),
            (Duration::from_secs(3600), Duration::from_secs(60))
        );
        for bad in [
            "window=0s",
            "bucket=500ms",
            "bucket=10m",
            "window=1d&bucket=1s",
            "window=soon",
        ] {
            assert!(
                matches!(parse_window(bad), Err(QueryError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn overflowing_numbers_are_a_400_naming_the_parameter() {
        for (query, param) in [
            ("window=99999999999999999999", "window"),
            ("bucket=99999999999999999999", "bucket"),
            ("window=400d", "window"),
            ("bucket=1e300", "bucket"),
        ] {
            match parse_window(query) {
                Err(QueryError::Invalid { param: p, .. }) => assert_eq!(p, param, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
        let long = format!("q={}", "é".repeat(300));
        match parse_filter(&long) {
            Err(QueryError::Invalid { param, reason }) => {
                assert_eq!(param, "q");
                assert!(reason.len() < 120, "{reason}");
            }
            other => panic!("{other:?}"),
        }
        for query in ["since=99999999999999999999", "limit=99999999999999999999"] {
            assert!(parse_filter(query).is_err(), "{query}");
        }
    }

    proptest::proptest! {
        /// Whatever the query string, parsing answers Ok or Invalid: never a panic.
        #[test]
        fn any_query_string_parses_or_is_refused(query in "\\PC{0,64}") {
            let _ = parse_filter(&query);
            let _ = parse_window(&query);
        }

        #[test]
        fn any_parameter_value_parses_or_is_refused(
            name in proptest::sample::select(vec![
                "database", "table", "op", "q", "since", "until", "limit", "cursor", "window", "bucket",
            ]),
            value in "[-+.0-9a-zA-Z:%]{0,40}",
        ) {
            let query = format!("{name}={value}");
            let _ = parse_filter(&query);
            let _ = parse_window(&query);
        }
    }
}
