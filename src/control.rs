//! Requests a running instance takes while it streams: an on-demand
//! snapshot of some tables (`cdc-monitor snapshot --tables`, `POST
//! /api/snapshot`). The HTTP layer holds the sending end, the source that
//! can serve it the receiving end.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::TableFilter;

/// Re-read the rows of `tables` (among the captured ones) while streaming goes on.
#[derive(Debug)]
pub struct SnapshotRequest {
    pub tables: TableFilter,
    /// Answered once the snapshot started (or could not).
    pub reply: oneshot::Sender<Result<SnapshotStarted, String>>,
}

/// What an accepted request will read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStarted {
    /// `database.table` of each table it reads, in reading order.
    pub tables: Vec<String>,
    /// The binlog position the rows are read at.
    pub position: String,
}

/// The sending end, cloned into the HTTP state.
#[derive(Debug, Clone)]
pub struct SnapshotControl(mpsc::Sender<SnapshotRequest>);

impl SnapshotControl {
    /// A control and the receiver its source serves.
    pub fn channel() -> (SnapshotControl, mpsc::Receiver<SnapshotRequest>) {
        // One waiting request at a time: another is refused, not queued.
        let (tx, rx) = mpsc::channel(1);
        (SnapshotControl(tx), rx)
    }

    /// Asks for a snapshot of `tables`; the answer comes once it started.
    pub async fn request(&self, tables: TableFilter) -> Result<SnapshotStarted, String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .try_send(SnapshotRequest { tables, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    "another on-demand snapshot is waiting to start; try again when it runs"
                        .to_owned()
                }
                mpsc::error::TrySendError::Closed(_) => "the source is not running".to_owned(),
            })?;
        answer
            .await
            .map_err(|_| "the source stopped before the snapshot started".to_owned())?
    }
}

/// `GET /api/checkpoint`'s answer: the TiDB TSO up to which the sink holds
/// every change of the Kafka source's assigned partitions (the least TiCDC
/// watermark acknowledged over them), `None` before one is known (and with
/// the binlog source). An integer above 2^53: read it as one, not a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointTso {
    pub tso: Option<u64>,
}

/// Asks the instance serving `base` (`http://127.0.0.1:3000`) for a
/// snapshot of `tables` (`appdb.users,shop.*`), as `cdc-monitor snapshot`
/// does; `token` is its `CDC_HTTP_TOKEN`.
pub async fn request_over_http(
    base: &str,
    token: Option<&str>,
    tables: &str,
) -> Result<SnapshotStarted, String> {
    call(
        base,
        token,
        reqwest::Method::POST,
        "/api/snapshot",
        &[("tables", tables)],
    )
    .await
}

/// Asks the instance serving `base` for its checkpoint TSO, as
/// `cdc-monitor reconcile --url` does.
pub async fn checkpoint_over_http(
    base: &str,
    token: Option<&str>,
) -> Result<CheckpointTso, String> {
    call(base, token, reqwest::Method::GET, "/api/checkpoint", &[]).await
}

/// One API request to a running instance; its JSON answer, or why not.
async fn call<T: serde::de::DeserializeOwned>(
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, &str)],
) -> Result<T, String> {
    let mut url = reqwest::Url::parse(base)
        .and_then(|u| u.join(path))
        .map_err(|e| format!("--url {base:?}: {e}"))?;
    for (k, v) in query {
        url.query_pairs_mut().append_pair(k, v);
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = client.request(method, url.clone());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{base}: {}", crate::tls::error_chain(&e)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        return serde_json::from_str(&body)
            .map_err(|e| format!("{base} answered {status} with {body:?}: {e}"));
    }
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(body);
    Err(format!("{base} answered {status}: {reason}"))
}
