//! Sorting a bulk reply into stored, retry and rejected items.
//!
//! Per the Bulk API, `items` has one entry per action, in request order,
//! each `{"<action>": {"status": N, "error": {...}}}`. 409 on `create` means
//! the document is already there (a replay): stored. 429 and 5xx are
//! transient, and so are 404 (the index is missing, e.g. deleted while a
//! template or alias is being fixed) and 403 `cluster_block_exception` (the
//! index turned read-only at the disk flood-stage watermark; writes succeed
//! once space is freed and the block lifted). Any other 4xx is the document's
//! fault and will never succeed.
//!
//! A request refused as a whole (400, 413) has no items: `refusal_reason`
//! reads the error body instead.

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

impl BulkResponse {
    /// True when every item is stored (created, or already there).
    pub fn all_stored(&self) -> bool {
        self.items
            .iter()
            .flat_map(|item| item.values())
            .all(|item| matches!(item.status, 200..=299 | 409))
    }
}

/// One item of a bulk reply.
#[derive(Debug, Deserialize)]
pub struct BulkItem {
    pub status: u16,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    /// `created`, `updated`, `deleted`, `not_found`, `noop`.
    #[serde(default)]
    pub result: Option<String>,
}

/// What happened to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Stored,
    Duplicate,
    /// Transient: `label` says why (for the retry metric), `reason` is Elasticsearch's.
    Retry {
        label: &'static str,
        reason: String,
    },
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
        .map(|item| match item.values().next() {
            Some(item) => classify_one(item),
            None => ItemOutcome::Retry {
                label: "malformed_item",
                reason: "bulk reply item has no action".into(),
            },
        })
        .collect())
}

fn classify_one(item: &BulkItem) -> ItemOutcome {
    let error = item.error.as_ref();
    let retry = |label| ItemOutcome::Retry {
        label,
        reason: reason(item.status, error),
    };
    match item.status {
        200..=299 => ItemOutcome::Stored,
        409 => ItemOutcome::Duplicate,
        429 => retry("too_many_requests"),
        500..=599 => retry("server_error"),
        404 => retry("index_not_found"),
        403 if error_type(error) == Some("cluster_block_exception") => retry("cluster_block"),
        status => ItemOutcome::Rejected(reason(status, error)),
    }
}

/// Folds a reply to events that carried current-state actions into one
/// item per event. The request held the `state_counts.len()` events' own
/// actions first, then each event's `state_counts[i]` state actions, in
/// order. A state action's 409 (`version_conflict_engine_exception`: the
/// state already holds a newer change) and a state delete's `not_found` are
/// successes; otherwise an event takes the worst outcome of its items, so a
/// state action that fails for good rejects its event (dead-lettered) and a
/// transient one retries it (its own `create` then meets 409).
pub fn merge_state_items(
    mut response: BulkResponse,
    state_counts: &[usize],
) -> Result<BulkResponse, String> {
    let events = state_counts.len();
    let expected = events + state_counts.iter().sum::<usize>();
    if response.items.len() != expected {
        return Err(format!(
            "bulk reply has {} items for {expected} actions",
            response.items.len()
        ));
    }
    for item in response.items[events..]
        .iter_mut()
        .flat_map(|i| i.values_mut())
    {
        let older = item.status == 409;
        let already_gone = item.status == 404 && item.result.as_deref() == Some("not_found");
        if older || already_gone {
            item.status = 200;
            item.error = None;
        }
    }
    // Every item is sorted the way `classify` sorts it, then ranked.
    let rank = |item: &HashMap<String, BulkItem>| {
        let Some(item) = item.values().next() else {
            return 1;
        };
        match classify_one(item) {
            ItemOutcome::Stored | ItemOutcome::Duplicate => 0,
            ItemOutcome::Retry { .. } => 1,
            ItemOutcome::Rejected(_) => 2,
        }
    };
    let mut state = response.items.split_off(events).into_iter();
    for (own, &count) in response.items.iter_mut().zip(state_counts) {
        for item in state.by_ref().take(count) {
            if rank(&item) > rank(own) {
                *own = item;
            }
        }
    }
    Ok(response)
}

/// The reply with a 409 (already stored) item put back for each event of
/// the request that was `skipped` (its `create` not sent: the event is
/// known to be stored), so that items line up with events again. Items past
/// the sent events' own (state actions) follow unchanged.
pub fn with_known_duplicates(
    mut response: BulkResponse,
    skipped: &[bool],
) -> Result<BulkResponse, String> {
    let sent = skipped.iter().filter(|s| !**s).count();
    if response.items.len() < sent {
        return Err(format!(
            "bulk reply has {} items for {sent} actions",
            response.items.len()
        ));
    }
    let rest = response.items.split_off(sent);
    let mut own = std::mem::take(&mut response.items).into_iter();
    response.items = skipped
        .iter()
        .map(|&skip| match skip {
            true => HashMap::from([(
                "create".to_owned(),
                BulkItem {
                    status: 409,
                    error: None,
                    result: None,
                },
            )]),
            // `sent` items are there, one per event not skipped.
            false => own.next().unwrap_or_default(),
        })
        .chain(rest)
        .collect();
    Ok(response)
}

/// Why Elasticsearch refused a whole bulk request (400 or 413), from its
/// error body: `{"error": {"type", "reason"}, "status"}`, a bare string, or
/// nothing (a 413 from the HTTP layer or a proxy has no JSON body).
pub fn refusal_reason(status: u16, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    if status == 413 {
        return match error {
            Some(e) => format!("413 request too large: {}", reason(413, Some(e))),
            None => "413 request too large".to_owned(),
        };
    }
    match error {
        Some(serde_json::Value::String(text)) => format!("{status} {text}"),
        Some(e) => reason(status, Some(e)),
        None => {
            // Not Elasticsearch's JSON (a proxy page?): its start is the best clue.
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            format!("{status} {}", text.trim())
        }
    }
}

fn error_type(error: Option<&serde_json::Value>) -> Option<&str> {
    error?.get("type")?.as_str()
}

fn reason(status: u16, error: Option<&serde_json::Value>) -> String {
    let Some(error) = error else {
        return format!("status {status}");
    };
    let kind = error_type(Some(error)).unwrap_or("error");
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
        assert!(
            matches!(&out[1], ItemOutcome::Retry { label: "too_many_requests", reason } if reason.contains("queue full")),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], ItemOutcome::Duplicate);
        assert!(matches!(
            out[3],
            ItemOutcome::Retry {
                label: "server_error",
                ..
            }
        ));
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
    fn state_items_fold_into_their_events_older_changes_and_gone_rows_being_success() {
        // Events a, b, c, d; a has 2 state actions, b 1, c 0, d 1.
        let r = parse(
            r#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},
            {"create":{"status":201}},
            {"create":{"status":201}},
            {"delete":{"status":404,"result":"not_found","_version":7}},
            {"index":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"current version [9] is higher than [7]"}}},
            {"index":{"status":400,"error":{"type":"document_parsing_exception","reason":"bad state"}}},
            {"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}}
        ]}"#,
        );
        let merged = merge_state_items(r, &[2, 1, 0, 1]).unwrap();
        let out = classify(&merged, 4).unwrap();
        assert_eq!(out[0], ItemOutcome::Stored);
        assert!(
            matches!(&out[1], ItemOutcome::Rejected(r) if r.contains("bad state")),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], ItemOutcome::Stored);
        assert!(matches!(
            &out[3],
            ItemOutcome::Retry {
                label: "too_many_requests",
                ..
            }
        ));
        // A missing state index is not a gone row: retried.
        let r = parse(
            r#"{"errors":true,"items":[{"create":{"status":201}},
            {"delete":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [cdc-state]"}}}]}"#,
        );
        let out = classify(&merge_state_items(r, &[1]).unwrap(), 1).unwrap();
        assert!(matches!(
            &out[0],
            ItemOutcome::Retry {
                label: "index_not_found",
                ..
            }
        ));
        // A state item missing from the reply is an error, not a success.
        let r = parse(r#"{"errors":false,"items":[{"create":{"status":201}}]}"#);
        assert!(merge_state_items(r, &[1]).is_err());
    }

    #[test]
    fn skipped_events_get_a_duplicate_item_in_their_place() {
        let r = parse(
            r#"{"errors":false,"items":[{"create":{"status":201}},{"index":{"status":200}}]}"#,
        );
        let r = with_known_duplicates(r, &[true, false, true]).unwrap();
        assert_eq!(r.items.len(), 4);
        assert_eq!(
            classify(
                &BulkResponse {
                    errors: false,
                    items: r.items.into_iter().take(3).collect()
                },
                3
            )
            .unwrap(),
            [
                ItemOutcome::Duplicate,
                ItemOutcome::Stored,
                ItemOutcome::Duplicate
            ]
        );
        let short = parse(r#"{"errors":false,"items":[]}"#);
        assert!(with_known_duplicates(short, &[false]).is_err());
    }

    #[test]
    fn item_count_mismatch_is_an_error() {
        let r = parse(r#"{"errors":false,"items":[{"create":{"status":201}}]}"#);
        assert!(classify(&r, 2).is_err());
    }

    #[test]
    fn item_level_cluster_block_is_retried() {
        let r = parse(
            r#"{"errors":true,"items":[
            {"create":{"status":403,"error":{"type":"cluster_block_exception","reason":"index [cdc-events] blocked by: [FORBIDDEN/12/index read-only / allow delete (api)];"}}},
            {"create":{"status":403,"error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized"}}}
        ]}"#,
        );
        let out = classify(&r, 2).unwrap();
        assert!(
            matches!(&out[0], ItemOutcome::Retry { label: "cluster_block", reason } if reason.contains("read-only")),
            "{:?}",
            out[0]
        );
        // Any other 403 on an item stays the document's fault.
        assert!(matches!(&out[1], ItemOutcome::Rejected(r) if r.contains("security_exception")));
    }

    #[test]
    fn item_level_missing_index_is_retried() {
        let r = parse(
            r#"{"errors":true,"items":[{"create":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [cdc-events]"}}}]}"#,
        );
        assert!(matches!(
            classify(&r, 1).unwrap()[0],
            ItemOutcome::Retry {
                label: "index_not_found",
                ..
            }
        ));
    }

    #[test]
    fn a_refused_request_is_explained_by_its_error_body() {
        let es = br#"{"error":{"root_cause":[],"type":"mapper_parsing_exception","reason":"poisoned"},"status":400}"#;
        assert_eq!(
            refusal_reason(400, es),
            "400 mapper_parsing_exception: poisoned"
        );
        assert_eq!(refusal_reason(413, b""), "413 request too large");
        assert_eq!(
            refusal_reason(400, br#"{"error":"Unknown key for a VALUE_STRING"}"#),
            "400 Unknown key for a VALUE_STRING"
        );
        assert_eq!(
            refusal_reason(400, b"<html>Bad Request</html>\n"),
            "400 <html>Bad Request</html>"
        );
    }
}
