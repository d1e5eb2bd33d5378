//! An Elasticsearch bulk endpoint that stores nothing, acknowledges every
//! item and keeps, per document, commit time → receipt, and the bytes on
//! the wire. Decodes `Content-Encoding: gzip` bodies, as Elasticsearch does.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use cdc_monitor::canal::decode::tso_to_millis;

/// Bulk endpoint that stores nothing and acknowledges everything.
#[derive(Clone)]
pub struct BulkStub {
    pub addr: SocketAddr,
    /// Documents received so far.
    pub docs: Arc<AtomicU64>,
    /// Bulk body bytes as received (compressed or not).
    pub wire_bytes: Arc<AtomicU64>,
    /// Bulk requests received.
    pub requests: Arc<AtomicU64>,
    /// Commit time → receipt of each document with a `commit_ts`.
    pub latencies_ms: Arc<Mutex<Vec<i64>>>,
}

impl BulkStub {
    /// Serves on a free port on 127.0.0.1 until the runtime ends.
    pub async fn start() -> anyhow::Result<BulkStub> {
        let stub = BulkStub {
            addr: "127.0.0.1:0".parse()?,
            docs: Arc::new(AtomicU64::new(0)),
            wire_bytes: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(AtomicU64::new(0)),
            latencies_ms: Arc::new(Mutex::new(Vec::new())),
        };
        let app = Router::new()
            .route(
                "/",
                get(|| async { "{\"version\":{\"number\":\"8.15.0\"}}" }),
            )
            .route(
                "/_index_template/{name}",
                get(|| async { "{}" }).head(|| async { "" }),
            )
            .route("/_bulk", post(bulk_handler))
            // Bulk bodies of 1 MiB documents exceed axum's 2 MB default.
            .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind(stub.addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(BulkStub { addr, ..stub })
    }

    /// Documents received so far.
    pub fn docs(&self) -> u64 {
        self.docs.load(Ordering::Relaxed)
    }

    /// Bulk requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bulk body bytes received so far, as sent.
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes.load(Ordering::Relaxed)
    }
}

async fn bulk_handler(
    State(s): State<BulkStub>,
    headers: HeaderMap,
    wire: Bytes,
) -> Result<([(&'static str, &'static str); 1], String), (StatusCode, String)> {
    s.wire_bytes.fetch_add(wire.len() as u64, Ordering::Relaxed);
    s.requests.fetch_add(1, Ordering::Relaxed);
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = if gzip {
        let mut out = Vec::with_capacity(wire.len() * 8);
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut out)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
        Bytes::from(out)
    } else {
        wire
    };
    let now = crate::now_millis();
    let mut items = 0u64;
    let mut lat = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if i % 2 == 1 && !line.is_empty() {
            items += 1;
            if let Some(ts) = find_commit_ts(line) {
                lat.push(now - tso_to_millis(ts));
            }
        }
    }
    s.docs.fetch_add(items, Ordering::Relaxed);
    if let Ok(mut l) = s.latencies_ms.lock() {
        l.extend(lat);
    }
    let mut resp = String::with_capacity(30 + items as usize * 30);
    resp.push_str("{\"took\":1,\"errors\":false,\"items\":[");
    for i in 0..items {
        if i > 0 {
            resp.push(',');
        }
        resp.push_str("{\"create\":{\"status\":201}}");
    }
    resp.push_str("]}");
    Ok(([("content-type", "application/json")], resp))
}

fn find_commit_ts(doc: &[u8]) -> Option<u64> {
    let key = b"\"commit_ts\":";
    let at = doc.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = doc[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ts_is_read_from_a_bulk_document() {
        let doc = br#"{"table":"users","commit_ts":445318436315725826,"op":"insert"}"#;
        assert_eq!(find_commit_ts(doc), Some(445_318_436_315_725_826));
        assert_eq!(find_commit_ts(br#"{"commit_ts":null}"#), None);
    }
}
