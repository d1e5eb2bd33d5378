//! The few Elasticsearch HTTP calls the sink makes.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use secrecy::ExposeSecret;
use url::Url;

use crate::config::EsConfig;
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

/// An authenticated client for one cluster.
#[derive(Clone)]
pub struct EsClient {
    http: reqwest::Client,
    base: Url,
}

impl EsClient {
    /// Builds the client with auth and TLS settings from `cfg`.
    pub fn new(cfg: &EsConfig) -> Result<EsClient, SinkError> {
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
            base: cfg.url.clone(),
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        url
    }

    /// Sends one NDJSON bulk body; other failures than a refusal are errors.
    pub async fn bulk(&self, body: Vec<u8>) -> Result<BulkReply, SinkError> {
        let resp = self
            .http
            .post(self.url("_bulk"))
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
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
        let mut url = self.url(&format!("{index}/_search"));
        // Before the first event is stored the index does not exist yet:
        // that is an empty result, not an outage.
        url.query_pairs_mut()
            .append_pair("ignore_unavailable", "true")
            .append_pair("allow_no_indices", "true");
        let resp = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        json_reply(resp, "search reply").await
    }

    /// Installs the index template for `index` unless one exists; true when created.
    pub async fn ensure_template(&self, index: &str) -> Result<bool, SinkError> {
        let url = self.url(&format!("_index_template/{index}"));
        let head = self.http.head(url.clone()).send().await?;
        match head.status().as_u16() {
            200 => return Ok(false),
            404 => {}
            status => {
                return Err(SinkError::Status {
                    status,
                    body: "HEAD _index_template".into(),
                })
            }
        }
        let resp = self
            .http
            .put(url)
            .header(CONTENT_TYPE, "application/json")
            .body(index_template(index).to_string())
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(SinkError::Status {
                status: status.as_u16(),
                body,
            });
        }
        Ok(true)
    }

    /// Succeeds when the cluster answers.
    pub async fn ping(&self) -> Result<(), SinkError> {
        let resp = self.http.get(self.url("")).send().await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(SinkError::Status {
                status: status.as_u16(),
                body: "GET /".into(),
            });
        }
        Ok(())
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

/// The index template: fixed keyword fields, and `flattened` row data so that
/// arbitrary column names cannot grow the mapping without bound.
pub fn index_template(index: &str) -> serde_json::Value {
    let flattened = serde_json::json!({"type": "flattened", "ignore_above": 8191});
    serde_json::json!({
        "index_patterns": [index, format!("{index}-*")],
        "priority": 200,
        "template": {
            "settings": {"index": {"refresh_interval": "1s"}},
            "mappings": {
                "dynamic": false,
                "properties": {
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
                }
            }
        },
        "_meta": {"managed_by": "cdc-monitor"}
    })
}
