//! Batching by count, bytes and linger time, and bounded concurrent writes.
//!
//! Messages arrive whole (all events of one message land in one batch), so a
//! message is acknowledged exactly once, after every one of its events is
//! stored or the message is dead-lettered. When `concurrency` writes are in
//! flight the batcher waits for a permit, its input channel fills, and the
//! source stops reading: a slow sink stalls reading instead of growing memory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::event::{ChangeEvent, Checkpoint};
use crate::metrics::Metrics;
use crate::pipeline::ack::{Ack, OffsetTracker};
use crate::pipeline::dlq::{DeadLetter, DeadLetterQueue};
use crate::sink::elasticsearch::bulk::now_millis;
use crate::sink::Sink;

/// One source message on its way to the sink.
#[derive(Debug)]
pub struct Envelope {
    pub events: Vec<ChangeEvent>,
    /// `None` when nothing needs to be committed for it.
    pub ack: Option<Ack>,
    pub origin: Origin,
    /// Set when the message could not be decoded: (reason, error).
    pub undecodable: Option<(&'static str, String)>,
    /// The source's resume point once this message and all before it are stored.
    pub checkpoint: Option<Checkpoint>,
}

/// Where a message came from, and its original bytes for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub payload: Bytes,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

#[derive(Default)]
struct Batch {
    messages: Vec<Envelope>,
    events: usize,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, e: Envelope) {
        self.events += e.events.len();
        self.bytes += e.origin.payload.len();
        self.messages.push(e);
    }

    fn full(&self, limits: &BatchLimits) -> bool {
        self.events >= limits.max_events || self.bytes >= limits.max_bytes
    }
}

/// Everything a batch write needs, shared by all write tasks.
pub struct Writer<S> {
    pub sink: Arc<S>,
    pub dlq: DeadLetterQueue,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub metrics: Metrics,
    /// Fires at the shutdown deadline: writes still retrying give up, unacknowledged.
    pub abort: CancellationToken,
}

/// Reads envelopes until the channel closes, writes batches with at most
/// `concurrency` in flight, and returns when every write has finished.
pub async fn run_batcher<S: Sink>(
    mut rx: mpsc::Receiver<Envelope>,
    writer: Arc<Writer<S>>,
    limits: BatchLimits,
    concurrency: usize,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let flush = tokio::select! {
            msg = rx.recv() => match msg {
                Some(env) => {
                    batch.push(env);
                    deadline.get_or_insert_with(|| Instant::now() + limits.linger);
                    batch.full(&limits)
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => true,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    error!(error = %e, "batch write task failed");
                }
                false
            }
        };
        if flush && !batch.messages.is_empty() {
            let full = std::mem::take(&mut batch);
            deadline = None;
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = writer.abort.cancelled() => break,
            };
            let writer = writer.clone();
            tasks.spawn(async move {
                write_batch(&writer, full.messages).await;
                drop(permit);
            });
        }
    }
    if !batch.messages.is_empty() && !writer.abort.is_cancelled() {
        let writer = writer.clone();
        tasks.spawn(async move { write_batch(&writer, batch.messages).await });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            error!(error = %e, "batch write task failed");
        }
    }
}

async fn write_batch<S: Sink>(w: &Writer<S>, messages: Vec<Envelope>) {
    // Undecodable messages go to the dead-letter queue first: a sink that
    // stores positions with the events then never holds a position past a
    // message that is neither stored nor dead-lettered.
    for m in messages.iter().filter(|m| m.undecodable.is_some()) {
        if let Some((reason, error)) = &m.undecodable {
            if !dead_letter(w, m, "decode", reason, error).await {
                return;
            }
        }
    }
    // Flatten the events, remembering which message each came from.
    let mut events = Vec::with_capacity(messages.iter().map(|m| m.events.len()).sum());
    let mut owner = Vec::with_capacity(events.capacity());
    let mut messages = messages;
    for (i, m) in messages.iter_mut().enumerate() {
        owner.extend(std::iter::repeat_n(i, m.events.len()));
        events.append(&mut m.events);
    }
    // The last resume point of each stream in this batch.
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for c in messages.iter_mut().filter_map(|m| m.checkpoint.take()) {
        match checkpoints.iter_mut().find(|k| k.stream == c.stream) {
            Some(k) => *k = c,
            None => checkpoints.push(c),
        }
    }
    let rejected = if events.is_empty() && checkpoints.is_empty() {
        Vec::new()
    } else {
        match w.sink.write(&events, &checkpoints, &w.abort).await {
            Ok(r) => r,
            Err(e) => {
                // Not acknowledged: these messages are read again after a restart.
                warn!(events = events.len(), error = %e, "batch not stored");
                return;
            }
        }
    };
    let mut sink_reason: Vec<Option<String>> = vec![None; messages.len()];
    for r in rejected {
        let slot = &mut sink_reason[owner[r.index]];
        if slot.is_none() {
            *slot = Some(r.reason);
        }
    }
    let now = now_millis();
    let stored: Vec<&ChangeEvent> = events
        .iter()
        .zip(&owner)
        .filter(|(_, &m)| sink_reason[m].is_none())
        .map(|(e, _)| e)
        .collect();
    w.metrics.stored(&stored, now);
    for (m, reason) in messages.iter().zip(sink_reason) {
        if let Some(error) = &reason {
            if !dead_letter(w, m, "sink", "rejected_by_sink", error).await {
                return;
            }
        }
        if let Some(ack) = &m.ack {
            // A poisoned lock means a panic elsewhere already broke the
            // pipeline; acknowledging nothing more is the safe outcome.
            if let Ok(mut t) = w.tracker.lock() {
                t.ack(ack);
            }
        }
    }
}

/// Sends `m`'s original bytes to the dead-letter queue and counts it;
/// `false` when shutting down first.
async fn dead_letter<S: Sink>(
    w: &Writer<S>,
    m: &Envelope,
    stage: &'static str,
    reason: &str,
    error: &str,
) -> bool {
    let o = &m.origin;
    let letter = DeadLetter {
        payload: &o.payload,
        key: o.key.as_deref(),
        stage,
        reason,
        error,
        topic: &o.topic,
        partition: o.partition,
        offset: o.offset,
    };
    if !w.dlq.send(&letter, &w.abort).await {
        return false;
    }
    let label = if stage == "decode" {
        "decode"
    } else {
        "rejected_by_sink"
    };
    w.metrics
        .dead_lettered(label, &o.topic, o.partition, o.offset, error);
    true
}
