//! `/api/events` and `/api/stats` on the embedded store.
//!
//! Pages are newest first by `seq` and keyset-paginated: the cursor is the
//! last seq returned and the next page reads `seq < cursor`. New events get
//! higher seqs, so pages already started never see them, and an event that
//! existed when page 1 was read is neither repeated nor skipped.
//!
//! Each page is one index range read backwards, chosen by the filter:
//! - `q`: the FTS5 index, in rowid (= seq) order, outermost;
//! - a commit-time bound: the commit-time index when at most
//!   `NARROW_TIME_RANGE` events fall in the range (read them, keep the top
//!   `limit`); else the `zones` blocks whose commit-time range meets it,
//!   newest first, each read backwards until the page is full;
//! - otherwise `events_db`, `events_tbl` or `events_op` (each ends in seq),
//!   or the table itself.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};
use serde_json::value::RawValue;

use super::schema::{RATE_HORIZON, ZONE_BITS};
use crate::sink::query::{EventFilter, EventPage, QueryError, RateSeries, Stats, MAX_LIMIT};

/// Up to this many events in a commit-time range, reading them all through
/// the commit-time index beats walking zones.
const NARROW_TIME_RANGE: i64 = 10_000;

/// Most buckets one rate series has.
const MAX_BUCKETS: u64 = 3600;

/// A validated `EventFilter`, ready to run on a connection.
#[derive(Debug, Clone)]
pub struct Plan {
    db: Option<String>,
    tbl: Option<String>,
    op: Option<&'static str>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    /// The FTS5 query for `q`.
    fts: Option<String>,
    /// Answer with an empty page without asking SQLite.
    matches_nothing: bool,
    /// Only events with a lower seq.
    before: i64,
    limit: usize,
}

/// One stored event as read: seq, doc_id, document.
type Found = (i64, Vec<u8>, String);

impl Plan {
    /// Checks `filter`; a bad limit or cursor is `QueryError::Invalid`.
    pub fn new(filter: &EventFilter) -> Result<Plan, QueryError> {
        if filter.limit == 0 || filter.limit > MAX_LIMIT {
            return Err(QueryError::Invalid {
                param: "limit",
                reason: format!("must be 1 to {MAX_LIMIT}, got {}", filter.limit),
            });
        }
        let before = match &filter.cursor {
            None => i64::MAX,
            Some(c) => decode_cursor(c).ok_or_else(|| QueryError::Invalid {
                param: "cursor",
                reason: format!("{c:?} is not the next_cursor of a page"),
            })?,
        };
        let (fts, no_terms) = match filter.q.as_deref().map(str::trim) {
            None | Some("") => (None, false),
            Some(q) => match fts_query(q) {
                Some(f) => (Some(f), false),
                // Only punctuation: no stored word can match it.
                None => (None, true),
            },
        };
        let empty_range = matches!((filter.since_ms, filter.until_ms), (Some(s), Some(u)) if s > u);
        Ok(Plan {
            db: filter.database.clone(),
            tbl: filter.table.clone(),
            op: filter.op.map(|o| o.as_str()),
            since_ms: filter.since_ms,
            until_ms: filter.until_ms,
            fts,
            matches_nothing: no_terms || empty_range,
            before,
            limit: filter.limit,
        })
    }

    /// Reads one page.
    pub fn run(&self, conn: &Connection) -> rusqlite::Result<EventPage> {
        let mut found = if self.matches_nothing {
            Vec::new()
        } else if self.fts.is_some() {
            self.by_text(conn)?
        } else if self.since_ms.is_some() || self.until_ms.is_some() {
            self.by_time(conn)?
        } else {
            self.by_index(conn)?
        };
        let more = found.len() > self.limit;
        found.truncate(self.limit);
        let next_cursor = if more {
            found.last().map(|(seq, _, _)| encode_cursor(*seq))
        } else {
            None
        };
        let events = found
            .into_iter()
            .map(|(_, id, doc)| with_id(&id, &doc))
            .collect::<rusqlite::Result<_>>()?;
        Ok(EventPage {
            events,
            next_cursor,
        })
    }

    /// `AND …` for every filter but `q`; time columns wrapped in `+` when
    /// the commit-time index must not be chosen for them.
    fn conditions(&self, sql: &mut String, args: &mut Vec<Value>, time_index: bool) {
        let t = if time_index { "" } else { "+" };
        if let Some(db) = &self.db {
            sql.push_str(" AND e.db = ?");
            args.push(Value::Text(db.clone()));
        }
        if let Some(tbl) = &self.tbl {
            sql.push_str(" AND e.tbl = ?");
            args.push(Value::Text(tbl.clone()));
        }
        if let Some(op) = self.op {
            sql.push_str(" AND e.op = ?");
            args.push(Value::Text(op.to_owned()));
        }
        if let Some(since) = self.since_ms {
            sql.push_str(&format!(" AND {t}e.commit_time_ms >= ?"));
            args.push(Value::Integer(since));
        }
        if let Some(until) = self.until_ms {
            sql.push_str(&format!(" AND {t}e.commit_time_ms <= ?"));
            args.push(Value::Integer(until));
        }
    }

    fn fetch(&self, conn: &Connection, sql: &str, args: &[Value]) -> rusqlite::Result<Vec<Found>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect()
    }

    fn by_index(&self, conn: &Connection) -> rusqlite::Result<Vec<Found>> {
        let mut sql = String::from("SELECT e.seq, e.doc_id, e.doc FROM events e WHERE e.seq < ?");
        let mut args = vec![Value::Integer(self.before)];
        self.conditions(&mut sql, &mut args, false);
        sql.push_str(" ORDER BY e.seq DESC LIMIT ?");
        args.push(Value::Integer(self.limit as i64 + 1));
        self.fetch(conn, &sql, &args)
    }

    fn by_text(&self, conn: &Connection) -> rusqlite::Result<Vec<Found>> {
        // CROSS JOIN keeps the text index outermost: it yields seqs newest
        // first, and each is checked against the other filters by rowid.
        let mut sql = String::from(
            "SELECT e.seq, e.doc_id, e.doc FROM events_fts CROSS JOIN events e ON e.seq = events_fts.rowid
             WHERE events_fts MATCH ? AND events_fts.rowid < ?",
        );
        let mut args = vec![
            Value::Text(self.fts.clone().unwrap_or_default()),
            Value::Integer(self.before),
        ];
        self.conditions(&mut sql, &mut args, false);
        sql.push_str(" ORDER BY events_fts.rowid DESC LIMIT ?");
        args.push(Value::Integer(self.limit as i64 + 1));
        self.fetch(conn, &sql, &args)
    }

    fn by_time(&self, conn: &Connection) -> rusqlite::Result<Vec<Found>> {
        let since = self.since_ms.unwrap_or(i64::MIN);
        let until = self.until_ms.unwrap_or(i64::MAX);
        let in_range: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY events_commit_time
             WHERE commit_time_ms >= ?1 AND commit_time_ms <= ?2 AND seq < ?3 LIMIT ?4)",
            )?
            .query_row(params![since, until, self.before, NARROW_TIME_RANGE], |r| {
                r.get(0)
            })?;
        if in_range < NARROW_TIME_RANGE {
            let mut sql = String::from(
                "SELECT e.seq, e.doc_id, e.doc FROM events e INDEXED BY events_commit_time WHERE e.seq < ?",
            );
            let mut args = vec![Value::Integer(self.before)];
            self.conditions(&mut sql, &mut args, true);
            sql.push_str(" ORDER BY e.seq DESC LIMIT ?");
            args.push(Value::Integer(self.limit as i64 + 1));
            return self.fetch(conn, &sql, &args);
        }
        let zones: Vec<i64> = conn
            .prepare_cached(
                "SELECT zone FROM zones WHERE zone <= ?1 AND max_commit_ms >= ?2 AND min_commit_ms <= ?3
                 ORDER BY zone DESC",
            )?
            .query_map(params![(self.before - 1) >> ZONE_BITS, since, until], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut sql = String::from(
            "SELECT e.seq, e.doc_id, e.doc FROM events e WHERE e.seq >= ? AND e.seq < ?",
        );
        let mut args = vec![Value::Null, Value::Null];
        self.conditions(&mut sql, &mut args, false);
        sql.push_str(" ORDER BY e.seq DESC LIMIT ?");
        args.push(Value::Null);
        let mut found = Vec::with_capacity(self.limit + 1);
        for zone in zones {
            let want = self.limit + 1 - found.len();
            args[0] = Value::Integer(zone << ZONE_BITS);
            args[1] = Value::Integer(((zone + 1) << ZONE_BITS).min(self.before));
            if let Some(last) = args.last_mut() {
                *last = Value::Integer(want as i64);
            }
            found.extend(self.fetch(conn, &sql, &args)?);
            if found.len() > self.limit {
                break;
            }
        }
        Ok(found)
    }
}

/// The FTS5 query for user input: each whitespace-separated word becomes a
/// quoted phrase (inner `"` doubled), so no character is FTS5 syntax, and
/// all must match. Words without a letter or digit are left out (the
/// tokenizer drops punctuation anyway); `None` when nothing is left.
pub fn fts_query(q: &str) -> Option<String> {
    let phrases: Vec<String> = q
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!phrases.is_empty()).then(|| phrases.join(" "))
}

fn encode_cursor(seq: i64) -> String {
    seq.to_string()
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    cursor.parse::<i64>().ok().filter(|seq| *seq > 0)
}

/// The stored document with `"id"` added first.
fn with_id(id: &[u8], doc: &str) -> rusqlite::Result<Box<RawValue>> {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let rest = doc.strip_prefix('{').unwrap_or(doc).trim_start();
    let sep = if rest.starts_with('}') { "" } else { "," };
    RawValue::from_string(format!("{{\"id\":\"{hex}\"{sep}{rest}")).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A validated stats request.
#[derive(Debug, Clone)]
pub struct StatsRequest {
    now_ms: i64,
    bucket_s: i64,
    buckets: i64,
}

impl StatsRequest {
    /// Checks the window and bucket: whole seconds, at most `RATE_HORIZON`
    /// and `MAX_BUCKETS` buckets.
    pub fn new(
        window: Duration,
        bucket: Duration,
        now_ms: i64,
    ) -> Result<StatsRequest, QueryError> {
        let invalid = |param, reason: String| QueryError::Invalid { param, reason };
        if bucket < Duration::from_secs(1) || bucket.subsec_nanos() != 0 {
            return Err(invalid(
                "bucket",
                format!("must be whole seconds, at least 1, got {bucket:?}"),
            ));
        }
        if window < bucket || window > RATE_HORIZON {
            return Err(invalid(
                "window",
                format!("must be between the bucket and {RATE_HORIZON:?}, got {window:?}"),
            ));
        }
        let buckets = window.as_secs().div_ceil(bucket.as_secs());
        if buckets > MAX_BUCKETS {
            return Err(invalid(
                "bucket",
                format!("{buckets} buckets, at most {MAX_BUCKETS}"),
            ));
        }
        Ok(StatsRequest {
            now_ms,
            bucket_s: bucket.as_secs() as i64,
            buckets: buckets as i64,
        })
    }

    /// Reads the counts and the rate series.
    ///
    /// Buckets are aligned to multiples of the bucket width, so a chart
    /// refreshed later keeps its bucket edges; the newest bucket is the one
    /// in progress, and its rate is over the seconds elapsed so far.
    pub fn run(&self, conn: &Connection) -> rusqlite::Result<Stats> {
        let mut stats = Stats {
            bucket_seconds: self.bucket_s as u64,
            ..Stats::default()
        };
        let mut stmt =
            conn.prepare_cached("SELECT db, tbl, op, events FROM counts WHERE events > 0")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (db, tbl, op, n): (String, String, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let n = n.max(0) as u64;
            stats.total += n;
            *stats.by_op.entry(op).or_default() += n;
            *stats.by_table.entry(format!("{db}.{tbl}")).or_default() += n;
        }
        let now_s = self.now_ms.div_euclid(1000);
        let b = self.bucket_s;
        let last_start = now_s - now_s.rem_euclid(b);
        let first_start = last_start - (self.buckets - 1) * b;
        let mut series: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut stmt = conn.prepare_cached(
            "SELECT (second - ?1) / ?2, db, tbl, sum(events) FROM rate
             WHERE second >= ?1 AND second <= ?3 GROUP BY 1, 2, 3",
        )?;
        let mut rows = stmt.query(params![first_start, b, now_s])?;
        while let Some(r) = rows.next()? {
            let (k, db, tbl, n): (i64, String, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let counts = series
                .entry(format!("{db}.{tbl}"))
                .or_insert_with(|| vec![0; self.buckets as usize]);
            if let Some(c) = usize::try_from(k).ok().and_then(|k| counts.get_mut(k)) {
                *c += n;
            }
        }
        stats.rate = series
            .into_iter()
            .map(|(table, counts)| RateSeries {
                table,
                points: counts
                    .into_iter()
                    .enumerate()
                    .map(|(k, n)| {
                        let start = first_start + k as i64 * b;
                        let width = if start == last_start {
                            now_s - start + 1
                        } else {
                            b
                        };
                        (start * 1000, n as f64 / width as f64)
                    })
                    .collect(),
            })
            .collect();
        Ok(stats)
    }
}
