//! The Kafka hop: brokers answer metadata, each topic exists with led
//! partitions, and for the consumer its group's state and lag.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{broken, secs, Broken};
use crate::config::KafkaConfig;
use crate::kafka_client::{client_config, LogContext};

/// Runs a blocking librdkafka check off the runtime's threads.
pub(super) async fn blocking(
    check: impl FnOnce() -> Result<String, Broken> + Send + 'static,
) -> Result<String, Broken> {
    tokio::task::spawn_blocking(check)
        .await
        .unwrap_or_else(|e| Err(broken(format!("the check failed: {e}"), "report this bug")))
}

/// Brokers answer metadata, each topic exists with led partitions, and
/// (for a consumer) the group's state and lag. Joins nothing: committed
/// offsets and group lists are read as an admin would.
pub(super) fn kafka_topics(
    cfg: &KafkaConfig,
    topics: &[String],
    group: Option<&str>,
    timeout: Duration,
) -> Result<String, Broken> {
    let brokers = &cfg.brokers;
    let consumer: BaseConsumer<LogContext> = client_config(cfg)
        // Needed for committed offsets; never subscribed, so never joined.
        .set("group.id", group.unwrap_or("cdc-monitor-doctor"))
        .set("enable.auto.commit", "false")
        .create_with_context(LogContext)
        .map_err(|e| {
            broken(
                format!("kafka client: {e}"),
                "correct CDC_KAFKA_PROPERTIES / the CDC_KAFKA_* security settings",
            )
        })?;
    // All topics, not the named ones: asking for a missing topic by name
    // may create it on brokers with auto.create.topics.enable.
    let metadata = consumer.fetch_metadata(None, timeout).map_err(|e| {
        broken(
            format!(
                "no Kafka broker answers at {brokers} within {} ({e})",
                secs(timeout)
            ),
            format!(
                "set CDC_KAFKA_BROKERS to reachable host:port pairs (now {brokers}); try `kafka-broker-api-versions.sh --bootstrap-server {}`",
                brokers.split(',').next().unwrap_or(brokers)
            ),
        )
    })?;
    let mut found = Vec::new();
    for topic in topics {
        let Some(meta) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return Err(broken(
                format!("kafka {brokers}: topic {topic} does not exist"),
                format!(
                    "create it: `kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic} --partitions 3` (or `cdc-monitor changefeed ensure`, whose TiCDC creates it), or correct CDC_KAFKA_TOPICS"
                ),
            ));
        };
        let partitions = meta.partitions();
        if let Some(p) = partitions.iter().find(|p| p.leader() < 0) {
            return Err(broken(
                format!(
                    "kafka {brokers}: topic {topic} partition {} has no leader",
                    p.id()
                ),
                format!("check the brokers' health: `kafka-topics.sh --bootstrap-server {brokers} --describe --topic {topic}`"),
            ));
        }
        let mut line = format!("topic {topic}, {} partitions", partitions.len());
        if let Some(group) = group {
            let ids: Vec<i32> = partitions.iter().map(|p| p.id()).collect();
            line.push_str(&group_line(&consumer, group, topic, &ids, timeout));
        }
        found.push(line);
    }
    Ok(format!("kafka {brokers}: {}", found.join("; ")))
}

/// `, group G STATE (N members), lag L`, as far as the broker tells.
fn group_line(
    consumer: &BaseConsumer<LogContext>,
    group: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> String {
    let mut line = format!(", group {group}");
    // Not every broker lists groups (Tansu does not): then the state is left out.
    if let Ok(list) = consumer.fetch_group_list(Some(group), timeout) {
        if let Some(g) = list.groups().iter().find(|g| g.name() == group) {
            line.push_str(&format!(" {} ({} members)", g.state(), g.members().len()));
        }
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, timeout) else {
        return line + ", lag unknown (committed offsets unavailable)";
    };
    let (mut lag, mut uncommitted) = (0i64, 0usize);
    for e in committed.elements() {
        let Offset::Offset(at) = e.offset() else {
            uncommitted += 1;
            continue;
        };
        match consumer.fetch_watermarks(topic, e.partition(), timeout) {
            Ok((_, high)) => lag += (high - at).max(0),
            Err(_) => return line + ", lag unknown (watermarks unavailable)",
        }
    }
    line.push_str(&format!(", group lag {lag}"));
    if uncommitted > 0 {
        line.push_str(&format!(
            " ({uncommitted} partitions without a committed offset yet)"
        ));
    }
    line
}
