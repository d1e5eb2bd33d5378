//! A source's resume point, typed. Sources produce checkpoints with their
//! messages; a sink that keeps positions stores them in the same transaction
//! as the events and reads them back at start. Only this module knows their
//! stored text form.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The stream of binlog positions (one per source database).
pub const BINLOG_STREAM: &str = "binlog";

/// Where a source resumes once everything up to here is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// The next offset to read from one Kafka partition.
    Kafka {
        topic: Arc<str>,
        partition: i32,
        next_offset: i64,
    },
    /// The binlog position after the last stored transaction.
    Binlog(BinlogPosition),
    /// How far an initial snapshot got: it advances the binlog stream, and
    /// the stream's first position supersedes it.
    Snapshot(SnapshotProgress),
}

/// The last stored chunk of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// The binlog position of the first snapshot: streaming starts here,
    /// whichever snapshot transaction read the later chunks.
    pub position: BinlogPosition,
    pub database: String,
    pub table: String,
    /// The key the table's next chunk starts after, in the source's own
    /// encoding; `None` when the table is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The stored form of a snapshot checkpoint: `{"snapshot": {...}}`, so it
/// never reads as a position.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    snapshot: SnapshotProgress,
}

/// A stored checkpoint that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("the stored position of {stream} ({text:?}) is unreadable: {reason}")]
pub struct CheckpointError {
    pub stream: String,
    pub text: String,
    pub reason: String,
}

impl Checkpoint {
    /// Which stream it advances: `binlog`, or `kafka/TOPIC/PARTITION`.
    pub fn stream(&self) -> String {
        match self {
            Checkpoint::Kafka {
                topic, partition, ..
            } => kafka_stream(topic, *partition),
            Checkpoint::Binlog(_) | Checkpoint::Snapshot(_) => BINLOG_STREAM.to_owned(),
        }
    }

    /// True when both advance the same stream (the later one supersedes).
    pub fn same_stream(&self, other: &Checkpoint) -> bool {
        match (self, other) {
            (
                Checkpoint::Kafka {
                    topic: a,
                    partition: p,
                    ..
                },
                Checkpoint::Kafka {
                    topic: b,
                    partition: q,
                    ..
                },
            ) => a == b && p == q,
            (
                Checkpoint::Binlog(_) | Checkpoint::Snapshot(_),
                Checkpoint::Binlog(_) | Checkpoint::Snapshot(_),
            ) => true,
            _ => false,
        }
    }

    /// The stored text: the next offset, or the binlog position as JSON.
    pub fn encode(&self) -> String {
        match self {
            Checkpoint::Kafka { next_offset, .. } => next_offset.to_string(),
            // A struct of strings and integers always serialises.
            Checkpoint::Binlog(p) => serde_json::to_string(p).unwrap_or_default(),
            Checkpoint::Snapshot(s) => serde_json::to_string(&StoredSnapshot {
                snapshot: s.clone(),
            })
            .unwrap_or_default(),
        }
    }

    /// Reads back what `encode` stored for `stream`.
    pub fn decode(stream: &str, text: &str) -> Result<Checkpoint, CheckpointError> {
        let error = |reason: String| CheckpointError {
            stream: stream.to_owned(),
            text: text.to_owned(),
            reason,
        };
        if stream == BINLOG_STREAM {
            if let Ok(s) = serde_json::from_str::<StoredSnapshot>(text) {
                return Ok(Checkpoint::Snapshot(s.snapshot));
            }
            return serde_json::from_str(text)
                .map(Checkpoint::Binlog)
                .map_err(|e| error(e.to_string()));
        }
        let (topic, partition) = stream
            .strip_prefix("kafka/")
            .and_then(|rest| rest.rsplit_once('/'))
            .ok_or_else(|| error("unknown stream".into()))?;
        Ok(Checkpoint::Kafka {
            topic: Arc::from(topic),
            partition: partition
                .parse()
                .map_err(|_| error("bad partition".into()))?,
            next_offset: text.parse().map_err(|_| error("bad offset".into()))?,
        })
    }
}

/// The stream name of a Kafka partition.
pub fn kafka_stream(topic: &str, partition: i32) -> String {
    format!("kafka/{topic}/{partition}")
}

/// Reads back the checkpoint a sink stored for a stream (`None`: nothing
/// stored yet). Present only when the sink keeps positions.
pub type StoredCheckpoints = Arc<dyn Fn(&str) -> Result<Option<Checkpoint>, String> + Send + Sync>;

/// A point in the server's binlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
    /// The GTID of the last transaction before this point, when the server uses GTIDs
    /// (`domain-server-sequence` on MariaDB, `uuid:n` on MySQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl std::fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if let Some(g) = &self.gtid {
            write!(f, " (gtid {g})")?;
        }
        Ok(())
    }
}

impl BinlogPosition {
    /// The number of the file, `binlog.000042` is 42.
    pub fn file_sequence(file: &str) -> u64 {
        file.rsplit('.')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// A number that orders changes and names one row change: the file
    /// number in the high 20 bits, the rows event's end offset in the next
    /// 32, the row's index in the event in the low 12. Part of the document
    /// id, so two identical rows of one statement on a table without a
    /// primary key stay two changes.
    pub fn change_number(file: &str, pos: u64, row: usize) -> u64 {
        ((Self::file_sequence(file) & 0xf_ffff) << 44)
            | ((pos & 0xffff_ffff) << 12)
            | (row as u64 & 0xfff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_through_their_stored_text() {
        let binlog = Checkpoint::Binlog(BinlogPosition {
            file: "binlog.000042".into(),
            pos: 1234,
            gtid: Some("0-1-99".into()),
        });
        let kafka = Checkpoint::Kafka {
            topic: Arc::from("tidb/cdc"),
            partition: 3,
            next_offset: 41,
        };
        let snapshot = Checkpoint::Snapshot(SnapshotProgress {
            position: BinlogPosition {
                file: "binlog.000042".into(),
                pos: 1234,
                gtid: None,
            },
            database: "appdb".into(),
            table: "users".into(),
            after: Some("[\"7\"]".into()),
        });
        assert!(snapshot.same_stream(&binlog));
        for c in [binlog, kafka, snapshot] {
            assert_eq!(Checkpoint::decode(&c.stream(), &c.encode()).unwrap(), c);
        }
        assert_eq!(
            Checkpoint::decode("binlog", r#"{"file":"b.1","pos":4}"#).unwrap(),
            Checkpoint::Binlog(BinlogPosition {
                file: "b.1".into(),
                pos: 4,
                gtid: None
            })
        );
        let err = Checkpoint::decode("kafka/t/0", "x").unwrap_err();
        assert!(err.to_string().contains("kafka/t/0"), "{err}");
        assert!(Checkpoint::decode("binlog", "{").is_err());
    }
}
