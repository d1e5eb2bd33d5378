//! Which offsets may be committed: only those below every message still in flight.
//!
//! A message is "in flight" from the moment it is read until all its events
//! are stored or it is dead-lettered. The committable offset of a partition is
//! the lowest offset in flight, or the last offset read + 1 when none is.
//! Each assignment of a partition gets a new epoch, so an acknowledgement that
//! arrives after the partition was revoked (and perhaps assigned again) is
//! ignored instead of corrupting the new assignment's state.
//!
//! It also keeps the consumer's TiDB checkpoint: a TiCDC watermark at
//! offset `o` promises every change up to its TSO came before `o` on that
//! partition, so once the committable offset is past `o` the sink holds
//! all of them. The checkpoint is the least such TSO over the assigned
//! partitions (`checkpoint_tso`), the point `reconcile` reads TiDB at.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prometheus::IntGauge;

/// Identifies one in-flight message for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    epoch: u64,
    events: i64,
}

#[derive(Debug)]
struct InFlight {
    commit_time_ms: i64,
    events: i64,
}

#[derive(Debug)]
struct PartitionOffsets {
    epoch: u64,
    in_flight: BTreeMap<i64, InFlight>,
    next: Option<i64>,
    committed: Option<i64>,
    last_commit_time_ms: Option<i64>,
    /// Watermarks read at or after the committable offset: offset → TSO.
    watermarks: BTreeMap<i64, u64>,
    /// The greatest TSO of a watermark below the committable offset.
    passed_tso: Option<u64>,
}

impl PartitionOffsets {
    fn committable(&self) -> Option<i64> {
        self.in_flight.keys().next().copied().or(self.next)
    }

    /// Moves the watermarks the committable offset has passed into `passed_tso`.
    fn pass_watermarks(&mut self) {
        let Some(c) = self.committable() else {
            return;
        };
        let pending = self.watermarks.split_off(&c);
        let passed = std::mem::replace(&mut self.watermarks, pending);
        if let Some(tso) = passed.into_values().max() {
            self.passed_tso = Some(self.passed_tso.map_or(tso, |t| t.max(tso)));
        }
    }
}

/// Offsets of every assigned partition.
#[derive(Debug)]
pub struct OffsetTracker {
    parts: HashMap<(Arc<str>, i32), PartitionOffsets>,
    epochs: u64,
    in_flight_events: IntGauge,
}

impl OffsetTracker {
    /// An empty tracker; `in_flight_events` mirrors the events in flight.
    pub fn new(in_flight_events: IntGauge) -> OffsetTracker {
        OffsetTracker {
            parts: HashMap::new(),
            epochs: 0,
            in_flight_events,
        }
    }

    /// Starts tracking a newly assigned partition.
    pub fn assign(&mut self, topic: &str, partition: i32) {
        self.epochs += 1;
        let old = self.parts.insert(
            (Arc::from(topic), partition),
            PartitionOffsets {
                epoch: self.epochs,
                in_flight: BTreeMap::new(),
                next: None,
                committed: None,
                last_commit_time_ms: None,
                watermarks: BTreeMap::new(),
                passed_tso: None,
            },
        );
        if let Some(old) = old {
            self.forget(&old);
        }
    }

    /// Stops tracking a revoked partition; returns the offset to commit for it.
    pub fn revoke(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let old = self.parts.remove(&(Arc::from(topic), partition))?;
        self.forget(&old);
        old.committable().filter(|c| Some(*c) != old.committed)
    }

    fn forget(&self, p: &PartitionOffsets) {
        let events: i64 = p.in_flight.values().map(|f| f.events).sum();
        self.in_flight_events.sub(events);
    }

    /// Records a message read with `events` events; `None` when the message
    /// needs no acknowledgement (nothing to store, or partition not assigned).
    pub fn read(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        events: usize,
        commit_time_ms: i64,
    ) -> Option<Ack> {
        let p = self.parts.get_mut(&(topic.clone(), partition))?;
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        if events == 0 {
            p.last_commit_time_ms = Some(commit_time_ms);
            return None;
        }
        let events = events as i64;
        p.in_flight.insert(
            offset,
            InFlight {
                commit_time_ms,
                events,
            },
        );
        self.in_flight_events.add(events);
        Some(Ack {
            topic: topic.clone(),
            partition,
            offset,
            epoch: p.epoch,
            events,
        })
    }

    /// Records a TiCDC watermark read at `offset`: every change up to `tso`
    /// was sent on this partition before it.
    pub fn watermark(&mut self, topic: &Arc<str>, partition: i32, offset: i64, tso: u64) {
        self.read(
            topic,
            partition,
            offset,
            0,
            crate::canal::decode::tso_to_millis(tso),
        );
        if let Some(p) = self.parts.get_mut(&(topic.clone(), partition)) {
            p.watermarks.insert(offset, tso);
            p.pass_watermarks();
        }
    }

    /// The TSO up to which the sink holds every change of every assigned
    /// partition: per partition the greatest watermark below its
    /// committable offset, the least of those. `None` before each assigned
    /// partition passed a watermark.
    pub fn checkpoint_tso(&self) -> Option<u64> {
        let mut least: Option<u64> = None;
        for p in self.parts.values() {
            let tso = p.passed_tso?;
            least = Some(least.map_or(tso, |l| l.min(tso)));
        }
        least
    }

    /// Marks a message as done (stored or dead-lettered).
    pub fn ack(&mut self, ack: &Ack) {
        let Some(p) = self.parts.get_mut(&(ack.topic.clone(), ack.partition)) else {
            return;
        };
        if p.epoch != ack.epoch {
            return;
        }
        if let Some(f) = p.in_flight.remove(&ack.offset) {
            self.in_flight_events.sub(f.events);
            p.last_commit_time_ms = Some(
                p.last_commit_time_ms
                    .map_or(f.commit_time_ms, |t| t.max(f.commit_time_ms)),
            );
            p.pass_watermarks();
        }
    }

    /// Offsets that advanced since the last commit, as (topic, partition, offset).
    pub fn to_commit(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.parts
            .iter()
            .filter_map(|((t, p), o)| {
                let c = o.committable()?;
                (Some(c) != o.committed).then(|| (t.clone(), *p, c))
            })
            .collect()
    }

    /// Every partition's committable offset, changed or not.
    pub fn all_committable(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.parts
            .iter()
            .filter_map(|((t, p), o)| o.committable().map(|c| (t.clone(), *p, c)))
            .collect()
    }

    /// Records a successful commit.
    pub fn committed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&(Arc::from(topic), partition)) {
            p.committed = Some(p.committed.map_or(offset, |c| c.max(offset)));
        }
    }

    /// Per assigned partition, the offset lag is counted from: the committed
    /// offset, else the lowest offset in flight or next to read, else `None`.
    pub fn positions(&self) -> Vec<(Arc<str>, i32, Option<i64>)> {
        self.parts
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, o.committed.or_else(|| o.committable())))
            .collect()
    }

    /// Age in seconds of the oldest change in flight per partition (0 when none).
    pub fn lag_seconds(&self, now_ms: i64) -> Vec<(Arc<str>, i32, f64)> {
        self.parts
            .iter()
            .map(|((t, p), o)| {
                let oldest = o.in_flight.values().map(|f| f.commit_time_ms).min();
                let age = oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
                (t.clone(), *p, age)
            })
            .collect()
    }

    /// Events in flight across all partitions.
    pub fn in_flight_events(&self) -> i64 {
        self.parts
            .values()
            .flat_map(|p| p.in_flight.values())
            .map(|f| f.events)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> OffsetTracker {
        let mut t = OffsetTracker::new(IntGauge::new("g", "g").unwrap());
        t.assign("t", 0);
        t
    }

    #[test]
    fn commits_only_below_the_lowest_unacknowledged_offset() {
        let mut t = tracker();
        let topic: Arc<str> = Arc::from("t");
        let a = t.read(&topic, 0, 10, 1, 0).unwrap();
        let b = t.read(&topic, 0, 11, 2, 0).unwrap();
        let c = t.read(&topic, 0, 12, 1, 0).unwrap();
        assert_eq!(t.to_commit(), [(topic.clone(), 0, 10)]);
        t.ack(&b);
        t.ack(&c);
        // 10 is still in flight: committing 13 would skip it after a crash.
        assert_eq!(t.to_commit(), [(topic.clone(), 0, 10)]);
        t.ack(&a);
        assert_eq!(t.to_commit(), [(topic.clone(), 0, 13)]);
        t.committed("t", 0, 13);
        assert!(t.to_commit().is_empty());
        assert_eq!(t.in_flight_events(), 0);
    }

    #[test]
    fn messages_without_events_advance_the_offset_at_once() {
        let mut t = tracker();
        let topic: Arc<str> = Arc::from("t");
        assert!(t.read(&topic, 0, 5, 0, 0).is_none());
        assert_eq!(t.to_commit(), [(topic, 0, 6)]);
    }

    #[test]
    fn acks_from_a_previous_assignment_are_ignored() {
        let mut t = tracker();
        let topic: Arc<str> = Arc::from("t");
        let stale = t.read(&topic, 0, 1, 1, 0).unwrap();
        assert_eq!(t.revoke("t", 0), Some(1));
        t.assign("t", 0);
        let fresh = t.read(&topic, 0, 1, 1, 0).unwrap();
        t.ack(&stale);
        assert_eq!(
            t.to_commit(),
            [(topic.clone(), 0, 1)],
            "stale ack must not release offset 1"
        );
        t.ack(&fresh);
        assert_eq!(t.to_commit(), [(topic, 0, 2)]);
    }

    #[test]
    fn unassigned_partitions_are_not_tracked() {
        let mut t = tracker();
        assert!(t.read(&Arc::from("t"), 9, 1, 1, 0).is_none());
        assert!(t.to_commit().is_empty());
    }

    #[test]
    fn the_checkpoint_is_the_least_acknowledged_watermark_over_partitions() {
        let mut t = tracker();
        t.assign("t", 1);
        let topic: Arc<str> = Arc::from("t");
        assert_eq!(t.checkpoint_tso(), None);
        // Partition 0: a watermark with nothing in flight before it counts.
        t.watermark(&topic, 0, 0, 100);
        assert_eq!(t.checkpoint_tso(), None, "partition 1 has passed none");
        // Partition 1: a change in flight holds its later watermark back.
        let a = t.read(&topic, 1, 0, 1, 0).unwrap();
        t.watermark(&topic, 1, 1, 90);
        assert_eq!(t.checkpoint_tso(), None, "offset 0 is not acknowledged");
        t.ack(&a);
        assert_eq!(t.checkpoint_tso(), Some(90), "the least over partitions");
        // Partition 1 moves on while partition 0 has an unacknowledged change.
        let b = t.read(&topic, 0, 1, 1, 0).unwrap();
        t.watermark(&topic, 0, 2, 200);
        t.watermark(&topic, 1, 2, 300);
        assert_eq!(t.checkpoint_tso(), Some(100), "200 waits for offset 1");
        t.ack(&b);
        assert_eq!(t.checkpoint_tso(), Some(200));
        // A revoked partition no longer holds the checkpoint back.
        t.revoke("t", 0);
        assert_eq!(t.checkpoint_tso(), Some(300));
    }

    #[test]
    fn lag_seconds_is_the_age_of_the_oldest_change_in_flight() {
        let mut t = tracker();
        let topic: Arc<str> = Arc::from("t");
        let a = t.read(&topic, 0, 1, 1, 1_000).unwrap();
        t.read(&topic, 0, 2, 1, 5_000).unwrap();
        assert_eq!(t.lag_seconds(11_000), [(topic.clone(), 0, 10.0)]);
        t.ack(&a);
        assert_eq!(t.lag_seconds(11_000), [(topic, 0, 6.0)]);
    }
}
