//! What a source hands the pipeline: one message with its events, its
//! acknowledgement and its resume point, through a channel bounded in
//! messages and in bytes.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::checkpoint::Checkpoint;
use crate::event::ChangeEvent;
use crate::source::ack::Ack;

/// One source message on its way to the sink.
#[derive(Debug)]
pub struct Envelope {
    pub events: Vec<ChangeEvent>,
    /// `None` when nothing needs to be committed for it.
    pub ack: Option<Ack>,
    pub origin: Origin,
    /// Set when the message could not be turned into events.
    pub undecodable: Option<Undecodable>,
    /// The source's resume point once this message and all before it are stored.
    pub checkpoint: Option<Checkpoint>,
    /// The message's bytes: as read (Kafka), or estimated from the decoded
    /// row (binlog); what batching and the byte budget count.
    pub size: usize,
    /// Its share of the byte budget, held until its batch is written.
    pub budget: Option<OwnedSemaphorePermit>,
}

/// Why a message is not stored but dead-lettered, and what of it is kept.
#[derive(Debug)]
pub struct Undecodable {
    /// Short machine-readable reason (`invalid_json`, `charset`, ...).
    pub reason: &'static str,
    pub error: String,
    /// The row as far as it was decoded, when the source has no bytes of
    /// its own to dead-letter (binlog); the Kafka source keeps the payload.
    pub row: Option<Box<ChangeEvent>>,
}

impl Envelope {
    /// What the message takes in memory until it is written: its bytes,
    /// and as much again for its decoded events.
    fn cost(&self) -> usize {
        let decoded = if self.events.is_empty() { 0 } else { self.size };
        self.size + decoded
    }
}

/// The source's end of the pipeline: a bounded channel whose messages also
/// take their size from a byte budget, so a run of 1 MiB messages waits
/// where small ones would not.
#[derive(Clone)]
pub struct EnvelopeTx {
    tx: mpsc::Sender<Envelope>,
    budget: Arc<Semaphore>,
    max: u32,
}

/// The pipeline is shutting down: the batcher is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl EnvelopeTx {
    /// Waits for room in the byte budget and the channel, then sends.
    pub async fn send(&self, mut envelope: Envelope) -> Result<(), Closed> {
        // A message larger than the whole budget goes alone.
        let cost = envelope.cost().clamp(1, self.max as usize) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        envelope.budget = Some(permit);
        self.tx.send(envelope).await.map_err(|_| Closed)
    }
}

/// A pipeline channel of `capacity` messages and `max_bytes` bytes.
pub fn channel(capacity: usize, max_bytes: usize) -> (EnvelopeTx, mpsc::Receiver<Envelope>) {
    let (tx, rx) = mpsc::channel(capacity);
    let max = max_bytes.clamp(1, u32::MAX as usize);
    let tx = EnvelopeTx {
        tx,
        budget: Arc::new(Semaphore::new(max)),
        max: max as u32,
    };
    (tx, rx)
}

/// Where a message came from, and its original bytes (empty when the
/// source has none) for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub payload: Bytes,
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::{Envelope, Origin};
    use crate::canal::{decode, Decoded};
    use crate::event::SourcePosition;
    use crate::source::ack::OffsetTracker;

    /// A decoded canal-json update at `offset`, registered with `tracker`.
    pub fn envelope(tracker: &Mutex<OffsetTracker>, topic: &Arc<str>, offset: i64) -> Envelope {
        let payload = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/canal/update.json"
        ))
        .expect("fixture");
        let size = payload.len();
        let Ok(Decoded::Events(events)) = decode(&payload, &SourcePosition::None) else {
            panic!("sample decodes");
        };
        let ack = tracker
            .lock()
            .unwrap()
            .read(topic, 0, offset, events.len(), 0);
        Envelope {
            events,
            ack,
            origin: Origin {
                topic: topic.clone(),
                partition: 0,
                offset,
                key: None,
                payload: Bytes::from(payload),
            },
            undecodable: None,
            checkpoint: None,
            size,
            budget: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::testing::envelope;
    use super::*;
    use crate::metrics::Metrics;
    use crate::source::ack::OffsetTracker;

    #[tokio::test]
    async fn messages_wait_for_the_byte_budget_until_earlier_ones_are_written() {
        let metrics = Metrics::new();
        let tracker = Mutex::new(OffsetTracker::new(metrics.in_flight.clone()));
        tracker.lock().unwrap().assign("t", 0);
        let topic: Arc<str> = Arc::from("t");
        let one = envelope(&tracker, &topic, 0).cost();
        // Room for two messages, whatever the channel's capacity.
        let (tx, mut rx) = channel(100, 2 * one + one / 2);
        tx.send(envelope(&tracker, &topic, 0)).await.unwrap();
        tx.send(envelope(&tracker, &topic, 1)).await.unwrap();
        let third = envelope(&tracker, &topic, 2);
        let blocked = tokio::time::timeout(Duration::from_millis(200), tx.send(third)).await;
        assert!(blocked.is_err(), "a third message fits no budget");
        // Written (dropped): its share comes back.
        drop(rx.recv().await.unwrap());
        tokio::time::timeout(
            Duration::from_secs(1),
            tx.send(envelope(&tracker, &topic, 2)),
        )
        .await
        .expect("room again")
        .unwrap();
        // One larger than the whole budget still goes, alone.
        let (tx, mut rx) = channel(100, one / 2);
        tx.send(envelope(&tracker, &topic, 3)).await.unwrap();
        assert!(rx.recv().await.is_some());
    }
}
