//! The dashboard at `/` and the API under `/api/`, seen from a real browser.
//!
//! `dashboard_follows_kafka_changes_in_the_embedded_store` runs the product
//! end to end (Kafka source, SQLite store) and checks the page as a user
//! would; the page checks live in `Dashboard` so other sources can reuse
//! them. The fixture tests serve the real page over a canned API, to check
//! rendering (escaping, lag colour, shares) without a pipeline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use cdc_monitor::canal::{decode, Decoded};
use cdc_monitor::config::{EsCompression, EsConfig, PipelineConfig, StoreConfig};
use cdc_monitor::event::SourcePosition;
use cdc_monitor::http::access::Access;
use cdc_monitor::http::health::Readiness;
use cdc_monitor::http::{self, HttpState};
use cdc_monitor::metrics::Metrics;
use cdc_monitor::sink::elasticsearch::ElasticsearchSink;
use cdc_monitor::sink::sqlite::SqliteSink;
use cdc_monitor::sink::{Sink, WriteBatch};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::harness::app::InProcessApp;
use crate::harness::browser::Browser;
use crate::harness::canal::{expected_id, message, op_counts};
use crate::harness::consumer::{Consumer, Pipeline};
use crate::harness::kafka::broker;
use crate::harness::{eventually, unique};

// ------------------------------------------------------------ page checks

/// One row of an event table as the page shows it.
#[derive(Debug, Clone)]
pub struct ShownRow {
    pub id: String,
    pub op: String,
    pub table: String,
    pub pk: String,
    pub values: String,
}

/// The dashboard open in a browser, and what a user can read and do there.
pub struct Dashboard {
    pub browser: Browser,
}

const READ_ROWS: &str = r#"
    const rows = document.querySelectorAll(arguments[0] + ' tbody tr');
    return [...rows].map((r) => ({
        id: r.dataset.id || '',
        op: r.dataset.op || '',
        table: r.querySelector('.c-table').textContent,
        pk: r.querySelector('.c-pk').textContent,
        values: r.querySelector('.c-values').textContent,
    }));
"#;

impl Dashboard {
    /// Opens `base_url` (`http://host:port`) in a window tall enough for
    /// the whole page in one screenshot.
    pub async fn open(base_url: &str) -> Dashboard {
        let browser = Browser::start(1440, 2200).await;
        browser.open(&format!("{base_url}/")).await;
        let d = Dashboard { browser };
        assert_eq!(d.browser.client.title().await.unwrap(), "cdc-monitor");
        d
    }

    async fn rows(&self, table_selector: &str) -> Vec<ShownRow> {
        let v = self
            .browser
            .eval(READ_ROWS, vec![json!(table_selector)])
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| ShownRow {
                id: r["id"].as_str().unwrap_or_default().to_owned(),
                op: r["op"].as_str().unwrap_or_default().to_owned(),
                table: r["table"].as_str().unwrap_or_default().to_owned(),
                pk: r["pk"].as_str().unwrap_or_default().to_owned(),
                values: r["values"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// The rows of the live table, newest first.
    pub async fn live_rows(&self) -> Vec<ShownRow> {
        self.rows("#live-table").await
    }

    /// Waits until a live row's values contain `text`; how long that took.
    pub async fn wait_for_live_row(&self, text: &str, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self
                .live_rows()
                .await
                .iter()
                .any(|r| r.values.contains(text))
            {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Clicks the key of the newest live row whose values contain `text`
    /// and returns the row history the page then shows: per change its op
    /// and `(column, before, after)` as displayed.
    pub async fn open_history(&self, text: &str) -> Vec<(String, Vec<(String, String, String)>)> {
        let clicked = self
            .browser
            .eval(
                "const row = [...document.querySelectorAll('#live-table tbody tr')]
                    .find((tr) => tr.querySelector('.c-values').textContent.includes(arguments[0]));
                 if (!row) return false;
                 row.querySelector('button.row-link').click();
                 return true;",
                vec![json!(text)],
            )
            .await;
        assert_eq!(clicked, json!(true), "no live row shows {text:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self
                .browser
                .eval(
                    "const state = document.getElementById('history-state').textContent;
                     if (state === '' || state === 'Loading…') return null;
                     return [...document.querySelectorAll('#history-table > tbody > tr')].map((tr) => ({
                       op: tr.dataset.op,
                       cols: [...tr.querySelectorAll('table.side-by-side tbody tr')].map((c) =>
                         [c.dataset.column, c.querySelector('td.before').textContent,
                          c.querySelector('td.after').textContent]),
                     }));",
                    vec![],
                )
                .await;
            if let Some(changes) = v.as_array() {
                return changes
                    .iter()
                    .map(|c| {
                        let cols = serde_json::from_value(c["cols"].clone()).unwrap();
                        (c["op"].as_str().unwrap_or_default().to_owned(), cols)
                    })
                    .collect();
            }
            assert!(Instant::now() < deadline, "the row history never loaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A number shown in a KPI box (`total-value`, `count-insert`, `lag-value`…).
    pub async fn kpi(&self, id: &str) -> Option<f64> {
        let v = self
            .browser
            .eval(
                "return document.getElementById(arguments[0]).dataset.value;",
                vec![json!(id)],
            )
            .await;
        v.as_str().and_then(|s| s.parse().ok())
    }

    /// Waits until the stored-events total shown is at least `n`.
    pub async fn wait_for_total(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.kpi("total-value").await.unwrap_or(0.0) >= n as f64 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The share of `op` in the pie chart (0 when it has no slice).
    pub async fn pie_share(&self, op: &str) -> f64 {
        let v = self
            .browser
            .eval(
                "const s = document.querySelector(`#op-pie .slice[data-op=\"${arguments[0]}\"]`); \
                 return s ? s.dataset.share : '0';",
                vec![json!(op)],
            )
            .await;
        v.as_str().unwrap().parse().unwrap()
    }

    /// The percentage the pie's legend prints for `op`, e.g. `62.5 %`.
    pub async fn legend_text(&self, op: &str) -> String {
        self.browser
            .eval(
                "const li = document.querySelector(`#op-legend li[data-op=\"${arguments[0]}\"]`); \
                 return li ? li.textContent : '';",
                vec![json!(op)],
            )
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The tables drawn in the events/s chart.
    pub async fn rate_series(&self) -> Vec<String> {
        let v = self
            .browser
            .eval(
                "return [...document.querySelectorAll('#rate-chart .series[data-table]')].map((p) => p.dataset.table);",
                vec![],
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    /// Types `q` into the search box (other filters cleared), submits, and
    /// returns the result rows once the search has answered.
    pub async fn search(&self, q: &str) -> Vec<ShownRow> {
        use fantoccini::Locator;
        let c = &self.browser.client;
        c.find(Locator::Id("search-reset"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let input = c.find(Locator::Id("q")).await.unwrap();
        input.send_keys(q).await.unwrap();
        c.find(Locator::Id("search-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .browser
                .eval(
                    "return document.getElementById('search-status').textContent;",
                    vec![],
                )
                .await;
            let status = status.as_str().unwrap_or_default().to_owned();
            if !status.is_empty() && status != "Searching…" {
                break;
            }
            assert!(Instant::now() < deadline, "search for {q:?} did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.rows("#search-results").await
    }

    /// The search status line (`3 changes.`, `No matching changes.`, an error).
    pub async fn search_status(&self) -> String {
        self.browser
            .eval(
                "return document.getElementById('search-status').textContent;",
                vec![],
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether the lag box is red.
    pub async fn lag_is_red(&self) -> bool {
        self.browser
            .eval(
                "return document.getElementById('lag').classList.contains('bad');",
                vec![],
            )
            .await
            .as_bool()
            .unwrap()
    }

    /// The banner's text (empty when hidden).
    pub async fn banner(&self) -> String {
        self.browser
            .eval(
                "const b = document.getElementById('banner'); return b.hidden ? '' : b.textContent;",
                vec![],
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Scrolls to the top and saves `target/test-artifacts/NAME`.
    pub async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        self.browser
            .eval("window.scrollTo(0, 0); return true;", vec![])
            .await;
        // Let the arrival highlight fade so the picture shows the steady state.
        tokio::time::sleep(Duration::from_millis(1700)).await;
        self.browser.screenshot(name).await
    }

    /// Ends the browser session.
    pub async fn close(self) {
        self.browser.close().await;
    }
}

// ------------------------------------------------------------ canal-json

/// Commit times for generated changes: now, and distinct TSOs.
fn commit_ts() -> (i64, u64) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (ms, ((ms as u64) << 18) + n)
}

/// A TiCDC canal-json row change of `appdb.<table>`, committed now.
pub fn row_change(kind: &str, table: &str, id: u64, name: &str, old_name: Option<&str>) -> Vec<u8> {
    let (ms, ts) = commit_ts();
    let row = json!({"id": id.to_string(), "name": name, "email": format!("{name}@example.com"), "note": null});
    let old = match old_name {
        Some(o) => json!([{"name": o}]),
        None => Value::Null,
    };
    serde_json::to_vec(&json!({
        "id": 0, "database": "appdb", "table": table, "pkNames": ["id"], "isDdl": false,
        "type": kind, "es": ms, "ts": ms, "sql": "",
        "sqlType": {"id": -5, "name": 12, "email": 12, "note": 12},
        "mysqlType": {"id": "bigint", "name": "varchar", "email": "varchar", "note": "varchar"},
        "old": old, "data": [row], "_tidb": {"commitTs": ts}
    }))
    .unwrap()
}

/// A TiCDC canal-json DDL of `appdb.<table>`, committed now.
pub fn ddl_change(table: &str, sql: &str) -> Vec<u8> {
    let (ms, ts) = commit_ts();
    serde_json::to_vec(&json!({
        "id": 0, "database": "appdb", "table": table, "pkNames": null, "isDdl": true,
        "type": "ALTER", "es": ms, "ts": ms, "sql": sql, "sqlType": null, "mysqlType": null,
        "data": null, "old": null, "_tidb": {"commitTs": ts}
    }))
    .unwrap()
}

/// A word no other row contains (the stores tokenise on punctuation).
fn unique_word(prefix: &str) -> String {
    unique(prefix)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

// ------------------------------------------------------------ end to end

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_kafka_changes_in_the_embedded_store() {
    let broker = broker();
    let p = Pipeline::new("dash", &broker.bootstrap, "", 1);
    broker.create_topic(&p.topic, 1).await;
    broker.create_topic(&p.dlq, 1).await;
    let data_dir = tempfile::tempdir().unwrap();
    let env = p.store_env(data_dir.path());

    // A first mix of changes: 6 inserts, 2 updates, 1 delete, 1 DDL.
    let mut first = Vec::new();
    for id in 1..=6u64 {
        let table = if id % 2 == 0 { "orders" } else { "users" };
        first.push(row_change(
            "INSERT",
            table,
            id,
            &format!("person{id}"),
            None,
        ));
    }
    first.push(row_change(
        "UPDATE",
        "users",
        1,
        "renamed1",
        Some("person1"),
    ));
    first.push(row_change(
        "UPDATE",
        "users",
        3,
        "renamed3",
        Some("person3"),
    ));
    first.push(row_change("DELETE", "orders", 2, "person2", None));
    first.push(ddl_change(
        "users",
        "ALTER TABLE appdb.users ADD COLUMN age INT",
    ));
    let initial = first.len() as u64;
    broker.produce(&p.topic, 1, first).await;

    let consumer = InProcessApp::spawn(&env).await;
    consumer.wait_healthy().await;
    let base = format!("http://{}", consumer.http());
    let page = Dashboard::open(&base).await;
    assert!(
        page.wait_for_total(initial, Duration::from_secs(60)).await,
        "the dashboard never showed {initial} events (banner: {:?}); log:\n{}",
        page.banner().await,
        consumer.log_tail()
    );
    assert!(page.live_rows().await.len() >= initial as usize);

    // A new insert shows up in the live table within 3 s.
    let marker = unique_word("quokka");
    broker
        .produce(
            &p.topic,
            1,
            [row_change("INSERT", "users", 100, &marker, None)],
        )
        .await;
    let shown = page
        .wait_for_live_row(&marker, Duration::from_secs(3))
        .await;
    assert!(
        shown.is_some(),
        "insert of {marker} not shown within 3 s; rows: {:?}; log:\n{}",
        page.live_rows().await,
        consumer.log_tail()
    );
    let row = page
        .live_rows()
        .await
        .into_iter()
        .find(|r| r.values.contains(&marker))
        .unwrap();
    assert_eq!(row.op, "insert");
    assert_eq!(row.table, "appdb.users");
    assert_eq!(row.pk, "id=100");

    // More inserts raise the insert share of the pie.
    let before = page.pie_share("insert").await;
    assert!(before > 0.0 && before < 1.0, "insert share {before}");
    let more: Vec<Vec<u8>> = (200..210u64)
        .map(|id| row_change("INSERT", "orders", id, &format!("bulk{id}"), None))
        .collect();
    broker.produce(&p.topic, 1, more).await;
    let risen = eventually(Duration::from_secs(10), || async {
        page.pie_share("insert").await > before + 0.05
    })
    .await;
    assert!(
        risen,
        "insert share stayed at {} (was {before})",
        page.pie_share("insert").await
    );
    assert!(page.legend_text("insert").await.contains('%'));
    let mut charted = page.rate_series().await;
    charted.sort();
    assert_eq!(charted, ["appdb.orders", "appdb.users"]);

    // A search for a value of one row finds exactly that row.
    let found = page.search(&marker).await;
    assert_eq!(
        found.len(),
        1,
        "search {marker}: {found:?} ({})",
        page.search_status().await
    );
    assert!(found[0].values.contains(&marker));
    assert_eq!(found[0].pk, "id=100");
    let nothing = page.search(&unique_word("absent")).await;
    assert!(nothing.is_empty());
    assert_eq!(page.search_status().await, "No matching changes.");
    // Leave the page showing the useful search, for the screenshot.
    page.search(&marker).await;

    let shot = page.screenshot("dashboard.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_row_inserted_into_mariadb_within_three_seconds() {
    let db = crate::harness::mariadb::MariaDb::start().await;
    let d = db.create_database("dash").await;
    db.exec(&format!(
        "CREATE TABLE {d}.users (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(64));
         INSERT INTO {d}.users (name) VALUES ('first'), ('second');
         UPDATE {d}.users SET name = 'second!' WHERE id = 2;
         DELETE FROM {d}.users WHERE id = 1;"
    ))
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let env = db.capture_env(&format!("{d}.*"), data_dir.path());
    let capture = InProcessApp::spawn(&env).await;
    capture.wait_healthy().await;
    let page = Dashboard::open(&format!("http://{}", capture.http())).await;
    // CREATE DATABASE, CREATE TABLE, 2 inserts, 1 update, 1 delete.
    assert!(
        page.wait_for_total(6, Duration::from_secs(30)).await,
        "the dashboard never showed 6 events; log:\n{}",
        capture.log_tail()
    );
    let before = page.pie_share("insert").await;

    let marker = unique_word("wombat");
    let inserted = Instant::now();
    db.exec(&format!("INSERT INTO {d}.users (name) VALUES ('{marker}')"))
        .await;
    let shown = page
        .wait_for_live_row(&marker, Duration::from_secs(3))
        .await;
    assert!(
        shown.is_some(),
        "insert of {marker} not shown within 3 s; rows: {:?}; log:\n{}",
        page.live_rows().await,
        capture.log_tail()
    );
    eprintln!("MariaDB insert shown after {:?}", inserted.elapsed());
    let risen = eventually(Duration::from_secs(5), || async {
        page.pie_share("insert").await > before
    })
    .await;
    assert!(risen, "insert share stayed at {before}");
    let found = page.search(&marker).await;
    assert_eq!(found.len(), 1, "search {marker}: {found:?}");
    assert_eq!(found[0].op, "insert");
    assert_eq!(found[0].table, format!("{d}.users"));

    // The row's history, opened from the live table: its insert, then the
    // update with the old and the new value side by side.
    let renamed = unique_word("numbat");
    db.exec(&format!(
        "UPDATE {d}.users SET name = '{renamed}' WHERE name = '{marker}'"
    ))
    .await;
    assert!(page
        .wait_for_live_row(&renamed, Duration::from_secs(5))
        .await
        .is_some());
    let history = page.open_history(&renamed).await;
    let ops: Vec<&str> = history.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(ops, ["insert", "update"], "{history:?}");
    let name = history[1].1.iter().find(|(c, _, _)| c == "name");
    assert_eq!(
        name,
        Some(&("name".to_owned(), marker.clone(), renamed.clone())),
        "{history:?}"
    );
    let shot = page.screenshot("dashboard-history.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    page.close().await;
}

// ------------------------------------------------------------ fixture API

/// A canned `/api/events` and `/api/stats` behind the real page.
#[derive(Default)]
struct Fixture {
    /// Newest first.
    events: Vec<Value>,
    lag_seconds: f64,
    /// `/api/stats`' `snapshot`, while one runs.
    snapshot: Option<Value>,
}

type Shared = Arc<Mutex<Fixture>>;

fn fixture_event(id: &str, op: &str, table: &str, data: Value, old: Value) -> Value {
    json!({
        "id": id, "@timestamp": "2024-05-01T12:00:00.000Z", "database": "appdb", "table": table,
        "op": op, "pk": {"id": data["id"].clone()}, "data": data, "old": old,
        "commit_ts": 449_000_000_000_000_000u64, "ingested_at": "2024-05-01T12:00:00.010Z"
    })
}

async fn fixture_events(State(f): State<Shared>, RawQuery(query): RawQuery) -> Json<Value> {
    let q = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.into_owned());
    let f = f.lock().unwrap();
    let events: Vec<Value> = f
        .events
        .iter()
        .filter(|e| {
            q.as_ref()
                .is_none_or(|q| e.to_string().contains(q.as_str()))
        })
        .cloned()
        .collect();
    Json(json!({"events": events, "next_cursor": null}))
}

async fn fixture_stats(State(f): State<Shared>) -> Json<Value> {
    let f = f.lock().unwrap();
    let mut by_op = serde_json::Map::new();
    let mut by_table = serde_json::Map::new();
    for e in &f.events {
        let op = e["op"].as_str().unwrap().to_owned();
        let table = format!("appdb.{}", e["table"].as_str().unwrap());
        let n = by_op.get(&op).and_then(Value::as_u64).unwrap_or(0);
        by_op.insert(op, json!(n + 1));
        let n = by_table.get(&table).and_then(Value::as_u64).unwrap_or(0);
        by_table.insert(table, json!(n + 1));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let last = now - now % 10_000;
    let series = |table: &str, scale: f64| {
        let points: Vec<Value> = (0..30)
            .map(|i| {
                let t = last - (29 - i) * 10_000;
                json!([t, scale * (1.0 + ((i as f64) / 3.0).sin().abs() * 4.0)])
            })
            .collect();
        json!({"table": table, "points": points})
    };
    let mut stats = json!({
        "total": f.events.len(), "by_op": by_op, "by_table": by_table,
        "rate": [series("appdb.users", 3.0), series("appdb.orders", 1.0)],
        "bucket_seconds": 10, "window_seconds": 300, "lag_seconds": f.lag_seconds
    });
    if let Some(snapshot) = &f.snapshot {
        stats["snapshot"] = snapshot.clone();
    }
    Json(stats)
}

/// Serves the real dashboard with the fixture API; returns its base URL.
async fn serve_fixture(fixture: Shared) -> (String, CancellationToken) {
    let app = Router::new()
        .route("/", get(http::dashboard::index))
        .route("/assets/{file}", get(http::dashboard::asset))
        .route("/api/events", get(fixture_events))
        .route("/api/stats", get(fixture_stats))
        .with_state(fixture);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    (format!("http://{addr}"), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_row_values_as_text_never_as_markup() {
    let payload =
        r#"<img src=x onerror="window.__injected=1"><script>window.__injected=2</script>"#;
    let fixture = Arc::new(Mutex::new(Fixture {
        events: vec![
            fixture_event(
                "e4",
                "update",
                "users",
                json!({"id": "7", "name": payload, "email": "bob@example.com"}),
                json!({"name": "bob"}),
            ),
            fixture_event(
                "e3",
                "insert",
                "users",
                json!({"id": "6", "name": "alice", "email": "alice@example.com", "note": null}),
                Value::Null,
            ),
            fixture_event(
                "e2",
                "insert",
                "orders",
                json!({"id": "5", "total": "12345678901234567890.12"}),
                Value::Null,
            ),
            fixture_event(
                "e1",
                "insert",
                "orders",
                json!({"id": "4", "total": "1.00"}),
                Value::Null,
            ),
        ],
        lag_seconds: 2.5,
        snapshot: None,
    }));
    let (base, stop) = serve_fixture(fixture.clone()).await;
    let page = Dashboard::open(&base).await;
    assert!(page.wait_for_total(4, Duration::from_secs(10)).await);

    // The payload is shown as the text it is, and nothing of it ran or rendered.
    let rows = page.live_rows().await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].id, "e4");
    assert!(rows[0].values.contains(payload), "{:?}", rows[0].values);
    assert!(rows[0].values.contains("bob"), "old value shown");
    let injected = page
        .browser
        .eval(
            "return [window.__injected === undefined, document.querySelectorAll('#live-table img, #live-table script').length];",
            vec![],
        )
        .await;
    assert_eq!(injected, json!([true, 0]));

    // Shares of the pie: 3 inserts and 1 update.
    assert_eq!(page.pie_share("insert").await, 0.75);
    assert_eq!(page.pie_share("update").await, 0.25);
    assert_eq!(page.pie_share("delete").await, 0.0);
    assert!(page.legend_text("insert").await.contains("75.0 %"));
    assert!(!page.lag_is_red().await);

    // A new change appears within the 2 s refresh bound; high lag turns red.
    {
        let mut f = fixture.lock().unwrap();
        f.events.insert(
            0,
            fixture_event(
                "e5",
                "delete",
                "orders",
                json!({"id": "4", "total": "1.00", "marker": "wombat"}),
                Value::Null,
            ),
        );
        f.lag_seconds = 120.0;
    }
    let shown = page
        .wait_for_live_row("wombat", Duration::from_secs(2))
        .await;
    assert!(shown.is_some(), "new row not shown within 2 s");
    assert!(
        eventually(Duration::from_secs(2), || async { page.lag_is_red().await }).await,
        "lag of 120 s is not red"
    );
    assert_eq!(page.pie_share("delete").await, 0.2);

    // A snapshot in progress is shown with its table and rows, then goes.
    let snapshot_line = || async {
        page.browser
            .eval(
                "const e = document.getElementById('snapshot'); return [e.hidden, e.textContent];",
                vec![],
            )
            .await
    };
    assert_eq!(snapshot_line().await[0], json!(true));
    fixture.lock().unwrap().snapshot =
        Some(json!({"database": "appdb", "table": "users", "rows": 12345, "remaining_tables": 2}));
    let shown = eventually(Duration::from_secs(3), || async {
        let line = snapshot_line().await;
        line[0] == json!(false)
            && line[1].as_str().is_some_and(|t| {
                t.contains("appdb.users") && t.contains("12,345") && t.contains("2 tables")
            })
    })
    .await;
    assert!(shown, "snapshot line: {:?}", snapshot_line().await);
    fixture.lock().unwrap().snapshot = None;
    let gone = eventually(Duration::from_secs(3), || async {
        snapshot_line().await[0] == json!(true)
    })
    .await;
    assert!(
        gone,
        "snapshot line still shown: {:?}",
        snapshot_line().await
    );

    // The search box queries the API with `q` and lists what it answers.
    let found = page.search("alice").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, "e3");
    assert_eq!(page.search_status().await, "1 change.");

    page.screenshot("dashboard-fixture.png").await;
    page.close().await;
    stop.cancel();
}

// ------------------------------------------------------------ HTTP contract

async fn serve_router(state: HttpState) -> (String, CancellationToken) {
    let (listener, addr) = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(http::serve(listener, state, stop.clone()));
    (format!("http://{addr}"), stop)
}

fn state_without_query() -> HttpState {
    HttpState {
        metrics: Metrics::new(),
        readiness: Readiness::default(),
        query: None,
        access: Access::open(),
        snapshot: None,
        checkpoint: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_explains_a_process_without_a_searchable_sink() {
    let (base, stop) = serve_router(state_without_query()).await;
    let page = Dashboard::open(&base).await;
    let explained = eventually(Duration::from_secs(5), || async {
        page.banner().await.contains("no searchable sink")
    })
    .await;
    assert!(explained, "banner: {:?}", page.banner().await);
    let status = page
        .browser
        .eval(
            "return document.getElementById('status').dataset.state;",
            vec![],
        )
        .await;
    assert_eq!(status, "error");
    page.close().await;
    stop.cancel();
}

#[tokio::test]
async fn api_without_a_searchable_sink_answers_404_in_json() {
    let (base, stop) = serve_router(state_without_query()).await;
    for path in ["/api/events", "/api/stats"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body, json!({"error": "no searchable sink configured"}));
    }
    // Parameters are checked first: a bad one is the caller's error either way.
    let r = reqwest::get(format!("{base}/api/events?limit=5000"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("limit") && msg.contains("5000"), "{msg}");
    stop.cancel();
}

#[tokio::test]
async fn dashboard_assets_are_embedded_typed_and_cached_by_version() {
    let (base, stop) = serve_router(state_without_query()).await;
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let etag = h["etag"].to_str().unwrap().to_owned();
    let html = page.text().await.unwrap();
    let script = html
        .split('"')
        .find(|s| s.starts_with("/assets/app.js?v="))
        .expect("versioned script link")
        .to_owned();
    let style = html
        .split('"')
        .find(|s| s.starts_with("/assets/style.css?v="))
        .expect("versioned style link")
        .to_owned();

    let client = reqwest::Client::new();
    let again = client
        .get(format!("{base}/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    for (path, ty) in [
        (script.as_str(), "text/javascript; charset=utf-8"),
        (style.as_str(), "text/css; charset=utf-8"),
    ] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty);
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.text().await.unwrap().len() > 1000);
    }
    let stale = client
        .get(format!("{base}/assets/app.js?v=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.headers()["cache-control"], "no-cache");
    let missing = client
        .get(format!("{base}/assets/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    stop.cancel();
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_the_embedded_store_pages_filters_and_counts() {
    const N: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let store = StoreConfig {
        retention: Duration::from_secs(3650 * 86_400),
        tombstone_retention: std::time::Duration::from_secs(7 * 86_400),
        max_bytes: 1 << 30,
    };
    let sink = Arc::new(SqliteSink::open(dir.path(), &store, metrics.clone()).unwrap());
    sink.prepare().await.unwrap();
    let events: Vec<_> = (0..N)
        .flat_map(
            |i| match decode(&message(i), &SourcePosition::None).unwrap() {
                Decoded::Events(e) => e,
                Decoded::Watermark { .. } => unreachable!(),
            },
        )
        .collect();
    let rejected = sink
        .write(WriteBatch::events(&events), &CancellationToken::new())
        .await
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    let (base, stop) = serve_router(HttpState {
        metrics,
        readiness: Readiness::default(),
        query: Some(sink),
        access: Access::open(),
        snapshot: None,
        checkpoint: None,
    })
    .await;

    // Every event exactly once over the pages, newest first, with its id.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/api/events?limit=50&cursor={c}"),
            None => format!("{base}/api/events?limit=50"),
        };
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 50);
        seen.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..N).rev().map(expected_id).collect();
    assert_eq!(seen, expected);

    // Filters.
    let (_, page) = get_json(&format!(
        "{base}/api/events?table=users&op=UPDATE&limit=1000"
    ))
    .await;
    let events = page["events"].as_array().unwrap();
    let want = (0..N)
        .filter(|i| i % 2 == 0 && crate::harness::canal::op_of(*i) == "UPDATE")
        .count();
    assert_eq!(events.len(), want);
    assert!(events
        .iter()
        .all(|e| e["table"] == "users" && e["op"] == "update"));
    let (_, page) = get_json(&format!("{base}/api/events?q=n57")).await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [expected_id(57)]);
    let (_, page) = get_json(&format!("{base}/api/events?until=2000-01-01T00:00:00Z")).await;
    assert_eq!(page["events"], json!([]));

    // Counts, the rate of what was just stored, and the lag.
    let (status, stats) = get_json(&format!("{base}/api/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["total"], N);
    for (op, n) in op_counts(N) {
        assert_eq!(stats["by_op"][op], n, "{op}");
    }
    assert_eq!(stats["by_table"]["appdb.users"], N / 2);
    assert_eq!(stats["bucket_seconds"], 10);
    assert_eq!(stats["window_seconds"], 300);
    assert_eq!(stats["lag_seconds"], 0.0);
    let rated: f64 = stats["rate"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["points"].as_array().unwrap().iter())
        .map(|p| p[1].as_f64().unwrap())
        .sum();
    assert!(rated > 0.0, "{stats}");

    // Bad parameters are 400s that name the parameter.
    for (query, param) in [
        ("op=merge", "op"),
        ("cursor=not-a-cursor", "cursor"),
        ("since=tomorrow", "since"),
    ] {
        let (status, body) = get_json(&format!("{base}/api/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(param), "{query}: {msg}");
    }
    let (status, _) = get_json(&format!("{base}/api/stats?bucket=1s&window=1d")).await;
    assert_eq!(status, 400);
    stop.cancel();
}

/// What the `_search` stub saw: (path and query, body).
type Searches = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers `POST /{index}/_search` with two hits and a `sort` per hit, as
/// Elasticsearch does; with 500 when the body asks for `size` 7.
async fn search_stub(
    State(seen): State<Searches>,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Json<Value>) {
    let body: Value = serde_json::from_slice(&body).unwrap();
    seen.lock().unwrap().push((uri.to_string(), body.clone()));
    if body["size"] == 7 {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"type": "search_phase_execution_exception"}, "status": 500})),
        );
    }
    if body["size"] == 0 {
        return (
            axum::http::StatusCode::OK,
            Json(json!({
                "took": 1, "timed_out": false,
                "hits": {"total": {"value": 3, "relation": "eq"}, "hits": []},
                "aggregations": {
                    "by_op": {"buckets": [{"key": "insert", "doc_count": 3}]},
                    "by_table": {"buckets": [{"key": ["appdb", "users"], "key_as_string": "appdb|users", "doc_count": 3}]},
                    "recent": {"doc_count": 0, "by_table": {"buckets": []}}
                }
            })),
        );
    }
    let hit = |id: &str, ts: i64| {
        json!({"_index": "cdc-events", "_id": id, "_score": null,
               "_source": {"@timestamp": "2024-05-01T12:00:00.000Z", "database": "appdb", "table": "users", "op": "insert", "pk": {"id": id}, "data": {"id": id}},
               "sort": [ts, 449_000_000_000_000_001u64, ts, 0, ts]})
    };
    (
        axum::http::StatusCode::OK,
        Json(json!({"took": 1, "timed_out": false, "hits": {"hits": [hit("b", 2), hit("a", 1)]}})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_elasticsearch_searches_the_index_and_pages_with_search_after() {
    let seen: Searches = Arc::default();
    let stub = Router::new()
        .route("/{index}/_search", axum::routing::post(search_stub))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let es_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, stub).await });
    let es = EsConfig {
        urls: vec![format!("http://{es_addr}").parse().unwrap()],
        index: cdc_monitor::index_route::IndexRoute::parse("cdc-events").unwrap(),
        username: None,
        password: None,
        api_key: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        timeout: Duration::from_secs(5),
        compression: EsCompression::Gzip,
        state_index: None,
        tombstone_retention: Duration::from_secs(7 * 86_400),
        mode: cdc_monitor::config::EsMode::Index,
    };
    let sink_cfg = PipelineConfig {
        max_events: 100,
        max_bytes: 1 << 20,
        linger: Duration::from_millis(5),
        concurrency: 1,
        retry_initial_backoff: Duration::from_millis(100),
        retry_max_backoff: Duration::from_secs(1),
        channel_capacity: 16,
        max_buffered_bytes: 1 << 20,
    };
    let metrics = Metrics::new();
    let sink = Arc::new(ElasticsearchSink::new(&es, &sink_cfg, metrics.clone()).unwrap());
    let (base, stop) = serve_router(HttpState {
        metrics,
        readiness: Readiness::default(),
        query: Some(sink),
        access: Access::open(),
        snapshot: None,
        checkpoint: None,
    })
    .await;

    // A page of one: the extra hit says another page follows.
    let (status, page) = get_json(&format!("{base}/api/events?limit=1&table=users&q=alice")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["id"], "b");
    assert_eq!(page["events"][0]["pk"]["id"], "b");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    {
        let seen = seen.lock().unwrap();
        let (uri, body) = &seen[0];
        assert!(uri.starts_with("/cdc-events/_search?"), "{uri}");
        assert!(uri.contains("ignore_unavailable=true"), "{uri}");
        assert_eq!(body["size"], 2);
        let filter = body["query"]["bool"]["filter"].to_string();
        assert!(filter.contains(r#"{"term":{"table":"users"}}"#), "{filter}");
        assert!(filter.contains("simple_query_string"), "{filter}");
    }
    // The cursor comes back as the last hit's sort values, digit for digit.
    let (status, _) = get_json(&format!("{base}/api/events?limit=1&cursor={cursor}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen.lock().unwrap()[1].1["search_after"].to_string(),
        "[2,449000000000000001,2,0,2]"
    );

    let (status, stats) = get_json(&format!("{base}/api/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["by_table"]["appdb.users"], 3);

    // Elasticsearch failing is a 503 with the reason.
    let (status, body) = get_json(&format!("{base}/api/events?limit=6")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("500"), "{body}");
    stop.cancel();
}
