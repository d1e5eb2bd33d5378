//! Binlog positions: where to resume, and which position is safe to store.
//!
//! Changes are numbered in reading order (one sequence number per row)
//! and tracked like Kafka offsets. A resume point is only ever a transaction
//! boundary: the position after a commit (XID, COMMIT or DDL). The stored
//! position is the last boundary before the first change still in flight, so
//! a restart replays at most the transactions that were not fully stored,
//! and their deterministic document ids make the replay harmless.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::checkpoint::BinlogPosition;

/// The GTID position. MariaDB keeps one GTID per replication domain
/// (`domain-server-sequence`), and a replica resumes from that list; a
/// MySQL GTID (`uuid:n`) is kept for information only, resume there is by
/// file and position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState {
    domains: std::collections::BTreeMap<u32, String>,
    other: Option<String>,
}

impl GtidState {
    fn mariadb_domain(g: &str) -> Option<u32> {
        let mut parts = g.trim().split('-');
        let domain = parts.next()?.parse().ok()?;
        parts.next()?.parse::<u32>().ok()?;
        parts.next()?.parse::<u64>().ok()?;
        parts.next().is_none().then_some(domain)
    }

    pub fn parse(text: Option<&str>) -> GtidState {
        let mut st = GtidState::default();
        for g in text
            .unwrap_or_default()
            .split(',')
            .filter(|g| !g.trim().is_empty())
        {
            st.commit(g);
        }
        st
    }

    pub fn commit(&mut self, g: &str) {
        match Self::mariadb_domain(g) {
            Some(d) => {
                self.domains.insert(d, g.trim().to_owned());
            }
            None => self.other = Some(g.trim().to_owned()),
        }
    }

    /// `0-1-100,1-2-7`, when every part is a MariaDB GTID.
    pub fn mariadb_list(&self) -> Option<String> {
        (self.other.is_none() && !self.domains.is_empty())
            .then(|| self.domains.values().cloned().collect::<Vec<_>>().join(","))
    }

    pub fn text(&self) -> Option<String> {
        self.mariadb_list().or_else(|| self.other.clone())
    }

    fn sequence(g: &str) -> u64 {
        g.rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// True when some domain of `self` is past where `other` stands in it:
    /// `other` would need transactions before `self`.
    pub fn is_after(&self, other: &GtidState) -> bool {
        self.domains
            .iter()
            .any(|(d, g)| match other.domains.get(d) {
                Some(o) => Self::sequence(g) > Self::sequence(o),
                None => false,
            })
    }
}

/// Resume points by the sequence number of the first change after them.
#[derive(Debug, Default)]
pub struct Boundaries {
    points: BTreeMap<i64, BinlogPosition>,
}

impl Boundaries {
    /// Records that reading may resume at `position` once every change
    /// numbered below `next_seq` is stored.
    pub fn record(&mut self, next_seq: i64, position: BinlogPosition) {
        self.points.insert(next_seq, position);
    }

    /// The resume point when every change below `committable` is stored,
    /// forgetting the points before it.
    pub fn resume_point(&mut self, committable: i64) -> Option<BinlogPosition> {
        let (&seq, pos) = self.points.range(..=committable).next_back()?;
        let pos = pos.clone();
        self.points = self.points.split_off(&seq);
        Some(pos)
    }
}

/// Stores the binlog position in a file, replaced atomically.
#[derive(Debug, Clone)]
pub struct PositionFile {
    path: PathBuf,
}

impl PositionFile {
    pub fn new(data_dir: &Path) -> PositionFile {
        PositionFile {
            path: data_dir.join("binlog-position.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored position, `None` before the first store.
    pub fn load(&self) -> std::io::Result<Option<BinlogPosition>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes to a temporary file, syncs it and renames it over the old one:
    /// a crash leaves either the old or the new position, never a torn one.
    pub fn store(&self, position: &BinlogPosition) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            crate::owner_only::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = crate::owner_only::create(&tmp)?;
        f.write_all(&serde_json::to_vec(position)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // Makes the rename itself durable.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_gtid_positions_keep_one_gtid_per_domain() {
        let mut g = GtidState::parse(Some("0-1-100,1-2-5"));
        g.commit("0-1-101");
        assert_eq!(g.text().as_deref(), Some("0-1-101,1-2-5"));
        assert_eq!(g.mariadb_list().as_deref(), Some("0-1-101,1-2-5"));
        let m = GtidState::parse(Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:23"));
        assert_eq!(m.mariadb_list(), None);
        assert_eq!(
            m.text().as_deref(),
            Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:23")
        );
        assert_eq!(GtidState::parse(None).text(), None);
        let oldest = GtidState::parse(Some("0-1-4"));
        assert!(oldest.is_after(&GtidState::parse(Some("0-1-3"))));
        assert!(!oldest.is_after(&GtidState::parse(Some("0-1-4"))));
        assert!(!oldest.is_after(&GtidState::parse(Some("0-2-9,1-1-1"))));
    }

    fn at(pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: "binlog.000002".into(),
            pos,
            gtid: None,
        }
    }

    #[test]
    fn resume_point_is_the_last_boundary_not_after_the_first_change_in_flight() {
        let mut b = Boundaries::default();
        b.record(0, at(4));
        b.record(3, at(100)); // txn of changes 0..3 committed at 100
        b.record(5, at(200)); // txn of changes 3..5 committed at 200
        assert_eq!(b.resume_point(0), Some(at(4)));
        assert_eq!(
            b.resume_point(4),
            Some(at(100)),
            "change 4 in flight: replay its txn"
        );
        assert_eq!(b.resume_point(5), Some(at(200)));
        assert_eq!(b.resume_point(5), Some(at(200)), "stays once pruned");
    }

    #[test]
    fn file_numbers_order_positions() {
        assert_eq!(BinlogPosition::file_sequence("binlog.000042"), 42);
        assert!(
            BinlogPosition::change_number("binlog.000002", 4, 0)
                > BinlogPosition::change_number("binlog.000001", 900_000, 7)
        );
        assert!(
            BinlogPosition::change_number("binlog.000001", 900, 1)
                > BinlogPosition::change_number("binlog.000001", 900, 0)
        );
    }

    #[test]
    fn position_file_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = PositionFile::new(dir.path());
        assert_eq!(f.load().unwrap(), None);
        let mut p = at(4);
        p.gtid = Some("0-1-7".into());
        f.store(&p).unwrap();
        f.store(&at(120)).unwrap();
        assert_eq!(f.load().unwrap(), Some(at(120)));
        std::fs::write(f.path(), b"{not json").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("binlog-position.json"), "{e}");
    }
}
