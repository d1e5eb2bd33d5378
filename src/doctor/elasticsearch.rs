//! The Elasticsearch hop: cluster health with the configured auth and TLS,
//! write blocks on the events indices, flood-stage disk, the template.

use url::Url;

use super::{broken, Broken};
use crate::config::EsConfig;
use crate::sink::elasticsearch::client::{template_name, EsClient};
use crate::sink::SinkError;

/// Cluster health with the configured auth and TLS, the index template,
/// write blocks on the events indices, disk watermarks.
pub(super) async fn elasticsearch(cfg: &EsConfig) -> Result<String, Broken> {
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
}
