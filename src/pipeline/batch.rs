//! Batching by count, bytes and linger time, and bounded concurrent writes.
//!
//! Messages arrive whole (all events of one message land in one batch), so a
//! message is acknowledged exactly once, after every one of its events is
//! stored or the message is dead-lettered. When `concurrency` writes are in
//! flight the batcher waits for a permit, its input channel fills, and the
//! source stops reading: a slow sink stalls reading instead of growing memory.
//!
//! Stop the line: a batch that is not stored is never stepped over. The sink
//! retries transient failures itself; meanwhile no other write starts (the
//! channel fills and reading pauses). A failure the sink gives up on halts
//! the pipeline: nothing after that batch is written, checkpointed or
//! committed, and the process stops with the cause.
//!
//! Memory is bounded in bytes as well as in messages: a message takes its
//! share of the byte budget before it enters the channel and gives it back
//! once its batch is written, so the channel, the batch being filled and the
//! writes in flight together stay within `CDC_PIPELINE_MAX_BYTES`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::checkpoint::Checkpoint;
use crate::clock::now_millis;
use crate::event::ChangeEvent;
use crate::mask::Masker;
use crate::metrics::Metrics;
use crate::pipeline::dlq::{DeadLetter, DeadLetterQueue};
use crate::sink::{Sink, SinkError, WriteBatch};
use crate::source::ack::OffsetTracker;
use crate::source::envelope::Envelope;
use crate::source::Fence;

/// The first write failure the sink gave up on. Once set, no later batch is
/// written and the application stops with it.
#[derive(Clone, Default)]
pub struct Halt {
    token: CancellationToken,
    error: Arc<Mutex<Option<SinkError>>>,
}

impl Halt {
    /// Records `error` (the first one wins) and halts.
    pub fn halt(&self, error: SinkError) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(error);
        }
        self.token.cancel();
    }

    /// True once a write failed for good.
    pub fn is_halted(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once a write failed for good.
    pub async fn halted(&self) {
        self.token.cancelled().await
    }

    /// The failure, taken once by whoever stops the application.
    pub fn take(&self) -> Option<SinkError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }
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
        self.bytes += e.size;
        self.messages.push(e);
    }

    fn full(&self, limits: &BatchLimits) -> bool {
        self.events >= limits.max_events || self.bytes >= limits.max_bytes
    }
}

/// Everything a batch write needs, shared by all write tasks.
pub struct Writer {
    pub sink: Arc<dyn Sink>,
    pub dlq: DeadLetterQueue,
    pub tracker: Arc<Mutex<OffsetTracker>>,
    pub metrics: Metrics,
    /// Fires at the shutdown deadline: writes still retrying give up, unacknowledged.
    pub abort: CancellationToken,
    /// Set by a write that failed for good.
    pub halt: Halt,
    /// Masks columns as envelopes arrive, before any sink or dead letter
    /// sees them; `None` when masking is off.
    pub masker: Option<Masker>,
    /// Dead letters carry the source's original bytes when it has them
    /// (masked columns in the clear), else the masked events as canal-json.
    pub dlq_keep_original: bool,
    /// Closed once this instance may no longer publish what its source
    /// read (`Source::fence`); `None`: always open.
    pub fence: Option<Fence>,
}

impl Writer {
    /// Masks `envelope`'s events and its partly decoded row: the one place
    /// every source's rows pass before batching, the sinks and the
    /// dead-letter queue.
    pub fn mask(&self, envelope: &mut Envelope) {
        let Some(masker) = &self.masker else {
            return;
        };
        for e in &mut envelope.events {
            masker.mask_event(e);
        }
        if let Some(row) = envelope.undecodable.as_mut().and_then(|u| u.row.as_mut()) {
            masker.mask_event(row);
        }
    }
}

/// Reads envelopes until the channel closes, writes batches with at most
/// `concurrency` in flight, and returns when every write has finished.
pub async fn run_batcher(
    mut rx: mpsc::Receiver<Envelope>,
    writer: Arc<Writer>,
    limits: BatchLimits,
    concurrency: usize,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    'read: loop {
        let flush = tokio::select! {
            msg = rx.recv() => match msg {
                Some(mut env) => {
                    writer.mask(&mut env);
                    batch.push(env);
                    deadline.get_or_insert_with(|| Instant::now() + limits.linger);
                    batch.full(&limits)
                }
                None => break,
            },
            // The linger ends a batch only when a write can start now: while
            // every writer is busy the batch keeps filling (a backlog then
            // goes out in full batches), and leaves when one frees.
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                if deadline.is_some() && permits.available_permits() > 0 => true,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                joined(done);
                deadline.is_some_and(|d| d <= Instant::now())
            }
            _ = writer.halt.halted() => break,
        };
        if flush && !batch.messages.is_empty() {
            let full = std::mem::take(&mut batch);
            deadline = None;
            // While a write is failing and retried, start no other: the
            // channel fills and the source stops reading.
            while writer.metrics.sink_up.get() == 0 && !tasks.is_empty() {
                tokio::select! {
                    Some(done) = tasks.join_next() => joined(done),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = writer.abort.cancelled() => break 'read,
                    _ = writer.halt.halted() => break 'read,
                }
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = writer.abort.cancelled() => break,
                _ = writer.halt.halted() => break,
            };
            let writer = writer.clone();
            tasks.spawn(async move {
                write_batch(&writer, full.messages).await;
                drop(permit);
            });
        }
    }
    if !batch.messages.is_empty() && !writer.abort.is_cancelled() && !writer.halt.is_halted() {
        let writer = writer.clone();
        tasks.spawn(async move { write_batch(&writer, batch.messages).await });
    }
    while let Some(done) = tasks.join_next().await {
        joined(done);
    }
}

fn joined(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        error!(error = %e, "batch write task failed");
    }
}

async fn write_batch(w: &Writer, messages: Vec<Envelope>) {
    // Started just before another write failed for good: stepping over
    // that batch is what halting prevents.
    if w.halt.is_halted() {
        return;
    }
    // A capturer that lost its election: what it read is the new one's to
    // write (from the stored position), and is never acknowledged here.
    if w.fence.as_ref().is_some_and(|f| !f.is_open()) {
        debug!(
            messages = messages.len(),
            "fenced: this instance no longer captures, batch not written"
        );
        return;
    }
    // Undecodable messages go to the dead-letter queue first: a sink that
    // stores positions with the events then never holds a position past a
    // message that is neither stored nor dead-lettered.
    for m in &messages {
        if let Some(u) = &m.undecodable {
            let row = u
                .row
                .as_deref()
                .map(std::slice::from_ref)
                .unwrap_or_default();
            if !dead_letter(w, m, row, "decode", u.reason, &u.error).await {
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
        match checkpoints.iter_mut().find(|k| k.same_stream(&c)) {
            Some(k) => *k = c,
            None => checkpoints.push(c),
        }
    }
    let rejected = if events.is_empty() && checkpoints.is_empty() {
        Vec::new()
    } else {
        let batch = WriteBatch {
            events: &events,
            checkpoints: &checkpoints,
        };
        match w.sink.write(batch, &w.abort).await {
            Ok(r) => r,
            // Shutting down: not acknowledged, read again after a restart.
            Err(SinkError::Aborted) => return,
            // A newer capturer took the writes over after this one lost its
            // election: as with a closed fence, what this batch read is the
            // new one's to write. Fenced while still elected is a conflict
            // nothing here can settle: the line stops (below).
            Err(SinkError::Fenced(why)) if w.fence.as_ref().is_some_and(|f| !f.is_open()) => {
                warn!(error = %why, "fenced by a newer capturer: batch not written");
                return;
            }
            Err(e) => {
                // The sink gave up: stop the line rather than step over this
                // batch (a later checkpoint would pass it for good).
                w.metrics
                    .sink_failed(w.sink.name(), e.kind(), &e.to_string());
                w.halt.halt(e);
                return;
            }
        }
    };
    w.metrics.sink_ok();
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
    for (i, (m, reason)) in messages.iter().zip(sink_reason).enumerate() {
        if let Some(error) = &reason {
            let first = owner.partition_point(|&o| o < i);
            let own = &events[first..first + owner[first..].partition_point(|&o| o == i)];
            if !dead_letter(w, m, own, "sink", "rejected_by_sink", error).await {
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

/// Sends `m` to the dead-letter queue and counts it; `false` when shutting
/// down first. The payload is the message's original bytes when they are
/// kept (`dlq_keep_original`); else, and for a source without bytes of its
/// own (binlog), its masked `events` encoded as canal-json, here, on this
/// rare path only (none for a message that could not be decoded at all).
async fn dead_letter(
    w: &Writer,
    m: &Envelope,
    events: &[ChangeEvent],
    stage: &'static str,
    reason: &str,
    error: &str,
) -> bool {
    let o = &m.origin;
    let original = w.dlq_keep_original && !o.payload.is_empty();
    let mut encoded = Vec::new();
    if !original {
        let now = now_millis();
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                encoded.push(b'\n');
            }
            crate::canal::encode::encode(&mut encoded, e, now);
        }
    }
    let payload: &[u8] = if original { &o.payload } else { &encoded };
    let letter = DeadLetter {
        payload,
        // The key is the source's bytes too (it may hold a primary key).
        key: o.key.as_deref().filter(|_| original),
        stage,
        reason,
        error,
        topic: &o.topic,
        partition: o.partition,
        offset: o.offset,
    };
    let Some(destination) = w.dlq.send(&letter, &w.abort).await else {
        return false;
    };
    let label = if stage == "decode" {
        "decode"
    } else {
        "rejected_by_sink"
    };
    w.metrics.dead_lettered(
        label,
        destination.as_str(),
        &o.topic,
        o.partition,
        o.offset,
        error,
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Written;
    use crate::source::envelope::{channel, testing::envelope};
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A sink whose `fail_on`-th write (0-based) fails for good, and which
    /// keeps what it was given and, with `refuse`, refuses every event.
    /// With `fenced`, that write is fenced instead, and `fenced` (this
    /// instance's election) is lost when it says so.
    #[derive(Default)]
    struct TestSink {
        writes: AtomicUsize,
        fail_on: Option<usize>,
        refuse: bool,
        fenced: Option<(Arc<std::sync::atomic::AtomicBool>, bool)>,
        seen: Mutex<Vec<ChangeEvent>>,
    }

    impl Sink for TestSink {
        fn name(&self) -> &'static str {
            "test"
        }

        fn concurrency(&self) -> usize {
            1
        }

        fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>> {
            Box::pin(async { Ok(()) })
        }

        fn write<'a>(&'a self, batch: WriteBatch<'a>, _: &'a CancellationToken) -> Written<'a> {
            let failed = Some(self.writes.fetch_add(1, Ordering::SeqCst)) == self.fail_on;
            self.seen.lock().unwrap().extend_from_slice(batch.events);
            let rejected = (0..batch.events.len())
                .filter(|_| self.refuse)
                .map(|index| crate::sink::Rejected {
                    index,
                    reason: "refused".into(),
                })
                .collect();
            Box::pin(async move {
                if let (true, Some((elected, lost))) = (failed, &self.fenced) {
                    if *lost {
                        elected.store(false, Ordering::SeqCst);
                    }
                    return Err(SinkError::Fenced("a newer producer".into()));
                }
                if failed {
                    return Err(SinkError::Config("store is not a database".into()));
                }
                Ok(rejected)
            })
        }

        fn check(&self) -> BoxFuture<'_, Result<(), SinkError>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// A writer to `sink` whose dead letters go to the file `letters`, and
    /// its tracker with partition `t`/0 assigned.
    fn writer(sink: Arc<TestSink>, letters: std::path::PathBuf, metrics: &Metrics) -> Writer {
        let tracker = Arc::new(Mutex::new(OffsetTracker::new(metrics.in_flight.clone())));
        tracker.lock().unwrap().assign("t", 0);
        Writer {
            sink,
            dlq: DeadLetterQueue::file(letters),
            tracker,
            metrics: metrics.clone(),
            abort: CancellationToken::new(),
            halt: Halt::default(),
            masker: None,
            dlq_keep_original: true,
            fence: None,
        }
    }

    /// One event a batch: each write is its own.
    const ONE_BY_ONE: BatchLimits = BatchLimits {
        max_events: 1,
        max_bytes: 1 << 20,
        linger: Duration::from_millis(1),
    };

    #[tokio::test]
    async fn the_sink_and_dead_letters_see_masked_values_unless_originals_are_kept() {
        for keep in [false, true] {
            let metrics = Metrics::new();
            let topic: Arc<str> = Arc::from("t");
            let sink = Arc::new(TestSink {
                refuse: true,
                ..TestSink::default()
            });
            let dir = tempfile::tempdir().unwrap();
            let letters = dir.path().join("dead-letters.jsonl");
            let pattern = crate::config::ColumnPattern::parse("appdb.users.EMAIL").unwrap();
            let masker = Masker::new(vec![pattern], b"a test key, 16 bytes or more");
            let writer = Arc::new(Writer {
                masker: Some(masker.clone()),
                dlq_keep_original: keep,
                ..writer(sink.clone(), letters.clone(), &metrics)
            });
            let tracker = writer.tracker.clone();
            let (tx, rx) = channel(16, 1 << 20);
            let limits = ONE_BY_ONE;
            let batcher = tokio::spawn(run_batcher(rx, writer, limits, 1));
            let sent = envelope(&tracker, &topic, 0);
            let original = sent.origin.payload.clone();
            tx.send(sent).await.unwrap();
            drop(tx);
            batcher.await.unwrap();

            let seen = sink.seen.lock().unwrap();
            let hashed = masker.hash(b"new@example.com");
            assert_eq!(seen[0].data.text("email").unwrap(), hashed);
            assert_eq!(
                seen[0].old.as_ref().unwrap().text("email").unwrap(),
                masker.hash(b"old@example.com")
            );
            let line: serde_json::Value =
                serde_json::from_str(std::fs::read_to_string(&letters).unwrap().trim()).unwrap();
            let payload = line["payload"].as_str().unwrap();
            if keep {
                assert_eq!(payload.as_bytes(), &original[..], "the original bytes");
            } else {
                assert!(!payload.contains("@example.com"), "{payload}");
                assert!(payload.contains(&hashed), "{payload}");
            }
            assert_eq!(
                tracker.lock().unwrap().all_committable(),
                vec![(topic.clone(), 0, 1)],
                "dead-lettered is acknowledged"
            );
        }
    }

    #[tokio::test]
    async fn a_batch_the_sink_gives_up_on_halts_the_line_and_nothing_after_it_is_acknowledged() {
        let metrics = Metrics::new();
        let topic: Arc<str> = Arc::from("t");
        let sink = Arc::new(TestSink {
            fail_on: Some(1),
            ..TestSink::default()
        });
        let letters = std::env::temp_dir().join("unused-dead-letters.jsonl");
        let writer = Arc::new(writer(sink.clone(), letters, &metrics));
        let tracker = writer.tracker.clone();
        let (tx, rx) = channel(16, 1 << 20);
        let batcher = tokio::spawn(run_batcher(rx, writer.clone(), ONE_BY_ONE, 1));
        for offset in 0..5 {
            // Refused once the line halted and the batcher let go.
            let _ = tx.send(envelope(&tracker, &topic, offset)).await;
        }
        writer.halt.halted().await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), batcher)
            .await
            .expect("the batcher stops")
            .unwrap();
        // The first batch stored, the second refused; none after it tried.
        assert_eq!(sink.writes.load(Ordering::SeqCst), 2);
        assert_eq!(
            tracker.lock().unwrap().all_committable(),
            vec![(topic.clone(), 0, 1)],
            "only the stored message may be committed"
        );
        assert!(matches!(writer.halt.take(), Some(SinkError::Config(_))));
        assert_eq!(metrics.sink_up.get(), 0);
    }

    #[tokio::test]
    async fn a_fenced_write_is_dropped_once_the_election_is_lost_and_halts_while_elected() {
        for lost in [true, false] {
            let metrics = Metrics::new();
            let topic: Arc<str> = Arc::from("t");
            let elected = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let sink = Arc::new(TestSink {
                fail_on: Some(1),
                fenced: Some((elected.clone(), lost)),
                ..TestSink::default()
            });
            let letters = std::env::temp_dir().join("unused-dead-letters.jsonl");
            let open = elected.clone();
            let writer = Arc::new(Writer {
                fence: Some(Fence::new(move || open.load(Ordering::SeqCst))),
                ..writer(sink.clone(), letters, &metrics)
            });
            let tracker = writer.tracker.clone();
            let (tx, rx) = channel(16, 1 << 20);
            let batcher = tokio::spawn(run_batcher(rx, writer.clone(), ONE_BY_ONE, 1));
            for offset in 0..3 {
                let _ = tx.send(envelope(&tracker, &topic, offset)).await;
            }
            drop(tx);
            tokio::time::timeout(Duration::from_secs(5), batcher)
                .await
                .expect("the batcher stops")
                .unwrap();
            // Only the write before the fencing is acknowledged either way.
            assert_eq!(
                tracker.lock().unwrap().all_committable(),
                vec![(topic.clone(), 0, 1)],
                "lost: {lost}"
            );
            if lost {
                // A standby now: nothing more is written, nothing halts.
                assert!(!writer.halt.is_halted());
                assert_eq!(sink.writes.load(Ordering::SeqCst), 2);
            } else {
                assert!(matches!(writer.halt.take(), Some(SinkError::Fenced(_))));
            }
        }
    }
}
