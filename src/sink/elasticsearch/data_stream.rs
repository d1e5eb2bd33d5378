//! Data-stream mode (`CDC_ES_MODE=data_stream`): the events' index template
//! declares a data stream and names an ILM policy that rolls the stream over
//! (`CDC_ES_ROLLOVER_SIZE`, `CDC_ES_ROLLOVER_AGE`) and deletes backing indices
//! `CDC_ES_RETENTION` after their rollover.
//!
//! Events are written with `create` in both modes (the only op a data stream
//! accepts), so the bulk bodies are the same; a 409 is a replay meeting its
//! first copy in the same backing index. A `create` only sees the write
//! index, so a replay after a rollover would be stored again: before each
//! round of writes the sink looks up the backing indices (`GET
//! _data_stream`) and, for each event committed before the write index was
//! created, asks the older backing indices that were written after its
//! commit (`earlier_copies`) whether they hold its id (realtime `_mget`).
//! Those events are not created again. An event cannot have been written
//! before it was committed, which bounds the lookups to events in flight
//! around a rollover, or replayed after one. See the README, "Data streams
//! and retention", for what remains.
//! <https://www.elastic.co/guide/en/elasticsearch/reference/current/data-streams.html>

use serde_json::{json, Value};

use crate::config::Lifecycle;
use crate::index_route::IndexRoute;
use crate::sink::elasticsearch::client::{index_template, template_name};

/// The ILM policy's name for the events of `index`.
pub fn policy_name(index: &IndexRoute) -> String {
    format!("{}-lifecycle", template_name(index))
}

/// The ILM policy: hot with rollover, then delete after the retention
/// (`min_age` counts from the rollover).
pub fn policy(lifecycle: &Lifecycle) -> Value {
    json!({
        "policy": {
            "phases": {
                "hot": {"min_age": "0ms", "actions": {"rollover": {
                    "max_primary_shard_size": format!("{}b", lifecycle.rollover_size),
                    "max_age": format!("{}s", lifecycle.rollover_age.as_secs())
                }}},
                "delete": {
                    "min_age": format!("{}s", lifecycle.retention.as_secs()),
                    "actions": {"delete": {}}
                }
            },
            "_meta": {"managed_by": "cdc-monitor"}
        }
    })
}

/// The events' template as a data stream's: the same mapping, `data_stream`,
/// and the policy. Its priority (200, 201 routed) is above the built-in
/// templates' (100, e.g. `logs-*-*`).
pub fn template(index: &IndexRoute) -> Value {
    let mut t = index_template(index);
    t["data_stream"] = json!({});
    t["template"]["settings"]["index"]["lifecycle"] = json!({"name": policy_name(index)});
    t
}

/// How far the database's clock (commit times) and Elasticsearch's
/// (creation dates) may disagree without a replay slipping through.
pub const CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;

/// The backing indices, besides the write index, that may already hold an
/// event committed at `commit_ms`: those still taking writes after it was
/// committed. `backing` is the stream's indices with their creation times,
/// oldest first; the last is the write index. Index `j` took writes until
/// index `j + 1` was created.
pub fn earlier_copies(backing: &[(String, i64)], commit_ms: i64) -> Vec<&str> {
    let earliest = commit_ms.saturating_sub(CLOCK_SKEW_MS);
    backing
        .windows(2)
        .filter(|w| w[1].1 > earliest)
        .map(|w| w[0].0.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_indices_written_after_the_commit_may_hold_an_earlier_copy() {
        let hour = 3_600_000;
        let backing: Vec<(String, i64)> = [
            (".ds-a-1", 0),
            (".ds-a-2", 10 * hour),
            (".ds-a-3", 20 * hour),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t))
        .collect();
        // Committed after the write index was created (beyond the skew): nowhere else.
        assert!(earlier_copies(&backing, 21 * hour).is_empty());
        // Committed while 2 took writes: 2 (and not 1, which had rolled over).
        assert_eq!(earlier_copies(&backing, 15 * hour), [".ds-a-2"]);
        // Committed long ago (a backfill): every older index.
        assert_eq!(earlier_copies(&backing, hour), [".ds-a-1", ".ds-a-2"]);
        // Just after a rollover, within the clock skew: the previous index too.
        assert_eq!(earlier_copies(&backing, 20 * hour + 1000), [".ds-a-2"]);
        // One backing index: nothing to look up.
        assert!(earlier_copies(&backing[..1], 0).is_empty());
    }

    #[test]
    fn the_policy_rolls_over_and_deletes_after_the_retention() {
        let p = policy(&Lifecycle {
            rollover_size: 50_000_000_000,
            rollover_age: Duration::from_secs(86_400),
            retention: Duration::from_secs(30 * 86_400),
        });
        let phases = &p["policy"]["phases"];
        assert_eq!(
            phases["hot"]["actions"]["rollover"],
            json!({"max_primary_shard_size": "50000000000b", "max_age": "86400s"})
        );
        assert_eq!(phases["delete"]["min_age"], "2592000s");
        assert_eq!(phases["delete"]["actions"], json!({"delete": {}}));
    }

    #[test]
    fn the_template_declares_a_data_stream_with_the_policy() {
        let index = IndexRoute::parse("cdc-events").unwrap();
        let t = template(&index);
        assert_eq!(t["data_stream"], json!({}));
        assert_eq!(
            t["template"]["settings"]["index"]["lifecycle"]["name"],
            "cdc-events-lifecycle"
        );
        assert_eq!(
            t["template"]["mappings"]["properties"]["@timestamp"]["type"],
            "date"
        );
        assert!(t["priority"].as_u64().unwrap() > 100);
    }
}
