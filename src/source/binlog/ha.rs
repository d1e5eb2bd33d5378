//! `CDC_BINLOG_HA=kafka`: several instances, one capturer, elected by Kafka.
//!
//! Every instance of the group (`CDC_KAFKA_GROUP_ID`) subscribes to the
//! one-partition position topic (`CDC_BINLOG_POSITION_TOPIC`). Kafka's group
//! protocol hands partition 0 to exactly one live member: that member
//! captures; the others stand by. A member that dies stops heartbeating and
//! the broker reassigns the partition after the session timeout, so takeover
//! is bounded by `CDC_KAFKA_SESSION_TIMEOUT`, with no coordinator of ours.
//!
//! The same topic keeps the capture position: one compacted record per
//! group, written after the sink acknowledged (as the position file is), and
//! read back to its end by whoever becomes the capturer.
//!
//! Fencing: capture stops the moment the partition is revoked or lost, and
//! the position is never written by an instance that does not hold it. A
//! process that was paused longer than the session timeout (SIGSTOP, a
//! frozen VM) gives leadership up on waking, before librdkafka reports it.
//! Events that a paused leader had already handed to the pipeline can still
//! reach the sink after a takeover: their document ids are deterministic
//! (the new capturer writes the same ids) and the current state keeps the
//! highest version, so such a late write changes nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::checkpoint::BinlogPosition;
use crate::clock::now_millis;
use crate::config::KafkaConfig;
use crate::kafka_client::{self, client_config, LogContext};
use crate::metrics::Metrics;
use crate::source::SourceError;

/// How long one wait on the broker (create, read, write) may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// The record a capturer keeps in the position topic.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    position: BinlogPosition,
    /// The instance that wrote it.
    leader: String,
    written_at_ms: i64,
}

/// Signals leadership changes from librdkafka's rebalance callbacks.
struct ElectionContext {
    topic: String,
    leader: watch::Sender<bool>,
}

impl ClientContext for ElectionContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka_client::log(level, fac, message);
    }
}

impl ElectionContext {
    fn holds(&self, tpl: &TopicPartitionList) -> bool {
        tpl.elements()
            .iter()
            .any(|e| e.topic() == self.topic && e.partition() == 0)
    }
}

impl ConsumerContext for ElectionContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Revoked or lost (a session that timed out): stop before anyone
        // else may start.
        match rebalance {
            Rebalance::Revoke(tpl) if self.holds(tpl) => self.leader.send_replace(false),
            Rebalance::Error(_) => self.leader.send_replace(false),
            _ => false,
        };
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        // The whole assignment as it stands now. With librdkafka's default
        // (eager) assignors every rebalance revokes all, so a standby that
        // joins interrupts the capturer briefly; `partition.assignment.strategy=
        // cooperative-sticky` in CDC_KAFKA_PROPERTIES avoids that on brokers
        // that support it (a rebalance then moves only what changes).
        let holds = consumer.assignment().is_ok_and(|a| self.holds(&a));
        self.leader.send_replace(holds);
    }
}

/// This instance's membership in the election, and the position store.
pub struct Leadership {
    pub instance: String,
    group: String,
    topic: String,
    kafka: KafkaConfig,
    leader: watch::Receiver<bool>,
    member: Arc<BaseConsumer<ElectionContext>>,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<JoinHandle<()>>>,
    /// When the membership was last polled, in ms since `born`: a lease
    /// that goes stale while the process is paused.
    born: Instant,
    last_poll_ms: Arc<AtomicU64>,
    /// The last answer of `current_leader` and when it was found: a probe
    /// every few seconds must not ask the broker every time.
    seen_leader: Mutex<Option<(Instant, Option<String>)>>,
    producer: FutureProducer<LogContext>,
    metrics: Metrics,
}

impl Leadership {
    /// The clients; nothing is joined until `start`.
    pub fn new(
        kafka: &KafkaConfig,
        topic: &str,
        metrics: Metrics,
    ) -> Result<Leadership, SourceError> {
        let instance = instance_name();
        let (tx, leader) = watch::channel(false);
        let context = ElectionContext {
            topic: topic.to_owned(),
            leader: tx,
        };
        let member: BaseConsumer<ElectionContext> = client_config(kafka)
            .set("group.id", &kafka.group_id)
            .set("client.id", &instance)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set(
                "session.timeout.ms",
                kafka.session_timeout.as_millis().to_string(),
            )
            // librdkafka's default (3 s), or half a shorter session.
            .set(
                "heartbeat.interval.ms",
                (kafka.session_timeout.as_millis() / 2)
                    .clamp(100, 3000)
                    .to_string(),
            )
            // JoinGroup carries it as the rebalance timeout: how long the
            // broker waits for members to rejoin. The election thread polls
            // every 100 ms, so the session timeout (its floor) bounds a
            // takeover's rebalance too, and a capturer whose thread is stuck
            // that long loses the election.
            .set(
                "max.poll.interval.ms",
                kafka.session_timeout.as_millis().to_string(),
            )
            .create_with_context(context)?;
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", BROKER_TIMEOUT.as_millis().to_string())
            .create_with_context(LogContext)?;
        Ok(Leadership {
            instance,
            group: kafka.group_id.clone(),
            topic: topic.to_owned(),
            kafka: kafka.clone(),
            leader,
            member: Arc::new(member),
            stop: Arc::new(AtomicBool::new(false)),
            poller: Mutex::new(None),
            born: Instant::now(),
            last_poll_ms: Arc::default(),
            seen_leader: Mutex::new(None),
            producer,
            metrics,
        })
    }

    /// Creates the position topic if absent and joins the election (once).
    pub async fn start(&self) -> Result<(), SourceError> {
        if self.poller.lock().map(|p| p.is_some()).unwrap_or(true) {
            return Ok(());
        }
        create_topic(&self.kafka, &self.topic).await?;
        self.member.subscribe(&[&self.topic])?;
        let (member, stop) = (self.member.clone(), self.stop.clone());
        let (born, last_poll) = (self.born, self.last_poll_ms.clone());
        let session = self.kafka.session_timeout;
        let poller = std::thread::Builder::new()
            .name("binlog-election".into())
            .spawn(move || poll_membership(&member, &stop, session, born, &last_poll))
            .map_err(|e| SourceError::Other(format!("election thread: {e}")))?;
        if let Ok(mut p) = self.poller.lock() {
            *p = Some(poller);
        }
        self.set_role(false);
        info!(
            instance = %self.instance,
            group = %self.group,
            topic = %self.topic,
            "joined the binlog capture election"
        );
        Ok(())
    }

    /// True while this instance holds the capture.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Whether what this instance read may still be written: it leads, and
    /// its membership was polled within the session timeout. A process
    /// waking from a pause finds the lease stale before its election thread
    /// has even run, so nothing it held is written after a takeover.
    pub fn may_publish(&self) -> bool {
        let since = self.born.elapsed().as_millis() as u64;
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        self.is_leader()
            && since.saturating_sub(last) < self.kafka.session_timeout.as_millis() as u64
    }

    /// Waits until this instance is elected; false when `stop` came first.
    pub async fn elected(&self, stop: &tokio_util::sync::CancellationToken) -> bool {
        let mut rx = self.leader.clone();
        tokio::select! {
            r = rx.wait_for(|l| *l) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }

    /// Resolves once this instance no longer holds the capture.
    pub async fn lost(&self) {
        let mut rx = self.leader.clone();
        let _ = rx.wait_for(|l| !*l).await;
    }

    /// Exports the role (`cdc_binlog_leader`).
    pub fn set_role(&self, leading: bool) {
        self.metrics
            .binlog_leader
            .with_label_values(&[&self.group])
            .set(i64::from(leading));
    }

    /// The group's last stored position: the last record under this
    /// group's key, read to the end of the topic. Blocking.
    pub fn load(&self) -> Result<Option<BinlogPosition>, SourceError> {
        Ok(self.read_stored()?.map(|s| {
            info!(position = %s.position, written_by = %s.leader, "binlog position read from Kafka");
            s.position
        }))
    }

    /// The last record under this group's key. Blocking.
    fn read_stored(&self) -> Result<Option<Stored>, SourceError> {
        // Assigned, never subscribed: the group id only satisfies
        // librdkafka's consumer; it never joins or commits.
        let reader: BaseConsumer<LogContext> = client_config(&self.kafka)
            .set("group.id", format!("{}-position-reader", self.group))
            .set("enable.auto.commit", "false")
            .set(
                "session.timeout.ms",
                self.kafka.session_timeout.as_millis().to_string(),
            )
            .set("enable.partition.eof", "false")
            .create_with_context(LogContext)?;
        let (low, high) = reader.fetch_watermarks(&self.topic, 0, BROKER_TIMEOUT)?;
        if high <= low {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)?;
        reader.assign(&tpl)?;
        let key = self.key();
        let deadline = Instant::now() + BROKER_TIMEOUT;
        let mut found = None;
        let mut next = low;
        while next < high {
            if Instant::now() > deadline {
                return Err(SourceError::Other(format!(
                    "reading the binlog position from {}: offsets {next} to {high} not read within {BROKER_TIMEOUT:?}",
                    self.topic
                )));
            }
            let Some(m) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m?;
            next = m.offset() + 1;
            if m.key() != Some(key.as_bytes()) {
                continue;
            }
            found = match m.payload() {
                // A tombstone: the position was deleted on purpose.
                None => None,
                Some(bytes) => {
                    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| {
                        SourceError::Fatal(format!(
                            "the binlog position in {} at offset {} is not readable: {e}",
                            self.topic,
                            m.offset()
                        ))
                    })?;
                    Some(stored)
                }
            };
        }
        Ok(found)
    }

    /// Writes `position` once the broker acknowledged it; refused when this
    /// instance no longer leads. Blocking.
    pub fn store(&self, position: &BinlogPosition) -> Result<(), String> {
        if !self.is_leader() {
            return Err("this instance no longer captures: position not written".into());
        }
        let value = serde_json::to_vec(&Stored {
            position: position.clone(),
            leader: self.instance.clone(),
            written_at_ms: now_millis(),
        })
        .map_err(|e| e.to_string())?;
        let key = self.key();
        let send = self.producer.send(
            FutureRecord::to(&self.topic).key(&key).payload(&value),
            BROKER_TIMEOUT,
        );
        futures::executor::block_on(send)
            .map(|_| ())
            .map_err(|(e, _)| format!("writing the binlog position to {}: {e}", self.topic))
    }

    /// Where a reset is done: the record to delete.
    pub fn describe(&self) -> String {
        format!(
            "write a tombstone (null value) for key {} to topic {}",
            self.key(),
            self.topic
        )
    }

    /// The instance holding partition 0 now: from the group's description
    /// (its members' client ids), or, where the broker does not describe
    /// groups, the writer of the last position (a capturer writes one as
    /// soon as it is elected). Blocking.
    pub fn current_leader(&self) -> Option<String> {
        if self.is_leader() {
            return Some(self.instance.clone());
        }
        let described = self
            .member
            .fetch_group_list(Some(&self.group), Duration::from_secs(3))
            .ok()
            .and_then(|groups| {
                let group = groups.groups().iter().find(|g| g.name() == self.group)?;
                group
                    .members()
                    .iter()
                    .find(|m| {
                        m.assignment()
                            .is_some_and(|a| assignment_holds(a, &self.topic, 0))
                    })
                    .map(|m| m.client_id().to_owned())
            });
        described.or_else(|| self.read_stored().ok().flatten().map(|s| s.leader))
    }

    /// The role and leader for `/readyz`; the leader as found within the
    /// last 10 s. Blocking.
    pub fn status(&self) -> serde_json::Value {
        let cached = self
            .seen_leader
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|(at, _)| at.elapsed() < Duration::from_secs(10));
        let leader = match cached {
            Some((_, leader)) if !self.is_leader() => leader,
            _ => {
                let leader = self.current_leader();
                if let Ok(mut c) = self.seen_leader.lock() {
                    *c = Some((Instant::now(), leader.clone()));
                }
                leader
            }
        };
        serde_json::json!({
            "role": if self.is_leader() { "leader" } else { "standby" },
            "instance": self.instance,
            "leader": leader,
            "group": self.group,
        })
    }

    fn key(&self) -> String {
        format!("binlog/{}", self.group)
    }

    /// Leaves the group (a standby then takes over at once).
    pub fn leave(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let poller = self.poller.lock().ok().and_then(|mut p| p.take());
        if let Some(p) = poller {
            let _ = p.join();
        }
        self.set_role(false);
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("instance", &self.instance)
            .field("group", &self.group)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Keeps the membership alive: rebalance callbacks run inside `poll`. A gap
/// between two polls longer than the session timeout means this process was
/// paused: the group has given the partition away by now, so leadership is
/// dropped at once, before librdkafka notices.
fn poll_membership(
    member: &BaseConsumer<ElectionContext>,
    stop: &AtomicBool,
    session: Duration,
    born: Instant,
    last_poll_ms: &AtomicU64,
) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now.duration_since(last) > session && *member.context().leader.borrow() {
            warn!(
                paused_ms = now.duration_since(last).as_millis() as u64,
                "this process was paused longer than the session timeout: giving up the binlog capture"
            );
            member.context().leader.send_replace(false);
        }
        last = now;
        last_poll_ms.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
        // The position records are not needed here: the capturer reads
        // them once, when elected.
        let _ = member.poll(Duration::from_millis(100));
    }
    member.context().leader.send_replace(false);
    // Leave the group rather than let the session expire, so a standby
    // takes over at once: the revoke is served inside `poll`, and only then
    // does librdkafka send LeaveGroup.
    member.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut settled = 0;
    while Instant::now() < deadline && settled < 5 {
        let _ = member.poll(Duration::from_millis(100));
        if member.assignment().is_ok_and(|a| a.count() == 0) {
            settled += 1;
        }
    }
}

/// Creates `topic` (one partition, compacted) unless it exists.
async fn create_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), SourceError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
    let results = admin.create_topics([&new], &opts).await?;
    for r in results {
        match r {
            Ok(_) => info!(topic, "created the binlog position topic (compacted)"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(SourceError::Fatal(format!(
                    "cannot create the binlog position topic {t}: {code} \
                     (create it with one partition and cleanup.policy=compact, \
                     or set CDC_BINLOG_POSITION_TOPIC)"
                )))
            }
        }
    }
    Ok(())
}

/// This instance's name in the group: host name and process id.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "cdc-monitor".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Whether a member's assignment (Kafka's ConsumerProtocolAssignment:
/// version, then per topic its name and partitions) includes `topic`'s
/// `partition`.
fn assignment_holds(bytes: &[u8], topic: &str, partition: i32) -> bool {
    let mut r = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = (r.get(..n)?, r.get(n..)?);
        r = rest;
        Some(head)
    };
    let mut parse = || -> Option<bool> {
        take(2)?; // version
        let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..topics.max(0) {
            let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
            let name = take(len.max(0) as usize)?;
            let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
            for _ in 0..count.max(0) {
                let p = i32::from_be_bytes(take(4)?.try_into().ok()?);
                if name == topic.as_bytes() && p == partition {
                    return Some(true);
                }
            }
        }
        Some(false)
    };
    parse().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        b
    }

    #[test]
    fn an_assignment_holds_the_partition_only_when_it_lists_it() {
        let a = assignment(&[("other", &[0]), ("pos", &[0])]);
        assert!(assignment_holds(&a, "pos", 0));
        assert!(!assignment_holds(&a, "pos", 1));
        assert!(!assignment_holds(&assignment(&[("pos", &[])]), "pos", 0));
        assert!(!assignment_holds(&assignment(&[]), "pos", 0));
        // Truncated or garbage bytes hold nothing.
        assert!(!assignment_holds(&a[..a.len() - 9], "pos", 0));
        assert!(!assignment_holds(b"\xff", "pos", 0));
    }
}
