//! Sorting a bulk reply into stored, retry and rejected items.
//!
//! Per the Bulk API, `items` has one entry per action, in request order,
//! each `{"<action>": {"status": N, "error": {...}}}`. 409 on `create` means
//! the document is already there (a replay): stored. 429 and 5xx are
//! transient. Any other 4xx is the document's fault and will never succeed.

use serde::Deserialize;
use std::collections::HashMap;

/// The parts of a bulk reply we use.
#[derive(Debug, Deserialize)]
pub struct BulkResponse {
    #[serde(default)]
    pub errors: bool,
    #[serde(default)]
    pub items: Vec<HashMap<String, BulkItem>>,
}

/// One item of a bulk reply.
#[derive(Debug, Deserialize)]
pub struct BulkItem {
    pub status: u16,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

/// What happened to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Stored,
    Duplicate,
    /// Transient; the label says why (for the retry metric).
    Retry(&'static str),
    /// Permanent, with Elasticsearch's reason.
    Rejected(String),
}

/// Classifies each of the `expected` items of `response`.
pub fn classify(response: &BulkResponse, expected: usize) -> Result<Vec<ItemOutcome>, String> {
    if !response.errors && response.items.is_empty() && expected > 0 {
        return Err("bulk reply has no items".into());
    }
    if response.items.len() != expected {
        return Err(format!(
            "bulk reply has {} items for {expected} actions",
            response.items.len()
        ));
    }
    Ok(response
        .items
        .iter()
        .map(|item| {
            let Some(item) = item.values().next() else {
                return ItemOutcome::Retry("malformed_item");
            };
            match item.status {
                200..=299 => ItemOutcome::Stored,
                409 => ItemOutcome::Duplicate,
                429 => ItemOutcome::Retry("too_many_requests"),
                500..=599 => ItemOutcome::Retry("server_error"),
                status => ItemOutcome::Rejected(reason(status, item.error.as_ref())),
            }
        })
        .collect())
}

fn reason(status: u16, error: Option<&serde_json::Value>) -> String {
    let Some(error) = error else {
        return format!("status {status}");
    };
    let kind = error
        .get("type")
        .and_then(|v| v.as_str())
        .unwrap_or("error");
    let text = error.get("reason").and_then(|v| v.as_str()).unwrap_or("");
    let cause = error
        .get("caused_by")
        .and_then(|c| c.get("reason"))
        .and_then(|v| v.as_str())
        .map(|c| format!(" (caused by: {c})"))
        .unwrap_or_default();
    format!("{status} {kind}: {text}{cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BulkResponse {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn all_created_is_all_stored() {
        let r = parse(
            r#"{"took":3,"errors":false,"items":[{"create":{"_id":"a","status":201}},{"create":{"_id":"b","status":201}}]}"#,
        );
        assert_eq!(
            classify(&r, 2).unwrap(),
            [ItemOutcome::Stored, ItemOutcome::Stored]
        );
    }

    #[test]
    fn partial_429_retries_only_failed_items() {
        let r = parse(
            r#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},
            {"create":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"no shard"}}},
            {"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse field [data]","caused_by":{"type":"x","reason":"bad"}}}}
        ]}"#,
        );
        let out = classify(&r, 5).unwrap();
        assert_eq!(out[0], ItemOutcome::Stored);
        assert_eq!(out[1], ItemOutcome::Retry("too_many_requests"));
        assert_eq!(out[2], ItemOutcome::Duplicate);
        assert_eq!(out[3], ItemOutcome::Retry("server_error"));
        match &out[4] {
            ItemOutcome::Rejected(r) => {
                assert!(
                    r.contains("document_parsing_exception") && r.contains("caused by: bad"),
                    "{r}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn item_count_mismatch_is_an_error() {
        let r = parse(r#"{"errors":false,"items":[{"create":{"status":201}}]}"#);
        assert!(classify(&r, 2).is_err());
    }
}
