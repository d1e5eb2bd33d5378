//! Data-stream mode (`CDC_ES_MODE=data_stream`): the events' index template
//! declares a data stream and names an ILM policy that rolls the stream over
//! (`CDC_ES_ROLLOVER_SIZE`, `CDC_ES_ROLLOVER_AGE`) and deletes backing indices
//! `CDC_ES_RETENTION` after their rollover.
//!
//! Events are written with `create` in both modes (the only op a data stream
//! accepts), so the bulk bodies are the same; a 409 is a replay meeting its
//! first copy in the same backing index. A replay into a newer backing index
//! than its first copy's is not caught by Elasticsearch: see the README,
//! "Data streams and retention".
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
